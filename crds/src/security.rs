//! `security.trellis.dev/v1alpha1`: PeerAuthentication, RequestAuthentication and
//! AuthorizationPolicy.
//!
//! Istio equivalents: `security.istio.io/v1` PeerAuthentication, RequestAuthentication and
//! AuthorizationPolicy, with the same field names and semantics.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::schema::{preserve_unknown_object, unsupported};
use crate::status::ConfigStatus;

mod key_sets;
pub use key_sets::{
    DISCOVERY_FRAGMENT, DISCOVERY_PATH, KeySource, discoverable, discovered_issuer, discovery_document,
    jwks_uri_from_discovery,
};

/// API group of the security kinds.
pub const GROUP: &str = "security.trellis.dev";

/// Label selector used by the security kinds (`matchLabels` only, as in Istio).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Pods whose labels include all of these are selected.
    pub match_labels: Option<BTreeMap<String, String>>,
}

// ---------------------------------------------------------------------------------------------
// PeerAuthentication
// ---------------------------------------------------------------------------------------------

/// Whether workloads accept plaintext, mutual TLS, or both, from other workloads.
///
/// Precedence: a workload-selecting policy beats the namespace's (no selector), which beats the
/// mesh-wide one (in the system namespace); a port-level mode beats the workload's.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "security.trellis.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    doc = "Whether workloads accept mutual TLS, plaintext or both (Istio PeerAuthentication).",
    plural = "peerauthentications",
    namespaced,
    shortname = "pa",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Mode", "type":"string", "jsonPath":".spec.mtls.mode", "description":"mTLS mode"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads this applies to; empty means the whole namespace (or mesh, in the system
    /// namespace).
    pub selector: Option<WorkloadSelector>,
    /// The mTLS mode.
    pub mtls: Option<MutualTls>,
    /// Per-port modes (keys are container port numbers); requires a `selector`.
    pub port_level_mtls: Option<BTreeMap<String, MutualTls>>,
}

/// An mTLS setting.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MutualTls {
    /// The mode; UNSET inherits from the parent scope.
    pub mode: Option<MtlsMode>,
}

/// mTLS modes.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope (PERMISSIVE at the top).
    Unset,
    /// Plaintext only.
    Disable,
    /// Both mTLS and plaintext.
    Permissive,
    /// mTLS only: plaintext connections are refused.
    Strict,
}

// ---------------------------------------------------------------------------------------------
// RequestAuthentication
// ---------------------------------------------------------------------------------------------

/// Which end-user credentials (JWTs) workloads accept.
///
/// Semantics (Istio's): a request without a token passes unauthenticated (require one with an
/// AuthorizationPolicy's `requestPrincipals`); a request whose token fails verification is
/// answered 401; a verified token makes `<iss>/<sub>` the request principal and its claims
/// available to AuthorizationPolicy conditions (`request.auth.*`). Keys come from `jwks`, or
/// from `jwksUri`, which the operator fetches and pushes — proxies never fetch.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "security.trellis.dev",
    version = "v1alpha1",
    kind = "RequestAuthentication",
    doc = "Which end-user JWTs workloads accept (Istio RequestAuthentication).",
    plural = "requestauthentications",
    namespaced,
    shortname = "ra",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Issuer", "type":"string", "jsonPath":".spec.jwtRules[0].issuer", "description":"Issuer of the first rule"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::cel::Rule::new("!(has(self.selector) && (has(self.targetRef) || has(self.targetRefs)))")
        .message("set only one of selector or targetRefs")
)]
pub struct RequestAuthenticationSpec {
    /// Workloads this applies to; empty means the whole namespace (or mesh, in the system
    /// namespace).
    pub selector: Option<WorkloadSelector>,
    /// A single target (Istio's older form of `targetRefs`).
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateways or Services this applies to, instead of a selector.
    #[schemars(length(max = 16))]
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    /// The JWTs accepted; a token is checked by the rule whose issuer it names.
    #[schemars(length(max = 64))]
    pub jwt_rules: Option<Vec<JwtRule>>,
}

/// The fix of Istio's other spelling of `jwksUri`.
pub(crate) const JWKS_URI_FIX: &str = "spell it jwksUri";

