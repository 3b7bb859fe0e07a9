//! `meshctl install` and `meshctl version` as a user runs them: the binary against a cluster
//! (kubesim, or upstream Kubernetes with `TRELLIS_E2E_CLUSTER=upstream`) with the operator
//! running as a pod (its validating webhook checks every write of a
//! Trellis object, the Mesh included), the report on stdout, progress on stderr, and the
//! documented exit codes.

mod support;

use std::process::{Command, Output};

use support::{Target, text};

fn meshctl(cluster: Option<&Target>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    if let Some(cluster) = cluster {
        c.arg("--kubeconfig").arg(cluster.kubeconfig());
    }
    c.args(args).env("NO_COLOR", "1").output().unwrap()
}

/// A cluster whose pods run (the operator must run: its webhook validates the Mesh), or `None`
/// when not root.
fn cluster_with_operator() -> Option<Target> {
    support::cluster()
}

fn operator_rolled_out(cluster: &Target) {
    support::rollout(cluster, "trellis-operator");
}

/// The cluster's part of the tests, on one cluster (started once for the test binary, as
/// upstream Kubernetes takes a while to start): each scenario starts from a cluster without
/// Trellis, and a purge between them gives it back.
#[test]
fn on_one_cluster() {
    let Some(cluster) = cluster_with_operator() else { return };
    install_from_nothing_then_again_changes_nothing(&cluster);
    purge(&cluster);
    the_dry_run_applies_with_kubectl_as_its_header_says(&cluster);
}

/// `meshctl uninstall --purge`, and the wait until the namespace is gone, so that the next
/// install starts from nothing.
fn purge(cluster: &Target) {
    let purge = meshctl(Some(cluster), &["uninstall", "--purge", "--yes"]);
    assert!(purge.status.success(), "{}", text(&purge).1);
    cluster
        .kubectl_ok(
            &["wait", "--for=delete", "namespace/trellis-system", "--timeout=180s"],
            None,
        )
        .unwrap();
    let crds = cluster.kubectl_ok(&["get", "crd", "-o", "name"], None).unwrap();
    assert!(!crds.contains("trellis.dev"), "{crds}");
}

