//! Checks of individual values shared by every kind: object metadata, durations, hosts and
//! wildcards, names, labels, regexes, header names, HTTP methods, CIDRs, SPIFFE principals,
//! and Istio's `StringMatch`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use trellis_contract::syntax::{self, HeaderDirection};

use super::Findings;
use crate::networking::{Destination, HeaderOperations, Headers, StringMatch};

/// The cluster DNS suffix services resolve under.
pub(super) const CLUSTER_SUFFIX: &str = "svc.cluster.local";

/// Standard HTTP methods (RFC 9110 plus PATCH).
pub(super) const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `metadata.name` and `metadata.namespace`.
pub(super) fn metadata(obj: &Value, namespaced: bool, f: &mut Findings) {
    let Some(meta) = obj.get("metadata").and_then(Value::as_object) else {
        return f.error("metadata", "is required, with at least a name");
    };
    match (
        meta.get("name").and_then(Value::as_str),
        meta.get("generateName").and_then(Value::as_str),
    ) {
        (Some(name), _) => {
            if let Err(why) = dns_subdomain(name) {
                f.error("metadata.name", why);
            }
        }
        (None, Some(_)) => {}
        (None, None) => f.error("metadata.name", "is required"),
    }
    match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !namespaced => f.error(
            "metadata.namespace",
            format!("the kind is cluster-scoped; remove namespace {ns:?}"),
        ),
        Some(ns) => {
            if let Err(why) = dns_label(ns) {
                f.error("metadata.namespace", why);
            }
        }
        None => {}
    }
}

/// A construct Trellis accepts in the schema but does not implement: an error that says so,
/// naming `path`, never a silent drop.
pub(super) fn not_supported(path: &str, what: &str, fix: &str, f: &mut Findings) {
    f.error(path, format!("{what} {}; {fix}", crate::schema::NOT_SUPPORTED));
}

/// Istio's minimum for timeouts and delays.
pub(super) const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// A duration field that must be at least `min` (Istio's minimum is 1ms for timeouts).
pub(super) fn duration(path: &str, value: &Option<String>, min: Duration, f: &mut Findings) -> Option<Duration> {
    let s = value.as_deref()?;
    match crate::duration::parse(s) {
        Ok(d) if d < min => {
            f.error(path, format!("{s:?} is too short; the minimum is {}", human(min)));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            f.error(path, e);
            None
        }
    }
}

