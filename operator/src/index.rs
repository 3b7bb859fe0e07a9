//! The live index: kube-runtime watchers over the kinds of [`InputKind::ALL`] (Namespaces,
//! Services, Pods, EndpointSlices, TLS Secrets and the Trellis kinds), folded into the same [`Snapshot`] the
//! compiler reads from YAML or from a cluster's listed objects.
//!
//! [`Index`] is plain data updated by [`Index::apply`]; [`run`] is the I/O edge that feeds it
//! from watch streams and announces every change on a `tokio::sync::watch` channel (the push
//! server debounces and recompiles from it). A new Service or Pod is picked up with no
//! configuration — the seeds' "service registry". The key sets of RequestAuthentications'
//! `jwksUri`s are not watched but fetched ([`crate::jwks`]), and set here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use trellis_api::document::Kind;
use trellis_api::mesh::{MESH_NAME, Mesh, MeshSpec};
use trellis_api::networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService};
use trellis_api::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

use trellis_manifests::sidecar::{ProxyRole, proxy_in};

use crate::metrics::Metrics;
use crate::registry::{EndpointSlice, ObjectKey, Service, Workload};
use crate::settings::{Defaults, Invalid, check};
use crate::snapshot::{FetchedJwks, InputKind, Snapshot, tls_credential};

/// Every watched object, keyed by kind and namespace/name.
#[derive(Debug, Clone, Default)]
pub struct Index {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    services: BTreeMap<ObjectKey, Service>,
    workloads: BTreeMap<ObjectKey, Workload>,
    /// The pods of `workloads` that run a Trellis proxy, with its role ([`proxy_in`]).
    proxies: BTreeMap<ObjectKey, ProxyRole>,
    /// EndpointSlices by their own key.
    endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    credentials: BTreeMap<ObjectKey, crate::registry::TlsCredential>,
    virtual_services: BTreeMap<ObjectKey, VirtualService>,
    destination_rules: BTreeMap<ObjectKey, DestinationRule>,
    gateways: BTreeMap<ObjectKey, Gateway>,
    service_entries: BTreeMap<ObjectKey, ServiceEntry>,
    sidecars: BTreeMap<ObjectKey, Sidecar>,
    peer_authentications: BTreeMap<ObjectKey, PeerAuthentication>,
    authorization_policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    request_authentications: BTreeMap<ObjectKey, RequestAuthentication>,
    /// The spec of the Mesh `default` in force: its last valid one (see [`Index::mesh`]).
    mesh: Option<MeshSpec>,
    /// Why the Mesh `default` as written now is not in force, if the validator refuses it.
    mesh_refused: Option<Invalid>,
    /// The Mesh status' previous trust domains ([`Snapshot::previous_trust_domains`]).
    previous_trust_domains: Vec<String>,
    /// The key sets fetched for `jwksUri`s ([`crate::jwks`]).
    jwks: BTreeMap<String, FetchedJwks>,
    /// The `jwksUri`s whose last refresh failed while their last good keys are in use.
    jwks_stale: BTreeMap<String, String>,
    /// Kinds whose first list completed.
    listed: BTreeSet<InputKind>,
    /// Bumped on every change.
    generation: u64,
    /// The root namespace snapshots name (the operator's own; none: the snapshot's default).
    root_namespace: Option<String>,
    /// The trust domain while no valid Mesh is in force (the operator's flag; none:
    /// `cluster.local`).
    absent_trust_domain: Option<String>,
}

/// One change to the index.
#[derive(Debug, Clone)]
pub enum Change {
    /// An object was created or updated.
    Applied(Object),
    /// An object was deleted.
    Deleted(Object),
    /// A re-list of one kind finished: objects of that kind not seen since it began are gone.
    Relisted {
        /// The kind.
        kind: InputKind,
        /// The keys the re-list returned.
        seen: BTreeSet<ObjectKey>,
    },
}

