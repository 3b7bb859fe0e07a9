//! The live index: kube-runtime watchers over Namespaces, Services, Pods, TLS Secrets and the
//! Trellis kinds, folded into the same [`Snapshot`] the compiler reads from YAML.
//!
//! [`Index`] is plain data updated by [`Index::apply`]; [`run`] is the I/O edge that feeds it
//! from watch streams and announces every change on a `tokio::sync::watch` channel (the push
//! server debounces and recompiles from it). A new Service or Pod is picked up with no
//! configuration — the seeds' "service registry".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service as K8sService};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use trellis_api::mesh::{Mesh, MeshSpec};
use trellis_api::networking::{DestinationRule, Gateway, VirtualService};
use trellis_api::security::{AuthorizationPolicy, PeerAuthentication};

use crate::metrics::Metrics;
use crate::registry::{ObjectKey, Service, Workload};
use crate::snapshot::{Snapshot, tls_credential};

/// Every watched object, keyed by kind and namespace/name.
#[derive(Debug, Clone, Default)]
pub struct Index {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    services: BTreeMap<ObjectKey, Service>,
    workloads: BTreeMap<ObjectKey, Workload>,
    credentials: BTreeMap<ObjectKey, crate::registry::TlsCredential>,
    virtual_services: BTreeMap<ObjectKey, VirtualService>,
    destination_rules: BTreeMap<ObjectKey, DestinationRule>,
    gateways: BTreeMap<ObjectKey, Gateway>,
    peer_authentications: BTreeMap<ObjectKey, PeerAuthentication>,
    authorization_policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    mesh: Option<MeshSpec>,
    /// Kinds whose first list completed.
    listed: BTreeSet<IndexedKind>,
    /// Bumped on every change.
    generation: u64,
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
        kind: IndexedKind,
        /// The keys the re-list returned.
        seen: BTreeSet<ObjectKey>,
    },
}

/// The kinds the index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexedKind {
    /// Namespace.
    Namespace,
    /// Service.
    Service,
    /// Pod.
    Pod,
    /// TLS Secret.
    Secret,
    /// VirtualService.
    VirtualService,
    /// DestinationRule.
    DestinationRule,
    /// Gateway.
    Gateway,
    /// PeerAuthentication.
    PeerAuthentication,
    /// AuthorizationPolicy.
    AuthorizationPolicy,
    /// Mesh.
    Mesh,
}

impl IndexedKind {
    /// Every kind, in the order the index lists them.
    pub const ALL: [IndexedKind; 10] = [
        IndexedKind::Namespace,
        IndexedKind::Service,
        IndexedKind::Pod,
        IndexedKind::Secret,
        IndexedKind::VirtualService,
        IndexedKind::DestinationRule,
        IndexedKind::Gateway,
        IndexedKind::PeerAuthentication,
        IndexedKind::AuthorizationPolicy,
        IndexedKind::Mesh,
    ];
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
    /// Secret.
    Secret(Box<Secret>),
    /// VirtualService.
    VirtualService(Box<VirtualService>),
    /// DestinationRule.
    DestinationRule(Box<DestinationRule>),
    /// Gateway.
    Gateway(Box<Gateway>),
    /// PeerAuthentication.
    PeerAuthentication(Box<PeerAuthentication>),
    /// AuthorizationPolicy.
    AuthorizationPolicy(Box<AuthorizationPolicy>),
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
    fn kind(&self) -> IndexedKind {
        match self {
            Object::Namespace(_) => IndexedKind::Namespace,
            Object::Service(_) => IndexedKind::Service,
            Object::Pod(_) => IndexedKind::Pod,
            Object::Secret(_) => IndexedKind::Secret,
            Object::VirtualService(_) => IndexedKind::VirtualService,
            Object::DestinationRule(_) => IndexedKind::DestinationRule,
            Object::Gateway(_) => IndexedKind::Gateway,
            Object::PeerAuthentication(_) => IndexedKind::PeerAuthentication,
            Object::AuthorizationPolicy(_) => IndexedKind::AuthorizationPolicy,
            Object::Mesh(_) => IndexedKind::Mesh,
        }
    }

    fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(o) => key_of(o.as_ref()),
            Object::Service(o) => key_of(o.as_ref()),
            Object::Pod(o) => key_of(o.as_ref()),
            Object::Secret(o) => key_of(o.as_ref()),
            Object::VirtualService(o) => key_of(o.as_ref()),
            Object::DestinationRule(o) => key_of(o.as_ref()),
            Object::Gateway(o) => key_of(o.as_ref()),
            Object::PeerAuthentication(o) => key_of(o.as_ref()),
            Object::AuthorizationPolicy(o) => key_of(o.as_ref()),
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
    pub fn unlisted(&self) -> Vec<IndexedKind> {
        IndexedKind::ALL
            .into_iter()
            .filter(|k| !self.listed.contains(k))
            .collect()
    }

    /// The namespaces known to the index.
    pub fn namespaces(&self) -> impl Iterator<Item = &String> {
        self.namespaces.keys()
    }

    /// How many Services and Pods the registry holds.
    pub fn counts(&self) -> (usize, usize) {
        (self.services.len(), self.workloads.len())
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
                    self.workloads.insert(key, w);
                }
                None => {
                    self.workloads.remove(&key);
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
            Object::Gateway(o) => {
                self.gateways.insert(key, *o);
            }
            Object::PeerAuthentication(o) => {
                self.peer_authentications.insert(key, *o);
            }
            Object::AuthorizationPolicy(o) => {
                self.authorization_policies.insert(key, *o);
            }
            Object::Mesh(m) => {
                if key.name == "default" {
                    self.mesh = Some(m.spec);
                }
            }
        }
    }

    /// The keys of the objects of one kind (what a watcher's re-list is compared with).
    pub fn keys(&self, kind: IndexedKind) -> Vec<ObjectKey> {
        fn ks<V>(m: &BTreeMap<ObjectKey, V>) -> Vec<ObjectKey> {
            m.keys().cloned().collect()
        }
        match kind {
            IndexedKind::Namespace => self.namespaces.keys().map(|n| ObjectKey::new("", n.clone())).collect(),
            IndexedKind::Service => ks(&self.services),
            IndexedKind::Pod => ks(&self.workloads),
            IndexedKind::Secret => ks(&self.credentials),
            IndexedKind::VirtualService => ks(&self.virtual_services),
            IndexedKind::DestinationRule => ks(&self.destination_rules),
            IndexedKind::Gateway => ks(&self.gateways),
            IndexedKind::PeerAuthentication => ks(&self.peer_authentications),
            IndexedKind::AuthorizationPolicy => ks(&self.authorization_policies),
            IndexedKind::Mesh => self.mesh.iter().map(|_| ObjectKey::new("", "default")).collect(),
        }
    }

    fn remove(&mut self, kind: IndexedKind, key: &ObjectKey) {
        match kind {
            IndexedKind::Namespace => {
                self.namespaces.remove(&key.name);
            }
            IndexedKind::Service => {
                self.services.remove(key);
            }
            IndexedKind::Pod => {
                self.workloads.remove(key);
            }
            IndexedKind::Secret => {
                self.credentials.remove(key);
            }
            IndexedKind::VirtualService => {
                self.virtual_services.remove(key);
            }
            IndexedKind::DestinationRule => {
                self.destination_rules.remove(key);
            }
            IndexedKind::Gateway => {
                self.gateways.remove(key);
            }
            IndexedKind::PeerAuthentication => {
                self.peer_authentications.remove(key);
            }
            IndexedKind::AuthorizationPolicy => {
                self.authorization_policies.remove(key);
            }
            IndexedKind::Mesh => {
                if key.name == "default" {
                    self.mesh = None;
                }
            }
        }
    }

    /// The compiler's view of the index.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            registry: crate::registry::Registry {
                namespaces: self.namespaces.clone(),
                services: self.services.clone(),
                workloads: self.workloads.clone(),
                credentials: self.credentials.clone(),
            },
            virtual_services: self.virtual_services.values().cloned().collect(),
            destination_rules: self.destination_rules.values().cloned().collect(),
            gateways: self.gateways.values().cloned().collect(),
            peer_authentications: self.peer_authentications.values().cloned().collect(),
            authorization_policies: self.authorization_policies.values().cloned().collect(),
            mesh: self.mesh.clone().unwrap_or_default(),
            trust_bundle: Vec::new(),
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
    let tls_secrets = watcher::Config::default().fields("type=kubernetes.io/tls");
    tokio::join!(
        watch_kind::<Namespace>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            watcher::Config::default(),
            IndexedKind::Namespace,
            |o| Object::Namespace(Box::new(o))
        ),
        watch_kind::<K8sService>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            watcher::Config::default(),
            IndexedKind::Service,
            |o| Object::Service(Box::new(o))
        ),
        watch_kind::<Pod>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            watcher::Config::default(),
            IndexedKind::Pod,
            |o| Object::Pod(Box::new(o))
        ),
        watch_kind::<Secret>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            tls_secrets,
            IndexedKind::Secret,
            |o| Object::Secret(Box::new(o))
        ),
        watch_kind::<VirtualService>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            watcher::Config::default(),
            IndexedKind::VirtualService,
            |o| Object::VirtualService(Box::new(o))
        ),
        watch_kind::<DestinationRule>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            watcher::Config::default(),
            IndexedKind::DestinationRule,
            |o| Object::DestinationRule(Box::new(o))
        ),
        watch_kind::<Gateway>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            watcher::Config::default(),
            IndexedKind::Gateway,
            |o| Object::Gateway(Box::new(o))
        ),
        watch_kind::<PeerAuthentication>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            watcher::Config::default(),
            IndexedKind::PeerAuthentication,
            |o| Object::PeerAuthentication(Box::new(o))
        ),
        watch_kind::<AuthorizationPolicy>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            watcher::Config::default(),
            IndexedKind::AuthorizationPolicy,
            |o| Object::AuthorizationPolicy(Box::new(o))
        ),
        watch_kind::<Mesh>(
            client.clone(),
            &index,
            &changed,
            &metrics,
            watcher::Config::default(),
            IndexedKind::Mesh,
            |o| Object::Mesh(Box::new(o))
        ),
    );
}

