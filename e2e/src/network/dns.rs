//! The cluster DNS server: UDP and TCP on 10.96.0.10:53 inside the node
//! namespace (the `kube-dns` Service's ClusterIP), answering from the
//! cluster store.
//!
//! # Answers
//! - `<svc>.<ns>.svc.cluster.local` A: the ClusterIP; for a headless
//!   Service (`clusterIP: None`) the ready endpoint addresses; an
//!   ExternalName Service gets a CNAME.
//! - `<a-b-c-d>.<ns>.pod.cluster.local` A: `a.b.c.d`.
//! - Other types of a known name (AAAA, …): no data (NOERROR, empty).
//! - Unknown names under `cluster.local`: NXDOMAIN. Short names (`svc`,
//!   `svc.ns`) resolve through the pods' search path (see
//!   [`super::resolv_conf`]).
//! - Everything else is forwarded to the host's resolvers from
//!   `/etc/resolv.conf` (over UDP, from the host namespace); SERVFAIL if
//!   none answers within 2 s.
//!
//! TTL 5 s. The parser never panics on malformed input (tested on random
//! and truncated messages); what it cannot parse gets FORMERR or is dropped
//! when not even the header is there.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, warn};

use super::{CLUSTER_DOMAIN, DNS_IP, PodNetwork, netns};
use crate::cluster::Cluster;

/// TTL of every answer, in seconds.
pub const TTL: u32 = 5;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

/// Response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
}

/// A parsed query (one question).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The header's flags word as received.
    pub flags: u16,
    /// Lower-case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section's bytes (echoed in the answer).
    pub question: Vec<u8>,
}

/// An answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    A(Ipv4Addr),
    Cname(String),
}

/// What the cluster knows about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not a cluster name: forward it.
    External,
    /// A cluster name that does not exist.
    NxDomain,
    /// A cluster name with these records (possibly none).
    Records(Vec<Record>),
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Parses a query. `Err(None)`: too short to answer at all; `Err(Some(..))`:
/// answer with that code.
pub fn parse_query(msg: &[u8]) -> Result<Query, Option<(u16, u16, Rcode)>> {
    let id = u16_at(msg, 0).ok_or(None)?;
    let flags = u16_at(msg, 2).ok_or(None)?;
    let qdcount = u16_at(msg, 4).ok_or(None)?;
    if msg.len() < 12 {
        return Err(None);
    }
    if flags & 0x8000 != 0 {
        // A response: never answer those.
        return Err(None);
    }
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Err(Some((id, flags, Rcode::NotImp)));
    }
    if qdcount != 1 {
        return Err(Some((id, flags, Rcode::FormErr)));
    }
    let mut i = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut total = 0usize;
    loop {
        let len = usize::from(*msg.get(i).ok_or(Some((id, flags, Rcode::FormErr)))?);
        i += 1;
        if len == 0 {
            break;
        }
        // Compression pointers and extended label types have no place in
        // a question.
        if len > 63 {
            return Err(Some((id, flags, Rcode::FormErr)));
        }
        total += len + 1;
        if total > 255 {
            return Err(Some((id, flags, Rcode::FormErr)));
        }
        let label = msg.get(i..i + len).ok_or(Some((id, flags, Rcode::FormErr)))?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16_at(msg, i).ok_or(Some((id, flags, Rcode::FormErr)))?;
    let qclass = u16_at(msg, i + 2).ok_or(Some((id, flags, Rcode::FormErr)))?;
    Ok(Query {
        id,
        flags,
        name: labels.join("."),
        qtype,
        qclass,
        question: msg[12..i + 4].to_vec(),
    })
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
}

/// A response with no question (when the query could not be parsed).
pub fn error_response(id: u16, flags: u16, rcode: Rcode) -> Vec<u8> {
    let flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode as u16;
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// The response to `q` with `rcode` and `records` (authoritative).
pub fn response(q: &Query, rcode: Rcode, records: &[Record]) -> Vec<u8> {
    // QR, opcode and RD from the query, AA, RA.
    let flags = 0x8000 | (q.flags & 0x7900) | 0x0400 | 0x0080 | rcode as u16;
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q.question);
    // The owner is the question's name (offset 12), and after a CNAME its
    // target (where the CNAME's data holds it).
    let mut owner: u16 = 12;
    for r in records {
        out.extend_from_slice(&(0xc000 | owner).to_be_bytes());
        let (t, data) = match r {
            Record::A(ip) => (TYPE_A, ip.octets().to_vec()),
            Record::Cname(target) => {
                let mut d = Vec::new();
                encode_name(target, &mut d);
                (TYPE_CNAME, d)
            }
        };
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        if t == TYPE_CNAME
            && let Ok(at) = u16::try_from(out.len())
            && at < 0x3fff
        {
            owner = at;
        }
        out.extend_from_slice(&data);
    }
    out
}

