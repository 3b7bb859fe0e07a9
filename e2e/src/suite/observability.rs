//! The observability tools the suite proves Trellis' telemetry with, deployed
//! as a user deploys them, and their query APIs.
//!
//! - **Prometheus** (upstream's image on a real cluster; on kubesim and the
//!   upstream test bed the release `e2e/observability/prometheus/go.mod`
//!   pins, built by `e2e/observability/build.sh`) with the common
//!   `kubernetes-pods` job: Kubernetes service discovery of pods, kept by
//!   their `prometheus.io/*` annotations — which the sidecar injector points
//!   at each proxy — and nothing Trellis-specific. Its ServiceAccount may
//!   list and watch pods, nothing else ([`PROMETHEUS_ROLE`]). Queried with
//!   PromQL (`/api/v1/query`).
//! - **Jaeger** v2 (all-in-one, in-memory storage; built from the Go module
//!   pinned in `e2e/observability/jaeger/go.mod`, built by the same script)
//!   receiving OTLP over gRPC (4317) and HTTP (4318). Queried with its query
//!   API (`/api/traces/<id>`).
//!
//! Both run unmeshed in [`NAMESPACE`] (the demo's collector namespace) and are
//! reached through LoadBalancer Services, like the gateway. On the upstream
//! test bed [`deploy`] first imports both images into the node
//! (`upstream::Cluster::import_mapped`), as a user pushes them to a registry.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use super::{Http, Sample, Target, steps, traces, wait_for};

/// Where the tools run (not meshed).
pub const NAMESPACE: &str = trellis_manifests::demo::COLLECTOR_NAMESPACE;
/// Prometheus' Deployment, Service and ServiceAccount.
pub const PROMETHEUS: &str = "prometheus";
/// Upstream's Prometheus image, of the release `e2e/observability/prometheus/go.mod` pins (kubesim runs that build).
pub const PROMETHEUS_IMAGE: &str = "quay.io/prometheus/prometheus:v3.16.0";
/// Prometheus' HTTP port.
pub const PROMETHEUS_PORT: i32 = 9090;
/// How often Prometheus scrapes (short, so a test sees its traffic quickly).
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);
/// The ClusterRole (and its binding) of Prometheus' ServiceAccount.
pub const PROMETHEUS_ROLE: &str = "trellis-e2e-prometheus";
/// What Prometheus' ServiceAccount may do, cluster-wide (`kubectl auth can-i`'s
/// arguments): what its pod discovery needs (a list, then a watch, of every
/// namespace's pods), nothing else.
pub const PROMETHEUS_MAY: [&[&str]; 2] = [&["list", "pods"], &["watch", "pods"]];
/// Requests Prometheus' ServiceAccount must be refused, cluster-wide: reading
/// a pod by name or through its proxy, and what other discovery roles or a
/// broader grant would read or change.
pub const PROMETHEUS_MAY_NOT: [&[&str]; 9] = [
    &["get", "pods"],
    &["get", "pods", "--subresource=proxy"],
    &["create", "pods"],
    &["delete", "pods"],
    &["list", "services"],
    &["list", "endpointslices.discovery.k8s.io"],
    &["list", "nodes"],
    &["list", "secrets"],
    &["list", "configmaps"],
];
/// Jaeger's Deployment.
pub const JAEGER: &str = "jaeger";
/// The Service the proxies send spans to.
pub const JAEGER_COLLECTOR: &str = "jaeger-collector";
/// The Service of Jaeger's query API and UI (a LoadBalancer).
pub const JAEGER_QUERY: &str = "jaeger-query";
/// Upstream's Jaeger image of the release `e2e/observability/go.mod` pins (v1.76.0 = v2.13.0).
pub const JAEGER_IMAGE: &str = "docker.io/jaegertracing/jaeger:2.13.0";
/// OTLP/gRPC.
pub const OTLP_GRPC_PORT: i32 = 4317;
/// OTLP/HTTP.
pub const OTLP_HTTP_PORT: i32 = 4318;
/// Jaeger's query API and UI.
pub const JAEGER_QUERY_PORT: i32 = 16686;

