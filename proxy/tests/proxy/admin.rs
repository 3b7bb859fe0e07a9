//! The admin API.

use crate::support::*;
use serde_json::json;
use trellis_proxy::{App, AppConfig};

#[tokio::test]
async fn ready_only_after_a_config() {
    let app = App::start(AppConfig {
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        stats_addr: Some("127.0.0.1:0".parse().unwrap()),
        health_addr: Some("127.0.0.1:0".parse().unwrap()),
        dns_addr: None,
        log_control: None,
        max_downstream_connections: None,
        app_metrics: None,
        app_probes: Default::default(),
    })
    .await
    .unwrap();
    let health = app.admin_addr(trellis_proxy::admin::AdminRole::Health).unwrap();
    let stats = app.admin_addr(trellis_proxy::admin::AdminRole::Stats).unwrap();
    assert_eq!(get(health, "h", "/ready").await.status, 503);
    assert_eq!(get(health, "h", "/healthz/ready").await.status, 503);
    assert_eq!(get(health, "h", "/live").await.status, 200);
    // The health port serves only probes; the stats port only metrics.
    assert_eq!(get(health, "h", "/config_dump").await.status, 404);
    assert_eq!(get(stats, "h", "/metrics").await.status, 200);
    assert_eq!(get(stats, "h", "/config_dump").await.status, 404);
    let cfg = serde_json::from_value(outbound_config("v1", vec![], vec![])).unwrap();
    app.apply(cfg).await.unwrap();
    assert_eq!(get(health, "h", "/ready").await.status, 200);
}

