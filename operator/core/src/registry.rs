//! The service registry: the cluster's namespaces, services and workloads as plain data.
//!
//! The live operator fills it from kube-runtime watchers; `meshctl` and the tests fill it from
//! YAML (see [`crate::snapshot`]). Both go through the same conversions from Kubernetes objects
//! ([`Service::from_k8s`], [`Workload::from_pod`]), so the compiler sees the same thing.
//!
//! A Service's endpoints come from its EndpointSlices ([`endpoints`]), with the metadata of
//! the pods they name; an ExternalName Service is a name the proxy resolves.

mod endpoints;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Pod, Service as K8sService};
use trellis_contract::SpiffeId;

pub use endpoints::{EndpointSlice, SERVICE_NAME_LABEL, ServiceEndpoint, SliceEndpoint};

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The application protocol of a service port, from `appProtocol` or the port name prefix
/// (`http-`, `http2-`, `grpc-`, `tcp-`, `tls-`, `https-`), as Istio reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (and h2c upgrades).
    Http,
    /// HTTP/2 (prior knowledge), including gRPC.
    Http2,
    /// Opaque TCP.
    Tcp,
    /// TLS the mesh does not terminate (passthrough on SNI).
    Tls,
    /// Unknown: the proxy sniffs the protocol.
    Auto,
}

impl Protocol {
    /// Read a protocol from a port's `appProtocol` and name.
    pub fn detect(app_protocol: Option<&str>, port_name: Option<&str>) -> Protocol {
        let from = |s: &str| {
            let s = s.to_ascii_lowercase();
            let s = s.rsplit('/').next().unwrap_or(&s).to_string();
            match s.as_str() {
                "http" | "http1" | "kubernetes.io/ws" | "ws" => Some(Protocol::Http),
                "http2" | "grpc" | "grpc-web" | "kubernetes.io/h2c" | "h2c" => Some(Protocol::Http2),
                "tcp" | "mongo" | "mysql" | "redis" | "postgres" => Some(Protocol::Tcp),
                "tls" | "https" | "kubernetes.io/wss" => Some(Protocol::Tls),
                _ => None,
            }
        };
        if let Some(p) = app_protocol.and_then(from) {
            return p;
        }
        port_name
            .and_then(|n| from(n.split('-').next().unwrap_or(n)))
            .unwrap_or(Protocol::Auto)
    }

    /// Whether the proxy handles it as HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2)
    }
}

/// The port a Service forwards to on its pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetPort {
    /// A number.
    Number(u16),
    /// A named container port.
    Named(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name.
    pub name: Option<String>,
    /// The Service's port.
    pub port: u16,
    /// The pods' port.
    pub target_port: TargetPort,
    /// The application protocol.
    pub protocol: Protocol,
}

/// The Service annotation naming the namespaces whose proxies see the Service (Istio's
/// `networking.istio.io/exportTo`): comma-separated `.` (its own), `*` (every namespace), `~`
/// (none) or namespace names. Without it (and without [`ISTIO_EXPORT_TO_ANNOTATION`]), every
/// namespace sees the Service.
pub const EXPORT_TO_ANNOTATION: &str = "networking.trellis.dev/exportTo";

/// Istio's name for [`EXPORT_TO_ANNOTATION`], honoured on a Service that lacks Trellis' own, so
/// Services annotated for Istio keep their visibility. When both are set, Trellis' wins and
/// `meshctl analyze` says the other is ignored.
pub const ISTIO_EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// A Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub key: ObjectKey,
    /// Cluster IP (absent for headless services).
    pub cluster_ip: Option<String>,
    /// Ports (TCP only; UDP and SCTP ports are not proxied).
    pub ports: Vec<ServicePort>,
    /// Pod selector; a Service without one is served by the EndpointSlices made for it.
    pub selector: Option<BTreeMap<String, String>>,
    /// `type: ExternalName`: the name its traffic goes to (resolved by the proxy, as Istio
    /// resolves it: a DNS cluster on each of the Service's ports, outside the mesh).
    pub external_name: Option<String>,
    /// The namespaces whose proxies see it ([`EXPORT_TO_ANNOTATION`], split at its commas and
    /// trimmed); empty: every namespace.
    pub export_to: Vec<String>,
    /// The annotation `export_to` was read from: [`EXPORT_TO_ANNOTATION`], or
    /// [`ISTIO_EXPORT_TO_ANNOTATION`] on a Service without it.
    pub export_to_annotation: &'static str,
    /// The value of [`ISTIO_EXPORT_TO_ANNOTATION`] when Trellis' own annotation is also set
    /// and says something else: ignored, and reported by `meshctl analyze`.
    pub ignored_istio_export_to: Option<String>,
}

