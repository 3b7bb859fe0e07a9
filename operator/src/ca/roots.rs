//! The mesh roots at run time: the root (or two, during a rotation) the CA signs with, the
//! [`RootRotation`] state machine that decides which one issues and which ones proxies trust,
//! and the trust bundle announced to the push server and the `trellis-ca-root` ConfigMaps.
//!
//! The leader assesses the rotation ([`MeshRoots::assess`]) with what every replica's proxies
//! report, records the phase it may enter in the CA Secret, then enters it
//! ([`MeshRoots::advance_to`]); the other replicas enter the phases the Secret records
//! ([`super::secret::watch`]). Everything here is plain state behind one lock, with time from
//! a [`Clock`], so rotation is tested without a network.
//!
//! # Guarantees
//! - A leaf is always signed by the root the state machine says is issuing, and the root it is
//!   signed by is in every trust bundle announced until every proxy reports serving a leaf of
//!   the new root.
//! - Private keys never leave this module except through [`MeshRoots::persisted`] (for the CA
//!   Secret); [`CaStatus`] holds fingerprints, subjects and validity only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::rotation::{Assessment, Phase, Reports, RootRotation, RotationError};
use super::{Authorized, CaError, CertificateAuthority, Clock, Leaf, SigningCert};

/// What proxies must trust now, as the push server and the ConfigMap publisher see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// The roots (PEM), current root first.
    pub roots_pem: Vec<String>,
    /// Their fingerprints, in the same order.
    pub fingerprints: Vec<String>,
    /// While leaves are being reissued: the fingerprint of the issuing root, so proxies holding
    /// a leaf of another root renew at once. Empty otherwise.
    pub renew_unless_issued_by: String,
}

/// One phase change, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// The phase entered.
    pub phase: String,
    /// When (seconds since the epoch).
    pub at_unix: u64,
}

/// A root as the admin API shows it (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootInfo {
    /// SHA-256 of the certificate (hex).
    pub fingerprint: String,
    /// Subject DN.
    pub subject: String,
    /// Start of validity (seconds since the epoch).
    pub not_before_unix: u64,
    /// End of validity (seconds since the epoch).
    pub not_after_unix: u64,
    /// Whether proxies are told to trust it now.
    pub trusted: bool,
    /// Whether new leaves are signed by it.
    pub issuing: bool,
}

/// The CA's state for `/debug/ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    /// `Stable`, `Distributing`, `Reissuing` or `Retiring`.
    pub phase: String,
    /// What the rotation waits for, in words.
    pub progress: String,
    /// The roots the operator holds.
    pub roots: Vec<RootInfo>,
    /// The connected proxies of every replica by the root of the certificate each reports
    /// serving (`none`: it reported none), as the rotation last assessed them: what it waits
    /// on. Each proxy's own report is in its sync state (`/debug/syncz`).
    pub leaves_by_root: BTreeMap<String, usize>,
    /// A root asked for while a rotation was under way (fingerprint), kept in the CA Secret and
    /// rotated to once the rotation ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_root: Option<String>,
    /// Phase changes since the operator started, oldest first.
    pub transitions: Vec<Transition>,
}

struct State {
    rotation: RootRotation,
    authorities: BTreeMap<String, CertificateAuthority>,
    /// The last reports assessed, counted by the root each proxy's leaf chains to.
    leaves_by_root: BTreeMap<String, usize>,
    queued: Option<String>,
    transitions: Vec<Transition>,
}

/// The roots, the rotation, and the leaves issued.
pub struct MeshRoots {
    state: Mutex<State>,
    bundle: watch::Sender<Bundle>,
    clock: Arc<dyn Clock>,
    /// How long the next leaves are valid: the Mesh's `spec.ca.workloadCertTtl`, followed live.
    workload_ttl: Mutex<Duration>,
}

