//! A route's upstreams: round robin with passive health.
//!
//! An upstream that refuses a connection is skipped for
//! `server.upstream_cooldown`. A route with a single upstream never skips it
//! (there is nowhere else to go, and skipping would only turn a brief restart
//! into a longer outage).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::HeaderValue;
use rustls::pki_types::ServerName;

use super::connect::Endpoint;
use super::pool::Pools;
use crate::config::Upstream;

use crate::time::coarse::monotonic_ms;

/// One upstream base URL with what forwarding needs precomputed.
pub struct UpstreamTarget {
    /// As written in the config, for logs and metrics.
    pub name: Arc<str>,
    pub endpoint: Endpoint,
    pub pools: Pools,
    base_path: String,
    /// `Host` for routes without `preserve_host`.
    pub host: HeaderValue,
    /// 0 = healthy; else `monotonic_ms()` until which it is skipped.
    down_until: AtomicU64,
}

impl UpstreamTarget {
    fn new(u: &Upstream, pool_idle_timeout: Duration) -> Self {
        let https = u.scheme == Scheme::HTTPS;
        let host = u.authority.host();
        let port = u
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tls_name = https
            .then(|| ServerName::try_from(bare_host.to_owned()).ok())
            .flatten();
        UpstreamTarget {
            name: Arc::from(u.name.as_str()),
            endpoint: Endpoint {
                addr: format!("{host}:{port}"),
                tls_name,
            },
            pools: Pools::new(pool_idle_timeout),
            base_path: u.base_path.clone(),
            host: HeaderValue::from_str(u.authority.as_str())
                .expect("an authority is a valid header value"),
            down_until: AtomicU64::new(0),
        }
    }

    /// Writes the origin-form target for `path_and_query` (already relative
    /// to the route, i.e. after `strip_prefix`): the base path, then the
    /// path and query.
    pub fn write_target(&self, path_and_query: &PathAndQuery, dst: &mut Vec<u8>) {
        dst.extend_from_slice(self.base_path.as_bytes());
        dst.extend_from_slice(path_and_query.as_str().as_bytes());
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
    pub fn new(upstreams: &[Upstream], cooldown: Duration, pool_idle_timeout: Duration) -> Self {
        UpstreamSet {
            targets: upstreams
                .iter()
                .map(|u| UpstreamTarget::new(u, pool_idle_timeout))
                .collect(),
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

    pub fn iter(&self) -> impl Iterator<Item = &UpstreamTarget> {
        self.targets.iter()
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
            .filter(move |t| single || t.healthy(monotonic_ms()))
    }

    /// Records that `target` refused a connection: skip it for the cooldown.
    pub fn mark_down(&self, target: &UpstreamTarget) {
        if self.targets.len() > 1 && !self.cooldown.is_zero() {
            let until = monotonic_ms() + self.cooldown.as_millis() as u64;
            target.down_until.store(until.max(1), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(s: &str) -> Upstream {
        let uri: http::Uri = s.parse().unwrap();
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
            Duration::from_secs(60),
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
            Duration::from_secs(60),
        );
        set.mark_down(&set.targets[0]);
        assert_eq!(names(&set), ["http://b:1"]);
        assert_eq!(names(&set), ["http://b:1"]);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(names(&set).len(), 2);
    }

    #[test]
    fn single_upstream_never_skipped() {
        let set = UpstreamSet::new(
            &[upstream("http://a:1")],
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        set.mark_down(set.first());
        assert_eq!(names(&set), ["http://a:1"]);
    }

    #[test]
    fn target_with_base_path_and_query() {
        let idle = Duration::from_secs(60);
        let t = UpstreamTarget::new(&upstream("http://a:8080/base/"), idle);
        let pq: PathAndQuery = "/x/y?q=1&r".parse().unwrap();
        let target = |t: &UpstreamTarget| {
            let mut dst = Vec::new();
            t.write_target(&pq, &mut dst);
            String::from_utf8(dst).unwrap()
        };
        assert_eq!(target(&t), "/base/x/y?q=1&r");
        let t = UpstreamTarget::new(&upstream("http://a:8080"), idle);
        assert_eq!(target(&t), "/x/y?q=1&r");
        assert_eq!(t.host, "a:8080");
        assert_eq!(t.endpoint.addr, "a:8080");
        assert!(t.endpoint.tls_name.is_none());
        let t = UpstreamTarget::new(&upstream("https://[::1]"), idle);
        assert_eq!(t.endpoint.addr, "[::1]:443");
        assert!(t.endpoint.tls_name.is_some());
    }
}
