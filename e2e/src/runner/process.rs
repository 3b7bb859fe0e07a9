//! Starting one container as a process group, signalling it, and running
//! commands inside it (`kubectl exec`, exec probes, hooks).
//!
//! # How a container is started
//! `nsenter --net=<pod netns>` (left out for host-network pods) →
//! `unshare --mount --uts --propagation private` → `/bin/sh -c <setup>`
//! which, inside the new mount namespace only:
//! 1. mounts a tmpfs over `/run` (= `/var/run`) and binds the pod's state
//!    directory under it (`/run/.kubesim/pod`), then a tmpfs over `/tmp`;
//! 2. for volume mount paths that neither exist on the host nor lie under
//!    `/run` or `/tmp`, mounts an overlay (upper layer in the tmpfs) over
//!    their deepest existing ancestor, so creating mount points never
//!    touches the host's files; a new top-level directory (e.g. `/data`)
//!    gets the container a private root instead: a tmpfs with the host's
//!    top-level entries bound into it, entered with `chroot`;
//! 3. bind-mounts every volume (read-only where asked), `/etc/hosts` and
//!    the pod's `/etc/resolv.conf`, sets the hostname to the pod name;
//! 4. `cd`s to `workingDir` and `exec`s `setpriv` (`runAsUser`/`runAsGroup`)
//!    → `env -i <container env>` → the program.
//!
//! Every step `exec`s, so the pid kubesim gets is the container's main
//! process and the leader of its own process group: signals go to the group.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path on the host (inside the pod's state dir, or a hostPath).
    pub source: PathBuf,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

/// The user a container runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct User {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Option<u32>,
}

/// Everything needed to start one container.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The pod's network namespace; `None` runs in kubesim's own.
    pub netns: Option<PathBuf>,
    /// The pod's state dir (bound at `/run/.kubesim/pod`).
    pub pod_dir: PathBuf,
    pub mounts: Vec<Mount>,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub hostname: String,
    pub working_dir: Option<String>,
    pub user: User,
}

/// Single-quotes `s` for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// `/var/run` as the host has it: a symlink to `/run` (usual) or its own
/// directory.
fn var_run_is_link() -> bool {
    std::fs::symlink_metadata("/var/run").is_ok_and(|m| m.file_type().is_symlink())
}

/// The deepest existing ancestor of `path` on the host.
fn existing_ancestor(path: &str) -> String {
    let mut p = PathBuf::from(path);
    while !p.exists() {
        if !p.pop() {
            return "/".into();
        }
    }
    p.to_string_lossy().into_owned()
}

