//! `kubesim up --upstream`: upstream Kubernetes on this machine, driven as a
//! user drives it (the kubesim binary and the real kubectl). The node is
//! real (containerd, runc, the kubelet, kube-proxy, CoreDNS), RBAC is
//! enforced, the project's CRDs pass the API server's checks (CEL cost
//! included), pods reach each other by Service name, LoadBalancers are
//! reachable from the host, `kubectl logs/exec/port-forward` work, and
//! `kubesim down` leaves nothing behind — also after the owner was killed.
//!
//! Needs root, the components of `e2e/upstream/build.sh` and the project's
//! programs (`cargo build --bins`). Without them a test records a skip
//! saying what is missing (`trellis_skip`: a failure under CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use trellis_e2e::runner::images::BinDirs;
use trellis_e2e::suite::{Http, wait_for};
use trellis_e2e::upstream::{instance, prereqs};

const TESTAPP: &str = concat!("ghcr.io/trellis-mesh/trellis-testapp:", env!("CARGO_PKG_VERSION"));

/// Whether the machine can run an upstream cluster; a missing piece is a
/// recorded skip (a failure under CI).
fn prerequisites() -> bool {
    let kubesim = PathBuf::from(env!("CARGO_BIN_EXE_kubesim"));
    let bin_dirs = BinDirs(
        kubesim
            .parent()
            .into_iter()
            .flat_map(|d| [d.to_path_buf(), d.join("..")])
            .collect(),
    );
    match prereqs::check(&prereqs::default_upstream_bin(), &bin_dirs) {
        Ok(_) => true,
        Err(e) => {
            trellis_skip::skip(&format!("{e:#}"));
            false
        }
    }
}

fn kubesim(args: &[&str], state: &Path) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_kubesim"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .output()?)
}

