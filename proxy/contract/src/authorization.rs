//! Authorization policy evaluation — the one implementation, shared by `trellis-proxy` (which
//! enforces it) and `meshctl routes` (which explains a destination's verdict by it), so the
//! explanation cannot disagree with the proxy. Pure: no HTTP types, no I/O; the caller
//! supplies the request's attributes and a [`Headers`] view of its headers.
//!
//! Istio's semantics: any matching DENY
//! policy denies; otherwise, with no ALLOW policy the request is allowed; with
//! ALLOW policies it is allowed only if one of them matches. An ALLOW policy
//! without rules matches nothing ("an empty spec allows nothing"). AUDIT
//! policies never decide: a match only asks for an audit record.
//!
//! Opaque TCP connections are authorized too, as Istio does: only the
//! connection's attributes exist there, so an ALLOW (or AUDIT) rule that needs
//! an HTTP attribute (hosts, methods, paths, request headers) matches no
//! connection, and a DENY rule is evaluated without its HTTP attributes — it
//! denies more, never less. The same holds for the end-user attributes of a verified
//! JWT (`requestPrincipals`, `request.auth.*`): they exist over HTTP only.
//!
//! A request without a token has no request principal and no claims: `requestPrincipals`
//! and `request.auth.*` values do not match it, their `not` forms do not exclude it (so
//! Istio's DENY `notRequestPrincipals: ["*"]` refuses requests without a token).
//!
//! # Guarantees
//! - A decision names the policy and the rule (`spec.rules[N]`) that decided it.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::jwt::{Authenticated, condition_claim};
use crate::matching::{Headers, Matcher, MatcherError, any_match};
use crate::{
    AuthorizationPolicy, AuthzAction, InboundPolicy, REQUEST_AUTH_KEYS, SpiffeId, StringMatch, condition_header,
    parse_cidr,
};

/// What is being authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// An HTTP request: every attribute exists.
    Http,
    /// An opaque TCP connection: no host, method, path or headers.
    Tcp,
}

/// The request attributes policies look at.
#[derive(Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// A request or a connection.
    pub layer: Layer,
    /// Verified peer SPIFFE ID (mTLS), if any.
    pub principal: Option<&'a str>,
    /// Peer namespace, from the SPIFFE ID.
    pub namespace: Option<&'a str>,
    /// Peer IP.
    pub source_ip: IpAddr,
    /// The original client's IP (`remote.ip`).
    pub remote_ip: IpAddr,
    /// The IP the connection was addressed to (`destination.ip`).
    pub destination_ip: IpAddr,
    /// The TLS server name the client asked for (`connection.sni`).
    pub sni: Option<&'a str>,
    /// Destination port.
    pub port: u16,
    /// Host, without port.
    pub host: &'a str,
    /// Method.
    pub method: &'a str,
    /// Normalized path, without query.
    pub path: &'a str,
    /// Request headers (a header sent several times is read joined with `,`, as route
    /// matching and Envoy's header matchers read it).
    pub headers: &'a dyn Headers,
    /// The verified JWT, if the request carried one.
    pub auth: Option<&'a Authenticated>,
}

impl std::fmt::Debug for AuthzRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzRequest")
            .field("layer", &self.layer)
            .field("principal", &self.principal)
            .field("source_ip", &self.source_ip)
            .field("port", &self.port)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The namespace of a peer, from its SPIFFE ID (`source.namespace`).
pub fn peer_namespace(principal: Option<&str>) -> Option<String> {
    principal
        .and_then(|p| SpiffeId::parse(p).ok())
        .and_then(|id| id.namespace().map(str::to_string))
}

/// The policy and rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// The index of its rule that matched (`spec.rules[N]`).
    pub rule: usize,
}

/// The decision, naming the policy and rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; by which ALLOW policy and rule (`None` when no ALLOW policy exists).
    Allow(Option<Decided>),
    /// Denied; by which DENY policy and rule, or `None` when no ALLOW policy matched.
    Deny(Option<Decided>),
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

/// Compiled policies of a workload.
#[derive(Debug, Default)]
pub struct Authorizer {
    deny: Vec<CompiledPolicy>,
    allow: Vec<CompiledPolicy>,
    audit: Vec<CompiledPolicy>,
}

#[derive(Debug)]
struct CompiledPolicy {
    name: String,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Default)]
struct CompiledRule {
    from: Vec<CompiledSource>,
    to: Vec<CompiledOperation>,
    when: Vec<CompiledCondition>,
    /// Needs an HTTP attribute (hosts, methods, paths, a request header).
    http_only: bool,
}

