//! The route table: one [`Route`] per `[[routes]]` entry, and which route a
//! request takes (host, then longest path prefix).

use std::sync::Arc;
use std::time::Duration;

use http::Request;

use super::headers;
use super::upstream::UpstreamSet;
use crate::config::{Config, RouteConfig};
use crate::metrics::{Metrics, RouteStats};

/// How long an idle pooled upstream connection is kept.
pub const UPSTREAM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One `[[routes]]` entry, ready to forward to.
pub struct Route {
    pub config: RouteConfig,
    /// `config.name`, shared with metrics labels.
    pub name: Arc<str>,
    /// Request count and duration under this route's label.
    pub stats: RouteStats,
    pub(super) upstreams: UpstreamSet,
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

/// The routes of one configuration, in the order they are matched.
pub(super) struct RouteTable {
    /// Host-specific routes first, then by longest prefix: the first match
    /// wins. The first `routed` are the route table; after them comes the
    /// sign-in upstream's route, when there is one.
    routes: Arc<Vec<Route>>,
    routed: usize,
    /// Some route names a host (else a request's host is not looked up).
    host_routes: bool,
}

impl RouteTable {
    /// The configuration's routes, and the sign-in upstream's route after
    /// them; a task closes their idle pooled connections while the table
    /// lives.
    pub(super) fn new(config: &Config, metrics: &Metrics) -> RouteTable {
        let server = &config.server;
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
        routes.extend(config.sign_in.upstream_route().iter().map(route));
        let host_routes = routes.iter().any(|r| r.config.host.is_some());
        let routes = Arc::new(routes);
        spawn_pool_reaper(&routes);
        RouteTable {
            routes,
            routed,
            host_routes,
        }
    }

    /// Routes naming `host` (compared case-insensitively, without port)
    /// before host-less ones, then the longest `path_prefix` that covers
    /// `path`.
    pub(super) fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes[..self.routed].iter().find(|r| {
            let host_ok = match (&r.config.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            };
            host_ok && r.covers(path)
        })
    }

    /// The route for `req`, from its `Host` (or `:authority`) and path.
    pub(super) fn for_request<B>(&self, req: &Request<B>) -> Option<&Route> {
        let host = if self.host_routes {
            headers::request_host(req.headers(), req.uri())
        } else {
            None
        };
        self.find(host, req.uri().path())
    }

    /// The route to `sign_in.upstream`, when there is one.
    pub(super) fn sign_in(&self) -> Option<&Route> {
        self.routes.get(self.routed)
    }
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

    fn table(routes: &str) -> RouteTable {
        let text = format!("[cookies]\nrefresh_path = \"/\"\n{routes}");
        let config = Config::parse(&text, "test").unwrap();
        RouteTable::new(&config, &Metrics::new())
    }

    fn name(t: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        t.find(host, path).map(|r| r.name.to_string())
    }

    #[tokio::test]
    async fn routing_by_host_then_longest_prefix() {
        let t = table(
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
        assert_eq!(name(&t, None, "/app").as_deref(), Some("/app"));
        assert_eq!(name(&t, None, "/app/").as_deref(), Some("/app"));
        assert_eq!(name(&t, None, "/app/x").as_deref(), Some("/app"));
        assert_eq!(name(&t, None, "/application").as_deref(), Some("/"));
        assert_eq!(name(&t, None, "/app/admin").as_deref(), Some("/app"));
        assert_eq!(
            name(&t, None, "/app/admin/users").as_deref(),
            Some("/app/admin/")
        );
        assert_eq!(
            name(&t, Some("api.EXAMPLE"), "/app").as_deref(),
            Some("api.example/")
        );
        assert_eq!(
            name(&t, Some("other.example"), "/app/x/1").as_deref(),
            Some("other.example/app/x")
        );
        assert_eq!(
            name(&t, Some("other.example"), "/app/y").as_deref(),
            Some("/app")
        );
        assert_eq!(name(&t, Some("unknown"), "/").as_deref(), Some("/"));
    }

    #[tokio::test]
    async fn no_route_without_catch_all() {
        let t = table("[[routes]]\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\n");
        assert!(t.find(None, "/").is_none());
        assert!(t.find(None, "/apix").is_none());
        assert!(t.find(None, "/api/v1").is_some());
    }
}
