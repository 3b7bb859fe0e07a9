//! Authorization policy evaluation with Istio's semantics: any matching DENY
//! policy denies; otherwise, with no ALLOW policy the request is allowed; with
//! ALLOW policies it is allowed only if one of them matches. An ALLOW policy
//! without rules matches nothing ("an empty spec allows nothing").

use crate::matcher::{Matcher, MatcherError, any_match};
use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;
use trellis_contract::{AuthorizationPolicy, AuthzAction, InboundPolicy, parse_cidr};

/// The request attributes policies look at.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// Verified peer SPIFFE ID (mTLS), if any.
    pub principal: Option<&'a str>,
    /// Peer namespace, from the SPIFFE ID.
    pub namespace: Option<&'a str>,
    /// Peer IP.
    pub source_ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Host, without port.
    pub host: &'a str,
    /// Method.
    pub method: &'a str,
    /// Normalized path, without query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// The decision, naming the policy that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; by which ALLOW policy (`None` when no ALLOW policy exists).
    Allow(Option<String>),
    /// Denied; by which DENY policy, or `None` when no ALLOW policy matched.
    Deny(Option<String>),
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
}

#[derive(Debug, Default)]
struct CompiledSource {
    principals: Vec<Matcher>,
    not_principals: Vec<Matcher>,
    namespaces: Vec<Matcher>,
    not_namespaces: Vec<Matcher>,
    ip_blocks: Vec<IpNet>,
    not_ip_blocks: Vec<IpNet>,
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
struct CompiledCondition {
    key: String,
    values: Vec<Matcher>,
    not_values: Vec<Matcher>,
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
            }
        }
        Ok(out)
    }

    /// Are there any policies at all?
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    /// Evaluate a request.
    pub fn evaluate(&self, req: &AuthzRequest<'_>) -> Decision {
        if let Some(p) = self.deny.iter().find(|p| p.matches(req)) {
            return Decision::Deny(Some(p.name.clone()));
        }
        if self.allow.is_empty() {
            return Decision::Allow(None);
        }
        match self.allow.iter().find(|p| p.matches(req)) {
            Some(p) => Decision::Allow(Some(p.name.clone())),
            None => Decision::Deny(None),
        }
    }
}

fn compile_policy(pol: &AuthorizationPolicy) -> Result<CompiledPolicy, AuthzError> {
    let name = format!("{}/{}", pol.namespace, pol.name);
    let m = |v: &[trellis_contract::StringMatch]| {
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
                namespaces: m(&s.namespaces)?,
                not_namespaces: m(&s.not_namespaces)?,
                ip_blocks: cidrs(&s.ip_blocks)?,
                not_ip_blocks: cidrs(&s.not_ip_blocks)?,
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
            rule.when.push(CompiledCondition {
                key: c.key.clone(),
                values: m(&c.values)?,
                not_values: m(&c.not_values)?,
            });
        }
        rules.push(rule);
    }
    Ok(CompiledPolicy { name, rules })
}

impl CompiledPolicy {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(req))
    }
}

/// `include` (if non-empty) must match and `exclude` must not.
fn field(include: &[Matcher], exclude: &[Matcher], value: Option<&str>) -> bool {
    let inc = include.is_empty() || value.is_some_and(|v| any_match(include, v));
    let exc = value.is_some_and(|v| any_match(exclude, v));
    inc && !exc
}

impl CompiledRule {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req))
    }
}

impl CompiledSource {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let ip_in = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&req.source_ip));
        field(&self.principals, &self.not_principals, req.principal)
            && field(&self.namespaces, &self.not_namespaces, req.namespace)
            && (self.ip_blocks.is_empty() || ip_in(&self.ip_blocks))
            && !ip_in(&self.not_ip_blocks)
    }
}

impl CompiledOperation {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        field(&self.hosts, &self.not_hosts, Some(req.host))
            && field(&self.methods, &self.not_methods, Some(req.method))
            && field(&self.paths, &self.not_paths, Some(req.path))
            && (self.ports.is_empty() || self.ports.contains(&req.port))
            && !self.not_ports.contains(&req.port)
    }
}

impl CompiledCondition {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let port;
        let ip;
        let value: Option<&str> = match self.key.as_str() {
            "source.principal" => req.principal,
            "source.namespace" => req.namespace,
            "source.ip" => {
                ip = req.source_ip.to_string();
                Some(ip.as_str())
            }
            "destination.port" => {
                port = req.port.to_string();
                Some(port.as_str())
            }
            "request.method" => Some(req.method),
            "request.path" => Some(req.path),
            k => k
                .strip_prefix("request.headers[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|name| req.headers.get(name))
                .and_then(|v| v.to_str().ok()),
        };
        field(&self.values, &self.not_values, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_contract::{AuthzOperation, AuthzRule, AuthzSource, StringMatch};

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn req<'a>(principal: Option<&'a str>, path: &'a str, headers: &'a HeaderMap) -> AuthzRequest<'a> {
        AuthzRequest {
            principal,
            namespace: principal.map(|_| "shop"),
            source_ip: "10.1.2.3".parse().unwrap(),
            port: 8080,
            host: "payment",
            method: "GET",
            path,
            headers,
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
            Decision::Deny(Some("shop/deny-admin".into()))
        );
        assert_eq!(
            a.evaluate(&req(Some(WEB), "/pay", &h)),
            Decision::Allow(Some("shop/allow-web".into()))
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
    fn when_conditions_on_headers() {
        let rule = AuthzRule {
            when: vec![trellis_contract::AuthzCondition {
                key: "request.headers[x-token]".into(),
                values: vec![StringMatch::Exact("secret".into())],
                not_values: vec![],
            }],
            ..Default::default()
        };
        let a = authorizer(vec![policy("p", AuthzAction::Allow, vec![rule])]);
        let mut h = HeaderMap::new();
        assert!(!a.evaluate(&req(None, "/", &h)).allowed());
        h.insert("x-token", "secret".parse().unwrap());
        assert!(a.evaluate(&req(None, "/", &h)).allowed());
    }
}
