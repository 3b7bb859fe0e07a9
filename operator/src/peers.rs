//! The other operator replicas' view of the proxies: every replica serves the push, so a
//! proxy is connected to one of them; the leader's health gates and data plane status need
//! all of them, and so does the root rotation. Every replica polls each ready peer's
//! `/debug/syncz?scope=local` (that replica's own proxies, from its admin API) and merges it
//! with its own.
//!
//! # Caveats
//! - A peer's view is at most [`POLL`] old; a peer that does not answer counts as having no
//!   proxies until it does (its proxies read as disconnected, so health gates wait).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::index::Shared as Index;
use crate::push::ProxySync;

/// The query asking a replica for its own proxies only.
pub const LOCAL_QUERY: &str = "scope=local";
/// How often peers are asked.
pub const POLL: Duration = Duration::from_secs(2);
/// The largest `/debug/syncz` answer read from a peer.
// why: about 300 bytes per proxy; 16 MiB holds 50 000 proxies and bounds a misbehaving peer.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The peers' proxies, by peer pod name.
pub type Peers = Arc<RwLock<BTreeMap<String, Vec<ProxySync>>>>;

/// Every proxy once: `local` and the peers' merged, a connected entry winning over a stale
/// one.
pub fn merged(local: Vec<ProxySync>, peers: &Peers) -> Vec<ProxySync> {
    let remote: Vec<ProxySync> = peers
        .read()
        .map(|p| p.values().flatten().cloned().collect())
        .unwrap_or_default();
    trellis_core::analysis::merge_sync_states(local.into_iter().chain(remote))
}

/// Poll the ready operator pods of `namespace` (label `app=<app>`) other than `me` into
/// `peers`, until aborted.
pub async fn poll(index: Index, namespace: String, app: String, me: Option<String>, admin_port: u16, peers: Peers) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets: Vec<(String, String)> = match index.read() {
            Ok(idx) => idx
                .pods_in(&namespace)
                .filter(|w| w.ready && w.labels.get("app") == Some(&app))
                .filter(|w| me.as_deref() != Some(w.key.name.as_str()))
                .filter_map(|w| Some((w.key.name.clone(), w.ip.clone()?)))
                .collect(),
            Err(_) => return,
        };
        let mut seen = BTreeMap::new();
        for (name, ip) in targets {
            let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
            let Ok(uri) = format!("http://{host}:{admin_port}/debug/syncz?{LOCAL_QUERY}").parse::<hyper::Uri>() else {
                continue;
            };
            let answer = async {
                let response = client.get(uri).await.map_err(|e| e.to_string())?;
                let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                serde_json::from_slice::<Vec<ProxySync>>(&body).map_err(|e| e.to_string())
            };
            match tokio::time::timeout(POLL, answer).await {
                Ok(Ok(sync)) => {
                    seen.insert(name, sync);
                }
                Ok(Err(e)) => tracing::debug!(peer = %name, error = %e, "a peer's sync state could not be read"),
                Err(_) => tracing::debug!(peer = %name, "a peer's sync state timed out"),
            }
        }
        if let Ok(mut p) = peers.write() {
            *p = seen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(proxy: &str, connected: bool, seen: u64, acked: &str) -> ProxySync {
        ProxySync {
            proxy: proxy.into(),
            connected,
            sent: Some("v2".into()),
            acked: Some(acked.into()),
            last_seen_unix: seen,
            ..ProxySync::default()
        }
    }

    #[test]
    fn a_proxy_connected_to_a_peer_counts_as_connected() {
        let peers = Peers::default();
        peers.write().unwrap().insert(
            "op-b".into(),
            vec![sync("shop/web-1", true, 10, "v2"), sync("shop/db-0", false, 5, "v1")],
        );
        let local = vec![sync("shop/web-1", false, 20, "v1"), sync("shop/db-0", true, 30, "v2")];
        let all = merged(local, &peers);
        assert_eq!(all.len(), 2);
        let web = all.iter().find(|p| p.proxy == "shop/web-1").unwrap();
        assert!(web.connected, "the peer holds its subscription");
        assert_eq!(web.acked.as_deref(), Some("v2"));
        assert!(all.iter().find(|p| p.proxy == "shop/db-0").unwrap().connected);
    }
}
