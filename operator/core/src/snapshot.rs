//! A snapshot of everything the compiler reads: the registry plus the mesh's configuration.
//!
//! [`InputKind::ALL`] is the one list of the kinds a snapshot is made of: the operator's index
//! watches exactly these, and `meshctl` lists exactly these from a cluster. Built from the live
//! index by the operator, from a cluster's listed objects ([`Snapshot::from_objects`]) by
//! `meshctl`, or from YAML files ([`Snapshot::from_yaml`]) by `meshctl` and the compiler's
//! fixture tests.

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use trellis_api::document::{Classification, Kind, VERSION, classify, parse_documents};
use trellis_api::mesh::{MeshSpec, SYSTEM_NAMESPACE};
use trellis_api::networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService};
use trellis_api::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

use crate::registry::{EndpointSlice, ObjectKey, Registry, Service, TlsCredential, Workload};

/// A kind of object a compilation reads: the core kinds the registry is made of, and every
/// Trellis kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputKind {
    /// `v1 Namespace`: the namespace labels (injection, `sourceLabels` of namespaces).
    Namespace,
    /// `v1 Service`.
    Service,
    /// `v1 Pod`: workloads (who an endpoint is, and whether it is meshed).
    Pod,
    /// `discovery.k8s.io/v1 EndpointSlice`: where Services are served.
    EndpointSlice,
    /// `v1 Secret` of type `kubernetes.io/tls`: gateway and DestinationRule credentials
    /// (`credentialName`).
    Secret,
    /// A Trellis kind.
    Trellis(Kind),
}

/// The type of the Secrets a snapshot reads; others never hold gateway credentials.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

impl InputKind {
    /// Every kind, in the order the operator's index lists them: the core kinds, then
    /// [`Kind::ALL`].
    pub const ALL: [InputKind; 5 + Kind::ALL.len()] = {
        const CORE: [InputKind; 5] = [
            InputKind::Namespace,
            InputKind::Service,
            InputKind::Pod,
            InputKind::EndpointSlice,
            InputKind::Secret,
        ];
        // A const cannot concatenate arrays: fill the Trellis part from Kind::ALL.
        let mut all = [InputKind::Namespace; 5 + Kind::ALL.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = if i < CORE.len() {
                CORE[i]
            } else {
                InputKind::Trellis(Kind::ALL[i - CORE.len()])
            };
            i += 1;
        }
        all
    };

    /// The kind as written in `kind:`.
    pub fn kind(self) -> &'static str {
        match self {
            InputKind::Namespace => "Namespace",
            InputKind::Service => "Service",
            InputKind::Pod => "Pod",
            InputKind::EndpointSlice => "EndpointSlice",
            InputKind::Secret => "Secret",
            InputKind::Trellis(k) => k.name(),
        }
    }

    /// The API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self {
            InputKind::Trellis(k) => k.group(),
            InputKind::EndpointSlice => "discovery.k8s.io",
            _ => "",
        }
    }

    /// The API version within the group.
    pub fn version(self) -> &'static str {
        match self {
            InputKind::Trellis(_) => VERSION,
            _ => "v1",
        }
    }

    /// `group/version`, or `v1` for the core group.
    pub fn api_version(self) -> String {
        match self {
            InputKind::Trellis(k) => k.api_version(),
            InputKind::EndpointSlice => "discovery.k8s.io/v1".to_string(),
            _ => "v1".to_string(),
        }
    }

    /// The resource name in URLs (`pods`, `virtualservices`).
    pub fn plural(self) -> String {
        match self {
            InputKind::Namespace => "namespaces".to_string(),
            InputKind::Service => "services".to_string(),
            InputKind::Pod => "pods".to_string(),
            InputKind::EndpointSlice => "endpointslices".to_string(),
            InputKind::Secret => "secrets".to_string(),
            InputKind::Trellis(k) => k.plural(),
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        match self {
            InputKind::Namespace => false,
            InputKind::Trellis(k) => k.namespaced(),
            _ => true,
        }
    }

    /// The field selector a list or watch of this kind uses: only TLS Secrets are read (a
    /// cluster's other Secrets are none of the mesh's business, and are not fetched).
    pub fn field_selector(self) -> Option<String> {
        match self {
            InputKind::Secret => Some(format!("type={TLS_SECRET_TYPE}")),
            _ => None,
        }
    }
}

