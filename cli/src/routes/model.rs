//! What `meshctl routes` reports, computed from a [`Snapshot`] by the one compiler: for each
//! port of a service, the rules a proxy would run for it (its outbound part, compiled for the
//! `--from` workload, or for any workload of the service's namespace), each with the resource
//! and rule it came from; each destination's cluster with the DestinationRule whose policy it
//! got, its endpoints and the inbound policy (mutual TLS mode, AuthorizationPolicies) of their
//! proxies, and their authorization verdict on the request (or connection) from the source
//! ([`verdict`], by the proxy's own evaluator); and, for a concrete request, the rule that
//! takes it and why every rule before it did not — decided by the proxy's own matcher
//! ([`trellis_contract::matching`]).

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use trellis_contract::authorization::Authorizer;
use trellis_contract::matching::{self, CompiledRouteMatch, Headers, Mismatch, Request};
use trellis_contract::{
    AuthzAction, Cluster, HealthStatus, LbPolicy, MtlsMode, Route, RouteAction, RouteMatch, StringMatch, TcpRoute,
    UpstreamTls, VirtualHost,
};
use trellis_core::compile::{self, ClusterRef, DNS_DOMAIN, OutboundParts, Role};
use trellis_core::registry::{ObjectKey, Protocol, Service, Workload};
use trellis_core::snapshot::Snapshot;

use super::request::RequestSpec;
use super::verdict::{self, Attempt, Sender, Verdict};

/// The name of the stand-in proxy when no `--from` workload is given.
const ANY_WORKLOAD: &str = "meshctl-routes";

/// Everything `meshctl routes` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The service, `name.namespace`.
    pub service: String,
    /// The proxy the routes were compiled for (`namespace/pod`, or any workload of a namespace).
    pub from: String,
    /// One entry per port of the service.
    pub ports: Vec<PortReport>,
    /// What the compiler noticed while compiling these routes (dropped rules, missing subsets).
    pub diagnostics: Vec<String>,
}

/// The routes of one port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortReport {
    /// The port.
    pub port: u16,
    /// `http`, `http2`, `tcp`, `tls` or `auto` (sniffed: HTTP rules and a TCP route).
    pub protocol: String,
    /// The HTTP rules in force, in the order the proxy tries them.
    pub routes: Vec<RouteReport>,
    /// The TCP (and TLS by SNI) routes, for non-HTTP ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_routes: Vec<TcpRouteReport>,
    /// The destinations the routes send to.
    pub destinations: Vec<Destination>,
    /// The request explained, when one was given (ports with HTTP rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestReport>,
}

/// One HTTP rule in force.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteReport {
    /// Position in the merged list.
    pub index: usize,
    /// The rule's name, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where it came from: `VirtualService ns/name http[N]`, or `Service ns/name (default)`.
    pub from: String,
    /// Its match conditions, one line per alternative; empty: every request.
    pub matches: Vec<String>,
    /// What it does.
    pub action: String,
    /// The route as compiled.
    #[serde(skip)]
    pub route: Route,
}

/// One TCP route in force.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouteReport {
    /// Where it came from.
    pub from: String,
    /// The TLS server names it takes (empty: any connection).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    /// Where it sends connections, with their shares.
    pub action: String,
}

/// A destination: its cluster, policy and endpoints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Cluster name (`outbound|port|subset|host`).
    pub cluster: String,
    /// The DestinationRule whose policy applies, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<String>,
    /// Load balancing, TLS, connect timeout and outlier detection, as the proxy applies them.
    pub policy: String,
    /// Endpoints.
    pub endpoints: Vec<EndpointReport>,
}

/// One endpoint, and what its proxy enforces on the port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointReport {
    /// `ip:port`.
    pub address: String,
    /// `healthy` or `unhealthy` (not ready).
    pub health: String,
    /// The SPIFFE identity the client expects (none: plaintext, no proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The pod, `namespace/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The mutual TLS mode its proxy enforces on the port.
    pub mtls: String,
    /// Its authorization: the AuthorizationPolicies that select it, or that none does.
    pub authorization: String,
    /// What its proxy decides for the source's request (`--request`) or, on a TCP port, its
    /// connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// How a request goes: the rule that takes it and why each earlier rule did not.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestReport {
    /// The request.
    pub request: RequestSpec,
    /// The rules tried before the matching one, each with why it did not match.
    pub skipped: Vec<Skipped>,
    /// The index of the rule that matches (none: the proxy answers 404).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<usize>,
    /// What happens: the action of the matching rule, or 404.
    pub outcome: String,
    /// The clusters it may go to, with their weights.
    pub clusters: Vec<WeightedCluster>,
}

