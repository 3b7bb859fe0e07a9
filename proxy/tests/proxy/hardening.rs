//! The smuggling and limits suite: raw malformed requests, each rejected.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn status_of(reply: &str) -> Option<u16> {
    reply.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

const T: Duration = Duration::from_secs(3);

#[tokio::test]
async fn content_length_with_transfer_encoding_is_rejected() {
    let (a, _p, addr) = proxy_with_limits(json!({})).await;
    let reply = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n",
        T,
    )
    .await;
    assert_eq!(status_of(&reply), Some(400), "{reply}");
    assert!(a.seen.lock().unwrap().iter().all(|s| s.path != "/smuggled"));
}

#[tokio::test]
async fn bare_lf_heads_are_rejected() {
    let (a, _p, addr) = proxy_with_limits(json!({})).await;
    let reply = raw(addr, b"GET / HTTP/1.1\nHost: svc\n\n", T).await;
    assert_eq!(status_of(&reply), Some(400), "{reply}");
    // A clean first request, then a bare-LF one on the same connection.
    let reply = raw(
        addr,
        b"GET /ok HTTP/1.1\r\nHost: svc\r\n\r\nGET /bad HTTP/1.1\r\nHost: svc\nX: y\r\n\r\n",
        T,
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(a.seen.lock().unwrap().iter().all(|s| s.path != "/bad"));
}

#[tokio::test]
async fn smuggling_after_a_chunked_body_is_caught() {
    let (a, _p, addr) = proxy_with_limits(json!({})).await;
    let _ = raw(
        addr,
        b"POST /first HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /second HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.hits() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let paths: Vec<String> = a.seen.lock().unwrap().iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, vec!["/first".to_string()]);
}

#[tokio::test]
async fn missing_and_duplicate_host_are_rejected() {
    let (a, _p, addr) = proxy_with_limits(json!({})).await;
    let reply = raw(addr, b"GET / HTTP/1.1\r\n\r\n", T).await;
    assert_eq!(status_of(&reply), Some(400), "{reply}");
    let reply = raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", T).await;
    assert_eq!(status_of(&reply), Some(400), "{reply}");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn invalid_chunk_framing_is_rejected() {
    let (a, _p, addr) = proxy_with_limits(json!({})).await;
    let reply = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        T,
    )
    .await;
    // Either a 400 before forwarding, or the upstream never sees a complete body.
    assert!(status_of(&reply) != Some(200), "{reply}");
    assert!(
        a.seen.lock().unwrap().iter().all(|s| s.path != "/"),
        "upstream must not get the request"
    );
}

#[tokio::test]
async fn too_many_headers_and_too_large_headers() {
    let (a, _p, addr) = proxy_with_limits(json!({"maxRequestHeaders": 10, "maxRequestHeaderBytes": 8192})).await;
    let mut req = String::from("GET / HTTP/1.1\r\nHost: svc\r\n");
    for i in 0..20 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let reply = raw(addr, req.as_bytes(), T).await;
    assert!(matches!(status_of(&reply), Some(431) | Some(400)), "{reply}");
    let big = format!("GET / HTTP/1.1\r\nHost: svc\r\nx-big: {}\r\n\r\n", "a".repeat(20_000));
    let reply = raw(addr, big.as_bytes(), T).await;
    assert!(
        matches!(status_of(&reply), Some(431) | Some(400)) || reply.is_empty(),
        "{reply}"
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn long_uri_gets_414() {
    let (a, _p, addr) = proxy_with_limits(json!({"maxUriBytes": 100})).await;
    let req = format!("GET /{} HTTP/1.1\r\nHost: svc\r\n\r\n", "a".repeat(200));
    let reply = raw(addr, req.as_bytes(), T).await;
    assert_eq!(status_of(&reply), Some(414), "{reply}");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let (_a, _p, addr) = proxy_with_limits(json!({"headerReadTimeoutMs": 300})).await;
    let start = Instant::now();
    // Never finish the head: the proxy must close the connection itself.
    let reply = raw(addr, b"GET / HTTP/1.1\r\nHost: svc\r\nX-Slow: ", Duration::from_secs(5)).await;
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert!(!reply.contains("200"), "{reply}");
}

#[tokio::test]
async fn body_limit_gives_413() {
    let (a, _p, addr) = proxy_with_limits(json!({"maxRequestBodyBytes": 10})).await;
    let r = send_body(addr, "POST", "svc", "/", &[], bytes::Bytes::from(vec![b'x'; 100])).await;
    assert_eq!(r.status, 413);
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn connect_method_and_encoded_slash_are_refused() {
    let (a, _p, addr) = proxy_with_limits(json!({})).await;
    // A CONNECT target must be host:port (routed tunnels: tests/proxy/connect.rs).
    let reply = raw(addr, b"CONNECT evil HTTP/1.1\r\nHost: evil\r\n\r\n", T).await;
    assert_eq!(status_of(&reply), Some(400), "{reply}");
    let reply = raw(addr, b"GET /a%2fb HTTP/1.1\r\nHost: svc\r\n\r\n", T).await;
    assert_eq!(status_of(&reply), Some(400), "{reply}");
    let reply = raw(addr, b"GET /a%zz HTTP/1.1\r\nHost: svc\r\n\r\n", T).await;
    assert_eq!(status_of(&reply), Some(400), "{reply}");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn connection_limit_closes_extra_connections() {
    let (_a, _p, addr) = proxy_with_limits(json!({"maxConnections": 1})).await;
    let _held = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reply = raw(addr, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", T).await;
    assert_eq!(reply, "", "second connection is closed without a response");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_a, _p, addr) = proxy_with_limits(json!({"idleTimeoutMs": 200})).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Now stay silent: the proxy closes the connection after the idle timeout.
    let start = Instant::now();
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("closed before the test timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed");
    assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
}
