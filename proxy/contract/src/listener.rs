//! Listeners: the sockets a proxy binds, their protocol, TLS, limits, and the
//! routing tables (HTTP virtual hosts or opaque TCP routes) behind them.

use crate::identity::{CertificateRef, PemSource};
use crate::route::{Provenance, VirtualHost};
use serde::{Deserialize, Serialize};

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Unique name, e.g. `outbound`, `inbound`, `gateway-https-443`.
    pub name: String,
    /// Bind address, `ip:port` (e.g. `0.0.0.0:15001`).
    pub address: String,
    /// Traffic direction; decides which policies apply (inbound policy only on
    /// `inbound`) and the `reporter` metric label.
    pub direction: ListenerDirection,
    /// What protocol to expect on accepted connections.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Recover the original destination of redirected connections
    /// (`SO_ORIGINAL_DST`) and use its port for routing.
    #[serde(default)]
    pub transparent: bool,
    /// Terminate TLS (gateway servers). Inbound mesh mTLS is not configured here
    /// but by [`crate::InboundPolicy`]. With [`Listener::sni_tls`], this is the
    /// default for clients whose SNI matches no entry (or who send none); without
    /// it such clients are refused.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// TLS servers chosen by the client's SNI: Gateway servers on one port with
    /// different hosts and credentials (and modes). The most specific entry
    /// wins: an exact name, then the longest `*.` suffix, then `*`; `tls` serves
    /// the rest. Empty (the default) = `tls` for every client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_tls: Vec<SniTls>,
    /// HTTP routing table, evaluated by host (see [`VirtualHost::domains`]).
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Opaque TCP routes, first match wins; used for `tcp` listeners and for
    /// `auto` listeners when the traffic is not HTTP.
    #[serde(default)]
    pub tcp_routes: Vec<TcpRoute>,
    /// Hardening limits.
    #[serde(default)]
    pub limits: HttpLimits,
    /// Path normalization applied before routing and authorization.
    #[serde(default)]
    pub path_normalization: PathNormalization,
    /// What happens to traffic no virtual host or TCP route takes (Istio's
    /// `outboundTrafficPolicy` on the sidecar's outbound listener).
    #[serde(default, skip_serializing_if = "Unrouted::is_not_found")]
    pub unrouted: Unrouted,
    /// The resource that decided what this listener routes and its `unrouted` (a sidecar's
    /// outbound listener: the Istio `Sidecar` that applies to it); absent when none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Provenance>,
}

/// What a listener does with a request or connection none of its routes takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Unrouted {
    /// HTTP 404 (`no route`, flag `NR`); an opaque TCP connection is closed.
    #[default]
    NotFound,
    /// Forwarded to the address the client dialled, as Istio's `PassthroughCluster`
    /// (`outboundTrafficPolicy: ALLOW_ANY`): HTTP and opaque TCP alike, plaintext as sent.
    Passthrough,
    /// Refused as Istio's `BlackHoleCluster` (`outboundTrafficPolicy: REGISTRY_ONLY`):
    /// HTTP 502, an opaque TCP connection reset.
    BlackHole,
}

impl Unrouted {
    /// Whether this is [`Unrouted::NotFound`] (the default, not serialized).
    pub fn is_not_found(&self) -> bool {
        *self == Unrouted::NotFound
    }
}

/// Traffic direction of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerDirection {
    /// From the local app to the mesh.
    Outbound,
    /// From other proxies to the local app.
    Inbound,
    /// From outside the mesh, at a gateway.
    Gateway,
}

/// Protocol expected on a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN under TLS).
    Http,
    /// Opaque TCP, routed by [`Listener::tcp_routes`].
    Tcp,
    /// Sniff the first bytes (bounded by `limits.protocolDetectionTimeoutMs`):
    /// HTTP if they look like a request line or the HTTP/2 preface, TCP otherwise.
    /// On an `inbound` listener only where the destination port's protocol is not
    /// declared: a port only [`Listener::tcp_routes`] take is opaque TCP and one
    /// only HTTP routes take is HTTP, whatever the client sends (a Service port
    /// named `tcp-*` or `http-*`, or with an `appProtocol`); a port both take is
    /// sniffed.
    #[default]
    Auto,
}