/// `d` as a duration field would write it: in hours, minutes, seconds or milliseconds.
pub(super) fn human(d: Duration) -> String {
    if d.as_secs() >= 3600 && d.as_secs().is_multiple_of(3600) {
        format!("{}h", d.as_secs() / 3600)
    } else if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) {
        format!("{}m", d.as_secs() / 60)
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// An RFC 1123 label: lower-case alphanumerics and `-`, at most 63 characters.
pub(super) fn dns_label(s: &str) -> Result<(), String> {
    if syntax::is_dns1123_label(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// An RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(super) fn dns_subdomain(s: &str) -> Result<(), String> {
    if !syntax::is_dns1123_subdomain(s) {
        Err(format!(
            "{s:?} is not a valid name: use lower-case letters, digits, '-' and '.', at most 253 characters"
        ))
    } else {
        Ok(())
    }
}

/// A host in a VirtualService, DestinationRule or destination: a short name, an FQDN, or (when
/// `wildcard`) `*` / `*.suffix`.
pub(super) fn host(path: &str, h: &str, wildcard: bool, f: &mut Findings) {
    if h.is_empty() {
        return f.error(path, "host must not be empty");
    }
    let name = match h.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        Some(_) => {
            return f.error(
                path,
                format!("wildcard host {h:?} is not allowed here; name one service"),
            );
        }
        None if h == "*" && wildcard => return,
        None if h == "*" => return f.error(path, "wildcard host \"*\" is not allowed here; name one service"),
        None => h,
    };
    if name.contains('*') {
        return f.error(
            path,
            format!("{h:?}: '*' is allowed only as the first label, as in *.example.com"),
        );
    }
    if h.parse::<std::net::IpAddr>().is_ok() {
        return f.error(path, format!("{h:?} is an IP address; use the service's host name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return f.error(path, format!("{h:?} must be lower case"));
    }
    if dns_subdomain(name).is_err() {
        return f.error(
            path,
            format!("{h:?} is not a valid host: use a service name (reviews), an FQDN (reviews.shop.svc.cluster.local) or a wildcard (*.example.com)"),
        );
    }
    short_name_hint(path, h, f);
}

/// Istio reads a host with no dot as a short name in the resource's namespace, and a host with
/// dots as fully qualified. `reviews.shop` is thus read as the FQDN `reviews.shop`, which is
/// almost never what was meant.
fn short_name_hint(path: &str, h: &str, f: &mut Findings) {
    let labels = h.split('.').count();
    let in_cluster = h.ends_with(&format!(".{CLUSTER_SUFFIX}")) || h.ends_with(".svc");
    if (labels == 2 || labels == 3) && !in_cluster && !h.starts_with("*.") && !looks_public(h) {
        let first = h.split('.').next().unwrap_or(h);
        let second = h.split('.').nth(1).unwrap_or_default();
        f.warn(
            path,
            format!(
                "{h:?} is read as a fully qualified name; for the service {first} in namespace {second} write {first}.{second}.{CLUSTER_SUFFIX} (or just {first} from within {second})"
            ),
        );
    }
}

fn looks_public(h: &str) -> bool {
    const TLDS: &[&str] = &[
        "com", "org", "net", "io", "dev", "app", "co", "uk", "de", "fr", "info", "local", "internal", "example",
        "test", "cloud", "ai", "edu", "gov",
    ];
    h.rsplit('.').next().is_some_and(|tld| TLDS.contains(&tld))
}

/// A destination: its host (no wildcards), subset name and port.
pub(super) fn destination(path: &str, d: &Destination, f: &mut Findings) {
    host(&format!("{path}.host"), &d.host, false, f);
    if let Some(subset) = &d.subset
        && let Err(why) = dns_label(subset)
    {
        f.error(format!("{path}.subset"), why);
    }
}

/// A Kubernetes label key (`prefix/name`) and value.
pub(super) fn labels(path: &str, labels: &Option<BTreeMap<String, String>>, f: &mut Findings) {
    for (k, v) in labels.iter().flatten() {
        if let Err(why) = label_key(k) {
            f.error(format!("{path}[{k}]"), why);
        }
        if let Err(why) = label_value(v) {
            f.error(format!("{path}[{k}]"), why);
        }
    }
}

pub(super) fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        dns_subdomain(p).map_err(|_| format!("label key {k:?} has an invalid prefix {p:?}; use a DNS subdomain"))?;
    }
    if label_value(name).is_err() || name.is_empty() {
        return Err(format!(
            "label key {k:?} is invalid: the name part must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

pub(super) fn label_value(v: &str) -> Result<(), String> {
    let ok = v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && (v.is_empty()
            || (v.as_bytes()[0].is_ascii_alphanumeric() && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "label value {v:?} is invalid: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// Compile an RE2-syntax regular expression with a bounded program size.
pub(super) fn regex(path: &str, re: &str, f: &mut Findings) {
    // why: bound compiled size so a hostile pattern cannot exhaust the proxy's memory.
    if let Err(e) = regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
        let detail = e.to_string().lines().last().unwrap_or_default().trim().to_string();
        f.error(
            path,
            format!("regex {re:?} does not compile ({detail}); use RE2 syntax"),
        );
    }
}

/// An HTTP header field name (RFC 9110 token).
pub(super) fn header_name(path: &str, name: &str, f: &mut Findings) {
    if !syntax::is_header_name(name) {
        f.error(
            path,
            format!("{name:?} is not a valid header name: use letters, digits and - (a token per RFC 9110)"),
        );
    }
}

/// An HTTP method; upper case, warned when not a standard one.
pub(super) fn method(path: &str, m: &str, f: &mut Findings) {
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_') {
        return f.error(
            path,
            format!("{m:?} is not an HTTP method; use GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS"),
        );
    }
    if m.bytes().any(|b| b.is_ascii_lowercase()) {
        return f.error(
            path,
            format!("methods are case-sensitive; write {:?}", m.to_ascii_uppercase()),
        );
    }
    if !HTTP_METHODS.contains(&m) {
        f.warn(
            path,
            format!(
                "{m:?} is not a standard HTTP method; standard: {}",
                HTTP_METHODS.join(", ")
            ),
        );
    }
}

/// An IP address or CIDR block.
pub(super) fn cidr(path: &str, s: &str, f: &mut Findings) {
    match syntax::parse_cidr(s) {
        Some(net) if net.trunc() != net => {
            f.warn(path, format!("{s:?} has host bits set; it is read as {}", net.trunc()));
        }
        Some(_) => {}
        None => f.error(
            path,
            format!("{s:?} is not an IP address or CIDR; write e.g. 10.0.0.1 or 10.0.0.0/16"),
        ),
    }
}

/// A SPIFFE principal as written in AuthorizationPolicy: `<trust-domain>/ns/<ns>/sa/<sa>`,
/// `*`, or with a `*` prefix or suffix.
pub(super) fn principal(path: &str, p: &str, f: &mut Findings) {
    if p == "*" {
        return;
    }
    if let Some(rest) = p.strip_prefix(trellis_contract::SpiffeId::SCHEME) {
        return f.error(path, format!("write principals without the spiffe:// scheme: {rest:?}"));
    }
    if let Err(why) = wildcard_position(p) {
        return f.error(path, why);
    }
    if p.starts_with('*') || p.ends_with('*') {
        return;
    }
    let parts: Vec<&str> = p.split('/').collect();
    let ok = parts.len() == 5
        && !parts[0].is_empty()
        && parts[1] == "ns"
        && dns_label(parts[2]).is_ok()
        && parts[3] == "sa"
        && dns_subdomain(parts[4]).is_ok();
    if !ok {
        f.error(path, format!("{p:?} is not a principal; write <trust-domain>/ns/<namespace>/sa/<service-account>, e.g. cluster.local/ns/shop/sa/web"));
    }
}

/// Istio's wildcard rule for strings in AuthorizationPolicy: one `*`, only as prefix or suffix.
pub(super) fn wildcard_position(s: &str) -> Result<(), String> {
    let stars = s.matches('*').count();
    let ok = stars == 0 || s == "*" || (stars == 1 && (s.starts_with('*') || s.ends_with('*')));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?}: '*' is allowed only once, as a prefix or a suffix (e.g. *.example.com or /api/*)"
        ))
    }
}

/// A port number written as a string (AuthorizationPolicy ports, PeerAuthentication keys).
pub(super) fn port_string(path: &str, s: &str, f: &mut Findings) -> Option<u16> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Some(p),
        _ => {
            f.error(path, format!("{s:?} is not a port; use a number from 1 to 65535"));
            None
        }
    }
}

/// How a StringMatch may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MatchUse {
    /// Exactly one of exact/prefix/regex.
    Value,
    /// Headers: an empty match means "the header is present".
    Header,
    /// Query parameters: exact or regex only.
    QueryParam,
}

/// Istio's StringMatch. (CEL already rejects several set at once.)
pub(super) fn string_match(path: &str, m: &StringMatch, usage: MatchUse, f: &mut Findings) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if set == 0 && usage != MatchUse::Header {
        f.error(path, "set one of exact, prefix or regex");
    }
    if usage == MatchUse::QueryParam && m.prefix.is_some() {
        f.error(
            format!("{path}.prefix"),
            "query parameters match with exact or regex only",
        );
    }
    if let Some(re) = &m.regex {
        regex(&format!("{path}.regex"), re, f);
    }
}

/// Request/response header operations.
pub(super) fn headers(path: &str, h: &Option<Headers>, f: &mut Findings) {
    let Some(h) = h else { return };
    header_operations(&format!("{path}.request"), &h.request, HeaderDirection::Request, f);
    header_operations(&format!("{path}.response"), &h.response, HeaderDirection::Response, f);
}

fn header_operations(path: &str, ops: &Option<HeaderOperations>, direction: HeaderDirection, f: &mut Findings) {
    let Some(ops) = ops else { return };
    for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map.iter().flatten() {
            let p = format!("{path}.{field}[{name}]");
            if let Err(why) = syntax::route_may_change(name, direction) {
                f.error(&p, why.to_string());
            }
            if !syntax::is_header_value(value) {
                f.error(
                    &p,
                    "header values must not contain CR, LF, NUL or other control characters",
                );
            }
        }
    }
    for (i, name) in ops.remove.iter().flatten().enumerate() {
        if let Err(why) = syntax::route_may_change(name, direction) {
            f.error(format!("{path}.remove[{i}]"), why.to_string());
        }
    }
}

/// Weights of several destinations: each 0-100 (the schema checks), summing to 100 when more
/// than one; a single destination takes everything.
pub(super) fn weights(path: &str, weights: &[Option<i32>], f: &mut Findings) {
    match weights {
        [] => {}
        [Some(w)] if *w != 100 && *w != 0 => f.error(
            format!("{path}[0].weight"),
            format!("a single destination receives all traffic; set weight to 100 or omit it (got {w})"),
        ),
        [_] => {}
        many => {
            if many.iter().all(Option::is_none) {
                return f.error(
                    path,
                    "with several destinations, give each a weight; the weights must sum to 100",
                );
            }
            let sum: i64 = many.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
            if sum != 100 {
                f.error(
                    format!("{path}[{}].weight", many.len() - 1),
                    format!("the weights sum to {sum}; they must sum to 100"),
                );
            }
        }
    }
}

/// `exportTo`: `.`, `*`, `~` or namespace names.
pub(super) fn export_to(path: &str, values: &Option<Vec<String>>, f: &mut Findings) {
    let Some(values) = values else { return };
    for (i, why) in export_to_problems(values) {
        f.error(format!("{path}[{i}]"), why);
    }
}

/// What is wrong with the entries of an `exportTo` list, by index: a resource's field, or a
/// Service's `networking.trellis.dev/exportTo` annotation split at its commas. Each entry is
/// `.` (its namespace), `*` (every namespace), `~` (none, alone) or a namespace name.
pub fn export_to_problems(values: &[String]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v.as_str() {
            "." | "*" => {}
            "~" if values.len() == 1 => {}
            "~" => out.push((i, "\"~\" (hidden) cannot be combined with other values".to_string())),
            ns => {
                if let Err(why) = dns_label(ns) {
                    out.push((i, format!("{why}; or use \".\" (this namespace) or \"*\" (all)")));
                }
            }
        }
    }
    out
}

/// `gateways` of a VirtualService or match: `mesh`, `name` or `namespace/name`.
pub(super) fn gateway_refs(path: &str, gws: &Option<Vec<String>>, f: &mut Findings) {
    for (i, g) in gws.iter().flatten().enumerate() {
        if g == "mesh" {
            continue;
        }
        let (ns, name) = g
            .split_once('/')
            .map(|(a, b)| (Some(a), b))
            .unwrap_or((None, g.as_str()));
        let ns_ok = ns.is_none_or(|n| dns_label(n).is_ok());
        if !ns_ok || dns_subdomain(name).is_err() {
            f.error(
                format!("{path}[{i}]"),
                format!("{g:?} is not a gateway reference; write mesh, <gateway> or <namespace>/<gateway>"),
            );
        }
    }
}

/// A URI path: starts with `/`, no spaces or control characters.
pub(super) fn uri_path(p: &str, u: &str, f: &mut Findings) {
    if !u.starts_with('/') {
        f.error(p, format!("{u:?} must be a path starting with '/'"));
    }
    if u.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        f.error(p, "must not contain spaces or control characters");
    }
}

/// A `host[:port]` authority: a DNS subdomain or an IP address, with an optional port.
pub(super) fn authority(p: &str, a: &str, f: &mut Findings) {
    let host_part = match a.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => a,
    };
    if dns_subdomain(host_part).is_err() && host_part.parse::<std::net::IpAddr>().is_err() {
        f.error(p, format!("{a:?} is not a host[:port]"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(crate::duration::parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(crate::duration::parse("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(crate::duration::parse("100ms").unwrap(), Duration::from_millis(100));
        for bad in ["", "5", "s", "1x", "1.2.3s", "-1s", "1 s"] {
            assert!(crate::duration::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_and_names() {
        assert!(dns_label("shop-1").is_ok());
        assert!(dns_label("Shop").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("bad key").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("-x").is_err());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_position("*.example.com").is_ok());
        assert!(wildcard_position("/api/*").is_ok());
        assert!(wildcard_position("/a/*/b").is_err());
        assert!(wildcard_position("*a*").is_err());
    }
}
