//! The operator's view of its proxies (`/debug/syncz`): which are connected,
//! which version each was sent, ACKed or NACKed, checked against the meshed
//! pods that exist, so a check never passes on an empty or partial list.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;
use trellis_manifests::sidecar::proxy_in;

use super::Target;

/// Whether the pod `p` (JSON) runs a Trellis proxy: the injected sidecar or a gateway, told by
/// its container and role as the operator tells them
/// ([`trellis_manifests::sidecar::proxy_in`]), whatever image it runs.
fn runs_proxy(p: &Value) -> bool {
    serde_json::from_value::<PodSpec>(p["spec"].clone()).is_ok_and(|spec| proxy_in(&spec).is_some())
}

/// `namespace/pod` of the meshed pods of `ns` in the pod list `pods` (`kubectl get pods -o
/// json`), leaving out pods being deleted.
fn meshed_in(ns: &str, pods: &Value) -> BTreeSet<String> {
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && runs_proxy(p))
        .filter_map(|p| p["metadata"]["name"].as_str().map(|name| format!("{ns}/{name}")))
        .collect()
}

/// `namespace/pod` of every meshed pod in `ns` (one that runs a Trellis proxy: the injected
/// sidecar, or a gateway), leaving out pods being deleted.
pub fn meshed_pods(t: &Target, ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let meshed = meshed_in(ns, &t.get_json(&["pods", "-n", ns])?);
    ensure!(!meshed.is_empty(), "no meshed pods in namespace {ns}");
    Ok(meshed)
}

/// `/debug/syncz` of the operator pod `pod` (through the API server's pod proxy),
/// or of whichever pod the operator's Service picks (`None`).
pub fn syncz(t: &Target, pod: Option<&str>) -> anyhow::Result<Value> {
    let ns = trellis_api::mesh::SYSTEM_NAMESPACE;
    let path = match pod {
        Some(pod) => format!("/api/v1/namespaces/{ns}/pods/{pod}:15014/proxy/debug/syncz"),
        None => format!(
            "/api/v1/namespaces/{ns}/services/{}:http-admin/proxy/debug/syncz",
            trellis_manifests::install::OPERATOR_NAME
        ),
    };
    serde_json::from_str(&t.raw(&path)?).context("/debug/syncz is not JSON")
}

fn entry<'a>(state: &'a Value, proxy: &str) -> Option<&'a Value> {
    state
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["proxy"] == proxy && p["connected"] == true)
}

/// Every proxy of `expected` is connected and ACKed the version it was sent.
/// The error names the ones that are not.
pub fn in_sync(state: &Value, expected: &BTreeSet<String>) -> anyhow::Result<()> {
    ensure!(!expected.is_empty(), "no proxies to expect in sync");
    let behind: Vec<String> = expected
        .iter()
        .filter(|proxy| !entry(state, proxy).is_some_and(|p| p["sent"].is_string() && p["acked"] == p["sent"]))
        .map(|proxy| match entry(state, proxy) {
            Some(p) => format!("{proxy} (sent {}, acked {})", p["sent"], p["acked"]),
            None => format!("{proxy} (not connected)"),
        })
        .collect();
    ensure!(
        behind.is_empty(),
        "{} of {} proxies not in sync: {}",
        behind.len(),
        expected.len(),
        behind.join(", ")
    );
    Ok(())
}

/// The TLS Secret of [`REJECTED_RULE`], whose `ca.crt` is not a certificate — no admission
/// check reads a Secret's content, so the proxies are the first to.
const REJECTED_SECRET: &str = "apiVersion: v1
kind: Secret
metadata: {name: web-origination, namespace: shop}
type: kubernetes.io/tls
stringData: {tls.crt: not a certificate, tls.key: not a key, ca.crt: not a certificate}
";

/// A DestinationRule originating TLS to `web` (every proxy of the shop, its ingress gateway
/// included, has a cluster for it) with the CA of [`REJECTED_SECRET`]. Exported to the shop only.
const REJECTED_RULE: &str = "apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {name: web-origination, namespace: shop}
spec:
  host: web
  exportTo: [\".\"]
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: web-origination}
";

/// How long the operator is given to see a Secret before the DestinationRule that names it
/// arrives (and after that rule is gone, before the Secret goes): a rule whose credential Secret
/// the operator has not seen compiles to a cluster that fails closed, as it must, so `web` would
/// answer 503 for that moment (seen: 2 of 1173 requests under load when both came in one apply).
const SECRET_SEEN: Duration = Duration::from_secs(5);

/// Makes every proxy of the demo shop reject the configuration it is sent, with objects the
/// validator and the compiler take, as a user can write them: [`REJECTED_RULE`] and its Secret,
/// the Secret first, so the shop's traffic keeps flowing on the configuration each proxy holds.
/// [`repair_the_shop`] undoes it.
pub fn reject_the_shop(t: &Target) -> anyhow::Result<()> {
    t.apply(REJECTED_SECRET)?;
    std::thread::sleep(SECRET_SEEN);
    t.apply(REJECTED_RULE)?;
    Ok(())
}

/// Deletes what [`reject_the_shop`] applied, the rule first.
pub fn repair_the_shop(t: &Target) -> anyhow::Result<()> {
    t.kubectl_ok(&["delete", "-f", "-"], Some(REJECTED_RULE))?;
    std::thread::sleep(SECRET_SEEN);
    t.kubectl_ok(&["delete", "-f", "-"], Some(REJECTED_SECRET))?;
    Ok(())
}

