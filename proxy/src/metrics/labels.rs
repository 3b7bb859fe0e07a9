//! The labels of Istio's standard metrics: each side's identity ([`Peer`]), the reporter,
//! the connection's security, and how they are written in the Prometheus text.

use std::collections::BTreeMap;
use std::sync::Arc;

/// What a label nobody knows reads.
pub const UNKNOWN: &str = "unknown";
/// What a canonical revision nobody knows reads (Istio's default).
const LATEST: &str = "latest";

/// The pod label naming a workload's canonical service (Istio's).
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// The pod label naming a workload's canonical revision (Istio's).
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// The identity of one side of a request, as labels. Empty fields render as
/// `unknown` (a canonical revision as `latest`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Workload name.
    pub workload: String,
    /// Workload namespace.
    pub namespace: String,
    /// SPIFFE ID.
    pub principal: String,
    /// `app` label.
    pub app: String,
    /// `version` label.
    pub version: String,
    /// Canonical service ([`canonical_service`]).
    pub canonical_service: String,
    /// Canonical revision ([`canonical_revision`]).
    pub canonical_revision: String,
    /// Cluster id.
    pub cluster: String,
}

/// Only the workload and its namespace are hashed: peers equal in all their labels are equal in
/// those, and two that differ in the others alone (rare in one proxy's series) are told apart by
/// comparing them. why: every request's series is looked up by both peers' labels, and hashing
/// all eight strings of each was about 700 instructions of it.
impl std::hash::Hash for Peer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.workload.hash(state);
        self.namespace.hash(state);
    }
}

/// A workload's canonical service, as Istio derives it from its labels:
/// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else
/// `app`, else the workload's name.
pub fn canonical_service(labels: &BTreeMap<String, String>, workload: &str) -> String {
    [CANONICAL_NAME_LABEL, "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .map_or_else(|| workload.to_string(), Clone::clone)
}

/// A workload's canonical revision, as Istio derives it:
/// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`,
/// else `version`, else `latest`.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [CANONICAL_REVISION_LABEL, "app.kubernetes.io/version", "version"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .map_or_else(|| LATEST.to_string(), Clone::clone)
}

impl Peer {
    /// This proxy's own workload: the node the config describes, with the
    /// identity of its certificate.
    pub fn of_node(node: &trellis_contract::NodeInfo, principal: &str) -> Self {
        Self {
            workload: node.workload.clone(),
            namespace: node.namespace.clone(),
            principal: principal.to_string(),
            app: node.app.clone(),
            version: node.version.clone(),
            canonical_service: canonical_service(&node.labels, &node.workload),
            canonical_revision: canonical_revision(&node.labels),
            cluster: node.cluster.clone(),
        }
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { UNKNOWN } else { s }
}

/// Which proxy reports a series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client side: a sidecar's outbound listener, or a gateway.
    #[default]
    Source,
    /// The server side: a sidecar's inbound listener.
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// `connection_security_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Security {
    /// The server side verified the client's mesh certificate.
    MutualTls,
    /// The server side took a plaintext connection.
    None,
    /// The client side, which cannot know the server's policy (Istio's value there).
    #[default]
    Unknown,
}

impl Security {
    fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
            Self::Unknown => UNKNOWN,
        }
    }
}

/// Labels shared by HTTP and TCP series. The peers and the service are
/// shared, computed once per config (node, endpoints, clusters), so building
/// a request's labels allocates nothing on the client side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ConnLabels {
    /// Who reports.
    pub reporter: Reporter,
    /// The client.
    pub source: Arc<Peer>,
    /// The server.
    pub destination: Arc<Peer>,
    /// Destination service FQDN (empty: unknown).
    pub destination_service: Arc<str>,
    /// Envoy-style flags (`-`, `NR`, `UH`, `UF`, `URX`, `UT`, `UO`, `FI`, `DC`, …).
    pub response_flags: &'static str,
    /// `connection_security_policy`.
    pub security: Security,
}

/// Labels of one HTTP request series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    /// Connection-level labels.
    pub conn: ConnLabels,
    /// A gRPC request (`request_protocol` `grpc`, else `http`).
    pub grpc: bool,
    /// Status sent downstream.
    pub response_code: u16,
    /// The gRPC status of a gRPC response, when it carried one.
    pub grpc_status: Option<u32>,
}

