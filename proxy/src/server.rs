//! Downstream listeners: the accept loop (the listener's connection limit and
//! the process's connection budget, [`crate::overload`]; drain), and per
//! connection the original destination, inbound peer authentication (STRICT,
//! PERMISSIVE by ClientHello sniffing, DISABLE), gateway TLS termination,
//! protocol detection (inbound only on the ports whose protocol the config leaves
//! undeclared), and serving HTTP/1.1 + HTTP/2 with hardened limits or opaque TCP.

use crate::connection::ConnContext;
use crate::downstream_waits::HttpConnIo;
use crate::identity::spiffe_id_of;
use crate::request_body::DrainOnDrop;
use crate::runtime::Runtime;
use crate::snapshot::ListenerRuntime;
use crate::sni::TlsServers;
use crate::sniff::{self, http_decided, is_tls_client_hello, looks_like_http, peek_prefix};
use crate::stream::DownstreamStream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use trellis_contract::{ListenerDirection, ListenerProtocol, MtlsMode};

/// A running listener.
#[derive(Debug)]
pub struct ListenerHandle {
    /// Bound address.
    pub addr: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl ListenerHandle {
    /// Stop accepting, let connections finish within `drain`, then close them.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.stop.send(Some(drain));
        let _ = self.task.await;
    }
}

/// Bind a listener socket (SO_REUSEADDR so a restarted proxy rebinds at once).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A connection's view of its listener's drain: `true` once it drains, closed once it stopped.
type Watcher = watch::Receiver<bool>;

/// Start the accept loop of listener `name` on a bound socket.
pub fn spawn(rt: Arc<Runtime>, name: String, listener: TcpListener) -> std::io::Result<ListenerHandle> {
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(None::<Duration>);
    let task = tokio::spawn(async move {
        // Tells every connection the listener drains (true), or stopped (dropped).
        let (drain_tx, draining) = watch::channel(false);
        let mut conns = JoinSet::new();
        let limit = rt
            .snapshot()
            .listeners
            .get(&name)
            .and_then(|l| l.spec.limits.max_connections)
            .map(|n| Arc::new(Semaphore::new(n as usize)));
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Over a limit the connection is closed at once (overload):
                        // the listener's own `maxConnections`, then the process's budget.
                        let permit = match &limit {
                            Some(sem) => match Arc::clone(sem).try_acquire_owned() {
                                Ok(p) => Some(p),
                                Err(_) => {
                                    rt.metrics.downstream_overflow();
                                    tracing::debug!(listener = %name, %peer, "listener connection limit reached; closing");
                                    continue;
                                }
                            },
                            None => None,
                        };
                        let Some(admitted) = rt.connections.try_admit() else {
                            rt.metrics.downstream_overflow();
                            tracing::debug!(listener = %name, %peer, "downstream connection budget spent; closing");
                            continue;
                        };
                        let rt = Arc::clone(&rt);
                        let name = name.clone();
                        let watcher = draining.clone();
                        conns.spawn(async move {
                            serve_connection(rt, name, tcp, peer, watcher).await;
                            drop((permit, admitted));
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = %name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = stopped.changed() => break,
            }
        }
        drop(listener);
        let drain = (*stopped.borrow()).unwrap_or(Duration::ZERO);
        let deadline = tokio::time::Instant::now() + drain;
        drain_tx.send_replace(true);
        let _ = tokio::time::timeout_at(deadline, async { while conns.join_next().await.is_some() {} }).await;
        conns.abort_all();
        tracing::debug!(listener = %name, "listener stopped");
    });
    Ok(ListenerHandle { addr, stop, task })
}

/// What a plaintext connection on a listener that detects its protocol carries.
enum Detected {
    Http,
    Tcp,
    /// Nothing arrived in the header read timeout, at a destination with nowhere to send it.
    Silent,
}

