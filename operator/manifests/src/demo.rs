//! The shop of the seed documents, as `meshctl demo` and the end-to-end
//! suite deploy it: an ingress gateway, `web`, `payment` v1 and v2, and
//! `db` (all `trellis-testapp`: plain Deployments, no sidecar in their YAML,
//! in the namespace labelled `trellis.dev/inject=enabled`, so the operator's
//! injector meshes their pods as a user's would be), a trace collector, and an
//! out-of-mesh client. The routing is `examples/demo/routing.yaml`
//! ([`ROUTING`]).
//!
//! Request path: gateway `/api/x` → web `/api/x` → payment `/pay/x` → db `/db/x`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, Namespace, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::install::{IMAGE_REPOSITORY, env, env_field, to_value};
use crate::sidecar::{self, INJECT_ENABLED, INJECT_LABEL};

/// The shop's namespace (injection enabled).
pub const NAMESPACE: &str = "shop";
/// The ingress gateway's Deployment, Service, ServiceAccount and `app` label.
pub const GATEWAY: &str = "trellis-ingressgateway";
/// The gateway Service's port (a LoadBalancer).
pub const GATEWAY_PORT: i32 = 80;
/// The port the gateway proxy listens on (the Gateway server's targetPort).
pub const GATEWAY_TARGET_PORT: i32 = 8080;
/// Namespace of the trace collector (not meshed).
pub const COLLECTOR_NAMESPACE: &str = "observability";
/// The collector's Service and port (OTLP/HTTP).
pub const COLLECTOR: &str = "collector";
pub const COLLECTOR_PORT: i32 = 4318;
/// Namespace of the out-of-mesh client (not meshed).
pub const OUTSIDE_NAMESPACE: &str = "outside";
/// The out-of-mesh client's Service and port.
pub const CLIENT: &str = "client";
pub const CLIENT_PORT: i32 = 8081;
/// Every app's port.
pub const APP_PORT: i32 = 8080;
/// The TCP echo port of `db` (its Service port `tcp-echo`: opaque TCP in the mesh).
pub const DB_TCP_PORT: i32 = 9000;

/// The shop's routing, mTLS and authorization (Istio-compatible YAML).
pub const ROUTING: &str = include_str!("../../../examples/demo/routing.yaml");

/// The image of the test workload.
pub fn testapp_image() -> String {
    format!("{IMAGE_REPOSITORY}/trellis-testapp:{}", env!("CARGO_PKG_VERSION"))
}

/// One workload of the shop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The Deployment's name.
    pub name: String,
    /// The service it plays (the `app` label and ServiceAccount).
    pub service: String,
    pub version: String,
    pub replicas: i32,
    /// `TESTAPP_FORWARD`: where it sends requests on.
    pub forward: Option<String>,
    /// `TESTAPP_FAIL_STATUS`: answer every request with this status.
    pub fail_status: Option<u16>,
    /// A TCP echo on [`DB_TCP_PORT`] besides HTTP.
    pub tcp_echo: bool,
    /// The pods ask Prometheus to scrape the app's own `/metrics` (the standard
    /// `prometheus.io/*` annotations; in the mesh the proxy merges them with its own).
    pub own_metrics: bool,
}

impl App {
    fn new(service: &str, version: &str, forward: Option<&str>) -> Self {
        App {
            name: if service == "payment" {
                format!("{service}-{version}")
            } else {
                service.to_string()
            },
            service: service.into(),
            version: version.into(),
            replicas: 1,
            forward: forward.map(str::to_string),
            fail_status: None,
            tcp_echo: service == "db",
            own_metrics: service == "db",
        }
    }
}

/// The shop's workloads.
pub fn apps() -> Vec<App> {
    vec![
        App::new("web", "v1", Some("/api=http://payment:8080/pay")),
        App::new("payment", "v1", Some("/pay=http://db:8080/db")),
        App::new("payment", "v2", Some("/pay=http://db:8080/db")),
        App::new("db", "v1", None),
    ]
}

