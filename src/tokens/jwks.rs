//! The access-token keys of a login service the gateway fronts (SPEC §8):
//! a JWKS read from a file or fetched from an `https://` URL (kept fresh by
//! [`super::jwks_fetch`]), and verification of that service's tokens.
//!
//! Only RS256 and ES256 (P-256) signing keys are used; keys of other kinds,
//! and keys marked for encryption, are left out. Upstream tokens are met on
//! sign-in answers, not on every request, so `jsonwebtoken` verifies them.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::jwks_fetch::Remote;
use crate::clock::SystemClock;
use crate::config::{AdoptConfig, JwksSource, KeyMaterial};
use crate::metrics::Metrics;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

/// Longer tokens are refused before any decoding.
const MAX_JWT_LEN: usize = 16 * 1024;

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

/// The login service's keys as the gateway holds them: read from a file
/// once, or fetched from an `https://` URL and refreshed in the background
/// once [started](Self::start). The set in use is swapped atomically; a
/// fetched source has none until its first good fetch, and tokens do not
/// verify until then.
pub struct UpstreamKeys {
    set: Arc<ArcSwapOption<KeySet>>,
    remote: Option<Remote>,
}

impl fmt::Debug for UpstreamKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamKeys")
            .field("remote", &self.remote)
            .field("set", &self.set.load())
            .finish()
    }
}

/// Reads the key files a configuration names while it is validated, so
/// that one that does not parse is a problem of the configuration.
pub struct KeyFiles;

impl KeyMaterial for KeyFiles {
    fn check_adopt_jwks(&self, adopt: &AdoptConfig) -> Result<(), String> {
        UpstreamKeys::load(adopt).map(drop)
    }
}

impl UpstreamKeys {
    /// The keys `[sign_in.adopt]` names: a file's (read now), or an
    /// `https://` URL's (fetched once started), trusting `ca` instead of
    /// the system's roots when set. The message of an error is for
    /// `sign_in.adopt.jwks`.
    pub fn load(adopt: &AdoptConfig) -> Result<UpstreamKeys, String> {
        match &adopt.source {
            JwksSource::Https(url) => Ok(UpstreamKeys {
                set: Arc::new(ArcSwapOption::empty()),
                remote: Some(Remote::new(
                    url.clone(),
                    adopt.ca.clone(),
                    Arc::new(SystemClock),
                )),
            }),
            JwksSource::File(path) => read_key_set(path).map(UpstreamKeys::fixed),
        }
    }

    /// A set that never changes.
    pub fn fixed(set: KeySet) -> UpstreamKeys {
        UpstreamKeys {
            set: Arc::new(ArcSwapOption::from_pointee(set)),
            remote: None,
        }
    }

    /// Starts fetching a URL source (a no-op for a file, or when already
    /// started) and waits for the first attempt, good or not, for at most
    /// the fetch timeout.
    pub async fn start(&self, metrics: &Metrics) -> anyhow::Result<()> {
        match &self.remote {
            Some(remote) => remote.start(&self.set, metrics).await,
            None => Ok(()),
        }
    }

    /// True when both are fetched from the same URL, trusting the same
    /// roots: a reload keeps the keys already fetched.
    pub fn same_remote(&self, other: &UpstreamKeys) -> bool {
        match (&self.remote, &other.remote) {
            (Some(a), Some(b)) => a.same_source(b),
            _ => false,
        }
    }

    /// Why the keys cannot be used yet: a URL source before its first good
    /// fetch. `None` once there is a set (a failed refresh keeps it).
    pub fn not_ready(&self) -> Option<String> {
        let remote = self.remote.as_ref()?;
        if self.set.load().is_some() {
            return None;
        }
        Some(remote.why_not_ready())
    }

    /// The number of usable keys in the set in use (0 before a first fetch).
    pub fn len(&self) -> usize {
        self.set.load().as_ref().map_or(0, |s| s.len())
    }

    /// True while there is no set (a URL source before its first fetch).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies `token` against the set in use (see [`KeySet::verify`]);
    /// with no set yet it does not verify. A token that names a key the set
    /// lacks asks a URL source for an early refetch, in the background and
    /// rate-limited, so that a rotated key is soon known.
    pub fn verify(
        &self,
        token: &str,
        issuer: Option<&str>,
        now_secs: u64,
    ) -> Result<UpstreamClaims, UpstreamVerifyError> {
        let (result, unknown) = self.verify_once(token, issuer, now_secs);
        if let (true, Some(remote)) = (unknown, &self.remote) {
            remote.ask_early();
        }
        result
    }

