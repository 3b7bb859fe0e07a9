//! `meshctl routes SERVICE[.NAMESPACE]`: the effective routes of a service for traffic from a
//! workload — the ordered rules in force after every VirtualService is merged, compiled by
//! the one compiler as the operator compiles them for that workload's proxy, each with the
//! resource and rule it came from; the DestinationRule policy and endpoints of each
//! destination, with the mutual TLS mode and AuthorizationPolicies of their proxies; and, for
//! a concrete request (`--request`), which rule takes it and why every rule before it did not,
//! decided by the proxy's own matcher ([`explain`]). From the live cluster, from files offline
//! (`--use-kube=false`), or files laid over the cluster (what-if before `kubectl apply`).

// The report itself is computed in `trellis_core::routes`, which the operator's dashboard
// serves too.
pub use trellis_core::routes::{destinations, explain, model, request, rules, verdict};

use std::collections::BTreeMap;
use std::io::{Read, Write};

use anyhow::{Context, bail};
use clap_complete::ArgValueCompleter;
use serde_json::Value;
use trellis_core::snapshot::Snapshot;

use crate::cluster::{Cluster, ClusterArgs};
use crate::inputs;
use crate::output::{self, Format, Terminal};
use crate::{EXIT_OK, completion};
use model::{PortReport, Report};
use request::RequestSpec;
use rules::short_cluster;

/// `meshctl routes` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshctl routes payment.shop                                   # every rule in force, with its origin
  meshctl routes payment.shop --from web                        # as web's proxy sees it (sourceLabels)
  meshctl routes payment -n shop --request 'GET /pay -H x-canary:true'
                                                                # which rule takes it, why the others do not
  meshctl routes payment.shop -f new-routing.yaml               # what-if: the file laid over the cluster
  meshctl routes payment.shop --use-kube=false -f shop/         # offline, from files alone
  meshctl routes payment.shop -o json

--from names a pod (`[namespace/]pod`) or a workload (its `app` label or Deployment name);
without it, routes are compiled for a workload of the service's namespace without labels.

Exit status: 0 shown (a request no rule takes is shown as 404, not an error), 2 unknown
service or workload, bad flags or unreadable files, 3 cluster unreachable.")]
pub struct Args {
    /// The service: NAME, NAME.NAMESPACE or its FQDN.
    #[arg(value_name = "SERVICE[.NAMESPACE]", add = ArgValueCompleter::new(completion::complete_services))]
    pub service: String,
    /// The service's namespace (when SERVICE has none; default: the kubeconfig context's, or
    /// `default` offline).
    #[arg(short = 'n', long, add = ArgValueCompleter::new(completion::complete_namespaces))]
    pub namespace: Option<String>,
    /// The source: a pod (`[namespace/]pod`) or a workload (its `app` label or Deployment
    /// name), in the service's namespace unless qualified.
    #[arg(long, value_name = "WORKLOAD")]
    pub from: Option<String>,
    /// A request to explain: `METHOD PATH[?QUERY] [-H name:value]...`.
    #[arg(long, value_name = "'METHOD PATH -H name:value'")]
    pub request: Option<String>,
    /// Files or directories of objects (*.yaml, *.yml, *.json), or - for stdin; laid over the
    /// cluster's objects unless --use-kube=false. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
    /// Read the live cluster's objects (with -f: the files laid over them).
    #[arg(long = "use-kube", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub use_kube: bool,
    /// Only this port of the service.
    #[arg(long)]
    pub port: Option<u16>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Runs `meshctl routes`.
pub async fn run(
    args: &Args,
    cluster_args: &ClusterArgs,
    terminal: Terminal,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let request = args.request.as_deref().map(RequestSpec::parse).transpose()?;
    if args.files.is_empty() && !args.use_kube {
        bail!("nothing to read routes from: give -f FILE|DIR, or leave --use-kube on to read the cluster");
    }
    let mut objects = Vec::new();
    let mut default_ns = "default".to_string();
    if args.use_kube {
        let cluster = Cluster::connect(cluster_args).await?;
        default_ns = cluster.default_namespace().to_string();
        objects = cluster.objects().await?;
    }
    // Mesh-wide policies are those of the operator's namespace, as the operator compiles them.
    let root_namespace = crate::root_namespace::operator_namespace(&objects);
    read_files(&args.files, stdin, &mut objects)?;
    let mut snapshot = Snapshot::from_objects(&latest(objects))?;
    snapshot.root_namespace = root_namespace;
    let namespace = args.namespace.as_deref().unwrap_or(&default_ns);
    let svc = model::find_service(&snapshot, &args.service, namespace)?;
    let from = args
        .from
        .as_deref()
        .map(|f| model::find_workload(&snapshot, f, &svc.key.namespace).map(|w| w.key.clone()))
        .transpose()?;
    let mut report = model::report(&snapshot, svc, from.as_ref(), request.as_ref())?;
    if let Some(port) = args.port {
        let ports: Vec<String> = report.ports.iter().map(|p| p.port.to_string()).collect();
        report.ports.retain(|p| p.port == port);
        if report.ports.is_empty() {
            bail!(
                "Service {} has no port {port}; its ports: {}",
                report.service,
                ports.join(", ")
            );
        }
    }
    if request.is_some() && report.ports.iter().all(|p| p.request.is_none()) {
        eprintln!(
            "{} --request: Service {} has no HTTP port, so no rule matches requests; its TCP routes are shown",
            terminal.warn(),
            report.service
        );
    }
    match args.output {
        Format::Table => render(&report, terminal, out)?,
        format => output::write_data(out, format, &report)?,
    }
    Ok(EXIT_OK)
}

/// Every document of the files, in order; a document that is not YAML or JSON is an error.
fn read_files(files: &[String], stdin: &mut dyn Read, objects: &mut Vec<Value>) -> anyhow::Result<()> {
    let sources = inputs::sources(files)?;
    let mut unreadable = Vec::new();
    inputs::for_each_document(&sources, stdin, |file, doc| match doc.content {
        Ok(Value::Null) => {}
        Ok(value) => objects.push(value),
        Err(e) => unreadable.push(format!("{file}:{}: {}", e.line, e.message)),
    })?;
    if !unreadable.is_empty() {
        bail!("not valid YAML or JSON:\n  {}", unreadable.join("\n  "));
    }
    Ok(())
}

/// The objects with later ones replacing earlier ones of the same kind, namespace and name
/// (files over the cluster's objects), in their first position.
fn latest(objects: Vec<Value>) -> Vec<Value> {
    let key = |o: &Value| {
        let group = o
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|a| a.split_once('/'))
            .map(|(g, _)| g.to_string())
            .unwrap_or_default();
        let field = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        let namespace = o
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        (group, field("/kind"), namespace.to_string(), field("/metadata/name"))
    };
    let mut index: BTreeMap<_, usize> = BTreeMap::new();
    let mut out: Vec<Value> = Vec::with_capacity(objects.len());
    for o in objects {
        match index.get(&key(&o)) {
            Some(&i) => out[i] = o,
            None => {
                index.insert(key(&o), out.len());
                out.push(o);
            }
        }
    }
    out
}

