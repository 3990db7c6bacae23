//! A route's upstreams: round robin with passive health.
//!
//! An upstream that refuses a connection is skipped for
//! `server.upstream_cooldown`. A route with a single upstream never skips it
//! (there is nowhere else to go, and skipping would only turn a brief restart
//! into a longer outage).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use crate::config::Upstream;

/// Milliseconds since the first call, a cheap monotonic clock for cooldowns.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One upstream base URL with what forwarding needs precomputed.
pub struct UpstreamTarget {
    /// As written in the config, for logs and metrics.
    pub name: Arc<str>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    /// `Host` for routes without `preserve_host`.
    pub host: HeaderValue,
    /// 0 = healthy; else `now_ms()` until which it is skipped.
    down_until: AtomicU64,
}

impl UpstreamTarget {
    fn new(u: &Upstream) -> Self {
        UpstreamTarget {
            name: Arc::from(u.name.as_str()),
            scheme: u.scheme.clone(),
            authority: u.authority.clone(),
            base_path: u.base_path.clone(),
            host: HeaderValue::from_str(u.authority.as_str())
                .expect("an authority is a valid header value"),
            down_until: AtomicU64::new(0),
        }
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The absolute URI for `path_and_query` (already relative to the route,
    /// i.e. after `strip_prefix`): the base path is prepended, the query kept.
    pub fn uri(&self, path_and_query: &PathAndQuery) -> Uri {
        let pq = if self.base_path.is_empty() {
            path_and_query.clone()
        } else {
            let rest = path_and_query.as_str();
            let mut s = String::with_capacity(self.base_path.len() + rest.len());
            s.push_str(&self.base_path);
            s.push_str(rest);
            PathAndQuery::try_from(s).unwrap_or_else(|_| path_and_query.clone())
        };
        Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(pq);
            parts
        })
        .expect("scheme, authority and path make a valid URI")
    }

    fn healthy(&self, now: u64) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until == 0 || now >= until
    }
}

/// The upstreams of one route.
pub struct UpstreamSet {
    targets: Vec<UpstreamTarget>,
    next: AtomicUsize,
    cooldown: Duration,
}

impl UpstreamSet {
    pub fn new(upstreams: &[Upstream], cooldown: Duration) -> Self {
        UpstreamSet {
            targets: upstreams.iter().map(UpstreamTarget::new).collect(),
            next: AtomicUsize::new(0),
            cooldown,
        }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn first(&self) -> &UpstreamTarget {
        &self.targets[0]
    }

    /// The healthy upstreams in round-robin order, starting after the one
    /// the previous request started with. Health is checked as the iterator
    /// advances, so an upstream marked down by an earlier attempt is skipped.
    pub fn candidates(&self) -> impl Iterator<Item = &UpstreamTarget> {
        let n = self.targets.len();
        let start = if n > 1 {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        };
        let single = n == 1;
        (0..n)
            .map(move |i| &self.targets[(start + i) % n])
            .filter(move |t| single || t.healthy(now_ms()))
    }

    /// Records that `target` refused a connection: skip it for the cooldown.
    pub fn mark_down(&self, target: &UpstreamTarget) {
        if self.targets.len() > 1 && !self.cooldown.is_zero() {
            let until = now_ms() + self.cooldown.as_millis() as u64;
            target.down_until.store(until.max(1), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(s: &str) -> Upstream {
        let uri: Uri = s.parse().unwrap();
        Upstream {
            name: s.into(),
            scheme: uri.scheme().unwrap().clone(),
            authority: uri.authority().unwrap().clone(),
            base_path: uri.path().trim_end_matches('/').into(),
        }
    }

    fn names(set: &UpstreamSet) -> Vec<String> {
        set.candidates().map(|t| t.name.to_string()).collect()
    }

    #[test]
    fn round_robin_rotates_start() {
        let set = UpstreamSet::new(
            &[
                upstream("http://a:1"),
                upstream("http://b:1"),
                upstream("http://c:1"),
            ],
            Duration::from_secs(10),
        );
        assert_eq!(names(&set), ["http://a:1", "http://b:1", "http://c:1"]);
        assert_eq!(names(&set), ["http://b:1", "http://c:1", "http://a:1"]);
        assert_eq!(names(&set), ["http://c:1", "http://a:1", "http://b:1"]);
    }

    #[test]
    fn down_upstream_skipped_until_cooldown_ends() {
        let set = UpstreamSet::new(
            &[upstream("http://a:1"), upstream("http://b:1")],
            Duration::from_millis(30),
        );
        set.mark_down(&set.targets[0]);
        assert_eq!(names(&set), ["http://b:1"]);
        assert_eq!(names(&set), ["http://b:1"]);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(names(&set).len(), 2);
    }

    #[test]
    fn single_upstream_never_skipped() {
        let set = UpstreamSet::new(&[upstream("http://a:1")], Duration::from_secs(10));
        set.mark_down(set.first());
        assert_eq!(names(&set), ["http://a:1"]);
    }

    #[test]
    fn uri_with_base_path_and_query() {
        let t = UpstreamTarget::new(&upstream("http://a:8080/base/"));
        let pq: PathAndQuery = "/x/y?q=1&r".parse().unwrap();
        assert_eq!(t.uri(&pq).to_string(), "http://a:8080/base/x/y?q=1&r");
        let t = UpstreamTarget::new(&upstream("http://a:8080"));
        assert_eq!(t.uri(&pq).to_string(), "http://a:8080/x/y?q=1&r");
        assert_eq!(t.host, "a:8080");
    }
}