impl std::fmt::Debug for MeshRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRoots")
            .field("bundle", &*self.bundle.borrow())
            .field("workload_ttl", &self.workload_ttl())
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl MeshRoots {
    /// One root, trusted and issuing leaves valid for `workload_ttl`.
    pub fn new(root: SigningCert, workload_ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        let fp = root.fingerprint().to_string();
        let ca = CertificateAuthority::new(root, workload_ttl, Box::new(clock.clone()));
        let state = State {
            rotation: RootRotation::new(fp.clone()),
            authorities: BTreeMap::from([(fp, ca)]),
            leaves_by_root: BTreeMap::new(),
            queued: None,
            transitions: vec![Transition {
                phase: Phase::Stable.to_string(),
                at_unix: unix(clock.now()),
            }],
        };
        let bundle = watch::Sender::new(bundle_of(&state));
        MeshRoots {
            state: Mutex::new(state),
            bundle,
            clock,
            workload_ttl: Mutex::new(workload_ttl),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // why: no code path panics while holding the lock; if one ever did, the state it
        // left is still a consistent rotation, so keep serving rather than poison the CA.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sign a CSR, authenticated as `who`, with the issuing root. Returns the leaf and the
    /// fingerprint of the root that signed it (which the proxy reports back once it serves it).
    pub fn sign(&self, csr_pem: &str, who: &Authorized) -> Result<(Leaf, String), CaError> {
        let state = self.lock();
        let issuing = state.rotation.issuing_root().to_string();
        let ca = state
            .authorities
            .get(&issuing)
            .ok_or_else(|| CaError::BadRoot(format!("the issuing root {issuing} is not loaded")))?;
        let leaf = ca.sign_for(csr_pem, who, self.workload_ttl())?;
        Ok((leaf, issuing))
    }

    /// Sign the next leaves for `ttl` (the Mesh's `spec.ca.workloadCertTtl`, which every replica
    /// follows live); leaves signed before keep their lifetime until their proxy renews them.
    pub fn set_workload_ttl(&self, ttl: Duration) {
        *self
            .workload_ttl
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ttl;
    }

    /// How long the next leaves are valid.
    pub fn workload_ttl(&self) -> Duration {
        *self
            .workload_ttl
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A serving certificate (and its key, PEM) for the operator itself, from the issuing root.
    pub fn issue_serving(
        &self,
        spiffe_id: &str,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<(Leaf, String), CaError> {
        let state = self.lock();
        let issuing = state.rotation.issuing_root();
        state
            .authorities
            .get(issuing)
            .ok_or_else(|| CaError::BadRoot(format!("the issuing root {issuing} is not loaded")))?
            .issue_serving(spiffe_id, dns_names, ttl)
    }

    /// Start rotating to `new_root`: it joins every trust bundle at once; issuing switches once
    /// every proxy has acknowledged it.
    pub fn start_rotation(&self, new_root: SigningCert) -> Result<(), RotationError> {
        let mut state = self.lock();
        let fp = new_root.fingerprint().to_string();
        state.rotation.start(fp.clone())?;
        let ca = CertificateAuthority::new(new_root, self.workload_ttl(), Box::new(self.clock.clone()));
        state.authorities.insert(fp.clone(), ca);
        tracing::info!(new_root = %fp, "root rotation started: distributing the new root");
        self.entered(&mut state, &[Phase::Distributing]);
        Ok(())
    }

    /// What `reports` (every replica's connected proxies, and the replicas that could not be
    /// asked) allow from the phase this replica is in; kept for the status. Enters nothing.
    pub fn assess(&self, reports: &Reports) -> Assessment {
        let mut state = self.lock();
        let assessment = state.rotation.assess(reports);
        state.rotation.note_waiting(assessment.waiting.clone());
        let mut by_root = BTreeMap::new();
        for p in &reports.proxies {
            let root = p.leaf_root.clone().unwrap_or_else(|| "none".to_string());
            *by_root.entry(root).or_insert(0) += 1;
        }
        state.leaves_by_root = by_root;
        assessment
    }

    /// Enter every phase up to `target` of the rotation under way (forward only: the leader
    /// once it has recorded `target`, a follower once it reads it in the CA Secret); returns
    /// the phases entered.
    pub fn advance_to(&self, target: Phase) -> Vec<Phase> {
        let mut state = self.lock();
        self.enter_up_to(&mut state, target)
    }

    /// Enter every phase up to `target` of the rotation to the root `to` — the one an
    /// [`Assessment`] was made for and the leader recorded `target` for —, and nothing when
    /// another rotation is under way (that one ended, and the next one started, since). Returns
    /// the phases entered.
    pub fn advance_rotation(&self, to: &str, target: Phase) -> Vec<Phase> {
        let mut state = self.lock();
        if state.rotation.next() != Some(to) {
            return Vec::new();
        }
        self.enter_up_to(&mut state, target)
    }

    fn enter_up_to(&self, state: &mut State, target: Phase) -> Vec<Phase> {
        let entered = state.rotation.advance_to(target);
        if entered.is_empty() {
            return entered;
        }
        if entered.contains(&Phase::Stable) {
            let keep = state.rotation.current().to_string();
            state.authorities.retain(|fp, _| *fp == keep);
        }
        self.entered(state, &entered);
        entered
    }

    /// Assess and enter what `reports` allow at once: for a replica that decides alone (no
    /// CA Secret to record phases in). Returns the phases entered.
    pub fn observe(&self, reports: &Reports) -> Vec<Phase> {
        let assessment = self.assess(reports);
        match (assessment.to, assessment.allowed.last()) {
            (Some(to), Some(target)) => self.advance_rotation(&to, *target),
            _ => Vec::new(),
        }
    }

    /// The root being rotated to, during a rotation.
    pub fn next(&self) -> Option<String> {
        self.lock().rotation.next().map(str::to_string)
    }

    /// Note the root the CA Secret holds queued (fingerprint), for the status.
    pub fn set_queued(&self, fingerprint: Option<String>) {
        self.lock().queued = fingerprint;
    }

    fn entered(&self, state: &mut State, phases: &[Phase]) {
        let at = unix(self.clock.now());
        for p in phases {
            tracing::info!(phase = %p, progress = %state.rotation.progress(), "root rotation");
            state.transitions.push(Transition {
                phase: p.to_string(),
                at_unix: at,
            });
        }
        // Keep the history short: a rotation has four transitions.
        let excess = state.transitions.len().saturating_sub(32);
        state.transitions.drain(..excess);
        self.bundle.send_replace(bundle_of(state));
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.lock().rotation.phase()
    }

    /// What proxies must trust now, and its changes.
    pub fn bundle(&self) -> watch::Receiver<Bundle> {
        self.bundle.subscribe()
    }

    /// What the CA Secret must hold with the rotation in `phase` (the leader records a phase
    /// before it enters it): the target root (`ca.*`) and, while a rotation runs, the root
    /// being replaced (`previous-ca.*`), as (certificate PEM, key PEM) pairs. A restarted
    /// operator resumes a rotation from them.
    pub fn persisted_at(&self, phase: Phase) -> (SigningPair, Option<SigningPair>) {
        pairs_at(&self.lock(), phase)
    }

    /// What the CA Secret must hold with the rotation to the root `to` in `phase`
    /// ([`MeshRoots::persisted_at`]); `None` when that rotation is not the one under way.
    pub fn persisted_for(&self, to: &str, phase: Phase) -> Option<(SigningPair, Option<SigningPair>)> {
        let state = self.lock();
        (state.rotation.next() == Some(to)).then(|| pairs_at(&state, phase))
    }

    /// What the CA Secret must hold now ([`MeshRoots::persisted_at`] the current phase).
    pub fn persisted(&self) -> (SigningPair, Option<SigningPair>) {
        self.persisted_at(self.phase())
    }

    /// Whether the root with this fingerprint is held (current or next).
    pub fn holds(&self, fingerprint: &str) -> bool {
        self.lock().authorities.contains_key(fingerprint)
    }

    /// The state for the admin API.
    pub fn status(&self) -> CaStatus {
        let state = self.lock();
        let trusted = state.rotation.trust_bundle();
        let issuing = state.rotation.issuing_root();
        let roots = state
            .authorities
            .iter()
            .map(|(fp, ca)| RootInfo {
                fingerprint: fp.clone(),
                subject: ca.signer().subject().to_string(),
                not_before_unix: unix(ca.signer().not_before()),
                not_after_unix: unix(ca.signer().not_after()),
                trusted: trusted.contains(fp),
                issuing: fp == issuing,
            })
            .collect();
        CaStatus {
            phase: state.rotation.phase().to_string(),
            progress: state.rotation.progress(),
            roots,
            leaves_by_root: state.leaves_by_root.clone(),
            queued_root: state.queued.clone(),
            transitions: state.transitions.clone(),
        }
    }
}

/// A certificate and its key, PEM.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SigningPair {
    /// Certificate.
    pub cert_pem: String,
    /// Private key. Never log it.
    pub key_pem: String,
    /// For an intermediate: the chain up to the root (empty for a root).
    pub chain_pem: String,
    /// The certificate's fingerprint (SHA-256, hex).
    pub fingerprint: String,
}

impl SigningPair {
    /// The pair of `cert`.
    pub fn of(cert: &SigningCert) -> Self {
        SigningPair {
            cert_pem: cert.cert_pem().to_string(),
            key_pem: cert.key_pem(),
            chain_pem: cert.chain_pem(),
            fingerprint: cert.fingerprint().to_string(),
        }
    }
}

impl std::fmt::Debug for SigningPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningPair")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// [`MeshRoots::persisted_at`] on the locked state.
fn pairs_at(state: &State, phase: Phase) -> (SigningPair, Option<SigningPair>) {
    let pair = |fp: &str| state.authorities.get(fp).map(|ca| SigningPair::of(ca.signer()));
    let current = state.rotation.current();
    match state.rotation.next() {
        Some(next) => (
            pair(next).unwrap_or_default(),
            pair(current).filter(|_| phase != Phase::Stable),
        ),
        None => (pair(current).unwrap_or_default(), None),
    }
}

fn bundle_of(state: &State) -> Bundle {
    let fingerprints = state.rotation.trust_bundle();
    let roots_pem = fingerprints
        .iter()
        .filter_map(|fp| state.authorities.get(fp))
        .map(|ca| ca.signer().cert_pem().to_string())
        .collect();
    let renew_unless_issued_by = if state.rotation.phase() == Phase::Reissuing {
        state.rotation.issuing_root().to_string()
    } else {
        String::new()
    };
    Bundle {
        roots_pem,
        fingerprints,
        renew_unless_issued_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::SystemClock;

    fn root() -> SigningCert {
        SigningCert::self_signed_root("cluster.local", Duration::from_secs(86400), SystemTime::now()).unwrap()
    }

    /// The leader assesses a rotation, records its next phase, then enters it; meanwhile the CA
    /// Secret's watch may follow that record to the rotation's end and start a queued root's
    /// rotation. The phase assessed for the first rotation is then neither recorded for the
    /// second (it would record it ended, or in a phase it never reached) nor entered by it.
    #[test]
    fn a_phase_assessed_for_one_rotation_is_never_recorded_for_or_entered_by_the_next() {
        let (first, second, queued) = (root(), root(), root());
        let (second_fp, queued_fp) = (second.fingerprint().to_string(), queued.fingerprint().to_string());
        let roots = MeshRoots::new(first, Duration::from_secs(3600), Arc::new(SystemClock));
        roots.start_rotation(second).unwrap();
        let assessment = roots.assess(&Reports::default());
        assert_eq!(assessment.to.as_deref(), Some(second_fp.as_str()));
        let target = *assessment.allowed.last().expect("no proxy holds the rotation");
        assert_eq!(target, Phase::Stable);
        assert!(roots.persisted_for(&second_fp, target).is_some());

        // The watch follows the recorded end, and starts the queued root's rotation.
        roots.advance_to(Phase::Stable);
        roots.start_rotation(queued).unwrap();

        assert_eq!(roots.persisted_for(&second_fp, target), None, "nothing to record");
        assert!(roots.advance_rotation(&second_fp, target).is_empty());
        assert_eq!(roots.phase(), Phase::Distributing, "the queued root's rotation holds");
        let (to, previous) = roots.persisted_at(roots.phase());
        assert_eq!(to.fingerprint, queued_fp);
        assert_eq!(previous.map(|p| p.fingerprint), Some(second_fp));
        // Its own phases are entered as its assessments allow.
        assert_eq!(roots.advance_rotation(&queued_fp, Phase::Reissuing), [Phase::Reissuing]);
    }
}