/// The inputs of one compilation.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Namespaces, services, workloads, credentials.
    pub registry: Registry,
    /// VirtualServices.
    pub virtual_services: Vec<VirtualService>,
    /// DestinationRules.
    pub destination_rules: Vec<DestinationRule>,
    /// Gateways.
    pub gateways: Vec<Gateway>,
    /// ServiceEntries: hosts added to the registry.
    pub service_entries: Vec<ServiceEntry>,
    /// Sidecars: what sidecar proxies can reach.
    pub sidecars: Vec<Sidecar>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<PeerAuthentication>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// RequestAuthentications.
    pub request_authentications: Vec<RequestAuthentication>,
    /// The mesh-wide settings (the `Mesh` named `default`), or defaults.
    pub mesh: MeshSpec,
    /// The trust domains proxies may still serve certificates in besides `mesh`'s, read from
    /// the Mesh's status ([`trellis_api::mesh::MeshStatus::previous_trust_domains`]): aliases
    /// of the trust domain while a change of it is under way.
    pub previous_trust_domains: Vec<String>,
    /// The roots proxies must trust (PEM), pushed inline so that a proxy's ACK proves it holds
    /// them (root rotation). Empty: proxies use the bundle file their certificate came with.
    pub trust_bundle: Vec<String>,
    /// The key sets the operator fetched, by `jwksUri` (RequestAuthentication): pushed inline,
    /// so proxies never fetch. A URI missing here has not been fetched yet.
    pub jwks: BTreeMap<String, FetchedJwks>,
    /// The `jwksUri`s whose last refresh failed while `jwks` still holds the keys of an earlier
    /// fetch (Istio keeps the last good keys too), with why: reported, never compiled, so a
    /// failing refresh alone recompiles nothing.
    pub jwks_stale: BTreeMap<String, String>,
    /// The root namespace (Istio's `meshConfig.rootNamespace`): the control plane's namespace,
    /// where a PeerAuthentication, RequestAuthentication or AuthorizationPolicy without a
    /// selector applies mesh-wide. The operator sets the namespace it runs in (under OLM, its
    /// OperatorGroup's); meshctl the namespace the cluster's operator runs in. Default
    /// `trellis-system`, where `meshctl install` puts it.
    pub root_namespace: String,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            registry: Registry::default(),
            virtual_services: Vec::new(),
            destination_rules: Vec::new(),
            gateways: Vec::new(),
            service_entries: Vec::new(),
            sidecars: Vec::new(),
            peer_authentications: Vec::new(),
            authorization_policies: Vec::new(),
            request_authentications: Vec::new(),
            mesh: MeshSpec::default(),
            previous_trust_domains: Vec::new(),
            trust_bundle: Vec::new(),
            jwks: BTreeMap::new(),
            jwks_stale: BTreeMap::new(),
            root_namespace: SYSTEM_NAMESPACE.to_string(),
        }
    }
}

/// What the operator holds of one `jwksUri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchedJwks {
    /// The key set (JSON), checked by `trellis_contract::jwt::parse_jwks`.
    Keys(String),
    /// Why there is no usable key set (the fetch failed, or what came back is no key set):
    /// tokens of the issuers that use it are refused (401) until a fetch succeeds.
    Unavailable(String),
}

