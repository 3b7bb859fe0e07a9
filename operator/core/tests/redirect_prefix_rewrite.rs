//! A VirtualService's `redirect.prefixRewrite` reaches the proxy's route as Istio hands it to
//! Envoy (`RedirectAction.prefix_rewrite`), with the rule's provenance; an empty one is unset,
//! as in Istio.

use std::path::Path;

use trellis_api::document::parse_documents;
use trellis_contract::{Redirect, RouteAction};
use trellis_core::compile::{Role, compile};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

/// The redirects compiled for payment's routes on payment-v1's sidecar, with `redirect` as the
/// VirtualService's, and the rule each came from.
fn redirects(redirect: &str) -> Vec<(Redirect, Option<u32>)> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analysis/base.yaml");
    let vs = format!(
        "apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {{name: moved, namespace: shop}}
spec:
  hosts: [payment]
  http:
  - match: [{{uri: {{prefix: /old}}}}]
    redirect: {redirect}
"
    );
    let mut s = Snapshot::default();
    let docs = std::fs::read_to_string(base).expect("base.yaml") + "---\n" + &vs;
    for d in parse_documents(&docs) {
        let v = d.content.expect("parses");
        if v["kind"] == "VirtualService" && v["metadata"]["name"] != "moved" {
            continue;
        }
        s.add(&v).expect("an object");
    }
    let cfg = compile(&s, &ObjectKey::new("shop", "payment-v1"), Role::Sidecar, "v1")
        .expect("compiles")
        .config;
    cfg.listeners
        .iter()
        .flat_map(|l| &l.virtual_hosts)
        .flat_map(|vh| &vh.routes)
        .filter(|r| r.provenance.kind == "VirtualService" && r.provenance.name == "moved")
        .filter_map(|r| match &r.action {
            RouteAction::Redirect(rd) => Some((rd.clone(), r.provenance.rule_index)),
            _ => None,
        })
        .collect()
}

#[test]
fn prefix_rewrite_is_compiled_with_the_rules_provenance() {
    let all = redirects("{prefixRewrite: /new, authority: other.example.com}");
    assert!(!all.is_empty(), "payment's routes carry the redirect");
    for (rd, rule) in all {
        assert_eq!(rd.prefix_rewrite.as_deref(), Some("/new"));
        assert_eq!((rd.uri, rd.authority.as_deref()), (None, Some("other.example.com")));
        assert_eq!(rule, Some(0));
    }
    // Istio reads an empty string as unset.
    for (rd, _) in redirects("{prefixRewrite: '', authority: other.example.com}") {
        assert_eq!(rd.prefix_rewrite, None);
    }
}
