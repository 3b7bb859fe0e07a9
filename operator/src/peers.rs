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

/// Where this replica finds its peers: the ready pods of `namespace` labelled `app=<app>`,
/// other than `me`, whose admin API listens on `admin_port`.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    /// The operator's namespace.
    pub namespace: String,
    /// The operator pods' `app` label.
    pub app: String,
    /// This replica's pod name (none outside a pod: every matching pod is a peer).
    pub me: Option<String>,
    /// The admin API's port.
    pub admin_port: u16,
}

impl Replicas {
    /// Each ready peer's pod name and admin API base URL (`http://ip:port`), from `index`.
    pub fn targets(&self, index: &Index) -> Vec<(String, String)> {
        let Ok(idx) = index.read() else {
            return Vec::new();
        };
        idx.pods_in(&self.namespace)
            .filter(|w| w.ready && w.labels.get("app") == Some(&self.app))
            .filter(|w| self.me.as_deref() != Some(w.key.name.as_str()))
            .filter_map(|w| {
                let ip = w.ip.as_deref()?;
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_string()
                };
                Some((w.key.name.clone(), format!("http://{host}:{}", self.admin_port)))
            })
            .collect()
    }
}

/// `GET path` of each peer of `targets` (from [`Replicas::targets`]) at once, each within
/// [`POLL`] and at most `limit` bytes: each peer's name with its answer or why there is none.
pub async fn ask(targets: Vec<(String, String)>, path: &str, limit: usize) -> Vec<(String, Result<Bytes, String>)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let asks = targets.into_iter().map(|(name, base)| {
        let client = client.clone();
        async move {
            let answer = async {
                let uri: hyper::Uri = format!("{base}{path}").parse().map_err(|e| format!("{e}"))?;
                let response = client.get(uri).await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()));
                }
                http_body_util::Limited::new(response.into_body(), limit)
                    .collect()
                    .await
                    .map(http_body_util::Collected::to_bytes)
                    .map_err(|e| e.to_string())
            };
            let answer = tokio::time::timeout(POLL, answer)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {POLL:?}")));
            (name, answer)
        }
    });
    futures::future::join_all(asks).await
}

/// Poll the peers `replicas` names into `peers`, until aborted.
pub async fn poll(index: Index, replicas: Replicas, peers: Peers) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let path = format!("/debug/syncz?{LOCAL_QUERY}");
    loop {
        tick.tick().await;
        let mut seen = BTreeMap::new();
        for (name, answer) in ask(replicas.targets(&index), &path, MAX_ANSWER).await {
            match answer.and_then(|body| serde_json::from_slice::<Vec<ProxySync>>(&body).map_err(|e| e.to_string())) {
                Ok(sync) => {
                    seen.insert(name, sync);
                }
                Err(e) => tracing::debug!(peer = %name, error = %e, "a peer's sync state could not be read"),
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
