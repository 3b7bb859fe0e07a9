//! `kubesim up | down | serve`: arguments only; the work is in the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use trellis_e2e::commands;

#[derive(Debug, Parser)]
#[command(name = "kubesim", about = "A local Kubernetes API server for tests and demos")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start kubesim in the background and print how to use it.
    Up {
        #[arg(long, env = "KUBESIM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Run pods as processes, each in its own network namespace on
        /// kubesim's bridge, with Service DNAT, cluster DNS and
        /// LoadBalancers on 127.X.Y.1 (needs root). The default when root.
        #[arg(long, conflicts_with = "simulate")]
        processes: bool,
        /// Simulate pods (reported Running, nothing runs): the default when
        /// not root.
        #[arg(long)]
        simulate: bool,
        /// Where the programs of the image mapping are (`trellis-proxy`,
        /// `trellis-operator`, `trellis-testapp`); default: kubesim's own
        /// directory and its parent.
        #[arg(long, env = "KUBESIM_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// Start upstream Kubernetes instead (etcd, kube-apiserver with
        /// RBAC, controller-manager, scheduler, and a node: containerd,
        /// kubelet, kube-proxy, CoreDNS), built by e2e/upstream/build.sh;
        /// needs root.
        #[arg(long, conflicts_with_all = ["processes", "simulate", "port"])]
        upstream: bool,
        /// Where e2e/upstream/build.sh put the upstream components.
        #[arg(long, env = "TRELLIS_UPSTREAM_BIN")]
        upstream_bin: Option<PathBuf>,
    },
    /// Stop the kubesim (or upstream cluster) of a state directory.
    Down {
        #[arg(long, env = "KUBESIM_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Run kubesim in the foreground.
    Serve {
        #[arg(long, env = "KUBESIM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        port: Option<u16>,
        /// As for `up`.
        #[arg(long, conflicts_with = "simulate")]
        processes: bool,
        /// As for `up`.
        #[arg(long)]
        simulate: bool,
        /// As for `up`.
        #[arg(long, env = "KUBESIM_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// As for `up`.
        #[arg(long, conflicts_with_all = ["processes", "simulate", "port"])]
        upstream: bool,
        /// As for `up`.
        #[arg(long, env = "TRELLIS_UPSTREAM_BIN")]
        upstream_bin: Option<PathBuf>,
    },
}

/// Pods run as processes when asked, or by default when root; otherwise
/// they are simulated, and the user is told why.
fn pods_as_processes(processes: bool, simulate: bool) -> bool {
    if processes || simulate {
        return processes;
    }
    if trellis_e2e::runner::available() {
        return true;
    }
    eprintln!(
        "kubesim: not root, so pods will be simulated (reported Running, nothing runs); run as root to run pods as processes"
    );
    false
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KUBESIM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let dir = |d: Option<PathBuf>| d.unwrap_or_else(commands::default_state_dir);
    match cli.command {
        Cmd::Up {
            upstream: true,
            state_dir,
            bin_dir,
            upstream_bin,
            ..
        } => {
            let kubeconfig = commands::up_upstream(&dir(state_dir), bin_dir.as_deref(), upstream_bin.as_deref())?;
            println!("upstream Kubernetes is up; kubeconfig: {}", kubeconfig.display());
            println!("export KUBECONFIG={}", kubeconfig.display());
        }
        Cmd::Up {
            state_dir,
            port,
            processes,
            simulate,
            bin_dir,
            ..
        } => {
            let processes = pods_as_processes(processes, simulate);
            let kubeconfig = commands::up(&dir(state_dir), port.unwrap_or(0), processes, bin_dir.as_deref())?;
            println!("kubesim is up; kubeconfig: {}", kubeconfig.display());
            println!("export KUBECONFIG={}", kubeconfig.display());
        }
        Cmd::Down { state_dir } => {
            let d = dir(state_dir);
            if commands::down(&d)? {
                println!("kubesim stopped ({})", d.display());
            } else {
                println!("kubesim was not running ({})", d.display());
            }
        }
        Cmd::Serve {
            upstream: true,
            state_dir,
            bin_dir,
            upstream_bin,
            ..
        } => {
            let opts = commands::upstream_options(&dir(state_dir), bin_dir.as_deref(), upstream_bin.as_deref());
            commands::serve_upstream(&opts)?;
        }
        Cmd::Serve {
            state_dir,
            port,
            processes,
            simulate,
            bin_dir,
            ..
        } => {
            let processes = pods_as_processes(processes, simulate);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(commands::serve(
                &dir(state_dir),
                port.unwrap_or(0),
                processes,
                bin_dir.as_deref(),
            ))?;
        }
    }
    Ok(())
}
