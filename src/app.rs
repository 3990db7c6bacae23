//! Everything built from one configuration, and request dispatch.
//!
//! The server keeps the live [`App`] behind an `ArcSwap` and loads it once per
//! request, so a reload swaps in a new one while requests in flight finish
//! with the old.

use std::sync::Arc;

use crate::http::body::RequestBody;
use http::{header, HeaderMap};
use hyper::Request;

use crate::auth::{self, Auth};
use crate::config::{AuthMode, Config};
use crate::ctx::RequestCtx;
use crate::http::Reply;
use crate::metrics::{Metrics, RouteStats};
use crate::proxy::{self, Proxy, ProxyError, Tunnels};
use crate::sign_in::migrate::LoginService;
use crate::sign_in::SignIn;
use crate::tokens::jwks::UpstreamKeys;

pub struct App {
    pub config: Arc<Config>,
    pub proxy: Proxy,
    pub sign_in: SignIn,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    labels: Labels,
    path_rules: crate::target::PathRules,
    /// With `[sign_in.adopt]`: the login service's keys.
    adopt_keys: Option<Arc<UpstreamKeys>>,
}

/// The keys of `sign_in.adopt.jwks`: read from its file, or fetched from
/// its `https://` URL. A reload that keeps the URL (and `ca`) keeps the keys
/// already fetched (`old`), instead of starting again with none; a reload
/// to a URL that gives nothing usable is refused while the running one has
/// keys.
async fn start_adopt_keys(
    config: &Config,
    old: Option<&Arc<UpstreamKeys>>,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<UpstreamKeys>>> {
    let Some(adopt) = config.sign_in.adopt.as_ref() else {
        return Ok(None);
    };
    let keys = UpstreamKeys::load(adopt).map_err(|e| anyhow::anyhow!("sign_in.adopt.jwks: {e}"))?;
    let keys = match old {
        Some(old) if keys.same_remote(old) => old.clone(),
        _ => Arc::new(keys),
    };
    keys.start(metrics).await?;
    if let (Some(why), Some(old)) = (keys.not_ready(), old) {
        if old.not_ready().is_none() {
            anyhow::bail!("sign_in.adopt.jwks: {why}");
        }
    }
    Ok(Some(keys))
}

/// Metrics of requests that are not routed.
struct Labels {
    sign_in: RouteStats,
    no_route: RouteStats,
}

/// A response and the route it is counted and logged under.
pub struct Handled<'a> {
    pub response: Reply,
    pub route: &'a RouteStats,
}

impl App {
    pub async fn build(config: Config, metrics: Arc<Metrics>) -> anyhow::Result<App> {
        Self::build_with(config, metrics, Tunnels::new()).await
    }

    /// A new `App` for a reloaded `config`, sharing this one's metrics and
    /// tunnels (so shutdown still sees tunnels opened before the reload).
    pub async fn rebuild(&self, config: Config) -> anyhow::Result<App> {
        let adopt_keys = start_adopt_keys(&config, self.adopt_keys.as_ref(), &self.metrics).await?;
        let sign_in = self
            .sign_in
            .reloaded(
                &self.config,
                &config,
                adopt_keys.clone(),
                self.metrics.clone(),
            )
            .await?;
        Self::assemble(
            config,
            self.metrics.clone(),
            self.proxy.tunnels().clone(),
            sign_in,
            adopt_keys,
        )
    }

    async fn build_with(
        config: Config,
        metrics: Arc<Metrics>,
        tunnels: Tunnels,
    ) -> anyhow::Result<App> {
        let adopt_keys = start_adopt_keys(&config, None, &metrics).await?;
        let sign_in = SignIn::new(&config, adopt_keys.clone(), metrics.clone()).await?;
        Self::assemble(config, metrics, tunnels, sign_in, adopt_keys)
    }

