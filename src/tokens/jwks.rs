//! The access-token keys of a login service the gateway fronts (README,
//! "Putting sis-gateway in front of an existing Sign-in Service"): a JWKS
//! read from a file or fetched from an `https://` URL (kept fresh by
//! [`super::jwks_fetch`]), and verification of that service's tokens with
//! the set in use ([`super::keyset`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::jwks_fetch::Remote;
use super::keyset::MAX_JWT_LEN;
pub use super::keyset::{JwksError, KeySet, UpstreamClaims, UpstreamVerifyError};
use crate::config::{AdoptConfig, JwksSource, KeyMaterial, KeyMaterialError};
use crate::metrics::Metrics;
use crate::time::SystemClock;

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
    fn check_adopt_jwks(&self, adopt: &AdoptConfig) -> Result<(), KeyMaterialError> {
        UpstreamKeys::load(adopt).map(drop).map_err(Into::into)
    }
}

/// Why the keys of a `sign_in.adopt.jwks` file could not be read. (The
/// path came from the UTF-8 configuration file, so it is shown as text.)
#[derive(thiserror::Error, Debug)]
pub enum JwksFileError {
    #[error("cannot read {:?}: {source}", .path.to_string_lossy())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{:?}: {source}", .path.to_string_lossy())]
    Invalid { path: PathBuf, source: JwksError },
}

impl UpstreamKeys {
    /// The keys `[sign_in.adopt]` names: a file's (read now), or an
    /// `https://` URL's (fetched once started), trusting `ca` instead of
    /// the system's roots when set. The message of an error is for
    /// `sign_in.adopt.jwks`.
    pub fn load(adopt: &AdoptConfig) -> Result<UpstreamKeys, JwksFileError> {
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
fn read_key_set(path: &Path) -> Result<KeySet, JwksFileError> {
    let text = std::fs::read(path).map_err(|source| JwksFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    KeySet::parse(&text).map_err(|source| JwksFileError::Invalid {
        path: path.to_owned(),
        source,
    })
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
    header.kid.is_some_and(|kid| !set.has_kid(&kid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm as Alg, Config};
    use crate::tokens::keyset::tests::{claims, signer, token};
    use crate::tokens::AccessTokens;

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
}
