//! The CA Secret's watch ([`watch`]): every replica follows the phase the leader records in it
//! and the root it holds; the leader answers a rotation asked for in it, queues a root asked
//! for during a rotation, starts the queued one once the rotation ends, and writes the Secret
//! back when it is deleted. What a version of the Secret holds and asks for, and how it is
//! written, is the parent's ([`super`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::{
    CA_SECRET, Queue, ROTATE_ANNOTATION, Request, follow_record, persist, read, record_patch, record_start,
    requested_root, write,
};
use crate::ca::{MeshRoots, Phase};
use crate::leader::Leadership;

/// How often the leader looks for a queued root whose rotation can start (the end of the
/// rotation under way is announced by a change of the Secret too; this covers a leader that
/// entered the end after it read that change), and a replica whether it has become the leader
/// (it then reads the Secret once: a request the previous leader left unanswered — a `ca.*`
/// the others saw and left to it — is answered).
// why: a queued root waits for a rotation that takes seconds to days, and a new leader comes
// within a lease (10 s) of the last; two seconds is prompt, and the look costs a GET only while
// a root is queued and no rotation runs, or once per leadership gained.
const QUEUE_CHECK: Duration = Duration::from_secs(2);

/// What [`watch`] works with.
pub struct Watched {
    /// The operator's client.
    pub client: Client,
    /// The operator's namespace, where the CA Secret is.
    pub namespace: String,
    /// The Mesh's trust domain, read live: a root generated now is named after it.
    pub trust_domains: crate::trust_domain::Source,
    /// The Mesh's settings, read live: a root generated now lives their `spec.ca.rootCertTtl`.
    pub settings: tokio::sync::watch::Receiver<crate::settings::Settings>,
    /// The roots this replica issues from.
    pub roots: Arc<MeshRoots>,
    /// Whether this replica leads.
    pub leadership: Leadership,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("namespace", &self.namespace)
            .field("trust_domains", &self.trust_domains)
            .field("leadership", &self.leadership)
            .finish_non_exhaustive()
    }
}

/// What the watch remembers from one version of the Secret to the next.
#[derive(Debug, Default)]
struct Progress {
    /// The resourceVersion of the leader's own write answering a request, until the watch
    /// delivers it: versions before it are stale, and their request is answered already.
    answered: Option<String>,
    /// Whether this replica led at the last [`QUEUE_CHECK`].
    led: bool,
}

/// Watch the CA Secret: follow the phase the leader records, start a rotation when the Secret
/// asks for one and queue a root asked for during one; the leader writes the Secret back when
/// a rotation starts (and, through [`super::record_phase`], at every phase), starts a queued
/// root once the rotation under way ends, and recreates the Secret when it is deleted. A root it
/// generates is named after the trust domain [`Watched::trust_domains`] names then and lives the
/// `spec.ca.rootCertTtl` [`Watched::settings`] give then (both the Mesh's, live). Runs until
/// the watch ends.
pub async fn watch(w: Watched) {
    use kube::runtime::WatchStreamExt;
    let api: Api<Secret> = Api::namespaced(w.client.clone(), &w.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CA_SECRET}"));
    let mut stream = watcher::watcher(api.clone(), config).default_backoff().boxed();
    let mut queue_check = tokio::time::interval(QUEUE_CHECK);
    queue_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = Progress::default();
    loop {
        let secret = tokio::select! {
            event = stream.next() => match event {
                None => return,
                Some(Ok(Event::InitApply(s))) => {
                    // A fresh list: the latest version, after any write of ours.
                    progress.answered = None;
                    s
                }
                Some(Ok(Event::Apply(s))) => s,
                Some(Ok(Event::Delete(_))) => {
                    if w.leadership.is_leader() {
                        recreate(&w).await;
                    }
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the CA Secret failed; retrying with backoff");
                    continue;
                }
            },
            _ = queue_check.tick() => {
                let leading = w.leadership.is_leader();
                let now_leading = leading && !progress.led;
                progress.led = leading;
                let waiting = leading
                    && w.roots.phase() == Phase::Stable
                    && w.roots.status().queued_root.is_some();
                if !(now_leading || waiting) {
                    continue;
                }
                match api.get_opt(CA_SECRET).await {
                    Ok(Some(s)) => s,
                    Ok(None) => continue,
                    Err(e) => {
                        if now_leading {
                            progress.led = false; // read again at the next check
                        }
                        tracing::warn!(error = %e, "could not read the CA Secret for a request to answer");
                        continue;
                    }
                }
            }
        };
        handle(&w, &mut progress, &secret).await;
    }
}

