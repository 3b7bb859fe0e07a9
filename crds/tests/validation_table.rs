//! Table tests of the validator: for each kind, a valid base object is changed at one field and
//! the outcome checked — valid, or an error/warning at an exact field path with a telling
//! message.

use serde_json::{Value, json};
use trellis_api::validation::{Finding, Outcome, Severity, validate};

#[path = "validation_table/current_api.rs"]
mod current_api;
#[path = "validation_table/destination_rule.rs"]
mod destination_rule;
#[path = "validation_table/gateway.rs"]
mod gateway;
#[path = "validation_table/mesh.rs"]
mod mesh;
#[path = "validation_table/route_policy.rs"]
mod route_policy;
#[path = "validation_table/security.rs"]
mod security;
#[path = "validation_table/virtual_service.rs"]
mod virtual_service;

#[derive(Clone, Copy, Debug)]
enum Base {
    Vs,
    Dr,
    Gw,
    Pa,
    Ap,
    Ra,
    Mesh,
}

fn base(b: Base) -> Value {
    match b {
        Base::Vs => json!({
            "apiVersion": "networking.trellis.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": "payment", "namespace": "shop"},
            "spec": {
                "hosts": ["payment"],
                "http": [{
                    "name": "split",
                    "match": [{"uri": {"prefix": "/pay"}}],
                    "route": [
                        {"destination": {"host": "payment", "subset": "v1"}, "weight": 90},
                        {"destination": {"host": "payment", "subset": "v2"}, "weight": 10}
                    ],
                    "timeout": "2s"
                }]
            }
        }),
        Base::Dr => json!({
            "apiVersion": "networking.trellis.dev/v1alpha1", "kind": "DestinationRule",
            "metadata": {"name": "payment", "namespace": "shop"},
            "spec": {
                "host": "payment",
                "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]
            }
        }),
        Base::Gw => json!({
            "apiVersion": "networking.trellis.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {
                "selector": {"app": "ingress"},
                "servers": [
                    {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["shop/shop.example.com"]},
                    {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*/shop.example.com"],
                     "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}}
                ]
            }
        }),
        Base::Pa => json!({
            "apiVersion": "security.trellis.dev/v1alpha1", "kind": "PeerAuthentication",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"}}
        }),
        Base::Ap => json!({
            "apiVersion": "security.trellis.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": "db"}},
                "action": "ALLOW",
                "rules": [{
                    "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/payment"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": ["/records/*"]}}]
                }]
            }
        }),
        Base::Ra => json!({
            "apiVersion": "security.trellis.dev/v1alpha1", "kind": "RequestAuthentication",
            "metadata": {"name": "jwt", "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "jwtRules": [{
                    "issuer": "https://issuer.example",
                    "audiences": ["shop"],
                    "jwks": "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
                    "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
                    "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]
                }]
            }
        }),
        Base::Mesh => json!({
            "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"},
            "spec": {"trustDomain": "cluster.local", "ca": {"workloadCertTtl": "24h"}}
        }),
    }
}

/// Remove the field instead of setting it.
const DEL: &str = "<delete>";

/// Set (or, with [`DEL`], delete) the field at a path like `spec.http[0].route[1].weight`,
/// creating objects and list entries on the way.
fn set(root: &mut Value, path: &str, value: Value) {
    let mut tokens = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        tokens.push(Tok::Key(name.to_string()));
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            let idx = idx.trim_end_matches(']');
            match idx.parse::<usize>() {
                Ok(i) => tokens.push(Tok::Index(i)),
                Err(_) => tokens.push(Tok::Key(idx.to_string())),
            }
        }
    }
    let (last, init) = tokens.split_last().expect("non-empty path");
    let mut cur = root;
    for t in init {
        cur = match t {
            Tok::Key(k) => {
                if !cur.is_object() {
                    *cur = json!({});
                }
                cur.as_object_mut().unwrap().entry(k.clone()).or_insert(Value::Null)
            }
            Tok::Index(i) => {
                if !cur.is_array() {
                    *cur = json!([]);
                }
                let a = cur.as_array_mut().unwrap();
                while a.len() <= *i {
                    a.push(json!({}));
                }
                &mut a[*i]
            }
        };
    }
    let delete = value.as_str() == Some(DEL);
    match last {
        Tok::Key(k) => {
            if !cur.is_object() {
                *cur = json!({});
            }
            let o = cur.as_object_mut().unwrap();
            if delete {
                o.remove(k);
            } else {
                o.insert(k.clone(), value);
            }
        }
        Tok::Index(i) => {
            if !cur.is_array() {
                *cur = json!([]);
            }
            let a = cur.as_array_mut().unwrap();
            if delete {
                a.remove(*i);
            } else {
                while a.len() <= *i {
                    a.push(Value::Null);
                }
                a[*i] = value;
            }
        }
    }
}

enum Tok {
    Key(String),
    Index(usize),
}

#[derive(Debug)]
enum Expect {
    /// No error anywhere, and no finding at the changed path.
    Valid,
    /// An error at this path whose message contains the fragment.
    Error(&'static str, &'static str),
    /// A warning (and no error) at this path whose message contains the fragment.
    Warning(&'static str, &'static str),
}

struct Case {
    base: Base,
    changes: Vec<(&'static str, Value)>,
    expect: Expect,
}

fn ok(base: Base, path: &'static str, v: Value) -> Case {
    Case {
        base,
        changes: vec![(path, v)],
        expect: Expect::Valid,
    }
}
fn err(base: Base, path: &'static str, v: Value, frag: &'static str) -> Case {
    Case {
        base,
        changes: vec![(path, v)],
        expect: Expect::Error(path, frag),
    }
}
fn err_at(base: Base, path: &'static str, v: Value, at: &'static str, frag: &'static str) -> Case {
    Case {
        base,
        changes: vec![(path, v)],
        expect: Expect::Error(at, frag),
    }
}
fn warn(base: Base, path: &'static str, v: Value, frag: &'static str) -> Case {
    Case {
        base,
        changes: vec![(path, v)],
        expect: Expect::Warning(path, frag),
    }
}
fn warn_at(base: Base, path: &'static str, v: Value, at: &'static str, frag: &'static str) -> Case {
    Case {
        base,
        changes: vec![(path, v)],
        expect: Expect::Warning(at, frag),
    }
}
fn multi(base: Base, changes: Vec<(&'static str, Value)>, expect: Expect) -> Case {
    Case { base, changes, expect }
}

use Base::*;

fn cases() -> Vec<Case> {
    [
        virtual_service::routing(),
        route_policy::cases(),
        virtual_service::tls_and_tcp(),
        metadata(),
        destination_rule::cases(),
        gateway::cases(),
        security::cases(),
        mesh::cases(),
        current_api::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The metadata every kind has.
fn metadata() -> Vec<Case> {
    vec![
        // ---------------- metadata ----------------
        err(Vs, "metadata.name", json!("Bad_Name"), "not a valid name"),
        err(Vs, "metadata.namespace", json!("a.b"), "not a valid name"),
        err_at(
            Vs,
            "metadata",
            json!({"namespace": "shop"}),
            "metadata.name",
            "is required",
        ),
        err(Mesh, "metadata.namespace", json!("shop"), "cluster-scoped"),
    ]
}

fn findings_of(obj: &Value) -> Vec<Finding> {
    match validate(obj) {
        Outcome::Validated { findings, .. } => findings,
        Outcome::Skipped(why) => panic!("skipped: {why}"),
    }
}

#[test]
fn bases_are_valid_and_clean() {
    for b in [Vs, Dr, Gw, Pa, Ap, Mesh] {
        let f = findings_of(&base(b));
        assert!(f.is_empty(), "{b:?}: {f:#?}");
    }
}

#[test]
fn table() {
    let cases = cases();
    assert!(cases.len() >= 150, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut obj = base(c.base);
        for (path, v) in &c.changes {
            set(&mut obj, path, v.clone());
        }
        let findings = findings_of(&obj);
        let show = || {
            findings
                .iter()
                .map(|f| format!("    {f}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let paths: Vec<&str> = c.changes.iter().map(|(p, _)| *p).collect();
        let ok = match &c.expect {
            Expect::Valid => {
                !findings.iter().any(|f| f.severity == Severity::Error)
                    && !findings.iter().any(|f| paths.iter().any(|p| f.path == *p))
            }
            Expect::Error(at, frag) => findings
                .iter()
                .any(|f| f.severity == Severity::Error && f.path == *at && f.message.contains(frag)),
            Expect::Warning(at, frag) => {
                !findings.iter().any(|f| f.severity == Severity::Error)
                    && findings
                        .iter()
                        .any(|f| f.severity == Severity::Warning && f.path == *at && f.message.contains(frag))
            }
        };
        if !ok {
            failures.push(format!(
                "case {i} {:?} {:?}: expected {:?}, got:\n{}",
                c.base,
                paths,
                c.expect,
                show()
            ));
        }
        // Every finding names the object.
        for f in &findings {
            assert!(f.to_string().contains(&f.object.to_string()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn istio_api_versions_validate_as_trellis_kinds() {
    for (api, b) in [
        ("networking.istio.io/v1", Vs),
        ("networking.istio.io/v1beta1", Dr),
        ("networking.istio.io/v1alpha3", Gw),
        ("security.istio.io/v1", Pa),
        ("security.istio.io/v1beta1", Ap),
    ] {
        let mut obj = base(b);
        obj["apiVersion"] = json!(api);
        assert!(findings_of(&obj).is_empty(), "{api}");
        set(&mut obj, "spec.bogus", json!(1));
        assert!(findings_of(&obj).iter().any(|f| f.path == "spec.bogus"), "{api}");
    }
}

#[test]
fn validation_never_panics_on_odd_shapes() {
    let odd = [
        json!(null),
        json!([]),
        json!({"apiVersion": 5, "kind": []}),
        json!({"apiVersion": "networking.trellis.dev/v1alpha1", "kind": "VirtualService"}),
        json!({"apiVersion": "networking.trellis.dev/v1alpha1", "kind": "VirtualService", "metadata": "x", "spec": 7}),
        json!({"apiVersion": "networking.trellis.dev/v1alpha1", "kind": "Gateway", "metadata": {"name": "g"}, "spec": {"servers": [null, 1, "x"]}}),
        json!({"apiVersion": "security.trellis.dev/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "a"}, "spec": {"rules": [{"from": [{"source": null}]}]}}),
    ];
    for o in odd {
        let _ = validate(&o);
    }
}