    fn assemble(
        config: Config,
        metrics: Arc<Metrics>,
        tunnels: Tunnels,
        sign_in: SignIn,
        adopt_keys: Option<Arc<UpstreamKeys>>,
    ) -> anyhow::Result<App> {
        let proxy = Proxy::new(&config, metrics.clone(), tunnels)?;
        let labels = Labels {
            sign_in: metrics.route_stats("sign_in"),
            no_route: metrics.route_stats("none"),
        };
        Ok(App {
            auth: Auth::new(config.tokens.refresh_skew, &config.cookies),
            path_rules: crate::target::PathRules::of(&config.server),
            config: Arc::new(config),
            proxy,
            sign_in,
            metrics,
            labels,
            adopt_keys,
        })
    }

    /// Why the gateway is not ready beyond its store: the login service's
    /// JWKS (an `https://` `sign_in.adopt.jwks`) never fetched yet.
    pub fn not_ready(&self) -> Option<String> {
        self.adopt_keys.as_ref()?.not_ready()
    }

    /// Answers one request on the public listener: a sign-in endpoint, or a
    /// routed pass-through.
    pub async fn handle(&self, mut req: Request<RequestBody>, ctx: &RequestCtx) -> Handled<'_> {
        // One path and one authority, settled before anything reads them
        // (README, The trust boundary).
        if let Err(e) = crate::target::admit(&mut req, self.path_rules) {
            return Handled {
                response: crate::http::body::json_error(
                    http::StatusCode::BAD_REQUEST,
                    &e.to_string(),
                )
                .into(),
                route: &self.labels.no_route,
            };
        }
        // The sign-in endpoints and the session routes are boxed: their
        // state (store calls, signing) is far larger than a pass-through's,
        // and every request's future would otherwise be as large as theirs.
        if self.sign_in.matches(req.uri().path()) {
            // Sign-in paths the gateway does not answer go to the login
            // service, forwarded as a public route is (boxed, so the
            // pass-through future does not grow by a second forward).
            if let (false, Some(route)) = (
                self.sign_in.intercepts(req.uri().path()),
                self.proxy.sign_in_route(),
            ) {
                // An answer that may carry a bundle of the login service's
                // own must be read to be adopted: ask for it unencoded.
                let adopts = self.sign_in.adopts();
                if adopts {
                    req.headers_mut().remove(header::ACCEPT_ENCODING);
                }
                let mut response =
                    crate::boxed!(self.proxy.forward(route, req, ctx, HeaderMap::new())).await;
                if adopts {
                    response = crate::boxed!(self.sign_in.adopt(response, ctx)).await;
                }
                return Handled {
                    response,
                    route: &route.stats,
                };
            }
            return Handled {
                response: crate::boxed!(self.sign_in.handle(req, ctx, self.login_service()))
                    .await
                    .into(),
                route: &self.labels.sign_in,
            };
        }
        let Some(route) = self.proxy.route_for_request(&req) else {
            return Handled {
                response: ProxyError::NoRoute.to_response().into(),
                route: &self.labels.no_route,
            };
        };
        if route.config.auth == AuthMode::Public {
            let response =
                std::pin::pin!(self.proxy.forward(route, req, ctx, HeaderMap::new())).await;
            return Handled {
                response,
                route: &route.stats,
            };
        }
        let response = crate::boxed!(self.authenticated(route, req, ctx)).await;
        Handled {
            response,
            route: &route.stats,
        }
    }

    /// The login service, when there is one (for migrations).
    fn login_service(&self) -> Option<LoginService<'_>> {
        self.proxy.sign_in_route().map(|route| LoginService {
            proxy: &self.proxy,
            route,
        })
    }

    /// A `session` or `required` route: auth reads (and may rotate) the
    /// session from the original cookies, the proxy strips credentials and
    /// spoofed identity, then the identity of a valid session is added.
    async fn authenticated(
        &self,
        route: &proxy::Route,
        mut req: Request<RequestBody>,
        ctx: &RequestCtx,
    ) -> Reply {
        let decision = match self
            .auth
            .authenticate(
                &self.sign_in,
                self.login_service(),
                &route.config,
                req.headers_mut(),
                ctx,
            )
            .await
        {
            Ok(d) => d,
            Err(res) => return res.into(),
        };
        if decision.rotated {
            self.metrics.inline_refresh(decision.coalesced);
        }
        let mut response = match self.proxy.prepare(route, req, ctx) {
            Ok(mut out) => {
                if let Some(identity) = &decision.identity {
                    auth::add_identity(&route.config, identity, out.headers_mut());
                }
                self.proxy.send(out, HeaderMap::new(), ctx).await
            }
            Err(e) => e.to_response().into(),
        };
        // Added here rather than by the proxy so that an upstream failure
        // still delivers rotated cookies: the browser must not keep using a
        // token that has already been rotated.
        for cookie in decision.set_cookies {
            response.append_header(header::SET_COOKIE, cookie);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    //! How large a request's future is, checked rather than remembered.
    //!
    //! A future's state moves with it: every `.await` on an unboxed future
    //! and every hand-over (to a timeout, a `select!`, the connection loop)
    //! copies the whole of it, and the caller's future holds the largest
    //! future it awaits inline. The connection loop awaits
    //! [`App::handle`] on every request, so the large branches (sign-in
    //! endpoints, session routes, the login service's forward) are boxed
    //! with `crate::boxed!` and only a pass-through forward is inline. These
    //! limits, a little above today's sizes, fail when a change makes a
    //! request's future grow, so the boxing is kept where it matters
    //! (raise a limit only knowing what grew and why it must).

    use std::mem::size_of_val;
    use std::net::SocketAddr;
    use std::sync::OnceLock;

    use super::*;
    use crate::ctx::RequestId;

    // Sizes in bytes of the test build, on x86_64 with today's compiler: a
    // new compiler may move them a little; a change of the code that moves
    // them by hundreds of bytes is the one to look at.

    /// [`App::handle`]: what the connection loop holds for each request
    /// (4424 bytes today).
    const HANDLE_LIMIT: usize = 4608;
    /// [`Proxy::forward`]: inline in `handle` on a public route (3832 today).
    const FORWARD_LIMIT: usize = 4096;
    /// [`Proxy::send`]: inline in `forward` and in a session route's future
    /// (2904 today).
    const SEND_LIMIT: usize = 3072;

    /// A memory store, ephemeral keys, and one public route.
    fn config() -> Config {
        let text = r#"
[cookies]
secure = false
refresh_path = "/"
[[routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:9"
auth = "public"
"#;
        Config::parse(text, "test").unwrap()
    }

    fn ctx() -> RequestCtx {
        RequestCtx {
            peer: SocketAddr::from(([192, 0, 2, 1], 40000)),
            client_ip: [192, 0, 2, 1].into(),
            request_id: RequestId::generated(*b"00000000-0000-4000-8000-000000000000"),
            tls: false,
            upstream: OnceLock::new(),
            adoption: OnceLock::new(),
        }
    }

    fn request() -> Request<RequestBody> {
        Request::get("/x").body(RequestBody::empty()).unwrap()
    }

    /// The futures are made and measured, never polled.
    #[tokio::test]
    async fn request_futures_stay_small() {
        let app = App::build(config(), Arc::new(Metrics::new()))
            .await
            .unwrap();
        let ctx = ctx();
        let handle = size_of_val(&app.handle(request(), &ctx));
        let route = app.proxy.route_for(None, "/x").unwrap();
        let forward = size_of_val(&app.proxy.forward(route, request(), &ctx, HeaderMap::new()));
        let out = app.proxy.prepare(route, request(), &ctx).unwrap();
        let send = size_of_val(&app.proxy.send(out, HeaderMap::new(), &ctx));
        assert!(
            handle <= HANDLE_LIMIT,
            "App::handle's future is {handle} bytes, over {HANDLE_LIMIT}"
        );
        assert!(
            forward <= FORWARD_LIMIT,
            "Proxy::forward's future is {forward} bytes, over {FORWARD_LIMIT}"
        );
        assert!(
            send <= SEND_LIMIT,
            "Proxy::send's future is {send} bytes, over {SEND_LIMIT}"
        );
    }
}
