//! Config push: the gRPC `ConfigPush` service proxies subscribe to.
//!
//! Each subscription compiles its proxy's configuration from the current snapshot, sends it,
//! and sends it again whenever it changes. Versions are content hashes, so a change that does
//! not affect a proxy produces the same version and is not pushed to it; changes are debounced.
//! Work is shared (see `build` and [`render`]): per change, the parts a change did not touch
//! are reused, and a proxy that holds a version this operator knows is sent a delta against it
//! instead of its whole configuration. The proxy ACKs or NACKs every version; the per-proxy sync state
//! (sent, acked, nacked with the error, last seen, and the workload certificate the proxy
//! reports serving) is kept for the admin API while the proxy is subscribed.
//!
//! # Guarantees
//! - A proxy never receives a snapshot it already has (same version), including after a
//!   reconnect that announces its current version.
//! - One version in flight per proxy: the next is computed once the proxy answered, against
//!   what it then holds; a delta is only sent to a proxy that said it accepts them, and only
//!   against the version it ACKed last; after a NACK the next version is sent whole.
//! - At most [`Options::full_in_flight`] whole configurations are in flight at once (each is
//!   megabytes at scale), which bounds the operator's memory when a fleet (re)connects; to
//!   proxies that accept chunks they go in messages of at most [`Options::chunk_bytes`]
//!   ([`CHUNK_BYTES`] by default), so no subscription's gRPC buffers grow to
//!   megabytes and stay so (tonic keeps a stream's buffer at its largest message).
//! - A proxy that NACKs keeps its last good config (the proxy's side); the operator records
//!   the error and does not resend the same version until the config changes. A proxy that
//!   ACKs the version later (it applied it again once what refused it passed: a port in use)
//!   is in sync: the NACK is cleared, and the next version is a delta against it.
//! - A replica that stops ([`PushService::shutdown`]) ends every subscription with a handover
//!   (`trellis_push::handover_status`): its proxies send the golden-signal reports it held
//!   again to the replica they subscribe to next, so no window of traffic is lost with it.
//! - A proxy's sync state lives as long as its subscription: it is dropped when the
//!   subscription ends (a deleted pod leaves nothing behind), unless the proxy has subscribed
//!   again meanwhile — each state belongs to the latest subscription, and an older one that
//!   ends or answers late changes nothing.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use trellis_manifests::sidecar::ProxyRole;
use trellis_push::v1::config_push_server::ConfigPush;
use trellis_push::{CHUNK_BYTES, ProxyMessage, Snapshot, proxy_message};

mod answers;
mod build;
pub mod render;
mod sync;
use self::build::Built;
pub use render::{OwnPart, Rendered, SharedDiffs, SharedOutbound};

use crate::ca::{Bundle, MeshRoots};
use crate::compile::Role;
use crate::metrics::Metrics;
use crate::registry::ObjectKey;
use crate::snapshot::Snapshot as MeshSnapshot;

/// Where subscriptions read the mesh from.
pub trait Source: Send + Sync + 'static {
    /// The current snapshot.
    fn snapshot(&self) -> MeshSnapshot;

    /// Whether the snapshot is the whole mesh yet; until then nothing is compiled or pushed
    /// (a proxy keeps what it has rather than get a config missing what has not arrived).
    fn synced(&self) -> Result<(), NotSynced> {
        Ok(())
    }
}

/// The mesh is not whole yet: these kinds have not been listed once.
#[derive(Debug, thiserror::Error)]
#[error("waiting for the first list of {unlisted:?}")]
pub struct NotSynced {
    /// The kinds not listed yet.
    pub unlisted: Vec<crate::snapshot::InputKind>,
}

impl Source for std::sync::RwLock<crate::index::Index> {
    fn snapshot(&self) -> MeshSnapshot {
        self.read().expect("index lock").snapshot()
    }

    fn synced(&self) -> Result<(), NotSynced> {
        let unlisted = self.read().expect("index lock").unlisted();
        if unlisted.is_empty() {
            Ok(())
        } else {
            Err(NotSynced { unlisted })
        }
    }
}

