//! The server name (SNI) of a TLS ClientHello read from the first bytes a
//! client sent, without terminating TLS: what routes TLS by SNI through the
//! proxy untouched (VirtualService `tls` routes).
//!
//! # Guarantees
//! - Reads only the first handshake record (at most 5 + 16 384 bytes); every
//!   length is checked against what is there, so malformed input gives
//!   [`Sni::Invalid`], never a panic.
//!
//! # Caveats
//! - A ClientHello split over several records (legal, never seen from real
//!   clients for a hello this small) is [`Sni::Invalid`].

/// The largest TLS record payload (RFC 8446 §5.1).
pub const MAX_RECORD: usize = 16_384;
/// Bytes to peek for a whole first record.
pub const PEEK_BYTES: usize = 5 + MAX_RECORD;

/// What the first bytes say about the server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello, or a malformed one.
    Invalid,
    /// A ClientHello without a server name.
    None,
    /// The server name, lowercased.
    Name(String),
}

/// Parse the server name from the start of a connection.
pub fn parse(b: &[u8]) -> Sni {
    if b.len() < 5 {
        return if b.first().is_none_or(|t| *t == 0x16) {
            Sni::Incomplete
        } else {
            Sni::Invalid
        };
    }
    if b[0] != 0x16 || b[1] != 0x03 {
        return Sni::Invalid;
    }
    let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
    if len > MAX_RECORD {
        return Sni::Invalid;
    }
    let Some(record) = b.get(5..5 + len) else {
        return Sni::Incomplete;
    };
    hello(record).unwrap_or(Sni::Invalid)
}

/// A cursor over a byte slice whose reads fail past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    /// A vector with a length prefix of `width` bytes.
    fn vec(&mut self, width: usize) -> Option<Reader<'a>> {
        let n = if width == 1 { self.u8()? } else { self.u16()? };
        self.take(n).map(Reader)
    }
}

/// The handshake message in one record: a ClientHello (RFC 8446 §4.1.2) and
/// its `server_name` extension (RFC 6066 §3).
fn hello(record: &[u8]) -> Option<Sni> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let mut body = Reader(r.take(len)?);
    body.take(2 + 32)?; // legacy_version, random
    body.vec(1)?; // legacy_session_id
    body.vec(2)?; // cipher_suites
    body.vec(1)?; // legacy_compression_methods
    if body.0.is_empty() {
        return Some(Sni::None);
    }
    let mut extensions = body.vec(2)?;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vec(2)?;
        if kind != 0 {
            continue;
        }
        let mut names = data.vec(2)?;
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec(2)?.0;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
                {
                    return None;
                }
                return Some(Sni::Name(name.to_ascii_lowercase()));
            }
        }
        return Some(Sni::None);
    }
    Some(Sni::None)
}

/// Whether `name` matches a route's SNI host: exactly, or `*.suffix` for any
/// name ending in `.suffix`, or `*` for any.
pub fn host_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => suffix.starts_with('.') && name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The ClientHello rustls sends for `name`.
    pub(crate) fn client_hello(name: &str) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(crate::identity::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        let hello = client_hello("DB.Example.com");
        assert_eq!(parse(&hello), Sni::Name("db.example.com".into()));
        // Every prefix is incomplete, never a wrong answer.
        for n in 0..hello.len() {
            assert_eq!(parse(&hello[..n]), Sni::Incomplete, "prefix of {n} bytes");
        }
        // Underscores, as in the SNI Istio's AUTO_PASSTHROUGH routes on.
        assert_eq!(
            parse(&client_hello("outbound_.8080_._.web.shop.svc.cluster.local")),
            Sni::Name("outbound_.8080_._.web.shop.svc.cluster.local".into())
        );
        // An IP address sends no server name.
        assert_eq!(parse(&client_hello("10.0.0.7")), Sni::None);
    }

    #[test]
    fn anything_else_is_invalid_and_never_panics() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Sni::Invalid);
        assert_eq!(
            parse(&[0x16, 0x03, 0x01, 0xff, 0xff]),
            Sni::Invalid,
            "longer than a record"
        );
        let mut hello = client_hello("db.example.com");
        hello[5] = 2; // a ServerHello
        assert_eq!(parse(&hello), Sni::Invalid);
        // Corrupt every byte in turn: any answer but a panic.
        let hello = client_hello("db.example.com");
        for i in 5..hello.len() {
            let mut h = hello.clone();
            h[i] ^= 0xff;
            let _ = parse(&h);
        }
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("db.example.com", "db.example.com"));
        assert!(host_matches("*.example.com", "db.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "anything"));
        assert!(!host_matches("db.example.com", "api.example.com"));
    }
}
