//! Root rotation with no restart and no downtime, as a pure state machine.
//!
//! 1. **Distributing**: the new root joins every proxy's trust bundle (issuing stays on the
//!    old root) until every proxy has acknowledged a configuration containing it.
//! 2. **Reissuing**: issuing switches to the new root; proxies renew (or are asked to) until no
//!    proxy holds a leaf signed by the old root. Both roots are still trusted, so old and new
//!    leaves interoperate throughout.
//! 3. **Retiring**: the old root leaves the bundle; once every proxy has acknowledged that,
//!    the rotation is done and the new root is the only one.
//!
//! Roots are named by an opaque id (the operator uses the certificate's SHA-256 fingerprint);
//! the operator feeds observations from push ACKs and issued certificates.

use std::fmt;

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// One root, trusted and issuing.
    Stable,
    /// Both roots trusted; issuing from the old; waiting for every proxy to hold the new root.
    Distributing,
    /// Both roots trusted; issuing from the new; waiting for every leaf to be reissued.
    Reissuing,
    /// Only the new root trusted; waiting for every proxy to acknowledge that.
    Retiring,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Stable => "Stable",
            Phase::Distributing => "Distributing",
            Phase::Reissuing => "Reissuing",
            Phase::Retiring => "Retiring",
        })
    }
}

/// What one connected proxy reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyObservation {
    /// The proxy (for progress messages).
    pub proxy: String,
    /// Roots in the trust bundle of the last configuration it acknowledged.
    pub acked_roots: Vec<String>,
    /// The root that signed its current leaf, if it has one.
    pub leaf_root: Option<String>,
}

/// A rotation cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// One is already under way.
    #[error("a root rotation is already under way (phase {0}); wait for it to finish")]
    InProgress(Phase),
    /// The "new" root is the current one.
    #[error("the new root is the one already in use")]
    SameRoot,
}

/// The rotation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRotation {
    phase: Phase,
    active: String,
    next: Option<String>,
    waiting_on: Vec<String>,
}

