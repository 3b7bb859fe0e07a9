//! Workload controllers seen through kubectl: Deployments roll out through
//! ReplicaSets to Pods (`rollout status`, `rollout restart`, `scale`,
//! `wait`), Services get Endpoints and EndpointSlices, and deleting a
//! Deployment collects everything it owns.
//!
//! Pods are started by kubesim's simulated kubelet (Running and Ready
//! without a process) until the process runner lands.

use anyhow::Result;
use trellis_e2e::harness::TestCluster;

const WEB: &str = include_str!("fixtures/web.yaml");

fn count_lines(out: &str) -> usize {
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn deployments_roll_out_restart_and_scale() -> Result<()> {
    let k = TestCluster::start()?;
    k.kubectl_ok(&["apply", "-f", "-"], Some(WEB))?;
    let out = k.kubectl_ok(
        &["rollout", "status", "deploy/web", "-n", "shop", "--timeout=20s"],
        None,
    )?;
    assert!(out.contains("successfully rolled out"), "{out}");
    k.kubectl_ok(
        &[
            "wait",
            "--for=condition=Available",
            "deploy/web",
            "-n",
            "shop",
            "--timeout=20s",
        ],
        None,
    )?;
    let pods = k.kubectl_ok(&["get", "pods", "-n", "shop", "-l", "app=web", "-o", "name"], None)?;
    assert_eq!(count_lines(&pods), 2, "{pods}");
    let table = k.kubectl_ok(&["get", "pods", "-n", "shop", "-o", "wide"], None)?;
    assert!(
        table.contains("Running") && table.contains("2/2") && table.contains("10.244.") && table.contains("kubesim"),
        "{table}"
    );

    let described = k.kubectl_ok(&["describe", "deploy", "web", "-n", "shop"], None)?;
    assert!(
        described.contains("ScalingReplicaSet") && described.contains("Scaled up replica set web-"),
        "{described}"
    );
    let events = k.kubectl_ok(&["get", "events", "-n", "shop"], None)?;
    assert!(
        events.contains("Scheduled") && events.contains("SuccessfulCreate") && events.contains("Started"),
        "{events}"
    );

    k.kubectl_ok(&["rollout", "restart", "deploy/web", "-n", "shop"], None)?;
    k.kubectl_ok(
        &["rollout", "status", "deploy/web", "-n", "shop", "--timeout=20s"],
        None,
    )?;
    let rs = k.kubectl_ok(
        &[
            "get",
            "rs",
            "-n",
            "shop",
            "-o",
            "jsonpath={range .items[*]}{.spec.replicas}{' '}{end}",
        ],
        None,
    )?;
    let mut sizes: Vec<&str> = rs.split_whitespace().collect();
    sizes.sort_unstable();
    assert_eq!(sizes, ["0", "2"], "old ReplicaSet scaled to zero, new one full");
    let history = k.kubectl_ok(&["rollout", "history", "deploy/web", "-n", "shop"], None)?;
    assert!(history.contains('1') && history.contains('2'), "{history}");

    k.kubectl_ok(&["scale", "deploy/web", "-n", "shop", "--replicas=4"], None)?;
    k.kubectl_ok(
        &["rollout", "status", "deploy/web", "-n", "shop", "--timeout=20s"],
        None,
    )?;
    let ready = k.kubectl_ok(
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.updatedReplicas}",
        ],
        None,
    )?;
    assert_eq!(ready, "4/4");

    // Undo returns to revision 1's ReplicaSet, which becomes revision 3.
    k.kubectl_ok(&["rollout", "undo", "deploy/web", "-n", "shop"], None)?;
    k.kubectl_ok(
        &["rollout", "status", "deploy/web", "-n", "shop", "--timeout=20s"],
        None,
    )?;
    let sets = k.kubectl_ok(&["get", "rs", "-n", "shop", "-o", "name"], None)?;
    assert_eq!(count_lines(&sets), 2, "no new ReplicaSet for an old template: {sets}");
    let revisions = k.kubectl_ok(
        &[
            "get",
            "rs",
            "-n",
            "shop",
            "-o",
            "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/revision}{' '}{end}",
        ],
        None,
    )?;
    let mut revisions: Vec<&str> = revisions.split_whitespace().collect();
    revisions.sort_unstable();
    assert_eq!(revisions, ["2", "3"]);

    // A paused Deployment starts no rollout until resumed.
    k.kubectl_ok(&["rollout", "pause", "deploy/web", "-n", "shop"], None)?;
    k.kubectl_ok(
        &["set", "image", "deploy/web", "-n", "shop", "app=trellis-testapp:3"],
        None,
    )?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        count_lines(&k.kubectl_ok(&["get", "rs", "-n", "shop", "-o", "name"], None)?),
        2
    );
    k.kubectl_ok(&["rollout", "resume", "deploy/web", "-n", "shop"], None)?;
    k.kubectl_ok(
        &["rollout", "status", "deploy/web", "-n", "shop", "--timeout=20s"],
        None,
    )?;
    // Old pods may still be terminating for a moment.
    let mut images = String::new();
    for _ in 0..100 {
        images = k.kubectl_ok(
            &[
                "get",
                "pods",
                "-n",
                "shop",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ],
            None,
        )?;
        if images.split_whitespace().all(|i| i == "trellis-testapp:3") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(images.split_whitespace().all(|i| i == "trellis-testapp:3"), "{images}");
    Ok(())
}

