//! Endpoints from EndpointSlices and ExternalName Services, through a sidecar, end to end.
//!
//! - `legacy` in the shop has no selector: two EndpointSlices made by hand list the addresses
//!   of two unmeshed pods of another namespace (`legacy-a`, `legacy-b`), one slice each. `web`
//!   calls it (`/call?url=`, reached through the gateway) and its sidecar routes the call by
//!   the Service's VirtualService (which sets `x-via`, so the answer proves the sidecar routed
//!   it) to the slices' endpoints: both pods answer, in plaintext (no pod is known meshed).
//! - `legacy-ext` is an ExternalName Service naming `legacy-a.legacy.svc.cluster.local`: the
//!   sidecar routes its host (again with `x-via`) to a cluster that resolves that name.
//!
//! Speaks only the Kubernetes API and real traffic; runs on kubesim and on upstream
//! Kubernetes. Needs the workspace's binaries built, as `first_light` does.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use trellis_e2e::suite::{Http, Target, steps, wait_for};
use trellis_manifests::demo;

const LEGACY_NAMESPACE: &str = "legacy";

fn step<T>(t: &Target, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    steps::step(t, "endpoint_slices", name, f)
}

/// Two unmeshed backends in their own namespace (no injection), each with a Service of its own
/// (`legacy-a` is what the ExternalName Service names).
fn backends() -> String {
    let mut out = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {LEGACY_NAMESPACE}}}\n");
    for name in ["legacy-a", "legacy-b"] {
        out.push_str(&format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {LEGACY_NAMESPACE}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {LEGACY_NAMESPACE}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: {image}
        env: [{{name: TESTAPP_SERVICE, value: {name}}}]
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"#,
            image = demo::testapp_image()
        ));
    }
    out
}

/// `legacy` (no selector) with one hand-made slice per backend address, `legacy-ext`
/// (ExternalName), a VirtualService on each that marks what the sidecar routed, and the
/// gateway's route to `web`'s `/call`.
fn mesh_objects(addresses: &[String]) -> String {
    let ns = demo::NAMESPACE;
    let mut out = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: legacy, namespace: {ns}}}
spec:
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: legacy-ext, namespace: {ns}}}
spec:
  type: ExternalName
  externalName: legacy-a.{LEGACY_NAMESPACE}.svc.cluster.local
  ports: [{{name: http, port: 8080}}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {{name: shop-call, namespace: {ns}}}
spec:
  hosts: ["*"]
  gateways: [shop-gateway]
  http:
  - match: [{{uri: {{prefix: /call}}}}]
    route: [{{destination: {{host: web, port: {{number: 8080}}}}}}]
    timeout: 10s
"#
    );
    for (vs, host) in [("legacy", "legacy"), ("legacy-ext", "legacy-ext")] {
        out.push_str(&format!(
            r#"---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {{name: {vs}, namespace: {ns}}}
spec:
  hosts: [{host}]
  http:
  - headers: {{request: {{set: {{x-via: {vs}}}}}}}
    route: [{{destination: {{host: {host}}}}}]
    timeout: 5s
"#
        ));
    }
    for (i, address) in addresses.iter().enumerate() {
        out.push_str(&format!(
            r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-by-hand-{i}
  namespace: {ns}
  labels: {{kubernetes.io/service-name: legacy}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: ["{address}"], conditions: {{ready: true}}}}]
"#
        ));
    }
    out
}

/// The backend that answered web's call, and the `x-via` header it saw.
fn called(http: &Http, gw: &str, host: &str) -> anyhow::Result<(String, String)> {
    let url = format!(
        "{gw}/call?url=http://{host}.{}.svc.cluster.local:8080/hello",
        demo::NAMESPACE
    );
    let answer = http.get(&url, &[])?;
    let body: Value = answer.json()?;
    ensure!(answer.status == 200, "{url}: {} {body}", answer.status);
    let upstream = &body["upstream"]["body"];
    let service = upstream["service"].as_str().context("no backend answered")?;
    let via = upstream["headers"]["x-via"].as_str().unwrap_or_default();
    Ok((service.to_string(), via.to_string()))
}

