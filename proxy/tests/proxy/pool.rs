//! Upstream connection pools and endpoint health: connections are reused,
//! retired after `maxRequestsPerConnection` and after `idleTimeoutMs`;
//! unhealthy endpoints get no traffic unless the panic threshold is crossed,
//! draining ones never.

use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A keep-alive HTTP/1.1 upstream that counts the connections it accepts.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&conns);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

fn pooled(addr: SocketAddr, pool: Value) -> Value {
    outbound_config(
        "1",
        vec![forward_route("up")],
        vec![
            json!({"name": "up", "connectionPool": pool, "endpoints": [{"address": "127.0.0.1", "port": addr.port()}]}),
        ],
    )
}

#[tokio::test]
async fn connections_are_reused_and_retired_after_max_requests() {
    let (addr, conns) = counting_upstream().await;
    let proxy = Proxy::start(pooled(addr, json!({"maxRequestsPerConnection": 2}))).await;
    let l = proxy.addr("outbound").await;
    for _ in 0..6 {
        assert_eq!(get(l, "svc", "/").await.status, 200);
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3, "two requests per upstream connection");

    let (addr, conns) = counting_upstream().await;
    let proxy = Proxy::start(pooled(addr, json!({}))).await;
    let l = proxy.addr("outbound").await;
    for _ in 0..6 {
        assert_eq!(get(l, "svc", "/").await.status, 200);
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "sequential requests share one pooled connection"
    );
}

#[tokio::test]
async fn idle_upstream_connections_are_not_reused_after_the_idle_timeout() {
    let (addr, conns) = counting_upstream().await;
    let proxy = Proxy::start(pooled(addr, json!({"idleTimeoutMs": 100}))).await;
    let l = proxy.addr("outbound").await;
    assert_eq!(get(l, "svc", "/").await.status, 200);
    assert_eq!(get(l, "svc", "/").await.status, 200);
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(l, "svc", "/").await.status, 200);
    assert_eq!(conns.load(Ordering::SeqCst), 2, "the idle connection was retired");
}

fn with_health(a: &Upstream, b: &Upstream, health: [&str; 2], panic: f64) -> Value {
    let mut ea = a.endpoint();
    ea["health"] = json!(health[0]);
    let mut eb = b.endpoint();
    eb["health"] = json!(health[1]);
    outbound_config(
        "1",
        vec![forward_route("svc")],
        vec![json!({"name": "svc", "panicThresholdPercent": panic, "endpoints": [ea, eb]})],
    )
}

#[tokio::test]
async fn endpoint_health_and_panic_threshold() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    // One unhealthy of two (50 % healthy, threshold 50 %): no panic, only `a`.
    let proxy = Proxy::start(with_health(&a, &b, ["healthy", "unhealthy"], 50.0)).await;
    let l = proxy.addr("outbound").await;
    let mut replies = Vec::new();
    for _ in 0..20 {
        replies.push(get(l, "svc", "/").await);
    }
    assert_eq!(tally(&replies).get("a"), Some(&20), "{:?}", tally(&replies));

    // Both unhealthy, panic threshold 50 %: balance over all of them.
    proxy
        .apply(with_health(&a, &b, ["unhealthy", "unhealthy"], 50.0))
        .await
        .unwrap();
    let mut replies = Vec::new();
    for _ in 0..20 {
        replies.push(get(l, "svc", "/").await);
    }
    let t = tally(&replies);
    assert!(
        t.get("a").is_some_and(|n| *n > 0) && t.get("b").is_some_and(|n| *n > 0),
        "{t:?}"
    );

    // Panic mode still never picks a draining endpoint.
    proxy
        .apply(with_health(&a, &b, ["unhealthy", "draining"], 50.0))
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(get(l, "svc", "/").await.server(), "a");
    }

    // Panic disabled: no healthy endpoint is a 503 with flag UH.
    proxy
        .apply(with_health(&a, &b, ["unhealthy", "unhealthy"], 0.0))
        .await
        .unwrap();
    let r = get(l, "svc", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "no healthy upstream\n");
}
