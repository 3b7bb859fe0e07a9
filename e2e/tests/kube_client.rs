//! kube-rs 5 clients against kubesim: watchers see every change in order
//! and recover from `410 Gone`, server-side apply of status, optimistic
//! concurrency, pagination.

use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;
use trellis_e2e::harness::TestCluster;

/// Why 10s: every step here takes milliseconds; the bound only turns a hang
/// into a failure.
const STEP: Duration = Duration::from_secs(10);

fn cm(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"suite": "watch"}},
        "data": {"v": value}
    }))
    .expect("valid ConfigMap")
}

fn describe(ev: &watcher::Event<ConfigMap>) -> String {
    let show = |c: &ConfigMap| {
        format!(
            "{}={}",
            c.metadata.name.clone().unwrap_or_default(),
            c.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default()
        )
    };
    match ev {
        watcher::Event::Apply(c) => format!("apply {}", show(c)),
        watcher::Event::Delete(c) => format!("delete {}", show(c)),
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(c) => format!("init-apply {}", show(c)),
        watcher::Event::InitDone => "init-done".into(),
    }
}

async fn next_event<S>(stream: &mut S) -> Result<Result<watcher::Event<ConfigMap>, watcher::Error>>
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(STEP, stream.next())
        .await
        .context("no watch event in time")?
        .context("watch stream ended")
}

