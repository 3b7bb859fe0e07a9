//! Upstream clusters at run time: endpoints with load, outlier state and a
//! connection pool each; endpoint selection (health, ejection, panic
//! threshold, load balancer); connecting with plaintext, mesh mTLS (exact
//! SPIFFE identity per endpoint) or TLS originated to a non-mesh destination
//! ([`crate::origination`]); and circuit breaking.
//!
//! # Pooling
//! HTTP/1 connections are pooled per endpoint and reused once the previous
//! response has been read; HTTP/2 connections are shared (multiplexed). A
//! connection is retired after `maxRequestsPerConnection` requests or
//! `idleTimeoutMs` idle.

use crate::balance::{Balancer, PickContext, hash64};
use crate::identity::{TlsError, WorkloadIdentity};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
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

#[derive(Debug, Default)]
struct Outlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

struct IdleConn {
    sender: http1::SendRequest<Body>,
    idle_since: Instant,
    served: u32,
}

#[derive(Default)]
struct Pool {
    h1: Vec<IdleConn>,
    h2: Option<http2::SendRequest<Body>>,
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
    outlier: Mutex<Outlier>,
    pool: Mutex<Pool>,
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

impl EndpointState {
    /// Keep an HTTP/1 connection ready for another request, while the pool has room.
    fn pool_h1(&self, sender: http1::SendRequest<Body>, served: u32, max_idle: usize) {
        let mut pool = self.pool.lock().expect("pool lock");
        if pool.h1.len() < max_idle {
            pool.h1.push(IdleConn {
                sender,
                idle_since: Instant::now(),
                served,
            });
        }
    }

    /// Is the endpoint ejected at `now`?
    pub fn ejected(&self, now: Instant) -> bool {
        let o = self.outlier.lock().expect("outlier lock");
        o.ejected_until.is_some_and(|t| t > now)
    }
}

/// One request in flight on an endpoint: counted in [`EndpointState::active`]
/// (least-request balancing, `/config_dump`) from the moment it is sent until
/// this guard drops. Dropping is the only way to stop counting, so a request
/// cancelled anywhere — a client abort, an HTTP/2 stream reset, a route
/// timeout dropping the upstream future — is uncounted as surely as one that
/// completes.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    fn start(ep: &Arc<EndpointState>) -> Self {
        ep.active.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(ep))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request [`InFlight`] until the body ends
/// or is dropped: a response still streaming is load on its endpoint.
#[derive(Debug)]
pub struct InFlightBody<B> {
    inner: B,
    in_flight: Option<InFlight>,
}

impl<B> InFlightBody<B> {
    /// Wrap a response body.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How an upstream attempt ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response (with its code).
    Status5xx(u16),
    /// Connect failure or reset: a gateway error.
    LocalFailure,
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
    limiter: Arc<Semaphore>,
    pending: AtomicU64,
    /// Requests in flight (for the retry budget).
    pub active_requests: AtomicU64,
    /// Retries in flight.
    pub active_retries: AtomicU64,
    /// The `destination_service` metric label (computed once).
    pub service_label: Arc<str>,
    /// Run-time discovery (`dns`, `originalDestination`): the runtimes requests use instead
    /// of this one, which has no endpoints ([`crate::discovery::target`]).
    pub discovery: Option<Arc<crate::discovery::DiscoveryState>>,
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

/// Why no request slot was had (circuit breaking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// The pending queue is full: 503, flag `UO`.
    Overflow,
    /// The wait in the pending queue outlasted the request's time.
    TimedOut,
}

