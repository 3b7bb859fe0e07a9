//! The CA Secret (`trellis-ca` in the control plane's namespace): where the mesh root lives,
//! how a root rotation is asked for, and how a rotation survives an operator restart.
//!
//! - `ca.crt` / `ca.key`: the root the mesh should use. Created (self-signed) on first start.
//! - **Plugging in a new root** (Istio's "plug in CA certificates"): replace `ca.crt` and
//!   `ca.key` with your root or intermediate (and `cert-chain.pem` up to your root for an
//!   intermediate). The operator notices and rotates to it with no restart and no downtime.
//! - **Rotating the self-signed root**: annotate the Secret with
//!   `trellis.dev/rotate-root=<anything>`; the operator generates a new root, writes it to
//!   `ca.crt`/`ca.key`, removes the annotation and rotates to it. The value `expiring` is the
//!   leader's own request for a root near its expiry: once that root is being replaced, or has
//!   been, the request is removed, not answered again.
//! - During a rotation the operator keeps the root being replaced in `previous-ca.crt` and
//!   `previous-ca.key`, and the phase in the annotation `trellis.dev/root-rotation-phase`, so a
//!   restarted operator resumes the rotation where it was; it removes them when the rotation is
//!   done.
//! - A root asked for **during** a rotation (the annotation, `ca.crt`/`ca.key` replaced, or a
//!   plugged root changed in the Secret the Mesh names) is queued, not dropped: the leader keeps
//!   it in `queued-ca.crt`, `queued-ca.key` (and `queued-cert-chain.pem`), puts the rotation's
//!   own root back in `ca.*`, and rotates to the queued root once the rotation ends. The Mesh's
//!   `CertificateAuthorityReady` message says a root is queued.
//!
//! Progress is on the operator's admin API at `/debug/ca`.
//!
//! With several replicas, only the leader generates a root (for the annotation), decides each
//! phase and writes the Secret — the phase before it enters it, and the root it records it for
//! (`trellis.dev/recorded-root`) —; every replica follows the root and the phase the leader
//! recorded, never advancing on its own — a `ca.*` replaced since the leader's last record is
//! a request only the leader answers —, so one request is one rotation and no replica issues
//! from a root the leader has moved away from for longer than its watch takes to hear of it. A
//! replica that becomes the leader reads the Secret at once, and answers a request its
//! predecessor left.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::{MeshRoots, Phase, SigningCert, SigningPair};

mod watch;
pub use watch::{Watched, watch};

/// The Secret holding the mesh root, in the control plane's namespace (the one Secret the
/// install manifests let the operator write).
pub const CA_SECRET: &str = trellis_manifests::install::CA_SECRET;
/// The root certificate (or intermediate) the mesh should use.
pub const CA_CERT: &str = "ca.crt";
/// Its private key.
pub const CA_KEY: &str = "ca.key";
/// For a plugged-in intermediate: the chain up to the root (Istio's file name).
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The root being replaced, kept while a rotation runs.
pub const PREVIOUS_CERT: &str = "previous-ca.crt";
/// Its private key.
pub const PREVIOUS_KEY: &str = "previous-ca.key";
/// Annotate the Secret with this (any value) to have a new self-signed root generated and
/// rotated to.
pub const ROTATE_ANNOTATION: &str = "trellis.dev/rotate-root";
/// The value of [`ROTATE_ANNOTATION`] the leader writes for a self-signed root near its expiry
/// ([`super::lifecycle`]). Such a request is about the root in use: once that root is being
/// replaced, or has been, it is moot — removed, never queued — so a request written twice (the
/// expiry is looked at again before the first one is answered) is one rotation.
pub const EXPIRY_REQUEST: &str = "expiring";
/// The phase of the rotation under way, as the leader recorded it (absent: `Distributing`
/// while `previous-ca.*` is there, else no rotation).
pub const PHASE_ANNOTATION: &str = "trellis.dev/root-rotation-phase";
/// The fingerprint of the root in `ca.crt` when the leader last recorded the rotation's state
/// (every write of [`record_patch`]). A `ca.crt` it does not name was put there since — by a
/// person, or copied from the Secret the Mesh's `spec.ca.secretRef` names — and is a request
/// the leader has not answered yet: the other replicas wait for its answer.
pub const RECORDED_ROOT_ANNOTATION: &str = "trellis.dev/recorded-root";
/// A root asked for during a rotation, rotated to once it ends.
pub const QUEUED_CERT: &str = "queued-ca.crt";
/// Its private key.
pub const QUEUED_KEY: &str = "queued-ca.key";
/// Its chain up to the root, for an intermediate.
pub const QUEUED_CHAIN: &str = "queued-cert-chain.pem";