/// A watched object.
#[derive(Debug, Clone)]
pub enum Object {
    /// Namespace.
    Namespace(Box<Namespace>),
    /// Service.
    Service(Box<K8sService>),
    /// Pod.
    Pod(Box<Pod>),
    /// EndpointSlice.
    EndpointSlice(Box<K8sEndpointSlice>),
    /// Secret.
    Secret(Box<Secret>),
    /// VirtualService.
    VirtualService(Box<VirtualService>),
    /// DestinationRule.
    DestinationRule(Box<DestinationRule>),
    /// Gateway.
    Gateway(Box<Gateway>),
    /// ServiceEntry.
    ServiceEntry(Box<ServiceEntry>),
    /// Sidecar.
    Sidecar(Box<Sidecar>),
    /// PeerAuthentication.
    PeerAuthentication(Box<PeerAuthentication>),
    /// AuthorizationPolicy.
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    /// RequestAuthentication.
    RequestAuthentication(Box<RequestAuthentication>),
    /// Mesh.
    Mesh(Box<Mesh>),
}

fn key_of<K: Resource>(o: &K) -> ObjectKey {
    ObjectKey::new(
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

impl Object {
    fn kind(&self) -> InputKind {
        match self {
            Object::Namespace(_) => InputKind::Namespace,
            Object::Service(_) => InputKind::Service,
            Object::Pod(_) => InputKind::Pod,
            Object::EndpointSlice(_) => InputKind::EndpointSlice,
            Object::Secret(_) => InputKind::Secret,
            Object::VirtualService(_) => InputKind::Trellis(Kind::VirtualService),
            Object::DestinationRule(_) => InputKind::Trellis(Kind::DestinationRule),
            Object::Gateway(_) => InputKind::Trellis(Kind::Gateway),
            Object::ServiceEntry(_) => InputKind::Trellis(Kind::ServiceEntry),
            Object::Sidecar(_) => InputKind::Trellis(Kind::Sidecar),
            Object::PeerAuthentication(_) => InputKind::Trellis(Kind::PeerAuthentication),
            Object::AuthorizationPolicy(_) => InputKind::Trellis(Kind::AuthorizationPolicy),
            Object::RequestAuthentication(_) => InputKind::Trellis(Kind::RequestAuthentication),
            Object::Mesh(_) => InputKind::Trellis(Kind::Mesh),
        }
    }

    fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(o) => key_of(o.as_ref()),
            Object::Service(o) => key_of(o.as_ref()),
            Object::Pod(o) => key_of(o.as_ref()),
            Object::EndpointSlice(o) => key_of(o.as_ref()),
            Object::Secret(o) => key_of(o.as_ref()),
            Object::VirtualService(o) => key_of(o.as_ref()),
            Object::DestinationRule(o) => key_of(o.as_ref()),
            Object::Gateway(o) => key_of(o.as_ref()),
            Object::ServiceEntry(o) => key_of(o.as_ref()),
            Object::Sidecar(o) => key_of(o.as_ref()),
            Object::PeerAuthentication(o) => key_of(o.as_ref()),
            Object::AuthorizationPolicy(o) => key_of(o.as_ref()),
            Object::RequestAuthentication(o) => key_of(o.as_ref()),
            Object::Mesh(o) => key_of(o.as_ref()),
        }
    }
}

impl Index {
    /// How many changes the index has taken.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the first list of every kind completed: until then the index is a partial view
    /// of the cluster, and configurations compiled from it would drop routes, policies or
    /// endpoints that merely have not arrived yet.
    pub fn synced(&self) -> bool {
        self.unlisted().is_empty()
    }

    /// The kinds whose first list has not completed yet.
    pub fn unlisted(&self) -> Vec<InputKind> {
        InputKind::ALL
            .into_iter()
            .filter(|k| !self.listed.contains(k))
            .collect()
    }