/// Detects the protocol of a plaintext connection from the client's first bytes.
///
/// Where the client dialled a destination this listener routes HTTP for (a Service's cluster
/// IP and port), its first bytes decide however late they come, up to the header read timeout,
/// as Istio's detection without timeout: an HTTP client's pool opens connections it sends on
/// only later, and such a connection taken for a server-first protocol would bypass the routes
/// and the mesh's mTLS. A server-first protocol there needs a declared TCP port (a port named
/// `tcp-*` or with `appProtocol: tcp`); on a port that is both (an undeclared one, TCP route
/// and virtual host), a client silent for the whole header read timeout is taken as one.
/// Elsewhere silence for the detection timeout means a server-first protocol (TCP) where a TCP
/// route or unrouted traffic (passthrough, black hole) has somewhere to take it, else HTTP.
async fn plaintext_protocol(tcp: &TcpStream, listener: &ListenerRuntime, dst: SocketAddr) -> Detected {
    let limits = &listener.spec.limits;
    let routed_http = listener.routes.names_address(dst);
    let wait = match routed_http {
        true => limits.header_read_timeout_ms.max(limits.protocol_detection_timeout_ms),
        false => limits.protocol_detection_timeout_ms,
    };
    let head = peek_prefix(tcp, 16, Duration::from_millis(wait), http_decided).await;
    if looks_like_http(&head) {
        return Detected::Http;
    }
    if !head.is_empty() {
        return Detected::Tcp;
    }
    // A silent client has sent no ClientHello: only routes without server names take it.
    let tcp_routed = listener.tcp_route(dst, None, false).is_some();
    match routed_http {
        true if tcp_routed => Detected::Tcp,
        true => Detected::Silent,
        false if !listener.tcp_routes.is_empty() || !listener.spec.unrouted.is_not_found() => Detected::Tcp,
        false => Detected::Http,
    }
}

/// Recover the pre-redirect destination of a captured connection.
pub fn original_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let addr = match tcp.local_addr().ok()? {
        SocketAddr::V4(_) => sock.original_dst_v4().ok()?,
        SocketAddr::V6(_) => sock.original_dst_v6().ok()?,
    };
    addr.as_socket()
}

/// Whether a gateway listener that terminates TLS passes this connection through
/// instead: its ClientHello names a server a passthrough TCP route takes (a Gateway
/// `PASSTHROUGH` server sharing the port with terminating ones).
async fn passes_through(tcp: &TcpStream, listener: &ListenerRuntime, dst: SocketAddr) -> bool {
    if !listener.routes_by_sni(dst, false) {
        return false;
    }
    let timeout = Duration::from_millis(listener.spec.limits.protocol_detection_timeout_ms);
    match sniff::server_name(tcp, timeout).await {
        Some(name) => listener.tcp_cluster(dst, Some(&name), false).is_some(),
        None => false,
    }
}

/// How to terminate TLS on a connection.
enum Handshake {
    /// One server config (mesh mTLS, or a gateway listener without SNI entries).
    Fixed(Arc<rustls::ServerConfig>),
    /// Read the ClientHello first and pick the server config by its SNI.
    BySni(Arc<TlsServers>),
}

impl Handshake {
    async fn accept(self, tcp: TcpStream) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        match self {
            Self::Fixed(cfg) => tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await,
            Self::BySni(servers) => {
                let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
                let sni = start.client_hello().server_name().map(str::to_owned);
                match servers.select(sni.as_deref()) {
                    Some(cfg) => start.into_stream(Arc::clone(cfg)).await,
                    None => Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no TLS server for SNI {sni:?} and no default (listener tls)"),
                    )),
                }
            }
        }
    }
}

