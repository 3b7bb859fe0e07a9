//! Default stream and connection idle timeouts: with no route timeout, an
//! HTTP stream on which no bytes move is cut after `streamIdleTimeoutMs`, and
//! an opaque TCP connection after `tcpIdleTimeoutMs`; streams with activity
//! live on.

use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw HTTP/1.1 upstream: reads a request head, then writes `parts` with
/// `gap` between them and keeps the connection open (never closes it).
async fn scripted_upstream(parts: Vec<&'static [u8]>, gap: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let parts = parts.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                for p in parts {
                    if s.write_all(p).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
                // Stall: hold the connection open without a byte.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

fn config(upstream: SocketAddr, limits: Value) -> Value {
    json!({
        "version": "1",
        "listeners": [{
            "name": "l", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "http",
            "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [forward_route("up")]}],
            "limits": limits,
        }],
        "clusters": [{"name": "up", "endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]}],
    })
}

/// Read until the peer closes or `within` passes; returns the bytes and
/// whether the peer closed.
async fn read_to_close(s: &mut tokio::net::TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn upstream_that_never_answers_gets_504_after_the_stream_idle_timeout() {
    let up = scripted_upstream(vec![], Duration::ZERO).await;
    let proxy = Proxy::start(config(up, json!({"streamIdleTimeoutMs": 300}))).await;
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(5), get(proxy.addr("l").await, "svc", "/"))
        .await
        .expect("the proxy answers instead of hanging");
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert_eq!(reply.body, "stream idle timeout\n");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"SI\"")),
        "{m}"
    );
}

#[tokio::test]
async fn stalled_response_body_is_cut_after_the_stream_idle_timeout() {
    let up = scripted_upstream(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", b"first ten!"],
        Duration::from_millis(10),
    )
    .await;
    let proxy = Proxy::start(config(up, json!({"streamIdleTimeoutMs": 300}))).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr("l").await).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n").await.unwrap();
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(4)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("first ten!"), "{got}");
    assert!(closed, "the stalled response must be cut, not left hanging: {got}");
}

#[tokio::test]
async fn a_slow_but_active_stream_outlives_the_idle_timeout() {
    // Eight chunks 100 ms apart: 800 ms in all, never 300 ms without a byte.
    let chunk: &'static [u8] = b"5\r\nchunk\r\n";
    let mut parts: Vec<&'static [u8]> = vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"];
    parts.extend(std::iter::repeat_n(chunk, 8));
    parts.push(b"0\r\n\r\n");
    let up = scripted_upstream(parts, Duration::from_millis(100)).await;
    let proxy = Proxy::start(config(up, json!({"streamIdleTimeoutMs": 300}))).await;
    let reply = tokio::time::timeout(Duration::from_secs(5), get(proxy.addr("l").await, "svc", "/"))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "chunk".repeat(8));
}

