//! End-user (JWT) authentication: the issuers a proxy accepts, with Istio's
//! RequestAuthentication semantics already resolved by the control plane, and the one
//! parser of JSON Web Key Sets — used by the API validator (inline `jwks`), the operator
//! (what it fetched from a `jwksUri`) and the proxy (what it verifies with).
//!
//! Every key set a proxy receives is inline: the operator fetches each `jwksUri` and pushes
//! the keys; proxies never fetch.
//!
//! # Guarantees
//! - Parsing is bounded: a key set over [`MAX_JWKS_BYTES`] or with more than
//!   [`MAX_JWKS_KEYS`] keys is refused whole, before any key is decoded.
//! - A key set that cannot be used (the operator could not fetch it) is carried as
//!   [`JwtProvider::jwks_unavailable`] with no keys, so every token of that issuer fails
//!   (closed), never passes.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The query parameter a token is read from when a provider names no location (Istio's).
pub const DEFAULT_TOKEN_PARAM: &str = "access_token";

/// The header a token is read from when a provider names no location, and its prefix.
pub const DEFAULT_TOKEN_HEADER: (&str, &str) = ("authorization", "Bearer ");

/// The most bytes a token may have; a longer one is refused (401) before it is decoded.
// why: real tokens are 1-3 KiB; 16 KiB leaves room for large claim sets while bounding the
// work and memory a client can make the proxy spend on one request.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The most bytes of one issuer's key set.
// why: identity providers publish a few keys (Google 2-3, Azure AD about 10, 2 KiB each).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// The most keys of one issuer's key set.
pub const MAX_JWKS_KEYS: usize = 32;

/// One accepted issuer (a `jwtRules` entry of a RequestAuthentication).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// Where it comes from: `RequestAuthentication ns/name` and the rule's index
    /// (`.../jwtRules[0]`), for logs and `/config_dump`.
    pub source: String,
    /// The `iss` a token must carry.
    pub issuer: String,
    /// Accepted audiences; a token needs one of them in `aud`. Empty: any audience.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The JSON Web Key Set (its JSON text), parsed by [`parse_jwks`].
    #[serde(default)]
    pub jwks: String,
    /// Why the key set is not available (the operator could not fetch `jwksUri`): every
    /// token of this issuer is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_unavailable: Option<String>,
    /// Headers the token is read from. With no header, parameter or cookie given,
    /// `Authorization: Bearer <token>` and `?access_token=` are read.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies the token is read from.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Keep the token in the request forwarded to the workload; otherwise the header it
    /// came in is removed (as Envoy does, a query parameter or cookie stays).
    #[serde(default)]
    pub forward_original_token: bool,
    /// A header receiving the verified payload (base64url of its JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Claims copied to request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

impl JwtProvider {
    /// Whether the provider names no location, so the default ones apply.
    pub fn uses_default_locations(&self) -> bool {
        self.from_headers.is_empty() && self.from_params.is_empty() && self.from_cookies.is_empty()
    }
}

/// A header a token is read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtHeader {
    /// The header.
    pub name: String,
    /// A prefix the value must start with, stripped before the token.
    #[serde(default)]
    pub prefix: String,
}

/// A claim copied to a request header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// The header (replacing one the client sent).
    pub header: String,
    /// The claim; `a.b` reaches into objects.
    pub claim: String,
}

/// A JWS signature algorithm Trellis verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl JwsAlgorithm {
    /// The algorithm an `alg` names; `none`, HMAC and unknown names are `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    /// Whether a key of this material can verify this algorithm.
    pub fn fits(self, key: &KeyMaterial) -> bool {
        let rsa = matches!(
            self,
            Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512
        );
        match key {
            KeyMaterial::Rsa { .. } => rsa,
            KeyMaterial::Ec {
                curve: EcCurve::P256, ..
            } => self == Self::Es256,
            KeyMaterial::Ec {
                curve: EcCurve::P384, ..
            } => self == Self::Es384,
            KeyMaterial::Ed25519 { .. } => self == Self::EdDsa,
        }
    }
}

/// Elliptic curves of EC keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
}

/// The public material of a key, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMaterial {
    /// `kty: RSA`: modulus and exponent, big-endian.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// `kty: EC`: the point's coordinates.
    Ec {
        /// Curve.
        curve: EcCurve,
        /// X coordinate.
        x: Vec<u8>,
        /// Y coordinate.
        y: Vec<u8>,
    },
    /// `kty: OKP, crv: Ed25519`.
    Ed25519 {
        /// The public key.
        x: Vec<u8>,
    },
}

/// One usable key of a key set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicJwk {
    /// `kid`, which a token's header may name.
    pub kid: Option<String>,
    /// `alg`, when the key is restricted to one algorithm.
    pub alg: Option<JwsAlgorithm>,
    /// The key.
    pub material: KeyMaterial,
}

