//! `networking.trellis.dev/v1alpha1`: VirtualService, DestinationRule, Gateway, ServiceEntry
//! ([`service_entry`]) and Sidecar ([`sidecar`]).
//!
//! Field names, shapes and semantics follow Istio's `networking.istio.io/v1` API so that a
//! user's Istio YAML works by changing `apiVersion`. Fields Istio has and Trellis does not
//! implement yet are still declared here (so the API server keeps them instead of silently
//! pruning them) and are rejected by the validator and by CEL rules with a "not supported by
//! Trellis yet" error.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::schema::{preserve_unknown_object, unsupported};
use crate::status::ConfigStatus;

pub mod service_entry;
pub mod sidecar;
pub use service_entry::{
    EntryWorkloadSelector, Location, Resolution, ServiceEntry, ServiceEntrySpec, ServicePort, WorkloadEntry,
};
pub use sidecar::{
    CaptureMode, EgressListener, IngressListener, Sidecar, SidecarPort, SidecarSpec, SidecarWorkloadSelector,
};

/// API group of the traffic kinds.
pub const GROUP: &str = "networking.trellis.dev";

// ---------------------------------------------------------------------------------------------
// VirtualService
// ---------------------------------------------------------------------------------------------

/// How requests addressed to a set of hosts are routed: match conditions and the actions
/// (route, redirect, direct response, rewrite, retries, faults, mirroring, CORS) applied to them.
///
/// Istio equivalent: `networking.istio.io/v1 VirtualService`.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "networking.trellis.dev",
    version = "v1alpha1",
    kind = "VirtualService",
    doc = "How requests to a set of hosts are routed (Istio VirtualService).",
    plural = "virtualservices",
    namespaced,
    shortname = "vs",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Gateways", "type":"string", "jsonPath":".spec.gateways", "description":"The gateways this routing applies to"}"#,
    printcolumn = r#"{"name":"Hosts", "type":"string", "jsonPath":".spec.hosts", "description":"The destination hosts this routing applies to"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// Destination hosts the rules apply to: short names (resolved in the resource's
    /// namespace), FQDNs, or wildcards such as `*.example.com`.
    pub hosts: Option<Vec<String>>,
    /// Gateways (`namespace/name` or `name`) and/or the reserved `mesh` (all sidecars) this
    /// applies to. Empty means `mesh`.
    pub gateways: Option<Vec<String>>,
    /// Ordered HTTP routing rules; the first match wins.
    pub http: Option<Vec<HttpRoute>>,
    /// Ordered rules for TLS/HTTPS passthrough traffic, matched on SNI.
    pub tls: Option<Vec<TlsRoute>>,
    /// Ordered rules for opaque TCP traffic.
    pub tcp: Option<Vec<TcpRoute>>,
    /// Namespaces this VirtualService is visible to: `.` (own namespace), `*` (all), or names.
    pub export_to: Option<Vec<String>>,
}

/// The fix of Istio's deprecated integer mirror percentages.
pub(crate) const MIRROR_PERCENTAGE_FIX: &str = "use mirrorPercentage: {value: N}";

/// One HTTP routing rule: conditions plus what to do with a matching request.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("delegate", "inline the delegate VirtualService's routes into this one"),
    validation = unsupported("mirrorPercent", MIRROR_PERCENTAGE_FIX),
    validation = unsupported("mirror_percent", MIRROR_PERCENTAGE_FIX)
)]
pub struct HttpRoute {
    /// Name of the route, used in logs, metrics and `meshctl proxy-config`.
    pub name: Option<String>,
    /// Conditions; any one of them matching (OR) selects this rule. Empty matches everything.
    #[serde(rename = "match")]
    pub matches: Option<Vec<HttpMatchRequest>>,
    /// Weighted destinations. Mutually exclusive with `redirect` and `directResponse`.
    pub route: Option<Vec<HttpRouteDestination>>,
    /// Reply with an HTTP redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Reply directly with a fixed status and body.
    pub direct_response: Option<HttpDirectResponse>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub delegate: Option<serde_json::Value>,
    /// Rewrite the URI and/or authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Overall request timeout, e.g. `2s` or `500ms`.
    pub timeout: Option<String>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection (delays and aborts) for testing resilience.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror (shadow) traffic to a destination; responses are discarded.
    pub mirror: Option<Destination>,
    /// Percentage of traffic mirrored to `mirror` (default 100).
    pub mirror_percentage: Option<Percent>,
    /// Not supported by Trellis yet (deprecated in Istio): use `mirrorPercentage`.
    pub mirror_percent: Option<u32>,
    /// Not supported by Trellis yet: Istio's other spelling of `mirrorPercent` (refused by
    /// the validator too: offline CEL does not see a key with `_`).
    #[serde(rename = "mirror_percent")]
    pub mirror_percent_snake_case: Option<u32>,
    /// Several mirror destinations, each with its own percentage.
    pub mirrors: Option<Vec<HttpMirrorPolicy>>,
    /// Cross-origin resource sharing policy.
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation on requests and responses.
    pub headers: Option<Headers>,
}

