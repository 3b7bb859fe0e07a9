//! Semantic checks of PeerAuthentication, RequestAuthentication and AuthorizationPolicy.

use super::Findings;
use super::format::{
    cidr, dns_label, dns_subdomain, duration, header_name, labels, method, port_string, principal, wildcard_position,
};
use crate::security::*;

use std::time::Duration;
use trellis_contract::jwt::parse_jwks;
use trellis_contract::syntax::{HeaderDirection, route_may_change};
use trellis_contract::{CONDITION_KEYS, condition_claim, condition_header};

pub(super) fn peer_authentication(spec: &PeerAuthenticationSpec, f: &mut Findings) {
    let selector = spec.selector.as_ref().and_then(|s| s.match_labels.as_ref());
    labels("spec.selector.matchLabels", &selector.cloned(), f);
    if let Some(ports) = &spec.port_level_mtls {
        if selector.is_none_or(|l| l.is_empty()) {
            f.error(
                "spec.portLevelMtls",
                "port-level modes need a workload selector (spec.selector.matchLabels), because ports belong to workloads",
            );
        }
        for (port, m) in ports {
            let p = format!("spec.portLevelMtls[{port}]");
            port_string(&p, port, f);
            if m.mode.is_none() {
                f.error(format!("{p}.mode"), "is required: UNSET, DISABLE, PERMISSIVE or STRICT");
            }
        }
    }
    if spec.mtls.as_ref().and_then(|m| m.mode) == Some(MtlsMode::Disable) {
        f.warn(
            "spec.mtls.mode",
            "DISABLE turns off mutual TLS: traffic to these workloads is plaintext and unauthenticated",
        );
    }
}

pub(super) fn authorization_policy(spec: &AuthorizationPolicySpec, f: &mut Findings) {
    let selector = spec.selector.as_ref().and_then(|s| s.match_labels.as_ref());
    labels("spec.selector.matchLabels", &selector.cloned(), f);
    let action = spec.action.unwrap_or(AuthzAction::Allow);
    if action == AuthzAction::Custom {
        f.error(
            "spec.action",
            "CUSTOM (external authorization) is not supported by Trellis yet; use ALLOW, DENY or AUDIT",
        );
    }
    target_refs(&spec.target_ref, &spec.target_refs, f);
    let rules = spec.rules.as_deref().unwrap_or_default();
    if spec.rules.is_none() && action == AuthzAction::Allow {
        f.warn(
            "spec.rules",
            "an ALLOW policy without rules matches nothing, so it denies every request to the selected workloads",
        );
    }
    if rules.is_empty() && action == AuthzAction::Deny {
        f.warn(
            "spec.rules",
            "a DENY policy without rules never matches, so it denies nothing",
        );
    }
    for (i, r) in rules.iter().enumerate() {
        rule(&format!("spec.rules[{i}]"), r, f);
    }
}

/// The longest `timeout` of a `jwksUri` fetch.
const MAX_JWKS_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn request_authentication(spec: &RequestAuthenticationSpec, f: &mut Findings) {
    let selector = spec.selector.as_ref().and_then(|s| s.match_labels.as_ref());
    labels("spec.selector.matchLabels", &selector.cloned(), f);
    target_refs(&spec.target_ref, &spec.target_refs, f);
    let rules = spec.jwt_rules.as_deref().unwrap_or_default();
    if rules.is_empty() {
        f.warn(
            "spec.jwtRules",
            "no rules: every token is refused as from an unknown issuer (401)",
        );
    }
    for (i, r) in rules.iter().enumerate() {
        let p = format!("spec.jwtRules[{i}]");
        if r.issuer.trim().is_empty() {
            f.error(
                format!("{p}.issuer"),
                "is required: the `iss` claim tokens of this rule carry",
            );
        }
        if rules[..i].iter().any(|o| o.issuer == r.issuer) {
            f.error(
                format!("{p}.issuer"),
                format!(
                    "{:?} is already the issuer of an earlier rule; merge the two rules",
                    r.issuer
                ),
            );
        }
        jwt_keys(&p, r, f);
        for (j, a) in r.audiences.iter().flatten().enumerate() {
            if a.is_empty() {
                f.error(format!("{p}.audiences[{j}]"), "must not be empty");
            }
        }
        for (j, h) in r.from_headers.iter().flatten().enumerate() {
            header_name(&format!("{p}.fromHeaders[{j}].name"), &h.name, f);
        }
        for (field, list) in [("fromParams", &r.from_params), ("fromCookies", &r.from_cookies)] {
            for (j, v) in list.iter().flatten().enumerate() {
                let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && !b";=&,\"".contains(&b));
                if !ok {
                    f.error(
                        format!("{p}.{field}[{j}]"),
                        format!("{v:?} is not a parameter or cookie name"),
                    );
                }
            }
        }
        let outputs = r
            .output_payload_to_header
            .iter()
            .map(|h| (format!("{p}.outputPayloadToHeader"), h))
            .chain(
                r.output_claim_to_headers
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(j, c)| (format!("{p}.outputClaimToHeaders[{j}].header"), &c.header)),
            );
        for (path, h) in outputs {
            if let Err(why) = route_may_change(h, HeaderDirection::Request) {
                f.error(path, why.to_string());
            }
        }
        for (j, c) in r.output_claim_to_headers.iter().flatten().enumerate() {
            if c.claim.is_empty() || c.claim.split('.').any(str::is_empty) {
                f.error(
                    format!("{p}.outputClaimToHeaders[{j}].claim"),
                    format!("{:?} is not a claim; name one, or a nested one as a.b", c.claim),
                );
            }
        }
    }
}

