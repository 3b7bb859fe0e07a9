//! When the issuing root is due for rotation: once less than a fifth of its lifetime is left
//! (Istio's grace period), its lifetime being the shorter of its validity and
//! `spec.ca.rootCertTtl` as the Mesh says it now. Pure: the leader's expiry check
//! ([`super::lifecycle`]) asks for a rotation by it, and the CA Secret's watch
//! ([`super::secret`]) finds a request for an expiring root moot by it once the root is being
//! replaced.

use std::time::{Duration, SystemTime};

use super::MeshRoots;

/// Whether a root valid from `not_before` to `not_after` should be rotated at `now`, roots
/// living `ttl` (`spec.ca.rootCertTtl`): less than a fifth of its lifetime is left, its lifetime
/// being the shorter of its validity and `ttl` (a root made for longer than the Mesh asks now
/// is rotated as a root made for `ttl` would be).
pub fn rotation_due(not_before: SystemTime, not_after: SystemTime, ttl: Duration, now: SystemTime) -> bool {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default().min(ttl);
    now + lifetime / 5 >= not_before + lifetime
}

/// The issuing root's fingerprint when it is due for rotation at `now`, roots living `ttl`, and
/// no rotation runs.
pub fn expiring_root(roots: &MeshRoots, ttl: Duration, now: SystemTime) -> Option<String> {
    let status = roots.status();
    if status.phase != "Stable" {
        return None;
    }
    let issuing = status.roots.into_iter().find(|r| r.issuing)?;
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    rotation_due(at(issuing.not_before_unix), at(issuing.not_after_unix), ttl, now).then_some(issuing.fingerprint)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ca::SigningCert;

    #[test]
    fn a_root_is_due_with_a_fifth_of_its_life_left() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let end = t0 + Duration::from_secs(1000);
        let ttl = Duration::from_secs(1000);
        assert!(!rotation_due(t0, end, ttl, t0));
        assert!(!rotation_due(t0, end, ttl, t0 + Duration::from_secs(799)));
        assert!(rotation_due(t0, end, ttl, t0 + Duration::from_secs(800)));
        assert!(
            rotation_due(t0, end, ttl, end + Duration::from_secs(1)),
            "expired: overdue"
        );
        // A longer rootCertTtl changes nothing for the root in use: its validity ends first.
        assert!(!rotation_due(t0, end, 10 * ttl, t0 + Duration::from_secs(799)));
    }

    #[test]
    fn a_shorter_root_ttl_brings_the_rotation_of_the_root_in_use_forward() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86400);
        // A root of 10 years, the Mesh now asking for 100 days: rotated at 80 days, with a
        // fifth of the life a 100-day root would have left.
        let end = t0 + 3650 * day;
        assert!(!rotation_due(t0, end, 100 * day, t0 + 79 * day));
        assert!(rotation_due(t0, end, 100 * day, t0 + 80 * day));
        assert!(
            rotation_due(t0, end, 100 * day, t0 + 200 * day),
            "older than the new lifetime: at once"
        );
    }

    #[test]
    fn the_issuing_root_is_named_when_it_nears_expiry() {
        let t0 = SystemTime::now();
        let root = SigningCert::self_signed_root("cluster.local", Duration::from_secs(10 * 86400), t0).unwrap();
        let fp = root.fingerprint().to_string();
        let roots = MeshRoots::new(root, Duration::from_secs(3600), Arc::new(crate::ca::SystemClock));
        let ttl = Duration::from_secs(10 * 86400);
        assert_eq!(expiring_root(&roots, ttl, t0), None);
        assert_eq!(
            expiring_root(&roots, ttl, t0 + Duration::from_secs(9 * 86400)),
            Some(fp.clone())
        );
        // The Mesh asks for 2-day roots now: this one is due within its first days.
        assert_eq!(
            expiring_root(
                &roots,
                Duration::from_secs(2 * 86400),
                t0 + Duration::from_secs(2 * 86400)
            ),
            Some(fp)
        );
    }
}