/// What the cluster store says about `name` (lower case, no trailing dot).
pub fn lookup(cluster: &Cluster, name: &str) -> Lookup {
    let Some(local) = name
        .strip_suffix(CLUSTER_DOMAIN)
        .and_then(|r| if r.is_empty() { Some("") } else { r.strip_suffix('.') })
    else {
        return Lookup::External;
    };
    let parts: Vec<&str> = if local.is_empty() {
        Vec::new()
    } else {
        local.split('.').collect()
    };
    match parts.as_slice() {
        // The zone and its structure exist.
        [] | ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => Lookup::Records(Vec::new()),
        [svc, ns, "svc"] => service(cluster, ns, svc),
        [ip, _ns, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
            Ok(a) => Lookup::Records(vec![Record::A(a)]),
            Err(_) => Lookup::NxDomain,
        },
        _ => Lookup::NxDomain,
    }
}

fn service(cluster: &Cluster, ns: &str, name: &str) -> Lookup {
    let (services, _) = cluster.store.list("/services", Some(ns));
    let Some(svc) = services
        .iter()
        .find(|s| s.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
    else {
        return Lookup::NxDomain;
    };
    if svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        let target = svc
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim_end_matches('.');
        return Lookup::Records(vec![Record::Cname(target.to_string())]);
    }
    match svc.pointer("/spec/clusterIP").and_then(Value::as_str) {
        Some(ip) if ip != "None" => Lookup::Records(ip.parse().map(Record::A).into_iter().collect()),
        _ => {
            // Headless: the ready endpoints.
            let (slices, _) = cluster.store.list("discovery.k8s.io/endpointslices", Some(ns));
            let mut ips: Vec<Ipv4Addr> = slices
                .iter()
                .filter(|s| {
                    s.pointer("/metadata/labels/kubernetes.io~1service-name")
                        .and_then(Value::as_str)
                        == Some(name)
                })
                .flat_map(|s| {
                    s.get("endpoints")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter(|e| e.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false))
                .filter_map(|e| e.pointer("/addresses/0").and_then(Value::as_str)?.parse().ok())
                .collect();
            ips.sort();
            ips.dedup();
            Lookup::Records(ips.into_iter().map(Record::A).collect())
        }
    }
}

/// The answer to a cluster query, or `None` when it must be forwarded.
pub fn answer_local(cluster: &Cluster, q: &Query) -> Option<Vec<u8>> {
    if q.qclass != CLASS_IN && q.qclass != TYPE_ANY {
        return Some(response(q, Rcode::NotImp, &[]));
    }
    match lookup(cluster, &q.name) {
        Lookup::External => None,
        Lookup::NxDomain => Some(response(q, Rcode::NxDomain, &[])),
        Lookup::Records(mut records) => {
            // An ExternalName pointing into the cluster: its addresses too
            // (one level, as resolvers expect the chain in one answer).
            if let [Record::Cname(target)] = records.as_slice()
                && let Lookup::Records(more) = lookup(cluster, &target.to_ascii_lowercase())
            {
                records.extend(more.into_iter().filter(|r| matches!(r, Record::A(_))));
            }
            let wanted: Vec<Record> = records
                .into_iter()
                .filter(|r| match r {
                    Record::A(_) => q.qtype == TYPE_A || q.qtype == TYPE_ANY,
                    // A CNAME answers every type.
                    Record::Cname(_) => true,
                })
                .collect();
            Some(response(q, Rcode::NoError, &wanted))
        }
    }
}

/// The host's nameservers (`/etc/resolv.conf`), port 53.
pub fn host_nameservers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Forwards `msg` to the upstream resolvers (first answer wins).
async fn forward(upstreams: &[SocketAddr], msg: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(msg, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
            && n >= 2
            && buf[..2] == msg[..2]
        {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// The answer to one message, `None` to stay silent.
pub async fn handle(cluster: &Cluster, upstreams: &[SocketAddr], msg: &[u8]) -> Option<Vec<u8>> {
    let q = match parse_query(msg) {
        Ok(q) => q,
        Err(None) => return None,
        Err(Some((id, flags, rcode))) => return Some(error_response(id, flags, rcode)),
    };
    if let Some(local) = answer_local(cluster, &q) {
        return Some(local);
    }
    Some(match forward(upstreams, msg).await {
        Some(a) => a,
        None => response(&q, Rcode::ServFail, &[]),
    })
}

/// Binds 10.96.0.10:53 (UDP and TCP) in the node namespace and serves
/// until the network is torn down.
pub fn start(net: &Arc<PodNetwork>, cluster: Arc<Cluster>) -> Result<(), String> {
    let addr = SocketAddr::from((DNS_IP, 53));
    let path = net.node_netns_path();
    let udp = netns::udp_socket(&path, addr).map_err(|e| format!("DNS on {addr}/udp: {e}"))?;
    let tcp = netns::tcp_listener(&path, addr).map_err(|e| format!("DNS on {addr}/tcp: {e}"))?;
    let udp = Arc::new(tokio::net::UdpSocket::from_std(udp).map_err(|e| e.to_string())?);
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(|e| e.to_string())?;
    let upstreams: Arc<Vec<SocketAddr>> = Arc::new(host_nameservers());
    let mut stop = net.stop.subscribe();
    let (c, u) = (cluster.clone(), upstreams.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = tokio::select! {
                r = udp.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => { debug!(error = %e, "DNS receive failed"); continue; }
                },
                () = crate::shutdown::requested(&mut stop) => return,
            };
            let msg = buf[..n].to_vec();
            let (udp, c, u) = (udp.clone(), c.clone(), u.clone());
            tokio::spawn(async move {
                if let Some(mut answer) = handle(&c, &u, &msg).await {
                    if answer.len() > 512 && !has_edns(&msg) {
                        answer = truncated(&answer);
                    }
                    let _ = udp.send_to(&answer, peer).await;
                }
            });
        }
    });
    let mut stop = net.stop.subscribe();
    tokio::spawn(async move {
        loop {
            let (conn, _) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => { warn!(error = %e, "DNS accept failed"); continue; }
                },
                () = crate::shutdown::requested(&mut stop) => return,
            };
            let (c, u) = (cluster.clone(), upstreams.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), serve_tcp(conn, &c, &u)).await;
            });
        }
    });
    Ok(())
}

