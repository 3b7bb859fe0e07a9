//! The sidecar: what a meshed pod looks like, in one place.
//!
//! [`inject`] turns a workload's pod template into a meshed one, exactly
//! as the sidecar injector (the operator's mutating webhook) does: the
//! capture init container `trellis-init` (runs `trellis-proxy init`, which
//! installs the iptables redirect), then `trellis-proxy` as a **native
//! sidecar** (an init container with `restartPolicy: Always` and a startup
//! probe, so the app starts only once its proxy is ready and the proxy
//! stops after the app), its identity volumes (an in-memory directory for
//! the key and certificates, the audience-bound ServiceAccount token, the
//! mesh root from the `trellis-ca-root` ConfigMap), and the app's HTTP and
//! TCP probes rewritten to go through the proxy's health port (as Istio
//! does), since with STRICT mTLS the kubelet's plaintext probes would
//! otherwise be refused by the inbound listener.
//!
//! Per-pod overrides use annotations named like Istio's:
//! `traffic.trellis.dev/excludeInboundPorts`, `excludeOutboundPorts`,
//! `excludeOutboundIPRanges` (comma separated), and
//! `sidecar.trellis.dev/rewriteAppHTTPProbers: "false"`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value, json};

use crate::install::{OPERATOR_NAME, Options, PUSH_PORT, env, env_field, restricted_security_context};

/// The proxy container (a native sidecar).
pub const PROXY_CONTAINER: &str = "trellis-proxy";
/// The capture init container.
pub const INIT_CONTAINER: &str = "trellis-init";
/// The UID the proxy runs as; `trellis-proxy init` exempts it from capture.
pub const PROXY_UID: i64 = 1337;
/// The proxy's outbound listener (captured app traffic).
pub const OUTBOUND_PORT: u16 = 15001;
/// The proxy's inbound listener (traffic from other proxies).
pub const INBOUND_PORT: u16 = 15006;
/// The proxy's Prometheus port.
pub const STATS_PORT: u16 = 15020;
/// The proxy's health port: `/ready`, `/live`, and the rewritten app probes.
pub const HEALTH_PORT: u16 = 15021;
/// The audience of the ServiceAccount token the proxy presents to the CA.
pub const TOKEN_AUDIENCE: &str = "trellis";
/// Label on namespaces (and pods) that asks for injection.
pub const INJECT_LABEL: &str = "trellis.dev/inject";
/// Annotation recording that a pod template was injected, and by which version.
pub const INJECTED_ANNOTATION: &str = "sidecar.trellis.dev/injected";
/// The sidecar env var holding the app's original probes, by rewritten path.
pub const APP_PROBES_ENV: &str = "TRELLIS_APP_PROBES";

const IDENTITY_VOLUME: &str = "trellis-identity";
const TOKEN_VOLUME: &str = "trellis-token";
const ROOT_VOLUME: &str = "trellis-ca-root";

/// Why a pod cannot be meshed; each names the container or annotation and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error(
        "the pod uses hostNetwork: a sidecar would capture the node's traffic; remove hostNetwork or label the pod {INJECT_LABEL}=disabled"
    )]
    HostNetwork,
    #[error(
        "container `{0}` runs as UID {PROXY_UID}, the proxy's UID: its traffic would bypass the mesh; use another runAsUser"
    )]
    ProxyUid(String),
    #[error("container name `{0}` is reserved for the mesh; rename the container")]
    ReservedName(String),
    #[error("annotation {annotation}: `{value}` is not {expected}")]
    Annotation {
        annotation: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "container `{container}`: probe port `{port}` is not one of the container's named ports; name the port or use its number"
    )]
    ProbePort { container: String, port: String },
}

/// What the sidecar is built from: the install options plus the mesh's identity settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub proxy_image: String,
    /// The control plane's namespace (the push API is `trellis-operator.<ns>.svc:15012`).
    pub control_plane_namespace: String,
    pub trust_domain: String,
    pub log_level: String,
    /// Inbound ports never captured (besides the proxy's own).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations never captured.
    pub exclude_outbound_cidrs: Vec<String>,
}

