//! Opaque TCP proxying: authorize the connection (inbound and at gateways),
//! route by original destination, pick an endpoint, connect (plaintext or mesh
//! mTLS, announcing this workload to a mesh peer: [`crate::peer_exchange`]) and
//! copy bytes both ways, counting them into the connection's Istio TCP series
//! as they flow.

use crate::authz::{Layer, authorize, peer_namespace};
use crate::connection::ConnContext;
use crate::labels::Observed;
use crate::metrics::{Overflow, Peer, TcpSeries};
use crate::routing::HttpHeaders;
use crate::runtime::Runtime;
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::stream::DownstreamStream;
use crate::upstream::{ClusterRuntime, UpstreamStream};
use http::HeaderMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use trellis_contract::authorization::AuthzRequest;
use trellis_contract::{ListenerDirection, Unrouted};

/// Proxy one TCP connection to the cluster its TCP route names. `source` is
/// the client's verified peer metadata (inbound mesh connections).
pub async fn proxy(
    rt: Arc<Runtime>,
    snap: Arc<Snapshot>,
    listener: Arc<ListenerRuntime>,
    ctx: ConnContext,
    downstream: DownstreamStream,
    source: Option<Peer>,
) {
    if !authorized(&rt, &snap, &ctx) {
        return;
    }
    // TLS routed by server name: the ClientHello is read first, without consuming it; TLS
    // this listener terminated is routed by the name the client sent.
    let terminated = listener.tls.is_some() && matches!(downstream, DownstreamStream::Tls(_));
    let sni = match &downstream {
        DownstreamStream::Tls(_) => ctx.sni.clone(),
        DownstreamStream::Plain(tcp) if listener.routes_by_sni(ctx.dst, false) => {
            let timeout = std::time::Duration::from_millis(listener.spec.limits.protocol_detection_timeout_ms);
            crate::sniff::server_name(tcp, timeout).await
        }
        _ => None,
    };
    let cluster_name = match (
        listener.tcp_cluster(ctx.dst, sni.as_deref(), terminated),
        listener.spec.unrouted,
    ) {
        (Some(name), _) => name,
        (None, Unrouted::Passthrough) => crate::snapshot::PASSTHROUGH_CLUSTER,
        (None, Unrouted::BlackHole) => {
            // Istio's BlackHoleCluster: the connection is reset, nothing is forwarded.
            tracing::debug!(listener = %ctx.listener, dst = %ctx.dst, "no TCP route (REGISTRY_ONLY); resetting");
            reset(downstream);
            return;
        }
        (None, Unrouted::NotFound) => {
            tracing::debug!(listener = %ctx.listener, dst = %ctx.dst, "no TCP route; closing");
            return;
        }
    };
    let Some(cluster) = snap.clusters.get(cluster_name).cloned() else {
        return;
    };
    let Some(cluster) = crate::discovery::target(&cluster, ctx.original_dst()).await else {
        tracing::debug!(listener = %ctx.listener, cluster = %cluster_name, "no original destination to pass through to; closing");
        return;
    };
    // `tcp.maxConnections`: a connection past it is closed on arrival, as Envoy's TCP proxy
    // closes it (connections do not queue).
    let Ok(_open) = cluster.circuit.try_tcp_connection() else {
        rt.metrics.upstream_overflow(&cluster.spec.name, Overflow::Connection);
        tracing::debug!(listener = %ctx.listener, cluster = %cluster.spec.name, "maxConnections open to the cluster; closing");
        return;
    };
    let (upstream, endpoint) = connect(&rt, &snap, &cluster, &ctx).await;
    splice(
        &rt, &snap, &listener, &ctx, &cluster, endpoint, upstream, downstream, source,
    )
    .await;
}

/// Copy bytes both ways between `downstream` and `upstream` (the connection [`connect`] made
/// to `cluster`'s endpoint `endpoint`; `None` when it failed) until either side closes, the
/// TCP idle timeout passes (the cluster's, else the listener's) or the cluster's
/// `tcpMaxConnectionDurationMs` is reached, counting them into the connection's TCP series.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn splice<D: AsyncRead + AsyncWrite + Unpin>(
    rt: &Runtime,
    snap: &Snapshot,
    listener: &ListenerRuntime,
    ctx: &ConnContext,
    cluster: &ClusterRuntime,
    endpoint: Option<usize>,
    upstream: Option<UpstreamStream>,
    downstream: D,
    source: Option<Peer>,
) {
    let seen = Observed {
        direction: ctx.direction,
        peer_identity: ctx.peer_identity.as_deref(),
        cluster: Some(cluster),
        endpoint,
        flags: if upstream.is_some() { "-" } else { "UF" },
    };
    let series = rt
        .metrics
        .tcp_opened(crate::labels::conn(snap, &seen, source.map(Arc::new)));
    // Bytes in either direction pass through the downstream side, so its idle
    // clock is the connection's: the cluster's `tcp.idleTimeout`, else the listener's.
    let pool = &cluster.spec.connection_pool;
    let idle_ms = pool
        .tcp_idle_timeout_ms
        .unwrap_or(listener.spec.limits.tcp_idle_timeout_ms);
    let idle = (idle_ms > 0).then(|| Duration::from_millis(idle_ms));
    let mut downstream = Counted {
        inner: crate::idle::IdleIo::new(downstream, idle),
        series: Arc::clone(&series),
    };
    if let Some(mut up) = upstream {
        let copied = tokio::io::copy_bidirectional(&mut downstream, &mut up);
        // The rule's `tcp.maxConnectionDuration`: both sides are closed when it is reached.
        let ended = match pool.tcp_max_connection_duration_ms.map(Duration::from_millis) {
            Some(max) => tokio::time::timeout(max, copied).await.unwrap_or_else(|_| {
                tracing::debug!(cluster = %cluster.spec.name, "TCP connection reached maxConnectionDuration; closing");
                Ok((0, 0))
            }),
            None => copied.await,
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "TCP proxy ended with error");
        }
    }
    series.closed();
}

