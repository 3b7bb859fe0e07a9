//! Upstream clusters at run time: endpoints with load, outlier state and a
//! connection pool each; endpoint selection (health, ejection, panic
//! threshold, load balancer); connecting with plaintext, mesh mTLS (exact
//! SPIFFE identity per endpoint) or TLS originated to a non-mesh destination
//! ([`crate::origination`]), with the cluster's TCP keepalive.
//!
//! The rest lives in the submodules: [`circuit_breakers`] (request slots, active requests
//! and retries), [`outlier`] (passive health checking), `http_pool` (HTTP connections
//! pooled, shared and retired), `keepalive` and `discovered` (a cluster as run-time
//! discovery, [`crate::discovery`], builds it over the endpoints it finds).

mod circuit_breakers;
mod discovered;
mod http_pool;
mod keepalive;
mod outlier;

pub use circuit_breakers::{Admission, CircuitBreakers, NoSlot, RetryToken, Slot};
pub use http_pool::{InFlight, InFlightBody};
pub use outlier::Outcome;

use crate::balance::{Balancer, PickContext, hash64};
use crate::identity::{TlsError, WorkloadIdentity};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use trellis_contract::{Cluster, Endpoint, HealthStatus, UpstreamProtocol, UpstreamTls};

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the proxy sends and returns.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Why an upstream request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect or TLS handshake failed or timed out (`UF`).
    #[error("connect to {addr} failed: {reason}")]
    ConnectFailure {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        reason: String,
    },
    /// The TLS handshake failed (`UF`): the endpoint's certificate was refused
    /// (unknown issuer, wrong name or subject alternative names) or it refused
    /// ours. Counted per cluster in `trellis_proxy_upstream_tls_failures_total`.
    #[error("TLS handshake with {addr} failed: {reason}")]
    TlsHandshake {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause (rustls' error; never key material).
        reason: String,
    },
    /// The connection broke before a response (`UC`/reset).
    #[error("upstream {addr} reset: {source}")]
    Reset {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
}

/// Compile errors for a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// TLS material could not be loaded.
    #[error("cluster {cluster}: {source}")]
    Tls {
        /// Cluster name.
        cluster: String,
        /// Cause.
        #[source]
        source: TlsError,
    },
    /// Mesh TLS without a workload identity.
    #[error("cluster {0}: mesh TLS needs identity.spiffeId, identity.certificate and identity.trustBundle")]
    NoIdentity(String),
    /// Endpoint address invalid (validation prevents it).
    #[error("cluster {cluster}: endpoint {address:?} is not an IP")]
    Address {
        /// Cluster name.
        cluster: String,
        /// The value.
        address: String,
    },
}

/// One endpoint at run time.
pub struct EndpointState {
    /// Socket address.
    pub addr: SocketAddr,
    /// Health as known to the control plane (from the config; the rest of the endpoint's
    /// config stays in the cluster's [`ClusterRuntime::spec`], not copied here).
    pub health: HealthStatus,
    /// Requests in flight.
    pub active: AtomicU64,
    /// The endpoint as metric labels (computed once).
    pub peer: Arc<crate::metrics::Peer>,
    /// It refused the peer metadata exchange: opaque TCP no longer offers it.
    peer_exchange_refused: AtomicBool,
    outlier: Mutex<outlier::Outlier>,
    pool: Mutex<http_pool::Pool>,
    tls: Option<EndpointTls>,
}

