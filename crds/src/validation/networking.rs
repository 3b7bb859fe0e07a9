//! Semantic checks of VirtualService, DestinationRule and Gateway.

use std::collections::BTreeSet;
use std::time::Duration;

use super::Findings;
use super::connection_pool::{below_the_rule, connection_pool};
use super::format::{
    MIN_TIMEOUT, MatchUse, authority, cidr, destination, dns_label, duration, export_to, gateway_refs, header_name,
    headers, host, labels, method, not_supported, regex, string_match, uri_path, weights,
};
use super::redirect::redirect;
use crate::networking::*;

/// Retry conditions the proxy implements.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "retriable-status-codes",
];
/// Conditions Envoy (and so Istio) knows that Trellis does not implement yet.
const RETRY_ON_UNSUPPORTED: &[&str] = &[
    "reset-before-request",
    "envoy-ratelimited",
    "refused-stream",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

// ---------------------------------------------------------------------------------------------
// VirtualService
// ---------------------------------------------------------------------------------------------

pub(super) fn virtual_service(spec: &VirtualServiceSpec, f: &mut Findings) {
    let hosts = spec.hosts.as_deref().unwrap_or_default();
    if hosts.is_empty() {
        f.error("spec.hosts", "at least one host is required, e.g. hosts: [reviews]");
    }
    let bound_to_mesh = spec
        .gateways
        .as_deref()
        .is_none_or(|g| g.is_empty() || g.iter().any(|g| g == "mesh"));
    for (i, h) in hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if h == "*" && bound_to_mesh {
            f.error(
                &p,
                "the host \"*\" is allowed only for VirtualServices bound to gateways, not to the mesh",
            );
        } else {
            host(&p, h, true, f);
        }
    }
    let mut seen = BTreeSet::new();
    for (i, h) in hosts.iter().enumerate() {
        if !seen.insert(h) {
            f.error(format!("spec.hosts[{i}]"), format!("duplicate host {h:?}"));
        }
    }
    gateway_refs("spec.gateways", &spec.gateways, f);
    export_to("spec.exportTo", &spec.export_to, f);
    let (http, tls, tcp) = (
        spec.http.as_deref().unwrap_or_default(),
        spec.tls.as_deref().unwrap_or_default(),
        spec.tcp.as_deref().unwrap_or_default(),
    );
    if http.is_empty() && tls.is_empty() && tcp.is_empty() {
        f.error("spec", "no routes: add http, tls or tcp rules");
    }
    let mut names = BTreeSet::new();
    for (i, r) in http.iter().enumerate() {
        let p = format!("spec.http[{i}]");
        if let Some(n) = &r.name
            && !names.insert(n)
        {
            f.error(
                format!("{p}.name"),
                format!("duplicate route name {n:?}; names must be unique"),
            );
        }
        http_route(&p, r, f);
    }
    for (i, r) in tls.iter().enumerate() {
        tls_route(&format!("spec.tls[{i}]"), r, hosts, f);
    }
    for (i, r) in tcp.iter().enumerate() {
        let p = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().flatten().enumerate() {
            let mp = format!("{p}.match[{j}]");
            for (k, s) in m.destination_subnets.iter().flatten().enumerate() {
                cidr(&format!("{mp}.destinationSubnets[{k}]"), s, f);
            }
            labels(&format!("{mp}.sourceLabels"), &m.source_labels, f);
            gateway_refs(&format!("{mp}.gateways"), &m.gateways, f);
            source_namespace(&format!("{mp}.sourceNamespace"), &m.source_namespace, f);
        }
        route_destinations(&p, &r.route, f);
    }
}