impl Source for std::sync::RwLock<MeshSnapshot> {
    fn snapshot(&self) -> MeshSnapshot {
        self.read().expect("snapshot lock").clone()
    }
}

/// The sync state of one proxy, as the admin API shows it (the type `meshctl analyze` reads
/// back, from the core).
pub use trellis_core::analysis::{Nacked, ProxySync};

/// How long a stopping replica waits to queue a subscription's handover status.
// why: the stream's channel holds one message; a proxy that does not read for a second is not
// worth holding the operator's shutdown for (its reports then stay with the stopping replica).
const HANDOVER_SEND: Duration = Duration::from_secs(1);

/// Tuning of the push server.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Quiet time after a change before compiling (batches bursts of changes).
    pub debounce: Duration,
    /// How long a new subscription may take to say Hello.
    pub hello_timeout: Duration,
    /// Whole configurations in flight (sent, not yet answered) at once, across proxies.
    pub full_in_flight: usize,
    /// Payload bytes per message to proxies that accept chunks.
    pub chunk_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        // why: 100 ms absorbs a `kubectl apply` of many objects while keeping convergence well
        // under the 1 s target.
        Options {
            debounce: Duration::from_millis(100),
            hello_timeout: Duration::from_secs(10),
            // why: a whole config is megabytes at 1000 services; 8 bound the memory of a fleet
            // reconnecting at once (~60 MiB) while keeping its initial sync to seconds.
            full_in_flight: 8,
            chunk_bytes: CHUNK_BYTES,
        }
    }
}

/// The push service.
#[derive(Clone)]
pub struct PushService {
    source: Arc<dyn Source>,
    changed: watch::Receiver<u64>,
    sync: Arc<sync::SyncStates>,
    options: Options,
    /// When set, subscriptions must present a workload certificate of the pod's identity (in
    /// the trust domain or one of its aliases).
    trust_domains: Option<crate::trust_domain::Source>,
    /// The snapshot of the last change, shared by every subscription (built once per change,
    /// not once per proxy).
    current: Arc<Mutex<Option<Arc<Built>>>>,
    /// The mesh roots' trust bundle, which goes into every config.
    bundle: Option<watch::Receiver<Bundle>>,
    /// Set when the operator stops: every subscription ends, so proxies reconnect elsewhere.
    stopping: Arc<watch::Sender<bool>>,
    /// Permits for whole configurations in flight ([`Options::full_in_flight`]).
    full_sends: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
    /// Where the proxies' golden-signal reports go (none: they are ignored).
    traffic: Option<Arc<crate::traffic::Traffic>>,
}

