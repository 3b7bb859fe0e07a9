//! The `meshctl` command line. `main.rs` only calls [`main`]; every command is a module here so
//! tests drive the same code the binary runs.

pub mod demo;
pub mod inputs;
pub mod validate;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Exit status when everything is valid.
pub const EXIT_OK: u8 = 0;
/// Exit status when some configuration is invalid.
pub const EXIT_INVALID: u8 = 1;
/// Exit status for usage and I/O errors.
pub const EXIT_USAGE: u8 = 2;

/// Install, validate, diagnose and inspect a Trellis service mesh.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// meshctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate Trellis (and Istio) configuration files offline, like `istioctl validate`.
    Validate(validate::Args),
    /// Run the seeds' shop on a local kubesim, end to end, and show the mesh at work (needs root).
    Demo(demo::Args),
    /// Print meshctl's version.
    Version,
    /// Print a shell completion script: `source <(meshctl completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Run meshctl with `args` (including the program name); returns the process exit code.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match run(cli, &mut std::io::stdin().lock(), &mut out) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshctl: {e:#}");
            EXIT_USAGE
        }
    };
    let _ = out.flush();
    ExitCode::from(code)
}

/// Run a parsed command, reading `-` from `stdin` and writing results to `out`.
pub fn run(cli: Cli, stdin: &mut dyn std::io::Read, out: &mut dyn Write) -> anyhow::Result<u8> {
    match cli.command {
        Command::Validate(args) => validate::run(&args, stdin, out),
        Command::Demo(args) => demo::run(&args, out),
        Command::Version => {
            writeln!(out, "meshctl {}", env!("CARGO_PKG_VERSION"))?;
            writeln!(
                out,
                "API groups: networking.trellis.dev, security.trellis.dev, mesh.trellis.dev ({})",
                trellis_api::document::VERSION
            )?;
            Ok(EXIT_OK)
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "meshctl", out);
            Ok(EXIT_OK)
        }
    }
}
