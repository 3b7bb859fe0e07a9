//! `meshctl analyze`: every problem in Trellis configuration — files alone, the live cluster
//! alone, or files laid over the cluster's objects (what-if before `kubectl apply`) — one
//! finding per problem with a stable code (Istio's where Istio reports the same problem), the
//! object, the file and line, and a message that names the fix ([`trellis_core::analysis`]).

use std::io::{Read, Write};

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap_complete::ArgValueCompleter;
use serde_json::Value;
use trellis_api::mesh::{MESH_NAME, SYSTEM_NAMESPACE};
use trellis_api::validation::Validator;
use trellis_core::analysis::{self, Finding, Input, Object, ProxySync, Source};
use trellis_core::code::{Code, Level};
use trellis_core::snapshot::{InputKind, with_type_meta};

use crate::cluster::{Cluster, ClusterArgs};
use crate::output::Terminal;
use crate::{EXIT_INVALID, EXIT_OK, completion, inputs, operator_admin};

/// Arguments of `meshctl analyze`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  meshctl analyze --use-kube=false examples/shop/      files alone
  meshctl analyze -A                                   the whole live cluster
  meshctl analyze -n shop new-routing.yaml             what-if: the file laid over the cluster
  meshctl analyze -o json --failure-threshold Warning ./config/   for CI
  meshctl analyze -S 'IST0102=Namespace *' -A          suppress a code for matching objects
  meshctl analyze --list-analyzers
  meshctl analyze --explain IST0101

Without files, the cluster's objects are analyzed (findings of namespace `default`, or -n, or
-A); with files and --use-kube on, the files replace the cluster's objects of the same kind and
name first. The operator's sync state adds what its proxies rejected or lag behind.

Exit status: 0 when no finding reaches --failure-threshold, 1 when one does, 2 on usage or
I/O errors (including an unreachable cluster).")]
pub struct Args {
    /// Files or directories (their *.yaml, *.yml and *.json files, recursively), or - for
    /// stdin. Laid over the cluster's objects unless --use-kube=false.
    #[arg(value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
    /// Read the live cluster's objects (with files: analyze them laid over the cluster).
    #[arg(long = "use-kube", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub use_kube: bool,
    /// Report findings about objects of this namespace only (default: with --use-kube=false,
    /// every namespace of the files; with the cluster, `default`), and about the Namespace itself.
    /// Findings about the Mesh are always reported.
    #[arg(
        short = 'n',
        long = "namespace",
        value_name = "NS",
        conflicts_with = "all_namespaces",
        add = ArgValueCompleter::new(completion::complete_namespaces)
    )]
    pub namespace: Option<String>,
    /// Report findings in every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Log)]
    pub output: Format,
    /// The level at which findings make the exit status 1.
    #[arg(long, default_value = "Error", value_parser = parse_level, value_name = "Info|Warning|Error")]
    pub failure_threshold: Level,
    /// The lowest level of finding printed.
    #[arg(long, default_value = "Info", value_parser = parse_level, value_name = "Info|Warning|Error")]
    pub output_threshold: Level,
    /// Suppress findings: `CODE=Kind namespace/name`, each side a glob (`*`, `?`), e.g.
    /// `IST0102=Namespace *` or `*=Pod shop/legacy-*`. Repeatable.
    #[arg(
        short = 'S',
        long = "suppress",
        value_name = "CODE=Kind ns/name",
        add = ArgValueCompleter::new(completion::complete_suppressions)
    )]
    pub suppress: Vec<String>,
    /// List every code meshctl analyze reports, and exit.
    #[arg(long)]
    pub list_analyzers: bool,
    /// Explain a code (`IST0101` or `ReferencedResourceNotFound`), and exit.
    #[arg(long, value_name = "CODE", add = ArgValueCompleter::new(completion::complete_codes))]
    pub explain: Option<String>,
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse()
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per finding (`Error [IST0101] (Kind ns/name file:line) message`), then a summary.
    Log,
    /// A JSON array of findings.
    Json,
    /// A YAML list of findings.
    Yaml,
}

/// A `-S CODE=Kind ns/name` suppression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    code: String,
    origin: String,
}

