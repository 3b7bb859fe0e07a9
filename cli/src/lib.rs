//! The `meshctl` command line. `main.rs` only calls [`main`]; every command is a module here so
//! tests drive the same code the binary runs.
//!
//! Output is for people first (tables, ✔/✘, colour only on a terminal) and for scripts second
//! (`-o json|yaml`: nothing but the data on stdout; progress and messages on stderr), with
//! stable exit codes ([`EXIT_OK`] … [`EXIT_NOT_CONFIRMED`]).

pub mod analyze;
pub mod check;
pub mod cluster;
pub mod completion;
pub mod config_text;
pub mod dashboard;
pub mod demo;
pub mod inputs;
pub mod install;
pub mod operator_admin;
pub mod output;
pub mod progress;
pub mod proxy_config;
pub mod root_namespace;
pub mod routes;
pub mod stat;
pub mod uninstall;
pub mod upgrade;
pub mod validate;
pub mod version;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::cluster::{ClusterArgs, ClusterError};
use crate::install::values::ValuesError;
use crate::output::Terminal;
use crate::proxy_config::admin::AdminError;

/// Success: valid, installed, every check passed.
pub const EXIT_OK: u8 = 0;
/// Something is invalid or failed a check (configuration, Mesh settings, `meshctl check`).
pub const EXIT_INVALID: u8 = 1;
/// Usage and I/O errors: bad flags, unreadable or malformed files.
pub const EXIT_USAGE: u8 = 2;
/// The cluster could not be reached, or refused a request.
pub const EXIT_CLUSTER: u8 = 3;
/// Waited `--timeout` without the mesh becoming Ready.
pub const EXIT_TIMEOUT: u8 = 4;
/// A destructive command was not confirmed (declined, or no terminal and no `--yes`).
pub const EXIT_NOT_CONFIRMED: u8 = 5;

/// Waiting for readiness ran out of time; says what was not ready and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(pub String);

/// A destructive command was not confirmed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotConfirmed(pub String);

/// Install, validate, diagnose and inspect a Trellis service mesh.
#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "The daily workflow:
  meshctl check --pre                 # can this cluster take Trellis?
  meshctl install                     # install and wait until Ready
  meshctl check                       # is the mesh healthy?
  meshctl validate -f config/         # before kubectl apply
  meshctl analyze -n shop config/     # what-if: your files laid over the cluster's objects
  meshctl analyze -A                  # problems across the whole live mesh
  meshctl routes payment.shop --request 'GET /pay -H x-canary:true'
                                      # which rule takes a request, and why the others do not
  meshctl stat deploy -n shop         # golden signals per workload and edge (meshctl top: busiest edges)
  meshctl dashboard                   # the live service graph in a browser
  meshctl upgrade                     # with a newer meshctl: see what changes, then apply
  meshctl uninstall                   # remove the control plane (keeps CRDs and your objects)

Exit status: 0 ok, 1 invalid or a failed check, 2 usage or I/O error, 3 cluster unreachable or
a request refused, 4 not Ready in time, 5 not confirmed."
)]
pub struct Cli {
    /// Which cluster to talk to.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// meshctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install Trellis: CRDs, the operator, the gateway and the Mesh, and wait until Ready.
    Install(install::Args),
    /// Check that the cluster can take Trellis (--pre), or that the installed mesh is healthy.
    Check(check::Args),
    /// Upgrade the control plane to this meshctl's version: shows what changes, then applies it.
    Upgrade(upgrade::Args),
    /// Remove the control plane (keeps CRDs, your Trellis objects and the mesh CA unless --purge).
    Uninstall(uninstall::Args),
    /// Validate Trellis (and Istio) configuration files offline, like `istioctl validate`.
    Validate(validate::Args),
    /// Find problems in configuration — files, the live cluster, or files laid over it — with
    /// Istio's analysis codes, like `istioctl analyze`.
    Analyze(analyze::Args),
    /// Run the seeds' shop on a local kubesim, end to end, and show the mesh at work (needs root).
    Demo(demo::Args),
    /// Show what a live proxy runs: its routes (with their origin), clusters, endpoints,
    /// listeners and certificate; read and set its log level.
    #[command(name = "proxy-config", visible_alias = "pc")]
    ProxyConfig(proxy_config::Args),
    /// Show the effective routes of a service — every rule in force with its origin, each
    /// destination's policy and endpoints — and, for a request, which rule takes it and why
    /// the others do not.
    Routes(routes::Args),
    /// Show the mesh's golden signals — requests per second, success rate, p50/p99 latency,
    /// mTLS share — per workload, service or namespace, and per edge, like `linkerd viz stat`.
    Stat(stat::Args),
    /// Show the busiest edges (source → destination) of the mesh, with their golden signals.
    Top(stat::TopArgs),
    /// Open the operator's web dashboard — the live service graph, a page per service with
    /// its golden signals and routes, the proxies' sync state — through a port-forward.
    Dashboard(dashboard::Args),
    /// Print the versions of meshctl, the operator and the proxies, and their skew.
    Version(version::Args),
    /// Print the shell code that completes meshctl's commands, flags and the cluster's names
    /// (pods, services, namespaces) and analysis codes: `source <(meshctl completion bash)`.
    #[command(after_help = "Examples:
  source <(meshctl completion bash)          # in ~/.bashrc (the same as: source <(COMPLETE=bash meshctl))
  source <(meshctl completion zsh)           # in ~/.zshrc
  meshctl completion fish | source           # in ~/.config/fish/config.fish

At each TAB the shell asks this meshctl, which lists pods with a proxy, services and
namespaces from the cluster --kubeconfig and --context name (else KUBECONFIG), giving up
silently after 2 s. Register it anew on shell start (as above), so the shell code always
matches the meshctl that answers it.")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The exit status for an error: what kind of failure it is, from its causes.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ClusterError>() || cause.is::<kube::Error>() {
            return EXIT_CLUSTER;
        }
        if cause.is::<TimedOut>() {
            return EXIT_TIMEOUT;
        }
        if cause.is::<NotConfirmed>() {
            return EXIT_NOT_CONFIRMED;
        }
        if let Some(ValuesError::Invalid(_)) = cause.downcast_ref::<ValuesError>() {
            return EXIT_INVALID;
        }
        if let Some(e) = cause.downcast_ref::<AdminError>() {
            return match e {
                AdminError::NoPod { .. } | AdminError::NoProxy { .. } => EXIT_USAGE,
                AdminError::NoAnswer { .. } | AdminError::Refused { .. } => EXIT_CLUSTER,
            };
        }
    }
    EXIT_USAGE
}

