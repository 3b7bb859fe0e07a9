//! Upstream connections as a DestinationRule's `connectionPool` shapes them, through a real
//! proxy and seen from the upstream's side: `maxConcurrentStreams` (more HTTP/2
//! connections), `maxRequestsPerConnection` on HTTP/2, `idleTimeoutMs` on pooled HTTP/1
//! connections and on HTTP/2 connections with no stream open, `tcp.maxConnectionDuration` (HTTP connections drained, TCP connections
//! closed, each by its own field), `tcp.idleTimeout` and `tcp.maxConnections` on proxied TCP,
//! and `tcp.tcpKeepalive` on the proxy's upstream sockets.

use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What an upstream saw of its connections.
#[derive(Default)]
struct Connections {
    opened: AtomicU64,
    closed: AtomicU64,
}

impl Connections {
    fn opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    fn closed(&self) -> u64 {
        self.closed.load(Ordering::SeqCst)
    }

    /// Wait until `n` connections have closed (or 3 s pass); how many have.
    async fn wait_closed(&self, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.closed() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.closed()
    }
}

/// An HTTP/1.1 and h2c upstream answering `/delay/<ms>` after that long, counting the
/// connections it accepts and sees closed.
async fn http_upstream() -> (SocketAddr, Arc<Connections>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Connections::default());
    let conns = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            conns.opened.fetch_add(1, Ordering::SeqCst);
            let conns = Arc::clone(&conns);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let ms = req.uri().path().strip_prefix("/delay/").and_then(|d| d.parse().ok());
                    tokio::time::sleep(Duration::from_millis(ms.unwrap_or(0))).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
                conns.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

/// An outbound HTTP config to `up` with this upstream protocol and connection pool.
fn http_config(up: SocketAddr, protocol: &str, pool: Value) -> Value {
    outbound_config(
        "1",
        vec![forward_route("c")],
        vec![json!({"name": "c", "protocol": protocol, "connectionPool": pool,
                    "endpoints": [{"address": "127.0.0.1", "port": up.port()}]})],
    )
}

/// `n` GETs of `path` at once, each on its own downstream connection; their statuses.
async fn concurrently(addr: SocketAddr, n: usize, path: &'static str) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { get(addr, "svc", path).await.status.as_u16() }))
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes
}

/// Three requests at once to an h2c upstream through a proxy with `pool`, after one that
/// opened a connection; how many connections the upstream accepted.
async fn h2_connections_for_three(pool: Value) -> u64 {
    let (up, conns) = http_upstream().await;
    let proxy = Proxy::start(http_config(up, "http2", pool)).await;
    let addr = proxy.addr("outbound").await;
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    assert_eq!(conns.opened(), 1);
    let codes = concurrently(addr, 3, "/delay/400").await;
    assert_eq!(codes, vec![200, 200, 200]);
    conns.opened()
}

#[tokio::test]
async fn max_concurrent_streams_opens_more_http2_connections() {
    assert_eq!(
        h2_connections_for_three(json!({"maxConcurrentStreams": 1})).await,
        3,
        "one stream per HTTP/2 connection"
    );
    // Without the limit the three share the open connection.
    assert_eq!(h2_connections_for_three(json!({})).await, 1, "HTTP/2 multiplexes");
}

/// Envoy applies `max_requests_per_connection` to HTTP/2 too: after that many streams a
/// connection takes no new one and is drained.
#[tokio::test]
async fn max_requests_per_connection_drains_an_http2_connection() {
    let (up, conns) = http_upstream().await;
    let proxy = Proxy::start(http_config(up, "http2", json!({"maxRequestsPerConnection": 2}))).await;
    let addr = proxy.addr("outbound").await;
    for n in 0..6 {
        assert_eq!(get(addr, "svc", "/").await.status, 200, "request {n}");
    }
    assert_eq!(conns.opened(), 3, "two streams per HTTP/2 connection");
    assert_eq!(
        conns.wait_closed(3).await,
        3,
        "each connection closed once its last stream was answered"
    );
}

/// Wait until the upstream has seen its one connection closed; how long after `since` it had.
async fn closed_after(conns: &Connections, since: Instant) -> Duration {
    assert_eq!(
        conns.wait_closed(1).await,
        1,
        "the upstream saw its idle connection closed"
    );
    since.elapsed()
}

/// Envoy's upstream `idle_timeout` is a timer: an HTTP/1 connection idle in the pool that long
/// is closed then, not left open until a request finds it.
#[tokio::test]
async fn idle_timeout_closes_a_pooled_http1_connection_with_no_request_to_find_it() {
    let (up, conns) = http_upstream().await;
    let proxy = Proxy::start(http_config(up, "http1", json!({"idleTimeoutMs": 300}))).await;
    let addr = proxy.addr("outbound").await;
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    let pooled = Instant::now();
    assert_eq!(conns.opened(), 1);
    let idle = closed_after(&conns, pooled).await;
    assert!(
        idle >= Duration::from_millis(250),
        "closed after {idle:?}, before its idle timeout"
    );
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    assert_eq!(conns.opened(), 2, "the next request on a new connection");
}

