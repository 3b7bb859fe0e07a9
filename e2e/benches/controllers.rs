//! kubesim's workload controllers at the size of the operator's rollout benchmark
//! (`operator/benches/rollout.rs`): `WORKLOADS` (200) Deployments of `REPLICAS` (2) pods over
//! 10 namespaces, in process (the store and the controllers, no API server, no kubelet: pods
//! stay Pending). Every Deployment's template is then changed once, as a proxy rollout does,
//! so each owns an old and a new ReplicaSet.
//!
//! Measured: the mean time of one sweep of the Deployment controller and of the ReplicaSet
//! controller over the settled cluster (`SWEEPS` of each, 20) — the work kubesim repeats after
//! every batch of changes and at least once a second, whether anything changed or not.
//!
//! `cargo bench -p trellis-e2e --bench controllers --profile dev` (the profile kubesim runs in
//! the tests and the rollout benchmark); knobs `WORKLOADS`, `REPLICAS`, `SWEEPS`.

use std::time::{Duration, Instant};

use serde_json::json;
use trellis_e2e::cluster::{Cluster, WriteOptions};
use trellis_e2e::workloads;

const NAMESPACES: usize = 10;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sweep both controllers until nothing changes (at most 50 rounds); how many rounds.
fn settle(cluster: &Cluster) -> usize {
    for round in 1..=50 {
        let changed = workloads::sweep_deployments(cluster) | workloads::sweep_replicasets(cluster);
        if !changed {
            return round;
        }
    }
    50
}

/// The mean time of `sweeps` runs of `sweep`.
fn mean(sweeps: usize, sweep: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    for _ in 0..sweeps {
        std::hint::black_box(sweep());
    }
    started.elapsed() / u32::try_from(sweeps.max(1)).unwrap_or(u32::MAX)
}

fn main() {
    let (count, replicas, sweeps) = (env("WORKLOADS", 200), env("REPLICAS", 2), env("SWEEPS", 20));
    let cluster = Cluster::new();
    let catalog = |group: &str, resource: &str| {
        cluster
            .catalog
            .get(group, "v1", resource)
            .unwrap_or_else(|| panic!("kubesim serves {group}/v1 {resource}"))
    };
    let (namespaces, deployments) = (catalog("", "namespaces"), catalog("apps", "deployments"));
    let opts = WriteOptions::default();
    for n in 0..NAMESPACES {
        cluster
            .create(
                &namespaces,
                None,
                json!({"metadata": {"name": format!("ns-{n}")}}),
                &opts,
            )
            .expect("a namespace");
    }
    let deployment = |i: usize, version: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("app-{i}"), "namespace": format!("ns-{}", i % NAMESPACES)},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": format!("app-{i}")}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": {"app": format!("app-{i}")}, "annotations": {"trellis.dev/proxy-image": version}},
                    "spec": {"containers": [{"name": "app", "image": "app:1"}]},
                },
            },
        })
    };
    for i in 0..count {
        let ns = format!("ns-{}", i % NAMESPACES);
        cluster
            .create(&deployments, Some(&ns), deployment(i, "proxy:old"), &opts)
            .expect("a Deployment");
    }
    let rounds = settle(&cluster);
    for i in 0..count {
        let ns = format!("ns-{}", i % NAMESPACES);
        let name = format!("app-{i}");
        let mut next = cluster.get(&deployments, Some(&ns), &name).expect("the Deployment");
        next["spec"] = deployment(i, "proxy:new")["spec"].clone();
        cluster
            .update(&deployments, Some(&ns), &name, "", next, &opts)
            .expect("the template changed");
    }
    let rounds = rounds + settle(&cluster);
    let stored = |group: &str, resource: &str| cluster.store.list(&format!("{group}/{resource}"), None).0.len();
    println!(
        "{count} Deployments x {replicas} replicas over {NAMESPACES} namespaces, settled in {rounds} rounds: {} ReplicaSets, {} pods, {} events stored",
        stored("apps", "replicasets"),
        stored("", "pods"),
        stored("", "events"),
    );
    let d = mean(sweeps, || workloads::sweep_deployments(&cluster));
    let rs = mean(sweeps, || workloads::sweep_replicasets(&cluster));
    println!(
        "one sweep, mean of {sweeps}: Deployment controller {:.1} ms, ReplicaSet controller {:.1} ms",
        d.as_secs_f64() * 1000.0,
        rs.as_secs_f64() * 1000.0
    );
}
