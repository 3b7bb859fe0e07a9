//! The certificate authority as the Mesh's conditions and events say it: the
//! `CertificateAuthorityReady` condition from what the CA looks like ([`CaObservation`]: its
//! root, the rotation under way and what it waits for, a root queued, a trust domain change),
//! and the events of a root rotation ([`ca_transitions`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use trellis_api::mesh::CertificateAuthorityStatus;

/// A root expiring sooner than this is reported (Degraded) so a person rotates it in time.
// why: a self-signed root is rotated by the operator long before this; a plugged root is the
// user's to renew, and a month is the usual notice for certificate renewals.
pub const ROOT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the certificate authority looks like.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaObservation {
    /// `SelfSigned` or `Plugged`.
    pub mode: String,
    /// The trust domain certificates are issued in.
    pub trust_domain: String,
    /// Fingerprint of the issuing root.
    pub root_fingerprint: String,
    /// When the issuing root expires.
    pub root_expires: Option<SystemTime>,
    /// Rotation phase (`Stable`, ...).
    pub phase: String,
    /// What the rotation waits for.
    pub progress: String,
    /// A root asked for during the rotation under way (fingerprint), rotated to once it ends.
    pub queued_root: Option<String>,
    /// Why the CA cannot follow the Mesh's CA settings (e.g. a plugged Secret that is missing).
    pub problem: Option<String>,
    /// The Secret the root is kept in (`namespace/name`: the operator's namespace), for the
    /// messages that tell a person where to act.
    pub secret: String,
    /// Connected proxies (`namespace/pod`) by the trust domain of the certificate they serve
    /// ([`crate::mesh::trust_domain::UNREPORTED`] for those that do not say).
    pub served_trust_domains: BTreeMap<String, Vec<String>>,
    /// Meshed pods whose proxy ran and is not connected ([`crate::mesh::trust_domain::unconnected`]).
    pub unconnected: Vec<String>,
    /// The previous trust domains still aliases of `trust_domain`, a change under way
    /// ([`crate::mesh::trust_domain::previous`]).
    pub previous_trust_domains: Vec<String>,
}

fn days(d: Duration) -> u64 {
    d.as_secs() / 86400
}

fn rfc3339(t: SystemTime) -> String {
    Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
}

/// `CertificateAuthorityReady`: ready, reason and message.
pub(super) fn ca_condition(ca: &CaObservation, now: SystemTime) -> (bool, &'static str, String) {
    if let Some(problem) = &ca.problem {
        return (false, "CertificateAuthorityUnusable", problem.clone());
    }
    let Some(expires) = ca.root_expires else {
        return (
            false,
            "NoRoot",
            "the operator holds no root yet; it creates or loads one at start".into(),
        );
    };
    let fp: String = ca.root_fingerprint.chars().take(16).collect();
    match expires.duration_since(now) {
        Err(_) => (
            false,
            "RootExpired",
            format!(
                "the root {fp} expired at {}; rotate it: annotate Secret {} with trellis.dev/rotate-root=now (self-signed) or plug a new root",
                rfc3339(expires),
                ca.secret
            ),
        ),
        Ok(left) => {
            let mut rotating = if ca.phase == "Stable" {
                String::new()
            } else {
                format!("; root rotation {}: {}", ca.phase, ca.progress)
            };
            if let Some(queued) = &ca.queued_root {
                let queued: String = queued.chars().take(16).collect();
                rotating.push_str(&format!(
                    "; root {queued} is queued (asked for during the rotation; kept in Secret {} as queued-ca.crt): it is rotated to once the rotation under way ends",
                    ca.secret
                ));
            }
            let changing = crate::mesh::trust_domain::progress(
                &ca.trust_domain,
                &ca.previous_trust_domains,
                &ca.served_trust_domains,
                &ca.unconnected,
            );
            let reason = if ca.phase != "Stable" {
                "RootRotating"
            } else if changing.is_some() {
                "TrustDomainChanging"
            } else {
                "RootValid"
            };
            let changing = changing.map(|c| format!("; {c}")).unwrap_or_default();
            (
                true,
                reason,
                format!(
                    "{} root {fp} for trust domain {} expires {} (in {} days){rotating}{changing}",
                    ca.mode,
                    ca.trust_domain,
                    rfc3339(expires),
                    days(left)
                ),
            )
        }
    }
}

