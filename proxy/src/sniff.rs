//! Protocol sniffing: what a connection's first bytes say, read without consuming them — a
//! TLS ClientHello or not, HTTP or not, the server name a ClientHello asks for
//! ([`crate::client_hello`] parses it). The listeners ([`crate::server`]) choose how to serve a
//! connection by it; opaque TCP ([`crate::tcp`]) routes TLS by server name with it.

use crate::client_hello::{self, Sni};
use std::time::Duration;
use tokio::net::TcpStream;

/// Peek up to `n` bytes without consuming them, waiting at most `timeout`.
/// Returns what arrived (possibly fewer bytes, empty on EOF or timeout).
pub(crate) async fn peek_prefix(
    tcp: &TcpStream,
    n: usize,
    timeout: Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    loop {
        match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => {
                got = k;
                if k >= n || enough(&buf[..k]) {
                    break;
                }
                // Data is partial; peek returns at once, so wait a little before re-peeking.
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    buf.truncate(got);
    buf
}

/// A TLS handshake record starts with content type 22 and version 3.x.
pub(crate) fn is_tls_client_hello(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x16 && b[1] == 0x03
}

/// Does this look like the start of an HTTP/1 request or the HTTP/2 preface?
pub fn looks_like_http(b: &[u8]) -> bool {
    if b.starts_with(b"PRI * HTTP/2.0") {
        return true;
    }
    let method_len = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    (3..=10).contains(&method_len) && b.get(method_len) == Some(&b' ')
}

/// Whether the first bytes already decide [`looks_like_http`]: a byte that is not an
/// upper-case letter ends a method (or shows there is none).
pub(crate) fn http_decided(b: &[u8]) -> bool {
    b.iter().any(|c| !c.is_ascii_uppercase())
}

/// The server name of the TLS ClientHello `tcp` starts with, waiting at most `timeout` for the
/// whole first record; `None` when it is not a ClientHello, names no server or did not arrive.
pub(crate) async fn server_name(tcp: &TcpStream, timeout: Duration) -> Option<String> {
    let head = peek_prefix(tcp, client_hello::PEEK_BYTES, timeout, |b| {
        client_hello::parse(b) != Sni::Incomplete
    })
    .await;
    match client_hello::parse(&head) {
        Sni::Name(name) => Some(name),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_detection() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n"));
        assert!(looks_like_http(b"OPTIONS * HTTP/1.1"));
        assert!(!looks_like_http(b"\x16\x03\x01"));
        assert!(!looks_like_http(b"SSH-2.0-OpenSSH"));
        assert!(!looks_like_http(b""));
        assert!(is_tls_client_hello(b"\x16\x03\x01\x02"));
        assert!(!is_tls_client_hello(b"GE"));
    }
}