async fn watch_kind<K>(
    client: Client,
    index: &Shared,
    changed: &tokio::sync::watch::Sender<u64>,
    metrics: &Metrics,
    config: watcher::Config,
    kind: IndexedKind,
    wrap: fn(K) -> Object,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    use kube::runtime::WatchStreamExt;
    let api: Api<K> = Api::all(client);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> K8sService {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.9", "selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap()
    }

    #[test]
    fn applies_deletes_and_relists() {
        let mut idx = Index::default();
        idx.apply(Change::Applied(Object::Service(Box::new(svc("a")))));
        idx.apply(Change::Applied(Object::Service(Box::new(svc("b")))));
        assert_eq!(idx.snapshot().registry.services.len(), 2);
        idx.apply(Change::Deleted(Object::Service(Box::new(svc("a")))));
        assert_eq!(idx.snapshot().registry.services.len(), 1);
        idx.apply(Change::Applied(Object::Service(Box::new(svc("c")))));
        // A re-list that saw only c: b was deleted while the watch was down.
        idx.apply(Change::Relisted {
            kind: IndexedKind::Service,
            seen: BTreeSet::from([ObjectKey::new("shop", "c")]),
        });
        let names: Vec<String> = idx
            .snapshot()
            .registry
            .services
            .keys()
            .map(|k| k.name.clone())
            .collect();
        assert_eq!(names, ["c"]);
        assert_eq!(idx.generation(), 5);
    }

    #[test]
    fn synced_once_every_kind_was_listed() {
        let mut idx = Index::default();
        idx.apply(Change::Applied(Object::Service(Box::new(svc("a")))));
        assert!(!idx.synced());
        for kind in IndexedKind::ALL {
            assert!(!idx.synced(), "{kind:?} and later not listed yet");
            let seen = idx.keys(kind).into_iter().collect();
            idx.apply(Change::Relisted { kind, seen });
        }
        assert!(idx.synced() && idx.unlisted().is_empty());
        // A later re-list (a watch restarted) keeps it synced.
        idx.apply(Change::Relisted {
            kind: IndexedKind::Service,
            seen: BTreeSet::new(),
        });
        assert!(idx.synced());
    }
}