/// Why kubesim cannot run the tools on this machine, if it cannot: the
/// programs its image mapping runs for [`PROMETHEUS_IMAGE`] and
/// [`JAEGER_IMAGE`] are missing (each reason says how to get them).
pub fn tools_missing() -> Option<String> {
    use crate::runner::images::{BinDirs, resolve};
    let bins = BinDirs::resolve(None);
    let missing: Vec<String> = [PROMETHEUS_IMAGE, JAEGER_IMAGE]
        .iter()
        .filter_map(|image| resolve(image, &bins).err())
        .collect();
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// The common `kubernetes-pods` scrape job (Prometheus' own example
/// configuration and Istio's sample add-on use the same relabelling): pods
/// annotated `prometheus.io/scrape: "true"`, at their `prometheus.io/port`
/// and `prometheus.io/path`, with their labels, namespace and name.
pub fn prometheus_config() -> String {
    let interval = format!("{}s", SCRAPE_INTERVAL.as_secs());
    format!(
        r#"global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: "true"
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        action: replace
        target_label: __metrics_path__
        regex: (.+)
      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
        action: replace
        regex: ([^:]+)(?::\d+)?;(\d+)
        replacement: $1:$2
        target_label: __address__
      - action: labelmap
        regex: __meta_kubernetes_pod_label_(.+)
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
"#
    )
}

fn labels(app: &str) -> Value {
    json!({"app": app})
}

fn deployment(name: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels(name)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels(name)},
            "template": {"metadata": {"labels": labels(name)}, "spec": pod},
        },
    })
}

fn service(name: &str, app: &str, load_balancer: bool, ports: &[(&str, i32)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "targetPort": p, "protocol": "TCP"}))
        .collect();
    let mut spec = json!({"selector": labels(app), "ports": ports});
    if load_balancer {
        spec["type"] = "LoadBalancer".into();
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels(app)},
        "spec": spec,
    })
}

/// Prometheus (with read access to pods, for its discovery) and Jaeger.
pub fn objects() -> Vec<Value> {
    let prometheus_pod = json!({
        "serviceAccountName": PROMETHEUS,
        "containers": [{
            "name": PROMETHEUS,
            "image": PROMETHEUS_IMAGE,
            "args": [
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                "--storage.tsdb.retention.time=1h",
                format!("--web.listen-address=0.0.0.0:{PROMETHEUS_PORT}"),
            ],
            "ports": [{"name": "http", "containerPort": PROMETHEUS_PORT}],
            "readinessProbe": {"httpGet": {"path": "/-/ready", "port": PROMETHEUS_PORT}, "periodSeconds": 2},
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/prometheus"},
                {"name": "data", "mountPath": "/prometheus"},
            ],
        }],
        "volumes": [
            {"name": "config", "configMap": {"name": PROMETHEUS}},
            {"name": "data", "emptyDir": {}},
        ],
    });
    let jaeger_pod = json!({
        "containers": [{
            "name": JAEGER,
            "image": JAEGER_IMAGE,
            // The image's own setting: listen on every address, not only localhost.
            "env": [{"name": "JAEGER_LISTEN_HOST", "value": "0.0.0.0"}],
            "ports": [
                {"name": "grpc-otlp", "containerPort": OTLP_GRPC_PORT},
                {"name": "http-otlp", "containerPort": OTLP_HTTP_PORT},
                {"name": "http-query", "containerPort": JAEGER_QUERY_PORT},
            ],
            "readinessProbe": {"httpGet": {"path": "/", "port": JAEGER_QUERY_PORT}, "periodSeconds": 2},
        }],
    });
    vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NAMESPACE},
        }),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": PROMETHEUS, "namespace": NAMESPACE},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": PROMETHEUS_ROLE},
            // Pod discovery only: Prometheus' informer lists, then watches; it never gets a
            // pod by name.
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": PROMETHEUS_ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": PROMETHEUS_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": PROMETHEUS, "namespace": NAMESPACE}],
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": PROMETHEUS, "namespace": NAMESPACE},
            "data": {"prometheus.yml": prometheus_config()},
        }),
        deployment(PROMETHEUS, prometheus_pod),
        service(PROMETHEUS, PROMETHEUS, true, &[("http", PROMETHEUS_PORT)]),
        deployment(JAEGER, jaeger_pod),
        service(
            JAEGER_COLLECTOR,
            JAEGER,
            false,
            &[("grpc-otlp", OTLP_GRPC_PORT), ("http-otlp", OTLP_HTTP_PORT)],
        ),
        service(JAEGER_QUERY, JAEGER, true, &[("http-query", JAEGER_QUERY_PORT)]),
    ]
}

