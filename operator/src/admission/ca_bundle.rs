//! Keeps the `caBundle` of Trellis' webhook configurations (`trellis-validator`,
//! `trellis-sidecar-injector`) equal to the mesh trust bundle: every root the operator's
//! serving certificates may come from — one, or two during a root rotation.
//!
//! A small controller: it watches the two configurations (a `kubectl apply` of the install
//! manifests, which carry no `caBundle`, is repaired at once) and the trust bundle, and
//! patches only what differs. It reports which roots the API server trusts now, so the
//! webhooks' certificate moves to a new root only after the API server trusts it (see
//! [`super::certificate::keep_certificate_current`]), and whether every configuration is current
//! (the operator is not ready before: the API server could not verify it).
//!
//! [`patch_for`] and [`trusted_roots`] are the pure parts; [`run`] is the I/O. Patching is
//! idempotent, so any number of replicas may run it (the Mesh reconciler may later run it on
//! the leader only).
//!
//! The configurations come with the install manifests (`meshctl install`). A configuration
//! missing when the operator starts is created from the same definitions
//! (`trellis_manifests::install::webhooks`): an OperatorHub (OLM) bundle cannot carry webhook
//! configurations as plain objects — only as CSV `webhookdefinitions`, for which OLM substitutes
//! its own CA and namespace selector — so under OLM the operator installs them itself. One
//! deleted while the operator runs stays deleted until the operator restarts (an
//! administrator taking Trellis out of the write path).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;
use trellis_manifests::install::webhooks::{self, INJECTOR, VALIDATOR};

use crate::ca::{Bundle, MeshRoots, fingerprint};

/// What the API server trusts of the operator, as far as the webhook configurations say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Published {
    /// The roots (fingerprints) every existing configuration's every webhook trusts; `None`
    /// when no configuration exists.
    pub roots: Option<Vec<String>>,
    /// Whether every existing configuration carries the current trust bundle.
    pub current: bool,
}

/// The `caBundle` for a trust bundle: the roots' PEM, base64.
pub fn ca_bundle(bundle: &Bundle) -> String {
    base64::engine::general_purpose::STANDARD.encode(bundle.roots_pem.concat())
}

/// The JSON patch that gives every webhook of `config` this `ca_bundle`, or `None` when each
/// already has it. Each change is guarded by a `test` of the webhook's name, so a concurrent
/// reorder makes the patch fail (and be recomputed) rather than land on the wrong webhook.
pub fn patch_for(config: &Value, ca_bundle: &str) -> Option<Value> {
    let mut ops = Vec::new();
    for (i, webhook) in config["webhooks"].as_array().into_iter().flatten().enumerate() {
        if webhook.pointer("/clientConfig/caBundle").and_then(Value::as_str) == Some(ca_bundle) {
            continue;
        }
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook["name"]}));
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ca_bundle}));
    }
    (!ops.is_empty()).then(|| Value::Array(ops))
}

/// The roots (fingerprints) that every webhook of `config` trusts.
pub fn trusted_roots(config: &Value) -> BTreeSet<String> {
    let mut common: Option<BTreeSet<String>> = None;
    for webhook in config["webhooks"].as_array().into_iter().flatten() {
        let pem = webhook
            .pointer("/clientConfig/caBundle")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        let roots: BTreeSet<String> = rustls_pemfile::certs(&mut pem.as_slice())
            .flatten()
            .map(|der| fingerprint(der.as_ref()))
            .collect();
        common = Some(match common {
            None => roots,
            Some(c) => c.intersection(&roots).cloned().collect(),
        });
    }
    common.unwrap_or_default()
}

/// What the configurations in `configs` tell, given the `wanted` bundle.
pub fn published(configs: &[&Value], wanted: &Bundle) -> Published {
    if configs.is_empty() {
        return Published {
            roots: None,
            current: true,
        };
    }
    let bundle = ca_bundle(wanted);
    let mut roots: Option<BTreeSet<String>> = None;
    for c in configs {
        let trusted = trusted_roots(c);
        roots = Some(match roots {
            None => trusted,
            Some(r) => r.intersection(&trusted).cloned().collect(),
        });
    }
    Published {
        roots: roots.map(|r| r.into_iter().collect()),
        current: configs.iter().all(|c| patch_for(c, &bundle).is_none()),
    }
}

