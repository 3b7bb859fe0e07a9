//! A JWT and the keys that verify it: a compact JWS split and decoded (bounded, before any
//! trust: [`Token`]), and a provider's JSON Web Keys turned into `ring` verifying keys
//! ([`Key`]) that check its signature for the token's algorithm and the key's curve.

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};
use trellis_contract::jwt::{EcCurve, JwsAlgorithm, KeyMaterial, MAX_TOKEN_BYTES, PublicJwk, base64url};

use super::JwtError;

/// A token split and decoded, not yet verified.
pub(super) struct Token {
    pub(super) alg: JwsAlgorithm,
    pub(super) kid: Option<String>,
    pub(super) issuer: String,
    /// `header.payload`: what the signature covers.
    signed: Vec<u8>,
    signature: Vec<u8>,
    /// The payload segment as sent (base64url).
    pub(super) payload_b64: String,
    pub(super) claims: Map<String, Value>,
}

impl Token {
    /// Split and decode `token`, bounded by [`MAX_TOKEN_BYTES`].
    pub(super) fn parse(token: &str) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed);
        };
        let json = |seg: &str| -> Result<Map<String, Value>, JwtError> {
            let bytes = base64url(seg).ok_or(JwtError::Malformed)?;
            serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
        };
        let header = json(h)?;
        let claims = json(p)?;
        let signature = base64url(s).ok_or(JwtError::Malformed)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(JwsAlgorithm::from_name)
            .ok_or(JwtError::Algorithm)?;
        let kid = header.get("kid").and_then(Value::as_str).map(str::to_string);
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(JwtError::UnknownIssuer)?
            .to_string();
        Ok(Self {
            alg,
            kid,
            issuer,
            signed: token.as_bytes()[..h.len() + 1 + p.len()].to_vec(),
            signature,
            payload_b64: p.to_string(),
            claims,
        })
    }

    /// A claim that is a string or an array of strings, as strings.
    pub(super) fn strings(&self, claim: &str) -> Vec<String> {
        match self.claims.get(claim) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => Vec::new(),
        }
    }
}

/// A key ring verifies with.
enum VerifyKey {
    Rsa(RsaPublicKeyComponents<Vec<u8>>),
    /// Curve and the uncompressed point (`04 || x || y`).
    Ec(EcCurve, Vec<u8>),
    Ed25519(Vec<u8>),
}

/// One key of a provider's set, ready to verify with.
pub(super) struct Key {
    pub(super) kid: Option<String>,
    pub(super) alg: Option<JwsAlgorithm>,
    pub(super) material: KeyMaterial,
    verify: VerifyKey,
}

/// The verifying key of a JSON Web Key.
pub(super) fn verify_key(k: &PublicJwk) -> Key {
    let verify = match &k.material {
        KeyMaterial::Rsa { n, e } => VerifyKey::Rsa(RsaPublicKeyComponents {
            n: n.clone(),
            e: e.clone(),
        }),
        KeyMaterial::Ec { curve, x, y } => {
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            VerifyKey::Ec(*curve, point)
        }
        KeyMaterial::Ed25519 { x } => VerifyKey::Ed25519(x.clone()),
    };
    Key {
        kid: k.kid.clone(),
        alg: k.alg,
        material: k.material.clone(),
        verify,
    }
}

impl Key {
    /// Whether this key verifies `t`'s signature with `t`'s algorithm.
    pub(super) fn verifies(&self, t: &Token) -> bool {
        let (msg, sig) = (t.signed.as_slice(), t.signature.as_slice());
        match &self.verify {
            VerifyKey::Rsa(k) => {
                let params = match t.alg {
                    JwsAlgorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    JwsAlgorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    JwsAlgorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    JwsAlgorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    JwsAlgorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    JwsAlgorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                k.verify(params, msg, sig).is_ok()
            }
            VerifyKey::Ec(curve, point) => {
                let alg = match (curve, t.alg) {
                    (EcCurve::P256, JwsAlgorithm::Es256) => &signature::ECDSA_P256_SHA256_FIXED,
                    (EcCurve::P384, JwsAlgorithm::Es384) => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => return false,
                };
                UnparsedPublicKey::new(alg, point).verify(msg, sig).is_ok()
            }
            VerifyKey::Ed25519(x) => {
                t.alg == JwsAlgorithm::EdDsa && UnparsedPublicKey::new(&signature::ED25519, x).verify(msg, sig).is_ok()
            }
        }
    }
}