/// A cluster and its share of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedCluster {
    /// Cluster name.
    pub cluster: String,
    /// Percent of requests.
    pub weight: u32,
}

/// A rule a request did not match.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// The rule's index.
    pub index: usize,
    /// Why, one reason per alternative match.
    pub reasons: Vec<String>,
}

/// Find the service `name[.namespace]` (or its FQDN), in `default_ns` when not qualified.
pub fn find_service<'a>(snapshot: &'a Snapshot, target: &str, default_ns: &str) -> anyhow::Result<&'a Service> {
    let target = target
        .strip_suffix(&format!(".svc.{DNS_DOMAIN}"))
        .or_else(|| target.strip_suffix(".svc"))
        .unwrap_or(target);
    let (name, ns) = target.split_once('.').unwrap_or((target, default_ns));
    snapshot
        .registry
        .services
        .get(&ObjectKey::new(ns, name))
        .with_context(|| {
            let known: Vec<&str> = snapshot
                .registry
                .services
                .keys()
                .filter(|k| k.namespace == ns)
                .map(|k| k.name.as_str())
                .collect();
            format!(
                "no Service {ns}/{name}; Services in namespace {ns}: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
}

/// The pod `--from` names: `[namespace/]pod`, or a workload (its pods' `app` label or the
/// Deployment name their names start with), in `default_ns` unless qualified. A workload's
/// first pod stands for all: they share their outbound routes unless `sourceLabels` tell
/// them apart.
pub fn find_workload<'a>(snapshot: &'a Snapshot, from: &str, default_ns: &str) -> anyhow::Result<&'a Workload> {
    let (ns, name) = from.split_once('/').unwrap_or((default_ns, from));
    let workloads = &snapshot.registry.workloads;
    if let Some(w) = workloads.get(&ObjectKey::new(ns, name)) {
        return Ok(w);
    }
    let in_ns: Vec<&Workload> = workloads.values().filter(|w| w.key.namespace == ns).collect();
    in_ns
        .iter()
        .find(|w| {
            w.labels.get("app").map(String::as_str) == Some(name)
                || w.key.name.strip_prefix(name).is_some_and(|rest| rest.starts_with('-'))
        })
        .copied()
        .with_context(|| {
            let pods: Vec<&str> = in_ns.iter().map(|w| w.key.name.as_str()).collect();
            format!(
                "--from {from}: no pod or workload {name} in namespace {ns}; pods there: {}",
                if pods.is_empty() {
                    "none".to_string()
                } else {
                    pods.join(", ")
                }
            )
        })
}