impl Service {
    /// The fully qualified host name, `name.namespace.svc.<domain>`.
    pub fn fqdn(&self, domain: &str) -> String {
        format!("{}.{}.svc.{domain}", self.key.name, self.key.namespace)
    }

    /// Whether proxies in `namespace` see the Service (its exportTo, as a ServiceEntry's):
    /// their routes, clusters and DNS hold it only then.
    pub fn visible_from(&self, namespace: &str) -> bool {
        visible(Some(&self.export_to), &self.key.namespace, namespace)
    }

    /// Convert a Kubernetes Service; `None` without a name or spec, or for an ExternalName
    /// Service without an `externalName` (the API server refuses one).
    pub fn from_k8s(s: &K8sService) -> Option<Service> {
        let meta = &s.metadata;
        let spec = s.spec.as_ref()?;
        let annotation = |name: &str| meta.annotations.as_ref().and_then(|a| a.get(name)).map(String::as_str);
        let (own, istio) = (annotation(EXPORT_TO_ANNOTATION), annotation(ISTIO_EXPORT_TO_ANNOTATION));
        let (export_to, export_to_annotation) = match own {
            Some(v) => (Some(v), EXPORT_TO_ANNOTATION),
            None => (
                istio,
                if istio.is_some() {
                    ISTIO_EXPORT_TO_ANNOTATION
                } else {
                    EXPORT_TO_ANNOTATION
                },
            ),
        };
        let ignored_istio_export_to = match (own, istio) {
            (Some(own), Some(istio)) if split_export_to(own) != split_export_to(istio) => Some(istio.to_string()),
            _ => None,
        };
        let external_name = if spec.type_.as_deref() == Some("ExternalName") {
            Some(
                spec.external_name
                    .clone()
                    .filter(|n| !n.is_empty())?
                    .trim_end_matches('.')
                    .to_string(),
            )
        } else {
            None
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target_port = match &p.target_port {
                    None => TargetPort::Number(port),
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        TargetPort::Number(u16::try_from(*n).ok()?)
                    }
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                        match s.parse::<u16>() {
                            Ok(n) => TargetPort::Number(n),
                            Err(_) => TargetPort::Named(s.clone()),
                        }
                    }
                };
                Some(ServicePort {
                    name: p.name.clone(),
                    port,
                    target_port,
                    protocol: Protocol::detect(p.app_protocol.as_deref(), p.name.as_deref()),
                })
            })
            .collect();
        Some(Service {
            key: ObjectKey::new(
                meta.namespace.clone().unwrap_or_else(|| "default".into()),
                meta.name.clone()?,
            ),
            cluster_ip: spec
                .cluster_ip
                .clone()
                .filter(|ip| !ip.is_empty() && ip != "None" && external_name.is_none()),
            ports,
            selector: spec
                .selector
                .clone()
                .filter(|s| !s.is_empty() && external_name.is_none()),
            external_name,
            export_to: export_to.map(split_export_to).unwrap_or_default(),
            export_to_annotation,
            ignored_istio_export_to,
        })
    }
}

/// An exportTo annotation's entries: split at its commas, trimmed, empty ones dropped.
fn split_export_to(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

/// A pod: where a workload runs, who it is, and whether it is in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Namespace and pod name.
    pub key: ObjectKey,
    /// Pod IP, once assigned.
    pub ip: Option<String>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// The pod's ServiceAccount (its identity).
    pub service_account: String,
    /// Whether the pod is Ready (serves traffic).
    pub ready: bool,
    /// Whether the pod runs a trellis-proxy sidecar (so peers talk mTLS to it).
    pub meshed: bool,
    /// Named container ports, for Services with named target ports.
    pub named_ports: BTreeMap<String, u16>,
}

/// The container (regular or native sidecar) that marks a pod as meshed.
pub const PROXY_CONTAINER: &str = "trellis-proxy";

impl Workload {
    /// Convert a pod; `None` when it has no name or has finished.
    pub fn from_pod(p: &Pod) -> Option<Workload> {
        let meta = &p.metadata;
        let spec = p.spec.as_ref()?;
        let status = p.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) || meta.deletion_timestamp.is_some() {
            return None;
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
        let meshed = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER);
        let named_ports = containers
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        Some(Workload {
            key: ObjectKey::new(
                meta.namespace.clone().unwrap_or_else(|| "default".into()),
                meta.name.clone()?,
            ),
            ip: status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()),
            labels: meta.labels.clone().unwrap_or_default(),
            service_account: spec
                .service_account_name
                .clone()
                .or_else(|| spec.service_account.clone())
                .unwrap_or_else(|| "default".into()),
            ready,
            meshed,
            named_ports,
        })
    }

    /// The workload's SPIFFE identity.
    pub fn spiffe_id(&self, trust_domain: &str) -> SpiffeId {
        SpiffeId::for_service_account(trust_domain, &self.key.namespace, &self.service_account)
    }
}

