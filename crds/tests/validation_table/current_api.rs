//! The fields of Istio's current API (istio/api, `data/istio-fields.txt`) Trellis lacked: each
//! refused where it is written, with "not supported by Trellis yet", the field's name and the
//! fix, or accepted where Trellis implements it (`retryBudget`); and the documents Istio's
//! validation rejects for them (its CRD's ranges and rules, `pkg/config/validation`) rejected
//! too, at the field.

use serde_json::json;

use super::Base::*;
use super::{Case, DEL, Expect, err, err_at, multi, ok, warn_at};

const NOT_SUPPORTED: &str = "is not supported by Trellis yet";

/// VirtualService, DestinationRule, RequestAuthentication, AuthorizationPolicy, Mesh.
pub fn cases() -> Vec<Case> {
    vec![
        // ---------------- VirtualService ----------------
        err(
            Vs,
            "spec.http[0].mirror_percent",
            json!(50),
            "mirror_percent is not supported by Trellis yet; use mirrorPercentage",
        ),
        // Implemented: the matched prefix (the base's match is prefix /pay) replaced.
        multi(
            Vs,
            vec![
                ("spec.http[0].route", json!(DEL)),
                ("spec.http[0].redirect", json!({"prefixRewrite": "/v2"})),
            ],
            Expect::Valid,
        ),
        // Istio: with authority; a match without uri matched "/".
        multi(
            Vs,
            vec![
                ("spec.http[0].route", json!(DEL)),
                ("spec.http[0].match", json!([{"headers": {"x-v": {"exact": "2"}}}])),
                (
                    "spec.http[0].redirect",
                    json!({"authority": "foo.example.com", "prefixRewrite": "/"}),
                ),
            ],
            Expect::Valid,
        ),
        // Istio: "redirect may only specify one of uri or prefix_rewrite".
        multi(
            Vs,
            vec![
                ("spec.http[0].route", json!(DEL)),
                ("spec.http[0].redirect", json!({"uri": "/v2", "prefixRewrite": "/v2"})),
            ],
            Expect::Error(
                "spec.http[0].redirect.prefixRewrite",
                "uri and prefixRewrite are mutually exclusive",
            ),
        ),
        // Istio: "redirect prefix_rewrite requires all URI matches to use prefix match type".
        multi(
            Vs,
            vec![
                ("spec.http[0].route", json!(DEL)),
                (
                    "spec.http[0].match",
                    json!([{"uri": {"prefix": "/a"}}, {"uri": {"exact": "/b"}}]),
                ),
                ("spec.http[0].redirect", json!({"prefixRewrite": "/v2"})),
            ],
            Expect::Error("spec.http[0].redirect.prefixRewrite", "match[1].uri is an exact match"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", json!(DEL)),
                ("spec.http[0].match", json!([{"uri": {"regex": "/b.*"}}])),
                ("spec.http[0].redirect", json!({"prefixRewrite": "/v2"})),
            ],
            Expect::Error("spec.http[0].redirect.prefixRewrite", "match[0].uri is a regex match"),
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", json!(DEL)),
                ("spec.http[0].redirect", json!({"prefixRewrite": "v2"})),
            ],
            Expect::Error("spec.http[0].redirect.prefixRewrite", "starting with '/'"),
        ),
        // Istio: "redirect must specify URI, authority, scheme, or port".
        multi(
            Vs,
            vec![("spec.http[0].route", json!(DEL)), ("spec.http[0].redirect", json!({}))],
            Expect::Error("spec.http[0].redirect", "a redirect must change something"),
        ),
        // Istio's default, what Trellis always does: accepted.
        ok(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "retryIgnorePreviousHosts": true}),
        ),
        err_at(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "retryIgnorePreviousHosts": false}),
            "spec.http[0].retries.retryIgnorePreviousHosts",
            "retryIgnorePreviousHosts: false is not supported by Trellis yet",
        ),
        err_at(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "retryIgnorePreviousHosts": "no"}),
            "spec.http[0].retries.retryIgnorePreviousHosts",
            "must be true or false",
        ),
        err(
            Vs,
            "spec.http[0].corsPolicy.allowOrigin",
            json!(["https://shop.example.com"]),
            "allowOrigin is not supported by Trellis yet: use allowOrigins",
        ),
        multi(
            Vs,
            vec![
                ("spec.http", json!(DEL)),
                (
                    "spec.tcp",
                    json!([{"match": [{"port": 5432, "sourceSubnet": "10.0.0.0/8"}],
                            "route": [{"destination": {"host": "payment"}}]}]),
                ),
            ],
            Expect::Error(
                "spec.tcp[0].match[0].sourceSubnet",
                "sourceSubnet is not supported by Trellis yet",
            ),
        ),
        // ---------------- DestinationRule ----------------
        // Implemented (Envoy's retry budget, in place of maxRetries): accepted.
        ok(
            Dr,
            "spec.trafficPolicy.retryBudget",
            json!({"percent": 20, "minRetryConcurrency": 3}),
        ),
        ok(Dr, "spec.subsets[0].trafficPolicy.retryBudget", json!({})),
        err_at(
            Dr,
            "spec.subsets[0].trafficPolicy.retryBudget",
            json!({"budgetInterval": "10s"}),
            "spec.subsets[0].trafficPolicy.retryBudget.budgetInterval",
            "budgetInterval is not supported by Trellis yet",
        ),
        multi(
            Dr,
            vec![
                ("spec.trafficPolicy.retryBudget", json!({"percent": 20})),
                (
                    "spec.subsets[0].trafficPolicy.connectionPool",
                    json!({"http": {"maxRetries": 5}}),
                ),
            ],
            Expect::Warning(
                "spec.subsets[0].trafficPolicy.connectionPool.http.maxRetries",
                "has no effect under the retryBudget",
            ),
        ),
        multi(
            Dr,
            vec![
                ("spec.trafficPolicy.retryBudget", json!({"percent": 20})),
                ("spec.trafficPolicy.connectionPool", json!({"http": {"maxRetries": 5}})),
            ],
            Expect::Warning(
                "spec.trafficPolicy.connectionPool.http.maxRetries",
                "has no effect under the retryBudget",
            ),
        ),
        // A port's entry replaces the policy whole and has no budget (Istio's
        // GetPortLevelTrafficPolicy): the rule's budget does not reach the rule's port entries,
        // nor a subset's port entry for a port the rule has an entry for; it does reach a
        // subset's port entry for another port.
        multi(
            Dr,
            vec![
                ("spec.trafficPolicy.retryBudget", json!({"percent": 20})),
                ("spec.trafficPolicy.portLevelSettings[0].port.number", json!(8080)),
                (
                    "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.maxRetries",
                    json!(5),
                ),
            ],
            Expect::Valid,
        ),
        multi(
            Dr,
            vec![
                ("spec.trafficPolicy.retryBudget", json!({"percent": 20})),
                (
                    "spec.subsets[0].trafficPolicy.portLevelSettings[0].port.number",
                    json!(8080),
                ),
                (
                    "spec.subsets[0].trafficPolicy.portLevelSettings[0].connectionPool.http.maxRetries",
                    json!(5),
                ),
            ],
            Expect::Warning(
                "spec.subsets[0].trafficPolicy.portLevelSettings[0].connectionPool.http.maxRetries",
                "has no effect under the retryBudget",
            ),
        ),
        multi(
            Dr,
            vec![
                ("spec.trafficPolicy.retryBudget", json!({"percent": 20})),
                ("spec.trafficPolicy.portLevelSettings[0].port.number", json!(8080)),
                ("spec.subsets[0].trafficPolicy.retryBudget", json!({"percent": 20})),
                (
                    "spec.subsets[0].trafficPolicy.portLevelSettings[0].port.number",
                    json!(8080),
                ),
                (
                    "spec.subsets[0].trafficPolicy.portLevelSettings[0].connectionPool.http.maxRetries",
                    json!(5),
                ),
            ],
            Expect::Valid,
        ),
        // Istio's CRD: percent is 0-100.
        err(Dr, "spec.trafficPolicy.retryBudget.percent", json!(150), "100"),
        err(Dr, "spec.trafficPolicy.retryBudget.percent", json!(-1), "0"),
        err(Dr, "spec.trafficPolicy.retryBudget.minRetryConcurrency", json!(-3), "0"),
        // Implemented (HTTP/2 PINGs on upstream connections): accepted at every level.
        ok(
            Dr,
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive",
            json!({"interval": "30s", "timeout": "10s"}),
        ),
        ok(
            Dr,
            "spec.trafficPolicy.portLevelSettings[0]",
            json!({"port": {"number": 8080}, "connectionPool": {"http": {"http2KeepAlive": {"interval": "1s", "timeout": "1s"}}}}),
        ),
        ok(
            Dr,
            "spec.subsets[0].trafficPolicy.connectionPool.http.http2KeepAlive",
            json!({"interval": "500ms", "timeout": "2s"}),
        ),
        // Istio sets no keepalive on a cluster that speaks the client's protocol: said, at
        // every level.
        warn_at(
            Dr,
            "spec.trafficPolicy.connectionPool.http",
            json!({"useClientProtocol": true, "http2KeepAlive": {"interval": "30s", "timeout": "10s"}}),
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive",
            "has no effect with useClientProtocol: true",
        ),
        warn_at(
            Dr,
            "spec.subsets[0].trafficPolicy.connectionPool.http",
            json!({"useClientProtocol": true, "http2KeepAlive": {"interval": "30s", "timeout": "10s"}}),
            "spec.subsets[0].trafficPolicy.connectionPool.http.http2KeepAlive",
            "remove useClientProtocol to send them",
        ),
        // Istio: "http2 keepalive interval is required", "... timeout is required".
        err_at(
            Dr,
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive",
            json!({"timeout": "10s"}),
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval",
            "is required when http2KeepAlive is set",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.portLevelSettings[0]",
            json!({"port": {"number": 8080}, "connectionPool": {"http": {"http2KeepAlive": {"interval": "30s"}}}}),
            "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.http2KeepAlive.timeout",
            "is required when http2KeepAlive is set",
        ),
        // Istio's ValidateDuration: at least 1ms.
        err_at(
            Dr,
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive",
            json!({"interval": "0s", "timeout": "10s"}),
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval",
            "the minimum is 1ms",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive",
            json!({"interval": "30s", "timeout": "10"}),
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout",
            "no unit",
        ),
        err(
            Dr,
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
            json!(5),
            "use consecutiveGatewayErrors or consecutive5xxErrors",
        ),
        err(
            Dr,
            "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes",
            json!([500, 503]),
            "outlierDetectionHttpErrorCodes is not supported by Trellis yet",
        ),
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"httpCookie": {"name": "session", "ttl": "1h", "attributes": [{"name": "SameSite", "value": "Strict"}]}}}),
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes",
            "attributes is not supported by Trellis yet",
        ),
        // Istio: a cookie attribute needs a name.
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"consistentHash": {"httpCookie": {"name": "session", "attributes": [{"value": "Strict"}]}}}),
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[0].name",
            "required",
        ),
        err(
            Dr,
            "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting",
            json!({"enabled": true}),
            "zoneAwareLbSetting is not supported by Trellis yet",
        ),
        // Istio: "only one of localityLbSetting and zoneAwareLbSetting can be set".
        err_at(
            Dr,
            "spec.trafficPolicy.loadBalancer",
            json!({"localityLbSetting": {"enabled": true}, "zoneAwareLbSetting": {"enabled": true}}),
            "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting",
            NOT_SUPPORTED,
        ),
        // ---------------- RequestAuthentication ----------------
        err(
            Ra,
            "spec.jwtRules[0].jwks_uri",
            json!("https://issuer.example/jwks"),
            "jwks_uri is not supported by Trellis yet; spell it jwksUri",
        ),
        // Istio: only one of jwks, jwksUri and jwks_uri.
        err(
            Ra,
            "spec.jwtRules[0].jwks_uri",
            json!("ftp://issuer.example/jwks"),
            NOT_SUPPORTED,
        ),
        err(
            Ra,
            "spec.jwtRules[0].spaceDelimitedClaims",
            json!(["roles"]),
            "spaceDelimitedClaims is not supported by Trellis yet",
        ),
        // ---------------- AuthorizationPolicy ----------------
        err(
            Ap,
            "spec.rules[0].from[0].source.trustDomains",
            json!(["example.com"]),
            "trustDomains is not supported by Trellis yet: use principals with the trust domain as a prefix",
        ),
        err(
            Ap,
            "spec.rules[0].from[0].source.notTrustDomains",
            json!(["example.com"]),
            "notTrustDomains is not supported by Trellis yet: use notPrincipals",
        ),
        // ---------------- Mesh ----------------
        err(
            Mesh,
            "spec.outboundTrafficPolicy.tls",
            json!({"mode": "SIMPLE"}),
            "tls is not supported by Trellis yet",
        ),
        // Istio's MeshConfig mode (the drift test's enum values): refused, with the fix.
        err_at(
            Mesh,
            "spec.outboundTrafficPolicy",
            json!({"mode": "ALLOW_ANY_DYNAMIC_DNS"}),
            "spec.outboundTrafficPolicy.mode",
            "mode ALLOW_ANY_DYNAMIC_DNS is not supported by Trellis yet: use ALLOW_ANY",
        ),
        ok(Mesh, "spec.outboundTrafficPolicy", json!({"mode": "ALLOW_ANY"})),
        // ---------------- VirtualService enum values ----------------
        // Istio's default value is UNSPECIFIED (behaves as FORWARD).
        ok(
            Vs,
            "spec.http[0].corsPolicy",
            json!({"allowOrigins": [{"exact": "https://shop.example"}], "unmatchedPreflights": "UNSPECIFIED"}),
        ),
    ]
}