/// TLS termination on a gateway listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTls {
    /// How clients are authenticated (see [`ServerTlsMode`]).
    pub mode: ServerTlsMode,
    /// The server certificate (Gateway `credentialName`, resolved by the operator);
    /// required, but for `istioMutual`, which serves the proxy's workload certificate
    /// (`identity.certificate`) and must have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateRef>,
    /// Roots that client certificates must chain to (`mutual` and `optionalMutual`;
    /// `istioMutual` uses `identity.trustBundle` and must have none).
    #[serde(default)]
    pub client_ca: Option<PemSource>,
    /// Certificate revocation lists (PEM, `X509 CRL`) of `clientCa`'s issuers (Gateway
    /// `caCrl`): a client certificate one of them revokes is refused. `mutual` and
    /// `optionalMutual` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_crl: Option<PemSource>,
    /// Names a client certificate must carry one of (Gateway `subjectAltNames`): a DNS
    /// name or IP address among its DNS/IP SANs (as a TLS client checks a server name,
    /// wildcard certificates included), anything else (a SPIFFE ID) exactly among its URI
    /// SANs. Empty: any verified certificate. `mutual`, `optionalMutual` and `istioMutual`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_subject_alt_names: Vec<String>,
    /// Lowest TLS version accepted (Gateway `minProtocolVersion`); `None`: TLS 1.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
    /// Highest TLS version accepted (Gateway `maxProtocolVersion`); `None`: TLS 1.3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<TlsVersion>,
    /// TLS 1.2 cipher suites accepted, by their OpenSSL names (Gateway `cipherSuites`,
    /// one of [`TLS12_CIPHER_SUITES`]), preferred in this order over the client's.
    /// Empty: all of them. TLS 1.3's suites are always offered (as in Envoy, where
    /// `cipher_suites` applies to TLS 1.2 and below only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// ALPN protocols offered, in order; default `h2`, `http/1.1`.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
}

/// A TLS protocol version a gateway server accepts (TLS 1.0 and 1.1 are never offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "tls1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "tls1.3")]
    Tls13,
}

/// The TLS 1.2 cipher suites the proxy implements (rustls), by their OpenSSL names, as
/// Istio and Envoy spell them in `cipherSuites`: ECDHE key exchange with AES-GCM or
/// ChaCha20-Poly1305 only (no CBC, no RSA key exchange, no 3DES).
pub const TLS12_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// A TLS server for the SNI names it lists (see [`Listener::sni_tls`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SniTls {
    /// Server names, case-insensitive, without port: exact (`shop.example.com`),
    /// a leading wildcard for any subdomain at any depth (`*.example.com`,
    /// like the virtual hosts' domains), or `*` for any name. A name may appear
    /// in one entry only.
    pub server_names: Vec<String>,
    /// Certificate, mode, client CA and ALPN for these names.
    pub tls: ServerTls,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".to_string(), "http/1.1".to_string()]
}

/// TLS mode of a gateway server (Istio's Gateway `tls.mode`s that terminate TLS; the
/// passthrough modes are [`TcpRoute`]s by SNI on a listener without `tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ServerTlsMode {
    /// Server-authenticated TLS.
    Simple,
    /// Client certificates required and verified against `clientCa`.
    Mutual,
    /// A client certificate is verified against `clientCa` when one is presented;
    /// clients without one are served too (Istio's `OPTIONAL_MUTUAL`).
    OptionalMutual,
    /// Mesh mTLS (Istio's `ISTIO_MUTUAL`): the proxy's workload certificate is
    /// served and a client certificate chaining to the mesh trust bundle is
    /// required; the client's SPIFFE ID is its principal for authorization.
    IstioMutual,
}

/// An opaque TCP route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    /// Match the original destination port (transparent) or listener port.
    #[serde(default)]
    pub destination_port: Option<u16>,
    /// Match the original destination address against these CIDRs (any).
    #[serde(default)]
    pub destination_cidrs: Vec<String>,
    /// Match the server name of the client's TLS ClientHello (exact, `*.suffix` or `*`;
    /// any): TLS passed through by SNI (VirtualService `tls` routes, Gateway
    /// `PASSTHROUGH` and `AUTO_PASSTHROUGH` servers). On a listener that terminates TLS,
    /// a connection whose SNI such a route matches is passed through untouched, the
    /// others are terminated; after termination routes match the SNI the client sent.
    /// Empty: any connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    /// On a listener that terminates TLS (`tls`, `sniTls`): the route takes connections
    /// before termination, by the SNI of their ClientHello, and passes their TLS through
    /// untouched (a Gateway `PASSTHROUGH` server sharing a port with terminating ones);
    /// the other routes take connections after termination. Ignored on listeners that
    /// terminate no TLS, where every route sees the connection as the client sent it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
    /// Cluster to forward to; empty when `weightedClusters` splits the connections.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// Clusters sharing the connections by weight (percent, summing to 100): each new
    /// connection goes to one of them (a VirtualService `tcp` route's weighted destinations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted_clusters: Vec<TcpWeightedCluster>,
    /// The resource that produced this route.
    #[serde(default)]
    pub provenance: Option<Provenance>,
}