#[tokio::test]
async fn idle_opaque_tcp_connection_is_closed_and_an_active_one_kept() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let cfg = json!({
        "version": "1",
        "listeners": [{
            "name": "l", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "tcp",
            "tcpRoutes": [{"cluster": "echo"}],
            "limits": {"tcpIdleTimeoutMs": 300},
        }],
        "clusters": [{"name": "echo", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": echo.port()}]}],
    });
    let proxy = Proxy::start(cfg).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr("l").await).await.unwrap();
    // Active for 800 ms: a round trip every 100 ms keeps the connection open.
    for i in 0..8u8 {
        s.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
            .await
            .expect("echo while active")
            .expect("connection open while active");
        assert_eq!(b[0], i);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then silence: the proxy closes it.
    let started = Instant::now();
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(4)).await;
    assert!(closed && got.is_empty(), "idle TCP connection must be closed");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn defaults_match_envoy() {
    let l = trellis_contract::HttpLimits::default();
    assert_eq!(l.stream_idle_timeout_ms, 300_000, "Envoy's stream_idle_timeout");
    assert_eq!(l.tcp_idle_timeout_ms, 3_600_000, "Envoy's TCP proxy idle_timeout");
}

#[tokio::test]
async fn the_timeouts_in_force_by_default_are_istios() {
    // What holds a request when nobody configured a timeout (proxy/README.md, "What holds a
    // request, and for how long"): no route timeout (Istio has none by default for HTTP),
    // the 5 min stream idle timeout, the 10 s connect timeout of Istio's MeshConfig, the 10 s
    // header read timeout.
    let up = scripted_upstream(vec![], Duration::ZERO).await;
    let proxy = Proxy::start(config(up, json!({}))).await;
    let dump: Value = serde_json::from_str(&get(proxy.admin(), "admin", "/config_dump").await.body).unwrap();
    let cfg = &dump["config"];
    assert_eq!(cfg["clusters"][0]["connectTimeoutMs"], 10_000);
    assert_eq!(cfg["listeners"][0]["limits"]["streamIdleTimeoutMs"], 300_000);
    assert_eq!(cfg["listeners"][0]["limits"]["headerReadTimeoutMs"], 10_000);
    assert_eq!(cfg["listeners"][0]["limits"]["idleTimeoutMs"], 300_000);
    let forward = &cfg["listeners"][0]["virtualHosts"][0]["routes"][0]["action"]["forward"];
    assert!(forward.is_object(), "{forward}");
    assert!(forward["timeoutMs"].is_null(), "no route timeout by default: {forward}");
}

#[tokio::test]
async fn a_stopped_upstream_is_bounded_by_the_route_timeout_and_ejected() {
    // A stopped process (SIGSTOP, or hung in accept): the kernel completes the handshakes
    // into the backlog and takes the request bytes, and nothing ever answers. A listening
    // socket nobody accepts on is exactly that.
    let stopped = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let good = Upstream::start("good").await;
    let mut cfg = config(stopped.local_addr().unwrap(), json!({}));
    cfg["clusters"][0]["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(good.endpoint());
    cfg["clusters"][0]["outlierDetection"] = json!({
        "consecutiveGatewayErrors": 2, "baseEjectionTimeMs": 60000, "maxEjectionPercent": 50.0,
    });
    cfg["listeners"][0]["virtualHosts"][0]["routes"][0]["action"]["forward"] = json!({
        "clusters": [{"cluster": "up"}],
        "timeoutMs": 2000,
        "retries": {"attempts": 2, "perTryTimeoutMs": 150, "retryOn": ["gateway-error"], "backoffBaseMs": 1},
    });
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("l").await;
    for _ in 0..6 {
        let t = Instant::now();
        let r = get(addr, "svc", "/").await;
        assert_eq!((r.status.as_u16(), r.server()), (200, "good"), "{}", r.body);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    // Per-try timeouts count as gateway errors: the stopped endpoint is out.
    let dump: Value = serde_json::from_str(&get(proxy.admin(), "admin", "/config_dump").await.body).unwrap();
    assert_eq!(dump["clusterStatus"][0]["endpoints"][0]["ejected"], true, "{dump}");
    assert_eq!(dump["clusterStatus"][0]["endpoints"][1]["ejected"], false);
    let t = Instant::now();
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "no more waiting: {:?}",
        t.elapsed()
    );
    drop(stopped);
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_503_with_flags() {
    // Not HTTP at all: 502 (upstream protocol error).
    let garbage = scripted_upstream(vec![b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], Duration::ZERO).await;
    let proxy = Proxy::start(config(garbage, json!({}))).await;
    let r = get(proxy.addr("l").await, "svc", "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.starts_with("upstream protocol error"), "{}", r.body);
    // Closed before a response: 503 (reset).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
        }
    });
    let proxy2 = Proxy::start(config(closing, json!({}))).await;
    let r = get(proxy2.addr("l").await, "svc", "/").await;
    assert_eq!(r.status, 503, "{}", r.body);
    // Nothing listening: 503 (connect failure). The port stays bound (not listening, so a
    // connection is refused): a port freed at once could be taken by another listener, even
    // this proxy's own (CI saw the request hang here until the client's 10 s timeout).
    drop(proxy2);
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = reserved.local_addr().unwrap();
    let proxy3 = Proxy::start(config(dead, json!({}))).await;
    let r = get(proxy3.addr("l").await, "svc", "/").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(m.contains("response_flags=\"UPE\""), "{m}");
    let m = get(proxy3.admin(), "admin", "/metrics").await.body;
    assert!(m.contains("response_flags=\"UF\""), "{m}");
}

#[tokio::test]
async fn a_slow_but_active_upload_outlives_the_idle_timeout() {
    // The upstream answers after reading the whole body; the client sends it
    // in eight chunks 100 ms apart (800 ms, never 300 ms idle).
    let app = Upstream::start("app").await;
    let mut cfg = config(app.addr, json!({"streamIdleTimeoutMs": 300}));
    cfg["clusters"][0]["endpoints"] = json!([app.endpoint()]);
    let proxy = Proxy::start(cfg).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr("l").await).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"1\r\nx\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("app /upload xxxxxxxx"), "{reply}");
}

#[tokio::test]
async fn a_request_queued_for_a_connection_is_bounded_by_its_route_timeout() {
    // One request slot, held by a slow request without a timeout; the queued request has a
    // 200 ms route timeout, and the wait in the queue is part of it.
    let app = Upstream::start("app").await;
    let short = json!({
        "match": [{"headers": [{"name": "x-short", "match": {"exact": "1"}}]}],
        "action": {"forward": {"clusters": [{"cluster": "up"}], "timeoutMs": 200}},
        "provenance": provenance(),
    });
    let mut cfg = config(app.addr, json!({}));
    cfg["listeners"][0]["virtualHosts"][0]["routes"] = json!([short, forward_route("up")]);
    cfg["clusters"][0]["endpoints"] = json!([app.endpoint()]);
    cfg["clusters"][0]["connectionPool"] = json!({"maxConnections": 1, "maxPendingRequests": 10});
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("l").await;
    let holder = tokio::spawn(async move { get(addr, "svc", "/delay/1500").await.status.as_u16() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = send(addr, "GET", "svc", "/", &[("x-short", "1")]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "queued past its route timeout: {:?}",
        t.elapsed()
    );
    assert_eq!(holder.await.unwrap(), 200);
}