    /// The pods of `namespace` (the operator finds its peer replicas this way).
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a crate::registry::Workload> + 'a {
        self.workloads.values().filter(move |w| w.key.namespace == namespace)
    }

    /// The namespaces the index knows.
    pub fn namespaces(&self) -> impl Iterator<Item = &String> {
        self.namespaces.keys()
    }

    /// The labels of namespace `name`, if the index has seen it.
    pub fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(name)
    }

    /// Whether pod `namespace/name` exists (and has not finished or begun terminating).
    pub fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.workloads.contains_key(&ObjectKey::new(namespace, name))
    }

    /// The pods whose Trellis proxy runs configured: those running one — an injected sidecar, or
    /// a gateway's own container (the ingress and egress gateways the install and the
    /// operator's profiles deploy), as [`proxy_in`] tells them, the roles the push API reads —
    /// that are Ready (a proxy's readiness probe passes once it holds a configuration and a
    /// certificate, and a pod is Ready only once every container is). Each by its
    /// `namespace/name`, the key its proxy subscribes under whatever its role (its Hello names
    /// its pod, `POD_NAMESPACE` and `POD_NAME`).
    pub fn ready_proxies(&self) -> impl Iterator<Item = &ObjectKey> {
        self.proxies
            .keys()
            .filter(|key| self.workloads.get(*key).is_some_and(|w| w.ready))
    }

    /// Whether Gateway `namespace/name` exists.
    pub fn has_gateway(&self, namespace: &str, name: &str) -> bool {
        self.gateways.contains_key(&ObjectKey::new(namespace, name))
    }

    /// The spec of the Mesh named `default` in force: the last one the validator accepted
    /// ([`crate::settings::check`]); `None` while there is no Mesh or none valid yet. A
    /// Mesh refused whole changes nothing here, so the settings every replica follows
    /// ([`crate::index::settings::follow`]) and the compiler's snapshot ([`Index::snapshot`])
    /// read the same trust domain, aliases, mTLS mode and outbound policy.
    pub fn mesh(&self) -> Option<&MeshSpec> {
        self.mesh.as_ref()
    }

    /// Why the Mesh `default` as written is not in force, if the validator refuses it.
    pub fn mesh_refused(&self) -> Option<&Invalid> {
        self.mesh_refused.as_ref()
    }

    /// The spec the compiler reads: the Mesh's in force, or, with none, the defaults in the
    /// operator's trust domain (as [`crate::settings::Settings::defaults`]).
    fn spec_in_force(&self) -> MeshSpec {
        self.mesh.clone().unwrap_or_else(|| MeshSpec {
            trust_domain: self.absent_trust_domain.clone(),
            ..MeshSpec::default()
        })
    }

    /// How many Services and Pods the registry holds.
    pub fn counts(&self) -> (usize, usize) {
        (self.services.len(), self.workloads.len())
    }

    /// The RequestAuthentications (their `jwksUri`s are fetched).
    pub fn request_authentications(&self) -> impl Iterator<Item = &RequestAuthentication> {
        self.request_authentications.values()
    }

    /// Replace the key sets fetched for `jwksUri`s and the refresh failures (see
    /// [`crate::jwks`]). Returns whether anything changed: only then is the generation bumped
    /// (and the caller announces it).
    pub fn set_key_sets(&mut self, jwks: BTreeMap<String, FetchedJwks>, stale: BTreeMap<String, String>) -> bool {
        if self.jwks == jwks && self.jwks_stale == stale {
            return false;
        }
        self.jwks = jwks;
        self.jwks_stale = stale;
        self.generation += 1;
        true
    }

    /// Apply one change.
    pub fn apply(&mut self, change: Change) {
        self.generation += 1;
        match change {
            Change::Applied(o) => self.upsert(o),
            Change::Deleted(o) => self.remove(o.kind(), &o.key()),
            Change::Relisted { kind, seen } => {
                self.listed.insert(kind);
                for key in self.keys(kind) {
                    if !seen.contains(&key) {
                        self.remove(kind, &key);
                    }
                }
            }
        }
    }

    fn upsert(&mut self, o: Object) {
        let key = o.key();
        match o {
            Object::Namespace(n) => {
                self.namespaces.insert(key.name, n.metadata.labels.unwrap_or_default());
            }
            Object::Service(s) => match Service::from_k8s(&s) {
                Some(svc) => {
                    self.services.insert(key, svc);
                }
                None => {
                    self.services.remove(&key);
                }
            },
            Object::Pod(p) => match Workload::from_pod(&p) {
                Some(w) => {
                    match p.spec.as_ref().and_then(proxy_in) {
                        Some((role, _)) => self.proxies.insert(key.clone(), role),
                        None => self.proxies.remove(&key),
                    };
                    self.workloads.insert(key, w);
                }
                None => {
                    self.workloads.remove(&key);
                    self.proxies.remove(&key);
                }
            },
            Object::EndpointSlice(s) => match EndpointSlice::from_k8s(&s) {
                Some(slice) => {
                    self.endpoint_slices.insert(key, slice);
                }
                None => {
                    self.endpoint_slices.remove(&key);
                }
            },
            Object::Secret(s) => match tls_credential(&s) {
                Some(c) => {
                    self.credentials.insert(key, c);
                }
                None => {
                    self.credentials.remove(&key);
                }
            },
            Object::VirtualService(o) => {
                self.virtual_services.insert(key, *o);
            }
            Object::DestinationRule(o) => {
                self.destination_rules.insert(key, *o);
            }
            Object::ServiceEntry(o) => {
                self.service_entries.insert(key, *o);
            }
            Object::Sidecar(o) => {
                self.sidecars.insert(key, *o);
            }
            Object::Gateway(o) => {
                self.gateways.insert(key, *o);
            }
            Object::PeerAuthentication(o) => {
                self.peer_authentications.insert(key, *o);
            }
            Object::AuthorizationPolicy(o) => {
                self.authorization_policies.insert(key, *o);
            }
            Object::RequestAuthentication(o) => {
                self.request_authentications.insert(key, *o);
            }
            Object::Mesh(m) => {
                if key.name == MESH_NAME {
                    match check(&m) {
                        Ok(()) => {
                            self.mesh = Some(m.spec.clone());
                            self.mesh_refused = None;
                        }
                        Err(invalid) => self.mesh_refused = Some(invalid),
                    }
                    // Relative to the domain in force: the one certificates are issued in.
                    let spec = self.spec_in_force();
                    self.previous_trust_domains =
                        m.status.map(|st| st.previous_trust_domains(&spec)).unwrap_or_default();
                }
            }
        }
    }

    /// The keys of the objects of one kind (what a watcher's re-list is compared with).
    pub fn keys(&self, kind: InputKind) -> Vec<ObjectKey> {
        fn ks<V>(m: &BTreeMap<ObjectKey, V>) -> Vec<ObjectKey> {
            m.keys().cloned().collect()
        }
        match kind {
            InputKind::Namespace => self.namespaces.keys().map(|n| ObjectKey::new("", n.clone())).collect(),
            InputKind::Service => ks(&self.services),
            InputKind::Pod => ks(&self.workloads),
            InputKind::EndpointSlice => ks(&self.endpoint_slices),
            InputKind::Secret => ks(&self.credentials),
            InputKind::Trellis(Kind::VirtualService) => ks(&self.virtual_services),
            InputKind::Trellis(Kind::DestinationRule) => ks(&self.destination_rules),
            InputKind::Trellis(Kind::Gateway) => ks(&self.gateways),
            InputKind::Trellis(Kind::ServiceEntry) => ks(&self.service_entries),
            InputKind::Trellis(Kind::Sidecar) => ks(&self.sidecars),
            InputKind::Trellis(Kind::PeerAuthentication) => ks(&self.peer_authentications),
            InputKind::Trellis(Kind::AuthorizationPolicy) => ks(&self.authorization_policies),
            InputKind::Trellis(Kind::RequestAuthentication) => ks(&self.request_authentications),
            InputKind::Trellis(Kind::Mesh) => (self.mesh.is_some() || self.mesh_refused.is_some())
                .then(|| ObjectKey::new("", MESH_NAME))
                .into_iter()
                .collect(),
        }
    }

    fn remove(&mut self, kind: InputKind, key: &ObjectKey) {
        match kind {
            InputKind::Namespace => {
                self.namespaces.remove(&key.name);
            }
            InputKind::Service => {
                self.services.remove(key);
            }
            InputKind::Pod => {
                self.workloads.remove(key);
                self.proxies.remove(key);
            }
            InputKind::EndpointSlice => {
                self.endpoint_slices.remove(key);
            }
            InputKind::Secret => {
                self.credentials.remove(key);
            }
            InputKind::Trellis(Kind::VirtualService) => {
                self.virtual_services.remove(key);
            }
            InputKind::Trellis(Kind::DestinationRule) => {
                self.destination_rules.remove(key);
            }
            InputKind::Trellis(Kind::ServiceEntry) => {
                self.service_entries.remove(key);
            }
            InputKind::Trellis(Kind::Sidecar) => {
                self.sidecars.remove(key);
            }
            InputKind::Trellis(Kind::Gateway) => {
                self.gateways.remove(key);
            }
            InputKind::Trellis(Kind::PeerAuthentication) => {
                self.peer_authentications.remove(key);
            }
            InputKind::Trellis(Kind::AuthorizationPolicy) => {
                self.authorization_policies.remove(key);
            }
            InputKind::Trellis(Kind::RequestAuthentication) => {
                self.request_authentications.remove(key);
            }
            InputKind::Trellis(Kind::Mesh) => {
                if key.name == MESH_NAME {
                    self.mesh = None;
                    self.mesh_refused = None;
                    self.previous_trust_domains.clear();
                }
            }
        }
    }

    /// An empty index for an operator with `defaults`: its snapshots name the operator's
    /// namespace the root namespace (where mesh-wide policies live), and its trust domain flag
    /// the trust domain while no valid Mesh is in force.
    pub fn for_operator(defaults: &Defaults) -> Self {
        Index {
            root_namespace: Some(defaults.namespace.clone()),
            absent_trust_domain: Some(defaults.trust_domain.clone()),
            ..Index::default()
        }
    }

    /// The trust domains the Mesh's status says proxies may still serve certificates in,
    /// other than its spec's ([`trellis_api::mesh::MeshStatus::previous_trust_domains`]).
    pub fn previous_trust_domains(&self) -> &[String] {
        &self.previous_trust_domains
    }

    /// The compiler's view of the index.
    pub fn snapshot(&self) -> Snapshot {
        let defaults = Snapshot::default();
        let mut registry = crate::registry::Registry {
            namespaces: self.namespaces.clone(),
            services: self.services.clone(),
            workloads: self.workloads.clone(),
            credentials: self.credentials.clone(),
            endpoint_slices: BTreeMap::new(),
        };
        for slice in self.endpoint_slices.values() {
            registry.insert_slice(slice.clone());
        }
        Snapshot {
            registry,
            virtual_services: self.virtual_services.values().cloned().collect(),
            destination_rules: self.destination_rules.values().cloned().collect(),
            gateways: self.gateways.values().cloned().collect(),
            service_entries: self.service_entries.values().cloned().collect(),
            sidecars: self.sidecars.values().cloned().collect(),
            peer_authentications: self.peer_authentications.values().cloned().collect(),
            authorization_policies: self.authorization_policies.values().cloned().collect(),
            request_authentications: self.request_authentications.values().cloned().collect(),
            mesh: self.spec_in_force(),
            previous_trust_domains: self.previous_trust_domains.clone(),
            trust_bundle: Vec::new(),
            jwks: self.jwks.clone(),
            jwks_stale: self.jwks_stale.clone(),
            root_namespace: self.root_namespace.clone().unwrap_or(defaults.root_namespace),
        }
    }
}