fn http_route(p: &str, r: &HttpRoute, f: &mut Findings) {
    let actions = [r.route.is_some(), r.redirect.is_some(), r.direct_response.is_some()];
    match actions.iter().filter(|a| **a).count() {
        0 if r.delegate.is_none() => f.error(p, "a route needs one of route, redirect or directResponse"),
        0 | 1 => {}
        _ => f.error(p, "route, redirect and directResponse are mutually exclusive; keep one"),
    }
    for (j, m) in r.matches.iter().flatten().enumerate() {
        http_match(&format!("{p}.match[{j}]"), m, f);
    }
    // why here as well as by CEL: kube-cel escapes `_` in a key (`mirror__percent`), which the
    // API server does not, so the schema's rule never sees this key offline.
    if r.mirror_percent_snake_case.is_some() {
        let fix = crate::networking::MIRROR_PERCENTAGE_FIX;
        not_supported(&format!("{p}.mirror_percent"), "mirror_percent", fix, f);
    }
    if let Some(dests) = &r.route {
        if dests.is_empty() {
            f.error(format!("{p}.route"), "at least one destination is required");
        }
        for (k, d) in dests.iter().enumerate() {
            let dp = format!("{p}.route[{k}]");
            destination(&format!("{dp}.destination"), &d.destination, f);
            headers(&format!("{dp}.headers"), &d.headers, f);
        }
        let w: Vec<Option<i32>> = dests.iter().map(|d| d.weight).collect();
        weights(&format!("{p}.route"), &w, f);
    }
    if let Some(rd) = &r.redirect {
        redirect(p, r, rd, f);
    }
    match r
        .direct_response
        .as_ref()
        .and_then(|d| d.body.as_ref())
        .and_then(HttpBody::decoded_bytes)
    {
        Some(Err(_)) => f.error(
            format!("{p}.directResponse.body.bytes"),
            "must be base64-encoded; use body.string for text",
        ),
        Some(Ok(bytes)) if std::str::from_utf8(&bytes).is_err() => not_supported(
            &format!("{p}.directResponse.body.bytes"),
            "a body that is not UTF-8 text",
            "send text (body.string, or UTF-8 bytes)",
            f,
        ),
        _ => {}
    }
    if let Some(rw) = &r.rewrite {
        let rp = format!("{p}.rewrite");
        if let Some(u) = &rw.uri
            && !u.is_empty()
        {
            uri_path(&format!("{rp}.uri"), u, f);
        }
        if let Some(a) = &rw.authority {
            authority(&format!("{rp}.authority"), a, f);
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            regex(&format!("{rp}.uriRegexRewrite.match"), &rr.pattern, f);
        }
    }
    let timeout = duration(&format!("{p}.timeout"), &r.timeout, MIN_TIMEOUT, f);
    if let Some(rt) = &r.retries {
        let rp = format!("{p}.retries");
        let per_try = duration(&format!("{rp}.perTryTimeout"), &rt.per_try_timeout, MIN_TIMEOUT, f);
        duration(&format!("{rp}.backoff"), &rt.backoff, MIN_TIMEOUT, f);
        if let (Some(t), Some(pt)) = (timeout, per_try)
            && pt > t
        {
            f.warn(
                format!("{rp}.perTryTimeout"),
                "is longer than the route's timeout, so no retry can happen",
            );
        }
        if let Some(on) = &rt.retry_on {
            for (n, cond) in on.split(',').map(str::trim).enumerate() {
                let is_code = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                if RETRY_ON_UNSUPPORTED.contains(&cond) {
                    f.error(
                        format!("{rp}.retryOn"),
                        format!(
                            "condition {} ({cond:?}) is not supported by Trellis yet; use {} or status codes such as 503",
                            n + 1,
                            RETRY_ON.join(", ")
                        ),
                    );
                } else if !RETRY_ON.contains(&cond) && !is_code {
                    f.error(
                        format!("{rp}.retryOn"),
                        format!(
                            "condition {} ({cond:?}) is unknown; use {} or status codes such as 503",
                            n + 1,
                            RETRY_ON.join(", ")
                        ),
                    );
                }
            }
        }
        if rt.attempts == Some(0) && (rt.per_try_timeout.is_some() || rt.retry_on.is_some()) {
            f.warn(
                format!("{rp}.attempts"),
                "is 0, so retries are off and perTryTimeout/retryOn have no effect",
            );
        }
    }
    if let Some(fault) = &r.fault {
        let fp = format!("{p}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            f.error(&fp, "set delay and/or abort");
        }
        if let Some(d) = &fault.delay {
            if d.fixed_delay.is_none() && d.exponential_delay.is_none() {
                f.error(format!("{fp}.delay.fixedDelay"), "is required, e.g. fixedDelay: 5s");
            }
            duration(&format!("{fp}.delay.fixedDelay"), &d.fixed_delay, MIN_TIMEOUT, f);
        }
        if let Some(a) = &fault.abort
            && a.http_status.is_none()
            && a.grpc_status.is_none()
            && a.http2_error.is_none()
        {
            f.error(format!("{fp}.abort.httpStatus"), "is required, e.g. httpStatus: 503");
        }
    }
    if let Some(m) = &r.mirror {
        destination(&format!("{p}.mirror"), m, f);
        if r.mirrors.is_some() {
            f.error(format!("{p}.mirrors"), "use either mirror or mirrors, not both");
        }
    } else if r.mirror_percentage.is_some() && r.mirrors.is_none() {
        f.warn(format!("{p}.mirrorPercentage"), "has no effect without mirror");
    }
    for (k, m) in r.mirrors.iter().flatten().enumerate() {
        destination(&format!("{p}.mirrors[{k}].destination"), &m.destination, f);
    }
    if let Some(c) = &r.cors_policy {
        cors(&format!("{p}.corsPolicy"), c, f);
    }
    headers(&format!("{p}.headers"), &r.headers, f);
}

