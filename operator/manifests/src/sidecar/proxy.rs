//! The proxy container in its two roles, the injected native sidecar and a gateway's only
//! container: what they share (image, ports, identity mounts and volumes, hardening, how the proxy
//! finds the control plane), and the pod template of an ingress gateway.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value};

use super::{
    APP_PROBES_ENV, HEALTH_PORT, INJECT_DISABLED, INJECT_LABEL, Overrides, PROXY_CONTAINER, PROXY_UID, ProxyRole,
    ROLE_ENV, STATS_PORT, Settings, TOKEN_AUDIENCE, label_version, scrape,
};
use crate::install::{LOG_ENV, env, env_field, restricted_security_context};

pub(super) const IDENTITY_VOLUME: &str = "trellis-identity";
pub(super) const TOKEN_VOLUME: &str = "trellis-token";
pub(super) const ROOT_VOLUME: &str = "trellis-ca-root";

pub(super) fn small_resources() -> k8s_openapi::api::core::v1::ResourceRequirements {
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("10m".into())),
            ("memory".to_string(), Quantity("16Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity("128Mi".into()))])),
        ..Default::default()
    }
}

pub(super) fn health_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(HEALTH_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// The proxy container, in the role of a sidecar.
pub(super) fn proxy_container(
    settings: &Settings,
    o: &Overrides,
    probes: &Map<String, Value>,
    app_metrics: Option<&str>,
) -> Container {
    let mut vars = proxy_env(settings, ProxyRole::Sidecar);
    if let Some(level) = &o.log_level
        && let Some(log) = vars.iter_mut().find(|e| e.name == LOG_ENV)
    {
        log.value = Some(level.clone());
    }
    if let Some(n) = o.concurrency {
        vars.push(env("TRELLIS_WORKERS", &n.to_string()));
    }
    if !probes.is_empty() {
        vars.push(env(APP_PROBES_ENV, &Value::Object(probes.clone()).to_string()));
    }
    if let Some(app) = app_metrics {
        vars.push(env(scrape::APP_METRICS_ENV, app));
    }
    let mut container = proxy_base(settings, vars);
    if let Some(image) = &o.proxy_image {
        container.image = Some(image.clone());
    }
    if let Some(resources) = container.resources.as_mut() {
        for (map, wanted) in [
            (&mut resources.requests, &o.requests),
            (&mut resources.limits, &o.limits),
        ] {
            let map = map.get_or_insert_with(BTreeMap::new);
            for (k, v) in wanted {
                map.insert(k.clone(), Quantity(v.clone()));
            }
        }
    }
    container.restart_policy = Some("Always".into());
    // The app starts once its proxy has a config and a certificate.
    container.startup_probe = Some(health_probe("/ready", 1, 600));
    container.readiness_probe = Some(health_probe("/ready", 2, 3));
    container
}

/// How a proxy finds the control plane and learns who it is (downward API).
pub(super) fn proxy_env(settings: &Settings, role: ProxyRole) -> Vec<EnvVar> {
    vec![
        env(ROLE_ENV, role.as_str()),
        env("TRELLIS_PUSH_ENDPOINT", &settings.push_endpoint()),
        env("TRELLIS_PUSH_SERVER_NAME", &settings.push_server_name()),
        env("TRELLIS_TRUST_DOMAIN", &settings.trust_domain),
        env(LOG_ENV, &settings.log_level),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("POD_IP", "status.podIP"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]
}

/// What the sidecar and gateway proxies share: image, ports, identity mounts, hardening.
pub(super) fn proxy_base(settings: &Settings, env: Vec<EnvVar>) -> Container {
    let port = |name: &str, n: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(n),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(settings.proxy_image.clone()),
        args: Some(vec!["run".into()]),
        env: Some(env),
        ports: Some(vec![port("http-metrics", STATS_PORT), port("http-health", HEALTH_PORT)]),
        volume_mounts: Some(vec![
            mount(IDENTITY_VOLUME, "/var/run/trellis/identity", false),
            mount(TOKEN_VOLUME, "/var/run/secrets/trellis", true),
            mount(ROOT_VOLUME, "/var/run/trellis/ca", true),
        ]),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            ..restricted_security_context()
        }),
        resources: Some(small_resources()),
        ..Container::default()
    }
}

/// The identity volumes every proxy pod mounts.
pub(super) fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: IDENTITY_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(3600),
                        path: "token".into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: ROOT_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "trellis-ca-root".into(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

/// The pod template of an ingress gateway: `trellis-proxy` in the gateway
/// role as the only container, with the same identity mounts as sidecars.
/// Its labels (`app: <name>`, `trellis.dev/gateway: <name>`) are what
/// Gateway resources select; `trellis.dev/inject: disabled` keeps the injector
/// from adding a sidecar to a gateway deployed in a meshed namespace; its proxy
/// version is labelled as on injected pods.
pub fn gateway_pod_template(name: &str, settings: &Settings, ports: &[u16]) -> PodTemplateSpec {
    let mut container = proxy_base(settings, proxy_env(settings, ProxyRole::Gateway));
    container.name = ProxyRole::Gateway.container().into();
    container.readiness_probe = Some(health_probe("/ready", 2, 3));
    container.liveness_probe = Some(health_probe("/live", 10, 6));
    container
        .ports
        .get_or_insert_with(Vec::new)
        .extend(ports.iter().map(|p| ContainerPort {
            name: Some(format!("listener-{p}")),
            container_port: i32::from(*p),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }));
    let mut annotations = BTreeMap::new();
    scrape::point_at_proxy(&mut annotations);
    let mut meta = ObjectMeta {
        labels: Some(BTreeMap::from([
            ("app".to_string(), name.to_string()),
            ("trellis.dev/gateway".to_string(), name.to_string()),
            (INJECT_LABEL.to_string(), INJECT_DISABLED.to_string()),
        ])),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    };
    label_version(&mut meta, &settings.proxy_image);
    PodTemplateSpec {
        metadata: Some(meta),
        spec: Some(PodSpec {
            service_account_name: Some(name.into()),
            containers: vec![container],
            volumes: Some(volumes()),
            termination_grace_period_seconds: Some(30),
            ..PodSpec::default()
        }),
    }
}
