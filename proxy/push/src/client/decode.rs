//! Decoding a pushed configuration off the proxy's runtime thread: a whole configuration of a
//! large mesh is megabytes of JSON, and a delta is applied to a copy of the configuration held;
//! a sidecar's runtime is one thread (`TRELLIS_WORKERS=1`) that also carries every request, so
//! both run on a blocking thread and requests keep being served meanwhile.

use trellis_contract::ProxyConfig;

use crate::{Snapshot, SnapshotError};

/// The configuration `snapshot` carries: a whole one, or a delta applied to `held` (which is
/// left as it was). Decoded on a blocking thread.
///
/// # Caveats
/// `held` is lent to the blocking thread meanwhile: should this future be dropped before it
/// ends, `held` is left empty, and the next subscription's Hello asks for a whole config.
pub(super) async fn decoded(snapshot: Snapshot, held: &mut Option<ProxyConfig>) -> Result<ProxyConfig, SnapshotError> {
    let base = held.take();
    let work = tokio::task::spawn_blocking(move || {
        let decoded = snapshot.apply_to(base.as_ref());
        (base, decoded)
    });
    let (base, decoded) = match work.await {
        Ok(done) => done,
        // The decoding panicked: carry the panic on, as when it ran on the caller's thread.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    *held = base;
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use trellis_contract::{Cluster, ConfigDelta};

    fn config(version: &str, clusters: usize) -> ProxyConfig {
        let mut cfg = ProxyConfig::empty(version);
        cfg.clusters = (0..clusters)
            .map(|i| {
                let c =
                    serde_json::json!({"name": format!("c{i:05}"), "endpoints": [{"address": "10.0.0.1", "port": 80}]});
                serde_json::from_value::<Cluster>(c).unwrap()
            })
            .collect();
        cfg
    }

    /// While a config is decoded, other tasks of the (one-thread) runtime run: the decoding is
    /// polled first and the ticker still gets its turns before it ends.
    async fn ticks_while(
        snapshot: Snapshot,
        held: &mut Option<ProxyConfig>,
    ) -> (Result<ProxyConfig, SnapshotError>, usize) {
        let done = AtomicBool::new(false);
        let ticks = AtomicUsize::new(0);
        let decoding = async {
            let r = decoded(snapshot, held).await;
            done.store(true, Ordering::Relaxed);
            r
        };
        let ticker = async {
            while !done.load(Ordering::Relaxed) {
                ticks.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        };
        let (r, ()) = tokio::join!(decoding, ticker);
        (r, ticks.load(Ordering::Relaxed))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pushed_config_is_decoded_off_the_runtime_thread() {
        let v1 = config("v1", 2000);
        let mut held = None;
        let (whole, ticks) = ticks_while(Snapshot::from_config(&v1), &mut held).await;
        assert_eq!(whole.unwrap(), v1);
        assert!(
            ticks > 0,
            "the runtime's thread was held while the whole config was decoded"
        );
        assert!(held.is_none());

        let v2 = config("v2", 2001);
        let delta = Snapshot::from_delta(&ConfigDelta::between(&v1, &v2).unwrap()).unwrap();
        held = Some(v1.clone());
        let (applied, ticks) = ticks_while(delta, &mut held).await;
        assert_eq!(applied.unwrap(), v2);
        assert!(ticks > 0, "the runtime's thread was held while the delta was applied");
        assert_eq!(held, Some(v1), "the config held is given back as it was");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_delta_without_a_base_is_refused_and_leaves_nothing_held() {
        let delta = Snapshot::from_delta(&ConfigDelta::between(&config("v1", 1), &config("v2", 2)).unwrap()).unwrap();
        let mut held = None;
        let e = decoded(delta, &mut held).await.unwrap_err();
        assert!(matches!(e, SnapshotError::NoBase { .. }), "{e}");
        assert!(held.is_none());
    }
}
