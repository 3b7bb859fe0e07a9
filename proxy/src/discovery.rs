//! Endpoints found at run time (a cluster's `discovery`), as Envoy's cluster types find them:
//!
//! - `dns` / `dnsFirstAddress` (STRICT_DNS / LOGICAL_DNS; ServiceEntry `resolution: DNS` and
//!   `DNS_ROUND_ROBIN`): each endpoint's name is resolved with the configuration's DNS
//!   upstreams (else `/etc/resolv.conf`'s) — A, then AAAA —, at the cluster's first use and
//!   again when the answer's TTL has passed (the smallest of its records', kept between
//!   [`MIN_REFRESH`] and [`REFRESH`]: Envoy's `respect_dns_ttl`, which Istio sets) while it is
//!   used (in the background: requests keep the addresses they have meanwhile). Every address of an answer is an endpoint with the name's weight
//!   and labels (`dnsFirstAddress`: the first only). A failed lookup keeps the last answer;
//!   with none yet, requests get 503 (no healthy upstream) and the name is tried again after
//!   [`RETRY`]. Bounded: one lookup per cluster at a time, [`LOOKUP_TIMEOUT`] per upstream, at
//!   most [`MAX_ADDRESSES`] addresses a name.
//! - `originalDestination` (ORIGINAL_DST; ServiceEntry `resolution: NONE` and the outbound
//!   passthrough): the one endpoint is the address the client dialled. Each destination gets
//!   its runtime (pool, outlier state), at most [`MAX_DESTINATIONS`] of them at a time.
//!
//! Either way requests use an ordinary static cluster runtime over the addresses found
//! ([`Discovered::over`]: [`crate::upstream::ClusterRuntime`]'s), so balancing, pooling, outlier
//! detection and TLS are the same as for static endpoints. This module knows the runtime only
//! through [`Discovered`]: upstream clusters depend on discovery, not the other way round.

use crate::dns_table::{TYPE_A, TYPE_AAAA, answer_records, build_query};
use crate::identity::WorkloadIdentity;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_contract::{Cluster, Discovery, Endpoint};

/// The longest resolved addresses are used before they are looked up again (an answer with a
/// longer TTL is looked up again after this).
pub const REFRESH: Duration = Duration::from_secs(30);
/// The shortest: an answer with a TTL under this (0 included) is used this long.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// How soon a name that resolved to nothing (and had no earlier answer) is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// How long one upstream resolver is waited for.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Addresses kept from one answer.
pub const MAX_ADDRESSES: usize = 32;
/// Original destinations with a runtime at a time; past it the oldest set is dropped.
pub const MAX_DESTINATIONS: usize = 1024;

/// A cluster's run-time structure, as discovery needs it: its configuration, its discovery
/// state, and the same cluster over the endpoints found.
pub trait Discovered: Sized + Send + Sync + 'static {
    /// Why a cluster over the endpoints found could not be built.
    type Error: std::fmt::Display + std::fmt::Debug;

    /// The cluster's configuration.
    fn spec(&self) -> &Cluster;

    /// Its discovery state; `None` for a cluster built without one (static endpoints).
    fn discovery(&self) -> Option<&DiscoveryState<Self>>;

    /// This cluster over `endpoints`, as a static cluster built with `identity` for the local
    /// cluster `local_cluster`, sharing this one's circuit breakers: the limits are the
    /// cluster's, whichever addresses it goes to.
    fn over(
        &self,
        endpoints: Vec<Endpoint>,
        identity: Option<&WorkloadIdentity>,
        local_cluster: &str,
    ) -> Result<Self, Self::Error>;
}

/// What a cluster with run-time discovery needs to build the runtimes `R` it hands out.
pub struct DiscoveryState<R> {
    identity: Option<WorkloadIdentity>,
    local_cluster: String,
    upstreams: Vec<SocketAddr>,
    by_destination: Mutex<HashMap<SocketAddr, Arc<R>>>,
    resolved: Mutex<Option<Resolved<R>>>,
    resolving: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
}

impl<R> std::fmt::Debug for DiscoveryState<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryState")
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

/// The addresses last resolved and the runtime over them.
struct Resolved<R> {
    addresses: Vec<Vec<IpAddr>>,
    runtime: Arc<R>,
    fresh_until: Instant,
}

impl<R: Discovered> DiscoveryState<R> {
    /// The state of a cluster built with `identity` for the local cluster `local_cluster`,
    /// resolving with `upstreams`.
    pub fn new(identity: Option<&WorkloadIdentity>, local_cluster: &str, upstreams: Vec<SocketAddr>) -> Self {
        Self {
            identity: identity.cloned(),
            local_cluster: local_cluster.to_string(),
            upstreams,
            by_destination: Mutex::new(HashMap::new()),
            resolved: Mutex::new(None),
            resolving: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
        }
    }

    /// `cluster` over `endpoints` ([`Discovered::over`]).
    fn build(&self, cluster: &R, endpoints: Vec<Endpoint>) -> Result<R, R::Error> {
        cluster.over(endpoints, self.identity.as_ref(), &self.local_cluster)
    }
}

/// The runtime a request to `cluster` uses, going to `dst` (the connection's original
/// destination; `None` when it is not known, e.g. a connection that was not redirected).
/// `None` when there is nowhere to go: an original-destination cluster without one.
pub async fn target<R: Discovered>(cluster: &Arc<R>, dst: Option<SocketAddr>) -> Option<Arc<R>> {
    let Some(state) = cluster.discovery() else {
        return Some(Arc::clone(cluster));
    };
    match cluster.spec().discovery {
        Discovery::Static => Some(Arc::clone(cluster)),
        Discovery::OriginalDestination => original_destination(cluster, state, dst?),
        Discovery::Dns | Discovery::DnsFirstAddress => Some(resolved(cluster, state).await),
    }
}

