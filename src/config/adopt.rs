//! `[sign_in.adopt]`: fronting a login service that issues SiS tokens of its
//! own (SPEC §8).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::raw::RawAdopt;
use super::Validator;
use crate::tokens::jwks::UpstreamKeys;

#[derive(Debug, Clone)]
pub struct AdoptConfig {
    /// `jwks` as written (`file:PATH` or an `https://` URL).
    pub jwks: String,
    /// The keys: read from the file at load and at every reload, or fetched
    /// from the URL once started (kept over a reload that keeps the URL).
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
                "missing: the login service's JWKS, as file:PATH or an https:// URL",
            );
            return None;
        };
        if raw.issuer.as_deref() == Some("") {
            self.problem("sign_in.adopt.issuer", "must not be empty when set");
        }
        let ca = match raw.ca.as_deref().map(read_ca) {
            None => None,
            Some(Ok(certs)) => Some(certs),
            Some(Err(e)) => {
                self.problem("sign_in.adopt.ca", e);
                return None;
            }
        };
        if ca.is_some() && !jwks.starts_with("https://") {
            self.problem(
                "sign_in.adopt.ca",
                "is for an https:// jwks; set it only with one",
            );
        }
        match UpstreamKeys::load(&jwks, ca) {
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

impl AdoptConfig {
    /// A reload that keeps the `https://` JWKS URL (and `ca`) keeps the keys
    /// fetched from it, instead of starting again with none.
    pub fn keep_fetched(&mut self, old: &AdoptConfig) {
        if self.keys.same_remote(&old.keys) {
            self.keys = old.keys.clone();
        }
    }
}

/// The certificates of `sign_in.adopt.ca` (`file:PATH` to a PEM bundle).
fn read_ca(spec: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let Some(path) = spec.strip_prefix("file:") else {
        return Err(format!("{spec:?} must be file:PATH (a PEM bundle)"));
    };
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path:?}: bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path:?}: no certificate in it"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{path:?}: certificate #{i} is not usable: {e}"))?;
    }
    Ok(certs)
}
