//! Installation profiles: which optional parts an installation has, and the Mesh settings it
//! starts from (as Istio's `default`, `minimal` and `demo` profiles).
//!
//! | profile | ingress gateway | Mesh settings |
//! |---|---|---|
//! | `default` | `trellis-ingressgateway` in the control plane's namespace | versions only |
//! | `minimal` | none | versions only |
//! | `demo` | `trellis-ingressgateway` | versions, and every request traced to the demo's collector |
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

/// An installation profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// The control plane and an ingress gateway: for production.
    Default,
    /// The control plane only (bring your own gateways).
    Minimal,
    /// The control plane, an ingress gateway, and every request traced: for `meshctl demo`
    /// and for trying Trellis out.
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
            Profile::Demo => "the control plane, an ingress gateway, and tracing of every request",
        }
    }

    /// Whether the profile installs the ingress gateway.
    pub fn gateway(self) -> bool {
        self != Profile::Minimal
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
/// profile's gateway just before the Mesh (the Mesh still comes before the webhook
/// configurations: its first apply must not wait for the operator's validating webhook).
pub fn objects(profile: Profile, mesh_spec: Value, opts: &Options) -> Vec<Value> {
    let mut out = Vec::new();
    let mut mesh_spec = Some(mesh_spec);
    for o in install::objects(opts) {
        if o["kind"] == "Mesh" {
            if profile.gateway() {
                out.extend(ingress_gateway(opts));
            }
            out.push(mesh(mesh_spec.take().unwrap_or_default()));
        } else {
            out.push(o);
        }
    }
    out
}

fn gateway_meta(opts: &Options) -> ObjectMeta {
    let mut labels = common_labels();
    labels.insert("app".into(), GATEWAY.into());
    ObjectMeta {
        name: Some(GATEWAY.into()),
        namespace: Some(opts.namespace.clone()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The ingress gateway: its ServiceAccount (its SPIFFE identity), a `trellis-proxy` in the
/// gateway role, and a LoadBalancer Service. Gateway resources select it by `app:
/// trellis-ingressgateway`.
pub fn ingress_gateway(opts: &Options) -> Vec<Value> {
    let settings = sidecar::Settings::new(opts);
    let listeners: Vec<u16> = GATEWAY_PORTS.iter().filter_map(|p| u16::try_from(p.2).ok()).collect();
    let mut template = sidecar::gateway_pod_template(GATEWAY, &settings, &listeners);
    if let Some(meta) = template.metadata.as_mut() {
        meta.labels.get_or_insert_with(BTreeMap::new).extend(common_labels());
    }
    let selector = BTreeMap::from([("app".to_string(), GATEWAY.to_string())]);
    let deployment = Deployment {
        metadata: gateway_meta(opts),
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
        metadata: gateway_meta(opts),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some(selector),
            ports: Some(
                GATEWAY_PORTS
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
            metadata: gateway_meta(opts),
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
}
