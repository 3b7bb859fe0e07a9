//! End-user authentication: JWTs verified against the issuers the control plane pushed
//! (Istio's RequestAuthentication, as Envoy's `jwt_authn` filter enforces it for Istio:
//! any one provider, missing tokens allowed).
//!
//! - A request with no token passes unauthenticated; AuthorizationPolicies that need a
//!   request principal or a claim then do not match it.
//! - The first token found (each provider's locations in order: `fromHeaders`,
//!   `fromParams`, `fromCookies`, or by default `Authorization: Bearer` and
//!   `?access_token=`) is verified by a provider whose `issuer` it names and that reads
//!   tokens there: signature (RS256/384/512, PS256/384/512, ES256/384, EdDSA; the key chosen
//!   by `kid` and algorithm; `alg: none` and HMAC are refused), `exp` and `nbf` with
//!   [`CLOCK_SKEW_SECS`] of skew, and the audience. Any failure is a 401 (see [`JwtError`]).
//! - A verified token makes `<iss>/<sub>` the request principal and its claims the
//!   `request.auth.*` attributes; its header is removed unless `forwardOriginalToken`; the
//!   payload and claims are written to the configured headers.
//! - The configured output headers are removed from every request first, so a client
//!   cannot send its own "verified" claims (Envoy leaves them when no token is present; a
//!   deliberate difference).
//!
//! # Guarantees
//! Parsing is bounded: a token over [`MAX_TOKEN_BYTES`](trellis_contract::jwt::MAX_TOKEN_BYTES) or without exactly three segments
//! is refused before any decoding; key sets are bounded by the contract's parser. Tokens
//! and claims never reach a log: errors name the failure, never the token
//! ([`Authenticated`]'s `Debug` shows the principal only).

mod token;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use serde_json::Value;
pub use trellis_contract::jwt::Authenticated;
use trellis_contract::jwt::{DEFAULT_TOKEN_HEADER, DEFAULT_TOKEN_PARAM, JwtProvider, parse_jwks};

use self::token::{Key, Token, verify_key};

/// Clock skew tolerated on `exp` and `nbf` (Envoy's default).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Why a provider cannot be used (the config is rejected; the contract validator prevents it).
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// The key set does not parse.
    #[error("JWT provider {source_name}: {reason}")]
    Jwks {
        /// The provider's source.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// A location or output header that is no header name.
    #[error("JWT provider {source_name}: {name:?} is not a header name")]
    Header {
        /// The provider's source.
        source_name: String,
        /// The bad name.
        name: String,
    },
}

