//! The Mesh cases of the validator's table: trust domain, CA lifetimes, rollout, outbound
//! traffic policy, telemetry.

use serde_json::json;

use super::Base::*;
use super::{Case, Expect, err, err_at, multi, ok, warn, warn_at};

/// The Mesh's spec.
pub fn cases() -> Vec<Case> {
    vec![
        // ---------------- Mesh ----------------
        ok(Mesh, "spec.defaultMtlsMode", json!("STRICT")),
        err(Mesh, "spec.defaultMtlsMode", json!("ON"), "allowed: UNSET"),
        err(Mesh, "spec.trustDomain", json!("Cluster Local"), "not a trust domain"),
        ok(Mesh, "spec.trustDomainAliases", json!(["old.example.org"])),
        err_at(
            Mesh,
            "spec.trustDomainAliases",
            json!(["old.example.org", "Old Domain"]),
            "spec.trustDomainAliases[1]",
            "not a trust domain",
        ),
        warn_at(
            Mesh,
            "spec.trustDomainAliases",
            json!(["cluster.local"]),
            "spec.trustDomainAliases[0]",
            "the trust domain itself",
        ),
        warn_at(
            Mesh,
            "spec.trustDomainAliases",
            json!(["a.org", "a.org"]),
            "spec.trustDomainAliases[1]",
            "listed twice",
        ),
        err(
            Mesh,
            "spec.trustDomainAliases",
            json!((0..17).map(|i| format!("d{i}.org")).collect::<Vec<_>>()),
            "at most 16",
        ),
        err(Mesh, "spec.ca.workloadCertTtl", json!("1m"), "too short"),
        err_at(
            Mesh,
            "spec.ca",
            json!({"workloadCertTtl": "24h", "rootCertTtl": "30h"}),
            "spec.ca.workloadCertTtl",
            "half of rootCertTtl",
        ),
        // One lifetime written: compared with the other's default (workloadCertTtl 24h,
        // rootCertTtl 87600h), the error naming the field written and the fix.
        err_at(
            Mesh,
            "spec.ca",
            json!({"rootCertTtl": "24h"}),
            "spec.ca.rootCertTtl",
            "which is 24h by default, so leaves never outlive their root: set rootCertTtl to at least 48h, or set workloadCertTtl to at most 12h",
        ),
        err_at(
            Mesh,
            "spec.ca",
            json!({"workloadCertTtl": "50000h"}),
            "spec.ca.workloadCertTtl",
            "which is 87600h by default, so leaves never outlive their root: set workloadCertTtl to at most 43800h, or set rootCertTtl to at least 100000h",
        ),
        ok(Mesh, "spec.ca", json!({"rootCertTtl": "48h"})),
        ok(Mesh, "spec.ca", json!({"workloadCertTtl": "43800h"})),
        err_at(
            Mesh,
            "spec.ca",
            json!({"mode": "Plugged"}),
            "spec.ca",
            "needs secretRef",
        ),
        ok(
            Mesh,
            "spec.ca",
            json!({"mode": "Plugged", "secretRef": {"name": "cacerts"}}),
        ),
        err(Mesh, "spec.ca.mode", json!("Vault"), "allowed: SelfSigned, Plugged"),
        err(
            Mesh,
            "spec.versions.proxy",
            json!("trellis proxy:1"),
            "not an image reference",
        ),
        err(Mesh, "spec.injection.namespaceLabel", json!("bad label!"), "label key"),
        err(Mesh, "spec.rollout.batchSize", json!(0), "out of range"),
        err(Mesh, "spec.rollout.pause", json!("later"), "not a duration"),
        err(Mesh, "spec.rollout.progressDeadline", json!("1s"), "too short"),
        err(Mesh, "spec.rollout.batchPercent", json!(101), "out of range"),
        multi(
            Mesh,
            vec![
                ("spec.rollout.batchSize", json!(2)),
                ("spec.rollout.batchPercent", json!(10)),
            ],
            Expect::Error("spec.rollout", "not both"),
        ),
        err_at(
            Mesh,
            "spec.rollout.canary.namespaces",
            json!(["Staging"]),
            "spec.rollout.canary.namespaces[0]",
            "not a valid name",
        ),
        ok(
            Mesh,
            "spec.rollout.canary",
            json!({"namespaces": ["staging"], "matchLabels": {"tier": "canary"}}),
        ),
        err_at(
            Mesh,
            "spec.rollout.healthGates",
            json!(["PodsReady", "PodsReady"]),
            "spec.rollout.healthGates[1]",
            "duplicate gate",
        ),
        multi(
            Mesh,
            vec![("spec.rollout.healthGates", json!(["PodsReady", "Magic"]))],
            Expect::Error("spec.rollout.healthGates[1]", "allowed: PodsReady"),
        ),
        err(Mesh, "spec.telemetry.tracing.sampling", json!(101), "out of range"),
        multi(
            Mesh,
            vec![
                (
                    "spec.telemetry.tracing.otlpEndpoint",
                    json!("https://collector.obs:4318/v1/traces"),
                ),
                ("spec.telemetry.tracing.protocol", json!("http/protobuf")),
            ],
            Expect::Valid,
        ),
        ok(
            Mesh,
            "spec.telemetry.tracing.otlpEndpoint",
            json!("http://collector.obs:4317"),
        ),
        err(
            Mesh,
            "spec.telemetry.tracing.otlpEndpoint",
            json!("https://collector.obs:4317/v1/traces"),
            "which OTLP/gRPC has no use for",
        ),
        warn_at(
            Mesh,
            "spec.telemetry.tracing.otlpEndpoint",
            json!("http://collector.obs:4318"),
            "spec.telemetry.tracing.protocol",
            "4318 is OTLP's port for http/protobuf",
        ),
        err(
            Mesh,
            "spec.telemetry.tracing.protocol",
            json!("http/xml"),
            "allowed: grpc, http/protobuf, http/json",
        ),
        err(
            Mesh,
            "spec.telemetry.tracing.otlpEndpoint",
            json!("collector:4317"),
            "not a collector URL",
        ),
        warn(Mesh, "metadata.name", json!("second"), "named \"default\""),
        ok(Mesh, "spec", json!({})),
    ]
}