fn http_match(p: &str, m: &HttpMatchRequest, f: &mut Findings) {
    if let Some(u) = &m.uri {
        string_match(&format!("{p}.uri"), u, MatchUse::Value, f);
        for v in [&u.exact, &u.prefix].into_iter().flatten() {
            if !v.starts_with('/') {
                f.warn(
                    format!("{p}.uri"),
                    format!("{v:?} does not start with '/', so it matches no request path"),
                );
            }
        }
    }
    if let Some(s) = &m.scheme {
        string_match(&format!("{p}.scheme"), s, MatchUse::Value, f);
        not_supported(
            &format!("{p}.scheme"),
            "matching on the scheme",
            "match on the gateway or port instead",
            f,
        );
    }
    if let Some(me) = &m.method {
        string_match(&format!("{p}.method"), me, MatchUse::Value, f);
        if let Some(e) = &me.exact {
            method(&format!("{p}.method.exact"), e, f);
        }
    }
    if let Some(a) = &m.authority {
        string_match(&format!("{p}.authority"), a, MatchUse::Value, f);
    }
    for (field, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
        for (name, sm) in map.iter().flatten() {
            let hp = format!("{p}.{field}[{name}]");
            header_name(&hp, name, f);
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                f.error(
                    &hp,
                    format!("header names must be lower case; write {:?}", name.to_ascii_lowercase()),
                );
            }
            string_match(&hp, sm, MatchUse::Header, f);
        }
    }
    for (name, sm) in m.query_params.iter().flatten() {
        let qp = format!("{p}.queryParams[{name}]");
        if name.is_empty() {
            f.error(&qp, "query parameter names must not be empty");
        }
        string_match(&qp, sm, MatchUse::QueryParam, f);
    }
    labels(&format!("{p}.sourceLabels"), &m.source_labels, f);
    gateway_refs(&format!("{p}.gateways"), &m.gateways, f);
    source_namespace(&format!("{p}.sourceNamespace"), &m.source_namespace, f);
}

fn source_namespace(p: &str, ns: &Option<String>, f: &mut Findings) {
    if let Some(ns) = ns
        && let Err(why) = dns_label(ns)
    {
        f.error(p, why);
    }
}