    /// As [`verify`](Self::verify), but when the token names a key the set
    /// lacks, waits for the early refetch (or one already under way) and
    /// verifies again with what it brought.
    pub async fn verify_fresh(
        &self,
        token: &str,
        issuer: Option<&str>,
        now_secs: u64,
    ) -> Result<UpstreamClaims, UpstreamVerifyError> {
        let (result, unknown) = self.verify_once(token, issuer, now_secs);
        let Some(remote) = self.remote.as_ref().filter(|_| unknown) else {
            return result;
        };
        if !remote.refetched().await {
            if self.set.load().is_none() {
                tracing::warn!(
                    "no JWKS of the login service has been fetched yet: its tokens cannot be verified"
                );
            }
            return result;
        }
        self.verify_once(token, issuer, now_secs).0
    }

    /// The result, and whether the token names a key the set lacks (or
    /// there is no set).
    fn verify_once(
        &self,
        token: &str,
        issuer: Option<&str>,
        now_secs: u64,
    ) -> (Result<UpstreamClaims, UpstreamVerifyError>, bool) {
        let set = self.set.load();
        let result = match set.as_deref() {
            Some(keys) => keys.verify(token, issuer, now_secs),
            None => Err(UpstreamVerifyError::Invalid),
        };
        let unknown = matches!(result, Err(UpstreamVerifyError::Invalid))
            && self.remote.is_some()
            && names_unknown_key(set.as_deref(), token);
        (result, unknown)
    }
}

/// The key set of a JWKS file.
fn read_key_set(path: &Path) -> Result<KeySet, String> {
    // The path came from the (UTF-8) configuration file.
    let shown = path.to_string_lossy();
    let text = std::fs::read(path).map_err(|e| format!("cannot read {shown:?}: {e}"))?;
    KeySet::parse(&text).map_err(|e| format!("{shown:?}: {e}"))
}

/// True when `token` has a JWT header whose `kid` is not in `set` (or there
/// is no set): a key the login service may have rotated to.
fn names_unknown_key(set: Option<&KeySet>, token: &str) -> bool {
    if token.len() > MAX_JWT_LEN {
        return false;
    }
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return false;
    };
    let Some(set) = set else {
        return true;
    };
    header
        .kid
        .is_some_and(|kid| !set.keys.iter().any(|k| k.kid.as_deref() == Some(&kid)))
}

