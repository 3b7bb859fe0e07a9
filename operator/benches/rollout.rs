//! Proxy rollout at scale: `WORKLOADS` (200) meshed Deployments of `REPLICAS` (2) pods each on
//! kubesim with simulated pods (the kubelet reports them Running and Ready; nothing runs), the
//! whole operator in process (its index, its leader election and its Mesh reconciler), and one
//! change of the Mesh's `spec.versions.proxy`.
//!
//! Measured: the wall time from the Mesh change until every Deployment's pods carry the new
//! image and the rollout says `Complete`; the waves, each split into kubesim rolling its
//! Deployments, the operator finding it healthy, and the next wave starting (from the Mesh's
//! `waveStarted`/`soakStarted` and the benchmark's looks); and, polled every 250 ms, the most pods
//! unavailable at once (a Deployment's wanted replicas minus its available ones, summed). The
//! budget it must stay under is what the policy allows: `batchPercent` of the workloads in a
//! wave, each rolling with `maxUnavailable: 1` (their own strategy), so wave size × 1. The run
//! fails (exit status 1) when the budget is exceeded or the rollout does not finish in time.
//!
//! Gates: `PodsReady` and `NoRestarts` (simulated pods run no proxy, so `ProxiesSynced` cannot
//! hold; the end-to-end test `e2e/tests/lifecycle.rs` gates on it with real proxies).
//!
//! `cargo bench -p trellis-operator --bench rollout`; knobs `WORKLOADS` (200), `REPLICAS` (2),
//! `BATCH_PERCENT` (10), `TIMEOUT_S` (900).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use trellis_api::mesh::Mesh;
use trellis_operator::app;
use trellis_operator::rollout::plan;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const OLD: &str = "ghcr.io/trellis-mesh/trellis-proxy:bench-old";
const NEW: &str = "ghcr.io/trellis-mesh/trellis-proxy:bench-new";
const NAMESPACES: usize = 10;

/// A meshed Deployment: its pod template carries the sidecar the injector would add, on `OLD`.
fn deployment(ns: &str, name: &str, replicas: usize) -> serde_json::Value {
    let settings = trellis_manifests::sidecar::Settings {
        proxy_image: OLD.into(),
        ..trellis_manifests::sidecar::Settings::new(&trellis_manifests::install::Options::default())
    };
    let mut template: k8s_openapi::api::core::v1::PodTemplateSpec = serde_json::from_value(json!({
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "ghcr.io/trellis-mesh/trellis-testapp:bench"}]},
    }))
    .expect("a pod template");
    trellis_manifests::sidecar::inject(&mut template, &settings).expect("injects");
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": template,
        },
    })
}

/// Pods unavailable now, summed over the Deployments, and the Deployments (`namespace/name`)
/// complete on `image` (their template assigned `image`, every pod updated and available, no
/// old pod left).
async fn look(deployments: &Api<Deployment>, replicas: i32, image: &str) -> anyhow::Result<(i32, BTreeSet<String>)> {
    let mut unavailable = 0;
    let mut done = BTreeSet::new();
    for d in deployments.list(&Default::default()).await? {
        let st = d.status.clone().unwrap_or_default();
        let available = st.available_replicas.unwrap_or(0);
        unavailable += (replicas - available).max(0);
        let assigned = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(trellis_api::mesh::PROXY_IMAGE_ANNOTATION))
            .is_some_and(|a| a == image);
        if assigned
            && st.updated_replicas == Some(replicas)
            && available == replicas
            && st.replicas == Some(replicas)
            && st.observed_generation == d.metadata.generation
        {
            done.insert(format!(
                "{}/{}",
                d.metadata.namespace.unwrap_or_default(),
                d.metadata.name.unwrap_or_default()
            ));
        }
    }
    Ok((unavailable, done))
}

/// One wave, as the operator recorded it in the Mesh's status and the benchmark saw its
/// Deployments.
#[derive(Debug, Default)]
struct Wave {
    /// `status.rollout.waveStarted`: the operator assigned the wave's workloads.
    started: Option<SystemTime>,
    /// The first look that found every workload of the wave complete (kubesim's controllers
    /// done).
    rolled: Option<SystemTime>,
    /// `status.rollout.soakStarted`: the operator found the wave healthy.
    healthy: Option<SystemTime>,
}

