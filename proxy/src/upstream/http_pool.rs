//! HTTP connections to an endpoint: HTTP/1 connections pooled and reused once the previous
//! response has been read; HTTP/2 connections shared (multiplexed), each carrying at most
//! `maxConcurrentStreams` requests at once, more connections opened beyond. A connection takes
//! at most `maxRequestsPerConnection` requests (HTTP/1 requests, HTTP/2 streams, as Envoy
//! applies it to every protocol), is closed after `idleTimeoutMs` idle — HTTP/1 in the pool,
//! by one sweeping task per endpoint; HTTP/2 with no stream open, by its connection's task,
//! with a GOAWAY — and is drained at `maxConnectionDurationMs` from its opening; drained, it
//! takes no new request and closes when its requests are answered. An HTTP/2 connection whose
//! keepalive PING goes unanswered (`http2Keepalive`) is closed and leaves the pool.
//!
//! Every request counts as active on its endpoint (and on its HTTP/2 connection's streams)
//! until its [`InFlight`] drops.

use super::{Body, ClusterRuntime, ConnProtocol, EndpointState, UpstreamError};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Numbers connections, so one can find itself in its endpoint's pool.
static CONNECTION_IDS: AtomicU64 = AtomicU64::new(0);

/// An endpoint's HTTP connections.
#[derive(Default)]
pub(super) struct Pool {
    h1: Vec<IdleConn>,
    h2: Vec<H2Conn>,
    /// A [`sweep_idle`] task watches `h1`.
    sweeping: bool,
}

/// An HTTP/1 connection waiting for its next request.
struct IdleConn {
    id: u64,
    sender: http1::SendRequest<Body>,
    idle_since: Instant,
    served: u32,
    expires: Option<Instant>,
}

/// A shared HTTP/2 connection and the streams open on it.
struct H2Conn {
    id: u64,
    sender: http2::SendRequest<Body>,
    streams: Arc<Streams>,
    /// Streams it has been given, this one's last included (`maxRequestsPerConnection`).
    served: u32,
    expires: Option<Instant>,
}

/// The streams open on an HTTP/2 connection, and since when none is (its idle timeout).
#[derive(Debug)]
struct Streams {
    open: AtomicU32,
    /// When a stream last ended, in milliseconds since `opened`.
    last_ended_ms: AtomicU64,
    opened: Instant,
}

