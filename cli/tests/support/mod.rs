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