/// The roots a Secret holds: the target, the previous one and the phase during a rotation,
/// and a queued one.
#[derive(Debug)]
pub struct Stored {
    /// `ca.crt` / `ca.key`.
    pub root: SigningCert,
    /// `previous-ca.crt` / `previous-ca.key`, when a rotation was under way.
    pub previous: Option<SigningCert>,
    /// The phase the leader recorded (`Stable` without a previous root).
    pub phase: Phase,
    /// `queued-ca.*`, a root waiting for the rotation under way to end.
    pub queued: Option<SigningCert>,
    /// Whether `ca.*` is the root the leader recorded the rotation's state for
    /// ([`RECORDED_ROOT_ANNOTATION`] names it; in a Secret written before that annotation, one
    /// that records a rotation: `previous-ca.*`). Otherwise `ca.*` was replaced since: a request
    /// only the leader answers, and the phase is not the leader's.
    pub recorded: bool,
}

/// The phase a Secret records: none without a rotation under way; the annotation's during
/// one, or `Distributing` — the phase that issues from the old root and trusts both — when it
/// is absent (a Secret written before phases were recorded) or unreadable.
pub fn recorded_phase(annotation: Option<&str>, rotating: bool) -> Phase {
    if !rotating {
        return Phase::Stable;
    }
    match annotation {
        Some("Reissuing") => Phase::Reissuing,
        Some("Retiring") => Phase::Retiring,
        _ => Phase::Distributing,
    }
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

fn chain(secret: &Secret, key: &str) -> Vec<String> {
    field(secret, key).map(|pem| split_chain(&pem)).unwrap_or_default()
}

/// The certificates of a PEM chain, one PEM each.
pub(crate) fn split_chain(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----")
        .map(|c| c.trim_start().to_string())
        .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
        .collect()
}

/// Read the roots of a CA Secret.
pub fn read(secret: &Secret) -> anyhow::Result<Stored> {
    let ns = secret.metadata.namespace.as_deref().unwrap_or_default();
    let required = |k: &str| {
        field(secret, k).with_context(|| {
            format!("Secret {ns}/{CA_SECRET} has no {k}; delete the Secret to have a new root created, or add {k}")
        })
    };
    let root = SigningCert::from_pem(&required(CA_CERT)?, &required(CA_KEY)?, &chain(secret, CERT_CHAIN))
        .with_context(|| format!("Secret {ns}/{CA_SECRET}: {CA_CERT}/{CA_KEY}"))?;
    let previous = match (field(secret, PREVIOUS_CERT), field(secret, PREVIOUS_KEY)) {
        (Some(c), Some(k)) => Some(
            SigningCert::from_pem(&c, &k, &[])
                .with_context(|| format!("Secret {ns}/{CA_SECRET}: {PREVIOUS_CERT}/{PREVIOUS_KEY}"))?,
        ),
        _ => None,
    };
    let queued = match (field(secret, QUEUED_CERT), field(secret, QUEUED_KEY)) {
        (Some(c), Some(k)) => Some(
            SigningCert::from_pem(&c, &k, &chain(secret, QUEUED_CHAIN))
                .with_context(|| format!("Secret {ns}/{CA_SECRET}: {QUEUED_CERT}/{QUEUED_KEY}"))?,
        ),
        _ => None,
    };
    let annotation = |key: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    let recorded = match annotation(RECORDED_ROOT_ANNOTATION) {
        Some(fingerprint) => fingerprint == root.fingerprint(),
        None => previous.is_some(),
    };
    Ok(Stored {
        phase: recorded_phase(annotation(PHASE_ANNOTATION), previous.is_some()),
        root,
        previous,
        queued,
        recorded,
    })
}

/// The roots from the CA Secret, created with a self-signed root (valid `root_ttl`: the Mesh's
/// `spec.ca.rootCertTtl`) on first start.
///
/// # Guarantees
/// Two operators starting at once end up with the same root: the loser of the create race
/// reads the winner's Secret.
pub async fn load_or_create(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
    root_ttl: Duration,
) -> anyhow::Result<Stored> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(CA_SECRET).await.context("reading the CA Secret")? {
            return read(&secret);
        }
        let root = SigningCert::self_signed_root(trust_domain, root_ttl, SystemTime::now())?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.into()),
                namespace: Some(namespace.into()),
                labels: Some([("app.kubernetes.io/part-of".to_string(), "trellis".to_string())].into()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                [
                    (CA_CERT.to_string(), ByteString(root.cert_pem().as_bytes().to_vec())),
                    (CA_KEY.to_string(), ByteString(root.key_pem().into_bytes())),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(%namespace, secret = CA_SECRET, "created a self-signed mesh root");
                return Ok(Stored {
                    root,
                    previous: None,
                    phase: Phase::Stable,
                    queued: None,
                    recorded: false,
                });
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue, // another replica won; read theirs
            Err(e) => return Err(e).context(format!("creating Secret {namespace}/{CA_SECRET}")),
        }
    }
    anyhow::bail!("could not read or create Secret {namespace}/{CA_SECRET}")
}

