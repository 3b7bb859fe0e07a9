//! Retries, timeouts, fault injection, mirroring, outlier ejection and
//! circuit breaking through a real proxy.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn route_with(forward: serde_json::Value) -> serde_json::Value {
    json!({"action": {"forward": forward}, "provenance": provenance()})
}

#[tokio::test]
async fn retries_hide_a_failing_endpoint() {
    let bad = Upstream::failing("bad", 503).await;
    let good = Upstream::start("good").await;
    let route = route_with(json!({
        "clusters": [{"cluster": "c"}],
        "retries": {"attempts": 2, "retryOn": ["5xx"], "backoffBaseMs": 1},
    }));
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("c", &[&bad, &good])])).await;
    let addr = proxy.addr("outbound").await;
    for _ in 0..20 {
        let r = get(addr, "svc", "/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.server(), "good");
    }
    assert!(bad.hits() > 0, "round robin must have tried the bad endpoint");
}

#[tokio::test]
async fn without_retries_failures_surface() {
    let bad = Upstream::failing("bad", 503).await;
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![forward_route("c")],
        vec![cluster("c", &[&bad])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    assert_eq!(get(addr, "svc", "/").await.status, 503);
    assert_eq!(bad.hits(), 1);
}

#[tokio::test]
async fn retry_attempts_are_bounded_and_post_bodies_replayed() {
    let bad = Upstream::failing("bad", 502).await;
    let route = route_with(json!({
        "clusters": [{"cluster": "c"}],
        "retries": {"attempts": 3, "retryOn": ["gateway-error"], "backoffBaseMs": 1},
    }));
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("c", &[&bad])])).await;
    let addr = proxy.addr("outbound").await;
    let r = send_body(addr, "POST", "svc", "/", &[], bytes::Bytes::from_static(b"payload")).await;
    assert_eq!(r.status, 502);
    assert_eq!(bad.hits(), 4, "1 try + 3 retries");
    assert_eq!(bad.last_seen().path, "/");
    assert!(r.body.ends_with("payload"), "body replayed on the last try: {}", r.body);
}

#[tokio::test]
async fn connect_failure_is_retried_to_another_endpoint() {
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let good = Upstream::start("good").await;
    let mut c = cluster("c", &[&good]);
    c["endpoints"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"address": "127.0.0.1", "port": dead_port}));
    let route = route_with(json!({
        "clusters": [{"cluster": "c"}],
        "retries": {"attempts": 1, "retryOn": ["connect-failure"], "backoffBaseMs": 1},
    }));
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![c])).await;
    let addr = proxy.addr("outbound").await;
    for _ in 0..6 {
        assert_eq!(get(addr, "svc", "/").await.status, 200);
    }
    // And without retries a dead endpoint maps to 503 with a reason.
    let c2 = json!({"name": "dead", "endpoints": [{"address": "127.0.0.1", "port": dead_port}]});
    proxy
        .apply(outbound_config("2", vec![forward_route("dead")], vec![c2]))
        .await
        .unwrap();
    let r = get(addr, "svc", "/").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("connect"), "{}", r.body);
}

#[tokio::test]
async fn route_timeout_returns_504_promptly() {
    let slow = Upstream::start("slow").await;
    let route = route_with(json!({"clusters": [{"cluster": "c"}], "timeoutMs": 150}));
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("c", &[&slow])])).await;
    let addr = proxy.addr("outbound").await;
    let t = Instant::now();
    let r = get(addr, "svc", "/delay/2000").await;
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    // Not before the 150 ms the route allows (an instant 504 fails), and long before a
    // 1 s or 2 s timeout would fire (loopback adds milliseconds; the rest is slack for load).
    assert!(
        took >= Duration::from_millis(150),
        "504 after {took:?}, before the timeout"
    );
    assert!(
        took < Duration::from_millis(1000),
        "504 after {took:?}; the timeout is 150 ms"
    );
    assert_eq!(get(addr, "svc", "/delay/10").await.status, 200);
}

#[tokio::test]
async fn per_try_timeout_retries_then_succeeds_elsewhere() {
    let slow = Upstream::start("slow").await;
    let route = route_with(json!({
        "clusters": [{"cluster": "c"}],
        "timeoutMs": 3000,
        "retries": {"attempts": 2, "perTryTimeoutMs": 100, "retryOn": ["gateway-error"], "backoffBaseMs": 1},
    }));
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("c", &[&slow])])).await;
    let addr = proxy.addr("outbound").await;
    let t = Instant::now();
    let r = get(addr, "svc", "/delay/1000").await;
    assert_eq!(r.status, 504);
    let took = t.elapsed();
    assert_eq!(slow.hits(), 3, "each try timed out and was retried");
    // Three tries of 100 ms each, not the route's 3 s nor the upstream's 1 s.
    assert!(
        took >= Duration::from_millis(300),
        "504 after {took:?}, before three 100 ms tries"
    );
    assert!(took < Duration::from_millis(900), "504 after {took:?}");
}

