//! What the operator's web dashboard draws, shaped from the mesh-wide traffic view, the
//! proxies' sync state and the routes report: pure functions of plain data, so the JSON the
//! page reads is tested here and the operator only gathers and serves it.
//!
//! - [`Graph`]: the live service graph — nodes are workloads (and the clients outside the
//!   mesh), edges carry requests per second, success rate, p50/p99 latency and mTLS share, each
//!   node and edge with a [`Health`]; nodes carry their depth in the call chain, the column the
//!   page draws them in.
//! - [`ServicePage`]: one service's golden signals slot by slot, the edges into it, and the
//!   routes in force with their provenance ([`crate::routes::model::Report`], what `meshctl
//!   routes` prints).
//! - [`Proxies`]: every proxy's sync state and version against the operator's, with the
//!   findings `meshctl analyze` gives for them ([`crate::analysis::proxies`]).
//!
//! # Guarantees
//! - Deterministic: the same view gives the same JSON (nodes and edges sorted, depths by a
//!   breadth-first walk from the nodes nothing calls).
//! - No secrets: workload and service names, counts and versions only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;

use crate::analysis::{ProxySync, proxies};
use crate::routes::model::Report;
use crate::traffic::{Series, Stat, View, WorkloadRef};

/// The node of the clients outside the mesh (a gateway's requests from outside).
pub const OUTSIDE: &str = "outside";
/// At or above this success rate, traffic is healthy.
// why: Linkerd viz and Kiali colour below 99 % (Kiali's default "degraded" threshold) and
// below 95 % (failing); the same figures here so the colours read the same.
pub const HEALTHY_SUCCESS: f64 = 0.99;
/// Below [`HEALTHY_SUCCESS`] and at or above this, degraded; below, failing.
pub const DEGRADED_SUCCESS: f64 = 0.95;

/// How a node's or edge's traffic is doing, by its success rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Health {
    /// At least [`HEALTHY_SUCCESS`] of requests succeeded.
    Healthy,
    /// At least [`DEGRADED_SUCCESS`].
    Degraded,
    /// Fewer.
    Failing,
    /// No requests in the window.
    Idle,
}

impl Health {
    /// The health of `stat`.
    pub fn of(stat: &Stat) -> Health {
        match stat.success_rate {
            None => Health::Idle,
            Some(r) if r >= HEALTHY_SUCCESS => Health::Healthy,
            Some(r) if r >= DEGRADED_SUCCESS => Health::Degraded,
            Some(_) => Health::Failing,
        }
    }
}

/// The service graph of one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    /// The window's length, in seconds.
    pub window_seconds: u64,
    /// The workloads, sorted by depth then id.
    pub nodes: Vec<Node>,
    /// The edges, sorted by source, destination and service.
    pub edges: Vec<GraphEdge>,
    /// Edges the view left out (the quietest).
    pub truncated: usize,
    /// Operator replicas that did not answer: their proxies' traffic is missing.
    pub missing_replicas: Vec<String>,
}

/// A workload of the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `namespace/name`, or [`OUTSIDE`].
    pub id: String,
    /// Namespace (empty outside the mesh).
    pub namespace: String,
    /// Workload name.
    pub name: String,
    /// Calls from the nodes nothing calls to this one (its column).
    pub depth: usize,
    /// What it served in the window.
    pub served: Stat,
    /// The health of what it served.
    pub health: Health,
}

/// An edge of the graph: requests from one workload to another through a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphEdge {
    /// The client node's id.
    pub source: String,
    /// The serving node's id.
    pub destination: String,
    /// The service's FQDN (empty: a gateway's requests from outside).
    pub service: String,
    /// Requests per second, success rate, latency, mTLS share.
    #[serde(flatten)]
    pub stat: Stat,
    /// The health of the edge.
    pub health: Health,
}

fn node_id(w: &WorkloadRef) -> String {
    if w.namespace.is_empty() && w.name.is_empty() {
        OUTSIDE.to_string()
    } else {
        w.to_string()
    }
}

impl Graph {
    /// The graph of `view`; `missing_replicas` names the replicas whose traffic is not in it.
    pub fn of(view: &View, missing_replicas: Vec<String>) -> Graph {
        let edges: Vec<GraphEdge> = view
            .edge_rows()
            .into_iter()
            .map(|e| GraphEdge {
                source: node_id(&e.source),
                destination: node_id(&e.destination),
                service: e.service,
                health: Health::of(&e.stat),
                stat: e.stat,
            })
            .collect();
        let mut workloads: BTreeMap<String, WorkloadRef> = BTreeMap::new();
        for e in &view.edges {
            workloads.insert(node_id(&e.source), e.source.clone());
            workloads.insert(node_id(&e.destination), e.destination.clone());
        }
        let served: BTreeMap<String, Stat> = view
            .workloads()
            .into_iter()
            .map(|r| (node_id(&WorkloadRef::new(r.namespace, r.name)), r.stat))
            .collect();
        let depths = depths(workloads.keys(), &edges);
        let mut nodes: Vec<Node> = workloads
            .into_iter()
            .map(|(id, w)| {
                let served = served.get(&id).cloned().unwrap_or_default();
                Node {
                    depth: depths.get(&id).copied().unwrap_or(0),
                    namespace: w.namespace,
                    name: if id == OUTSIDE { OUTSIDE.to_string() } else { w.name },
                    health: Health::of(&served),
                    served,
                    id,
                }
            })
            .collect();
        nodes.sort_by(|a, b| (a.depth, &a.id).cmp(&(b.depth, &b.id)));
        Graph {
            window_seconds: view.window_seconds,
            nodes,
            edges,
            truncated: view.truncated,
            missing_replicas,
        }
    }
}

