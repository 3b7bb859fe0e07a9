//! The VirtualService cases of the validator's table: hosts, gateways and exportTo, match,
//! routes and weights, redirect, directResponse and rewrite; tls and tcp routes.

use serde_json::json;

use super::Base::*;
use super::{Case, DEL, Expect, err, err_at, multi, ok, warn, warn_at};

/// Hosts, gateways, exportTo, match, routes and weights, redirect, directResponse, rewrite.
pub fn routing() -> Vec<Case> {
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
    ]
}

/// `tls` routes by SNI and `tcp` routes.
pub fn tls_and_tcp() -> Vec<Case> {
    let d = || json!(DEL);
    vec![
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
    ]
}
