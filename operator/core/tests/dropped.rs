//! Nothing the validator accepts is dropped by the compiler.
//!
//! The compiler reports every construct it drops or ignores through `compile::Dropped`; this
//! test walks that list. For each construct, a document on top of the clean shop
//! (`tests/analysis/base.yaml`) that, compiled without validation, reaches the drop site — and
//! the one validator's rejection of that same document, naming the field. A construct the
//! validator accepted would fail here; so would a fixture that no longer reaches its site.
//! The compiler's sources are read too: a drop reported with a dropping code but not through
//! `Dropped` fails the last test.

use std::path::Path;

use serde_json::Value;
use trellis_api::document::parse_documents;
use trellis_api::schema::NOT_SUPPORTED;
use trellis_api::validation::{Outcome, Severity, Validator};
use trellis_core::code::Code;
use trellis_core::compile::{Dropped, diagnose};
use trellis_core::snapshot::Snapshot;

fn docs(yaml: &str) -> Vec<Value> {
    parse_documents(yaml)
        .into_iter()
        .map(|d| d.content.expect("fixture parses"))
        .collect()
}

fn base() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analysis/base.yaml");
    docs(&std::fs::read_to_string(path).expect("base.yaml"))
}

/// The payment DestinationRule of the base shop with `traffic_policy` (flow-style YAML).
fn payment_rule(traffic_policy: &str) -> String {
    format!(
        r"
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {{name: payment, namespace: shop}}
spec:
  host: payment
  trafficPolicy: {traffic_policy}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"
    )
}

/// The payment VirtualService with `routes` (the YAML of its spec after `hosts`).
fn payment_routes(routes: &str) -> String {
    format!(
        r"
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {{name: payment, namespace: shop}}
spec:
  hosts: [payment]
{routes}"
    )
}

/// A document that uses the construct, and the resource the compiler names.
fn fixture(what: Dropped) -> (&'static str, String) {
    let rule = |policy: &str| ("DestinationRule shop/payment", payment_rule(policy));
    let routes = |routes: &str| ("VirtualService shop/payment", payment_routes(routes));
    match what {
        Dropped::LoadBalancerPassthrough => rule("{loadBalancer: {simple: PASSTHROUGH}}"),
        Dropped::SessionCookieTtl => rule("{loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 60s}}}}"),
        Dropped::LoadBalancerWarmup => rule("{loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s}}"),
        Dropped::SchemeMatch => routes(
            r"  http:
  - match: [{scheme: {exact: https}}]
    route: [{destination: {host: payment, subset: v2}}]
  - route: [{destination: {host: payment, subset: v1}}]
",
        ),
        Dropped::BinaryDirectResponse => routes(
            r"  http:
  - directResponse: {status: 200, body: {bytes: /w==}}
",
        ),
        Dropped::CustomAction => (
            "AuthorizationPolicy shop/ext",
            r"
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  action: CUSTOM
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"
            .to_string(),
        ),
        Dropped::RuleWithoutDestination => routes(
            r"  http:
  - route: []
",
        ),
        Dropped::DynamicDnsResolution => (
            "ServiceEntry shop/wildcard",
            r"
apiVersion: networking.trellis.dev/v1alpha1
kind: ServiceEntry
metadata: {name: wildcard, namespace: shop}
spec:
  hosts: ['*.example.com']
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
"
            .to_string(),
        ),
        Dropped::AllowAnyDynamicDns => (
            "Mesh default",
            r"
apiVersion: mesh.trellis.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY_DYNAMIC_DNS}
"
            .to_string(),
        ),
    }
}

