//! `meshctl stat` and `meshctl top`: the mesh's golden signals — requests per second, success
//! rate, p50/p99 latency, mTLS share — per workload, service or namespace, and per edge
//! (source → destination), over the last minutes, as `linkerd viz stat` shows them. The
//! figures are the operator's traffic view (`trellis_core::traffic`), which every replica
//! serves for the proxies subscribed to it: meshctl asks each through the API server's pod
//! proxy and merges them. Selection and figures are pure ([`select`], [`top`]); the tables
//! are comfy-table's.

use std::io::Write;

use anyhow::{Context, bail};
use clap_complete::ArgValueCompleter;
use serde::Serialize;
use trellis_api::mesh::SYSTEM_NAMESPACE;
use trellis_core::traffic::{EdgeRow, Row, Stat, View, check_window};

use crate::cluster::{Cluster, ClusterArgs};
use crate::output::{self, Format, Terminal};
use crate::{EXIT_OK, completion, operator_admin};

/// What `meshctl stat` shows a row per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    /// Workloads (Deployments, and other controllers' pods by their workload name).
    #[value(alias = "deployment", alias = "deployments", alias = "workload", alias = "workloads")]
    Deploy,
    /// Services.
    #[value(alias = "service", alias = "services")]
    Svc,
    /// Namespaces.
    #[value(alias = "namespace", alias = "namespaces")]
    Ns,
}

/// Which window and namespaces; shared by `stat` and `top`.
#[derive(Debug, Clone, clap::Args)]
pub struct Scope {
    /// The namespace (default: the kubeconfig context's).
    #[arg(
        short = 'n',
        long = "namespace",
        value_name = "NS",
        conflicts_with = "all_namespaces",
        add = ArgValueCompleter::new(completion::complete_namespaces)
    )]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// The window the figures are over: 10s to 5m, in steps of 10s (e.g. 30s, 1m, 5m).
    #[arg(short = 't', long = "time-window", default_value = "1m", value_parser = parse_window)]
    pub window: u64,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Arguments of `meshctl stat`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  meshctl stat deploy -n shop            every workload of shop that served requests
  meshctl stat deploy web -n shop        one workload, and the edges into it
  meshctl stat svc -A -t 5m              every service, over the last five minutes
  meshctl stat ns                        every namespace
  meshctl stat deploy -n shop -o json    for scripts

A request is counted once, by the proxy that served it: the destination's sidecar (which
alone knows the client's workload and whether it came over mutual TLS), or a gateway for what
it took from outside the mesh. Success is the share of requests not answered 5xx. Proxies
report every 10 s; the figures are the operator's, read through the API server's pod proxy
(pods/proxy in trellis-system).")]
pub struct Args {
    /// What to show a row per.
    #[arg(value_enum, default_value = "deploy")]
    pub resource: Resource,
    /// Only this workload, service or namespace.
    pub name: Option<String>,
    /// Namespaces, window and format.
    #[command(flatten)]
    pub scope: Scope,
}

/// Arguments of `meshctl top`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  meshctl top -n shop                    the busiest edges into or out of shop
  meshctl top -A --limit 5 -t 5m         the five busiest of the mesh over five minutes
  meshctl top -A -o json

Edges are source workload → destination workload through a service, counted by the
destination's proxy; `unknown` sources are clients outside the mesh.")]
pub struct TopArgs {
    /// Edges shown at most, the busiest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Namespaces, window and format.
    #[command(flatten)]
    pub scope: Scope,
}