fn cors(p: &str, c: &CorsPolicy, f: &mut Findings) {
    for (i, o) in c.allow_origins.iter().flatten().enumerate() {
        string_match(&format!("{p}.allowOrigins[{i}]"), o, MatchUse::Value, f);
        if c.allow_credentials == Some(true) && o.exact.as_deref() == Some("*") {
            f.error(
                format!("{p}.allowOrigins[{i}]"),
                "browsers refuse credentials with the origin \"*\"; list the origins explicitly",
            );
        }
    }
    for (i, m) in c.allow_methods.iter().flatten().enumerate() {
        if m != "*" {
            method(&format!("{p}.allowMethods[{i}]"), m, f);
        }
    }
    for (field, list) in [("allowHeaders", &c.allow_headers), ("exposeHeaders", &c.expose_headers)] {
        for (i, h) in list.iter().flatten().enumerate() {
            if h != "*" {
                header_name(&format!("{p}.{field}[{i}]"), h, f);
            }
        }
    }
    duration(&format!("{p}.maxAge"), &c.max_age, Duration::ZERO, f);
}

fn tls_route(p: &str, r: &TlsRoute, vs_hosts: &[String], f: &mut Findings) {
    if r.matches.is_empty() {
        f.error(format!("{p}.match"), "at least one match with sniHosts is required");
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mp = format!("{p}.match[{j}]");
        if m.sni_hosts.is_empty() {
            f.error(format!("{mp}.sniHosts"), "at least one SNI host is required");
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let sp = format!("{mp}.sniHosts[{k}]");
            host(&sp, sni, true, f);
            if !vs_hosts.iter().any(|h| host_covers(h, sni)) {
                f.error(
                    &sp,
                    format!(
                        "{sni:?} is not one of the VirtualService's hosts ({})",
                        vs_hosts.join(", ")
                    ),
                );
            }
        }
        for (k, s) in m.destination_subnets.iter().flatten().enumerate() {
            cidr(&format!("{mp}.destinationSubnets[{k}]"), s, f);
        }
        labels(&format!("{mp}.sourceLabels"), &m.source_labels, f);
        gateway_refs(&format!("{mp}.gateways"), &m.gateways, f);
        source_namespace(&format!("{mp}.sourceNamespace"), &m.source_namespace, f);
    }
    route_destinations(p, &r.route, f);
}

fn route_destinations(p: &str, route: &Option<Vec<RouteDestination>>, f: &mut Findings) {
    let dests = route.as_deref().unwrap_or_default();
    if dests.is_empty() {
        f.error(format!("{p}.route"), "at least one destination is required");
    }
    for (k, d) in dests.iter().enumerate() {
        destination(&format!("{p}.route[{k}].destination"), &d.destination, f);
    }
    let w: Vec<Option<i32>> = dests.iter().map(|d| d.weight).collect();
    weights(&format!("{p}.route"), &w, f);
}

/// Whether `pattern` (a host, maybe `*.suffix` or `*`) covers `host`.
fn host_covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match (pattern.strip_prefix('*'), host.strip_prefix('*')) {
        (Some(suffix), Some(hsuffix)) => hsuffix.ends_with(suffix),
        (Some(suffix), None) => host.ends_with(suffix),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// DestinationRule
// ---------------------------------------------------------------------------------------------

pub(super) fn destination_rule(spec: &DestinationRuleSpec, f: &mut Findings) {
    host("spec.host", &spec.host, true, f);
    export_to("spec.exportTo", &spec.export_to, f);
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy("spec.trafficPolicy", tp, None, f);
    }
    let mut names = BTreeSet::new();
    for (i, s) in spec.subsets.iter().flatten().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if let Err(why) = dns_label(&s.name) {
            f.error(format!("{p}.name"), why);
        }
        if !names.insert(&s.name) {
            f.error(
                format!("{p}.name"),
                format!("duplicate subset {:?}; subset names must be unique", s.name),
            );
        }
        // A subset without labels selects every endpoint of the host: Istio's egress gateway
        // pattern names one (`subsets: [{name: cnn}]`) only to carry traffic policy or give
        // routes a name, so it is no mistake and draws no warning.
        labels(&format!("{p}.labels"), &s.labels, f);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(&format!("{p}.trafficPolicy"), tp, Some(spec.traffic_policy.as_ref()), f);
        }
    }
}