/// The report as tables, for people.
fn render(report: &Report, terminal: Terminal, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{} from {}",
        terminal.bold(&format!("Routes of {}", report.service)),
        report.from
    )?;
    for p in &report.ports {
        render_port(p, terminal, out).with_context(|| format!("writing port {}", p.port))?;
    }
    if !report.diagnostics.is_empty() {
        writeln!(out, "\n{}", terminal.bold("The compiler noticed"))?;
        for d in &report.diagnostics {
            writeln!(out, "  {} {d}", terminal.warn())?;
        }
    }
    Ok(())
}

fn render_port(p: &PortReport, terminal: Terminal, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "\n{}", terminal.bold(&format!("Port {} ({})", p.port, p.protocol)))?;
    if let Some(why) = &p.not_held {
        writeln!(out, "  {} {why}", terminal.warn())?;
    }
    if !p.routes.is_empty() {
        let mut t = output::table(["#", "NAME", "MATCH", "ACTION", "FROM"]);
        for r in &p.routes {
            t.add_row([
                r.index.to_string(),
                r.name.clone().unwrap_or_else(|| "-".into()),
                if r.matches.is_empty() {
                    "any".to_string()
                } else {
                    r.matches.join("\nor ")
                },
                r.action.clone(),
                r.from.clone(),
            ]);
        }
        writeln!(out, "{t}")?;
    }
    if !p.tcp_routes.is_empty() {
        let mut t = output::table(["SNI", "ACTION", "FROM"]);
        for r in &p.tcp_routes {
            let sni = if r.sni_hosts.is_empty() {
                "any".to_string()
            } else {
                r.sni_hosts.join(", ")
            };
            t.add_row([sni, r.action.clone(), r.from.clone()]);
        }
        writeln!(out, "{t}")?;
    }
    if !p.destinations.is_empty() {
        let mut t = output::table(["DESTINATION", "POLICY", "ENDPOINT", "HEALTH", "MTLS", "AUTHORIZATION"]);
        for d in &p.destinations {
            let policy = match &d.destination_rule {
                Some(dr) => format!("{}\n({dr})", d.policy),
                None => format!("{}\n(no DestinationRule)", d.policy),
            };
            if d.endpoints.is_empty() {
                t.add_row([
                    short_cluster(&d.cluster),
                    policy.clone(),
                    "none".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
            }
            for (i, e) in d.endpoints.iter().enumerate() {
                let (name, policy) = if i == 0 {
                    (short_cluster(&d.cluster), policy.clone())
                } else {
                    (String::new(), String::new())
                };
                let endpoint = match &e.pod {
                    Some(pod) => format!("{} ({pod})", e.address),
                    None => e.address.clone(),
                };
                let authorization = match &e.verdict {
                    Some(v) => format!("{}\n({})", v.reason, e.authorization),
                    None => e.authorization.clone(),
                };
                t.add_row([name, policy, endpoint, e.health.clone(), e.mtls.clone(), authorization]);
            }
        }
        writeln!(out, "{t}")?;
    }
    if let Some(r) = &p.request {
        writeln!(out, "Request {}:", r.request.line())?;
        for s in &r.skipped {
            let name = p.routes.get(s.index).and_then(|r| r.name.as_deref()).unwrap_or("-");
            writeln!(out, "  {} #{} {name}: no match", terminal.fail(), s.index)?;
            for reason in &s.reasons {
                writeln!(out, "      {reason}")?;
            }
        }
        match r.matched {
            Some(i) => {
                let name = p.routes.get(i).and_then(|r| r.name.as_deref()).unwrap_or("-");
                writeln!(out, "  {} #{i} {name}: matches → {}", terminal.ok(), r.outcome)?;
            }
            None => writeln!(out, "  {} {}", terminal.fail(), r.outcome)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn later_objects_replace_earlier_ones_of_the_same_identity() {
        let vs = |name: &str, host: &str| {
            json!({"apiVersion": "networking.trellis.dev/v1alpha1", "kind": "VirtualService",
                   "metadata": {"name": name, "namespace": "shop"}, "spec": {"hosts": [host]}})
        };
        let objects = vec![vs("a", "one"), vs("b", "two"), vs("a", "three")];
        let kept = latest(objects);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0]["spec"]["hosts"][0], "three");
        assert_eq!(kept[1]["metadata"]["name"], "b");
    }

    /// The proxy-config views' shop fixture, with a Sidecar for web: db's port 7000 on an
    /// egress listener that routes it as TCP, payment on the catch-all; web itself and db's
    /// port 5432 not imported.
    fn scoped_shop() -> Snapshot {
        let sidecar = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {name: web, namespace: shop}
spec:
  workloadSelector: {labels: {app: web}}
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
  egress:
  - port: {number: 7000, protocol: TCP, name: tcp-db}
    hosts: ["./db.shop.svc.cluster.local"]
  - hosts: ["./payment.shop.svc.cluster.local"]
"#;
        let shop = include_str!("../../operator/tests/fixtures/shop.yaml");
        Snapshot::from_yaml(&format!("{shop}\n---\n{sidecar}")).unwrap()
    }

    /// What web's proxy holds for `fqdn:port`: the names of its HTTP routes, and the clusters
    /// its TCP routes send to (by the route's port match).
    fn held(config: &trellis_contract::ProxyConfig, fqdn: &str, port: u16) -> (Option<Vec<String>>, Vec<String>) {
        let outbound = config.listeners.iter().find(|l| l.name == "outbound").unwrap();
        let http = outbound
            .virtual_hosts
            .iter()
            .find(|v| v.name == format!("{fqdn}:{port}"))
            .map(|v| v.routes.iter().map(|r| r.name.clone().unwrap_or_default()).collect());
        let tcp = outbound
            .tcp_routes
            .iter()
            .filter(|r| r.destination_port == Some(port))
            .flat_map(|r| r.destinations())
            .map(|(c, _)| c.to_string())
            .filter(|c| c.ends_with(fqdn))
            .collect();
        (http, tcp)
    }

    #[test]
    fn routes_shows_what_the_proxy_holds_under_its_sidecar() {
        let snapshot = scoped_shop();
        let web = trellis_core::registry::ObjectKey::new("shop", "web-5d8f-abcde");
        let config = trellis_core::compile::compile(&snapshot, &web, trellis_core::compile::Role::Sidecar, "v7")
            .unwrap()
            .config;
        let mut seen = Vec::new();
        for svc in snapshot.registry.services.values() {
            let fqdn = svc.fqdn("cluster.local");
            let report = model::report(&snapshot, svc, Some(&web), None).unwrap();
            for p in &report.ports {
                let (http, tcp) = held(&config, &fqdn, p.port);
                let names: Vec<String> = p.routes.iter().map(|r| r.name.clone().unwrap_or_default()).collect();
                let destinations: Vec<String> = p.destinations.iter().map(|d| d.cluster.clone()).collect();
                match &p.not_held {
                    Some(why) => {
                        assert!(http.is_none() && tcp.is_empty(), "{fqdn}:{}: {why}, yet held", p.port);
                        assert!(
                            names.is_empty() && p.tcp_routes.is_empty() && destinations.is_empty(),
                            "{fqdn}:{}",
                            p.port
                        );
                        assert!(
                            why.contains("Sidecar shop/web does not import") && why.contains("REGISTRY_ONLY"),
                            "{why}"
                        );
                    }
                    None if p.protocol == "tcp" => {
                        assert!(http.is_none() && !p.tcp_routes.is_empty(), "{fqdn}:{}", p.port);
                        assert_eq!(tcp, destinations, "{fqdn}:{}", p.port);
                    }
                    None => assert_eq!(http, Some(names), "{fqdn}:{}", p.port),
                }
                seen.push(format!("{fqdn}:{} {} {}", p.port, p.protocol, p.not_held.is_some()));
            }
        }
        assert_eq!(
            seen,
            [
                "db.shop.svc.cluster.local:7000 tcp false",
                "db.shop.svc.cluster.local:5432 tcp true",
                "payment.shop.svc.cluster.local:80 http false",
                "web.shop.svc.cluster.local:8080 http true",
            ]
        );
    }
}
