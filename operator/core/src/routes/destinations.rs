//! A destination of a route as `meshctl routes` shows it: its cluster's policy (the
//! DestinationRule that shaped it, load balancing, TLS, outlier detection), its endpoints, the
//! inbound policy (mutual TLS mode, AuthorizationPolicies) of their proxies, and each
//! endpoint's authorization verdict on what the source sends ([`super::verdict`]).

use std::collections::BTreeMap;

use crate::compile::{self, Role};
use crate::registry::ObjectKey;
use crate::snapshot::Snapshot;
use anyhow::Context;
use serde::Serialize;
use trellis_contract::authorization::Authorizer;
use trellis_contract::{AuthzAction, Cluster, HealthStatus, LbPolicy, MtlsMode, Provenance, UpstreamTls};

use super::verdict::{self, Attempt, Sender, Verdict};

/// A destination: its cluster, policy and endpoints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Cluster name (`outbound|port|subset|host`).
    pub cluster: String,
    /// The DestinationRule whose policy applies, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<String>,
    /// Load balancing, TLS, connect timeout and outlier detection, as the proxy applies them.
    pub policy: String,
    /// Endpoints.
    pub endpoints: Vec<EndpointReport>,
}

/// One endpoint, and what its proxy enforces on the port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointReport {
    /// `ip:port`.
    pub address: String,
    /// `healthy` or `unhealthy` (not ready).
    pub health: String,
    /// The SPIFFE identity the client expects (none: plaintext, no proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The pod, `namespace/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The mutual TLS mode its proxy enforces on the port.
    pub mtls: String,
    /// Its authorization: the AuthorizationPolicies that select it, or that none does.
    pub authorization: String,
    /// What its proxy decides for the source's request (`--request`) or, on a TCP port, its
    /// connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// The inbound policy of endpoint pods and its authorizer, compiled once per pod.
#[derive(Default)]
pub(super) struct Inbound {
    by_pod: BTreeMap<ObjectKey, (trellis_contract::InboundPolicy, Authorizer)>,
}

impl Inbound {
    pub(super) fn of(
        &mut self,
        snapshot: &Snapshot,
        pod: &ObjectKey,
    ) -> anyhow::Result<&(trellis_contract::InboundPolicy, Authorizer)> {
        if !self.by_pod.contains_key(pod) {
            let own = compile::compile_workload(snapshot, pod, Role::Sidecar, "meshctl")?;
            let authorizer = Authorizer::compile(&own.config.inbound)
                .with_context(|| format!("the AuthorizationPolicies of pod {pod}"))?;
            self.by_pod.insert(pod.clone(), (own.config.inbound, authorizer));
        }
        self.by_pod
            .get(pod)
            .with_context(|| format!("the inbound policy of pod {pod} was not compiled"))
    }
}