/// TLS client configs for one endpoint, one per ALPN offer so the negotiated
/// protocol always matches the one the proxy speaks on the connection.
#[derive(Clone)]
struct EndpointTls {
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
    /// Opaque TCP: to a mesh endpoint, offering the peer metadata exchange.
    opaque: Arc<ClientConfig>,
    /// Opaque TCP with no ALPN offer (TLS origination, or a mesh endpoint
    /// that refused [`crate::peer_exchange::ALPN`]).
    opaque_plain: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl EndpointTls {
    fn new(base: Arc<ClientConfig>, name: ServerName<'static>, mesh: bool) -> Self {
        let with = |alpn: &[&[u8]]| {
            let mut c = (*base).clone();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        let opaque_plain = with(&[]);
        Self {
            http1: with(&[b"http/1.1"]),
            http2: with(&[b"h2"]),
            opaque: if mesh {
                with(&[crate::peer_exchange::ALPN])
            } else {
                Arc::clone(&opaque_plain)
            },
            opaque_plain,
            name,
        }
    }
}

/// What a new upstream connection will carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnProtocol {
    /// HTTP/1.1 (ALPN `http/1.1`).
    Http1,
    /// HTTP/2 (ALPN `h2`).
    Http2,
    /// Opaque bytes (no ALPN).
    Opaque,
}

impl std::fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointState")
            .field("addr", &self.addr)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// A cluster at run time.
pub struct ClusterRuntime {
    /// The config: the snapshot's one copy of it (moved here, not cloned; see
    /// [`crate::snapshot::Snapshot::config`]).
    pub spec: Cluster,
    /// Endpoints (same order as the config).
    pub endpoints: Vec<Arc<EndpointState>>,
    weights: Vec<u32>,
    balancer: Balancer,
    /// Circuit breaking: request slots, active requests and retries.
    pub circuit: Arc<CircuitBreakers>,
    /// The `destination_service` metric label (computed once).
    pub service_label: Arc<str>,
    /// Run-time discovery (`dns`, `originalDestination`): the runtimes requests use instead
    /// of this one, which has no endpoints ([`crate::discovery::target`]).
    pub discovery: Option<Arc<crate::discovery::DiscoveryState<ClusterRuntime>>>,
}

impl std::fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRuntime")
            .field("name", &self.spec.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// A static cluster's endpoints at run time, their weights and the balancer over them.
struct StaticEndpoints {
    endpoints: Vec<Arc<EndpointState>>,
    weights: Vec<u32>,
    balancer: Balancer,
}

impl ClusterRuntime {
    /// Build a cluster whose run-time discovery (if any) resolves with `upstreams`.
    pub fn build_with(
        spec: Cluster,
        identity: Option<&WorkloadIdentity>,
        local_cluster: &str,
        upstreams: Vec<SocketAddr>,
    ) -> Result<Self, ClusterError> {
        let mut rt = Self::build(spec, identity, local_cluster)?;
        if !rt.spec.discovery.is_static() {
            rt.discovery = Some(Arc::new(crate::discovery::DiscoveryState::new(
                identity,
                local_cluster,
                upstreams,
            )));
        }
        Ok(rt)
    }

    /// Build a cluster; TLS configs are created here, once per config version. A cluster
    /// with run-time discovery is built without its endpoints (see [`Self::build_with`]).
    pub fn build(
        spec: Cluster,
        identity: Option<&WorkloadIdentity>,
        local_cluster: &str,
    ) -> Result<Self, ClusterError> {
        let StaticEndpoints {
            endpoints,
            weights,
            balancer,
        } = Self::build_endpoints(&spec, identity, local_cluster)?;
        Ok(Self {
            balancer,
            weights,
            endpoints,
            circuit: Arc::new(CircuitBreakers::new(&spec.connection_pool)),
            service_label: Arc::from(spec.service.as_deref().unwrap_or_default()),
            spec,
            discovery: None,
        })
    }

    /// The endpoints of a static cluster at run time (TLS configs included).
    fn build_endpoints(
        spec: &Cluster,
        identity: Option<&WorkloadIdentity>,
        local_cluster: &str,
    ) -> Result<StaticEndpoints, ClusterError> {
        let alpn: &[&[u8]] = &[];
        let tls_err = |source| ClusterError::Tls {
            cluster: spec.name.clone(),
            source,
        };
        let server_name = spec
            .service
            .as_deref()
            .and_then(|s| ServerName::try_from(s.to_string()).ok())
            .unwrap_or_else(|| ServerName::try_from("mesh.trellis.internal").expect("valid name"));
        let mut mesh_cache: HashMap<Vec<String>, EndpointTls> = HashMap::new();
        let server_name = match &spec.tls {
            UpstreamTls::Mesh { sni: Some(sni), .. } => ServerName::try_from(sni.clone()).unwrap_or(server_name),
            _ => server_name,
        };
        let originate = match &spec.tls {
            UpstreamTls::Originate(o) => {
                let (cfg, name) = crate::origination::client_config(o).map_err(tls_err)?;
                Some(EndpointTls::new(cfg, name, false))
            }
            _ => None,
        };
        let listed: &[Endpoint] = if spec.discovery.is_static() {
            &spec.endpoints
        } else {
            &[]
        };
        let mut endpoints = Vec::with_capacity(listed.len());
        for e in listed {
            let ip: IpAddr = e.address.parse().map_err(|_| ClusterError::Address {
                cluster: spec.name.clone(),
                address: e.address.clone(),
            })?;
            let tls = match &spec.tls {
                UpstreamTls::Disable => None,
                UpstreamTls::Originate(_) => originate.clone(),
                UpstreamTls::Mesh {
                    expected_identities, ..
                } => {
                    let id = identity.ok_or_else(|| ClusterError::NoIdentity(spec.name.clone()))?;
                    // An endpoint's own identity is verified exactly; otherwise any
                    // identity the cluster expects.
                    let expected = match &e.identity {
                        Some(i) => vec![i.clone()],
                        None => expected_identities.clone(),
                    };
                    let cfg = match mesh_cache.get(&expected) {
                        Some(c) => c.clone(),
                        None => {
                            let c = EndpointTls::new(
                                id.client_config(expected.clone(), alpn).map_err(tls_err)?,
                                server_name.clone(),
                                true,
                            );
                            mesh_cache.insert(expected, c.clone());
                            c
                        }
                    };
                    Some(cfg)
                }
            };
            endpoints.push(Arc::new(EndpointState {
                addr: SocketAddr::new(ip, e.port),
                peer: Arc::new(endpoint_peer(spec, e, local_cluster)),
                peer_exchange_refused: AtomicBool::new(false),
                health: e.health,
                active: AtomicU64::new(0),
                outlier: Mutex::default(),
                pool: Mutex::default(),
                tls,
            }));
        }
        let weights: Vec<u32> = listed.iter().map(|e| e.weight).collect();
        let keys: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
        let balancer = Balancer::new(&spec.load_balancer.policy, &weights, &keys);
        Ok(StaticEndpoints {
            endpoints,
            weights,
            balancer,
        })
    }

    /// Will a request go upstream over HTTP/2?
    pub fn uses_h2(&self, downstream_h2: bool) -> bool {
        match self.spec.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Http1 | UpstreamProtocol::Tcp => false,
            UpstreamProtocol::UseDownstream => downstream_h2,
        }
    }

    /// Does the balancer want a hash key?
    pub fn uses_hash(&self) -> bool {
        self.balancer.uses_hash()
    }

    /// Pick an endpoint, avoiding `tried` when possible. `None` = no healthy
    /// upstream (503, flag `UH`).
    pub fn pick(&self, hash: Option<u64>, tried: &[usize], now: Instant) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let healthy = |i: usize| {
            let e = &self.endpoints[i];
            e.health == HealthStatus::Healthy && !e.ejected(now)
        };
        let healthy_count = (0..n).filter(|i| healthy(*i)).count();
        let panic = self.spec.panic_threshold_percent > 0.0
            && (healthy_count as f64) * 100.0 < self.spec.panic_threshold_percent * n as f64;
        let base = |i: usize| {
            if panic {
                self.endpoints[i].health != HealthStatus::Draining
            } else {
                healthy(i)
            }
        };
        let untried_exists = (0..n).any(|i| base(i) && !tried.contains(&i));
        let eligible = |i: usize| base(i) && (!untried_exists || !tried.contains(&i));
        let active = |i: usize| self.endpoints[i].active.load(Ordering::Relaxed);
        let ctx = PickContext {
            weights: &self.weights,
            eligible: &eligible,
            active: &active,
            hash,
        };
        let mut rng = fastrand::Rng::new();
        self.balancer.pick(&ctx, &mut rng)
    }

