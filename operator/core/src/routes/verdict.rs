//! A destination's authorization verdict for `meshctl routes`: what the endpoint's proxy
//! decides for the source's request (or connection), by the AuthorizationPolicies that select
//! it — evaluated by the proxy's own evaluator ([`trellis_contract::authorization`]), with
//! the attributes the destination's proxy sees: the source's SPIFFE identity when the hop is
//! mutual TLS, its address, the endpoint's address and port, and the request's method, path,
//! host and headers.
//!
//! # Caveats
//! - meshctl verifies no JWT: the request is evaluated without a verified end-user token, and
//!   a verdict that depends on one (`requestPrincipals`, `request.auth.*`) says so.

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;
use trellis_contract::authorization::{Authorizer, AuthzRequest, Decided, Decision, Layer, peer_namespace};
use trellis_contract::{AuthzAction, Cluster, Endpoint, InboundPolicy, UpstreamTls};

use super::request::RequestSpec;

/// Who sends: the source workload as the destination's proxy sees it.
#[derive(Debug, Clone)]
pub struct Sender {
    /// Its SPIFFE ID (what its certificate carries).
    pub spiffe_id: Option<String>,
    /// Its pod's address (unspecified when unknown).
    pub ip: IpAddr,
    /// Whether it has a proxy (only a proxy speaks mutual TLS for it).
    pub meshed: bool,
}

impl Sender {
    /// A sender from its SPIFFE ID and pod address (`None` or unparsable: unspecified).
    pub fn new(spiffe_id: Option<String>, ip: Option<&str>, meshed: bool) -> Sender {
        Sender {
            spiffe_id,
            ip: ip
                .and_then(|ip| ip.parse().ok())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            meshed,
        }
    }
}

/// What is sent: an HTTP request (to `host`) or an opaque TCP connection.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// The request `--request` names, to `host`.
    Request {
        /// The request.
        spec: &'a RequestSpec,
        /// The host it is addressed to.
        host: &'a str,
    },
    /// A TCP connection.
    Connection,
}

/// The endpoint proxy's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// `ALLOW` or `DENY`.
    pub decision: &'static str,
    /// The AuthorizationPolicy that decided (`namespace/name`), if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The index of its rule that matched (`spec.rules[N]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// The decision in words.
    pub reason: String,
}

/// The verdict of the proxy of endpoint `e` of cluster `c` (whose inbound policy is `policy`,
/// compiled into `authorizer`) on `attempt` from `sender`.
pub fn verdict(
    policy: &InboundPolicy,
    authorizer: &Authorizer,
    attempt: Attempt<'_>,
    sender: &Sender,
    c: &Cluster,
    e: &Endpoint,
) -> Verdict {
    // The hop is mutual TLS when the source's proxy originates it: then the destination's
    // proxy knows the source by its certificate.
    let mtls = sender.meshed && matches!(c.tls, UpstreamTls::Mesh { .. });
    let principal = if mtls { sender.spiffe_id.as_deref() } else { None };
    let namespace = peer_namespace(principal);
    let sni = match &c.tls {
        UpstreamTls::Mesh { sni: Some(sni), .. } => Some(sni.as_str()),
        UpstreamTls::Mesh { sni: None, .. } => c.service.as_deref(),
        _ => None,
    };
    let no_headers = RequestSpec::default();
    let (layer, host, method, path, headers) = match attempt {
        Attempt::Request { spec, host } => (Layer::Http, host, spec.method.as_str(), spec.path.as_str(), spec),
        Attempt::Connection => (Layer::Tcp, "", "", "", &no_headers),
    };
    let request = AuthzRequest {
        layer,
        principal,
        namespace: namespace.as_deref(),
        source_ip: sender.ip,
        remote_ip: sender.ip,
        destination_ip: e.address.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        sni,
        port: e.port,
        host,
        method,
        path,
        headers,
        auth: None,
    };
    let mut v = explain(policy, authorizer.evaluate(&request));
    if layer == Layer::Http && needs_end_user(policy) {
        v.reason
            .push_str(" (evaluated without an end-user token: meshctl verifies no JWT)");
    }
    v
}