/// Envoy's upstream `idle_timeout` holds for HTTP/2 too: a connection with no stream open that
/// long is closed (GOAWAY), and the next request opens a new one. Idle counts from its last
/// stream's end: a stream open longer than the timeout keeps it.
#[tokio::test]
async fn idle_timeout_closes_an_http2_connection_with_no_stream_open() {
    let (up, conns) = http_upstream().await;
    let proxy = Proxy::start(http_config(up, "http2", json!({"idleTimeoutMs": 300}))).await;
    let addr = proxy.addr("outbound").await;
    // One stream of 500 ms: past the timeout from the connection's opening, not idle.
    assert_eq!(get(addr, "svc", "/delay/500").await.status, 200);
    let answered = Instant::now();
    assert_eq!(conns.opened(), 1);
    let idle = closed_after(&conns, answered).await;
    assert!(
        idle >= Duration::from_millis(250),
        "closed {idle:?} after its last stream ended, before its idle timeout"
    );
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    assert_eq!(conns.opened(), 2, "the next request on a new connection");
    // Requests closer together than the timeout keep sharing one connection.
    for n in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(get(addr, "svc", "/").await.status, 200, "request {n}");
    }
    assert_eq!(
        (conns.opened(), conns.closed()),
        (2, 1),
        "one connection, never idle for 300 ms"
    );
}

#[tokio::test]
async fn max_connection_duration_closes_an_idle_http_connection() {
    let (up, conns) = http_upstream().await;
    let proxy = Proxy::start(http_config(up, "http1", json!({"maxConnectionDurationMs": 300}))).await;
    let addr = proxy.addr("outbound").await;
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    assert_eq!(conns.opened(), 1);
    // Pooled and idle, it is closed when its time is up, seen by the upstream.
    assert_eq!(conns.wait_closed(1).await, 1, "the upstream saw its connection closed");
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    assert_eq!(conns.opened(), 2, "the next request on a new connection");
}

#[tokio::test]
async fn max_connection_duration_drains_a_busy_connection() {
    for protocol in ["http1", "http2"] {
        let (up, conns) = http_upstream().await;
        let proxy = Proxy::start(http_config(up, protocol, json!({"maxConnectionDurationMs": 200}))).await;
        let addr = proxy.addr("outbound").await;
        // Its time is up mid-request: the request is answered, then the connection closes.
        let started = Instant::now();
        assert_eq!(get(addr, "svc", "/delay/600").await.status, 200, "{protocol}");
        assert!(started.elapsed() >= Duration::from_millis(600), "{protocol}");
        assert_eq!(conns.wait_closed(1).await, 1, "{protocol}: closed once answered");
        assert_eq!(conns.opened(), 1, "{protocol}");
    }
}

/// A TCP echo upstream counting the connections it accepts and sees closed by the proxy.
async fn echo_upstream() -> (SocketAddr, Arc<Connections>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Connections::default());
    let conns = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            conns.opened.fetch_add(1, Ordering::SeqCst);
            let conns = Arc::clone(&conns);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                conns.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

fn tcp_config(echo: SocketAddr, pool: Value) -> Value {
    json!({
        "version": "1",
        "listeners": [{
            "name": "l", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "tcp",
            "tcpRoutes": [{"cluster": "echo"}],
        }],
        "clusters": [{"name": "echo", "protocol": "tcp", "connectionPool": pool,
                      "endpoints": [{"address": "127.0.0.1", "port": echo.port()}]}],
    })
}

/// A new connection through the proxy's TCP listener `addr`, echoed once.
async fn echoed(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
        .await
        .expect("echo")
        .expect("open");
    assert_eq!(&b, b"ping");
    s
}