/// A checked-out request slot (circuit breaking); released on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
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
            limiter: Arc::new(Semaphore::new(spec.connection_pool.max_connections as usize)),
            pending: AtomicU64::new(0),
            active_requests: AtomicU64::new(0),
            active_retries: AtomicU64::new(0),
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
                outlier: Mutex::new(Outlier::default()),
                pool: Mutex::new(Pool::default()),
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

    /// Acquire a request slot, waiting at most `within` (`None`: as long as
    /// it takes) in the pending queue while it has room.
    pub async fn acquire(&self, within: Option<Duration>) -> Result<Slot, NoSlot> {
        if let Ok(p) = Arc::clone(&self.limiter).try_acquire_owned() {
            return Ok(Slot { _permit: p });
        }
        let max_pending = u64::from(self.spec.connection_pool.max_pending_requests);
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(NoSlot::Overflow);
        }
        let wait = Arc::clone(&self.limiter).acquire_owned();
        let permit = match within {
            Some(t) => tokio::time::timeout(t, wait).await.map_err(|_| NoSlot::TimedOut),
            None => Ok(wait.await),
        };
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match permit? {
            Ok(p) => Ok(Slot { _permit: p }),
            // The semaphore is never closed.
            Err(_) => Err(NoSlot::Overflow),
        }
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

    /// Record an attempt's outcome for outlier detection; returns true when
    /// the endpoint was just ejected.
    pub fn record(&self, idx: usize, outcome: Outcome, now: Instant) -> bool {
        let Some(od) = &self.spec.outlier_detection else {
            return false;
        };
        let ep = &self.endpoints[idx];
        let should_eject = {
            let mut o = ep.outlier.lock().expect("outlier lock");
            match outcome {
                Outcome::Success => {
                    o.consecutive_5xx = 0;
                    o.consecutive_gateway = 0;
                    false
                }
                Outcome::Status5xx(code) => {
                    o.consecutive_5xx += 1;
                    if matches!(code, 502..=504) {
                        o.consecutive_gateway += 1;
                    } else {
                        o.consecutive_gateway = 0;
                    }
                    trips(od, &o)
                }
                Outcome::LocalFailure => {
                    o.consecutive_5xx += 1;
                    o.consecutive_gateway += 1;
                    trips(od, &o)
                }
            }
        };
        if !should_eject || ep.ejected(now) {
            return false;
        }
        let n = self.endpoints.len();
        let ejected = self.endpoints.iter().filter(|e| e.ejected(now)).count();
        // Envoy always allows ejecting one host; beyond that, the percentage caps.
        if ejected > 0 && ((ejected + 1) as f64) * 100.0 > od.max_ejection_percent * n as f64 {
            return false;
        }
        let mut o = ep.outlier.lock().expect("outlier lock");
        o.times_ejected += 1;
        let ms = od.base_ejection_time_ms.saturating_mul(u64::from(o.times_ejected));
        o.ejected_until = Some(now + Duration::from_millis(ms));
        o.consecutive_5xx = 0;
        o.consecutive_gateway = 0;
        true
    }

    /// Hash a key for consistent hashing.
    pub fn hash_key(key: &[u8]) -> u64 {
        hash64(key, 0)
    }

    /// Send a request to endpoint `idx` over a pooled or new connection.
    /// `h2` selects the upstream protocol when the cluster leaves it open.
    /// The request counts as active on the endpoint until the returned
    /// [`InFlight`] drops (keep it with the response body), or at once when
    /// this future is dropped before the response (a cancelled request).
    pub async fn send(
        &self,
        idx: usize,
        req: Request<Body>,
        downstream_h2: bool,
    ) -> Result<(Response<Incoming>, InFlight), UpstreamError> {
        let in_flight = InFlight::start(&self.endpoints[idx]);
        let ep = &in_flight.0;
        let resp = if self.uses_h2(downstream_h2) {
            self.send_h2(ep, req).await
        } else {
            self.send_h1(ep, req).await
        }?;
        Ok((resp, in_flight))
    }

    async fn send_h2(&self, ep: &Arc<EndpointState>, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let existing = {
            let pool = ep.pool.lock().expect("pool lock");
            pool.h2.as_ref().filter(|s| !s.is_closed()).cloned()
        };
        let mut sender = match existing {
            Some(s) => s,
            // Boxed: see `send_h1`.
            None => {
                Box::pin(async {
                    let io = self.connect(ep, ConnProtocol::Http2).await?;
                    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .keep_alive_interval(Duration::from_secs(30))
                        .handshake(io)
                        .await
                        .map_err(|source| UpstreamError::Reset { addr: ep.addr, source })?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "upstream h2 connection ended");
                        }
                    });
                    ep.pool.lock().expect("pool lock").h2 = Some(sender.clone());
                    Ok::<_, UpstreamError>(sender)
                })
                .await?
            }
        };
        sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Reset { addr: ep.addr, source })
    }

    async fn send_h1(&self, ep: &Arc<EndpointState>, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let pool_cfg = &self.spec.connection_pool;
        let idle_timeout = Duration::from_millis(pool_cfg.idle_timeout_ms);
        let reused = {
            let mut pool = ep.pool.lock().expect("pool lock");
            let now = Instant::now();
            let mut found = None;
            while let Some(c) = pool.h1.pop() {
                if c.sender.is_ready() && now.duration_since(c.idle_since) < idle_timeout {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let (mut sender, mut served, pooled) = match reused {
            Some(c) => (c.sender, c.served, true),
            // why: connecting (TCP, TLS handshake) is a large future, rare next to the pooled
            // path; boxed, it stays out of every request's future, which was copied whole each
            // time it moved (about 2.4k instructions a request).
            None => (Box::pin(self.connect_h1(ep)).await?, 0, false),
        };
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // The pooled connection closed before the request was written to it (the
                // upstream closed its idle keep-alive connection as the request raced onto it,
                // as a terminating pod's proxy does): the upstream never saw the request, so it
                // goes on a new connection, whatever its method (hyper-util's client does the
                // same). A refused connect is then a connect failure, which routes retry.
                Some(req) if pooled => {
                    tracing::debug!(endpoint = %ep.addr, "pooled connection closed before the request was sent; sending it on a new one");
                    sender = Box::pin(self.connect_h1(ep)).await?;
                    served = 0;
                    sender
                        .send_request(req)
                        .await
                        .map_err(|source| UpstreamError::Reset { addr: ep.addr, source })?
                }
                _ => {
                    return Err(UpstreamError::Reset {
                        addr: ep.addr,
                        source: e.into_error(),
                    });
                }
            },
        };
        let served = served + 1;
        let max = pool_cfg.max_requests_per_connection;
        let keep = (max == 0 || served < max)
            && resp
                .headers()
                .get(http::header::CONNECTION)
                .is_none_or(|v| !v.to_str().is_ok_and(|s| s.eq_ignore_ascii_case("close")))
            && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        if keep {
            // Back to the pool once the connection can take another request: at once when the
            // whole response came with its head (hyper's connection task read the body in the
            // poll that delivered the head, and is idle), else from a task that waits until
            // the body has been read. why: a task per request was the pool's main cost.
            let max_idle = pool_cfg.max_idle_per_endpoint as usize;
            if sender.is_ready() {
                ep.pool_h1(sender, served, max_idle);
            } else {
                let ep = Arc::clone(ep);
                tokio::spawn(async move {
                    if sender.ready().await.is_ok() {
                        ep.pool_h1(sender, served, max_idle);
                    }
                });
            }
        }
        Ok(resp)
    }

    /// A new HTTP/1 connection to `ep`, its connection task spawned.
    async fn connect_h1(&self, ep: &EndpointState) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = self.connect(ep, ConnProtocol::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Reset { addr: ep.addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream h1 connection ended");
            }
        });
        Ok(sender)
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
            let tcp = TcpStream::connect(ep.addr).await.map_err(|e| fail(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
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
                            let tcp = TcpStream::connect(ep.addr).await.map_err(|e| fail(e.to_string()))?;
                            let _ = tcp.set_nodelay(true);
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

fn trips(od: &trellis_contract::OutlierDetection, o: &Outlier) -> bool {
    (od.consecutive_5xx > 0 && o.consecutive_5xx >= od.consecutive_5xx)
        || (od.consecutive_gateway_errors > 0 && o.consecutive_gateway >= od.consecutive_gateway_errors)
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

    /// A request raced onto a pooled connection as the upstream closes it (an upstream closing
    /// its idle keep-alive connections, as a terminating pod's proxy does) is sent on a new
    /// connection: the upstream never saw it.
    ///
    /// The race, made deterministic: the upstream (a blocking server on a thread) first writes a
    /// byte to a notification socket and then closes the pooled connection, both while the
    /// runtime is blocked, so the runtime's next poll of the kernel reports both at once, the
    /// notification first. The test's task therefore runs first and puts the request on the
    /// pooled connection (still ready: its connection task has not run), and the connection
    /// task then reads the close before it writes the request. hyper gives the request back,
    /// canceled; before the resend the proxy answered "operation was canceled".
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_on_a_pooled_connection_closed_under_it_goes_on_a_new_one() {
        use std::io::{BufRead as _, BufReader, Write as _};

        use http_body_util::BodyExt as _;
        use tokio::io::AsyncReadExt as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let notifications = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut notified = tokio::net::TcpStream::connect(notifications.local_addr().unwrap())
            .await
            .unwrap();
        let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let (mut notify, _) = notifications.accept().unwrap();
            let mut served = Vec::new();
            for (n, conn) in listener.incoming().take(2).enumerate() {
                let conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                served.push(line.trim().to_string());
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header == "\r\n" || header.is_empty() {
                        break;
                    }
                }
                let mut w = conn;
                w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
                if n == 0 {
                    // When told: the notification, then the close of the kept-alive connection.
                    close_rx.recv().unwrap();
                    notify.write_all(b"!").unwrap();
                    w.shutdown(std::net::Shutdown::Both).unwrap();
                    drop(w);
                    drop(reader);
                    closed_tx.send(()).unwrap();
                }
            }
            served
        });
        let spec: Cluster = serde_json::from_value(serde_json::json!({
            "name": "c", "endpoints": [{"address": "127.0.0.1", "port": port}],
        }))
        .unwrap();
        let c = ClusterRuntime::build(spec, None, "").unwrap();
        let get = |path: &str| {
            let body: Body = http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            Request::get(path).body(body).unwrap()
        };
        let (resp, _in_flight) = c.send(0, get("/first"), false).await.expect("the first request");
        resp.into_body().collect().await.unwrap();
        // Let the connection go back to the pool.
        for _ in 0..50 {
            if !c.endpoints[0].pool.lock().unwrap().h1.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            c.endpoints[0].pool.lock().unwrap().h1.len(),
            1,
            "the connection is pooled"
        );
        // The upstream notifies, then closes the pooled connection; the runtime does not run
        // meanwhile.
        close_tx.send(()).unwrap();
        closed_rx.recv().unwrap();
        let mut byte = [0u8; 1];
        notified.read_exact(&mut byte).await.unwrap();
        let (resp, _in_flight) = c
            .send(0, get("/second"), false)
            .await
            .expect("the second request, on a new connection");
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert_eq!(
            server.join().unwrap(),
            vec!["GET /first HTTP/1.1", "GET /second HTTP/1.1"],
            "the upstream saw each request once, the second on a connection of its own"
        );
    }

    /// A response whose body came with its head puts its connection back in the pool at once
    /// (before the body is read, and without a task to do it), ready for the next request.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_whose_whole_response_came_is_pooled_at_once() {
        use http_body_util::BodyExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    // One small request per read on loopback; each answered in one write.
                    while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        if conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        let spec: Cluster = serde_json::from_value(serde_json::json!({
            "name": "c", "endpoints": [{"address": "127.0.0.1", "port": port}],
        }))
        .unwrap();
        let c = ClusterRuntime::build(spec, None, "").unwrap();
        for n in 0..3 {
            let body: Body = http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            let (resp, _in_flight) = c
                .send(0, Request::get("/").body(body).unwrap(), false)
                .await
                .expect("an answer");
            assert_eq!(
                c.endpoints[0].pool.lock().unwrap().h1.len(),
                1,
                "request {n}: the connection is pooled before its response body is read"
            );
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        }
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "every request went on the one connection"
        );
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
