//! Istio's egress gateway pattern end to end ("Egress TLS Origination via an egress gateway",
//! with `apiVersion` changed): a meshed client calls `http://secure.example.com`, and the
//! request goes web's sidecar → (mutual TLS, the gateway's SPIFFE identity verified) →
//! `trellis-egressgateway` → (TLS originated, the server verified against a CA from a Secret)
//! → an HTTPS server outside the mesh.
//!
//! - The egress gateway is the demo profile's (`trellis_manifests::profile::egress_gateway`:
//!   what `meshctl install --profile demo` installs), applied in `trellis-system`.
//! - The external server is `trellis-testapp` serving HTTPS (a certificate for
//!   `secure.example.com` from a CA this test makes) in an unmeshed namespace, with no Service:
//!   only the ServiceEntry names its address. Its answers say what the TLS handshake carried
//!   and who connected, so the test sees that the gateway, not the client's sidecar, originated
//!   TLS to it, asking for the host's name.
//! - The Mesh's `outboundTrafficPolicy` is `REGISTRY_ONLY`: web's sidecar refuses the server's
//!   own address (not in the registry), so the gateway is the way out.
//! - The gateway counts what it carried (`istio_requests_total`); with the credential's CA
//!   swapped for another, the gateway refuses the server (the CA is checked); with the egress
//!   VirtualService deleted nothing crosses the gateway any more.
//!
//! Speaks only the Kubernetes API and real traffic; runs on kubesim and on upstream
//! Kubernetes. Needs the workspace's binaries built, as `first_light` does.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use trellis_e2e::pki::Authority;
use trellis_e2e::suite::{Http, Target, mesh, prometheus_samples, steps, wait_for};
use trellis_manifests::{demo, install, profile, to_yaml};

const TEST: &str = "egress_gateway";
/// The external host, as the client calls it.
const HOST: &str = "secure.example.com";
/// The address the sidecars' DNS proxy answers for it (the ServiceEntry's `addresses`; Istio
/// allocates such addresses from 240.240.0.0/16 itself).
const HOST_VIP: &str = "240.240.10.1";
/// The unmeshed namespace of the external server.
const EXTERNAL_NAMESPACE: &str = "external";
/// The external server's Deployment and `app` label.
const EXTERNAL: &str = "secure-example";
/// Its HTTPS port, and its plaintext one (health, metrics).
const EXTERNAL_HTTPS_PORT: u16 = 8443;
const EXTERNAL_HTTP_PORT: u16 = 8080;
/// The Secret (in the gateway's namespace) whose `ca.crt` the gateway verifies the server with.
const CA_CREDENTIAL: &str = "secure-example-ca";

fn step<T>(t: &Target, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    mesh::step(t, TEST, name, f)
}

/// A `kubernetes.io/tls` Secret with `ca.crt` when given.
fn tls_secret(name: &str, ns: &str, cert: &str, key: &str, ca: Option<&str>) -> Value {
    let mut data = json!({"tls.crt": cert, "tls.key": key});
    if let Some(ca) = ca {
        data["ca.crt"] = json!(ca);
    }
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns}, "stringData": data})
}

/// The external HTTPS server: its namespace (not meshed), its serving Secret and Deployment.
fn external_server(ca: &Authority) -> anyhow::Result<String> {
    let serving = ca.server(HOST, &[HOST.to_string()])?;
    let secret = tls_secret(
        "secure-example-tls",
        EXTERNAL_NAMESPACE,
        &serving.cert_pem,
        &serving.key_pem,
        None,
    );
    Ok(format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {EXTERNAL_NAMESPACE}}}
