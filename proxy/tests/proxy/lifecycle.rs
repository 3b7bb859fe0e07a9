//! Configuration swaps (atomic, NACK keeps the last good one, under load)
//! and drain.

use crate::support::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::test]
async fn invalid_config_is_rejected_and_last_good_keeps_serving() {
    let a = Upstream::start("a").await;
    let proxy = Proxy::start(outbound_config(
        "good",
        vec![forward_route("a")],
        vec![cluster("a", &[&a])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    let bad = outbound_config("bad", vec![forward_route("missing")], vec![cluster("a", &[&a])]);
    let err = proxy.apply(bad).await.unwrap_err().to_string();
    assert!(err.contains("unknown cluster \"missing\""), "{err}");
    assert!(
        err.contains("listeners[0].virtualHosts[0].routes[0].action.forward.clusters[0].cluster"),
        "{err}"
    );
    assert_eq!(get(addr, "svc", "/").await.server(), "a");
    let dump: serde_json::Value =
        serde_json::from_str(&get(proxy.admin(), "admin", "/config_dump").await.body).unwrap();
    assert_eq!(dump["version"], "good");
    assert_eq!(dump["lastRejected"]["version"], "bad");
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(m.contains("trellis_proxy_config_rejected_total 1"), "{m}");

    // A later config that applies clears the record: `lastRejected` describes the present.
    proxy
        .apply(outbound_config(
            "good-2",
            vec![forward_route("a")],
            vec![cluster("a", &[&a])],
        ))
        .await
        .unwrap();
    let dump: serde_json::Value =
        serde_json::from_str(&get(proxy.admin(), "admin", "/config_dump").await.body).unwrap();
    assert_eq!(dump["version"], "good-2");
    assert_eq!(dump["lastRejected"], serde_json::Value::Null);
}

#[tokio::test]
async fn unloadable_certificate_is_rejected() {
    let a = Upstream::start("a").await;
    let proxy = Proxy::start(outbound_config(
        "good",
        vec![forward_route("a")],
        vec![cluster("a", &[&a])],
    ))
    .await;
    let mut bad = outbound_config("bad-cert", vec![forward_route("a")], vec![cluster("a", &[&a])]);
    bad["identity"] = json!({
        "spiffeId": "spiffe://cluster.local/ns/test/sa/client",
        "certificate": {"files": {"certChainFile": "/nonexistent/cert.pem", "privateKeyFile": "/nonexistent/key.pem"}},
        "trustBundle": {"file": "/nonexistent/root.pem"},
    });
    let err = proxy.apply(bad).await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    assert_eq!(get(proxy.addr("outbound").await, "svc", "/").await.status, 200);
}

#[tokio::test]
async fn swap_changes_routing_without_failing_requests_under_load() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let clusters = || vec![cluster("a", &[&a]), cluster("b", &[&b])];
    let proxy = Arc::new(Proxy::start(outbound_config("0", vec![forward_route("a")], clusters())).await);
    let addr = proxy.addr("outbound").await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failures, total) = (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&total));
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = get(addr, "svc", "/delay/5").await;
                total.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for i in 1..=20 {
        let target = if i % 2 == 0 { "a" } else { "b" };
        proxy
            .apply(outbound_config(&i.to_string(), vec![forward_route(target)], clusters()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(total.load(Ordering::Relaxed) > 20);
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    // The last config (20) routes to a.
    let before = a.hits();
    get(addr, "svc", "/").await;
    assert_eq!(a.hits(), before + 1);
}

/// A configuration of `services` services, each a cluster of ten endpoints and a virtual host
/// with its four names and a route per path prefix, plus one catch-all host routing to `a`.
fn mesh_config(version: &str, services: usize, a: &Upstream) -> trellis_contract::ProxyConfig {
    let mut clusters = vec![cluster("a", &[a])];
    let mut hosts = Vec::new();
    for svc in 0..services {
        let host = format!("svc-{svc}.ns.svc.cluster.local");
        let endpoints: Vec<_> = (0..10)
            .map(|p| json!({"address": format!("10.{}.{}.{}", svc / 250, svc % 250, p + 1), "port": 8080}))
            .collect();
        clusters.push(json!({"name": host, "service": host, "endpoints": endpoints}));
        let routes: Vec<_> = ["/api", "/static", "/"]
            .iter()
            .map(|prefix| {
                json!({"match": [{"uri": {"prefix": prefix}}], "action": {"forward": {"clusters": [{"cluster": host}]}},
                       "provenance": provenance()})
            })
            .collect();
        let names = [
            format!("svc-{svc}"),
            format!("svc-{svc}.ns"),
            format!("svc-{svc}.ns.svc"),
            host.clone(),
        ];
        hosts.push(json!({"name": host, "domains": names, "routes": routes}));
    }
    hosts.push(json!({"name": "rest", "domains": ["*"], "routes": [forward_route("a")]}));
    let mut config = outbound_config(version, vec![], clusters);
    config["listeners"][0]["virtualHosts"] = json!(hosts);
    serde_json::from_value(config).expect("test config parses")
}

/// A sidecar runs one runtime thread (`TRELLIS_WORKERS=1`), which carries every request; a
/// configuration is compiled off it, so requests are served while a large one is built.
#[tokio::test]
async fn requests_are_served_while_a_large_configuration_is_built() {
    let a = Upstream::start("a").await;
    let proxy = Arc::new(
        Proxy::start(outbound_config(
            "0",
            vec![forward_route("a")],
            vec![cluster("a", &[&a])],
        ))
        .await,
    );
    let addr = proxy.addr("outbound").await;
    let large = mesh_config("1", 6000, &a);
    let started = Instant::now();
    let applying = tokio::spawn({
        let proxy = Arc::clone(&proxy);
        async move { proxy.app.apply(large).await }
    });
    // The apply starts (and, built on this thread, would finish) before the request is sent.
    tokio::task::yield_now().await;
    let reply = get(addr, "svc", "/").await;
    assert_eq!(reply.status, 200);
    let served = started.elapsed();
    assert!(
        !applying.is_finished(),
        "the request was answered only after the configuration was built ({served:?})"
    );
    applying.await.unwrap().expect("the large configuration applies");
    assert_eq!(proxy.app.runtime().snapshot().settings.version, "1");
    assert_eq!(get(addr, "svc", "/").await.status, 200);
}

#[tokio::test]
async fn listeners_are_added_and_removed_by_config() {
    let a = Upstream::start("a").await;
    let mut cfg = outbound_config("1", vec![forward_route("a")], vec![cluster("a", &[&a])]);
    let proxy = Proxy::start(cfg.clone()).await;
    let first = proxy.addr("outbound").await;
    let mut second = cfg["listeners"][0].clone();
    second["name"] = json!("extra");
    cfg["listeners"].as_array_mut().unwrap().push(second);
    cfg["version"] = json!("2");
    proxy.apply(cfg.clone()).await.unwrap();
    let extra = proxy.addr("extra").await;
    assert_eq!(get(extra, "svc", "/").await.status, 200);
    assert_eq!(
        proxy.addr("outbound").await,
        first,
        "unchanged listener keeps its socket"
    );
    cfg["listeners"].as_array_mut().unwrap().remove(1);
    cfg["version"] = json!("3");
    proxy.apply(cfg).await.unwrap();
    assert!(proxy.app.listener_addr("extra").await.is_none());
    let deadline = Instant::now() + Duration::from_secs(3);
    while tokio::net::TcpStream::connect(extra).await.is_ok() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(extra).await.is_err(),
        "removed listener stops accepting"
    );
}

#[tokio::test]
async fn bind_conflict_is_a_nack() {
    let a = Upstream::start("a").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![forward_route("a")],
        vec![cluster("a", &[&a])],
    ))
    .await;
    let mut cfg = outbound_config("2", vec![forward_route("a")], vec![cluster("a", &[&a])]);
    cfg["listeners"][0]["name"] = json!("other");
    cfg["listeners"][0]["address"] = json!(format!("127.0.0.1:{port}"));
    let err = proxy.apply(cfg).await.unwrap_err().to_string();
    assert!(err.contains("cannot bind"), "{err}");
    // Nothing changed.
    assert_eq!(get(proxy.addr("outbound").await, "svc", "/").await.status, 200);
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_stops_accepting() {
    let a = Upstream::start("a").await;
    let mut cfg = outbound_config("1", vec![forward_route("a")], vec![cluster("a", &[&a])]);
    cfg["drainTimeoutMs"] = json!(3000);
    let proxy = Arc::new(Proxy::start(cfg).await);
    let addr = proxy.addr("outbound").await;
    let in_flight = tokio::spawn(async move { get(addr, "svc", "/delay/400").await.status.as_u16() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let p = Arc::clone(&proxy);
    let drain = tokio::spawn(async move { p.app.drain().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!proxy.app.runtime().is_ready());
    assert_eq!(get(proxy.admin(), "admin", "/ready").await.status, 503);
    assert_eq!(in_flight.await.unwrap(), 200, "in-flight request completes");
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    assert!(proxy.apply(outbound_config("2", vec![], vec![])).await.is_err());
}

#[tokio::test]
async fn drain_timeout_bounds_stuck_requests() {
    let a = Upstream::start("a").await;
    let mut cfg = outbound_config("1", vec![forward_route("a")], vec![cluster("a", &[&a])]);
    cfg["drainTimeoutMs"] = json!(200);
    let proxy = Arc::new(Proxy::start(cfg).await);
    let addr = proxy.addr("outbound").await;
    let _stuck = tokio::spawn(async move { get(addr, "svc", "/delay/10000").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    proxy.app.drain().await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_draining_gateway_serves_on_for_the_drain_timeout_closing_each_connection_after_its_response() {
    let a = Upstream::start("a").await;
    let mut cfg = outbound_config("1", vec![forward_route("a")], vec![cluster("a", &[&a])]);
    cfg["drainTimeoutMs"] = json!(1000);
    let proxy = Arc::new(Proxy::start(cfg).await);
    let addr = proxy.addr("outbound").await;
    assert!(
        get(addr, "svc", "/").await.headers.get("connection").is_none(),
        "keep-alive before"
    );
    let p = Arc::clone(&proxy);
    let started = Instant::now();
    let drain = tokio::spawn(async move { p.app.drain_gateway().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(proxy.admin(), "admin", "/ready").await.status,
        503,
        "not ready at once"
    );
    // Still accepting while the load balancer lets go, each response closing its connection.
    let served = get(addr, "svc", "/").await;
    assert_eq!((served.status.as_u16(), served.server()), (200, "a"));
    assert_eq!(
        served.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
