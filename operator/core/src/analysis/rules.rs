//! VirtualService rules that never apply: a rule after one that matches every request, or
//! whose matches all repeat earlier ones (`IST0130`); a match repeating an earlier one
//! (`IST0131`); and hosts of a gateway-bound VirtualService its Gateway does not serve
//! (`IST0132`); and rules that forward without any timeout (`TRL0110`).

use serde_json::Value;
use trellis_api::networking::{HttpMatchRequest, VirtualService};

use super::{Facts, Raw, key_of};
use crate::code::Code;
use crate::compile::{host_matches, resolve_host};
use crate::registry::ObjectKey;

pub(super) fn check(f: &Facts<'_>, out: &mut Vec<Raw>) {
    for vs in &f.snapshot.virtual_services {
        let key = key_of(&vs.metadata);
        unreachable(vs, &key, out);
        unbounded(vs, &key, out);
        gateway_hosts(f, vs, &key, out);
    }
}

/// A match as compared: everything but its name.
fn canonical(m: &HttpMatchRequest) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("name");
    }
    v
}

fn unreachable(vs: &VirtualService, key: &ObjectKey, out: &mut Vec<Raw>) {
    let mut catch_all: Option<usize> = None;
    // Every earlier match, with the rule it belongs to.
    let mut seen: Vec<(Value, usize)> = Vec::new();
    for (i, rule) in vs.spec.http.iter().flatten().enumerate() {
        let name = |i: usize| {
            let r = &vs.spec.http.as_deref().unwrap_or_default()[i];
            match &r.name {
                Some(n) => format!("{n:?} (#{i})"),
                None => format!("#{i}"),
            }
        };
        if let Some(c) = catch_all {
            out.push(Raw::new(
                Code::VirtualServiceUnreachableRule,
                "VirtualService",
                key.clone(),
                format!("spec.http[{i}]"),
                format!("VirtualService rule {} not used (rule {} matches every request before it; only the last rule can have no match). Move this rule before it, or add matches to rule {}", name(i), name(c), name(c)),
            ));
            continue;
        }
        let matches = rule.matches.as_deref().unwrap_or_default();
        if matches.is_empty() {
            catch_all = Some(i);
            continue;
        }
        let dups: Vec<(usize, usize)> = matches
            .iter()
            .enumerate()
            .filter_map(|(j, m)| {
                let c = canonical(m);
                seen.iter().find(|(v, _)| *v == c).map(|(_, r)| (j, *r))
            })
            .collect();
        if dups.len() == matches.len() {
            let earlier: Vec<String> = dups.iter().map(|(_, r)| name(*r)).collect();
            out.push(Raw::new(
                Code::VirtualServiceUnreachableRule,
                "VirtualService",
                key.clone(),
                format!("spec.http[{i}]"),
                format!("VirtualService rule {} not used (its matches are duplicates of matches in rule {}). Remove it, or change its matches", name(i), earlier.join(", ")),
            ));
        } else {
            for (j, r) in &dups {
                out.push(Raw::new(
                    Code::VirtualServiceIneffectiveMatch,
                    "VirtualService",
                    key.clone(),
                    format!("spec.http[{i}].match[{j}]"),
                    format!("VirtualService rule {} match #{j} is not used (duplicate/overlapping match in rule {}). Remove the match", name(i), name(*r)),
                ));
            }
        }
        for m in matches {
            seen.push((canonical(m), i));
        }
    }
}

/// Rules that forward with neither a timeout nor a per-try timeout: the proxy has no default
/// route timeout, so nothing bounds how long such a request waits. (A per-try timeout bounds
/// every attempt, the first included, when retries are on: attempts default to 2, 0 turns
/// them off.)
fn unbounded(vs: &VirtualService, key: &ObjectKey, out: &mut Vec<Raw>) {
    for (i, rule) in vs.spec.http.iter().flatten().enumerate() {
        if rule.route.as_deref().unwrap_or_default().is_empty() || rule.timeout.is_some() {
            continue;
        }
        let per_try = rule
            .retries
            .as_ref()
            .is_some_and(|r| r.per_try_timeout.is_some() && r.attempts != Some(0));
        if per_try {
            continue;
        }
        let name = match &rule.name {
            Some(n) => format!("{n:?} (#{i})"),
            None => format!("#{i}"),
        };
        out.push(Raw::new(
            Code::RouteWithoutTimeout,
            "VirtualService",
            key.clone(),
            format!("spec.http[{i}]"),
            format!("VirtualService rule {name} has no timeout, and the proxy has no default one: a destination that never answers holds the request until the client gives up. Set spec.http[{i}].timeout (e.g. 10s), or retries.perTryTimeout"),
        ));
    }
}

fn gateway_hosts(f: &Facts<'_>, vs: &VirtualService, key: &ObjectKey, out: &mut Vec<Raw>) {
    for (gi, g) in vs.spec.gateways.iter().flatten().enumerate() {
        if g == "mesh" {
            continue;
        }
        let full = if g.contains('/') {
            g.clone()
        } else {
            format!("{}/{g}", key.namespace)
        };
        let Some(gw) = f
            .snapshot
            .gateways
            .iter()
            .find(|gw| key_of(&gw.metadata).to_string() == full)
        else {
            continue; // IST0101, reported with the references
        };
        let gw_ns = key_of(&gw.metadata).namespace;
        let served = |host: &str| {
            gw.spec.servers.iter().flat_map(|s| s.hosts.iter()).any(|h| {
                let (ns, pattern) = match h.split_once('/') {
                    Some(("*", p)) => (None, p),
                    Some((".", p)) => (Some(gw_ns.as_str()), p),
                    Some((ns, p)) => (Some(ns), p),
                    None => (None, h.as_str()),
                };
                ns.is_none_or(|ns| ns == key.namespace)
                    && (host_matches(pattern, host)
                        || host_matches(host, pattern)
                        || host_matches(
                            &resolve_host(pattern, &key.namespace),
                            &resolve_host(host, &key.namespace),
                        ))
            })
        };
        let missing: Vec<&String> = vs.spec.hosts.iter().flatten().filter(|h| !served(h)).collect();
        if !missing.is_empty() {
            let list: Vec<&str> = missing.iter().map(|h| h.as_str()).collect();
            out.push(Raw::new(
                Code::VirtualServiceHostNotFoundInGateway,
                "VirtualService",
                key.clone(),
                format!("spec.gateways[{gi}]"),
                format!("one or more host [{}] defined in VirtualService {key} not found in Gateway {full}; requests for them never reach these rules there. Add them to a server of the Gateway, or remove them from the VirtualService", list.join(", ")),
            ));
        }
    }
}
