//! The rules of a port as `meshctl routes` shows them: each HTTP rule's origin, match
//! conditions and action in words, a TCP route's destinations, and cluster names made short.

use crate::compile::DNS_DOMAIN;
use crate::registry::Protocol;
use serde::Serialize;
use trellis_contract::{Route, RouteAction, RouteMatch, StringMatch, TcpRoute, VirtualHost};

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

/// A cluster and its share of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedCluster {
    /// Cluster name.
    pub cluster: String,
    /// Percent of requests.
    pub weight: u32,
}

pub(super) fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Tcp => "tcp",
        Protocol::Tls => "tls",
        Protocol::Auto => "auto",
    }
}

pub(super) fn provenance_text(p: &trellis_contract::Provenance) -> String {
    match p.rule_index {
        Some(_) => p.describe(),
        None => format!("{} {}/{} (default)", p.kind, p.namespace, p.name),
    }
}

pub(super) fn route_reports(vh: &VirtualHost) -> Vec<RouteReport> {
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

pub(super) fn tcp_report(t: &TcpRoute) -> TcpRouteReport {
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

pub(super) fn describe_string(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(s) => format!("= {s:?}"),
        StringMatch::Prefix(s) => format!("prefix {s:?}"),
        StringMatch::Suffix(s) => format!("suffix {s:?}"),
        StringMatch::Regex(s) => format!("~ /{s}/"),
    }
}

pub(super) fn describe_match(m: &RouteMatch) -> String {
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
pub(super) fn route_clusters(r: &Route) -> Vec<String> {
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

pub(super) fn weighted(r: &Route) -> Vec<WeightedCluster> {
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

pub(super) fn describe_action(r: &Route) -> String {
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
            rd.uri
                .clone()
                .or_else(|| rd
                    .prefix_rewrite
                    .as_ref()
                    .map(|p| format!("{p}… (the matched prefix replaced)")))
                .or_else(|| rd.authority.clone())
                .unwrap_or_else(|| "(same)".into())
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
