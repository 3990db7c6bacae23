//! `[tokens]`: the signing and sealing keys of the gateway's own tokens, and
//! their lifetimes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawTokens;
use super::{Secret, Validator};

pub const DEFAULT_ISSUER: &str = "va.gov sign in";
pub const DEFAULT_REFRESH_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_REFRESH_SKEW: Duration = Duration::from_secs(30);
pub const DEFAULT_SESSION_MAX_AGE: Duration = Duration::from_secs(45 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Es256,
    Rs256,
    EdDsa,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Rs256 => "RS256",
            Algorithm::EdDsa => "EdDSA",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub issuer: String,
    pub algorithm: Algorithm,
    /// PEM files; the first signs, all verify. Empty = ephemeral key.
    pub signing_keys: Vec<PathBuf>,
    /// 32-byte secrets; the first seals, all open. Empty = ephemeral.
    pub sealing_keys: Vec<[u8; 32]>,
    pub refresh_grace: Duration,
    pub refresh_skew: Duration,
    pub session_max_age: Duration,
}

impl Validator {
    pub(super) fn tokens(&mut self, t: RawTokens) -> TokensConfig {
        let algorithm = match t.algorithm.as_deref().unwrap_or("ES256") {
            "ES256" => Algorithm::Es256,
            "RS256" => Algorithm::Rs256,
            "EdDSA" => Algorithm::EdDsa,
            other => {
                self.problem(
                    "tokens.algorithm",
                    format!("unsupported {other:?}: one of ES256, RS256, EdDSA"),
                );
                Algorithm::Es256
            }
        };
        let mut signing_keys = Vec::new();
        for (i, p) in t.signing_keys.unwrap_or_default().into_iter().enumerate() {
            if !Path::new(&p).is_file() {
                self.problem(
                    format!("tokens.signing_keys[{i}]"),
                    format!("no such file {p:?}"),
                );
            }
            signing_keys.push(PathBuf::from(p));
        }
        let mut sealing_keys = Vec::new();
        for (i, spec) in t.sealing_keys.unwrap_or_default().iter().enumerate() {
            let key = format!("tokens.sealing_keys[{i}]");
            match Secret::resolve(spec) {
                Ok(secret) => match decode_sealing_key(secret.expose()) {
                    Some(k) => sealing_keys.push(k),
                    None => self.problem(key, "must be 32 bytes, base64-encoded"),
                },
                Err(e) => self.problem(key, e),
            }
        }
        TokensConfig {
            issuer: t.issuer.unwrap_or_else(|| DEFAULT_ISSUER.to_owned()),
            algorithm,
            signing_keys,
            sealing_keys,
            refresh_grace: self.duration(
                "tokens.refresh_grace",
                t.refresh_grace.as_deref(),
                DEFAULT_REFRESH_GRACE,
            ),
            refresh_skew: self.duration(
                "tokens.refresh_skew",
                t.refresh_skew.as_deref(),
                DEFAULT_REFRESH_SKEW,
            ),
            session_max_age: self.positive_duration(
                "tokens.session_max_age",
                t.session_max_age.as_deref(),
                DEFAULT_SESSION_MAX_AGE,
            ),
        }
    }
}

fn decode_sealing_key(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let s = s.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .ok()?;
    bytes.try_into().ok()
}
