//! The proxy: [`Proxy`] holds the route table, the upstream client and the
//! header policy built from one configuration.
//!
//! Forwarding is two steps so that an auth step can sit between them:
//!
//! ```text
//! let route = proxy.route_for(host, path)?;        // routes.rs
//! // (auth reads the original cookies here: they are still on `req`)
//! let mut out = proxy.prepare(route, req, &ctx)?;  // outgoing.rs: hop-by-hop, cookies, identity, X-Forwarded-*
//! out.headers_mut().insert(...);                   // (auth adds identity headers, a new access cookie)
//! proxy.send(out, extra_response_headers).await    // forward.rs: upstream exchange, extra Set-Cookie appended
//! ```
//!
//! [`Proxy::forward`] does both with nothing in between.

pub mod body;
pub mod connect;
pub mod cookies;
mod error;
pub mod exchange;
mod forward;
pub mod headers;
mod outgoing;
pub mod policy;
pub mod pool;
mod probe;
mod routes;
mod tunnel;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::Request;
use ipnet::IpNet;

use crate::config::Config;
use crate::metrics::Metrics;

use self::connect::Connector;
pub use self::error::ProxyError;
pub use self::outgoing::{is_trusted, Outgoing};
use self::policy::RequestPolicy;
#[doc(hidden)]
pub use self::probe::{Outcome, Probe};
use self::routes::RouteTable;
pub use self::routes::{Route, UPSTREAM_POOL_IDLE_TIMEOUT};
pub use self::tunnel::{ClientUpgrade, Tunnels};

/// The route table and the upstream connection pools.
pub struct Proxy {
    routes: RouteTable,
    connector: Connector,
    /// Which request fields go upstream.
    policy: RequestPolicy,
    trusted_proxies: Vec<IpNet>,
    upstream_timeout: Duration,
    metrics: Arc<Metrics>,
    tunnels: Tunnels,
}

impl Proxy {
    /// Builds the route table and the upstream client. Fails only when a
    /// route has an `https://` upstream and no system root certificates can
    /// be loaded.
    pub fn new(config: &Config, metrics: Arc<Metrics>, tunnels: Tunnels) -> anyhow::Result<Proxy> {
        let server = &config.server;
        let needs_tls = config
            .routes
            .iter()
            .chain(&config.sign_in.upstream_route())
            .flat_map(|r| &r.upstreams)
            .any(|u| u.scheme == http::uri::Scheme::HTTPS);
        let tls = if needs_tls {
            Some(tokio_rustls::TlsConnector::from(Arc::new(
                upstream_tls_config()?,
            )))
        } else {
            None
        };
        Ok(Proxy {
            routes: RouteTable::new(config, &metrics),
            connector: Connector {
                connect_timeout: server.upstream_connect_timeout,
                tls,
            },
            policy: RequestPolicy::new(config),
            trusted_proxies: server.trusted_proxies.clone(),
            upstream_timeout: server.upstream_timeout,
            metrics,
            tunnels,
        })
    }

    /// The running tunnels (shared by every `Proxy` built with the same [`Tunnels`]).
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    /// The route for a request (README, Pass-through routes and transparent
    /// refresh): routes naming `host` (compared case-insensitively, without
    /// port) before host-less ones, then the longest `path_prefix` that
    /// covers `path`.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.find(host, path)
    }

    /// The `public` route to `sign_in.upstream`, for the sign-in paths the
    /// gateway does not answer itself (README, The sign-in endpoints).
    pub fn sign_in_route(&self) -> Option<&Route> {
        self.routes.sign_in()
    }

    /// The route for `req`, from its `Host` (or `:authority`) and path.
    pub fn route_for_request<B>(&self, req: &Request<B>) -> Option<&Route> {
        self.routes.for_request(req)
    }
}

/// TLS for `https://` upstreams: the system's root certificates, ALPN http/1.1.
fn upstream_tls_config() -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        anyhow::bail!(
            "a route has an https:// upstream but no system root certificates were found (install ca-certificates)"
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}
