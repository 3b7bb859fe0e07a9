//! Table tests of the validator: for each kind, a valid base object is changed at one field and
//! the outcome checked — valid, or an error/warning at an exact field path with a telling
//! message.

use serde_json::{Value, json};
use trellis_api::validation::{Finding, Outcome, Severity, validate};

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
    let d = || json!(DEL);
    vec![
        // ---------------- VirtualService: hosts, gateways, exportTo ----------------
        ok(Vs, "spec.hosts[0]", json!("payment.shop.svc.cluster.local")),
        ok(Vs, "spec.hosts[1]", json!("*.example.com")),
        err_at(Vs, "spec.hosts", json!([]), "spec.hosts", "at least one host"),
        err(Vs, "spec.hosts[0]", json!("Payment"), "lower case"),
        err(Vs, "spec.hosts[0]", json!("pay*ment"), "first label"),
        err(Vs, "spec.hosts[0]", json!("*"), "bound to gateways"),
        err(Vs, "spec.hosts[0]", json!("10.0.0.1"), "IP address"),
        err(Vs, "spec.hosts[0]", json!("bad_host"), "not a valid host"),
        err(Vs, "spec.hosts[1]", json!("payment"), "duplicate host"),
        warn(
            Vs,
            "spec.hosts[0]",
            json!("payment.shop"),
            "payment.shop.svc.cluster.local",
        ),
        ok(Vs, "spec.gateways", json!(["mesh", "shop/shop-gateway"])),
        err(Vs, "spec.gateways[0]", json!("a/b/c"), "not a gateway reference"),
        ok(Vs, "spec.exportTo", json!([".", "billing"])),
        err(Vs, "spec.exportTo[0]", json!("Not_A_Ns"), "not a valid name"),
        err_at(
            Vs,
            "spec.exportTo",
            json!(["shop", "~"]),
            "spec.exportTo[1]",
            "cannot be combined",
        ),
        err_at(Vs, "spec.http", d(), "spec", "no routes"),
        err(Vs, "spec.hostz", json!(["x"]), "unknown field"),
        err(Vs, "spec.hosts", json!("payment"), "must be a list"),
        // ---------------- VirtualService: match ----------------
        ok(Vs, "spec.http[0].match[0].uri", json!({"exact": "/pay"})),
        ok(Vs, "spec.http[0].match[0].uri", json!({"regex": "^/pay/[0-9]+$"})),
        err(
            Vs,
            "spec.http[0].match[0].uri",
            json!({"prefix": "/a", "exact": "/b"}),
            "only one of exact, prefix or regex",
        ),
        err(
            Vs,
            "spec.http[0].match[0].uri",
            json!({}),
            "set one of exact, prefix or regex",
        ),
        err_at(
            Vs,
            "spec.http[0].match[0].uri",
            json!({"regex": "(unclosed"}),
            "spec.http[0].match[0].uri.regex",
            "does not compile",
        ),
        warn(
            Vs,
            "spec.http[0].match[0].uri",
            json!({"prefix": "pay"}),
            "does not start with '/'",
        ),
        err(Vs, "spec.http[0].match[0].uri.prefix", json!(5), "must be a string"),
        ok(Vs, "spec.http[0].match[0].method", json!({"exact": "POST"})),
        err_at(
            Vs,
            "spec.http[0].match[0].method",
            json!({"exact": "post"}),
            "spec.http[0].match[0].method.exact",
            "case-sensitive",
        ),
        warn_at(
            Vs,
            "spec.http[0].match[0].method",
            json!({"exact": "PURGE"}),
            "spec.http[0].match[0].method.exact",
            "not a standard",
        ),
        err_at(
            Vs,
            "spec.http[0].match[0].scheme",
            json!({"exact": "https"}),
            "spec.http[0].match[0].scheme",
            "not supported by Trellis yet",
        ),
        ok(Vs, "spec.http[0].match[0].authority", json!({"prefix": "shop."})),
        ok(
            Vs,
            "spec.http[0].match[0].headers",
            json!({"x-canary": {"exact": "true"}}),
        ),
        ok(Vs, "spec.http[0].match[0].headers", json!({"x-present": {}})),
        err_at(
            Vs,
            "spec.http[0].match[0].headers",
            json!({"X-Canary": {"exact": "true"}}),
            "spec.http[0].match[0].headers[X-Canary]",
            "lower case",
        ),
        err_at(
            Vs,
            "spec.http[0].match[0].headers",
            json!({"bad header": {"exact": "1"}}),
            "spec.http[0].match[0].headers[bad header]",
            "not a valid header name",
        ),
        err_at(
            Vs,
            "spec.http[0].match[0].withoutHeaders",
            json!({"x-a": {"regex": "["}}),
            "spec.http[0].match[0].withoutHeaders[x-a].regex",
            "does not compile",
        ),
        ok(Vs, "spec.http[0].match[0].queryParams", json!({"page": {"exact": "1"}})),
        err_at(
            Vs,
            "spec.http[0].match[0].queryParams",
            json!({"page": {"prefix": "1"}}),
            "spec.http[0].match[0].queryParams[page].prefix",
            "exact or regex only",
        ),
        ok(Vs, "spec.http[0].match[0].port", json!(8080)),
        err(Vs, "spec.http[0].match[0].port", json!(70000), "out of range"),
        err(Vs, "spec.http[0].match[0].port", json!(0), "out of range"),
        ok(Vs, "spec.http[0].match[0].sourceLabels", json!({"app": "web"})),
        err_at(
            Vs,
            "spec.http[0].match[0].sourceLabels",
            json!({"app": "-web"}),
            "spec.http[0].match[0].sourceLabels[app]",
            "label value",
        ),
        err(
            Vs,
            "spec.http[0].match[0].sourceNamespace",
            json!("Shop"),
            "not a valid name",
        ),
        ok(Vs, "spec.http[0].match[0].ignoreUriCase", json!(true)),
        err(Vs, "spec.http[0].match[0].ignoreUriCase", json!("yes"), "true or false"),
        err(
            Vs,
            "spec.http[0].match[0].statPrefix",
            json!("x"),
            "not supported by Trellis yet",
        ),
        // ---------------- VirtualService: route and weights ----------------
        err(Vs, "spec.http[0].route[1].weight", json!(20), "sum to 110"),
        err(Vs, "spec.http[0].route[0].weight", json!(150), "out of range"),
        err(Vs, "spec.http[0].route[0].weight", json!(-1), "out of range"),
        multi(
            Vs,
            vec![
                ("spec.http[0].route[1]", d()),
                ("spec.http[0].route[0].weight", json!(50)),
            ],
            Expect::Error("spec.http[0].route[0].weight", "single destination"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route[1]", d()),
                ("spec.http[0].route[0].weight", json!(100)),
            ],
            Expect::Valid,
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route[0].weight", d()),
                ("spec.http[0].route[1].weight", d()),
            ],
            Expect::Error("spec.http[0].route", "give each a weight"),
        ),
        err(
            Vs,
            "spec.http[0].route[0].destination.host",
            json!("*.shop"),
            "wildcard host",
        ),
        err(
            Vs,
            "spec.http[0].route[0].destination.subset",
            json!("V1"),
            "not a valid name",
        ),
        err_at(
            Vs,
            "spec.http[0].route[0].destination",
            json!({"subset": "v1"}),
            "spec.http[0].route[0].destination.host",
            "is required",
        ),
        ok(Vs, "spec.http[0].route[0].destination.port", json!({"number": 8080})),
        err(
            Vs,
            "spec.http[0].route[0].destination.port.number",
            json!(0),
            "out of range",
        ),
        err(Vs, "spec.http[0].route", json!([]), "at least one destination"),
        ok(
            Vs,
            "spec.http[0].route[0].headers",
            json!({"request": {"set": {"x-version": "v1"}}}),
        ),
        err_at(
            Vs,
            "spec.http[0].route[0].headers",
            json!({"request": {"set": {"host": "x"}}}),
            "spec.http[0].route[0].headers.request.set[host]",
            "rewrite.authority",
        ),
        // ---------------- VirtualService: redirect, directResponse, rewrite ----------------
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                ("spec.http[0].redirect", json!({"uri": "/new", "redirectCode": 302})),
            ],
            Expect::Valid,
        ),
        err_at(
            Vs,
            "spec.http[0].redirect",
            json!({"uri": "/new"}),
            "spec.http[0]",
            "mutually exclusive",
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                ("spec.http[0].redirect", json!({"uri": "/new", "redirectCode": 200})),
            ],
            Expect::Error("spec.http[0].redirect.redirectCode", "not a redirect status"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                ("spec.http[0].redirect", json!({"scheme": "ftp"})),
            ],
            Expect::Error("spec.http[0].redirect.scheme", "http or https"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                ("spec.http[0].redirect", json!({"uri": "new"})),
            ],
            Expect::Error("spec.http[0].redirect.uri", "starting with '/'"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                ("spec.http[0].redirect", json!({"authority": "bad host:99"})),
            ],
            Expect::Error("spec.http[0].redirect.authority", "host[:port]"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                (
                    "spec.http[0].redirect",
                    json!({"port": 8443, "derivePort": "FROM_REQUEST_PORT"}),
                ),
            ],
            Expect::Error("spec.http[0].redirect", "only one of port or derivePort"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                ("spec.http[0].redirect", json!({"derivePort": "SOMETIMES"})),
            ],
            Expect::Error("spec.http[0].redirect.derivePort", "allowed: FROM_PROTOCOL_DEFAULT"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                ("spec.http[0].redirect", json!({"uri": "/x"})),
                ("spec.http[0].rewrite", json!({"uri": "/y"})),
            ],
            Expect::Error("spec.http[0].rewrite", "cannot be combined with redirect"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                (
                    "spec.http[0].directResponse",
                    json!({"status": 503, "body": {"string": "down"}}),
                ),
            ],
            Expect::Valid,
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                ("spec.http[0].directResponse", json!({"status": 99})),
            ],
            Expect::Error("spec.http[0].directResponse.status", "out of range"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                (
                    "spec.http[0].directResponse",
                    json!({"status": 200, "body": {"bytes": "not base64!"}}),
                ),
            ],
            Expect::Error("spec.http[0].directResponse.body.bytes", "base64"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", d()),
                (
                    "spec.http[0].directResponse",
                    json!({"status": 200, "body": {"bytes": "aGk=", "string": "hi"}}),
                ),
            ],
            Expect::Error("spec.http[0].directResponse.body", "only one of string or bytes"),
        ),
        err_at(
            Vs,
            "spec.http[0].route",
            d(),
            "spec.http[0]",
            "needs one of route, redirect or directResponse",
        ),
        ok(
            Vs,
            "spec.http[0].rewrite",
            json!({"uri": "/v2/pay", "authority": "payment-v2"}),
        ),
        ok(
            Vs,
            "spec.http[0].rewrite",
            json!({"uriRegexRewrite": {"match": "^/pay/(.*)$", "rewrite": "/\\1"}}),
        ),
        err_at(
            Vs,
            "spec.http[0].rewrite",
            json!({"uriRegexRewrite": {"match": "(", "rewrite": "/"}}),
            "spec.http[0].rewrite.uriRegexRewrite.match",
            "does not compile",
        ),
        err_at(
            Vs,
            "spec.http[0].rewrite",
            json!({"uri": "/a", "uriRegexRewrite": {"match": "a", "rewrite": "b"}}),
            "spec.http[0].rewrite",
            "only one of uri or uriRegexRewrite",
        ),
        err_at(
            Vs,
            "spec.http[0].rewrite",
            json!({"uri": "v2"}),
            "spec.http[0].rewrite.uri",
            "starting with '/'",
        ),
        // ---------------- VirtualService: timeout, retries, fault, mirror, CORS, headers ----------------
        ok(Vs, "spec.http[0].timeout", json!("1.5s")),
        err(Vs, "spec.http[0].timeout", json!("soon"), "not a duration"),
        err(Vs, "spec.http[0].timeout", json!("10"), "no unit"),
        err(Vs, "spec.http[0].timeout", json!("10d"), "unknown unit"),
        err(Vs, "spec.http[0].timeout", json!("0s"), "too short"),
        ok(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx,reset,503"}),
        ),
        err(Vs, "spec.http[0].retries.attempts", json!(11), "out of range"),
        err_at(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "retryOn": "5xx,sometimes"}),
            "spec.http[0].retries.retryOn",
            "\"sometimes\"",
        ),
        err_at(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "perTryTimeout": "fast"}),
            "spec.http[0].retries.perTryTimeout",
            "not a duration",
        ),
        warn_at(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "perTryTimeout": "5s"}),
            "spec.http[0].retries.perTryTimeout",
            "longer than the route's timeout",
        ),
        err_at(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "backoff": "-1s"}),
            "spec.http[0].retries.backoff",
            "not a duration",
        ),
        err_at(
            Vs,
            "spec.http[0].retries",
            json!({"retryRemoteLocalities": true}),
            "spec.http[0].retries.retryRemoteLocalities",
            "not supported by Trellis yet",
        ),
        ok(
            Vs,
            "spec.http[0].fault",
            json!({"delay": {"fixedDelay": "5s", "percentage": {"value": 10}}, "abort": {"httpStatus": 503, "percentage": {"value": 0.5}}}),
        ),
        err(Vs, "spec.http[0].fault", json!({}), "set delay and/or abort"),
        err_at(
            Vs,
            "spec.http[0].fault",
            json!({"delay": {"percentage": {"value": 10}}}),
            "spec.http[0].fault.delay.fixedDelay",
            "is required",
        ),
        err_at(
            Vs,
            "spec.http[0].fault",
            json!({"abort": {"httpStatus": 600}}),
            "spec.http[0].fault.abort.httpStatus",
            "out of range",
        ),
        err_at(
            Vs,
            "spec.http[0].fault",
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 120}}}),
            "spec.http[0].fault.abort.percentage.value",
            "out of range",
        ),
        err_at(
            Vs,
            "spec.http[0].fault",
            json!({"abort": {"grpcStatus": "UNAVAILABLE"}}),
            "spec.http[0].fault.abort.grpcStatus",
            "not supported by Trellis yet",
        ),
        err_at(
            Vs,
            "spec.http[0].fault",
            json!({"delay": {"fixedDelay": "1s", "percent": 5}}),
            "spec.http[0].fault.delay.percent",
            "not supported by Trellis yet",
        ),
        ok(Vs, "spec.http[0].mirror", json!({"host": "payment-shadow"})),
        err_at(
            Vs,
            "spec.http[0].mirror",
            json!({"host": ""}),
            "spec.http[0].mirror.host",
            "must not be empty",
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].mirror", json!({"host": "a"})),
                ("spec.http[0].mirrors", json!([{"destination": {"host": "b"}}])),
            ],
            Expect::Error("spec.http[0].mirrors", "either mirror or mirrors"),
        ),
        warn(
            Vs,
            "spec.http[0].mirrorPercentage",
            json!({"value": 5}),
            "no effect without mirror",
        ),
        err(
            Vs,
            "spec.http[0].mirrorPercent",
            json!(5),
            "not supported by Trellis yet",
        ),
        ok(
            Vs,
            "spec.http[0].mirrors",
            json!([{"destination": {"host": "shadow"}, "percentage": {"value": 5}}]),
        ),
        err_at(
            Vs,
            "spec.http[0].mirrors",
            json!([{"destination": {"host": "shadow"}, "percentage": {"value": 101}}]),
            "spec.http[0].mirrors[0].percentage.value",
            "out of range",
        ),
        ok(
            Vs,
            "spec.http[0].corsPolicy",
            json!({"allowOrigins": [{"exact": "https://a.example"}], "allowMethods": ["GET"], "maxAge": "1h"}),
        ),
        err_at(
            Vs,
            "spec.http[0].corsPolicy",
            json!({"allowOrigins": [{"exact": "*"}], "allowCredentials": true}),
            "spec.http[0].corsPolicy.allowOrigins[0]",
            "credentials",
        ),
        err_at(
            Vs,
            "spec.http[0].corsPolicy",
            json!({"allowMethods": ["get"]}),
            "spec.http[0].corsPolicy.allowMethods[0]",
            "case-sensitive",
        ),
        err_at(
            Vs,
            "spec.http[0].corsPolicy",
            json!({"allowHeaders": ["x y"]}),
            "spec.http[0].corsPolicy.allowHeaders[0]",
            "not a valid header name",
        ),
        err_at(
            Vs,
            "spec.http[0].corsPolicy",
            json!({"maxAge": "a day"}),
            "spec.http[0].corsPolicy.maxAge",
            "not a duration",
        ),
        err_at(
            Vs,
            "spec.http[0].corsPolicy",
            json!({"unmatchedPreflights": "DROP"}),
            "spec.http[0].corsPolicy.unmatchedPreflights",
            "allowed:",
        ),
        ok(
            Vs,
            "spec.http[0].headers",
            json!({"request": {"add": {"x-a": "1"}, "remove": ["x-b"]}, "response": {"set": {"x-c": "2"}}}),
        ),
        err_at(
            Vs,
            "spec.http[0].headers",
            json!({"request": {"set": {":path": "/x"}}}),
            "spec.http[0].headers.request.set[:path]",
            "pseudo-header",
        ),
        err_at(
            Vs,
            "spec.http[0].headers",
            json!({"response": {"remove": ["content-length"]}}),
            "spec.http[0].headers.response.remove[0]",
            "managed by the proxy",
        ),
        // The proxy strips these hop-by-hop headers: a route may not change them either
        // (they passed validation once, and the proxy then refused the whole config).
        err_at(
            Vs,
            "spec.http[0].headers",
            json!({"request": {"set": {"te": "trailers"}, "add": {"Keep-Alive": "timeout=5"}}}),
            "spec.http[0].headers.request.set[te]",
            "managed by the proxy",
        ),
        err_at(
            Vs,
            "spec.http[0].headers",
            json!({"request": {"add": {"Keep-Alive": "timeout=5"}}}),
            "spec.http[0].headers.request.add[Keep-Alive]",
            "managed by the proxy",
        ),
        err_at(
            Vs,
            "spec.http[0].headers",
            json!({"response": {"set": {"x-a": "1\r\nx-b: 2"}}}),
            "spec.http[0].headers.response.set[x-a]",
            "CR, LF",
        ),
        err_at(
            Vs,
            "spec.http[0].delegate",
            json!({"name": "other"}),
            "spec.http[0].delegate",
            "not supported by Trellis yet",
        ),
        err(Vs, "spec.http[1].name", json!("split"), "duplicate route name"),
        // ---------------- VirtualService: tls and tcp ----------------
        multi(
            Vs,
            vec![
                ("spec.hosts", json!(["*.example.com"])),
                ("spec.gateways", json!(["gw"])),
                ("spec.http", d()),
                (
                    "spec.tls",
                    json!([{"match": [{"sniHosts": ["a.example.com"]}], "route": [{"destination": {"host": "a"}}]}]),
                ),
            ],
            Expect::Valid,
        ),
        multi(
            Vs,
            vec![
                ("spec.http", d()),
                (
                    "spec.tls",
                    json!([{"match": [{"sniHosts": ["other.example.com"]}], "route": [{"destination": {"host": "a"}}]}]),
                ),
            ],
            Expect::Error(
                "spec.tls[0].match[0].sniHosts[0]",
                "not one of the VirtualService's hosts",
            ),
        ),
        multi(
            Vs,
            vec![
                ("spec.http", d()),
                (
                    "spec.tls",
                    json!([{"match": [{"sniHosts": []}], "route": [{"destination": {"host": "a"}}]}]),
                ),
            ],
            Expect::Error("spec.tls[0].match[0].sniHosts", "at least one SNI host"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http", d()),
                ("spec.tls", json!([{"route": [{"destination": {"host": "a"}}]}])),
            ],
            Expect::Error("spec.tls[0].match", "is required"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http", d()),
                (
                    "spec.tcp",
                    json!([{"match": [{"port": 5432}], "route": [{"destination": {"host": "db"}}]}]),
                ),
            ],
            Expect::Valid,
        ),
        multi(
            Vs,
            vec![
                ("spec.http", d()),
                (
                    "spec.tcp",
                    json!([{"match": [{"destinationSubnets": ["10.0.0.0/33"]}], "route": [{"destination": {"host": "db"}}]}]),
                ),
            ],
            Expect::Error(
                "spec.tcp[0].match[0].destinationSubnets[0]",
                "not an IP address or CIDR",
            ),
        ),
        multi(
            Vs,
            vec![("spec.http", d()), ("spec.tcp", json!([{"match": [{"port": 5432}]}]))],
            Expect::Error("spec.tcp[0].route", "at least one destination"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http", d()),
                (
                    "spec.tcp",
                    json!([{"route": [{"destination": {"host": "a"}, "weight": 60}, {"destination": {"host": "b"}, "weight": 30}]}]),
                ),
            ],
            Expect::Error("spec.tcp[0].route[1].weight", "sum to 90"),
        ),
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
        // ---------------- DestinationRule ----------------
        ok(Dr, "spec.host", json!("payment.shop.svc.cluster.local")),
        ok(Dr, "spec.host", json!("*.example.com")),
        err(Dr, "spec.host", json!(""), "must not be empty"),
        warn(Dr, "spec.host", json!("payment.shop"), "read as a fully qualified name"),
        err_at(Dr, "spec", json!({}), "spec.host", "is required"),
        err(Dr, "spec.subsets[1].name", json!("v1"), "duplicate subset"),
        err(Dr, "spec.subsets[0].name", json!("V_1"), "not a valid name"),
        // Istio's egress gateway pattern: a subset naming no labels only carries policy.
        ok(Dr, "spec.subsets[0].labels", json!({})),
        ok(Dr, "spec.subsets[0].labels", json!(DEL)),
        err_at(
            Dr,
            "spec.subsets[0].labels",
            json!({"version": "v 1"}),
            "spec.subsets[0].labels[version]",
            "label value",
        ),
        ok(Dr, "spec.trafficPolicy.loadBalancer", json!({"simple": "ROUND_ROBIN"})),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"simple": "LEAST_REQUEST", "warmupDurationSecs": "60s"}),
            "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
            "not supported by Trellis yet",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"simple": "FASTEST"}),
            "spec.trafficPolicy.loadBalancer.simple",
            "allowed: UNSPECIFIED",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"simple": "PASSTHROUGH"}),
            "spec.trafficPolicy.loadBalancer.simple",
            "not supported by Trellis yet",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"simple": "RANDOM", "consistentHash": {"useSourceIp": true}}),
            "spec.trafficPolicy.loadBalancer",
            "only one of simple or consistentHash",
        ),
        ok(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"httpHeaderName": "x-user", "ringHash": {"minimumRingSize": 1024}}}),
        ),
        ok(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"httpQueryParameterName": "user", "maglev": {"tableSize": 65537}}}),
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {}}),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "exactly one of httpHeaderName",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"useSourceIp": true, "httpHeaderName": "x"}}),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "exactly one of",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"useSourceIp": true, "maglev": {"tableSize": 65536}}}),
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            "not prime",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"useSourceIp": true, "ringHash": {}, "maglev": {}}}),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "only one of ringHash or maglev",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"httpCookie": {"name": "s", "ttl": "forever"}}}),
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl",
            "not a duration",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"httpHeaderName": "x y"}}),
            "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
            "not a valid header name",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"useSourceIp": true}, "warmupDurationSecs": "30s"}),
            "spec.trafficPolicy.loadBalancer.warmup",
            "cannot be combined with consistentHash",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"simple": "ROUND_ROBIN", "warmup": {"duration": "60s", "aggression": 0.5}}),
            "spec.trafficPolicy.loadBalancer.warmup.aggression",
            "1.0 or more",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"localityLbSetting": {"enabled": true}}),
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
            "not supported by Trellis yet",
        ),
        ok(
            Dr,
            "spec.trafficPolicy.connectionPool",
            json!({"tcp": {"maxConnections": 10, "connectTimeout": "1s", "tcpKeepalive": {"time": "2h", "interval": "75s"}}, "http": {"http1MaxPendingRequests": 10, "idleTimeout": "1m", "h2UpgradePolicy": "UPGRADE"}}),
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.connectionPool",
            json!({"tcp": {"maxConnections": 0}}),
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "out of range",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.connectionPool",
            json!({"tcp": {"connectTimeout": "1"}}),
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "no unit",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.connectionPool",
            json!({"http": {"h2UpgradePolicy": "ALWAYS"}}),
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
            "allowed:",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.connectionPool",
            json!({"http": {"http2MaxRequests": "many"}}),
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
            "must be an integer",
        ),
        ok(
            Dr,
            "spec.trafficPolicy.outlierDetection",
            json!({"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 50}),
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.outlierDetection",
            json!({"maxEjectionPercent": 101}),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "out of range",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.outlierDetection",
            json!({"interval": "0s"}),
            "spec.trafficPolicy.outlierDetection.interval",
            "too short",
        ),
        warn_at(
            Dr,
            "spec.trafficPolicy.outlierDetection",
            json!({"consecutive5xxErrors": 0}),
            "spec.trafficPolicy.outlierDetection",
            "no endpoint is ever ejected",
        ),
        warn_at(
            Dr,
            "spec.trafficPolicy.outlierDetection",
            json!({"consecutiveLocalOriginFailures": 3}),
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            "splitExternalLocalOriginErrors",
        ),
        ok(Dr, "spec.trafficPolicy.tls", json!({"mode": "MESH_MUTUAL"})),
        ok(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "SIMPLE", "sni": "api.example.com"}),
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "ISTIO_MUTUAL", "clientCertificate": "/c.pem"}),
            "spec.trafficPolicy.tls.clientCertificate",
            "workload's own certificate",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "MUTUAL"}),
            "spec.trafficPolicy.tls",
            "needs credentialName",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "STRICT"}),
            "spec.trafficPolicy.tls.mode",
            "allowed: DISABLE",
        ),
        warn_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "SIMPLE", "insecureSkipVerify": true}),
            "spec.trafficPolicy.tls.insecureSkipVerify",
            "not verified",
        ),
        ok(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "MUTUAL", "credentialName": "ledger-client", "sni": "ledger.bank.example", "subjectAltNames": ["api.bank.example", "spiffe://bank.example/ns/ledger/sa/api"]}),
        ),
        ok(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "ISTIO_MUTUAL", "sni": "api.example.com", "subjectAltNames": ["spiffe://cluster.local/ns/egress/sa/egressgateway"]}),
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "ISTIO_MUTUAL", "subjectAltNames": ["api.example.com"]}),
            "spec.trafficPolicy.tls.subjectAltNames[0]",
            "verified by SPIFFE identity",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "ISTIO_MUTUAL", "insecureSkipVerify": true}),
            "spec.trafficPolicy.tls.insecureSkipVerify",
            "mesh's roots",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "MUTUAL", "credentialName": "c", "caCertificates": "/ca.pem"}),
            "spec.trafficPolicy.tls.caCertificates",
            "credentialName already gives",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "SIMPLE", "insecureSkipVerify": true, "subjectAltNames": ["a.example.com"]}),
            "spec.trafficPolicy.tls.insecureSkipVerify",
            "nothing would check them",
        ),
        ok(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "SIMPLE", "caCertificates": "/etc/ca.pem", "caCrl": "/etc/ca.crl"}),
        ),
        ok(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem", "caCrl": "/etc/ca.crl"}),
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "MUTUAL", "credentialName": "c", "caCrl": "/etc/ca.crl"}),
            "spec.trafficPolicy.tls.caCrl",
            "put the CRL in the Secret as ca.crl",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "ISTIO_MUTUAL", "caCrl": "/etc/ca.crl"}),
            "spec.trafficPolicy.tls.caCrl",
            "mesh's roots",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "SIMPLE", "insecureSkipVerify": true, "caCrl": "/etc/ca.crl"}),
            "spec.trafficPolicy.tls.insecureSkipVerify",
            "nothing would check them",
        ),
        warn_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "DISABLE", "caCrl": "/etc/ca.crl"}),
            "spec.trafficPolicy.tls",
            "not used unless mode",
        ),
        warn_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "DISABLE", "sni": "a.example.com"}),
            "spec.trafficPolicy.tls",
            "not used unless mode",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.tls",
            json!({"mode": "SIMPLE", "subjectAltNames": ["a b"]}),
            "spec.trafficPolicy.tls.subjectAltNames[0]",
            "is not a name",
        ),
        ok(
            Dr,
            "spec.trafficPolicy.portLevelSettings",
            json!([{"port": {"number": 8080}, "loadBalancer": {"simple": "RANDOM"}}]),
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.portLevelSettings",
            json!([{"port": {"number": 8080}}, {"port": {"number": 8080}}]),
            "spec.trafficPolicy.portLevelSettings[1].port.number",
            "has settings already",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.portLevelSettings",
            json!([{"loadBalancer": {"simple": "RANDOM"}}]),
            "spec.trafficPolicy.portLevelSettings[0].port",
            "is required",
        ),
        err(
            Dr,
            "spec.trafficPolicy.tunnel",
            json!({"protocol": "CONNECT"}),
            "not supported by Trellis yet",
        ),
        err(
            Dr,
            "spec.workloadSelector",
            json!({"matchLabels": {"app": "x"}}),
            "not supported by Trellis yet",
        ),
        err_at(
            Dr,
            "spec.subsets[0].trafficPolicy",
            json!({"connectionPool": {"tcp": {"idleTimeout": "x"}}}),
            "spec.subsets[0].trafficPolicy.connectionPool.tcp.idleTimeout",
            "not a duration",
        ),
        // ---------------- Gateway ----------------
        ok(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "MUTUAL", "credentialName": "shop-cert", "minProtocolVersion": "TLSV1_2", "maxProtocolVersion": "TLSV1_3"}),
        ),
        ok(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "MUTUAL", "credentialName": "shop-cert", "minProtocolVersion": "TLSV1_3"}),
        ),
        ok(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "maxProtocolVersion": "TLSV1_2"}),
        ),
        ok(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "MUTUAL", "credentialName": "c", "subjectAltNames": ["client.example.com", "spiffe://partner.example/ns/a/sa/b"]}),
        ),
        ok(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "ISTIO_MUTUAL", "subjectAltNames": ["spiffe://cluster.local/ns/shop/sa/web"]}),
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "ISTIO_MUTUAL", "subjectAltNames": ["web.shop"]}),
            "spec.servers[1].tls.subjectAltNames[0]",
            "verified by SPIFFE identity",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "subjectAltNames": ["client.example.com"]}),
            "spec.servers[1].tls.subjectAltNames",
            "SIMPLE asks for no client certificate",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "MUTUAL", "credentialName": "c", "subjectAltNames": ["a b"]}),
            "spec.servers[1].tls.subjectAltNames[0]",
            "is not a name",
        ),
        warn_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "PASSTHROUGH", "cipherSuites": ["ECDHE-RSA-AES256-GCM-SHA384"]}),
            "spec.servers[1].tls.cipherSuites",
            "is ignored when TLS is passed through",
        ),
        ok(
            Gw,
            "spec.servers[2]",
            json!({"port": {"number": 15443, "name": "tls", "protocol": "TLS"}, "hosts": ["*.local"], "tls": {"mode": "AUTO_PASSTHROUGH"}}),
        ),
        ok(
            Gw,
            "spec.servers[2]",
            json!({"port": {"number": 9000, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}),
        ),
        ok(
            Gw,
            "spec.servers[2]",
            json!({"port": {"number": 443, "name": "tls", "protocol": "TLS"}, "hosts": ["*/db.example.com"], "tls": {"mode": "PASSTHROUGH"}}),
        ),
        warn_at(
            Gw,
            "spec.servers[2]",
            json!({"port": {"number": 443, "name": "tls", "protocol": "TLS"}, "hosts": ["*/db.example.com"], "tls": {"mode": "PASSTHROUGH", "credentialName": "c"}}),
            "spec.servers[2].tls.credentialName",
            "is ignored when TLS is passed through",
        ),
        // Istio's default mode is PASSTHROUGH: without a certificate, that is what it is.
        ok(
            Gw,
            "spec.servers[2]",
            json!({"port": {"number": 8443, "name": "tls-default", "protocol": "TLS"}, "hosts": ["*/db.example.com"], "tls": {}}),
        ),
        err(Gw, "spec.servers", json!([]), "at least one server"),
        err(Gw, "spec.servers[0].port.protocol", json!("SMTP"), "not a protocol"),
        err(Gw, "spec.servers[0].port.number", json!(65536), "out of range"),
        err_at(
            Gw,
            "spec.servers[1].port.number",
            json!(80),
            "spec.servers[1].port.number",
            "already used with protocol HTTP",
        ),
        err(Gw, "spec.servers[0].hosts", json!([]), "at least one host"),
        err(
            Gw,
            "spec.servers[0].hosts[0]",
            json!("Shop/x.example.com"),
            "namespace part",
        ),
        err(
            Gw,
            "spec.servers[0].hosts[0]",
            json!("shop/x*y.example.com"),
            "first label",
        ),
        ok(Gw, "spec.servers[0].hosts[0]", json!("./*.example.com")),
        err_at(
            Gw,
            "spec.servers[1].tls",
            d(),
            "spec.servers[1].tls",
            "need tls settings",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE"}),
            "spec.servers[1].tls",
            "needs credentialName",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k"}),
            "spec.servers[1].tls.caCertificates",
            "need a CA",
        ),
        // Istio passes HTTPS through too.
        ok(Gw, "spec.servers[1].tls", json!({"mode": "PASSTHROUGH"})),
        warn_at(
            Gw,
            "spec.servers[1].tls",
            json!({"credentialName": "shop-cert"}),
            "spec.servers[1].tls.mode",
            "Istio's default is PASSTHROUGH",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "x", "serverCertificate": "/c", "privateKey": "/k"}),
            "spec.servers[1].tls",
            "not both",
        ),
        ok(Gw, "spec.servers[1].tls", json!({"mode": "ISTIO_MUTUAL"})),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "ISTIO_MUTUAL", "credentialName": "x"}),
            "spec.servers[1].tls.credentialName",
            "ISTIO_MUTUAL cannot have credentialName",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "ISTIO_MUTUAL", "serverCertificate": "/c"}),
            "spec.servers[1].tls.serverCertificate",
            "ISTIO_MUTUAL cannot have serverCertificate",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "ISTIO_MUTUAL", "privateKey": "/k"}),
            "spec.servers[1].tls.privateKey",
            "ISTIO_MUTUAL cannot have privateKey",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "ISTIO_MUTUAL", "caCertificates": "/ca"}),
            "spec.servers[1].tls.caCertificates",
            "mesh's roots",
        ),
        ok(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "OPTIONAL_MUTUAL", "credentialName": "shop-cert"}),
        ),
        ok(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k", "caCertificates": "/ca", "caCrl": "/crl"}),
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "serverCertificate": "/c", "privateKey": "/k", "caCrl": "/crl"}),
            "spec.servers[1].tls.caCrl",
            "not supported with SIMPLE",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "MUTUAL", "credentialName": "shop-cert", "caCrl": "/crl"}),
            "spec.servers[1].tls.caCrl",
            "in the Secret as ca.crl",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "ISTIO_MUTUAL", "caCrl": "/crl"}),
            "spec.servers[1].tls.caCrl",
            "remove caCrl",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "OPTIONAL_MUTUAL", "serverCertificate": "/c", "privateKey": "/k"}),
            "spec.servers[1].tls.caCertificates",
            "need a CA",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_0"}),
            "spec.servers[1].tls.minProtocolVersion",
            "insecure",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_3", "maxProtocolVersion": "TLSV1_2"}),
            "spec.servers[1].tls.minProtocolVersion",
            "above maxProtocolVersion",
        ),
        ok(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"]}),
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["ECDHE-RSA-AES256-GCM-SHA384", "AES128-SHA"]}),
            "spec.servers[1].tls.cipherSuites[1]",
            "AES128-SHA (CBC, RSA key exchange or 3DES; rustls does not implement it) is not supported by Trellis yet; use the suites the gateway can offer: ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["TLS_AES_128_GCM_SHA256"]}),
            "spec.servers[1].tls.cipherSuites[0]",
            "is a TLS 1.3 suite",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]}),
            "spec.servers[1].tls.cipherSuites[0]",
            "not a cipher suite name (Istio uses OpenSSL's names)",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["[ECDHE-RSA-AES256-GCM-SHA384|ECDHE-RSA-AES128-GCM-SHA256]"]}),
            "spec.servers[1].tls.cipherSuites[0]",
            "cipher list expressions is not supported by Trellis yet",
        ),
        warn_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"]}),
            "spec.servers[1].tls.cipherSuites[1]",
            "listed twice",
        ),
        warn_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_3", "cipherSuites": ["ECDHE-RSA-AES256-GCM-SHA384"]}),
            "spec.servers[1].tls.cipherSuites",
            "has no effect with minProtocolVersion TLSV1_3",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLS9"}),
            "spec.servers[1].tls.minProtocolVersion",
            "allowed: TLS_AUTO",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "credentialName": "c", "credentialNames": ["a", "b"]}),
            "spec.servers[1].tls.credentialNames",
            "not supported by Trellis yet",
        ),
        // Istio's current ServerTLSSettings fields Trellis does not do yet: refused by name,
        // never "unknown field".
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "MUTUAL", "credentialName": "c", "caCertCredentialName": "shop-ca"}),
            "spec.servers[1].tls.caCertCredentialName",
            "caCertCredentialName is not supported by Trellis yet: put the CA certificates in the credentialName Secret",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "SIMPLE", "tlsCertificates": [{"serverCertificate": "/rsa.crt", "privateKey": "/rsa.key"}, {"serverCertificate": "/ec.crt", "privateKey": "/ec.key"}]}),
            "spec.servers[1].tls.tlsCertificates",
            "tlsCertificates is not supported by Trellis yet: set one certificate",
        ),
        err_at(
            Gw,
            "spec.servers[1].tls",
            json!({"mode": "MUTUAL", "credentialName": "c", "insecureSkipVerify": true}),
            "spec.servers[1].tls.insecureSkipVerify",
            "insecureSkipVerify is not supported by Trellis yet: remove it; to let clients without a certificate through, use mode OPTIONAL_MUTUAL",
        ),
        err_at(
            Gw,
            "spec.servers[0].tls",
            json!({"mode": "SIMPLE", "credentialName": "c"}),
            "spec.servers[0].tls.mode",
            "only tls.httpsRedirect",
        ),
        ok(Gw, "spec.servers[0].tls", json!({"httpsRedirect": true})),
        err(Gw, "spec.servers[0].bind", json!("localhost"), "not an IP address"),
        ok(Gw, "spec.servers[0].bind", json!("0.0.0.0")),
        err(
            Gw,
            "spec.servers[0].bind",
            json!("10.0.0.7"),
            "not supported by Trellis yet",
        ),
        multi(
            Gw,
            vec![
                ("spec.servers[0].name", json!("dup")),
                ("spec.servers[1].name", json!("dup")),
            ],
            Expect::Error("spec.servers[1].name", "duplicate server name"),
        ),
        err(
            Gw,
            "spec.servers[0].defaultEndpoint",
            json!("127.0.0.1:8080"),
            "not supported by Trellis yet",
        ),
        warn(Gw, "spec.selector", d(), "no selector"),
        err_at(
            Gw,
            "spec.selector",
            json!({"app": "in gress"}),
            "spec.selector[app]",
            "label value",
        ),
        // ---------------- PeerAuthentication ----------------
        ok(Pa, "spec.mtls.mode", json!("PERMISSIVE")),
        err(
            Pa,
            "spec.mtls.mode",
            json!("OPTIONAL"),
            "allowed: UNSET, DISABLE, PERMISSIVE, STRICT",
        ),
        warn(Pa, "spec.mtls.mode", json!("DISABLE"), "plaintext"),
        ok(Pa, "spec.portLevelMtls", json!({"9090": {"mode": "PERMISSIVE"}})),
        err_at(
            Pa,
            "spec.portLevelMtls",
            json!({"http": {"mode": "STRICT"}}),
            "spec.portLevelMtls[http]",
            "not a port",
        ),
        err_at(
            Pa,
            "spec.portLevelMtls",
            json!({"70000": {"mode": "STRICT"}}),
            "spec.portLevelMtls[70000]",
            "not a port",
        ),
        err_at(
            Pa,
            "spec.portLevelMtls",
            json!({"9090": {}}),
            "spec.portLevelMtls[9090].mode",
            "is required",
        ),
        multi(
            Pa,
            vec![
                ("spec.selector", d()),
                ("spec.portLevelMtls", json!({"9090": {"mode": "DISABLE"}})),
            ],
            Expect::Error("spec.portLevelMtls", "need a workload selector"),
        ),
        err_at(
            Pa,
            "spec.selector.matchLabels",
            json!({"app/x/y": "db"}),
            "spec.selector.matchLabels[app/x/y]",
            "label key",
        ),
        err(Pa, "spec.mtls.strict", json!(true), "unknown field"),
        // ---------------- AuthorizationPolicy ----------------
        ok(Ap, "spec.action", json!("DENY")),
        ok(Ap, "spec.action", json!("AUDIT")),
        err(Ap, "spec.action", json!("CUSTOM"), "not supported by Trellis yet"),
        err(Ap, "spec.action", json!("REJECT"), "allowed: ALLOW"),
        warn(Ap, "spec.rules", d(), "denies every request"),
        ok(
            Ap,
            "spec.rules[0].from[0].source.principals[0]",
            json!("cluster.local/ns/shop/sa/*"),
        ),
        ok(Ap, "spec.rules[0].from[0].source.principals[0]", json!("*")),
        err(
            Ap,
            "spec.rules[0].from[0].source.principals[0]",
            json!("spiffe://cluster.local/ns/shop/sa/web"),
            "without the spiffe://",
        ),
        err(
            Ap,
            "spec.rules[0].from[0].source.principals[0]",
            json!("cluster.local/shop/web"),
            "not a principal",
        ),
        err(
            Ap,
            "spec.rules[0].from[0].source.principals[0]",
            json!("cluster.local/*/sa/web"),
            "prefix or a suffix",
        ),
        err(
            Ap,
            "spec.rules[0].from[0].source.principals",
            json!([]),
            "must not be empty",
        ),
        ok(
            Ap,
            "spec.rules[0].from[0].source",
            json!({"namespaces": ["shop", "prod-*"]}),
        ),
        err(
            Ap,
            "spec.rules[0].from[0].source.namespaces[0]",
            json!("Shop"),
            "not a namespace name",
        ),
        ok(
            Ap,
            "spec.rules[0].from[0].source",
            json!({"ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.0.0.1"]}),
        ),
        err_at(
            Ap,
            "spec.rules[0].from[0].source.ipBlocks",
            json!(["10.0.0/8"]),
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "not an IP address or CIDR",
        ),
        err_at(
            Ap,
            "spec.rules[0].from[0].source",
            json!({"ipBlocks": ["300.0.0.1"]}),
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "not an IP address or CIDR",
        ),
        warn_at(
            Ap,
            "spec.rules[0].from[0].source",
            json!({"ipBlocks": ["10.0.0.1/8"]}),
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "host bits",
        ),
        ok(
            Ap,
            "spec.rules[0].from[0].source",
            json!({"serviceAccounts": ["shop/payment", "web"]}),
        ),
        err_at(
            Ap,
            "spec.rules[0].from[0].source",
            json!({"serviceAccounts": ["shop/*"]}),
            "spec.rules[0].from[0].source.serviceAccounts[0]",
            "not a service account",
        ),
        err_at(
            Ap,
            "spec.rules[0].from[0].source",
            json!({"serviceAccounts": ["shop/payment"], "namespaces": ["shop"]}),
            "spec.rules[0].from[0].source",
            "cannot be combined with principals or namespaces",
        ),
        err(Ap, "spec.rules[0].from[0].source", json!({}), "at least one field"),
        ok(
            Ap,
            "spec.rules[0].from[0].source",
            json!({"requestPrincipals": ["*"], "notRequestPrincipals": ["https://issuer.example/*"]}),
        ),
        err(
            Ap,
            "spec.rules[0].from[0].source.requestPrincipals[0]",
            json!("a*b*"),
            "prefix or a suffix",
        ),
        ok(
            Ap,
            "spec.rules[0].to[0].operation",
            json!({"hosts": ["*.example.com"], "ports": ["8080"], "notPaths": ["/admin*"]}),
        ),
        err(
            Ap,
            "spec.rules[0].to[0].operation.ports[0]",
            json!("http"),
            "not a port",
        ),
        err(
            Ap,
            "spec.rules[0].to[0].operation.methods[0]",
            json!("get"),
            "case-sensitive",
        ),
        err(
            Ap,
            "spec.rules[0].to[0].operation.paths[0]",
            json!("records"),
            "starting with '/'",
        ),
        err(
            Ap,
            "spec.rules[0].to[0].operation.paths[0]",
            json!("/a/*/b"),
            "prefix or a suffix",
        ),
        err(
            Ap,
            "spec.rules[0].to[0].operation.hosts[0]",
            json!("a*b*"),
            "prefix or a suffix",
        ),
        err(Ap, "spec.rules[0].to[0].operation", json!({}), "at least one field"),
        ok(
            Ap,
            "spec.rules[0].when",
            json!([{"key": "request.headers[x-tenant]", "values": ["a"]}, {"key": "source.ip", "notValues": ["10.0.0.0/8"]}]),
        ),
        ok(
            Ap,
            "spec.rules[0].when",
            json!([{"key": "request.auth.claims[groups]", "values": ["admins"]},
                   {"key": "request.auth.claims[org][team]", "values": ["pay"]},
                   {"key": "request.auth.audiences", "values": ["shop"]},
                   {"key": "request.auth.presenter", "values": ["web"]},
                   {"key": "request.auth.principal", "values": ["https://issuer.example/*"]}]),
        ),
        err_at(
            Ap,
            "spec.rules[0].when",
            json!([{"key": "request.auth.claims[]", "values": ["x"]}]),
            "spec.rules[0].when[0].key",
            "not a claim key",
        ),
        // ---------------- RequestAuthentication ----------------
        ok(Ra, "spec.jwtRules[0].fromParams", json!(["access_token"])),
        ok(Ra, "spec.jwtRules[0].fromCookies", json!(["session"])),
        ok(Ra, "spec.jwtRules[0].forwardOriginalToken", json!(true)),
        ok(Ra, "spec.jwtRules[0].outputPayloadToHeader", json!("x-jwt-payload")),
        ok(Ra, "spec.jwtRules[0].timeout", json!("10s")),
        err(Ra, "spec.jwtRules[0].issuer", json!(""), "at least 1"),
        err(Ra, "spec.jwtRules[0].jwks", json!("{\"keys\": []}"), "no usable key"),
        err(Ra, "spec.jwtRules[0].jwks", json!("not json"), "not a JSON Web Key Set"),
        warn(
            Ra,
            "spec.jwtRules[0].jwks",
            json!("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"},{\"kty\":\"oct\",\"k\":\"AQAB\"}]}"),
            "keys[1]: key type \"oct\" is not supported",
        ),
        // Without jwks (and jwksUri), the keys are discovered from the issuer, a URL here.
        ok(Ra, "spec.jwtRules[0].jwks", d()),
        err(
            Ra,
            "spec.jwtRules[0].outputClaimToHeaders[0].header",
            json!("host"),
            "the Host header cannot be changed",
        ),
        err(
            Ra,
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
            json!("a..b"),
            "is not a claim",
        ),
        err(
            Ra,
            "spec.jwtRules[0].fromHeaders[0].name",
            json!("x jwt"),
            "not a valid header name",
        ),
        err_at(
            Ra,
            "spec.jwtRules[0].fromParams",
            json!(["a=b"]),
            "spec.jwtRules[0].fromParams[0]",
            "not a parameter or cookie name",
        ),
        err(Ra, "spec.jwtRules[0].timeout", json!("2m"), "at most 60s"),
        err_at(
            Ra,
            "spec.jwtRules[1]",
            json!({"issuer": "https://issuer.example", "jwks": "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}"}),
            "spec.jwtRules[1].issuer",
            "merge the two rules",
        ),
        err_at(
            Ra,
            "spec.targetRefs",
            json!([{"kind": "Service", "name": "web"}]),
            "spec",
            "set only one of selector or targetRefs",
        ),
        warn(Ra, "spec.jwtRules", json!([]), "every token is refused"),
        // jwksUri: fetched by the operator (Istio's JwksResolver), so an absolute http(s) URL.
        ok(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks.json"}),
        ),
        ok(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "https://issuer.example", "jwksUri": "http://jwks.auth.svc.cluster.local:8080/keys", "timeout": "2s"}),
        ),
        err_at(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "https://issuer.example", "jwksUri": "issuer.example/jwks.json"}),
            "spec.jwtRules[0].jwksUri",
            "is not an absolute URL",
        ),
        err_at(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "https://issuer.example", "jwksUri": "file:///etc/jwks.json"}),
            "spec.jwtRules[0].jwksUri",
            "https:// or http:// only",
        ),
        err_at(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks.json", "jwks": "{}"}),
            "spec.jwtRules[0]",
            "only one of jwks or jwksUri",
        ),
        // Neither jwks nor jwksUri: the keys are discovered from the issuer (OpenID Connect),
        // which must then be an http(s) URL without query or fragment.
        ok(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "https://issuer.example/realms/shop/"}),
        ),
        ok(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "http://keycloak.auth.svc.cluster.local:8080/realms/shop"}),
        ),
        err_at(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "testing@secure.istio.io"}),
            "spec.jwtRules[0].issuer",
            "the operator discovers the keys from the issuer (OpenID Connect",
        ),
        err_at(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "https://issuer.example/?tenant=a"}),
            "spec.jwtRules[0].issuer",
            "has a query or fragment",
        ),
        err_at(
            Ra,
            "spec.jwtRules[0]",
            json!({"issuer": "https://user:pw@issuer.example"}),
            "spec.jwtRules[0].issuer",
            "carries credentials",
        ),
        err_at(
            Ap,
            "spec.rules[0].when",
            json!([{"key": "source.color", "values": ["x"]}]),
            "spec.rules[0].when[0].key",
            "unknown key",
        ),
        err_at(
            Ap,
            "spec.rules[0].when",
            json!([{"key": "source.ip"}]),
            "spec.rules[0].when[0]",
            "set values or notValues",
        ),
        err_at(
            Ap,
            "spec.rules[0].when",
            json!([{"key": "destination.port", "values": ["x"]}]),
            "spec.rules[0].when[0].values[0]",
            "not a port",
        ),
        multi(
            Ap,
            vec![
                ("spec.selector", d()),
                (
                    "spec.targetRefs",
                    json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "ingress"}]),
                ),
            ],
            Expect::Valid,
        ),
        multi(
            Ap,
            vec![
                ("spec.selector", d()),
                ("spec.targetRefs", json!([{"kind": "Deployment", "name": "web"}])),
            ],
            Expect::Error("spec.targetRefs[0].kind", "use Service or Gateway"),
        ),
        multi(
            Ap,
            vec![
                ("spec.selector", d()),
                (
                    "spec.targetRefs",
                    json!([{"kind": "Service", "name": "web", "namespace": "other"}]),
                ),
            ],
            Expect::Error("spec.targetRefs[0].namespace", "own namespace"),
        ),
        err_at(
            Ap,
            "spec.targetRefs",
            json!([{"kind": "Service", "name": "web"}]),
            "spec",
            "only one of selector or targetRefs",
        ),
        err(
            Ap,
            "spec.provider",
            json!({"name": "ext-authz"}),
            "not supported by Trellis yet",
        ),
        err_at(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "retryOn": "unavailable"}),
            "spec.http[0].retries.retryOn",
            "not supported by Trellis yet",
        ),
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
