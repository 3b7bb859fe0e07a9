//! The workloads the compiler tests are written with: ready pods as YAML, a snapshot of YAML
//! documents, and the configuration compiled for one pod (`sidecar_ingress`, `sidecar_scope`,
//! `service_export_to`).

#![allow(dead_code)] // each test file uses its own part

use trellis_core::compile::{Compiled, Role, compile};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

/// The Services `web` (port 80 → target 8080, HTTP) and `payment` (80 and TCP 5432) in `shop`
/// (`sidecar_ingress`, `port_policy`).
pub const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.1.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: payment, namespace: shop}
spec:
  clusterIP: 10.96.1.2
  selector: {app: payment}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: tcp-db, port: 5432, targetPort: 5432}]
"#;

/// A running, ready pod `namespace/name` labelled `app: <app>` at `ip`, with one container
/// (`app`, the application; no proxy container: the compiler does not need it).
pub fn pod(namespace: &str, name: &str, app: &str, ip: &str) -> String {
    ready_pod(namespace, name, app, ip, &format!("{{name: app, image: {app}}}"))
}

/// A gateway's pod: as [`pod`], but the proxy is its only container.
pub fn gateway_pod(namespace: &str, name: &str, app: &str, ip: &str) -> String {
    ready_pod(namespace, name, app, ip, "{name: trellis-proxy, image: trellis-proxy}")
}

fn ready_pod(namespace: &str, name: &str, app: &str, ip: &str, container: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}
spec: {{containers: [{container}]}}
status: {{podIP: {ip}, phase: Running, conditions: [{{type: Ready, status: "True"}}]}}
"#
    )
}

/// The snapshot of these YAML documents, in this order (an empty one is no object).
pub fn snapshot(documents: &[&str]) -> Snapshot {
    Snapshot::from_yaml(&documents.join("\n---\n")).expect("the fixture parses")
}

/// What the compiler makes of `snapshot` for the pod `namespace/pod` in `role`.
pub fn compiled(snapshot: &Snapshot, namespace: &str, pod: &str, role: Role) -> Compiled {
    compile(snapshot, &ObjectKey::new(namespace, pod), role, "v1")
        .unwrap_or_else(|e| panic!("{namespace}/{pod} compiles: {e}"))
}
