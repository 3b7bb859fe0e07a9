//! The proxy configuration (`trellis-contract`) in words, for tables: a route's match, its
//! destination, a cluster's name and its parts.

use trellis_contract::{Provenance, Route, RouteAction, StringMatch};

/// A cluster name's parts: `outbound|8080|v1|payment.shop.svc.cluster.local` → direction,
/// port, subset, FQDN. `None` for names of another shape.
pub fn cluster_parts(name: &str) -> Option<(&str, u16, &str, &str)> {
    match name.split('|').collect::<Vec<_>>().as_slice() {
        [direction, port, subset, host] => Some((direction, port.parse().ok()?, subset, host)),
        _ => None,
    }
}

/// Where a route came from: `VirtualService shop/payment http[3]` (`tcp[0]`, `tls[1]`),
/// `Gateway shop/gw`.
pub fn describe_provenance(p: &Provenance) -> String {
    p.describe()
}

/// A route's match in words: `path /api*, x-canary = true`, `port 8080` (an inbound route),
/// alternatives joined by `or`.
pub fn describe_match(route: &Route) -> String {
    let text = |m: &StringMatch| match m {
        StringMatch::Exact(v) => format!("= {v}"),
        StringMatch::Prefix(v) => format!("{v}*"),
        StringMatch::Suffix(v) => format!("*{v}"),
        StringMatch::Regex(v) => format!("~ {v}"),
    };
    let parts: Vec<String> = route
        .matches
        .iter()
        .map(|m| {
            let mut p = Vec::new();
            if let Some(port) = m.port {
                p.push(format!("port {port}"));
            }
            if let Some(u) = &m.uri {
                p.push(format!("path {}", text(u)));
            }
            for h in &m.headers {
                let value = h.value.as_ref().map(text).unwrap_or_else(|| "present".into());
                p.push(format!("{}{} {value}", if h.invert { "not " } else { "" }, h.name));
            }
            if p.is_empty() { "any".to_string() } else { p.join(", ") }
        })
        .collect();
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(" or ")
    }
}

/// `outbound|8080|v1|payment.shop.svc.cluster.local` → `payment v1:8080`.
pub fn short_cluster(name: &str) -> String {
    match cluster_parts(name) {
        Some((_, port, subset, host)) => {
            let host = host.split('.').next().unwrap_or(host);
            if subset.is_empty() {
                format!("{host}:{port}")
            } else {
                format!("{host} {subset}:{port}")
            }
        }
        None => name.to_string(),
    }
}

/// A route's action in words: `payment v1:8080 90%, payment v2:8080 10%; timeout 500 ms`.
pub fn describe_action(route: &Route) -> String {
    let mut s = match &route.action {
        RouteAction::Forward(f) => f
            .clusters
            .iter()
            .map(|c| format!("{} {}%", short_cluster(&c.cluster), c.weight))
            .collect::<Vec<_>>()
            .join(", "),
        RouteAction::Redirect(_) => "redirect".into(),
        RouteAction::DirectResponse(d) => format!("direct response {}", d.status),
    };
    if let RouteAction::Forward(f) = &route.action
        && let Some(ms) = f.timeout_ms
    {
        s.push_str(&format!("; timeout {ms} ms"));
    }
    if let Some(fault) = &route.fault
        && let Some(a) = &fault.abort
    {
        s.push_str(&format!("; abort {} at {}%", a.http_status, a.percentage));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_in_words() {
        assert_eq!(
            short_cluster("outbound|8080|v1|payment.shop.svc.cluster.local"),
            "payment v1:8080"
        );
        assert_eq!(short_cluster("outbound|8080||web.shop.svc.cluster.local"), "web:8080");
        assert_eq!(short_cluster("passthrough"), "passthrough");
        assert_eq!(cluster_parts("inbound|8080||"), Some(("inbound", 8080, "", "")));
    }
}
