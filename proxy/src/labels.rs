//! The Istio labels of one request or connection, from what the proxy knows
//! about it: which side reports, who the client and the server are, the
//! destination service, and how the connection was secured. One function
//! serves HTTP and opaque TCP, so both fill the labels alike.
//!
//! | | reporter `source` (outbound, gateway) | reporter `destination` (inbound) |
//! |---|---|---|
//! | source | this proxy's workload (its principal only over mesh mTLS) | the verified peer metadata, else the verified identity's namespace and principal |
//! | destination | the endpoint picked, as the control plane described it | this proxy's workload |
//! | `destination_service` | the cluster's service | the inbound cluster's service |
//! | `connection_security_policy` | `unknown` | `mutual_tls` with a verified client certificate, else `none` |

use std::sync::Arc;

use http::StatusCode;
use trellis_contract::{ListenerDirection, SpiffeId, UpstreamTls};

use crate::metrics::{ConnLabels, Peer, Reporter, RequestLabels, Security};
use crate::snapshot::Snapshot;
use crate::upstream::ClusterRuntime;

/// What one request or connection met, as far as its labels go.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The listener's direction.
    pub direction: ListenerDirection,
    /// The client's verified SPIFFE identity (inbound mesh mTLS).
    pub peer_identity: Option<&'a str>,
    /// The cluster the request went to, if it got that far.
    pub cluster: Option<&'a ClusterRuntime>,
    /// The endpoint of that cluster it went to.
    pub endpoint: Option<usize>,
    /// Envoy-style response flags.
    pub flags: &'static str,
}

/// The labels of one connection (or of the connection part of a request's).
/// `source` is the verified peer metadata of an inbound client, if any.
pub fn conn(snap: &Snapshot, seen: &Observed<'_>, source: Option<Arc<Peer>>) -> ConnLabels {
    let destination_service = seen.cluster.map(|c| Arc::clone(&c.service_label)).unwrap_or_default();
    match seen.direction {
        ListenerDirection::Inbound => ConnLabels {
            reporter: Reporter::Destination,
            source: source.unwrap_or_else(|| Arc::new(identity_only(seen.peer_identity))),
            destination: Arc::clone(&snap.node),
            destination_service,
            response_flags: seen.flags,
            security: if seen.peer_identity.is_some() {
                Security::MutualTls
            } else {
                Security::None
            },
        },
        _ => {
            let mesh = seen
                .cluster
                .is_some_and(|c| matches!(c.spec.tls, UpstreamTls::Mesh { .. }));
            ConnLabels {
                reporter: Reporter::Source,
                // Istio names this proxy's principal only over mesh mTLS, where its certificate is shown.
                source: Arc::clone(if mesh { &snap.node } else { &snap.node_plaintext }),
                destination: seen
                    .cluster
                    .zip(seen.endpoint)
                    .and_then(|(c, i)| c.endpoints.get(i))
                    .map(|e| Arc::clone(&e.peer))
                    .unwrap_or_default(),
                destination_service,
                response_flags: seen.flags,
                security: Security::Unknown,
            }
        }
    }
}

/// The labels of one HTTP request. `grpc_status` is the response's
/// `grpc-status`, if it carried one.
pub fn request(
    snap: &Snapshot,
    seen: &Observed<'_>,
    source: Option<Arc<Peer>>,
    status: StatusCode,
    grpc: bool,
    grpc_status: Option<u32>,
) -> RequestLabels {
    RequestLabels {
        conn: conn(snap, seen, source),
        grpc,
        response_code: status.as_u16(),
        grpc_status: if grpc {
            grpc_status.or_else(|| grpc_status_of_http(status))
        } else {
            None
        },
    }
}

/// A client known only by its verified identity: its principal and the
/// namespace the identity names.
fn identity_only(principal: Option<&str>) -> Peer {
    let principal = principal.unwrap_or_default();
    Peer {
        namespace: SpiffeId::parse(principal)
            .ok()
            .and_then(|id| id.namespace().map(str::to_string))
            .unwrap_or_default(),
        principal: principal.to_string(),
        ..Peer::default()
    }
}

/// The gRPC status a gRPC client sees for an HTTP status that came without
/// `grpc-status` (the proxy's own errors, or a broken upstream), as gRPC's
/// HTTP-to-gRPC mapping says; none for a 200 that ended without one.
pub fn grpc_status_of_http(status: StatusCode) -> Option<u32> {
    match status.as_u16() {
        200 => None,
        400 => Some(13),             // INTERNAL
        401 => Some(16),             // UNAUTHENTICATED
        403 => Some(7),              // PERMISSION_DENIED
        404 => Some(12),             // UNIMPLEMENTED
        429 | 502..=504 => Some(14), // UNAVAILABLE
        _ => Some(2),                // UNKNOWN
    }
}

/// The `grpc-status` of a header map (response headers of a trailers-only
/// response, or trailers). A number outside gRPC's codes (0–16) reads as
/// UNKNOWN (2), as gRPC clients read it, so an upstream cannot open a
/// metric series per number it makes up.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|code| {
            u32::try_from(code)
                .ok()
                .filter(|c| *c <= MAX_GRPC_CODE)
                .unwrap_or(UNKNOWN_GRPC)
        })
}

/// The highest gRPC status code (UNAUTHENTICATED).
const MAX_GRPC_CODE: u32 = 16;
/// gRPC's UNKNOWN.
const UNKNOWN_GRPC: u32 = 2;

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_from_headers_and_from_http() {
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&h), Some(14));
        h.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&h), None);
        for made_up in ["17", "4294967295", "99999999999999"] {
            h.insert("grpc-status", http::HeaderValue::from_static(made_up));
            assert_eq!(grpc_status(&h), Some(2), "{made_up} reads as UNKNOWN");
        }
        assert_eq!(grpc_status_of_http(StatusCode::OK), None);
        assert_eq!(grpc_status_of_http(StatusCode::SERVICE_UNAVAILABLE), Some(14));
        assert_eq!(grpc_status_of_http(StatusCode::FORBIDDEN), Some(7));
        assert_eq!(grpc_status_of_http(StatusCode::INTERNAL_SERVER_ERROR), Some(2));
    }

    #[test]
    fn an_identity_without_metadata_still_names_its_namespace() {
        let p = identity_only(Some("spiffe://cluster.local/ns/shop/sa/web"));
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.principal, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(p.workload, "");
        assert_eq!(identity_only(None), Peer::default());
    }
}
