//! `meshctl proxy-config {routes|clusters|endpoints|listeners|secret|log|all} POD[.NAMESPACE]`:
//! what a live proxy runs, read from its admin API ([`admin`]: `/config_dump`, `/logging`),
//! as tables with istioctl's columns plus where each route came from ([`views`]); `-f
//! config_dump.json` reads a saved dump offline ([`dump`]). `secret` shows the certificate's identity,
//! serial, validity and issuer, never key material (the proxy never puts any in its dump).

pub mod admin;
pub mod dump;
pub mod views;

use std::io::Write;
use std::path::PathBuf;

use clap_complete::ArgValueCompleter;
use serde::Serialize;
use trellis_api::mesh::SYSTEM_NAMESPACE;

use crate::cluster::{Cluster, ClusterArgs};
use crate::output::{self, Terminal};
use crate::{EXIT_OK, completion};
use admin::ProxyPod;
use dump::{Dump, Filter};

/// What to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// HTTP routes by listener and virtual host, in the order they are tried, with their origin.
    Routes,
    /// Upstream clusters (service, port, subset, direction, load balancing, TLS) and the
    /// DestinationRule each came from.
    Clusters,
    /// Each cluster's endpoints with their health and outlier state.
    Endpoints,
    /// Listeners (address, direction, protocol, TLS).
    Listeners,
    /// The workload certificate: SPIFFE identity, serial, validity, issuer (never keys).
    Secret,
    /// The proxy's log level (`--level` sets it).
    Log,
    /// Listeners, routes, clusters, endpoints and the certificate; with -o json the raw dump,
    /// which `-f` reads back.
    All,
}

/// How to print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ViewFormat {
    /// Tables.
    #[default]
    Table,
    /// One line per entry, its name only.
    Short,
    /// JSON (with `all`: the proxy's whole dump).
    Json,
    /// YAML.
    Yaml,
}

/// `meshctl proxy-config` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshctl proxy-config routes web-5d9f8.shop                  # the routes web's proxy runs, with their origin
  meshctl proxy-config clusters web-5d9f8 -n shop --fqdn payment.shop.svc.cluster.local
  meshctl proxy-config endpoints web-5d9f8.shop --subset v2
  meshctl proxy-config secret trellis-ingressgateway-7c4b.trellis-system
  meshctl proxy-config log web-5d9f8.shop --level debug       # set; without --level: read
  meshctl proxy-config all web-5d9f8.shop -o json > dump.json
  meshctl proxy-config routes -f dump.json --direction outbound   # offline

The proxy's admin API listens on localhost:15000 in the pod; meshctl reaches it through the
API server's port-forward (you need `create pods/portforward`), as istioctl does.

Exit status: 0 shown, 2 unknown pod, pod without a proxy, bad flags or an unreadable dump,
3 cluster unreachable or the proxy not answering.")]
pub struct Args {
    /// What to show.
    pub view: View,
    /// The pod: NAME, NAME.NAMESPACE, or -n NAMESPACE.
    #[arg(
        value_name = "POD[.NAMESPACE]",
        required_unless_present = "file",
        add = ArgValueCompleter::new(completion::complete_pods)
    )]
    pub pod: Option<String>,
    /// The pod's namespace (when POD has none; default: the kubeconfig context's).
    #[arg(short = 'n', long, add = ArgValueCompleter::new(completion::complete_namespaces))]
    pub namespace: Option<String>,
    /// Read a saved /config_dump instead of a live proxy.
    #[arg(short = 'f', long = "file", value_name = "config_dump.json", conflicts_with = "pod")]
    pub file: Option<PathBuf>,
    /// With `log`: set the proxy's log filter (e.g. debug, info,trellis_proxy=trace).
    #[arg(long)]
    pub level: Option<String>,
    #[command(flatten)]
    pub filter: Filter,
    /// Output: table, short, json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: ViewFormat,
}

/// `NAME[.NAMESPACE]` with `-n` and the default namespace → (namespace, name). The namespace is
/// after the last dot, as istioctl reads it.
pub fn pod_and_namespace(pod: &str, namespace: Option<&str>, default: &str) -> (String, String) {
    match (pod.rsplit_once('.'), namespace) {
        (Some((name, ns)), _) if !ns.is_empty() && !name.is_empty() => (ns.to_string(), name.to_string()),
        (_, Some(ns)) => (ns.to_string(), pod.to_string()),
        _ => (default.to_string(), pod.to_string()),
    }
}