/// Compile and explain the routes of `svc` for traffic from `from` (none: a workload of the
/// service's namespace without labels).
pub fn report(
    snapshot: &Snapshot,
    svc: &Service,
    from: Option<&ObjectKey>,
    request: Option<&RequestSpec>,
) -> anyhow::Result<Report> {
    // The compiler compiles for a pod: a stand-in when no workload is named.
    let owned;
    let (snapshot, pod) = match from {
        Some(key) => (snapshot, key.clone()),
        None => {
            let mut s = snapshot.clone();
            let key = ObjectKey::new(svc.key.namespace.clone(), ANY_WORKLOAD);
            s.registry.workloads.insert(
                key.clone(),
                Workload {
                    key: key.clone(),
                    ip: None,
                    labels: BTreeMap::new(),
                    service_account: "default".into(),
                    ready: true,
                    meshed: true,
                    named_ports: BTreeMap::new(),
                },
            );
            owned = s;
            (&owned, key)
        }
    };
    let mut parts = OutboundParts::new(snapshot, &pod)?;
    let mut inbound = Inbound::default();
    let sender = {
        let own = compile::compile_workload(snapshot, &pod, Role::Sidecar, "meshctl")?;
        let w = snapshot.registry.workloads.get(&pod);
        Sender::new(
            own.config.identity.spiffe_id,
            w.and_then(|w| w.ip.as_deref()),
            w.is_some_and(|w| w.meshed),
        )
    };
    let fqdn = svc.fqdn(DNS_DOMAIN);
    let mut ports = Vec::new();
    for p in &svc.ports {
        let compiled = parts.port_routes(svc, p);
        let routes = compiled.virtual_host.as_ref().map(route_reports).unwrap_or_default();
        let mut used: Vec<String> = routes.iter().flat_map(|r| route_clusters(&r.route)).collect();
        used.extend(
            compiled
                .tcp_routes
                .iter()
                .flat_map(|t| t.destinations())
                .map(|(c, _)| c.to_string()),
        );
        let mut destinations = Vec::new();
        let mut refs: Vec<&ClusterRef> = Vec::new();
        for r in &compiled.refs {
            if used.contains(&r.name()) && !refs.contains(&r) {
                refs.push(r);
            }
        }
        // What the destinations' proxies are asked to let through: the request on an HTTP
        // port, the connection on a TCP one.
        let attempt = match (request, compiled.virtual_host.is_some()) {
            (Some(spec), true) => Some(Attempt::Request { spec, host: &fqdn }),
            (_, false) => Some(Attempt::Connection),
            (None, true) => None,
        };
        for r in refs {
            let cluster = parts.cluster(r);
            let asked = attempt.map(|a| (a, &sender));
            destinations.push(destination(snapshot, &cluster, &mut inbound, asked)?);
        }
        let explained = match request {
            Some(req) if compiled.virtual_host.is_some() => Some(explain(&routes, req, &fqdn, p.port)?),
            _ => None,
        };
        ports.push(PortReport {
            port: p.port,
            protocol: protocol_name(p.protocol).to_string(),
            routes,
            tcp_routes: compiled.tcp_routes.iter().map(tcp_report).collect(),
            destinations,
            request: explained,
        });
    }
    Ok(Report {
        service: format!("{}.{}", svc.key.name, svc.key.namespace),
        from: match from {
            Some(k) => k.to_string(),
            None => format!("any workload in {}", svc.key.namespace),
        },
        ports,
        diagnostics: parts.diagnostics().iter().map(ToString::to_string).collect(),
    })
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Tcp => "tcp",
        Protocol::Tls => "tls",
        Protocol::Auto => "auto",
    }
}

fn provenance_text(p: &trellis_contract::Provenance) -> String {
    match p.rule_index {
        Some(n) => format!("{} {}/{} http[{n}]", p.kind, p.namespace, p.name),
        None => format!("{} {}/{} (default)", p.kind, p.namespace, p.name),
    }
}

fn route_reports(vh: &VirtualHost) -> Vec<RouteReport> {
    vh.routes
        .iter()
        .enumerate()
        .map(|(i, r)| RouteReport {
            index: i,
            name: r.name.clone(),
            from: provenance_text(&r.provenance),
            matches: r.matches.iter().map(describe_match).collect(),
            action: describe_action(r),
            route: r.clone(),
        })
        .collect()
}

