//! A downstream connection's waits, as Envoy bounds them: a request head is timed from its
//! first byte (`headerReadTimeoutMs`; the first from the start of the connection — silent
//! connections: overload.rs), and a kept-alive connection waits for its next request for the
//! idle timeout (`idleTimeoutMs`), HTTP/1 and HTTP/2 alike, however long it has been idle
//! compared with the head timeout. A request in flight, an upgraded stream, is not idle; an
//! upgrade answered without 101 leaves the connection HTTP/1, its next heads guarded and timed.

use crate::support::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Head timeout 300 ms, idle timeout `idle_ms`.
fn limits(idle_ms: u64) -> Value {
    json!({"headerReadTimeoutMs": 300, "idleTimeoutMs": idle_ms})
}

/// Send one request on `s` and read its response; `None` when the connection is closed first.
async fn exchange(s: &mut TcpStream, path: &str) -> Option<String> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n");
    s.write_all(head.as_bytes()).await.ok()?;
    read_response(s).await
}

/// A connection to `addr` that has had one request (`/1`) answered 200.
async fn served_once(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let first = exchange(&mut s, "/1").await.expect("the first response");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    s
}

async fn read_response(s: &mut TcpStream) -> Option<String> {
    let (reply, whole) = read_reply(s, Duration::from_secs(5)).await;
    whole.then_some(reply)
}