impl Settings {
    /// The sidecar for an installation made with `opts`.
    pub fn new(opts: &Options) -> Self {
        Settings {
            proxy_image: opts.proxy_image.clone(),
            control_plane_namespace: opts.namespace.clone(),
            trust_domain: "cluster.local".into(),
            log_level: "info".into(),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }

    /// The push API's address, as proxies dial it.
    pub fn push_endpoint(&self) -> String {
        format!(
            "https://{OPERATOR_NAME}.{}.svc:{PUSH_PORT}",
            self.control_plane_namespace
        )
    }

    /// The DNS name the operator's serving certificate carries.
    pub fn push_server_name(&self) -> String {
        format!("{OPERATOR_NAME}.{}.svc", self.control_plane_namespace)
    }
}

/// Whether a pod template already has the mesh's containers.
pub fn is_injected(spec: &PodSpec) -> bool {
    spec.init_containers.iter().flatten().any(|c| c.name == PROXY_CONTAINER)
}

/// Meshes a pod template in place: idempotent (an injected template is
/// left alone), and all-or-nothing (on error the template is unchanged).
pub fn inject(template: &mut PodTemplateSpec, settings: &Settings) -> Result<(), InjectError> {
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let spec = template.spec.get_or_insert_with(PodSpec::default);
    if is_injected(spec) {
        return Ok(());
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let mut injected = spec.clone();
    inject_spec(&mut injected, &annotations, settings)?;
    *spec = injected;
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_ANNOTATION.into(), env!("CARGO_PKG_VERSION").into());
    Ok(())
}

fn inject_spec(
    spec: &mut PodSpec,
    annotations: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<(), InjectError> {
    if spec.host_network == Some(true) {
        return Err(InjectError::HostNetwork);
    }
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        if c.name == PROXY_CONTAINER || c.name == INIT_CONTAINER {
            return Err(InjectError::ReservedName(c.name.clone()));
        }
        let uid = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_user));
        if uid == Some(PROXY_UID) {
            return Err(InjectError::ProxyUid(c.name.clone()));
        }
    }
    let mut inbound = settings.exclude_inbound_ports.clone();
    inbound.extend(ports_annotation(
        annotations,
        "traffic.trellis.dev/excludeInboundPorts",
    )?);
    let mut outbound = settings.exclude_outbound_ports.clone();
    outbound.extend(ports_annotation(
        annotations,
        "traffic.trellis.dev/excludeOutboundPorts",
    )?);
    let mut cidrs = settings.exclude_outbound_cidrs.clone();
    cidrs.extend(cidrs_annotation(
        annotations,
        "traffic.trellis.dev/excludeOutboundIPRanges",
    )?);
    let rewrite = match annotations
        .get("sidecar.trellis.dev/rewriteAppHTTPProbers")
        .map(String::as_str)
    {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(InjectError::Annotation {
                annotation: "sidecar.trellis.dev/rewriteAppHTTPProbers".into(),
                value: other.into(),
                expected: "\"true\" or \"false\"",
            });
        }
    };
    let probes = if rewrite {
        rewrite_probes(&mut spec.containers)?
    } else {
        Map::new()
    };

    let mut init = vec![
        init_container(settings, &inbound, &outbound, &cidrs),
        proxy_container(settings, &probes),
    ];
    init.extend(spec.init_containers.take().unwrap_or_default());
    spec.init_containers = Some(init);
    spec.volumes.get_or_insert_with(Vec::new).extend(volumes());
    Ok(())
}

/// A comma-separated annotation, each item parsed by `parse`; any bad item
/// rejects the whole value, saying what is `expected`.
fn list_annotation<T>(
    annotations: &BTreeMap<String, String>,
    key: &str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, InjectError> {
    let Some(value) = annotations.get(key) else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            parse(item).ok_or_else(|| InjectError::Annotation {
                annotation: key.into(),
                value: value.clone(),
                expected,
            })
        })
        .collect()
}