fn explain(policy: &InboundPolicy, decision: Decision) -> Verdict {
    let by = |d: Decided, decision: &'static str| Verdict {
        decision,
        reason: format!("{decision} by AuthorizationPolicy {} rules[{}]", d.policy, d.rule),
        policy: Some(d.policy),
        rule: Some(d.rule),
    };
    let named = |action: AuthzAction| -> Vec<String> {
        policy
            .authorization
            .iter()
            .filter(|p| p.action == action)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    };
    let without = |decision: &'static str, reason: String| Verdict {
        decision,
        policy: None,
        rule: None,
        reason,
    };
    match decision {
        Decision::Allow(Some(d)) => by(d, "ALLOW"),
        Decision::Deny(Some(d)) => by(d, "DENY"),
        Decision::Allow(None) => {
            let deny = named(AuthzAction::Deny);
            if deny.is_empty() {
                without("ALLOW", "ALLOW: no AuthorizationPolicy selects it".into())
            } else {
                without(
                    "ALLOW",
                    format!(
                        "ALLOW: no DENY policy matches ({}), and no ALLOW policy selects it",
                        deny.join(", ")
                    ),
                )
            }
        }
        Decision::Deny(None) => without(
            "DENY",
            format!(
                "DENY: no rule of its ALLOW policies matches ({})",
                named(AuthzAction::Allow).join(", ")
            ),
        ),
    }
}

/// Whether a rule of `policy` looks at end-user (JWT) attributes.
fn needs_end_user(policy: &InboundPolicy) -> bool {
    policy.authorization.iter().flat_map(|p| &p.rules).any(|r| {
        r.from
            .iter()
            .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty())
            || r.when.iter().any(|c| c.key.starts_with("request.auth."))
    })
}

#[cfg(test)]
mod tests {
    use trellis_contract::{AuthorizationPolicy, AuthzOperation, AuthzRule, AuthzSource, StringMatch};

    use super::*;

    const PAYMENT: &str = "spiffe://cluster.local/ns/shop/sa/payment";
    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn db_policy() -> InboundPolicy {
        InboundPolicy {
            authorization: vec![AuthorizationPolicy {
                name: "db-deny-admin".into(),
                namespace: "shop".into(),
                action: AuthzAction::Deny,
                rules: vec![
                    AuthzRule {
                        to: vec![AuthzOperation {
                            methods: vec![StringMatch::Exact("DELETE".into())],
                            ..AuthzOperation::default()
                        }],
                        ..AuthzRule::default()
                    },
                    AuthzRule {
                        from: vec![AuthzSource {
                            principals: vec![StringMatch::Exact(PAYMENT.into())],
                            ..AuthzSource::default()
                        }],
                        to: vec![AuthzOperation {
                            paths: vec![StringMatch::Prefix("/db/admin".into())],
                            ..AuthzOperation::default()
                        }],
                        ..AuthzRule::default()
                    },
                ],
            }],
            ..InboundPolicy::default()
        }
    }

    fn mesh_cluster() -> Cluster {
        let mut c: Cluster = serde_json::from_value(serde_json::json!({
            "name": "outbound|8080||db.shop.svc.cluster.local",
            "service": "db.shop.svc.cluster.local",
        }))
        .unwrap();
        c.tls = UpstreamTls::Mesh {
            expected_identities: vec![],
            sni: None,
        };
        c
    }

    fn endpoint() -> Endpoint {
        serde_json::from_value(serde_json::json!({"address": "10.244.0.20", "port": 8080})).unwrap()
    }

    fn decide(policy: &InboundPolicy, from: &Sender, request: &str) -> Verdict {
        let authorizer = Authorizer::compile(policy).unwrap();
        let spec = RequestSpec::parse(request).unwrap();
        let attempt = Attempt::Request {
            spec: &spec,
            host: "db.shop.svc.cluster.local",
        };
        verdict(policy, &authorizer, attempt, from, &mesh_cluster(), &endpoint())
    }