    /// Hash a key for consistent hashing.
    pub fn hash_key(key: &[u8]) -> u64 {
        hash64(key, 0)
    }

    /// A TCP connection to an endpoint, without delay, with the cluster's keepalive.
    async fn dial(&self, ep: &EndpointState) -> std::io::Result<TcpStream> {
        let tcp = TcpStream::connect(ep.addr).await?;
        let _ = tcp.set_nodelay(true);
        if let Some(ka) = &self.spec.connection_pool.tcp_keepalive {
            keepalive::apply(&tcp, ka)?;
        }
        Ok(tcp)
    }

    /// Open a connection to an endpoint (TCP, then TLS if configured), bounded
    /// by the connect timeout.
    pub async fn connect(
        &self,
        ep: &EndpointState,
        protocol: ConnProtocol,
    ) -> Result<TokioIo<UpstreamStream>, UpstreamError> {
        let timeout = Duration::from_millis(self.spec.connect_timeout_ms);
        let fail = |reason: String| UpstreamError::ConnectFailure { addr: ep.addr, reason };
        let tls_failed = |e: std::io::Error| UpstreamError::TlsHandshake {
            addr: ep.addr,
            reason: e.to_string(),
        };
        let fut = async {
            let tcp = self.dial(ep).await.map_err(|e| fail(e.to_string()))?;
            match &ep.tls {
                None => Ok(UpstreamStream::Plain(tcp)),
                Some(t) => {
                    let exchange = protocol == ConnProtocol::Opaque
                        && !Arc::ptr_eq(&t.opaque, &t.opaque_plain)
                        && !ep.peer_exchange_refused.load(Ordering::Relaxed);
                    let cfg = match protocol {
                        ConnProtocol::Http1 => &t.http1,
                        ConnProtocol::Http2 => &t.http2,
                        ConnProtocol::Opaque if exchange => &t.opaque,
                        ConnProtocol::Opaque => &t.opaque_plain,
                    };
                    let handshake = |cfg: &Arc<ClientConfig>, tcp| {
                        tokio_rustls::TlsConnector::from(Arc::clone(cfg)).connect(t.name.clone(), tcp)
                    };
                    let tls = match handshake(cfg, tcp).await {
                        Ok(tls) => tls,
                        Err(e) if exchange && refused_alpn(&e) => {
                            // A proxy that predates the exchange: connect again without it.
                            tracing::debug!(endpoint = %ep.addr, "peer metadata exchange refused; not offered again");
                            ep.peer_exchange_refused.store(true, Ordering::Relaxed);
                            let tcp = self.dial(ep).await.map_err(|e| fail(e.to_string()))?;
                            handshake(&t.opaque_plain, tcp).await.map_err(tls_failed)?
                        }
                        Err(e) => return Err(tls_failed(e)),
                    };
                    Ok(UpstreamStream::Tls(Box::new(tls)))
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map(TokioIo::new),
            Err(_) => Err(fail(format!("timed out after {timeout:?}"))),
        }
    }
}

/// Whether a TLS handshake failed because the server supports none of the
/// ALPN protocols offered.
fn refused_alpn(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
            )
        })
}

