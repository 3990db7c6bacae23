//! Prometheus metrics.
//!
//! [`Metrics`] owns the registry and the gateway's own families. Other parts
//! add theirs with [`Metrics::family`], which registers a metric the first
//! time its name is seen and hands back the same instance afterwards, so code
//! that runs again on a config reload (`App::build`) keeps counting into the
//! families it registered the first time.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

mod sharded;
pub use self::sharded::{ShardedCounter, ShardedHistogram};

/// `route` label: a route's name, `sign_in`, or `none` (no route matched).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatusLabels {
    pub route: Arc<str>,
    pub status: u16,
}

/// Why an upstream exchange failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UpstreamErrorKind {
    /// Connection refused: nothing was sent.
    refused,
    /// No TCP connection within `server.upstream_connect_timeout`.
    connect_timeout,
    /// Another connect failure (unreachable, DNS, TLS).
    connect,
    /// No response head within `server.upstream_timeout`.
    timeout,
    /// The connection was reset or closed mid-exchange.
    reset,
    /// Anything else (a malformed response, ...).
    other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub route: Arc<str>,
    pub kind: UpstreamErrorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

fn store_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ])
}

fn duration_histogram() -> ShardedHistogram {
    ShardedHistogram::new(&[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

const STATUS_SLOTS: usize = 500;

/// Request counters and the duration histogram of one route label.
pub struct RouteStats {
    /// The `route` label value.
    pub name: Arc<str>,
    duration: ShardedHistogram,
    /// Counters for statuses 100–599, created on first use.
    by_status: Box<[OnceLock<ShardedCounter>]>,
    requests: Family<RouteStatusLabels, ShardedCounter>,
}

impl RouteStats {
    /// Counts one answered request and its duration.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let labels = || RouteStatusLabels {
            route: self.name.clone(),
            status,
        };
        match self.by_status.get(usize::from(status).wrapping_sub(100)) {
            Some(slot) => slot
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The registry and the gateway's own metric families.
pub struct Metrics {
    registry: Mutex<Registry>,
    extra: Mutex<HashMap<String, Box<dyn Any + Send + Sync>>>,
    /// `sis_requests_total{route,status}`
    pub requests: Family<RouteStatusLabels, ShardedCounter>,
    /// `sis_request_duration_seconds{route}`: until the response head.
    pub request_duration: Family<RouteLabels, ShardedHistogram, fn() -> ShardedHistogram>,
    /// `sis_upstream_errors_total{route,kind}`
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// `sis_open_connections`: client connections (public and admin), including tunnels.
    pub open_connections: Gauge,
    /// `sis_connections_total`: client connections accepted.
    pub connections: Counter,
    /// `sis_connections_rejected_total`: closed at once because `server.max_connections` was reached.
    pub connections_rejected: Counter,
    /// `sis_tunnels_active`: upgraded (WebSocket) connections being relayed.
    pub tunnels_active: Gauge,
    /// `sis_config_reloads_total{result}`
    pub reloads: Family<ResultLabels, Counter>,
    /// `sis_rotations_total{outcome}`: ok, replay, theft, anti_csrf, expired, store_error, ...
    pub rotations: Family<OutcomeLabels, Counter>,
    /// `sis_store_duration_seconds`: session store calls, successful or not.
    pub store_duration: Histogram,
    /// `sis_inline_refreshes_total{source}`: `store` (a rotation call) or
    /// `memory` (coalesced onto a recent one).
    pub inline_refreshes: Family<SourceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sis");
        let requests = Family::<RouteStatusLabels, ShardedCounter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabels, ShardedHistogram, fn() -> ShardedHistogram>::new_with_constructor(
                duration_histogram as fn() -> ShardedHistogram,
            );
        registry.register_with_unit(
            "request_duration",
            "Time from request head to response head, by route",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges, by route and kind",
            upstream_errors.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Open client connections",
            open_connections.clone(),
        );
        let connections = Counter::default();
        registry.register(
            "connections",
            "Client connections accepted",
            connections.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "connections_rejected",
            "Connections closed at once because server.max_connections was reached",
            connections_rejected.clone(),
        );
        let tunnels_active = Gauge::default();
        registry.register(
            "tunnels_active",
            "Upgraded (WebSocket) connections being relayed",
            tunnels_active.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        let rotations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "rotations",
            "Refresh-token rotations, by outcome",
            rotations.clone(),
        );
        let store_duration = store_histogram();
        registry.register_with_unit(
            "store_duration",
            "Session store call latency",
            prometheus_client::registry::Unit::Seconds,
            store_duration.clone(),
        );
        let inline_refreshes = Family::<SourceLabels, Counter>::default();
        registry.register(
            "inline_refreshes",
            "Inline refreshes on pass-through routes, by source (store call or coalesced in memory)",
            inline_refreshes.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            extra: Mutex::new(HashMap::new()),
            requests,
            request_duration,
            upstream_errors,
            open_connections,
            connections,
            connections_rejected,
            tunnels_active,
            reloads,
            rotations,
            store_duration,
            inline_refreshes,
        }
    }

    pub fn rotation(&self, outcome: &'static str) {
        self.rotations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn store_call(&self, elapsed: Duration) {
        self.store_duration.observe(elapsed.as_secs_f64());
    }

    pub fn inline_refresh(&self, coalesced: bool) {
        let source = if coalesced { "memory" } else { "store" };
        self.inline_refreshes
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// The per-request metrics of one route label, resolved once so that
    /// counting a request needs no label lookup.
    pub fn route_stats(&self, route: &str) -> RouteStats {
        let route: Arc<str> = Arc::from(route);
        RouteStats {
            duration: self
                .request_duration
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .clone(),
            by_status: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            requests: self.requests.clone(),
            name: route,
        }
    }

    pub fn upstream_error(&self, route: &Arc<str>, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                route: route.clone(),
                kind,
            })
            .inc();
    }

    /// Registers `make()` as `sis_<name>` the first time `name` is seen and
    /// returns it; later calls with the same name return a clone of the
    /// registered metric (every prometheus-client metric is a shared handle).
    ///
    /// ```
    /// # use sis_gateway::metrics::Metrics;
    /// use prometheus_client::metrics::counter::Counter;
    /// let metrics = Metrics::new();
    /// let a: Counter = metrics.family("refreshes", "Refresh calls", Counter::default);
    /// let b: Counter = metrics.family("refreshes", "Refresh calls", Counter::default);
    /// a.inc();
    /// assert_eq!(b.get(), 1);
    /// ```
    ///
    /// Panics when `name` was registered before with another type.
    pub fn family<M>(&self, name: &str, help: &str, make: impl FnOnce() -> M) -> M
    where
        M: Metric + Clone + Any + Send + Sync,
    {
        let mut extra = self.extra.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = extra.get(name) {
            return existing
                .downcast_ref::<M>()
                .unwrap_or_else(|| panic!("metric {name} registered with another type"))
                .clone();
        }
        let metric = make();
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric.clone());
        extra.insert(name.to_owned(), Box::new(metric.clone()));
        metric
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_families() {
        let m = Metrics::new();
        let stats = m.route_stats("/app");
        stats.record(200, Duration::from_millis(3));
        stats.record(200, Duration::from_millis(3));
        stats.record(999, Duration::from_millis(3));
        let route: Arc<str> = Arc::from("/app");
        m.upstream_error(&route, UpstreamErrorKind::refused);
        m.open_connections.inc();
        let text = m.encode();
        assert!(
            text.contains("sis_requests_total{route=\"/app\",status=\"200\"} 2")
                && text.contains("sis_requests_total{route=\"/app\",status=\"999\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sis_request_duration_seconds_count{route=\"/app\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sis_upstream_errors_total{route=\"/app\",kind=\"refused\"} 1"),
            "{text}"
        );
        assert!(text.contains("sis_open_connections 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn family_registers_once() {
        let m = Metrics::new();
        let a: Counter = m.family("extra", "An extra counter", Counter::default);
        let b: Counter = m.family("extra", "An extra counter", Counter::default);
        a.inc();
        b.inc();
        assert!(m.encode().contains("sis_extra_total 2"));
    }
}