/// Conditions on a request; all fields given must match (AND).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported("statPrefix", "remove it; Trellis reports per-route metrics by route name"))]
pub struct HttpMatchRequest {
    /// Name of the match, appended to the route name in logs.
    pub name: Option<String>,
    /// URI (path) match.
    pub uri: Option<StringMatch>,
    /// URI scheme match (`http`, `https`).
    pub scheme: Option<StringMatch>,
    /// HTTP method match (`GET`, `POST`, ...).
    pub method: Option<StringMatch>,
    /// Authority (`Host` header) match.
    pub authority: Option<StringMatch>,
    /// Header matches, keyed by lower-case header name.
    pub headers: Option<BTreeMap<String, StringMatch>>,
    /// Port the request was addressed to.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// Labels of the calling workload (sidecars only).
    pub source_labels: Option<BTreeMap<String, String>>,
    /// Gateways this match applies to, overriding the VirtualService's `gateways`.
    pub gateways: Option<Vec<String>>,
    /// Query parameter matches.
    pub query_params: Option<BTreeMap<String, StringMatch>>,
    /// Match the URI case-insensitively.
    pub ignore_uri_case: Option<bool>,
    /// Headers that must NOT match.
    pub without_headers: Option<BTreeMap<String, StringMatch>>,
    /// Namespace of the calling workload (sidecars only).
    pub source_namespace: Option<String>,
    /// Not supported by Trellis yet.
    pub stat_prefix: Option<String>,
}

/// A string condition: exactly one of `exact`, `prefix` or `regex` (RE2 syntax, full match).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
// The count is a sum, not `[…].filter(x, x).size()`: the API server estimates a rule's cost
// times how many times it can run (StringMatch sits in unbounded lists and maps), and
// rejects the CRD when that exceeds its budget; the filter form exceeded it 7×.
#[x_kube(validation = kube::core::cel::Rule::new(
    "(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + (has(self.regex) ? 1 : 0) <= 1"
).message("set only one of exact, prefix or regex"))]
pub struct StringMatch {
    /// The whole value equals this string.
    pub exact: Option<String>,
    /// The value starts with this string.
    pub prefix: Option<String>,
    /// The whole value matches this RE2 regular expression.
    pub regex: Option<String>,
}

/// A weighted destination of an HTTP route.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Share of traffic, 0-100. With several destinations the weights must sum to 100.
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<i32>,
    /// Header manipulation applied only when this destination is chosen.
    pub headers: Option<Headers>,
}

/// A service (and optionally a subset and port) that traffic is sent to.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Service host: a short name resolved in the resource's namespace, or an FQDN.
    pub host: String,
    /// Subset name, defined in a DestinationRule for this host.
    pub subset: Option<String>,
    /// Port on the destination host; required when the service exposes several ports.
    pub port: Option<PortSelector>,
}

/// A port number.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    /// The port number, 1-65535.
    #[schemars(range(min = 1, max = 65535))]
    pub number: u32,
}

/// Header operations for requests and responses.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    /// Applied to the request before it is forwarded.
    pub request: Option<HeaderOperations>,
    /// Applied to the response before it is returned.
    pub response: Option<HeaderOperations>,
}

/// Set, add and remove headers.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperations {
    /// Overwrite these headers.
    pub set: Option<BTreeMap<String, String>>,
    /// Append these headers.
    pub add: Option<BTreeMap<String, String>>,
    /// Remove these headers.
    pub remove: Option<Vec<String>>,
}

/// An HTTP redirect.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::cel::Rule::new("!(has(self.port) && has(self.derivePort))")
        .message("set only one of port or derivePort")
)]
pub struct HttpRedirect {
    /// Replace the path with this value.
    pub uri: Option<String>,
    /// Replace the authority (host) with this value.
    pub authority: Option<String>,
    /// Replace the port with this value.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// Derive the port from the protocol default or from the request.
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme (`http` or `https`).
    pub scheme: Option<String>,
    /// Status code: 301, 302, 303, 307 or 308 (default 301).
    pub redirect_code: Option<u32>,
    /// Replace the prefix the route's `uri` prefix match matched with this value (the query is
    /// kept): with a match on prefix `/old`, `/old/a?q=1` is redirected to `/new/a?q=1` by
    /// `prefixRewrite: /new`. Only under prefix matches; not with `uri`.
    pub prefix_rewrite: Option<String>,
}