/// Why the proxies of the shop reject the configuration [`reject_the_shop`] makes, as their NACKs
/// say it.
pub const REJECTED_BECAUSE: &str = "contains no PEM certificate";

/// Every proxy of `expected` is connected and NACKed the version it was sent
/// last with an error containing `reason`; returns `proxy: error` lines.
pub fn all_nacked(state: &Value, expected: &BTreeSet<String>, reason: &str) -> anyhow::Result<Vec<String>> {
    ensure!(!expected.is_empty(), "no proxies to expect a NACK from");
    let mut nacked = Vec::new();
    let mut missing = Vec::new();
    for proxy in expected {
        let error = entry(state, proxy).and_then(|p| {
            let n = &p["nacked"];
            (n["version"] == p["sent"] && n["version"].is_string())
                .then(|| n["error"].as_str())
                .flatten()
                .filter(|e| e.contains(reason))
        });
        match error {
            Some(e) => nacked.push(format!("{proxy}: {e}")),
            None => missing.push(proxy.as_str()),
        }
    }
    ensure!(
        missing.is_empty(),
        "{} of {} proxies did not NACK their last version over {reason:?}: {missing:?}",
        missing.len(),
        expected.len()
    );
    Ok(nacked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use trellis_manifests::sidecar::{GATEWAY_CONTAINER, PROXY_CONTAINER, ROLE_ENV};

    #[test]
    fn proxies_are_told_by_container_and_role_not_by_image() {
        let pod = |name: &str, spec: Value, deleting: bool| {
            json!({"metadata": {"name": name, "namespace": "shop",
                                "deletionTimestamp": if deleting { json!("2026-12-06T12:00:00Z") } else { Value::Null }},
                   "spec": spec})
        };
        let sidecar = |image: &str| {
            json!({"initContainers": [{"name": PROXY_CONTAINER, "image": image, "restartPolicy": "Always"}],
                   "containers": [{"name": "web", "image": "web:1"}]})
        };
        let pods = json!({"items": [
            pod("web-1", sidecar("ghcr.io/trellis-mesh/trellis-proxy:0.1.0"), false),
            // A proxy image mirrored under another name is still the proxy.
            pod("web-2", sidecar("mirror.example/mesh/sidecar:0.1.0"), false),
            pod("gw-1", json!({"containers": [{"name": GATEWAY_CONTAINER, "image": "mirror.example/mesh/sidecar:0.1.0",
                                               "env": [{"name": ROLE_ENV, "value": "gateway"}]}]}), false),
            // A user's container running the proxy image under its own name is no proxy.
            pod("tools", json!({"containers": [{"name": "tools", "image": "ghcr.io/trellis-mesh/trellis-proxy:0.1.0"}]}), false),
            pod("web-0", sidecar("ghcr.io/trellis-mesh/trellis-proxy:0.1.0"), true),
        ]});
        assert_eq!(
            meshed_in("shop", &pods),
            set(&["shop/gw-1", "shop/web-1", "shop/web-2"])
        );
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn in_sync_needs_every_expected_proxy_connected_and_acked() {
        let state = json!([
            {"proxy": "shop/a", "connected": true, "sent": "v2", "acked": "v2"},
            {"proxy": "shop/b", "connected": true, "sent": "v2", "acked": "v1"},
            {"proxy": "shop/c", "connected": false, "sent": "v2", "acked": "v2"},
        ]);
        assert!(in_sync(&state, &set(&["shop/a"])).is_ok());
        let e = in_sync(&state, &set(&["shop/a", "shop/b", "shop/c", "shop/d"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3 of 4") && e.contains("shop/b (sent \"v2\", acked \"v1\")"),
            "{e}"
        );
        assert!(
            e.contains("shop/c (not connected)") && e.contains("shop/d (not connected)"),
            "{e}"
        );
        // Nothing sent yet is not in sync, and an empty expectation proves nothing.
        assert!(in_sync(&json!([{"proxy": "shop/a", "connected": true}]), &set(&["shop/a"])).is_err());
        assert!(in_sync(&state, &set(&[])).is_err());
    }

    #[test]
    fn all_nacked_needs_every_expected_proxy_to_reject_its_last_version() {
        let nack = |v: &str| json!({"version": v, "error": "telemetry.tracing.otlpEndpoint: no scheme"});
        let state = json!([
            {"proxy": "shop/a", "connected": true, "sent": "v3", "acked": "v2", "nacked": nack("v3")},
            {"proxy": "shop/b", "connected": true, "sent": "v4", "acked": "v2", "nacked": nack("v3")},
            {"proxy": "shop/c", "connected": true, "sent": "v3", "acked": "v3"},
        ]);
        assert_eq!(
            all_nacked(&state, &set(&["shop/a"]), "otlpEndpoint").unwrap(),
            ["shop/a: telemetry.tracing.otlpEndpoint: no scheme"]
        );
        let e = all_nacked(&state, &set(&["shop/a", "shop/b", "shop/c"]), "otlpEndpoint")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 of 3") && e.contains("shop/b") && e.contains("shop/c"),
            "{e}"
        );
        assert!(all_nacked(&state, &set(&["shop/a"]), "something else").is_err());
        assert!(all_nacked(&state, &set(&[]), "otlpEndpoint").is_err());
    }
}