impl RootRotation {
    /// A stable state with one root.
    pub fn new(root: impl Into<String>) -> Self {
        RootRotation {
            phase: Phase::Stable,
            active: root.into(),
            next: None,
            waiting_on: Vec::new(),
        }
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The root in use before the rotation (the only one when stable).
    pub fn current(&self) -> &str {
        &self.active
    }

    /// The root being rotated to, during a rotation.
    pub fn next(&self) -> Option<&str> {
        self.next.as_deref()
    }

    /// Start rotating to `new_root`.
    pub fn start(&mut self, new_root: impl Into<String>) -> Result<(), RotationError> {
        if self.phase != Phase::Stable {
            return Err(RotationError::InProgress(self.phase));
        }
        let new_root = new_root.into();
        if new_root == self.active {
            return Err(RotationError::SameRoot);
        }
        self.next = Some(new_root);
        self.phase = Phase::Distributing;
        Ok(())
    }

    /// The roots every proxy must trust now.
    pub fn trust_bundle(&self) -> Vec<String> {
        match (self.phase, &self.next) {
            (Phase::Distributing | Phase::Reissuing, Some(next)) => vec![self.active.clone(), next.clone()],
            (Phase::Retiring, Some(next)) => vec![next.clone()],
            _ => vec![self.active.clone()],
        }
    }

    /// The root new leaves are signed by.
    pub fn issuing_root(&self) -> &str {
        match (self.phase, &self.next) {
            (Phase::Reissuing | Phase::Retiring, Some(next)) => next,
            _ => &self.active,
        }
    }

    /// Advance as far as the observations allow; returns the phases entered.
    pub fn observe(&mut self, proxies: &[ProxyObservation]) -> Vec<Phase> {
        let mut entered = Vec::new();
        loop {
            let Some(next) = self.next.clone() else {
                self.waiting_on.clear();
                return entered;
            };
            let lagging: Vec<String> = match self.phase {
                Phase::Stable => return entered,
                Phase::Distributing => proxies
                    .iter()
                    .filter(|p| !p.acked_roots.contains(&next))
                    .map(|p| p.proxy.clone())
                    .collect(),
                Phase::Reissuing => proxies
                    .iter()
                    .filter(|p| p.leaf_root.as_deref() != Some(next.as_str()))
                    .map(|p| p.proxy.clone())
                    .collect(),
                Phase::Retiring => proxies
                    .iter()
                    .filter(|p| p.acked_roots.contains(&self.active))
                    .map(|p| p.proxy.clone())
                    .collect(),
            };
            if !lagging.is_empty() {
                self.waiting_on = lagging;
                return entered;
            }
            self.phase = match self.phase {
                Phase::Distributing => Phase::Reissuing,
                Phase::Reissuing => Phase::Retiring,
                Phase::Retiring => {
                    self.active = next;
                    self.next = None;
                    Phase::Stable
                }
                Phase::Stable => Phase::Stable,
            };
            entered.push(self.phase);
        }
    }

    /// What the rotation waits for, for the operator's admin API and the Mesh status.
    pub fn progress(&self) -> String {
        let waiting = |what: &str| {
            let mut names = self.waiting_on.clone();
            names.sort();
            let shown: Vec<String> = names.iter().take(5).cloned().collect();
            let more = names.len().saturating_sub(shown.len());
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("{what}; waiting on {} proxies: {}{tail}", names.len(), shown.join(", "))
        };
        match self.phase {
            Phase::Stable => "stable: one root, trusted and issuing".to_string(),
            Phase::Distributing => waiting("distributing the new root to every trust bundle"),
            Phase::Reissuing => waiting("issuing from the new root until every leaf is reissued"),
            Phase::Retiring => waiting("removing the old root from every trust bundle"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(proxy: &str, roots: &[&str], leaf: &str) -> ProxyObservation {
        ProxyObservation {
            proxy: proxy.into(),
            acked_roots: roots.iter().map(|s| s.to_string()).collect(),
            leaf_root: Some(leaf.into()),
        }
    }

    #[test]
    fn a_full_rotation_waits_for_every_proxy_at_every_step() {
        let mut r = RootRotation::new("old");
        assert_eq!(r.trust_bundle(), ["old"]);
        r.start("new").unwrap();
        assert_eq!(r.phase(), Phase::Distributing);
        assert_eq!(r.trust_bundle(), ["old", "new"]);
        assert_eq!(
            r.issuing_root(),
            "old",
            "issuing switches only once everyone trusts the new root"
        );

        // One proxy has not acknowledged the new bundle yet: no progress.
        let entered = r.observe(&[obs("a", &["old", "new"], "old"), obs("b", &["old"], "old")]);
        assert!(entered.is_empty());
        assert!(r.progress().contains("waiting on 1 proxies: b"), "{}", r.progress());

        // Everyone has it: issue from the new root.
        let entered = r.observe(&[obs("a", &["old", "new"], "old"), obs("b", &["old", "new"], "old")]);
        assert_eq!(entered, [Phase::Reissuing]);
        assert_eq!(r.issuing_root(), "new");
        assert_eq!(
            r.trust_bundle(),
            ["old", "new"],
            "the old root stays trusted while old leaves live"
        );

        // b still holds an old leaf.
        assert!(
            r.observe(&[obs("a", &["old", "new"], "new"), obs("b", &["old", "new"], "old")])
                .is_empty()
        );
        let entered = r.observe(&[obs("a", &["old", "new"], "new"), obs("b", &["old", "new"], "new")]);
        assert_eq!(entered, [Phase::Retiring]);
        assert_eq!(r.trust_bundle(), ["new"]);

        // a has not acknowledged the bundle without the old root.
        assert!(
            r.observe(&[obs("a", &["old", "new"], "new"), obs("b", &["new"], "new")])
                .is_empty()
        );
        let entered = r.observe(&[obs("a", &["new"], "new"), obs("b", &["new"], "new")]);
        assert_eq!(entered, [Phase::Stable]);
        assert_eq!(r.trust_bundle(), ["new"]);
        assert_eq!(r.issuing_root(), "new");
    }

    #[test]
    fn with_no_proxies_it_completes_at_once() {
        let mut r = RootRotation::new("old");
        r.start("new").unwrap();
        assert_eq!(r.observe(&[]), [Phase::Reissuing, Phase::Retiring, Phase::Stable]);
        assert_eq!(r.trust_bundle(), ["new"]);
    }

    #[test]
    fn one_rotation_at_a_time() {
        let mut r = RootRotation::new("old");
        assert_eq!(r.start("old"), Err(RotationError::SameRoot));
        r.start("new").unwrap();
        assert_eq!(r.start("newer"), Err(RotationError::InProgress(Phase::Distributing)));
    }

    #[test]
    fn a_proxy_without_a_leaf_holds_reissuing() {
        let mut r = RootRotation::new("old");
        r.start("new").unwrap();
        let p = ProxyObservation {
            proxy: "c".into(),
            acked_roots: vec!["old".into(), "new".into()],
            leaf_root: None,
        };
        assert_eq!(r.observe(std::slice::from_ref(&p)), [Phase::Reissuing]);
        assert!(r.observe(&[p]).is_empty());
        assert_eq!(r.phase(), Phase::Reissuing);
    }
}