impl Suppression {
    /// Parse `CODE=Kind ns/name`.
    pub fn parse(s: &str) -> anyhow::Result<Suppression> {
        let Some((code, origin)) = s.split_once('=') else {
            bail!("--suppress {s:?}: write CODE=Kind namespace/name, e.g. \"IST0102=Namespace *\" (globs allowed)");
        };
        let code = code.trim();
        if !code.contains(['*', '?']) && Code::parse(code).is_none() {
            bail!("--suppress {s:?}: no code {code:?}; see meshctl analyze --list-analyzers");
        }
        Ok(Suppression {
            code: code.to_ascii_uppercase(),
            origin: origin.trim().to_string(),
        })
    }

    /// Whether it suppresses `f`.
    pub fn matches(&self, f: &Finding) -> bool {
        glob(&self.code, f.code.id()) && glob(&self.origin, &f.origin)
    }
}

/// `*` (any run) and `?` (any one character) glob matching.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Run `meshctl analyze`; returns the exit code.
pub async fn run(
    args: &Args,
    cluster: &ClusterArgs,
    terminal: Terminal,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    if args.list_analyzers {
        list(out)?;
        return Ok(EXIT_OK);
    }
    if let Some(code) = &args.explain {
        let Some(c) = Code::parse(code) else {
            bail!("no code {code:?}; see meshctl analyze --list-analyzers");
        };
        explain(c, out)?;
        return Ok(EXIT_OK);
    }
    let suppressions = args
        .suppress
        .iter()
        .map(|s| Suppression::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.files.is_empty() && !args.use_kube {
        bail!("nothing to analyze: name files or directories, or leave --use-kube on to read the cluster");
    }
    let mut input = Input::default();
    let mut proxies = Vec::new();
    if args.use_kube {
        // The contract for analyze: an unreachable cluster is an I/O error (exit 2).
        let read = async {
            let c = Cluster::connect(cluster).await?;
            read_cluster(&c, &mut input).await
        };
        proxies = read
            .await
            .map_err(|e: anyhow::Error| anyhow::anyhow!("reading the cluster: {e:#}"))?;
    }
    // Files come after the cluster's objects, so they replace them (what-if).
    read_files(&args.files, stdin, &mut input)?;
    let mut findings = analysis::analyze(&input, &Validator::new());
    findings.extend(proxies);
    let namespace = match (&args.namespace, args.all_namespaces, args.use_kube) {
        (Some(ns), _, _) => Some(ns.clone()),
        (None, true, _) | (None, false, false) => None,
        (None, false, true) => Some("default".to_string()),
    };
    report(
        args,
        &findings,
        namespace.as_deref(),
        &suppressions,
        terminal.colour,
        out,
    )
}

/// Every document of the files, in order, as objects with their file and line.
fn read_files(files: &[String], stdin: &mut dyn Read, input: &mut Input) -> anyhow::Result<()> {
    let sources = inputs::sources(files)?;
    let mut unreadable = Vec::new();
    inputs::for_each_document(&sources, stdin, |file, doc| match doc.content {
        Ok(value) => input.objects.push(Object {
            value,
            source: Some(Source {
                file: file.to_string(),
                line: doc.line,
                text: doc.text,
            }),
        }),
        Err(e) => unreadable.push(format!("{file}:{}: {}", e.line, e.message)),
    })?;
    if !unreadable.is_empty() {
        bail!("not valid YAML or JSON:\n  {}", unreadable.join("\n  "));
    }
    Ok(())
}

/// Filter, print and judge the findings.
fn report(
    args: &Args,
    findings: &[Finding],
    namespace: Option<&str>,
    suppressions: &[Suppression],
    color: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let shown: Vec<&Finding> = findings
        .iter()
        .filter(|f| namespace.is_none_or(|ns| in_scope(f, ns)))
        .filter(|f| !suppressions.iter().any(|s| s.matches(f)))
        .collect();
    let failed = shown.iter().any(|f| f.level >= args.failure_threshold);
    let printed: Vec<&Finding> = shown
        .iter()
        .copied()
        .filter(|f| f.level >= args.output_threshold)
        .collect();
    match args.output {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &printed)?;
            writeln!(out)?;
        }
        Format::Yaml => {
            let text = serde_yaml_ng::to_string(&printed).context("writing YAML")?;
            out.write_all(text.as_bytes())?;
        }
        Format::Log => {
            for f in &printed {
                writeln!(out, "{}", paint(f, color))?;
            }
            let scope = namespace.map_or("every namespace".to_string(), |ns| format!("namespace {ns}"));
            if printed.is_empty() {
                let hidden = shown.len();
                if hidden == 0 {
                    writeln!(out, "✔ No validation issues found when analyzing {scope}.")?;
                } else {
                    writeln!(
                        out,
                        "✔ No issues at or above {} when analyzing {scope} ({hidden} below it).",
                        args.output_threshold
                    )?;
                }
            } else {
                let count = |l: Level| printed.iter().filter(|f| f.level == l).count();
                writeln!(
                    out,
                    "{} {} error(s), {} warning(s), {} info when analyzing {scope}.",
                    if failed { "✘" } else { "✔" },
                    count(Level::Error),
                    count(Level::Warning),
                    count(Level::Info)
                )?;
            }
        }
    }
    Ok(if failed { EXIT_INVALID } else { EXIT_OK })
}

