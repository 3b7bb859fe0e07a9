//! `meshctl upgrade`: move an installed control plane to this meshctl's version. The Mesh's
//! settings are kept (its spec, with `spec.versions` set to this meshctl's images; `-f` and
//! `--set` on top), the installation is rendered as `meshctl install` renders it, and every
//! object is applied as a server-side dry run first: what would change is shown as a diff of
//! the live object and the API server's answer. Once confirmed (`--yes` for scripts; without a
//! terminal it is required), it is applied as `meshctl install` applies it; the operator then
//! rolls the new proxy version out to the data plane in its health-gated waves, the ingress
//! gateway included (its Deployment keeps the image it runs until its wave).

pub mod diff;

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Value, json};
use trellis_api::mesh::{GROUP, MESH_NAME, SYSTEM_NAMESPACE};
use trellis_manifests::profile::{self, Profile};

use crate::cluster::{Cluster, ClusterArgs, Outcome, comparable, describe};
use crate::install::{self, WaitArgs, values};
use crate::output::{self, Format, Terminal};
use crate::progress::Progress;
use crate::{EXIT_OK, uninstall};

/// `meshctl upgrade` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshctl upgrade                      # show what changes, ask, apply, wait until Ready
  meshctl upgrade --yes --wait=false   # for scripts (without a terminal, --yes is required)
  meshctl upgrade --set defaultMtlsMode=STRICT

The installed Mesh's settings are kept as they are (a setting removed from the Mesh stays
removed); its spec.versions move to this meshctl's images. The profile is the installed one
(an egress gateway present: demo; else an ingress gateway: default; none: minimal) unless
--profile says otherwise; another profile adds its settings under the installed ones.

Exit status: 0 upgraded (or nothing to change), 1 invalid Mesh settings, 2 usage or not
installed, 3 cluster unreachable or a request refused, 4 not Ready in time, 5 not confirmed.")]
pub struct Args {
    /// The profile (default: the installed one).
    #[arg(long, value_parser = install::parse_profile)]
    pub profile: Option<Profile>,
    /// A Mesh whose spec overrides the installed settings. Repeatable; later files win.
    #[arg(short = 'f', long = "filename", value_name = "MESH.yaml")]
    pub files: Vec<PathBuf>,
    /// Set a field of the Mesh's spec (PATH=VALUE, as for install). Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Apply without asking (needed without a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Output: table (people), json or yaml (scripts: the changes, then the report).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// One object's change.
#[derive(Debug, Serialize)]
pub struct Change {
    /// `Kind namespace/name`.
    pub object: String,
    /// What applying it does.
    pub result: Outcome,
    /// The diff of the live object and the dry run's answer (`-`/`+`/` ` lines).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diff: Vec<String>,
}

fn mesh_ref() -> Value {
    json!({"apiVersion": format!("{GROUP}/{}", trellis_api::document::VERSION), "kind": "Mesh",
        "metadata": {"name": MESH_NAME}})
}

/// The installed Mesh's spec, without its versions (the upgrade sets them).
pub async fn installed_settings(cluster: &Cluster) -> anyhow::Result<Value> {
    let live = match cluster.get(&mesh_ref()).await {
        Ok(Some(live)) => live,
        Ok(None) => {
            anyhow::bail!("Trellis is not installed in this cluster (no Mesh {MESH_NAME}): run `meshctl install`")
        }
        Err(e) if e.is_not_found() => {
            anyhow::bail!("Trellis is not installed in this cluster (the Mesh CRD is missing): run `meshctl install`")
        }
        Err(e) => return Err(e.into()),
    };
    let mut spec = live["spec"].clone();
    if let Some(map) = spec.as_object_mut() {
        map.remove("versions");
    }
    Ok(spec)
}

/// The installed profile: with an egress gateway, demo (only demo has one); else with an
/// ingress gateway, default (the demo profile's tracing is in the Mesh settings kept); without
/// either, minimal.
pub async fn installed_profile(cluster: &Cluster) -> anyhow::Result<Profile> {
    let deployment = |name: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE}})
    };
    Ok(if cluster.get(&deployment(profile::EGRESS_GATEWAY)).await?.is_some() {
        Profile::Demo
    } else if cluster.get(&deployment(profile::GATEWAY)).await?.is_some() {
        Profile::Default
    } else {
        Profile::Minimal
    })
}