/// Metric labels of an endpoint: workload from the `workload` (else `app`)
/// label, namespace from the `namespace` label or the SPIFFE identity, the
/// canonical service and revision by Istio's rules. An endpoint the control
/// plane names a workload for is a pod of this proxy's cluster.
fn endpoint_peer(cluster: &Cluster, e: &Endpoint, local_cluster: &str) -> crate::metrics::Peer {
    let principal = e.identity.clone().or_else(|| match &cluster.tls {
        UpstreamTls::Mesh {
            expected_identities, ..
        } if expected_identities.len() == 1 => Some(expected_identities[0].clone()),
        _ => None,
    });
    let namespace = e
        .labels
        .get("namespace")
        .cloned()
        .or_else(|| {
            principal
                .as_deref()
                .and_then(|p| trellis_contract::SpiffeId::parse(p).ok())
                .and_then(|id| id.namespace().map(str::to_string))
        })
        .unwrap_or_default();
    let known = e.labels.get("workload");
    let workload = known.or_else(|| e.labels.get("app")).cloned().unwrap_or_default();
    crate::metrics::Peer {
        canonical_service: if workload.is_empty() {
            String::new()
        } else {
            crate::metrics::canonical_service(&e.labels, &workload)
        },
        canonical_revision: crate::metrics::canonical_revision(&e.labels),
        cluster: if known.is_some() {
            local_cluster.to_string()
        } else {
            String::new()
        },
        workload,
        namespace,
        principal: principal.unwrap_or_default(),
        app: e.labels.get("app").cloned().unwrap_or_default(),
        version: e.labels.get("version").cloned().unwrap_or_default(),
    }
}