/// How a redirect picks its port.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// Keep the port the request arrived on.
    FromRequestPort,
}

/// A fixed response.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpDirectResponse {
    /// Status code, 200-599.
    #[schemars(range(min = 200, max = 599))]
    pub status: u32,
    /// Optional body.
    pub body: Option<HttpBody>,
}

/// A response body: exactly one of `string` or `bytes` (base64).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::cel::Rule::new("!(has(self.string) && has(self.bytes))")
    .message("set only one of string or bytes"))]
pub struct HttpBody {
    /// Body as text.
    pub string: Option<String>,
    /// Body as base64-encoded bytes.
    pub bytes: Option<String>,
}

impl HttpBody {
    /// `bytes` decoded (standard alphabet, padding optional, whitespace ignored): `None` when
    /// unset, `Some(Err(_))` when it is not base64. The one decoding the validator and the
    /// compiler share.
    pub fn decoded_bytes(&self) -> Option<Result<Vec<u8>, base64::DecodeError>> {
        use base64::Engine as _;
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        const ENGINE: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let raw = self.bytes.as_ref()?;
        let clean: String = raw.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        Some(ENGINE.decode(clean))
    }
}

/// URI and authority rewrites before forwarding.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::cel::Rule::new("!(has(self.uri) && has(self.uriRegexRewrite))")
    .message("set only one of uri or uriRegexRewrite"))]
pub struct HttpRewrite {
    /// Replace the matched prefix (or the whole path for exact/regex matches) with this.
    pub uri: Option<String>,
    /// Replace the authority (host) header.
    pub authority: Option<String>,
    /// Rewrite the path with a regular expression and a replacement (`\1` references groups).
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regex rewrite.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegexRewrite {
    /// RE2 regular expression.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Replacement, with `\1`..`\9` for capture groups.
    pub rewrite: String,
}

/// Retry policy for HTTP requests.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("retryRemoteLocalities", "remove it; Trellis has no locality-aware retries yet"),
    // why: Trellis always does what `true` (Istio's default) asks; only `false` is refused.
    validation = kube::core::cel::Rule::new("!has(self.retryIgnorePreviousHosts) || self.retryIgnorePreviousHosts != false")
        .field_path(".retryIgnorePreviousHosts")
        .message(format!(
            "retryIgnorePreviousHosts: false {}: a retry always goes to another endpoint when there is one; remove the field",
            crate::schema::NOT_SUPPORTED
        ).as_str())
)]
pub struct HttpRetry {
    /// Number of retries (not counting the first try), 0-10.
    #[schemars(range(min = 0, max = 10))]
    pub attempts: Option<i32>,
    /// Timeout of each try, e.g. `2s`.
    pub per_try_timeout: Option<String>,
    /// Comma-separated conditions: `5xx`, `gateway-error`, `reset`, `connect-failure`,
    /// `retriable-4xx`, `refused-stream`, `retriable-status-codes`, or status codes.
    pub retry_on: Option<String>,
    /// Base interval of the exponential backoff between tries (default 25ms).
    pub backoff: Option<String>,
    /// Not supported by Trellis yet.
    pub retry_remote_localities: Option<bool>,
    /// Whether a retry avoids the endpoints already tried (default and only supported value:
    /// `true`; a retry goes back to a tried endpoint only when no other is healthy).
    pub retry_ignore_previous_hosts: Option<bool>,
}

/// Fault injection.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpFaultInjection {
    /// Delay requests before forwarding.
    pub delay: Option<FaultDelay>,
    /// Abort requests with an error status.
    pub abort: Option<FaultAbort>,
}

/// A fixed delay applied to a percentage of requests.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("exponentialDelay", "use fixedDelay"),
    validation = unsupported("percent", "use percentage: {value: N}")
)]
pub struct FaultDelay {
    /// How long to delay, e.g. `5s`.
    pub fixed_delay: Option<String>,
    /// Not supported by Trellis yet.
    pub exponential_delay: Option<String>,
    /// Share of requests delayed (default 100).
    pub percentage: Option<Percent>,
    /// Not supported by Trellis yet (deprecated in Istio): use `percentage`.
    pub percent: Option<i32>,
}