/// Run meshctl with `args` (including the program name); returns the process exit code.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // A shell asking for completions (`COMPLETE=bash meshctl -- meshctl WORDS…`): answer and stop.
    let cwd = std::env::current_dir().ok();
    match clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(completion::COMPLETE_VAR)
        .try_complete(args.clone(), cwd.as_deref())
    {
        Ok(true) => return ExitCode::from(EXIT_OK),
        Ok(false) => {}
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match run(cli, Terminal::detect(), &mut std::io::stdin().lock(), &mut out) {
        Ok(code) => code,
        Err(e) => {
            let _ = out.flush();
            eprintln!("meshctl: {e:#}");
            exit_code(&e)
        }
    };
    let _ = out.flush();
    ExitCode::from(code)
}

/// Run a parsed command on `terminal`, reading `-` from `stdin` and writing results to `out`.
pub fn run(cli: Cli, terminal: Terminal, stdin: &mut dyn std::io::Read, out: &mut dyn Write) -> anyhow::Result<u8> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
    };
    match cli.command {
        Command::Validate(args) => validate::run(&args, stdin, out),
        Command::Analyze(args) => runtime()?.block_on(analyze::run(&args, &cli.cluster, terminal, stdin, out)),
        Command::Install(args) => runtime()?.block_on(install::run(&args, &cli.cluster, terminal, out)),
        Command::Check(args) => runtime()?.block_on(check::run(&args, &cli.cluster, terminal, out)),
        Command::Upgrade(args) => runtime()?.block_on(upgrade::run(&args, &cli.cluster, terminal, stdin, out)),
        Command::Uninstall(args) => runtime()?.block_on(uninstall::run(&args, &cli.cluster, terminal, stdin, out)),
        Command::ProxyConfig(args) => runtime()?.block_on(proxy_config::run(&args, &cli.cluster, terminal, out)),
        Command::Routes(args) => runtime()?.block_on(routes::run(&args, &cli.cluster, terminal, stdin, out)),
        Command::Demo(args) => runtime()?.block_on(demo::run(&args, terminal, out)),
        Command::Stat(args) => runtime()?.block_on(stat::run(&args, &cli.cluster, terminal, out)),
        Command::Top(args) => runtime()?.block_on(stat::run_top(&args, &cli.cluster, out)),
        Command::Dashboard(args) => runtime()?.block_on(dashboard::run(&args, &cli.cluster, out)),
        Command::Version(args) => runtime()?.block_on(version::run(&args, &cli.cluster, terminal, out)),
        Command::Completion { shell } => {
            completion::registration(shell, out)?;
            Ok(EXIT_OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn every_command_documents_examples_in_its_help() {
        let mut cli = Cli::command();
        cli.build();
        let missing: Vec<String> = cli
            .get_subcommands()
            // clap's own `help` explains itself.
            .filter(|c| c.get_name() != "help")
            .filter(|c| {
                !c.get_after_help()
                    .is_some_and(|h| h.to_string().contains("Examples:\n  ") && h.to_string().contains("meshctl "))
            })
            .map(|c| c.get_name().to_string())
            .collect();
        assert!(missing.is_empty(), "no examples in the help of: {missing:?}");
    }
}
