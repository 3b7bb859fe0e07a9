//! The CA Secret (`trellis-ca` in the control plane's namespace): where the mesh root lives,
//! how a root rotation is asked for, and how a rotation survives an operator restart.
//!
//! - `ca.crt` / `ca.key`: the root the mesh should use. Created (self-signed) on first start.
//! - **Plugging in a new root** (Istio's "plug in CA certificates"): replace `ca.crt` and
//!   `ca.key` with your root or intermediate (and `cert-chain.pem` up to your root for an
//!   intermediate). The operator notices and rotates to it with no restart and no downtime.
//! - **Rotating the self-signed root**: annotate the Secret with
//!   `trellis.dev/rotate-root=<anything>`; the operator generates a new root, writes it to
//!   `ca.crt`/`ca.key`, removes the annotation and rotates to it.
//! - During a rotation the operator keeps the root being replaced in `previous-ca.crt` and
//!   `previous-ca.key`, so a restarted operator resumes the rotation; it removes them when the
//!   rotation is done.
//!
//! Progress is on the operator's admin API at `/debug/ca`.
//!
//! With several replicas, only the leader generates a root (for the annotation) and writes the
//! Secret; every replica follows the root the Secret holds, so one request is one rotation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::{MeshRoots, SigningCert};
use crate::leader::Leadership;

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

/// The roots a Secret holds: the target, and the previous one during a rotation.
#[derive(Debug)]
pub struct Stored {
    /// `ca.crt` / `ca.key`.
    pub root: SigningCert,
    /// `previous-ca.crt` / `previous-ca.key`, when a rotation was under way.
    pub previous: Option<SigningCert>,
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

fn chain(secret: &Secret) -> Vec<String> {
    field(secret, CERT_CHAIN)
        .map(|pem| {
            pem.split_inclusive("-----END CERTIFICATE-----")
                .map(|c| c.trim_start().to_string())
                .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
                .collect()
        })
        .unwrap_or_default()
}

/// Read the roots of a CA Secret.
pub fn read(secret: &Secret) -> anyhow::Result<Stored> {
    let ns = secret.metadata.namespace.as_deref().unwrap_or_default();
    let required = |k: &str| {
        field(secret, k).with_context(|| {
            format!("Secret {ns}/{CA_SECRET} has no {k}; delete the Secret to have a new root created, or add {k}")
        })
    };
    let root = SigningCert::from_pem(&required(CA_CERT)?, &required(CA_KEY)?, &chain(secret))
        .with_context(|| format!("Secret {ns}/{CA_SECRET}: {CA_CERT}/{CA_KEY}"))?;
    let previous = match (field(secret, PREVIOUS_CERT), field(secret, PREVIOUS_KEY)) {
        (Some(c), Some(k)) => Some(
            SigningCert::from_pem(&c, &k, &[])
                .with_context(|| format!("Secret {ns}/{CA_SECRET}: {PREVIOUS_CERT}/{PREVIOUS_KEY}"))?,
        ),
        _ => None,
    };
    Ok(Stored { root, previous })
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
                return Ok(Stored { root, previous: None });
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue, // another replica won; read theirs
            Err(e) => return Err(e).context(format!("creating Secret {namespace}/{CA_SECRET}")),
        }
    }
    anyhow::bail!("could not read or create Secret {namespace}/{CA_SECRET}")
}

/// Write what `roots` must persist into the Secret: the target root, the previous root while a
/// rotation runs (removed otherwise), and no rotation annotation.
pub async fn persist(client: &Client, namespace: &str, roots: &MeshRoots) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let (target, previous) = roots.persisted();
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let (prev_cert, prev_key) = match &previous {
        Some(p) => (
            serde_json::Value::String(b64(&p.cert_pem)),
            serde_json::Value::String(b64(&p.key_pem)),
        ),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    let patch = serde_json::json!({
        "metadata": {"annotations": {ROTATE_ANNOTATION: null}},
        "data": {
            CA_CERT: b64(&target.cert_pem),
            CA_KEY: b64(&target.key_pem),
            PREVIOUS_CERT: prev_cert,
            PREVIOUS_KEY: prev_key,
        }
    });
    api.patch(CA_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("updating Secret {namespace}/{CA_SECRET}"))?;
    Ok(())
}

/// The root a (new version of the) Secret asks `roots` to rotate to, if any. Only a replica
/// that may `generate` (the leader) answers the rotation annotation with a new root; the others
/// follow the root the Secret holds.
pub fn requested_root(
    secret: &Secret,
    roots: &MeshRoots,
    trust_domain: &str,
    root_ttl: Duration,
    generate: bool,
) -> anyhow::Result<Option<SigningCert>> {
    let annotated = secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ROTATE_ANNOTATION));
    if annotated && generate {
        let root = SigningCert::self_signed_root(trust_domain, root_ttl, SystemTime::now())?;
        return Ok(Some(root));
    }
    let stored = read(secret)?;
    if roots.holds(stored.root.fingerprint()) {
        return Ok(None);
    }
    Ok(Some(stored.root))
}

/// Watch the CA Secret and start a rotation when it asks for one; the leader writes the Secret
/// back when a rotation starts (and, through [`persist`], when it ends) and recreates it when it
/// is deleted. A root it generates is named after the trust domain `trust_domains` names then
/// and lives the `spec.ca.rootCertTtl` `settings` give then (both the Mesh's, live). Runs until
/// the watch ends.
pub async fn watch(
    client: Client,
    namespace: String,
    trust_domains: crate::trust_domain::Source,
    settings: tokio::sync::watch::Receiver<crate::mesh::settings::Settings>,
    roots: Arc<MeshRoots>,
    leadership: Leadership,
) {
    use kube::runtime::WatchStreamExt;
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CA_SECRET}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let secret = match event {
            Ok(Event::Apply(s) | Event::InitApply(s)) => s,
            Ok(Event::Delete(_)) if !leadership.is_leader() => continue,
            Ok(Event::Delete(_)) => {
                tracing::warn!(%namespace, secret = CA_SECRET, "the CA Secret was deleted; writing the roots in use back");
                let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(CA_SECRET.into()),
                        namespace: Some(namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    ..Secret::default()
                };
                if let Err(e) = api.create(&PostParams::default(), &secret).await {
                    tracing::warn!(error = %e, "could not recreate the CA Secret");
                    continue;
                }
                if let Err(e) = persist(&client, &namespace, &roots).await {
                    tracing::warn!(error = %e, "could not write the roots to the CA Secret");
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watching the CA Secret failed; retrying with backoff");
                continue;
            }
        };
        let leading = leadership.is_leader();
        let root_ttl = settings.borrow().ca.root_cert_ttl;
        match requested_root(&secret, &roots, trust_domains.get().domain(), root_ttl, leading) {
            Ok(None) => {}
            Ok(Some(root)) => {
                let fp = root.fingerprint().to_string();
                match roots.start_rotation(root) {
                    Ok(()) if !leading => {
                        tracing::info!(new_root = %fp, "following the root rotation the leader recorded in the CA Secret")
                    }
                    Ok(()) => {
                        if let Err(e) = persist(&client, &namespace, &roots).await {
                            tracing::warn!(error = %e, "could not record the rotation in the CA Secret");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(new_root = %fp, error = %e, "not rotating to the new root; write it again once the rotation under way is done")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the CA Secret cannot be used; keeping the roots in use")
            }
        }
    }
}