/// `30s`, `1m`, `5m` or seconds: a window the operator keeps.
fn parse_window(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.strip_suffix('m') {
        Some(d) => (d, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a window; use e.g. 30s, 1m or 5m"))?;
    let seconds = n * unit;
    check_window(seconds)?;
    Ok(seconds)
}

/// What `meshctl stat` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatOutput {
    /// The window the figures are over, in seconds.
    pub window_seconds: u64,
    /// The rows' kind: `deploy`, `svc` or `ns`.
    pub resource: &'static str,
    /// One per workload, service or namespace selected.
    pub rows: Vec<Row>,
    /// The edges into the rows.
    pub edges: Vec<EdgeRow>,
    /// Edges the operators left out of their views (the quietest), to stay bounded.
    pub truncated: usize,
}

/// The rows of `resource` in `namespace` (all when `None`), only `name` if given, and the
/// edges into them.
pub fn select(view: &View, resource: Resource, name: Option<&str>, namespace: Option<&str>) -> StatOutput {
    let rows = match resource {
        Resource::Deploy => view.workloads(),
        Resource::Svc => view.services(),
        Resource::Ns => view.namespaces(),
    };
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|r| namespace.is_none_or(|ns| r.namespace == ns) && name.is_none_or(|n| r.name == n))
        .collect();
    let into = |e: &EdgeRow| {
        rows.iter().any(|r| match resource {
            Resource::Deploy => e.destination.namespace == r.namespace && e.destination.name == r.name,
            Resource::Svc => e.service.split('.').take(2).eq([r.name.as_str(), r.namespace.as_str()]),
            Resource::Ns => e.destination.namespace == r.namespace,
        })
    };
    let edges = view.edge_rows().into_iter().filter(|e| into(e)).collect();
    StatOutput {
        window_seconds: view.window_seconds,
        resource: match resource {
            Resource::Deploy => "deploy",
            Resource::Svc => "svc",
            Resource::Ns => "ns",
        },
        rows,
        edges,
        truncated: view.truncated,
    }
}

/// What `meshctl top` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopOutput {
    /// The window the figures are over, in seconds.
    pub window_seconds: u64,
    /// The busiest edges into or out of the namespace, by requests.
    pub edges: Vec<EdgeRow>,
}

/// The `limit` busiest edges with an end in `namespace` (all when `None`).
pub fn top(view: &View, namespace: Option<&str>, limit: usize) -> TopOutput {
    let mut edges: Vec<EdgeRow> = view
        .edge_rows()
        .into_iter()
        .filter(|e| namespace.is_none_or(|ns| e.source.namespace == ns || e.destination.namespace == ns))
        .collect();
    // Stable: equally busy edges keep the view's order (by source, destination, service).
    edges.sort_by_key(|e| std::cmp::Reverse(e.stat.requests));
    edges.truncate(limit);
    TopOutput {
        window_seconds: view.window_seconds,
        edges,
    }
}

/// Every operator replica's view of the last `window` seconds, merged.
async fn mesh_view(cluster: &Cluster, window: u64) -> anyhow::Result<View> {
    let answers = operator_admin::each_replica(cluster, &format!("/traffic?window={window}")).await?;
    let (mut views, mut missing) = (Vec::new(), Vec::new());
    for (pod, answer) in answers {
        match answer {
            Ok(text) => views.push(
                serde_json::from_str::<View>(&text)
                    .with_context(|| format!("reading the traffic view of operator pod {SYSTEM_NAMESPACE}/{pod}"))?,
            ),
            Err(e) => missing.push(format!("{SYSTEM_NAMESPACE}/{pod}: {e}")),
        }
    }
    if views.is_empty() {
        bail!(
            "no operator replica answered ({}); is the operator running? (meshctl check)",
            missing.join("; ")
        );
    }
    if !missing.is_empty() {
        // The figures lack the proxies subscribed to these replicas: said, not hidden.
        eprintln!(
            "meshctl: the traffic of proxies subscribed to {} is missing: {}",
            if missing.len() == 1 {
                "one operator replica"
            } else {
                "some operator replicas"
            },
            missing.join("; ")
        );
    }
    View::merge(views).map_err(|e| anyhow::anyhow!("merging the operator replicas' views: {e}"))
}

/// The namespace a command is about (`None`: all).
fn namespace(scope: &Scope, cluster: &Cluster) -> Option<String> {
    match (&scope.namespace, scope.all_namespaces) {
        (_, true) => None,
        (Some(ns), false) => Some(ns.clone()),
        (None, false) => Some(cluster.default_namespace().to_string()),
    }
}