/// The events of a change of the certificate authority between the status the Mesh holds and
/// the next one: a root rotation started, the issuing root changed (the root rotated), the
/// rotation finished. `(reason, note)` pairs, in that order.
pub fn ca_transitions(
    previous: Option<&CertificateAuthorityStatus>,
    next: &CertificateAuthorityStatus,
) -> Vec<(&'static str, String)> {
    let Some(previous) = previous else {
        return Vec::new(); // the first status: nothing changed, it was only not written yet
    };
    let stable = |s: &CertificateAuthorityStatus| s.rotation_phase.as_deref().is_none_or(|p| p == "Stable");
    let short = |f: &Option<String>| f.as_deref().unwrap_or("none").chars().take(16).collect::<String>();
    let mut out = Vec::new();
    if stable(previous) && !stable(next) {
        out.push((
            "RootRotationStarted",
            format!(
                "a root rotation started from root {}: phase {}",
                short(&previous.root_fingerprint),
                next.rotation_phase.as_deref().unwrap_or_default()
            ),
        ));
    }
    if previous.root_fingerprint.is_some() && previous.root_fingerprint != next.root_fingerprint {
        out.push((
            "RootRotated",
            format!(
                "new certificates are issued by root {} (expires {}), replacing root {}",
                short(&next.root_fingerprint),
                next.root_expires.as_deref().unwrap_or("unknown"),
                short(&previous.root_fingerprint)
            ),
        ));
    }
    if !stable(previous) && stable(next) {
        out.push((
            "RootRotationFinished",
            format!(
                "the root rotation finished: proxies trust only root {}",
                short(&next.root_fingerprint)
            ),
        ));
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn a_root_rotation_is_announced_when_it_starts_rotates_and_finishes() {
        let status = |fp: &str, phase: &str| CertificateAuthorityStatus {
            root_fingerprint: Some(fp.repeat(32)),
            root_expires: Some("2036-01-01T00:00:00Z".into()),
            rotation_phase: Some(phase.into()),
            ..CertificateAuthorityStatus::default()
        };
        let reasons = |p: Option<&CertificateAuthorityStatus>, n: &CertificateAuthorityStatus| {
            ca_transitions(p, n).into_iter().map(|(r, _)| r).collect::<Vec<_>>()
        };
        let stable = status("aa", "Stable");
        assert!(reasons(None, &stable).is_empty(), "a first status is no transition");
        assert!(reasons(Some(&stable), &stable).is_empty());
        let distributing = status("aa", "Distributing");
        assert_eq!(reasons(Some(&stable), &distributing), ["RootRotationStarted"]);
        let reissuing = status("bb", "Reissuing");
        let rotated = ca_transitions(Some(&distributing), &reissuing);
        assert_eq!(rotated.len(), 1);
        assert_eq!(rotated[0].0, "RootRotated");
        assert!(
            rotated[0].1.contains("root bbbbbbbbbbbbbbbb") && rotated[0].1.contains("replacing root aaaaaaaaaaaaaaaa"),
            "{}",
            rotated[0].1
        );
        let done = status("bb", "Stable");
        assert_eq!(reasons(Some(&reissuing), &done), ["RootRotationFinished"]);
        // A whole rotation between two looks is still every event, once.
        assert_eq!(
            reasons(Some(&stable), &done),
            ["RootRotated"],
            "stable to stable on another root: rotated"
        );
    }

    /// A root asked for during a rotation is said to be queued, in the message of
    /// `CertificateAuthorityReady`, with the rotation's progress.
    #[test]
    fn a_queued_root_is_said_on_the_ca_condition() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let rotating = CaObservation {
            phase: "Reissuing".into(),
            progress: "issuing from the new root until every leaf is reissued; waiting on 1 proxies: shop/web-1".into(),
            queued_root: Some("cd".repeat(32)),
            ..ca(now)
        };
        let (ready, reason, message) = ca_condition(&rotating, now);
        assert!(ready);
        assert_eq!(reason, "RootRotating");
        assert!(
            message.contains("root rotation Reissuing")
                && message.contains("root cdcdcdcdcdcdcdcd is queued")
                && message.contains("once the rotation under way ends"),
            "{message}"
        );
        let (_, _, message) = ca_condition(&ca(now), now);
        assert!(!message.contains("queued"), "{message}");
    }

    /// A healthy self-signed CA at `now`: its root expires in ten years.
    pub(in crate::mesh::conditions) fn ca(now: SystemTime) -> CaObservation {
        CaObservation {
            mode: "SelfSigned".into(),
            trust_domain: "cluster.local".into(),
            root_fingerprint: "ab".repeat(32),
            root_expires: Some(now + Duration::from_secs(3650 * 86400)),
            phase: "Stable".into(),
            progress: String::new(),
            problem: None,
            secret: "operators/trellis-ca".into(),
            ..CaObservation::default()
        }
    }
}