/// Each node's depth: breadth-first from the nodes no edge enters (or, for a cycle nothing
/// enters from outside, from its first node by id).
fn depths<'a>(ids: impl Iterator<Item = &'a String>, edges: &[GraphEdge]) -> BTreeMap<String, usize> {
    let ids: BTreeSet<&String> = ids.collect();
    let entered: BTreeSet<&String> = edges
        .iter()
        .filter(|e| e.source != e.destination)
        .map(|e| &e.destination)
        .collect();
    let mut depth: BTreeMap<String, usize> = BTreeMap::new();
    let mut queue: VecDeque<&String> = VecDeque::new();
    let roots: Vec<&String> = ids.iter().copied().filter(|id| !entered.contains(id)).collect();
    for r in roots {
        depth.insert(r.clone(), 0);
        queue.push_back(r);
    }
    loop {
        while let Some(id) = queue.pop_front() {
            let d = depth[id];
            for e in edges.iter().filter(|e| &e.source == id) {
                if !depth.contains_key(&e.destination) {
                    depth.insert(e.destination.clone(), d + 1);
                    queue.push_back(&e.destination);
                }
            }
        }
        // A cycle no root reaches: start it at its first node.
        match ids.iter().find(|id| !depth.contains_key(id.as_str())) {
            Some(id) => {
                depth.insert((*id).clone(), 0);
                queue.push_back(id);
            }
            None => return depth,
        }
    }
}

/// One service's page.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePage {
    /// The service, `name.namespace`.
    pub service: String,
    /// The length of a point, in seconds.
    pub slot_seconds: u64,
    /// Its golden signals slot by slot, oldest first.
    pub series: Vec<SeriesPoint>,
    /// The edges into it over the whole series.
    pub edges: Vec<GraphEdge>,
    /// The routes in force for it, with provenance, as `meshctl routes` computes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Report>,
    /// Why there are no routes (the service is not in the registry, the compiler refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes_error: Option<String>,
    /// Operator replicas that did not answer.
    pub missing_replicas: Vec<String>,
}

/// One slot's golden signals.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    /// When the slot starts (seconds since the epoch).
    pub start_unix: u64,
    /// Its figures.
    #[serde(flatten)]
    pub stat: Stat,
}

impl ServicePage {
    /// The page of `service` (`name.namespace`) from its merged `series` and its routes.
    pub fn of(
        service: String,
        series: &Series,
        routes: Result<Report, String>,
        missing_replicas: Vec<String>,
    ) -> ServicePage {
        let window = series.slot_seconds * series.points.len() as u64;
        let view = View::merge([View {
            window_seconds: window,
            edges: series.points.iter().flat_map(|p| p.edges.clone()).collect(),
            truncated: 0,
        }])
        .unwrap_or_default();
        let (routes, routes_error) = match routes {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        ServicePage {
            service,
            slot_seconds: series.slot_seconds,
            series: series
                .stats()
                .into_iter()
                .map(|(start_unix, stat)| SeriesPoint { start_unix, stat })
                .collect(),
            edges: Graph::of(&view, Vec::new()).edges,
            routes,
            routes_error,
            missing_replicas,
        }
    }
}

/// The proxies' sync state and version skew.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proxies {
    /// The operator's version.
    pub operator_version: String,
    /// Proxies per version.
    pub versions: BTreeMap<String, usize>,
    /// Every proxy, sorted.
    pub proxies: Vec<ProxyRow>,
    /// What `meshctl analyze` says about them (rejected configurations, proxies behind or
    /// not connected, version skew), one line each.
    pub findings: Vec<String>,
}

/// One proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRow {
    /// `namespace/pod`.
    pub proxy: String,
    /// `sidecar` or `gateway`.
    pub role: String,
    /// `synced`, `pending` (sent, not yet acknowledged), `rejected` (NACKed the latest
    /// version) or `disconnected`.
    pub sync: String,
    /// The last version sent.
    pub sent: Option<String>,
    /// The last version applied.
    pub acked: Option<String>,
    /// The proxy's build version.
    pub version: String,
    /// Whether it differs from the operator's.
    pub skew: bool,
}

impl Proxies {
    /// The proxies of `states` against the operator's `operator_version`.
    pub fn of(states: &[ProxySync], operator_version: &str) -> Proxies {
        let mut rows: Vec<ProxyRow> = states
            .iter()
            .map(|s| {
                let rejected = s
                    .nacked
                    .as_ref()
                    .is_some_and(|n| s.sent.as_deref() == Some(&n.version) && s.acked.as_deref() != Some(&n.version));
                let sync = if rejected {
                    "rejected"
                } else if !s.connected {
                    "disconnected"
                } else if s.sent.is_some() && s.sent != s.acked {
                    "pending"
                } else {
                    "synced"
                };
                ProxyRow {
                    proxy: s.proxy.clone(),
                    role: s.role.clone(),
                    sync: sync.to_string(),
                    sent: s.sent.clone(),
                    acked: s.acked.clone(),
                    version: s.proxy_version.clone(),
                    skew: !s.proxy_version.is_empty() && s.proxy_version != operator_version,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.proxy.cmp(&b.proxy));
        let mut versions = BTreeMap::new();
        for r in &rows {
            *versions.entry(r.version.clone()).or_default() += 1;
        }
        Proxies {
            operator_version: operator_version.to_string(),
            versions,
            proxies: rows,
            findings: proxies(states, Some(operator_version))
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "dashboard/tests.rs"]
mod tests;