/// An abort applied to a percentage of requests.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("grpcStatus", "use httpStatus"),
    validation = unsupported("http2Error", "use httpStatus")
)]
pub struct FaultAbort {
    /// HTTP status to return, 200-599.
    #[schemars(range(min = 200, max = 599))]
    pub http_status: Option<u32>,
    /// Not supported by Trellis yet.
    pub grpc_status: Option<String>,
    /// Not supported by Trellis yet.
    pub http2_error: Option<String>,
    /// Share of requests aborted (default 100).
    pub percentage: Option<Percent>,
}

/// A percentage, 0.0-100.0.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Percent {
    /// The percentage, 0.0-100.0.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub value: f64,
}

/// A mirror destination with its own percentage.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    /// Where mirrored requests go.
    pub destination: Destination,
    /// Share of requests mirrored (default 100).
    pub percentage: Option<Percent>,
}

/// Cross-origin resource sharing.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported("allowOrigin", "use allowOrigins: [{exact: ORIGIN}]"))]
pub struct CorsPolicy {
    /// Origins allowed to make requests.
    pub allow_origins: Option<Vec<StringMatch>>,
    /// Not supported by Trellis yet (deprecated in Istio): use `allowOrigins`.
    pub allow_origin: Option<Vec<String>>,
    /// Methods allowed (`Access-Control-Allow-Methods`).
    pub allow_methods: Option<Vec<String>>,
    /// Headers allowed (`Access-Control-Allow-Headers`).
    pub allow_headers: Option<Vec<String>>,
    /// Headers exposed to the browser (`Access-Control-Expose-Headers`).
    pub expose_headers: Option<Vec<String>>,
    /// How long preflight results may be cached, e.g. `24h`.
    pub max_age: Option<String>,
    /// Whether credentials may be sent.
    pub allow_credentials: Option<bool>,
    /// What to do with preflight requests whose origin does not match.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// Handling of preflight requests that match no allowed origin.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Istio's default, `UNSPECIFIED`: behaves as FORWARD. (`UNSPECIFIED_BEHAVIOR`, which
    /// Trellis wrongly took for it before, is still read from objects already stored.)
    #[serde(alias = "UNSPECIFIED_BEHAVIOR")]
    Unspecified,
    /// Forward the preflight to the upstream.
    Forward,
    /// Answer the preflight without CORS headers.
    Ignore,
}

/// A TLS (SNI-based) routing rule.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    /// Conditions; any one matching selects this rule.
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    pub route: Option<Vec<RouteDestination>>,
}

/// Conditions on a TLS connection.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    /// SNI values to match (wildcards allowed); required.
    pub sni_hosts: Vec<String>,
    /// Destination IPs or CIDRs.
    pub destination_subnets: Option<Vec<String>>,
    /// Destination port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// Labels of the calling workload.
    pub source_labels: Option<BTreeMap<String, String>>,
    /// Gateways this match applies to.
    pub gateways: Option<Vec<String>>,
    /// Namespace of the calling workload.
    pub source_namespace: Option<String>,
}

/// An opaque TCP routing rule.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    /// Conditions; any one matching selects this rule.
    #[serde(rename = "match")]
    pub matches: Option<Vec<L4MatchAttributes>>,
    /// Weighted destinations.
    pub route: Option<Vec<RouteDestination>>,
}

/// Conditions on a TCP connection.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported("sourceSubnet", "match the caller with sourceLabels or sourceNamespace"))]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDRs.
    pub destination_subnets: Option<Vec<String>>,
    /// Destination port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// Labels of the calling workload.
    pub source_labels: Option<BTreeMap<String, String>>,
    /// Gateways this match applies to.
    pub gateways: Option<Vec<String>>,
    /// Namespace of the calling workload.
    pub source_namespace: Option<String>,
    /// Not supported by Trellis yet.
    pub source_subnet: Option<String>,
}

/// A weighted destination for TLS and TCP routes.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Share of connections, 0-100.
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<i32>,
}

// ---------------------------------------------------------------------------------------------
// DestinationRule
// ---------------------------------------------------------------------------------------------

/// Policies applied to traffic for a service after routing: load balancing, connection pools,
/// outlier detection, TLS, and the named subsets (versions) VirtualServices route to.
///
/// Istio equivalent: `networking.istio.io/v1 DestinationRule`.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "networking.trellis.dev",
    version = "v1alpha1",
    kind = "DestinationRule",
    doc = "Policies for traffic to a service after routing, and its subsets (Istio DestinationRule).",
    plural = "destinationrules",
    namespaced,
    shortname = "dr",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Host", "type":"string", "jsonPath":".spec.host", "description":"The service this rule applies to"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported("workloadSelector", "remove it; a DestinationRule applies to all clients in its scope"))]