/// Whether `labels` include every entry of `selector` (an empty selector matches everything).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A TLS credential (a `kubernetes.io/tls` Secret): a certificate gateways serve, or a
/// client certificate a DestinationRule's `credentialName` presents.
///
/// # Caveats
/// `Debug` never shows the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCredential {
    /// Certificate chain (PEM).
    pub cert_chain_pem: String,
    /// Private key (PEM).
    pub private_key_pem: String,
    /// CA for client certificates (PEM), from `ca.crt`.
    pub ca_pem: Option<String>,
    /// Certificate revocation list of that CA (PEM), from `ca.crl`.
    pub crl_pem: Option<String>,
}

impl std::fmt::Debug for TlsCredential {
    // Never print private key material, not even in debug logs or test failures.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCredential")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("private_key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .field("crl_pem", &self.crl_pem)
            .finish()
    }
}

/// Everything the compiler knows about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    /// Namespaces and their labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Services by key.
    pub services: BTreeMap<ObjectKey, Service>,
    /// Pods by key.
    pub workloads: BTreeMap<ObjectKey, Workload>,
    /// TLS Secrets by key.
    pub credentials: BTreeMap<ObjectKey, TlsCredential>,
    /// EndpointSlices by their Service's key, then slice name ([`Registry::insert_slice`]).
    pub endpoint_slices: BTreeMap<ObjectKey, BTreeMap<String, EndpointSlice>>,
}

impl Registry {
    /// The Service with this FQDN (`name.namespace.svc.<domain>`).
    pub fn service_by_host(&self, host: &str, domain: &str) -> Option<&Service> {
        let rest = host.strip_suffix(&format!(".svc.{domain}"))?;
        let (name, ns) = rest.split_once('.')?;
        self.services.get(&ObjectKey::new(ns, name))
    }
}

/// Whether a resource in `owner_ns` with `export_to` (Istio's `exportTo`: `*`, `.`, `~` or
/// namespaces) is visible from `viewer_ns`.
pub(crate) fn visible(export_to: Option<&[String]>, owner_ns: &str, viewer_ns: &str) -> bool {
    let Some(list) = export_to.filter(|l| !l.is_empty()) else {
        return true;
    };
    list.iter().any(|e| match e.as_str() {
        "*" => true,
        "." => owner_ns == viewer_ns,
        "~" => false,
        ns => ns == viewer_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_detection_follows_istio() {
        assert_eq!(Protocol::detect(Some("http"), Some("tcp-x")), Protocol::Http);
        assert_eq!(Protocol::detect(None, Some("grpc-api")), Protocol::Http2);
        assert_eq!(Protocol::detect(None, Some("http")), Protocol::Http);
        assert_eq!(Protocol::detect(None, Some("tcp-db")), Protocol::Tcp);
        assert_eq!(Protocol::detect(Some("kubernetes.io/h2c"), None), Protocol::Http2);
        assert_eq!(Protocol::detect(None, Some("web")), Protocol::Auto);
        assert_eq!(Protocol::detect(None, None), Protocol::Auto);
    }

    #[test]
    fn a_credential_never_prints_its_key() {
        let c = TlsCredential {
            cert_chain_pem: "CHAIN".into(),
            private_key_pem: "SECRETKEYBYTES".into(),
            ca_pem: Some("CA".into()),
            crl_pem: None,
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("CHAIN") && shown.contains("CA") && !shown.contains("SECRETKEYBYTES"),
            "{shown}"
        );
    }

    #[test]
    fn selectors() {
        let l = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("v".to_string(), "1".to_string()),
        ]);
        assert!(selects(&BTreeMap::new(), &l));
        assert!(selects(&BTreeMap::from([("app".to_string(), "web".to_string())]), &l));
        assert!(!selects(&BTreeMap::from([("app".to_string(), "db".to_string())]), &l));
    }

    #[test]
    fn export_to() {
        assert!(visible(None, "a", "b"));
        assert!(visible(Some(&[".".into()]), "a", "a"));
        assert!(!visible(Some(&[".".into()]), "a", "b"));
        assert!(visible(Some(&["b".into()]), "a", "b"));
        assert!(!visible(Some(&["~".into()]), "a", "a"));
    }
}
