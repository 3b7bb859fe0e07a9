//! ServiceEntry: hosts added to the mesh's service registry — services outside the mesh (an
//! external API, a database on a VM) or inside it without a Kubernetes Service — so sidecars
//! can route to them, VirtualServices and DestinationRules can target them, and
//! `outboundTrafficPolicy: REGISTRY_ONLY` lets traffic to them through.
//!
//! Istio equivalent: `networking.istio.io/v1 ServiceEntry` (fields and semantics of
//! `istio/api` `networking/v1alpha3/service_entry.proto`).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::schema::unsupported;
use crate::status::ConfigStatus;

/// Services added to the mesh's registry: their hosts, addresses, ports, where they are and
/// how their endpoints are found.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "networking.trellis.dev",
    version = "v1alpha1",
    kind = "ServiceEntry",
    doc = "Hosts added to the mesh's service registry: external services and mesh services without a Kubernetes Service (Istio ServiceEntry).",
    plural = "serviceentries",
    namespaced,
    shortname = "se",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Hosts", "type":"string", "jsonPath":".spec.hosts", "description":"The hosts of the entry"}"#,
    printcolumn = r#"{"name":"Location", "type":"string", "jsonPath":".spec.location", "description":"MESH_EXTERNAL or MESH_INTERNAL"}"#,
    printcolumn = r#"{"name":"Resolution", "type":"string", "jsonPath":".spec.resolution", "description":"How endpoints are found: NONE, STATIC, DNS or DNS_ROUND_ROBIN"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::cel::Rule::new("!(has(self.workloadSelector) && has(self.endpoints))")
        .message("only one of workloadSelector or endpoints can be set"),
    validation = kube::core::cel::Rule::new("(!has(self.resolution) || self.resolution == 'NONE') ? !has(self.endpoints) : true")
        .message("no endpoints should be provided for resolution NONE"),
    validation = kube::core::cel::Rule::new("(has(self.resolution) && self.resolution == 'DNS_ROUND_ROBIN') ? (!has(self.endpoints) || size(self.endpoints) <= 1) : true")
        .message("there must be 0 or 1 endpoint for resolution DNS_ROUND_ROBIN"),
    validation = kube::core::cel::Rule::new("!has(self.resolution) || self.resolution != 'DYNAMIC_DNS'")
        .field_path(".resolution")
        .message("resolution DYNAMIC_DNS is not supported by Trellis yet: list the hosts with resolution DNS, or use resolution NONE for a wildcard host (the application's own DNS answer is used)")
)]
// Istio's rule that CIDR addresses need resolution NONE or STATIC is the validator's alone: as
// CEL over an unbounded list of strings it exceeds the API server's cost budget 100×.
pub struct ServiceEntrySpec {
    /// The hosts of the service: FQDNs or wildcards such as `*.example.com` (not `*`). HTTP
    /// requests are matched on their Host header, TLS on its server name, against them;
    /// VirtualServices and DestinationRules select them by these names.
    #[schemars(length(min = 1, max = 256))]
    pub hosts: Vec<String>,
    /// Virtual IP addresses or CIDR blocks of the service: opaque TCP to them is routed to the
    /// entry, and the DNS proxy answers the hosts with them.
    pub addresses: Option<Vec<String>>,
    /// The ports of the service.
    pub ports: Option<Vec<ServicePort>>,
    /// Whether the service is outside the mesh (`MESH_EXTERNAL`, the default: plaintext unless
    /// a DestinationRule originates TLS) or part of it (`MESH_INTERNAL`: mutual TLS to the
    /// endpoints' identities).
    pub location: Option<Location>,
    /// How the endpoints are found (default `NONE`).
    pub resolution: Option<Resolution>,
    /// The endpoints (STATIC: IP addresses; DNS: host names or IP addresses).
    pub endpoints: Option<Vec<WorkloadEntry>>,
    /// Pods in the entry's namespace whose labels match are its endpoints (instead of
    /// `endpoints`).
    pub workload_selector: Option<EntryWorkloadSelector>,
    /// Namespaces the entry is visible to: `.` (own namespace), `*` (all), or names.
    pub export_to: Option<Vec<String>>,
    /// Identities the endpoints' certificates must carry (`MESH_INTERNAL`: SPIFFE IDs, in
    /// addition to the endpoints' service accounts).
    pub subject_alt_names: Option<Vec<String>>,
}

/// A port of a ServiceEntry.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port number, 1-65535.
    #[schemars(range(min = 1, max = 65535))]
    pub number: u32,
    /// Protocol: HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS (empty: detected).
    pub protocol: Option<String>,
    /// Name of the port (a DNS label); endpoints' `ports` refer to it.
    pub name: String,
    /// Port the endpoints receive the traffic on, when it differs from `number`.
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<u32>,
}

/// Where the service is.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no mutual TLS; traffic to it is not the mesh's workloads'.
    #[default]
    MeshExternal,
    /// Part of the mesh: its endpoints run proxies and are reached with mutual TLS.
    MeshInternal,
}

/// How a ServiceEntry's endpoints are found.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// None: a connection goes to the address the application dialled.
    #[default]
    None,
    /// The `endpoints`' IP addresses (or the pods `workloadSelector` picks).
    Static,
    /// The proxy resolves the endpoints' host names (or, without endpoints, the hosts) and
    /// balances over every address they resolve to.
    Dns,
    /// As DNS, but only the first address of each answer is used.
    DnsRoundRobin,
    /// Istio's resolution of the Host header's or SNI's name at request time, for wildcard
    /// hosts: not supported by Trellis yet (the validator refuses it).
    DynamicDns,
}

/// One endpoint of a ServiceEntry (Istio's WorkloadEntry fields).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("network", "remove it; Trellis has one network"),
    validation = unsupported("locality", "remove it; Trellis has no locality-aware load balancing yet")
)]
pub struct WorkloadEntry {
    /// IP address, or (resolution DNS) a fully qualified host name, without port.
    #[schemars(length(max = 256))]
    pub address: Option<String>,
    /// Port of this endpoint for each service port name (default: the service port's
    /// `targetPort`, else its number).
    pub ports: Option<BTreeMap<String, u32>>,
    /// Labels of the endpoint (DestinationRule subsets select on them).
    pub labels: Option<BTreeMap<String, String>>,
    /// Not supported by Trellis yet.
    pub network: Option<String>,
    /// Not supported by Trellis yet.
    pub locality: Option<String>,
    /// Load-balancing weight (default 1).
    pub weight: Option<u32>,
    /// Service account of the endpoint (`MESH_INTERNAL`: its identity, verified by mutual TLS).
    #[schemars(length(max = 253))]
    pub service_account: Option<String>,
}

/// Pods selected by labels.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EntryWorkloadSelector {
    /// Pods whose labels include all of these are selected.
    pub labels: Option<BTreeMap<String, String>>,
}