/// What to do with the queued root when writing the Secret.
#[derive(Debug)]
pub enum Queue<'a> {
    /// Leave `queued-ca.*` as they are.
    Keep,
    /// Queue this root (replacing one queued before: the latest request wins).
    Set(&'a SigningCert),
    /// Remove `queued-ca.*` (its rotation starts).
    Clear,
}

/// The merge patch recording a rotation to `target` from `previous` in `phase` (no previous,
/// or `Stable`: no rotation under way), the queue, and no rotation annotation; it names
/// `target` as the recorded root ([`RECORDED_ROOT_ANNOTATION`]).
pub fn record_patch(
    target: &SigningPair,
    previous: Option<&SigningPair>,
    phase: Phase,
    queue: Queue<'_>,
) -> serde_json::Value {
    let previous = previous.filter(|_| phase != Phase::Stable);
    let b64 =
        |s: &str| serde_json::Value::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s));
    let optional = |s: &str| if s.is_empty() { serde_json::Value::Null } else { b64(s) };
    let (prev_cert, prev_key) = match previous {
        Some(p) => (b64(&p.cert_pem), b64(&p.key_pem)),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    let phase_annotation = match previous {
        None => serde_json::Value::Null,
        Some(_) => serde_json::Value::String(phase.to_string()),
    };
    let mut data = serde_json::json!({
        CA_CERT: b64(&target.cert_pem),
        CA_KEY: b64(&target.key_pem),
        CERT_CHAIN: optional(&target.chain_pem),
        PREVIOUS_CERT: prev_cert,
        PREVIOUS_KEY: prev_key,
    });
    match queue {
        Queue::Keep => {}
        Queue::Set(root) => {
            data[QUEUED_CERT] = b64(root.cert_pem());
            data[QUEUED_KEY] = b64(&root.key_pem());
            data[QUEUED_CHAIN] = optional(&root.chain_pem());
        }
        Queue::Clear => {
            for key in [QUEUED_CERT, QUEUED_KEY, QUEUED_CHAIN] {
                data[key] = serde_json::Value::Null;
            }
        }
    }
    let recorded_root = Some(target.fingerprint.as_str())
        .filter(|fp| !fp.is_empty())
        .map_or(serde_json::Value::Null, |fp| serde_json::Value::String(fp.to_string()));
    serde_json::json!({
        "metadata": {"annotations": {
            ROTATE_ANNOTATION: null,
            PHASE_ANNOTATION: phase_annotation,
            RECORDED_ROOT_ANNOTATION: recorded_root,
        }},
        "data": data,
    })
}

/// Record that the rotation to the root `to` is in `phase` ([`record_patch`], the queue kept):
/// the leader records a phase before it enters it, so the other replicas follow the rotation
/// from the Secret, never ahead of the leader. Writes nothing and returns `false` when that
/// rotation is no longer the one under way: it ended, and the next one (a queued root) may have
/// started, since it was assessed — its phase written for the next one would record that one
/// as ended, or in a phase it never reached.
pub async fn record_phase(
    client: &Client,
    namespace: &str,
    roots: &MeshRoots,
    to: &str,
    phase: Phase,
) -> anyhow::Result<bool> {
    let Some((target, previous)) = roots.persisted_for(to, phase) else {
        return Ok(false);
    };
    write(
        client,
        namespace,
        &record_patch(&target, previous.as_ref(), phase, Queue::Keep),
    )
    .await?;
    Ok(true)
}

/// Record the start of a rotation of `roots` to `root` (before it starts: a rotation that is
/// not recorded does not start, and the annotation asking for it stays to be answered again).
async fn record_start(
    client: &Client,
    namespace: &str,
    roots: &MeshRoots,
    root: &SigningCert,
    queue: Queue<'_>,
) -> anyhow::Result<Option<String>> {
    let (current, _) = roots.persisted_at(Phase::Stable);
    let patch = record_patch(&SigningPair::of(root), Some(&current), Phase::Distributing, queue);
    write(client, namespace, &patch).await
}

