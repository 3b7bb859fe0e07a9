//! What the operator knows about its proxies (its `/debug/syncz`): configurations they
//! rejected (`TRL0107`), versions other than the operator's (`TRL0108`), and proxies that
//! have not applied the latest configuration (`TRL0109`).

use serde::{Deserialize, Serialize};

use super::{Raw, place_all};
use crate::code::Code;
use crate::registry::ObjectKey;
use trellis_contract::refusal::applied_again;

/// The sync state of one proxy, as the operator's `/debug/syncz` shows it (the operator keeps
/// and serves this type; meshctl reads it back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxySync {
    /// `namespace/pod`.
    pub proxy: String,
    /// `sidecar` or `gateway`.
    pub role: String,
    /// Whether a subscription is open now.
    pub connected: bool,
    /// The last version sent.
    pub sent: Option<String>,
    /// The last version the proxy applied.
    pub acked: Option<String>,
    /// The last version the proxy rejected, and why.
    pub nacked: Option<Nacked>,
    /// When the proxy was last heard from (seconds since the epoch).
    pub last_seen_unix: u64,
    /// The proxy's build version.
    pub proxy_version: String,
    /// Fingerprints of the roots in the trust bundle of the last version sent.
    pub sent_roots: Vec<String>,
    /// Fingerprints of the roots in the trust bundle the proxy acknowledged (root rotation
    /// waits on these).
    pub acked_roots: Vec<String>,
    /// The workload certificate the proxy serves, as it last reported it on this
    /// subscription (none from a proxy that reported none).
    pub certificate: Option<trellis_contract::certificate::ServedCertificate>,
}

/// Every proxy once, from the sync states of several operator replicas (each knows the
/// proxies subscribed to it): a connected state wins over a disconnected one, then the one
/// heard from last. The one rule the operator's replicas and meshctl merge by.
pub fn merge(states: impl IntoIterator<Item = ProxySync>) -> Vec<ProxySync> {
    let mut by_proxy: std::collections::BTreeMap<String, ProxySync> = std::collections::BTreeMap::new();
    for s in states {
        let keep = by_proxy.get(&s.proxy).is_some_and(|old| {
            (old.connected && !s.connected) || (old.connected == s.connected && old.last_seen_unix >= s.last_seen_unix)
        });
        if !keep {
            by_proxy.insert(s.proxy.clone(), s);
        }
    }
    by_proxy.into_values().collect()
}

/// A rejected version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Nacked {
    /// The version.
    pub version: String,
    /// The proxy's error.
    pub error: String,
}

