//! The `kubesim` commands: `up` (start in the background), `serve` (run in
//! the foreground) and `down` (stop and clean up).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::app::{self, Config};
use crate::pki::StateFiles;

/// The default state directory: `$HOME/.kubesim`.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".kubesim")
}

fn read_pid(files: &StateFiles) -> Option<u32> {
    std::fs::read_to_string(files.pid()).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// Removes the pod network of kubesim instances that died, and everything
/// of upstream clusters whose owner died (a no-op when not root: then there
/// can be none).
fn cleanup_dead_networks() {
    if crate::network::available() {
        crate::network::cleanup_leftovers();
        crate::upstream::instance::sweep_dead();
    }
}

/// Runs kubesim in the foreground until SIGINT/SIGTERM or a shutdown
/// request; writes the pid file while it runs. With `processes`, pods run
/// as processes in the pod network (needs root).
pub async fn serve(state_dir: &Path, port: u16, processes: bool, bin_dir: Option<&Path>) -> anyhow::Result<()> {
    let files = StateFiles::new(state_dir);
    let mut config = if processes {
        let runner = crate::runner::RunnerConfig {
            bin_dirs: crate::runner::images::BinDirs::resolve(bin_dir),
            ..Default::default()
        };
        Config::with_processes(state_dir, runner)
    } else {
        Config::new(state_dir)
    };
    config.port = port;
    let running = app::start(config).await?;
    std::fs::write(files.pid(), std::process::id().to_string())
        .with_context(|| format!("writing {}", files.pid().display()))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = running.stopped() => {}
    }
    running.stop();
    // Removing a pid file that is already gone is fine.
    let _ = std::fs::remove_file(files.pid());
    Ok(())
}

/// Starts kubesim in the background, waits until it serves, and returns
/// the kubeconfig path. Removes what dead instances left of their pod
/// network first.
pub fn up(state_dir: &Path, port: u16, processes: bool, bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if processes && !crate::network::available() {
        bail!("{}", crate::network::NetworkError::NotRoot);
    }
    let mut args: Vec<std::ffi::OsString> = vec![
        "--port".into(),
        port.to_string().into(),
        if processes { "--processes" } else { "--simulate" }.into(),
    ];
    if let Some(d) = bin_dir {
        args.extend(["--bin-dir".into(), d.as_os_str().to_owned()]);
    }
    start_background(state_dir, &args, Duration::from_secs(30), "kubesim")
}

/// The options of an upstream cluster kept in `state_dir`.
pub fn upstream_options(
    state_dir: &Path,
    bin_dir: Option<&Path>,
    upstream_bin: Option<&Path>,
) -> crate::upstream::Options {
    let mut opts = crate::upstream::Options::new(state_dir);
    opts.bin_dirs = crate::runner::images::BinDirs::resolve(bin_dir);
    if let Some(b) = upstream_bin {
        opts.upstream_bin = b.to_path_buf();
    }
    opts
}

/// Starts an upstream cluster in the background (`kubesim serve
/// --upstream`), waits until it is ready, and returns the kubeconfig path.
pub fn up_upstream(state_dir: &Path, bin_dir: Option<&Path>, upstream_bin: Option<&Path>) -> anyhow::Result<PathBuf> {
    let opts = upstream_options(state_dir, bin_dir, upstream_bin);
    // Say what is missing now, not from the background process's log.
    crate::upstream::prereqs::check(&opts.upstream_bin, &opts.bin_dirs)?;
    let mut args: Vec<std::ffi::OsString> = vec![
        "--upstream".into(),
        "--upstream-bin".into(),
        opts.upstream_bin.as_os_str().to_owned(),
    ];
    if let Some(d) = bin_dir {
        args.extend(["--bin-dir".into(), d.as_os_str().to_owned()]);
    }
    eprintln!(
        "starting upstream Kubernetes (a minute or two; log: {})",
        StateFiles::new(&opts.state_dir).log().display()
    );
    start_background(&opts.state_dir, &args, Duration::from_secs(600), "the upstream cluster")
}

/// Runs an upstream cluster in the foreground until SIGINT/SIGTERM; writes
/// the kubeconfig and pid file once it is ready.
pub fn serve_upstream(opts: &crate::upstream::Options) -> anyhow::Result<()> {
    let files = StateFiles::new(&opts.state_dir);
    let mut cluster = crate::upstream::Cluster::start(opts)?;
    std::fs::copy(cluster.kubeconfig(), files.kubeconfig())
        .with_context(|| format!("writing {}", files.kubeconfig().display()))?;
    std::fs::write(files.pid(), std::process::id().to_string())
        .with_context(|| format!("writing {}", files.pid().display()))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    cluster.stop();
    let _ = std::fs::remove_file(files.pid());
    Ok(())
}

/// Starts `kubesim serve ARGS` in the background with its log in the state
/// directory and waits (up to `timeout`) until it wrote its kubeconfig and
/// pid file.
fn start_background(
    state_dir: &Path,
    args: &[std::ffi::OsString],
    timeout: Duration,
    what: &str,
) -> anyhow::Result<PathBuf> {
    let files = StateFiles::new(state_dir);
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    if let Some(pid) = read_pid(&files).filter(|p| alive(*p)) {
        bail!(
            "kubesim is already running (pid {pid}) with state in {}; run `kubesim down --state-dir {}` first",
            state_dir.display(),
            state_dir.display()
        );
    }
    for stale in [files.kubeconfig(), files.pid()] {
        if stale.exists() {
            std::fs::remove_file(&stale).with_context(|| format!("removing stale {}", stale.display()))?;
        }
    }
    cleanup_dead_networks();
    let log = std::fs::File::create(files.log()).with_context(|| format!("creating {}", files.log().display()))?;
    let exe = std::env::current_exe().context("finding the kubesim executable")?;
    let mut child = {
        use std::os::unix::process::CommandExt as _;
        Command::new(exe)
            .arg("serve")
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C in this shell must not stop it.
            .process_group(0)
            .spawn()
            .context("starting kubesim serve")?
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start ({status}); see {}", files.log().display());
        }
        if files.kubeconfig().exists() && files.pid().exists() {
            return Ok(files.kubeconfig());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not start within {timeout:?}; see {}", files.log().display())
}

/// Stops the kubesim of a state directory and removes its kubeconfig.
pub fn down(state_dir: &Path) -> anyhow::Result<bool> {
    let files = StateFiles::new(state_dir);
    let Some(pid) = read_pid(&files).filter(|p| alive(*p)) else {
        // Left over from a kubesim that died: nothing serves them any more.
        let _ = std::fs::remove_file(files.pid());
        let _ = std::fs::remove_file(files.kubeconfig());
        cleanup_dead_networks();
        // Pod processes of the dead kubesim.
        crate::runner::kill_leftovers(state_dir);
        return Ok(false);
    };
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("could not signal kubesim (pid {pid})");
    }
    // An upstream cluster takes a few seconds more (its processes, mounts
    // and namespaces are removed before it exits).
    let deadline = Instant::now() + Duration::from_secs(60);
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("kubesim (pid {pid}) did not stop within 60s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(files.kubeconfig());
    let _ = std::fs::remove_file(files.pid());
    cleanup_dead_networks();
    Ok(true)
}
