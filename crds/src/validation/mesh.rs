//! Semantic checks of the Mesh lifecycle object.

use std::time::Duration;

use super::Findings;
use super::format::{dns_label, dns_subdomain, duration, human, label_key, labels};
use crate::mesh::*;

pub(super) fn mesh(m: &Mesh, f: &mut Findings) {
    if m.metadata.name.as_deref().is_some_and(|n| n != "default") {
        f.warn(
            "metadata.name",
            "the operator reconciles the Mesh named \"default\"; others are ignored",
        );
    }
    let spec = &m.spec;
    if let Some(v) = &spec.versions {
        for (field, image) in [("operator", &v.operator), ("proxy", &v.proxy)] {
            if let Some(img) = image
                && (img.is_empty() || img.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                f.error(
                    format!("spec.versions.{field}"),
                    format!("{img:?} is not an image reference, e.g. ghcr.io/trellis/trellis-proxy:0.1.0"),
                );
            }
        }
    }
    if let Some(td) = &spec.trust_domain
        && dns_subdomain(td).is_err()
    {
        f.error(
            "spec.trustDomain",
            format!("{td:?} is not a trust domain: use lower-case letters, digits, '-' and '.', e.g. cluster.local"),
        );
    }
    trust_domain_aliases(spec, f);
    if let Some(ca) = &spec.ca {
        let workload = duration(
            "spec.ca.workloadCertTtl",
            &ca.workload_cert_ttl,
            Duration::from_secs(600),
            f,
        );
        let root = duration("spec.ca.rootCertTtl", &ca.root_cert_ttl, Duration::from_secs(86400), f);
        leaves_within_root(ca, workload, root, f);
        if let Some(s) = &ca.secret_ref {
            if dns_subdomain(&s.name).is_err() {
                f.error("spec.ca.secretRef.name", format!("{:?} is not a Secret name", s.name));
            }
            if ca.mode != Some(CaMode::Plugged) {
                f.warn("spec.ca.secretRef", "is used only with mode: Plugged");
            }
        }
    }
    if let Some(label) = spec.injection.as_ref().and_then(|i| i.namespace_label.as_ref())
        && let Err(why) = label_key(label)
    {
        f.error("spec.injection.namespaceLabel", why);
    }
    if let Some(r) = &spec.rollout {
        duration("spec.rollout.pause", &r.pause, Duration::ZERO, f);
        duration(
            "spec.rollout.progressDeadline",
            &r.progress_deadline,
            Duration::from_secs(10),
            f,
        );
        if let Some(c) = &r.canary {
            for (i, ns) in c.namespaces.iter().flatten().enumerate() {
                if let Err(why) = dns_label(ns) {
                    f.error(format!("spec.rollout.canary.namespaces[{i}]"), why);
                }
            }
            labels("spec.rollout.canary.matchLabels", &c.match_labels, f);
        }
        let gates = r.health_gates.as_deref().unwrap_or_default();
        for (i, g) in gates.iter().enumerate() {
            if gates[..i].contains(g) {
                f.error(
                    format!("spec.rollout.healthGates[{i}]"),
                    format!("duplicate gate {g:?}"),
                );
            }
        }
    }
    if let Some(tracing) = spec.telemetry.as_ref().and_then(|t| t.tracing.as_ref()) {
        tracing_settings(tracing, f);
    }
}