pub struct DestinationRuleSpec {
    /// The service: a short name resolved in the resource's namespace, or an FQDN.
    pub host: String,
    /// Policy for all traffic to the host.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named sets of endpoints selected by labels (e.g. versions).
    pub subsets: Option<Vec<Subset>>,
    /// Namespaces this rule is visible to: `.`, `*`, or names.
    pub export_to: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub workload_selector: Option<serde_json::Value>,
}

/// Traffic policy for a host, subset or port.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("tunnel", "remove it; Trellis does not tunnel over HTTP CONNECT yet"),
    validation = unsupported("proxyProtocol", "remove it; Trellis does not send PROXY protocol headers yet")
)]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking: eject endpoints that keep failing.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS used when connecting to the host.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides.
    pub port_level_settings: Option<Vec<PortTrafficPolicy>>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub tunnel: Option<serde_json::Value>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub proxy_protocol: Option<serde_json::Value>,
    /// Retries in flight to the host bounded by a share of its requests, in place of
    /// `connectionPool.http.maxRetries` (Envoy's retry budget).
    pub retry_budget: Option<RetryBudget>,
}

/// Retries allowed in flight as a share of the requests active and waiting on the host
/// (Istio's `TrafficPolicy.RetryBudget`, Envoy's circuit breakers' `retry_budget`).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported(
    "budgetInterval",
    "remove it; the budget counts the requests active and waiting when a retry is decided, as Envoy does without an interval"
))]
pub struct RetryBudget {
    /// Share of the active requests that may be retries, 0-100 (Istio's default 20).
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    /// Retries always allowed whatever the share (Istio's default 3).
    pub min_retry_concurrency: Option<u32>,
    /// Not supported by Trellis yet.
    pub budget_interval: Option<String>,
}

/// A traffic policy for one port.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The port this policy applies to.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS used when connecting.
    pub tls: Option<ClientTlsSettings>,
}

/// A named subset of a service's endpoints.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Subset name, referenced by `destination.subset` (a DNS label such as `v1`).
    pub name: String,
    /// Endpoint labels that select the subset's pods.
    pub labels: Option<BTreeMap<String, String>>,
    /// Policy overriding the rule's for this subset.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing: exactly one of `simple` or `consistentHash`.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::cel::Rule::new("!(has(self.simple) && has(self.consistentHash))")
        .message("set only one of simple or consistentHash"),
    validation = unsupported("localityLbSetting", "remove it; Trellis is not locality-aware yet"),
    validation = unsupported("zoneAwareLbSetting", "remove it; Trellis is not locality-aware yet")
)]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Session affinity by hashing a request property.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub locality_lb_setting: Option<serde_json::Value>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub zone_aware_lb_setting: Option<serde_json::Value>,
    /// Ramp traffic up to new endpoints over this duration (e.g. `60s`).
    pub warmup_duration_secs: Option<String>,
    /// Ramp traffic up to new endpoints.
    pub warmup: Option<WarmupConfiguration>,
}

/// Simple load-balancing algorithms.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Unspecified: the proxy's default (least request).
    Unspecified,
    /// Least request (deprecated name).
    LeastConn,
    /// Pick endpoints at random.
    Random,
    /// Forward to the address the caller asked for, without load balancing.
    Passthrough,
    /// Each endpoint in turn.
    RoundRobin,
    /// The lighter of two random endpoints (power of two choices).
    LeastRequest,
}

/// Consistent hashing: exactly one hash key, and optionally the ring algorithm.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    // A sum, not `[…].filter(x, x).size()`: see StringMatch (the filter form exceeded the API
    // server's cost budget 8.7×).
    validation = kube::core::cel::Rule::new(
        "(has(self.httpHeaderName) ? 1 : 0) + (has(self.httpCookie) ? 1 : 0) + (has(self.useSourceIp) ? 1 : 0) + (has(self.httpQueryParameterName) ? 1 : 0) == 1"
    ).message("set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName"),
    validation = kube::core::cel::Rule::new("!(has(self.ringHash) && has(self.maglev))")
        .message("set only one of ringHash or maglev"),
    validation = unsupported("minimumRingSize", "use ringHash: {minimumRingSize: N}")
)]
pub struct ConsistentHashLb {
    /// Hash on this request header.
    pub http_header_name: Option<String>,
    /// Hash on this cookie (generated when absent if a `ttl` is given).
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the client's IP address.
    pub use_source_ip: Option<bool>,
    /// Hash on this query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Use a ring hash (the default).
    pub ring_hash: Option<RingHash>,
    /// Use Maglev.
    pub maglev: Option<MagLev>,
    /// Not supported by Trellis yet (deprecated in Istio): use `ringHash.minimumRingSize`.
    pub minimum_ring_size: Option<u64>,
}

