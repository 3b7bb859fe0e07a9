//! The other operator replicas' view of the proxies: every replica serves the push, so a
//! proxy is connected to one of them; the leader's health gates and data plane status need
//! all of them, and so does the root rotation. Every replica polls each ready peer's
//! `/debug/syncz?scope=local` (that replica's own proxies, from its admin API) and merges it
//! with its own.
//!
//! # Guarantees
//! - [`rotation_reports`] names every peer whose proxies are not known — not asked yet, no
//!   answer, or an answer older than [`STALE`] —, so the root rotation never advances on
//!   missing information.
//! - [`rotation_reports`] keeps every proxy it has seen connected whose pod still exists, as
//!   one that acknowledged nothing and serves no known leaf, while no replica reports it: a
//!   proxy away from the operator (its replica killed, its reconnection slow) keeps serving
//!   what it had, so no phase advances past it.
//!
//! # Caveats
//! - A peer's view is at most [`POLL`] old; for the health gates and the status a peer that
//!   does not answer counts as having no proxies until it does (its proxies read as
//!   disconnected, so health gates wait).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

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

/// A peer's answer older than this is not taken as its proxies by the root rotation.
// why: a peer is asked every POLL and answers within POLL, so a current answer is at most two
// POLLs old; five leave room for a slow API server and a loaded node, and cost a root
// rotation at most a few seconds.
pub const STALE: Duration = Duration::from_secs(10);

/// What a peer answered when it was last asked.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When it was asked.
    pub at: SystemTime,
    /// Its own proxies, or why they could not be read.
    pub proxies: Result<Vec<ProxySync>, String>,
}

/// The peers' answers, by peer pod name: every peer asked at the last poll.
pub type Peers = Arc<RwLock<BTreeMap<String, Answer>>>;

