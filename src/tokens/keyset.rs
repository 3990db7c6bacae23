//! One JWKS document's verification keys, and verification of a login
//! service's access tokens with them.
//!
//! Only RS256 and ES256 (P-256) signing keys are used; keys of other kinds,
//! and keys marked for encryption, are left out. Upstream tokens are met on
//! sign-in answers, not on every request, so `jsonwebtoken` verifies them.

use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

/// Longer tokens are refused before any decoding.
pub(super) const MAX_JWT_LEN: usize = 16 * 1024;

struct UpstreamKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// One JWKS document's verification keys. Never empty.
pub struct KeySet {
    keys: Vec<UpstreamKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<_> = self
            .keys
            .iter()
            .map(|k| (k.kid.as_deref().unwrap_or("(no kid)"), k.alg))
            .collect();
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

/// Why a JWKS document gave no key set. `key` names the key at fault:
/// `key "kid"`, or `key #i` without a `kid`.
#[derive(thiserror::Error, Debug)]
pub enum JwksError {
    #[error("not a JWKS document: {0}")]
    NotJwks(serde_json::Error),
    #[error("{key}: {source}")]
    BadJwk {
        key: String,
        source: serde_json::Error,
    },
    #[error("{key}: {source}")]
    BadKey {
        key: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("no RS256 or ES256 signing key in the set")]
    NoUsableKey,
}

/// What the gateway takes from a verified upstream access token.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpstreamClaims {
    pub sub: String,
    pub client_id: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub aud: Option<Value>,
    #[serde(default)]
    pub session_handle: Option<String>,
    #[serde(default)]
    pub user_attributes: Option<Value>,
}

/// Why an upstream access token was not accepted.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum UpstreamVerifyError {
    /// Signed by one of the keys, but `exp` has passed.
    #[error("the access token has expired")]
    Expired(Box<UpstreamClaims>),
    #[error("the access token does not verify against the adopt JWKS")]
    Invalid,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys":[…]}`).
    pub fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set = serde_json::from_slice(json).map_err(JwksError::NotJwks)?;
        let mut keys = Vec::new();
        for (i, raw) in set.keys.into_iter().enumerate() {
            let name = match raw.get("kid").and_then(Value::as_str) {
                Some(kid) => format!("key {kid:?}"),
                None => format!("key #{i}"),
            };
            if !matches!(raw.get("kty").and_then(Value::as_str), Some("RSA" | "EC")) {
                continue;
            }
            let jwk: Jwk = serde_json::from_value(raw).map_err(|source| JwksError::BadJwk {
                key: name.clone(),
                source,
            })?;
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let key = DecodingKey::from_jwk(&jwk)
                .map_err(|source| JwksError::BadKey { key: name, source })?;
            keys.push(UpstreamKey {
                kid: jwk.common.key_id,
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(KeySet { keys })
    }

    /// The number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a set without a usable key is not loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when a key of the set has this `kid`.
    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The `kid`s of the set, for logs.
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
            .collect()
    }

    /// Verifies `token`'s signature with the key its `kid` names (or, without
    /// a `kid`, a key of its `alg`), then `iss` when `issuer` is set, then
    /// `exp` against `now_secs`. Never panics, whatever `token` is.
    pub fn verify(
        &self,
        token: &str,
        issuer: Option<&str>,
        now_secs: u64,
    ) -> Result<UpstreamClaims, UpstreamVerifyError> {
        use UpstreamVerifyError::*;
        if token.len() > MAX_JWT_LEN {
            return Err(Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid)?;
        // The key the `kid` names; without one, each key of the algorithm
        // in turn (a set holds few keys).
        let candidates = self.keys.iter().filter(|k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (None, _) => true,
                    (Some(_), None) => false,
                }
        });
        let mut verified = None;
        for key in candidates {
            let mut v = Validation::new(key.alg);
            // Expiry is checked below against the gateway's clock.
            v.validate_exp = false;
            v.validate_aud = false;
            v.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
            if let Some(iss) = issuer {
                v.set_issuer(&[iss]);
                v.required_spec_claims.insert("iss".into());
            }
            if let Ok(data) = jsonwebtoken::decode::<UpstreamClaims>(token, &key.key, &v) {
                verified = Some(data);
                break;
            }
        }
        let data = verified.ok_or(Invalid)?;
        let claims = data.claims;
        if now_secs >= claims.exp {
            return Err(Expired(Box::new(claims)));
        }
        Ok(claims)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::Algorithm as Alg;
    use crate::tokens::{generate_pem, AccessTokens};

    pub(crate) struct Signer {
        pub(crate) pem: Vec<u8>,
        pub(crate) kid: String,
        pub(crate) jwks: Value,
    }

    pub(crate) fn signer() -> Signer {
        let pem = generate_pem(Alg::Rs256).unwrap();
        let t = AccessTokens::from_pem(std::slice::from_ref(&pem)).unwrap();
        Signer {
            kid: t.kid().to_owned(),
            jwks: t.jwks(),
            pem,
        }
    }

    pub(crate) fn token(s: &Signer, kid: Option<&str>, claims: Value) -> String {
        let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
        h.kid = kid.map(str::to_owned);
        let k = jsonwebtoken::EncodingKey::from_rsa_pem(&s.pem).unwrap();
        jsonwebtoken::encode(&h, &claims, &k).unwrap()
    }

    pub(crate) fn claims(iss: &str, exp: u64) -> Value {
        serde_json::json!({"iss": iss, "sub": "u", "client_id": "web", "exp": exp,
            "user_attributes": {"email": "a@b"}})
    }

    #[test]
    fn verifies_signature_issuer_and_expiry() {
        let s = signer();
        let keys = KeySet::parse(s.jwks.to_string().as_bytes()).unwrap();
        let good = token(&s, Some(&s.kid), claims("va.gov sign in", 1000));
        let c = keys.verify(&good, Some("va.gov sign in"), 999).unwrap();
        assert_eq!((c.sub.as_str(), c.client_id.as_str()), ("u", "web"));
        assert_eq!(keys.verify(&good, None, 999).unwrap().exp, 1000);
        assert!(matches!(
            keys.verify(&good, Some("va.gov sign in"), 1000),
            Err(UpstreamVerifyError::Expired(c)) if c.sub == "u"
        ));
        assert_eq!(
            keys.verify(&good, Some("other"), 999).unwrap_err(),
            UpstreamVerifyError::Invalid
        );
        // Without a `kid`, a key of the token's algorithm is used.
        let no_kid = token(&s, None, claims("va.gov sign in", 1000));
        assert!(keys.verify(&no_kid, None, 999).is_ok());
        // ... whichever of several it is signed with.
        let two = serde_json::json!({"keys": [signer().jwks["keys"][0], s.jwks["keys"][0]]});
        let two = KeySet::parse(two.to_string().as_bytes()).unwrap();
        assert!(two.verify(&no_kid, None, 999).is_ok());

        // Another key, an unknown kid, tampering, garbage: invalid.
        let other = signer();
        let invalid = [
            token(&other, Some(&s.kid), claims("va.gov sign in", 1000)),
            token(&s, Some("nope"), claims("va.gov sign in", 1000)),
            {
                let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
                parts[1] = URL_SAFE_NO_PAD.encode(claims("va.gov sign in", 9999).to_string());
                parts.join(".")
            },
            "garbage".into(),
            String::new(),
            "a.b.c".into(),
        ];
        for t in invalid {
            assert_eq!(
                keys.verify(&t, None, 999).unwrap_err(),
                UpstreamVerifyError::Invalid,
                "{t}"
            );
        }
    }

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
}
