//! Route table, upstream client, header operations, upgrades.
//!
//! Forwarding is two steps so that an auth step can sit between them:
//!
//! ```text
//! let route = proxy.route_for(host, path)?;        // SPEC §5 routing
//! // (auth reads the original cookies here: they are still on `req`)
//! let mut out = proxy.prepare(route, req, &ctx)?;  // hop-by-hop, cookies, identity, X-Forwarded-*
//! out.headers_mut().insert(...);                   // (auth adds identity headers, a new access cookie)
//! proxy.send(out, extra_response_headers).await    // upstream exchange, extra Set-Cookie appended
//! ```
//!
//! [`Proxy::forward`] does both with nothing in between.

pub mod body;
pub mod connect;
mod error;
pub mod exchange;
pub mod headers;
pub mod policy;
pub mod pool;
mod probe;
mod tunnel;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use ipnet::IpNet;

use crate::config::{Config, RouteConfig};
use crate::ctx::RequestCtx;
use crate::http::body::{Body, RequestBody};
use crate::http::Reply;
use crate::metrics::{Metrics, RouteStats, UpstreamErrorKind};

use self::body::ForwardBody;
use self::connect::Connector;
pub use self::error::ProxyError;
use self::exchange::SendError;
use self::headers::{Forwarded, ForwardedFor};
use self::policy::RequestPolicy;
#[doc(hidden)]
pub use self::probe::{Outcome, Probe};
pub use self::tunnel::{ClientUpgrade, Tunnels};
use self::upstream::{UpstreamSet, UpstreamTarget};

/// How long an idle pooled upstream connection is kept.
pub const UPSTREAM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One `[[routes]]` entry, ready to forward to.
pub struct Route {
    pub config: RouteConfig,
    /// `config.name`, shared with metrics labels.
    pub name: Arc<str>,
    /// Request count and duration under this route's label.
    pub stats: RouteStats,
    upstreams: UpstreamSet,
}

impl Route {
    /// True when this route's `path_prefix` covers `path`, on segment
    /// boundaries: `/app` covers `/app` and `/app/x`, not `/application`.
    pub fn covers(&self, path: &str) -> bool {
        prefix_matches(&self.config.path_prefix, path)
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// The route table and the upstream connection pools.
pub struct Proxy {
    /// Host-specific routes first, then by longest prefix: the first match
    /// wins. The first `routed` are the route table; after them comes the
    /// sign-in upstream's route, when there is one.
    routes: Arc<Vec<Route>>,
    routed: usize,
    /// Some route names a host (else a request's host is not looked up).
    host_routes: bool,
    connector: Connector,
    /// Which request fields go upstream.
    policy: RequestPolicy,
    trusted_proxies: Vec<IpNet>,
    upstream_timeout: Duration,
    metrics: Arc<Metrics>,
    tunnels: Tunnels,
}

/// A request made ready for the upstream by [`Proxy::prepare`]. Its headers
/// may still be edited before [`Proxy::send`].
pub struct Outgoing<'r> {
    route: &'r Route,
    parts: http::request::Parts,
    body: RequestBody,
    /// The path and query to send, relative to the upstream base.
    path: PathAndQuery,
    /// The client's side of an upgrade, and the protocols it asked for.
    upgrade: Option<(ClientUpgrade, HeaderValue)>,
    /// The client's `Host`, sent instead of the upstream's with
    /// `preserve_host`.
    client_host: Option<HeaderValue>,
    forwarded: Forwarded,
}

impl Outgoing<'_> {
    pub fn route(&self) -> &Route {
        self.route
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The headers that will be sent upstream: hop-by-hop headers, secret
    /// cookies and identity headers are already gone. `Host`, `X-Request-Id`
    /// and `X-Forwarded-*` are the gateway's, added as the request is
    /// written (a `Host` or `X-Request-Id` here is not sent).
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.parts.headers
    }
}

/// True when `ip` is in one of `nets` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn is_trusted(nets: &[IpNet], ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

