//! `[sign_in.adopt]`: fronting a login service that issues SiS tokens of its
//! own (SPEC §8).

use std::sync::Arc;

use super::raw::RawAdopt;
use super::Validator;
use crate::tokens::jwks::UpstreamKeys;

#[derive(Debug, Clone)]
pub struct AdoptConfig {
    /// `jwks` as written (`file:PATH`).
    pub jwks: String,
    /// The keys read from it, at load and at every reload.
    pub keys: Arc<UpstreamKeys>,
    /// The `iss` the login service's tokens must carry, when set.
    pub issuer: Option<String>,
    /// Refresh tokens the gateway did not seal are refreshed upstream once,
    /// then adopted (`sign_in::migrate`).
    pub migrate: bool,
}

impl Validator {
    pub(super) fn adopt(
        &mut self,
        raw: Option<RawAdopt>,
        has_upstream: bool,
    ) -> Option<AdoptConfig> {
        let raw = raw?;
        if !has_upstream {
            self.problem(
                "sign_in.adopt",
                "needs sign_in.upstream (the login service whose sign-ins are adopted)",
            );
        }
        let Some(jwks) = raw.jwks else {
            self.problem(
                "sign_in.adopt.jwks",
                "missing: the login service's JWKS, as file:PATH",
            );
            return None;
        };
        if raw.issuer.as_deref() == Some("") {
            self.problem("sign_in.adopt.issuer", "must not be empty when set");
        }
        match UpstreamKeys::load(&jwks) {
            Ok(keys) => Some(AdoptConfig {
                jwks,
                keys: Arc::new(keys),
                issuer: raw.issuer.filter(|i| !i.is_empty()),
                migrate: raw.migrate.unwrap_or(true),
            }),
            Err(e) => {
                self.problem("sign_in.adopt.jwks", e);
                None
            }
        }
    }
}