/// A cookie used as a hash key.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported(
    "attributes",
    "remove it; Trellis generates no cookie to give attributes to (ttl is not supported yet either): the application sets the cookie"
))]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime of a generated cookie, e.g. `1h`.
    pub ttl: Option<String>,
    /// Not supported by Trellis yet.
    pub attributes: Option<Vec<CookieAttribute>>,
}

/// An attribute of a generated cookie (Istio's `HTTPCookie.Attribute`; refused).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CookieAttribute {
    /// Attribute name, e.g. `SameSite`.
    pub name: String,
    /// Attribute value, e.g. `Strict`.
    pub value: Option<String>,
}

/// Ring hash settings.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    /// Minimum number of virtual nodes on the ring (default 1024, at most 8M).
    #[schemars(range(min = 1, max = 8388608))]
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MagLev {
    /// Lookup table size; must be prime (default 65537).
    #[schemars(range(min = 1, max = 5000011))]
    pub table_size: Option<u64>,
}

/// Slow start for new endpoints.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WarmupConfiguration {
    /// Length of the warm-up window, e.g. `60s`.
    pub duration: String,
    /// Traffic share a new endpoint starts with, 0-100 (default 10).
    pub minimum_percent: Option<f64>,
    /// Curve of the ramp, at least 1.0 (1.0 = linear).
    pub aggression: Option<f64>,
}

/// Connection pool limits.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    /// TCP-level limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP-level limits.
    pub http: Option<HttpSettings>,
}

/// TCP-level connection pool limits.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// Maximum connections to each endpoint... of the destination host in total.
    #[schemars(range(min = 1))]
    pub max_connections: Option<i32>,
    /// TCP connect timeout, e.g. `1s`.
    pub connect_timeout: Option<String>,
    /// TCP keepalive probes.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Close connections after this long, e.g. `1h`.
    pub max_connection_duration: Option<String>,
    /// Close connections idle this long, e.g. `1h`.
    pub idle_timeout: Option<String>,
}

/// TCP keepalive settings.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dead.
    #[schemars(range(min = 1))]
    pub probes: Option<u32>,
    /// Idle time before the first probe, e.g. `2h`.
    pub time: Option<String>,
    /// Time between probes, e.g. `75s`.
    pub interval: Option<String>,
}

/// HTTP-level connection pool limits.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    /// Maximum requests queued while waiting for a connection.
    #[schemars(range(min = 1))]
    pub http1_max_pending_requests: Option<i32>,
    /// Maximum active requests to the destination.
    #[schemars(range(min = 1))]
    pub http2_max_requests: Option<i32>,
    /// Maximum requests per connection; 1 disables keep-alive.
    #[schemars(range(min = 0))]
    pub max_requests_per_connection: Option<i32>,
    /// Maximum outstanding retries to the destination.
    #[schemars(range(min = 0))]
    pub max_retries: Option<i32>,
    /// Close upstream connections idle this long, e.g. `1h`.
    pub idle_timeout: Option<String>,
    /// Whether HTTP/1.1 upstream connections are upgraded to HTTP/2.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the client's protocol (HTTP/1.1 or HTTP/2) upstream.
    pub use_client_protocol: Option<bool>,
    /// Maximum concurrent streams per HTTP/2 connection.
    #[schemars(range(min = 1))]
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 PINGs on the upstream HTTP/2 connections: a connection whose PING goes
    /// unanswered for `timeout` is closed (Envoy's `connection_keepalive`).
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// HTTP/2 PING frames on upstream HTTP/2 connections (Istio's
/// `HTTPSettings.ConnectionKeepalive`): both fields are required.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionKeepalive {
    /// Time between PINGs, e.g. `30s`.
    pub interval: Option<String>,
    /// How long a PING may go unanswered before the connection is closed, e.g. `10s`.
    pub timeout: Option<String>,
}

/// HTTP/2 upgrade policy.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Mesh default.
    Default,
    /// Keep HTTP/1.1.
    DoNotUpgrade,
    /// Upgrade to HTTP/2.
    Upgrade,
}

