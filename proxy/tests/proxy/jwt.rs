//! RequestAuthentication (JWT) through a real inbound proxy: tokens signed here with `ring`
//! (RSA from a test-only key in `tests/fixtures`, EC keys generated per run), verified by the
//! proxy against the pushed key set; refusals are 401 and never reach the app; policies on
//! `requestPrincipals` and `request.auth.*`.

use crate::support::*;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

const ISS: &str = "https://issuer.example";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The keys tokens are signed with, and their public key set.
struct Keys {
    rsa: RsaKeyPair,
    p256: EcdsaKeyPair,
    p384: EcdsaKeyPair,
}

impl Keys {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let ec = |alg: &'static signature::EcdsaSigningAlgorithm| {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap()
        };
        Self {
            rsa: RsaKeyPair::from_der(include_bytes!("../fixtures/jwt-rsa-2048.pkcs1.der")).unwrap(),
            p256: ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            p384: ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        }
    }

    fn jwks(&self) -> String {
        let rsa: signature::RsaPublicKeyComponents<Vec<u8>> = self.rsa.public().into();
        let ec = |kid: &str, crv: &str, k: &EcdsaKeyPair| {
            let point = k.public_key().as_ref();
            let half = (point.len() - 1) / 2;
            json!({"kty": "EC", "crv": crv, "kid": kid, "use": "sig",
                   "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..])})
        };
        json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "use": "sig",
             "n": b64(&rsa.n), "e": b64(&rsa.e)},
            ec("p256", "P-256", &self.p256),
            ec("p384", "P-384", &self.p384),
        ]})
        .to_string()
    }

    /// A token signed with `alg` (by the key that fits it).
    fn token(&self, alg: &str, claims: &Value) -> String {
        let kid = match alg {
            "ES256" => "p256",
            "ES384" => "p384",
            _ => "rsa",
        };
        let signed = format!(
            "{}.{}",
            b64(json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match alg {
            "ES256" => self.p256.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
            "ES384" => self.p384.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
            _ => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    other => panic!("no signer for {other}"),
                };
                let mut sig = vec![0; self.rsa.public().modulus_len()];
                self.rsa.sign(padding, &rng, signed.as_bytes(), &mut sig).unwrap();
                sig
            }
        };
        format!("{signed}.{}", b64(&sig))
    }
}

/// alice's claims, valid for ten minutes.
fn alice() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "shop", "exp": now() + 600, "iat": now(),
           "groups": ["admins"], "org": {"team": "payments"}})
}

