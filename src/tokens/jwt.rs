//! Access tokens: compact JWS (RFC 7515) signed and verified with parsed aws-lc-rs keys.
//!
//! Keys are parsed once at load: `jsonwebtoken` parses the PKCS#8 or DER key again
//! on every sign and verify call, which costs more than the signature itself for
//! RSA and ECDSA on the refresh and proxy hot paths. It is still used by the tests
//! as an independent verifier.
//!
//! The `kid` of a key is its RFC 7638 JWK thumbprint (SHA-256, base64url), so every
//! instance computes the same `kid` from the same key, and anyone can check it
//! against the JWKS.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair, RsaPublicKeyComponents,
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, RSA_PKCS1_2048_8192_SHA256,
    RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{KeyProblem, TokenError};
use crate::config::{Algorithm, TokensConfig};

/// Longer bearer tokens are rejected before any decoding.
const MAX_JWT_LEN: usize = 16 * 1024;

/// The claims of an access token, as the Sign-in Service issues them.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: Vec<String>,
    pub client_id: String,
    pub sub: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
    pub session_handle: String,
    pub refresh_token_hash: String,
    #[serde(default)]
    pub parent_refresh_token_hash: Option<String>,
    pub anti_csrf_token: String,
    pub last_regeneration_time: u64,
    pub version: String,
    pub user_attributes: Value,
}

impl fmt::Debug for AccessClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessClaims")
            .field("iss", &self.iss)
            .field("aud", &self.aud)
            .field("client_id", &self.client_id)
            .field("sub", &self.sub)
            .field("jti", &self.jti)
            .field("iat", &self.iat)
            .field("exp", &self.exp)
            .field("session_handle", &self.session_handle)
            .field("refresh_token_hash", &self.refresh_token_hash)
            .field("parent_refresh_token_hash", &self.parent_refresh_token_hash)
            .field("anti_csrf_token", &"[redacted]")
            .field("last_regeneration_time", &self.last_regeneration_time)
            .field("version", &self.version)
            .field("user_attributes", &self.user_attributes)
            .finish()
    }
}

/// Why an access token was not accepted.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum VerifyError {
    /// Signed by one of our keys, but `exp` has passed. Carries the claims, for
    /// logout (which accepts an expired token) and for the 403 a route answers
    /// an expired Bearer token with (README, "Pass-through routes and
    /// transparent refresh").
    #[error("access token has expired")]
    Expired(Box<AccessClaims>),
    /// Anything else: garbage, unknown `kid`, algorithm mismatch, bad signature.
    #[error("access token is invalid")]
    Invalid,
}

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// One key of the set, as far as verification and the JWKS are concerned.
struct VerifyKey {
    kid: String,
    alg: Algorithm,
    public: ParsedPublicKey,
    jwk: Value,
    /// base64url of the header written with this key; a token whose header is
    /// exactly this needs no JSON parsing to find its key.
    header_b64: String,
}

struct Inner {
    signer: Signer,
    /// `keys[0]` is the signer's.
    keys: Vec<VerifyKey>,
    jwks: Value,
    ephemeral: bool,
    rng: SystemRandom,
}

/// The signing key and every verification key. Cloning is cheap.
#[derive(Clone)]
pub struct AccessTokens(Arc<Inner>);

impl fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.0.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("AccessTokens")
            .field("algorithm", &self.algorithm())
            .field("kids", &kids)
            .field("ephemeral", &self.0.ephemeral)
            .finish()
    }
}