/// The shared index and the channel announcing its generation after each change.
pub type Shared = Arc<RwLock<Index>>;

/// Watch every indexed kind cluster-wide and keep `index` current until the client fails
/// for good. Each change bumps the generation announced on `changed`.
///
/// # Caveats
/// Watch errors are retried with kube-runtime's default backoff; a kind whose CRD is not
/// installed yet is retried until it is.
pub async fn run(client: Client, index: Shared, changed: tokio::sync::watch::Sender<u64>, metrics: Arc<Metrics>) {
    tokio::join!(
        watch_kind::<Namespace>(client.clone(), &index, &changed, &metrics, InputKind::Namespace, |o| {
            Object::Namespace(Box::new(o))
        }),
        watch_kind::<K8sService>(client.clone(), &index, &changed, &metrics, InputKind::Service, |o| {
            Object::Service(Box::new(o))
        }),
        watch_kind::<Pod>(client.clone(), &index, &changed, &metrics, InputKind::Pod, |o| {
            Object::Pod(Box::new(o))
        }),
        watch_kind::<K8sEndpointSlice>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::EndpointSlice,
            |o| Object::EndpointSlice(Box::new(o))
        ),
        watch_kind::<Secret>(client.clone(), &index, &changed, &metrics, InputKind::Secret, |o| {
            Object::Secret(Box::new(o))
        }),
        watch_kind::<VirtualService>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::Trellis(Kind::VirtualService),
            |o| Object::VirtualService(Box::new(o))
        ),
        watch_kind::<DestinationRule>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::Trellis(Kind::DestinationRule),
            |o| Object::DestinationRule(Box::new(o))
        ),
        watch_kind::<Gateway>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::Trellis(Kind::Gateway),
            |o| Object::Gateway(Box::new(o))
        ),
        watch_kind::<ServiceEntry>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::Trellis(Kind::ServiceEntry),
            |o| Object::ServiceEntry(Box::new(o))
        ),
        watch_kind::<Sidecar>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::Trellis(Kind::Sidecar),
            |o| Object::Sidecar(Box::new(o))
        ),
        watch_kind::<PeerAuthentication>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::Trellis(Kind::PeerAuthentication),
            |o| Object::PeerAuthentication(Box::new(o))
        ),
        watch_kind::<AuthorizationPolicy>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::Trellis(Kind::AuthorizationPolicy),
            |o| Object::AuthorizationPolicy(Box::new(o))
        ),
        watch_kind::<RequestAuthentication>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::Trellis(Kind::RequestAuthentication),
            |o| Object::RequestAuthentication(Box::new(o))
        ),
        watch_kind::<Mesh>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            InputKind::Trellis(Kind::Mesh),
            |o| Object::Mesh(Box::new(o))
        ),
    );
}