/// Where a rule's keys come from: inline `jwks` (parsed here, as the proxy parses it),
/// `jwksUri` (fetched by the operator), or with neither the issuer's OpenID Connect discovery
/// (the issuer must then be a URL; [`KeySource`]).
fn jwt_keys(p: &str, r: &JwtRule, f: &mut Findings) {
    // why here as well as by CEL: kube-cel escapes `_` in a key (`jwks__uri`), which the API
    // server does not, so the schema's rule never sees this key offline.
    if r.jwks_uri_snake_case.is_some() {
        let fix = crate::security::JWKS_URI_FIX;
        super::format::not_supported(&format!("{p}.jwks_uri"), "jwks_uri", fix, f);
    }
    match (&r.jwks, &r.jwks_uri) {
        (Some(_), Some(_)) => f.error(format!("{p}.jwks"), "set only one of jwks or jwksUri"),
        (None, None) => {
            if let Err(why) = discoverable(&r.issuer) {
                f.error(
                    format!("{p}.issuer"),
                    format!(
                        "{:?} {why}: with neither jwks nor jwksUri the operator discovers the keys from the issuer (OpenID Connect, ISSUER/.well-known/openid-configuration); set jwks (the key set inline) or jwksUri (the operator fetches it), or write the issuer as the provider's https:// URL",
                        r.issuer
                    ),
                );
            }
        }
        (Some(jwks), None) => match parse_jwks(jwks) {
            Ok(set) => {
                for skipped in set.skipped {
                    f.warn(format!("{p}.jwks"), format!("{skipped}: the key is left out"));
                }
            }
            Err(e) => f.error(
                format!("{p}.jwks"),
                format!("{e}; paste the issuer's public JSON Web Key Set"),
            ),
        },
        (None, Some(uri)) => {
            if let Err(why) = parse_jwks_uri(uri) {
                f.error(
                    format!("{p}.jwksUri"),
                    format!("{uri:?} {why}; the operator fetches the key set from this URL"),
                );
            }
        }
    }
    if let Some(t) = duration(&format!("{p}.timeout"), &r.timeout, Duration::from_millis(1), f)
        && t > MAX_JWKS_TIMEOUT
    {
        f.error(format!("{p}.timeout"), "at most 60s");
    }
}

/// `targetRef`/`targetRefs` of a policy: Services or Gateways of its own namespace.
fn target_refs(one: &Option<PolicyTargetReference>, many: &Option<Vec<PolicyTargetReference>>, f: &mut Findings) {
    if one.is_some() && many.is_some() {
        f.error("spec.targetRef", "use either targetRef or targetRefs, not both");
    }
    let refs = one.iter().chain(many.iter().flatten());
    for (i, r) in refs.enumerate() {
        let p = if one.is_some() && i == 0 {
            "spec.targetRef".to_string()
        } else {
            format!("spec.targetRefs[{}]", i - usize::from(one.is_some()))
        };
        if !matches!(r.kind.as_str(), "Service" | "Gateway") {
            f.error(
                format!("{p}.kind"),
                format!("{:?} cannot be targeted; use Service or Gateway", r.kind),
            );
        }
        if let Some(ns) = &r.namespace
            && ns != f.namespace()
        {
            f.error(
                format!("{p}.namespace"),
                "a policy can only target objects in its own namespace",
            );
        }
        if let Err(why) = dns_subdomain(&r.name) {
            f.error(format!("{p}.name"), why);
        }
    }
}

fn rule(p: &str, r: &AuthzRule, f: &mut Findings) {
    for (i, from) in r.from.iter().flatten().enumerate() {
        source(&format!("{p}.from[{i}].source"), &from.source, f);
    }
    for (i, to) in r.to.iter().flatten().enumerate() {
        operation(&format!("{p}.to[{i}].operation"), &to.operation, f);
    }
    for (i, c) in r.when.iter().flatten().enumerate() {
        condition(&format!("{p}.when[{i}]"), c, f);
    }
}