/// The latest state of one watched configuration.
async fn watch_one<K>(client: Client, name: &'static str, tx: watch::Sender<Option<Value>>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug + Send + 'static,
{
    let api: Api<K> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, config));
    let mut seen = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(o) | Event::InitApply(o)) => seen = serde_json::to_value(&o).ok(),
            Ok(Event::Delete(_)) => seen = None,
            Ok(Event::Init) => seen = None,
            Ok(Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(%name, error = %e, "watching the webhook configuration failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        tx.send_replace(seen.clone());
    }
}

/// Create the configurations that do not exist, as the install manifests define them for
/// the control plane in `namespace`, with the current `caBundle`.
async fn create_missing(client: &Client, namespace: &str, bundle: &Bundle) {
    let opts = trellis_manifests::install::Options {
        namespace: namespace.to_string(),
        ..trellis_manifests::install::Options::default()
    };
    let encoded = ca_bundle(bundle);
    let mut validator = webhooks::validating_webhook_configuration(&opts);
    for w in validator.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(k8s_openapi::ByteString(bundle.roots_pem.concat().into_bytes()));
    }
    let mut injector = webhooks::mutating_webhook_configuration(&opts);
    for w in injector.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(k8s_openapi::ByteString(bundle.roots_pem.concat().into_bytes()));
    }
    let created = [
        (VALIDATOR, create_if_absent(Api::all(client.clone()), validator).await),
        (INJECTOR, create_if_absent(Api::all(client.clone()), injector).await),
    ];
    for (name, result) in created {
        match result {
            Ok(true) => {
                tracing::info!(configuration = %name, ca_bundle_bytes = encoded.len(), "webhook configuration was missing; created it")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(configuration = %name, error = %e, "could not create the missing webhook configuration")
            }
        }
    }
}