/// Passive health checking (outlier detection).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("consecutiveErrors", "use consecutiveGatewayErrors or consecutive5xxErrors"),
    validation = unsupported(
        "outlierDetectionHttpErrorCodes",
        "remove it; consecutive5xxErrors counts every 5xx, consecutiveGatewayErrors 502, 503 and 504"
    )
)]
pub struct OutlierDetection {
    /// Split local-origin errors (connect failures) from upstream 5xx.
    pub split_external_local_origin_errors: Option<bool>,
    /// Consecutive local-origin failures before ejection.
    #[schemars(range(min = 0))]
    pub consecutive_local_origin_failures: Option<u32>,
    /// Consecutive 502/503/504 before ejection.
    #[schemars(range(min = 0))]
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive 5xx before ejection (default 5).
    #[schemars(range(min = 0))]
    pub consecutive_5xx_errors: Option<u32>,
    /// Time between ejection sweeps, e.g. `10s`.
    pub interval: Option<String>,
    /// Minimum ejection duration, multiplied by the number of ejections, e.g. `30s`.
    pub base_ejection_time: Option<String>,
    /// Most endpoints that may be ejected, 0-100 % (default 10).
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<i32>,
    /// Panic threshold: below this share of healthy endpoints, ejection is ignored, 0-100 %.
    #[schemars(range(min = 0, max = 100))]
    pub min_health_percent: Option<i32>,
    /// Not supported by Trellis yet (deprecated in Istio).
    pub consecutive_errors: Option<i32>,
    /// Not supported by Trellis yet.
    pub outlier_detection_http_error_codes: Option<Vec<u32>>,
}

/// TLS settings for connections to a destination.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// TLS mode.
    pub mode: Option<ClientTlsMode>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Client private key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA certificates file used to verify the server.
    pub ca_certificates: Option<String>,
    /// Certificate revocation list file (PEM) the server's certificate is checked against
    /// (SIMPLE, MUTUAL); with `credentialName`, the Secret's `ca.crl` instead.
    pub ca_crl: Option<String>,
    /// Secret holding the client certificate, key and CA (`tls.crt`, `tls.key`, `ca.crt`) and
    /// optionally the CA's revocation list (`ca.crl`).
    pub credential_name: Option<String>,
    /// Accepted server subject alternative names.
    pub subject_alt_names: Option<Vec<String>>,
    /// SNI sent to the server.
    pub sni: Option<String>,
    /// Skip server verification (only for testing).
    pub insecure_skip_verify: Option<bool>,
}

/// TLS modes for upstream connections.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    Disable,
    /// TLS, verifying the server.
    Simple,
    /// Mutual TLS with a user-supplied client certificate.
    Mutual,
    /// Mutual TLS with the mesh's workload certificates (Istio's name, accepted as-is).
    IstioMutual,
    /// Trellis' name for ISTIO_MUTUAL.
    MeshMutual,
}

// ---------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------

/// A load balancer at the edge of the mesh: the ports, protocols, hosts and TLS settings that
/// the selected gateway proxies expose. VirtualServices bound to it route the traffic.
///
/// Istio equivalent: `networking.istio.io/v1 Gateway`.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "networking.trellis.dev",
    version = "v1alpha1",
    kind = "Gateway",
    doc = "Ports, protocols, hosts and TLS exposed by gateway proxies at the mesh edge (Istio Gateway).",
    plural = "gateways",
    namespaced,
    shortname = "gw",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Selector", "type":"string", "jsonPath":".spec.selector", "description":"Labels of the gateway proxies"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Labels of the gateway proxy pods this configuration applies to.
    pub selector: Option<BTreeMap<String, String>>,
    /// The servers (listeners) to expose.
    pub servers: Vec<Server>,
}

/// One listener of a gateway.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported("defaultEndpoint", "remove it; Trellis gateways do not use sidecar default endpoints"))]
pub struct Server {
    /// Port, protocol and name.
    pub port: Port,
    /// Address to bind to: `0.0.0.0`, every address of the gateway pod (the default). One
    /// address only, or a Unix domain socket, is not supported by Trellis yet.
    pub bind: Option<String>,
    /// Hosts exposed, as `namespace/host` (`*/` any namespace, `./` own) or `host`.
    pub hosts: Vec<String>,
    /// TLS settings; required for HTTPS and TLS ports.
    pub tls: Option<ServerTlsSettings>,
    /// Not supported by Trellis yet.
    pub default_endpoint: Option<String>,
    /// Name of the server, referenced in logs and `meshctl proxy-config`.
    pub name: Option<String>,
}