/// The setup script run by `/bin/sh -c` in the container's mount namespace.
pub fn setup_script(l: &Launch) -> Result<String, String> {
    let mut s = String::from("set -e\n");
    let pod_dir = l.pod_dir.to_string_lossy().into_owned();
    let stage = "/run/.kubesim";
    // Where the pod dir is reachable once /run and /tmp are covered.
    let staged = |host: &Path| -> String {
        let h = host.to_string_lossy();
        match h.strip_prefix(pod_dir.as_str()) {
            Some(rest) => format!("{stage}/pod{rest}"),
            None => h.into_owned(),
        }
    };
    let pod_under_run = under(&pod_dir, "/run") || (!var_run_is_link() && under(&pod_dir, "/var/run"));
    if pod_under_run {
        return Err(format!(
            "the pod state dir {pod_dir} is under /run, which containers get a private tmpfs for; use a state dir elsewhere"
        ));
    }
    s.push_str("mount -t tmpfs -o mode=0755 kubesim-run /run\n");
    s.push_str(&format!("mkdir -p {stage}/pod {stage}/host\n"));
    s.push_str(&format!("mount --rbind {} {stage}/pod\n", sh_quote(&pod_dir)));
    // hostPath sources outside the pod dir are staged before /tmp goes.
    let mut host_sources: Vec<(PathBuf, String)> = Vec::new();
    for (i, m) in l.mounts.iter().enumerate() {
        if !m.source.starts_with(&l.pod_dir) && (under(&m.source.to_string_lossy(), "/tmp")) {
            let at = format!("{stage}/host/{i}");
            if m.source.is_dir() {
                s.push_str(&format!("mkdir -p {at}\n"));
            } else {
                s.push_str(&format!("touch {at}\n"));
            }
            s.push_str(&format!(
                "mount --rbind {} {at}\n",
                sh_quote(&m.source.to_string_lossy())
            ));
            host_sources.push((m.source.clone(), at));
        }
    }
    s.push_str("mount -t tmpfs -o mode=1777 kubesim-tmp /tmp\n");
    if !var_run_is_link() && Path::new("/var/run").is_dir() {
        s.push_str("mount -t tmpfs -o mode=0755 kubesim-var-run /var/run\n");
    }
    // Overlays so that mount points can be created without touching the host.
    let mut targets: Vec<(String, &Mount)> = l.mounts.iter().map(|m| (normalize(&m.target), m)).collect();
    targets.sort_by_key(|(t, _)| t.matches('/').count());
    let mut overlays: Vec<String> = Vec::new();
    let mut private_root = false;
    for (t, _) in &targets {
        if under(t, "/run") || under(t, "/tmp") || under(t, "/var/run") || Path::new(t).exists() {
            continue;
        }
        let a = existing_ancestor(t);
        if a == "/" {
            // A new top-level directory: the container gets its own root.
            private_root = true;
            continue;
        }
        if overlays.iter().any(|o| under(&a, o)) {
            continue;
        }
        overlays.retain(|o| !under(o, &a));
        overlays.push(a);
    }
    for (i, a) in overlays.iter().enumerate() {
        let d = format!("{stage}/overlay/{i}");
        s.push_str(&format!("mkdir -p {d}/upper {d}/work\n"));
        s.push_str(&format!(
            "mount -t overlay kubesim-overlay -o lowerdir={a},upperdir={d}/upper,workdir={d}/work {}\n",
            sh_quote(a)
        ));
    }
    // Whether a target lies in a top-level directory the host lacks.
    let in_root = |t: &str| {
        let top = t.split('/').nth(1).unwrap_or_default();
        !top.is_empty() && !Path::new(&format!("/{top}")).exists()
    };
    let bind = |s: &mut String, m: &Mount, path: String| {
        let src = host_sources
            .iter()
            .find(|(h, _)| *h == m.source)
            .map(|(_, at)| at.clone())
            .unwrap_or_else(|| staged(&m.source));
        let qt = sh_quote(&path);
        if m.source.is_dir() {
            s.push_str(&format!("mkdir -p {qt}\n"));
        } else {
            s.push_str(&format!(
                "[ -e {qt} ] || {{ mkdir -p \"$(dirname {qt})\"; touch {qt}; }}\n"
            ));
        }
        s.push_str(&format!("mount --bind {} {qt}\n", sh_quote(&src)));
        if m.read_only {
            s.push_str(&format!("mount -o remount,bind,ro {qt}\n"));
        }
    };
    for (t, m) in targets.iter().filter(|(t, _)| !in_root(t)) {
        bind(&mut s, m, t.clone());
    }
    for (file, at) in [(&l.hosts, "/etc/hosts"), (&l.resolv_conf, "/etc/resolv.conf")] {
        if let Some(f) = file {
            s.push_str(&format!("mount --bind {} {at}\n", sh_quote(&staged(f))));
        }
    }
    // The private root: a tmpfs with every top-level entry of the host's
    // root (as prepared above) bound or linked into it, entered with
    // `chroot` at the end; new top-level mount points are made in it.
    let root = format!("{stage}/root");
    if private_root {
        s.push_str(&format!("mkdir -p {root}\n"));
        let mut entries: Vec<_> = std::fs::read_dir("/")
            .map_err(|e| format!("reading /: {e}"))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let host = format!("/{name}");
            let at = sh_quote(&format!("{root}/{name}"));
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_symlink() {
                if let Ok(target) = std::fs::read_link(&host) {
                    s.push_str(&format!("ln -s {} {at}\n", sh_quote(&target.to_string_lossy())));
                }
            } else if ft.is_dir() {
                s.push_str(&format!("mkdir {at}\nmount --rbind {} {at}\n", sh_quote(&host)));
            } else if ft.is_file() {
                s.push_str(&format!("touch {at}\nmount --bind {} {at}\n", sh_quote(&host)));
            }
        }
        for (t, m) in targets.iter().filter(|(t, _)| in_root(t)) {
            bind(&mut s, m, format!("{root}{t}"));
        }
    }
    s.push_str(&format!("hostname {} 2>/dev/null || true\n", sh_quote(&l.hostname)));
    let wd = l.working_dir.clone().unwrap_or_else(|| "/".into());
    let cd = format!(
        "cd {} || {{ echo \"kubesim: workingDir {} does not exist\" >&2; exit 128; }}",
        sh_quote(&wd),
        wd.replace('"', "")
    );
    if private_root {
        s.push_str(&format!(
            "exec chroot {} /bin/sh -c {} kubesim-container \"$@\"\n",
            sh_quote(&root),
            sh_quote(&format!("{cd}; exec \"$@\""))
        ));
    } else {
        s.push_str(&format!("{cd}\nexec \"$@\"\n"));
    }
    Ok(s)
}