async fn changes_in_order(config: watcher::Config) -> Result<()> {
    let k = TestCluster::start()?;
    let api: Api<ConfigMap> = Api::namespaced(k.client().await?, "default");
    for name in ["a", "b", "c"] {
        api.create(&PostParams::default(), &cm(name, "0")).await?;
    }
    let mut stream = watcher(api.clone(), config.labels("suite=watch")).boxed();
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("init-done") {
        seen.push(describe(&next_event(&mut stream).await??));
    }
    assert_eq!(
        seen,
        [
            "init",
            "init-apply a=0",
            "init-apply b=0",
            "init-apply c=0",
            "init-done"
        ]
    );

    let writer = api.clone();
    let writes = tokio::spawn(async move {
        writer.create(&PostParams::default(), &cm("x", "0")).await?;
        for i in 1..=5 {
            let mut cur = writer.get("x").await?;
            cur.data = Some([("v".to_string(), i.to_string())].into());
            writer.replace("x", &PostParams::default(), &cur).await?;
        }
        writer.delete("x", &Default::default()).await?;
        anyhow::Ok(())
    });
    let mut changes = Vec::new();
    while changes.last().map(String::as_str) != Some("delete x=5") {
        changes.push(describe(&next_event(&mut stream).await??));
    }
    writes.await??;
    assert_eq!(
        changes,
        [
            "apply x=0",
            "apply x=1",
            "apply x=2",
            "apply x=3",
            "apply x=4",
            "apply x=5",
            "delete x=5"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn list_watch_sees_every_change_in_order() -> Result<()> {
    // A page size of 2 makes the initial list use limit/continue.
    changes_in_order(watcher::Config::default().page_size(2)).await
}

#[tokio::test]
async fn streaming_list_sees_every_change_in_order() -> Result<()> {
    changes_in_order(watcher::Config::default().streaming_lists()).await
}

#[tokio::test]
async fn watcher_recovers_after_gone() -> Result<()> {
    let k = TestCluster::start()?;
    let api: Api<ConfigMap> = Api::namespaced(k.client().await?, "default");
    api.create(&PostParams::default(), &cm("before", "1")).await?;
    let mut stream = watcher(api.clone(), watcher::Config::default().labels("suite=watch")).boxed();
    loop {
        if matches!(next_event(&mut stream).await??, watcher::Event::InitDone) {
            break;
        }
    }
    k.compact().await?;
    api.create(&PostParams::default(), &cm("after", "2")).await?;

    let mut gone = false;
    let mut relisted = Vec::new();
    loop {
        match next_event(&mut stream).await? {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => gone = true,
            Err(e) => anyhow::bail!("unexpected watcher error: {e}"),
            Ok(watcher::Event::InitDone) if gone => break,
            Ok(ev) => relisted.push(describe(&ev)),
        }
    }
    assert!(gone, "the watcher was told 410 Gone");
    assert!(relisted.contains(&"init".to_string()), "{relisted:?}");
    assert!(relisted.contains(&"init-apply after=2".to_string()), "{relisted:?}");
    assert!(relisted.contains(&"init-apply before=1".to_string()), "{relisted:?}");

    // And it keeps following changes after the relist.
    api.delete("before", &Default::default()).await?;
    assert_eq!(describe(&next_event(&mut stream).await??), "delete before=1");
    Ok(())
}

#[tokio::test]
async fn raw_watch_from_a_compacted_version_is_gone() -> Result<()> {
    let k = TestCluster::start()?;
    let api: Api<ConfigMap> = Api::namespaced(k.client().await?, "default");
    let created = api.create(&PostParams::default(), &cm("old", "1")).await?;
    let rv = created.metadata.resource_version.clone().unwrap_or_default();
    k.compact().await?;
    let mut events = api.watch(&WatchParams::default(), &rv).await?.boxed();
    let first = tokio::time::timeout(STEP, events.try_next()).await??;
    match first {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => anyhow::bail!("expected a 410 ERROR event, got {other:?}"),
    }

    // A watch with a timeout ends by itself, after bookmarks.
    let params = WatchParams {
        bookmarks: true,
        ..WatchParams::default().timeout(2)
    };
    let current = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let all: Vec<_> = tokio::time::timeout(STEP, api.watch(&params, &current).await?.try_collect::<Vec<_>>()).await??;
    assert!(all.iter().any(|e| matches!(e, WatchEvent::Bookmark(_))), "{all:?}");
    Ok(())
}

#[tokio::test]
async fn optimistic_concurrency_generate_name_and_pagination() -> Result<()> {
    let k = TestCluster::start()?;
    let api: Api<ConfigMap> = Api::namespaced(k.client().await?, "default");
    let v1 = api.create(&PostParams::default(), &cm("occ", "1")).await?;
    let mut v2 = v1.clone();
    v2.data = Some([("v".to_string(), "2".to_string())].into());
    api.replace("occ", &PostParams::default(), &v2).await?;
    // Writing from the stale copy is a conflict.
    match api.replace("occ", &PostParams::default(), &v2).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => anyhow::bail!("expected 409, got {other:?}"),
    }

    let generated: ConfigMap = serde_json::from_value(json!({"metadata": {"generateName": "gen-"}}))?;
    let made = api.create(&PostParams::default(), &generated).await?;
    let name = made.metadata.name.unwrap_or_default();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert!(made.metadata.uid.is_some() && made.metadata.creation_timestamp.is_some());

    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("page-{i}"), "p"))
            .await?;
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().labels("suite=watch").limit(2);
    loop {
        let page = api.list(&params).await?;
        assert!(page.items.len() <= 2);
        names.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names, ["occ", "page-0", "page-1", "page-2", "page-3", "page-4"]);
    let by_field = api.list(&ListParams::default().fields("metadata.name=page-3")).await?;
    assert_eq!(by_field.items.len(), 1);
    Ok(())
}

