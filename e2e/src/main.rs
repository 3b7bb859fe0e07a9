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
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Run pods as processes, each in its own network namespace on
        /// kubesim's bridge, with Service DNAT, cluster DNS and
        /// LoadBalancers on 127.X.Y.1 (needs root). Default: simulated pods.
        #[arg(long)]
        processes: bool,
    },
    /// Stop the kubesim of a state directory.
    Down {
        #[arg(long, env = "KUBESIM_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Run kubesim in the foreground.
    Serve {
        #[arg(long, env = "KUBESIM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// As for `up`.
        #[arg(long)]
        processes: bool,
    },
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
            state_dir,
            port,
            processes,
        } => {
            let kubeconfig = commands::up(&dir(state_dir), port, processes)?;
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
            state_dir,
            port,
            processes,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(commands::serve(&dir(state_dir), port, processes))?;
        }
    }
    Ok(())
}