/// A port on a gateway.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// Port number, 1-65535.
    #[schemars(range(min = 1, max = 65535))]
    pub number: u32,
    /// Protocol: HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS.
    pub protocol: String,
    /// Name of the port.
    pub name: Option<String>,
    /// Port the gateway proxy actually listens on, when it differs from `number`.
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<u32>,
}

/// TLS settings of a gateway server.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("credentialNames", "use credentialName with one Secret"),
    validation = unsupported("verifyCertificateSpki", "use caCertificates or subjectAltNames"),
    validation = unsupported("verifyCertificateHash", "use caCertificates or subjectAltNames"),
    validation = unsupported(
        "caCertCredentialName",
        "put the CA certificates in the credentialName Secret as ca.crt, or set caCertificates"
    ),
    validation = unsupported(
        "tlsCertificates",
        "set one certificate with serverCertificate and privateKey, or credentialName"
    ),
    validation = unsupported(
        "insecureSkipVerify",
        "remove it; to let clients without a certificate through, use mode OPTIONAL_MUTUAL (certificates presented are still verified)"
    )
)]
pub struct ServerTlsSettings {
    /// Redirect plain HTTP requests on this server to HTTPS.
    pub https_redirect: Option<bool>,
    /// TLS mode.
    pub mode: Option<ServerTlsMode>,
    /// Server certificate file.
    pub server_certificate: Option<String>,
    /// Server private key file.
    pub private_key: Option<String>,
    /// CA certificates file used to verify clients (MUTUAL).
    pub ca_certificates: Option<String>,
    /// Certificate revocation list file (PEM) client certificates are checked against
    /// (MUTUAL, OPTIONAL_MUTUAL); with `credentialName`, the Secret's `ca.crl` instead.
    pub ca_crl: Option<String>,
    /// Secret (in the gateway's namespace) holding `tls.crt`, `tls.key` and optionally `ca.crt`
    /// and `ca.crl`.
    pub credential_name: Option<String>,
    /// Not supported by Trellis yet.
    pub credential_names: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub ca_cert_credential_name: Option<String>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::preserve_unknown_list")]
    pub tls_certificates: Option<Vec<serde_json::Value>>,
    /// Names a client certificate must carry one of (MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL):
    /// DNS names or IP addresses among its DNS/IP SANs, other names (SPIFFE IDs) exactly
    /// among its URI SANs.
    pub subject_alt_names: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub verify_certificate_spki: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub verify_certificate_hash: Option<Vec<String>>,
    /// Minimum TLS version: `TLSV1_2` (also `TLS_AUTO`) or `TLSV1_3`.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Maximum TLS version: `TLSV1_3` (also `TLS_AUTO`) or `TLSV1_2`.
    pub max_protocol_version: Option<TlsProtocol>,
    /// TLS 1.2 cipher suites accepted, by their OpenSSL names (ECDHE with AES-GCM or
    /// ChaCha20-Poly1305), preferred in this order; TLS 1.3's suites are always offered.
    pub cipher_suites: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub insecure_skip_verify: Option<bool>,
}

impl ServerTlsSettings {
    /// The mode the server runs in: `mode`, or when unset SIMPLE for a server with a
    /// certificate (`credentialName`, or `serverCertificate`), else PASSTHROUGH — Istio's
    /// default, under which Istio ignores a certificate (the validator warns about the
    /// difference).
    pub fn effective_mode(&self) -> ServerTlsMode {
        match self.mode {
            Some(m) => m,
            None if self.credential_name.is_some() || self.server_certificate.is_some() => ServerTlsMode::Simple,
            None => ServerTlsMode::Passthrough,
        }
    }
}

/// TLS modes of a gateway server.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward the TLS connection as-is, routed on SNI.
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate TLS and require a client certificate.
    Mutual,
    /// Passthrough with routing on SNI to mesh services without a VirtualService.
    AutoPassthrough,
    /// Terminate mesh mTLS with the gateway's workload certificate.
    IstioMutual,
    /// Terminate TLS; verify a client certificate when one is presented.
    OptionalMutual,
}

/// TLS protocol versions.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsProtocol {
    /// The proxy's default: TLS 1.2 as the minimum, TLS 1.3 as the maximum.
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    /// TLS 1.0 (refused by Trellis: insecure).
    #[serde(rename = "TLSV1_0")]
    Tlsv1_0,
    /// TLS 1.1 (refused by Trellis: insecure).
    #[serde(rename = "TLSV1_1")]
    Tlsv1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    Tlsv1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    Tlsv1_3,
}