#[derive(Debug, Default)]
struct CompiledSource {
    principals: Vec<Matcher>,
    not_principals: Vec<Matcher>,
    request_principals: Vec<Matcher>,
    not_request_principals: Vec<Matcher>,
    namespaces: Vec<Matcher>,
    not_namespaces: Vec<Matcher>,
    ip_blocks: Vec<IpNet>,
    not_ip_blocks: Vec<IpNet>,
    remote_ip_blocks: Vec<IpNet>,
    not_remote_ip_blocks: Vec<IpNet>,
}

#[derive(Debug, Default)]
struct CompiledOperation {
    hosts: Vec<Matcher>,
    not_hosts: Vec<Matcher>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: Vec<Matcher>,
    not_methods: Vec<Matcher>,
    paths: Vec<Matcher>,
    not_paths: Vec<Matcher>,
}

#[derive(Debug)]
enum CompiledCondition {
    /// `source.ip`, `remote.ip`, `destination.ip`: CIDR containment.
    Ip {
        key: IpKey,
        values: Vec<IpNet>,
        not_values: Vec<IpNet>,
    },
    /// `request.auth.claims[a][b]`: any of the claim's values.
    Claim {
        path: Vec<String>,
        values: Vec<Matcher>,
        not_values: Vec<Matcher>,
    },
    /// Every other key: string matches on the attribute's value.
    Text {
        key: String,
        values: Vec<Matcher>,
        not_values: Vec<Matcher>,
    },
}

#[derive(Debug, Clone, Copy)]
enum IpKey {
    Source,
    Remote,
    Destination,
}

/// An invalid policy (the contract validator prevents these).
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// Bad regex.
    #[error("authorization policy {policy}: {source}")]
    Matcher {
        /// `namespace/name`.
        policy: String,
        /// Cause.
        #[source]
        source: MatcherError,
    },
    /// Bad CIDR.
    #[error("authorization policy {policy}: {cidr:?} is not an IP or CIDR")]
    Cidr {
        /// `namespace/name`.
        policy: String,
        /// The value.
        cidr: String,
    },
}

impl Authorizer {
    /// Compile the inbound policy's authorization part.
    pub fn compile(p: &InboundPolicy) -> Result<Self, AuthzError> {
        let mut out = Self::default();
        for pol in &p.authorization {
            let compiled = compile_policy(pol)?;
            match pol.action {
                AuthzAction::Deny => out.deny.push(compiled),
                AuthzAction::Allow => out.allow.push(compiled),
                AuthzAction::Audit => out.audit.push(compiled),
            }
        }
        Ok(out)
    }

    /// Are there any policies at all?
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.audit.is_empty()
    }

    /// The first AUDIT policy a request matches (`namespace/name`), if any.
    pub fn audited(&self, req: &AuthzRequest<'_>) -> Option<&str> {
        self.audit
            .iter()
            .find(|p| p.matching_rule(req, false).is_some())
            .map(|p| p.name.as_str())
    }

    /// The names of the policies, in the order they are evaluated (DENY, ALLOW, AUDIT).
    pub fn policies(&self) -> impl Iterator<Item = &str> {
        self.deny
            .iter()
            .chain(&self.allow)
            .chain(&self.audit)
            .map(|p| p.name.as_str())
    }

    /// Evaluate a request (AUDIT policies never decide; see [`Authorizer::audited`]).
    pub fn evaluate(&self, req: &AuthzRequest<'_>) -> Decision {
        let first = |policies: &[CompiledPolicy], deny: bool| {
            policies.iter().find_map(|p| {
                p.matching_rule(req, deny).map(|rule| Decided {
                    policy: p.name.clone(),
                    rule,
                })
            })
        };
        if let Some(d) = first(&self.deny, true) {
            return Decision::Deny(Some(d));
        }
        if self.allow.is_empty() {
            return Decision::Allow(None);
        }
        match first(&self.allow, false) {
            Some(d) => Decision::Allow(Some(d)),
            None => Decision::Deny(None),
        }
    }
}

