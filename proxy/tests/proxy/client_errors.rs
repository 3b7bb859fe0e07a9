//! Client-side errors are the client's: a malformed chunked request body, a
//! chunked body over `maxRequestBodyBytes` and a client that hangs up in the
//! middle of its upload get 400 / 413 (or nothing, when the client is gone),
//! and none of them counts against the endpoint's health. Before, each was a
//! 503 "upstream reset" and an outlier-detection failure: a few requests from
//! any client ejected a healthy endpoint for everyone.

use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// One endpoint behind outlier detection that ejects after two failures, and
/// no panic threshold: an ejected endpoint means "no healthy upstream".
async fn guarded_proxy(upstream: &Upstream) -> (Proxy, SocketAddr) {
    let mut c = cluster("c", &[upstream]);
    c["outlierDetection"] = json!({
        "consecutive5xx": 2, "consecutiveGatewayErrors": 2,
        "baseEjectionTimeMs": 60000, "maxEjectionPercent": 100.0,
    });
    c["panicThresholdPercent"] = json!(0.0);
    let mut cfg = outbound_config("1", vec![forward_route("c")], vec![c]);
    cfg["listeners"][0]["limits"] = json!({"maxRequestBodyBytes": 1024});
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("outbound").await;
    (proxy, addr)
}

fn status_of(reply: &str) -> Option<u16> {
    reply.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The endpoint's state in `/config_dump`.
async fn endpoint_state(proxy: &Proxy) -> Value {
    let dump: Value = serde_json::from_str(&get(proxy.admin(), "admin", "/config_dump").await.body).unwrap();
    dump["clusterStatus"][0]["endpoints"][0].clone()
}

/// The endpoint is in service: not ejected, never was, and it answers.
async fn assert_endpoint_untouched(proxy: &Proxy, addr: SocketAddr) {
    assert_eq!(endpoint_state(proxy).await["ejected"], false);
    let metrics = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(
        metrics.contains("\ntrellis_proxy_outlier_ejections_total 0\n"),
        "{metrics}"
    );
    let ok = get(addr, "svc", "/").await;
    assert_eq!((ok.status.as_u16(), ok.server()), (200, "up"), "{}", ok.body);
}

const T: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_malformed_chunked_body_is_a_400_and_not_an_upstream_failure() {
    let up = Upstream::start("up").await;
    let (proxy, addr) = guarded_proxy(&up).await;
    for _ in 0..6 {
        // A valid first chunk (so the request is on its way upstream), then garbage.
        let reply = raw(
            addr,
            b"POST /upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
            T,
        )
        .await;
        assert_eq!(status_of(&reply), Some(400), "{reply}");
    }
    assert_endpoint_untouched(&proxy, addr).await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_a_413_and_not_an_upstream_failure() {
    let up = Upstream::start("up").await;
    let (proxy, addr) = guarded_proxy(&up).await;
    // Content-Length over the limit is refused from the head; a chunked body
    // only shows its size as it streams.
    let mut body = Vec::new();
    for _ in 0..4 {
        body.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "x".repeat(600)).as_bytes());
    }
    body.extend_from_slice(b"0\r\n\r\n");
    for _ in 0..6 {
        let mut req = b"POST /upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(&body);
        let reply = raw(addr, &req, T).await;
        assert_eq!(status_of(&reply), Some(413), "{reply}");
    }
    assert_endpoint_untouched(&proxy, addr).await;
}

#[tokio::test]
async fn a_client_hanging_up_mid_upload_is_not_an_upstream_failure() {
    let up = Upstream::start("up").await;
    let (proxy, addr) = guarded_proxy(&up).await;
    let heads: [&[u8]; 2] = [
        b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 500\r\n\r\n0123456789",
        b"POST /upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    ];
    for _ in 0..4 {
        for head in heads {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head).await.unwrap();
            // Let the request reach the upstream, then go away.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
        }
    }
    // The proxy notices the hang-ups asynchronously.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_endpoint_untouched(&proxy, addr).await;
}

#[tokio::test]
async fn upstream_failures_still_eject() {
    // The other side of the same coin: the upstream's own failures do count.
    let up = Upstream::failing("up", 503).await;
    let (proxy, addr) = guarded_proxy(&up).await;
    for _ in 0..2 {
        assert_eq!(get(addr, "svc", "/").await.status, 503);
    }
    assert_eq!(endpoint_state(&proxy).await["ejected"], true);
    let r = get(addr, "svc", "/").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("no healthy upstream"), "{}", r.body);
}
