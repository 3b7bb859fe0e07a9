//! The DNS names the proxy answers — its table, compiled from the
//! configuration's `dns.entries` into every snapshot — and the DNS message
//! format it needs: parsing a query's question, building answers and error
//! answers; and, for clients and tests, building a query and reading the
//! addresses of an answer; and DNS over TCP's framing (RFC 7766: a two-byte
//! length before each message), which the DNS proxy serves and its upstream
//! queries use.

use std::collections::HashMap;
use std::net::IpAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_contract::DnsConfig;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Short TTL: mesh addresses change with the config.
const TTL_SECONDS: u32 = 30;
/// Response code: server failure (no upstream answered).
pub const RCODE_SERVFAIL: u8 = 2;
/// Response code: format error (a query that does not parse).
pub const RCODE_FORMERR: u8 = 1;

/// A parsed question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Lower-case name without the trailing dot.
    pub name: String,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
    /// Byte offset where the question section ends.
    end: usize,
}

/// Parse the single question of a query. `None` = not a query we can parse.
pub fn parse_question(msg: &[u8]) -> Option<Question> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 {
        return None;
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qdcount != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        // Compression pointers do not occur in questions of queries.
        if len & 0xC0 != 0 || labels.len() > 127 {
            return None;
        }
        let label = msg.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(i + 2)?, *msg.get(i + 3)?]);
    Some(Question {
        name: labels.join("."),
        qtype,
        qclass,
        end: i + 4,
    })
}

/// The names the proxy answers.
#[derive(Debug, Default)]
pub struct DnsTable {
    names: HashMap<String, Vec<IpAddr>>,
}

impl DnsTable {
    /// Build from the contract.
    pub fn new(cfg: &DnsConfig) -> Self {
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for e in &cfg.entries {
            let addrs: Vec<IpAddr> = e.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            for n in std::iter::once(&e.hostname).chain(&e.aliases) {
                let key = n.trim_end_matches('.').to_ascii_lowercase();
                names.entry(key).or_default().extend(addrs.iter().copied());
            }
        }
        Self { names }
    }

    /// Answer locally, or `None` to forward.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let q = parse_question(query)?;
        let addrs = self.names.get(&q.name)?;
        if q.qclass != CLASS_IN {
            return None;
        }
        let records: Vec<&IpAddr> = addrs
            .iter()
            .filter(|a| matches!((q.qtype, a), (TYPE_A, IpAddr::V4(_)) | (TYPE_AAAA, IpAddr::V6(_))))
            .collect();
        // Known name: records of the asked type, or an empty NOERROR (NODATA).
        let mut out = response_header(query, 0, records.len() as u16);
        out.extend_from_slice(&query[12..q.end]);
        for a in records {
            out.extend_from_slice(&[0xC0, 0x0C]); // pointer to the question name
            match a {
                IpAddr::V4(v4) => {
                    out.extend_from_slice(&TYPE_A.to_be_bytes());
                    out.extend_from_slice(&CLASS_IN.to_be_bytes());
                    out.extend_from_slice(&TTL_SECONDS.to_be_bytes());
                    out.extend_from_slice(&4u16.to_be_bytes());
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.extend_from_slice(&TYPE_AAAA.to_be_bytes());
                    out.extend_from_slice(&CLASS_IN.to_be_bytes());
                    out.extend_from_slice(&TTL_SECONDS.to_be_bytes());
                    out.extend_from_slice(&16u16.to_be_bytes());
                    out.extend_from_slice(&v6.octets());
                }
            }
        }
        Some(out)
    }
}