/// How to find and verify one issuer's tokens.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::cel::Rule::new("!(has(self.jwksUri) && has(self.jwks))")
        .message("only one of jwks or jwksUri can be set"),
    validation = crate::schema::unsupported("jwks_uri", JWKS_URI_FIX),
    validation = crate::schema::unsupported(
        "spaceDelimitedClaims",
        "remove it; only the scope and permission claims are split at spaces for requestPrincipals and request.auth.claims"
    )
)]
pub struct JwtRule {
    /// The issuer (`iss` claim) of the tokens this rule accepts.
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: String,
    /// Accepted audiences (`aud`); a token needs one of them. Empty: any audience.
    pub audiences: Option<Vec<String>>,
    /// URL of the issuer's JSON Web Key Set; the operator fetches it (http or https). With
    /// neither this nor `jwks`, the operator discovers it from the issuer's OpenID Connect
    /// configuration (`<issuer>/.well-known/openid-configuration`).
    #[schemars(length(min = 1, max = 2048))]
    pub jwks_uri: Option<String>,
    /// Not supported by Trellis yet: Istio's other spelling of `jwksUri` (refused by the
    /// validator too: offline CEL does not see a key with `_`).
    #[serde(rename = "jwks_uri")]
    pub jwks_uri_snake_case: Option<String>,
    /// Not supported by Trellis yet.
    pub space_delimited_claims: Option<Vec<String>>,
    /// The JSON Web Key Set itself, inline (at most 64 KiB and 32 keys).
    #[schemars(length(max = 65536))]
    pub jwks: Option<String>,
    /// Headers the token is read from; with no header, parameter or cookie given,
    /// `Authorization: Bearer <token>` and the `access_token` query parameter.
    #[schemars(length(max = 16))]
    pub from_headers: Option<Vec<JwtHeader>>,
    /// Query parameters the token is read from.
    #[schemars(length(max = 16))]
    pub from_params: Option<Vec<String>>,
    /// Cookies the token is read from.
    #[schemars(length(max = 16))]
    pub from_cookies: Option<Vec<String>>,
    /// A header the verified payload is written to (base64url of its JSON).
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request sent to the workload (default: removed).
    pub forward_original_token: Option<bool>,
    /// Claims copied to request headers after verification.
    #[schemars(length(max = 64))]
    pub output_claim_to_headers: Option<Vec<ClaimToHeader>>,
    /// How long the operator waits for `jwksUri` (default 5s, at most 60s).
    pub timeout: Option<String>,
}

/// A header a token is read from.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JwtHeader {
    /// The header name.
    pub name: String,
    /// A prefix stripped before the token (e.g. `"Bearer "`); without it the header is invalid.
    pub prefix: Option<String>,
}

/// A claim copied to a request header.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// The header written (it replaces one the client sent).
    pub header: String,
    /// The claim (`a.b` for nested claims); only string, number and boolean claims are copied.
    pub claim: String,
}

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy
// ---------------------------------------------------------------------------------------------

/// Access control for workloads: which sources may perform which operations.
///
/// Semantics (Istio's): DENY policies are evaluated first; then, if any ALLOW policy selects the
/// workload, a request must match one of them; with no ALLOW policy, requests are allowed. A
/// policy whose spec is empty (`spec: {}`) selects every workload in scope and matches nothing,
/// so as an ALLOW policy it denies everything.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "security.trellis.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    doc = "Access control for workloads: who may do what (Istio AuthorizationPolicy).",
    plural = "authorizationpolicies",
    namespaced,
    shortname = "ap",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Action", "type":"string", "jsonPath":".spec.action", "description":"ALLOW, DENY or AUDIT"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("provider", "remove it; external authorization (CUSTOM) is not available yet"),
    validation = kube::core::cel::Rule::new("!(has(self.selector) && (has(self.targetRef) || has(self.targetRefs)))")
        .message("set only one of selector or targetRefs")
)]
pub struct AuthorizationPolicySpec {
    /// Workloads this applies to; empty means the whole namespace (or mesh, in the system
    /// namespace).
    pub selector: Option<WorkloadSelector>,
    /// A single target (Istio's older form of `targetRefs`).
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateways or Services this applies to, instead of a selector.
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    /// Rules; a request matching any rule triggers the action.
    pub rules: Option<Vec<AuthzRule>>,
    /// ALLOW (default), DENY or AUDIT.
    pub action: Option<AuthzAction>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub provider: Option<serde_json::Value>,
}

/// A reference to a Service or Gateway a policy targets.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group of the target ("" for core).
    pub group: Option<String>,
    /// Kind of the target: `Service` or `Gateway`.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace; must be the policy's own.
    pub namespace: Option<String>,
}

