//! The cases of an HTTP route's policies in the validator's table: timeout, retries, fault
//! injection, mirror, CORS and header manipulation.

use serde_json::json;

use super::Base::*;
use super::{Case, Expect, err, err_at, multi, ok, warn, warn_at};

/// Timeout, retries, fault, mirror, CORS, headers.
pub fn cases() -> Vec<Case> {
    vec![
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
    ]
}