impl KeySet {
    /// Parses a JWKS document (`{"keys":[…]}`).
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for (i, raw) in set.keys.into_iter().enumerate() {
            let name = match raw.get("kid").and_then(Value::as_str) {
                Some(kid) => format!("key {kid:?}"),
                None => format!("key #{i}"),
            };
            if !matches!(raw.get("kty").and_then(Value::as_str), Some("RSA" | "EC")) {
                continue;
            }
            let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("{name}: {e}"))?;
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
            let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{name}: {e}"))?;
            keys.push(UpstreamKey {
                kid: jwk.common.key_id,
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("no RS256 or ES256 signing key in the set".into());
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
mod tests {
    use super::*;
    use crate::config::{Algorithm as Alg, Config};
    use crate::tokens::{generate_pem, AccessTokens};

    struct Signer {
        pem: Vec<u8>,
        kid: String,
        jwks: Value,
    }

    fn signer() -> Signer {
        let pem = generate_pem(Alg::Rs256).unwrap();
        let t = AccessTokens::from_pem(std::slice::from_ref(&pem)).unwrap();
        Signer {
            kid: t.kid().to_owned(),
            jwks: t.jwks(),
            pem,
        }
    }

    /// `[sign_in.adopt]` with `jwks` and `extra` lines, checked with `keys`.
    fn adopt_with(jwks: &str, extra: &str, keys: &dyn KeyMaterial) -> Result<AdoptConfig, String> {
        let text = format!(
            "[sign_in]\nupstream = \"http://127.0.0.1:3001\"\n[sign_in.adopt]\njwks = \"{jwks}\"\n{extra}"
        );
        Config::parse_with(&text, "t", keys)
            .map(|c| c.sign_in.adopt.unwrap())
            .map_err(|e| e.to_string())
    }

    fn adopt(jwks: &str, extra: &str) -> AdoptConfig {
        adopt_with(jwks, extra, &KeyFiles).unwrap()
    }

    fn token(s: &Signer, kid: Option<&str>, claims: Value) -> String {
        let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
        h.kid = kid.map(str::to_owned);
        let k = jsonwebtoken::EncodingKey::from_rsa_pem(&s.pem).unwrap();
        jsonwebtoken::encode(&h, &claims, &k).unwrap()
    }

    fn claims(iss: &str, exp: u64) -> Value {
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

    #[test]
    fn a_url_source_verifies_nothing_before_its_first_fetch() {
        let s = signer();
        let keys = UpstreamKeys::load(&adopt("https://sis.example.gov/jwks", "")).unwrap();
        let good = token(&s, Some(&s.kid), claims("va.gov sign in", 1000));
        assert_eq!(
            keys.verify(&good, None, 999).unwrap_err(),
            UpstreamVerifyError::Invalid
        );
        assert!(keys.is_empty());
        assert!(keys.not_ready().is_some());
        // A file source is ready from the start.
        let set = KeySet::parse(s.jwks.to_string().as_bytes()).unwrap();
        let fixed = UpstreamKeys::fixed(KeySet::parse(s.jwks.to_string().as_bytes()).unwrap());
        assert!(fixed.not_ready().is_none());
        assert!(fixed.verify(&good, None, 999).is_ok());

        // What asks for an early refetch: a kid the set lacks, or any
        // token with a header while there is no set.
        assert!(names_unknown_key(None, &good));
        assert!(!names_unknown_key(Some(&set), &good));
        let rotated = token(&s, Some("rotated"), claims("va.gov sign in", 1000));
        assert!(names_unknown_key(Some(&set), &rotated));
        let no_kid = token(&s, None, claims("va.gov sign in", 1000));
        assert!(!names_unknown_key(Some(&set), &no_kid));
        assert!(!names_unknown_key(None, "garbage"));
        assert!(!names_unknown_key(Some(&set), "a.b.c"));
    }

    fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sis-jwks-{}", crate::tokens::random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_jwks_file_is_read_while_the_configuration_is_checked() {
        let rsa = AccessTokens::ephemeral(Alg::Rs256).jwks();
        let ec = AccessTokens::ephemeral(Alg::Es256).jwks();
        let both = serde_json::json!({"keys": [rsa["keys"][0], ec["keys"][0],
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]});
        let path = temp_file("adopt-ok.json", &both.to_string());
        let keys = UpstreamKeys::load(&adopt(&format!("file:{}", path.display()), "")).unwrap();
        // The HMAC key is not one the gateway verifies upstream tokens with.
        assert_eq!(keys.len(), 2);
        assert!(keys.not_ready().is_none());

        let bad_json = temp_file("adopt-bad.json", "{\"keys\": 3}");
        let no_usable = temp_file(
            "adopt-none.json",
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}]}"#,
        );
        let broken_rsa = temp_file(
            "adopt-broken.json",
            r#"{"keys":[{"kty":"RSA","kid":"k1","n":"@@","e":"AQAB","alg":"RS256"}]}"#,
        );
        let cases = [
            ("file:/nonexistent/jwks.json", "cannot read"),
            (
                &format!("file:{}", bad_json.display()),
                "not a JWKS document",
            ),
            (
                &format!("file:{}", no_usable.display()),
                "no RS256 or ES256",
            ),
            (&format!("file:{}", broken_rsa.display()), "key \"k1\""),
        ];
        for (spec, want) in cases {
            let e = adopt_with(spec, "", &KeyFiles).unwrap_err();
            assert!(
                e.starts_with("t: 1 problem\n  sign_in.adopt.jwks: "),
                "{spec}: {e}"
            );
            assert!(e.contains(want), "{spec}: {e}");
            // Unread, the file is not looked at.
            assert!(adopt_with(spec, "", &crate::config::Unread).is_ok());
        }
    }

    #[test]
    fn a_url_source_is_kept_over_a_reload_to_the_same_url_and_ca() {
        let url = "https://sis.example.gov/v0/sign_in/jwks";
        let keys = UpstreamKeys::load(&adopt(url, "")).unwrap();
        // Fetched once the gateway starts: nothing yet, and not ready.
        assert!(keys.is_empty());
        let why = keys.not_ready().unwrap();
        assert!(why.contains(url), "{why}");

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let ca = temp_file("adopt-ca.pem", &cert.cert.pem());
        let ca = format!("ca = \"file:{}\"\n", ca.display());
        let a = UpstreamKeys::load(&adopt("https://localhost:8443/jwks", &ca)).unwrap();
        let b = UpstreamKeys::load(&adopt("https://localhost:8443/jwks", &ca)).unwrap();
        assert!(a.same_remote(&b), "same URL and CA");
        assert!(!a.same_remote(&keys));
        let no_ca = UpstreamKeys::load(&adopt("https://localhost:8443/jwks", "")).unwrap();
        assert!(!a.same_remote(&no_ca));
    }

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
}
