//! The DestinationRule policy in force for one port of a host, or of one of its subsets, as
//! Istio resolves it: `GetPortLevelTrafficPolicy` and `MergeSubsetTrafficPolicy`
//! (pilot/pkg/networking/util/util.go), `MergeTrafficPolicy` and `ShallowCopyTrafficPolicy`
//! (pilot/pkg/model/destination_rule.go), istio/istio 86c9f01. Outbound clusters
//! ([`super::cluster`]) and inbound ones ([`super::inbound::ingress`]) both take it from
//! [`in_force`], so the two directions cannot drift.
//!
//! The rules, in Istio's order:
//!
//! 1. **The port.** The rule's `trafficPolicy.portLevelSettings` entry whose `port.number` is
//!    the Service port (the first; the validator refuses two) **replaces** the rule's
//!    `trafficPolicy` whole: the port gets the entry's `loadBalancer`, `connectionPool`,
//!    `outlierDetection` and `tls`, and the default for each the entry leaves out ("Traffic
//!    settings specified at the destination-level will not be inherited when overridden by
//!    port-level settings, i.e. default values will be applied to fields omitted in port-level
//!    traffic policies", istio/api destination_rule.proto). A port entry has no `retryBudget`,
//!    `tunnel` or `proxyProtocol`, and the rule's do not apply on that port either (Istio's
//!    `shadowCopyPortTrafficPolicy` copies the four blocks only). Without an entry for the port,
//!    the rule's `trafficPolicy` applies as written.
//! 2. **The subset** (outbound only: an inbound cluster serves every subset). The subset's
//!    `trafficPolicy` is first resolved for the port the same way, then:
//!    - without a port entry of its own for the port, it is merged into step 1's block by
//!      block: each of `loadBalancer`, `connectionPool`, `outlierDetection`, `tls` and
//!      `retryBudget` that it sets replaces step 1's, whole (the blocks are not merged field
//!      by field); the others stay;
//!    - with one, the entry's four blocks replace step 1's, set or not (one left out is the
//!      default); step 1's `retryBudget` stays, and the subset's own top-level one does not
//!      apply on that port (`MergeTrafficPolicy` with `hasPortLevel`).
//!
//!    A rule without a `trafficPolicy` leaves the subset's resolved policy as it is.
//!
//! `tunnel` and `proxyProtocol` are refused by the validator (not supported by Trellis yet) and
//! take no part here; Istio treats them as `retryBudget` (a subset's replaces the rule's, a
//! port entry has none), which is what implementing them must do. Not decided here: Envoy's TCP proxy takes its
//! idle timeout and duration from the rule's own top-level `connectionPool.tcp` whatever the
//! port or subset (`buildOutboundNetworkFiltersWithSingleDestination`; `cluster::tcp_proxy`).

use trellis_api::networking::{DestinationRuleSpec, TrafficPolicy};

/// A DestinationRule's policy for one port (and subset), and where in the rule it came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct InForce {
    /// The blocks in force (no `portLevelSettings`: they are resolved).
    pub(crate) policy: TrafficPolicy,
    /// The parts of the rule the resolution went through, in order: `trafficPolicy` or
    /// `trafficPolicy.portLevelSettings[i]` (which replaced it), then
    /// `subsets[j].trafficPolicy` or `subsets[j].trafficPolicy.portLevelSettings[k]`, merged
    /// into the first. Empty: the rule sets no policy for this port and subset.
    pub(crate) parts: Vec<String>,
}

/// The policy of `rule` in force for the Service port `port` of the host, or of its subset
/// named `subset` (see the module docs). A subset the rule does not define adds nothing.
pub(crate) fn in_force(rule: &DestinationRuleSpec, subset: Option<&str>, port: u16) -> InForce {
    let base = rule
        .traffic_policy
        .as_ref()
        .map(|p| for_port(p, port, "trafficPolicy".into()));
    let subset = subset.and_then(|name| {
        let (j, s) = rule
            .subsets
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, s)| s.name == name)?;
        let p = s.traffic_policy.as_ref()?;
        Some(for_port(p, port, format!("subsets[{j}].trafficPolicy")))
    });
    match (base, subset) {
        (None, None) => InForce::default(),
        (Some((b, _)), None) => b,
        (None, Some((s, _))) => s,
        (Some((mut b, _)), Some((s, port_level))) => {
            merge(&mut b.policy, s.policy, port_level);
            b.parts.extend(s.parts);
            b
        }
    }
}

/// `policy` resolved for `port` (Istio's `GetPortLevelTrafficPolicy`): its entry for the port,
/// whole, if it has one (`true`), else itself without its port entries. `at` names `policy`.
fn for_port(policy: &TrafficPolicy, port: u16, at: String) -> (InForce, bool) {
    let entry = policy
        .port_level_settings
        .iter()
        .flatten()
        .enumerate()
        .find(|(_, pl)| pl.port.as_ref().is_some_and(|p| p.number == u32::from(port)));
    match entry {
        Some((i, pl)) => {
            let replaced = TrafficPolicy {
                load_balancer: pl.load_balancer.clone(),
                connection_pool: pl.connection_pool.clone(),
                outlier_detection: pl.outlier_detection.clone(),
                tls: pl.tls.clone(),
                ..TrafficPolicy::default()
            };
            let parts = vec![format!("{at}.portLevelSettings[{i}]")];
            (
                InForce {
                    policy: replaced,
                    parts,
                },
                true,
            )
        }
        None => {
            let whole = TrafficPolicy {
                port_level_settings: None,
                ..policy.clone()
            };
            (
                InForce {
                    policy: whole,
                    parts: vec![at],
                },
                false,
            )
        }
    }
}

/// A subset's resolved policy merged into the rule's (Istio's `MergeTrafficPolicy`): block by
/// block, or the four port blocks whole when the subset's came from a port entry.
fn merge(into: &mut TrafficPolicy, subset: TrafficPolicy, port_level: bool) {
    fn take<T>(into: &mut Option<T>, from: Option<T>, whole: bool) {
        if whole || from.is_some() {
            *into = from;
        }
    }
    take(&mut into.load_balancer, subset.load_balancer, port_level);
    take(&mut into.connection_pool, subset.connection_pool, port_level);
    take(&mut into.outlier_detection, subset.outlier_detection, port_level);
    take(&mut into.tls, subset.tls, port_level);
    take(&mut into.retry_budget, subset.retry_budget, false);
}