async fn watch_kind<K>(
    client: Client,
    index: &Shared,
    changed: &tokio::sync::watch::Sender<u64>,
    metrics: &Metrics,
    kind: InputKind,
    wrap: fn(K) -> Object,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    use kube::runtime::WatchStreamExt;
    let api: Api<K> = Api::all(client);
    let config = match kind.field_selector() {
        Some(selector) => watcher::Config::default().fields(&selector),
        None => watcher::Config::default(),
    };
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut relist: Option<BTreeSet<ObjectKey>> = None;
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Apply(o)) => Some(Change::Applied(wrap(o))),
            Ok(Event::Delete(o)) => Some(Change::Deleted(wrap(o))),
            Ok(Event::Init) => {
                relist = Some(BTreeSet::new());
                None
            }
            Ok(Event::InitApply(o)) => {
                if let Some(seen) = relist.as_mut() {
                    seen.insert(ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any()));
                }
                Some(Change::Applied(wrap(o)))
            }
            Ok(Event::InitDone) => relist.take().map(|seen| Change::Relisted { kind, seen }),
            Err(e) => {
                tracing::warn!(?kind, error = %e, "watch failed; retrying with backoff");
                None
            }
        };
        if let Some(change) = change {
            let started = std::time::Instant::now();
            let generation = {
                let mut idx = index.write().expect("index lock");
                idx.apply(change);
                idx.generation()
            };
            metrics.index_updates.inc();
            metrics.index_update_seconds.observe(started.elapsed());
            changed.send_replace(generation);
        }
    }
}

pub mod settings;

#[cfg(test)]
mod tests;