#[test]
fn a_selectorless_service_and_an_external_name_service_through_a_sidecar() -> anyhow::Result<()> {
    // Without root (and no TRELLIS_E2E_KUBECONFIG) the skip is recorded; under CI it fails.
    let Some(t) = Target::acquire()? else { return Ok(()) };
    let http = Http::new()?;
    step(&t, "install: CRDs, the operator", || steps::install(&t))?;
    step(&t, "deploy the shop", || steps::deploy_shop(&t))?;
    let gw = step(&t, "the gateway's load balancer address", || {
        steps::load_balancer(&t, demo::NAMESPACE, demo::GATEWAY)
    })?;
    let addresses = step(&t, "two unmeshed backends, outside the shop", || {
        t.apply(&backends())?;
        let mut ips = Vec::new();
        for name in ["legacy-a", "legacy-b"] {
            steps::rollout(&t, LEGACY_NAMESPACE, name)?;
            let ip = t.kubectl_ok(
                &[
                    "get",
                    "pods",
                    "-n",
                    LEGACY_NAMESPACE,
                    "-l",
                    &format!("app={name}"),
                    "-o",
                    "jsonpath={.items[0].status.podIP}",
                ],
                None,
            )?;
            ensure!(!ip.trim().is_empty(), "{name} has no pod IP");
            ips.push(ip.trim().to_string());
        }
        Ok(ips)
    })?;
    step(
        &t,
        "legacy (no selector, two hand-made slices), legacy-ext (ExternalName), their routes",
        || t.apply(&mesh_objects(&addresses)).map(|_| ()),
    )?;
    step(&t, "web's sidecar reaches both slices' endpoints of legacy", || {
        let mut seen = BTreeSet::new();
        wait_for("both backends behind legacy", Duration::from_secs(90), || {
            match called(&http, &gw, "legacy") {
                Ok((service, via)) if via == "legacy" => {
                    seen.insert(service);
                }
                Ok((service, via)) => eprintln!("legacy: {service} answered, x-via {via:?}: not routed yet"),
                Err(e) => eprintln!("legacy: {e:#}"),
            }
            Ok((seen.len() == 2).then_some(()))
        })?;
        ensure!(
            seen == BTreeSet::from(["legacy-a".to_string(), "legacy-b".to_string()]),
            "{seen:?}"
        );
        Ok(())
    })?;
    step(&t, "web's sidecar reaches the ExternalName Service's name", || {
        wait_for("legacy-a behind legacy-ext", Duration::from_secs(60), || {
            Ok(match called(&http, &gw, "legacy-ext") {
                Ok((service, via)) if via == "legacy-ext" => {
                    ensure!(service == "legacy-a", "legacy-ext reached {service}");
                    Some(())
                }
                Ok((service, via)) => {
                    eprintln!("legacy-ext: {service} answered, x-via {via:?}: not routed yet");
                    None
                }
                Err(e) => {
                    eprintln!("legacy-ext: {e:#}");
                    None
                }
            })
        })
    })?;
    step(&t, "a slice deleted: its endpoint is no longer called", || {
        t.kubectl_ok(
            &["delete", "endpointslice", "-n", demo::NAMESPACE, "legacy-by-hand-1"],
            None,
        )?;
        // The push takes a moment; then twenty calls all reach legacy-a.
        wait_for("only legacy-a behind legacy", Duration::from_secs(60), || {
            let answers: Vec<String> = (0..20)
                .map(|_| called(&http, &gw, "legacy").map(|(s, _)| s))
                .collect::<anyhow::Result<_>>()?;
            Ok(answers.iter().all(|s| s == "legacy-a").then_some(()))
        })
    })?;
    Ok(())
}
