//! VirtualService HTTP rules → contract routes.

use std::time::Duration;

use trellis_api::networking::{self as api, HttpRoute, VirtualService};
use trellis_contract::{
    self as c, CorsPolicy, DirectResponse, FaultAbort, FaultDelay, FaultInjection, ForwardAction, HeaderMatch,
    HeaderMutation, Mirror, Provenance, QueryParamMatch, Redirect, RegexRewrite, RetryOn, RetryPolicy, Rewrite, Route,
    RouteAction, RouteMatch, WeightedCluster,
};

use super::{Code, Ctx, Dropped, resolve_host, resource};
use crate::registry::selects;

/// A route sending everything it matches to one cluster, with no retries or timeout (the
/// defaults for traffic no VirtualService shapes).
pub(crate) fn forward_to(name: String, matches: Vec<RouteMatch>, cluster: String, provenance: Provenance) -> Route {
    Route {
        name: Some(name),
        matches,
        action: RouteAction::Forward(ForwardAction {
            clusters: vec![WeightedCluster {
                cluster,
                weight: 100,
                request_headers: HeaderMutation::default(),
                response_headers: HeaderMutation::default(),
            }],
            rewrite: None,
            timeout_ms: None,
            retries: None,
            mirrors: Vec::new(),
        }),
        request_headers: HeaderMutation::default(),
        response_headers: HeaderMutation::default(),
        fault: None,
        cors: None,
        provenance,
    }
}

/// Where a destination resolves to; the caller turns it into a cluster name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterRef {
    /// FQDN of the destination.
    pub host: String,
    /// Destination port (0 when it could not be determined).
    pub port: u16,
    /// Subset, if any.
    pub subset: Option<String>,
}

impl ClusterRef {
    /// Istio's cluster naming: `outbound|<port>|<subset>|<fqdn>`.
    pub fn name(&self) -> String {
        format!(
            "outbound|{}|{}|{}",
            self.port,
            self.subset.as_deref().unwrap_or_default(),
            self.host
        )
    }
}

/// The context a VirtualService rule is compiled in.
pub(crate) struct RouteScope<'s> {
    /// The gateway names (`ns/name`) the listener serves, or `mesh` for sidecars.
    pub(crate) gateway: &'s str,
    /// The port of the virtual host being built.
    pub(crate) port: u16,
}

/// Compile the rules of one VirtualService for one virtual host. Returns the routes and
/// whether the last of them matches every request (a catch-all).
pub(crate) fn compile_http(
    ctx: &mut Ctx<'_>,
    vs: &VirtualService,
    scope: &RouteScope<'_>,
    clusters: &mut Vec<ClusterRef>,
) -> (Vec<Route>, bool) {
    let ns = vs.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let res = resource("VirtualService", &vs.metadata);
    let vs_gateways: Vec<String> = vs.spec.gateways.clone().unwrap_or_default();
    let mut routes = Vec::new();
    let mut catch_all = false;
    for (i, rule) in vs.spec.http.iter().flatten().enumerate() {
        let provenance = Provenance {
            kind: "VirtualService".into(),
            namespace: ns.clone(),
            name: vs.metadata.name.clone().unwrap_or_default(),
            rule_index: Some(i as u32),
            section: None,
            parts: Vec::new(),
        };
        let matches = match compile_matches(ctx, &res, rule, i, &ns, &vs_gateways, scope) {
            Some(m) => m,
            None => continue, // no match of this rule applies here
        };
        let Some(action) = compile_action(ctx, &res, rule, i, &ns, scope, clusters) else {
            continue;
        };
        let (request_headers, response_headers) = header_mutations(rule.headers.as_ref());
        let route = Route {
            name: rule.name.clone(),
            matches: matches.clone(),
            action,
            request_headers,
            response_headers,
            fault: rule.fault.as_ref().and_then(fault),
            cors: rule.cors_policy.as_ref().map(cors),
            provenance,
        };
        routes.push(route);
        if matches.is_empty() {
            catch_all = true;
            break;
        }
    }
    (routes, catch_all)
}