#[test]
fn services_get_endpoints_and_deletion_cascades() -> Result<()> {
    let k = TestCluster::start()?;
    k.kubectl_ok(&["apply", "-f", "-"], Some(WEB))?;
    k.kubectl_ok(
        &["rollout", "status", "deploy/web", "-n", "shop", "--timeout=20s"],
        None,
    )?;
    // The controllers converge within a few sweeps.
    let mut ips = String::new();
    for _ in 0..100 {
        ips = k
            .kubectl_ok(
                &[
                    "get",
                    "endpoints",
                    "web",
                    "-n",
                    "shop",
                    "-o",
                    "jsonpath={.subsets[*].addresses[*].ip}",
                ],
                None,
            )
            .unwrap_or_default();
        if ips.split_whitespace().count() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(ips.split_whitespace().count(), 2, "{ips}");
    let port = k.kubectl_ok(
        &[
            "get",
            "endpoints",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.subsets[0].ports[0].port}",
        ],
        None,
    )?;
    assert_eq!(port, "8080", "targetPort resolved");
    let slice = k.kubectl_ok(
        &[
            "get",
            "endpointslices",
            "-n",
            "shop",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[0].endpoints[*].conditions.ready}",
        ],
        None,
    )?;
    assert_eq!(slice, "true true");
    let table = k.kubectl_ok(&["get", "endpoints", "web", "-n", "shop"], None)?;
    assert!(table.contains(":8080"), "{table}");

    // Deleting the Deployment collects its ReplicaSet and Pods.
    k.kubectl_ok(&["delete", "deploy", "web", "-n", "shop", "--timeout=20s"], None)?;
    let mut left = String::from("?");
    for _ in 0..100 {
        left = k.kubectl_ok(&["get", "rs,pods", "-n", "shop", "-o", "name"], None)?;
        if left.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(left.trim().is_empty(), "{left}");
    let ips = k.kubectl_ok(
        &["get", "endpoints", "web", "-n", "shop", "-o", "jsonpath={.subsets}"],
        None,
    )?;
    assert!(ips.is_empty() || ips == "[]", "{ips}");
    Ok(())
}