/// As upstream: an object that is not there is a `NotFound` Status (`get_opt` gives `None`),
/// but a path in an API group that is not served (e.g. all its CRDs deleted) is a plain-text
/// "404 page not found", which kube-rs reports as an error with code 404.
#[tokio::test]
async fn a_missing_object_is_not_found_and_an_unserved_group_a_plain_404() -> Result<()> {
    let k = TestCluster::start()?;
    let client = k.client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert!(api.get_opt("absent").await?.is_none());
    let gvk = kube::api::GroupVersionKind::gvk("gone.example.com", "v1", "Thing");
    let things: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client, "default", &kube::api::ApiResource::from_gvk(&gvk));
    match things.get_opt("x").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 404);
            assert!(s.message.contains("404 page not found"), "{s:?}");
        }
        other => anyhow::bail!("expected a plain 404, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn server_side_apply_of_status_keeps_spec_and_records_the_manager() -> Result<()> {
    // A custom resource: no kubesim controller writes its status.
    let k = TestCluster::start()?;
    k.kubectl_ok(&["apply", "-f", "-"], Some(include_str!("fixtures/widget-crd.yaml")))?;
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(k.client().await?, "default", &resource);
    let spec = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "op"}, "spec": {"color": "blue", "replicas": 2}});
    api.patch("op", &PatchParams::apply("installer"), &Patch::Apply(&spec))
        .await?;
    let status = json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"phase": "Ready", "replicas": 2}});
    let got = api
        .patch_status(
            "op",
            &PatchParams::apply("trellis-operator").force(),
            &Patch::Apply(&status),
        )
        .await?;
    assert_eq!(got.data["status"], json!({"phase": "Ready", "replicas": 2}));
    assert_eq!(got.data["spec"]["color"], "blue");
    let managers: Vec<(String, Option<String>)> = got
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.manager.unwrap_or_default(), m.subresource))
        .collect();
    assert!(managers.contains(&("installer".to_string(), None)), "{managers:?}");
    assert!(
        managers.contains(&("trellis-operator".to_string(), Some("status".to_string()))),
        "{managers:?}"
    );

    // The spec manager re-applies without the status: status stays.
    api.patch("op", &PatchParams::apply("installer"), &Patch::Apply(&spec))
        .await?;
    let again = api.get("op").await?;
    assert_eq!(again.data["status"]["phase"], "Ready");
    assert_eq!(again.metadata.generation, Some(1), "an identical apply changes nothing");
    Ok(())
}

async fn review(client: &kube::Client, token: &str, audiences: &[&str]) -> Result<(bool, String)> {
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let req: TokenReview = serde_json::from_value(json!({"spec": {"token": token, "audiences": audiences}}))?;
    let st = reviews
        .create(&PostParams::default(), &req)
        .await?
        .status
        .context("TokenReview status")?;
    Ok((
        st.authenticated == Some(true),
        st.user.and_then(|u| u.username).unwrap_or_default(),
    ))
}

async fn issue(sas: &Api<ServiceAccount>, spec: serde_json::Value) -> Result<String> {
    let tr: TokenRequest = serde_json::from_value(json!({"spec": spec}))?;
    Ok(sas
        .create_token_request("default", &PostParams::default(), &tr)
        .await?
        .status
        .context("TokenRequest status")?
        .token)
}

#[tokio::test]
async fn service_account_tokens_are_issued_reviewed_and_accepted() -> Result<()> {
    let k = TestCluster::start()?;
    let client = k.client().await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");

    let token = issue(&sas, json!({"audiences": ["trellis"]})).await?;
    assert_eq!(
        review(&client, &token, &["trellis"]).await?,
        (true, "system:serviceaccount:default:default".to_string())
    );
    assert!(!review(&client, &token, &["other"]).await?.0, "wrong audience");
    assert!(!review(&client, "not-a-token", &[]).await?.0);

    // A token for the API server's own audience is a working credential.
    let api_token = issue(&sas, json!({})).await?;
    let kubeconfig = std::fs::read_to_string(&k.kubeconfig)?.replace(&k.admin_token, &api_token);
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig)?;
    let sa_client = kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?;
    let pods: Api<Pod> = Api::namespaced(sa_client, "default");
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());

    // A pod-bound token dies with its pod.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "holder"}, "spec": {"containers": [{"name": "a", "image": "trellis-testapp:1"}]}}),
    )?;
    let pod = pods.create(&PostParams::default(), &pod).await?;
    let bound = issue(&sas, json!({"audiences": ["trellis"], "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "holder", "uid": pod.metadata.uid}})).await?;
    assert!(review(&client, &bound, &["trellis"]).await?.0);
    pods.delete("holder", &Default::default()).await?;
    assert!(!review(&client, &bound, &["trellis"]).await?.0, "the pod is gone");
    Ok(())
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthorized() -> Result<()> {
    let k = TestCluster::start()?;
    let kubeconfig = std::fs::read_to_string(&k.kubeconfig)?.replace(&k.admin_token, "not-the-token");
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig)?;
    let client = kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    match cms.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (401, "Unauthorized")),
        other => anyhow::bail!("expected 401, got {other:?}"),
    }
    // Health endpoints answer without credentials.
    let health: String = client
        .request_text(http::Request::get("/readyz").body(Vec::new())?)
        .await?;
    assert_eq!(health, "ok");
    Ok(())
}