/// Whether a finding belongs to the report of namespace `ns`: the objects of `ns`, the Namespace
/// `ns` itself, and cluster-scoped objects other than Namespaces (the Mesh).
fn in_scope(f: &Finding, ns: &str) -> bool {
    if !f.namespace.is_empty() {
        return f.namespace == ns;
    }
    f.origin.strip_prefix("Namespace ").is_none_or(|name| name == ns)
}

/// A finding's log line, its level coloured on a terminal.
fn paint(f: &Finding, color: bool) -> String {
    let line = f.to_string();
    if !color {
        return line;
    }
    let code = match f.level {
        Level::Error => "31",
        Level::Warning => "33",
        Level::Info => "36",
    };
    let level = f.level.to_string();
    format!("\x1b[{code}m{level}\x1b[0m{}", &line[level.len()..])
}

fn list(out: &mut dyn Write) -> anyhow::Result<()> {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["CODE", "LEVEL", "NAME", "WHAT"]);
    for c in Code::ALL {
        let d = c.definition();
        table.add_row([d.id, &d.level.to_string(), d.name, d.description]);
    }
    writeln!(out, "{table}")?;
    writeln!(
        out,
        "\nmeshctl analyze --explain CODE says what a code means and how to fix it."
    )?;
    Ok(())
}

fn explain(c: Code, out: &mut dyn Write) -> anyhow::Result<()> {
    let d = c.definition();
    writeln!(
        out,
        "{} {} ({})\n\n{}\n\n{}",
        d.id, d.name, d.level, d.description, d.explanation
    )?;
    Ok(())
}

/// The live cluster's objects (every kind the operator watches, as it watches them), and the
/// operator's view of its proxies.
async fn read_cluster(cluster: &Cluster, input: &mut Input) -> anyhow::Result<Vec<Finding>> {
    for kind in InputKind::ALL {
        let selector = kind.field_selector();
        for o in cluster
            .list(&kind.api_version(), kind.kind(), None, selector.as_deref())
            .await?
        {
            input.objects.push(Object {
                value: with_type_meta(o, kind),
                source: None,
            });
        }
    }
    input.complete = InputKind::ALL.into_iter().collect();
    // Mesh-wide policies are those of the operator's namespace, as the operator compiles them.
    input.root_namespace = Some(crate::root_namespace::operator_namespace(
        input.objects.iter().map(|o| &o.value),
    ));
    // The operator's version: the default Mesh's status says what the control plane runs.
    let operator_version = input
        .objects
        .iter()
        .find(|o| {
            o.value.get("kind").and_then(Value::as_str) == Some("Mesh")
                && o.value.pointer("/metadata/name").and_then(Value::as_str) == Some(MESH_NAME)
        })
        .and_then(|o| o.value.pointer("/status/version").and_then(Value::as_str))
        .map(str::to_string);
    let Some(states) = sync_states(cluster).await? else {
        return Ok(Vec::new());
    };
    let states = against_pods(states, &input.objects);
    Ok(analysis::proxies(&states, operator_version.as_deref()))
}