async fn serve_connection(rt: Arc<Runtime>, name: String, tcp: TcpStream, peer: SocketAddr, watcher: Watcher) {
    let _ = tcp.set_nodelay(true);
    let snap = rt.snapshot();
    let Some(listener) = snap.listeners.get(&name).cloned() else {
        return;
    };
    let Ok(local) = tcp.local_addr() else { return };
    let redirected = match listener.spec.transparent {
        true => original_dst(&tcp).filter(|d| *d != local),
        false => None,
    };
    let dst = redirected.unwrap_or(local);
    let limits = &listener.spec.limits;
    // The TLS handshake and then the start of the first request each get the
    // header read timeout: a client that sends nothing is cut like a slow one.
    let handshake_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let mut ctx = ConnContext {
        listener: name.clone(),
        direction: listener.spec.direction,
        peer,
        dst,
        redirected: redirected.is_some(),
        peer_identity: None,
        peer_cert_sha256: None,
        tls: false,
        sni: None,
        verdicts: None,
        requests: crate::downstream_waits::Requests::new(),
        timer: Default::default(),
        first_source: Default::default(),
        xfcc: Default::default(),
        request_series: Default::default(),
    };

    let mut passed_through = false;
    let server_tls: Option<Handshake> = match listener.spec.direction {
        ListenerDirection::Inbound => {
            let mode = snap.settings.inbound.mtls.mode_for(dst.port());
            let tls = match mode {
                MtlsMode::Disable => false,
                MtlsMode::Strict => true,
                MtlsMode::Permissive => {
                    let timeout = Duration::from_millis(limits.protocol_detection_timeout_ms);
                    let head = peek_prefix(&tcp, 2, timeout, |_| false).await;
                    is_tls_client_hello(&head)
                }
            };
            if tls {
                match &snap.inbound_tls {
                    Some(cfg) => Some(Handshake::Fixed(Arc::clone(cfg))),
                    None => {
                        tracing::warn!(listener = %name, %peer, "mTLS required but no workload certificate is loaded; closing");
                        return;
                    }
                }
            } else {
                None
            }
        }
        _ => match &listener.tls {
            Some(_) if passes_through(&tcp, &listener, dst).await => {
                passed_through = true;
                None
            }
            Some(servers) => Some(match servers.only() {
                Some(cfg) => Handshake::Fixed(Arc::clone(cfg)),
                None => Handshake::BySni(Arc::clone(servers)),
            }),
            None => None,
        },
    };

    let (stream, alpn) = match server_tls {
        Some(handshake) => {
            let tls = match tokio::time::timeout(handshake_timeout, handshake.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    // Under STRICT this is where plaintext clients are refused.
                    rt.metrics.downstream_tls_failed();
                    tracing::debug!(listener = %name, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    rt.metrics.downstream_tls_failed();
                    tracing::debug!(listener = %name, %peer, "TLS handshake timed out");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            if listener.spec.direction == ListenerDirection::Inbound {
                let leaf = session.peer_certificates().and_then(|c| c.first());
                match leaf.map(|cert| (spiffe_id_of(cert), cert)) {
                    Some((Ok(id), cert)) => {
                        ctx.peer_identity = Some(id);
                        ctx.peer_cert_sha256 = Some(crate::identity::cert_sha256_hex(cert));
                    }
                    Some((Err(e), _)) => {
                        tracing::info!(listener = %name, %peer, error = %e, "peer certificate has no usable SPIFFE identity; closing");
                        return;
                    }
                    None => return,
                }
            } else if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
                // A gateway's verified client certificate (MUTUAL, OPTIONAL_MUTUAL,
                // ISTIO_MUTUAL): its SPIFFE ID, if any, is the principal, as Envoy's.
                if let Ok(id) = spiffe_id_of(cert) {
                    ctx.peer_identity = Some(id);
                    ctx.peer_cert_sha256 = Some(crate::identity::cert_sha256_hex(cert));
                }
            }
            let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
            ctx.tls = true;
            ctx.sni = session.server_name().map(str::to_string);
            (DownstreamStream::Tls(Box::new(tls)), alpn)
        }
        None => (DownstreamStream::Plain(tcp), None),
    };

    // A mesh client's opaque TCP announces its workload in a preamble first.
    let exchange = ctx.peer_identity.is_some() && alpn.as_deref() == Some(crate::peer_exchange::ALPN);
    // Inbound, a port the Service declares TCP or HTTP is taken so, whatever its bytes look like:
    // only an undeclared port is sniffed (Istio's protocol selection).
    let declared = match listener.spec.direction {
        ListenerDirection::Inbound => listener.declared_protocol(dst, ctx.tls),
        _ => None,
    };
    let is_http = match listener.spec.protocol {
        _ if exchange || passed_through => false,
        ListenerProtocol::Http => true,
        ListenerProtocol::Tcp => false,
        ListenerProtocol::Auto => match (declared, &stream, &alpn) {
            (Some(declared), _, _) => declared == ListenerProtocol::Http,
            (None, DownstreamStream::Tls(_), Some(p)) => p == b"h2" || p == b"http/1.1",
            (None, DownstreamStream::Tls(_), None) => !listener.has_tcp_routes(true),
            (None, DownstreamStream::Plain(tcp), _) => match plaintext_protocol(tcp, &listener, dst).await {
                Detected::Http => true,
                Detected::Tcp => false,
                Detected::Silent => {
                    tracing::debug!(listener = %name, %peer, %dst, "client sent nothing within the header read timeout; closing");
                    return;
                }
            },
        },
    };
    if is_http {
        let verdicts = Arc::new(crate::head::Verdicts::default());
        ctx.verdicts = Some(Arc::clone(&verdicts));
        let guarded = crate::head::GuardedIo::new(stream, verdicts);
        let stream = HttpConnIo::new(
            guarded,
            Arc::clone(&ctx.requests),
            handshake_timeout,
            Duration::from_millis(limits.idle_timeout_ms),
        );
        serve_http(rt, Arc::new(ctx), &listener, stream, watcher).await;
    } else {
        drop(watcher);
        let mut stream = stream;
        let source = match exchange {
            true => match crate::peer_exchange::receive(&mut stream, handshake_timeout).await {
                Ok(value) => ctx
                    .peer_identity
                    .as_deref()
                    .and_then(|principal| crate::peer_metadata::verified(&value, principal)),
                Err(e) => {
                    // The bytes that follow cannot be told from the preamble: nothing to forward.
                    tracing::debug!(listener = %name, %peer, error = %e, "bad peer metadata preamble; closing");
                    return;
                }
            },
            false => None,
        };
        crate::tcp::proxy(rt, snap, listener, ctx, stream, source).await;
    }
}

async fn serve_http(
    rt: Arc<Runtime>,
    ctx: Arc<ConnContext>,
    listener: &ListenerRuntime,
    stream: HttpConnIo<DownstreamStream>,
    watcher: Watcher,
) {
    let limits = &listener.spec.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // why: hyper times the wait for every request head from when it starts waiting, the
        // wait for the next request on a kept-alive connection included, so an idle connection
        // would be closed after the head timeout; `HttpConnIo` times a head from its first byte
        // and the wait between requests with the idle timeout.
        .header_read_timeout(None)
        .max_headers(limits.max_request_headers as usize)
        .max_buf_size(limits.max_request_header_bytes.max(8192) as usize)
        .keep_alive(true);
    let keepalive =
        (limits.http2_keepalive_interval_ms > 0).then(|| Duration::from_millis(limits.http2_keepalive_interval_ms));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(limits.max_request_header_bytes)
        // Rapid-reset defence (CVE-2023-44487): bound resets per connection.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(64)
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(Duration::from_secs(20));
    let peer = ctx.peer;
    let svc_ctx = Arc::clone(&ctx);
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (rt, ctx) = (Arc::clone(&rt), Arc::clone(&svc_ctx));
        let http1 = req.version() < http::Version::HTTP_2;
        let connect = req.method() == http::Method::CONNECT;
        // In flight from here — hyper calls this as soon as it has the head — until the
        // response body ends.
        let request = ctx.requests.begin();
        async move {
            // Whatever answers it, a body left unread is drained, not reset (HTTP/2).
            let req = req.map(|body| DrainOnDrop::new(body, !http1));
            let mut response = crate::http::handle(Arc::clone(&rt), Arc::clone(&ctx), req, request).await?;
            let status = response.status();
            // The framing guard follows an upgrade's connection until it really switches.
            if http1
                && (status == http::StatusCode::SWITCHING_PROTOCOLS || connect && status.is_success())
                && let Some(verdicts) = &ctx.verdicts
            {
                verdicts.switched();
            }
            // Draining: an HTTP/1 client is told to take its next request elsewhere
            // (an upgrade keeps its connection; HTTP/2 gets GOAWAY at shutdown).
            if http1 && rt.is_draining() && response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    let mut watcher = watcher;
    let closing = async {
        tokio::select! {
            // A dropped sender (the listener stopped) counts as draining.
            _ = watcher.wait_for(|draining| *draining) => {}
            _ = ctx.requests.idle_timed_out() => {}
        }
    };
    // Shut down gracefully (HTTP/2: GOAWAY) when the listener drains or the connection idles.
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = closing => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(listener = %ctx.listener, %peer, error = %e, "downstream connection ended with error");
    }
}
