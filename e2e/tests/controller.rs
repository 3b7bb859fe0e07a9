//! A kube-runtime `Controller` against kubesim: it reconciles a custom
//! resource into an owned ConfigMap, writes status with server-side apply,
//! recreates the child when it is deleted (`owns`), follows spec changes,
//! and the garbage collector removes the child with its owner.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource as _, ResourceExt as _};
use serde_json::json;
use trellis_e2e::harness::TestCluster;

const WIDGET_CRD: &str = include_str!("fixtures/widget-crd.yaml");
const MANAGER: &str = "widget-controller";

struct Ctx {
    client: kube::Client,
    resource: ApiResource,
}

async fn reconcile(widget: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let ns = widget.namespace().unwrap_or_default();
    let name = widget.name_any();
    let color = widget.data["spec"]["color"].as_str().unwrap_or_default().to_string();
    let owner = widget
        .controller_owner_ref(&ctx.resource)
        .expect("widgets have a name and uid");
    let child = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("{name}-config"), "ownerReferences": [owner]},
        "data": {"color": color},
    });
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    cms.patch(
        &format!("{name}-config"),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&child),
    )
    .await?;
    let widgets: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ctx.resource);
    let status = json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"phase": "Ready", "replicas": 1}});
    widgets
        .patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&status))
        .await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<DynamicObject>, _: &kube::Error, _: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

/// Polls `check` every 50ms for up to 10s.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("timed out waiting for {what}")
}

#[tokio::test]
async fn controller_reconciles_owned_children_and_status() -> Result<()> {
    let k = TestCluster::start()?;
    k.kubectl_ok(&["apply", "-f", "-"], Some(WIDGET_CRD))?;
    let client = k.client().await?;
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        resource: resource.clone(),
    });
    let controller = Controller::new_with(widgets.clone(), watcher::Config::default(), resource.clone())
        .owns(cms.clone(), watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    let w: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"color": "red"}}),
    )?;
    widgets.create(&PostParams::default(), &w).await?;
    let color = |cms: Api<ConfigMap>| async move {
        cms.get_opt("w-config")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.data)
            .and_then(|d| d.get("color").cloned())
    };
    eventually("the child ConfigMap", || async {
        color(cms.clone()).await.as_deref() == Some("red")
    })
    .await?;
    eventually("the Ready status", || async {
        widgets
            .get("w")
            .await
            .is_ok_and(|w| w.data["status"]["phase"] == "Ready")
    })
    .await?;
    let child = cms.get("w-config").await?;
    let owner = child.owner_references().first().context("owner reference")?;
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Widget", "w", Some(true))
    );

    // Events from kube-runtime's Recorder (events.k8s.io/v1) are the same
    // Events kubectl reads (core/v1).
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: None,
        },
    );
    let reference = widgets.get("w").await?.object_ref(&resource);
    let event = Event {
        type_: EventType::Normal,
        reason: "Reconciled".into(),
        note: Some("child ConfigMap in place".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await?;
    recorder.publish(&event, &reference).await?;
    let seen = k.kubectl_ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=w",
            "-o",
            "jsonpath={.items[*].reason} {.items[*].series.count}",
        ],
        None,
    )?;
    assert_eq!(seen, "Reconciled 2");
    let described = k.kubectl_ok(&["describe", "widget", "w"], None)?;
    assert!(
        described.contains("Reconciled") && described.contains("child ConfigMap in place"),
        "{described}"
    );

    // Deleting the child wakes the controller through `owns`.
    cms.delete("w-config", &Default::default()).await?;
    eventually("the child to come back", || async {
        color(cms.clone()).await.is_some()
    })
    .await?;

    // A spec change flows to the child.
    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"color": "blue"}})),
        )
        .await?;
    eventually("the child to turn blue", || async {
        color(cms.clone()).await.as_deref() == Some("blue")
    })
    .await?;

    // Deleting the owner collects the child.
    running.abort();
    widgets.delete("w", &Default::default()).await?;
    eventually("the child to be collected", || async {
        cms.get_opt("w-config").await.is_ok_and(|c| c.is_none())
    })
    .await?;
    Ok(())
}