/// A TCP destination and its share of connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpWeightedCluster {
    /// Cluster name.
    pub cluster: String,
    /// Share of new connections in percent.
    pub weight: u32,
}

impl TcpRoute {
    /// The clusters and their weights: `cluster` alone with 100, or `weightedClusters`.
    pub fn destinations(&self) -> Vec<(&str, u32)> {
        if self.weighted_clusters.is_empty() {
            vec![(self.cluster.as_str(), 100)]
        } else {
            self.weighted_clusters
                .iter()
                .map(|w| (w.cluster.as_str(), w.weight))
                .collect()
        }
    }
}

/// Hardening limits for a listener (Envoy's edge best practices are the
/// reference; defaults are safe for an edge proxy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpLimits {
    /// Maximum number of request headers.
    pub max_request_headers: u32,
    /// Maximum total size of request headers in bytes (also the HTTP/1 read
    /// buffer bound for the request head).
    pub max_request_header_bytes: u32,
    /// Maximum length of the request target (path and query) in bytes.
    pub max_uri_bytes: u32,
    /// Time allowed to receive a complete HTTP/1 request head (slowloris), from its first
    /// byte (Envoy's `request_headers_timeout`); the first request's from the start of the
    /// connection, so one that sends nothing is closed too. Also bounds the TLS handshake.
    pub header_read_timeout_ms: u64,
    /// Maximum request body size; `None` = unlimited (streamed).
    pub max_request_body_bytes: Option<u64>,
    /// Maximum concurrent downstream connections; `None` = unlimited.
    pub max_connections: Option<u32>,
    /// HTTP/2 maximum concurrent streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval; 0 disables.
    pub http2_keepalive_interval_ms: u64,
    /// Close a downstream HTTP connection with no request in flight for this long (Envoy's
    /// `idle_timeout`): HTTP/1 between requests, HTTP/2 with no stream open (keepalive PINGs
    /// are no request); 0 disables.
    pub idle_timeout_ms: u64,
    /// Reset an HTTP stream (request and response, upgraded connections
    /// included) when no bytes move in either direction for this long, also
    /// while waiting for the response headers: a request without a route
    /// timeout can never hang for ever. 504 with response flag `SI` when no
    /// response has started. Like Envoy's `stream_idle_timeout` (5 min);
    /// 0 disables.
    pub stream_idle_timeout_ms: u64,
    /// Close an opaque TCP connection when no bytes move in either direction
    /// for this long. Like Envoy's TCP proxy `idle_timeout` (1 h); 0 disables.
    pub tcp_idle_timeout_ms: u64,
    /// Time to wait for the first bytes on an `auto` listener before treating the
    /// connection as opaque TCP (server-first protocols send nothing).
    pub protocol_detection_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_request_headers: 100,
            max_request_header_bytes: 60 * 1024,
            max_uri_bytes: 8 * 1024,
            header_read_timeout_ms: 10_000,
            max_request_body_bytes: None,
            max_connections: None,
            http2_max_concurrent_streams: 100,
            http2_keepalive_interval_ms: 30_000,
            idle_timeout_ms: 300_000,
            stream_idle_timeout_ms: 300_000,
            tcp_idle_timeout_ms: 3_600_000,
            protocol_detection_timeout_ms: 100,
        }
    }
}

/// Path normalization policy, applied before routing and authorization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PathNormalization {
    /// Merge repeated slashes (`/a//b` → `/a/b`).
    pub merge_slashes: bool,
    /// What to do with `%2F` / `%5C` in the path.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathNormalization {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Policy for encoded slashes and backslashes in paths. Dot segments are always
/// removed (RFC 3986 §5.2.4) and unreserved percent-encodings always decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EscapedSlashes {
    /// Reject with 400: the safest choice, as apps disagree on their meaning and
    /// authorization by path could otherwise be bypassed.
    #[default]
    Reject,
    /// Leave them encoded (route and authorize on the encoded form).
    Keep,
    /// Decode them to `/` and `\` → `/`, then normalize again.
    Decode,
}