fn tcp_report(t: &TcpRoute) -> TcpRouteReport {
    TcpRouteReport {
        from: t.provenance.as_ref().map_or_else(
            || "the Service's port (no VirtualService)".to_string(),
            |p| match p.rule_index {
                Some(n) => format!("{} {}/{} rule {n}", p.kind, p.namespace, p.name),
                None => format!("{} {}/{}", p.kind, p.namespace, p.name),
            },
        ),
        sni_hosts: t.sni_hosts.clone(),
        action: t
            .destinations()
            .iter()
            .map(|(c, w)| format!("{} {w}%", short_cluster(c)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn describe_string(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(s) => format!("= {s:?}"),
        StringMatch::Prefix(s) => format!("prefix {s:?}"),
        StringMatch::Suffix(s) => format!("suffix {s:?}"),
        StringMatch::Regex(s) => format!("~ /{s}/"),
    }
}

fn describe_match(m: &RouteMatch) -> String {
    let mut parts = Vec::new();
    if let Some(p) = m.port {
        parts.push(format!("port {p}"));
    }
    if let Some(x) = &m.method {
        parts.push(format!("method {}", describe_string(x)));
    }
    if let Some(x) = &m.authority {
        parts.push(format!("authority {}", describe_string(x)));
    }
    if let Some(x) = &m.uri {
        let case = if m.ignore_uri_case { " (any case)" } else { "" };
        parts.push(format!("uri {}{case}", describe_string(x)));
    }
    for h in &m.headers {
        let cond = match &h.value {
            Some(v) => format!("header {} {}", h.name, describe_string(v)),
            None => format!("header {} present", h.name),
        };
        parts.push(if h.invert { format!("not ({cond})") } else { cond });
    }
    for q in &m.query_params {
        parts.push(match &q.value {
            Some(v) => format!("query {} {}", q.name, describe_string(v)),
            None => format!("query {} present", q.name),
        });
    }
    if parts.is_empty() {
        "any".to_string()
    } else {
        parts.join(" and ")
    }
}

/// The clusters a route sends to (its destinations and mirrors).
fn route_clusters(r: &Route) -> Vec<String> {
    match &r.action {
        RouteAction::Forward(f) => f
            .clusters
            .iter()
            .map(|c| c.cluster.clone())
            .chain(f.mirrors.iter().map(|m| m.cluster.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

fn weighted(r: &Route) -> Vec<WeightedCluster> {
    match &r.action {
        RouteAction::Forward(f) => f
            .clusters
            .iter()
            .map(|c| WeightedCluster {
                cluster: c.cluster.clone(),
                weight: c.weight,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn describe_action(r: &Route) -> String {
    let mut s = match &r.action {
        RouteAction::Forward(f) => {
            let mut s = f
                .clusters
                .iter()
                .map(|c| format!("{} {}%", short_cluster(&c.cluster), c.weight))
                .collect::<Vec<_>>()
                .join(", ");
            if let Some(t) = f.timeout_ms {
                s.push_str(&format!("; timeout {t} ms"));
            }
            if let Some(rt) = &f.retries {
                s.push_str(&format!("; {} retries", rt.attempts));
            }
            if let Some(u) = f.rewrite.as_ref().and_then(|rw| rw.uri_prefix.as_ref()) {
                s.push_str(&format!("; rewrite uri to {u}"));
            }
            for m in &f.mirrors {
                s.push_str(&format!("; mirror {}% to {}", m.percentage, short_cluster(&m.cluster)));
            }
            s
        }
        RouteAction::Redirect(rd) => format!(
            "redirect {} to {}{}",
            rd.response_code.unwrap_or(301),
            rd.scheme.as_deref().map(|s| format!("{s}://")).unwrap_or_default(),
            rd.uri.as_deref().or(rd.authority.as_deref()).unwrap_or("(same)")
        ),
        RouteAction::DirectResponse(d) => format!("answer {}", d.status),
    };
    if let Some(f) = &r.fault {
        if let Some(a) = &f.abort {
            s.push_str(&format!("; abort {} for {}%", a.http_status, a.percentage));
        }
        if let Some(d) = &f.delay {
            s.push_str(&format!("; delay {} ms for {}%", d.fixed_delay_ms, d.percentage));
        }
    }
    s
}

/// `outbound|8080|v2|payment.shop.svc.cluster.local` → `payment.shop:8080 v2`.
pub fn short_cluster(name: &str) -> String {
    let parts: Vec<&str> = name.split('|').collect();
    match parts.as_slice() {
        [_, port, subset, host] => {
            let host = host.strip_suffix(&format!(".svc.{DNS_DOMAIN}")).unwrap_or(host);
            if subset.is_empty() {
                format!("{host}:{port}")
            } else {
                format!("{host}:{port} {subset}")
            }
        }
        _ => name.to_string(),
    }
}

/// The inbound policy of endpoint pods and its authorizer, compiled once per pod.
#[derive(Default)]
struct Inbound {
    by_pod: BTreeMap<ObjectKey, (trellis_contract::InboundPolicy, Authorizer)>,
}

impl Inbound {
    fn of(
        &mut self,
        snapshot: &Snapshot,
        pod: &ObjectKey,
    ) -> anyhow::Result<&(trellis_contract::InboundPolicy, Authorizer)> {
        if !self.by_pod.contains_key(pod) {
            let own = compile::compile_workload(snapshot, pod, Role::Sidecar, "meshctl")?;
            let authorizer = Authorizer::compile(&own.config.inbound)
                .with_context(|| format!("the AuthorizationPolicies of pod {pod}"))?;
            self.by_pod.insert(pod.clone(), (own.config.inbound, authorizer));
        }
        self.by_pod
            .get(pod)
            .with_context(|| format!("the inbound policy of pod {pod} was not compiled"))
    }
}

/// A destination, and each endpoint's verdict on `asked` (what the sender sends) if given.
fn destination(
    snapshot: &Snapshot,
    c: &Cluster,
    inbound: &mut Inbound,
    asked: Option<(Attempt<'_>, &Sender)>,
) -> anyhow::Result<Destination> {
    // The compiler records the DestinationRule it applied (compile::destination_rule_for).
    let destination_rule = c
        .provenance
        .as_ref()
        .map(|p| format!("{} {}/{}", p.kind, p.namespace, p.name));
    let lb = match &c.load_balancer.policy {
        LbPolicy::RoundRobin => "ROUND_ROBIN".to_string(),
        LbPolicy::LeastRequest => "LEAST_REQUEST".to_string(),
        LbPolicy::Random => "RANDOM".to_string(),
        LbPolicy::RingHash { .. } => "RING_HASH".to_string(),
        LbPolicy::Maglev { .. } => "MAGLEV".to_string(),
    };
    let tls = match &c.tls {
        UpstreamTls::Disable => "plaintext".to_string(),
        UpstreamTls::Mesh { .. } => "mutual TLS (mesh)".to_string(),
        UpstreamTls::Originate(o) if o.client_certificate.is_some() => {
            format!("TLS originated, MUTUAL (SNI {})", o.sni)
        }
        UpstreamTls::Originate(o) => format!("TLS originated, SIMPLE (SNI {})", o.sni),
    };
    let mut policy = format!("{lb}; {tls}; connect timeout {} ms", c.connect_timeout_ms);
    if let Some(od) = &c.outlier_detection {
        policy.push_str(&format!("; eject after {} consecutive 5xx", od.consecutive_5xx));
    }
    let mut endpoints = Vec::new();
    for e in &c.endpoints {
        let workload = snapshot
            .registry
            .workloads
            .values()
            .find(|w| w.ip.as_deref() == Some(e.address.as_str()));
        let (mtls, authorization, verdict) = match workload {
            Some(w) if w.meshed => {
                let (policy, authorizer) = inbound.of(snapshot, &w.key)?;
                (
                    mtls_text(policy.mtls.mode_for(e.port)),
                    authz_text(policy),
                    asked.map(|(attempt, sender)| verdict::verdict(policy, authorizer, attempt, sender, c, e)),
                )
            }
            _ => (
                "none (no proxy: plaintext)".to_string(),
                "none (no proxy enforces a policy)".to_string(),
                None,
            ),
        };
        endpoints.push(EndpointReport {
            address: format!("{}:{}", e.address, e.port),
            health: match e.health {
                HealthStatus::Healthy => "healthy".into(),
                _ => "unhealthy".into(),
            },
            identity: e.identity.clone(),
            pod: workload.map(|w| w.key.to_string()),
            mtls,
            authorization,
            verdict,
        });
    }
    Ok(Destination {
        cluster: c.name.clone(),
        destination_rule,
        policy,
        endpoints,
    })
}

fn mtls_text(mode: MtlsMode) -> String {
    match mode {
        MtlsMode::Strict => "STRICT (mutual TLS only)".into(),
        MtlsMode::Permissive => "PERMISSIVE (mutual TLS or plaintext)".into(),
        MtlsMode::Disable => "DISABLE (plaintext)".into(),
    }
}

fn authz_text(p: &trellis_contract::InboundPolicy) -> String {
    if p.authorization.is_empty() {
        return "no AuthorizationPolicy: every request allowed".into();
    }
    let policies: Vec<String> = p
        .authorization
        .iter()
        .map(|a| {
            let action = match a.action {
                AuthzAction::Allow => "ALLOW",
                AuthzAction::Deny => "DENY",
                AuthzAction::Audit => "AUDIT",
            };
            format!("{action} {}/{}", a.namespace, a.name)
        })
        .collect();
    format!("decided by {}", policies.join(", "))
}

/// Which rule takes the request and why each earlier one did not, decided by the proxy's
/// matching code.
fn explain(routes: &[RouteReport], r: &RequestSpec, fqdn: &str, port: u16) -> anyhow::Result<RequestReport> {
    let request = Request {
        method: &r.method,
        path: &r.path,
        query: r.query.as_deref(),
        host: fqdn,
        port,
        headers: r,
    };
    let mut skipped = Vec::new();
    for route in routes {
        let compiled = route
            .route
            .matches
            .iter()
            .map(CompiledRouteMatch::compile)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("rule {} ({})", route.index, route.from))?;
        match matching::first_match(&compiled, &request) {
            Ok(_) => {
                return Ok(RequestReport {
                    request: r.clone(),
                    skipped,
                    matched: Some(route.index),
                    outcome: route.action.clone(),
                    clusters: weighted(&route.route),
                });
            }
            Err(mismatches) => skipped.push(Skipped {
                index: route.index,
                reasons: mismatches
                    .iter()
                    .zip(&route.route.matches)
                    .map(|(m, spec)| why(*m, spec, &request, r))
                    .collect(),
            }),
        }
    }
    Ok(RequestReport {
        request: r.clone(),
        skipped,
        matched: None,
        outcome: "404: no rule matches".into(),
        clusters: Vec::new(),
    })
}

/// A mismatch in words: the condition and the request's value.
fn why(m: Mismatch, spec: &RouteMatch, req: &Request<'_>, r: &RequestSpec) -> String {
    let want = |s: &Option<StringMatch>| s.as_ref().map(describe_string).unwrap_or_default();
    match m {
        Mismatch::Port => format!(
            "port: wants {}, the request goes to {}",
            spec.port.unwrap_or_default(),
            req.port
        ),
        Mismatch::Method => format!("method: wants {}, got {:?}", want(&spec.method), req.method),
        Mismatch::Authority => format!("authority: wants {}, got {:?}", want(&spec.authority), req.host),
        Mismatch::Uri => {
            let case = if spec.ignore_uri_case { " (any case)" } else { "" };
            format!("uri: wants {}{case}, got {:?}", want(&spec.uri), req.path)
        }
        Mismatch::Header(i) => match spec.headers.get(i) {
            Some(h) => {
                let got = r
                    .joined(&h.name.to_ascii_lowercase())
                    .map_or("absent".to_string(), |v| format!("{v:?}"));
                match (&h.value, h.invert) {
                    (None, false) => format!("header {}: must be present, absent", h.name),
                    (None, true) => format!("header {}: must be absent, got {got}", h.name),
                    (Some(v), false) => format!("header {}: wants {}, got {got}", h.name, describe_string(v)),
                    (Some(v), true) => format!("header {}: must not be {}, got {got}", h.name, describe_string(v)),
                }
            }
            None => format!("header condition {i}"),
        },
        Mismatch::QueryParam(i) => match spec.query_params.get(i) {
            Some(q) => {
                let params = matching::parse_query(r.query.as_deref().unwrap_or(""));
                let got = params
                    .iter()
                    .find(|(k, _)| *k == q.name)
                    .map_or("absent".to_string(), |(_, v)| format!("{v:?}"));
                match &q.value {
                    Some(v) => format!("query {}: wants {}, got {got}", q.name, describe_string(v)),
                    None => format!("query {}: must be present, absent", q.name),
                }
            }
            None => format!("query condition {i}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// payment (v1, v2 subsets; v2 canary by header, else 90/10), web calling it, a
    /// PeerAuthentication STRICT and an AuthorizationPolicy on payment, and a rule only web's
    /// proxy gets (`sourceLabels`).
    const SHOP: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: payment, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: payment}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.11, selector: {app: db}, ports: [{name: tcp-db, port: 5432}]}
---
apiVersion: v1
kind: Pod
metadata: {name: payment-v1-a, namespace: shop, labels: {app: payment, version: v1}}
spec: {containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.11, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: payment-v2-b, namespace: shop, labels: {app: payment, version: v2}}
spec: {containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.12, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-7f9-c, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.13, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cli-1, namespace: other, labels: {app: cli}}
spec: {containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.14, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
  - name: web-only
    match: [{sourceLabels: {app: web}, uri: {prefix: /internal}}]
    route: [{destination: {host: payment, subset: v1}}]
  - name: canary
    match: [{headers: {x-canary: {exact: "true"}}}, {queryParams: {canary: {exact: "1"}}}]
    route: [{destination: {host: payment, subset: v2}}]
  - name: split
    route:
    - {destination: {host: payment, subset: v1}, weight: 90}
    - {destination: {host: payment, subset: v2}, weight: 10}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {name: payment, namespace: shop}
spec:
  host: payment
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payment-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [shop]}}]}]
"#;

    fn shop() -> Snapshot {
        Snapshot::from_yaml(SHOP).unwrap()
    }

    fn payment_report(from: Option<&str>, request: Option<&str>) -> Report {
        let s = shop();
        let svc = find_service(&s, "payment.shop", "default").unwrap();
        let from = from.map(|f| find_workload(&s, f, "shop").unwrap().key.clone());
        let request = request.map(|r| RequestSpec::parse(r).unwrap());
        report(&s, svc, from.as_ref(), request.as_ref()).unwrap()
    }

    #[test]
    fn routes_in_order_with_their_origin() {
        let r = payment_report(Some("web"), None);
        assert_eq!(r.from, "shop/web-7f9-c");
        let port = &r.ports[0];
        assert_eq!((port.port, port.protocol.as_str()), (8080, "http"));
        let rows: Vec<(Option<&str>, &str, &str)> = port
            .routes
            .iter()
            .map(|r| (r.name.as_deref(), r.from.as_str(), r.action.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                (
                    Some("web-only"),
                    "VirtualService shop/payment http[0]",
                    "payment.shop:8080 v1 100%; 2 retries"
                ),
                (
                    Some("canary"),
                    "VirtualService shop/payment http[1]",
                    "payment.shop:8080 v2 100%; 2 retries"
                ),
                (
                    Some("split"),
                    "VirtualService shop/payment http[2]",
                    "payment.shop:8080 v1 90%, payment.shop:8080 v2 10%; 2 retries"
                ),
            ]
        );
        assert_eq!(
            port.routes[1].matches,
            ["header x-canary = \"true\"", "query canary = \"1\""]
        );
    }

    #[test]
    fn source_labels_decide_which_rules_a_workload_gets() {
        let any = payment_report(None, None);
        assert_eq!(any.from, "any workload in shop");
        let names: Vec<_> = any.ports[0].routes.iter().map(|r| r.name.as_deref()).collect();
        assert_eq!(names, [Some("canary"), Some("split")]);
    }

    #[test]
    fn destinations_carry_their_policy_endpoints_and_inbound_policy() {
        let r = payment_report(Some("web"), None);
        let dests = &r.ports[0].destinations;
        let names: Vec<&str> = dests.iter().map(|d| d.cluster.as_str()).collect();
        assert_eq!(
            names,
            [
                "outbound|8080|v1|payment.shop.svc.cluster.local",
                "outbound|8080|v2|payment.shop.svc.cluster.local"
            ]
        );
        let v2 = &dests[1];
        assert_eq!(v2.destination_rule.as_deref(), Some("DestinationRule shop/payment"));
        assert!(
            v2.policy.starts_with("LEAST_REQUEST; mutual TLS (mesh)"),
            "{}",
            v2.policy
        );
        assert_eq!(v2.endpoints.len(), 1);
        let e = &v2.endpoints[0];
        assert_eq!(e.address, "10.244.0.12:8080");
        assert_eq!(e.pod.as_deref(), Some("shop/payment-v2-b"));
        assert_eq!(e.identity.as_deref(), Some("spiffe://cluster.local/ns/shop/sa/default"));
        assert_eq!(e.mtls, "STRICT (mutual TLS only)");
        assert_eq!(e.authorization, "decided by ALLOW shop/payment-callers");
    }

    #[test]
    fn a_request_is_taken_by_the_first_matching_rule_and_the_others_say_why() {
        let r = payment_report(Some("web"), Some("GET /pay?canary=0 -H x-user:ann"));
        let req = r.ports[0].request.as_ref().unwrap();
        assert_eq!(req.matched, Some(2));
        let skipped: Vec<(usize, Vec<&str>)> = req
            .skipped
            .iter()
            .map(|s| (s.index, s.reasons.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            skipped,
            [
                (0, vec!["uri: wants prefix \"/internal\", got \"/pay\""]),
                (
                    1,
                    vec![
                        "header x-canary: wants = \"true\", got absent",
                        "query canary: wants = \"1\", got \"0\""
                    ]
                ),
            ]
        );
        assert_eq!(
            req.clusters,
            [
                WeightedCluster {
                    cluster: "outbound|8080|v1|payment.shop.svc.cluster.local".into(),
                    weight: 90
                },
                WeightedCluster {
                    cluster: "outbound|8080|v2|payment.shop.svc.cluster.local".into(),
                    weight: 10
                }
            ]
        );

        let canary = payment_report(Some("web"), Some("GET /pay -H x-canary:true"));
        let req = canary.ports[0].request.as_ref().unwrap();
        assert_eq!(req.matched, Some(1));
        assert_eq!(req.outcome, "payment.shop:8080 v2 100%; 2 retries");
    }

    #[test]
    fn each_endpoint_says_what_its_proxy_decides_for_the_source_and_request() {
        let verdicts = |r: &Report| -> Vec<String> {
            r.ports[0]
                .destinations
                .iter()
                .flat_map(|d| &d.endpoints)
                .map(|e| e.verdict.as_ref().map_or("none".to_string(), |v| v.reason.clone()))
                .collect()
        };
        let from_web = payment_report(Some("web"), Some("GET /pay"));
        assert_eq!(
            verdicts(&from_web),
            ["ALLOW by AuthorizationPolicy shop/payment-callers rules[0]"; 2]
        );
        let v = from_web.ports[0].destinations[0].endpoints[0].verdict.as_ref().unwrap();
        assert_eq!(
            (v.decision, v.policy.as_deref(), v.rule),
            ("ALLOW", Some("shop/payment-callers"), Some(0))
        );
        // The policy admits namespace shop only.
        let outsider = payment_report(Some("other/cli-1"), Some("GET /pay"));
        assert_eq!(
            verdicts(&outsider),
            ["DENY: no rule of its ALLOW policies matches (shop/payment-callers)"; 2]
        );
        // Without a request, an HTTP port's policies are listed, not decided.
        assert_eq!(verdicts(&payment_report(Some("web"), None)), ["none"; 2]);
    }

    #[test]
    fn a_request_no_rule_takes_is_a_404() {
        let mut s = shop();
        s.virtual_services = Snapshot::from_yaml(
            r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http: [{match: [{method: {exact: POST}}], route: [{destination: {host: payment}}]}]
"#,
        )
        .unwrap()
        .virtual_services;
        let svc = find_service(&s, "payment", "shop").unwrap();
        let req = RequestSpec::parse("GET /").unwrap();
        let r = report(&s, svc, None, Some(&req)).unwrap();
        let explained = r.ports[0].request.as_ref().unwrap();
        assert_eq!(explained.matched, None);
        assert_eq!(explained.outcome, "404: no rule matches");
        assert_eq!(explained.skipped[0].reasons, ["method: wants = \"POST\", got \"GET\""]);
    }

    #[test]
    fn tcp_ports_show_their_tcp_route() {
        let s = shop();
        let svc = find_service(&s, "db.shop.svc.cluster.local", "default").unwrap();
        let r = report(&s, svc, None, None).unwrap();
        let port = &r.ports[0];
        assert_eq!(port.protocol, "tcp");
        assert!(port.routes.is_empty());
        assert_eq!(port.tcp_routes.len(), 1);
        assert_eq!(port.tcp_routes[0].action, "db.shop:5432 100%");
        assert_eq!(port.destinations[0].cluster, "outbound|5432||db.shop.svc.cluster.local");
    }

    #[test]
    fn unknown_services_and_workloads_name_what_exists() {
        let s = shop();
        let e = find_service(&s, "pay.shop", "default").unwrap_err().to_string();
        assert_eq!(e, "no Service shop/pay; Services in namespace shop: db, payment");
        let e = find_workload(&s, "cart", "shop").unwrap_err().to_string();
        assert!(
            e.contains("no pod or workload cart in namespace shop; pods there: payment-v1-a"),
            "{e}"
        );
        assert_eq!(
            find_workload(&s, "shop/payment-v2-b", "x").unwrap().key.name,
            "payment-v2-b"
        );
    }
}