/// A log filter as a query value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `rows` in `format`: a table of `header` and each row's `cells`, or (short) the cell at
/// `name_at`, the one that names the entry.
fn print_rows<T: Serialize>(
    out: &mut dyn Write,
    format: ViewFormat,
    header: &[&str],
    name_at: usize,
    rows: &[T],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        ViewFormat::Json => output::write_data(out, output::Format::Json, rows),
        ViewFormat::Yaml => output::write_data(out, output::Format::Yaml, rows),
        ViewFormat::Short => {
            for r in rows {
                writeln!(out, "{}", cells(r).get(name_at).cloned().unwrap_or_default())?;
            }
            Ok(())
        }
        ViewFormat::Table => {
            let mut t = output::table(header.iter().copied());
            for r in rows {
                t.add_row(cells(r));
            }
            writeln!(out, "{t}")?;
            Ok(())
        }
    }
}

/// Print `view` of `dump`, filtered.
pub fn show(dump: &Dump, view: View, filter: &Filter, format: ViewFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    let one = |v: View, out: &mut dyn Write| -> anyhow::Result<()> {
        match v {
            View::Listeners => print_rows(
                out,
                format,
                &["NAME", "ADDRESS", "DIRECTION", "PROTOCOL", "TLS", "DESTINATION", "FROM"],
                0,
                &views::listeners(dump, filter),
                |r| {
                    vec![
                        r.name.clone(),
                        r.address.clone(),
                        r.direction.into(),
                        r.protocol.clone(),
                        r.tls.clone(),
                        r.destination.clone(),
                        r.from.clone(),
                    ]
                },
            ),
            View::Routes => print_rows(
                out,
                format,
                &["NAME", "VIRTUAL HOST", "DOMAINS", "MATCH", "DESTINATION", "FROM"],
                0,
                &views::routes(dump, filter),
                |r| {
                    vec![
                        if r.name.is_empty() { "-".into() } else { r.name.clone() },
                        r.virtual_host.clone(),
                        r.domains.join(", "),
                        r.matches.clone(),
                        r.destination.clone(),
                        r.from.clone(),
                    ]
                },
            ),
            View::Clusters => print_rows(
                out,
                format,
                &[
                    "SERVICE FQDN",
                    "PORT",
                    "SUBSET",
                    "DIRECTION",
                    "LB",
                    "TLS",
                    "ENDPOINTS",
                    "NAME",
                    "FROM",
                ],
                7,
                &views::clusters(dump, filter),
                |r| {
                    vec![
                        r.fqdn.clone(),
                        r.port.map_or("-".into(), |p| p.to_string()),
                        if r.subset.is_empty() {
                            "-".into()
                        } else {
                            r.subset.clone()
                        },
                        r.direction.clone(),
                        r.load_balancer.clone(),
                        r.tls.clone(),
                        r.endpoints.to_string(),
                        r.name.clone(),
                        r.from.clone(),
                    ]
                },
            ),
            View::Endpoints => print_rows(
                out,
                format,
                &["ENDPOINT", "STATUS", "OUTLIER CHECK", "IDENTITY", "CLUSTER"],
                0,
                &views::endpoints(dump, filter),
                |r| {
                    vec![
                        r.endpoint.clone(),
                        r.status.clone(),
                        r.outlier_check.clone(),
                        r.identity.clone(),
                        r.cluster.clone(),
                    ]
                },
            ),
            View::Secret => print_rows(
                out,
                format,
                &[
                    "IDENTITY",
                    "CERTIFICATE",
                    "SERIAL NUMBER",
                    "NOT BEFORE",
                    "NOT AFTER",
                    "ISSUER",
                ],
                2,
                &views::secrets(dump),
                |r| {
                    vec![
                        r.identity.clone(),
                        r.certificate.clone(),
                        r.serial.clone(),
                        r.not_before.clone(),
                        r.not_after.clone(),
                        r.issuer.clone(),
                    ]
                },
            ),
            View::Log | View::All => Ok(()),
        }
    };
    if view != View::All {
        return one(view, out);
    }
    match format {
        ViewFormat::Json => output::write_data(out, output::Format::Json, &dump.raw),
        ViewFormat::Yaml => output::write_data(out, output::Format::Yaml, &dump.raw),
        _ => {
            for v in [
                View::Listeners,
                View::Routes,
                View::Clusters,
                View::Endpoints,
                View::Secret,
            ] {
                if format == ViewFormat::Table {
                    writeln!(out, "{v:?}")?;
                }
                one(v, out)?;
            }
            Ok(())
        }
    }
}