/// The matches of a rule that apply in this scope: `None` when the rule has matches but none
/// applies here (another port or gateway, or a source that is not this proxy); `Some([])` for
/// a rule that matches everything.
fn compile_matches(
    ctx: &mut Ctx<'_>,
    res: &str,
    rule: &HttpRoute,
    index: usize,
    ns: &str,
    vs_gateways: &[String],
    scope: &RouteScope<'_>,
) -> Option<Vec<RouteMatch>> {
    let Some(ms) = rule.matches.as_ref().filter(|m| !m.is_empty()) else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    for (j, m) in ms.iter().enumerate() {
        let gateways = m.gateways.as_deref().unwrap_or(vs_gateways);
        if !applies_to_gateway(gateways, ns, scope.gateway) {
            continue;
        }
        if m.port.is_some_and(|p| p != u32::from(scope.port)) {
            continue;
        }
        // Source conditions are known at compile time for a sidecar: its own labels and namespace.
        if let Some(sl) = &m.source_labels
            && (scope.gateway != "mesh" || !selects(sl, &ctx.proxy.labels))
        {
            continue;
        }
        if let Some(sn) = &m.source_namespace
            && (scope.gateway != "mesh" || *sn != ctx.proxy.key.namespace)
        {
            continue;
        }
        if m.scheme.is_some() {
            ctx.dropped(
                Dropped::SchemeMatch,
                res,
                format!("spec.http[{index}].match[{j}].scheme: scheme matching is not supported by trellis-proxy yet; this match is dropped"),
            );
            continue;
        }
        let mut headers: Vec<HeaderMatch> = Vec::new();
        for (name, sm) in m.headers.iter().flatten() {
            headers.push(HeaderMatch {
                name: name.clone(),
                value: string_match(sm),
                invert: false,
            });
        }
        for (name, sm) in m.without_headers.iter().flatten() {
            headers.push(HeaderMatch {
                name: name.clone(),
                value: string_match(sm),
                invert: true,
            });
        }
        out.push(RouteMatch {
            uri: m.uri.as_ref().and_then(string_match),
            ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
            method: m.method.as_ref().and_then(string_match),
            authority: m.authority.as_ref().and_then(string_match),
            headers,
            query_params: m
                .query_params
                .iter()
                .flatten()
                .map(|(name, sm)| QueryParamMatch {
                    name: name.clone(),
                    value: string_match(sm),
                })
                .collect(),
            // At a gateway the port a rule names is the Gateway server's, settled above: the
            // virtual host is that server's. The proxy listens on the server's targetPort,
            // which is the port requests then carry, so it is not matched again at run time
            // (as Istio: Envoy's routes have no port match).
            port: if scope.gateway == "mesh" {
                m.port.and_then(|p| u16::try_from(p).ok())
            } else {
                None
            },
        });
    }
    if out.is_empty() { None } else { Some(out) }
}

/// Whether a list of gateways (as written in a VirtualService of `ns`) includes `target`
/// (`mesh` or `gwns/gwname`). An empty list means `mesh`.
pub(crate) fn applies_to_gateway(gateways: &[String], ns: &str, target: &str) -> bool {
    if gateways.is_empty() {
        return target == "mesh";
    }
    gateways.iter().any(|g| {
        if g == "mesh" {
            return target == "mesh";
        }
        let full = if g.contains('/') {
            g.clone()
        } else {
            format!("{ns}/{g}")
        };
        full == target
    })
}

fn string_match(m: &api::StringMatch) -> Option<c::StringMatch> {
    if let Some(e) = &m.exact {
        Some(c::StringMatch::Exact(e.clone()))
    } else if let Some(p) = &m.prefix {
        Some(c::StringMatch::Prefix(p.clone()))
    } else {
        m.regex.as_ref().map(|r| c::StringMatch::Regex(r.clone()))
    }
}

