//! Publishing the mesh trust anchor: a `trellis-ca-root` ConfigMap (`root-cert.pem`) in every
//! namespace, which injected proxies mount to verify the operator before they hold a
//! certificate of their own (Istio's `istio-ca-root-cert`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::ca::Bundle;
use crate::index::Shared;

/// The ConfigMap's name.
pub const ROOT_CONFIGMAP: &str = trellis_api::mesh::ROOT_CONFIGMAP;
/// Its key.
pub const ROOT_KEY: &str = "root-cert.pem";

/// The ConfigMap for `namespace` holding `roots` (several during a root rotation).
pub fn root_configmap(namespace: &str, roots: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(ROOT_CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            labels: Some([("app.kubernetes.io/part-of".to_string(), "trellis".to_string())].into()),
            ..Default::default()
        },
        data: Some([(ROOT_KEY.to_string(), roots.to_string())].into()),
        ..Default::default()
    }
}

/// Keep the ConfigMap in every namespace the index knows, applying it (server-side apply)
/// whenever a namespace appears or the trust bundle changes (a root rotation). Runs until the
/// change channel closes.
pub async fn publish(
    client: Client,
    index: Shared,
    mut changed: tokio::sync::watch::Receiver<u64>,
    mut bundle: tokio::sync::watch::Receiver<Bundle>,
) {
    let mut done: BTreeSet<String> = BTreeSet::new();
    loop {
        let roots = bundle.borrow_and_update().roots_pem.concat();
        let pending: Vec<String> = {
            let idx = index.read().expect("index lock");
            idx.namespaces().filter(|ns| !done.contains(*ns)).cloned().collect()
        };
        for ns in pending {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let params = PatchParams::apply(crate::FIELD_MANAGER).force();
            match api
                .patch(ROOT_CONFIGMAP, &params, &Patch::Apply(root_configmap(&ns, &roots)))
                .await
            {
                Ok(_) => {
                    tracing::debug!(namespace = %ns, "published the mesh root");
                    done.insert(ns);
                }
                // A terminating namespace refuses new objects; try again on the next change.
                Err(e) => tracing::warn!(namespace = %ns, error = %e, "could not publish the mesh root"),
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            r = bundle.changed() => {
                if r.is_err() { return }
                done.clear();
            }
        }
    }
}
