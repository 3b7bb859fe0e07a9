//! Root rotation with no restart and no downtime, as a pure state machine.
//!
//! 1. **Distributing**: the new root joins every proxy's trust bundle (issuing stays on the
//!    old root) until every proxy has acknowledged a configuration containing it.
//! 2. **Reissuing**: issuing switches to the new root; proxies renew (or are asked to) until no
//!    proxy serves a leaf signed by the old root. Both roots are still trusted, so old and new
//!    leaves interoperate throughout.
//! 3. **Retiring**: the old root leaves the bundle; once every proxy has acknowledged that,
//!    the rotation is done and the new root is the only one.
//!
//! Roots are named by an opaque id (the operator uses the certificate's SHA-256 fingerprint).
//! Every decision reads [`Reports`]: what the connected proxies of *every* operator replica
//! acknowledged and report serving (the root of the certificate each serves, from its own
//! report — never which replica signed what), and which replicas could not be asked.
//!
//! # Guarantees
//! - No phase advances while a replica's proxies are unknown: the old root is never retired on
//!   missing information ([`RootRotation::progress`] names the replica and why).
//! - [`RootRotation::assess`] is pure; the phase moves only by [`RootRotation::advance_to`],
//!   forward only, so the leader can record a phase before entering it and followers can enter
//!   the phases the leader recorded.

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

/// What one connected proxy reports, on whichever operator replica it is subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyObservation {
    /// The proxy (for progress messages).
    pub proxy: String,
    /// Roots in the trust bundle of the last configuration it acknowledged.
    pub acked_roots: Vec<String>,
    /// The root that signed the certificate it reports serving (none: it reported none).
    pub leaf_root: Option<String>,
    /// Whether a replica holds its subscription now. One that does not — seen before, its pod
    /// still there — keeps serving the bundle and leaf it had, and reports nothing: it counts
    /// as having acknowledged nothing and serving no known leaf.
    pub connected: bool,
}

/// Everything a decision reads: the connected proxies of every operator replica, merged, and
/// the replicas whose proxies are not known (not asked, no answer, or an answer too old).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reports {
    /// Every connected proxy once.
    pub proxies: Vec<ProxyObservation>,
    /// Replicas whose proxies are unknown, each with why.
    pub unknown_replicas: Vec<(String, String)>,
}

/// What a rotation waits on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waiting {
    /// Proxies that have not done what the phase waits for.
    pub proxies: Vec<String>,
    /// Those of them no replica holds the subscription of: the rotation waits for them to
    /// subscribe again, or for their pods to go.
    pub unconnected: Vec<String>,
    /// Replicas whose proxies are unknown, with why: no phase advances while there is one.
    pub replicas: Vec<(String, String)>,
}

/// What the reports allow, from where the rotation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The root the rotation assessed rotates to (none: no rotation under way). The phases
    /// allowed are that rotation's: the leader records and enters them only while it is the one
    /// under way ([`super::MeshRoots::advance_rotation`]).
    pub to: Option<String>,
    /// The phases the rotation may enter now, in order (empty: none).
    pub allowed: Vec<Phase>,
    /// What the phase after them waits on.
    pub waiting: Waiting,
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

/// The order of the phases within one rotation (Stable last: the end).
fn rank(phase: Phase) -> u8 {
    match phase {
        Phase::Distributing => 1,
        Phase::Reissuing => 2,
        Phase::Retiring => 3,
        Phase::Stable => 4,
    }
}

/// The rotation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRotation {
    phase: Phase,
    active: String,
    next: Option<String>,
    waiting: Waiting,
}