/// A traffic policy at `p`: the rule's own (`rule`: `None`), or a subset's (`rule`: the rule's
/// policy, if it has one).
///
/// Which retry budget applies where, as Istio resolves a port's and a subset's policy
/// (`compile::policy` in trellis-core): a `portLevelSettings` entry replaces the policy it is
/// in whole and has no budget, so the rule's budget does not reach the rule's port entries; a
/// subset's pool is under its own budget or the rule's; a subset's port entry is under the
/// rule's, unless the rule has an entry for the same port (the subset's own budget does not
/// reach its port entries either).
fn traffic_policy(p: &str, tp: &TrafficPolicy, rule: Option<Option<&TrafficPolicy>>, f: &mut Findings) {
    let rule_level = rule.is_none();
    let rule = rule.flatten();
    let rule_budget = rule.is_some_and(|r| r.retry_budget.is_some());
    let budgeted = rule_budget || tp.retry_budget.is_some();
    port_policy(
        p,
        &tp.load_balancer,
        &tp.connection_pool,
        &tp.outlier_detection,
        &tp.tls,
        f,
    );
    if let Some(pool) = tp.connection_pool.as_ref().filter(|_| !rule_level) {
        below_the_rule(&format!("{p}.connectionPool"), pool, f);
    }
    if budgeted {
        retries_budgeted(&format!("{p}.connectionPool"), &tp.connection_pool, f);
    }
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().flatten().enumerate() {
        let pp = format!("{p}.portLevelSettings[{i}]");
        match &pl.port {
            None => f.error(format!("{pp}.port"), "is required, e.g. port: {number: 8080}"),
            Some(port) => {
                if !ports.insert(port.number) {
                    f.error(
                        format!("{pp}.port.number"),
                        format!("port {} has settings already", port.number),
                    );
                }
            }
        }
        port_policy(
            &pp,
            &pl.load_balancer,
            &pl.connection_pool,
            &pl.outlier_detection,
            &pl.tls,
            f,
        );
        if let Some(pool) = &pl.connection_pool {
            below_the_rule(&format!("{pp}.connectionPool"), pool, f);
        }
        let number = pl.port.as_ref().map(|port| port.number);
        let rule_has_port = rule.is_some_and(|r| {
            r.port_level_settings
                .iter()
                .flatten()
                .any(|e| e.port.as_ref().map(|port| port.number) == number)
        });
        if rule_budget && !rule_has_port {
            retries_budgeted(&format!("{pp}.connectionPool"), &pl.connection_pool, f);
        }
    }
}

/// Under a retry budget, `maxRetries` has no effect: Envoy's budget replaces the threshold.
fn retries_budgeted(p: &str, pool: &Option<ConnectionPoolSettings>, f: &mut Findings) {
    if pool
        .as_ref()
        .and_then(|c| c.http.as_ref())
        .is_some_and(|h| h.max_retries.is_some())
    {
        f.warn(
            format!("{p}.http.maxRetries"),
            "has no effect under the retryBudget that applies here, which bounds the retries in flight in its place (as in Envoy); remove one of them",
        );
    }
}