/// The snapshot of the base shop with `extra` replacing or adding objects, unvalidated.
fn snapshot(extra: &[Value]) -> Snapshot {
    let key = |v: &Value| {
        (
            v["kind"].as_str().unwrap_or_default().to_string(),
            v["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
            v["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        )
    };
    let mut s = Snapshot::default();
    for v in base().iter().filter(|b| !extra.iter().any(|e| key(e) == key(b))) {
        s.add(v).expect("base object");
    }
    for v in extra {
        s.add(v).expect("fixture object");
    }
    s
}

#[test]
fn the_base_shop_drops_nothing() {
    let d = diagnose(&snapshot(&[]));
    assert!(
        !d.iter().any(|d| Dropped::ALL.iter().any(|w| w.code() == d.code)),
        "{d:#?}"
    );
}

#[test]
fn every_construct_the_compiler_drops_is_rejected_by_the_validator() {
    let validator = Validator::new();
    let mut failures = Vec::new();
    for &what in Dropped::ALL {
        let (resource, yaml) = fixture(what);
        let extra = docs(&yaml);
        // The fixture reaches the drop site when nothing stops it.
        let reached = diagnose(&snapshot(&extra))
            .into_iter()
            .any(|d| d.code == what.code() && d.resource == resource && d.message.contains(what.field()));
        if !reached {
            failures.push(format!(
                "{what:?}: the fixture no longer reaches the compiler's drop site"
            ));
        }
        // The validator rejects it, naming the field.
        let findings: Vec<_> = extra
            .iter()
            .flat_map(|v| match validator.validate(v) {
                Outcome::Validated { findings, .. } => findings,
                Outcome::Skipped(why) => panic!("{what:?}: fixture not validated: {why}"),
            })
            .collect();
        let rejected = findings.iter().any(|f| {
            f.severity == Severity::Error
                && f.path.contains(what.field())
                && (what == Dropped::RuleWithoutDestination || f.message.contains(NOT_SUPPORTED))
        });
        if !rejected {
            failures.push(format!(
                "{what:?}: the validator accepts it (findings: {findings:#?}); reject it with \"{NOT_SUPPORTED}\" at the field {}",
                what.field()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every code the compiler can emit: the dropping ones only through `Dropped`; the others
/// report problems between objects (a missing subset, an unknown host, two Gateways on one
/// port), which no single-object validator can reject and which the compiler compiles as Istio
/// does (a missing subset answers 503), never by dropping what the object says.
#[test]
fn the_compiler_reports_drops_only_through_the_one_list() {
    let dropping: Vec<Code> = Dropped::ALL.iter().map(|d| d.code()).collect();
    for code in Code::ALL {
        let emitted_as_drop = match code {
            Code::UnsupportedDropped | Code::UnsupportedIgnored | Code::SchemaValidationError => true,
            Code::ReferencedResourceNotFound
            | Code::NamespaceNotInjected
            | Code::PodMissingProxy
            | Code::ConflictingMeshGatewayVirtualServiceHosts
            | Code::ConflictingSidecarWorkloadSelectors
            | Code::MultipleSidecarsWithoutWorkloadSelectors
            | Code::VirtualServiceDestinationPortSelectorRequired
            | Code::PortNameIsNotUnderNamingConvention
            | Code::InvalidAnnotation
            | Code::NoMatchingWorkloadsFound
            | Code::NoServerCertificateVerificationDestinationLevel
            | Code::NoServerCertificateVerificationPortLevel
            | Code::VirtualServiceUnreachableRule
            | Code::VirtualServiceIneffectiveMatch
            | Code::VirtualServiceHostNotFoundInGateway
            | Code::SchemaWarning
            | Code::GatewayDuplicateCertificate
            | Code::InvalidApplicationUID
            | Code::ConflictingGateways
            | Code::InvalidGatewayCredential
            | Code::GatewayPortNotDefinedOnService
            | Code::DestinationRuleSubsetNotSelectPods
            | Code::UnknownDestinationRuleHost
            | Code::VirtualServiceHostNotFound
            | Code::VirtualServiceShadowed
            | Code::ConflictingPeerAuthentications
            | Code::GatewayPortProtocolConflict
            | Code::ProxyConfigRejected
            | Code::ProxyVersionSkew
            | Code::ProxyNotSynced
            | Code::RouteWithoutTimeout
            | Code::JwksUnavailable
            | Code::JwksStale
            | Code::ServiceEntryHostConflict
            | Code::PortLevelSettingsReplacePolicy => false,
        };
        assert_eq!(
            emitted_as_drop,
            dropping.contains(code),
            "{code}: a dropping code must be emitted through Dropped, and only dropping codes are"
        );
    }
    // Every source of the compiler, its submodules' too.
    let mut sources = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src/compile")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("compile sources") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                sources.push(path);
            }
        }
    }
    sources.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/compile.rs"));
    for path in sources.iter().filter(|p| !p.ends_with("dropped.rs")) {
        let text = std::fs::read_to_string(path).expect("source");
        // Unit tests may name the codes they expect.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        for code in &dropping {
            let name = format!("Code::{}", code.definition().name);
            assert!(
                !text.contains(&name),
                "{} emits {name} directly; report the construct through ctx.dropped(Dropped::..)",
                path.display()
            );
        }
    }
}
