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
//!
//! Its parts: `capture` (the init container), `proxy` (the proxy container in both roles, its
//! volumes, a gateway's pod template), `probes` (the app's probes rewritten); [`overrides`] and
//! [`scrape`] read the pod's annotations, [`role`] tells the proxies apart.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Map;

use crate::install::{OPERATOR_NAME, Options, PUSH_PORT};

mod capture;
pub mod overrides;
mod probes;
mod proxy;
pub mod role;
pub mod scrape;
use capture::init_container;
pub use overrides::Overrides;
use probes::rewrite_probes;
pub use proxy::gateway_pod_template;
use proxy::{proxy_container, volumes};
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

#[cfg(test)]
mod tests;
