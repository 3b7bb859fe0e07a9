//! VirtualService: how requests addressed to a set of hosts are routed (HTTP, TLS and TCP routes).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::schema::{preserve_unknown_object, unsupported};
use crate::status::ConfigStatus;

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
