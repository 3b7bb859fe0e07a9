//! The upstream DNS resolvers the proxy asks what it does not answer itself: which they are
//! (the configuration's `dns.upstreams`, else `/etc/resolv.conf`'s) and one query asked of them
//! in turn, over UDP or over TCP (RFC 7766 framing, [`crate::dns_table::read_framed`]). The DNS
//! proxy ([`crate::dns`]) forwards its clients' queries with it, and run-time discovery
//! ([`crate::discovery`]) resolves clusters' names with it.

use crate::dns_table::{read_framed, write_framed};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket};
use trellis_contract::DnsConfig;

/// Upstream resolvers: the config's, else `/etc/resolv.conf`'s.
pub(crate) fn upstreams(cfg: &DnsConfig) -> Vec<SocketAddr> {
    let configured: Vec<SocketAddr> = cfg.upstreams.iter().filter_map(|u| u.parse().ok()).collect();
    if !configured.is_empty() {
        return configured;
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Ask `upstreams` in turn over UDP, waiting `timeout` for each; the first answer with the
/// query's id from the address asked.
pub(crate) async fn forward_udp(query: &[u8], upstreams: &[SocketAddr], timeout: Duration) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        // Ignore datagrams from elsewhere or with another id (spoofing).
        loop {
            match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) if from == *up && n >= 2 && buf[..2] == query[..2] => {
                    return Some(buf[..n].to_vec());
                }
                Ok(Ok(_)) => continue,
                _ => break,
            }
        }
    }
    None
}

/// One DNS-over-TCP exchange with an upstream: length-prefixed query out,
/// length-prefixed answer with the same id back.
async fn exchange_tcp(query: &[u8], up: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(up).await?;
    write_framed(&mut tcp, query).await?;
    loop {
        let answer = read_framed(&mut tcp).await?;
        if answer.len() >= 2 && answer[..2] == query[..2] {
            return Ok(answer);
        }
    }
}

/// Ask `upstreams` in turn over TCP, waiting `timeout` for each; the first answer.
pub(crate) async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr], timeout: Duration) -> Option<Vec<u8>> {
    for up in upstreams {
        match tokio::time::timeout(timeout, exchange_tcp(query, *up)).await {
            Ok(Ok(answer)) => return Some(answer),
            Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "DNS over TCP upstream failed"),
            Err(_) => tracing::debug!(upstream = %up, "DNS over TCP upstream timed out"),
        }
    }
    None
}