fn compile_action(
    ctx: &mut Ctx<'_>,
    res: &str,
    rule: &HttpRoute,
    index: usize,
    ns: &str,
    scope: &RouteScope<'_>,
    clusters: &mut Vec<ClusterRef>,
) -> Option<RouteAction> {
    if let Some(r) = &rule.redirect {
        let port = match (r.port, r.derive_port) {
            (Some(p), _) => u16::try_from(p).ok(),
            (None, Some(api::RedirectPortSelection::FromProtocolDefault)) => {
                Some(if r.scheme.as_deref() == Some("https") { 443 } else { 80 })
            }
            (None, Some(api::RedirectPortSelection::FromRequestPort)) => Some(scope.port),
            (None, None) => None,
        };
        return Some(RouteAction::Redirect(Redirect {
            uri: r.uri.clone(),
            prefix_rewrite: r.prefix_rewrite.clone().filter(|p| !p.is_empty()),
            authority: r.authority.clone(),
            port,
            scheme: r.scheme.clone(),
            response_code: Some(r.redirect_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(301)),
        }));
    }
    if let Some(d) = &rule.direct_response {
        let body = d.body.as_ref().and_then(|b| {
            b.string.clone().or_else(|| {
                b.decoded_bytes().and_then(|raw| {
                    let decoded = raw.ok().and_then(|v| String::from_utf8(v).ok());
                    if decoded.is_none() {
                        ctx.dropped(
                            Dropped::BinaryDirectResponse,
                            res,
                            format!("spec.http[{index}].directResponse.body.bytes: only UTF-8 bodies are supported by trellis-proxy yet; the body is dropped"),
                        );
                    }
                    decoded
                })
            })
        });
        return Some(RouteAction::DirectResponse(DirectResponse {
            status: u16::try_from(d.status).unwrap_or(500),
            body,
        }));
    }
    let dests = rule.route.as_deref().unwrap_or_default();
    if dests.is_empty() {
        ctx.dropped(
            Dropped::RuleWithoutDestination,
            res,
            format!("spec.http[{index}].route: no destination; the rule is dropped"),
        );
        return None;
    }
    let total: u32 = dests.iter().map(|d| d.weight.unwrap_or(0).max(0) as u32).sum();
    let mut weighted = Vec::new();
    for d in dests {
        let cref = destination(ctx, res, &d.destination, ns, scope.port);
        let weight = if dests.len() == 1 || total == 0 {
            100
        } else {
            d.weight.unwrap_or(0).max(0) as u32
        };
        let (request_headers, response_headers) = header_mutations(d.headers.as_ref());
        weighted.push(WeightedCluster {
            cluster: cref.name(),
            weight,
            request_headers,
            response_headers,
        });
        clusters.push(cref);
    }
    let mut mirrors = Vec::new();
    if let Some(m) = &rule.mirror {
        let cref = destination(ctx, res, m, ns, scope.port);
        mirrors.push(Mirror {
            cluster: cref.name(),
            percentage: rule.mirror_percentage.map_or(100.0, |p| p.value),
        });
        clusters.push(cref);
    }
    for m in rule.mirrors.iter().flatten() {
        let cref = destination(ctx, res, &m.destination, ns, scope.port);
        mirrors.push(Mirror {
            cluster: cref.name(),
            percentage: m.percentage.map_or(100.0, |p| p.value),
        });
        clusters.push(cref);
    }
    Some(RouteAction::Forward(ForwardAction {
        clusters: weighted,
        rewrite: rule.rewrite.as_ref().map(|r| Rewrite {
            uri_prefix: r.uri.clone(),
            uri_regex: r.uri_regex_rewrite.as_ref().map(|rr| RegexRewrite {
                pattern: rr.pattern.clone(),
                substitution: rr.rewrite.clone(),
            }),
            authority: r.authority.clone(),
        }),
        timeout_ms: rule.timeout.as_deref().and_then(millis),
        retries: retries(rule),
        mirrors,
    }))
}