/// `setpriv … --`: the container's user (root unless `runAsUser`) and a
/// parent-death signal, so a container's main process dies with the
/// kubesim thread that started it even if kubesim is killed.
pub fn user_prefix(user: &User) -> Vec<String> {
    let mut v = vec!["setpriv".to_string(), "--pdeathsig=KILL".to_string()];
    if let Some(uid) = user.uid {
        v.push(format!("--reuid={uid}"));
        v.push(format!("--regid={}", user.gid.unwrap_or(0)));
        match user.groups {
            Some(g) => v.push(format!("--groups={g}")),
            None => v.push("--clear-groups".into()),
        }
    }
    v.push("--".into());
    v
}

/// `env -i K=V… program args…`.
pub fn env_prefix(env: &[(String, String)]) -> Vec<String> {
    let mut v = vec!["env".to_string(), "-i".to_string()];
    v.extend(env.iter().map(|(k, val)| format!("{k}={val}")));
    v
}

/// The command that starts a container (not yet spawned).
pub fn command(l: &Launch) -> Result<tokio::process::Command, String> {
    let script = setup_script(l)?;
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = &l.netns {
        argv.push("nsenter".into());
        argv.push(format!("--net={}", ns.display()));
        argv.push("--".into());
    }
    argv.extend(
        [
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    argv.push(script);
    argv.push("kubesim-container".into());
    argv.extend(user_prefix(&l.user));
    argv.extend(env_prefix(&l.env));
    argv.push(l.program.to_string_lossy().into_owned());
    argv.extend(l.args.iter().cloned());
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    Ok(cmd)
}

/// What runs a command inside a running container: its namespaces (mount,
/// network, UTS), user, environment and working directory.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub pid: u32,
    pub user: User,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
}

/// `nsenter` into the container with `argv` (looked up on the container's
/// `PATH`, which is the host's programs).
pub fn exec_command(t: &ExecTarget, argv: &[String]) -> tokio::process::Command {
    let mut full: Vec<String> = vec![
        "nsenter".into(),
        format!("--target={}", t.pid),
        "--mount".into(),
        "--net".into(),
        "--uts".into(),
        "--root".into(),
        format!("--wd={}", t.working_dir.as_deref().unwrap_or("/")),
        "--".into(),
    ];
    full.extend(user_prefix(&t.user));
    full.extend(env_prefix(&t.env));
    full.extend(argv.iter().cloned());
    let mut cmd = tokio::process::Command::new(&full[0]);
    cmd.args(&full[1..])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Sends `sig` to the process group `pgid` (ignoring groups that are gone).
pub fn signal_group(pgid: u32, sig: Signal) {
    // Never the whole system (0, 1) by mistake.
    if let Ok(p) = i32::try_from(pgid)
        && p > 1
    {
        let _ = killpg(Pid::from_raw(p), sig);
    }
}

pub use nix::sys::signal::Signal as Sig;

/// The start time of a process (field 22 of `/proc/PID/stat`), to tell a
/// recorded pid from a recycled one.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_paths() {
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
        assert_eq!(normalize("/a//b/./c/../d/"), "/a/b/d");
        assert!(under("/run/x", "/run") && !under("/running", "/run"));
    }

    #[test]
    fn scripts_never_create_top_level_dirs() {
        let l = Launch {
            program: "/bin/true".into(),
            args: vec![],
            env: vec![],
            netns: None,
            pod_dir: "/var/tmp/kubesim/pods/u".into(),
            mounts: vec![Mount {
                source: "/var/tmp/kubesim/pods/u/volumes/x".into(),
                target: "/kubesim-no-such-dir/x".into(),
                read_only: false,
            }],
            resolv_conf: None,
            hosts: None,
            hostname: "p".into(),
            working_dir: None,
            user: User::default(),
        };
        let s = setup_script(&l).unwrap();
        assert!(
            s.contains("mount --bind '/run/.kubesim/pod/volumes/x' '/run/.kubesim/root/kubesim-no-such-dir/x'"),
            "{s}"
        );
        assert!(s.contains("exec chroot '/run/.kubesim/root'"), "{s}");
        let mut l2 = l.clone();
        l2.mounts[0].target = "/etc/kubesim-no-such/config".into();
        let s = setup_script(&l2).unwrap();
        assert!(s.contains("lowerdir=/etc,"), "{s}");
        assert!(s.contains("/run/.kubesim/pod/volumes/x"), "{s}");
    }
}
