//! Opaque TCP proxying and protocol detection.

use crate::support::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn echo_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

fn tcp_config(
    protocol: &str,
    echo: std::net::SocketAddr,
    http_cluster: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut clusters =
        vec![json!({"name": "echo", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": echo.port()}]})];
    let mut vhosts = json!([]);
    if let Some(c) = http_cluster {
        vhosts = json!([{"name": "web", "domains": ["*"], "routes": [forward_route(c["name"].as_str().unwrap())]}]);
        clusters.push(c);
    }
    json!({
        "version": "1",
        "listeners": [{
            "name": "l", "address": "127.0.0.1:0", "direction": "outbound", "protocol": protocol,
            "virtualHosts": vhosts,
            "tcpRoutes": [{"cluster": "echo"}],
            "limits": {"protocolDetectionTimeoutMs": 100},
        }],
        "clusters": clusters,
    })
}

#[tokio::test]
async fn opaque_tcp_is_proxied_and_counted() {
    let (echo, _t) = echo_server().await;
    let proxy = Proxy::start(tcp_config("tcp", echo, None)).await;
    let addr = proxy.addr("l").await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hello trellis").await.unwrap();
    let mut buf = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello trellis");
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("trellis_tcp_connections_opened_total{") && l.ends_with(" 1")),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("trellis_tcp_received_bytes_total{") && l.ends_with(" 13")),
        "{m}"
    );
}

#[tokio::test]
async fn auto_listener_sniffs_http_versus_tcp() {
    let (echo, _t) = echo_server().await;
    let web = Upstream::start("web").await;
    let proxy = Proxy::start(tcp_config("auto", echo, Some(cluster("web", &[&web])))).await;
    let addr = proxy.addr("l").await;
    // HTTP goes to the HTTP route.
    assert_eq!(get(addr, "svc", "/").await.server(), "web");
    // A non-HTTP client-first protocol goes to the TCP route.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x00\x01binary").await.unwrap();
    let mut buf = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"\x00\x01binary");
    // A server-first protocol (client silent) falls back to TCP after the timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    s.write_all(b"late").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"late");
}