fn port_policy(
    p: &str,
    lb: &Option<LoadBalancerSettings>,
    pool: &Option<ConnectionPoolSettings>,
    od: &Option<OutlierDetection>,
    tls: &Option<ClientTlsSettings>,
    f: &mut Findings,
) {
    if let Some(lb) = lb {
        load_balancer(&format!("{p}.loadBalancer"), lb, f);
    }
    if let Some(pool) = pool {
        connection_pool(&format!("{p}.connectionPool"), pool, f);
    }
    if let Some(od) = od {
        let op = format!("{p}.outlierDetection");
        duration(&format!("{op}.interval"), &od.interval, MIN_TIMEOUT, f);
        duration(
            &format!("{op}.baseEjectionTime"),
            &od.base_ejection_time,
            MIN_TIMEOUT,
            f,
        );
        // consecutive5xxErrors defaults to 5 when unset; the others to off.
        let never_ejects = od.consecutive_5xx_errors == Some(0)
            && od.consecutive_gateway_errors.unwrap_or(0) == 0
            && od.consecutive_local_origin_failures.unwrap_or(0) == 0;
        if never_ejects {
            f.warn(&op, "every error threshold is 0, so no endpoint is ever ejected");
        }
        if od.consecutive_local_origin_failures.is_some() && od.split_external_local_origin_errors != Some(true) {
            f.warn(
                format!("{op}.consecutiveLocalOriginFailures"),
                "has effect only with splitExternalLocalOriginErrors: true",
            );
        }
    }
    if let Some(tls) = tls {
        client_tls(&format!("{p}.tls"), tls, f);
    }
}

