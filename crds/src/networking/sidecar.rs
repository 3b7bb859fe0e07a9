//! Sidecar: what the sidecar proxies of a namespace (or of the workloads a selector picks) can
//! reach — the hosts their outbound listener routes, by the namespace that declares them — and
//! what they do with traffic to anything else.
//!
//! Its `ingress` listeners say how the proxies hand the traffic arriving for a port to the
//! application: the port's protocol and the application's address (`defaultEndpoint`).
//!
//! Which Sidecar applies to a proxy, as Istio decides: one of its namespace whose
//! `workloadSelector` selects the pod, else its namespace's Sidecar without a selector, else
//! the root namespace's Sidecar without a selector (the mesh default), else none (every host
//! the proxy can see).
//!
//! Istio equivalent: `networking.istio.io/v1 Sidecar` (fields and semantics of `istio/api`
//! `networking/v1alpha3/sidecar.proto`).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::mesh::OutboundTrafficPolicy;
use crate::networking::{ConnectionPoolSettings, ServerTlsSettings};
use crate::schema::unsupported;
use crate::status::ConfigStatus;

/// The reach of sidecar proxies: the hosts they route and their outbound traffic policy.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "networking.trellis.dev",
    version = "v1alpha1",
    kind = "Sidecar",
    doc = "What the sidecar proxies of a namespace or of selected workloads can reach, and what they do with traffic to anything else (Istio Sidecar).",
    plural = "sidecars",
    namespaced,
    // `sc` is StorageClass's.
    shortname = "sdc",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Selector", "type":"string", "jsonPath":".spec.workloadSelector.labels", "description":"The pods it applies to (none: the namespace's, or in the root namespace the mesh default)"}"#,
    printcolumn = r#"{"name":"Egress", "type":"string", "jsonPath":".spec.egress[*].hosts", "description":"The hosts the proxies route"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// The pods (in the Sidecar's namespace) it applies to; without it, every pod of the
    /// namespace that no selecting Sidecar picks (in the root namespace: the mesh default).
    pub workload_selector: Option<SidecarWorkloadSelector>,
    /// How the traffic arriving for a port is handed to the application: the port's
    /// protocol and the application's address. Ports it does not name keep what the
    /// workload's Services say (their target port, on localhost).
    pub ingress: Option<Vec<IngressListener>>,
    /// The hosts the proxies route, per port or for every port (the last listener, without
    /// `port`). Without it: every host the proxy can see.
    pub egress: Option<Vec<EgressListener>>,
    /// Limits of the connections and requests the proxies send the application, on every
    /// inbound port (an ingress listener's `connectionPool` replaces it for its port).
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// What the proxies do with traffic to hosts their listeners do not route; overrides the
    /// Mesh's `outboundTrafficPolicy`.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Pods selected by labels.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarWorkloadSelector {
    /// Pods whose labels include all of these are selected.
    pub labels: Option<BTreeMap<String, String>>,
}

/// The traffic arriving for one port of the workload, and where the proxy hands it over.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IngressListener {
    /// The port traffic arrives for (1-65535: the port clients address, the Services'
    /// target port) and its protocol.
    pub port: SidecarPort,
    /// Not supported by Trellis yet: the inbound listener takes the port on every address
    /// of the pod.
    pub bind: Option<String>,
    /// How the traffic reaches the proxy: `DEFAULT` and `IPTABLES` (captured by the pod's
    /// iptables rules) are what Trellis does; `NONE` is not supported yet.
    pub capture_mode: Option<CaptureMode>,
    /// Where the proxy hands the traffic over: `127.0.0.1:PORT` or `[::1]:PORT` (the
    /// application on localhost). Without it: `127.0.0.1` on the listener's port.
    pub default_endpoint: Option<String>,
    /// TLS terminated by the proxy on this port (Istio: SIMPLE or MUTUAL, with files).
    pub tls: Option<ServerTlsSettings>,
    /// Limits of the connections and requests sent to the application on this port;
    /// replaces `inboundConnectionPool` for it.
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// The hosts routed on one port (or on every port the other listeners do not name).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported(
    "bind",
    "remove it; the sidecar routes captured traffic on its outbound listener, on every address"
))]
pub struct EgressListener {
    /// The port whose traffic these hosts take, and its protocol; without it, the hosts are
    /// routed on every port of theirs no other listener names. At most one listener has no
    /// port, and it is the last.
    pub port: Option<SidecarPort>,
    /// Not supported by Trellis yet.
    pub bind: Option<String>,
    /// How the traffic reaches the proxy: `DEFAULT` and `IPTABLES` (captured by the pod's
    /// iptables rules) are what Trellis does; `NONE` is not supported yet.
    pub capture_mode: Option<CaptureMode>,
    /// The hosts, as `namespace/dnsName`: the namespace that declares the Service,
    /// ServiceEntry or VirtualService (`*` any, `.` the proxy's own, `~` none), and its host
    /// (an FQDN, `*.suffix`, or `*`).
    #[schemars(length(min = 1, max = 1024))]
    pub hosts: Vec<String>,
}

/// A port of an egress listener.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPort {
    /// Port number, 1-65535.
    #[schemars(range(min = 0, max = 65535))]
    pub number: u32,
    /// How traffic on the port is handled: HTTP, HTTP2, GRPC, GRPC-WEB (routed by request),
    /// HTTPS, TLS (by server name), TCP, MONGO, MYSQL, REDIS (opaque).
    pub protocol: Option<String>,
    /// Name of the port (a DNS label).
    pub name: Option<String>,
    /// Deprecated by Istio and without effect on Sidecars; refused.
    pub target_port: Option<u32>,
}

/// How traffic reaches an egress listener.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The pod's default capture (iptables, for Trellis).
    #[default]
    Default,
    /// Captured by iptables rules.
    Iptables,
    /// Not captured: the application addresses the listener. Not supported by Trellis yet.
    None,
}
