//! What the Mesh's finalizer does when the Mesh is deleted: uninstalling the mesh removes what
//! the operator created — the `trellis-ca-root` ConfigMaps and Trellis' own two admission
//! webhook configurations, each listed by name and label — and never a workload. Running
//! sidecars keep serving with what they hold until their certificates expire.

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use trellis_api::mesh::Mesh;
use trellis_manifests::install::webhooks::{INJECTOR, VALIDATOR};

use super::status::MeshStatusExt;
use super::{Context, Error, PART_OF};
use crate::events::EventType;

/// Remove what the operator created for `mesh` and say so in an event.
pub(super) async fn uninstall(mesh: &Mesh, ctx: &Context) -> Result<Action, Error> {
    let mut removed = Vec::new();
    let configmaps: Api<ConfigMap> = Api::all(ctx.client.clone());
    let trust = ListParams::default()
        .fields(&format!("metadata.name={}", crate::trust::ROOT_CONFIGMAP))
        .labels(PART_OF);
    for cm in configmaps.list_metadata(&trust).await.map_err(Error::Kube)? {
        let ns = cm.namespace().unwrap_or_default();
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        delete_if_present(&api, &cm.name_any()).await?;
        removed.push(format!("ConfigMap {ns}/{}", cm.name_any()));
    }
    // Trellis' own two configurations, listed by name: the operator may read and delete
    // no other (its RBAC names these two).
    let ours = |name: &str| {
        ListParams::default()
            .fields(&format!("metadata.name={name}"))
            .labels(PART_OF)
    };
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
    for w in mutating.list_metadata(&ours(INJECTOR)).await.map_err(Error::Kube)? {
        delete_if_present(&mutating, &w.name_any()).await?;
        removed.push(format!("MutatingWebhookConfiguration {}", w.name_any()));
    }
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(ctx.client.clone());
    for w in validating.list_metadata(&ours(VALIDATOR)).await.map_err(Error::Kube)? {
        delete_if_present(&validating, &w.name_any()).await?;
        removed.push(format!("ValidatingWebhookConfiguration {}", w.name_any()));
    }
    tracing::info!(removed = ?removed, "the Mesh was deleted; removed what the operator created");
    let note = format!(
        "removed {} objects the operator created ({}); workloads are untouched and running sidecars keep their config until their certificates expire",
        removed.len(),
        summarize(&removed)
    );
    mesh.publish(ctx, EventType::Normal, "Deleted", "Cleanup", note).await?;
    Ok(Action::await_change())
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

fn summarize(items: &[String]) -> String {
    match items.len() {
        0 => "nothing".into(),
        n if n <= 5 => items.join(", "),
        n => format!("{}, and {} more", items[..5].join(", "), n - 5),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use std::sync::Arc;

    use crate::mesh::fixtures::{Fixed, MeshFixture, Scenario, mesh, timeout_after_1s};
    use crate::mesh::{Context, reconcile};

    use super::*;

    #[tokio::test]
    async fn deleting_the_mesh_removes_what_the_operator_created_and_then_the_finalizer() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh("default", json!({})).finalized().deleted();
        let scenario = server.run(Scenario::Cleanup {
            configmaps: vec![
                ("shop".into(), "trellis-ca-root".into()),
                ("web".into(), "trellis-ca-root".into()),
            ],
            mutating: vec!["trellis-sidecar-injector".into()],
            mesh: m.clone(),
        });
        let action = reconcile(Arc::new(m), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        assert_eq!(action, Action::await_change());
    }
}