/// A proxied TCP connection that echoed once; then how long until the client saw it closed
/// (`None`: still open after 3 s).
async fn echo_then_wait_for_close(proxy: &Proxy) -> Option<Duration> {
    let mut s = echoed(proxy.addr("l").await).await;
    let mut b = [0u8; 4];
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await {
        Ok(Ok(0) | Err(_)) => Some(started.elapsed()),
        Ok(Ok(_)) => panic!("unexpected bytes"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn max_connection_duration_closes_a_proxied_tcp_connection() {
    // The HTTP connections' duration leaves proxied TCP alone (Istio sets the TCP proxy's
    // from the rule's top-level pool only: its own field).
    let (echo, _conns) = echo_upstream().await;
    let proxy = Proxy::start(tcp_config(echo, json!({"maxConnectionDurationMs": 200}))).await;
    assert_eq!(
        echo_then_wait_for_close(&proxy).await,
        None,
        "HTTP's duration closed TCP"
    );
    let (echo, conns) = echo_upstream().await;
    // Busy all along: a byte every 50 ms still ends at the duration.
    let proxy = Proxy::start(tcp_config(echo, json!({"tcpMaxConnectionDurationMs": 400}))).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr("l").await).await.unwrap();
    let started = Instant::now();
    let mut b = [0u8; 1];
    let lasted = loop {
        if s.write_all(b"x").await.is_err() {
            break started.elapsed();
        }
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await {
            Ok(Ok(1)) => {}
            Ok(_) => break started.elapsed(),
            Err(_) => panic!("no echo and no close"),
        }
        assert!(started.elapsed() < Duration::from_secs(3), "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(lasted >= Duration::from_millis(380), "{lasted:?}");
    assert_eq!(conns.wait_closed(1).await, 1, "the upstream saw it closed");
}

#[tokio::test]
async fn the_clusters_tcp_idle_timeout_closes_an_idle_proxied_connection() {
    let (echo, conns) = echo_upstream().await;
    let proxy = Proxy::start(tcp_config(echo, json!({"tcpIdleTimeoutMs": 300}))).await;
    let closed_after = echo_then_wait_for_close(&proxy).await.expect("closed when idle");
    assert!(closed_after >= Duration::from_millis(250), "{closed_after:?}");
    assert_eq!(conns.wait_closed(1).await, 1, "the upstream saw it closed");
    // Without it the listener's (1 h) holds.
    let (echo, _conns) = echo_upstream().await;
    let proxy = Proxy::start(tcp_config(echo, json!({}))).await;
    assert_eq!(echo_then_wait_for_close(&proxy).await, None);
}

#[tokio::test]
async fn max_tcp_connections_closes_a_connection_past_it() {
    let (echo, conns) = echo_upstream().await;
    let proxy = Proxy::start(tcp_config(echo, json!({"maxTcpConnections": 1}))).await;
    let addr = proxy.addr("l").await;
    let first = echoed(addr).await;
    let mut b = [0u8; 3];
    // The second, while the first is open: closed on arrival, never reaching the upstream.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = second.write_all(b"two").await;
    let read = tokio::time::timeout(Duration::from_secs(2), second.read(&mut b)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "closed at once: {read:?}");
    assert_eq!(conns.opened(), 1);
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("trellis_proxy_upstream_cx_overflow_total{") && l.ends_with(" 1")),
        "{m}"
    );
    // Once the first closes, a new one is let through.
    drop(first);
    assert_eq!(conns.wait_closed(1).await, 1);
    echoed(addr).await;
}

/// The kernel's timer on the TCP socket from `local` to `remote` (IPv4), from
/// `/proc/net/tcp`: (`tr`, `tm->when` in clock ticks). `tr` 2 is the keepalive timer.
fn socket_timer(local: SocketAddr, remote: SocketAddr) -> Option<(u8, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => unreachable!("IPv4 loopback only"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (tr, when) = f.get(5)?.split_once(':')?;
        Some((tr.parse().ok()?, u64::from_str_radix(when, 16).ok()?))
    })
}

#[tokio::test]
async fn tcp_keepalive_is_set_on_the_proxys_upstream_socket() {
    // The upstream records the proxy's address on each connection it accepts.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&peers);
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = l.accept().await {
            seen.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let pool = json!({"tcpKeepalive": {"timeSecs": 7, "intervalSecs": 2, "probes": 3}});
    let proxy = Proxy::start(http_config(up, "http1", pool)).await;
    assert_eq!(get(proxy.addr("outbound").await, "svc", "/").await.status, 200);
    let proxy_side = peers.lock().unwrap()[0];
    // The pooled connection's socket, on the proxy's side: its keepalive timer runs, due
    // within the 7 s idle time (USER_HZ is 100 ticks a second).
    let (timer, when) = socket_timer(proxy_side, up).expect("the proxy's upstream socket");
    assert_eq!(timer, 2, "the keepalive timer is armed");
    assert!(
        (400..=700).contains(&when),
        "first probe due in {when} ticks, not after 7 s"
    );

    // Without tcpKeepalive no timer runs on an idle connection.
    let proxy = Proxy::start(http_config(up, "http1", json!({}))).await;
    assert_eq!(get(proxy.addr("outbound").await, "svc", "/").await.status, 200);
    let proxy_side = peers.lock().unwrap()[1];
    assert_eq!(socket_timer(proxy_side, up).map(|t| t.0), Some(0));
}