impl RootRotation {
    /// A stable state with one root.
    pub fn new(root: impl Into<String>) -> Self {
        RootRotation {
            phase: Phase::Stable,
            active: root.into(),
            next: None,
            waiting: Waiting::default(),
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

    /// The proxies that hold the current phase, by what they report.
    fn lagging(&self, next: &str, proxies: &[ProxyObservation]) -> Vec<String> {
        let lagging = |p: &&ProxyObservation| match self.phase {
            Phase::Stable => false,
            Phase::Distributing => !p.acked_roots.iter().any(|r| r == next),
            // The old root stays trusted while any proxy serves a leaf it did not sign
            // from the new root, or does not say which root signed its leaf.
            Phase::Reissuing => p.leaf_root.as_deref() != Some(next),
            Phase::Retiring => p.acked_roots.contains(&self.active),
        };
        proxies.iter().filter(lagging).map(|p| p.proxy.clone()).collect()
    }

    /// The phase after the current one (entered by the caller).
    fn step(&mut self) {
        self.phase = match self.phase {
            Phase::Distributing => Phase::Reissuing,
            Phase::Reissuing => Phase::Retiring,
            Phase::Retiring => {
                if let Some(next) = self.next.take() {
                    self.active = next;
                }
                Phase::Stable
            }
            Phase::Stable => Phase::Stable,
        };
    }

    /// The phases `reports` allow entering from here, and what the next one waits on. Pure:
    /// the state is unchanged (the leader records the phase before it enters it, with
    /// [`RootRotation::advance_to`]). Nothing advances while a replica's proxies are unknown.
    pub fn assess(&self, reports: &Reports) -> Assessment {
        let to = self.next.clone();
        let mut sim = self.clone();
        let mut allowed = Vec::new();
        loop {
            let Some(next) = sim.next.clone() else {
                return Assessment {
                    to,
                    allowed,
                    waiting: Waiting::default(),
                };
            };
            let proxies = sim.lagging(&next, &reports.proxies);
            let unconnected = reports
                .proxies
                .iter()
                .filter(|p| !p.connected && proxies.contains(&p.proxy))
                .map(|p| p.proxy.clone())
                .collect();
            let waiting = Waiting {
                proxies,
                unconnected,
                replicas: reports.unknown_replicas.clone(),
            };
            if !waiting.proxies.is_empty() || !waiting.replicas.is_empty() {
                return Assessment { to, allowed, waiting };
            }
            sim.step();
            allowed.push(sim.phase);
        }
    }

    /// Enter every phase up to `target` of the rotation under way, in order; never back (a
    /// phase behind the current one, or no rotation, changes nothing). Returns the phases
    /// entered.
    pub fn advance_to(&mut self, target: Phase) -> Vec<Phase> {
        let mut entered = Vec::new();
        while self.next.is_some() && rank(self.phase) < rank(target) {
            self.step();
            entered.push(self.phase);
        }
        if self.next.is_none() {
            self.waiting = Waiting::default();
        }
        entered
    }

    /// Keep what the rotation waits on, for [`RootRotation::progress`].
    pub fn note_waiting(&mut self, waiting: Waiting) {
        self.waiting = waiting;
    }

    /// Advance as far as `reports` allow (one replica deciding alone); returns the phases
    /// entered.
    pub fn observe(&mut self, reports: &Reports) -> Vec<Phase> {
        let assessment = self.assess(reports);
        let entered = match assessment.allowed.last() {
            Some(target) => self.advance_to(*target),
            None => Vec::new(),
        };
        self.waiting = assessment.waiting;
        entered
    }

    /// What the rotation waits for, for the operator's admin API and the Mesh status.
    pub fn progress(&self) -> String {
        let list = |names: Vec<String>| {
            let shown: Vec<String> = names.iter().take(5).cloned().collect();
            let more = names.len().saturating_sub(shown.len());
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("{}{tail}", shown.join(", "))
        };
        let waiting = |what: &str| {
            if !self.waiting.replicas.is_empty() {
                let replicas = self
                    .waiting
                    .replicas
                    .iter()
                    .map(|(name, why)| format!("{name} ({why})"))
                    .collect();
                return format!(
                    "{what}; waiting on {} operator replicas whose proxies are unknown: {}: no phase advances on missing information, so the old root stays trusted until every replica answers",
                    self.waiting.replicas.len(),
                    list(replicas)
                );
            }
            let mut names = self.waiting.proxies.clone();
            names.sort();
            let mut away = self.waiting.unconnected.clone();
            away.sort();
            let away = if away.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} of them not connected to any operator replica ({}): a proxy away keeps the trust bundle and certificate it had, so the rotation waits for it to subscribe again; bring its proxy back, or delete its pod",
                    away.len(),
                    list(away)
                )
            };
            format!("{what}; waiting on {} proxies: {}{away}", names.len(), list(names))
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
            connected: true,
        }
    }

    fn all(proxies: &[ProxyObservation]) -> Reports {
        Reports {
            proxies: proxies.to_vec(),
            unknown_replicas: Vec::new(),
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
        let entered = r.observe(&all(&[obs("a", &["old", "new"], "old"), obs("b", &["old"], "old")]));
        assert!(entered.is_empty());
        assert!(r.progress().contains("waiting on 1 proxies: b"), "{}", r.progress());

        // Everyone has it: issue from the new root.
        let entered = r.observe(&all(&[
            obs("a", &["old", "new"], "old"),
            obs("b", &["old", "new"], "old"),
        ]));
        assert_eq!(entered, [Phase::Reissuing]);
        assert_eq!(r.issuing_root(), "new");
        assert_eq!(
            r.trust_bundle(),
            ["old", "new"],
            "the old root stays trusted while old leaves live"
        );

        // b still serves an old leaf.
        assert!(
            r.observe(&all(&[
                obs("a", &["old", "new"], "new"),
                obs("b", &["old", "new"], "old")
            ]))
            .is_empty()
        );
        let entered = r.observe(&all(&[
            obs("a", &["old", "new"], "new"),
            obs("b", &["old", "new"], "new"),
        ]));
        assert_eq!(entered, [Phase::Retiring]);
        assert_eq!(r.trust_bundle(), ["new"]);

        // a has not acknowledged the bundle without the old root.
        assert!(
            r.observe(&all(&[obs("a", &["old", "new"], "new"), obs("b", &["new"], "new")]))
                .is_empty()
        );
        let entered = r.observe(&all(&[obs("a", &["new"], "new"), obs("b", &["new"], "new")]));
        assert_eq!(entered, [Phase::Stable]);
        assert_eq!(r.trust_bundle(), ["new"]);
        assert_eq!(r.issuing_root(), "new");
    }

    #[test]
    fn with_no_proxies_it_completes_at_once() {
        let mut r = RootRotation::new("old");
        r.start("new").unwrap();
        assert_eq!(r.observe(&all(&[])), [Phase::Reissuing, Phase::Retiring, Phase::Stable]);
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
            connected: true,
        };
        assert_eq!(r.observe(&all(std::slice::from_ref(&p))), [Phase::Reissuing]);
        assert!(r.observe(&all(&[p])).is_empty());
        assert_eq!(r.phase(), Phase::Reissuing);
    }

    /// The decision reads what each proxy reports serving, whichever replica signed it: a
    /// proxy that renewed through another replica and got a leaf of the old root again holds
    /// the old root, however many new leaves this replica signed.
    #[test]
    fn the_old_root_stays_while_any_proxy_on_any_replica_serves_a_leaf_of_it() {
        let mut r = RootRotation::new("old");
        r.start("new").unwrap();
        r.advance_to(Phase::Reissuing);
        // web-1 is subscribed to this replica, web-2 to the other one (merged by the caller).
        let reports = all(&[
            obs("shop/web-1", &["old", "new"], "new"),
            obs("shop/web-2", &["old", "new"], "old"),
        ]);
        let a = r.assess(&reports);
        assert!(a.allowed.is_empty(), "{a:?}");
        assert_eq!(a.waiting.proxies, ["shop/web-2"]);
        assert_eq!(r.phase(), Phase::Reissuing, "assessing changes nothing");
        let reports = all(&[
            obs("shop/web-1", &["old", "new"], "new"),
            obs("shop/web-2", &["old", "new"], "new"),
        ]);
        assert_eq!(r.assess(&reports).allowed, [Phase::Retiring]);
    }

    /// Fail safe: a replica whose proxies are unknown holds every phase, however complete the
    /// reports that did arrive look, and the progress says which replica and why.
    #[test]
    fn no_phase_advances_while_a_replica_cannot_be_asked() {
        let mut r = RootRotation::new("old");
        r.start("new").unwrap();
        let done = [obs("shop/web-1", &["new"], "new")];
        let reports = Reports {
            proxies: done.to_vec(),
            unknown_replicas: vec![("trellis-operator-b".into(), "no answer within 2s".into())],
        };
        for phase in [Phase::Distributing, Phase::Reissuing, Phase::Retiring] {
            r.advance_to(phase);
            assert!(r.observe(&reports).is_empty(), "{phase}");
            assert_eq!(r.phase(), phase);
            let progress = r.progress();
            assert!(
                progress.contains("trellis-operator-b (no answer within 2s)")
                    && progress.contains("old root stays trusted"),
                "{progress}"
            );
        }
        assert_eq!(r.observe(&all(&done)), [Phase::Stable]);
    }

    /// Followers enter the phases the leader recorded, in order, and never go back.
    #[test]
    fn advancing_to_a_recorded_phase_goes_forward_only() {
        let mut r = RootRotation::new("old");
        assert!(r.advance_to(Phase::Retiring).is_empty(), "no rotation: nothing");
        r.start("new").unwrap();
        assert_eq!(r.advance_to(Phase::Retiring), [Phase::Reissuing, Phase::Retiring]);
        assert!(r.advance_to(Phase::Reissuing).is_empty(), "never back");
        assert_eq!(r.phase(), Phase::Retiring);
        assert_eq!(r.advance_to(Phase::Stable), [Phase::Stable]);
        assert_eq!(r.current(), "new");
        assert_eq!(r.next(), None);
    }

    /// A proxy no replica hears from (its pod still there) holds every phase it has not done,
    /// and the progress says it is away and what to do.
    #[test]
    fn a_proxy_away_holds_the_rotation_and_the_progress_says_so() {
        let mut r = RootRotation::new("old");
        r.start("new").unwrap();
        let away = ProxyObservation {
            proxy: "shop/web-1".into(),
            acked_roots: Vec::new(),
            leaf_root: None,
            connected: false,
        };
        let reports = all(&[obs("shop/db-0", &["old", "new"], "old"), away]);
        assert!(r.observe(&reports).is_empty());
        assert_eq!(r.phase(), Phase::Distributing);
        assert_eq!(r.issuing_root(), "old");
        let progress = r.progress();
        assert!(
            progress.contains(
                "waiting on 1 proxies: shop/web-1; 1 of them not connected to any operator replica (shop/web-1)"
            ) && progress.contains("bring its proxy back, or delete its pod"),
            "{progress}"
        );
    }
}
