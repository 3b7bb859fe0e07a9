//! ServiceAccount identity: ES256-signed JWTs issued through the
//! TokenRequest API (`serviceaccounts/{name}/token`), audience-bound and
//! optionally bound to a Pod, verified by TokenReview and accepted as
//! bearer tokens by the API server. The public key is published at
//! `/openid/v1/jwks` with discovery at `/.well-known/openid-configuration`.

use std::sync::OnceLock;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::clock;
use crate::cluster::Cluster;
use crate::status::ApiError;

/// The issuer (and the API server's own audience), as in-cluster clients
/// expect it.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Default token lifetime when a TokenRequest names none (upstream: 1h).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// Base64url without padding (JWT encoding).
pub fn b64url(data: &[u8]) -> String {
    crate::pki::base64_encode(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

#[derive(Debug)]
struct Keys {
    pair: EcdsaKeyPair,
    kid: String,
}

/// Signs and verifies ServiceAccount tokens with one P-256 key per
/// kubesim instance.
#[derive(Debug)]
pub struct TokenIssuer {
    keys: OnceLock<Result<Keys, String>>,
    rng: SystemRandom,
}

impl Default for TokenIssuer {
    fn default() -> Self {
        Self {
            keys: OnceLock::new(),
            rng: SystemRandom::new(),
        }
    }
}

impl TokenIssuer {
    fn keys(&self) -> Result<&Keys, ApiError> {
        self.keys
            .get_or_init(|| {
                let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &self.rng)
                    .map_err(|e| format!("generating the signing key: {e}"))?;
                let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &self.rng)
                    .map_err(|e| format!("loading the signing key: {e}"))?;
                let kid =
                    b64url(&ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref()).as_ref()[..16]);
                Ok(Keys { pair, kid })
            })
            .as_ref()
            .map_err(|e| ApiError::internal(e.clone()))
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let keys = self.keys()?;
        let header = json!({"alg": "ES256", "kid": keys.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = keys
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| ApiError::internal(format!("signing a token: {e}")))?;
        Ok(format!("{input}.{}", b64url(sig.as_ref())))
    }

    /// Checks the signature and expiry and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Value, String> {
        let keys = self.keys().map_err(|e| e.message)?;
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("not a JWT".into());
        };
        let sig = crate::pki::base64_decode(s).ok_or("bad signature encoding")?;
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, keys.pair.public_key().as_ref())
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| "invalid signature")?;
        let claims: Value = serde_json::from_slice(&crate::pki::base64_decode(c).ok_or("bad claims encoding")?)
            .map_err(|e| e.to_string())?;
        let now = jiff::Timestamp::now().as_second();
        if claims["exp"].as_i64().is_none_or(|exp| exp < now) {
            return Err("token has expired".into());
        }
        Ok(claims)
    }

    /// The JSON Web Key Set with the verification key.
    pub fn jwks(&self) -> Result<Value, ApiError> {
        let keys = self.keys()?;
        let point = keys.pair.public_key().as_ref();
        // Uncompressed P-256 point: 0x04 || x (32) || y (32).
        let (x, y) = (&point[1..33], &point[33..65]);
        Ok(
            json!({"keys": [{"use": "sig", "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": keys.kid, "x": b64url(x), "y": b64url(y)}]}),
        )
    }
}

/// The OpenID discovery document for the issuer.
pub fn openid_configuration(server: &str) -> Value {
    json!({
        "issuer": ISSUER,
        "jwks_uri": format!("{server}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"]
    })
}

fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o.get("metadata")
        .and_then(|m| m.get(f))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Handles `POST .../serviceaccounts/{name}/token` (TokenRequest).
pub fn token_request(cluster: &Cluster, ns: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
    let sa_rt = cluster
        .catalog
        .get("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts not served"))?;
    let sa = cluster.get(&sa_rt, Some(ns), name)?;
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let audiences: Vec<Value> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a.clone(),
        _ => vec![json!(ISSUER)],
    };
    let ttl = spec["expirationSeconds"].as_i64().unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if ttl < 600 {
        return Err(ApiError::bad_request(
            "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
        ));
    }
    let now = jiff::Timestamp::now().as_second();
    let mut k8s = json!({"namespace": ns, "serviceaccount": {"name": name, "uid": meta(&sa, "uid")}});
    if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        let kind = bound["kind"].as_str().unwrap_or_default();
        if kind != "Pod" && kind != "Secret" {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of kind {kind:?}"
            )));
        }
        let plural = if kind == "Pod" { "pods" } else { "secrets" };
        let rt = cluster
            .catalog
            .get("", "v1", plural)
            .ok_or_else(|| ApiError::internal("pods not served"))?;
        let obj = cluster.get(&rt, Some(ns), bound["name"].as_str().unwrap_or_default())?;
        if bound["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u != meta(&obj, "uid"))
        {
            return Err(ApiError::conflict(&rt, meta(&obj, "name")));
        }
        k8s[kind.to_ascii_lowercase()] = json!({"name": meta(&obj, "name"), "uid": meta(&obj, "uid")});
    }
    let claims = json!({
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "aud": audiences,
        "iat": now, "nbf": now, "exp": now + ttl,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": k8s,
    });
    let token = cluster.tokens.sign(&claims)?;
    let expiry = jiff::Timestamp::from_second(now + ttl)
        .map(|t| t.to_string())
        .unwrap_or_default();
    Ok(json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": clock::now_rfc3339()},
        "spec": {"audiences": claims["aud"], "expirationSeconds": ttl, "boundObjectRef": spec.get("boundObjectRef").cloned().unwrap_or(Value::Null)},
        "status": {"token": token, "expirationTimestamp": expiry},
    }))
}