fn between(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<Duration> {
    b?.duration_since(a?).ok()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let workloads = env("WORKLOADS", 200);
    let replicas = env("REPLICAS", 2);
    let percent = env("BATCH_PERCENT", 10);
    let timeout = Duration::from_secs(env("TIMEOUT_S", 900) as u64);
    let batch = (workloads * percent).div_ceil(100).max(1);
    // Each Deployment of a wave may have maxUnavailable (1) pod down.
    let budget = i32::try_from(batch)?;

    rustls::crypto::ring::default_provider().install_default().ok();
    // kubesim with simulated pods (`TRELLIS_E2E_CLUSTER` unset).
    let cluster = support::Target::acquire_objects_only()?;
    support::apply_crds(&cluster);
    let mut objects = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "trellis-system"}})];
    for n in 0..NAMESPACES {
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("bench-{n}")}}));
    }
    for i in 0..workloads {
        objects.push(deployment(
            &format!("bench-{}", i % NAMESPACES),
            &format!("w{i}"),
            replicas,
        ));
    }
    let yaml = objects
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let started = Instant::now();
    cluster.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&yaml))?;
    let client = cluster.client().await?;
    let deployments: Api<Deployment> = Api::all(client.clone());
    let replicas = i32::try_from(replicas)?;
    loop {
        let (unavailable, _) = look(&deployments, replicas, OLD).await?;
        if unavailable == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "the {workloads} Deployments did not become available"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{workloads} Deployments × {replicas} pods available in {:.1?}",
        started.elapsed()
    );

    let meshes: Api<Mesh> = Api::all(client.clone());
    let mesh: Mesh = serde_json::from_value(json!({
        "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
        "spec": {
            "versions": {"proxy": OLD},
            "rollout": {"batchPercent": percent, "pause": "0s", "progressDeadline": "10m", "healthGates": ["PodsReady", "NoRestarts"]},
        },
    }))?;
    meshes.create(&Default::default(), &mesh).await?;
    let mut config = support::operator_config(0, 3600);
    config.proxy_image = OLD.into();
    let op = app::start(config, client.clone()).await?;
    // Settled: the operator reconciled the Mesh on OLD (nothing to roll).
    loop {
        let m = meshes.get("default").await?;
        if m.status.as_ref().and_then(|s| s.observed_generation).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let t0 = Instant::now();
    meshes
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"versions": {"proxy": NEW}}})),
        )
        .await?;
    let mut max_unavailable = 0;
    let mut waves = 0;
    let mut timeline: Vec<Wave> = Vec::new();
    let outcome = loop {
        let (unavailable, done_set) = look(&deployments, replicas, NEW).await?;
        let done = done_set.len();
        max_unavailable = max_unavailable.max(unavailable);
        let m = meshes.get("default").await?;
        let r = m.status.as_ref().and_then(|s| s.rollout.clone());
        if let Some(r) = &r
            && r.target_image == NEW
        {
            if r.wave > waves {
                waves = r.wave;
                timeline.push(Wave::default());
            }
            if let Some(w) = timeline.last_mut() {
                w.started = w.started.or(plan::parse_time(r.wave_started.as_deref()));
                w.healthy = w.healthy.or(plan::parse_time(r.soak_started.as_deref()));
                let members: Vec<String> = r
                    .wave_workloads
                    .iter()
                    .flatten()
                    .map(|m| format!("{}/{}", m.namespace, m.name))
                    .collect();
                if w.rolled.is_none() && !members.is_empty() && members.iter().all(|m| done_set.contains(m)) {
                    w.rolled = Some(SystemTime::now());
                }
            }
        }
        let complete = r
            .as_ref()
            .is_some_and(|r| r.target_image == NEW && r.phase == Some(trellis_api::mesh::RolloutPhase::Complete));
        if complete && done == workloads {
            break Ok(t0.elapsed());
        }
        if let Some(r) = &r
            && r.phase == Some(trellis_api::mesh::RolloutPhase::RolledBack)
        {
            break Err(anyhow::anyhow!("the rollout was rolled back: {:?}", r.failure));
        }
        anyhow::ensure!(
            max_unavailable <= budget,
            "{max_unavailable} pods were unavailable at once (wave {waves}, {done} of {workloads} done), over the budget of {budget}"
        );
        if t0.elapsed() > timeout {
            break Err(anyhow::anyhow!(
                "not complete after {timeout:?}: {done} of {workloads} done, wave {waves}, at most {max_unavailable} pods unavailable at once (budget {budget})"
            ));
        }
        // why: each look lists every Deployment; in a debug build on 2 cores, looking more
        // often than this slows the cluster it measures.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    op.stop();
    // Where a wave's time goes: kubesim rolling the wave's Deployments, the operator finding
    // the wave healthy after that, and the next wave starting after the healthy one (the soak,
    // `pause`, is 0 here).
    let per_wave: Vec<Duration> = timeline.iter().filter_map(|w| between(w.started, w.healthy)).collect();
    let rolling: Vec<Duration> = timeline.iter().filter_map(|w| between(w.started, w.rolled)).collect();
    let noticing: Vec<Duration> = timeline.iter().filter_map(|w| between(w.rolled, w.healthy)).collect();
    let handoff: Vec<Duration> = timeline
        .windows(2)
        .filter_map(|p| between(p[0].healthy, p[1].started))
        .collect();
    println!(
        "per wave (median of {}): started → healthy {:.1?}; of which its Deployments rolled by kubesim {:.1?} (median of {}), healthy seen by the operator {:.1?} after that (median of {}); next wave {:.1?} after the healthy one (median of {})",
        per_wave.len(),
        median(per_wave.clone()),
        median(rolling.clone()),
        rolling.len(),
        median(noticing.clone()),
        noticing.len(),
        median(handoff.clone()),
        handoff.len()
    );
    let wall = outcome?;
    let median = median(per_wave);
    println!(
        "rollout of {workloads} meshed Deployments ({} pods), batchPercent {percent} ({batch} per wave):",
        workloads * replicas as usize
    );
    println!("  wall time            {wall:.1?}");
    println!("  waves                {waves} (median {median:.1?} each)");
    println!("  max pods unavailable {max_unavailable} (budget {budget}: {batch} workloads × maxUnavailable 1)");
    anyhow::ensure!(
        max_unavailable <= budget,
        "{max_unavailable} pods were unavailable at once, over the budget of {budget}"
    );
    anyhow::ensure!(
        waves as usize == workloads.div_ceil(batch),
        "{waves} waves, expected {}",
        workloads.div_ceil(batch)
    );
    Ok(())
}