/// An object of a known kind that does not have that kind's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {}: {message}", display_name(namespace, name))]
pub struct ObjectError {
    /// Kind.
    pub kind: String,
    /// Namespace (empty for cluster-scoped objects and objects without one).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

fn display_name(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// Objects that could not be read into a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A document of a file that is not YAML/JSON.
    #[error("line {line}: {message}")]
    Parse {
        /// File line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A document of a file of a known kind with the wrong shape.
    #[error("line {line}: {source}")]
    Shape {
        /// File line.
        line: usize,
        /// The object and what is wrong with it.
        source: ObjectError,
    },
    /// An object (listed from a cluster) of a known kind with the wrong shape.
    #[error(transparent)]
    Object(#[from] ObjectError),
}

impl Snapshot {
    /// The trust domain identities are issued in, with its aliases (the Mesh's and the
    /// previous domains).
    pub fn trust_domains(&self) -> trellis_contract::TrustDomains {
        self.mesh.trust_domains(&self.previous_trust_domains)
    }

    /// Read a snapshot from multi-document YAML: Namespaces, Services, Pods, EndpointSlices,
    /// TLS Secrets and the Trellis (or Istio) kinds. Other kinds are ignored.
    pub fn from_yaml(text: &str) -> Result<Snapshot, SnapshotError> {
        let mut s = Snapshot::default();
        for doc in parse_documents(text) {
            let value = doc.content.map_err(|e| SnapshotError::Parse {
                line: e.line,
                message: e.message,
            })?;
            s.add(&value)
                .map_err(|source| SnapshotError::Shape { line: doc.line, source })?;
        }
        Ok(s)
    }

    /// The snapshot of a cluster's objects, however they were fetched (the objects of each
    /// [`InputKind`], with `apiVersion` and `kind` set — as `kubectl get -o json` and the API's
    /// list items after [`with_type_meta`] give them). The operator's index folds the same
    /// objects through the same conversions ([`Service::from_k8s`], [`Workload::from_pod`],
    /// [`tls_credential`]), so both compile the same configuration from the same cluster.
    ///
    /// # Caveats
    /// Objects of other kinds are skipped, as [`Snapshot::from_yaml`] skips them.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Result<Snapshot, SnapshotError> {
        let mut s = Snapshot::default();
        for o in objects {
            s.add(o)?;
        }
        Ok(s)
    }

    /// Add one object. Objects of kinds the compiler does not read are skipped.
    pub fn add(&mut self, value: &Value) -> Result<(), ObjectError> {
        let api = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let err = |e: serde_json::Error| ObjectError {
            kind: kind.to_string(),
            namespace: value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            name: name.clone(),
            message: e.to_string(),
        };
        match classify(api, kind) {
            Classification::Trellis(k) | Classification::Istio { kind: k, .. } => {
                let mut v = value.clone();
                v["apiVersion"] = Value::String(k.api_version());
                default_namespace(&mut v, k.namespaced());
                match k {
                    Kind::VirtualService => self.virtual_services.push(parse(v).map_err(err)?),
                    Kind::DestinationRule => self.destination_rules.push(parse(v).map_err(err)?),
                    Kind::Gateway => self.gateways.push(parse(v).map_err(err)?),
                    Kind::ServiceEntry => self.service_entries.push(parse(v).map_err(err)?),
                    Kind::Sidecar => self.sidecars.push(parse(v).map_err(err)?),
                    Kind::PeerAuthentication => self.peer_authentications.push(parse(v).map_err(err)?),
                    Kind::AuthorizationPolicy => self.authorization_policies.push(parse(v).map_err(err)?),
                    Kind::RequestAuthentication => self.request_authentications.push(parse(v).map_err(err)?),
                    Kind::Mesh => {
                        let m: trellis_api::mesh::Mesh = parse(v).map_err(err)?;
                        if m.metadata.name.as_deref() == Some("default") {
                            self.previous_trust_domains = m
                                .status
                                .map(|st| st.previous_trust_domains(&m.spec))
                                .unwrap_or_default();
                            self.mesh = m.spec;
                        }
                    }
                }
            }
            Classification::BuiltIn if api == InputKind::EndpointSlice.api_version() && kind == "EndpointSlice" => {
                let mut v = value.clone();
                default_namespace(&mut v, true);
                let slice: K8sEndpointSlice = parse(v).map_err(err)?;
                if let Some(slice) = EndpointSlice::from_k8s(&slice) {
                    self.registry.insert_slice(slice);
                }
            }
            Classification::BuiltIn if api == "v1" => {
                let mut v = value.clone();
                match kind {
                    "Namespace" => {
                        let ns: Namespace = parse(v).map_err(err)?;
                        self.registry
                            .namespaces
                            .insert(name.clone(), ns.metadata.labels.unwrap_or_default());
                    }
                    "Service" => {
                        default_namespace(&mut v, true);
                        let svc: K8sService = parse(v).map_err(err)?;
                        if let Some(svc) = Service::from_k8s(&svc) {
                            self.registry.services.insert(svc.key.clone(), svc);
                        }
                    }
                    "Pod" => {
                        default_namespace(&mut v, true);
                        let pod: Pod = parse(v).map_err(err)?;
                        if let Some(w) = Workload::from_pod(&pod) {
                            self.registry.workloads.insert(w.key.clone(), w);
                        }
                    }
                    "Secret" => {
                        default_namespace(&mut v, true);
                        let secret: Secret = parse(v).map_err(err)?;
                        if let Some(c) = tls_credential(&secret) {
                            let ns = secret.metadata.namespace.unwrap_or_default();
                            self.registry.credentials.insert(ObjectKey::new(ns, name.clone()), c);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn parse<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(v)
}

/// kubectl applies objects without a namespace to `default`; so does a snapshot.
fn default_namespace(v: &mut Value, namespaced: bool) {
    if namespaced
        && v.pointer("/metadata/namespace").is_none()
        && let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("namespace".into(), Value::String("default".into()));
    }
}

/// Set `apiVersion` and `kind` on a listed object of `kind` (the API server leaves them out
/// of a list's items).
pub fn with_type_meta(mut object: Value, kind: InputKind) -> Value {
    if let Some(o) = object.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(kind.api_version()));
        o.insert("kind".into(), Value::String(kind.kind().to_string()));
    }
    object
}

/// A Secret of type `kubernetes.io/tls` with `tls.crt` and `tls.key` as a gateway credential
/// (the operator watches only that type; a snapshot from files or a listing reads the same).
pub fn tls_credential(secret: &Secret) -> Option<TlsCredential> {
    if secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        return None;
    }
    let text = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(k)).cloned())
    };
    Some(TlsCredential {
        cert_chain_pem: text("tls.crt")?,
        private_key_pem: text("tls.key")?,
        ca_pem: text("ca.crt"),
        crl_pem: text("ca.crl"),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_one_list_holds_the_core_kinds_and_every_trellis_kind_once() {
        let all: Vec<InputKind> = InputKind::ALL.to_vec();
        assert_eq!(
            &all[..5],
            [
                InputKind::Namespace,
                InputKind::Service,
                InputKind::Pod,
                InputKind::EndpointSlice,
                InputKind::Secret
            ]
        );
        let trellis: Vec<Kind> = all[5..]
            .iter()
            .map(|k| match k {
                InputKind::Trellis(k) => *k,
                other => panic!("{other:?} after the core kinds"),
            })
            .collect();
        assert_eq!(trellis, Kind::ALL);
        let paths: Vec<String> = all
            .iter()
            .map(|k| format!("{}/{}", k.api_version(), k.plural()))
            .collect();
        assert!(paths.contains(&"v1/secrets".to_string()), "{paths:?}");
        assert!(
            paths.contains(&"discovery.k8s.io/v1/endpointslices".to_string()),
            "{paths:?}"
        );
        assert!(paths.contains(&"networking.trellis.dev/v1alpha1/virtualservices".to_string()));
        assert_eq!(
            InputKind::Secret.field_selector().as_deref(),
            Some("type=kubernetes.io/tls")
        );
        assert!(!InputKind::Namespace.namespaced() && !InputKind::Trellis(Kind::Mesh).namespaced());
    }

    fn secret(name: &str, type_: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "trellis-system"},
            "type": type_,
            "stringData": {"tls.crt": "CERT", "tls.key": "KEY"}
        })
    }

