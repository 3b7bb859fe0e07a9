//! Why a rule did not take a request: the first rule whose match the request meets takes it,
//! decided by the proxy's own matcher ([`trellis_contract::matching`]), and every rule before
//! it says which condition failed and on what value of the request.

use anyhow::Context;
use serde::Serialize;
use trellis_contract::matching::{self, CompiledRouteMatch, Headers, Mismatch, Request};
use trellis_contract::{RouteMatch, StringMatch};

use super::request::RequestSpec;
use super::rules::{RouteReport, WeightedCluster, describe_string, weighted};

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

/// A rule a request did not match.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// The rule's index.
    pub index: usize,
    /// Why, one reason per alternative match.
    pub reasons: Vec<String>,
}

/// Which rule takes the request and why each earlier one did not, decided by the proxy's
/// matching code.
pub(super) fn explain(routes: &[RouteReport], r: &RequestSpec, fqdn: &str, port: u16) -> anyhow::Result<RequestReport> {
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
pub(super) fn why(m: Mismatch, spec: &RouteMatch, req: &Request<'_>, r: &RequestSpec) -> String {
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
    use crate::snapshot::Snapshot;

    use super::super::model::tests::{payment_report, shop};
    use super::super::model::{find_service, report};
    use super::*;

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
}
