//! What the root rotation's tests read of the operator and the proxies: roots by fingerprint,
//! the phases a replica entered, whether a replica holds a proxy's subscription, and a watch
//! that no replica stops trusting a root while a proxy serves a leaf of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use trellis_operator::app;
use trellis_operator::ca::{MeshRoots, fingerprint};

/// The fingerprints of the certificates of `pem`, in order.
pub fn pem_fingerprints(pem: &str) -> Vec<String> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .map(|c| fingerprint(c.unwrap().as_ref()))
        .collect()
}

/// The roots `p`'s configuration trusts (fingerprints).
pub fn trusted(p: &trellis_proxy::App) -> Vec<String> {
    match &p.runtime().snapshot().settings.identity.trust_bundle {
        Some(trellis_contract::PemSource::Inline(pem)) => pem_fingerprints(pem),
        other => panic!("the operator pushes the bundle inline, got {other:?}"),
    }
}

/// Whether replica `r` holds the subscription of pod `shop/<pod>`'s proxy.
pub fn subscribed(r: &app::App, pod: &str) -> bool {
    r.push
        .sync_state()
        .iter()
        .any(|s| s.connected && s.proxy == format!("shop/{pod}") && s.certificate.is_some())
}

/// The phases replica `r` entered, in order.
pub fn phases(r: &app::App) -> Vec<String> {
    r.roots.status().transitions.into_iter().map(|t| t.phase).collect()
}

/// Watches, every 5 ms until the flag returned is cleared, that no replica of `replicas` stops
/// trusting the root `old` while a proxy of `served` serves a leaf of it; the task ends with
/// what it saw (at the first violation).
pub fn trust_monitor<const R: usize, const P: usize>(
    replicas: [(&'static str, Arc<MeshRoots>); R],
    served: [(&'static str, trellis_push::client::Served); P],
    old: &str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let watching = Arc::new(AtomicBool::new(true));
    let monitor = tokio::spawn({
        let (old, watching) = (old.to_string(), watching.clone());
        async move {
            let mut violations = Vec::new();
            while watching.load(Ordering::SeqCst) && violations.is_empty() {
                for (r, roots) in &replicas {
                    if roots.bundle().borrow().fingerprints.contains(&old) {
                        continue;
                    }
                    for (proxy, s) in &served {
                        if s.get().is_some_and(|c| c.root_fingerprint == old) {
                            violations.push(format!(
                                "replica {r} stopped trusting the old root while proxy {proxy} served a leaf of it ({:?})",
                                roots.status()
                            ));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            violations
        }
    });
    (watching, monitor)
}

/// That replica `r`'s rotation waits in Distributing on the proxy of pod `shop/<pod>`,
/// connected to no replica: its progress names it, and the old root `old` alone issues.
pub fn assert_held_by_a_proxy_away(r: &app::App, pod: &str, old: &str) {
    let status = r.roots.status();
    assert_eq!(
        phases(r),
        ["Stable", "Distributing"],
        "the rotation went on without shop/{pod}, which trusts only the old root: {status:?}"
    );
    assert!(
        status
            .progress
            .contains(&format!("not connected to any operator replica (shop/{pod})")),
        "{}",
        status.progress
    );
    let issuing: Vec<&str> = status
        .roots
        .iter()
        .filter(|r| r.issuing)
        .map(|r| r.fingerprint.as_str())
        .collect();
    assert_eq!(issuing, [old]);
}

/// Waits (90 s at most) for replica `r`'s rotation from root `old` to end, then checks that it
/// went through every phase once, that `monitor` (from [`trust_monitor`]) saw no violation, and
/// that `proxy` serves (`served`) a leaf of the new root and comes to trust it alone. Returns
/// the new root's fingerprint.
pub async fn assert_the_rotation_ends_through(
    r: &app::App,
    monitor: (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>),
    proxy: &trellis_proxy::App,
    served: &trellis_push::client::Served,
    old: &str,
) -> String {
    super::until("the rotation ends", 90, || {
        phases(r).iter().filter(|p| *p == "Stable").count() >= 2
    })
    .await;
    let (watching, monitor) = monitor;
    watching.store(false, Ordering::SeqCst);
    let violations = monitor.await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(
        phases(r),
        ["Stable", "Distributing", "Reissuing", "Retiring", "Stable"],
        "{:?}",
        r.roots.status()
    );
    let new_fp = r.roots.status().roots[0].fingerprint.clone();
    assert_ne!(new_fp, old);
    assert_eq!(served.get().map(|c| c.root_fingerprint), Some(new_fp.clone()));
    super::until("the proxy trusts only the new root", 10, || {
        trusted(proxy) == [new_fp.clone()]
    })
    .await;
    new_fp
}
