//! The verdicts of `meshctl check` on the data plane: every proxy connected to the operator and
//! in sync with it (`/debug/syncz`), and one version everywhere. Pure functions of what the
//! cluster answered, with a hint that names the fix when one fails.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use trellis_manifests::sidecar::ProxyRole;

use super::Check;
use crate::version::Server;

const DATA_PLANE: &str = "trellis-data-plane";

/// The running pods with a Trellis proxy, `namespace/name`, with the role it runs in.
pub type RunningProxies = BTreeMap<String, ProxyRole>;

/// The command that shows why the proxy of `proxy` (`namespace/pod`) in `role` does what it
/// does: its container's log (a sidecar's `trellis-proxy`, a gateway's `gateway`).
pub fn proxy_log(proxy: &str, role: ProxyRole) -> String {
    let (ns, pod) = proxy.split_once('/').unwrap_or(("NAMESPACE", proxy));
    format!("kubectl -n {ns} logs {pod} -c {}", role.container())
}

fn sync_entries(syncz: &Value) -> Vec<&Value> {
    syncz.as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

/// Every running pod with a proxy has a subscription open to the operator.
pub fn proxies_connected(proxies: &Result<RunningProxies, String>, syncz: &Result<Value, String>) -> Check {
    let name = "every proxy is connected to the operator";
    let (proxies, syncz) = match (proxies, syncz) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => {
            return Check::failed(
                DATA_PLANE,
                name,
                e.clone(),
                "the operator must be running: see the operator line",
            );
        }
    };
    let connected: BTreeSet<&str> = sync_entries(syncz)
        .into_iter()
        .filter(|p| p["connected"] == true)
        .filter_map(|p| p["proxy"].as_str())
        .collect();
    let missing: Vec<(&String, ProxyRole)> = proxies
        .iter()
        .filter(|(p, _)| !connected.contains(p.as_str()))
        .map(|(p, role)| (p, *role))
        .collect();
    if missing.is_empty() {
        Check::ok(DATA_PLANE, name, format!("{} proxies", proxies.len()))
    } else {
        Check::failed(
            DATA_PLANE,
            name,
            format!(
                "{} of {} not connected: {}",
                missing.len(),
                proxies.len(),
                missing.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
            {
                // The log of the first missing proxy of each role: a gateway's is not in trellis-proxy.
                let mut roles: Vec<(ProxyRole, &String)> = missing.iter().map(|(p, role)| (*role, *p)).collect();
                roles.sort();
                roles.dedup_by_key(|(role, _)| *role);
                let logs: Vec<String> = roles
                    .iter()
                    .map(|(role, p)| format!("`{}`", proxy_log(p, *role)))
                    .collect();
                format!(
                    "see the proxy's log ({}): it names why it cannot reach the operator on port 15012",
                    logs.join(", ")
                )
            },
        )
    }
}

/// Every connected proxy has applied the last version sent, and none rejected it. A NACK of an
/// earlier version the proxy has since moved past (it applied a later one) is history, not a
/// problem.
pub fn proxies_in_sync(syncz: &Result<Value, String>) -> Check {
    let name = "every proxy has applied its configuration";
    let Ok(syncz) = syncz else {
        return Check::failed(
            DATA_PLANE,
            name,
            "the operator's /debug/syncz did not answer",
            "the operator must be running: see the operator line",
        );
    };
    let mut problems: BTreeMap<&str, String> = BTreeMap::new();
    let connected: Vec<&Value> = sync_entries(syncz)
        .into_iter()
        .filter(|p| p["connected"] == true)
        .collect();
    for p in &connected {
        let proxy = p["proxy"].as_str().unwrap_or("?");
        let nacked = &p["nacked"];
        let rejects_latest =
            nacked["version"].is_string() && nacked["version"] == p["sent"] && nacked["version"] != p["acked"];
        if let (true, Some(error)) = (rejects_latest, nacked["error"].as_str()) {
            problems.insert(
                proxy,
                format!(
                    "rejected version {}: {error}",
                    p["nacked"]["version"].as_str().unwrap_or("?")
                ),
            );
        } else if p["sent"] != p["acked"] {
            problems.insert(proxy, "has not acknowledged the last version sent yet".into());
        }
    }
    if problems.is_empty() {
        Check::ok(
            DATA_PLANE,
            name,
            format!("{} proxies in sync, none rejected its last version", connected.len()),
        )
    } else {
        Check::failed(
            DATA_PLANE,
            name,
            problems
                .iter()
                .map(|(p, why)| format!("{p} {why}"))
                .collect::<Vec<_>>()
                .join("; "),
            "a rejected version names the object at fault: `meshctl analyze` finds it (fix or delete it); a proxy \
             that lags catches up within seconds, or see its log",
        )
    }
}

/// meshctl, the operator and the proxies run one version.
pub fn skew(versions: &Result<Server, String>) -> Check {
    let name = "meshctl, the operator and the proxies run one version";
    match versions {
        Err(e) => Check::failed(DATA_PLANE, name, e.clone(), "check your access to the cluster"),
        Ok(s) if s.skew.is_empty() => Check::ok(
            DATA_PLANE,
            name,
            s.operator.as_deref().unwrap_or(env!("CARGO_PKG_VERSION")).to_string(),
        ),
        Ok(s) => Check::warning(
            DATA_PLANE,
            name,
            s.skew.join("; "),
            "`meshctl upgrade` moves the control plane to this meshctl's version, and the operator's rollout moves the \
             proxies",
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::check::Status;

    #[test]
    fn proxies_must_be_connected_in_sync_and_without_nacks() {
        let syncz = Ok(json!([
            {"proxy": "shop/web-1", "connected": true, "sent": "v2", "acked": "v2", "nacked": null},
            {"proxy": "shop/db-1", "connected": true, "sent": "v2", "acked": "v2", "nacked": null},
        ]));
        let running = |pods: &[(&str, ProxyRole)]| -> Result<RunningProxies, String> {
            Ok(pods.iter().map(|(p, role)| (p.to_string(), *role)).collect())
        };
        let pods = running(&[("shop/web-1", ProxyRole::Sidecar), ("shop/db-1", ProxyRole::Sidecar)]);
        assert_eq!(proxies_connected(&pods, &syncz).status, Status::Ok);
        assert_eq!(proxies_in_sync(&syncz).status, Status::Ok);
        let more = running(&[
            ("shop/web-1", ProxyRole::Sidecar),
            ("shop/db-1", ProxyRole::Sidecar),
            ("shop/pay-1", ProxyRole::Sidecar),
            ("trellis-system/trellis-ingressgateway-1", ProxyRole::Gateway),
        ]);
        let c = proxies_connected(&more, &syncz);
        assert_eq!(c.status, Status::Failed);
        assert!(
            c.detail
                .contains("2 of 4 not connected: shop/pay-1, trellis-system/trellis-ingressgateway-1"),
            "{}",
            c.detail
        );
        // Each proxy's log is in its own container: a gateway's is `gateway`.
        let hint = c.hint.unwrap();
        assert!(
            hint.contains("`kubectl -n shop logs pay-1 -c trellis-proxy`")
                && hint.contains("`kubectl -n trellis-system logs trellis-ingressgateway-1 -c gateway`"),
            "{hint}"
        );

        let nacked = Ok(json!([
            {"proxy": "shop/web-1", "connected": true, "sent": "v3", "acked": "v2",
             "nacked": {"version": "v3", "error": "listener 0.0.0.0:8080: duplicate"}},
            {"proxy": "shop/db-1", "connected": true, "sent": "v3", "acked": "v2", "nacked": null},
        ]));
        let c = proxies_in_sync(&nacked);
        assert_eq!(c.status, Status::Failed);
        assert!(
            c.detail
                .contains("shop/web-1 rejected version v3: listener 0.0.0.0:8080: duplicate")
        );
        assert!(c.detail.contains("shop/db-1 has not acknowledged"));
        assert!(c.hint.unwrap().contains("meshctl analyze"));

        // A NACK of an earlier version, with the latest applied since: in sync. One of the
        // latest version sent, not applied: the proxy lags behind it.
        let moved_on = Ok(json!([
            {"proxy": "shop/web-1", "connected": true, "sent": "v4", "acked": "v4",
             "nacked": {"version": "v3", "error": "listener 0.0.0.0:8080: duplicate"}},
            {"proxy": "shop/db-1", "connected": true, "sent": "v5", "acked": "v4",
             "nacked": {"version": "v3", "error": "listener 0.0.0.0:8080: duplicate"}},
            {"proxy": "shop/gone-1", "connected": false, "sent": "v1", "acked": "v0", "nacked": null},
        ]));
        let c = proxies_in_sync(&moved_on);
        assert_eq!(c.status, Status::Failed);
        assert_eq!(c.detail, "shop/db-1 has not acknowledged the last version sent yet");
        let in_sync = Ok(json!([
            {"proxy": "shop/web-1", "connected": true, "sent": "v4", "acked": "v4",
             "nacked": {"version": "v3", "error": "listener 0.0.0.0:8080: duplicate"}},
            {"proxy": "shop/gone-1", "connected": false, "sent": "v1", "acked": "v0", "nacked": null},
        ]));
        let c = proxies_in_sync(&in_sync);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert_eq!(c.detail, "1 proxies in sync, none rejected its last version");
    }

    #[test]
    fn version_skew_is_a_warning() {
        let server = |skew: Vec<String>| {
            Ok(Server {
                kubernetes: "v1.33.0".into(),
                operator: Some("0.1.0".into()),
                proxies: vec![],
                skew,
            })
        };
        assert_eq!(skew(&server(vec![])).status, Status::Ok);
        let c = skew(&server(vec!["2 pod(s) run proxy 0.0.9".into()]));
        assert_eq!(c.status, Status::Warning);
        assert!(c.hint.unwrap().contains("meshctl upgrade"));
    }
}