/// A parsed key set: the usable keys, and why each other key was left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Jwks {
    /// Keys tokens can be verified with.
    pub keys: Vec<PublicJwk>,
    /// `keys[i]: reason` for every key left out (private keys, symmetric keys, keys for
    /// encryption, algorithms Trellis does not verify).
    pub skipped: Vec<String>,
}

/// Why a key set cannot be used at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Over [`MAX_JWKS_BYTES`].
    #[error("the key set has {0} bytes, more than the {MAX_JWKS_BYTES} allowed")]
    TooLarge(usize),
    /// Over [`MAX_JWKS_KEYS`].
    #[error("the key set has {0} keys, more than the {MAX_JWKS_KEYS} allowed")]
    TooManyKeys(usize),
    /// Not `{"keys": [...]}` JSON.
    #[error("not a JSON Web Key Set ({{\"keys\": [...]}}): {0}")]
    Syntax(String),
    /// No key Trellis can verify with.
    #[error("no usable key (RSA, EC P-256/P-384 or Ed25519 public keys): {0}")]
    NoUsableKey(String),
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Parse a JSON Web Key Set (RFC 7517) with the limits above.
pub fn parse_jwks(text: &str) -> Result<Jwks, JwksError> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge(text.len()));
    }
    let raw: RawJwks = serde_json::from_str(text).map_err(|e| JwksError::Syntax(e.to_string()))?;
    if raw.keys.len() > MAX_JWKS_KEYS {
        return Err(JwksError::TooManyKeys(raw.keys.len()));
    }
    let mut out = Jwks::default();
    for (i, k) in raw.keys.iter().enumerate() {
        match public_key(k) {
            Ok(key) => out.keys.push(key),
            Err(why) => out.skipped.push(format!("keys[{i}]: {why}")),
        }
    }
    if out.keys.is_empty() {
        let why = if out.skipped.is_empty() {
            "the set is empty".to_string()
        } else {
            out.skipped.join("; ")
        };
        return Err(JwksError::NoUsableKey(why));
    }
    Ok(out)
}

fn public_key(k: &serde_json::Map<String, serde_json::Value>) -> Result<PublicJwk, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match k.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("{name} is not a string")),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let v = text(name)?.ok_or_else(|| format!("{name} is missing"))?;
        base64url(v).ok_or_else(|| format!("{name} is not base64url"))
    };
    if text("use")?.is_some_and(|u| u != "sig") {
        return Err("not a signing key (use is not \"sig\")".into());
    }
    if k.contains_key("d") {
        return Err("a private key; publish only public keys".into());
    }
    let alg = match text("alg")? {
        None => None,
        Some(a) => Some(JwsAlgorithm::from_name(a).ok_or_else(|| format!("algorithm {a:?} is not supported"))?),
    };
    let material = match text("kty")? {
        Some("RSA") => KeyMaterial::Rsa {
            n: bytes("n")?,
            e: bytes("e")?,
        },
        Some("EC") => {
            let curve = match text("crv")? {
                Some("P-256") => EcCurve::P256,
                Some("P-384") => EcCurve::P384,
                other => return Err(format!("curve {other:?} is not supported (P-256, P-384)")),
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            let len = match curve {
                EcCurve::P256 => 32,
                EcCurve::P384 => 48,
            };
            if x.len() != len || y.len() != len {
                return Err(format!("x and y must have {len} bytes each for this curve"));
            }
            KeyMaterial::Ec { curve, x, y }
        }
        Some("OKP") if text("crv")? == Some("Ed25519") => {
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("an Ed25519 key has 32 bytes".into());
            }
            KeyMaterial::Ed25519 { x }
        }
        Some(other) => return Err(format!("key type {other:?} is not supported (RSA, EC, OKP Ed25519)")),
        None => return Err("kty is missing".into()),
    };
    if let Some(a) = alg
        && !a.fits(&material)
    {
        return Err(format!("algorithm {a:?} does not fit the key type"));
    }
    Ok(PublicJwk {
        kid: text("kid")?.map(str::to_string),
        alg,
        material,
    })
}

/// Claims whose string value is also matched word by word (OAuth scopes), as Istio does.
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// A verified token: the request's `request.auth.*` attributes.
#[derive(Clone)]
pub struct Authenticated {
    /// `<iss>/<sub>` (`request.auth.principal`, `requestPrincipals`).
    pub principal: String,
    /// `aud`, one or many (`request.auth.audiences`).
    pub audiences: Vec<String>,
    /// `azp` (`request.auth.presenter`).
    pub presenter: Option<String>,
    /// Every claim (`request.auth.claims[...]`).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticated")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Authenticated {
    /// The claim at `path` (`["a", "b"]` is claim `a`'s member `b`), as the token has it.
    pub fn claim(&self, path: &[&str]) -> Option<&serde_json::Value> {
        claim_at(&self.claims, path)
    }

