//! The request as it goes upstream: [`Proxy::prepare`] turns the client's
//! request into an [`Outgoing`] whose headers auth may still edit.

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};
use ipnet::IpNet;

use super::headers::{Forwarded, ForwardedFor};
use super::{ClientUpgrade, Proxy, ProxyError, Route};
use crate::config::RouteConfig;
use crate::ctx::RequestCtx;
use crate::http::body::RequestBody;

/// A request made ready for the upstream by [`Proxy::prepare`]. Its headers
/// may still be edited before [`Proxy::send`].
pub struct Outgoing<'r> {
    pub(super) route: &'r Route,
    pub(super) parts: http::request::Parts,
    pub(super) body: RequestBody,
    /// The path and query to send, relative to the upstream base.
    pub(super) path: PathAndQuery,
    /// The client's side of an upgrade, and the protocols it asked for.
    pub(super) upgrade: Option<(ClientUpgrade, HeaderValue)>,
    /// The client's `Host`, sent instead of the upstream's with
    /// `preserve_host`.
    pub(super) client_host: Option<HeaderValue>,
    pub(super) forwarded: Forwarded,
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
    /// Turns the client's request into the one sent upstream: rejects a
    /// `Content-Length` over `max_body` (413), applies the header policy
    /// (see [`policy`](super::policy): hop-by-hop fields, an upgrade the
    /// route allows, secret cookies, identity headers, `_` names,
    /// `X-Forwarded-*`), and picks the path.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
    fn trusted_matches_mapped_v4() {
        let nets: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        assert!(is_trusted(&nets, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_trusted(&nets, "127.0.0.2".parse().unwrap()));
    }
}
