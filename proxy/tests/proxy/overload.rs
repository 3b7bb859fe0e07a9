//! Connections that send nothing, and more connections than the proxy will
//! hold: a silent connection is closed by the header read timeout like a slow
//! one (not after the 300 s idle timeout), connections over the downstream
//! budget are closed on arrival, and the health port keeps answering.

use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use trellis_proxy::admin::AdminRole;
use trellis_proxy::{App, AppConfig};

/// Open `n` connections that never send a byte.
async fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    conns
}

/// Has the proxy closed this connection (EOF or reset) within `within`?
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, conn.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

fn config(upstream: &Upstream, limits: Value) -> Value {
    let mut cfg = outbound_config("1", vec![forward_route("a")], vec![cluster("a", &[upstream])]);
    cfg["listeners"][0]["limits"] = limits;
    cfg
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_by_the_header_read_timeout() {
    let a = Upstream::start("a").await;
    // The idle timeout is the default 300 s: only the header read timeout can close them.
    for protocol in ["http", "auto"] {
        let mut cfg = config(&a, json!({"headerReadTimeoutMs": 300}));
        cfg["listeners"][0]["protocol"] = json!(protocol);
        let proxy = Proxy::start(cfg).await;
        let addr = proxy.addr("outbound").await;
        let started = Instant::now();
        let mut conns = silent(addr, 50).await;
        for c in &mut conns {
            assert!(
                closed_within(c, Duration::from_secs(3)).await,
                "{protocol}: a silent connection is still open after {:?}",
                started.elapsed()
            );
        }
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        // A client that does speak is served as before.
        assert_eq!(get(addr, "svc", "/").await.status, 200);
    }
}

#[tokio::test]
async fn a_client_that_starts_its_request_in_time_is_served() {
    use tokio::io::AsyncWriteExt;
    let a = Upstream::start("a").await;
    let proxy = Proxy::start(config(&a, json!({"headerReadTimeoutMs": 400}))).await;
    let mut s = TcpStream::connect(proxy.addr("outbound").await).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test]
async fn over_the_connection_budget_the_health_port_keeps_answering() {
    let a = Upstream::start("a").await;
    let app = App::start(AppConfig {
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        stats_addr: None,
        health_addr: Some("127.0.0.1:0".parse().unwrap()),
        dns_addr: None,
        log_control: None,
        max_downstream_connections: Some(20),
        app_metrics: None,
        app_probes: Default::default(),
    })
    .await
    .unwrap();
    let cfg = config(&a, json!({"headerReadTimeoutMs": 1000}));
    app.apply(serde_json::from_value(cfg).unwrap()).await.unwrap();
    let addr = app.listener_addr("outbound").await.unwrap();
    let health = app.admin_addr(AdminRole::Health).unwrap();
    let admin = app.admin_addr(AdminRole::Admin).unwrap();

    let mut conns = silent(addr, 200).await;
    // Everything over the budget is closed on arrival.
    let mut refused = 0;
    for c in &mut conns[20..] {
        if closed_within(c, Duration::from_millis(500)).await {
            refused += 1;
        }
    }
    assert!(
        refused >= 170,
        "only {refused} of 180 connections over the budget were closed"
    );
    let dump: Value = serde_json::from_str(&get(admin, "admin", "/config_dump").await.body).unwrap();
    assert_eq!(dump["downstreamConnections"]["limit"], 20);
    assert!(
        dump["downstreamConnections"]["active"].as_u64().unwrap() <= 20,
        "{dump}"
    );
    // The probes are outside the budget.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(get(health, "h", "/ready").await.status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    let metrics = get(admin, "admin", "/metrics").await.body;
    let overflow: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trellis_proxy_downstream_cx_overflow_total "))
        .expect("the overflow counter")
        .parse()
        .unwrap();
    assert!(overflow >= 170, "{overflow}");

    // The silent ones are closed by the header read timeout; the budget is free again.
    for c in &mut conns[..20] {
        assert!(closed_within(c, Duration::from_secs(3)).await);
    }
    drop(conns);
    assert_eq!(get(addr, "svc", "/").await.status, 200);
}