/// Resolve a destination to a cluster reference, noting hosts and ports that do not exist.
pub(crate) fn destination(
    ctx: &mut Ctx<'_>,
    res: &str,
    d: &api::Destination,
    ns: &str,
    default_port: u16,
) -> ClusterRef {
    let host = resolve_host(&d.host, ns);
    let viewer = &ctx.proxy.key.namespace;
    let (svc, hidden) = match ctx.snapshot.registry.service_by_host(&host, super::DNS_DOMAIN) {
        Some(s) if !s.visible_from(viewer) => (None, Some(s)),
        found => (found, None),
    };
    if svc.is_none()
        && hidden.is_none()
        && let Some(entry) = super::service_entry::find(ctx.snapshot, &ctx.proxy.key.namespace, &host)
    {
        return entry_destination(ctx, res, d, host, &entry, default_port);
    }
    let port = match (d.port.as_ref(), svc) {
        (Some(p), _) => u16::try_from(p.number).unwrap_or(0),
        (None, Some(s)) if s.ports.len() == 1 => s.ports[0].port,
        (None, Some(s)) if s.ports.iter().any(|p| p.port == default_port) => default_port,
        (None, Some(s)) => {
            ctx.diag(
                Code::VirtualServiceDestinationPortSelectorRequired,
                res,
                format!(
                    "destination {host} has several ports ({}); set destination.port.number",
                    ports_of(s)
                ),
            );
            0
        }
        (None, None) => default_port,
    };
    match (svc, hidden) {
        (None, Some(h)) => ctx.diag(
            Code::ReferencedResourceNotFound,
            res,
            format!(
                "destination host {host}: the Service is not exported to namespace {viewer} (its {} annotation is {:?}), so proxies there do not see it and requests to it get 503; add {viewer} to the annotation, or remove it to export the Service everywhere",
                h.export_to_annotation,
                h.export_to.join(",")
            ),
        ),
        (None, None) => ctx.diag(
            Code::ReferencedResourceNotFound,
            res,
            format!("destination host {host} is not a Service in the registry; requests to it get 503 until it exists"),
        ),
        (Some(s), _) if port != 0 && !s.ports.iter().any(|p| p.port == port) => ctx.diag(
            Code::ReferencedResourceNotFound,
            res,
            format!("destination {host} has no port {port}; its ports are {}", ports_of(s)),
        ),
        (Some(_), _) => {}
    }
    ClusterRef {
        host,
        port,
        subset: d.subset.clone(),
    }
}

/// A destination that is a ServiceEntry's host: its port as for a Service's.
fn entry_destination(
    ctx: &mut Ctx<'_>,
    res: &str,
    d: &api::Destination,
    host: String,
    entry: &super::service_entry::EntryHost<'_>,
    default_port: u16,
) -> ClusterRef {
    let ports = entry.port_numbers();
    let list = || ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let port = match (d.port.as_ref(), ports.as_slice()) {
        (Some(p), _) => u16::try_from(p.number).unwrap_or(0),
        (None, [only]) => *only,
        (None, all) if all.contains(&default_port) => default_port,
        (None, _) => {
            ctx.diag(
                Code::VirtualServiceDestinationPortSelectorRequired,
                res,
                format!(
                    "destination {host} has several ports ({}); set destination.port.number",
                    list()
                ),
            );
            0
        }
    };
    if port != 0 && entry.port(port).is_none() {
        ctx.diag(
            Code::ReferencedResourceNotFound,
            res,
            format!(
                "destination {host} has no port {port}; its ServiceEntry's ports are {}",
                list()
            ),
        );
    }
    ClusterRef {
        host,
        port,
        subset: d.subset.clone(),
    }
}