    #[test]
    fn listed_objects_make_a_snapshot_with_tls_secrets_only() {
        let objects = [
            with_type_meta(
                json!({"metadata": {"name": "shop", "labels": {"trellis.dev/inject": "enabled"}}}),
                InputKind::Namespace,
            ),
            with_type_meta(
                json!({"metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"clusterIP": "10.96.0.5", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}}),
                InputKind::Service,
            ),
            with_type_meta(secret("shop-cert", "kubernetes.io/tls"), InputKind::Secret),
            with_type_meta(secret("opaque", "Opaque"), InputKind::Secret),
            with_type_meta(
                json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}}),
                InputKind::Trellis(Kind::VirtualService),
            ),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}}),
        ];
        let s = Snapshot::from_objects(&objects).unwrap();
        assert_eq!(s.registry.namespaces.len(), 1);
        assert_eq!(s.registry.services.len(), 1);
        assert_eq!(s.virtual_services.len(), 1);
        let creds: Vec<&ObjectKey> = s.registry.credentials.keys().collect();
        assert_eq!(creds, [&ObjectKey::new("trellis-system", "shop-cert")]);
    }

    #[test]
    fn a_malformed_object_is_named() {
        let bad = with_type_meta(
            json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"hosts": "not a list"}}),
            InputKind::Trellis(Kind::VirtualService),
        );
        let err = Snapshot::from_objects([&bad]).unwrap_err().to_string();
        assert!(err.starts_with("VirtualService shop/web: "), "{err}");
    }
}
