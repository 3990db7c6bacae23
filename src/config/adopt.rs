//! `[sign_in.adopt]`: fronting a login service that issues SiS tokens of its
//! own (README, "Putting sis-gateway in front of an existing Sign-in Service").

use std::path::PathBuf;

use http::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::raw::RawAdopt;
use super::{KeyMaterial, Validator};

#[derive(Debug, Clone)]
pub struct AdoptConfig {
    /// `jwks` as written (`file:PATH` or an `https://` URL).
    pub jwks: String,
    /// Where the keys are: read from the file at load and at every reload,
    /// or fetched from the URL once started (kept over a reload that keeps
    /// the URL and `ca`).
    pub source: JwksSource,
    /// `sign_in.adopt.ca`: trusted instead of the system's roots for an
    /// `https://` source.
    pub ca: Option<Vec<CertificateDer<'static>>>,
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
        keys: &dyn KeyMaterial,
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
        let source = match JwksSource::parse(&jwks) {
            Ok(source) => source,
            Err(e) => {
                self.problem("sign_in.adopt.jwks", e);
                return None;
            }
        };
        let adopt = AdoptConfig {
            jwks,
            source,
            ca,
            issuer: raw.issuer.filter(|i| !i.is_empty()),
            migrate: raw.migrate.unwrap_or(true),
        };
        if let Err(e) = keys.check_adopt_jwks(&adopt) {
            self.problem("sign_in.adopt.jwks", e.to_string());
            return None;
        }
        Some(adopt)
    }
}

/// `sign_in.adopt.jwks`, checked: a file, or a URL the keys are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `file:PATH`.
    File(PathBuf),
    /// An `https://` URL with a host and no credentials.
    Https(Uri),
}

impl JwksSource {
    /// The message of an error is for `sign_in.adopt.jwks`.
    pub fn parse(spec: &str) -> Result<JwksSource, String> {
        if spec.starts_with("http://") {
            return Err(format!(
                "{spec:?}: a JWKS fetched over plain http:// can be forged on the way; \
                 use an https:// URL or file:PATH"
            ));
        }
        if spec.starts_with("https://") {
            return https_url(spec).map(JwksSource::Https);
        }
        match spec.strip_prefix("file:") {
            Some(path) => Ok(JwksSource::File(PathBuf::from(path))),
            None => Err(format!("{spec:?} must be file:PATH or an https:// URL")),
        }
    }
}

/// An `https://` URL the keys can be fetched from: a host that names a TLS
/// server, no credentials.
fn https_url(spec: &str) -> Result<Uri, String> {
    let url: Uri = spec
        .parse()
        .map_err(|e| format!("{spec:?} is not a URL: {e}"))?;
    let Some(authority) = url.authority() else {
        return Err(format!("{spec:?} names no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{spec:?}: credentials in the URL are not supported"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{spec:?} names no host"));
    }
    if url.scheme_str() != Some("https") {
        return Err(format!("{spec:?} must be an https:// URL"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if ServerName::try_from(host).is_err() {
        return Err(format!("{spec:?}: {host:?} is not a host name or address"));
    }
    Ok(url)
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
