//! Installation profiles: which optional parts an installation has, and the Mesh settings it
//! starts from (as Istio's `default`, `minimal` and `demo` profiles).
//!
//! | profile | ingress gateway | egress gateway | Mesh settings |
//! |---|---|---|---|
//! | `default` | `trellis-ingressgateway` in the control plane's namespace | none | versions only |
//! | `minimal` | none | none | versions only |
//! | `demo` | `trellis-ingressgateway` | `trellis-egressgateway` | versions, and every request traced to the demo's collector |
//!
//! As in Istio's profiles, only `demo` has an egress gateway: a `trellis-proxy` in the gateway
//! role behind a ClusterIP Service, which the mesh's traffic to external hosts is sent through
//! by a Gateway selecting `app: trellis-egressgateway` and a VirtualService (Istio's egress
//! gateway pattern, `e2e/tests/egress_gateway.rs`). Both gateways' ServiceAccounts are bound to
//! no Role: a gateway reads nothing from the Kubernetes API (its configuration is pushed).
//!
//! [`objects`] renders an installation from a profile and the final Mesh spec (the profile's,
//! overlaid with the user's settings by `meshctl install`).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Service, ServiceAccount, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::install::{self, Options, common_labels, to_value};
use crate::{demo, sidecar};

/// The ingress gateway's Deployment, Service, ServiceAccount and `app` label.
pub const GATEWAY: &str = demo::GATEWAY;
/// The gateway Service's ports: (name, port, the proxy's listener port).
pub const GATEWAY_PORTS: [(&str, i32, i32); 2] = [("http", 80, 8080), ("https", 443, 8443)];
/// The egress gateway's Deployment, Service, ServiceAccount and `app` label (Istio's
/// `istio-egressgateway`).
pub const EGRESS_GATEWAY: &str = "trellis-egressgateway";
/// The egress gateway Service's ports, as Istio's: (name, port, the proxy's listener port). A
/// Gateway server on port 80 says `targetPort: 8080`, the port the proxy listens on.
pub const EGRESS_GATEWAY_PORTS: [(&str, i32, i32); 2] = [("http", 80, 8080), ("https", 443, 8443)];

/// An installation profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// The control plane and an ingress gateway: for production.
    Default,
    /// The control plane only (bring your own gateways).
    Minimal,
    /// The control plane, an ingress and an egress gateway, and every request traced: for
    /// `meshctl demo` and for trying Trellis out.
    Demo,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [Profile::Default, Profile::Minimal, Profile::Demo];

    /// The profile's name (`--profile NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Minimal => "minimal",
            Profile::Demo => "demo",
        }
    }

    /// The profile named `name`.
    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// What the profile installs, in a sentence.
    pub fn description(self) -> &'static str {
        match self {
            Profile::Default => "the control plane and an ingress gateway",
            Profile::Minimal => "the control plane only, no ingress gateway",
            Profile::Demo => "the control plane, an ingress and an egress gateway, and tracing of every request",
        }
    }

    /// Whether the profile installs the ingress gateway.
    pub fn gateway(self) -> bool {
        self != Profile::Minimal
    }

    /// Whether the profile installs the egress gateway (as Istio's, only `demo`).
    pub fn egress_gateway(self) -> bool {
        self == Profile::Demo
    }

    /// The Mesh spec the profile starts from: the versions of `opts`, and the profile's settings.
    pub fn mesh_spec(self, opts: &Options) -> Value {
        let mut spec = json!({"versions": {"operator": opts.operator_image, "proxy": opts.proxy_image}});
        if self == Profile::Demo {
            spec["telemetry"] = demo::mesh_tracing()["spec"]["telemetry"].clone();
        }
        spec
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Mesh object with `spec`.
pub fn mesh(spec: Value) -> Value {
    let mut m = install::default_mesh(&Options::default());
    m["spec"] = spec;
    m
}

/// Every object of an installation with `profile`, in the order they must be applied: the
/// installation of [`install::objects`] with the Mesh's spec replaced by `mesh_spec`, and the
/// profile's gateways just before the Mesh (the Mesh still comes before the webhook
/// configurations: its first apply must not wait for the operator's validating webhook).
pub fn objects(profile: Profile, mesh_spec: Value, opts: &Options) -> Vec<Value> {
    let mut out = Vec::new();
    let mut mesh_spec = Some(mesh_spec);
    for o in install::objects(opts) {
        if o["kind"] == "Mesh" {
            if profile.gateway() {
                out.extend(ingress_gateway(opts));
            }
            if profile.egress_gateway() {
                out.extend(egress_gateway(opts));
            }
            out.push(mesh(mesh_spec.take().unwrap_or_default()));
        } else {
            out.push(o);
        }
    }
    out
}

/// Keep, in the rendered `objects`, the proxy image an installed gateway runs (`live`, its
/// Deployment as the API server has it — the ingress or the egress gateway, the rendered
/// Deployment of the same name): once installed, a gateway's image is the
/// operator's rollout's to change, in its health-gated waves, as a sidecar's is, so `meshctl
/// install` and `meshctl upgrade` apply the Mesh's new proxy version and leave the gateway's
/// container (and its `trellis.dev/proxy-version` label) as the rollout left them. Nothing
/// changes when `objects` has no gateway or `live` runs no gateway proxy.
pub fn keep_gateway_image(objects: &mut [Value], live: &Value) {
    let proxy = |template: &Value| {
        template["spec"]["containers"]
            .as_array()
            .and_then(|cs| cs.iter().position(|c| c["name"] == sidecar::GATEWAY_CONTAINER))
    };
    let live_template = &live["spec"]["template"];
    let Some(image) = proxy(live_template).and_then(|i| live_template["spec"]["containers"][i]["image"].as_str())
    else {
        return;
    };
    let name = &live["metadata"]["name"];
    let rendered = objects
        .iter_mut()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == *name);
    let Some(template) = rendered.map(|o| &mut o["spec"]["template"]) else {
        return;
    };
    let Some(i) = proxy(template) else { return };
    template["spec"]["containers"][i]["image"] = json!(image);
    template["metadata"]["labels"][sidecar::PROXY_VERSION_LABEL] = json!(sidecar::version_label(image));
}

