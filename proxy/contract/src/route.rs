//! HTTP routing: virtual hosts, route matches and actions (forward with weighted
//! clusters, redirect, direct response), and the per-route policies (rewrite,
//! header mutations, timeout, retries, faults, mirrors, CORS). Every route
//! carries its [`Provenance`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A set of domains sharing one ordered route list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    /// Unique name within the listener, e.g. `payment.shop.svc.cluster.local:8080`.
    pub name: String,
    /// Host patterns: `example.com`, `*.example.com` (suffix wildcard), `*`
    /// (anything), each optionally with `:port`. Without a port a domain matches
    /// any port. Precedence: exact, then longest suffix wildcard, then `*`.
    pub domains: Vec<String>,
    /// Routes in order; the first whose match succeeds wins.
    pub routes: Vec<Route>,
}

/// One routing rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Optional name (Istio `HTTPRoute.name`), shown in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Alternatives (OR); an empty list matches every request.
    #[serde(default, rename = "match")]
    pub matches: Vec<RouteMatch>,
    /// What to do with a matching request.
    pub action: RouteAction,
    /// Request header mutations (before forwarding).
    #[serde(default)]
    pub request_headers: HeaderMutation,
    /// Response header mutations (before returning downstream).
    #[serde(default)]
    pub response_headers: HeaderMutation,
    /// Fault injection, applied before the action.
    #[serde(default)]
    pub fault: Option<FaultInjection>,
    /// CORS policy; preflights are answered by the proxy.
    #[serde(default)]
    pub cors: Option<CorsPolicy>,
    /// Which resource and rule produced this route.
    pub provenance: Provenance,
}

/// Which configuration resource produced a route; recorded by the operator so
/// `meshctl` and logs can explain routing decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// Resource kind, e.g. `VirtualService`, `Gateway`, or `Service` for
    /// default routes generated from the registry.
    pub kind: String,
    /// Resource namespace.
    pub namespace: String,
    /// Resource name.
    pub name: String,
    /// Index of the rule in the resource (e.g. `spec.http[<ruleIndex>]`).
    #[serde(default)]
    pub rule_index: Option<u32>,
    /// The list of rules `ruleIndex` counts in; absent: `http` (a VirtualService's TCP
    /// routes come from its `tcp` or `tls` rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<RuleSection>,
    /// The parts of the resource whose settings are in force, in the order they were
    /// applied: on a cluster, its DestinationRule's policy as resolved for the cluster's port
    /// and subset — `trafficPolicy`, or `trafficPolicy.portLevelSettings[0]` when that entry
    /// replaced it, then `subsets[1].trafficPolicy` or
    /// `subsets[1].trafficPolicy.portLevelSettings[0]` merged into it. Empty: the resource as
    /// a whole (or, with `ruleIndex`, that rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

/// A resource's lists of rules: a VirtualService's, or a Sidecar's ingress listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleSection {
    /// `spec.http`.
    Http,
    /// `spec.tcp`.
    Tcp,
    /// `spec.tls`.
    Tls,
    /// A Sidecar's `spec.ingress`.
    Ingress,
}

impl Provenance {
    /// Where it came from in words: `VirtualService shop/payment http[3]` (`tcp[0]`,
    /// `tls[1]`), `Sidecar shop/default ingress[0]`, `Gateway shop/gw`,
    /// `DestinationRule shop/payment trafficPolicy.portLevelSettings[0] + subsets[1].trafficPolicy`.
    pub fn describe(&self) -> String {
        let section = match self.section {
            None | Some(RuleSection::Http) => "http",
            Some(RuleSection::Tcp) => "tcp",
            Some(RuleSection::Tls) => "tls",
            Some(RuleSection::Ingress) => "ingress",
        };
        let mut out = format!("{} {}/{}", self.kind, self.namespace, self.name);
        if let Some(i) = self.rule_index {
            out.push_str(&format!(" {section}[{i}]"));
        }
        if !self.parts.is_empty() {
            out.push(' ');
            out.push_str(&self.parts.join(" + "));
        }
        out
    }
}

/// Conditions that must all hold (AND).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteMatch {
    /// The path (without the query string), after normalization.
    pub uri: Option<StringMatch>,
    /// Compare `uri` case-insensitively (exact and prefix only; regexes
    /// control their own case).
    pub ignore_uri_case: bool,
    /// HTTP method.
    pub method: Option<StringMatch>,
    /// The authority (host header without port).
    pub authority: Option<StringMatch>,
    /// Headers, all must match.
    pub headers: Vec<HeaderMatch>,
    /// Query parameters, all must match.
    pub query_params: Vec<QueryParamMatch>,
    /// Destination port (original destination or listener port).
    pub port: Option<u16>,
}

/// How to compare a string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with (authorization policies use this for `*foo`).
    Suffix(String),
    /// RE2-style regex matching the whole value (anchored).
    Regex(String),
}

/// A header condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Value condition; `None` means "present".
    #[serde(default, rename = "match")]
    pub value: Option<StringMatch>,
    /// Invert: the header must be absent, or its value must not match.
    #[serde(default)]
    pub invert: bool,
}

/// A query parameter condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// Parameter name (case-sensitive, after percent-decoding).
    pub name: String,
    /// Value condition; `None` means "present".
    #[serde(default, rename = "match")]
    pub value: Option<StringMatch>,
}

