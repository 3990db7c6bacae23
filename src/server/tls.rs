//! rustls for the public listener.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// A TLS acceptor for `[server.tls]`: the aws-lc-rs provider, TLS 1.2 and
/// 1.3, ALPN `h2` then `http/1.1`.
pub(crate) fn acceptor(tls: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .with_context(|| format!("server.tls.cert: cannot read {}", tls.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("server.tls.cert: bad PEM in {}", tls.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("server.tls.cert: no certificate in {}", tls.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("server.tls.key: no private key in {}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls: certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
