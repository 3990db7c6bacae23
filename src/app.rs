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

pub struct App {
    pub config: Arc<Config>,
    pub proxy: Proxy,
    pub sign_in: SignIn,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    labels: Labels,
    path_rules: crate::target::PathRules,
}

/// Starts fetching an `https://` `sign_in.adopt.jwks`, or, on a reload
/// that keeps its URL, takes the keys already fetched from `old`. A reload
/// to a URL that gives nothing usable is refused while the running one has
/// keys.
async fn start_adopt_keys(
    config: &mut Config,
    old: Option<&Config>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let Some(adopt) = config.sign_in.adopt.as_mut() else {
        return Ok(());
    };
    let old = old.and_then(|c| c.sign_in.adopt.as_ref());
    if let Some(old) = old {
        adopt.keep_fetched(old);
    }
    adopt.keys.start(metrics).await?;
    if let (Some(why), Some(old)) = (adopt.keys.not_ready(), old) {
        if old.keys.not_ready().is_none() {
            anyhow::bail!("sign_in.adopt.jwks: {why}");
        }
    }
    Ok(())
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
    pub async fn rebuild(&self, mut config: Config) -> anyhow::Result<App> {
        start_adopt_keys(&mut config, Some(&self.config), &self.metrics).await?;
        let sign_in = self
            .sign_in
            .reloaded(&self.config, &config, self.metrics.clone())
            .await?;
        Self::assemble(
            config,
            self.metrics.clone(),
            self.proxy.tunnels().clone(),
            sign_in,
        )
    }

    async fn build_with(
        mut config: Config,
        metrics: Arc<Metrics>,
        tunnels: Tunnels,
    ) -> anyhow::Result<App> {
        start_adopt_keys(&mut config, None, &metrics).await?;
        let sign_in = SignIn::new(&config, metrics.clone()).await?;
        Self::assemble(config, metrics, tunnels, sign_in)
    }

    fn assemble(
        config: Config,
        metrics: Arc<Metrics>,
        tunnels: Tunnels,
        sign_in: SignIn,
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
        })
    }

    /// Why the gateway is not ready beyond its store: the login service's
    /// JWKS (an `https://` `sign_in.adopt.jwks`) never fetched yet.
    pub fn not_ready(&self) -> Option<String> {
        let adopt = self.config.sign_in.adopt.as_ref()?;
        adopt.keys.not_ready()
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
            response
                .response
                .headers_mut()
                .append(header::SET_COOKIE, cookie);
        }
        response
    }
}