/// Writes `key="value"` (escaped), comma-separated after the first.
pub(super) fn label(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(key);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `destination_service_name`: the Kubernetes Service's name for a
/// cluster-local FQDN (`name.ns.svc.…`), else the host itself.
fn service_name(host: &str) -> &str {
    match host.split_once('.') {
        Some((name, rest)) if rest.split('.').nth(1) == Some("svc") => name,
        _ => host,
    }
}

/// The workload labels of both sides and the destination service, in the
/// order Istio writes them.
fn peer_labels(out: &mut String, c: &ConnLabels) {
    let (s, d) = (&c.source, &c.destination);
    label(out, "reporter", c.reporter.as_str());
    label(out, "source_workload", or_unknown(&s.workload));
    label(out, "source_canonical_service", or_unknown(&s.canonical_service));
    label(out, "source_canonical_revision", revision(&s.canonical_revision));
    label(out, "source_workload_namespace", or_unknown(&s.namespace));
    label(out, "source_principal", or_unknown(&s.principal));
    label(out, "source_app", or_unknown(&s.app));
    label(out, "source_version", or_unknown(&s.version));
    label(out, "source_cluster", or_unknown(&s.cluster));
    label(out, "destination_workload", or_unknown(&d.workload));
    label(out, "destination_workload_namespace", or_unknown(&d.namespace));
    label(out, "destination_principal", or_unknown(&d.principal));
    label(out, "destination_app", or_unknown(&d.app));
    label(out, "destination_version", or_unknown(&d.version));
    let service = or_unknown(&c.destination_service);
    label(out, "destination_service", service);
    label(out, "destination_canonical_service", or_unknown(&d.canonical_service));
    label(out, "destination_canonical_revision", revision(&d.canonical_revision));
    label(out, "destination_service_name", service_name(service));
    // Istio's value: the destination workload's namespace on either side.
    label(out, "destination_service_namespace", or_unknown(&d.namespace));
    label(out, "destination_cluster", or_unknown(&d.cluster));
}

fn revision(r: &str) -> &str {
    if r.is_empty() { LATEST } else { r }
}

pub(super) fn request_labels(r: &RequestLabels) -> String {
    let mut out = String::with_capacity(900);
    peer_labels(&mut out, &r.conn);
    label(&mut out, "request_protocol", if r.grpc { "grpc" } else { "http" });
    label(&mut out, "response_code", &r.response_code.to_string());
    let grpc_status = r.grpc_status.map(|s| s.to_string()).unwrap_or_default();
    label(&mut out, "grpc_response_status", &grpc_status);
    label(&mut out, "response_flags", r.conn.response_flags);
    label(&mut out, "connection_security_policy", r.conn.security.as_str());
    out
}

pub(super) fn tcp_labels(c: &ConnLabels) -> String {
    let mut out = String::with_capacity(800);
    peer_labels(&mut out, c);
    label(&mut out, "request_protocol", "tcp");
    label(&mut out, "response_flags", c.response_flags);
    label(&mut out, "connection_security_policy", c.security.as_str());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_follow_istio_rules() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(canonical_service(&labels(&[]), "web-v1"), "web-v1");
        assert_eq!(canonical_service(&labels(&[("app", "web")]), "web-v1"), "web");
        assert_eq!(
            canonical_service(&labels(&[("app", "web"), ("app.kubernetes.io/name", "shop-web")]), "w"),
            "shop-web"
        );
        assert_eq!(
            canonical_service(&labels(&[("app", "web"), (CANONICAL_NAME_LABEL, "front")]), "w"),
            "front"
        );
        assert_eq!(canonical_revision(&labels(&[])), "latest");
        assert_eq!(canonical_revision(&labels(&[("version", "v2")])), "v2");
        assert_eq!(
            canonical_revision(&labels(&[("version", "v2"), (CANONICAL_REVISION_LABEL, "r7")])),
            "r7"
        );
    }

    #[test]
    fn service_names_and_escaping() {
        assert_eq!(service_name("payment.shop.svc.cluster.local"), "payment");
        assert_eq!(service_name("api.example.com"), "api.example.com");
        assert_eq!(service_name("unknown"), "unknown");
        let mut out = String::new();
        label(&mut out, "k", "a\"b\\c\nd");
        assert_eq!(out, "k=\"a\\\"b\\\\c\\nd\"");
    }
}