fn kubectl(state: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(state.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(state.join("kubectl-cache"));
    trellis_e2e::suite::run_kubectl(cmd, args, stdin)
}

fn kubectl_ok(state: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    trellis_e2e::suite::stdout_of(args, kubectl(state, args, stdin)?)
}

/// The instance recorded for `state`, if one is.
fn record_of(state: &Path) -> Option<instance::Record> {
    let state = state.canonicalize().ok()?;
    instance::records().into_iter().find(|r| r.state_dir == state)
}

/// Everything an instance makes on the machine is gone.
fn assert_removed(record: &instance::Record) -> anyhow::Result<()> {
    ensure!(
        !Path::new(instance::REGISTRY_DIR)
            .join(format!("{}.json", record.id))
            .exists(),
        "the record of {} is still there",
        record.id
    );
    ensure!(
        !instance::netns_path(record).exists(),
        "namespace {} is still there",
        record.netns()
    );
    ensure!(
        !Path::new("/sys/class/net").join(record.host_link()).exists(),
        "link {} is still there",
        record.host_link()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let left = instance::mounts_under(&record.state_dir, &mounts);
    ensure!(left.is_empty(), "still mounted: {left:?}");
    for mount in instance::cgroup_mounts() {
        let dir = mount.join(record.layout().cgroup_root().trim_start_matches('/'));
        ensure!(!dir.exists(), "cgroup {} is still there", dir.display());
    }
    ensure!(!record.layout().node_dir().exists(), "the node's files are still there");
    Ok(())
}

fn up(state: &Path) -> anyhow::Result<instance::Record> {
    let started = Instant::now();
    let out = kubesim(&["up", "--upstream"], state)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "kubesim up --upstream failed: {}{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(state.join("kubesim.log")).unwrap_or_default()
    );
    ensure!(
        stdout.contains(&format!("export KUBECONFIG={}", state.join("kubeconfig").display())),
        "{stdout}"
    );
    eprintln!("upstream cluster up in {:.1?}", started.elapsed());
    record_of(state).context("no instance recorded for the state directory")
}

/// A test-app Deployment named `name` and its Service of `kind` on port 80.
fn testapp(name: &str, kind: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - {{name: app, image: "{TESTAPP}", env: [{{name: TESTAPP_SERVICE, value: {name}}}], ports: [{{containerPort: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: {kind}
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

#[test]
fn a_real_node_with_rbac_dns_load_balancers_and_kubectl_streams_and_down_removes_everything() -> anyhow::Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let state = dir.path();
    let record = up(state)?;
    let checked = check_cluster(state);
    let down = kubesim(&["down"], state)?;
    checked?;
    ensure!(
        down.status.success() && String::from_utf8_lossy(&down.stdout).contains("kubesim stopped"),
        "kubesim down: {}{}",
        String::from_utf8_lossy(&down.stdout),
        String::from_utf8_lossy(&down.stderr)
    );
    assert_removed(&record)
}

fn check_cluster(state: &Path) -> anyhow::Result<()> {
    let version = kubectl_ok(state, &["version", "-o", "json"], None)?;
    let version: serde_json::Value = serde_json::from_str(&version)?;
    ensure!(
        version["serverVersion"]["gitVersion"] == trellis_e2e::upstream::KUBERNETES_VERSION,
        "{version}"
    );
    let nodes = kubectl_ok(state, &["get", "nodes", "-o", "json"], None)?;
    let nodes: serde_json::Value = serde_json::from_str(&nodes)?;
    let node = &nodes["items"][0];
    ensure!(
        node["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("containerd://")),
        "the node is not a containerd node: {}",
        node["status"]["nodeInfo"]
    );

    // The project's CRDs pass the API server's own checks (structural
    // schema, CEL compilation and its estimated-cost budget), which kubesim
    // does not make.
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
    kubectl_ok(state, &["apply", "--server-side", "-f", crds], None)?;
    kubectl_ok(
        state,
        &["wait", "--for=condition=Established", "--timeout=60s", "-f", crds],
        None,
    )?;

    // RBAC: a ServiceAccount holds nothing it was not granted.
    kubectl_ok(state, &["create", "serviceaccount", "nobody"], None)?;
    let as_nobody = "--as=system:serviceaccount:default:nobody";
    let denied = kubectl(state, &["get", "pods", as_nobody], None)?;
    ensure!(
        !denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("Forbidden"),
        "an account without a role listed pods: {}{}",
        String::from_utf8_lossy(&denied.stdout),
        String::from_utf8_lossy(&denied.stderr)
    );
    kubectl_ok(
        state,
        &["create", "role", "pod-reader", "--verb=list", "--resource=pods"],
        None,
    )?;
    kubectl_ok(
        state,
        &[
            "create",
            "rolebinding",
            "nobody-reads",
            "--role=pod-reader",
            "--serviceaccount=default:nobody",
        ],
        None,
    )?;
    wait_for("the granted role to take effect", Duration::from_secs(10), || {
        Ok(kubectl(state, &["get", "pods", as_nobody], None)?
            .status
            .success()
            .then_some(()))
    })?;

    let tools = r#"
apiVersion: v1
kind: Pod
metadata: {name: tools}
spec:
  containers:
  - name: sh
    image: busybox:1.36
    command: [sh, -c, "echo hello from a container; sleep 3600"]
"#;
    let objects = [
        tools.to_string(),
        testapp("echo", "ClusterIP"),
        testapp("client", "LoadBalancer"),
    ];
    kubectl_ok(state, &["apply", "-f", "-"], Some(&objects.join("\n---\n")))?;
    for d in ["echo", "client"] {
        kubectl_ok(
            state,
            &["rollout", "status", &format!("deployment/{d}"), "--timeout=120s"],
            None,
        )?;
    }
    kubectl_ok(
        state,
        &["wait", "--for=condition=Ready", "pod/tools", "--timeout=120s"],
        None,
    )?;

    // logs and exec go through the API server to the kubelet and containerd.
    let logs = kubectl_ok(state, &["logs", "tools"], None)?;
    ensure!(logs.contains("hello from a container"), "logs: {logs:?}");
    let exec = kubectl_ok(
        state,
        &["exec", "tools", "--", "sh", "-c", "echo $((6 * 7)) $(hostname)"],
        None,
    )?;
    ensure!(exec.trim() == "42 tools", "exec: {exec:?}");

    // From the host: the LoadBalancer's address; from the pod: the echo
    // Service by its DNS name (CoreDNS, kube-proxy).
    let http = Http::new()?;
    let lb = wait_for("a LoadBalancer address", Duration::from_secs(30), || {
        let svc: serde_json::Value =
            serde_json::from_str(&kubectl_ok(state, &["get", "svc", "client", "-o", "json"], None)?)?;
        Ok(svc["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_string))
    })?;
    let answer = wait_for(
        "an answer through the LoadBalancer and the Service",
        Duration::from_secs(60),
        || {
            let a = http.get(
                &format!("http://{lb}/call?url=http://echo.default.svc.cluster.local/hi"),
                &[],
            );
            Ok(a.ok().filter(|a| a.status == 200))
        },
    )?;
    let echo = answer.json()?;
    ensure!(echo["service"] == "client", "{echo}");
    ensure!(
        echo["upstream"]["status"] == 200 && echo["upstream"]["body"]["service"] == "echo",
        "the client did not reach echo by name: {echo}"
    );

    // port-forward: the kubelet's streaming through the API server.
    let mut forward = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(state.join("kubeconfig"))
        .args(["port-forward", "deployment/echo", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        use std::io::BufRead as _;
        // Kept open until the request is answered: kubectl writes a line per
        // connection and fails the connection when nobody reads.
        let mut stdout = std::io::BufReader::new(forward.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        let port = line
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.rsplit_once(':'))
            .map(|(_, p)| p.to_string())
            .with_context(|| format!("unexpected port-forward output {line:?}"))?;
        let a = http.get(&format!("http://127.0.0.1:{port}/forwarded"), &[])?;
        ensure!(
            a.status == 200 && a.json()?["path"] == "/forwarded",
            "status {}",
            a.status
        );
        Ok(())
    })();
    let _ = forward.kill();
    let _ = forward.wait();
    result.context("kubectl port-forward")
}

#[test]
fn after_the_owner_is_killed_down_removes_everything() -> anyhow::Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let state = dir.path();
    let record = up(state)?;
    let pid: i32 = std::fs::read_to_string(state.join("kubesim.pid"))?.trim().parse()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        if Instant::now() > deadline {
            bail!("kubesim (pid {pid}) survived SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The components outlive their owner until someone cleans up.
    ensure!(
        instance::netns_path(&record).exists(),
        "the namespace went with the owner"
    );
    let down = kubesim(&["down"], state)?;
    ensure!(
        down.status.success() && String::from_utf8_lossy(&down.stdout).contains("was not running"),
        "kubesim down: {}{}",
        String::from_utf8_lossy(&down.stdout),
        String::from_utf8_lossy(&down.stderr)
    );
    assert_removed(&record)
}
