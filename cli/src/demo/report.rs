//! What `meshctl demo` prints at the end: the routes in force (compiled from the cluster with
//! `trellis-core`, as the operator compiles them, each with the VirtualService rule it came
//! from), the answers by version, the identity on each hop, and every proxy's request counts
//! from its `/metrics` (read through the API server's pod proxy).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use trellis_api::mesh::SYSTEM_NAMESPACE;
use trellis_contract::ListenerDirection;
use trellis_core::compile::{Role, compile};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;
use trellis_manifests::demo;
use trellis_manifests::sidecar::STATS_PORT;

use crate::cluster::Cluster;
use crate::config_text::{describe_action, describe_match, describe_provenance};
use crate::output::table;

/// What the demo found.
#[derive(Debug, Default)]
pub struct Report {
    /// `http://address:port` of the gateway.
    pub gateway: String,
    /// Proxy → host, match, destination, origin.
    pub routes: Vec<[String; 4]>,
    /// Answers by who answered.
    pub versions: BTreeMap<String, usize>,
    /// Answers to `x-canary: true` by who answered.
    pub canary_versions: BTreeMap<String, usize>,
    /// Requests sent.
    pub sent: usize,
    /// Service, pod, verified peer, own identity.
    pub hops: Vec<[String; 4]>,
    /// Pod, inbound counts, outbound counts.
    pub metrics: Vec<[String; 3]>,
}

/// The proxies the report describes: (what, namespace, app label, role, the host whose routes
/// are shown).
fn proxies() -> [(&'static str, &'static str, &'static str, Role, Option<&'static str>); 2] {
    [
        ("gateway", SYSTEM_NAMESPACE, demo::GATEWAY, Role::Gateway, None),
        (
            "web",
            demo::NAMESPACE,
            "web",
            Role::Sidecar,
            Some("payment.shop.svc.cluster.local"),
        ),
    ]
}

/// The first running pod of `app` in `ns`.
async fn first_pod(cluster: &Cluster, ns: &str, app: &str) -> anyhow::Result<String> {
    pods(cluster, ns, app)
        .await?
        .into_iter()
        .next()
        .with_context(|| format!("no pod with app={app} in namespace {ns}"))
}

/// The names of the pods of `app` in `ns` that are not being deleted.
pub async fn pods(cluster: &Cluster, ns: &str, app: &str) -> anyhow::Result<Vec<String>> {
    let pods = cluster.list("v1", "Pod", Some(&format!("app={app}")), None).await?;
    Ok(pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["metadata"]["namespace"] == ns)
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

/// The routes in force at the gateway and at web (to payment), compiled from `snapshot`.
pub async fn routes_in_force(cluster: &Cluster, snapshot: &Snapshot) -> anyhow::Result<Vec<[String; 4]>> {
    let mut rows = Vec::new();
    for (proxy, ns, app, role, host) in proxies() {
        let pod = first_pod(cluster, ns, app).await?;
        let compiled = compile(snapshot, &ObjectKey::new(ns, &pod), role, "demo")
            .with_context(|| format!("compiling the configuration of {proxy} ({ns}/{pod})"))?;
        for listener in &compiled.config.listeners {
            if role == Role::Sidecar && listener.direction != ListenerDirection::Outbound {
                continue;
            }
            for vh in &listener.virtual_hosts {
                if let Some(h) = host
                    && !vh.domains.iter().any(|d| d.split(':').next() == Some(h))
                {
                    continue;
                }
                for route in &vh.routes {
                    rows.push([
                        format!("{proxy} → {}", vh.domains.first().cloned().unwrap_or_default()),
                        describe_match(route),
                        describe_action(route),
                        describe_provenance(&route.provenance),
                    ]);
                }
            }
        }
    }
    Ok(rows)
}

/// `istio_requests_total` of a proxy's `/metrics`, summed by response code: (inbound, as the
/// destination's reporter; outbound).
pub fn request_counts(metrics: &str) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let (mut inbound, mut outbound) = (BTreeMap::new(), BTreeMap::new());
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("istio_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(&format!("{key}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let side = if label("reporter") == "destination" {
            &mut inbound
        } else {
            &mut outbound
        };
        *side.entry(label("response_code")).or_insert(0.0) += value;
    }
    (inbound, outbound)
}

