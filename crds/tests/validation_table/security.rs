//! The security cases of the validator's table: PeerAuthentication, AuthorizationPolicy and
//! RequestAuthentication.

use serde_json::json;

use super::Base::*;
use super::{Case, DEL, Expect, err, err_at, multi, ok, warn, warn_at};

/// PeerAuthentication, AuthorizationPolicy, RequestAuthentication.
pub fn cases() -> Vec<Case> {
    let d = || json!(DEL);
    vec![
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
    ]
}