/// Why a request's token is refused (answered 401, the message as the body). The messages
/// are Envoy's, so clients and runbooks written for Istio read the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Over [`MAX_TOKEN_BYTES`](trellis_contract::jwt::MAX_TOKEN_BYTES).
    #[error("Jwt is too long")]
    TooLong,
    /// Not three base64url segments with a JSON header and payload.
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    /// `alg` is `none`, HMAC or unknown.
    #[error("Jwt algorithm is not supported")]
    Algorithm,
    /// No provider accepts its issuer at the location it was found.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// The issuer's keys are not available (its `jwksUri` could not be fetched) or none
    /// fits the token's `kid` and `alg`.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoKey,
    /// No key verifies the signature.
    #[error("Jwt verification fails")]
    Signature,
    /// `exp` passed.
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` ahead.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// No accepted audience.
    #[error("Audiences in Jwt are not allowed")]
    Audience,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

struct Provider {
    issuer: String,
    audiences: Vec<String>,
    keys: Vec<Key>,
    /// Indexes into [`Authenticator::locations`].
    locations: Vec<usize>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, Vec<String>)>,
}

/// The providers of a workload, compiled once per config.
#[derive(Default)]
pub struct Authenticator {
    providers: Vec<Provider>,
    /// Every provider's locations, deduplicated, in order.
    locations: Vec<Location>,
    /// The output headers of every provider, removed from each request first.
    outputs: Vec<HeaderName>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.providers.iter().map(|p| &p.issuer).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn header_name(source: &str, name: &str) -> Result<HeaderName, AuthnError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| AuthnError::Header {
        source_name: source.to_string(),
        name: name.to_string(),
    })
}

impl Authenticator {
    /// Compile the inbound policy's JWT providers.
    pub fn compile(providers: &[JwtProvider]) -> Result<Self, AuthnError> {
        let mut out = Self::default();
        for p in providers {
            let keys = match &p.jwks_unavailable {
                Some(_) => Vec::new(),
                None => parse_jwks(&p.jwks)
                    .map_err(|e| AuthnError::Jwks {
                        source_name: p.source.clone(),
                        reason: e.to_string(),
                    })?
                    .keys
                    .iter()
                    .map(verify_key)
                    .collect(),
            };
            let mut wanted = Vec::new();
            if p.uses_default_locations() {
                let (name, prefix) = DEFAULT_TOKEN_HEADER;
                wanted.push(Location::Header {
                    name: HeaderName::from_static(name),
                    prefix: prefix.to_string(),
                });
                wanted.push(Location::Param(DEFAULT_TOKEN_PARAM.to_string()));
            }
            for h in &p.from_headers {
                wanted.push(Location::Header {
                    name: header_name(&p.source, &h.name)?,
                    prefix: h.prefix.clone(),
                });
            }
            wanted.extend(p.from_params.iter().cloned().map(Location::Param));
            wanted.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
            let mut locations = Vec::new();
            for l in wanted {
                let i = match out.locations.iter().position(|o| *o == l) {
                    Some(i) => i,
                    None => {
                        out.locations.push(l);
                        out.locations.len() - 1
                    }
                };
                locations.push(i);
            }
            let payload_header = match &p.output_payload_to_header {
                Some(h) => Some(header_name(&p.source, h)?),
                None => None,
            };
            let mut claim_headers = Vec::new();
            for c in &p.output_claim_to_headers {
                let path = c.claim.split('.').map(str::to_string).collect();
                claim_headers.push((header_name(&p.source, &c.header)?, path));
            }
            out.outputs.extend(payload_header.iter().cloned());
            out.outputs.extend(claim_headers.iter().map(|(h, _)| h.clone()));
            out.providers.push(Provider {
                issuer: p.issuer.clone(),
                audiences: p.audiences.clone(),
                keys,
                locations,
                forward: p.forward_original_token,
                payload_header,
                claim_headers,
            });
        }
        Ok(out)
    }

    /// No provider: nothing to authenticate.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Authenticate a request at `now` (seconds since the epoch): `Ok(None)` without a
    /// token, the verified token, or why it is refused. On success the request's headers
    /// are rewritten (token removed unless forwarded, payload and claims written).
    pub fn authenticate(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        now: u64,
    ) -> Result<Option<Authenticated>, JwtError> {
        for h in &self.outputs {
            headers.remove(h);
        }
        let Some((location, token)) = self.find(headers, query) else {
            return Ok(None);
        };
        let token = Token::parse(&token)?;
        let mut first_error = None;
        for p in self
            .providers
            .iter()
            .filter(|p| p.issuer == token.issuer && p.locations.contains(&location))
        {
            match p.verify(&token, now) {
                Ok(()) => return Ok(Some(p.accept(token, &self.locations[location], headers))),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(JwtError::UnknownIssuer))
    }

    /// The first location holding a token, and the token.
    fn find(&self, headers: &HeaderMap, query: Option<&str>) -> Option<(usize, String)> {
        self.locations.iter().enumerate().find_map(|(i, l)| {
            let token = match l {
                Location::Header { name, prefix } => headers.get_all(name).iter().find_map(|v| {
                    let v = v.to_str().ok()?;
                    let head = v.get(..prefix.len())?;
                    head.eq_ignore_ascii_case(prefix)
                        .then(|| v[prefix.len()..].trim().to_string())
                }),
                Location::Param(name) => query?.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == name).then(|| v.to_string())
                }),
                Location::Cookie(name) => headers.get_all(header::COOKIE).iter().find_map(|v| {
                    v.to_str().ok()?.split(';').find_map(|c| {
                        let (k, v) = c.trim().split_once('=')?;
                        (k == name).then(|| v.trim_matches('"').to_string())
                    })
                }),
            };
            token.filter(|t| !t.is_empty()).map(|t| (i, t))
        })
    }
}

impl Provider {
    fn verify(&self, t: &Token, now: u64) -> Result<(), JwtError> {
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| t.alg.fits(&k.material))
            .filter(|k| k.alg.is_none_or(|a| a == t.alg))
            .filter(|k| t.kid.is_none() || k.kid.is_none() || k.kid == t.kid)
            .collect();
        if candidates.is_empty() {
            return Err(JwtError::NoKey);
        }
        if !candidates.iter().any(|k| k.verifies(t)) {
            return Err(JwtError::Signature);
        }
        let time = |claim: &str| -> Result<Option<u64>, JwtError> {
            match t.claims.get(claim) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|n| *n >= 0.0)
                    .map(|n| Some(n as u64))
                    .ok_or(JwtError::Malformed),
            }
        };
        if let Some(exp) = time("exp")?
            && now > exp.saturating_add(CLOCK_SKEW_SECS)
        {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = time("nbf")?
            && now.saturating_add(CLOCK_SKEW_SECS) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        if !self.audiences.is_empty() && !t.strings("aud").iter().any(|a| self.audiences.contains(a)) {
            return Err(JwtError::Audience);
        }
        Ok(())
    }

    fn accept(&self, t: Token, location: &Location, headers: &mut HeaderMap) -> Authenticated {
        if !self.forward
            && let Location::Header { name, .. } = location
        {
            headers.remove(name);
        }
        let subject = t.claims.get("sub").and_then(Value::as_str).unwrap_or_default();
        let auth = Authenticated {
            principal: format!("{}/{subject}", t.issuer),
            audiences: t.strings("aud"),
            presenter: t.claims.get("azp").and_then(Value::as_str).map(str::to_string),
            claims: t.claims,
        };
        if let Some(h) = &self.payload_header
            && let Ok(v) = HeaderValue::from_str(&t.payload_b64)
        {
            headers.insert(h.clone(), v);
        }
        for (h, path) in &self.claim_headers {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let text = match auth.claim(&path) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                _ => None,
            };
            if let Some(v) = text.and_then(|t| HeaderValue::from_str(&t).ok()) {
                headers.insert(h.clone(), v);
            }
        }
        auth
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;
    use trellis_contract::jwt::MAX_TOKEN_BYTES;
    use trellis_contract::{ClaimToHeader, JwtHeader};

    const NOW: u64 = 1_800_000_000;
    const ISS: &str = "https://issuer.example";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    struct Signer(EcdsaKeyPair);

    impl Signer {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Self(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap())
        }

        fn jwks(&self) -> String {
            let point = self.0.public_key().as_ref();
            json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
                "x": b64(&point[1..33]), "y": b64(&point[33..])}]})
            .to_string()
        }

        fn token(&self, header: Value, claims: Value) -> String {
            let signed = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let sig = self.0.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
            format!("{signed}.{}", b64(sig.as_ref()))
        }

        fn es256(&self, claims: Value) -> String {
            self.token(json!({"alg": "ES256", "kid": "k1"}), claims)
        }
    }

    fn provider(jwks: String) -> JwtProvider {
        JwtProvider {
            source: "RequestAuthentication shop/jwt/jwtRules[0]".into(),
            issuer: ISS.into(),
            audiences: vec!["shop".into()],
            jwks,
            jwks_unavailable: None,
            from_headers: vec![],
            from_params: vec![],
            from_cookies: vec![],
            forward_original_token: false,
            output_payload_to_header: None,
            output_claim_to_headers: vec![],
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "alice", "aud": ["shop", "other"], "azp": "web",
               "exp": NOW + 600, "nbf": NOW - 10, "scope": "read write", "groups": ["admins"],
               "org": {"team": "pay"}})
    }

    #[test]
    fn a_valid_token_yields_principal_and_claims_and_is_removed() {
        let s = Signer::new();
        let a = Authenticator::compile(&[provider(s.jwks())]).unwrap();
        let mut h = bearer(&s.es256(claims()));
        let auth = a.authenticate(&mut h, None, NOW).unwrap().unwrap();
        assert_eq!(auth.principal, format!("{ISS}/alice"));
        assert_eq!(auth.audiences, ["shop", "other"]);
        assert_eq!(auth.presenter.as_deref(), Some("web"));
        assert_eq!(auth.claim_values(&["groups"]), ["admins"]);
        assert_eq!(auth.claim_values(&["org", "team"]), ["pay"]);
        assert_eq!(auth.claim_values(&["scope"]), ["read write", "read", "write"]);
        assert!(
            !h.contains_key(header::AUTHORIZATION),
            "the token is not forwarded by default"
        );
        assert!(!format!("{auth:?}").contains("admins"), "Debug shows no claims");
        // No token at all: unauthenticated, not refused.
        assert!(a.authenticate(&mut HeaderMap::new(), None, NOW).unwrap().is_none());
    }

    #[test]
    fn every_failure_is_named() {
        let s = Signer::new();
        let a = Authenticator::compile(&[provider(s.jwks())]).unwrap();
        let check = |token: String, want: JwtError| {
            assert_eq!(a.authenticate(&mut bearer(&token), None, NOW).unwrap_err(), want);
        };
        let with = |patch: Value| {
            let mut c = claims();
            for (k, v) in patch.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        check(s.es256(with(json!({"exp": NOW - 61}))), JwtError::Expired);
        // Within the skew it still passes.
        assert!(
            a.authenticate(&mut bearer(&s.es256(with(json!({"exp": NOW - 59})))), None, NOW)
                .is_ok()
        );
        check(s.es256(with(json!({"nbf": NOW + 61}))), JwtError::NotYetValid);
        check(s.es256(with(json!({"aud": "elsewhere"}))), JwtError::Audience);
        check(
            s.es256(with(json!({"iss": "https://evil.example"}))),
            JwtError::UnknownIssuer,
        );
        check(s.es256(with(json!({"exp": "tomorrow"}))), JwtError::Malformed);
        check(s.token(json!({"alg": "none"}), claims()), JwtError::Algorithm);
        check(s.token(json!({"alg": "HS256"}), claims()), JwtError::Algorithm);
        check(s.token(json!({"alg": "RS256"}), claims()), JwtError::NoKey);
        // Signed by another key with the same kid.
        check(Signer::new().es256(claims()), JwtError::Signature);
        // Payload swapped after signing.
        let good = s.es256(claims());
        let forged: Vec<&str> = good.split('.').collect();
        let other = b64(with(json!({"sub": "mallory"})).to_string().as_bytes());
        check(format!("{}.{other}.{}", forged[0], forged[2]), JwtError::Signature);
        check("a.b".into(), JwtError::Malformed);
        check("a.b.c.d".into(), JwtError::Malformed);
        check("x".repeat(MAX_TOKEN_BYTES + 1), JwtError::TooLong);
    }

    #[test]
    fn unavailable_keys_fail_closed() {
        let s = Signer::new();
        let mut p = provider(String::new());
        p.jwks_unavailable = Some("fetch failed".into());
        let a = Authenticator::compile(&[p]).unwrap();
        assert_eq!(
            a.authenticate(&mut bearer(&s.es256(claims())), None, NOW).unwrap_err(),
            JwtError::NoKey
        );
    }

    #[test]
    fn locations_outputs_and_forwarding() {
        let s = Signer::new();
        let mut p = provider(s.jwks());
        p.from_headers = vec![JwtHeader {
            name: "x-jwt".into(),
            prefix: String::new(),
        }];
        p.from_params = vec!["tok".into()];
        p.from_cookies = vec!["session".into()];
        p.forward_original_token = true;
        p.output_payload_to_header = Some("x-jwt-payload".into());
        p.output_claim_to_headers = vec![ClaimToHeader {
            header: "x-team".into(),
            claim: "org.team".into(),
        }];
        let a = Authenticator::compile(&[p]).unwrap();
        let token = s.es256(claims());
        let mut h = HeaderMap::new();
        h.insert("x-jwt", token.parse().unwrap());
        h.insert("x-team", "forged".parse().unwrap());
        assert!(a.authenticate(&mut h, None, NOW).unwrap().is_some());
        assert_eq!(h["x-jwt"], token.as_str(), "forwardOriginalToken keeps it");
        assert_eq!(h["x-team"], "pay");
        assert_eq!(h["x-jwt-payload"], token.split('.').nth(1).unwrap());
        let q = format!("a=1&tok={token}");
        assert!(a.authenticate(&mut HeaderMap::new(), Some(&q), NOW).unwrap().is_some());
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("x=1; session={token}").parse().unwrap());
        assert!(a.authenticate(&mut h, None, NOW).unwrap().is_some());
        // The default locations are not read once a provider names its own.
        assert!(a.authenticate(&mut bearer(&token), None, NOW).unwrap().is_none());
        // A client's own output headers never pass, token or not.
        let mut h = HeaderMap::new();
        h.insert("x-team", "forged".parse().unwrap());
        assert!(a.authenticate(&mut h, None, NOW).unwrap().is_none());
        assert!(!h.contains_key("x-team"));
    }
}