/// A destination, and each endpoint's verdict on `asked` (what the sender sends) if given.
pub(super) fn destination(
    snapshot: &Snapshot,
    c: &Cluster,
    inbound: &mut Inbound,
    asked: Option<(Attempt<'_>, &Sender)>,
) -> anyhow::Result<Destination> {
    // The compiler records the DestinationRule it applied (compile::destination_rule_for).
    // With the parts of it in force for the cluster's port and subset.
    let destination_rule = c.provenance.as_ref().map(Provenance::describe);
    let lb = match &c.load_balancer.policy {
        LbPolicy::RoundRobin => "ROUND_ROBIN".to_string(),
        LbPolicy::LeastRequest => "LEAST_REQUEST".to_string(),
        LbPolicy::Random => "RANDOM".to_string(),
        LbPolicy::RingHash { .. } => "RING_HASH".to_string(),
        LbPolicy::Maglev { .. } => "MAGLEV".to_string(),
    };
    let tls = match &c.tls {
        UpstreamTls::Disable => "plaintext".to_string(),
        UpstreamTls::Mesh { .. } => "mutual TLS (mesh)".to_string(),
        UpstreamTls::Originate(o) if o.client_certificate.is_some() => {
            format!("TLS originated, MUTUAL (SNI {})", o.sni)
        }
        UpstreamTls::Originate(o) => format!("TLS originated, SIMPLE (SNI {})", o.sni),
    };
    let mut policy = format!("{lb}; {tls}; connect timeout {} ms", c.connect_timeout_ms);
    if let Some(od) = &c.outlier_detection {
        policy.push_str(&format!("; eject after {} consecutive 5xx", od.consecutive_5xx));
    }
    let mut endpoints = Vec::new();
    for e in &c.endpoints {
        let workload = snapshot
            .registry
            .workloads
            .values()
            .find(|w| w.ip.as_deref() == Some(e.address.as_str()));
        let (mtls, authorization, verdict) = match workload {
            Some(w) if w.meshed => {
                let (policy, authorizer) = inbound.of(snapshot, &w.key)?;
                (
                    mtls_text(policy.mtls.mode_for(e.port)),
                    authz_text(policy),
                    asked.map(|(attempt, sender)| verdict::verdict(policy, authorizer, attempt, sender, c, e)),
                )
            }
            _ => (
                "none (no proxy: plaintext)".to_string(),
                "none (no proxy enforces a policy)".to_string(),
                None,
            ),
        };
        endpoints.push(EndpointReport {
            address: format!("{}:{}", e.address, e.port),
            health: match e.health {
                HealthStatus::Healthy => "healthy".into(),
                _ => "unhealthy".into(),
            },
            identity: e.identity.clone(),
            pod: workload.map(|w| w.key.to_string()),
            mtls,
            authorization,
            verdict,
        });
    }
    Ok(Destination {
        cluster: c.name.clone(),
        destination_rule,
        policy,
        endpoints,
    })
}

pub(super) fn mtls_text(mode: MtlsMode) -> String {
    match mode {
        MtlsMode::Strict => "STRICT (mutual TLS only)".into(),
        MtlsMode::Permissive => "PERMISSIVE (mutual TLS or plaintext)".into(),
        MtlsMode::Disable => "DISABLE (plaintext)".into(),
    }
}

pub(super) fn authz_text(p: &trellis_contract::InboundPolicy) -> String {
    if p.authorization.is_empty() {
        return "no AuthorizationPolicy: every request allowed".into();
    }
    let policies: Vec<String> = p
        .authorization
        .iter()
        .map(|a| {
            let action = match a.action {
                AuthzAction::Allow => "ALLOW",
                AuthzAction::Deny => "DENY",
                AuthzAction::Audit => "AUDIT",
            };
            format!("{action} {}/{}", a.namespace, a.name)
        })
        .collect();
    format!("decided by {}", policies.join(", "))
}

#[cfg(test)]
mod tests {
    use super::super::model::Report;
    use super::super::model::tests::payment_report;

    #[test]
    fn destinations_carry_their_policy_endpoints_and_inbound_policy() {
        let r = payment_report(Some("web"), None);
        let dests = &r.ports[0].destinations;
        let names: Vec<&str> = dests.iter().map(|d| d.cluster.as_str()).collect();
        assert_eq!(
            names,
            [
                "outbound|8080|v1|payment.shop.svc.cluster.local",
                "outbound|8080|v2|payment.shop.svc.cluster.local"
            ]
        );
        let v2 = &dests[1];
        assert_eq!(
            v2.destination_rule.as_deref(),
            Some("DestinationRule shop/payment trafficPolicy")
        );
        assert!(
            v2.policy.starts_with("LEAST_REQUEST; mutual TLS (mesh)"),
            "{}",
            v2.policy
        );
        assert_eq!(v2.endpoints.len(), 1);
        let e = &v2.endpoints[0];
        assert_eq!(e.address, "10.244.0.12:8080");
        assert_eq!(e.pod.as_deref(), Some("shop/payment-v2-b"));
        assert_eq!(e.identity.as_deref(), Some("spiffe://cluster.local/ns/shop/sa/default"));
        assert_eq!(e.mtls, "STRICT (mutual TLS only)");
        assert_eq!(e.authorization, "decided by ALLOW shop/payment-callers");
    }

    #[test]
    fn each_endpoint_says_what_its_proxy_decides_for_the_source_and_request() {
        let verdicts = |r: &Report| -> Vec<String> {
            r.ports[0]
                .destinations
                .iter()
                .flat_map(|d| &d.endpoints)
                .map(|e| e.verdict.as_ref().map_or("none".to_string(), |v| v.reason.clone()))
                .collect()
        };
        let from_web = payment_report(Some("web"), Some("GET /pay"));
        assert_eq!(
            verdicts(&from_web),
            ["ALLOW by AuthorizationPolicy shop/payment-callers rules[0]"; 2]
        );
        let v = from_web.ports[0].destinations[0].endpoints[0].verdict.as_ref().unwrap();
        assert_eq!(
            (v.decision, v.policy.as_deref(), v.rule),
            ("ALLOW", Some("shop/payment-callers"), Some(0))
        );
        // The policy admits namespace shop only.
        let outsider = payment_report(Some("other/cli-1"), Some("GET /pay"));
        assert_eq!(
            verdicts(&outsider),
            ["DENY: no rule of its ALLOW policies matches (shop/payment-callers)"; 2]
        );
        // Without a request, an HTTP port's policies are listed, not decided.
        assert_eq!(verdicts(&payment_report(Some("web"), None)), ["none"; 2]);
    }
}