/// Authorization actions.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    /// Allow matching requests (and, once any ALLOW policy exists, only them).
    Allow,
    /// Deny matching requests.
    Deny,
    /// Record matching requests in the access log.
    Audit,
    /// External authorization (not supported by Trellis yet).
    Custom,
}

/// One rule: all of `from`, `to` and `when` must match (each a list of alternatives).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthzRule {
    /// Sources; any one matching is enough.
    pub from: Option<Vec<RuleFrom>>,
    /// Operations; any one matching is enough.
    pub to: Option<Vec<RuleTo>>,
    /// Extra conditions; all must match.
    pub when: Option<Vec<Condition>>,
}

/// Wrapper for a source (Istio's shape).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuleFrom {
    /// The source.
    pub source: Source,
}

/// Who sent the request. Fields are ANDed; values within a field are ORed.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::cel::Rule::new("!((has(self.serviceAccounts) || has(self.notServiceAccounts)) && (has(self.principals) || has(self.notPrincipals) || has(self.namespaces) || has(self.notNamespaces)))")
        .message("serviceAccounts cannot be combined with principals or namespaces"),
    validation = crate::schema::unsupported(
        "trustDomains",
        "use principals with the trust domain as a prefix, e.g. principals: [\"example.com/*\"]"
    ),
    validation = crate::schema::unsupported(
        "notTrustDomains",
        "use notPrincipals with the trust domain as a prefix, e.g. notPrincipals: [\"example.com/*\"]"
    )
)]
pub struct Source {
    /// Peer identities (`<trust-domain>/ns/<ns>/sa/<sa>`, `*` prefix/suffix wildcards).
    pub principals: Option<Vec<String>>,
    /// Peer identities that must not match.
    pub not_principals: Option<Vec<String>>,
    /// End-user identities from verified JWTs (`<iss>/<sub>`, `*` prefix/suffix wildcards);
    /// see RequestAuthentication.
    pub request_principals: Option<Vec<String>>,
    /// End-user identities that must not match.
    pub not_request_principals: Option<Vec<String>>,
    /// Namespaces of the peer workload.
    pub namespaces: Option<Vec<String>>,
    /// Namespaces that must not match.
    pub not_namespaces: Option<Vec<String>>,
    /// Source IPs or CIDRs of the connection.
    pub ip_blocks: Option<Vec<String>>,
    /// Source IPs or CIDRs that must not match.
    pub not_ip_blocks: Option<Vec<String>>,
    /// Original client IPs (from `X-Forwarded-For` at a gateway).
    pub remote_ip_blocks: Option<Vec<String>>,
    /// Original client IPs that must not match.
    pub not_remote_ip_blocks: Option<Vec<String>>,
    /// Peer service accounts, `<namespace>/<name>` (or `<name>` in the policy's namespace).
    pub service_accounts: Option<Vec<String>>,
    /// Peer service accounts that must not match.
    pub not_service_accounts: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub trust_domains: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub not_trust_domains: Option<Vec<String>>,
}

/// Wrapper for an operation (Istio's shape).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuleTo {
    /// The operation.
    pub operation: Operation,
}

/// What the request does. Fields are ANDed; values within a field are ORed.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Hosts (`Host` header), with `*` prefix/suffix wildcards.
    pub hosts: Option<Vec<String>>,
    /// Hosts that must not match.
    pub not_hosts: Option<Vec<String>>,
    /// Destination ports, as strings (`"8080"`).
    pub ports: Option<Vec<String>>,
    /// Ports that must not match.
    pub not_ports: Option<Vec<String>>,
    /// HTTP methods (`GET`, ...).
    pub methods: Option<Vec<String>>,
    /// Methods that must not match.
    pub not_methods: Option<Vec<String>>,
    /// Normalized paths, with `*` prefix/suffix wildcards.
    pub paths: Option<Vec<String>>,
    /// Paths that must not match.
    pub not_paths: Option<Vec<String>>,
}

/// An extra condition on a request attribute.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Attribute: `request.headers[<name>]`, `source.ip`, `remote.ip`, `source.namespace`,
    /// `source.principal`, `destination.ip`, `destination.port`, `connection.sni`.
    pub key: String,
    /// Values; any one matching is enough.
    pub values: Option<Vec<String>>,
    /// Values that must not match.
    pub not_values: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// jwksUri
// ---------------------------------------------------------------------------------------------

