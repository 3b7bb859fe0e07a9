//! The push server's per-proxy sync state (what `/debug/syncz` serves): one [`ProxySync`] per
//! subscribed proxy, owned by the subscription that holds it.
//!
//! # Guarantees
//! - A state lives as long as its subscription: [`SyncStates::unsubscribed`] drops it, so a
//!   proxy whose pod is gone leaves nothing behind (meshctl and the rollout's health gates read
//!   a missing state as not connected).
//! - A proxy that subscribes again before its previous subscription has ended (a reconnect the
//!   operator notices late) takes the state over: the previous subscription's late answers
//!   and its end change nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use trellis_contract::certificate::ServedCertificate;

use super::ProxySync;

/// A proxy's sync state and the subscription it belongs to.
#[derive(Debug, Clone)]
struct Subscribed {
    id: u64,
    state: ProxySync,
}

/// The sync states of the proxies subscribed to this replica.
#[derive(Debug, Default)]
pub(crate) struct SyncStates {
    by_proxy: Mutex<BTreeMap<String, Subscribed>>,
    next_id: AtomicU64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SyncStates {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Subscribed>> {
        self.by_proxy.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every subscribed proxy's state, sorted by proxy.
    pub(crate) fn states(&self) -> Vec<ProxySync> {
        self.lock().values().map(|s| s.state.clone()).collect()
    }

    /// A new subscription of `proxy` takes its state over (the state a previous subscription
    /// still holds is the start), set up by `f`; returns the subscription's id.
    pub(crate) fn subscribed(&self, proxy: &str, f: impl FnOnce(&mut ProxySync)) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut states = self.lock();
        let entry = states.entry(proxy.to_string()).or_insert_with(|| Subscribed {
            id,
            state: ProxySync {
                proxy: proxy.into(),
                ..ProxySync::default()
            },
        });
        entry.id = id;
        entry.state.last_seen_unix = now_unix();
        f(&mut entry.state);
        id
    }

    /// Change the state of `proxy` by `f` if subscription `id` still holds it.
    pub(crate) fn update(&self, proxy: &str, id: u64, f: impl FnOnce(&mut ProxySync)) {
        if let Some(entry) = self.lock().get_mut(proxy).filter(|e| e.id == id) {
            entry.state.last_seen_unix = now_unix();
            f(&mut entry.state);
        }
    }

    /// Subscription `id` of `proxy` ended: the state goes, unless a newer subscription holds
    /// it.
    pub(crate) fn unsubscribed(&self, proxy: &str, id: u64) {
        let mut states = self.lock();
        if states.get(proxy).is_some_and(|e| e.id == id) {
            states.remove(proxy);
        }
    }
}

/// The certificate report in `json` (a Hello's or a Certificate message's) from `proxy`,
/// checked; a malformed one is logged and counts as none.
pub(crate) fn reported_certificate(proxy: &str, json: &[u8]) -> Option<ServedCertificate> {
    trellis_push::served_certificate(json).unwrap_or_else(|error| {
        tracing::warn!(%proxy, %error, "dropped a malformed certificate report");
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_lives_as_long_as_the_subscription_that_holds_it() {
        let states = SyncStates::default();
        let first = states.subscribed("shop/web-1", |s| s.connected = true);
        states.update("shop/web-1", first, |s| s.acked = Some("v1".into()));
        assert_eq!(states.states()[0].acked.as_deref(), Some("v1"));
        // Ended: gone.
        states.unsubscribed("shop/web-1", first);
        assert!(states.states().is_empty());
        // Answers of an ended subscription change nothing.
        states.update("shop/web-1", first, |s| s.acked = Some("v2".into()));
        assert!(states.states().is_empty());
    }

    #[test]
    fn a_proxy_that_subscribes_again_keeps_its_state_when_the_old_subscription_ends() {
        let states = SyncStates::default();
        let old = states.subscribed("shop/web-1", |s| s.connected = true);
        states.update("shop/web-1", old, |s| s.acked = Some("v1".into()));
        let new = states.subscribed("shop/web-1", |s| s.connected = true);
        assert_ne!(old, new);
        assert_eq!(
            states.states()[0].acked.as_deref(),
            Some("v1"),
            "the new subscription starts from the state"
        );
        // The old subscription answers late, then ends: the new one's state stays as it is.
        states.update("shop/web-1", old, |s| s.acked = Some("v0".into()));
        states.unsubscribed("shop/web-1", old);
        let all = states.states();
        assert_eq!(all.len(), 1);
        assert!(all[0].connected);
        assert_eq!(all[0].acked.as_deref(), Some("v1"));
        states.unsubscribed("shop/web-1", new);
        assert!(states.states().is_empty());
    }

    #[test]
    fn certificate_reports_are_checked() {
        let good = trellis_push::certificate_json(&ServedCertificate {
            root_fingerprint: "0f".repeat(32),
            serial: "01:02".into(),
            not_before_unix: 1,
            not_after_unix: 2,
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
        });
        assert_eq!(
            reported_certificate("shop/web-1", &good).map(|c| c.serial),
            Some("01:02".to_string())
        );
        assert_eq!(reported_certificate("shop/web-1", b""), None);
        assert_eq!(reported_certificate("shop/web-1", b"{"), None);
        let bad = br#"{"rootFingerprint": "nope", "serial": "01", "notBeforeUnix": 1, "notAfterUnix": 2}"#;
        assert_eq!(reported_certificate("shop/web-1", bad), None);
    }
}