fn original_destination<R: Discovered>(cluster: &R, state: &DiscoveryState<R>, dst: SocketAddr) -> Option<Arc<R>> {
    let mut map = state.by_destination.lock().expect("destinations lock");
    if let Some(rt) = map.get(&dst) {
        return Some(Arc::clone(rt));
    }
    if map.len() >= MAX_DESTINATIONS {
        map.clear();
    }
    let endpoint = Endpoint {
        address: dst.ip().to_string(),
        port: dst.port(),
        weight: 1,
        labels: Default::default(),
        health: Default::default(),
        identity: None,
    };
    match state.build(cluster, vec![endpoint]) {
        Ok(rt) => {
            let rt = Arc::new(rt);
            map.insert(dst, Arc::clone(&rt));
            Some(rt)
        }
        Err(e) => {
            tracing::warn!(cluster = %cluster.spec().name, %dst, error = %e, "cannot build the original destination's cluster");
            None
        }
    }
}

async fn resolved<R: Discovered>(cluster: &Arc<R>, state: &DiscoveryState<R>) -> Arc<R> {
    {
        let current = state.resolved.lock().expect("resolved lock");
        if let Some(r) = current.as_ref() {
            if Instant::now() < r.fresh_until {
                return Arc::clone(&r.runtime);
            }
            // Stale: refreshed in the background, used meanwhile.
            if !state.refreshing.swap(true, Ordering::AcqRel) {
                let cluster = Arc::clone(cluster);
                tokio::spawn(async move {
                    if let Some(state) = cluster.discovery() {
                        refresh(cluster.as_ref(), state).await;
                        state.refreshing.store(false, Ordering::Release);
                    }
                });
            }
            return Arc::clone(&r.runtime);
        }
    }
    // First use: resolve now (one lookup at a time; the others wait for its answer).
    let _one = state.resolving.lock().await;
    if let Some(r) = state.resolved.lock().expect("resolved lock").as_ref() {
        return Arc::clone(&r.runtime);
    }
    refresh(cluster.as_ref(), state).await
}

/// Resolve every endpoint's name and install the runtime over the answers.
async fn refresh<R: Discovered>(cluster: &R, state: &DiscoveryState<R>) -> Arc<R> {
    let spec = cluster.spec();
    let first_only = spec.discovery == Discovery::DnsFirstAddress;
    let mut addresses = Vec::with_capacity(spec.endpoints.len());
    let mut ttl = REFRESH;
    for e in &spec.endpoints {
        let answer = lookup(&e.address, &state.upstreams).await;
        let mut found = answer.addresses;
        if first_only {
            found.truncate(1);
        }
        if !found.is_empty() {
            ttl = ttl.min(answer.ttl);
        }
        addresses.push(found);
    }
    let ttl = ttl.max(MIN_REFRESH);
    let mut current = state.resolved.lock().expect("resolved lock");
    let now = Instant::now();
    let answered = addresses.iter().any(|a| !a.is_empty());
    if let Some(r) = current.as_mut()
        && (!answered || r.addresses == addresses)
    {
        // Nothing new (or a failed lookup): keep the runtime, its pools and state.
        if !answered {
            tracing::debug!(cluster = %spec.name, "DNS lookup failed; keeping the last answer");
        }
        r.fresh_until = now + if answered { ttl } else { REFRESH };
        return Arc::clone(&r.runtime);
    }
    let mut endpoints = Vec::new();
    for (e, found) in spec.endpoints.iter().zip(&addresses) {
        for ip in found {
            endpoints.push(Endpoint {
                address: ip.to_string(),
                ..e.clone()
            });
        }
    }
    let runtime = match state.build(cluster, endpoints) {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            tracing::warn!(cluster = %spec.name, error = %e, "cannot build the cluster over the resolved addresses");
            Arc::new(
                state
                    .build(cluster, Vec::new())
                    .expect("a cluster without endpoints always builds"),
            )
        }
    };
    let fresh_until = now + if answered { ttl } else { RETRY };
    *current = Some(Resolved {
        addresses,
        runtime: Arc::clone(&runtime),
        fresh_until,
    });
    runtime
}

/// What a lookup found: the addresses, and how long they may be used (the smallest TTL of
/// their records; [`REFRESH`] for an IP address or when nothing was found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The addresses, at most [`MAX_ADDRESSES`].
    pub addresses: Vec<IpAddr>,
    /// How long they may be used.
    pub ttl: Duration,
}

/// The addresses of `name` (an IP address is its own), A records first, then AAAA.
pub async fn lookup(name: &str, upstreams: &[SocketAddr]) -> Answer {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Answer {
            addresses: vec![ip],
            ttl: REFRESH,
        };
    }
    let name = name.trim_end_matches('.');
    let mut out = Vec::new();
    let mut ttl: Option<u32> = None;
    for qtype in [TYPE_A, TYPE_AAAA] {
        let query = build_query(fastrand::u16(..), name, qtype);
        let Some(answer) = crate::resolver::forward_udp(&query, upstreams, LOOKUP_TIMEOUT).await else {
            continue;
        };
        for (ip, record_ttl) in answer_records(&answer) {
            if out.len() < MAX_ADDRESSES && !out.contains(&ip) {
                out.push(ip);
                ttl = Some(ttl.map_or(record_ttl, |t| t.min(record_ttl)));
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    Answer {
        addresses: out,
        ttl: ttl.map_or(REFRESH, |t| Duration::from_secs(u64::from(t))),
    }
}
