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
//! Per-pod overrides use annotations named like Istio's (resources, log level, concurrency,
//! DNS capture, ports and CIDRs to include or exclude, the proxy image): see [`overrides`].
//! What was injected is recorded on the pod: the template version
//! ([`INJECTED_ANNOTATION`]), the proxy image ([`PROXY_IMAGE_ANNOTATION`], the Mesh API's
//! contract with the rollout: on a template it assigns the image, on a pod it records the
//! image injected) and its tag as a
//! label ([`PROXY_VERSION_LABEL`]) that the rollout and `meshctl` select by.

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

use crate::install::{LOG_ENV, OPERATOR_NAME, Options, PUSH_PORT, env, env_field, restricted_security_context};

pub mod overrides;
pub mod role;
pub mod scrape;
pub use overrides::Overrides;
pub use role::{GATEWAY_CONTAINER, ProxyRole, ROLE_ENV, proxy_in};

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
pub const INJECT_LABEL: &str = trellis_api::mesh::INJECTION_LABEL;
/// Annotation recording that a pod template was injected, and by which version.
pub const INJECTED_ANNOTATION: &str = "sidecar.trellis.dev/injected";
/// The proxy image: assigned on a pod template (by the rollout), recorded on an injected pod.
pub const PROXY_IMAGE_ANNOTATION: &str = trellis_api::mesh::PROXY_IMAGE_ANNOTATION;
/// Label recording the injected proxy's version (its image tag), for selecting pods by version.
pub const PROXY_VERSION_LABEL: &str = "trellis.dev/proxy-version";
/// The value of [`INJECT_LABEL`] that opts a pod or namespace in.
pub const INJECT_ENABLED: &str = trellis_api::mesh::INJECTION_ENABLED;
/// The value of [`INJECT_LABEL`] that opts a pod or namespace out.
pub const INJECT_DISABLED: &str = trellis_api::mesh::INJECTION_DISABLED;
/// The sidecar env var holding the app's original probes, by rewritten path.
pub const APP_PROBES_ENV: &str = "TRELLIS_APP_PROBES";

const IDENTITY_VOLUME: &str = "trellis-identity";
const TOKEN_VOLUME: &str = "trellis-token";
const ROOT_VOLUME: &str = "trellis-ca-root";

/// Why a pod cannot be meshed; each names the container or annotation and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error(
        "the pod uses hostNetwork: a sidecar would capture the node's traffic; remove hostNetwork or label the pod {INJECT_LABEL}={INJECT_DISABLED}"
    )]
    HostNetwork,
    #[error(
        "container `{0}` runs as UID {PROXY_UID}, the proxy's UID, so its traffic would bypass the mesh; set its securityContext.runAsUser to another UID"
    )]
    ProxyUid(String),
    #[error(
        "the pod already has a container named `{0}` that Trellis did not inject (no {INJECTED_ANNOTATION} annotation); the name is reserved for the mesh: remove or rename that container and let the injector add the sidecar, or label the pod {INJECT_LABEL}={INJECT_DISABLED}"
    )]
    ReservedName(String),
    #[error("annotation {annotation}: `{value}` is not {expected}")]
    Annotation {
        annotation: String,
        value: String,
        expected: &'static str,
    },
    #[error("annotation {0} is not one Trellis reads; known sidecar annotations: {known}", known = overrides::KNOWN.join(", "))]
    UnknownAnnotation(String),
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
    /// Whether DNS is captured (pods may turn it off with [`overrides::CAPTURE_DNS`]).
    pub capture_dns: bool,
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
            capture_dns: true,
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

/// On a pod: the hash of the injection template that meshed it ([`template_hash`]).
pub const TEMPLATE_ANNOTATION: &str = trellis_api::mesh::INJECTION_TEMPLATE_ANNOTATION;

/// The hash of the injection template `settings` make: FNV-1a (64 bits, hex) over the JSON of
/// what the injector adds to a pod with one plain container, the proxy image left out (the
/// rollout follows the image on its own). Two operators whose injectors would mesh a pod
/// differently give different hashes, so the rollout restarts pods injected by the old one.
pub fn template_hash(settings: &Settings) -> String {
    // why: the trust domain only seeds a proxy's first certificate request; a running proxy
    // follows the identity its pushed configuration names, so a trust domain change needs no
    // restart of meshed workloads and must not look like a new template to the rollout.
    let canonical = Settings {
        proxy_image: String::new(),
        trust_domain: String::new(),
        ..settings.clone()
    };
    thread_local! {
        // why: the injector hashes the template of every pod it meshes, and the settings only
        // change with the Mesh: hashing (one more injection and its JSON) was a sixth of the
        // instructions of answering an injection review (callgrind, operator/benches/admission.rs).
        static LAST: std::cell::RefCell<Option<(Settings, String)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, hash)) if *seen == canonical => hash.clone(),
        _ => {
            let hash = hash_of(&canonical);
            *last = Some((canonical, hash.clone()));
            hash
        }
    })
}