/// The operator's sync states checked against the cluster's pods (`objects`): a state of a
/// pod that is gone or going is dropped (its proxy may still be subscribed while the pod
/// terminates), and a running pod with a proxy that no operator
/// replica knows gets a disconnected state (its proxy never reached the operator, or not since
/// the operator restarted), so it is reported (TRL0109) as `meshctl check` reports it.
pub fn against_pods(states: Vec<ProxySync>, objects: &[Object]) -> Vec<ProxySync> {
    let pods: BTreeMap<String, &Value> = objects
        .iter()
        .map(|o| &o.value)
        .filter(|p| p["kind"] == "Pod" && p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let meta = &p["metadata"];
            let key = format!(
                "{}/{}",
                meta["namespace"].as_str().unwrap_or_default(),
                meta["name"].as_str().unwrap_or_default()
            );
            (key, p)
        })
        .collect();
    let mut states: BTreeMap<String, ProxySync> = states
        .into_iter()
        .filter(|s| pods.contains_key(&s.proxy))
        .map(|s| (s.proxy.clone(), s))
        .collect();
    for (key, pod) in pods {
        if pod["status"]["phase"] == "Running" && crate::version::proxy_image(pod).is_some() {
            states.entry(key.clone()).or_insert_with(|| ProxySync {
                proxy: key,
                ..ProxySync::default()
            });
        }
    }
    states.into_values().collect()
}

/// Every running operator replica's own proxies (`/debug/syncz?scope=local`: without it a
/// replica adds its peers' proxies as it last polled them, up to seconds old), merged: a
/// connected state wins over a disconnected one, then the one heard from last. `None` when no
/// replica runs: the proxy checks are skipped (and stderr says so).
async fn sync_states(cluster: &Cluster) -> anyhow::Result<Option<Vec<ProxySync>>> {
    let ns = SYSTEM_NAMESPACE;
    let running = operator_admin::running_replicas(cluster).await?;
    if running.is_empty() {
        // Said on stderr, not silently dropped: the proxy checks need the operator.
        eprintln!(
            "meshctl analyze: no running trellis-operator pod in {ns}; the proxy checks (TRL0107-TRL0109) are skipped"
        );
        return Ok(None);
    }
    let (states, errors) = operator_admin::sync_states(cluster, running).await;
    if !errors.is_empty() {
        bail!(
            "could not read the operator's sync state ({}); the proxy checks (TRL0107-TRL0109) need it. Is the operator running? (meshctl check)",
            errors.join("; ")
        );
    }
    Ok(Some(states))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, proxy: bool, deleting: bool) -> Object {
        let mut containers = vec![serde_json::json!({"name": "app", "image": "shop/web:1"})];
        if proxy {
            containers.push(
                serde_json::json!({"name": "trellis-proxy", "image": "ghcr.io/trellis-mesh/trellis-proxy:0.1.0"}),
            );
        }
        let mut value = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"containers": containers}, "status": {"phase": phase}});
        if deleting {
            value["metadata"]["deletionTimestamp"] = "2026-12-05T21:00:00Z".into();
        }
        Object { value, source: None }
    }

    fn state(proxy: &str, connected: bool) -> ProxySync {
        ProxySync {
            proxy: proxy.into(),
            connected,
            sent: Some("v2".into()),
            acked: Some("v2".into()),
            ..ProxySync::default()
        }
    }

    #[test]
    fn sync_states_are_checked_against_the_pods_that_exist() {
        let pods = [
            pod("web-1", "Running", true, false),
            pod("web-2", "Running", true, false),
            pod("web-3", "Pending", true, false),
            pod("plain", "Running", false, false),
            pod("going", "Running", true, true),
        ];
        let states = vec![
            state("shop/web-1", true),
            state("shop/gone", false),
            state("shop/going", false),
        ];
        let checked = against_pods(states, &pods);
        let got: Vec<(&str, bool)> = checked.iter().map(|s| (s.proxy.as_str(), s.connected)).collect();
        // web-1 as the operator knows it; web-2 runs a proxy no replica knows: disconnected;
        // web-3 has not started, plain has no proxy; gone and going are no longer pods.
        assert_eq!(got, [("shop/web-1", true), ("shop/web-2", false)]);
        let findings = analysis::proxies(&checked, None);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].code, Code::ProxyNotSynced);
        assert_eq!(findings[0].origin, "Pod shop/web-2");
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("IST01??", "IST0102"));
        assert!(!glob("IST01??", "IST0202"));
        assert!(glob("Pod shop/legacy-*", "Pod shop/legacy-7f9"));
        assert!(!glob("Pod shop/legacy-*", "Pod shop/web"));
        assert!(glob("*shop/*", "VirtualService shop/web"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn suppressions_are_checked() {
        assert!(Suppression::parse("IST0102").is_err());
        assert!(Suppression::parse("IST9999=Namespace *").is_err());
        let s = Suppression::parse("ist0102=Namespace *").unwrap();
        assert_eq!(s.code, "IST0102");
        assert!(Suppression::parse("*=Pod shop/*").is_ok());
    }
}