#[tokio::test]
async fn fault_abort_and_delay() {
    let a = Upstream::start("a").await;
    let routes = vec![
        json!({"match": [{"uri": {"prefix": "/abort"}}], "action": {"forward": {"clusters": [{"cluster": "a"}]}},
               "fault": {"abort": {"httpStatus": 418, "percentage": 100.0}}, "provenance": provenance()}),
        json!({"match": [{"uri": {"prefix": "/half"}}], "action": {"forward": {"clusters": [{"cluster": "a"}]}},
               "fault": {"abort": {"httpStatus": 500, "percentage": 50.0}}, "provenance": provenance()}),
        json!({"match": [{"uri": {"prefix": "/delay"}}], "action": {"forward": {"clusters": [{"cluster": "a"}]}},
               "fault": {"delay": {"fixedDelayMs": 200, "percentage": 100.0}}, "provenance": provenance()}),
    ];
    let proxy = Proxy::start(outbound_config("1", routes, vec![cluster("a", &[&a])])).await;
    let addr = proxy.addr("outbound").await;
    let r = get(addr, "svc", "/abort").await;
    assert_eq!(r.status, 418);
    assert_eq!(a.hits(), 0);
    let mut aborted = 0;
    for _ in 0..200 {
        if get(addr, "svc", "/half").await.status == 500 {
            aborted += 1;
        }
    }
    assert!((60..=140).contains(&aborted), "{aborted}");
    let t = Instant::now();
    assert_eq!(get(addr, "svc", "/delay").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn mirror_receives_copies_with_shadow_host() {
    let main = Upstream::start("main").await;
    let shadow = Upstream::start("shadow").await;
    let route = route_with(json!({
        "clusters": [{"cluster": "main"}],
        "mirrors": [{"cluster": "shadow", "percentage": 100.0}],
    }));
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![route],
        vec![cluster("main", &[&main]), cluster("shadow", &[&shadow])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    for _ in 0..5 {
        let r = get(addr, "payment:8080", "/m").await;
        assert_eq!(r.server(), "main");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while shadow.hits() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shadow.hits(), 5);
    assert_eq!(shadow.last_seen().authority, "payment-shadow:8080");
}

#[tokio::test]
async fn outlier_detection_ejects_failing_endpoint() {
    let bad = Upstream::failing("bad", 500).await;
    let good = Upstream::start("good").await;
    let mut c = cluster("c", &[&bad, &good]);
    c["outlierDetection"] = json!({"consecutive5xx": 2, "baseEjectionTimeMs": 60000, "maxEjectionPercent": 50.0});
    let proxy = Proxy::start(outbound_config("1", vec![forward_route("c")], vec![c])).await;
    let addr = proxy.addr("outbound").await;
    for _ in 0..10 {
        get(addr, "svc", "/").await;
    }
    let bad_before = bad.hits();
    assert_eq!(bad_before, 2, "ejected after two consecutive 5xx");
    for _ in 0..20 {
        assert_eq!(get(addr, "svc", "/").await.status, 200);
    }
    assert_eq!(bad.hits(), bad_before);
    let dump = admin_get(proxy.admin(), "/config_dump").await;
    assert!(dump.contains("\"ejected\": true"), "{dump}");
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    get(addr, "admin", path).await.body
}

#[tokio::test]
async fn overflow_is_rejected_with_503() {
    let slow = Upstream::start("slow").await;
    let mut c = cluster("c", &[&slow]);
    c["connectionPool"] = json!({"maxConnections": 1, "maxPendingRequests": 1});
    let proxy = Proxy::start(outbound_config("1", vec![forward_route("c")], vec![c])).await;
    let addr = proxy.addr("outbound").await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            get(addr, "svc", "/delay/300").await.status.as_u16()
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes.sort_unstable();
    assert_eq!(codes, vec![200, 200, 503, 503], "one active, one pending, two overflow");
}

#[tokio::test]
async fn retriable_status_codes_and_4xx() {
    let teapot = Upstream::failing("teapot", 429).await;
    let good = Upstream::start("good").await;
    let route = route_with(json!({
        "clusters": [{"cluster": "c"}],
        "retries": {"attempts": 1, "retryOn": ["retriable-status-codes"], "retriableStatusCodes": [429], "backoffBaseMs": 1},
    }));
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("c", &[&teapot, &good])])).await;
    let addr = proxy.addr("outbound").await;
    for _ in 0..10 {
        assert_eq!(get(addr, "svc", "/").await.status, 200);
    }
    // 409 with retriable-4xx; other 4xx are not retried.
    let conflict = Upstream::failing("conflict", 409).await;
    let route = route_with(json!({
        "clusters": [{"cluster": "c"}],
        "retries": {"attempts": 2, "retryOn": ["retriable-4xx"], "backoffBaseMs": 1},
    }));
    proxy
        .apply(outbound_config("2", vec![route], vec![cluster("c", &[&conflict])]))
        .await
        .unwrap();
    assert_eq!(get(addr, "svc", "/").await.status, 409);
    assert_eq!(conflict.hits(), 3);
    assert_eq!(get(addr, "svc", "/status/404").await.status, 404);
    assert_eq!(conflict.hits(), 4, "404 is not retriable");
}

#[tokio::test]
async fn mirror_percentage_is_honoured() {
    let main = Upstream::start("main").await;
    let shadow = Upstream::start("shadow").await;
    let route = route_with(json!({
        "clusters": [{"cluster": "main"}],
        "mirrors": [{"cluster": "shadow", "percentage": 25.0}],
    }));
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![route],
        vec![cluster("main", &[&main]), cluster("shadow", &[&shadow])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    for _ in 0..200 {
        get(addr, "svc", "/").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = shadow.hits();
    assert!((25..=80).contains(&n), "{n}");
}

#[tokio::test]
async fn retry_budget_caps_concurrent_retries() {
    // Every try fails slowly; with a tiny budget most requests get no retry.
    let bad = Upstream::failing("bad", 503).await;
    let route = route_with(json!({
        "clusters": [{"cluster": "c"}],
        "retries": {"attempts": 5, "retryOn": ["5xx"], "backoffBaseMs": 50, "budgetPercent": 1.0},
    }));
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("c", &[&bad])])).await;
    let addr = proxy.addr("outbound").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            get(addr, "svc", "/delay/50").await.status.as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    // Without a budget: 20 x 6 tries. The budget allows at most 3 retries in flight.
    let tries = bad.hits();
    assert!(tries < 20 * 6, "{tries}");
    assert!(tries >= 20, "{tries}");
}