fn install_from_nothing_then_again_changes_nothing(cluster: &Target) {
    let first = meshctl(Some(cluster), &["install", "--profile", "minimal", "--wait=false"]);
    let (stdout, stderr) = text(&first);
    assert!(first.status.success(), "{stderr}\n{stdout}");
    assert!(stdout.contains("Trellis installed (profile minimal)"), "{stdout}");
    assert!(stderr.contains("Waiting for the CRDs to be Established"), "{stderr}");
    // Everything is there, owned by meshctl's field manager.
    let crds = cluster
        .kubectl_ok(&["get", "crd", "meshes.mesh.trellis.dev", "-o", "json"], None)
        .unwrap();
    assert!(crds.contains("Established"), "{crds}");
    let mesh = cluster
        .kubectl_ok(&["get", "mesh", "default", "-o", "json", "--show-managed-fields"], None)
        .unwrap();
    assert!(mesh.contains("\"manager\": \"meshctl\""), "{mesh}");
    cluster
        .kubectl_ok(&["get", "deployment", "-n", "trellis-system", "trellis-operator"], None)
        .unwrap();
    assert!(
        cluster
            .kubectl(
                &["get", "deployment", "-n", "trellis-system", "trellis-ingressgateway"],
                None
            )
            .is_ok_and(|o| !o.status.success()),
        "the minimal profile has no gateway"
    );

    // The same input again (the operator is up: its webhook validates the Mesh): nothing
    // changes, and it says so; -o json has only data on stdout.
    operator_rolled_out(cluster);
    let again = meshctl(
        Some(cluster),
        &["install", "--profile", "minimal", "--wait=false", "-o", "json"],
    );
    let (stdout, stderr) = text(&again);
    assert!(again.status.success(), "{stderr}\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["changed"], false, "{stdout}");
    assert!(
        report["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["result"] == "unchanged"),
        "{stdout}"
    );
    let again = meshctl(Some(cluster), &["install", "--profile", "minimal", "--wait=false"]);
    assert!(text(&again).0.contains("Nothing changed"), "{}", text(&again).0);

    // A changed setting changes the Mesh, and only the Mesh.
    let changed = meshctl(
        Some(cluster),
        &[
            "install",
            "--profile",
            "minimal",
            "--wait=false",
            "--set",
            "defaultMtlsMode=STRICT",
            "-o",
            "json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&text(&changed).0).unwrap();
    let configured: Vec<&str> = report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["result"] != "unchanged")
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(configured, ["Mesh"], "{report}");
    let mode = cluster
        .kubectl_ok(
            &["get", "mesh", "default", "-o", "jsonpath={.spec.defaultMtlsMode}"],
            None,
        )
        .unwrap();
    assert_eq!(mode, "STRICT");

    // The operator's and proxies' versions as the cluster has them.
    let version = meshctl(Some(cluster), &["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&version).0).unwrap();
    assert_eq!(v["client"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["server"]["operator"], env!("CARGO_PKG_VERSION"));
}

/// The demo profile's dry run, as `meshctl install --dry-run` prints it.
fn demo_dry_run() -> String {
    // No cluster: a kubeconfig pointing nowhere is never read.
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["install", "--dry-run", "--profile", "demo"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    let (yaml, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(yaml.contains("kind: Deployment") && yaml.contains("name: trellis-ingressgateway"));
    let tracing = yaml
        .find("sampling: 100")
        .expect("the demo profile traces every request");
    assert!(tracing > yaml.rfind("kind: Mesh").unwrap());
    yaml
}

#[test]
fn the_dry_run_needs_no_cluster() {
    demo_dry_run();
}

fn the_dry_run_applies_with_kubectl_as_its_header_says(cluster: &Target) {
    let yaml = demo_dry_run();
    // The header's kubectl recipe: apply, wait for the Mesh CRD and the operator, apply again.
    let file = cluster.scratch_dir().join("trellis.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let file = file.to_str().unwrap();
    // As a user who never saw the Mesh kind: kubectl's discovery cache is new (the cluster's
    // own cache knows the kind from the first scenario, and kubectl would map it from there).
    let fresh_cache = tempfile::tempdir().unwrap();
    let mut kubectl = Command::new("kubectl");
    kubectl
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .arg("--cache-dir")
        .arg(fresh_cache.path());
    let first = trellis_e2e::suite::run_kubectl(
        kubectl,
        &["apply", "--server-side", "--field-manager=meshctl", "-f", file],
        None,
    )
    .unwrap();
    assert!(
        !first.status.success(),
        "the Mesh cannot be applied with its CRD in one pass"
    );
    // ...but the first pass created everything before it, the CRDs included.
    cluster
        .kubectl_ok(&["get", "deployment", "-n", "trellis-system", "trellis-operator"], None)
        .unwrap();
    cluster
        .kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "crd/meshes.mesh.trellis.dev",
                "--timeout=30s",
            ],
            None,
        )
        .unwrap();
    operator_rolled_out(cluster);
    // The webhook answers once the operator's endpoint is ready, a moment after the rollout.
    cluster
        .wait_for("the second kubectl pass", std::time::Duration::from_secs(60), || {
            let second = cluster.kubectl(&["apply", "--server-side", "--field-manager=meshctl", "-f", file], None)?;
            Ok(second.status.success().then_some(()))
        })
        .unwrap();
    // And meshctl finds it exactly as it would have applied it.
    let install = meshctl(
        Some(cluster),
        &["install", "--profile", "demo", "--wait=false", "-o", "json"],
    );
    let report: serde_json::Value = serde_json::from_str(&text(&install).0).unwrap();
    assert_eq!(report["changed"], false, "{report}");
}

#[test]
fn bad_input_gives_the_documented_exit_codes() {
    // The cluster is unreachable: 3, naming the server and the fix.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::unreachable_kubeconfig(dir.path());
    let k = kubeconfig.to_str().unwrap();
    for args in [
        vec!["--kubeconfig", k, "install", "--wait=false"],
        vec!["--kubeconfig", k, "version"],
    ] {
        let out = meshctl(None, &args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot reach the Kubernetes API server at https://127.0.0.1:9"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        if args.contains(&"version") {
            assert!(
                stdout.contains(env!("CARGO_PKG_VERSION")),
                "the client version is still printed"
            );
        }
    }
    // Invalid Mesh settings: 1, before any cluster is contacted.
    let out = meshctl(
        None,
        &["--kubeconfig", k, "install", "--set", "telemetry.tracing.sampling=500"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    assert!(text(&out).1.contains("nothing was applied"), "{}", text(&out).1);
    // A malformed or missing file: 2.
    let bad = dir.path().join("mesh.yaml");
    std::fs::write(&bad, "kind: [\n").unwrap();
    for file in [bad.to_str().unwrap(), "/nonexistent/mesh.yaml"] {
        let out = meshctl(None, &["--kubeconfig", k, "install", "--dry-run", "-f", file]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
        assert!(text(&out).1.contains(file), "{}", text(&out).1);
    }
    // An unknown profile is a usage error naming the profiles.
    let out = meshctl(None, &["install", "--profile", "huge", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("default, minimal, demo"), "{}", text(&out).1);
}
