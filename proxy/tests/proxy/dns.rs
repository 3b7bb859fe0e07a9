//! The DNS proxy: mesh names from the config, everything else forwarded.

use serde_json::json;
use std::net::IpAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use trellis_proxy::dns_table::{answer_addresses, build_query};
use trellis_proxy::dns_table::{read_framed, write_framed};
use trellis_proxy::{App, AppConfig};

async fn query(server: std::net::SocketAddr, id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&build_query(id, name, qtype), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("dns reply")
        .unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn answers_mesh_names_and_forwards_the_rest() {
    // A fake upstream resolver that answers every A query with 192.0.2.1.
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let _resolver = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = upstream.recv_from(&mut buf).await else {
                return;
            };
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80; // QR
            r[7] = 1; // ANCOUNT = 1
            r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
            let _ = upstream.send_to(&r, peer).await;
        }
    });
    let app = App::start(AppConfig {
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        stats_addr: None,
        health_addr: None,
        dns_addr: Some("127.0.0.1:0".parse().unwrap()),
        log_control: None,
        max_downstream_connections: None,
        app_metrics: None,
        app_probes: Default::default(),
    })
    .await
    .unwrap();
    let cfg = json!({
        "version": "dns-1",
        "dns": {
            "entries": [{"hostname": "payment.shop.svc.cluster.local", "aliases": ["payment", "payment.shop"], "addresses": ["10.96.0.20"]}],
            "upstreams": [up_addr.to_string()],
        },
    });
    app.apply(serde_json::from_value(cfg).unwrap()).await.unwrap();
    let dns = app.dns_addr().unwrap();
    let mesh: IpAddr = "10.96.0.20".parse().unwrap();
    for name in ["payment", "payment.shop", "payment.shop.svc.cluster.local"] {
        let r = query(dns, 1, name, 1).await;
        assert_eq!(answer_addresses(&r), vec![mesh], "{name}");
    }
    let r = query(dns, 2, "example.com", 1).await;
    assert_eq!(&r[..2], &2u16.to_be_bytes());
    assert_eq!(answer_addresses(&r), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
    // A new config changes the answers.
    let cfg = json!({"version": "dns-2", "dns": {"entries": [{"hostname": "payment", "addresses": ["10.96.0.99"]}], "upstreams": [up_addr.to_string()]}});
    app.apply(serde_json::from_value(cfg).unwrap()).await.unwrap();
    let r = query(dns, 3, "payment", 1).await;
    assert_eq!(answer_addresses(&r), vec!["10.96.0.99".parse::<IpAddr>().unwrap()]);
}

#[tokio::test]
async fn unreachable_upstream_gives_servfail() {
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let app = App::start(AppConfig {
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        stats_addr: None,
        health_addr: None,
        dns_addr: Some("127.0.0.1:0".parse().unwrap()),
        log_control: None,
        max_downstream_connections: None,
        app_metrics: None,
        app_probes: Default::default(),
    })
    .await
    .unwrap();
    let cfg = json!({"version": "1", "dns": {"upstreams": [dead_addr.to_string()]}});
    app.apply(serde_json::from_value(cfg).unwrap()).await.unwrap();
    let r = query(app.dns_addr().unwrap(), 4, "example.com", 1).await;
    assert_eq!(r[3] & 0x0F, 2, "SERVFAIL");
}

async fn query_tcp(s: &mut tokio::net::TcpStream, id: u16, name: &str, qtype: u16) -> Vec<u8> {
    write_framed(s, &build_query(id, name, qtype)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_framed(s))
        .await
        .expect("dns reply over tcp")
        .unwrap()
}

/// A fake upstream resolver on one port: over UDP every A query gets
/// 192.0.2.1, over TCP 192.0.2.2, so the test sees which transport was used.
async fn udp_and_tcp_resolver() -> std::net::SocketAddr {
    // The UDP socket picks a port; its TCP twin may be taken by another test
    // (CI saw AddrInUse): pick again, as the proxy's own `bind_dns` does.
    let (udp, tcp, addr) = {
        let mut attempts = 0;
        loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            match tokio::net::TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(e) if attempts < 16 => {
                    attempts += 1;
                    eprintln!("resolver port {addr} taken over TCP ({e}); picking another");
                }
                Err(e) => panic!("no port free over both UDP and TCP after {attempts} attempts: {e}"),
            }
        }
    };
    fn answer(q: &[u8], last_octet: u8) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r[7] = 1;
        r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, last_octet]);
        r
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&answer(&buf[..n], 1), peer).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                while let Ok(q) = read_framed(&mut s).await {
                    if write_framed(&mut s, &answer(&q, 2)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_queries_on_the_same_port_are_answered_and_forwarded_over_tcp() {
    let up = udp_and_tcp_resolver().await;
    let app = App::start(AppConfig {
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        stats_addr: None,
        health_addr: None,
        dns_addr: Some("127.0.0.1:0".parse().unwrap()),
        log_control: None,
        max_downstream_connections: None,
        app_metrics: None,
        app_probes: Default::default(),
    })
    .await
    .unwrap();
    let cfg = json!({
        "version": "dns-tcp",
        "dns": {
            "entries": [{"hostname": "payment.shop.svc.cluster.local", "aliases": ["payment"], "addresses": ["10.96.0.20", "fd00::20"]}],
            "upstreams": [up.to_string()],
        },
    });
    app.apply(serde_json::from_value(cfg).unwrap()).await.unwrap();
    let dns = app.dns_addr().unwrap();
    // Several queries on one connection (RFC 7766), mesh names answered locally.
    let mut s = tokio::net::TcpStream::connect(dns).await.unwrap();
    let r = query_tcp(&mut s, 11, "payment", 1).await;
    assert_eq!(&r[..2], &11u16.to_be_bytes());
    assert_eq!(answer_addresses(&r), vec!["10.96.0.20".parse::<IpAddr>().unwrap()]);
    let r = query_tcp(&mut s, 12, "payment.shop.svc.cluster.local", 28).await;
    assert_eq!(answer_addresses(&r), vec!["fd00::20".parse::<IpAddr>().unwrap()]);
    // Other names are forwarded over TCP (the resolver's TCP answer) ...
    let r = query_tcp(&mut s, 13, "example.com", 1).await;
    assert_eq!(&r[..2], &13u16.to_be_bytes());
    assert_eq!(answer_addresses(&r), vec!["192.0.2.2".parse::<IpAddr>().unwrap()]);
    // ... and over UDP when they came over UDP.
    let r = query(dns, 14, "example.com", 1).await;
    assert_eq!(answer_addresses(&r), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
    // A malformed message gets FORMERR and the connection stays usable.
    let mut bad = build_query(15, "payment", 1);
    bad[5] = 2; // QDCOUNT = 2
    write_framed(&mut s, &bad).await.unwrap();
    let r = read_framed(&mut s).await.unwrap();
    assert_eq!(r[3] & 0x0F, 1, "FORMERR");
    let r = query_tcp(&mut s, 16, "payment", 1).await;
    assert_eq!(answer_addresses(&r), vec!["10.96.0.20".parse::<IpAddr>().unwrap()]);
}