fn ports_of(s: &crate::registry::Service) -> String {
    s.ports
        .iter()
        .map(|p| p.port.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn header_mutations(h: Option<&api::Headers>) -> (HeaderMutation, HeaderMutation) {
    let ops = |o: Option<&api::HeaderOperations>| {
        o.map(|o| HeaderMutation {
            set: o.set.clone().unwrap_or_default(),
            add: o.add.clone().unwrap_or_default(),
            remove: o.remove.clone().unwrap_or_default(),
        })
        .unwrap_or_default()
    };
    (
        ops(h.and_then(|h| h.request.as_ref())),
        ops(h.and_then(|h| h.response.as_ref())),
    )
}

fn retries(rule: &HttpRoute) -> Option<RetryPolicy> {
    let Some(r) = &rule.retries else {
        // Istio's default: two retries on connection failures and 503s.
        return Some(RetryPolicy {
            attempts: 2,
            per_try_timeout_ms: None,
            retry_on: vec![RetryOn::ConnectFailure, RetryOn::RetriableStatusCodes],
            retriable_status_codes: vec![503],
            backoff_base_ms: 25,
            backoff_max_ms: None,
            budget_percent: None,
        });
    };
    let attempts = r.attempts.unwrap_or(2).max(0) as u32;
    if attempts == 0 {
        return None;
    }
    let mut retry_on = Vec::new();
    let mut codes = Vec::new();
    for cond in r
        .retry_on
        .as_deref()
        .unwrap_or("connect-failure,reset,gateway-error")
        .split(',')
        .map(str::trim)
    {
        let on = match cond {
            "5xx" => Some(RetryOn::FiveXx),
            "gateway-error" => Some(RetryOn::GatewayError),
            "reset" => Some(RetryOn::Reset),
            "connect-failure" => Some(RetryOn::ConnectFailure),
            "retriable-4xx" => Some(RetryOn::Retriable4xx),
            "retriable-status-codes" => Some(RetryOn::RetriableStatusCodes),
            other => {
                if let Ok(code) = other.parse::<u16>() {
                    codes.push(code);
                }
                None
            }
        };
        if let Some(on) = on.filter(|o| !retry_on.contains(o)) {
            retry_on.push(on);
        }
    }
    if !codes.is_empty() && !retry_on.contains(&RetryOn::RetriableStatusCodes) {
        retry_on.push(RetryOn::RetriableStatusCodes);
    }
    Some(RetryPolicy {
        attempts,
        per_try_timeout_ms: r.per_try_timeout.as_deref().and_then(millis),
        retry_on,
        retriable_status_codes: codes,
        backoff_base_ms: r.backoff.as_deref().and_then(millis).unwrap_or(25),
        backoff_max_ms: None,
        budget_percent: None,
    })
}

fn fault(f: &api::HttpFaultInjection) -> Option<FaultInjection> {
    let delay = f.delay.as_ref().and_then(|d| {
        Some(FaultDelay {
            fixed_delay_ms: millis(d.fixed_delay.as_deref()?)?,
            percentage: d.percentage.map_or(100.0, |p| p.value),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        Some(FaultAbort {
            http_status: u16::try_from(a.http_status?).ok()?,
            percentage: a.percentage.map_or(100.0, |p| p.value),
        })
    });
    (delay.is_some() || abort.is_some()).then_some(FaultInjection { delay, abort })
}

fn cors(p: &api::CorsPolicy) -> CorsPolicy {
    CorsPolicy {
        allow_origins: p.allow_origins.iter().flatten().filter_map(string_match).collect(),
        allow_methods: p.allow_methods.clone().unwrap_or_default(),
        allow_headers: p.allow_headers.clone().unwrap_or_default(),
        expose_headers: p.expose_headers.clone().unwrap_or_default(),
        max_age_seconds: p.max_age.as_deref().and_then(parse_duration).map(|d| d.as_secs()),
        allow_credentials: p.allow_credentials.unwrap_or(false),
        ignore_unmatched_preflights: p.unmatched_preflights == Some(api::UnmatchedPreflights::Ignore),
    }
}

/// A duration string in whole milliseconds (at least 1 for a non-zero duration).
pub(crate) fn millis(s: &str) -> Option<u64> {
    parse_duration(s).map(|d| (d.as_millis() as u64).max(u64::from(!d.is_zero())))
}

/// Parse a duration; the validator has already reported malformed ones, so here they are
/// simply skipped.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    trellis_api::duration::parse(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(millis("2s"), Some(2000));
        assert_eq!(millis("0.5s"), Some(500));
        assert_eq!(millis("1m30s"), Some(90_000));
        assert_eq!(millis("100us"), Some(1));
        assert_eq!(millis("x"), None);
    }

    #[test]
    fn unmatched_preflights_are_forwarded_unless_ignored() {
        let policy = |v: serde_json::Value| -> api::CorsPolicy { serde_json::from_value(v).expect("a CorsPolicy") };
        let origins = serde_json::json!([{"exact": "https://app.test"}]);
        for (mode, ignore) in [
            (None, false),
            (Some("UNSPECIFIED"), false),
            (Some("FORWARD"), false),
            (Some("IGNORE"), true),
        ] {
            let mut v = serde_json::json!({"allowOrigins": origins});
            if let Some(m) = mode {
                v["unmatchedPreflights"] = serde_json::json!(m);
            }
            assert_eq!(cors(&policy(v)).ignore_unmatched_preflights, ignore, "{mode:?}");
        }
    }

    #[test]
    fn gateway_binding() {
        assert!(applies_to_gateway(&[], "shop", "mesh"));
        assert!(!applies_to_gateway(&[], "shop", "shop/gw"));
        assert!(applies_to_gateway(&["gw".into()], "shop", "shop/gw"));
        assert!(applies_to_gateway(&["other/gw".into(), "mesh".into()], "shop", "mesh"));
        assert!(!applies_to_gateway(&["gw".into()], "shop", "mesh"));
    }
}