/// A connection to an endpoint, plain or TLS.
pub type UpstreamStream = crate::stream::MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_contract::{LbPolicy, LoadBalancer, OutlierDetection};

    fn cluster(n: usize, od: Option<OutlierDetection>) -> ClusterRuntime {
        let spec: Cluster = serde_json::from_value(serde_json::json!({
            "name": "c",
            "endpoints": (0..n).map(|i| serde_json::json!({"address": format!("127.0.0.{}", i + 1), "port": 80})).collect::<Vec<_>>(),
        }))
        .unwrap();
        let spec = Cluster {
            outlier_detection: od,
            load_balancer: LoadBalancer {
                policy: LbPolicy::RoundRobin,
                hash_key: None,
            },
            ..spec
        };
        ClusterRuntime::build(spec, None, "").unwrap()
    }

    fn od(consecutive: u32, max_pct: f64) -> Option<OutlierDetection> {
        Some(OutlierDetection {
            consecutive_5xx: consecutive,
            consecutive_gateway_errors: 0,
            base_ejection_time_ms: 1000,
            max_ejection_percent: max_pct,
            interval_ms: 1000,
            ..OutlierDetection::default()
        })
    }

    #[test]
    fn consecutive_5xx_ejects_for_base_time_then_returns() {
        let c = cluster(4, od(3, 50.0));
        let t0 = Instant::now();
        assert!(!c.record(0, Outcome::Status5xx(500), t0));
        assert!(!c.record(0, Outcome::Status5xx(500), t0));
        assert!(c.record(0, Outcome::Status5xx(503), t0));
        assert!(c.endpoints[0].ejected(t0));
        for _ in 0..40 {
            assert_ne!(c.pick(None, &[], t0), Some(0));
        }
        let later = t0 + Duration::from_millis(1001);
        assert!(!c.endpoints[0].ejected(later));
    }

    #[test]
    fn success_resets_the_counter() {
        let c = cluster(2, od(2, 100.0));
        let t = Instant::now();
        c.record(1, Outcome::Status5xx(500), t);
        c.record(1, Outcome::Success, t);
        assert!(!c.record(1, Outcome::Status5xx(500), t));
    }

    #[test]
    fn max_ejection_percent_caps_ejections() {
        let c = cluster(4, od(1, 25.0));
        let t = Instant::now();
        assert!(c.record(0, Outcome::LocalFailure, t));
        assert!(!c.record(1, Outcome::LocalFailure, t), "second ejection exceeds 25%");
    }

    #[test]
    fn panic_threshold_uses_all_endpoints() {
        let c = cluster(2, od(1, 100.0));
        let t = Instant::now();
        assert!(c.record(0, Outcome::LocalFailure, t));
        assert!(c.record(1, Outcome::LocalFailure, t));
        // Both ejected, below the 50% panic threshold: balance over all.
        assert!(c.pick(None, &[], t).is_some());
    }

    #[test]
    fn retries_avoid_tried_endpoints() {
        let c = cluster(3, None);
        let t = Instant::now();
        for _ in 0..30 {
            let p = c.pick(None, &[0, 1], t).unwrap();
            assert_eq!(p, 2);
        }
        // When everything was tried, any endpoint may be reused.
        assert!(c.pick(None, &[0, 1, 2], t).is_some());
    }
}
