//! DestinationRule `portLevelSettings` entries that leave a port without blocks the rest of
//! the host has (`TRL0114`, Info). As in Istio, a port's entry replaces the policy whole on
//! that port — nothing of the rule's (or, for a subset's entry, of the subset's and the
//! rule's) `loadBalancer`, `connectionPool`, `outlierDetection`, `tls` or `retryBudget` is
//! inherited (`compile::policy`) —, which surprises users who expect the entry to override
//! only what it sets. Istio's analyzers say nothing of it; the finding names the blocks the
//! port loses and the fix.

use trellis_api::networking::{DestinationRule, TrafficPolicy};

use super::{Facts, Raw, key_of};
use crate::code::Code;
use crate::compile::policy::in_force;

pub(super) fn check(f: &Facts<'_>, out: &mut Vec<Raw>) {
    for dr in &f.snapshot.destination_rules {
        dropped_blocks(dr, out);
    }
}

/// The blocks of a policy that are set, by their field names.
fn blocks(p: &TrafficPolicy) -> Vec<&'static str> {
    [
        ("loadBalancer", p.load_balancer.is_some()),
        ("connectionPool", p.connection_pool.is_some()),
        ("outlierDetection", p.outlier_detection.is_some()),
        ("tls", p.tls.is_some()),
        ("retryBudget", p.retry_budget.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// Each port entry (the rule's, a subset's) whose port goes without blocks that the same
/// destination (host, or subset) has on a port without an entry.
fn dropped_blocks(dr: &DestinationRule, out: &mut Vec<Raw>) {
    let key = key_of(&dr.metadata);
    let spec = &dr.spec;
    let mut entries = vec![(None, "spec.trafficPolicy".to_string(), spec.traffic_policy.as_ref())];
    for (j, s) in spec.subsets.iter().flatten().enumerate() {
        entries.push((
            Some(s.name.as_str()),
            format!("spec.subsets[{j}].trafficPolicy"),
            s.traffic_policy.as_ref(),
        ));
    }
    for (subset, at, policy) in entries {
        let Some(policy) = policy else { continue };
        for (i, pl) in policy.port_level_settings.iter().flatten().enumerate() {
            let Some(port) = pl.port.as_ref().and_then(|p| u16::try_from(p.number).ok()) else {
                continue;
            };
            // Port 0 has no entry (the validator wants 1-65535): what the other ports get.
            let elsewhere = blocks(&in_force(spec, subset, 0).policy);
            let here = blocks(&in_force(spec, subset, port).policy);
            let lost: Vec<&str> = elsewhere.into_iter().filter(|b| !here.contains(b)).collect();
            if lost.is_empty() {
                continue;
            }
            let whose = match subset {
                None => "the host's other ports".to_string(),
                Some(s) => format!("subset {s:?} on other ports"),
            };
            let fix = if lost == ["retryBudget"] {
                "a port's entry cannot carry a retryBudget; remove the entry if the port needs the budget".to_string()
            } else {
                let repeat: Vec<&str> = lost.iter().copied().filter(|b| *b != "retryBudget").collect();
                format!("repeat {} in this entry to keep them on port {port}", repeat.join(", "))
            };
            out.push(Raw::new(
                Code::PortLevelSettingsReplacePolicy,
                "DestinationRule",
                key.clone(),
                format!("{at}.portLevelSettings[{i}]"),
                format!(
                    "replaces the policy whole on port {port}, as in Istio (a port's settings inherit nothing): {} of {whose} do not apply on port {port}; {fix}",
                    lost.join(", ")
                ),
            ));
        }
    }
}