/// Patch the Secret; returns the resourceVersion written.
async fn write(client: &Client, namespace: &str, patch: &serde_json::Value) -> anyhow::Result<Option<String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let written = api
        .patch(CA_SECRET, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("updating Secret {namespace}/{CA_SECRET}"))?;
    Ok(written.metadata.resource_version)
}

/// Write what `roots` must persist now into the Secret ([`record_patch`] in the current phase,
/// the queue kept).
pub async fn persist(client: &Client, namespace: &str, roots: &MeshRoots) -> anyhow::Result<()> {
    let phase = roots.phase();
    let (target, previous) = roots.persisted_at(phase);
    write(
        client,
        namespace,
        &record_patch(&target, previous.as_ref(), phase, Queue::Keep),
    )
    .await?;
    Ok(())
}

/// What a version of the Secret asks of this replica, besides the phase it follows.
#[derive(Debug)]
pub enum Request {
    /// Nothing new.
    Nothing,
    /// Rotate to this root (no rotation is under way); `from_queue`: it was queued.
    Rotate {
        /// The root.
        root: SigningCert,
        /// Whether it comes from `queued-ca.*` (the leader then empties the queue).
        from_queue: bool,
    },
    /// A root asked for during a rotation: the leader queues it.
    Queue(SigningCert),
    /// The leader's own request for the rotation of an expiring root ([`EXPIRY_REQUEST`]) when
    /// that root is no longer the one in use, or a rotation replaces it already: the leader
    /// removes the annotation.
    Moot,
}

/// The root a (new version of the) Secret asks `roots` to rotate to or to queue, from the
/// Secret and what it holds (`stored`). Only the replica that `leads` answers the rotation
/// annotation with a new root, queues, and starts the queued root; the others follow the root
/// the Secret holds.
pub fn requested_root(
    secret: &Secret,
    stored: anyhow::Result<Stored>,
    roots: &MeshRoots,
    trust_domain: &str,
    root_ttl: Duration,
    leads: bool,
) -> anyhow::Result<Request> {
    let rotating = roots.phase() != Phase::Stable;
    let asked = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ANNOTATION));
    if asked.is_some_and(|v| v == EXPIRY_REQUEST)
        && leads
        && super::expiry::expiring_root(roots, root_ttl, SystemTime::now()).is_none()
    {
        return Ok(Request::Moot);
    }
    if asked.is_some() && leads {
        let root = SigningCert::self_signed_root(trust_domain, root_ttl, SystemTime::now())?;
        return Ok(if rotating {
            Request::Queue(root)
        } else {
            Request::Rotate {
                root,
                from_queue: false,
            }
        });
    }
    let stored = stored?;
    if !roots.holds(stored.root.fingerprint()) {
        return Ok(match (rotating, leads) {
            (false, true) => Request::Rotate {
                root: stored.root,
                from_queue: false,
            },
            // The others follow a rotation only once the leader has recorded it: a `ca.*`
            // replaced since its last record is a request it has not answered yet (it may queue
            // it, or fail to record it and ask again).
            (false, false) if stored.recorded => Request::Rotate {
                root: stored.root,
                from_queue: false,
            },
            (false, false) => Request::Nothing,
            // `ca.*` replaced during a rotation: the leader queues it and puts the rotation's
            // root back; the others wait for that.
            (true, true) => Request::Queue(stored.root),
            (true, false) => Request::Nothing,
        });
    }
    match stored.queued {
        Some(root) if leads && !rotating && stored.previous.is_none() && !roots.holds(root.fingerprint()) => {
            Ok(Request::Rotate { root, from_queue: true })
        }
        _ => Ok(Request::Nothing),
    }
}

/// Enter the phase the Secret records for the rotation under way: the one to its root (the
/// phase recorded), or — when its previous root is the one being rotated to — a rotation the
/// leader has finished since (its end). Returns the phases entered.
pub fn follow_record(stored: &Stored, roots: &MeshRoots) -> Vec<Phase> {
    let Some(next) = roots.next() else {
        return Vec::new();
    };
    if !stored.recorded {
        // `ca.*` replaced since the leader's last record: its phase is not the leader's.
        return Vec::new();
    }
    if stored.root.fingerprint() == next {
        roots.advance_to(stored.phase)
    } else if stored.previous.as_ref().is_some_and(|p| p.fingerprint() == next) {
        roots.advance_to(Phase::Stable)
    } else {
        Vec::new()
    }
}
