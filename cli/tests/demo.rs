//! `meshctl demo`, the README's main command, run as a user runs it: the
//! binary, a real kubesim with pods as processes, the report on stdout,
//! and nothing left behind; and its prerequisites checked before anything starts.

use std::path::{Path, PathBuf};
use std::process::Command;

fn kubesim() -> Option<PathBuf> {
    // Test binaries live in target/<profile>/deps; the workspace's binaries one level up.
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    Some(dir.join("kubesim")).filter(|p| p.is_file())
}

/// The kubesim binary, or `None` (a recorded skip; a failure under CI) when the demo cannot run here.
fn prerequisites() -> Option<PathBuf> {
    if !trellis_skip::is_root() {
        trellis_skip::skip("meshctl demo needs root (kubesim runs pods in network namespaces)");
        return None;
    }
    let Some(kubesim) = kubesim() else {
        panic!(
            "kubesim is not built next to the test binaries: run `cargo build --bins` (CI's `cargo nextest run --workspace` builds it)"
        );
    };
    Some(kubesim)
}

/// Asserts the demo left no kubesim running for `state` (`when` says after what).
fn assert_stopped(kubesim: &Path, state: &Path, when: &str) {
    let down = Command::new(kubesim)
        .args(["down", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("was not running"),
        "kubesim was left running {when}: {}",
        String::from_utf8_lossy(&down.stdout)
    );
}

#[test]
fn demo_runs_the_shop_end_to_end_and_cleans_up() {
    let Some(kubesim) = prerequisites() else { return };
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["demo", "--requests", "100", "--kubesim"])
        .arg(&kubesim)
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meshctl demo failed:\n{stderr}\n{stdout}");
    for step in 1..=7 {
        assert!(
            stderr.contains(&format!("[{step}/7]")),
            "progress of step {step} missing:\n{stderr}"
        );
    }
    // The routes in force, with where they come from.
    assert!(stdout.contains("VirtualService shop/payment http[3]"), "{stdout}");
    assert!(stdout.contains("payment v1:8080 90%, payment v2:8080 10%"), "{stdout}");
    // Answers by version, all of them answered.
    assert!(stdout.contains("payment v1"), "{stdout}");
    assert!(!stdout.contains("no answer") && !stdout.contains("HTTP 5"), "{stdout}");
    assert!(stdout.contains("With x-canary: true: payment v2 × 20"), "{stdout}");
    // The identities on each hop.
    for (caller, me) in [("trellis-ingressgateway", "web"), ("web", "payment"), ("payment", "db")] {
        let row = stdout
            .lines()
            .find(|l| {
                l.contains(&format!("spiffe://cluster.local/ns/shop/sa/{me} ")) && l.contains(&format!("/sa/{caller} "))
            })
            .unwrap_or_else(|| panic!("no hop row {caller} → {me}:\n{stdout}"));
        assert!(row.contains("spiffe://"), "{row}");
    }
    // The metrics summary counts inbound requests at db.
    assert!(
        stdout.lines().any(|l| l.contains("db-") && l.contains("200 ×")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "export KUBECONFIG={}",
            state.path().join("kubeconfig").display()
        )),
        "{stdout}"
    );
    // Cleaned up: kubesim is down (its pid file is gone or its process dead).
    assert_stopped(&kubesim, state.path(), "after the demo");
}

#[test]
fn keep_leaves_the_shop_running_until_ctrl_c_then_cleans_up() {
    use std::io::{BufRead, BufReader};
    let Some(kubesim) = prerequisites() else { return };
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["demo", "--keep", "--requests", "20", "--kubesim"])
        .arg(&kubesim)
        .arg("--state-dir")
        .arg(state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut gateway = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("curl ") {
            gateway = Some(url.to_string());
        }
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    let gateway = gateway.expect("the demo says how to reach the kept shop");
    // It was done as a user does it: installed by meshctl, the namespace labelled, the plain
    // Deployments meshed by the operator's injector.
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(state.path().join("kubeconfig"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mesh = kubectl(&["get", "mesh", "default", "-o", "json", "--show-managed-fields"]);
    assert!(mesh.contains("\"manager\": \"meshctl\""), "{mesh}");
    let label = kubectl(&[
        "get",
        "namespace",
        "shop",
        "-o",
        "jsonpath={.metadata.labels.trellis\\.dev/inject}",
    ]);
    assert_eq!(label, "enabled");
    let web = kubectl(&["get", "deployment", "web", "-n", "shop", "-o", "json"]);
    assert!(!web.contains("trellis-proxy"), "the shop's YAML has no sidecar: {web}");
    let pods = kubectl(&[
        "get",
        "pods",
        "-n",
        "shop",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.initContainers[*].name}",
    ]);
    assert!(pods.contains("trellis-proxy"), "the injector meshed web's pods: {pods}");
    // The shop is still serving while kept.
    let curl = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &gateway])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "200",
        "the kept shop does not answer at {gateway}"
    );
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C after the demo is a normal end");
    assert_stopped(&kubesim, state.path(), "after Ctrl-C");
}

#[test]
fn missing_prerequisites_are_named_with_their_fix_before_anything_starts() {
    // A PATH with none of the programs kubesim runs, and a kubesim binary that is never run.
    let empty = tempfile::tempdir().unwrap();
    let state = empty.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["demo", "--kubesim"])
        .arg(empty.path().join("kubesim"))
        .arg("--state-dir")
        .arg(&state)
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for line in [
        "ip is not on PATH (package iproute2)",
        "iptables-restore is not on PATH (package iptables)",
        "nsenter is not on PATH (package util-linux)",
        "sudo apt-get install -y iproute2 iptables util-linux mount procps",
        "trellis-proxy is not built",
        "cargo build --bins",
    ] {
        assert!(stderr.contains(line), "{line:?} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!state.exists(), "nothing was started");
}