/// A `jwksUri` the operator can fetch: an absolute `https://` (or, as Istio allows, `http://`)
/// URL naming a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksUri {
    /// `https` (else plain `http`).
    pub https: bool,
    /// The host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// The port (443 or 80 unless the URL names one).
    pub port: u16,
    /// The path and query sent (`/` when the URL has none); a `#fragment` is not sent.
    pub path: String,
}

/// Read a `jwksUri` (the validator's check, and what the operator connects to).
///
/// The error completes a sentence about the URL: `"ftp://x" <error>`.
pub fn parse_jwks_uri(uri: &str) -> Result<JwksUri, String> {
    if !uri.is_ascii() || uri.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("has spaces or characters outside ASCII; percent-encode them".into());
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err("is not an absolute URL; write it as https://HOST/PATH".into());
    };
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        other => {
            return Err(format!(
                "has the scheme {other:?}; the operator fetches https:// or http:// only"
            ));
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(
            "carries credentials (user@host); key sets are fetched without authentication, and credentials written in an object are readable by everyone who can read it"
                .into(),
        );
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err("has an IPv6 address without its closing ]".into());
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("has {addr:?} in brackets, which is no IPv6 address"));
        }
        let port = match after {
            "" => None,
            a => match a.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err("has text between the IPv6 address's ] and the path".into()),
            },
        };
        (addr, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("names no host; write it as https://HOST/PATH".into());
    }
    if !authority.starts_with('[') && !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err(format!("has the host {host:?}, which is no DNS name or IP address"));
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("has the port {p:?}; a port is 1 to 65535")),
        },
    };
    let tail = tail.split('#').next().unwrap_or_default();
    let path = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    Ok(JwksUri {
        https,
        host: host.to_string(),
        port,
        path,
    })
}

/// A `jwksUri` as logs, events, status messages, metrics and the proxies' configuration show
/// it: the query is replaced by `?<redacted>` and a `#fragment` dropped, since a query string
/// can carry a token or an API key (`?key=…`) that must not leave the object it was written in.
/// The scheme, host, port and path stay, so the message still says which key set it is.
pub fn jwks_uri_for_display(uri: &str) -> String {
    let uri = uri.split('#').next().unwrap_or_default();
    match uri.split_once('?') {
        Some((before, _)) => format!("{before}?<redacted>"),
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_uris_are_absolute_http_urls_naming_a_host() {
        let u = parse_jwks_uri("https://issuer.example/.well-known/jwks.json?v=2#x").unwrap();
        assert_eq!(
            u,
            JwksUri {
                https: true,
                host: "issuer.example".into(),
                port: 443,
                path: "/.well-known/jwks.json?v=2".into()
            }
        );
        let u = parse_jwks_uri("HTTP://jwks.auth.svc.cluster.local:8080").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "jwks.auth.svc.cluster.local", 8080, "/")
        );
        let u = parse_jwks_uri("https://[::1]:8443/keys").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
        assert_eq!(parse_jwks_uri("https://[::1]/k").unwrap().port, 443);
        for (bad, why) in [
            ("issuer.example/jwks.json", "not an absolute URL"),
            ("ftp://issuer.example/jwks", "scheme \"ftp\""),
            ("https:///jwks", "names no host"),
            ("https://user:pw@issuer.example/jwks", "credentials"),
            ("https://issuer.example:0/jwks", "port \"0\""),
            ("https://issuer.example:https/jwks", "port \"https\""),
            ("https://issuer example/jwks", "spaces"),
            ("https://issuér.example/jwks", "outside ASCII"),
            ("https://[::1/jwks", "closing ]"),
            ("https://[zz]/jwks", "no IPv6 address"),
            ("https://a,b/jwks", "no DNS name"),
        ] {
            let e = parse_jwks_uri(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_jwks_uri_is_shown_without_its_query_or_fragment() {
        assert_eq!(
            jwks_uri_for_display("https://issuer.example/keys?api_key=s3cret&v=2#frag"),
            "https://issuer.example/keys?<redacted>"
        );
        assert_eq!(
            jwks_uri_for_display("https://issuer.example:8443/.well-known/jwks.json"),
            "https://issuer.example:8443/.well-known/jwks.json"
        );
        assert_eq!(jwks_uri_for_display("http://h/k#x?y"), "http://h/k");
        assert_eq!(jwks_uri_for_display("http://h?token=t"), "http://h?<redacted>");
    }
}