---
{secret}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {EXTERNAL}, namespace: {EXTERNAL_NAMESPACE}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {EXTERNAL}}}}}
  template:
    metadata: {{labels: {{app: {EXTERNAL}}}}}
    spec:
      containers:
      - name: app
        image: {image}
        env:
        - {{name: TESTAPP_SERVICE, value: {EXTERNAL}}}
        - {{name: TESTAPP_HTTP_ADDR, value: "0.0.0.0:{EXTERNAL_HTTP_PORT}"}}
        - {{name: TESTAPP_HTTPS_ADDR, value: "0.0.0.0:{EXTERNAL_HTTPS_PORT}"}}
        - {{name: TESTAPP_TLS_CERT, value: /etc/tls/tls.crt}}
        - {{name: TESTAPP_TLS_KEY, value: /etc/tls/tls.key}}
        ports: [{{containerPort: {EXTERNAL_HTTP_PORT}}}, {{containerPort: {EXTERNAL_HTTPS_PORT}}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: {EXTERNAL_HTTP_PORT}}}, periodSeconds: 1}}
        volumeMounts: [{{name: tls, mountPath: /etc/tls, readOnly: true}}]
      volumes: [{{name: tls, secret: {{secretName: secure-example-tls}}}}]
"#,
        secret = serde_json::to_string(&secret)?,
        image = demo::testapp_image(),
    ))
}

/// The egress gateway pattern's objects (Istio's YAML with `apiVersion` changed), the external
/// server at `address`, and the shop gateway's route to web's `/call`.
fn egress_objects(address: &str) -> String {
    let ns = demo::NAMESPACE;
    let gw = profile::EGRESS_GATEWAY;
    let system = trellis_api::mesh::SYSTEM_NAMESPACE;
    format!(
        r#"apiVersion: networking.trellis.dev/v1alpha1
kind: ServiceEntry
metadata: {{name: secure-example, namespace: {ns}}}
spec:
  hosts: [{HOST}]
  addresses: [{HOST_VIP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS}}
  endpoints:
  - {{address: "{address}", ports: {{https: {EXTERNAL_HTTPS_PORT}}}}}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: Gateway
metadata: {{name: egress, namespace: {ns}}}
spec:
  selector: {{app: {gw}}}
  servers:
  - port: {{number: 80, name: https-for-tls-origination, protocol: HTTPS, targetPort: 8080}}
    hosts: [{HOST}]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {{name: egressgateway-for-secure-example, namespace: {ns}}}
spec:
  host: {gw}.{system}.svc.cluster.local
  subsets:
  - name: secure-example
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 80}}
        tls: {{mode: ISTIO_MUTUAL, sni: {HOST}}}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {{name: secure-example-through-egress-gateway, namespace: {ns}}}
spec:
  hosts: [{HOST}]
  gateways: [egress, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination: {{host: {gw}.{system}.svc.cluster.local, subset: secure-example, port: {{number: 80}}}}
  - match: [{{gateways: [egress], port: 80}}]
    route:
    - destination: {{host: {HOST}, port: {{number: 443}}}}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {{name: originate-tls-for-secure-example, namespace: {ns}}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, credentialName: {CA_CREDENTIAL}}}
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
    )
}

/// The credential the gateway verifies the server with: `ca.crt` is `ca`'s certificate (the
/// Secret's own pair, a client certificate of `ca`, is not presented: SIMPLE).
fn ca_credential(ca: &Authority, trusted: &Authority) -> anyhow::Result<String> {
    let pair = ca.server("egress-gateway", &["egress-gateway".to_string()])?;
    let secret = tls_secret(
        CA_CREDENTIAL,
        trellis_api::mesh::SYSTEM_NAMESPACE,
        &pair.cert_pem,
        &pair.key_pem,
        Some(&trusted.cert_pem),
    );
    Ok(serde_json::to_string(&secret)?)
}

/// web's answer to `/call?url=URL` through the shop gateway: its status and the upstream part.
fn call(http: &Http, gw: &str, url: &str) -> anyhow::Result<(u16, Value)> {
    let answer = http.get(&format!("{gw}/call?url={url}"), &[])?;
    let body = answer.json()?;
    Ok((answer.status, body["upstream"].clone()))
}

/// The one pod of `app` in `ns`: its name and IP.
fn pod(t: &Target, ns: &str, app: &str) -> anyhow::Result<(String, String)> {
    let pods = t.get_json(&["pods", "-n", ns, "-l", &format!("app={app}")])?;
    let live: Vec<&Value> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let [one] = live.as_slice() else {
        anyhow::bail!("expected one pod of {ns}/{app}, found {}", live.len());
    };
    let name = one["metadata"]["name"].as_str().context("a pod without a name")?;
    let ip = one["status"]["podIP"].as_str().context("no pod IP yet")?;
    Ok((name.to_string(), ip.to_string()))
}