fn ports_annotation(annotations: &BTreeMap<String, String>, key: &str) -> Result<Vec<u16>, InjectError> {
    list_annotation(
        annotations,
        key,
        "a comma-separated list of ports (1-65535), e.g. \"9090,9091\"",
        |p| p.parse::<u16>().ok().filter(|n| *n != 0),
    )
}

fn cidrs_annotation(annotations: &BTreeMap<String, String>, key: &str) -> Result<Vec<String>, InjectError> {
    list_annotation(
        annotations,
        key,
        "a comma-separated list of CIDRs, e.g. \"10.0.0.0/8,192.168.0.0/16\"",
        |c| {
            let (ip, len) = c.split_once('/')?;
            let ip = ip.parse::<std::net::IpAddr>().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            len.parse::<u8>().ok().filter(|l| *l <= max).map(|_| c.to_string())
        },
    )
}

/// Moves each app container's HTTP/TCP probes behind the proxy's health
/// port; returns the originals keyed by their new path.
fn rewrite_probes(containers: &mut [Container]) -> Result<Map<String, Value>, InjectError> {
    let mut originals = Map::new();
    for c in containers.iter_mut() {
        let ports = c.ports.clone().unwrap_or_default();
        for (kind, probe) in [
            ("readyz", &mut c.readiness_probe),
            ("livez", &mut c.liveness_probe),
            ("startupz", &mut c.startup_probe),
        ] {
            let Some(p) = probe.as_mut() else { continue };
            let target = if let Some(get) = &p.http_get {
                if get.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
                    // The proxy runs HTTP and TCP probes only: under STRICT mTLS, exclude an
                    // HTTPS probe's port with traffic.trellis.dev/excludeInboundPorts.
                    continue;
                }
                json!({
                    "httpGet": {
                        "path": get.path.clone().unwrap_or_else(|| "/".into()),
                        "port": resolve_port(&c.name, &get.port, &ports)?,
                        "scheme": get.scheme.clone().unwrap_or_else(|| "HTTP".into()),
                        "httpHeaders": get.http_headers.iter().flatten()
                            .map(|h| json!({"name": h.name, "value": h.value})).collect::<Vec<_>>(),
                    },
                    "timeoutSeconds": p.timeout_seconds.unwrap_or(1),
                })
            } else if let Some(tcp) = &p.tcp_socket {
                json!({
                    "tcpSocket": {"port": resolve_port(&c.name, &tcp.port, &ports)?},
                    "timeoutSeconds": p.timeout_seconds.unwrap_or(1),
                })
            } else {
                // exec and gRPC probes run where they are.
                continue;
            };
            let path = format!("/app-health/{}/{kind}", c.name);
            originals.insert(path.clone(), target);
            p.tcp_socket = None;
            p.http_get = Some(HTTPGetAction {
                path: Some(path),
                port: IntOrString::Int(i32::from(HEALTH_PORT)),
                scheme: Some("HTTP".into()),
                ..HTTPGetAction::default()
            });
        }
    }
    Ok(originals)
}

fn resolve_port(container: &str, port: &IntOrString, ports: &[ContainerPort]) -> Result<i32, InjectError> {
    match port {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| InjectError::ProbePort {
                container: container.into(),
                port: name.clone(),
            }),
    }
}

fn csv<T: ToString>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn init_container(settings: &Settings, inbound: &[u16], outbound: &[u16], cidrs: &[String]) -> Container {
    let mut args = vec!["init".to_string(), "--proxy-uid".into(), PROXY_UID.to_string()];
    for (flag, value) in [
        ("--exclude-inbound-ports", csv(inbound)),
        ("--exclude-outbound-ports", csv(outbound)),
        ("--exclude-outbound-cidrs", csv(cidrs)),
    ] {
        if !value.is_empty() {
            args.push(flag.into());
            args.push(value);
        }
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(settings.proxy_image.clone()),
        args: Some(args),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        }),
        resources: Some(small_resources()),
        ..Container::default()
    }
}

fn small_resources() -> k8s_openapi::api::core::v1::ResourceRequirements {
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("10m".into())),
            ("memory".to_string(), Quantity("16Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity("128Mi".into()))])),
        ..Default::default()
    }
}

