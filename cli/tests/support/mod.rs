//! What the command-line tests share: the cluster they run against (the end-to-end suite's
//! [`Target`]: a fresh kubesim by default, a fresh upstream Kubernetes with
//! `TRELLIS_E2E_CLUSTER=upstream`, or the cluster `TRELLIS_E2E_KUBECONFIG` names), running the
//! meshctl binary as a user does (no terminal, no colour), its output as text, waiting for a
//! control-plane rollout, and a kubeconfig for a cluster that is not there.

#![allow(dead_code)] // each test file uses its part

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use trellis_e2e::suite::Target;

/// A fresh cluster whose pods run (kubesim's process runtime, or upstream's node), or `None`
/// when this process cannot run pods (not root): the skip is recorded, and fails under CI.
pub fn cluster() -> Option<Target> {
    Target::acquire().unwrap()
}

/// `meshctl --kubeconfig KUBECONFIG ARGS…` without a terminal (stdin is empty, no colour).
pub fn meshctl_at(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A kubeconfig in `dir` for an API server at 127.0.0.1:9, where nothing listens.
pub fn unreachable_kubeconfig(dir: &Path) -> PathBuf {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:9\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .unwrap();
    kubeconfig
}

/// Waits until Deployment trellis-system/`name` has rolled out.
pub fn rollout(cluster: &Target, name: &str) {
    cluster
        .kubectl_ok(
            &[
                "rollout",
                "status",
                "-n",
                "trellis-system",
                &format!("deployment/{name}"),
                "--timeout=180s",
            ],
            None,
        )
        .unwrap();
}

/// What a shell gets from meshctl's dynamic completion at a TAB after `words` (the last one is
/// the word being completed), as bash's registration asks it: `COMPLETE=bash meshctl --
/// meshctl --kubeconfig KUBECONFIG WORDS…` with the word's index; the candidates, one per line.
pub fn complete_at(kubeconfig: &Path, words: &[&str]) -> (Vec<String>, Output) {
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let mut line = vec!["meshctl", "--kubeconfig", kubeconfig.as_str()];
    line.extend_from_slice(words);
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--")
        .args(&line)
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", (line.len() - 1).to_string())
        .env("_CLAP_IFS", "\n")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let candidates = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    (candidates, out)
}

/// `meshctl check -o json` against `cluster`: the exit code and the checks.
pub fn check(cluster: &Target) -> (i32, Vec<serde_json::Value>) {
    let out = meshctl_at(cluster.kubeconfig(), &["check", "-o", "json"]);
    let (stdout, stderr) = text(&out);
    let checks: Vec<serde_json::Value> =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("check -o json: {e}: {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), checks)
}

/// The check whose name contains `name_part`.
pub fn status_of<'a>(checks: &'a [serde_json::Value], name_part: &str) -> &'a serde_json::Value {
    checks
        .iter()
        .find(|c| c["name"].as_str().unwrap_or_default().contains(name_part))
        .unwrap_or_else(|| panic!("no check {name_part:?} in {checks:#?}"))
}

/// Waits until `meshctl check` passes; the checks then.
pub fn until_healthy(cluster: &Target) -> Vec<serde_json::Value> {
    cluster
        .wait_for("meshctl check to pass", std::time::Duration::from_secs(120), || {
            let (code, checks) = check(cluster);
            Ok((code == 0).then_some(checks))
        })
        .unwrap_or_else(|e| panic!("{e}: {:#?}", check(cluster).1))
}

/// The processes of the `trellis-proxy` container of pod `namespace/pod` on this machine: the
/// proxy's downward-API environment names its pod. kubesim's pods and upstream's node run on
/// this machine; a remote cluster's (`TRELLIS_E2E_KUBECONFIG`) do not, and none is found.
pub fn proxy_processes(namespace: &str, pod: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "trellis-proxy" {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |kv: String| vars.contains(&kv.as_bytes());
        if has(format!("POD_NAME={pod}")) && has(format!("POD_NAMESPACE={namespace}")) {
            found.push(pid);
        }
    }
    found
}

/// The proxy of a pod stopped (SIGSTOP) until dropped (SIGCONT): its connection to the
/// operator stays open, but it answers nothing — a proxy that hangs.
#[derive(Debug)]
pub struct Frozen(Vec<u32>);

impl Frozen {
    /// Stops the proxy of pod `namespace/pod`.
    pub fn proxy(namespace: &str, pod: &str) -> anyhow::Result<Frozen> {
        let pids = proxy_processes(namespace, pod);
        anyhow::ensure!(
            !pids.is_empty(),
            "no trellis-proxy process of pod {namespace}/{pod} on this machine (a remote cluster's pods cannot be stopped from here)"
        );
        signal("-STOP", &pids)?;
        Ok(Frozen(pids))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = signal("-CONT", &self.0);
    }
}

fn signal(which: &str, pids: &[u32]) -> anyhow::Result<()> {
    let out = Command::new("kill")
        .arg(which)
        .args(pids.iter().map(u32::to_string))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kill {which} {pids:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Makes the proxy of pod `namespace/pod` unable to store a new workload certificate: a
/// directory where it writes its new key first (`.key.pem.tmp`, beside `key.pem`: the proxy
/// writes each identity file to `.NAME.tmp` and renames it), reached through the process's
/// root (`/proc/PID/root`, its mount namespace), so every renewal fails at that write and the
/// proxy keeps serving its current certificate and key. kubesim's pods and upstream's node
/// run on this machine; a remote cluster's do not.
pub fn block_certificate_writes(namespace: &str, pod: &str) -> anyhow::Result<()> {
    let pids = proxy_processes(namespace, pod);
    anyhow::ensure!(
        !pids.is_empty(),
        "no trellis-proxy process of pod {namespace}/{pod} on this machine (a remote cluster's pods cannot be reached from here)"
    );
    for pid in pids {
        // The proxy's identity directory (`--identity-dir`, /var/run/trellis/identity in every
        // pod the injector and the gateway template make).
        let blocker = in_root_of(pid, "/var/run/trellis/identity/.key.pem.tmp")?;
        match std::fs::create_dir(&blocker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => anyhow::bail!("{}: {e}", blocker.display()),
        }
    }
    Ok(())
}

/// `path` as process `pid` sees it, from this machine: under `/proc/PID/root`, with the
/// symbolic links of its directories followed inside that root (an absolute link such as
/// `/var/run -> /run` would otherwise lead back to this machine's own `/run`).
fn in_root_of(pid: u32, path: &str) -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect();
    pending.reverse();
    let mut at = root.clone();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        let next = at.join(&component);
        let is_link = !pending.is_empty() && next.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            at = next;
            continue;
        }
        hops += 1;
        anyhow::ensure!(hops <= 16, "{path}: too many symbolic links in process {pid}'s root");
        let target = std::fs::read_link(&next)?;
        let target = target.to_string_lossy().into_owned();
        if target.starts_with('/') {
            at = root.clone();
        }
        pending.extend(target.split('/').filter(|c| !c.is_empty()).rev().map(str::to_string));
    }
    Ok(at)
}

/// The first running pod with `app=app` in trellis-system.
pub fn system_pod(cluster: &Target, app: &str) -> String {
    cluster
        .kubectl_ok(
            &[
                "get",
                "pods",
                "-n",
                "trellis-system",
                "-l",
                &format!("app={app}"),
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
            None,
        )
        .unwrap()
}