/// The user a valid token stands for, or why it is not valid. `audiences`
/// empty means the API server's own audience.
pub fn authenticate(cluster: &Cluster, token: &str, audiences: &[String]) -> Result<(Value, Vec<String>), String> {
    let claims = cluster.tokens.verify(token)?;
    let wanted: Vec<String> = if audiences.is_empty() {
        vec![ISSUER.to_string()]
    } else {
        audiences.to_vec()
    };
    let token_aud: Vec<String> = claims["aud"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let matched: Vec<String> = wanted.into_iter().filter(|a| token_aud.contains(a)).collect();
    if matched.is_empty() {
        return Err("token audiences do not match".into());
    }
    let k = &claims["kubernetes.io"];
    let ns = k["namespace"].as_str().unwrap_or_default();
    let sa_name = k
        .pointer("/serviceaccount/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sa_uid = k
        .pointer("/serviceaccount/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let still = |plural: &str, name: &str, uid: &str| {
        cluster
            .catalog
            .get("", "v1", plural)
            .and_then(|rt| cluster.store.get(&Cluster::key(&rt, Some(ns), name)))
            .is_some_and(|o| meta(&o, "uid") == uid && o.pointer("/metadata/deletionTimestamp").is_none())
    };
    if !still("serviceaccounts", sa_name, sa_uid) {
        return Err(format!("service account {ns}/{sa_name} has been deleted"));
    }
    let mut extra = json!({"authentication.kubernetes.io/credential-id": [format!("JTI={}", claims["jti"].as_str().unwrap_or_default())]});
    if let Some(pod) = k.get("pod") {
        let (pname, puid) = (
            pod["name"].as_str().unwrap_or_default(),
            pod["uid"].as_str().unwrap_or_default(),
        );
        if !still("pods", pname, puid) {
            return Err(format!("pod {ns}/{pname} bound to the token no longer exists"));
        }
        extra["authentication.kubernetes.io/pod-name"] = json!([pname]);
        extra["authentication.kubernetes.io/pod-uid"] = json!([puid]);
    }
    let user = json!({
        "username": format!("system:serviceaccount:{ns}:{sa_name}"),
        "uid": sa_uid,
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
        "extra": extra,
    });
    Ok((user, matched))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::WriteOptions;

    #[test]
    fn tokens_are_signed_audience_bound_and_verifiable() {
        let c = Cluster::new();
        let ns = c.catalog.get("", "v1", "namespaces").unwrap();
        c.create(
            &ns,
            None,
            json!({"metadata": {"name": "app"}}),
            &WriteOptions::default(),
        )
        .unwrap();
        let req = token_request(&c, "app", "default", &json!({"spec": {"audiences": ["trellis"]}})).unwrap();
        let token = req["status"]["token"].as_str().unwrap();
        assert_eq!(token.split('.').count(), 3);
        let (user, auds) = authenticate(&c, token, &["trellis".to_string()]).unwrap();
        assert_eq!(user["username"], "system:serviceaccount:app:default");
        assert_eq!(auds, ["trellis"]);
        assert!(authenticate(&c, token, &[]).is_err(), "not valid for the API server");
        // Flip one character well inside the signature (the last one may
        // only carry padding bits).
        let mut forged: Vec<char> = token.chars().collect();
        let at = forged.len() - 10;
        forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
        let forged: String = forged.into_iter().collect();
        assert!(authenticate(&c, &forged, &["trellis".to_string()]).is_err());
        assert!(token_request(&c, "app", "nope", &json!({})).is_err());
        let jwks = c.tokens.jwks().unwrap();
        assert_eq!(jwks["keys"][0]["crv"], "P-256");
    }
}