/// Every shop proxy's request counts (gateway, web, payment, db).
pub async fn metrics_summary(cluster: &Cluster) -> anyhow::Result<Vec<[String; 3]>> {
    let mut rows = Vec::new();
    let apps = [
        (SYSTEM_NAMESPACE, demo::GATEWAY),
        (demo::NAMESPACE, "web"),
        (demo::NAMESPACE, "payment"),
        (demo::NAMESPACE, "db"),
    ];
    for (ns, app) in apps {
        for pod in pods(cluster, ns, app).await? {
            let text = cluster
                .get_text(&format!(
                    "/api/v1/namespaces/{ns}/pods/{pod}:{STATS_PORT}/proxy/metrics"
                ))
                .await?;
            let (inbound, outbound) = request_counts(&text);
            let fmt = |m: &BTreeMap<String, f64>| {
                if m.is_empty() {
                    "-".to_string()
                } else {
                    m.iter()
                        .map(|(c, n)| format!("{c} × {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            rows.push([pod, fmt(&inbound), fmt(&outbound)]);
        }
    }
    Ok(rows)
}

impl Report {
    /// The report, for people.
    pub fn print(&self, out: &mut dyn Write, kubeconfig: &Path) -> anyhow::Result<()> {
        writeln!(out, "\nThe shop is meshed and serving at {}/api\n", self.gateway)?;
        writeln!(out, "Routes in force")?;
        let mut routes = table(["Proxy → host", "Match", "Destination", "From"]);
        for r in &self.routes {
            routes.add_row(r.iter());
        }
        writeln!(out, "{routes}\n")?;

        writeln!(out, "Answers by version ({} requests; the split is 90/10)", self.sent)?;
        let mut versions = table(["Answered by", "Requests", "Share"]);
        for (v, n) in &self.versions {
            versions.add_row([
                v.clone(),
                n.to_string(),
                format!("{:.1} %", 100.0 * *n as f64 / self.sent.max(1) as f64),
            ]);
        }
        writeln!(out, "{versions}")?;
        let canary: Vec<String> = self.canary_versions.iter().map(|(v, n)| format!("{v} × {n}")).collect();
        writeln!(out, "With x-canary: true: {}\n", canary.join(", "))?;

        writeln!(out, "Identities on each hop (mutual TLS, from x-forwarded-client-cert)")?;
        let mut hops = table(["Service", "Pod", "Caller (verified peer)", "Own identity"]);
        for h in &self.hops {
            hops.add_row(h.iter());
        }
        writeln!(out, "{hops}\n")?;

        writeln!(
            out,
            "Requests counted by each proxy (istio_requests_total by response code)"
        )?;
        let mut metrics = table(["Proxy (pod)", "Inbound", "Outbound"]);
        for m in &self.metrics {
            metrics.add_row(m.iter());
        }
        writeln!(out, "{metrics}\n")?;
        writeln!(
            out,
            "Point kubectl at the cluster:\n  export KUBECONFIG={}",
            kubeconfig.display()
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counts_split_inbound_from_outbound_by_reporter() {
        let text = "# HELP istio_requests_total Requests.\n\
            istio_requests_total{reporter=\"destination\",response_code=\"200\",source_workload=\"web\"} 7\n\
            istio_requests_total{reporter=\"destination\",response_code=\"200\",source_workload=\"gw\"} 3\n\
            istio_requests_total{reporter=\"source\",response_code=\"503\"} 1\n\
            trellis_request_duration_seconds_bucket{le=\"1\"} 9\n";
        let (inbound, outbound) = request_counts(text);
        assert_eq!(inbound, BTreeMap::from([("200".to_string(), 10.0)]));
        assert_eq!(outbound, BTreeMap::from([("503".to_string(), 1.0)]));
    }
}