impl AccessTokens {
    /// Loads `tokens.signing_keys` (the first signs, all verify). With none, an
    /// ephemeral key of `tokens.algorithm` is generated, with a warning.
    pub fn load(cfg: &TokensConfig) -> Result<AccessTokens, TokenError> {
        if cfg.signing_keys.is_empty() {
            tracing::warn!(
                algorithm = cfg.algorithm.name(),
                "no tokens.signing_keys configured: using an ephemeral signing key; \
                 access tokens will not survive a restart nor verify on other instances. \
                 Do not run this in production"
            );
            return Ok(AccessTokens::ephemeral(cfg.algorithm));
        }
        let mut pems = Vec::with_capacity(cfg.signing_keys.len());
        for (i, path) in cfg.signing_keys.iter().enumerate() {
            let pem = std::fs::read(path).map_err(|source| TokenError::SigningKeyUnreadable {
                index: i,
                path: path.clone(),
                source,
            })?;
            pems.push(pem);
        }
        let tokens = AccessTokens::from_pem(&pems).map_err(|e| match e {
            TokenError::InvalidKey { index, problem } => TokenError::SigningKeyUnusable {
                index,
                path: cfg.signing_keys[index].clone(),
                problem,
            },
            other => other,
        })?;
        if tokens.algorithm() != cfg.algorithm {
            return Err(TokenError::AlgorithmMismatch {
                path: cfg.signing_keys[0].clone(),
                found: tokens.algorithm(),
                configured: cfg.algorithm,
            });
        }
        Ok(tokens)
    }

    /// A random key of `alg` that lives only in this process.
    pub fn ephemeral(alg: Algorithm) -> AccessTokens {
        let der = super::keys::generate_pkcs8(alg).expect("generating an ephemeral signing key");
        let (signer, key) =
            parse_private_key("PRIVATE KEY", &der).expect("a freshly generated key parses");
        AccessTokens::build(signer, vec![key], true)
    }

    /// Keys from PEM text: the first signs, all verify. Each key's type decides its
    /// algorithm: P-256 EC → ES256, RSA → RS256, Ed25519 → EdDSA. PKCS#8
    /// (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) are read.
    pub fn from_pem(pems: &[Vec<u8>]) -> Result<AccessTokens, TokenError> {
        let mut signer = None;
        let mut keys: Vec<VerifyKey> = Vec::with_capacity(pems.len());
        for (index, pem) in pems.iter().enumerate() {
            let (s, key) =
                parse_pem(pem).map_err(|problem| TokenError::InvalidKey { index, problem })?;
            if signer.is_none() {
                signer = Some(s);
            }
            // The same key listed twice verifies once and is published once.
            if !keys.iter().any(|k| k.kid == key.kid) {
                keys.push(key);
            }
        }
        let signer = signer.ok_or(TokenError::NoKeys)?;
        Ok(AccessTokens::build(signer, keys, false))
    }

    fn build(signer: Signer, keys: Vec<VerifyKey>, ephemeral: bool) -> AccessTokens {
        let jwks = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        AccessTokens(Arc::new(Inner {
            signer,
            keys,
            jwks,
            ephemeral,
            rng: SystemRandom::new(),
        }))
    }

    /// True when the signing key was generated at start and dies with the process.
    pub fn is_ephemeral(&self) -> bool {
        self.0.ephemeral
    }

    /// The algorithm of the signing key.
    pub fn algorithm(&self) -> Algorithm {
        self.0.keys[0].alg
    }

    /// The `kid` of the signing key.
    pub fn kid(&self) -> &str {
        &self.0.keys[0].kid
    }