    /// The values of a claim (`path` reaches into objects): a string (also word by word
    /// for `scope` and `permission`), each string of a list, a number or boolean as text.
    pub fn claim_values(&self, path: &[&str]) -> Vec<String> {
        let v = claim_at(&self.claims, path);
        let mut out = Vec::new();
        let mut push = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Number(n) => out.push(n.to_string()),
            serde_json::Value::Bool(b) => out.push(b.to_string()),
            _ => {}
        };
        match v {
            Some(serde_json::Value::Array(items)) => items.iter().for_each(&mut push),
            Some(v) => push(v),
            None => {}
        }
        if let [name] = path
            && SPACE_DELIMITED.contains(name)
            && out.len() == 1
            && out[0].contains(' ')
        {
            let words: Vec<String> = out[0]
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect();
            out.extend(words);
        }
        out
    }
}

/// The claim at `path` (`["a", "b"]` is claim `a`'s member `b`).
fn claim_at<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &[&str],
) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(claims.get(*first)?, |v, p| v.get(*p))
}

/// Decode base64url, with or without padding (key sets in the wild carry both).
pub fn base64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// The claim path a `request.auth.claims[a][b]` condition key names (`["a", "b"]`).
pub fn condition_claim(key: &str) -> Option<Vec<&str>> {
    let rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, tail) = inner.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        path.push(name);
        rest = tail;
    }
    (!path.is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = r#"{"kty":"RSA","kid":"r1","alg":"RS256","n":"AQAB","e":"AQAB"}"#;

    #[test]
    fn keys_are_parsed_and_unusable_ones_are_named() {
        let text = format!(
            r#"{{"keys":[{RSA},
            {{"kty":"oct","k":"c2VjcmV0"}},
            {{"kty":"RSA","n":"AQAB","e":"AQAB","use":"enc"}},
            {{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}},
            {{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}"}}]}}"#,
            x = "A".repeat(43)
        );
        let jwks = parse_jwks(&text).unwrap();
        assert_eq!(jwks.keys.len(), 2);
        assert_eq!(jwks.keys[0].kid.as_deref(), Some("r1"));
        assert_eq!(jwks.keys[0].alg, Some(JwsAlgorithm::Rs256));
        assert!(matches!(
            jwks.keys[1].material,
            KeyMaterial::Ec {
                curve: EcCurve::P256,
                ..
            }
        ));
        assert_eq!(jwks.skipped.len(), 3, "{:?}", jwks.skipped);
        assert!(jwks.skipped[0].starts_with("keys[1]: key type \"oct\""));
        assert!(jwks.skipped[2].contains("private key"));
    }

    #[test]
    fn limits_and_syntax() {
        let big = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(MAX_JWKS_BYTES));
        assert!(matches!(parse_jwks(&big), Err(JwksError::TooLarge(_))));
        let many = format!(r#"{{"keys":[{}]}}"#, vec![RSA; MAX_JWKS_KEYS + 1].join(","));
        assert_eq!(parse_jwks(&many), Err(JwksError::TooManyKeys(MAX_JWKS_KEYS + 1)));
        assert!(matches!(parse_jwks("[]"), Err(JwksError::Syntax(_))));
        assert!(matches!(parse_jwks(r#"{"keys":[]}"#), Err(JwksError::NoUsableKey(_))));
        let none = r#"{"keys":[{"kty":"RSA","alg":"none","n":"AQAB","e":"AQAB"}]}"#;
        assert!(matches!(parse_jwks(none), Err(JwksError::NoUsableKey(w)) if w.contains("\"none\"")));
        let bad = r#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#;
        assert!(matches!(parse_jwks(bad), Err(JwksError::NoUsableKey(w)) if w.contains("n is not base64url")));
    }

    #[test]
    fn claim_condition_keys() {
        assert_eq!(condition_claim("request.auth.claims[groups]"), Some(vec!["groups"]));
        assert_eq!(condition_claim("request.auth.claims[a][b]"), Some(vec!["a", "b"]));
        assert_eq!(condition_claim("request.auth.claims[]"), None);
        assert_eq!(condition_claim("request.auth.claims"), None);
        assert_eq!(condition_claim("request.auth.claims[a]x"), None);
        assert_eq!(condition_claim("request.auth.principal"), None);
    }

    #[test]
    fn base64url_with_and_without_padding() {
        assert_eq!(base64url("AQAB"), Some(vec![1, 0, 1]));
        assert_eq!(base64url("AQ=="), Some(vec![1]));
        assert_eq!(base64url("AQ"), Some(vec![1]));
        assert_eq!(base64url("A+/"), None);
    }
}