fn source(p: &str, s: &Source, f: &mut Findings) {
    let fields: [(&str, &Option<Vec<String>>); 12] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ];
    let unset = "a source must set at least one field, e.g. principals or namespaces";
    match_lists(p, &fields, unset, f, |field, vp, v, f| match field {
        "principals" | "notPrincipals" => principal(vp, v, f),
        "namespaces" | "notNamespaces" => namespace_pattern(vp, v, f),
        "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => cidr(vp, v, f),
        "serviceAccounts" | "notServiceAccounts" => service_account(vp, v, f),
        "requestPrincipals" | "notRequestPrincipals" => {
            if let Err(why) = wildcard_position(v) {
                f.error(vp, why);
            }
        }
        _ => {}
    });
}

/// The match lists of a source or an operation: at least one set (else `unset`), none
/// empty, and each value checked by `check(field, path, value)`.
fn match_lists(
    p: &str,
    fields: &[(&str, &Option<Vec<String>>)],
    unset: &str,
    f: &mut Findings,
    check: impl Fn(&str, &str, &str, &mut Findings),
) {
    if fields.iter().all(|(_, v)| v.is_none()) {
        return f.error(p, unset);
    }
    for (field, values) in fields {
        let Some(values) = values else { continue };
        if values.is_empty() {
            f.error(
                format!("{p}.{field}"),
                "must not be empty; remove the field to match any value",
            );
        }
        for (i, v) in values.iter().enumerate() {
            check(field, &format!("{p}.{field}[{i}]"), v, f);
        }
    }
}

fn namespace_pattern(p: &str, v: &str, f: &mut Findings) {
    if let Err(why) = wildcard_position(v) {
        return f.error(p, why);
    }
    let bare = v.trim_matches('*');
    if !bare.is_empty() && dns_label(bare.trim_matches('-')).is_err() {
        f.error(p, format!("{v:?} is not a namespace name"));
    }
}

fn service_account(p: &str, v: &str, f: &mut Findings) {
    let (ns, name) = match v.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, v),
    };
    let ok = ns.is_none_or(|n| dns_label(n).is_ok()) && dns_subdomain(name).is_ok();
    if !ok {
        f.error(
            p,
            format!("{v:?} is not a service account; write <namespace>/<name> or <name> (no wildcards)"),
        );
    }
}

fn operation(p: &str, o: &Operation, f: &mut Findings) {
    let fields: [(&str, &Option<Vec<String>>); 8] = [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("ports", &o.ports),
        ("notPorts", &o.not_ports),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ];
    let unset = "an operation must set at least one field, e.g. methods or paths";
    match_lists(p, &fields, unset, f, |field, vp, v, f| match field {
        "hosts" | "notHosts" => {
            if let Err(why) = wildcard_position(v) {
                f.error(vp, why);
            }
        }
        "ports" | "notPorts" => {
            port_string(vp, v, f);
        }
        "methods" | "notMethods" if v != "*" => {
            method(vp, v, f);
        }
        "paths" | "notPaths" => {
            if let Err(why) = wildcard_position(v) {
                f.error(vp, why);
            } else if !(v.starts_with('/') || v.starts_with('*')) {
                f.error(
                    vp,
                    format!("{v:?} must be a path starting with '/' (or a '*' suffix pattern)"),
                );
            } else if v.contains("{") {
                f.error(
                    vp,
                    "path templates ({*}, {**}) are not supported by Trellis yet; use a '*' prefix or suffix",
                );
            }
        }
        _ => {}
    });
}

fn condition(p: &str, c: &Condition, f: &mut Findings) {
    let key = c.key.as_str();
    if key.starts_with("request.auth.claims") {
        if condition_claim(key).is_none() {
            f.error(
                format!("{p}.key"),
                format!(
                    "{key:?} is not a claim key; write request.auth.claims[<name>] or request.auth.claims[<a>][<b>]"
                ),
            );
        }
    } else if let Some(h) = condition_header(key) {
        header_name(&format!("{p}.key"), h, f);
    } else if !CONDITION_KEYS.contains(&key) {
        f.error(
            format!("{p}.key"),
            format!(
                "unknown key {key:?}; use request.headers[<name>], request.auth.claims[<name>], {}",
                CONDITION_KEYS.join(", ")
            ),
        );
    }
    let values = c.values.as_deref().unwrap_or_default();
    let not_values = c.not_values.as_deref().unwrap_or_default();
    if values.is_empty() && not_values.is_empty() {
        f.error(p, "set values or notValues");
    }
    for (field, list) in [("values", values), ("notValues", not_values)] {
        for (i, v) in list.iter().enumerate() {
            let vp = format!("{p}.{field}[{i}]");
            match key {
                "source.ip" | "remote.ip" | "destination.ip" => cidr(&vp, v, f),
                "destination.port" => {
                    port_string(&vp, v, f);
                }
                "source.principal" => principal(&vp, v, f),
                "source.namespace" => namespace_pattern(&vp, v, f),
                _ => {}
            }
        }
    }
}