/// Close a downstream connection with a TCP reset (`SO_LINGER` 0), as Envoy's black hole does.
fn reset(downstream: DownstreamStream) {
    let tcp = match &downstream {
        DownstreamStream::Plain(tcp) => tcp,
        DownstreamStream::Tls(tls) => tls.get_ref().0,
    };
    let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
    drop(downstream);
}

/// Connects to one of the cluster's endpoints (one try per endpoint, at most
/// 3), sending a mesh peer this workload's metadata when it asked for it.
pub(crate) async fn connect(
    rt: &Runtime,
    snap: &Snapshot,
    cluster: &ClusterRuntime,
    ctx: &ConnContext,
) -> (Option<UpstreamStream>, Option<usize>) {
    let mut tried = Vec::new();
    for _ in 0..cluster.endpoints.len().min(3) {
        let Some(idx) = cluster.pick(
            Some(ClusterRuntime::hash_key(ctx.peer.ip().to_string().as_bytes())),
            &tried,
            Instant::now(),
        ) else {
            break;
        };
        tried.push(idx);
        match cluster
            .connect(&cluster.endpoints[idx], crate::upstream::ConnProtocol::Opaque)
            .await
        {
            Ok(io) => {
                let mut io = io.into_inner();
                if let Err(e) = announce(snap, &mut io).await {
                    tracing::debug!(cluster = %cluster.spec.name, error = %e, "sending peer metadata failed");
                    continue;
                }
                return (Some(io), Some(idx));
            }
            Err(e) => {
                tracing::debug!(cluster = %cluster.spec.name, error = %e, "TCP upstream connect failed");
                if matches!(e, crate::upstream::UpstreamError::TlsHandshake { .. }) {
                    rt.metrics.upstream_tls_failed(&cluster.spec.name);
                }
                cluster.record(idx, crate::upstream::Outcome::LocalFailure, Instant::now());
            }
        }
    }
    (None, tried.last().copied())
}

/// Sends the preamble when the upstream selected the peer metadata exchange.
async fn announce(snap: &Snapshot, io: &mut UpstreamStream) -> std::io::Result<()> {
    let selected = match io {
        UpstreamStream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(crate::peer_exchange::ALPN),
        UpstreamStream::Plain(_) => false,
    };
    match (&snap.peer_metadata, selected) {
        (Some(value), true) => crate::peer_exchange::send(io, value.as_bytes()).await,
        // Selected but nothing to say (no namespace): an empty value reads as unknown.
        (None, true) => crate::peer_exchange::send(io, b"").await,
        (_, false) => Ok(()),
    }
}

/// The downstream side of a TCP connection, counting bytes into its series
/// as they move: read from the client is received, written to it is sent.
struct Counted<T> {
    inner: T,
    series: Arc<TcpSeries>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.series.received((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.series.sent(n as u64);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether the workload's AuthorizationPolicies let this connection through (Istio's TCP
/// semantics, see [`crate::authz`]); a refused connection is closed before any byte reaches
/// an upstream.
fn authorized(rt: &Runtime, snap: &Snapshot, ctx: &ConnContext) -> bool {
    let enforced = matches!(ctx.direction, ListenerDirection::Inbound | ListenerDirection::Gateway);
    if !enforced || snap.authorizer.is_empty() {
        return true;
    }
    let principal = ctx.peer_identity.as_deref();
    let namespace = peer_namespace(principal);
    let no_headers = HeaderMap::new();
    let decision = authorize(
        &snap.authorizer,
        &AuthzRequest {
            layer: Layer::Tcp,
            principal,
            namespace: namespace.as_deref(),
            source_ip: ctx.peer.ip(),
            // No X-Forwarded-For on a connection: its peer is the client.
            remote_ip: ctx.peer.ip(),
            destination_ip: ctx.dst.ip(),
            sni: ctx.sni.as_deref(),
            port: ctx.dst.port(),
            host: "",
            method: "",
            path: "",
            headers: &HttpHeaders(&no_headers),
            auth: None,
        },
        &rt.metrics,
    );
    if !decision.allowed() {
        rt.metrics.tcp_denied();
        tracing::debug!(listener = %ctx.listener, peer = ?principal, dst = %ctx.dst, ?decision, "connection denied by authorization policy; closing");
    }
    decision.allowed()
}