/// Findings about the proxies in `states`; `operator_version` is the operator's build version
/// (none when unknown: no skew is reported).
pub fn proxies(states: &[ProxySync], operator_version: Option<&str>) -> Vec<super::Finding> {
    let mut raws = Vec::new();
    for s in states {
        let Some((ns, pod)) = s.proxy.split_once('/') else {
            continue;
        };
        let key = ObjectKey::new(ns, pod);
        match &s.nacked {
            // Rejected the latest version it was sent (a later ACK clears the problem).
            Some(n) if s.sent.as_deref() == Some(n.version.as_str()) && s.acked.as_deref() != Some(&n.version) => {
                let serving = s.acked.as_deref().unwrap_or("(none)");
                let message = if applied_again(&n.error) {
                    // The configuration is fine: the pod refused a listener's address for now.
                    format!(
                        "The proxy could not apply configuration version {}: {}; it keeps serving version {serving}. The configuration is not at fault: a listener's port is in use in the pod (or its address is not assigned). Free the port the error names — another container or process of the pod listening on it, e.g. the app on one of the proxy's ports — and the proxy applies and ACKs the version at its next attempt",
                        n.version, n.error
                    )
                } else {
                    format!(
                        "The proxy rejected configuration version {}: {}; it keeps serving version {serving}. Fix the resource the error names (or report a bug if the compiled configuration is at fault)",
                        n.version, n.error
                    )
                };
                raws.push(Raw::new(Code::ProxyConfigRejected, "Pod", key.clone(), "", message));
            }
            _ => {
                if !s.connected {
                    raws.push(Raw::new(
                        Code::ProxyNotSynced,
                        "Pod",
                        key.clone(),
                        "",
                        "The proxy is not connected to the operator; it serves the configuration it last applied. Check its logs and its connection to trellis-operator.trellis-system:15012".to_string(),
                    ));
                } else if s.sent.is_some() && s.sent != s.acked {
                    raws.push(Raw::new(
                        Code::ProxyNotSynced,
                        "Pod",
                        key.clone(),
                        "",
                        format!("The proxy has not acknowledged configuration version {} (it applied {}); it may be busy or stuck. Check its logs", s.sent.as_deref().unwrap_or_default(), s.acked.as_deref().unwrap_or("none")),
                    ));
                }
            }
        }
        if let Some(v) = operator_version
            && !s.proxy_version.is_empty()
            && s.proxy_version != v
        {
            raws.push(Raw::new(
                Code::ProxyVersionSkew,
                "Pod",
                key,
                "",
                format!("The proxy runs version {} and the operator {v}; restart the workload to get the current proxy (kubectl rollout restart), or finish the rollout", s.proxy_version),
            ));
        }
    }
    place_all(raws)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(json: serde_json::Value) -> ProxySync {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn nacks_skew_and_stale_proxies_are_reported_and_synced_ones_are_not() {
        let states = [
            state(
                serde_json::json!({"proxy": "shop/web-1", "connected": true, "sent": "b", "acked": "a",
                "nacked": {"version": "b", "error": "listeners[0]: bad regex"}, "proxyVersion": "0.1.0"}),
            ),
            state(
                serde_json::json!({"proxy": "shop/web-2", "connected": true, "sent": "b", "acked": "b", "proxyVersion": "0.0.9"}),
            ),
            state(
                serde_json::json!({"proxy": "shop/web-3", "connected": false, "sent": "b", "acked": "b", "proxyVersion": "0.1.0"}),
            ),
            state(
                serde_json::json!({"proxy": "shop/web-4", "connected": true, "sent": "c", "acked": "b", "proxyVersion": "0.1.0"}),
            ),
            // NACKed an old version, applied the latest since: in sync.
            state(
                serde_json::json!({"proxy": "shop/web-5", "connected": true, "sent": "c", "acked": "c",
                "nacked": {"version": "b", "error": "x"}, "proxyVersion": "0.1.0", "sentRoots": []}),
            ),
        ];
        let f = proxies(&states, Some("0.1.0"));
        let got: Vec<(String, String)> = f.iter().map(|f| (f.code.to_string(), f.origin.clone())).collect();
        assert_eq!(
            got,
            [
                ("TRL0107".to_string(), "Pod shop/web-1".to_string()),
                ("TRL0108".to_string(), "Pod shop/web-2".to_string()),
                ("TRL0109".to_string(), "Pod shop/web-3".to_string()),
                ("TRL0109".to_string(), "Pod shop/web-4".to_string()),
            ]
        );
        assert!(f[0].message.contains("bad regex"), "{}", f[0].message);
    }

    #[test]
    fn a_nack_the_proxy_retries_points_at_the_port_and_not_at_the_configuration() {
        let retried = state(
            serde_json::json!({"proxy": "shop/web-1", "connected": true, "sent": "b", "acked": "a",
            "nacked": {"version": "b", "error": format!("cannot bind 0.0.0.0:15006: Address in use; {} every 1–30 s until it applies (then ACKs it) or another version arrives", trellis_contract::refusal::APPLIED_AGAIN)}}),
        );
        let refused = state(
            serde_json::json!({"proxy": "shop/web-2", "connected": true, "sent": "b", "acked": "a",
            "nacked": {"version": "b", "error": "listeners[0]: bad regex"}}),
        );
        let f = proxies(&[retried, refused], None);
        let message = |origin: &str| {
            let found = f.iter().find(|f| f.origin == origin).expect(origin);
            assert_eq!(found.code.to_string(), "TRL0107");
            found.message.clone()
        };
        let (port, config) = (message("Pod shop/web-1"), message("Pod shop/web-2"));
        assert!(
            port.contains("0.0.0.0:15006: Address in use")
                && port.contains("not at fault")
                && port.contains("Free the port the error names")
                && !port.contains("Fix the resource"),
            "{port}"
        );
        assert!(
            config.contains("bad regex") && config.contains("Fix the resource the error names"),
            "{config}"
        );
    }

    #[test]
    fn replicas_merge_connected_first_then_latest() {
        let s = |proxy: &str, connected: bool, seen: u64| ProxySync {
            proxy: proxy.into(),
            connected,
            last_seen_unix: seen,
            ..ProxySync::default()
        };
        let merged = merge([
            s("shop/web-1", true, 10),
            s("shop/web-1", false, 20),
            s("shop/db-0", true, 5),
            s("shop/db-0", true, 7),
            s("shop/db-0", true, 6),
        ]);
        let got: Vec<(&str, bool, u64)> = merged
            .iter()
            .map(|p| (p.proxy.as_str(), p.connected, p.last_seen_unix))
            .collect();
        assert_eq!(got, [("shop/db-0", true, 7), ("shop/web-1", true, 10)]);
    }
}