/// Create `object` unless one of its name exists; whether it was created.
async fn create_if_absent<K>(api: Api<K>, object: K) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    if api.get_opt(&name).await?.is_some() {
        return Ok(false);
    }
    match api.create(&kube::api::PostParams::default(), &object).await {
        Ok(_) => Ok(true),
        // Another replica, or the install, was faster.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Keep both configurations' `caBundle` current and announce what they trust on `out`;
/// with `create_for`, create those missing at start (for the control plane in that namespace).
pub async fn run(client: Client, roots: Arc<MeshRoots>, create_for: Option<String>, out: watch::Sender<Published>) {
    if let Some(namespace) = create_for {
        let initial = roots.bundle().borrow().clone();
        create_missing(&client, &namespace, &initial).await;
    }
    let (validator_tx, mut validator) = watch::channel(None);
    let (injector_tx, mut injector) = watch::channel(None);
    let watchers = [
        tokio::spawn(watch_one::<ValidatingWebhookConfiguration>(
            client.clone(),
            VALIDATOR,
            validator_tx,
        )),
        tokio::spawn(watch_one::<MutatingWebhookConfiguration>(
            client.clone(),
            INJECTOR,
            injector_tx,
        )),
    ];
    let validators: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let injectors: Api<MutatingWebhookConfiguration> = Api::all(client);
    let mut bundle = roots.bundle();
    let mut retry = false;
    loop {
        if retry {
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            tokio::select! {
                r = bundle.changed() => if r.is_err() { break },
                r = validator.changed() => if r.is_err() { break },
                r = injector.changed() => if r.is_err() { break },
            }
        }
        let wanted = bundle.borrow_and_update().clone();
        let encoded = ca_bundle(&wanted);
        let v = validator.borrow_and_update().clone();
        let m = injector.borrow_and_update().clone();
        retry = false;
        for (config, name) in [(&v, VALIDATOR), (&m, INJECTOR)] {
            let Some(patch) = config.as_ref().and_then(|c| patch_for(c, &encoded)) else {
                continue;
            };
            let patch: json_patch::Patch = match serde_json::from_value(patch) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(%name, error = %e, "the caBundle patch is not a JSON patch");
                    continue;
                }
            };
            let params = PatchParams::default();
            let done = if name == VALIDATOR {
                validators
                    .patch(name, &params, &Patch::<()>::Json(patch))
                    .await
                    .map(|_| ())
            } else {
                injectors
                    .patch(name, &params, &Patch::<()>::Json(patch))
                    .await
                    .map(|_| ())
            };
            match done {
                Ok(()) => {
                    tracing::info!(configuration = %name, roots = wanted.fingerprints.len(), "webhook caBundle set to the mesh trust bundle")
                }
                Err(e) => {
                    tracing::warn!(configuration = %name, error = %e, "could not set the webhook caBundle; retrying");
                    retry = true;
                }
            }
        }
        let present: Vec<&Value> = [&v, &m].into_iter().flatten().collect();
        out.send_replace(published(&present, &wanted));
    }
    for w in watchers {
        w.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{ManualClock, SigningCert};
    use std::time::SystemTime;

    fn root(cn: &str) -> SigningCert {
        SigningCert::self_signed_root(cn, Duration::from_secs(86400 * 365), SystemTime::now()).unwrap()
    }

    fn config(bundles: &[Option<&str>]) -> Value {
        json!({"webhooks": bundles.iter().enumerate().map(|(i, b)| {
            let mut w = json!({"name": format!("w{i}.trellis.dev"), "clientConfig": {"service": {"name": "trellis-operator"}}});
            if let Some(b) = b {
                w["clientConfig"]["caBundle"] = json!(b);
            }
            w
        }).collect::<Vec<_>>()})
    }

    #[test]
    fn patches_only_webhooks_whose_bundle_differs_and_guards_each_by_name() {
        let a = root("a.example");
        let roots = MeshRoots::new(
            a,
            Duration::from_secs(3600),
            Arc::new(ManualClock::new(SystemTime::now())),
        );
        let bundle = roots.bundle().borrow().clone();
        let encoded = ca_bundle(&bundle);
        let cfg = config(&[None, Some(&encoded), Some("c3RhbGU=")]);
        let patch = patch_for(&cfg, &encoded).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/0/name", "value": "w0.trellis.dev"},
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": encoded},
                {"op": "test", "path": "/webhooks/2/name", "value": "w2.trellis.dev"},
                {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": encoded},
            ])
        );
        let mut fixed = cfg.clone();
        json_patch::patch(&mut fixed, &serde_json::from_value::<json_patch::Patch>(patch).unwrap()).unwrap();
        assert_eq!(patch_for(&fixed, &encoded), None);
        let p = published(&[&fixed], &bundle);
        assert!(p.current);
        assert_eq!(p.roots, Some(bundle.fingerprints.clone()));
        assert!(!published(&[&cfg], &bundle).current);
        assert_eq!(
            published(&[], &bundle),
            Published {
                roots: None,
                current: true
            }
        );
    }

    #[test]
    fn during_a_rotation_the_bundle_holds_both_roots_and_trust_is_what_every_webhook_shares() {
        let roots = MeshRoots::new(
            root("a.example"),
            Duration::from_secs(3600),
            Arc::new(ManualClock::new(SystemTime::now())),
        );
        let before = roots.bundle().borrow().clone();
        roots.start_rotation(root("b.example")).unwrap();
        let during = roots.bundle().borrow().clone();
        assert_eq!(during.fingerprints.len(), 2);
        let old = ca_bundle(&before);
        let both = ca_bundle(&during);
        // One webhook updated, the other not yet: the API server trusts only the old root.
        let half = config(&[Some(&both), Some(&old)]);
        assert_eq!(trusted_roots(&half), before.fingerprints.iter().cloned().collect());
        let full = config(&[Some(&both), Some(&both)]);
        assert_eq!(trusted_roots(&full), during.fingerprints.iter().cloned().collect());
    }
}
