//! A snapshot of everything the compiler reads: the registry plus the mesh's configuration.
//!
//! Built from the live index by the operator, or from YAML files ([`Snapshot::from_yaml`]) by
//! `meshctl proxy-config` and the compiler's fixture tests.

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service as K8sService};
use serde::de::DeserializeOwned;
use serde_json::Value;
use trellis_api::document::{Classification, Kind, classify, parse_documents};
use trellis_api::mesh::MeshSpec;
use trellis_api::networking::{DestinationRule, Gateway, VirtualService};
use trellis_api::security::{AuthorizationPolicy, PeerAuthentication};

use crate::registry::{ObjectKey, Registry, Service, TlsCredential, Workload};

/// The inputs of one compilation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Namespaces, services, workloads, credentials.
    pub registry: Registry,
    /// VirtualServices.
    pub virtual_services: Vec<VirtualService>,
    /// DestinationRules.
    pub destination_rules: Vec<DestinationRule>,
    /// Gateways.
    pub gateways: Vec<Gateway>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<PeerAuthentication>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// The mesh-wide settings (the `Mesh` named `default`), or defaults.
    pub mesh: MeshSpec,
    /// The roots proxies must trust (PEM), pushed inline so that a proxy's ACK proves it holds
    /// them (root rotation). Empty: proxies use the bundle file their certificate came with.
    pub trust_bundle: Vec<String>,
}

/// A document of a snapshot file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not YAML/JSON.
    #[error("line {line}: {message}")]
    Parse {
        /// File line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A document of a known kind with the wrong shape.
    #[error("line {line}: {kind} {name}: {message}")]
    Shape {
        /// File line.
        line: usize,
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

impl Snapshot {
    /// Read a snapshot from multi-document YAML: Namespaces, Services, Pods, TLS Secrets and
    /// the Trellis (or Istio) kinds. Other kinds are ignored.
    pub fn from_yaml(text: &str) -> Result<Snapshot, SnapshotError> {
        let mut s = Snapshot::default();
        for doc in parse_documents(text) {
            let value = doc.content.map_err(|e| SnapshotError::Parse {
                line: e.line,
                message: e.message,
            })?;
            s.add(&value).map_err(|(kind, name, message)| SnapshotError::Shape {
                line: doc.line,
                kind,
                name,
                message,
            })?;
        }
        Ok(s)
    }

    /// Add one object; returns (kind, name, why) when its shape is wrong.
    pub fn add(&mut self, value: &Value) -> Result<(), (String, String, String)> {
        let api = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let err = |e: serde_json::Error| (kind.to_string(), name.clone(), e.to_string());
        match classify(api, kind) {
            Classification::Trellis(k) | Classification::Istio { kind: k, .. } => {
                let mut v = value.clone();
                v["apiVersion"] = Value::String(k.api_version());
                default_namespace(&mut v, k.namespaced());
                match k {
                    Kind::VirtualService => self.virtual_services.push(parse(v).map_err(err)?),
                    Kind::DestinationRule => self.destination_rules.push(parse(v).map_err(err)?),
                    Kind::Gateway => self.gateways.push(parse(v).map_err(err)?),
                    Kind::PeerAuthentication => self.peer_authentications.push(parse(v).map_err(err)?),
                    Kind::AuthorizationPolicy => self.authorization_policies.push(parse(v).map_err(err)?),
                    Kind::Mesh => {
                        let m: trellis_api::mesh::Mesh = parse(v).map_err(err)?;
                        if m.metadata.name.as_deref() == Some("default") {
                            self.mesh = m.spec;
                        }
                    }
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

/// A `tls.crt`/`tls.key` Secret as a gateway credential.
pub fn tls_credential(secret: &Secret) -> Option<TlsCredential> {
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
    })
}