fn with(mut claims: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn provider(keys: &Keys, extra: Value) -> Value {
    with(
        json!({"source": "RequestAuthentication shop/jwt/jwtRules[0]", "issuer": ISS,
               "audiences": ["shop"], "jwks": keys.jwks()}),
        extra,
    )
}

/// A plaintext inbound listener (mTLS DISABLE) in front of one app, with these providers
/// and policies.
fn inbound(app: &Upstream, jwt: Value, authorization: Value) -> Value {
    json!({
        "version": "jwt-1",
        "node": {"workload": "payment", "namespace": "shop", "app": "payment", "version": "v1"},
        "listeners": [{
            "name": "inbound", "address": "127.0.0.1:0", "direction": "inbound", "protocol": "http",
            "virtualHosts": [{"name": "inbound", "domains": ["*"], "routes": [forward_route("app")]}],
        }],
        "clusters": [cluster("app", &[app])],
        "inbound": {"mtls": {"mode": "DISABLE"}, "jwt": jwt, "authorization": authorization},
    })
}

async fn bearer(addr: std::net::SocketAddr, token: &str) -> Reply {
    send(
        addr,
        "GET",
        "payment",
        "/",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_pass_and_the_token_is_not_forwarded() {
    let keys = Keys::new();
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(inbound(&app, json!([provider(&keys, json!({}))]), json!([]))).await;
    let addr = proxy.addr("inbound").await;
    for alg in ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"] {
        let reply = bearer(addr, &keys.token(alg, &alice())).await;
        assert_eq!(reply.status, 200, "{alg}: {}", reply.body);
        assert!(
            !app.last_seen().headers.contains_key("authorization"),
            "{alg}: the token is removed unless forwardOriginalToken"
        );
    }
    // No token: allowed, unauthenticated (Istio's semantics).
    assert_eq!(get(addr, "payment", "/").await.status, 200);
    assert_eq!(app.hits(), 7);
}

#[tokio::test]
async fn invalid_tokens_are_refused_with_401_before_the_app() {
    let keys = Keys::new();
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(inbound(&app, json!([provider(&keys, json!({}))]), json!([]))).await;
    let addr = proxy.addr("inbound").await;
    let good = keys.token("RS256", &alice());
    let parts: Vec<&str> = good.split('.').collect();
    let forged_payload = b64(with(alice(), json!({"sub": "mallory"})).to_string().as_bytes());
    let unsigned = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let cases = [
        (
            "expired",
            keys.token("ES256", &with(alice(), json!({"exp": now() - 120}))),
            "Jwt is expired",
        ),
        (
            "not yet valid",
            keys.token("ES256", &with(alice(), json!({"nbf": now() + 600}))),
            "Jwt not yet valid",
        ),
        (
            "wrong audience",
            keys.token("RS256", &with(alice(), json!({"aud": ["bank"]}))),
            "Audiences in Jwt are not allowed",
        ),
        (
            "wrong issuer",
            keys.token("RS256", &with(alice(), json!({"iss": "https://evil.example"}))),
            "Jwt issuer is not configured",
        ),
        (
            "bad signature",
            format!("{}.{forged_payload}.{}", parts[0], parts[2]),
            "Jwt verification fails",
        ),
        ("alg none", unsigned, "Jwt algorithm is not supported"),
        (
            "oversized",
            format!("{}.{}.{}", parts[0], "A".repeat(17 * 1024), parts[2]),
            "Jwt is too long",
        ),
        (
            "garbage",
            "not-a-jwt".to_string(),
            "Jwt is not in the form of Header.Payload.Signature",
        ),
    ];
    for (what, token, body) in cases {
        let reply = bearer(addr, &token).await;
        assert_eq!(reply.status, 401, "{what}");
        assert_eq!(reply.body, body, "{what}");
        assert_eq!(
            reply.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
            "{what}"
        );
    }
    assert_eq!(app.hits(), 0, "no refused request reaches the app");
    let metrics = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(metrics.contains("trellis_proxy_jwt_rejected_total 8"), "{metrics}");
    assert!(!metrics.contains(&good[..40]), "no token in metrics");
}

#[tokio::test]
async fn unavailable_keys_fail_closed() {
    let keys = Keys::new();
    let app = Upstream::start("app").await;
    let jwt = json!([provider(
        &keys,
        json!({"jwks": "", "jwksUnavailable": "GET https://issuer.example/jwks: connection refused"})
    )]);
    let proxy = Proxy::start(inbound(&app, jwt, json!([]))).await;
    let addr = proxy.addr("inbound").await;
    let reply = bearer(addr, &keys.token("RS256", &alice())).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body, "Jwks doesn't have key to match kid or alg from Jwt");
    assert_eq!(get(addr, "payment", "/").await.status, 200, "no token: still allowed");
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn tokens_from_a_header_with_prefix_and_from_a_query_parameter() {
    let keys = Keys::new();
    let app = Upstream::start("app").await;
    let jwt = json!([provider(
        &keys,
        json!({
            "fromHeaders": [{"name": "x-jwt-assertion", "prefix": "Token "}],
            "fromParams": ["jwt"],
        })
    )]);
    let proxy = Proxy::start(inbound(&app, jwt, json!([]))).await;
    let addr = proxy.addr("inbound").await;
    let good = keys.token("ES256", &alice());
    let bad = keys.token("ES256", &with(alice(), json!({"exp": now() - 3600})));
    let h = |t: &str| {
        let value = format!("Token {t}");
        async move { send(addr, "GET", "payment", "/", &[("x-jwt-assertion", &value)]).await }
    };
    assert_eq!(h(&good).await.status, 200);
    assert!(!app.last_seen().headers.contains_key("x-jwt-assertion"));
    assert_eq!(h(&bad).await.status, 401, "the configured header is read");
    let q = |t: &str| {
        let path = format!("/?a=1&jwt={t}");
        async move { get(addr, "payment", &path).await }
    };
    assert_eq!(q(&good).await.status, 200);
    assert_eq!(q(&bad).await.status, 401, "the configured parameter is read");
    // The default locations are not read once the rule names its own.
    assert_eq!(bearer(addr, &bad).await.status, 200);
    assert_eq!(get(addr, "payment", &format!("/?access_token={bad}")).await.status, 200);
}

#[tokio::test]
async fn claims_and_payload_are_written_to_headers_and_the_token_forwarded_on_request() {
    let keys = Keys::new();
    let app = Upstream::start("app").await;
    let jwt = json!([provider(
        &keys,
        json!({
            "forwardOriginalToken": true,
            "outputPayloadToHeader": "x-jwt-payload",
            "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "x-team", "claim": "org.team"}],
        })
    )]);
    let proxy = Proxy::start(inbound(&app, jwt, json!([]))).await;
    let addr = proxy.addr("inbound").await;
    let token = keys.token("RS256", &alice());
    let reply = send(
        addr,
        "GET",
        "payment",
        "/",
        &[("authorization", &format!("Bearer {token}")), ("x-sub", "forged")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = app.last_seen().headers;
    assert_eq!(seen["x-sub"], "alice");
    assert_eq!(seen["x-team"], "payments");
    assert_eq!(seen["x-jwt-payload"], token.split('.').nth(1).unwrap());
    assert_eq!(seen["authorization"], format!("Bearer {token}").as_str());
    // Without a token a client's own "claims" do not pass.
    let reply = send(addr, "GET", "payment", "/", &[("x-sub", "forged")]).await;
    assert_eq!(reply.status, 200);
    assert!(!app.last_seen().headers.contains_key("x-sub"));
}

#[tokio::test]
async fn policies_on_request_principals_and_claims() {
    let keys = Keys::new();
    let app = Upstream::start("app").await;
    let policies = json!([
        {"name": "admins-only", "namespace": "shop", "action": "ALLOW", "rules": [{
            "from": [{"requestPrincipals": [{"exact": format!("{ISS}/alice")}, {"exact": format!("{ISS}/bob")}]}],
            "when": [{"key": "request.auth.claims[groups]", "values": [{"exact": "admins"}]},
                     {"key": "request.auth.audiences", "values": [{"exact": "shop"}]}],
        }]},
    ]);
    let proxy = Proxy::start(inbound(&app, json!([provider(&keys, json!({}))]), policies)).await;
    let addr = proxy.addr("inbound").await;
    let alice = keys.token("RS256", &alice());
    let bob = keys.token("RS256", &with(alice_claims_for("bob"), json!({"groups": ["dev"]})));
    let carol = keys.token("RS256", &alice_claims_for("carol"));
    assert_eq!(bearer(addr, &alice).await.status, 200);
    let denied = bearer(addr, &bob).await;
    assert_eq!(denied.status, 403, "bob is not in the admins group");
    assert_eq!(denied.body, "RBAC: access denied\n");
    assert_eq!(
        bearer(addr, &carol).await.status,
        403,
        "carol is not a listed principal"
    );
    assert_eq!(
        get(addr, "payment", "/").await.status,
        403,
        "no token: no request principal"
    );
    assert_eq!(app.hits(), 1);
    // Istio's "require a token": DENY notRequestPrincipals ["*"] (here on /private only).
    let deny_anonymous = json!([
        {"name": "deny-anonymous", "namespace": "shop", "action": "DENY", "rules": [{
            "from": [{"notRequestPrincipals": [{"prefix": ""}]}],
            "to": [{"paths": [{"prefix": "/private"}]}],
        }]},
    ]);
    let mut config = inbound(&app, json!([provider(&keys, json!({}))]), deny_anonymous);
    config["version"] = json!("jwt-2");
    proxy.apply(config).await.unwrap();
    assert_eq!(get(addr, "payment", "/private").await.status, 403);
    assert_eq!(get(addr, "payment", "/public").await.status, 200);
    let reply = send(
        addr,
        "GET",
        "payment",
        "/private",
        &[("authorization", &format!("Bearer {carol}"))],
    )
    .await;
    assert_eq!(reply.status, 200, "any verified token will do");
    assert_eq!(app.hits(), 3);
}

fn alice_claims_for(sub: &str) -> Value {
    with(alice(), json!({"sub": sub}))
}