/// [`template_hash`] of settings without an image, computed.
fn hash_of(canonical: &Settings) -> String {
    let mut spec = PodSpec {
        containers: vec![Container {
            name: "app".into(),
            ..Container::default()
        }],
        ..PodSpec::default()
    };
    let json = match inject_spec(&mut spec, &Overrides::default(), canonical, None) {
        Ok(()) => serde_json::to_string(&spec).unwrap_or_default(),
        // Cannot happen for this pod; hash the reason so the value stays deterministic.
        Err(e) => e.to_string(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.bytes().chain(env!("CARGO_PKG_VERSION").bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether a pod template was meshed by Trellis: the sidecar is there and the template carries
/// [`INJECTED_ANNOTATION`].
pub fn is_injected(template: &PodTemplateSpec) -> bool {
    let annotated = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
    let has_proxy = template
        .spec
        .as_ref()
        .is_some_and(|s| s.init_containers.iter().flatten().any(|c| c.name == PROXY_CONTAINER));
    annotated && has_proxy
}

/// Meshes a pod template in place: idempotent (an injected template is
/// left alone), and all-or-nothing (on error the template is unchanged).
/// The image is the pod's [`overrides::PROXY_IMAGE`] annotation if set, else `settings`'.
pub fn inject(template: &mut PodTemplateSpec, settings: &Settings) -> Result<(), InjectError> {
    if is_injected(template) {
        return Ok(());
    }
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let spec = template.spec.get_or_insert_with(PodSpec::default);
    let empty = BTreeMap::new();
    let overrides = Overrides::from_annotations(meta.annotations.as_ref().unwrap_or(&empty))?;
    let scraping = scrape::plan(meta.annotations.as_ref().unwrap_or(&empty), overrides.merge_metrics);
    let app_metrics = match &scraping {
        scrape::Plan::Merge { app } => app.as_deref(),
        scrape::Plan::Keep => None,
    };
    let mut injected = spec.clone();
    inject_spec(&mut injected, &overrides, settings, app_metrics)?;
    *spec = injected;
    let image = overrides.proxy_image.as_deref().unwrap_or(&settings.proxy_image);
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    if let scrape::Plan::Merge { .. } = scraping {
        scrape::point_at_proxy(annotations);
    }
    annotations.insert(INJECTED_ANNOTATION.into(), env!("CARGO_PKG_VERSION").into());
    annotations.insert(PROXY_IMAGE_ANNOTATION.into(), image.into());
    annotations.insert(TEMPLATE_ANNOTATION.into(), template_hash(settings));
    label_version(meta, image);
    Ok(())
}

/// Label the proxy version a pod runs (injected, or a gateway's own).
fn label_version(meta: &mut ObjectMeta, image: &str) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(PROXY_VERSION_LABEL.into(), version_label(image));
}

/// The version of an image as a label value: its tag (`latest` when it has none), or the start
/// of its digest; characters a label value cannot hold become `-`, at most 63 of them.
pub fn version_label(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let raw = match (last.split_once(':'), digest) {
        (Some((_, tag)), _) => tag.to_string(),
        (None, Some(d)) => d.replace(':', "-").chars().take(19).collect(),
        (None, None) => "latest".to_string(),
    };
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "unknown".into()
    } else {
        trimmed.into()
    }
}

fn inject_spec(
    spec: &mut PodSpec,
    overrides: &Overrides,
    settings: &Settings,
    app_metrics: Option<&str>,
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
    let probes = if overrides.rewrite_probes.unwrap_or(true) {
        rewrite_probes(&mut spec.containers)?
    } else {
        Map::new()
    };
    let mut init = vec![
        init_container(settings, overrides),
        proxy_container(settings, overrides, &probes, app_metrics),
    ];
    init.extend(spec.init_containers.take().unwrap_or_default());
    spec.init_containers = Some(init);
    spec.volumes.get_or_insert_with(Vec::new).extend(volumes());
    Ok(())
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

fn init_container(settings: &Settings, o: &Overrides) -> Container {
    let mut args = vec!["init".to_string(), "--proxy-uid".into(), PROXY_UID.to_string()];
    let joined = |base: &[String], extra: &[String]| {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        all
    };
    let u16s = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>();
    for (flag, value) in [
        (
            "--exclude-inbound-ports",
            csv(&joined(
                &u16s(&settings.exclude_inbound_ports),
                &u16s(&o.exclude_inbound_ports),
            )),
        ),
        (
            "--exclude-outbound-ports",
            csv(&joined(
                &u16s(&settings.exclude_outbound_ports),
                &u16s(&o.exclude_outbound_ports),
            )),
        ),
        (
            "--exclude-outbound-cidrs",
            csv(&joined(&settings.exclude_outbound_cidrs, &o.exclude_outbound_cidrs)),
        ),
        ("--include-outbound-ports", csv(&o.include_outbound_ports)),
    ] {
        if !value.is_empty() {
            args.push(flag.into());
            args.push(value);
        }
    }
    // `*` is the default of both; an empty list (capture nothing) is passed as written.
    if let Some(ports) = &o.include_inbound_ports {
        args.push(format!("--include-inbound-ports={}", csv(ports)));
    }
    if let Some(cidrs) = &o.include_outbound_cidrs {
        args.push(format!("--include-outbound-cidrs={}", csv(cidrs)));
    }
    if !o.capture_dns.unwrap_or(settings.capture_dns) {
        args.push("--capture-dns=false".into());
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(o.proxy_image.clone().unwrap_or_else(|| settings.proxy_image.clone())),
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
fn proxy_container(
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
fn proxy_env(settings: &Settings, role: ProxyRole) -> Vec<EnvVar> {
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

    #[test]
    fn the_template_hash_follows_what_is_injected_not_the_image() {
        let settings = Settings::new(&Options::default());
        let hash = template_hash(&settings);
        assert_eq!(hash.len(), 16);
        assert_eq!(hash, template_hash(&settings), "deterministic");
        let other_image = Settings {
            proxy_image: "registry.example/proxy:2".into(),
            ..settings.clone()
        };
        assert_eq!(
            template_hash(&other_image),
            hash,
            "the image is the rollout's own business"
        );
        let other_domain = Settings {
            trust_domain: "new.example".into(),
            ..settings.clone()
        };
        assert_eq!(
            template_hash(&other_domain),
            hash,
            "a trust domain change restarts no workload: proxies follow their pushed identity"
        );
        let other_template = Settings {
            log_level: "debug".into(),
            ..settings.clone()
        };
        assert_ne!(template_hash(&other_template), hash);
        // Remembered per thread for the last settings: a change of settings is a new hash, and
        // back again the first one.
        let canonical = Settings {
            proxy_image: String::new(),
            trust_domain: String::new(),
            ..other_template.clone()
        };
        assert_eq!(template_hash(&other_template), hash_of(&canonical));
        assert_eq!(template_hash(&settings), hash);
        let mut t = app_template();
        inject(&mut t, &settings).unwrap();
        let annotations = t.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations[TEMPLATE_ANNOTATION], hash, "recorded on every injected pod");
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

        // DNS is captured unless a pod opts out.
        assert!(!args.iter().any(|a| a.starts_with("--capture-dns")), "{args:?}");

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
    fn pod_annotations_set_image_resources_log_level_concurrency_capture_and_are_recorded() {
        let mut t = app_template();
        t.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from(
            [
                (overrides::PROXY_IMAGE, "registry.local/trellis-proxy:0.2.0-rc.1"),
                (overrides::PROXY_CPU, "200m"),
                (overrides::PROXY_MEMORY_LIMIT, "256Mi"),
                (overrides::LOG_LEVEL, "debug"),
                (overrides::CONCURRENCY, "2"),
                (overrides::CAPTURE_DNS, "false"),
                (overrides::INCLUDE_INBOUND_PORTS, "8080"),
                (overrides::INCLUDE_OUTBOUND_CIDRS, "10.0.0.0/8"),
                (overrides::INCLUDE_OUTBOUND_PORTS, "443"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        ));
        inject(&mut t, &settings()).unwrap();
        let spec = t.spec.as_ref().unwrap();
        let (init, proxy) = (
            &spec.init_containers.as_ref().unwrap()[0],
            &spec.init_containers.as_ref().unwrap()[1],
        );
        for c in [init, proxy] {
            assert_eq!(c.image.as_deref(), Some("registry.local/trellis-proxy:0.2.0-rc.1"));
        }
        let args = init.args.clone().unwrap();
        for want in [
            "--capture-dns=false",
            "--include-inbound-ports=8080",
            "--include-outbound-cidrs=10.0.0.0/8",
        ] {
            assert!(args.contains(&want.to_string()), "{args:?}");
        }
        assert!(args.windows(2).any(|w| w == ["--include-outbound-ports", "443"]));
        let resources = proxy.resources.as_ref().unwrap();
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"], Quantity("200m".into()));
        assert_eq!(resources.limits.as_ref().unwrap()["memory"], Quantity("256Mi".into()));
        let env: BTreeMap<_, _> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            (env["TRELLIS_LOG"].as_str(), env["TRELLIS_WORKERS"].as_str()),
            ("debug", "2")
        );
        let meta = t.metadata.as_ref().unwrap();
        assert_eq!(
            meta.annotations.as_ref().unwrap()[PROXY_IMAGE_ANNOTATION],
            "registry.local/trellis-proxy:0.2.0-rc.1"
        );
        assert_eq!(meta.labels.as_ref().unwrap()[PROXY_VERSION_LABEL], "0.2.0-rc.1");
    }

    #[test]
    fn version_labels_are_tags_or_digests_within_label_rules() {
        assert_eq!(version_label("ghcr.io/trellis-mesh/trellis-proxy:0.1.0"), "0.1.0");
        assert_eq!(version_label("localhost:5000/trellis-proxy"), "latest");
        assert_eq!(
            version_label("trellis-proxy@sha256:abcdef0123456789abcdef"),
            "sha256-abcdef012345"
        );
        assert_eq!(version_label("p:-weird+tag-"), "weird-tag");
        assert_eq!(version_label(&format!("p:{}", "a".repeat(80))).len(), 63);
    }

    #[test]
    fn a_proxy_container_from_elsewhere_is_refused_and_an_injected_one_is_left_alone() {
        let mut t = app_template();
        t.spec.as_mut().unwrap().containers.push(Container {
            name: PROXY_CONTAINER.into(),
            ..Container::default()
        });
        let err = inject(&mut t, &settings()).unwrap_err();
        assert_eq!(err, InjectError::ReservedName(PROXY_CONTAINER.into()));
        assert!(err.to_string().contains("did not inject"), "{err}");

        // A copy of an injected pod (annotation and sidecar) is already meshed.
        let mut injected = app_template();
        inject(&mut injected, &settings()).unwrap();
        let mut other = Settings::new(&Options::default());
        other.proxy_image = "elsewhere/trellis-proxy:9".into();
        let before = injected.clone();
        inject(&mut injected, &other).unwrap();
        assert_eq!(injected, before);
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
        let meta = t.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["app"], "trellis-ingressgateway");
        // The injector leaves gateways alone, even in a meshed namespace.
        assert_eq!(labels[INJECT_LABEL], INJECT_DISABLED);
        // Prometheus scrapes gateways as it scrapes sidecars.
        let annotations = meta.annotations.unwrap();
        assert_eq!(
            (
                annotations[scrape::SCRAPE].as_str(),
                annotations[scrape::PORT].as_str(),
                annotations[scrape::PATH].as_str()
            ),
            ("true", "15020", "/stats/prometheus")
        );
    }

    #[test]
    fn injected_pods_are_scraped_through_the_proxy_which_merges_the_apps_metrics() {
        let proxy_env = |t: &PodTemplateSpec| -> BTreeMap<String, String> {
            t.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[1]
                .env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect()
        };
        // No metrics of its own: the proxy is scraped, nothing to merge.
        let mut plain = app_template();
        inject(&mut plain, &settings()).unwrap();
        let annotations = plain.metadata.as_ref().unwrap().annotations.clone().unwrap();
        assert_eq!(annotations[scrape::PORT], "15020");
        assert_eq!(annotations[scrape::PATH], "/stats/prometheus");
        assert!(!proxy_env(&plain).contains_key(scrape::APP_METRICS_ENV));
        // The app's own request moves into the proxy's environment.
        let mut own = app_template();
        own.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([
            (scrape::SCRAPE.to_string(), "true".to_string()),
            (scrape::PORT.to_string(), "9090".to_string()),
        ]));
        inject(&mut own, &settings()).unwrap();
        let app: Value = serde_json::from_str(&proxy_env(&own)[scrape::APP_METRICS_ENV]).unwrap();
        assert_eq!(app, json!({"scrape": "true", "port": "9090", "path": ""}));
        assert_eq!(
            own.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[scrape::PORT],
            "15020"
        );
        // Opted out: the app's annotations stay as written.
        let mut out = app_template();
        out.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([
            (scrape::PORT.to_string(), "9090".to_string()),
            (overrides::MERGE_METRICS.to_string(), "false".to_string()),
        ]));
        inject(&mut out, &settings()).unwrap();
        assert_eq!(
            out.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[scrape::PORT],
            "9090"
        );
        assert!(!proxy_env(&out).contains_key(scrape::APP_METRICS_ENV));
    }
}