/// A workload certificate lives at most half its root's life, so leaves never outlive their
/// root: checked with the default of the lifetime the Mesh leaves out (`workload` and `root`
/// are the valid lifetimes written; an invalid one has its own error).
fn leaves_within_root(ca: &CertificateAuthority, workload: Option<Duration>, root: Option<Duration>, f: &mut Findings) {
    let default = |written: &Option<String>, default: &str| {
        written
            .is_none()
            .then(|| crate::duration::parse(default).ok())
            .flatten()
    };
    let w = workload.or_else(|| default(&ca.workload_cert_ttl, DEFAULT_WORKLOAD_CERT_TTL));
    let r = root.or_else(|| default(&ca.root_cert_ttl, DEFAULT_ROOT_CERT_TTL));
    let (Some(w), Some(r)) = (w, r) else {
        return;
    };
    if w * 2 <= r {
        return;
    }
    let (at_least, at_most) = (human(w * 2), human(r / 2));
    match (ca.workload_cert_ttl.is_some(), ca.root_cert_ttl.is_some()) {
        (false, _) => f.error(
            "spec.ca.rootCertTtl",
            format!(
                "must be at least twice workloadCertTtl, which is {DEFAULT_WORKLOAD_CERT_TTL} by default, so leaves never outlive their root: set rootCertTtl to at least {at_least}, or set workloadCertTtl to at most {at_most}"
            ),
        ),
        (true, false) => f.error(
            "spec.ca.workloadCertTtl",
            format!(
                "must be at most half of rootCertTtl, which is {DEFAULT_ROOT_CERT_TTL} by default, so leaves never outlive their root: set workloadCertTtl to at most {at_most}, or set rootCertTtl to at least {at_least}"
            ),
        ),
        (true, true) => f.error(
            "spec.ca.workloadCertTtl",
            format!(
                "must be at most half of rootCertTtl, so leaves never outlive their root: set workloadCertTtl to at most {at_most}, or rootCertTtl to at least {at_least}"
            ),
        ),
    }
}

fn tracing_settings(tracing: &TracingSettings, f: &mut Findings) {
    let Some(ep) = tracing.otlp_endpoint.as_ref() else {
        return;
    };
    let field = "spec.telemetry.tracing.otlpEndpoint";
    let rest = ep.strip_prefix("http://").or_else(|| ep.strip_prefix("https://"));
    let (hostport, path) = rest.map_or((None, ""), |r| match r.split_once('/') {
        Some((hp, p)) => (Some(hp), p),
        None => (Some(r), ""),
    });
    let port = hostport.and_then(|hp| match hp.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => p.parse::<u16>().ok().filter(|p| *p > 0),
        _ => None,
    });
    let Some(port) = port else {
        f.error(
            field,
            format!("{ep:?} is not a collector URL; write http(s)://<host>:<port>, e.g. http://otel-collector.observability:4317"),
        );
        return;
    };
    let protocol = tracing.protocol.unwrap_or_default();
    if protocol == OtlpProtocol::Grpc && !path.is_empty() {
        f.error(
            field,
            format!(
                "{ep:?} has a path, which OTLP/gRPC has no use for (its method is fixed); write only http(s)://<host>:<port>, or set spec.telemetry.tracing.protocol to http/protobuf for OTLP/HTTP"
            ),
        );
    }
    // The conventional ports say which transport a collector listens with.
    let expected = match (protocol, port) {
        (OtlpProtocol::Grpc, 4318) => Some("http/protobuf"),
        (OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson, 4317) => Some("grpc"),
        _ => None,
    };
    if let Some(other) = expected {
        f.warn(
            "spec.telemetry.tracing.protocol",
            format!(
                "spans go to port {port} with protocol {}, but {port} is OTLP's port for {other}; set protocol: {other} if the collector listens with that",
                protocol.as_str()
            ),
        );
    }
}

/// At most this many `spec.trustDomainAliases` (the proxies' configurations hold them, and the
/// previous trust domains during a change, within the contract's limit).
pub const MAX_TRUST_DOMAIN_ALIASES: usize = 16;

fn trust_domain_aliases(spec: &MeshSpec, f: &mut Findings) {
    let Some(aliases) = &spec.trust_domain_aliases else {
        return;
    };
    if aliases.len() > MAX_TRUST_DOMAIN_ALIASES {
        f.error(
            "spec.trustDomainAliases",
            format!(
                "{} aliases: at most {MAX_TRUST_DOMAIN_ALIASES}; drop the ones no workload presents any more",
                aliases.len()
            ),
        );
    }
    let domain = spec.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN);
    for (i, alias) in aliases.iter().enumerate() {
        let field = format!("spec.trustDomainAliases[{i}]");
        if dns_subdomain(alias).is_err() {
            f.error(
                field,
                format!(
                    "{alias:?} is not a trust domain: use lower-case letters, digits, '-' and '.', e.g. old.example.org"
                ),
            );
        } else if alias == domain {
            f.warn(field, format!("{alias:?} is the trust domain itself; remove it"));
        } else if aliases[..i].contains(alias) {
            f.warn(field, format!("{alias:?} is listed twice; remove one"));
        }
    }
}