    #[test]
    fn the_policy_and_rule_that_decide_are_named() {
        let payment = Sender::new(Some(PAYMENT.into()), Some("10.244.0.11"), true);
        let web = Sender::new(Some(WEB.into()), Some("10.244.0.13"), true);
        let p = db_policy();
        let denied = decide(&p, &payment, "GET /db/admin/users");
        assert_eq!(
            denied,
            Verdict {
                decision: "DENY",
                policy: Some("shop/db-deny-admin".into()),
                rule: Some(1),
                reason: "DENY by AuthorizationPolicy shop/db-deny-admin rules[1]".into(),
            }
        );
        // The source decides: web is not the principal the rule names.
        let web_admin = decide(&p, &web, "GET /db/admin/users");
        assert_eq!(web_admin.decision, "ALLOW");
        assert_eq!(
            web_admin.reason,
            "ALLOW: no DENY policy matches (shop/db-deny-admin), and no ALLOW policy selects it"
        );
        assert_eq!(decide(&p, &web, "DELETE /db/records").rule, Some(0));
        assert_eq!(decide(&p, &payment, "GET /db/records").decision, "ALLOW");
        // Without a proxy, the source has no identity: the principal rule cannot match it.
        let unmeshed = Sender::new(Some(PAYMENT.into()), None, false);
        assert_eq!(decide(&p, &unmeshed, "GET /db/admin/users").decision, "ALLOW");
    }

    #[test]
    fn allow_policies_deny_what_none_of_their_rules_match() {
        let allow_web = InboundPolicy {
            authorization: vec![AuthorizationPolicy {
                name: "callers".into(),
                namespace: "shop".into(),
                action: AuthzAction::Allow,
                rules: vec![AuthzRule {
                    from: vec![AuthzSource {
                        principals: vec![StringMatch::Exact(WEB.into())],
                        ..AuthzSource::default()
                    }],
                    ..AuthzRule::default()
                }],
            }],
            ..InboundPolicy::default()
        };
        let web = Sender::new(Some(WEB.into()), None, true);
        let payment = Sender::new(Some(PAYMENT.into()), None, true);
        let ok = decide(&allow_web, &web, "GET /");
        assert_eq!(ok.reason, "ALLOW by AuthorizationPolicy shop/callers rules[0]");
        let refused = decide(&allow_web, &payment, "GET /");
        assert_eq!(
            refused.reason,
            "DENY: no rule of its ALLOW policies matches (shop/callers)"
        );
        assert_eq!(
            decide(&InboundPolicy::default(), &payment, "GET /").reason,
            "ALLOW: no AuthorizationPolicy selects it"
        );
        // A connection: the ALLOW rule needs no HTTP attribute, so it applies to TCP too.
        let authorizer = Authorizer::compile(&allow_web).unwrap();
        let tcp = verdict(
            &allow_web,
            &authorizer,
            Attempt::Connection,
            &web,
            &mesh_cluster(),
            &endpoint(),
        );
        assert_eq!(tcp.decision, "ALLOW");
    }

    #[test]
    fn a_verdict_that_needs_a_token_says_it_was_evaluated_without_one() {
        let p = InboundPolicy {
            authorization: vec![AuthorizationPolicy {
                name: "require-jwt".into(),
                namespace: "shop".into(),
                action: AuthzAction::Allow,
                rules: vec![AuthzRule {
                    from: vec![AuthzSource {
                        request_principals: vec![StringMatch::Prefix(String::new())],
                        ..AuthzSource::default()
                    }],
                    ..AuthzRule::default()
                }],
            }],
            ..InboundPolicy::default()
        };
        let web = Sender::new(Some(WEB.into()), None, true);
        let v = decide(&p, &web, "GET / -H authorization:Bearer x");
        assert_eq!(v.decision, "DENY");
        assert!(
            v.reason
                .ends_with("(evaluated without an end-user token: meshctl verifies no JWT)")
        );
    }
}