/// What applying `objects` would change, each by a server-side dry run.
pub async fn changes(cluster: &Cluster, objects: &[Value], progress: &mut Progress) -> anyhow::Result<Vec<Change>> {
    progress.begin("Asking the API server what would change (server-side dry run)");
    let mut out = Vec::new();
    for o in objects {
        progress.update(&describe(o));
        let live = cluster.get(o).await?;
        let (after, result) = cluster.apply(o, true).await?;
        let diff = match (&live, result) {
            (Some(live), Outcome::Configured) => diff::lines(&yaml(live), &yaml(&after)),
            (None, _) => yaml(&after).lines().map(|l| format!("+{l}")).collect(),
            _ => Vec::new(),
        };
        out.push(Change {
            object: describe(o),
            result,
            diff,
        });
    }
    progress.done("");
    Ok(out)
}

fn yaml(o: &Value) -> String {
    serde_yaml_ng::to_string(&comparable(o)).unwrap_or_default()
}

/// The changes, for people.
pub fn print_changes(changes: &[Change], out: &mut dyn Write) -> anyhow::Result<()> {
    for c in changes.iter().filter(|c| c.result != Outcome::Unchanged) {
        writeln!(out, "--- {} ({})", c.object, c.result)?;
        for line in &c.diff {
            writeln!(out, "{line}")?;
        }
    }
    let unchanged = changes.iter().filter(|c| c.result == Outcome::Unchanged).count();
    writeln!(
        out,
        "{} to create or change, {unchanged} unchanged.",
        changes.len() - unchanged
    )?;
    Ok(())
}

/// Runs `meshctl upgrade`.
pub async fn run(
    args: &Args,
    cluster_args: &ClusterArgs,
    terminal: Terminal,
    stdin: &mut dyn std::io::Read,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let files = install::read_files(&args.files)?;
    // Malformed files and invalid settings are refused before any request.
    values::resolve(args.profile.unwrap_or(Profile::Default), &files, &args.set)?;
    let mut progress = Progress::new(terminal, args.output != Format::Table);
    progress.begin("Connecting to the cluster");
    let cluster = Cluster::connect(cluster_args).await?;
    let kubernetes = cluster.version().await?;
    progress.done(&format!("{} (Kubernetes {kubernetes})", cluster.server()));
    let kept = installed_settings(&cluster).await?;
    let installed = installed_profile(&cluster).await?;
    let profile = args.profile.unwrap_or(installed);
    let kept = values::kept_settings(installed, profile, kept);
    let values = values::resolve_over(profile, Some(kept), &files, &args.set)?;
    for w in &values.warnings {
        eprintln!("{} {w}", terminal.warn());
    }
    let objects = install::objects_for(&cluster, &values).await?;
    let changes = changes(&cluster, &objects, &mut progress).await?;
    if args.output == Format::Table {
        print_changes(&changes, out)?;
    }
    if changes.iter().all(|c| c.result == Outcome::Unchanged) {
        if args.output == Format::Table {
            writeln!(
                out,
                "{} Nothing to upgrade: the cluster runs meshctl {}'s installation (profile {profile}).",
                terminal.ok(),
                env!("CARGO_PKG_VERSION")
            )?;
        } else {
            output::write_data(out, args.output, &json!({"changes": changes, "changed": false}))?;
        }
        return Ok(EXIT_OK);
    }
    if !args.yes {
        out.flush()?;
        uninstall::confirm(
            &format!("Upgrade Trellis to {} as shown?", env!("CARGO_PKG_VERSION")),
            terminal,
            stdin,
        )?;
    }
    let applied = install::apply(&cluster, &objects, args.wait.timeout, &mut progress).await?;
    if args.wait.wait {
        install::wait_ready(&cluster, &objects, args.wait.timeout, &mut progress).await?;
    }
    let report = install::Report {
        profile: profile.to_string(),
        changed: applied.iter().any(|a| a.result != Outcome::Unchanged),
        objects: applied,
        ready: args.wait.wait,
    };
    if args.output != Format::Table {
        output::write_data(out, args.output, &json!({"changes": changes, "report": report}))?;
        return Ok(EXIT_OK);
    }
    install::print_report(&report, "upgraded", Format::Table, terminal, out)?;
    writeln!(
        out,
        "The operator now rolls proxy {} out to the meshed workloads in waves (the Mesh's spec.rollout); \
         follow it with `kubectl get mesh {MESH_NAME} -w` and `meshctl version`.",
        values.options().proxy_image
    )?;
    Ok(EXIT_OK)
}
