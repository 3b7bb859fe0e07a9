//! The syntax of the names a configuration carries — HTTP header names and
//! tokens, DNS names, RFC 1123 labels and subdomains, CIDRs — and the headers a
//! route may not change. One definition, shared by the API validator
//! (`trellis-api`), the compiler and the proxy, so that what one accepts the
//! others accept too.

use std::fmt;
use std::net::IpAddr;

/// Hop-by-hop headers: they describe one connection and are never forwarded
/// (RFC 9110 §7.6.1, plus the legacy `keep-alive` and `proxy-connection`).
/// The proxy strips exactly these; a route may not set, add or remove them.
pub const HOP_BY_HOP_HEADERS: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

/// Which headers a header operation applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderDirection {
    /// Headers of the request sent upstream.
    Request,
    /// Headers of the response sent downstream.
    Response,
}

/// Why a route may not set, add or remove a header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtectedHeader {
    /// Not an RFC 9110 token.
    #[error("{0:?} is not a valid header name: use letters, digits and - (a token per RFC 9110)")]
    InvalidName(String),
    /// `:path`, `:authority`, ...
    #[error("pseudo-header {0:?} cannot be changed; use rewrite for the path or authority")]
    Pseudo(String),
    /// `host` of a request: the authority is what routes it.
    #[error("the Host header cannot be changed here; use rewrite.authority")]
    Host,
    /// Hop-by-hop and framing headers belong to the connection, not the message.
    #[error("{0:?} is managed by the proxy (hop-by-hop or message framing) and cannot be changed")]
    Managed(String),
}

/// Whether a route may set, add or remove the header `name` in `direction`.
/// The one rule for the validator, the contract and the proxy.
pub fn route_may_change(name: &str, direction: HeaderDirection) -> Result<(), ProtectedHeader> {
    if name.starts_with(':') {
        return Err(ProtectedHeader::Pseudo(name.to_string()));
    }
    if !is_header_name(name) {
        return Err(ProtectedHeader::InvalidName(name.to_string()));
    }
    let lower = name.to_ascii_lowercase();
    if direction == HeaderDirection::Request && lower == "host" {
        return Err(ProtectedHeader::Host);
    }
    if lower == "content-length" || HOP_BY_HOP_HEADERS.contains(&lower.as_str()) {
        return Err(ProtectedHeader::Managed(name.to_string()));
    }
    Ok(())
}

/// An RFC 9110 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An HTTP field name: a non-empty RFC 9110 token.
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// An HTTP field value a route may write: visible characters, spaces and tabs
/// (no CR, LF, NUL or other control characters, which would split or smuggle headers).
pub fn is_header_value(v: &str) -> bool {
    !v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// A host name as DNS carries it: dot-separated labels of letters, digits,
/// `-` and `_`, at most 63 bytes each and 253 in all, an optional final dot.
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An RFC 1123 label as Kubernetes names use it: 1–63 lower-case letters,
/// digits and `-`, starting and ending with a letter or digit.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain: dot-separated RFC 1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// An IP address or CIDR block (a bare address is a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

impl fmt::Display for HeaderDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Request => "request",
            Self::Response => "response",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HeaderDirection::{Request, Response};

    #[test]
    fn every_hop_by_hop_header_and_framing_is_protected_both_ways() {
        for name in HOP_BY_HOP_HEADERS
            .iter()
            .copied()
            .chain(["content-length", "TE", "Keep-Alive"])
        {
            for d in [Request, Response] {
                assert!(
                    matches!(route_may_change(name, d), Err(ProtectedHeader::Managed(_))),
                    "{name} {d}"
                );
            }
        }
    }

    #[test]
    fn host_is_protected_on_requests_only_and_pseudo_headers_always() {
        assert_eq!(route_may_change("Host", Request), Err(ProtectedHeader::Host));
        assert_eq!(route_may_change("host", Response), Ok(()));
        assert!(matches!(
            route_may_change(":path", Response),
            Err(ProtectedHeader::Pseudo(_))
        ));
        assert!(matches!(
            route_may_change("a b", Request),
            Err(ProtectedHeader::InvalidName(_))
        ));
        assert_eq!(route_may_change("x-user", Request), Ok(()));
    }

    #[test]
    fn names() {
        assert!(is_header_value("a\tb c"));
        assert!(!is_header_value("a\r\nx: y") && !is_header_value("\u{1}") && !is_header_value("\u{7f}"));
        assert!(is_dns_name("a_b.example.com."));
        assert!(!is_dns_name("-a.example.com"));
        assert!(is_dns1123_label("shop-1"));
        assert!(!is_dns1123_label("Shop"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert_eq!(parse_cidr("10.0.0.1").map(|n| n.prefix_len()), Some(32));
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }
}
