//! Cancelled requests release their endpoint. A request cancelled while it
//! waits for its upstream — the client aborts, an HTTP/2 client resets the
//! stream, the route timeout fires — must not leave the endpoint's
//! active-request count raised: least-request balancing would starve that
//! endpoint until the proxy restarts.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Two endpoints under least request; requests with `x-short: 1` have a
/// 100 ms route timeout, the others none.
async fn least_request_proxy(a: &Upstream, b: &Upstream) -> (Proxy, SocketAddr) {
    let mut c = cluster("c", &[a, b]);
    c["loadBalancer"] = json!({"policy": "leastRequest"});
    let short = json!({
        "match": [{"headers": [{"name": "x-short", "match": {"exact": "1"}}]}],
        "action": {"forward": {"clusters": [{"cluster": "c"}], "timeoutMs": 100}},
        "provenance": provenance(),
    });
    let proxy = Proxy::start(outbound_config("1", vec![short, forward_route("c")], vec![c])).await;
    let addr = proxy.addr("outbound").await;
    (proxy, addr)
}

/// `activeRequests` of every endpoint, from `/config_dump`.
async fn active(proxy: &Proxy) -> Vec<u64> {
    let dump: Value = serde_json::from_str(&get(proxy.admin(), "admin", "/config_dump").await.body).unwrap();
    dump["clusterStatus"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["activeRequests"].as_u64().unwrap())
        .collect()
}

/// An HTTP/1.1 request the client abandons (closes the connection) before the answer.
async fn abort_h1(addr: SocketAddr) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /delay/5000 HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
}

/// An HTTP/2 request whose stream the client resets (RST_STREAM, CANCEL)
/// while the connection stays open.
async fn reset_h2(addr: SocketAddr) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("http://svc/delay/5000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // Dropping the response future resets the stream.
    let waited = tokio::time::timeout(Duration::from_millis(60), sender.send_request(req)).await;
    assert!(waited.is_err(), "the upstream answered a 5 s delay at once");
    tokio::time::sleep(Duration::from_millis(30)).await;
    conn.abort();
}

#[tokio::test]
async fn cancelled_requests_do_not_leak_active_requests() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (proxy, addr) = least_request_proxy(&a, &b).await;
    // An odd number of each kind, so a leak cannot happen to be even across
    // the two endpoints.
    for _ in 0..7 {
        abort_h1(addr).await;
        reset_h2(addr).await;
        let r = send(addr, "GET", "svc", "/delay/5000", &[("x-short", "1")]).await;
        assert_eq!(r.status, 504, "the route timeout answers: {}", r.body);
    }
    // The proxy sees the aborts asynchronously.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while active(&proxy).await != [0, 0] && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(active(&proxy).await, [0, 0], "idle endpoints have no active requests");

    // Least request spreads again: both endpoints take a fair share.
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..200 {
        assert_eq!(get(addr, "svc", "/").await.status, 200);
    }
    let (da, db) = (a.hits() - a0, b.hits() - b0);
    assert!(
        da >= 60 && db >= 60,
        "least request starves an endpoint: a {da}, b {db}"
    );
}

#[tokio::test]
async fn a_streaming_response_counts_as_active_until_it_ends() {
    // The count covers the whole exchange, not only the wait for the head:
    // a response still streaming is load on its endpoint.
    use tokio::io::AsyncReadExt;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        let Ok((mut s, _)) = upstream.accept().await else {
            return;
        };
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        // The head and a first chunk, then nothing: the response streams on.
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let c = json!({"name": "c", "endpoints": [{"address": "127.0.0.1", "port": port}]});
    let proxy = Proxy::start(outbound_config("1", vec![forward_route("c")], vec![c])).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr("outbound").await)
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(active(&proxy).await, [1], "the response is still streaming");
    // The client goes away in the middle of the response.
    drop(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while active(&proxy).await != [0] && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active(&proxy).await, [0]);
}