/// Applies [`objects`] and waits for both Deployments; on the upstream test
/// bed, first imports [`PROMETHEUS_IMAGE`] and [`JAEGER_IMAGE`] into its node.
pub fn deploy(t: &Target) -> anyhow::Result<()> {
    if let Some(cluster) = t.upstream() {
        cluster.import_mapped(&[PROMETHEUS_IMAGE, JAEGER_IMAGE])?;
    }
    t.apply(&trellis_manifests::to_yaml(&objects()))?;
    steps::rollout(t, NAMESPACE, PROMETHEUS)?;
    steps::rollout(t, NAMESPACE, JAEGER)
}

/// What `kubectl auth can-i` answers for Prometheus' ServiceAccount, cluster-wide,
/// against [`PROMETHEUS_MAY`] and [`PROMETHEUS_MAY_NOT`]: each request answered
/// otherwise, described (empty: least privilege holds). Meaningful only where
/// RBAC is enforced (kubesim allows every request).
pub fn prometheus_privileges_wrong(t: &Target) -> anyhow::Result<Vec<String>> {
    let user = format!("--as=system:serviceaccount:{NAMESPACE}:{PROMETHEUS}");
    let mut wrong = Vec::new();
    let asked = PROMETHEUS_MAY
        .iter()
        .map(|r| (r, true))
        .chain(PROMETHEUS_MAY_NOT.iter().map(|r| (r, false)));
    for (request, want) in asked {
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(request);
        args.extend_from_slice(&["--all-namespaces", &user]);
        let out = t.kubectl(&args, None)?;
        let request = request.join(" ");
        // `yes`, or `no` with the authorizer's reason after ` - ` when it gives one.
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let allowed = match answer.split_whitespace().next().unwrap_or_default() {
            "yes" => true,
            "no" => false,
            _ => bail!(
                "kubectl auth can-i {request} {user} answered {answer:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        };
        if allowed != want {
            wrong.push(format!(
                "{request}: {answer}, expected {}",
                if want { "yes" } else { "no" }
            ));
        }
    }
    Ok(wrong)
}

/// The Mesh change that sends every proxy's spans (all of them) to Jaeger
/// with `protocol` (`grpc`, `http/protobuf` or `http/json`).
pub fn mesh_tracing_to_jaeger(protocol: &str) -> Value {
    let port = if protocol == "grpc" {
        OTLP_GRPC_PORT
    } else {
        OTLP_HTTP_PORT
    };
    let mut mesh = trellis_manifests::demo::mesh_tracing();
    let tracing = &mut mesh["spec"]["telemetry"]["tracing"];
    tracing["otlpEndpoint"] = format!("http://{JAEGER_COLLECTOR}.{NAMESPACE}.svc.cluster.local:{port}").into();
    tracing["protocol"] = protocol.into();
    mesh
}

/// Prometheus' HTTP API.
#[derive(Debug, Clone)]
pub struct Prometheus {
    http: Http,
    base: String,
}

impl Prometheus {
    /// The Prometheus behind its LoadBalancer Service.
    pub fn new(t: &Target, http: &Http) -> anyhow::Result<Self> {
        Ok(Self {
            http: http.clone(),
            base: steps::load_balancer(t, NAMESPACE, PROMETHEUS)?,
        })
    }

    fn get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path_and_query}", self.base);
        let answer = self.http.get(&url, &[])?;
        let body: Value = answer.json()?;
        ensure!(
            answer.status == 200 && body["status"] == "success",
            "Prometheus answered {} to {url}: {body}",
            answer.status
        );
        Ok(body["data"].clone())
    }

    /// An instant query, evaluated now or at `at` (Unix seconds); each sample's
    /// name is its `__name__` label (empty for an aggregate).
    pub fn query(&self, promql: &str, at: Option<f64>) -> anyhow::Result<Vec<Sample>> {
        let mut q = format!("/api/v1/query?query={}", encode(promql));
        if let Some(at) = at {
            q.push_str(&format!("&time={at:.3}"));
        }
        let data = self.get(&q)?;
        ensure!(data["resultType"] == "vector", "{promql}: not a vector: {data}");
        let mut out = Vec::new();
        for r in data["result"].as_array().into_iter().flatten() {
            let mut labels: BTreeMap<String, String> = r["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("{promql}: sample without a value: {r}"))?;
            out.push(Sample {
                name: labels.remove("__name__").unwrap_or_default(),
                labels,
                value,
            });
        }
        Ok(out)
    }

    /// The one value of a query that aggregates to a single sample.
    pub fn scalar(&self, promql: &str, at: Option<f64>) -> anyhow::Result<f64> {
        match self.query(promql, at)?.as_slice() {
            [one] => Ok(one.value),
            other => bail!("{promql}: expected one sample, got {other:?}"),
        }
    }

    /// The active scrape targets.
    pub fn targets(&self) -> anyhow::Result<Vec<ScrapeTarget>> {
        let data = self.get("/api/v1/targets?state=active")?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let labels = t["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let text = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                ScrapeTarget {
                    labels,
                    health: text("health"),
                    last_error: text("lastError"),
                }
            })
            .collect())
    }

    /// Waits until every pod in `pods` (of `namespace`) is a healthy target.
    pub fn wait_for_targets(&self, namespace: &str, pods: &[String], timeout: Duration) -> anyhow::Result<()> {
        wait_for("Prometheus scraping every meshed pod", timeout, || {
            let targets = self.targets()?;
            let of = |t: &ScrapeTarget, pod: &str| {
                t.labels.get("namespace").map(String::as_str) == Some(namespace)
                    && t.labels.get("pod").map(String::as_str) == Some(pod)
            };
            let missing: Vec<String> = pods
                .iter()
                .filter(|pod| !targets.iter().any(|t| of(t, pod) && t.health == "up"))
                .map(|pod| {
                    let state = targets
                        .iter()
                        .find(|t| of(t, pod))
                        .map_or("not discovered".to_string(), |t| {
                            format!("{} {}", t.health, t.last_error)
                        });
                    format!("{pod} ({state})")
                })
                .collect();
            if missing.is_empty() {
                Ok(Some(()))
            } else {
                Err(anyhow::anyhow!("not scraped yet: {}", missing.join(", ")))
            }
        })
    }
}