impl std::fmt::Debug for PushService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushService")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PushService {
    /// A service reading `source`, woken by `changed`.
    pub fn new(source: Arc<dyn Source>, changed: watch::Receiver<u64>, options: Options) -> Self {
        PushService {
            source,
            changed,
            sync: Arc::default(),
            options,
            trust_domains: None,
            current: Arc::default(),
            bundle: None,
            stopping: Arc::new(watch::Sender::new(false)),
            full_sends: Arc::new(tokio::sync::Semaphore::new(options.full_in_flight.max(1))),
            metrics: Arc::default(),
            traffic: None,
        }
    }

    /// Count the proxies' golden-signal reports into `traffic`.
    pub fn with_traffic(mut self, traffic: Arc<crate::traffic::Traffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    /// Count pushes, ACKs, NACKs and convergence in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics this service records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// End every subscription (the operator is stopping) with a handover
    /// ([`trellis_push::handover_status`]): proxies keep their configs, reconnect with backoff,
    /// and send the golden-signal reports this replica held again to the next.
    pub fn shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`PushService::shutdown`] was called: the push server's graceful
    /// shutdown signal, so the subscriptions' handover trailers reach the proxies.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    }

    /// Push the trust bundle of `roots` inline in every config (and again whenever it changes),
    /// and ask proxies to renew early while leaves are being reissued.
    pub fn with_roots(mut self, roots: Arc<MeshRoots>) -> Self {
        self.bundle = Some(roots.bundle());
        self
    }

    /// Require every subscription to present (over mTLS) the workload certificate of the pod
    /// it subscribes for, in the trust domain `trust_domains` names or one of its aliases (a
    /// proxy keeps its certificate of the previous domain until it renews).
    pub fn require_workload_identity(mut self, trust_domains: impl Into<crate::trust_domain::Source>) -> Self {
        self.trust_domains = Some(trust_domains.into());
        self
    }

    /// Check the client certificate against the pod's ServiceAccount.
    fn authenticate(
        &self,
        peer: Option<&[tonic::transport::CertificateDer<'static>]>,
        pod: &ObjectKey,
    ) -> Result<(), Status> {
        let Some(domains) = &self.trust_domains else {
            return Ok(());
        };
        let Some(leaf) = peer.and_then(|c| c.first()) else {
            return Err(Status::unauthenticated(
                "connect with the pod's workload certificate (obtain one with Certificates.Sign first)",
            ));
        };
        let presented = trellis_push::identity::spiffe_id_of(leaf.as_ref())
            .map_err(|e| Status::unauthenticated(format!("the client certificate has no SPIFFE ID: {e}")))?;
        let snapshot = self.snapshot();
        let Some(w) = snapshot.registry.workloads.get(pod) else {
            return Err(Status::not_found(format!(
                "pod {pod} is not known to the registry (yet); retry shortly"
            )));
        };
        let domains = domains.get();
        let expected = w.spiffe_id(domains.domain());
        if !domains.equivalent(&presented, &expected) {
            return Err(Status::permission_denied(format!(
                "the client certificate is {presented} but pod {pod} runs as {expected}"
            )));
        }
        Ok(())
    }

    /// The snapshot for the latest change and trust bundle.
    fn snapshot(&self) -> Arc<MeshSnapshot> {
        self.built().snapshot.clone()
    }

    /// What subscriptions share for the latest change and trust bundle.
    fn built(&self) -> Arc<Built> {
        let generation = *self.changed.borrow();
        let bundle = self.bundle.as_ref().map(|b| b.borrow().clone()).unwrap_or_default();
        let mut current = lock(&self.current);
        match current.as_ref() {
            Some(b) if b.generation == generation && b.bundle == bundle => b.clone(),
            _ => {
                let mut snap = self.source.snapshot();
                snap.trust_bundle = bundle.roots_pem.clone();
                let built = Arc::new(Built::after(current.take(), generation, bundle, snap));
                *current = Some(built.clone());
                built
            }
        }
    }

    /// Every subscribed proxy's sync state, sorted by proxy.
    pub fn sync_state(&self) -> Vec<ProxySync> {
        self.sync.states()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigPush for PushService {
    type SubscribeStream = SnapshotStream;

    async fn subscribe(&self, request: Request<Streaming<ProxyMessage>>) -> Result<Response<SnapshotStream>, Status> {
        let peer = request.peer_certs();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.options.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("send Hello first, within 10 s of subscribing"))??;
        let Some(ProxyMessage {
            kind: Some(proxy_message::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a subscription must be Hello",
            ));
        };
        let Some(announced) = ProxyRole::parse(&hello.role) else {
            return Err(Status::invalid_argument(format!(
                "unknown role {:?}; use sidecar or gateway",
                hello.role
            )));
        };
        let role = match announced {
            ProxyRole::Sidecar => Role::Sidecar,
            ProxyRole::Gateway => Role::Gateway,
        };
        let pod = ObjectKey::new(hello.namespace.clone(), hello.pod.clone());
        if let Err(why) = self.source.synced() {
            return Err(Status::unavailable(format!(
                "the operator is still loading the cluster's state ({why}); retry shortly, keeping the current config"
            )));
        }
        self.authenticate(peer.as_deref().map(Vec::as_slice), &pod)?;
        let proxy = pod.to_string();
        let certificate = sync::reported_certificate(&proxy, &hello.certificate_json);
        let subscription = self.sync.subscribed(&proxy, |s| {
            s.certificate = certificate;
            s.role = announced.as_str().into();
            s.connected = true;
            s.proxy_version = hello.proxy_version.clone();
            if !hello.current_version.is_empty() {
                s.acked = Some(hello.current_version.clone());
            }
        });
        tracing::info!(%proxy, version = %hello.current_version, "proxy subscribed");

        let reporter = pod.clone();
        let (tx, rx) = mpsc::channel::<Result<Snapshot, Status>>(1);
        // Versions sent and not yet answered, with the change (generation) each carries, for
        // the convergence metric.
        let owed: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        // The proxy's answers (version, applied), for the sender to wait on.
        let (answers_tx, answers) = watch::channel::<Option<(String, bool)>>(None);
        // Outbound: compile and send on every change.
        let this = self.clone();
        let sender_proxy = proxy.clone();
        let sender_owed = owed.clone();
        let accepts_delta = hello.accepts_delta;
        let accepts_chunks = hello.accepts_chunks;
        let announced = hello.current_version.clone();
        tokio::spawn(async move {
            let metrics = this.metrics.clone();
            let mut answers = answers;
            let mut changed = this.changed.clone();
            let mut bundle_changed = this.bundle.clone();
            let mut stopping = this.stopping.subscribe();
            // What the proxy holds (its content known to this operator), and the last version
            // sent (a NACKed one is not sent again until the config changes).
            let mut held: Option<Rendered> = None;
            // The last version sent, while the proxy's last answer to it is a NACK: what it
            // holds should it ACK that version later.
            let mut refused: Option<Rendered> = None;
            let mut last_sent = (!announced.is_empty()).then(|| announced.clone());
            // The change this proxy woke for (none for the first config and trust bundle changes).
            let mut rollout: Option<u64> = None;
            'subscription: loop {
                let started = Instant::now();
                let built = this.built();
                let bundle = built.bundle.clone();
                let mut sent = false;
                match built.render(&pod, role) {
                    Ok(rendered) if last_sent.as_deref() == Some(rendered.version.as_str()) => {
                        if rendered.version == announced && held.is_none() {
                            // The proxy already serves this version (it said so in Hello).
                            held = Some(rendered.clone());
                            this.sync.update(&sender_proxy, subscription, |s| {
                                if s.acked.as_deref() == Some(rendered.version.as_str()) {
                                    s.sent = Some(rendered.version.clone());
                                    s.sent_roots = bundle.fingerprints.clone();
                                    s.acked_roots = bundle.fingerprints.clone();
                                }
                            });
                        }
                    }
                    Ok(rendered) => {
                        let version = rendered.version.clone();
                        let delta = held
                            .as_ref()
                            .filter(|_| accepts_delta)
                            .and_then(|h| Some((h.version.clone(), rendered.delta(h, &built.diffs)?)));
                        // The shared parts may be freed while a slow proxy takes its time.
                        drop(built);
                        let (snapshot, _permit) = match delta {
                            Some((base_version, delta_json)) => {
                                metrics.delta_pushes.inc();
                                let snapshot = Snapshot {
                                    version: version.clone(),
                                    config_json: Vec::new(),
                                    renew_unless_issued_by: bundle.renew_unless_issued_by.clone(),
                                    base_version,
                                    delta_json,
                                    more: false,
                                };
                                (snapshot, None)
                            }
                            None => {
                                let permit = tokio::select! {
                                    p = this.full_sends.clone().acquire_owned() => p.ok(),
                                    _ = stopping.wait_for(|s| *s) => break 'subscription,
                                    _ = tx.closed() => break 'subscription,
                                };
                                let snapshot = Snapshot {
                                    version: version.clone(),
                                    config_json: rendered.full(),
                                    renew_unless_issued_by: bundle.renew_unless_issued_by.clone(),
                                    base_version: String::new(),
                                    delta_json: Vec::new(),
                                    more: false,
                                };
                                (snapshot, permit)
                            }
                        };
                        if let Some(g) = rollout {
                            lock(&sender_owed).push((version.clone(), g));
                            metrics.rollout_sent(g);
                        }
                        let bytes = snapshot.config_json.len() + snapshot.delta_json.len();
                        // Only answers that arrive from now on count (the same version may
                        // have been answered before, when the config went back and forth).
                        answers.borrow_and_update();
                        if accepts_chunks {
                            // One chunk made at a time: the payload is held once.
                            for message in snapshot.chunks(this.options.chunk_bytes) {
                                if tx.send(Ok(message)).await.is_err() {
                                    break 'subscription;
                                }
                            }
                        } else if tx.send(Ok(snapshot)).await.is_err() {
                            break;
                        }
                        sent = true;
                        metrics.pushes.inc();
                        metrics.pushed_bytes.add(bytes as u64);
                        metrics.push_seconds.observe(started.elapsed());
                        let fingerprints = bundle.fingerprints.clone();
                        this.sync.update(&sender_proxy, subscription, |s| {
                            s.sent = Some(version.clone());
                            s.sent_roots = fingerprints;
                        });
                        last_sent = Some(version.clone());
                        // One version in flight: wait for the proxy's answer.
                        let answer = tokio::select! {
                            a = answers::answer_to(&mut answers, &version) => a,
                            _ = stopping.wait_for(|s| *s) => None,
                        };
                        match answer {
                            Some(true) => {
                                held = Some(rendered);
                                refused = None;
                            }
                            // NACKed: the proxy keeps its last good config, but the next
                            // version goes whole, in case the delta itself was the problem.
                            Some(false) => {
                                held = None;
                                refused = Some(rendered);
                            }
                            None => break,
                        }
                    }
                    Err(e) => {
                        tracing::debug!(proxy = %sender_proxy, error = %e, "not compiled yet; waiting for the registry")
                    }
                }
                if let Some(g) = rollout.take()
                    && !sent
                {
                    // Not affected by this change.
                    metrics.rollout_done(g, true);
                }
                let bundle_change = async {
                    match bundle_changed.as_mut() {
                        Some(b) => b.changed().await,
                        None => std::future::pending().await,
                    }
                };
                let refused_version = refused.as_ref().map(|r| r.version.clone());
                let woke_for_change = tokio::select! {
                    biased;
                    _ = stopping.wait_for(|s| *s) => break,
                    _ = tx.closed() => break,
                    r = changed.changed() => if r.is_err() { break } else { true },
                    r = bundle_change => if r.is_err() { break } else { false },
                    // The version it NACKed, applied after all (a retry of the proxy's): deltas
                    // go against it from now on.
                    Some(()) = answers::acked_later(&mut answers, refused_version.as_deref()) => {
                        held = refused.take();
                        continue;
                    }
                };
                if woke_for_change {
                    let g = *changed.borrow();
                    metrics.rollout_joined(g, Instant::now());
                    rollout = Some(g);
                }
                tokio::time::sleep(this.options.debounce).await;
                if *stopping.borrow() {
                    break;
                }
                changed.borrow_and_update();
                if let Some(b) = bundle_changed.as_mut() {
                    b.borrow_and_update();
                }
            }
            if let Some(g) = rollout {
                metrics.rollout_done(g, false);
            }
            if *stopping.borrow() {
                // This replica stops and its traffic view of the proxy goes with it: the proxy
                // sends its recent reports again to the replica it subscribes to next.
                let _ = tokio::time::timeout(HANDOVER_SEND, tx.send(Err(trellis_push::handover_status()))).await;
            }
        });
        // Inbound: ACKs, NACKs, certificates and golden-signal reports.
        let answers = answers::Inbound {
            push: self.clone(),
            proxy,
            subscription,
            reporter,
            role,
            owed,
            answers: answers_tx,
        };
        tokio::spawn(answers.read(inbound));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_not_listed_yet_names_the_kinds_it_waits_for() {
        let index = std::sync::RwLock::new(crate::index::Index::default());
        let why = index.synced().unwrap_err();
        assert_eq!(why.unlisted.len(), crate::snapshot::InputKind::ALL.len());
        assert!(why.to_string().starts_with("waiting for the first list of ["), "{why}");
    }
}