impl Proxy {
    /// Builds the route table and the upstream client. Fails only when a
    /// route has an `https://` upstream and no system root certificates can
    /// be loaded.
    pub fn new(config: &Config, metrics: Arc<Metrics>, tunnels: Tunnels) -> anyhow::Result<Proxy> {
        let server = &config.server;
        let sign_in_route = config.sign_in.upstream_route();
        let route = |r: &RouteConfig| Route {
            config: r.clone(),
            name: Arc::from(r.name.as_str()),
            stats: metrics.route_stats(&r.name),
            upstreams: UpstreamSet::new(
                &r.upstreams,
                server.upstream_cooldown,
                UPSTREAM_POOL_IDLE_TIMEOUT,
            ),
        };
        let mut routes: Vec<Route> = config.routes.iter().map(route).collect();
        routes.sort_by_key(|r| {
            (
                r.config.host.is_none(),
                std::cmp::Reverse(r.config.path_prefix.len()),
            )
        });
        // The sign-in upstream's route comes last, out of the route table
        // (`routed`): only dispatch sends a request to it.
        let routed = routes.len();
        routes.extend(sign_in_route.iter().map(route));

        let needs_tls = config
            .routes
            .iter()
            .chain(&sign_in_route)
            .flat_map(|r| &r.upstreams)
            .any(|u| u.scheme == http::uri::Scheme::HTTPS);
        let tls = if needs_tls {
            Some(tokio_rustls::TlsConnector::from(Arc::new(
                upstream_tls_config()?,
            )))
        } else {
            None
        };
        let host_routes = routes.iter().any(|r| r.config.host.is_some());
        let routes = Arc::new(routes);
        spawn_pool_reaper(&routes);
        Ok(Proxy {
            routes,
            routed,
            host_routes,
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

    /// The route for a request (SPEC §5): routes naming `host` (compared
    /// case-insensitively, without port) before host-less ones, then the
    /// longest `path_prefix` that covers `path`.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes[..self.routed].iter().find(|r| {
            let host_ok = match (&r.config.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            };
            host_ok && r.covers(path)
        })
    }

    /// The `public` route to `sign_in.upstream`, for the sign-in paths the
    /// gateway does not answer itself (SPEC §8).
    pub fn sign_in_route(&self) -> Option<&Route> {
        self.routes.get(self.routed)
    }

    /// The route for `req`, from its `Host` (or `:authority`) and path.
    pub fn route_for_request<B>(&self, req: &Request<B>) -> Option<&Route> {
        let host = if self.host_routes {
            headers::request_host(req.headers(), req.uri())
        } else {
            None
        };
        self.route_for(host, req.uri().path())
    }

    /// [`prepare`](Self::prepare) then [`send`](Self::send).
    pub async fn forward(
        &self,
        route: &Route,
        req: Request<RequestBody>,
        ctx: &RequestCtx,
        extra_response_headers: HeaderMap,
    ) -> Reply {
        match self.prepare(route, req, ctx) {
            Ok(out) => std::pin::pin!(self.send(out, extra_response_headers, ctx)).await,
            Err(e) => self.fail(route, None, e, ctx).into(),
        }
    }

