//! Every field of the Trellis API is read by the control plane, or is one the validator refuses
//! (or restricts to what Trellis always does): a field declared and never read would be
//! accepted and silently ignored — as `corsPolicy.unmatchedPreflights` was until ce0e0c6.
//!
//! The check reads sources by name: each `pub field:` of the API types (`crds/src`, validation
//! aside) must be named as `.field` or `field:` somewhere in the operator's code outside its
//! tests (the compiler, the reconcilers, the manifests), or be in [`NOT_READ`] with the reason
//! the validator gives. It cannot see a field read under a name another type shares; it does see
//! every new field that nothing reads, and every entry of [`NOT_READ`] that has become read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Fields the control plane does not read, as `file:field` (the file under `crds/src`), each
/// refused by the validator as "not supported by Trellis yet" or restricted to the one value
/// Trellis implements (the validation table and `crds/tests/istio_fields.rs` prove the refusals).
const NOT_READ: &[(&str, &str)] = &[
    (
        "networking/destination_rule.rs:aggression",
        "under loadBalancer.warmup, dropped as compile::Dropped::LoadBalancerWarmup",
    ),
    (
        "networking/destination_rule.rs:minimum_percent",
        "under loadBalancer.warmup, as aggression",
    ),
    (
        "networking/virtual_service.rs:allow_origin",
        "refused: use allowOrigins",
    ),
    (
        "networking/destination_rule.rs:attributes",
        "httpCookie.attributes, refused",
    ),
    (
        "networking/gateway.rs:bind",
        "Gateway server bind: only every address of the pod is accepted",
    ),
    ("networking/sidecar.rs:bind", "Sidecar listener bind, refused"),
    (
        "networking/sidecar.rs:capture_mode",
        "NONE refused; the others are the capture Trellis always does",
    ),
    (
        "networking/destination_rule.rs:budget_interval",
        "retryBudget.budgetInterval, refused",
    ),
    ("networking/gateway.rs:ca_cert_credential_name", "refused"),
    ("networking/gateway.rs:credential_names", "refused"),
    ("networking/gateway.rs:tls_certificates", "refused"),
    ("networking/gateway.rs:verify_certificate_hash", "refused"),
    ("networking/gateway.rs:verify_certificate_spki", "refused"),
    (
        "networking/destination_rule.rs:consecutive_errors",
        "refused: use consecutive5xxErrors",
    ),
    (
        "networking/destination_rule.rs:outlier_detection_http_error_codes",
        "refused",
    ),
    (
        "networking/virtual_service.rs:delegate",
        "VirtualService delegation, refused",
    ),
    ("networking/virtual_service.rs:exponential_delay", "refused"),
    (
        "networking/virtual_service.rs:grpc_status",
        "fault abort grpcStatus, refused: use httpStatus",
    ),
    (
        "networking/virtual_service.rs:http2_error",
        "fault abort http2Error, refused",
    ),
    ("networking/destination_rule.rs:locality_lb_setting", "refused"),
    ("networking/destination_rule.rs:zone_aware_lb_setting", "refused"),
    (
        "networking/virtual_service.rs:mirror_percent",
        "refused: use mirrorPercentage",
    ),
    (
        "networking/virtual_service.rs:mirror_percent_snake_case",
        "mirror_percent, refused",
    ),
    ("networking/destination_rule.rs:proxy_protocol", "refused"),
    ("networking/destination_rule.rs:tunnel", "refused"),
    ("networking/virtual_service.rs:retry_remote_localities", "refused"),
    (
        "networking/virtual_service.rs:retry_ignore_previous_hosts",
        "true is what the proxy always does; false refused",
    ),
    (
        "networking/virtual_service.rs:source_subnet",
        "tcp match sourceSubnet, refused",
    ),
    ("networking/virtual_service.rs:stat_prefix", "refused"),
    ("networking/service_entry.rs:locality", "endpoint locality, refused"),
    ("networking/service_entry.rs:network", "endpoint network, refused"),
    ("security.rs:jwks_uri_snake_case", "jwks_uri, refused: spell it jwksUri"),
    ("security.rs:space_delimited_claims", "refused"),
    ("security.rs:not_trust_domains", "refused: use notPrincipals"),
    ("mesh.rs:egress_proxy", "outboundTrafficPolicy.egressProxy, refused"),
    (
        "mesh.rs:namespace_label",
        "only trellis.dev/inject, the label the injector selects",
    ),
    ("mesh.rs:native_sidecar", "only true, how the proxy is injected"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// `file:field` of every `pub field:` of the API types.
fn api_fields() -> BTreeSet<String> {
    let crds = root().join("crds/src");
    let mut files = Vec::new();
    rust_files(&crds, &mut files);
    let mut fields = BTreeSet::new();
    for path in files {
        let rel = path
            .strip_prefix(&crds)
            .expect("under crds/src")
            .to_string_lossy()
            .to_string();
        if rel.starts_with("validation") || rel.starts_with("bin/") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        for line in text.lines() {
            let Some(rest) = line.trim_start().strip_prefix("pub ") else {
                continue;
            };
            let Some((name, _)) = rest.split_once(": ") else {
                continue;
            };
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                fields.insert(format!("{rel}:{name}"));
            }
        }
    }
    fields
}

/// The operator's code outside its tests: the compiler, the reconcilers, the manifests.
fn operator_code() -> String {
    let mut files = Vec::new();
    for dir in ["operator/core/src", "operator/src", "operator/manifests/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("source");
            text.split("#[cfg(test)]").next().unwrap_or_default().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn named(code: &str, field: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(field).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + field.len()..].chars().next();
        before.is_none_or(|c| !is_ident(c))
            && after.is_none_or(|c| !is_ident(c))
            && (before == Some('.') || code[i + field.len()..].trim_start().starts_with([':', ',', '}', ')']))
    })
}

#[test]
fn every_api_field_is_read_or_refused() {
    let fields = api_fields();
    assert!(
        fields.len() > 200,
        "only {} fields found; is crds/src where it was?",
        fields.len()
    );
    let code = operator_code();
    let listed: BTreeSet<&str> = NOT_READ.iter().map(|(f, _)| *f).collect();
    let mut problems = Vec::new();
    for f in &fields {
        let name = f.rsplit(':').next().unwrap_or_default();
        let read = named(&code, name);
        match (read, listed.contains(f.as_str())) {
            (false, false) => problems.push(format!(
                "{f}: nothing in the operator reads it, so it would be accepted and ignored; compile it, or refuse it in the validator (\"not supported by Trellis yet\") and list it in NOT_READ"
            )),
            (true, true) => problems.push(format!("{f}: read by the operator now; remove it from NOT_READ")),
            _ => {}
        }
    }
    for f in &listed {
        if !fields.contains(*f) {
            problems.push(format!("{f}: no such field any more; remove it from NOT_READ"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_field_nothing_reads_is_found() {
    let code = "fn f(p: &Policy) -> bool { p.allow_credentials.unwrap_or(false) }\nlet c = Cors { max_age: 1 };";
    assert!(named(code, "allow_credentials"));
    assert!(named(code, "max_age"));
    assert!(!named(code, "unmatched_preflights"));
    // A longer name containing it is not it.
    assert!(!named("p.allow_credentials_extra", "allow_credentials"));
}
