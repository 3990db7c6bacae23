//! Everything built from one configuration, and request dispatch.
//!
//! The server keeps the live [`App`] behind an `ArcSwap` and loads it once per
//! request, so a reload swaps in a new one while requests in flight finish
//! with the old.

use std::sync::Arc;

use http::HeaderMap;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::body::Body;
use crate::config::Config;
use crate::ctx::RequestCtx;
use crate::metrics::{Metrics, RouteStats};
use crate::proxy::{self, Proxy, ProxyError, Tunnels};
use crate::sign_in::SignIn;

pub struct App {
    pub config: Arc<Config>,
    pub proxy: Proxy,
    pub sign_in: SignIn,
    pub metrics: Arc<Metrics>,
    labels: Labels,
}

/// Metrics of requests that are not routed.
struct Labels {
    sign_in: RouteStats,
    no_route: RouteStats,
}

/// A response and the route it is counted and logged under.
pub struct Handled<'a> {
    pub response: Response<Body>,
    pub route: &'a RouteStats,
}

impl App {
    pub async fn build(config: Config, metrics: Arc<Metrics>) -> anyhow::Result<App> {
        Self::build_with(config, metrics, Tunnels::new()).await
    }

    /// A new `App` for a reloaded `config`, sharing this one's metrics and
    /// tunnels (so shutdown still sees tunnels opened before the reload).
    pub async fn rebuild(&self, config: Config) -> anyhow::Result<App> {
        Self::build_with(config, self.metrics.clone(), self.proxy.tunnels().clone()).await
    }

    async fn build_with(
        config: Config,
        metrics: Arc<Metrics>,
        tunnels: Tunnels,
    ) -> anyhow::Result<App> {
        let sign_in = SignIn::new(&config).await?;
        let proxy = Proxy::new(&config, metrics.clone(), tunnels)?;
        let labels = Labels {
            sign_in: metrics.route_stats("sign_in"),
            no_route: metrics.route_stats("none"),
        };
        Ok(App {
            config: Arc::new(config),
            proxy,
            sign_in,
            metrics,
            labels,
        })
    }

    /// Answers one request on the public listener: a sign-in endpoint, or a
    /// routed pass-through.
    pub async fn handle(&self, req: Request<Incoming>, ctx: &RequestCtx) -> Handled<'_> {
        if self.sign_in.matches(req.uri().path()) {
            return Handled {
                response: self.sign_in.handle(req, ctx).await,
                route: &self.labels.sign_in,
            };
        }
        let Some(route) = self.proxy.route_for_request(&req) else {
            return Handled {
                response: ProxyError::NoRoute.to_response(),
                route: &self.labels.no_route,
            };
        };
        // The route's auth mode (route.config.auth) is applied here: read the
        // request's cookies, then `self.proxy.prepare(route, req, ctx)`, add
        // identity headers to the prepared request, and
        // `self.proxy.send(out, set_cookies, ctx)`.
        let response = self.proxy.forward(route, req, ctx, HeaderMap::new()).await;
        Handled {
            response,
            route: &route.stats,
        }
    }
}

/// Re-exported so dispatch code can name the upstream in logs.
pub use proxy::UpstreamName;