    /// Turns the client's request into the one sent upstream: rejects a
    /// `Content-Length` over `max_body` (413), applies the header policy
    /// (see [`policy`]: hop-by-hop fields, an upgrade the route allows,
    /// secret cookies, identity headers, `_` names, `X-Forwarded-*`), and
    /// picks the path.
    pub fn prepare<'r>(
        &self,
        route: &'r Route,
        mut req: Request<RequestBody>,
        ctx: &RequestCtx,
    ) -> Result<Outgoing<'r>, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed);
        }
        if let Some(limit) = route.config.max_body {
            if http_body::Body::size_hint(req.body()).lower() > limit {
                return Err(ProxyError::BodyTooLarge);
            }
        }
        let upgrade = self
            .policy
            .upgrade_offer(&route.config, req.version(), req.headers())
            .map(|protocols| (ClientUpgrade::take(&mut req), protocols));

        let (mut parts, body) = req.into_parts();
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let forwarded = self.policy.apply(
            &mut parts.headers,
            upgrade.as_ref().map(|(_, protocols)| protocols),
            ForwardedFor {
                peer: ctx.peer.ip().to_canonical(),
                trusted: is_trusted(&self.trusted_proxies, ctx.peer.ip()),
                proto: if ctx.tls { "https" } else { "http" },
                host: client_host.as_ref(),
            },
        );
        parts.extensions.clear();
        parts.version = Version::HTTP_11;
        let path = upstream_path(&route.config, &parts.uri);
        Ok(Outgoing {
            route,
            parts,
            body,
            path,
            upgrade,
            client_host: client_host.filter(|_| route.config.preserve_host),
            forwarded,
        })
    }

    /// Sends a prepared request to the route's upstreams (round robin; a
    /// refused connection moves on to the next healthy one) and streams the
    /// response back with hop-by-hop headers stripped and
    /// `extra_response_headers` appended. Upstream failures become 502, no
    /// response head within `server.upstream_timeout` 504.
    pub async fn send(
        &self,
        out: Outgoing<'_>,
        extra_response_headers: HeaderMap,
        ctx: &RequestCtx,
    ) -> Reply {
        let route = out.route;
        // Pinned where it is made: the timeout then holds a pointer, and the
        // exchange's state is not copied into it.
        let exchange = std::pin::pin!(self.exchange(out, ctx));
        match crate::time::timer::timeout(self.upstream_timeout, exchange).await {
            Ok(Ok((res, target, upgrade))) => {
                let _ = ctx.upstream.set(target.name.clone());
                match self.respond(route, res, upgrade, extra_response_headers) {
                    Ok(res) => res,
                    Err(e) => self.fail(route, Some(target), e, ctx).into(),
                }
            }
            Ok(Err((e, target))) => self.fail(route, target, e, ctx).into(),
            Err(_) => {
                self.metrics
                    .upstream_error(&route.name, UpstreamErrorKind::timeout);
                self.fail(route, None, ProxyError::Timeout, ctx).into()
            }
        }
    }

    fn fail(
        &self,
        route: &Route,
        target: Option<&UpstreamTarget>,
        e: ProxyError,
        ctx: &RequestCtx,
    ) -> Response<Body> {
        let upstream = target.map(|t| &*t.name);
        if e.is_client_error() {
            tracing::debug!(route = %route.name, upstream, request_id = %ctx.request_id, error = %e, "request refused");
        } else {
            tracing::warn!(route = %route.name, upstream, request_id = %ctx.request_id, error = %e, "upstream failure");
        }
        if let Some(t) = target {
            let _ = ctx.upstream.set(t.name.clone());
        }
        e.to_response()
    }

    #[allow(clippy::type_complexity)]
    async fn exchange<'r>(
        &self,
        out: Outgoing<'r>,
        ctx: &RequestCtx,
    ) -> Result<
        (
            Reply,
            &'r UpstreamTarget,
            Option<(ClientUpgrade, HeaderValue)>,
        ),
        (ProxyError, Option<&'r UpstreamTarget>),
    > {
        let Outgoing {
            route,
            parts,
            body,
            path,
            upgrade,
            client_host,
            forwarded,
        } = out;
        let mut body = ForwardBody::new(body, route.config.max_body);
        let mut last = None;
        for target in route.upstreams.candidates() {
            let added = exchange::Added {
                target: (target, &path),
                // The client's with `preserve_host`; else, and when an
                // HTTP/1.0 client sent none, the upstream's.
                host: client_host.as_ref().unwrap_or(&target.host),
                request_id: ctx.request_id.as_bytes(),
                forwarded: &forwarded,
            };
            let sent = {
                let sending = std::pin::pin!(self.connector.send(
                    &target.endpoint,
                    target.pools.current(),
                    &parts,
                    &mut body,
                    &added
                ));
                sending.await
            };
            match sent {
                Ok(res) => {
                    crate::http::h1::give_map(parts.headers);
                    return Ok((res, target, upgrade));
                }
                Err(SendError::Connect(error)) => {
                    // Nothing was sent: skip this upstream for a while and
                    // try the next.
                    let kind = error::classify_connect(&error);
                    self.metrics.upstream_error(&route.name, kind);
                    tracing::warn!(route = %route.name, upstream = %target.name, request_id = %ctx.request_id,
                        ?kind, error = %error, "upstream connect failed");
                    route.upstreams.mark_down(target);
                    last = Some((
                        ProxyError::Upstream {
                            kind,
                            detail: error.to_string(),
                        },
                        Some(target),
                    ));
                }
                Err(SendError::BodyTooLarge) => {
                    return Err((ProxyError::BodyTooLarge, Some(target)));
                }
                Err(SendError::ClientBody(_)) => {
                    return Err((ProxyError::BadRequestBody, Some(target)));
                }
                Err(SendError::Exchange(e)) => {
                    self.metrics.upstream_error(&route.name, e.kind);
                    let err = ProxyError::Upstream {
                        kind: e.kind,
                        detail: e.detail,
                    };
                    return Err((err, Some(target)));
                }
            }
        }
        Err(last.unwrap_or((ProxyError::NoHealthyUpstream, None)))
    }

    fn respond(
        &self,
        route: &Route,
        reply: Reply,
        upgrade: Option<(ClientUpgrade, HeaderValue)>,
        extra_response_headers: HeaderMap,
    ) -> Result<Reply, ProxyError> {
        let mut res = reply;
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (client_side, asked) = upgrade.ok_or(ProxyError::BadUpgrade)?;
            let chosen = res
                .headers()
                .get(header::UPGRADE)
                .cloned()
                .filter(|p| offered(&asked, p))
                .ok_or(ProxyError::BadUpgrade)?;
            let upstream_side = res
                .extensions()
                .get::<exchange::UpstreamUpgrade>()
                .and_then(exchange::UpstreamUpgrade::take)
                .ok_or(ProxyError::BadUpgrade)?;
            self.tunnels.spawn(
                client_side,
                upstream_side,
                self.metrics.clone(),
                route.name.clone(),
            );
            headers::strip_hop_by_hop(res.headers_mut());
            headers::set_upgrade(res.headers_mut(), chosen);
        }
        // Otherwise its hop-by-hop fields were left out as it was parsed.
        let mut last: Option<HeaderName> = None;
        for (name, value) in extra_response_headers {
            if let Some(n) = name {
                last = Some(n);
            }
            if let Some(n) = &last {
                res.append_header(n.clone(), value);
            }
        }
        res.extensions_mut().clear();
        Ok(res)
    }
}