pub(crate) fn response_header(query: &[u8], rcode: u8, answers: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&query[0..2]);
    // QR, opcode copied, AA, RD copied; RA; rcode.
    h.push(0x80 | (query[2] & 0x78) | 0x04 | (query[2] & 0x01));
    h.push(0x80 | (rcode & 0x0F));
    h.extend_from_slice(&1u16.to_be_bytes());
    h.extend_from_slice(&answers.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// An error answer: the question echoed when it parses, else the header alone
/// (QDCOUNT 0). Never for messages shorter than a header or for responses
/// (answering those could loop between two servers).
pub(crate) fn error_response(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let mut out = response_header(query, rcode, 0);
    match parse_question(query) {
        Some(q) => out.extend_from_slice(&query[12..q.end]),
        None => out[4..6].copy_from_slice(&0u16.to_be_bytes()),
    }
    Some(out)
}

/// Build a query (for tests and tools).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

/// Extract A/AAAA addresses from a response (for tests and tools).
pub fn answer_addresses(resp: &[u8]) -> Vec<IpAddr> {
    answer_records(resp).into_iter().map(|(ip, _)| ip).collect()
}

/// The A/AAAA records of a response: each address with its TTL in seconds.
pub fn answer_records(resp: &[u8]) -> Vec<(IpAddr, u32)> {
    let Some(q) = parse_question(&{
        // Parse the question as if it were a query.
        let mut m = resp.to_vec();
        if m.len() > 2 {
            m[2] &= 0x7F;
        }
        m
    }) else {
        return Vec::new();
    };
    let ancount = u16::from_be_bytes([resp[6], resp[7]]);
    let mut i = q.end;
    let mut out = Vec::new();
    for _ in 0..ancount {
        // Name: pointer (2 bytes) or labels.
        if resp.get(i).is_some_and(|b| b & 0xC0 == 0xC0) {
            i += 2;
        } else {
            while let Some(&len) = resp.get(i) {
                i += 1 + len as usize;
                if len == 0 {
                    break;
                }
            }
        }
        let Some(fixed) = resp.get(i..i + 10) else { break };
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let Some(data) = resp.get(i + 10..i + 10 + rdlen) else {
            break;
        };
        match (rtype, rdlen) {
            (TYPE_A, 4) => out.push((IpAddr::from([data[0], data[1], data[2], data[3]]), ttl)),
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                out.push((IpAddr::from(b), ttl));
            }
            _ => {}
        }
        i += 10 + rdlen;
    }
    out
}

/// Read one DNS-over-TCP message (two-byte big-endian length, then the message).
pub async fn read_framed<S: AsyncReadExt + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let len = s.read_u16().await? as usize;
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).await?;
    Ok(msg)
}

/// Write one DNS-over-TCP message.
pub async fn write_framed<S: AsyncWriteExt + Unpin>(s: &mut S, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "DNS message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    s.write_all(&framed).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_contract::DnsEntry;

    fn table() -> DnsTable {
        DnsTable::new(&DnsConfig {
            entries: vec![DnsEntry {
                hostname: "payment.shop.svc.cluster.local".into(),
                aliases: vec!["payment".into(), "payment.shop".into()],
                addresses: vec!["10.96.0.20".into(), "fd00::20".into()],
            }],
            upstreams: vec![],
        })
    }

    #[test]
    fn answers_a_and_aaaa_for_names_and_aliases() {
        let t = table();
        for name in ["payment.shop.svc.cluster.local", "PAYMENT.shop", "payment."] {
            let r = t.answer(&build_query(7, name, TYPE_A)).unwrap();
            assert_eq!(&r[..2], &7u16.to_be_bytes());
            assert_eq!(answer_addresses(&r), vec!["10.96.0.20".parse::<IpAddr>().unwrap()]);
        }
        let r = t.answer(&build_query(8, "payment", TYPE_AAAA)).unwrap();
        assert_eq!(answer_addresses(&r), vec!["fd00::20".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn known_name_other_type_is_nodata_and_unknown_is_forwarded() {
        let t = table();
        let r = t.answer(&build_query(9, "payment", 15)).unwrap();
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);
        assert_eq!(r[3] & 0x0F, 0, "NOERROR");
        assert!(t.answer(&build_query(9, "example.com", TYPE_A)).is_none());
    }

    #[test]
    fn malformed_queries_are_not_answered() {
        let t = table();
        assert!(t.answer(&[0u8; 5]).is_none());
        let mut q = build_query(1, "payment", TYPE_A);
        q.truncate(q.len() - 3);
        assert!(parse_question(&q).is_none());
        let mut q = build_query(1, "payment", TYPE_A);
        q[12] = 0xC0;
        assert!(parse_question(&q).is_none());
    }
}
