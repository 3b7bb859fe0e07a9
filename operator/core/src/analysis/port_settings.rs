//! DestinationRule `portLevelSettings` entries that leave a port without blocks the rest of
//! the host has (`TRL0114`, Info). As in Istio, a port's entry replaces the policy whole on
//! that port — nothing of the rule's (or, for a subset's entry, of the subset's and the
//! rule's) `loadBalancer`, `connectionPool`, `outlierDetection`, `tls` or `retryBudget` is
//! inherited (`compile::policy`) —, which surprises users who expect the entry to override
//! only what it sets. Istio's analyzers say nothing of it; the finding names what the port
//! loses — a whole block, or a field or sub-block of one the entry sets only in part — and the
//! fix.

use serde_json::Value;
use trellis_api::networking::{DestinationRule, TrafficPolicy};

use super::{Facts, Raw, key_of};
use crate::code::Code;
use crate::compile::policy::in_force;

pub(super) fn check(f: &Facts<'_>, out: &mut Vec<Raw>) {
    for dr in &f.snapshot.destination_rules {
        dropped_blocks(dr, out);
    }
}

/// Settings compared by presence alone: within them one choice excludes another (a TLS mode,
/// a consistent-hash key, a locality mode), so a field of the rest of the host that a port's
/// entry leaves out is not lost but replaced by the entry's own choice.
const WHOLE: [&str; 5] = [
    "tls",
    "retryBudget",
    "loadBalancer.consistentHash",
    "loadBalancer.localityLbSetting",
    "loadBalancer.zoneAwareLbSetting",
];

/// Fields of which one is set at a time (Istio's `oneof`): either stands for the other.
const ONE_OF: [[&str; 2]; 2] = [
    ["loadBalancer.simple", "loadBalancer.consistentHash"],
    ["loadBalancer.warmupDurationSecs", "loadBalancer.warmup"],
];

/// The settings of `elsewhere` (the policy on the other ports) that `here` (a port's) goes
/// without, by their paths: a block `here` lacks whole (`connectionPool`), or within a block
/// both set, a field or sub-block only `elsewhere` sets (`connectionPool.http`,
/// `outlierDetection.interval`) — such a field takes its default on the port, not the host's
/// value. Port entries themselves are not settings.
fn lost(elsewhere: &TrafficPolicy, here: &TrafficPolicy) -> Vec<String> {
    let (Ok(elsewhere), Ok(here)) = (serde_json::to_value(elsewhere), serde_json::to_value(here)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    lost_under("", &elsewhere, &here, &mut out);
    out.retain(|path| path != "portLevelSettings");
    out
}

fn lost_under(at: &str, elsewhere: &Value, here: &Value, out: &mut Vec<String>) {
    let (Some(elsewhere), Some(here)) = (elsewhere.as_object(), here.as_object()) else {
        return;
    };
    let set = |v: &&Value| !v.is_null();
    for (name, there) in elsewhere.iter().filter(|(_, v)| set(v)) {
        let path = if at.is_empty() {
            name.clone()
        } else {
            format!("{at}.{name}")
        };
        match here.get(name).filter(set) {
            Some(v) if !WHOLE.contains(&path.as_str()) => lost_under(&path, there, v, out),
            Some(_) => {}
            None => {
                let other_set = ONE_OF
                    .iter()
                    .filter(|pair| pair.contains(&path.as_str()))
                    .flatten()
                    .any(|p| {
                        p.rsplit_once('.')
                            .is_some_and(|(parent, field)| parent == at && here.get(field).is_some_and(|v| set(&v)))
                    });
                if !other_set {
                    out.push(path);
                }
            }
        }
    }
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
            let gone = lost(&in_force(spec, subset, 0).policy, &in_force(spec, subset, port).policy);
            if gone.is_empty() {
                continue;
            }
            let whose = match subset {
                None => "the host's other ports".to_string(),
                Some(s) => format!("subset {s:?} on other ports"),
            };
            let fix = if gone == ["retryBudget"] {
                "a port's entry cannot carry a retryBudget; remove the entry if the port needs the budget".to_string()
            } else {
                let repeat: Vec<&str> = gone
                    .iter()
                    .map(String::as_str)
                    .filter(|b| *b != "retryBudget")
                    .collect();
                format!("repeat {} in this entry to keep them on port {port}", repeat.join(", "))
            };
            out.push(Raw::new(
                Code::PortLevelSettingsReplacePolicy,
                "DestinationRule",
                key.clone(),
                format!("{at}.portLevelSettings[{i}]"),
                format!(
                    "replaces the policy whole on port {port}, as in Istio (a port's settings inherit nothing): {} of {whose} do not apply on port {port}; {fix}",
                    gone.join(", ")
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lost;
    use serde_json::json;
    use trellis_api::networking::TrafficPolicy;

    fn policy(v: serde_json::Value) -> TrafficPolicy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_block_set_in_part_loses_the_rest_of_it() {
        let host = policy(json!({
            "connectionPool": {"tcp": {"maxConnections": 100}, "http": {"http1MaxPendingRequests": 10}},
            "outlierDetection": {"consecutive5xxErrors": 3, "interval": "10s"},
        }));
        let port = policy(json!({
            "connectionPool": {"tcp": {"maxConnections": 10}},
            "outlierDetection": {"consecutive5xxErrors": 5},
        }));
        assert_eq!(lost(&host, &port), ["connectionPool.http", "outlierDetection.interval"]);
        assert_eq!(lost(&host, &host), Vec::<String>::new());
    }

    #[test]
    fn a_choice_replaced_by_another_is_not_lost() {
        let host = policy(json!({
            "loadBalancer": {"simple": "RANDOM", "warmupDurationSecs": "10s"},
            "tls": {"mode": "SIMPLE", "sni": "a.example", "caCertificates": "/ca.pem"},
        }));
        let port = policy(json!({
            "loadBalancer": {"consistentHash": {"useSourceIp": true}, "warmup": {"duration": "5s"}},
            "tls": {"mode": "DISABLE"},
        }));
        assert_eq!(lost(&host, &port), Vec::<String>::new());
        let without = policy(json!({"loadBalancer": {"consistentHash": {"useSourceIp": true}}}));
        assert_eq!(lost(&host, &without), ["loadBalancer.warmupDurationSecs", "tls"]);
    }
}