fn compile_policy(pol: &AuthorizationPolicy) -> Result<CompiledPolicy, AuthzError> {
    let name = format!("{}/{}", pol.namespace, pol.name);
    let m = |v: &[StringMatch]| {
        Matcher::compile_all(v).map_err(|source| AuthzError::Matcher {
            policy: name.clone(),
            source,
        })
    };
    let cidrs = |v: &[String]| {
        v.iter()
            .map(|c| {
                parse_cidr(c).ok_or_else(|| AuthzError::Cidr {
                    policy: name.clone(),
                    cidr: c.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let mut rules = Vec::new();
    for r in &pol.rules {
        let mut rule = CompiledRule::default();
        for s in &r.from {
            rule.from.push(CompiledSource {
                principals: m(&s.principals)?,
                not_principals: m(&s.not_principals)?,
                request_principals: m(&s.request_principals)?,
                not_request_principals: m(&s.not_request_principals)?,
                namespaces: m(&s.namespaces)?,
                not_namespaces: m(&s.not_namespaces)?,
                ip_blocks: cidrs(&s.ip_blocks)?,
                not_ip_blocks: cidrs(&s.not_ip_blocks)?,
                remote_ip_blocks: cidrs(&s.remote_ip_blocks)?,
                not_remote_ip_blocks: cidrs(&s.not_remote_ip_blocks)?,
            });
        }
        for o in &r.to {
            rule.to.push(CompiledOperation {
                hosts: m(&o.hosts)?,
                not_hosts: m(&o.not_hosts)?,
                ports: o.ports.clone(),
                not_ports: o.not_ports.clone(),
                methods: m(&o.methods)?,
                not_methods: m(&o.not_methods)?,
                paths: m(&o.paths)?,
                not_paths: m(&o.not_paths)?,
            });
        }
        for c in &r.when {
            // The contract's IP_CONDITION_KEYS.
            let ip_key = match c.key.as_str() {
                "source.ip" => Some(IpKey::Source),
                "remote.ip" => Some(IpKey::Remote),
                "destination.ip" => Some(IpKey::Destination),
                _ => None,
            };
            if let Some(path) = condition_claim(&c.key) {
                rule.when.push(CompiledCondition::Claim {
                    path: path.into_iter().map(str::to_string).collect(),
                    values: m(&c.values)?,
                    not_values: m(&c.not_values)?,
                });
                continue;
            }
            rule.when.push(match ip_key {
                Some(key) => {
                    let exact = |v: &[StringMatch]| {
                        v.iter()
                            .map(|s| match s {
                                StringMatch::Exact(c) => c.clone(),
                                other => format!("{other:?}"),
                            })
                            .collect::<Vec<_>>()
                    };
                    CompiledCondition::Ip {
                        key,
                        values: cidrs(&exact(&c.values))?,
                        not_values: cidrs(&exact(&c.not_values))?,
                    }
                }
                None => CompiledCondition::Text {
                    key: c.key.clone(),
                    values: m(&c.values)?,
                    not_values: m(&c.not_values)?,
                },
            });
        }
        rule.http_only = rule.to.iter().any(CompiledOperation::http_only)
            || rule.from.iter().any(CompiledSource::http_only)
            || rule.when.iter().any(CompiledCondition::http_only);
        rules.push(rule);
    }
    Ok(CompiledPolicy { name, rules })
}

impl CompiledPolicy {
    /// `deny`: the policy is a DENY policy (HTTP attributes of its rules are left out on
    /// TCP rather than making the rules unmatchable).
    fn matching_rule(&self, req: &AuthzRequest<'_>, deny: bool) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(req, deny))
    }
}

/// `include` (if non-empty) must match and `exclude` must not.
fn field(include: &[Matcher], exclude: &[Matcher], value: Option<&str>) -> bool {
    let inc = include.is_empty() || value.is_some_and(|v| any_match(include, v));
    let exc = value.is_some_and(|v| any_match(exclude, v));
    inc && !exc
}

/// `include` (if non-empty) must contain `ip` and `exclude` must not.
fn ip_field(include: &[IpNet], exclude: &[IpNet], ip: IpAddr) -> bool {
    (include.is_empty() || include.iter().any(|n| n.contains(&ip))) && !exclude.iter().any(|n| n.contains(&ip))
}

impl CompiledRule {
    fn matches(&self, req: &AuthzRequest<'_>, deny: bool) -> bool {
        if req.layer == Layer::Tcp && self.http_only && !deny {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req))
    }
}

impl CompiledSource {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        field(&self.principals, &self.not_principals, req.principal)
            && field(&self.namespaces, &self.not_namespaces, req.namespace)
            && (req.layer == Layer::Tcp
                || field(
                    &self.request_principals,
                    &self.not_request_principals,
                    req.auth.map(|a| a.principal.as_str()),
                ))
            && ip_field(&self.ip_blocks, &self.not_ip_blocks, req.source_ip)
            && ip_field(&self.remote_ip_blocks, &self.not_remote_ip_blocks, req.remote_ip)
    }
}

impl CompiledSource {
    /// Needs an end-user attribute, which only HTTP requests have.
    fn http_only(&self) -> bool {
        !self.request_principals.is_empty() || !self.not_request_principals.is_empty()
    }
}

/// [`field`] over an attribute with several values (audiences, list claims): `include`
/// must match one of them, `exclude` none.
fn fields(include: &[Matcher], exclude: &[Matcher], values: &[String]) -> bool {
    let inc = include.is_empty() || values.iter().any(|v| any_match(include, v));
    inc && !values.iter().any(|v| any_match(exclude, v))
}

impl CompiledOperation {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let http = req.layer == Layer::Tcp
            || (field(&self.hosts, &self.not_hosts, Some(req.host))
                && field(&self.methods, &self.not_methods, Some(req.method))
                && field(&self.paths, &self.not_paths, Some(req.path)));
        http && (self.ports.is_empty() || self.ports.contains(&req.port)) && !self.not_ports.contains(&req.port)
    }

    fn http_only(&self) -> bool {
        [
            &self.hosts,
            &self.not_hosts,
            &self.methods,
            &self.not_methods,
            &self.paths,
            &self.not_paths,
        ]
        .iter()
        .any(|v| !v.is_empty())
    }
}

impl CompiledCondition {
    fn http_only(&self) -> bool {
        match self {
            Self::Claim { .. } => true,
            Self::Text { key, .. } => condition_header(key).is_some() || REQUEST_AUTH_KEYS.contains(&key.as_str()),
            Self::Ip { .. } => false,
        }
    }

    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        if req.layer == Layer::Tcp && self.http_only() {
            // Left out on a connection (only DENY rules get here).
            return true;
        }
        let (key, values, not_values) = match self {
            Self::Claim {
                path,
                values,
                not_values,
            } => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let claims = req.auth.map(|a| a.claim_values(&path)).unwrap_or_default();
                return fields(values, not_values, &claims);
            }
            Self::Ip {
                key,
                values,
                not_values,
            } => {
                let ip = match key {
                    IpKey::Source => req.source_ip,
                    IpKey::Remote => req.remote_ip,
                    IpKey::Destination => req.destination_ip,
                };
                // An empty `values` leaves only the exclusions.
                return ip_field(values, not_values, ip);
            }
            Self::Text {
                key,
                values,
                not_values,
            } => (key, values, not_values),
        };
        let port;
        let value: Option<&str> = match key.as_str() {
            "source.principal" => req.principal,
            "source.namespace" => req.namespace,
            "connection.sni" => req.sni,
            "request.auth.principal" => req.auth.map(|a| a.principal.as_str()),
            "request.auth.presenter" => req.auth.and_then(|a| a.presenter.as_deref()),
            "request.auth.audiences" => {
                let audiences = req.auth.map(|a| a.audiences.as_slice()).unwrap_or_default();
                return fields(values, not_values, audiences);
            }
            "destination.port" => {
                port = req.port.to_string();
                Some(port.as_str())
            }
            k => {
                let joined = condition_header(k).and_then(|name| req.headers.joined(&name.to_ascii_lowercase()));
                return field(values, not_values, joined.as_deref());
            }
        };
        field(values, not_values, value)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use super::*;
    use crate::{AuthzCondition, AuthzOperation, AuthzRule, AuthzSource};

    /// Headers by lower-case name.
    #[derive(Default)]
    struct HeaderMap(BTreeMap<String, Vec<String>>);

    impl HeaderMap {
        fn new() -> Self {
            Self::default()
        }

        fn insert(&mut self, name: &str, value: &str) {
            self.0.entry(name.to_string()).or_default().push(value.to_string());
        }
    }

    impl Headers for HeaderMap {
        fn contains(&self, name: &str) -> bool {
            self.0.contains_key(name)
        }

        fn joined(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.get(name).map(|v| Cow::Owned(v.join(",")))
        }
    }

    fn decided(policy: &str, rule: usize) -> Option<Decided> {
        Some(Decided {
            policy: policy.into(),
            rule,
        })
    }

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn req<'a>(principal: Option<&'a str>, path: &'a str, headers: &'a HeaderMap) -> AuthzRequest<'a> {
        AuthzRequest {
            layer: Layer::Http,
            principal,
            namespace: principal.map(|_| "shop"),
            source_ip: "10.1.2.3".parse().unwrap(),
            remote_ip: "192.0.2.7".parse().unwrap(),
            destination_ip: "10.9.0.1".parse().unwrap(),
            sni: Some("payment.shop"),
            port: 8080,
            host: "payment",
            method: "GET",
            path,
            headers,
            auth: None,
        }
    }

    fn policy(name: &str, action: AuthzAction, rules: Vec<AuthzRule>) -> AuthorizationPolicy {
        AuthorizationPolicy {
            name: name.into(),
            namespace: "shop".into(),
            action,
            rules,
        }
    }

    fn authorizer(policies: Vec<AuthorizationPolicy>) -> Authorizer {
        Authorizer::compile(&InboundPolicy {
            authorization: policies,
            ..Default::default()
        })
        .unwrap()
    }

    fn from_web() -> AuthzRule {
        AuthzRule {
            from: vec![AuthzSource {
                principals: vec![StringMatch::Exact(WEB.into())],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn no_policies_allow() {
        let h = HeaderMap::new();
        assert_eq!(authorizer(vec![]).evaluate(&req(None, "/", &h)), Decision::Allow(None));
    }

    #[test]
    fn empty_allow_policy_allows_nothing_but_empty_rule_allows_all() {
        let h = HeaderMap::new();
        let a = authorizer(vec![policy("none", AuthzAction::Allow, vec![])]);
        assert_eq!(a.evaluate(&req(Some(WEB), "/", &h)), Decision::Deny(None));
        let a = authorizer(vec![policy("all", AuthzAction::Allow, vec![AuthzRule::default()])]);
        assert!(a.evaluate(&req(None, "/", &h)).allowed());
    }

    #[test]
    fn deny_wins_over_allow() {
        let h = HeaderMap::new();
        let deny_admin = AuthzRule {
            to: vec![AuthzOperation {
                paths: vec![StringMatch::Prefix("/admin".into())],
                ..Default::default()
            }],
            ..Default::default()
        };
        let a = authorizer(vec![
            policy("allow-web", AuthzAction::Allow, vec![from_web()]),
            policy("deny-admin", AuthzAction::Deny, vec![deny_admin]),
        ]);
        assert_eq!(
            a.evaluate(&req(Some(WEB), "/admin/x", &h)),
            Decision::Deny(decided("shop/deny-admin", 0))
        );
        assert_eq!(
            a.evaluate(&req(Some(WEB), "/pay", &h)),
            Decision::Allow(decided("shop/allow-web", 0))
        );
        // Plaintext has no principal: the allow rule cannot match.
        assert_eq!(a.evaluate(&req(None, "/pay", &h)), Decision::Deny(None));
    }

    #[test]
    fn not_fields_and_ip_blocks() {
        let h = HeaderMap::new();
        let rule = AuthzRule {
            from: vec![AuthzSource {
                not_principals: vec![StringMatch::Exact(WEB.into())],
                ip_blocks: vec!["10.1.0.0/16".into()],
                ..Default::default()
            }],
            to: vec![AuthzOperation {
                not_methods: vec![StringMatch::Exact("DELETE".into())],
                ports: vec![8080],
                ..Default::default()
            }],
            ..Default::default()
        };
        let a = authorizer(vec![policy("p", AuthzAction::Allow, vec![rule])]);
        assert!(!a.evaluate(&req(Some(WEB), "/", &h)).allowed());
        assert!(
            a.evaluate(&req(Some("spiffe://cluster.local/ns/shop/sa/other"), "/", &h))
                .allowed()
        );
        assert!(a.evaluate(&req(None, "/", &h)).allowed());
    }

    #[test]
    fn connections_skip_allow_rules_needing_http_and_deny_without_their_http_parts() {
        let h = HeaderMap::new();
        let tcp = |principal| AuthzRequest {
            layer: Layer::Tcp,
            path: "",
            method: "",
            host: "",
            ..req(principal, "", &h)
        };
        let get_only = AuthzRule {
            to: vec![AuthzOperation {
                methods: vec![StringMatch::Exact("GET".into())],
                ..Default::default()
            }],
            ..Default::default()
        };
        // ALLOW: a rule with an HTTP field matches no connection; one without still does.
        let a = authorizer(vec![policy("get", AuthzAction::Allow, vec![get_only.clone()])]);
        assert!(a.evaluate(&req(None, "/", &h)).allowed());
        assert_eq!(a.evaluate(&tcp(None)), Decision::Deny(None));
        let a = authorizer(vec![policy(
            "web",
            AuthzAction::Allow,
            vec![from_web(), get_only.clone()],
        )]);
        assert!(a.evaluate(&tcp(Some(WEB))).allowed());
        assert!(!a.evaluate(&tcp(None)).allowed());
        // DENY: the HTTP field is left out, so the rule denies every connection it could.
        let deny_get = AuthzRule {
            from: vec![AuthzSource {
                namespaces: vec![StringMatch::Exact("shop".into())],
                ..Default::default()
            }],
            when: vec![AuthzCondition {
                key: "request.headers[x-debug]".into(),
                values: vec![StringMatch::Exact("1".into())],
                not_values: vec![],
            }],
            ..get_only
        };
        let a = authorizer(vec![policy("no-get", AuthzAction::Deny, vec![deny_get])]);
        assert_eq!(a.evaluate(&tcp(Some(WEB))), Decision::Deny(decided("shop/no-get", 0)));
        assert!(
            a.evaluate(&tcp(None)).allowed(),
            "the rule's connection part (namespace) still applies"
        );
        assert!(
            a.evaluate(&req(Some(WEB), "/", &h)).allowed(),
            "over HTTP the header decides"
        );
    }

    #[test]
    fn when_conditions_on_headers() {
        let rule = AuthzRule {
            when: vec![AuthzCondition {
                key: "request.headers[x-token]".into(),
                values: vec![StringMatch::Exact("secret".into())],
                not_values: vec![],
            }],
            ..Default::default()
        };
        let a = authorizer(vec![policy("p", AuthzAction::Allow, vec![rule])]);
        let mut h = HeaderMap::new();
        assert!(!a.evaluate(&req(None, "/", &h)).allowed());
        h.insert("x-token", "secret");
        assert!(a.evaluate(&req(None, "/", &h)).allowed());
    }

    #[test]
    fn request_principals_and_request_auth_conditions() {
        let h = HeaderMap::new();
        let auth = Authenticated {
            principal: "https://issuer.example/alice".into(),
            audiences: vec!["shop".into()],
            presenter: Some("web".into()),
            claims: serde_json::json!({"groups": ["admins", "dev"], "scope": "read write"})
                .as_object()
                .unwrap()
                .clone(),
        };
        let with = |auth| AuthzRequest {
            auth,
            ..req(None, "/", &h)
        };
        let require = AuthzRule {
            from: vec![AuthzSource {
                request_principals: vec![StringMatch::Prefix(String::new())],
                ..Default::default()
            }],
            ..Default::default()
        };
        let a = authorizer(vec![policy("require-jwt", AuthzAction::Allow, vec![require])]);
        assert!(a.evaluate(&with(Some(&auth))).allowed());
        assert_eq!(a.evaluate(&with(None)), Decision::Deny(None), "no token, no principal");
        // Istio's DENY notRequestPrincipals ["*"]: refuses requests without a token only.
        let deny_anonymous = AuthzRule {
            from: vec![AuthzSource {
                not_request_principals: vec![StringMatch::Prefix(String::new())],
                ..Default::default()
            }],
            ..Default::default()
        };
        let a = authorizer(vec![policy("deny-anon", AuthzAction::Deny, vec![deny_anonymous])]);
        assert!(a.evaluate(&with(Some(&auth))).allowed());
        assert!(!a.evaluate(&with(None)).allowed());
        let cond = |key: &str, value: &str| AuthzRule {
            when: vec![AuthzCondition {
                key: key.into(),
                values: vec![StringMatch::Exact(value.into())],
                not_values: vec![],
            }],
            ..Default::default()
        };
        for (key, value, want) in [
            ("request.auth.claims[groups]", "admins", true),
            ("request.auth.claims[groups]", "root", false),
            ("request.auth.claims[scope]", "write", true),
            ("request.auth.audiences", "shop", true),
            ("request.auth.audiences", "bank", false),
            ("request.auth.presenter", "web", true),
            ("request.auth.principal", "https://issuer.example/alice", true),
        ] {
            let a = authorizer(vec![policy("p", AuthzAction::Allow, vec![cond(key, value)])]);
            assert_eq!(a.evaluate(&with(Some(&auth))).allowed(), want, "{key} {value}");
            assert!(!a.evaluate(&with(None)).allowed(), "{key} without a token");
        }
    }
}
