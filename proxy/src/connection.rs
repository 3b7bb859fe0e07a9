//! A downstream connection as the request paths see it: its listener, addresses, the
//! verified peer and its TLS, and what its requests share — the HTTP/1 framing verdicts, the
//! count of requests in flight, the connection's timer, the peer metadata decoded once, the
//! `x-forwarded-client-cert` made once. The listeners ([`crate::server`]) make it; HTTP
//! ([`crate::http`]) and opaque TCP ([`crate::tcp`]) read it.

use crate::downstream_waits::Requests;
use crate::head::Verdicts;
use crate::idle::ConnTimer;
use crate::peer_metadata::FirstSource;
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use trellis_contract::ListenerDirection;

/// Everything known about the downstream connection.
#[derive(Debug, Clone)]
pub struct ConnContext {
    /// Listener name.
    pub listener: String,
    /// Direction of the listener.
    pub direction: ListenerDirection,
    /// Client address.
    pub peer: SocketAddr,
    /// Original (or local) destination.
    pub dst: SocketAddr,
    /// Whether `dst` is the original destination of a redirected connection
    /// (`SO_ORIGINAL_DST`), not the listener's own address.
    pub redirected: bool,
    /// Verified client SPIFFE ID (mesh mTLS).
    pub peer_identity: Option<String>,
    /// SHA-256 (hex) of the verified client's certificate (mesh mTLS).
    pub peer_cert_sha256: Option<String>,
    /// Was TLS terminated?
    pub tls: bool,
    /// The server name the client asked for in its TLS handshake (`connection.sni`).
    pub sni: Option<String>,
    /// HTTP/1 framing verdicts from the connection's [`crate::head::GuardedIo`].
    pub verdicts: Option<Arc<Verdicts>>,
    /// Its requests in flight (the idle timeout runs while there are none).
    pub requests: Arc<Requests>,
    /// The timer the connection lends to its requests, one wait at a time (for a response).
    pub timer: ConnTimer,
    /// The peer metadata its requests carried first (inbound mesh mTLS), decoded.
    pub first_source: FirstSource,
    /// Its requests' `x-forwarded-client-cert` (inbound mesh mTLS), made for the first
    /// identity of the proxy's own it was made for.
    pub xfcc: OnceLock<(String, Option<HeaderValue>)>,
    /// The metric series its last HTTP request was recorded into.
    pub request_series: crate::metrics::SeriesCache,
}

impl ConnContext {
    /// The address the client dialled, when the connection was redirected to the proxy.
    pub fn original_dst(&self) -> Option<SocketAddr> {
        self.redirected.then_some(self.dst)
    }
}