#[tokio::test]
async fn not_ready_without_certificate_when_mesh_needs_one() {
    let mut cfg = outbound_config("v1", vec![], vec![]);
    cfg["listeners"][0]["direction"] = json!("inbound");
    cfg["inbound"] = json!({"mtls": {"mode": "STRICT"}});
    let app = App::start(AppConfig::admin_only("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let err = app.apply(serde_json::from_value(cfg).unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("identity.certificate"), "{err}");
    let admin = app.admin_addr(trellis_proxy::admin::AdminRole::Admin).unwrap();
    assert_eq!(get(admin, "h", "/ready").await.status, 503);
}

#[tokio::test]
async fn config_dump_shows_state_but_never_keys() {
    let pki = Pki::new();
    let a = Upstream::start("a").await;
    let mut cfg = outbound_config("dump-1", vec![forward_route("a")], vec![cluster("a", &[&a])]);
    cfg["identity"] = pki.identity("spiffe://cluster.local/ns/test/sa/client");
    let proxy = Proxy::start(cfg).await;
    let dump = get(proxy.admin(), "admin", "/config_dump").await;
    assert_eq!(dump.status, 200);
    assert!(!dump.body.contains("PRIVATE KEY"), "private key leaked");
    let v: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    assert_eq!(v["version"], "dump-1");
    assert_eq!(
        v["config"]["identity"]["certificate"]["inline"]["privateKeyPem"],
        "<redacted>"
    );
    assert_eq!(v["clusterStatus"][0]["endpoints"][0]["health"], "healthy");
    assert_eq!(
        v["workloadCertificate"]["chain"][0]["uriSans"][0],
        "spiffe://cluster.local/ns/test/sa/client"
    );
    assert_eq!(
        v["config"]["listeners"][0]["virtualHosts"][0]["routes"][0]["provenance"]["kind"],
        "VirtualService"
    );
}

#[tokio::test]
async fn metrics_count_requests_with_istio_labels() {
    let a = Upstream::start("a").await;
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![forward_route("a")],
        vec![cluster("a", &[&a])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    for _ in 0..3 {
        get(addr, "svc", "/").await;
    }
    get(addr, "svc", "/status/503").await;
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    let line = m
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
        .expect("a 200 series");
    assert!(line.ends_with(" 3"), "{line}");
    for label in [
        "reporter=\"source\"",
        "source_workload=\"client\"",
        "source_workload_namespace=\"test\"",
        "destination_app=\"a\"",
        "destination_version=\"a\"",
        "destination_service=\"a.test.svc.cluster.local\"",
        "destination_service_name=\"a\"",
        "request_protocol=\"http\"",
        "response_flags=\"-\"",
        // The client side cannot know the server's policy (Istio's value).
        "connection_security_policy=\"unknown\"",
        // A plaintext upstream never saw this proxy's certificate.
        "source_principal=\"unknown\"",
        "grpc_response_status=\"\"",
    ] {
        assert!(line.contains(label), "{label} missing in {line}");
    }
    assert!(m.contains("response_code=\"503\""));
    assert!(m.contains("istio_request_duration_milliseconds_bucket{"));
    assert!(m.contains("trellis_proxy_config_applied_total 1"));
}

#[tokio::test]
async fn logging_without_control_is_reported() {
    let proxy = Proxy::start(outbound_config("1", vec![], vec![])).await;
    let r = send(proxy.admin(), "POST", "admin", "/logging?level=debug", &[]).await;
    assert_eq!(r.status, 501);
}

/// Istio's metrics merging: the stats port serves the proxy's metrics and
/// then the app's (fetched on localhost at the pod's original annotations);
/// an app that fails costs only its own part, counted.
#[tokio::test]
async fn the_stats_port_merges_the_apps_own_metrics() {
    let start = |app_metrics| {
        App::start(AppConfig {
            stats_addr: Some("127.0.0.1:0".parse().unwrap()),
            app_metrics,
            ..AppConfig::admin_only("127.0.0.1:0".parse().unwrap())
        })
    };
    let own = Upstream::start("app").await;
    let proxy = start(Some(trellis_proxy::app_metrics::AppMetrics {
        port: own.addr.port(),
        path: "/app-metrics".into(),
    }))
    .await
    .unwrap();
    let stats = proxy.admin_addr(trellis_proxy::admin::AdminRole::Stats).unwrap();
    let merged = get(stats, "h", "/stats/prometheus").await;
    assert_eq!(merged.status, 200);
    let proxy_part = merged
        .body
        .find("trellis_proxy_config_applied_total")
        .expect("the proxy's own");
    let app_part = merged.body.find("app /app-metrics").expect("the app's, as it answered");
    assert!(proxy_part < app_part, "the app's metrics come last: {}", merged.body);
    assert_eq!(own.hits(), 1, "one scrape, one fetch from the app");
    // The admin port serves the proxy's metrics alone.
    assert!(
        !get(
            proxy.admin_addr(trellis_proxy::admin::AdminRole::Admin).unwrap(),
            "h",
            "/metrics"
        )
        .await
        .body
        .contains("app /app-metrics")
    );

    // An app that is not there: the proxy's metrics all the same, the failure counted.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = start(Some(trellis_proxy::app_metrics::AppMetrics {
        port: gone,
        path: "/metrics".into(),
    }))
    .await
    .unwrap();
    let stats = proxy.admin_addr(trellis_proxy::admin::AdminRole::Stats).unwrap();
    let first = get(stats, "h", "/stats/prometheus").await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains("istio_requests_total") || first.body.contains("trellis_proxy_config_applied_total"));
    let second = get(stats, "h", "/stats/prometheus").await.body;
    assert!(
        second.contains("trellis_proxy_app_scrape_failures_total 1\n"),
        "the first failure is counted: {second}"
    );
}

/// A Prometheus scraper keeps its connection to the stats port alive between scrapes (every
/// 15 s by default): the wait for the next request is the admin servers' idle timeout (60 s),
/// not the 10 s a head has from its first byte. The framing guard checks its requests too.
#[tokio::test]
async fn a_scrapers_kept_alive_connection_outlives_the_head_timeout_between_scrapes() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let app = App::start(AppConfig {
        stats_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..AppConfig::admin_only("127.0.0.1:0".parse().unwrap())
    })
    .await
    .unwrap();
    let stats = app.admin_addr(trellis_proxy::admin::AdminRole::Stats).unwrap();
    let mut s = tokio::net::TcpStream::connect(stats).await.unwrap();
    let scrape = b"GET /metrics HTTP/1.1\r\nHost: pod:15090\r\nAccept: text/plain\r\n\r\n";
    for n in 1..=2 {
        s.write_all(scrape).await.expect("the connection is open");
        let (reply, whole) = read_reply(&mut s, Duration::from_secs(5)).await;
        assert!(
            whole && reply.starts_with("HTTP/1.1 200"),
            "scrape {n} on one connection: {reply}"
        );
        if n == 1 {
            // Longer than the head timeout (10 s) without a byte.
            tokio::time::sleep(Duration::from_millis(10_500)).await;
        }
    }
    s.write_all(
        b"POST /metrics HTTP/1.1\r\nHost: pod\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (reply, _) = read_reply(&mut s, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
}