/// How long after `since` the proxy closed `s` (EOF or reset), reading at most `within`;
/// `None` if it is still open then.
async fn closed(s: &mut TcpStream, since: Instant, within: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::from_std(since + within);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// Send a head on `s` one byte every 50 ms (from now) until it is all sent or the proxy closes
/// the connection; how long after `since` the proxy closed it (at most 5 s) and what it answered.
async fn trickle_head(s: TcpStream, since: Instant) -> (Duration, String) {
    let (mut r, mut w) = s.into_split();
    tokio::spawn(async move {
        for b in SLOW_HEAD {
            if w.write_all(std::slice::from_ref(b)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "still open 5 s after a head began to trickle");
    (since.elapsed(), String::from_utf8_lossy(&reply).into_owned())
}

const SLOW_HEAD: &[u8] = b"GET /slow HTTP/1.1\r\nHost: svc\r\nX-Slowly: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

#[tokio::test]
async fn a_kept_alive_connection_idle_longer_than_the_head_timeout_serves_its_next_request() {
    let (a, _p, addr) = proxy_with_limits(limits(3000)).await;
    let mut s = served_once(addr).await;
    // More than three head timeouts without a byte: the wait for a request is the idle one.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = exchange(&mut s, "/2")
        .await
        .expect("the connection is still open after 1 s idle (head timeout 300 ms, idle 3 s)");
    assert!(
        second.starts_with("HTTP/1.1 200") && second.ends_with("a /2"),
        "{second}"
    );
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let (_a, _p, addr) = proxy_with_limits(limits(1500)).await;
    let mut s = served_once(addr).await;
    let answered = Instant::now();
    let after = closed(&mut s, answered, Duration::from_secs(5))
        .await
        .expect("closed by the idle timeout");
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_millis(2500),
        "closed {after:?} after the response; the idle timeout is 1.5 s (the head timeout 300 ms)"
    );
}

#[tokio::test]
async fn a_first_head_trickled_slower_than_the_head_timeout_is_closed() {
    let (a, _p, addr) = proxy_with_limits(limits(3000)).await;
    let start = Instant::now();
    let (after, reply) = trickle_head(TcpStream::connect(addr).await.unwrap(), start).await;
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(1500),
        "closed {after:?} after the connection opened; the head timeout is 300 ms, the idle 3 s"
    );
    assert!(!reply.contains("200"), "{reply}");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn a_later_head_is_timed_from_its_first_byte() {
    let (a, _p, addr) = proxy_with_limits(limits(3000)).await;
    let s = served_once(addr).await;
    // Idle for longer than the head timeout, then a head sent slower than it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (after, reply) = trickle_head(s, Instant::now()).await;
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(1500),
        "closed {after:?} after the second head's first byte; the head timeout is 300 ms"
    );
    assert_eq!(a.hits(), 1, "{reply}");
}

#[tokio::test]
async fn a_pipelined_head_left_unfinished_is_bounded_by_the_head_timeout() {
    let (a, _p, addr) = proxy_with_limits(limits(3000)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let sent = Instant::now();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: svc\r\n\r\nGET /2 HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let first = read_response(&mut s).await.expect("the first request is answered");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let after = closed(&mut s, sent, Duration::from_secs(5))
        .await
        .expect("closed before the idle timeout");
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(1500),
        "closed {after:?} after the unfinished head arrived; the head timeout is 300 ms, the idle 3 s"
    );
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_request_waiting_longer_than_the_idle_timeout_is_answered() {
    let (_a, _p, addr) = proxy_with_limits(limits(500)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let reply = exchange(&mut s, "/delay/1200")
        .await
        .expect("not closed while its request waits for the upstream");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test]
async fn an_upgraded_stream_moving_bytes_outlives_the_idle_timeout() {
    let c = echo_upgrade_cluster("ws").await;
    let mut cfg = outbound_config("1", vec![forward_route("ws")], vec![c]);
    cfg["listeners"][0]["limits"] = limits(500);
    let proxy = Proxy::start(cfg).await;
    let mut s = upgraded_to_echo(proxy.addr("outbound").await).await;
    // The upgraded stream is a request in flight: the idle timeout (500 ms) does not cut it.
    echoes_for(&mut s, Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout_though_it_answers_pings() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut l = limits(1000);
    l["http2KeepaliveIntervalMs"] = json!(200);
    let (_a, _p, addr) = proxy_with_limits(l).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://svc/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("a response");
    assert_eq!(resp.status(), 200);
    http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("closed within 5 s (idle timeout 1 s, keepalive PINGs every 200 ms)")
        .unwrap()
        .ok();
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(2500),
        "closed {after:?} after the response; the idle timeout is 1 s"
    );
}

/// A proxy whose listener (head timeout 300 ms, idle 3 s) routes `svc` to upstream `a` and
/// `refuses` to an upstream answering every request 502, and has no route for other hosts;
/// upstream `a`, the proxy and the listener's address.
async fn proxy_refusing_upgrades() -> (Upstream, Upstream, Proxy, std::net::SocketAddr) {
    let (a, r) = (Upstream::start("a").await, Upstream::failing("r", 502).await);
    let mut cfg = outbound_config("1", vec![], vec![cluster("a", &[&a]), cluster("r", &[&r])]);
    cfg["listeners"][0]["limits"] = limits(3000);
    cfg["listeners"][0]["virtualHosts"] = json!([
        {"name": "svc", "domains": ["svc"], "routes": [forward_route("a")]},
        {"name": "refuses", "domains": ["refuses"], "routes": [forward_route("r")]},
    ]);
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("outbound").await;
    (a, r, proxy, addr)
}

/// A connection to `addr` whose WebSocket upgrade to `host` was answered `status`, not 101.
async fn upgrade_refused(addr: std::net::SocketAddr, host: &str, status: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let reply = read_response(&mut s).await.expect("the upgrade is answered");
    assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{reply}");
    s
}

#[tokio::test]
async fn a_smuggling_request_after_an_upgrade_answered_without_101_is_refused() {
    let (a, r, _p, addr) = proxy_refusing_upgrades().await;
    for (host, status) in [("nowhere", "404"), ("refuses", "502")] {
        let mut s = upgrade_refused(addr, host, status).await;
        // Content-Length and Transfer-Encoding: hyper alone would take the chunked body.
        s.write_all(
            b"POST /smuggled HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let (reply, _) = read_reply(&mut s, Duration::from_secs(5)).await;
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "after an upgrade answered {status}: {reply}"
        );
    }
    assert_eq!(a.hits(), 0, "a smuggling request reached the upstream");
    assert_eq!(r.hits(), 1, "the upgrade to `refuses` reached its upstream");
}

#[tokio::test]
async fn a_slow_head_after_an_upgrade_answered_without_101_is_cut_at_the_head_timeout() {
    let (a, _r, _p, addr) = proxy_refusing_upgrades().await;
    let s = upgrade_refused(addr, "nowhere", "404").await;
    let (after, reply) = trickle_head(s, Instant::now()).await;
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(1500),
        "closed {after:?} after the head's first byte; the head timeout is 300 ms, the idle 3 s"
    );
    assert_eq!(a.hits(), 0, "{reply}");
}

/// The frame types an HTTP/2 client (preface and SETTINGS sent, every SETTINGS and PING
/// acknowledged) reads on `s` until the proxy closes it (at most 5 s), and when it closed.
async fn h2_frames_until_closed(mut s: TcpStream) -> (Vec<u8>, Instant) {
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (mut frames, mut buf, mut chunk) = (Vec::new(), Vec::new(), [0u8; 4096]);
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await;
        let n = read.expect("closed within 5 s").unwrap_or(0);
        if n == 0 {
            return (frames, Instant::now());
        }
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..9 + len).collect();
            let (kind, ack) = (frame[3], frame[4] & 1 == 1);
            frames.push(kind);
            let answer = match (kind, ack) {
                (4, false) => b"\0\0\0\x04\x01\0\0\0\0".to_vec(),
                (6, false) => [&b"\0\0\x08\x06\x01\0\0\0\0"[..], &frame[9..]].concat(),
                _ => continue,
            };
            let _ = s.write_all(&answer).await;
        }
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_sent_goaway_before_it_is_closed() {
    let (_a, _p, addr) = proxy_with_limits(limits(1000)).await;
    let s = TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    let (frames, closed) = h2_frames_until_closed(s).await;
    // GOAWAY is frame type 7: a client racing a request against the close knows it was not taken.
    assert!(
        frames.contains(&7),
        "closed without GOAWAY; frame types read: {frames:?}"
    );
    let after = closed - opened;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(2500),
        "closed {after:?} after it opened; the idle timeout is 1 s"
    );
}