/// True when `chosen` is one of the comma-separated protocols in `asked`
/// (RFC 9110 §7.8).
fn offered(asked: &HeaderValue, chosen: &HeaderValue) -> bool {
    let chosen = chosen.as_bytes().trim_ascii();
    asked
        .as_bytes()
        .split(|&b| b == b',')
        .any(|p| p.trim_ascii().eq_ignore_ascii_case(chosen))
}

/// The path and query to send: the request's, minus the route prefix when
/// `strip_prefix` is set (at least `/`). The upstream's base path is
/// prepended later, per upstream.
fn upstream_path(route: &RouteConfig, uri: &Uri) -> PathAndQuery {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !route.strip_prefix || route.path_prefix == "/" {
        return pq;
    }
    let prefix = route.path_prefix.trim_end_matches('/');
    let rest = pq.path().get(prefix.len()..).unwrap_or("");
    let mut s = String::with_capacity(pq.as_str().len());
    if !rest.starts_with('/') {
        s.push('/');
    }
    s.push_str(rest);
    if let Some(q) = pq.query() {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s).unwrap_or(pq)
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

/// Closes pooled upstream connections idle longer than
/// [`UPSTREAM_POOL_IDLE_TIMEOUT`], until the route table is dropped.
fn spawn_pool_reaper(routes: &Arc<Vec<Route>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let routes = Arc::downgrade(routes);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(UPSTREAM_POOL_IDLE_TIMEOUT / 4).await;
            let Some(routes) = routes.upgrade() else {
                break;
            };
            for target in routes.iter().flat_map(|r| r.upstreams.iter()) {
                target.pools.reap();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(routes: &str) -> Proxy {
        let text = format!("[cookies]\nrefresh_path = \"/\"\n{routes}");
        let config = Config::parse(&text, "test").unwrap();
        Proxy::new(&config, Arc::new(Metrics::new()), Tunnels::new()).unwrap()
    }

    fn name(p: &Proxy, host: Option<&str>, path: &str) -> Option<String> {
        p.route_for(host, path).map(|r| r.name.to_string())
    }

    #[tokio::test]
    async fn routing_by_host_then_longest_prefix() {
        let p = proxy(
            r#"
[[routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:1"
[[routes]]
path_prefix = "/app"
upstream = "http://127.0.0.1:2"
[[routes]]
path_prefix = "/app/admin/"
upstream = "http://127.0.0.1:3"
[[routes]]
host = "API.example"
path_prefix = "/"
upstream = "http://127.0.0.1:4"
[[routes]]
host = "other.example"
path_prefix = "/app/x"
upstream = "http://127.0.0.1:5"
"#,
        );
        assert_eq!(name(&p, None, "/app").as_deref(), Some("/app"));
        assert_eq!(name(&p, None, "/app/").as_deref(), Some("/app"));
        assert_eq!(name(&p, None, "/app/x").as_deref(), Some("/app"));
        assert_eq!(name(&p, None, "/application").as_deref(), Some("/"));
        assert_eq!(name(&p, None, "/app/admin").as_deref(), Some("/app"));
        assert_eq!(
            name(&p, None, "/app/admin/users").as_deref(),
            Some("/app/admin/")
        );
        assert_eq!(
            name(&p, Some("api.EXAMPLE"), "/app").as_deref(),
            Some("api.example/")
        );
        assert_eq!(
            name(&p, Some("other.example"), "/app/x/1").as_deref(),
            Some("other.example/app/x")
        );
        assert_eq!(
            name(&p, Some("other.example"), "/app/y").as_deref(),
            Some("/app")
        );
        assert_eq!(name(&p, Some("unknown"), "/").as_deref(), Some("/"));
    }

    #[tokio::test]
    async fn no_route_without_catch_all() {
        let p = proxy("[[routes]]\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\n");
        assert!(p.route_for(None, "/").is_none());
        assert!(p.route_for(None, "/apix").is_none());
        assert!(p.route_for(None, "/api/v1").is_some());
    }

    fn route(prefix: &str, strip: bool) -> RouteConfig {
        let text = format!(
            "[cookies]\nrefresh_path = \"/\"\n[[routes]]\npath_prefix = \"{prefix}\"\nstrip_prefix = {strip}\nupstream = \"http://127.0.0.1:1\"\n"
        );
        Config::parse(&text, "t").unwrap().routes.remove(0)
    }

    #[test]
    fn strip_prefix_paths() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let r = route("/app", true);
        assert_eq!(upstream_path(&r, &uri("/app")).as_str(), "/");
        assert_eq!(upstream_path(&r, &uri("/app?x=1")).as_str(), "/?x=1");
        assert_eq!(upstream_path(&r, &uri("/app/a/b?x=1")).as_str(), "/a/b?x=1");
        let r = route("/app/", true);
        assert_eq!(upstream_path(&r, &uri("/app/a")).as_str(), "/a");
        let r = route("/app", false);
        assert_eq!(upstream_path(&r, &uri("/app/a?q")).as_str(), "/app/a?q");
        let r = route("/", true);
        assert_eq!(upstream_path(&r, &uri("/a")).as_str(), "/a");
        assert_eq!(
            upstream_path(&r, &uri("http://h/a?b")).as_str(),
            "/a?b",
            "absolute-form (HTTP/2) keeps path and query"
        );
    }

    #[test]
    fn upgrade_protocol_must_be_offered() {
        let asked = HeaderValue::from_static("websocket, foo/2");
        assert!(offered(&asked, &HeaderValue::from_static("WebSocket")));
        assert!(offered(&asked, &HeaderValue::from_static("foo/2")));
        assert!(!offered(&asked, &HeaderValue::from_static("h2c")));
    }

    #[test]
    fn trusted_matches_mapped_v4() {
        let nets: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        assert!(is_trusted(&nets, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_trusted(&nets, "127.0.0.2".parse().unwrap()));
    }
}