/// One of Prometheus' active scrape targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// Its labels after relabelling (`namespace`, `pod`, the pod's labels, `job`, `instance`).
    pub labels: BTreeMap<String, String>,
    /// `up`, `down` or `unknown`.
    pub health: String,
    /// Why the last scrape failed, if it did.
    pub last_error: String,
}

/// Percent-encodes a query parameter value.
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Jaeger's query API.
#[derive(Debug, Clone)]
pub struct Jaeger {
    http: Http,
    base: String,
}

impl Jaeger {
    /// The Jaeger behind its query LoadBalancer Service.
    pub fn new(t: &Target, http: &Http) -> anyhow::Result<Self> {
        Ok(Self {
            http: http.clone(),
            base: steps::load_balancer(t, NAMESPACE, JAEGER_QUERY)?,
        })
    }

    /// The services Jaeger has received spans from (its `/api/services`).
    pub fn services(&self) -> anyhow::Result<Vec<String>> {
        let url = format!("{}/api/services", self.base);
        let answer = self.http.get(&url, &[])?;
        ensure!(
            answer.status == 200,
            "Jaeger answered {} to {url}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        Ok(answer.json()?["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect())
    }

    /// The traces Jaeger holds for `trace_id` (32 hex digits): its
    /// `/api/traces/<id>` answer's `data`, empty while it has none.
    pub fn trace(&self, trace_id: &str) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}/api/traces/{trace_id}", self.base);
        let answer = self.http.get(&url, &[])?;
        if answer.status == 404 {
            return Ok(Vec::new());
        }
        ensure!(
            answer.status == 200,
            "Jaeger answered {} to {url}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        Ok(answer.json()?["data"].as_array().cloned().unwrap_or_default())
    }
}