fn gateway_meta(name: &str, opts: &Options) -> ObjectMeta {
    let mut labels = common_labels();
    labels.insert("app".into(), name.into());
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(opts.namespace.clone()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The ingress gateway: its ServiceAccount (its SPIFFE identity), a `trellis-proxy` in the
/// gateway role, and a LoadBalancer Service. Gateway resources select it by `app:
/// trellis-ingressgateway`.
pub fn ingress_gateway(opts: &Options) -> Vec<Value> {
    gateway(GATEWAY, "LoadBalancer", &GATEWAY_PORTS, opts)
}

/// The egress gateway: its ServiceAccount (its SPIFFE identity, which the mesh's sidecars
/// verify when they send it traffic with mutual TLS), a `trellis-proxy` in the gateway role,
/// and a ClusterIP Service: reachable from the mesh only, never exposed. Gateway resources
/// select it by `app: trellis-egressgateway`.
pub fn egress_gateway(opts: &Options) -> Vec<Value> {
    gateway(EGRESS_GATEWAY, "ClusterIP", &EGRESS_GATEWAY_PORTS, opts)
}

/// A gateway named `name`: ServiceAccount, Deployment and a Service of `service_type` with
/// `ports` (name, port, the proxy's listener port).
fn gateway(name: &str, service_type: &str, ports: &[(&str, i32, i32)], opts: &Options) -> Vec<Value> {
    let settings = sidecar::Settings::new(opts);
    let listeners: Vec<u16> = ports.iter().filter_map(|p| u16::try_from(p.2).ok()).collect();
    let mut template = sidecar::gateway_pod_template(name, &settings, &listeners);
    if let Some(meta) = template.metadata.as_mut() {
        meta.labels.get_or_insert_with(BTreeMap::new).extend(common_labels());
    }
    let selector = BTreeMap::from([("app".to_string(), name.to_string())]);
    let deployment = Deployment {
        metadata: gateway_meta(name, opts),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let service = Service {
        metadata: gateway_meta(name, opts),
        spec: Some(ServiceSpec {
            type_: Some(service_type.into()),
            selector: Some(selector),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port, target)| ServicePort {
                        name: Some((*name).into()),
                        port: *port,
                        target_port: Some(IntOrString::Int(*target)),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    vec![
        to_value(&ServiceAccount {
            metadata: gateway_meta(name, opts),
            ..ServiceAccount::default()
        }),
        to_value(&deployment),
        to_value(&service),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn profiles_differ_in_the_gateway_and_tracing_and_end_with_the_mesh() {
        let opts = Options::default();
        for p in Profile::ALL {
            let objects = objects(p, p.mesh_spec(&opts), &opts);
            let names = kinds(&objects);
            let mesh_at = names.iter().position(|n| n == "Mesh default").unwrap();
            let last_crd = names
                .iter()
                .rposition(|n| n.starts_with("CustomResourceDefinition"))
                .unwrap();
            assert!(mesh_at > last_crd, "{p}: {names:?}");
            assert!(names[0].starts_with("CustomResourceDefinition"), "{p}");
            assert_eq!(
                names.contains(&format!("Deployment {GATEWAY}")),
                p != Profile::Minimal,
                "{p}: {names:?}"
            );
            for kind in ["ServiceAccount", "Deployment", "Service"] {
                assert_eq!(
                    names.contains(&format!("{kind} {EGRESS_GATEWAY}")),
                    p == Profile::Demo,
                    "{p}: the egress gateway is demo's only, as in Istio: {names:?}"
                );
            }
            assert_eq!(names.iter().filter(|n| n.starts_with("Mesh ")).count(), 1);
            let spec = &objects[mesh_at]["spec"];
            assert_eq!(spec["versions"]["proxy"], opts.proxy_image.as_str());
            assert_eq!(
                spec["telemetry"]["tracing"]["sampling"].is_number(),
                p == Profile::Demo,
                "{p}"
            );
            assert_eq!(Profile::from_name(p.name()), Some(p));
        }
    }

    #[test]
    fn the_installed_gateway_keeps_the_image_the_rollout_gave_it() {
        let opts = Options {
            proxy_image: "ghcr.io/trellis-mesh/trellis-proxy:0.3.0".into(),
            ..Options::default()
        };
        let fresh = objects(Profile::Default, Profile::Default.mesh_spec(&opts), &opts);
        let gateway = |objects: &[Value]| {
            objects
                .iter()
                .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == GATEWAY)
                .unwrap()
                .clone()
        };
        let mut live = gateway(&fresh);
        live["spec"]["template"]["spec"]["containers"][0]["image"] = json!("ghcr.io/trellis-mesh/trellis-proxy:0.2.0");
        let mut kept = fresh.clone();
        keep_gateway_image(&mut kept, &live);
        let template = &gateway(&kept)["spec"]["template"];
        assert_eq!(
            template["spec"]["containers"][0]["image"],
            "ghcr.io/trellis-mesh/trellis-proxy:0.2.0"
        );
        assert_eq!(template["metadata"]["labels"][sidecar::PROXY_VERSION_LABEL], "0.2.0");
        let mesh = kept.iter().find(|o| o["kind"] == "Mesh").unwrap();
        assert_eq!(
            mesh["spec"]["versions"]["proxy"], "ghcr.io/trellis-mesh/trellis-proxy:0.3.0",
            "the Mesh names the new version: the rollout brings the gateway to it"
        );
        for (k, f) in kept.iter().zip(&fresh) {
            if f["metadata"]["name"] != GATEWAY || f["kind"] != "Deployment" {
                assert_eq!(k, f, "only the gateway's proxy image and version label are kept");
            }
        }
        // A live Deployment without a gateway proxy (someone else's) changes nothing.
        let mut untouched = fresh.clone();
        keep_gateway_image(
            &mut untouched,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}}),
        );
        assert_eq!(untouched, fresh);
    }

    #[test]
    fn the_gateway_runs_the_proxy_in_the_gateway_role_behind_a_load_balancer() {
        let opts = Options::default();
        let objects = ingress_gateway(&opts);
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], opts.proxy_image.as_str());
        assert_eq!(deployment["metadata"]["namespace"], opts.namespace.as_str());
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "trellis"
        );
        let service = objects.iter().find(|o| o["kind"] == "Service").unwrap();
        assert_eq!(service["spec"]["type"], "LoadBalancer");
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
    }

    #[test]
    fn the_egress_gateway_is_the_proxy_behind_a_cluster_ip_and_its_account_has_no_role() {
        let opts = Options::default();
        let objects = egress_gateway(&opts);
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let pod = &deployment["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["app"], EGRESS_GATEWAY);
        assert_eq!(pod["spec"]["serviceAccountName"], EGRESS_GATEWAY);
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["image"], opts.proxy_image.as_str());
        let listeners: Vec<i64> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"].as_str().unwrap().starts_with("listener-"))
            .map(|p| p["containerPort"].as_i64().unwrap())
            .collect();
        assert_eq!(listeners, [8080, 8443]);
        let service = objects.iter().find(|o| o["kind"] == "Service").unwrap();
        assert_eq!(
            service["spec"]["type"], "ClusterIP",
            "never exposed outside the cluster"
        );
        assert_eq!(service["spec"]["selector"]["app"], EGRESS_GATEWAY);
        let ports: Vec<(i64, i64)> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["port"].as_i64().unwrap(), p["targetPort"].as_i64().unwrap()))
            .collect();
        assert_eq!(ports, [(80, 8080), (443, 8443)]);
        // Least privilege: nothing in the installation binds a role to the gateways' accounts.
        let all = super::objects(Profile::Demo, Profile::Demo.mesh_spec(&opts), &opts);
        for binding in all
            .iter()
            .filter(|o| matches!(o["kind"].as_str(), Some("RoleBinding" | "ClusterRoleBinding")))
        {
            for subject in binding["subjects"].as_array().into_iter().flatten() {
                assert!(
                    subject["name"] != EGRESS_GATEWAY && subject["name"] != GATEWAY,
                    "{binding}"
                );
            }
        }
    }
}
