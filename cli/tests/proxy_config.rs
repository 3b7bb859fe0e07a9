//! `meshctl proxy-config` on a live proxy, as a user runs it: the binary against a cluster
//! whose pods run (kubesim's processes, or upstream Kubernetes with
//! `TRELLIS_E2E_CLUSTER=upstream`), reading the ingress gateway's admin API (localhost:15000 in
//! its pod) through the API server's port-forward; the saved dump read back offline; and the
//! clear failures: a pod without a proxy, a proxy that does not answer, an unknown pod, an
//! unreadable dump.

mod support;

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::{Target, meshctl_at, rollout, system_pod, text, unreachable_kubeconfig};

const GATEWAY: &str = "trellis-ingressgateway";

fn meshctl(cluster: &Target, args: &[&str]) -> Output {
    meshctl_at(cluster.kubeconfig(), args)
}

/// The stdout of a command that must succeed.
fn ok(cluster: &Target, args: &[&str]) -> String {
    let out = meshctl(cluster, args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "meshctl {args:?}: {stderr}\n{stdout}");
    stdout
}

const ROUTING: &str = "apiVersion: v1
kind: Service
metadata: {name: users, namespace: default}
spec: {selector: {app: users}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {app: trellis-ingressgateway}
  servers: [{name: http, port: {number: 80, name: http, protocol: HTTP, targetPort: 8080}, hosts: ['*']}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: users, namespace: default}
spec:
  hosts: ['*']
  gateways: [edge]
  http:
  - name: v2-beta
    match: [{headers: {x-beta: {exact: 'on'}}}]
    route: [{destination: {host: users.default.svc.cluster.local, port: {number: 80}}}]
  - name: rest
    route: [{destination: {host: users.default.svc.cluster.local, port: {number: 80}}}]
";

#[test]
fn a_live_gateways_routes_clusters_certificate_and_log_level() {
    let Some(cluster) = support::cluster() else {
        return;
    };
    let install = meshctl(&cluster, &["install", "--wait=false"]);
    assert!(install.status.success(), "{}", text(&install).1);
    for name in ["trellis-operator", GATEWAY] {
        rollout(&cluster, name);
    }
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(ROUTING)).unwrap();
    let gateway = format!("{}.trellis-system", system_pod(&cluster, GATEWAY));

    // The routes, once the operator has pushed them, each with the rule it came from.
    let routes = cluster
        .wait_for("the gateway's routes", Duration::from_secs(60), || {
            let out = meshctl(&cluster, &["proxy-config", "routes", &gateway, "-o", "json"]);
            let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            Ok((rows.len() >= 2).then_some(rows))
        })
        .unwrap();
    let seen: Vec<(&str, &str, &str)> = routes
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["match"].as_str().unwrap(),
                r["from"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("v2-beta", "x-beta = on", "VirtualService default/users http[0]"),
            ("rest", "any", "VirtualService default/users http[1]"),
        ]
    );
    let table = ok(&cluster, &["proxy-config", "routes", &gateway]);
    assert!(
        table.contains("FROM") && table.contains("VirtualService default/users http[1]"),
        "{table}"
    );

    // Listeners and clusters, filtered; the same pod named with -n.
    let pod_name = gateway.trim_end_matches(".trellis-system");
    let listeners = ok(
        &cluster,
        &[
            "proxy-config",
            "listeners",
            pod_name,
            "-n",
            "trellis-system",
            "--port",
            "8080",
            "-o",
            "json",
        ],
    );
    let listeners: Vec<Value> = serde_json::from_str(&listeners).unwrap();
    assert_eq!(listeners.len(), 1, "{listeners:?}");
    assert_eq!(listeners[0]["direction"], "gateway");
    let clusters = ok(
        &cluster,
        &[
            "pc",
            "clusters",
            &gateway,
            "--fqdn",
            "users.default.svc.cluster.local",
            "-o",
            "short",
        ],
    );
    assert_eq!(clusters.trim(), "outbound|80||users.default.svc.cluster.local");

    // The certificate: identity, serial, validity, issuer; never key material.
    let secret = ok(&cluster, &["proxy-config", "secret", &gateway, "-o", "json"]);
    assert!(
        !secret.contains("PRIVATE KEY") && !secret.contains("privateKey"),
        "{secret}"
    );
    let secret: Vec<Value> = serde_json::from_str(&secret).unwrap();
    assert_eq!(
        secret[0]["identity"],
        "spiffe://cluster.local/ns/trellis-system/sa/trellis-ingressgateway"
    );
    assert_eq!(secret[0]["certificate"], "leaf");
    assert!(secret[0]["serial"].as_str().is_some_and(|s| s.len() > 4), "{secret:?}");
    assert!(
        secret[0]["issuer"].as_str().is_some_and(|s| !s.is_empty() && s != "-"),
        "{secret:?}"
    );

    // The log level, set and read back.
    assert!(ok(&cluster, &["proxy-config", "log", &gateway, "--level", "debug"]).contains("debug"));
    assert!(ok(&cluster, &["proxy-config", "log", &gateway]).contains("debug"));

    // The whole dump, saved and read offline: the same routes.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("dump.json");
    std::fs::write(&saved, ok(&cluster, &["proxy-config", "all", &gateway, "-o", "json"])).unwrap();
    let offline = ok(
        &cluster,
        &["proxy-config", "routes", "-f", saved.to_str().unwrap(), "-o", "json"],
    );
    let offline: Vec<Value> = serde_json::from_str(&offline).unwrap();
    assert_eq!(offline, routes);

    // Clear failures, with their exit codes.
    let operator = format!("{}.trellis-system", system_pod(&cluster, "trellis-operator"));
    let out = meshctl(&cluster, &["proxy-config", "routes", &operator]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert!(text(&out).1.contains("has no Trellis proxy"), "{}", text(&out).1);
    let out = meshctl(&cluster, &["proxy-config", "routes", "nope-1.shop"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert!(text(&out).1.contains("pod shop/nope-1 not found"), "{}", text(&out).1);
    // A pod whose trellis-proxy container serves no admin API (it runs the test app): the
    // proxy does not answer, exit 3.
    let silent = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: silent-proxy, namespace: default}}\n\
         spec: {{containers: [{{name: trellis-proxy, image: {}}}]}}\n",
        trellis_manifests::demo::testapp_image()
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&silent)).unwrap();
    cluster
        .kubectl_ok(
            &["wait", "--for=condition=Ready", "pod/silent-proxy", "--timeout=120s"],
            None,
        )
        .unwrap();
    let out = meshctl(&cluster, &["proxy-config", "routes", "silent-proxy.default"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("the proxy of pod default/silent-proxy does not answer on its admin port 15000"),
        "{}",
        text(&out).1
    );
    std::fs::write(&saved, "{\"kind\": \"List\"}").unwrap();
    let out = meshctl(&cluster, &["proxy-config", "routes", "-f", saved.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("is not a proxy's /config_dump"),
        "{}",
        text(&out).1
    );
    assert!(!text(&out).1.contains("panicked"));
}

#[test]
fn an_unreachable_cluster_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = meshctl_at(
        &unreachable_kubeconfig(dir.path()),
        &["proxy-config", "routes", "web-1.shop"],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Kubernetes API server at https://127.0.0.1:9"),
        "{stderr}"
    );
}