/// What a matching route does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteAction {
    /// Proxy to one of several clusters.
    Forward(ForwardAction),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    DirectResponse(DirectResponse),
}

/// Proxy to clusters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAction {
    /// Destinations; weights must sum to 100.
    pub clusters: Vec<WeightedCluster>,
    /// Rewrite before forwarding.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Overall timeout including retries; `None` = no timeout.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Retry policy; `None` = no retries.
    #[serde(default)]
    pub retries: Option<RetryPolicy>,
    /// Traffic copies sent fire-and-forget.
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
}

/// A destination and its share of traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedCluster {
    /// Cluster name.
    pub cluster: String,
    /// Share in percent.
    #[serde(default = "hundred")]
    pub weight: u32,
    /// Request header mutations for this destination.
    #[serde(default)]
    pub request_headers: HeaderMutation,
    /// Response header mutations for this destination.
    #[serde(default)]
    pub response_headers: HeaderMutation,
}

fn hundred() -> u32 {
    100
}

/// Rewrite the request before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rewrite {
    /// Replace the part of the path matched by a `prefix` uri match (or the whole
    /// path for exact/regex matches) with this.
    pub uri_prefix: Option<String>,
    /// Regex substitution over the path (`\1`-style groups as `$1`).
    pub uri_regex: Option<RegexRewrite>,
    /// Replace the authority (host header).
    pub authority: Option<String>,
}

/// A regex substitution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegexRewrite {
    /// Pattern.
    pub pattern: String,
    /// Replacement; `$1` refers to capture groups.
    pub substitution: String,
}

/// Header changes. Order of application: remove, set, add.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderMutation {
    /// Overwrite (or create) headers.
    pub set: BTreeMap<String, String>,
    /// Append header values.
    pub add: BTreeMap<String, String>,
    /// Remove headers.
    pub remove: Vec<String>,
}

impl HeaderMutation {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Retry policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try (Istio `attempts`).
    pub attempts: u32,
    /// Timeout of each try; `None` = the route timeout.
    #[serde(default)]
    pub per_try_timeout_ms: Option<u64>,
    /// Conditions that trigger a retry.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Status codes for [`RetryOn::RetriableStatusCodes`].
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    /// Exponential backoff base (full jitter), Envoy's default 25 ms.
    #[serde(default = "default_backoff_base")]
    pub backoff_base_ms: u64,
    /// Backoff cap; default 10 × base.
    #[serde(default)]
    pub backoff_max_ms: Option<u64>,
    /// Retry budget: retries may not exceed this percentage of active requests
    /// to the cluster (minimum 3 concurrent retries are always allowed).
    #[serde(default)]
    pub budget_percent: Option<f64>,
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::GatewayError]
}

fn default_backoff_base() -> u64 {
    25
}

/// A retry condition (Envoy's `retry_on` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx response, connect failure or reset.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504, connect failure.
    GatewayError,
    /// Connection reset / stream error before a response.
    Reset,
    /// Could not connect.
    ConnectFailure,
    /// 409.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// Codes in `retriableStatusCodes`.
    RetriableStatusCodes,
}

/// Fault injection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultInjection {
    /// Delay before processing.
    pub delay: Option<FaultDelay>,
    /// Abort with a status instead of forwarding.
    pub abort: Option<FaultAbort>,
}

/// A fixed delay applied to a percentage of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// Delay.
    pub fixed_delay_ms: u64,
    /// Share of requests, 0–100.
    pub percentage: f64,
}

/// An abort applied to a percentage of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// HTTP status to return.
    pub http_status: u16,
    /// Share of requests, 0–100.
    pub percentage: f64,
}

/// A mirror destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// Cluster receiving copies (the authority gets a `-shadow` suffix).
    pub cluster: String,
    /// Share of requests mirrored, 0–100.
    #[serde(default = "hundred_f")]
    pub percentage: f64,
}

fn hundred_f() -> f64 {
    100.0
}

/// Redirect response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Redirect {
    /// Replace the path.
    pub uri: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Replace the port.
    pub port: Option<u16>,
    /// Replace the scheme (`http` / `https`).
    pub scheme: Option<String>,
    /// 301 (default), 302, 303, 307 or 308.
    pub response_code: Option<u16>,
    /// Replace the uri prefix the route matched (`/` for a route without a uri prefix match)
    /// with this, keeping the rest of the path and the query (Envoy's redirect
    /// `prefix_rewrite`, Istio's `prefixRewrite`); not with `uri`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
}

/// Fixed response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body (UTF-8).
    #[serde(default)]
    pub body: Option<String>,
}

/// CORS policy (Istio `CorsPolicy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CorsPolicy {
    /// Allowed origins.
    pub allow_origins: Vec<StringMatch>,
    /// Allowed methods.
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    pub allow_headers: Vec<String>,
    /// Headers exposed to the browser.
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age` in seconds.
    pub max_age_seconds: Option<u64>,
    /// `Access-Control-Allow-Credentials`.
    pub allow_credentials: bool,
    /// A preflight whose origin is not allowed is answered by the proxy, without CORS headers
    /// (Istio's `unmatchedPreflights: IGNORE`); by default it is forwarded to the upstream
    /// (`FORWARD`, Istio's default).
    pub ignore_unmatched_preflights: bool,
}