/// Runs `meshctl proxy-config`.
pub async fn run(
    args: &Args,
    cluster_args: &ClusterArgs,
    terminal: Terminal,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    if let Some(file) = &args.file {
        anyhow::ensure!(
            args.view != View::Log,
            "`log` reads and sets a live proxy's log level: give a POD, not -f"
        );
        let text = std::fs::read_to_string(file).map_err(|e| dump::DumpError::NotJson {
            source_name: file.display().to_string(),
            message: e.to_string(),
        })?;
        let dump = Dump::parse(&text, &file.display().to_string())?;
        warn_rejected(&dump, &file.display().to_string(), terminal);
        show(&dump, args.view, &args.filter, args.output, out)?;
        return Ok(EXIT_OK);
    }
    let pod = args.pod.as_deref().unwrap_or_default();
    let cluster = Cluster::connect(cluster_args).await?;
    let (namespace, name) = pod_and_namespace(pod, args.namespace.as_deref(), cluster.default_namespace());
    let proxy = ProxyPod::find(&cluster, &namespace, &name).await?;
    if args.view == View::Log {
        let level = match &args.level {
            Some(level) => {
                proxy
                    .request(http::Method::POST, &format!("/logging?level={}", percent_encode(level)))
                    .await?
            }
            None => proxy.request(http::Method::GET, "/logging").await?,
        };
        writeln!(out, "{}", level.trim())?;
        return Ok(EXIT_OK);
    }
    anyhow::ensure!(args.level.is_none(), "--level is for `log` only");
    let text = proxy.request(http::Method::GET, "/config_dump").await?;
    let dump = Dump::parse(&text, &format!("the /config_dump of pod {namespace}/{name}"))?;
    warn_rejected(&dump, &format!("pod {namespace}/{name}"), terminal);
    if dump.config.listeners.is_empty() && dump.raw["ready"] == false {
        eprintln!(
            "{} the proxy of pod {namespace}/{name} has no configuration yet: it waits for the operator \
             (`meshctl check` shows whether it is connected; the operator runs in {SYSTEM_NAMESPACE})",
            terminal.warn()
        );
    }
    show(&dump, args.view, &args.filter, args.output, out)?;
    Ok(EXIT_OK)
}

/// A NACKed configuration, said on stderr: what runs is the previous version.
fn warn_rejected(dump: &Dump, what: &str, terminal: Terminal) {
    if let Some((version, error)) = dump.rejected() {
        eprintln!(
            "{} {what} rejected configuration version {version}: {error}; it keeps running version {} (shown). \
             `meshctl analyze` finds the object at fault.",
            terminal.warn(),
            dump.config.version
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use dump::fixtures::{PAYMENT, only, web_dump};

    #[test]
    fn pods_are_named_as_istioctl_names_them() {
        assert_eq!(
            pod_and_namespace("web-1.shop", None, "default"),
            ("shop".into(), "web-1".into())
        );
        assert_eq!(
            pod_and_namespace("web-1", Some("shop"), "default"),
            ("shop".into(), "web-1".into())
        );
        assert_eq!(
            pod_and_namespace("web-1", None, "team"),
            ("team".into(), "web-1".into())
        );
        assert_eq!(
            percent_encode("info,trellis_proxy=debug"),
            "info%2Ctrellis_proxy%3Ddebug"
        );
    }

    #[test]
    fn shown_as_tables_names_and_a_dump_that_reads_back() {
        let dump = web_dump(Value::Null);
        let text = |view, format| {
            let mut out = Vec::new();
            show(&dump, view, &only(|f| f.subset = Some("v2".into())), format, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            text(View::Clusters, ViewFormat::Short),
            format!("outbound|80|v2|{PAYMENT}\n")
        );
        let mut names = Vec::new();
        show(
            &dump,
            View::Routes,
            &only(|f| f.fqdn = Some(PAYMENT.into())),
            ViewFormat::Short,
            &mut names,
        )
        .unwrap();
        assert_eq!(String::from_utf8(names).unwrap(), "canary\nsplit\n");
        let table = text(View::Endpoints, ViewFormat::Table);
        assert!(table.contains("OUTLIER CHECK") && table.contains("EJECTED"), "{table}");
        let json: Value = serde_json::from_str(&text(View::Endpoints, ViewFormat::Json)).unwrap();
        assert_eq!(json[0]["outlier_check"], "EJECTED");
        // `all -o json` is the whole dump, which `-f` reads back.
        let saved = text(View::All, ViewFormat::Json);
        let again = Dump::parse(&saved, "saved").unwrap();
        assert_eq!(again.config, dump.config);
        assert_eq!(
            views::routes(&again, &Filter::default()).len(),
            views::routes(&dump, &Filter::default()).len()
        );
    }
}