fn meta(name: &str, namespace: Option<&str>, labels: BTreeMap<String, String>) -> ObjectMeta {
    let mut all = BTreeMap::from([("app.kubernetes.io/part-of".to_string(), "trellis-demo".to_string())]);
    all.extend(labels);
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        labels: Some(all),
        ..ObjectMeta::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn namespace(name: &str, meshed: bool) -> Value {
    let l = if meshed {
        labels(&[(INJECT_LABEL, INJECT_ENABLED)])
    } else {
        BTreeMap::new()
    };
    to_value(&Namespace {
        metadata: meta(name, None, l),
        ..Namespace::default()
    })
}

fn service_account(name: &str, ns: &str) -> Value {
    to_value(&ServiceAccount {
        metadata: meta(name, Some(ns), BTreeMap::new()),
        ..ServiceAccount::default()
    })
}

fn service(name: &str, ns: &str, port: i32, target: i32, load_balancer: bool) -> Value {
    to_value(&Service {
        metadata: meta(name, Some(ns), labels(&[("app", name)])),
        spec: Some(ServiceSpec {
            type_: load_balancer.then(|| "LoadBalancer".to_string()),
            selector: Some(labels(&[("app", name)])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                target_port: Some(IntOrString::Int(target)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// A test-app pod template (not yet meshed).
fn testapp_template(service: &str, version: &str, port: i32, extra_env: &[(&str, String)]) -> PodTemplateSpec {
    let mut vars = vec![
        env("TESTAPP_SERVICE", service),
        env("TESTAPP_VERSION", version),
        env("TESTAPP_HTTP_ADDR", &format!("0.0.0.0:{port}")),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
    ];
    vars.extend(extra_env.iter().map(|(k, v)| env(k, v)));
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&[("app", service), ("version", version)])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(service.into()),
            termination_grace_period_seconds: Some(5),
            containers: vec![Container {
                name: service.into(),
                image: Some(testapp_image()),
                env: Some(vars),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: port,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                }]),
                readiness_probe: Some(Probe {
                    http_get: Some(HTTPGetAction {
                        path: Some("/healthz".into()),
                        port: IntOrString::String("http".into()),
                        ..HTTPGetAction::default()
                    }),
                    period_seconds: Some(1),
                    ..Probe::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

fn deployment(name: &str, ns: &str, replicas: i32, template: PodTemplateSpec) -> Value {
    let selector = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    to_value(&Deployment {
        metadata: meta(
            name,
            Some(ns),
            labels(&[("app", selector.get("app").map_or(name, String::as_str))]),
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// One shop workload's Deployment, as a user writes it: no sidecar (the injector adds it to
/// the pods).
pub fn app_deployment(app: &App) -> Value {
    let mut extra = Vec::new();
    if let Some(f) = &app.forward {
        extra.push(("TESTAPP_FORWARD", f.clone()));
    }
    if let Some(s) = app.fail_status {
        extra.push(("TESTAPP_FAIL_STATUS", s.to_string()));
    }
    if app.tcp_echo {
        extra.push(("TESTAPP_TCP_ADDR", format!("0.0.0.0:{DB_TCP_PORT}")));
    }
    let mut template = testapp_template(&app.service, &app.version, APP_PORT, &extra);
    if app.tcp_echo
        && let Some(c) = template.spec.as_mut().and_then(|s| s.containers.first_mut())
    {
        c.ports.get_or_insert_with(Vec::new).push(ContainerPort {
            name: Some("tcp-echo".into()),
            container_port: DB_TCP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    if app.own_metrics {
        template.metadata.get_or_insert_with(ObjectMeta::default).annotations = Some(BTreeMap::from([
            ("prometheus.io/scrape".to_string(), "true".to_string()),
            ("prometheus.io/port".to_string(), APP_PORT.to_string()),
            ("prometheus.io/path".to_string(), "/metrics".to_string()),
        ]));
    }
    deployment(&app.name, NAMESPACE, app.replicas, template)
}

/// The shop as a user writes it, as `meshctl demo` applies it after `meshctl install
/// --profile demo` (whose ingress gateway serves the shop's Gateway): namespaces (none
/// labelled: the demo labels the shop's for injection, as a user does), ServiceAccounts,
/// Services, the shop's Deployments, the trace collector and the outside client. No sidecar
/// and no gateway in it.
pub fn shop() -> Vec<Value> {
    let mut out = vec![
        namespace(NAMESPACE, false),
        namespace(COLLECTOR_NAMESPACE, false),
        namespace(OUTSIDE_NAMESPACE, false),
    ];
    let apps = apps();
    let mut services: Vec<&str> = apps.iter().map(|a| a.service.as_str()).collect();
    services.dedup();
    for s in &services {
        out.push(service_account(s, NAMESPACE));
        let mut svc = service(s, NAMESPACE, APP_PORT, APP_PORT, false);
        if apps.iter().any(|a| a.service == *s && a.tcp_echo)
            && let Some(ports) = svc["spec"]["ports"].as_array_mut()
        {
            ports.push(json!({"name": "tcp-echo", "port": DB_TCP_PORT, "targetPort": DB_TCP_PORT, "protocol": "TCP"}));
        }
        out.push(svc);
    }
    for app in &apps {
        out.push(app_deployment(app));
    }
    for (name, ns, port) in [
        (COLLECTOR, COLLECTOR_NAMESPACE, COLLECTOR_PORT),
        (CLIENT, OUTSIDE_NAMESPACE, CLIENT_PORT),
    ] {
        out.push(service_account(name, ns));
        out.push(service(name, ns, port, port, true));
        out.push(deployment(name, ns, 1, testapp_template(name, "v1", port, &[])));
    }
    out
}

/// What the end-to-end suite deploys besides Trellis itself and the routing: the [`shop`]
/// with its namespace labelled for injection, and its own ingress gateway in the shop's
/// namespace (its proxy image from `settings`), so the suite needs no installation profile.
pub fn objects(settings: &sidecar::Settings) -> Vec<Value> {
    let mut out = shop();
    if let Some(ns) = out
        .iter_mut()
        .find(|o| o["kind"] == "Namespace" && o["metadata"]["name"] == NAMESPACE)
    {
        ns["metadata"]["labels"][INJECT_LABEL] = json!(INJECT_ENABLED);
    }
    out.push(service_account(GATEWAY, NAMESPACE));
    out.push(service(GATEWAY, NAMESPACE, GATEWAY_PORT, GATEWAY_TARGET_PORT, true));
    out.push(deployment(
        GATEWAY,
        NAMESPACE,
        1,
        sidecar::gateway_pod_template(GATEWAY, settings, &[GATEWAY_TARGET_PORT as u16]),
    ));
    out
}

/// The Mesh change that sends every proxy's spans to the demo's collector.
pub fn mesh_tracing() -> Value {
    json!({
        "apiVersion": format!("{}/{}", trellis_api::mesh::GROUP, trellis_api::document::VERSION),
        "kind": "Mesh",
        "metadata": {"name": "default"},
        "spec": {"telemetry": {"tracing": {
            "sampling": 100.0,
            "otlpEndpoint": format!("http://{COLLECTOR}.{COLLECTOR_NAMESPACE}.svc.cluster.local:{COLLECTOR_PORT}"),
            // The test app's collector speaks OTLP/HTTP with JSON bodies.
            "protocol": "http/json",
        }}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::Options;

    #[test]
    fn the_shop_is_plain_deployments_in_a_meshed_namespace_and_the_outsiders_are_not_meshed() {
        let objects = objects(&sidecar::Settings::new(&Options::default()));
        let deployments: BTreeMap<String, &Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Deployment")
            .map(|o| (o["metadata"]["name"].as_str().unwrap().to_string(), o))
            .collect();
        assert_eq!(
            deployments.keys().collect::<Vec<_>>(),
            ["client", "collector", "db", "payment-v1", "payment-v2", GATEWAY, "web"]
        );
        let namespace_label = |name: &str| {
            objects
                .iter()
                .find(|o| o["kind"] == "Namespace" && o["metadata"]["name"] == name)
                .map(|o| o["metadata"]["labels"][INJECT_LABEL].clone())
                .unwrap()
        };
        assert_eq!(namespace_label(NAMESPACE), INJECT_ENABLED);
        assert!(namespace_label(COLLECTOR_NAMESPACE).is_null() && namespace_label(OUTSIDE_NAMESPACE).is_null());
        for (name, d) in &deployments {
            // No sidecar in anyone's YAML: the injector adds it.
            assert!(d["spec"]["template"]["spec"]["initContainers"].is_null(), "{name}");
        }
        for name in ["web", "payment-v1", "payment-v2", "db"] {
            assert_eq!(deployments[name]["metadata"]["namespace"], NAMESPACE);
            assert!(deployments[name]["spec"]["template"]["metadata"]["labels"][INJECT_LABEL].is_null());
        }
        // The gateway lives in the meshed namespace but is a proxy itself: it opts out.
        assert_eq!(
            deployments[GATEWAY]["spec"]["template"]["metadata"]["labels"][INJECT_LABEL],
            sidecar::INJECT_DISABLED
        );
        let payment_v2 = &deployments["payment-v2"]["spec"]["template"];
        assert_eq!(payment_v2["metadata"]["labels"]["version"], "v2");
        assert_eq!(payment_v2["metadata"]["labels"]["app"], "payment");
        // db also echoes opaque TCP, and asks to have its own metrics scraped.
        let db = &deployments["db"]["spec"]["template"];
        assert_eq!(db["spec"]["containers"][0]["ports"][1]["containerPort"], DB_TCP_PORT);
        assert_eq!(db["metadata"]["annotations"]["prometheus.io/port"], "8080");
        let db_svc = objects
            .iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "db")
            .unwrap();
        assert_eq!(db_svc["spec"]["ports"][1]["name"], "tcp-echo");
        let gw_svc = objects
            .iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == GATEWAY)
            .unwrap();
        assert_eq!(gw_svc["spec"]["type"], "LoadBalancer");
        assert_eq!(gw_svc["spec"]["ports"][0]["targetPort"], GATEWAY_TARGET_PORT);
    }

    #[test]
    fn the_plain_shop_has_no_gateway_no_sidecar_and_no_injection_label() {
        let shop = shop();
        assert!(shop.iter().all(|o| o["metadata"]["labels"][INJECT_LABEL].is_null()));
        assert!(shop.iter().all(|o| o["metadata"]["name"] != GATEWAY));
        let with_gateway = objects(&sidecar::Settings::new(&Options::default()));
        assert_eq!(
            with_gateway.len(),
            shop.len() + 3,
            "the suite's objects are the shop and its gateway"
        );
    }

    #[test]
    fn the_routing_names_the_deployed_services_and_gateway() {
        let docs = trellis_api::document::parse_documents(ROUTING);
        assert!(docs.len() >= 6);
        for d in &docs {
            let object = d.content.as_ref().unwrap();
            assert!(
                matches!(object["metadata"]["namespace"].as_str(), Some(NAMESPACE)),
                "line {}: every routing object lives in {NAMESPACE}",
                d.line
            );
            match trellis_api::validation::validate(object) {
                trellis_api::validation::Outcome::Validated { findings, .. } => {
                    assert!(findings.is_empty(), "line {}: {findings:?}", d.line)
                }
                other => panic!("line {}: not a Trellis object: {other:?}", d.line),
            }
        }
        let text = ROUTING;
        assert!(text.contains(&format!("app: {GATEWAY}")));
        assert!(text.contains(&format!("targetPort: {GATEWAY_TARGET_PORT}")));
        for app in apps() {
            assert!(
                text.contains(&format!("host: {}", app.service)) || app.service == "db",
                "{}",
                app.service
            );
        }
    }
}