/// The slices of `service` in `shop`: name, sorted ports and endpoint count, one line each.
fn slices_of(k: &TestCluster, service: &str) -> Result<Vec<String>> {
    let out = k.kubectl_ok(
        &[
            "get",
            "endpointslices",
            "-n",
            "shop",
            "-l",
            &format!("kubernetes.io/service-name={service}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.ports[*].port} {.endpoints[*].addresses[0]}{\"\\n\"}{end}",
        ],
        None,
    )?;
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    Ok(lines)
}

/// As Kubernetes' EndpointSlice controller: pods whose named target port resolves to different
/// numbers are in different slices of the Service; when the Service loses its selector, the
/// slices the controller made are deleted and a slice made by hand is left alone.
#[test]
fn endpoint_slices_split_by_port_and_leave_hand_made_ones_alone() -> Result<()> {
    let k = TestCluster::start()?;
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: api-a, namespace: shop, labels: {app: api}}
spec: {containers: [{name: app, image: trellis-testapp:1, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-b, namespace: shop, labels: {app: api}}
spec: {containers: [{name: app, image: trellis-testapp:1, ports: [{name: http, containerPort: 9090}]}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-by-hand, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 7070}]
endpoints: [{addresses: [192.0.2.7]}]
"#;
    k.kubectl_ok(&["apply", "-f", "-"], Some(yaml))?;
    let mut slices = Vec::new();
    for _ in 0..100 {
        slices = slices_of(&k, "api")?;
        if slices.len() == 3 && slices.iter().all(|l| l.split_whitespace().count() == 3) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ports: Vec<(String, String)> = slices
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f.get(1).copied().unwrap_or_default().to_string())
        })
        .collect();
    assert_eq!(
        ports.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>(),
        ["7070", "8080", "9090"],
        "{slices:?}"
    );
    assert!(
        ports[1].0.starts_with("api-kubesim") && ports[2].0.starts_with("api-kubesim"),
        "{slices:?}"
    );

    // Without its selector, the Service keeps only the slice made by hand.
    k.kubectl_ok(
        &[
            "patch",
            "service",
            "api",
            "-n",
            "shop",
            "--type=json",
            "-p",
            r#"[{"op": "remove", "path": "/spec/selector"}]"#,
        ],
        None,
    )?;
    for _ in 0..100 {
        slices = slices_of(&k, "api")?;
        if slices.len() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(slices, ["api-by-hand 7070 192.0.2.7"]);
    Ok(())
}

#[test]
fn jobs_run_to_completion() -> Result<()> {
    let k = TestCluster::start()?;
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nspec:\n  completions: 3\n  parallelism: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: migrate, image: trellis-testapp:1}]\n";
    k.kubectl_ok(&["apply", "-f", "-"], Some(job))?;
    k.kubectl_ok(
        &["wait", "--for=condition=complete", "job/migrate", "--timeout=20s"],
        None,
    )?;
    let status = k.kubectl_ok(
        &[
            "get",
            "job",
            "migrate",
            "-o",
            "jsonpath={.status.succeeded} {.status.active}",
        ],
        None,
    )?;
    assert_eq!(status, "3 0");
    let table = k.kubectl_ok(&["get", "jobs"], None)?;
    assert!(table.contains("Complete") && table.contains("3/3"), "{table}");
    let pods = k.kubectl_ok(
        &[
            "get",
            "pods",
            "-l",
            "job-name=migrate",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
        None,
    )?;
    assert_eq!(pods, "Succeeded Succeeded Succeeded");
    Ok(())
}

#[test]
fn drain_evicts_and_cordon_holds_pods_until_uncordon() -> Result<()> {
    let k = TestCluster::start()?;
    k.kubectl_ok(&["apply", "-f", "-"], Some(WEB))?;
    k.kubectl_ok(
        &["rollout", "status", "deploy/web", "-n", "shop", "--timeout=20s"],
        None,
    )?;
    let out = k.kubectl_ok(&["drain", "kubesim", "--ignore-daemonsets", "--timeout=20s"], None)?;
    assert!(out.contains("evicted") && out.contains("node/kubesim drained"), "{out}");
    let nodes = k.kubectl_ok(&["get", "nodes"], None)?;
    assert!(nodes.contains("Ready,SchedulingDisabled"), "{nodes}");
    // The replacements wait for a schedulable node.
    let mut phases = String::new();
    for _ in 0..100 {
        phases = k.kubectl_ok(
            &["get", "pods", "-n", "shop", "-o", "jsonpath={.items[*].status.phase}"],
            None,
        )?;
        if phases == "Pending Pending" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(phases, "Pending Pending");
    k.kubectl_ok(&["uncordon", "kubesim"], None)?;
    k.kubectl_ok(
        &["rollout", "status", "deploy/web", "-n", "shop", "--timeout=20s"],
        None,
    )?;
    Ok(())
}