    /// Signs `claims` with the first key: `{"alg","typ":"JWT","kid"}`.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let key = &self.0.keys[0];
        let payload = serde_json::to_vec(claims)?;
        let mut out = String::with_capacity(key.header_b64.len() + payload.len() * 4 / 3 + 360);
        out.push_str(&key.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
        let msg = out.as_bytes();
        match &self.0.signer {
            Signer::Ec(kp) => {
                let sig = kp.sign(&self.0.rng, msg).map_err(|_| TokenError::Signing)?;
                push_sig(&mut out, sig.as_ref());
            }
            Signer::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&RSA_PKCS1_SHA256, &self.0.rng, msg, &mut sig)
                    .map_err(|_| TokenError::Signing)?;
                push_sig(&mut out, &sig);
            }
            Signer::Ed(kp) => {
                let sig = kp.sign(msg);
                push_sig(&mut out, sig.as_ref());
            }
        }
        Ok(out)
    }

    /// Verifies the signature with the key its `kid` names, then the expiry against
    /// `now_secs` (expired when `now_secs >= exp`, RFC 7519 §4.1.4). Issuer and
    /// audience are the caller's business. Never panics, whatever `token` is.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<AccessClaims, VerifyError> {
        if token.len() > MAX_JWT_LEN {
            return Err(VerifyError::Invalid);
        }
        let (signing_input, sig_b64) = token.rsplit_once('.').ok_or(VerifyError::Invalid)?;
        let (header_b64, payload_b64) =
            signing_input.split_once('.').ok_or(VerifyError::Invalid)?;
        if payload_b64.contains('.') {
            return Err(VerifyError::Invalid);
        }
        let key = self
            .key_for_header(header_b64)
            .ok_or(VerifyError::Invalid)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| VerifyError::Invalid)?;
        key.public
            .verify_sig(signing_input.as_bytes(), &sig)
            .map_err(|_| VerifyError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| VerifyError::Invalid)?;
        let claims: AccessClaims =
            serde_json::from_slice(&payload).map_err(|_| VerifyError::Invalid)?;
        if now_secs >= claims.exp {
            return Err(VerifyError::Expired(Box::new(claims)));
        }
        Ok(claims)
    }

    fn key_for_header(&self, header_b64: &str) -> Option<&VerifyKey> {
        if let Some(k) = self.0.keys.iter().find(|k| k.header_b64 == header_b64) {
            return Some(k);
        }
        // Same meaning, other spelling (member order, whitespace): parse it.
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            kid: Option<String>,
            crit: Option<Value>,
        }
        let raw = URL_SAFE_NO_PAD.decode(header_b64).ok()?;
        let h: Header = serde_json::from_slice(&raw).ok()?;
        // We understand no critical extension (RFC 7515 §4.1.11).
        if h.crit.is_some() {
            return None;
        }
        let kid = h.kid?;
        let k = self.0.keys.iter().find(|k| k.kid == kid)?;
        (h.alg == k.alg.name()).then_some(k)
    }

    /// `{"keys":[…]}`: every key of the set, signing key first.
    pub fn jwks(&self) -> Value {
        self.0.jwks.clone()
    }
}

fn push_sig(out: &mut String, sig: &[u8]) {
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig, out);
}

fn parse_pem(text: &[u8]) -> Result<(Signer, VerifyKey), KeyProblem> {
    let blocks = pem::parse_many(text).map_err(|_| KeyProblem::NotPem)?;
    for block in &blocks {
        match block.tag() {
            tag @ ("PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY") => {
                return parse_private_key(tag, block.contents());
            }
            "ENCRYPTED PRIVATE KEY" => return Err(KeyProblem::Encrypted),
            _ => {}
        }
    }
    Err(KeyProblem::NoPrivateKey)
}

fn parse_private_key(tag: &str, der: &[u8]) -> Result<(Signer, VerifyKey), KeyProblem> {
    const UNSUPPORTED: KeyProblem = KeyProblem::Unsupported;
    let signer = match tag {
        "PRIVATE KEY" => {
            if let Ok(kp) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                Signer::Ec(kp)
            } else if let Ok(kp) = RsaKeyPair::from_pkcs8(der) {
                Signer::Rsa(kp)
            } else if let Ok(kp) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                Signer::Ed(kp)
            } else {
                return Err(UNSUPPORTED);
            }
        }
        "EC PRIVATE KEY" => Signer::Ec(
            EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map_err(|_| KeyProblem::NotP256)?,
        ),
        "RSA PRIVATE KEY" => {
            Signer::Rsa(RsaKeyPair::from_der(der).map_err(|_| KeyProblem::NotRsa)?)
        }
        _ => return Err(UNSUPPORTED),
    };
    let key = verify_key(&signer).ok_or(UNSUPPORTED)?;
    Ok((signer, key))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The public half of `signer`: parsed verification key, JWK, RFC 7638 `kid`.