impl Streams {
    /// A new connection's, with its first stream open.
    fn first() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicU32::new(1),
            last_ended_ms: AtomicU64::new(0),
            opened: Instant::now(),
        })
    }

    /// A stream ends. why: the time is written before the count drops, so whoever sees no
    /// stream open also sees when the last one ended (the idle check reads them in that
    /// order); one clock read a stream, which the check needs to close at the idle timeout
    /// exactly, as Envoy's timer does, rather than up to twice as late.
    fn end(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ended_ms.fetch_max(ms, Ordering::Release);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Since when no stream is open, or `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.last_ended_ms.load(Ordering::Acquire);
        Some(self.opened + Duration::from_millis(ms))
    }
}

/// One request in flight on an endpoint: counted in [`EndpointState::active`]
/// (least-request balancing, `/config_dump`) — and, on HTTP/2, as a stream of its
/// connection — from the moment it is sent until this guard drops. Dropping is the only
/// way to stop counting, so a request cancelled anywhere — a client abort, an HTTP/2 stream
/// reset, a route timeout dropping the upstream future — is uncounted as surely as one that
/// completes.
#[derive(Debug)]
pub struct InFlight {
    ep: Arc<EndpointState>,
    stream: Option<Arc<Streams>>,
    admission: Option<super::Admission>,
}

impl InFlight {
    fn start(ep: &Arc<EndpointState>) -> Self {
        ep.active.fetch_add(1, Ordering::Relaxed);
        Self {
            ep: Arc::clone(ep),
            stream: None,
            admission: None,
        }
    }

    /// Keep the request's admission to its cluster (slot, active request) as long as this.
    pub fn hold(&mut self, admission: super::Admission) {
        self.admission = Some(admission);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ep.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(s) = &self.stream {
            s.end();
        }
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

/// Drive a connection until it ends. At `expires`, take it out of its endpoint's pool (so it
/// gets no new request) and keep driving it while its requests finish: with its pool's handle
/// gone, it closes when they have. With `idle` (an HTTP/2 connection's streams and its idle
/// timeout), the same once no stream has been open that long (Envoy's upstream
/// `idle_timeout`): its last handle gone and no stream open, the HTTP/2 connection sends
/// GOAWAY and closes, and the next request opens a new one.
async fn drive<F>(
    conn: F,
    id: u64,
    ep: Weak<EndpointState>,
    expires: Option<Instant>,
    idle: Option<(Arc<Streams>, Duration)>,
    what: &'static str,
) where
    F: std::future::Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    // When to look at the streams next: when the connection would be idle long enough if no
    // stream were opened from now on.
    let mut idle_check = idle.as_ref().map(|(streams, timeout)| streams.opened + *timeout);
    loop {
        let at = match (expires, idle_check) {
            (Some(a), Some(b)) => a.min(b),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => break,
        };
        tokio::select! {
            ended = &mut conn => return log_end(ended, what),
            () = tokio::time::sleep_until(at.into()) => {}
        }
        // The endpoint gone (a new config), its pool and the handle in it are gone too.
        let Some(ep) = ep.upgrade() else { break };
        let mut pool = ep.pool.lock().expect("pool lock");
        let now = Instant::now();
        if expires.is_some_and(|at| at <= now) {
            pool.h1.retain(|c| c.id != id);
            pool.h2.retain(|c| c.id != id);
            tracing::debug!(endpoint = %ep.addr, "upstream {what} connection reached maxConnectionDuration; draining");
            break;
        }
        if let Some((streams, timeout)) = &idle {
            // Under the pool's lock no stream can be opened on the connection meanwhile.
            match streams.idle_since() {
                Some(since) if now.saturating_duration_since(since) >= *timeout => {
                    pool.h2.retain(|c| c.id != id);
                    tracing::debug!(endpoint = %ep.addr, "upstream {what} connection idle for idleTimeoutMs; closing");
                    break;
                }
                Some(since) => idle_check = Some(since + *timeout),
                None => idle_check = Some(now + *timeout),
            }
        }
    }
    log_end(conn.await, what);
}

fn log_end(ended: Result<(), hyper::Error>, what: &'static str) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, "upstream {what} connection ended");
    }
}

impl EndpointState {
    /// Keep an HTTP/1 connection ready for another request, while the pool has room and the
    /// connection has not lived its `maxConnectionDurationMs` (dropped, it closes); a pool
    /// nobody sweeps gets a [`sweep_idle`] task, which closes it after `idle`.
    fn pool_h1(self: &Arc<Self>, mut conn: IdleConn, max_idle: usize, idle: Duration) {
        let now = Instant::now();
        let mut pool = self.pool.lock().expect("pool lock");
        if pool.h1.len() < max_idle && conn.expires.is_none_or(|at| at > now) {
            conn.idle_since = now;
            pool.h1.push(conn);
            if !pool.sweeping {
                pool.sweeping = true;
                tokio::spawn(sweep_idle(Arc::downgrade(self), now + idle, idle));
            }
        }
    }
}

/// Close an endpoint's pooled HTTP/1 connections once they have been idle `idle` (Envoy's
/// upstream `idle_timeout` is a timer): dropped from the pool, a connection's task ends and
/// closes it. The task wakes when the oldest idle connection's time is up and ends when the
/// pool is empty (the next connection pooled starts another) or the endpoint is gone (a new
/// config). why: one task per endpoint and a wake-up per idle timeout, instead of a timer
/// armed and disarmed with every request.
async fn sweep_idle(ep: Weak<EndpointState>, mut at: Instant, idle: Duration) {
    loop {
        tokio::time::sleep_until(at.into()).await;
        let Some(ep) = ep.upgrade() else { return };
        let mut pool = ep.pool.lock().expect("pool lock");
        let now = Instant::now();
        let before = pool.h1.len();
        pool.h1.retain(|c| now.duration_since(c.idle_since) < idle);
        if pool.h1.len() < before {
            tracing::debug!(endpoint = %ep.addr, closed = before - pool.h1.len(), "idle upstream h1 connections closed");
        }
        match pool.h1.iter().map(|c| c.idle_since).min() {
            Some(oldest) => at = oldest + idle,
            None => {
                pool.sweeping = false;
                return;
            }
        }
    }
}

/// How a new upstream HTTP/2 connection of a cluster with `pool` speaks: with its
/// `http2Keepalive` (Envoy's `connection_keepalive`: a PING every interval, streams open or
/// not; one unanswered for the timeout ends the connection, which leaves the pool with it), or
/// else the proxy's own — a PING every 30 s while a stream is open, answered within hyper's
/// 20 s — which finds a dead upstream under a long request without waking idle connections.
fn h2_builder(pool: &trellis_contract::ConnectionPool) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new());
    match &pool.http2_keepalive {
        Some(ka) => b
            .keep_alive_interval(Duration::from_millis(ka.interval_ms))
            .keep_alive_timeout(Duration::from_millis(ka.timeout_ms))
            .keep_alive_while_idle(true),
        None => b.keep_alive_interval(Duration::from_secs(30)),
    };
    b
}

impl ClusterRuntime {
    /// When a connection opened now must be drained (`maxConnectionDurationMs`).
    fn expiry(&self) -> Option<Instant> {
        self.spec
            .connection_pool
            .max_connection_duration_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms))
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
        let mut in_flight = InFlight::start(&self.endpoints[idx]);
        let ep = Arc::clone(&in_flight.ep);
        let resp = if self.uses_h2(downstream_h2) {
            self.send_h2(&ep, req, &mut in_flight).await
        } else {
            self.send_h1(&ep, req).await
        }?;
        Ok((resp, in_flight))
    }

    /// An HTTP/2 connection with room for one more stream (the stream counted in
    /// `in_flight`), or a new one. The stream that reaches `maxRequestsPerConnection` takes its
    /// connection out of the pool: it gets no new stream and, its pool's handle gone, closes
    /// when its streams end (drained, as Envoy does). A connection with no stream open for
    /// `idleTimeoutMs` is closed by its task ([`drive`]).
    async fn send_h2(
        &self,
        ep: &Arc<EndpointState>,
        req: Request<Body>,
        in_flight: &mut InFlight,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let pool_cfg = &self.spec.connection_pool;
        let max_streams = pool_cfg.max_concurrent_streams.unwrap_or(u32::MAX);
        let max_served = match pool_cfg.max_requests_per_connection {
            0 => u32::MAX,
            n => n,
        };
        let existing = {
            let mut pool = ep.pool.lock().expect("pool lock");
            let now = Instant::now();
            pool.h2
                .retain(|c| !c.sender.is_closed() && c.expires.is_none_or(|at| at > now));
            pool.h2
                .iter()
                .position(|c| c.streams.open.load(Ordering::Relaxed) < max_streams)
                .map(|i| {
                    let c = &mut pool.h2[i];
                    c.streams.open.fetch_add(1, Ordering::Relaxed);
                    c.served += 1;
                    let taken = (c.sender.clone(), Arc::clone(&c.streams));
                    if c.served >= max_served {
                        tracing::debug!(endpoint = %ep.addr, "upstream h2 connection reached maxRequestsPerConnection; draining");
                        pool.h2.swap_remove(i);
                    }
                    taken
                })
        };
        let mut sender = match existing {
            Some((sender, streams)) => {
                in_flight.stream = Some(streams);
                sender
            }
            // Boxed: see `send_h1`.
            None => {
                Box::pin(async {
                    let io = self.connect(ep, ConnProtocol::Http2).await?;
                    let (sender, conn) = h2_builder(pool_cfg)
                        .handshake(io)
                        .await
                        .map_err(|source| UpstreamError::Reset { addr: ep.addr, source })?;
                    let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
                    let expires = self.expiry();
                    let streams = Streams::first();
                    let idle = (Arc::clone(&streams), Duration::from_millis(pool_cfg.idle_timeout_ms));
                    tokio::spawn(drive(conn, id, Arc::downgrade(ep), expires, Some(idle), "h2"));
                    in_flight.stream = Some(Arc::clone(&streams));
                    // A connection for one request only is never pooled.
                    if max_served > 1 {
                        ep.pool.lock().expect("pool lock").h2.push(H2Conn {
                            id,
                            sender: sender.clone(),
                            streams,
                            served: 1,
                            expires,
                        });
                    }
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
                if c.sender.is_ready()
                    && now.duration_since(c.idle_since) < idle_timeout
                    && c.expires.is_none_or(|at| at > now)
                {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let (mut conn, pooled) = match reused {
            Some(c) => (c, true),
            // why: connecting (TCP, TLS handshake) is a large future, rare next to the pooled
            // path; boxed, it stays out of every request's future, which was copied whole each
            // time it moved (about 2.4k instructions a request).
            None => (Box::pin(self.connect_h1(ep)).await?, false),
        };
        let resp = match conn.sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // The pooled connection closed before the request was written to it (the
                // upstream closed its idle keep-alive connection as the request raced onto it,
                // as a terminating pod's proxy does): the upstream never saw the request, so it
                // goes on a new connection, whatever its method (hyper-util's client does the
                // same). A refused connect is then a connect failure, which routes retry.
                Some(req) if pooled => {
                    tracing::debug!(endpoint = %ep.addr, "pooled connection closed before the request was sent; sending it on a new one");
                    conn = Box::pin(self.connect_h1(ep)).await?;
                    conn.sender
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
        conn.served += 1;
        let max = pool_cfg.max_requests_per_connection;
        let keep = (max == 0 || conn.served < max)
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
            if conn.sender.is_ready() {
                ep.pool_h1(conn, max_idle, idle_timeout);
            } else {
                let ep = Arc::clone(ep);
                tokio::spawn(async move {
                    if conn.sender.ready().await.is_ok() {
                        ep.pool_h1(conn, max_idle, idle_timeout);
                    }
                });
            }
        }
        Ok(resp)
    }

    /// A new HTTP/1 connection to `ep`, its connection task spawned.
    async fn connect_h1(&self, ep: &Arc<EndpointState>) -> Result<IdleConn, UpstreamError> {
        let io = self.connect(ep, ConnProtocol::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Reset { addr: ep.addr, source })?;
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        let expires = self.expiry();
        tokio::spawn(drive(conn.with_upgrades(), id, Arc::downgrade(ep), expires, None, "h1"));
        Ok(IdleConn {
            id,
            sender,
            idle_since: Instant::now(),
            served: 0,
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::AtomicU64;
    use trellis_contract::Cluster;

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
}