/// Run `meshctl stat`.
pub async fn run(args: &Args, cluster: &ClusterArgs, terminal: Terminal, out: &mut dyn Write) -> anyhow::Result<u8> {
    if args.resource == Resource::Ns && (args.scope.namespace.is_some() || args.scope.all_namespaces) {
        bail!("meshctl stat ns lists namespaces: name one as `meshctl stat ns NAME` instead of -n/-A");
    }
    let cluster = Cluster::connect(cluster).await?;
    let view = mesh_view(&cluster, args.scope.window).await?;
    let ns = match args.resource {
        Resource::Ns => None,
        _ => namespace(&args.scope, &cluster),
    };
    let selected = select(&view, args.resource, args.name.as_deref(), ns.as_deref());
    if args.scope.output != Format::Table {
        output::write_data(out, args.scope.output, &selected)?;
        return Ok(EXIT_OK);
    }
    if selected.rows.is_empty() {
        let what = args.name.as_deref().map_or(String::new(), |n| format!(" {n}"));
        let scope = ns.map_or_else(|| "the mesh".to_string(), |ns| format!("namespace {ns}"));
        writeln!(
            out,
            "No requests served by {}{what} in {scope} in the last {} (proxies report every 10 s).",
            selected.resource,
            window_text(selected.window_seconds)
        )?;
        return Ok(EXIT_OK);
    }
    let mut table = output::table(["NAMESPACE", "NAME", "SUCCESS", "RPS", "P50", "P99", "MTLS", "REQUESTS"]);
    for r in &selected.rows {
        let mut cells = vec![r.namespace.clone(), r.name.clone()];
        cells.extend(figures(&r.stat));
        table.add_row(cells);
    }
    writeln!(out, "{table}")?;
    writeln!(
        out,
        "\n{} into them, over the last {}:",
        terminal.bold("Edges"),
        window_text(selected.window_seconds)
    )?;
    writeln!(out, "{}", edge_table(&selected.edges))?;
    truncated_note(out, selected.truncated)?;
    Ok(EXIT_OK)
}

/// Run `meshctl top`.
pub async fn run_top(args: &TopArgs, cluster: &ClusterArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let cluster = Cluster::connect(cluster).await?;
    let view = mesh_view(&cluster, args.scope.window).await?;
    let ns = namespace(&args.scope, &cluster);
    let busiest = top(&view, ns.as_deref(), args.limit);
    if args.scope.output != Format::Table {
        output::write_data(out, args.scope.output, &busiest)?;
        return Ok(EXIT_OK);
    }
    if busiest.edges.is_empty() {
        let scope = ns.map_or_else(|| "the mesh".to_string(), |ns| format!("namespace {ns}"));
        writeln!(
            out,
            "No requests in {scope} in the last {} (proxies report every 10 s).",
            window_text(busiest.window_seconds)
        )?;
        return Ok(EXIT_OK);
    }
    writeln!(out, "{}", edge_table(&busiest.edges))?;
    truncated_note(out, view.truncated)?;
    Ok(EXIT_OK)
}

fn truncated_note(out: &mut dyn Write, truncated: usize) -> anyhow::Result<()> {
    if truncated > 0 {
        writeln!(
            out,
            "{truncated} quieter edges are left out: the operator keeps the busiest (its bound)."
        )?;
    }
    Ok(())
}

fn edge_table(edges: &[EdgeRow]) -> comfy_table::Table {
    let mut table = output::table([
        "SOURCE",
        "DESTINATION",
        "SERVICE",
        "SUCCESS",
        "RPS",
        "P50",
        "P99",
        "MTLS",
        "REQUESTS",
    ]);
    for e in edges {
        let service = if e.service.is_empty() {
            "-".into()
        } else {
            e.service.clone()
        };
        let mut cells = vec![e.source.to_string(), e.destination.to_string(), service];
        cells.extend(figures(&e.stat));
        table.add_row(cells);
    }
    table
}

/// SUCCESS, RPS, P50, P99, MTLS and REQUESTS cells.
fn figures(s: &Stat) -> Vec<String> {
    let percent = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0));
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}ms"));
    vec![
        percent(s.success_rate),
        format!("{:.2}", s.rps),
        ms(s.p50_ms),
        ms(s.p99_ms),
        percent(s.mtls_share),
        s.requests.to_string(),
    ]
}

fn window_text(seconds: u64) -> String {
    if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
#[path = "stat/tests.rs"]
mod tests;