/// The sum of `name` in a Prometheus text whose labels include all of `want`.
fn metric_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    prometheus_samples(text)
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|l| l == v)))
        .map(|s| s.value)
        .sum()
}

/// Requests the egress gateway answered 200 for the external host, by its own metrics.
fn gateway_count(t: &Target, gateway_pod: &str) -> anyhow::Result<f64> {
    let text = t.raw(&format!(
        "/api/v1/namespaces/{}/pods/{gateway_pod}:15020/proxy/metrics",
        trellis_api::mesh::SYSTEM_NAMESPACE
    ))?;
    Ok(metric_sum(
        &text,
        "istio_requests_total",
        &[("destination_service", HOST), ("response_code", "200")],
    ))
}

/// Requests the external server answered (its own counter; not probes).
fn external_count(t: &Target, external_pod: &str) -> anyhow::Result<f64> {
    let text = t.raw(&format!(
        "/api/v1/namespaces/{EXTERNAL_NAMESPACE}/pods/{external_pod}:{EXTERNAL_HTTP_PORT}/proxy/metrics"
    ))?;
    Ok(metric_sum(&text, "testapp_requests_total", &[]))
}

#[test]
fn a_meshed_client_reaches_an_external_https_server_through_the_egress_gateway() -> anyhow::Result<()> {
    // Without root (and no TRELLIS_E2E_KUBECONFIG) the skip is recorded; under CI it fails.
    let Some(t) = Target::acquire()? else { return Ok(()) };
    let http = Http::new()?;
    let ca = Authority::new("external test CA")?;
    let other_ca = Authority::new("another CA")?;
    step(&t, "install: CRDs, the operator", || steps::install(&t))?;
    step(&t, "the Mesh's outboundTrafficPolicy: REGISTRY_ONLY", || {
        mesh::patch_spec(&t, json!({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}))
    })?;
    step(&t, "the demo profile's egress gateway", || {
        t.apply(&to_yaml(&profile::egress_gateway(&install::Options::default())))?;
        steps::rollout(&t, trellis_api::mesh::SYSTEM_NAMESPACE, profile::EGRESS_GATEWAY)
    })?;
    step(&t, "deploy the shop", || steps::deploy_shop(&t))?;
    let gw = step(&t, "the shop gateway's load balancer address", || {
        steps::load_balancer(&t, demo::NAMESPACE, demo::GATEWAY)
    })?;
    let (external_pod, external_ip) = step(&t, "an HTTPS server outside the mesh, with no Service", || {
        t.apply(&external_server(&ca)?)?;
        steps::rollout(&t, EXTERNAL_NAMESPACE, EXTERNAL)?;
        pod(&t, EXTERNAL_NAMESPACE, EXTERNAL)
    })?;
    let (gateway_pod, gateway_ip) = pod(&t, trellis_api::mesh::SYSTEM_NAMESPACE, profile::EGRESS_GATEWAY)?;
    step(&t, "the egress gateway pattern's objects and the CA credential", || {
        t.apply(&ca_credential(&ca, &ca)?)?;
        t.apply(&egress_objects(&external_ip)).map(|_| ())
    })?;
    step(
        &t,
        "REGISTRY_ONLY: web's sidecar refuses the server's own address",
        || {
            let direct = format!("http://{external_ip}:{EXTERNAL_HTTP_PORT}/hello");
            wait_for(
                "web's sidecar refusing an address outside the registry",
                Duration::from_secs(60),
                || {
                    let (_, upstream) = call(&http, &gw, &direct)?;
                    let refused = upstream["status"] == 502
                        && upstream["body"].as_str().is_some_and(|b| b.contains("REGISTRY_ONLY"));
                    if !refused {
                        eprintln!("{direct}: {upstream}");
                    }
                    Ok(refused.then_some(()))
                },
            )?;
            let seen = external_count(&t, &external_pod)?;
            ensure!(
                seen == 0.0,
                "the external server answered {seen} requests sent to its address"
            );
            Ok(())
        },
    )?;
    let url = format!("http://{HOST}/hello");
    let first = step(&t, "web calls the external host through the egress gateway", || {
        wait_for(
            &format!("{url} answered through the egress gateway"),
            Duration::from_secs(90),
            || {
                let (status, upstream) = call(&http, &gw, &url)?;
                if status == 200 && upstream["body"]["service"] == EXTERNAL {
                    return Ok(Some(upstream["body"].clone()));
                }
                eprintln!("{url}: {status} {upstream}");
                Ok(None)
            },
        )
    })?;
    step(
        &t,
        "the external server saw TLS from the gateway, for the host's name",
        || {
            ensure!(first["tls"]["sni"] == HOST, "the server's handshake: {}", first["tls"]);
            let peer = first["peer"].as_str().unwrap_or_default();
            ensure!(
                peer.rsplit_once(':').is_some_and(|(ip, _)| ip == gateway_ip),
                "the server was called from {peer}, not from the egress gateway ({gateway_ip})"
            );
            // Plain HTTP from the app, TLS from the gateway: the server is asked for the host itself.
            ensure!(first["headers"]["host"] == HOST, "{}", first["headers"]);
            Ok(())
        },
    )?;
    step(&t, "the egress gateway counted each request", || {
        let before = gateway_count(&t, &gateway_pod)?;
        ensure!(before >= 1.0, "the gateway counted no request for {HOST}");
        for _ in 0..5 {
            let (status, upstream) = call(&http, &gw, &url)?;
            ensure!(
                status == 200 && upstream["body"]["tls"]["sni"] == HOST,
                "{status} {upstream}"
            );
        }
        let after = gateway_count(&t, &gateway_pod)?;
        ensure!(
            after - before == 5.0,
            "5 requests made, the gateway counted {}",
            after - before
        );
        Ok(())
    })?;
    step(
        &t,
        "another CA in the credential: the gateway refuses the server",
        || {
            t.apply(&ca_credential(&ca, &other_ca)?)?;
            wait_for(
                "the gateway to refuse the server's certificate",
                Duration::from_secs(60),
                || {
                    let (status, upstream) = call(&http, &gw, &url)?;
                    Ok((status != 200 && upstream["body"]["service"] != EXTERNAL).then_some(()))
                },
            )?;
            // The handshake fails at the gateway: no request reaches the server.
            let served = external_count(&t, &external_pod)?;
            for _ in 0..5 {
                let (status, upstream) = call(&http, &gw, &url)?;
                ensure!(status >= 500, "{status} {upstream}");
            }
            ensure!(
                external_count(&t, &external_pod)? == served,
                "requests reached the server although its certificate is not trusted"
            );
            t.apply(&ca_credential(&ca, &ca)?)?;
            wait_for("the gateway to trust the server again", Duration::from_secs(60), || {
                let (status, _) = call(&http, &gw, &url)?;
                Ok((status == 200).then_some(()))
            })
        },
    )?;
    step(
        &t,
        "the egress VirtualService deleted: nothing crosses the gateway",
        || {
            t.kubectl_ok(
                &[
                    "delete",
                    "virtualservice",
                    "-n",
                    demo::NAMESPACE,
                    "secure-example-through-egress-gateway",
                ],
                None,
            )?;
            wait_for(
                "web's calls to stop reaching the server",
                Duration::from_secs(60),
                || {
                    let (_, upstream) = call(&http, &gw, &url)?;
                    Ok((upstream["body"]["service"] != EXTERNAL).then_some(()))
                },
            )?;
            let (through, served) = (gateway_count(&t, &gateway_pod)?, external_count(&t, &external_pod)?);
            for _ in 0..5 {
                let (status, upstream) = call(&http, &gw, &url)?;
                ensure!(upstream["body"]["service"] != EXTERNAL, "{status} {upstream}");
            }
            ensure!(
                gateway_count(&t, &gateway_pod)? == through,
                "the gateway still carries {HOST}"
            );
            ensure!(
                external_count(&t, &external_pod)? == served,
                "the server is still reached"
            );
            Ok(())
        },
    )?;
    Ok(())
}