/// Every proxy once: `local` and the peers' merged, a connected entry winning over a stale
/// one.
pub fn merged(local: Vec<ProxySync>, peers: &Peers) -> Vec<ProxySync> {
    let remote: Vec<ProxySync> = peers
        .read()
        .map(|p| {
            p.values()
                .filter_map(|a| a.proxies.as_ref().ok())
                .flatten()
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    trellis_core::analysis::merge_sync_states(local.into_iter().chain(remote))
}

/// What the root rotation decides on at `now`: the connected proxies of this replica
/// (`local`) and of every peer in `replicas` (the peers there are now), merged, each with the
/// root of the certificate it reports serving; and the peers whose proxies are unknown, with
/// why — one not asked yet, one that did not answer, one whose answer is older than [`STALE`].
///
/// A proxy known to run and in no report now counts as having acknowledged nothing and serving
/// no known leaf for as long as its pod exists (`pod_exists`, given the proxy's
/// `namespace/pod`: the index holds the pod): its subscription broke — its replica was killed,
/// say — or it is moving to another replica whose answer has not shown it yet, and either way
/// its data path keeps the trust bundle and the leaf it had, whatever the operator cannot hear.
/// Known to run: `seen` connected before (kept up to date here: call this on every look at the
/// proxies, with or without a rotation under way), or in a Ready pod whose proxy — an injected
/// sidecar or a gateway's — runs configured (`ready_proxies`, `namespace/pod`:
/// [`crate::index::Index::ready_proxies`]) — what a replica that has just started knows of a
/// proxy it never saw. A proxy whose pod is gone holds it until [`STALE`] after it was last
/// seen (a deleted pod's proxy may drain a while), then nothing.
pub fn rotation_reports(
    local: Vec<ProxySync>,
    replicas: &[String],
    answers: &BTreeMap<String, Answer>,
    seen: &mut BTreeMap<String, SystemTime>,
    pod_exists: impl Fn(&str) -> bool,
    ready_proxies: &[String],
    now: SystemTime,
) -> crate::ca::Reports {
    let mut unknown_replicas = Vec::new();
    let mut states = local;
    for name in replicas {
        match answers.get(name) {
            None => unknown_replicas.push((name.clone(), "not asked yet".to_string())),
            Some(Answer { proxies: Err(why), .. }) => unknown_replicas.push((name.clone(), why.clone())),
            Some(Answer { at, proxies: Ok(sync) }) => {
                let age = now.duration_since(*at).unwrap_or_default();
                if age > STALE {
                    unknown_replicas.push((name.clone(), format!("its last answer is {}s old", age.as_secs())));
                } else {
                    states.extend(sync.iter().cloned());
                }
            }
        }
    }
    let mut proxies: Vec<crate::ca::ProxyObservation> = trellis_core::analysis::merge_sync_states(states)
        .into_iter()
        .filter(|p| p.connected)
        .map(|p| crate::ca::ProxyObservation {
            leaf_root: p.certificate.map(|c| c.root_fingerprint),
            acked_roots: p.acked_roots,
            proxy: p.proxy,
            connected: true,
        })
        .collect();
    for p in &proxies {
        seen.insert(p.proxy.clone(), now);
    }
    for proxy in ready_proxies {
        seen.entry(proxy.clone()).or_insert(now);
    }
    seen.retain(|proxy, at| pod_exists(proxy) || now.duration_since(*at).unwrap_or_default() <= STALE);
    for proxy in seen.keys() {
        if !proxies.iter().any(|p| &p.proxy == proxy) {
            proxies.push(crate::ca::ProxyObservation {
                proxy: proxy.clone(),
                acked_roots: Vec::new(),
                leaf_root: None,
                connected: false,
            });
        }
    }
    crate::ca::Reports {
        proxies,
        unknown_replicas,
    }
}

/// Where this replica finds its peers: the ready pods of `namespace` labelled `app=<app>`,
/// other than `me`, whose admin API listens on `admin_port`; or the peers `fixed` names.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    /// The peers' names and admin API base URLs, when they are not pods this replica can find
    /// (replicas run outside the cluster); empty: found from the pods.
    pub fixed: Vec<(String, String)>,
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
        if !self.fixed.is_empty() {
            return self.fixed.clone();
        }
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
        let at = SystemTime::now();
        for (name, answer) in ask(replicas.targets(&index), &path, MAX_ANSWER).await {
            let proxies =
                answer.and_then(|body| serde_json::from_slice::<Vec<ProxySync>>(&body).map_err(|e| e.to_string()));
            if let Err(e) = &proxies {
                tracing::debug!(peer = %name, error = %e, "a peer's sync state could not be read");
            }
            seen.insert(name, Answer { at, proxies });
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
            Answer {
                at: SystemTime::now(),
                proxies: Ok(vec![
                    sync("shop/web-1", true, 10, "v2"),
                    sync("shop/db-0", false, 5, "v1"),
                ]),
            },
        );
        let local = vec![sync("shop/web-1", false, 20, "v1"), sync("shop/db-0", true, 30, "v2")];
        let all = merged(local, &peers);
        assert_eq!(all.len(), 2);
        let web = all.iter().find(|p| p.proxy == "shop/web-1").unwrap();
        assert!(web.connected, "the peer holds its subscription");
        assert_eq!(web.acked.as_deref(), Some("v2"));
        assert!(all.iter().find(|p| p.proxy == "shop/db-0").unwrap().connected);
    }

    fn serving(proxy: &str, root: &str) -> ProxySync {
        ProxySync {
            certificate: Some(trellis_contract::certificate::ServedCertificate {
                root_fingerprint: root.into(),
                serial: "01".into(),
                not_before_unix: 1,
                not_after_unix: 2,
                spiffe_id: String::new(),
            }),
            acked_roots: vec!["old".into(), "new".into()],
            ..sync(proxy, true, 10, "v2")
        }
    }

    /// The rotation sees the proxies of every replica with the root each reports serving, and
    /// names each replica it cannot see, by an injected clock.
    #[test]
    fn rotation_reports_merge_every_replica_and_name_the_unknown_ones() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let answers = BTreeMap::from([
            (
                "op-b".to_string(),
                Answer {
                    at: t0,
                    proxies: Ok(vec![serving("shop/web-2", "old")]),
                },
            ),
            (
                "op-c".to_string(),
                Answer {
                    at: t0,
                    proxies: Err("connection refused".into()),
                },
            ),
        ]);
        let local = vec![serving("shop/web-1", "new")];
        let replicas = ["op-b".to_string(), "op-c".to_string(), "op-d".to_string()];
        let mut seen = BTreeMap::new();
        let r = rotation_reports(
            local.clone(),
            &replicas,
            &answers,
            &mut seen,
            |_| false,
            &[],
            t0 + Duration::from_secs(3),
        );
        let roots: Vec<(&str, Option<&str>)> = r
            .proxies
            .iter()
            .map(|p| (p.proxy.as_str(), p.leaf_root.as_deref()))
            .collect();
        assert_eq!(roots, [("shop/web-1", Some("new")), ("shop/web-2", Some("old"))]);
        assert_eq!(
            r.unknown_replicas,
            [
                ("op-c".to_string(), "connection refused".to_string()),
                ("op-d".to_string(), "not asked yet".to_string())
            ]
        );
        // The same answer, too old: op-b's proxies are unknown, not absent; web-2, seen 8 s
        // ago, holds the rotation as a proxy that acknowledged nothing.
        let later = t0 + STALE + Duration::from_secs(1);
        let r = rotation_reports(
            local.clone(),
            &replicas[..1],
            &answers,
            &mut seen,
            |_| false,
            &[],
            later,
        );
        assert_eq!(
            r.unknown_replicas,
            [("op-b".to_string(), "its last answer is 11s old".to_string())]
        );
        let web2 = r
            .proxies
            .iter()
            .find(|p| p.proxy == "shop/web-2")
            .expect("web-2 still counts");
        assert!(web2.acked_roots.is_empty() && web2.leaf_root.is_none(), "{web2:?}");
        // Gone for longer than STALE, and its pod with it: it holds nothing any more.
        let r = rotation_reports(local, &[], &answers, &mut seen, |_| false, &[], later + STALE);
        let names: Vec<&str> = r.proxies.iter().map(|p| p.proxy.as_str()).collect();
        assert_eq!(names, ["shop/web-1"]);
        assert!(r.unknown_replicas.is_empty());
    }

    /// A proxy whose subscription broke (its replica was killed) keeps serving the trust bundle
    /// and the leaf it had, however long it takes to subscribe again: while its pod exists it
    /// holds the rotation as one that acknowledged nothing, and only its pod's end lets go.
    #[test]
    fn a_proxy_away_from_every_replica_holds_the_rotation_while_its_pod_exists() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let killed = BTreeMap::from([(
            "op-a".to_string(),
            Answer {
                at: t0,
                proxies: Ok(vec![serving("shop/web-1", "old")]),
            },
        )]);
        let local = vec![serving("shop/db-0", "new")];
        let mut seen = BTreeMap::new();
        // Seen on the replica that is killed next (seen before any rotation: the replica that
        // leads next must know it).
        let r = rotation_reports(
            local.clone(),
            &["op-a".to_string()],
            &killed,
            &mut seen,
            |_| true,
            &[],
            t0,
        );
        assert_eq!(r.proxies.len(), 2, "{r:?}");
        // op-a is gone (no longer a peer) and web-1 subscribes nowhere for a minute.
        let pods = std::sync::Mutex::new(vec!["shop/web-1", "shop/db-0"]);
        let exists = |proxy: &str| pods.lock().unwrap().contains(&proxy);
        for late in [STALE + Duration::from_secs(1), Duration::from_secs(60)] {
            let r = rotation_reports(local.clone(), &[], &killed, &mut seen, exists, &[], t0 + late);
            let web1 = r
                .proxies
                .iter()
                .find(|p| p.proxy == "shop/web-1")
                .unwrap_or_else(|| panic!("web-1, away {late:?}, no longer holds the rotation: {r:?}"));
            assert!(
                web1.acked_roots.is_empty() && web1.leaf_root.is_none() && !web1.connected,
                "{web1:?}"
            );
            assert!(r.unknown_replicas.is_empty());
        }
        // Its pod deleted (seen last more than STALE ago): it holds nothing any more.
        pods.lock().unwrap().retain(|p| *p != "shop/web-1");
        let r = rotation_reports(
            local,
            &[],
            &killed,
            &mut seen,
            exists,
            &[],
            t0 + Duration::from_secs(61),
        );
        let names: Vec<&str> = r.proxies.iter().map(|p| p.proxy.as_str()).collect();
        assert_eq!(names, ["shop/db-0"]);
    }

    /// A replica that has just started (leading after the one it replaces was killed) never
    /// saw the proxies that were away meanwhile: a Ready pod's proxy (a sidecar's or a
    /// gateway's) runs configured, so it holds the rotation until it reports, wherever it
    /// subscribes.
    #[test]
    fn a_ready_proxy_never_seen_holds_the_rotation_until_it_reports() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ready = ["shop/web-1".to_string(), "shop/db-0".to_string()];
        let mut seen = BTreeMap::new();
        let local = vec![serving("shop/db-0", "new")];
        let r = rotation_reports(local.clone(), &[], &BTreeMap::new(), &mut seen, |_| true, &ready, t0);
        let web1 = r.proxies.iter().find(|p| p.proxy == "shop/web-1").expect("web-1 holds");
        assert!(
            !web1.connected && web1.acked_roots.is_empty() && web1.leaf_root.is_none(),
            "{web1:?}"
        );
        assert_eq!(r.proxies.len(), 2, "{r:?}");
        // It subscribes to this replica: its report is the one that counts.
        let local = vec![serving("shop/db-0", "new"), serving("shop/web-1", "new")];
        let r = rotation_reports(local, &[], &BTreeMap::new(), &mut seen, |_| true, &ready, t0);
        assert!(
            r.proxies
                .iter()
                .all(|p| p.connected && p.leaf_root.as_deref() == Some("new")),
            "{r:?}"
        );
        assert_eq!(r.proxies.len(), 2, "{r:?}");
    }
}