/// The spans of one Jaeger trace (its query API's shape), as
/// [`traces::Span`]s: the service from the span's process, the kind from
/// its `span.kind` tag, the parent from its `CHILD_OF` reference.
pub fn jaeger_spans(trace: &Value) -> Vec<traces::Span> {
    let services: BTreeMap<String, String> = trace["processes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, p)| (id.clone(), p["serviceName"].as_str().unwrap_or_default().to_string()))
        .collect();
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
            let kind = match tag(s, "span.kind").as_deref() {
                Some("server") => traces::SERVER,
                Some("client") => traces::CLIENT,
                _ => 0,
            };
            let parent = s["references"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str())
                .unwrap_or_default()
                .to_string();
            traces::Span {
                service: services.get(&text("processID")).cloned().unwrap_or_default(),
                trace_id: text("traceID"),
                span_id: text("spanID"),
                parent_id: parent,
                name: text("operationName"),
                kind,
            }
        })
        .collect()
}

/// A span's tag value, as text, from Jaeger's `tags` list.
pub fn tag(span: &Value, key: &str) -> Option<String> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| match &t["value"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaeger_traces_become_spans_parented_hop_by_hop() {
        let trace = json!({
            "traceID": "t1",
            "processes": {"p1": {"serviceName": "web.shop"}, "p2": {"serviceName": "db.shop"}},
            "spans": [
                {"traceID": "t1", "spanID": "b", "operationName": "inbound|8080", "processID": "p2",
                 "references": [{"refType": "CHILD_OF", "traceID": "t1", "spanID": "a"}],
                 "tags": [{"key": "span.kind", "type": "string", "value": "server"},
                          {"key": "http.response.status_code", "type": "int64", "value": 200}]},
                {"traceID": "t1", "spanID": "a", "operationName": "db", "processID": "p1",
                 "references": [{"refType": "CHILD_OF", "traceID": "t1", "spanID": "client"}],
                 "tags": [{"key": "span.kind", "type": "string", "value": "client"}]},
            ],
        });
        let spans = jaeger_spans(&trace);
        let chain = traces::chain(&spans, "client").unwrap();
        traces::expect_hops(
            &chain,
            &[
                ("web.shop", traces::CLIENT, "db"),
                ("db.shop", traces::SERVER, "inbound|8080"),
            ],
        )
        .unwrap();
        assert_eq!(
            tag(&trace["spans"][0], "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(tag(&trace["spans"][0], "missing"), None);
    }

    #[test]
    fn the_scrape_job_keeps_annotated_pods_at_their_port_and_path() {
        let cfg = prometheus_config();
        for want in [
            "role: pod",
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
            "target_label: __metrics_path__",
            "replacement: $1:$2",
            "target_label: pod",
        ] {
            assert!(cfg.contains(want), "{want}: {cfg}");
        }
        assert_eq!(
            encode("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }
}