/// The CA Secret was deleted: write the roots in use back (the leader does).
async fn recreate(w: &Watched) {
    tracing::warn!(namespace = %w.namespace, secret = CA_SECRET, "the CA Secret was deleted; writing the roots in use back");
    let api: Api<Secret> = Api::namespaced(w.client.clone(), &w.namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.into()),
            namespace: Some(w.namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    if let Err(e) = api.create(&PostParams::default(), &secret).await {
        tracing::warn!(error = %e, "could not recreate the CA Secret");
        return;
    }
    if let Err(e) = persist(&w.client, &w.namespace, &w.roots).await {
        tracing::warn!(error = %e, "could not write the roots to the CA Secret");
    }
}

/// One version of the CA Secret.
async fn handle(w: &Watched, progress: &mut Progress, secret: &Secret) {
    let version = secret.metadata.resource_version.clone();
    // A version from before our own answer: its request was answered; follow its phase only.
    let stale = progress.answered.is_some() && version != progress.answered;
    if progress.answered.is_some() && version == progress.answered {
        progress.answered = None;
    }
    let leading = w.leadership.is_leader();
    let roots = &w.roots;
    let stored = read(secret);
    let recorded = stored.as_ref().ok().map(|s| s.phase);
    if let Ok(stored) = &stored {
        roots.set_queued(stored.queued.as_ref().map(|q| q.fingerprint().to_string()));
        let entered = follow_record(stored, roots);
        if !entered.is_empty() {
            tracing::info!(phases = ?entered, "following the root rotation phase the leader recorded in the CA Secret");
        }
    }
    if stale {
        return;
    }
    let request = requested_root(
        secret,
        stored,
        roots,
        w.trust_domains.get().domain(),
        w.settings.borrow().ca.root_cert_ttl,
        leading,
    );
    match request {
        Ok(Request::Nothing) => {}
        Ok(Request::Rotate { root, from_queue }) => {
            let fp = root.fingerprint().to_string();
            if leading {
                let queue = if from_queue { Queue::Clear } else { Queue::Keep };
                match record_start(&w.client, &w.namespace, roots, &root, queue).await {
                    Ok(written) => progress.answered = written,
                    Err(e) => {
                        tracing::warn!(new_root = %fp, error = %format!("{e:#}"), "could not record the root rotation in the CA Secret; not starting it, retrying on the next change of the Secret");
                        return;
                    }
                }
            }
            match roots.start_rotation(root) {
                Ok(()) if !leading => {
                    roots.advance_to(recorded.unwrap_or(Phase::Distributing));
                    tracing::info!(new_root = %fp, "following the root rotation the leader recorded in the CA Secret")
                }
                Ok(()) => {}
                Err(e) => tracing::warn!(new_root = %fp, error = %e, "not rotating to the new root"),
            }
        }
        Ok(Request::Moot) => {
            let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: null}}});
            match write(&w.client, &w.namespace, &patch).await {
                Ok(written) => {
                    progress.answered = written;
                    tracing::info!(
                        "the rotation of the expiring root was asked for again once it was being replaced: the request is removed, no second rotation"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not remove a request for the rotation of a root that is replaced already; retrying on the next change of the CA Secret")
                }
            }
        }
        Ok(Request::Queue(root)) => {
            let fp = root.fingerprint().to_string();
            let (target, previous) = roots.persisted_at(roots.phase());
            let patch = record_patch(&target, previous.as_ref(), roots.phase(), Queue::Set(&root));
            match write(&w.client, &w.namespace, &patch).await {
                Ok(written) => {
                    progress.answered = written;
                    roots.set_queued(Some(fp.clone()));
                    tracing::info!(queued_root = %fp, "a root was asked for during a root rotation: queued in the CA Secret, rotated to once the rotation ends");
                }
                Err(e) => {
                    tracing::warn!(queued_root = %fp, error = %format!("{e:#}"), "could not queue the root asked for during the rotation; retrying on the next change of the CA Secret")
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the CA Secret cannot be used; keeping the roots in use")
        }
    }
}
