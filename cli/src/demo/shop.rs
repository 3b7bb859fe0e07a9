//! The shop, deployed as a user deploys an application into a mesh: create its namespaces,
//! label the shop's `trellis.dev/inject=enabled` (as `kubectl label` does), apply its plain
//! YAML (no sidecar in it: the operator's injector adds one to every pod) and its routing, and
//! wait until it has rolled out. Also what a person debugging a failed step looks at first.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use trellis_api::mesh::SYSTEM_NAMESPACE;
use trellis_manifests::demo;
use trellis_manifests::sidecar::{INJECT_ENABLED, INJECT_LABEL};

use crate::cluster::{Cluster, describe};
use crate::install;
use crate::progress::Progress;

/// Create the shop's namespaces, label the shop's for injection, apply the rest of the shop
/// and its routing, and wait until every Deployment has rolled out by `deadline`.
pub async fn deploy(cluster: &Cluster, deadline: Instant, progress: &mut Progress) -> anyhow::Result<()> {
    let shop = demo::shop();
    let (namespaces, rest): (Vec<&Value>, Vec<&Value>) = shop.iter().partition(|o| o["kind"] == "Namespace");
    progress.begin(format!(
        "Creating the namespaces; kubectl label namespace {} {INJECT_LABEL}={INJECT_ENABLED}",
        demo::NAMESPACE
    ));
    for ns in &namespaces {
        cluster.apply(ns, false).await?;
    }
    let shop_ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": demo::NAMESPACE}});
    cluster
        .merge_patch(
            &shop_ns,
            &json!({"metadata": {"labels": {INJECT_LABEL: INJECT_ENABLED}}}),
        )
        .await?;
    progress.done("");

    progress.begin(format!(
        "Applying the shop ({} objects, no sidecar in them)",
        rest.len()
    ));
    for o in &rest {
        progress.update(&describe(o));
        install::apply_one(cluster, o).await?;
    }
    progress.done("");

    let routing = routing()?;
    progress.begin(format!(
        "Applying its routing ({} objects from examples/demo/routing.yaml)",
        routing.len()
    ));
    for o in &routing {
        progress.update(&describe(o));
        install::apply_one(cluster, o).await?;
    }
    progress.done("");
    let deployments: Vec<Value> = rest
        .into_iter()
        .filter(|o| o["kind"] == "Deployment")
        .cloned()
        .collect();
    install::wait_rolled_out(cluster, &deployments, deadline, progress).await
}

/// The documents of the shop's routing.
fn routing() -> anyhow::Result<Vec<Value>> {
    trellis_api::document::parse_documents(demo::ROUTING)
        .into_iter()
        .map(|d| {
            d.content
                .with_context(|| format!("examples/demo/routing.yaml line {}: not a YAML object", d.line))
        })
        .collect()
}

/// `http://address:port` of the ingress gateway's load balancer, once it has one.
pub async fn gateway_address(cluster: &Cluster, timeout: Duration) -> anyhow::Result<String> {
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": demo::GATEWAY, "namespace": SYSTEM_NAMESPACE}});
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(live) = cluster.get(&svc).await? {
            let ingress = &live["status"]["loadBalancer"]["ingress"][0];
            let host = ingress["ip"].as_str().or_else(|| ingress["hostname"].as_str());
            let port = live["spec"]["ports"][0]["port"].as_i64();
            if let (Some(h), Some(p)) = (host, port) {
                return Ok(format!("http://{h}:{p}"));
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Service {SYSTEM_NAMESPACE}/{} has no load balancer address after {timeout:?}",
            demo::GATEWAY
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every pod of the demo's namespaces with its containers' states, and the last log lines of
/// containers that are not ready.
pub async fn describe_pods(cluster: &Cluster) -> String {
    let pods = match cluster.list("v1", "Pod", None, None).await {
        Ok(p) => p,
        Err(e) => return format!("(the pods could not be listed: {e})\n"),
    };
    let namespaces = [SYSTEM_NAMESPACE, demo::NAMESPACE, demo::COLLECTOR_NAMESPACE];
    let mut out = String::new();
    for pod in pods
        .iter()
        .filter(|p| namespaces.iter().any(|n| p["metadata"]["namespace"] == *n))
    {
        let (ns, name) = (
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default(),
        );
        out.push_str(&format!(
            "{ns}/{name}: {}\n",
            pod["status"]["phase"].as_str().unwrap_or("no phase")
        ));
        let statuses = pod["status"]["initContainerStatuses"]
            .as_array()
            .into_iter()
            .chain(pod["status"]["containerStatuses"].as_array())
            .flatten();
        // Not ready, and not an init container that finished its work.
        for status in statuses.filter(|s| s["ready"] != true && s["state"]["terminated"]["exitCode"] != 0) {
            let container = status["name"].as_str().unwrap_or_default();
            out.push_str(&format!("--- {ns}/{name} [{container}] state {}\n", status["state"]));
            let logs = format!("/api/v1/namespaces/{ns}/pods/{name}/log?container={container}&tailLines=15");
            if let Ok(log) = cluster.get_text(&logs).await {
                out.push_str(&log);
            }
        }
    }
    out
}
