//! Endpoints found by DNS at run time (a cluster's `discovery: dns`, ServiceEntry
//! `resolution: DNS`): the proxy resolves the endpoint's name with the configured resolver,
//! looks it up again when the answer's TTL has passed (Envoy's `respect_dns_ttl`, as Istio
//! sets it), moves to the new addresses, and keeps the last answer while the resolver fails.

use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};

use crate::support::{Proxy, Upstream, forward_route, get, outbound_config};

/// A resolver answering every A query with the address it holds now, TTL 1 s; with none, it
/// does not answer (the proxy's lookup times out).
async fn resolver(answer: Arc<Mutex<Option<Ipv4Addr>>>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Some(ip) = *answer.lock().unwrap() else { continue };
            let qtype = buf.get(n.saturating_sub(4)..n.saturating_sub(2)).map(|t| [t[0], t[1]]);
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80; // QR
            if qtype == Some([0, 1]) {
                r[7] = 1; // ANCOUNT
                r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                r.extend_from_slice(&ip.octets());
            }
            let _ = socket.send_to(&r, peer).await;
        }
    });
    addr
}

/// Two servers on one port, at 127.0.0.2 and 127.0.0.3.
async fn twins() -> (Upstream, Upstream) {
    for _ in 0..16 {
        let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        if let Ok(second) = TcpListener::bind(("127.0.0.3", port)).await {
            return (Upstream::on("first", first), Upstream::on("second", second));
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// Which server answers through the proxy, asked until `want` answers or `within` passes.
async fn until_served_by(proxy: SocketAddr, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let reply = get(proxy, "ext.test", "/").await;
        if reply.server() == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{want} did not answer within {within:?}; last: {} {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn resolved_addresses_follow_the_answers_ttl_and_survive_a_failing_resolver() {
    let (first, second) = twins().await;
    let port = first.addr.port();
    let answer = Arc::new(Mutex::new(Some(Ipv4Addr::new(127, 0, 0, 2))));
    let dns = resolver(Arc::clone(&answer)).await;
    let mut cfg = outbound_config(
        "dns-discovery-1",
        vec![forward_route("outbound|80||ext.test")],
        vec![json!({
            "name": "outbound|80||ext.test",
            "service": "ext.test",
            "discovery": "dns",
            "endpoints": [{"address": "ext.test", "port": port}],
        })],
    );
    cfg["dns"] = json!({"upstreams": [dns.to_string()]});
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("outbound").await;

    until_served_by(addr, "first", Duration::from_secs(5)).await;
    // The name moves: the proxy follows once the 1 s TTL has passed (REFRESH, 30 s, is the
    // most it would wait for an answer with a longer TTL).
    *answer.lock().unwrap() = Some(Ipv4Addr::new(127, 0, 0, 3));
    let moved = until_served_by(addr, "second", Duration::from_secs(10)).await;
    eprintln!("served by the new address after {moved:?}");
    let hits = first.hits();
    // The resolver stops answering: the last answer is kept, requests still succeed.
    *answer.lock().unwrap() = None;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        let reply = get(addr, "ext.test", "/").await;
        assert_eq!(
            (reply.status.as_u16(), reply.server()),
            (200, "second"),
            "{}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(first.hits(), hits, "the old address is not used again");
    assert!(second.hits() >= 10, "{} requests at the new address", second.hits());
}