async fn serve_tcp(
    mut conn: tokio::net::TcpStream,
    cluster: &Cluster,
    upstreams: &[SocketAddr],
) -> std::io::Result<()> {
    loop {
        let len = usize::from(conn.read_u16().await?);
        let mut msg = vec![0u8; len];
        conn.read_exact(&mut msg).await?;
        let Some(answer) = handle(cluster, upstreams, &msg).await else {
            return Ok(());
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            return Ok(());
        };
        conn.write_u16(n).await?;
        conn.write_all(&answer).await?;
    }
}

/// Whether a query carries an EDNS OPT record (larger UDP answers allowed).
fn has_edns(msg: &[u8]) -> bool {
    u16_at(msg, 10).is_some_and(|ar| ar > 0)
}

/// The header and question of `answer` with TC set and no records.
fn truncated(answer: &[u8]) -> Vec<u8> {
    let Ok(q) = parse_query(&{
        let mut m = answer.to_vec();
        if m.len() > 2 {
            m[2] &= 0x7f; // parse as a query
        }
        m
    }) else {
        return answer[..answer.len().min(12)].to_vec();
    };
    let mut out = response(&q, Rcode::NoError, &[]);
    out[2] |= 0x02;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        encode_name(name, &mut m);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m
    }

    #[test]
    fn parses_and_answers() {
        let q = parse_query(&query("Web.Default.svc.cluster.local.", TYPE_A)).unwrap();
        assert_eq!(q.name, "web.default.svc.cluster.local");
        assert_eq!(q.id, 0x1234);
        let r = response(&q, Rcode::NoError, &[Record::A(Ipv4Addr::new(10, 96, 0, 5))]);
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0xf, 0);
        assert_eq!(u16_at(&r, 6), Some(1));
        assert_eq!(&r[r.len() - 4..], &[10, 96, 0, 5]);
    }

    #[test]
    fn names_map_to_lookups() {
        let c = Cluster::new();
        assert_eq!(lookup(&c, "example.com"), Lookup::External);
        assert_eq!(lookup(&c, "nope.default.svc.cluster.local"), Lookup::NxDomain);
        assert_eq!(lookup(&c, "a.b.c.cluster.local"), Lookup::NxDomain);
        assert_eq!(lookup(&c, "default.svc.cluster.local"), Lookup::Records(vec![]));
        assert_eq!(
            lookup(&c, "10-244-0-7.default.pod.cluster.local"),
            Lookup::Records(vec![Record::A(Ipv4Addr::new(10, 244, 0, 7))])
        );
        assert_eq!(lookup(&c, "notcluster.local"), Lookup::External);
    }

    /// Random and truncated messages never panic.
    #[test]
    fn garbage_never_panics() {
        let c = Cluster::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = query("web.default.svc.cluster.local", TYPE_A);
        for round in 0..20_000 {
            let len = (next() % 80) as usize;
            let mut msg: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // Mutations of a valid query reach deeper.
                msg = valid.clone();
                let flips = 1 + next() % 4;
                for _ in 0..flips {
                    let i = (next() as usize) % msg.len();
                    msg[i] = next() as u8;
                }
                msg.truncate((next() as usize) % (valid.len() + 1));
            }
            if let Ok(q) = parse_query(&msg) {
                let _ = answer_local(&c, &q);
                let _ = truncated(&response(&q, Rcode::NoError, &[Record::A(Ipv4Addr::LOCALHOST)]));
            }
        }
        for n in 0..valid.len() {
            let _ = parse_query(&valid[..n]);
        }
        // Pointers in a question are refused.
        let mut ptr = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1];
        assert!(matches!(parse_query(&ptr), Err(Some((1, _, Rcode::FormErr)))));
        ptr[2] = 0x81; // a response: ignored
        assert!(matches!(parse_query(&ptr), Err(None)));
    }
}
