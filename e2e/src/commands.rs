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

/// Removes the pod network of kubesim instances that died (a no-op when
/// not root: then there can be none).
fn cleanup_dead_networks() {
    if crate::network::available() {
        crate::network::cleanup_leftovers();
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
    if processes && !crate::network::available() {
        bail!("{}", crate::network::NetworkError::NotRoot);
    }
    let log = std::fs::File::create(files.log()).with_context(|| format!("creating {}", files.log().display()))?;
    let exe = std::env::current_exe().context("finding the kubesim executable")?;
    let mut child = {
        use std::os::unix::process::CommandExt as _;
        Command::new(exe)
            .arg("serve")
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--port")
            .arg(port.to_string())
            .arg(if processes { "--processes" } else { "--simulate" })
            .args(
                bin_dir
                    .map(|d| [std::ffi::OsStr::new("--bin-dir"), d.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C in this shell must not stop it.
            .process_group(0)
            .spawn()
            .context("starting kubesim serve")?
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("kubesim exited during start ({status}); see {}", files.log().display());
        }
        if files.kubeconfig().exists() && files.pid().exists() {
            return Ok(files.kubeconfig());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("kubesim did not start within 30s; see {}", files.log().display())
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
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("kubesim (pid {pid}) did not stop within 15s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(files.kubeconfig());
    let _ = std::fs::remove_file(files.pid());
    cleanup_dead_networks();
    Ok(true)
}
