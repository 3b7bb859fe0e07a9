//! Inbound security: peer authentication (mTLS mode per port), request (JWT)
//! authentication and authorization policies, with Istio's semantics already resolved by
//! the control plane into plain matchers the proxy evaluates.
//!
//! Evaluation (Istio): if any `deny` policy matches, deny; else if there is no
//! `allow` policy, allow; else allow only if some `allow` policy matches. An
//! `allow` policy with no rules matches nothing (Istio's "empty spec allows
//! nothing"). `audit` policies are evaluated apart: a match is recorded, the
//! decision stays what the others made it.

use crate::jwt::JwtProvider;
use crate::route::StringMatch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The AuthorizationPolicy `when` keys (Istio's names) trellis-proxy evaluates, besides
/// `request.headers[<name>]`: the one list the API validator accepts and the proxy knows.
pub const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
];

/// The condition keys that need a verified JWT (besides `request.auth.claims[<name>]`):
/// matched only over HTTP, and absent on a request without a token.
pub const REQUEST_AUTH_KEYS: &[&str] = &[
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
];

/// The condition keys whose values are IPs or CIDRs, matched by containment.
pub const IP_CONDITION_KEYS: &[&str] = &["source.ip", "remote.ip", "destination.ip"];

/// The header a `request.headers[<name>]` condition key names.
pub fn condition_header(key: &str) -> Option<&str> {
    key.strip_prefix("request.headers[")
        .and_then(|r| r.strip_suffix(']'))
        .filter(|h| !h.is_empty())
}

/// Everything the proxy enforces on inbound traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InboundPolicy {
    /// Peer authentication.
    pub mtls: MtlsPolicy,
    /// Authorization policies that select this workload.
    pub authorization: Vec<AuthorizationPolicy>,
    /// The JWT issuers accepted (RequestAuthentications that select this workload). A
    /// request without a token passes unauthenticated; one with a token no provider
    /// verifies is refused (401).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<JwtProvider>,
}

/// mTLS mode, workload-wide with per-port overrides (already resolved by
/// precedence workload > namespace > mesh).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MtlsPolicy {
    /// Mode for ports without an override.
    pub mode: MtlsMode,
    /// Per-port overrides (the app's target port).
    pub port_modes: BTreeMap<u16, MtlsMode>,
}

impl MtlsPolicy {
    /// The mode in force for a port.
    pub fn mode_for(&self, port: u16) -> MtlsMode {
        self.port_modes.get(&port).copied().unwrap_or(self.mode)
    }
}

/// PeerAuthentication mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only mTLS.
    Strict,
    /// mTLS or plaintext (detected from the first bytes).
    #[default]
    Permissive,
    /// Plaintext only.
    Disable,
}

/// One AuthorizationPolicy selecting this workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Source resource name.
    pub name: String,
    /// Source resource namespace.
    pub namespace: String,
    /// Allow, deny or audit.
    pub action: AuthzAction,
    /// Rules (OR). Empty: an `allow` policy matches nothing, a `deny` policy
    /// matches nothing.
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
}

/// Policy action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    /// Allow matching requests.
    Allow,
    /// Deny matching requests (evaluated first).
    Deny,
    /// Record matching requests in the audit log; never changes the decision
    /// (Istio's AUDIT).
    Audit,
}

/// A rule: every non-empty part must match. An empty rule (`{}`) matches
/// everything (Istio's `rules: [{}]` allows all).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthzRule {
    /// Sources (OR); empty = any source.
    pub from: Vec<AuthzSource>,
    /// Operations (OR); empty = any operation.
    pub to: Vec<AuthzOperation>,
    /// Conditions (AND).
    pub when: Vec<AuthzCondition>,
}

/// Who sends the request. Fields are AND; within a field, values are OR; an
/// empty field does not constrain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthzSource {
    /// Peer SPIFFE IDs (full `spiffe://` form).
    pub principals: Vec<StringMatch>,
    /// Excluded peer SPIFFE IDs.
    pub not_principals: Vec<StringMatch>,
    /// End-user principals (`<iss>/<sub>` of a verified JWT).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<StringMatch>,
    /// Excluded end-user principals; a request without a token matches none, so it is
    /// not excluded (Istio's `notRequestPrincipals: ["*"]` catches requests without one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<StringMatch>,
    /// Peer namespaces (from the SPIFFE ID).
    pub namespaces: Vec<StringMatch>,
    /// Excluded namespaces.
    pub not_namespaces: Vec<StringMatch>,
    /// Peer IP CIDRs.
    pub ip_blocks: Vec<String>,
    /// Excluded peer IP CIDRs.
    pub not_ip_blocks: Vec<String>,
    /// Original client IP CIDRs (`remote.ip`: the connection's peer at a
    /// gateway, the last `X-Forwarded-For` hop behind one).
    pub remote_ip_blocks: Vec<String>,
    /// Excluded original client IP CIDRs.
    pub not_remote_ip_blocks: Vec<String>,
}

/// What the request does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthzOperation {
    /// Hosts (authority without port).
    pub hosts: Vec<StringMatch>,
    /// Excluded hosts.
    pub not_hosts: Vec<StringMatch>,
    /// Destination ports.
    pub ports: Vec<u16>,
    /// Excluded ports.
    pub not_ports: Vec<u16>,
    /// Methods.
    pub methods: Vec<StringMatch>,
    /// Excluded methods.
    pub not_methods: Vec<StringMatch>,
    /// Normalized paths.
    pub paths: Vec<StringMatch>,
    /// Excluded paths.
    pub not_paths: Vec<StringMatch>,
}

/// A `when` condition on a request attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzCondition {
    /// Attribute: `request.headers[<name>]`, `source.ip`, `remote.ip`,
    /// `destination.ip`, `source.namespace`, `source.principal`,
    /// `destination.port`, `connection.sni`, `request.auth.principal`,
    /// `request.auth.audiences`, `request.auth.presenter`, `request.auth.claims[<name>]…`.
    /// For the `*.ip` keys every value is an `exact` IP or CIDR.
    pub key: String,
    /// Values (OR); empty = no constraint.
    #[serde(default)]
    pub values: Vec<StringMatch>,
    /// Excluded values.
    #[serde(default)]
    pub not_values: Vec<StringMatch>,
}