fn health_probe(path: &str, period: i32, failures: i32) -> Probe {
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

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// The proxy container, in the role of a sidecar.
fn proxy_container(settings: &Settings, probes: &Map<String, Value>) -> Container {
    let mut vars = proxy_env(settings, "sidecar");
    if !probes.is_empty() {
        vars.push(env(APP_PROBES_ENV, &Value::Object(probes.clone()).to_string()));
    }
    let mut container = proxy_base(settings, vars);
    container.restart_policy = Some("Always".into());
    // The app starts once its proxy has a config and a certificate.
    container.startup_probe = Some(health_probe("/ready", 1, 600));
    container.readiness_probe = Some(health_probe("/ready", 2, 3));
    container
}

/// How a proxy finds the control plane and learns who it is (downward API).
fn proxy_env(settings: &Settings, role: &str) -> Vec<EnvVar> {
    vec![
        env("TRELLIS_ROLE", role),
        env("TRELLIS_PUSH_ENDPOINT", &settings.push_endpoint()),
        env("TRELLIS_PUSH_SERVER_NAME", &settings.push_server_name()),
        env("TRELLIS_TRUST_DOMAIN", &settings.trust_domain),
        env("TRELLIS_LOG", &settings.log_level),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("POD_IP", "status.podIP"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]
}

/// What the sidecar and gateway proxies share: image, ports, identity mounts, hardening.
fn proxy_base(settings: &Settings, env: Vec<EnvVar>) -> Container {
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
fn volumes() -> Vec<Volume> {
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
/// Gateway resources select.
pub fn gateway_pod_template(name: &str, settings: &Settings, ports: &[u16]) -> PodTemplateSpec {
    let mut container = proxy_base(settings, proxy_env(settings, "gateway"));
    container.name = "gateway".into();
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
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(BTreeMap::from([
                ("app".to_string(), name.to_string()),
                ("trellis.dev/gateway".to_string(), name.to_string()),
            ])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name.into()),
            containers: vec![container],
            volumes: Some(volumes()),
            termination_grace_period_seconds: Some(30),
            ..PodSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, TCPSocketAction};

    fn app_template() -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "serviceAccountName": "web",
                "containers": [{
                    "name": "web",
                    "image": "ghcr.io/trellis-mesh/trellis-testapp:0.1.0",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
                    "livenessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
                }],
            }
        }))
        .unwrap()
    }

    fn settings() -> Settings {
        Settings::new(&Options::default())
    }

    #[test]
    fn injects_init_then_native_sidecar_then_the_apps_own_init_containers() {
        let mut t = app_template();
        t.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: "migrate".into(),
            ..Container::default()
        }]);
        inject(&mut t, &settings()).unwrap();
        let spec = t.spec.as_ref().unwrap();
        let names: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
        let proxy = &spec.init_containers.as_ref().unwrap()[1];
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        assert_eq!(proxy.security_context.as_ref().unwrap().run_as_user, Some(PROXY_UID));
        assert!(proxy.startup_probe.is_some());
        let env: BTreeMap<_, _> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone()))
            .collect();
        assert_eq!(
            env["TRELLIS_PUSH_ENDPOINT"].as_deref(),
            Some("https://trellis-operator.trellis-system.svc:15012")
        );
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.args.as_ref().unwrap()[..3], ["init", "--proxy-uid", "1337"]);
        let caps = init.security_context.as_ref().unwrap().capabilities.as_ref().unwrap();
        assert!(caps.add.as_ref().unwrap().contains(&"NET_ADMIN".to_string()));
        let volumes: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
        assert_eq!(volumes, [IDENTITY_VOLUME, TOKEN_VOLUME, ROOT_VOLUME]);
        let token = spec.volumes.as_ref().unwrap()[1]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(token.audience.as_deref(), Some(TOKEN_AUDIENCE));
        assert!(
            t.metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(INJECTED_ANNOTATION)
        );
    }

    #[test]
    fn rewrites_app_probes_behind_the_health_port_and_keeps_the_originals() {
        let mut t = app_template();
        inject(&mut t, &settings()).unwrap();
        let spec = t.spec.as_ref().unwrap();
        let app = &spec.containers[0];
        let ready = app.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(ready.path.as_deref(), Some("/app-health/web/readyz"));
        assert_eq!(ready.port, IntOrString::Int(15021));
        let live = app.liveness_probe.as_ref().unwrap();
        assert!(live.tcp_socket.is_none());
        assert_eq!(
            live.http_get.as_ref().unwrap().path.as_deref(),
            Some("/app-health/web/livez")
        );
        let proxy = &spec.init_containers.as_ref().unwrap()[1];
        let probes = proxy.env.iter().flatten().find(|e| e.name == APP_PROBES_ENV).unwrap();
        let probes: Value = serde_json::from_str(probes.value.as_deref().unwrap()).unwrap();
        assert_eq!(probes["/app-health/web/readyz"]["httpGet"]["port"], 8080);
        assert_eq!(probes["/app-health/web/readyz"]["httpGet"]["path"], "/healthz");
        assert_eq!(probes["/app-health/web/livez"]["tcpSocket"]["port"], 8080);
        assert_eq!(probes["/app-health/web/livez"]["timeoutSeconds"], 3);
    }

    #[test]
    fn is_idempotent() {
        let mut once = app_template();
        inject(&mut once, &settings()).unwrap();
        let mut twice = once.clone();
        inject(&mut twice, &settings()).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn annotations_add_exclusions_and_bad_ones_are_explained() {
        let mut t = app_template();
        t.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([
            (
                "traffic.trellis.dev/excludeInboundPorts".to_string(),
                "9090, 9091".to_string(),
            ),
            (
                "traffic.trellis.dev/excludeOutboundIPRanges".to_string(),
                "10.0.0.0/8".to_string(),
            ),
        ]));
        inject(&mut t, &settings()).unwrap();
        let args = t.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0]
            .args
            .clone()
            .unwrap();
        assert!(args.windows(2).any(|w| w == ["--exclude-inbound-ports", "9090,9091"]));
        assert!(args.windows(2).any(|w| w == ["--exclude-outbound-cidrs", "10.0.0.0/8"]));

        let mut bad = app_template();
        bad.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([(
            "traffic.trellis.dev/excludeOutboundIPRanges".to_string(),
            "10.0.0.0/33".to_string(),
        )]));
        let before = bad.clone();
        let err = inject(&mut bad, &settings()).unwrap_err().to_string();
        assert!(
            err.contains("excludeOutboundIPRanges") && err.contains("CIDRs"),
            "{err}"
        );
        assert_eq!(bad, before, "a failed injection changes nothing");
    }

    #[test]
    fn refuses_pods_the_mesh_cannot_capture() {
        let mut t = app_template();
        t.spec.as_mut().unwrap().host_network = Some(true);
        assert_eq!(inject(&mut t, &settings()), Err(InjectError::HostNetwork));

        let mut t = app_template();
        t.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
            run_as_user: Some(PROXY_UID),
            ..PodSecurityContext::default()
        });
        assert_eq!(inject(&mut t, &settings()), Err(InjectError::ProxyUid("web".into())));

        let mut t = app_template();
        t.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("grpc".into()),
                ..TCPSocketAction::default()
            }),
            ..Probe::default()
        });
        let err = inject(&mut t, &settings()).unwrap_err().to_string();
        assert!(err.contains("`grpc`") && err.contains("container `web`"), "{err}");
    }

    #[test]
    fn gateway_template_runs_the_proxy_in_the_gateway_role() {
        let t = gateway_pod_template("trellis-ingressgateway", &settings(), &[8080]);
        let spec = t.spec.unwrap();
        let c = &spec.containers[0];
        assert!(
            c.env
                .iter()
                .flatten()
                .any(|e| e.name == "TRELLIS_ROLE" && e.value.as_deref() == Some("gateway"))
        );
        assert!(c.ports.iter().flatten().any(|p| p.container_port == 8080));
        assert_eq!(spec.service_account_name.as_deref(), Some("trellis-ingressgateway"));
        assert_eq!(t.metadata.unwrap().labels.unwrap()["app"], "trellis-ingressgateway");
    }
}