fn load_balancer(p: &str, lb: &LoadBalancerSettings, f: &mut Findings) {
    if let Some(ch) = &lb.consistent_hash {
        let cp = format!("{p}.consistentHash");
        if let Some(h) = &ch.http_header_name {
            header_name(&format!("{cp}.httpHeaderName"), h, f);
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                f.error(format!("{cp}.httpCookie.name"), "is required");
            }
            duration(&format!("{cp}.httpCookie.ttl"), &c.ttl, Duration::ZERO, f);
            if c.ttl.is_some() {
                not_supported(
                    &format!("{cp}.httpCookie.ttl"),
                    "a cookie ttl (the proxy generating session cookies)",
                    "remove ttl and let the application set the cookie",
                    f,
                );
            }
        }
        if ch.use_source_ip == Some(false) {
            f.error(
                format!("{cp}.useSourceIp"),
                "false hashes on nothing; set true or choose another key",
            );
        }
        if let Some(q) = &ch.http_query_parameter_name
            && q.is_empty()
        {
            f.error(format!("{cp}.httpQueryParameterName"), "must not be empty");
        }
        if let Some(size) = ch.maglev.as_ref().and_then(|m| m.table_size)
            && !is_prime(size)
        {
            f.error(
                format!("{cp}.maglev.tableSize"),
                format!("{size} is not prime; Maglev needs a prime table size such as 65537"),
            );
        }
        if lb.warmup_duration_secs.is_some() || lb.warmup.is_some() {
            f.error(
                format!("{p}.warmup"),
                "warm-up cannot be combined with consistentHash; use ROUND_ROBIN or LEAST_REQUEST",
            );
        }
    }
    if lb.simple == Some(SimpleLb::Passthrough) {
        not_supported(
            &format!("{p}.simple"),
            "PASSTHROUGH",
            "use LEAST_REQUEST, ROUND_ROBIN or RANDOM",
            f,
        );
    }
    for (field, set) in [
        ("warmupDurationSecs", lb.warmup_duration_secs.is_some()),
        ("warmup", lb.warmup.is_some()),
    ] {
        if set {
            not_supported(
                &format!("{p}.{field}"),
                "slow start (warm-up)",
                "remove it; new endpoints get their full share at once",
                f,
            );
        }
    }
    if lb.simple == Some(SimpleLb::LeastConn) {
        f.warn(
            format!("{p}.simple"),
            "LEAST_CONN is deprecated; it means LEAST_REQUEST",
        );
    }
    duration(
        &format!("{p}.warmupDurationSecs"),
        &lb.warmup_duration_secs,
        Duration::from_secs(1),
        f,
    );
    if let Some(w) = &lb.warmup {
        duration(
            &format!("{p}.warmup.duration"),
            &Some(w.duration.clone()),
            Duration::from_secs(1),
            f,
        );
        if let Some(mp) = w.minimum_percent
            && !(0.0..=100.0).contains(&mp)
        {
            f.error(
                format!("{p}.warmup.minimumPercent"),
                format!("{mp} is out of range; allowed: 0 to 100"),
            );
        }
        if let Some(a) = w.aggression
            && a < 1.0
        {
            f.error(
                format!("{p}.warmup.aggression"),
                format!("{a} is out of range; allowed: 1.0 or more (1.0 is linear)"),
            );
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn client_tls(p: &str, tls: &ClientTlsSettings, f: &mut Findings) {
    let files = tls.client_certificate.is_some() || tls.private_key.is_some();
    let sans = tls.subject_alt_names.as_deref().unwrap_or_default();
    let skip = tls.insecure_skip_verify == Some(true);
    match tls.mode {
        Some(ClientTlsMode::IstioMutual | ClientTlsMode::MeshMutual) => {
            for (field, set) in [
                ("clientCertificate", tls.client_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
                ("caCrl", tls.ca_crl.is_some()),
                ("credentialName", tls.credential_name.is_some()),
                ("insecureSkipVerify", skip),
            ] {
                if set {
                    f.error(
                        format!("{p}.{field}"),
                        "mesh mutual TLS uses the workload's own certificate and the mesh's roots; remove it (or use mode MUTUAL)",
                    );
                }
            }
            for (i, san) in sans.iter().enumerate() {
                if trellis_contract::SpiffeId::parse(san).is_err() {
                    f.error(
                        format!("{p}.subjectAltNames[{i}]"),
                        format!("{san:?}: mesh peers are verified by SPIFFE identity; write spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"),
                    );
                }
            }
        }
        Some(ClientTlsMode::Mutual | ClientTlsMode::Simple) => {
            let mutual = tls.mode == Some(ClientTlsMode::Mutual);
            if tls.credential_name.is_some() {
                for (field, set) in [
                    ("clientCertificate", tls.client_certificate.is_some()),
                    ("privateKey", tls.private_key.is_some()),
                    ("caCertificates", tls.ca_certificates.is_some()),
                ] {
                    if set {
                        f.error(
                            format!("{p}.{field}"),
                            "credentialName already gives the certificate, key and CA (tls.crt, tls.key, ca.crt); remove it or credentialName",
                        );
                    }
                }
                if tls.ca_crl.is_some() {
                    f.error(
                        format!("{p}.caCrl"),
                        "CRL is not supported with credentialName (Istio denies both): put the CRL in the Secret as ca.crl, and remove caCrl",
                    );
                }
            } else if mutual && !(tls.client_certificate.is_some() && tls.private_key.is_some()) {
                f.error(p, "MUTUAL needs credentialName, or clientCertificate and privateKey");
            } else if !mutual && files {
                f.error(
                    p,
                    "SIMPLE sends no client certificate; remove clientCertificate/privateKey or use MUTUAL",
                );
            }
            if skip && (tls.ca_certificates.is_some() || tls.ca_crl.is_some() || !sans.is_empty()) {
                f.error(
                    format!("{p}.insecureSkipVerify"),
                    "cannot be set with caCertificates, caCrl or subjectAltNames (nothing would check them); remove them or insecureSkipVerify",
                );
            }
        }
        Some(ClientTlsMode::Disable) | None => {
            if files
                || tls.ca_certificates.is_some()
                || tls.ca_crl.is_some()
                || tls.credential_name.is_some()
                || tls.sni.is_some()
                || !sans.is_empty()
                || skip
            {
                f.warn(
                    p,
                    "certificates, caCrl, sni, subjectAltNames and insecureSkipVerify are not used unless mode is SIMPLE, MUTUAL or ISTIO_MUTUAL",
                );
            }
        }
    }
    if skip {
        f.warn(
            format!("{p}.insecureSkipVerify"),
            "server certificates are not verified; use only for testing",
        );
    }
    if let Some(sni) = &tls.sni {
        host(&format!("{p}.sni"), sni, false, f);
    }
    for (i, san) in sans.iter().enumerate() {
        if san.is_empty() || san.chars().any(|c| c.is_whitespace() || c.is_control()) {
            f.error(format!("{p}.subjectAltNames[{i}]"), format!("{san:?} is not a name"));
        }
    }
}