fn verify_key(signer: &Signer) -> Option<VerifyKey> {
    let (alg, public, thumbprint_input, mut jwk) = match signer {
        Signer::Ec(kp) => {
            let point = kp.public_key().as_ref();
            // Uncompressed SEC1 point: 0x04 || x || y.
            if point.len() != 65 || point[0] != 4 {
                return None;
            }
            let (x, y) = (b64(&point[1..33]), b64(&point[33..]));
            let public = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).ok()?;
            let input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
            let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
            (Algorithm::Es256, public, input, jwk)
        }
        Signer::Rsa(kp) => {
            let pk = kp.public_key();
            let n_raw = pk.modulus().big_endian_without_leading_zero();
            let e_raw = pk.exponent().big_endian_without_leading_zero();
            let public = RsaPublicKeyComponents { n: n_raw, e: e_raw }
                .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                .ok()?;
            let (n, e) = (b64(n_raw), b64(e_raw));
            let input = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
            let jwk = json!({"kty": "RSA", "n": n, "e": e});
            (Algorithm::Rs256, public, input, jwk)
        }
        Signer::Ed(kp) => {
            let raw = kp.public_key().as_ref();
            let public = ParsedPublicKey::new(&ED25519, raw).ok()?;
            let x = b64(raw);
            let input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x});
            (Algorithm::EdDsa, public, input, jwk)
        }
    };
    let kid = b64(digest::digest(&digest::SHA256, thumbprint_input.as_bytes()).as_ref());
    let obj = jwk.as_object_mut()?;
    obj.insert("kid".into(), Value::String(kid.clone()));
    obj.insert("alg".into(), Value::String(alg.name().into()));
    obj.insert("use".into(), Value::String("sig".into()));
    let header = format!(r#"{{"alg":"{}","typ":"JWT","kid":"{kid}"}}"#, alg.name());
    Some(VerifyKey {
        kid,
        alg,
        public,
        jwk,
        header_b64: b64(header.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const ALGS: [Algorithm; 3] = [Algorithm::Es256, Algorithm::Rs256, Algorithm::EdDsa];
    const NOW: u64 = 1_717_700_000;

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "va.gov sign in".into(),
            aud: vec!["vaweb".into()],
            client_id: "vaweb".into(),
            sub: "c0ffee00-1234-4abc-8def-000000000001".into(),
            jti: "0b8b4f9e-7d0b-4f3c-9a0a-3a1c2b3d4e5f".into(),
            iat: NOW,
            exp: NOW + 300,
            session_handle: "1b6bbd3e-8c4f-4f47-9c2c-0a0d3c1c6a11".into(),
            refresh_token_hash: super::super::token_hash("v1:abc"),
            parent_refresh_token_hash: None,
            anti_csrf_token: "0123456789abcdef0123456789abcdef".into(),
            last_regeneration_time: NOW,
            version: "V0".into(),
            user_attributes: json!({"first_name": "Ada", "email": "ada@example.gov"}),
        }
    }

    fn jwt_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
        match alg {
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }

    /// Verifies `token` with jsonwebtoken, using only the published JWKS.
    fn independent_verify(jwks: &Value, token: &str, alg: Algorithm) -> AccessClaims {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let jwk = set
            .find(header.kid.as_deref().unwrap())
            .expect("kid in JWKS");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jwt_alg(alg));
        v.set_audience(&["vaweb"]);
        v.set_issuer(&["va.gov sign in"]);
        v.validate_exp = false;
        jsonwebtoken::decode::<AccessClaims>(token, &key, &v)
            .unwrap()
            .claims
    }

    #[test]
    fn sign_and_verify_each_algorithm() {
        for alg in ALGS {
            let t = AccessTokens::ephemeral(alg);
            assert!(t.is_ephemeral());
            assert_eq!(t.algorithm(), alg);
            let c = claims();
            let token = t.sign(&c).unwrap();
            assert_eq!(t.verify(&token, NOW), Ok(c.clone()));
            assert_eq!(independent_verify(&t.jwks(), &token, alg), c);

            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, jwt_alg(alg));
            assert_eq!(header.kid.as_deref(), Some(t.kid()));

            let jwks = t.jwks();
            let k = &jwks["keys"][0];
            assert_eq!(k["kid"], t.kid());
            assert_eq!(k["alg"], alg.name());
            assert_eq!(k["use"], "sig");
            match alg {
                Algorithm::Es256 => {
                    assert_eq!(k["kty"], "EC");
                    assert_eq!(k["crv"], "P-256");
                    assert!(k["x"].is_string() && k["y"].is_string());
                }
                Algorithm::Rs256 => {
                    assert_eq!(k["kty"], "RSA");
                    assert_eq!(k["e"], "AQAB");
                    assert!(k["n"].as_str().unwrap().len() > 300);
                }
                Algorithm::EdDsa => {
                    assert_eq!(k["kty"], "OKP");
                    assert_eq!(k["crv"], "Ed25519");
                }
            }
        }
    }

    #[test]
    fn jsonwebtoken_tokens_verify_here() {
        // The other direction: a token signed by jsonwebtoken from our PEM.
        for alg in ALGS {
            let pem = super::super::keys::generate_pem(alg).unwrap();
            let t = AccessTokens::from_pem(std::slice::from_ref(&pem)).unwrap();
            let key = match alg {
                Algorithm::Es256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
                Algorithm::Rs256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
                Algorithm::EdDsa => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
            }
            .unwrap();
            let mut h = jsonwebtoken::Header::new(jwt_alg(alg));
            h.kid = Some(t.kid().to_owned());
            let token = jsonwebtoken::encode(&h, &claims(), &key).unwrap();
            assert_eq!(t.verify(&token, NOW), Ok(claims()));
            // Without a kid, or with a wrong alg, it is not ours.
            let h = jsonwebtoken::Header::new(jwt_alg(alg));
            let token = jsonwebtoken::encode(&h, &claims(), &key).unwrap();
            assert_eq!(t.verify(&token, NOW), Err(VerifyError::Invalid));
        }
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1 example key.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let input = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        let kid = b64(digest::digest(&digest::SHA256, input.as_bytes()).as_ref());
        assert_eq!(kid, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        // Deterministic: the same PEM gives the same kid on every load.
        let pem = super::super::keys::generate_pem(Algorithm::Es256).unwrap();
        let a = AccessTokens::from_pem(std::slice::from_ref(&pem)).unwrap();
        let b = AccessTokens::from_pem(&[pem]).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.kid().len(), 43);
    }

    #[test]
    fn expired_carries_claims() {
        let t = AccessTokens::ephemeral(Algorithm::Es256);
        let c = claims();
        let token = t.sign(&c).unwrap();
        assert_eq!(t.verify(&token, c.exp - 1), Ok(c.clone()));
        assert_eq!(
            t.verify(&token, c.exp),
            Err(VerifyError::Expired(Box::new(c.clone())))
        );
        assert_eq!(
            t.verify(&token, c.exp + 10_000),
            Err(VerifyError::Expired(Box::new(c)))
        );
    }

    #[test]
    fn tampered_is_invalid() {
        for alg in ALGS {
            let t = AccessTokens::ephemeral(alg);
            let token = t.sign(&claims()).unwrap();
            for i in 0..token.len() {
                let mut b = token.clone().into_bytes();
                b[i] = match b[i] {
                    b'A' => b'B',
                    b'.' => b'A',
                    _ => b'A',
                };
                let bad = String::from_utf8(b).unwrap();
                assert_eq!(
                    t.verify(&bad, NOW),
                    Err(VerifyError::Invalid),
                    "{alg:?} {i}"
                );
            }
            // Claims swapped between two valid tokens.
            let mut other = claims();
            other.sub = "someone-else".into();
            let token2 = t.sign(&other).unwrap();
            let p1: Vec<&str> = token.split('.').collect();
            let p2: Vec<&str> = token2.split('.').collect();
            let spliced = format!("{}.{}.{}", p1[0], p2[1], p1[2]);
            assert_eq!(t.verify(&spliced, NOW), Err(VerifyError::Invalid));
            // Signed by another key of the same algorithm.
            let stranger = AccessTokens::ephemeral(alg).sign(&claims()).unwrap();
            assert_eq!(t.verify(&stranger, NOW), Err(VerifyError::Invalid));
        }
    }

    #[test]
    fn header_tricks_are_invalid() {
        let t = AccessTokens::ephemeral(Algorithm::Es256);
        let token = t.sign(&claims()).unwrap();
        let (_, rest) = token.split_once('.').unwrap();
        let with_header = |h: &str| format!("{}.{rest}", b64(h.as_bytes()));
        let kid = t.kid();
        for h in [
            format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#),
            format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#),
            format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{kid}"}}"#),
            format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{kid}","crit":["b64"]}}"#),
            r#"{"alg":"ES256","typ":"JWT","kid":"nope"}"#.to_string(),
            r#"{"alg":"ES256","typ":"JWT"}"#.to_string(),
            "null".into(),
            "[]".into(),
        ] {
            assert_eq!(
                t.verify(&with_header(&h), NOW),
                Err(VerifyError::Invalid),
                "{h}"
            );
        }
        // An equivalent header spelled differently still names our key, but the
        // signature covers the header bytes, so it is invalid too.
        let respelled = format!(r#"{{"kid":"{kid}","alg":"ES256"}}"#);
        assert_eq!(
            t.verify(&with_header(&respelled), NOW),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn garbage_is_invalid_without_panic() {
        let t = AccessTokens::ephemeral(Algorithm::Es256);
        let long = "a.".repeat(20_000);
        for g in [
            "", ".", "..", "...", "a.b.c", "a.b", "a.b.c.d", "ü.ü.ü", "eyJ.eyJ.", &long,
        ] {
            assert_eq!(t.verify(g, NOW), Err(VerifyError::Invalid), "{g:.20}");
        }
        for n in 0..500 {
            let g = super::super::random_hex(n);
            assert!(t.verify(&g, NOW).is_err());
            let mut raw = vec![0u8; n];
            super::super::fill_random(&mut raw);
            let dotted = format!("{}.{}.{}", t.0.keys[0].header_b64, b64(&raw), b64(&raw));
            assert!(t.verify(&dotted, NOW).is_err());
        }
    }

    #[test]
    fn several_keys_rotate() {
        let gen1 = super::super::keys::generate_pem(Algorithm::Rs256).unwrap();
        let gen2 = super::super::keys::generate_pem(Algorithm::Es256).unwrap();
        let old = AccessTokens::from_pem(std::slice::from_ref(&gen1)).unwrap();
        let new = AccessTokens::from_pem(std::slice::from_ref(&gen2)).unwrap();
        let both = AccessTokens::from_pem(&[gen2.clone(), gen1.clone()]).unwrap();
        assert_eq!(both.algorithm(), Algorithm::Es256);
        assert_eq!(both.kid(), new.kid());
        assert!(!both.is_ephemeral());

        let by_old = old.sign(&claims()).unwrap();
        let by_new = new.sign(&claims()).unwrap();
        let by_both = both.sign(&claims()).unwrap();
        assert_eq!(both.verify(&by_old, NOW), Ok(claims()));
        assert_eq!(both.verify(&by_new, NOW), Ok(claims()));
        assert_eq!(new.verify(&by_both, NOW), Ok(claims()));
        assert_eq!(old.verify(&by_new, NOW), Err(VerifyError::Invalid));

        let jwks = both.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kid"], new.kid());
        assert_eq!(keys[1]["kid"], old.kid());
        assert_eq!(
            independent_verify(&jwks, &by_old, Algorithm::Rs256),
            claims()
        );
        assert_eq!(
            independent_verify(&jwks, &by_new, Algorithm::Es256),
            claims()
        );

        // A key listed twice is published once.
        let dup = AccessTokens::from_pem(&[gen2.clone(), gen2]).unwrap();
        assert_eq!(dup.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn pem_forms_and_errors() {
        // SEC1 EC and PKCS#1 RSA, as rcgen's and openssl's older tools write them.
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let sec1 =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::EcPrivateKeyRfc5915Der>::as_der(
                &ec.private_key(),
            )
            .unwrap();
        let sec1_pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.as_ref().to_vec()));
        let t = AccessTokens::from_pem(&[sec1_pem.into_bytes()]).unwrap();
        assert_eq!(t.algorithm(), Algorithm::Es256);

        let rsa_pem = super::super::keys::generate_pem(Algorithm::Rs256).unwrap();
        let rsa_der = pem::parse(&rsa_pem).unwrap();
        let rsa = RsaKeyPair::from_pkcs8(rsa_der.contents()).unwrap();
        let pkcs1 = rsa_pkcs1_from_pkcs8(rsa_der.contents());
        let pkcs1_pem = pem::encode(&pem::Pem::new("RSA PRIVATE KEY", pkcs1));
        let t = AccessTokens::from_pem(&[pkcs1_pem.into_bytes()]).unwrap();
        assert_eq!(t.algorithm(), Algorithm::Rs256);
        assert_eq!(
            t.jwks()["keys"][0]["n"],
            b64(rsa.public_key().modulus().big_endian_without_leading_zero())
        );

        // P-384 is not offered.
        let p384 = EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .unwrap();
        let p384_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", p384.as_ref().to_vec()));
        let err = AccessTokens::from_pem(&[p384_pem.into_bytes()]).unwrap_err();
        assert!(err.to_string().contains("signing key #0"), "{err}");

        let ok = super::super::keys::generate_pem(Algorithm::EdDsa).unwrap();
        for (bad, why) in [
            (b"".to_vec(), "no PRIVATE KEY"),
            (b"hello".to_vec(), "no PRIVATE KEY"),
            (
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
                "unsupported",
            ),
            (
                b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
                    .to_vec(),
                "encrypted",
            ),
        ] {
            let err = AccessTokens::from_pem(&[ok.clone(), bad]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("signing key #1"), "{msg}");
            assert!(msg.contains(why), "{msg}");
            assert!(!msg.contains("AAAA"), "{msg}");
        }
        assert!(matches!(
            AccessTokens::from_pem(&[]),
            Err(TokenError::NoKeys)
        ));
    }

    /// PKCS#8 wraps PKCS#1 for RSA: pull the inner OCTET STRING out of
    /// `SEQUENCE { INTEGER 0, AlgorithmIdentifier, OCTET STRING {RSAPrivateKey} }`.
    fn rsa_pkcs1_from_pkcs8(der: &[u8]) -> Vec<u8> {
        fn header(d: &[u8]) -> (u8, usize, usize) {
            let tag = d[0];
            if d[1] & 0x80 == 0 {
                (tag, 2, d[1] as usize)
            } else {
                let n = (d[1] & 0x7f) as usize;
                let len = d[2..2 + n]
                    .iter()
                    .fold(0usize, |a, &b| (a << 8) | b as usize);
                (tag, 2 + n, len)
            }
        }
        let (_, h, _) = header(der);
        let mut d = &der[h..];
        for _ in 0..2 {
            let (_, h, len) = header(d);
            d = &d[h + len..];
        }
        let (tag, h, len) = header(d);
        assert_eq!(tag, 0x04);
        d[h..h + len].to_vec()
    }

    #[test]
    fn load_from_config() {
        let dir = std::env::temp_dir().join(format!("sis-jwt-{}", super::super::random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let es = dir.join("es.pem");
        let rs = dir.join("rs.pem");
        std::fs::write(
            &es,
            super::super::keys::generate_pem(Algorithm::Es256).unwrap(),
        )
        .unwrap();
        std::fs::write(
            &rs,
            super::super::keys::generate_pem(Algorithm::Rs256).unwrap(),
        )
        .unwrap();
        let mut cfg = TokensConfig {
            issuer: "va.gov sign in".into(),
            algorithm: Algorithm::Es256,
            signing_keys: vec![],
            sealing_keys: vec![],
            refresh_grace: std::time::Duration::from_secs(30),
            refresh_skew: std::time::Duration::from_secs(30),
            session_max_age: std::time::Duration::from_secs(45 * 86400),
        };
        let t = AccessTokens::load(&cfg).unwrap();
        assert!(t.is_ephemeral());
        assert_eq!(t.algorithm(), Algorithm::Es256);

        cfg.signing_keys = vec![es.clone(), rs.clone()];
        let t = AccessTokens::load(&cfg).unwrap();
        assert!(!t.is_ephemeral());
        assert_eq!(t.jwks()["keys"].as_array().unwrap().len(), 2);

        cfg.signing_keys = vec![rs.clone(), es.clone()];
        let err = AccessTokens::load(&cfg).unwrap_err().to_string();
        assert!(err.starts_with("tokens.signing_keys[0]: "), "{err}");
        assert!(err.contains("RS256") && err.contains("ES256"), "{err}");

        cfg.signing_keys = vec![es.clone(), dir.join("missing.pem")];
        let err = AccessTokens::load(&cfg).unwrap_err().to_string();
        assert!(
            err.starts_with("tokens.signing_keys[1]: cannot read"),
            "{err}"
        );

        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "junk").unwrap();
        cfg.signing_keys = vec![es, junk];
        let err = AccessTokens::load(&cfg).unwrap_err().to_string();
        assert!(err.starts_with("tokens.signing_keys[1]: "), "{err}");
        assert!(err.contains("junk.pem"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn debug_redacts_anti_csrf() {
        let c = claims();
        let d = format!("{c:?}");
        assert!(!d.contains(&c.anti_csrf_token));
        assert!(d.contains(&c.session_handle));
        let t = format!("{:?}", AccessTokens::ephemeral(Algorithm::EdDsa));
        assert!(t.contains("EdDsa"), "{t}");
    }

    fn rate(n: u32, f: impl FnMut()) -> f64 {
        let mut f = f;
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        f64::from(n) / start.elapsed().as_secs_f64()
    }

    /// `cargo test --release --lib tokens::jwt::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn throughput() {
        for alg in ALGS {
            let pem = super::super::keys::generate_pem(alg).unwrap();
            let t = AccessTokens::from_pem(std::slice::from_ref(&pem)).unwrap();
            let c = claims();
            let token = t.sign(&c).unwrap();
            let n = if alg == Algorithm::Rs256 {
                2_000
            } else {
                20_000
            };
            let sign = rate(n, || {
                std::hint::black_box(t.sign(&c).unwrap());
            });
            let verify = rate(n * 4, || {
                std::hint::black_box(t.verify(&token, NOW).unwrap());
            });

            // The same through jsonwebtoken, which parses the key on every call.
            let ek = match alg {
                Algorithm::Es256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
                Algorithm::Rs256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
                Algorithm::EdDsa => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
            }
            .unwrap();
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(t.jwks()).unwrap();
            let dk = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
            let mut v = jsonwebtoken::Validation::new(jwt_alg(alg));
            v.set_audience(&["vaweb"]);
            v.validate_exp = false;
            let mut h = jsonwebtoken::Header::new(jwt_alg(alg));
            h.kid = Some(t.kid().to_owned());
            let jw_sign = rate(n, || {
                std::hint::black_box(jsonwebtoken::encode(&h, &c, &ek).unwrap());
            });
            let jw_verify = rate(n * 4, || {
                std::hint::black_box(
                    jsonwebtoken::decode::<AccessClaims>(&token, &dk, &v).unwrap(),
                );
            });

            // Raw signature over a message of the same length, the floor for RS256.
            let msg = token.rsplit_once('.').unwrap().0.as_bytes().to_vec();
            let raw_sign = match &t.0.signer {
                Signer::Ec(kp) => rate(n, || {
                    std::hint::black_box(kp.sign(&SystemRandom::new(), &msg).unwrap());
                }),
                Signer::Rsa(kp) => {
                    let mut sig = vec![0u8; kp.public_modulus_len()];
                    rate(n, || {
                        kp.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), &msg, &mut sig)
                            .unwrap();
                    })
                }
                Signer::Ed(kp) => rate(n, || {
                    std::hint::black_box(kp.sign(&msg));
                }),
            };
            println!(
                "{:6} sign {:>8.0}/s (raw {:>8.0}/s, jsonwebtoken {:>8.0}/s)   \
                 verify {:>8.0}/s (jsonwebtoken {:>8.0}/s)",
                alg.name(),
                sign,
                raw_sign,
                jw_sign,
                verify,
                jw_verify
            );
        }
    }
}
