//! `[store]`: where sessions are kept (memory, Redis, Redis Cluster or
//! Sentinel) and how the store is reached.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawStore;
use super::{Secret, Validator};

pub const DEFAULT_STORE_URL: &str = "memory://";
pub const DEFAULT_KEY_PREFIX: &str = "sis:";
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    /// `redis://` or `rediss://`, passed to the client as written.
    Redis(String),
    /// `redis+cluster://h1:p1,h2:p2` (or `rediss+cluster://`): one URL per node.
    Cluster(Vec<String>),
    /// `redis+sentinel://h:p[,h:p]/master`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        tls: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub url: StoreUrl,
    pub key_prefix: String,
    pub timeout: Duration,
    /// PEM bundle of the CA that signed the Redis servers' certificates, for
    /// `rediss://` with a private CA; the system roots otherwise.
    pub tls_ca: Option<PathBuf>,
}

impl Validator {
    pub(super) fn store(&mut self, raw: RawStore) -> StoreConfig {
        let store = StoreConfig {
            // The URL may carry a password, so it may come from env: or file:.
            url: match Secret::resolve(raw.url.as_deref().unwrap_or(DEFAULT_STORE_URL)) {
                Ok(url) => parse_store_url(url.expose()).unwrap_or_else(|e| {
                    self.problem("store.url", e);
                    StoreUrl::Memory
                }),
                Err(e) => {
                    self.problem("store.url", e);
                    StoreUrl::Memory
                }
            },
            key_prefix: raw
                .key_prefix
                .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned()),
            timeout: self.positive_duration(
                "store.timeout",
                raw.timeout.as_deref(),
                DEFAULT_STORE_TIMEOUT,
            ),
            tls_ca: raw.tls_ca.map(PathBuf::from),
        };
        if let Some(ca) = &store.tls_ca {
            if !ca.is_file() {
                self.problem(
                    "store.tls_ca",
                    format!("no such file {:?}", ca.display().to_string()),
                );
            }
        }
        if store.key_prefix.contains(['{', '}']) {
            self.problem(
                "store.key_prefix",
                "must not contain '{' or '}' (used for hash tags)",
            );
        }
        store
    }
}

pub(super) fn parse_store_url(url: &str) -> Result<StoreUrl, String> {
    if url == "memory://" || url == "memory" {
        return Ok(StoreUrl::Memory);
    }
    let split = |rest: &str| -> Vec<String> {
        rest.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    for (scheme, tls) in [("redis+cluster://", false), ("rediss+cluster://", true)] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (nodes, _) = rest.split_once('/').unwrap_or((rest, ""));
            let nodes = split(nodes);
            if nodes.is_empty() {
                return Err(format!("{url:?}: no cluster nodes"));
            }
            let base = if tls { "rediss" } else { "redis" };
            return Ok(StoreUrl::Cluster(
                nodes.into_iter().map(|n| format!("{base}://{n}")).collect(),
            ));
        }
    }
    for (scheme, tls) in [("redis+sentinel://", false), ("rediss+sentinel://", true)] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let Some((hosts, master)) = rest.split_once('/') else {
                return Err(format!(
                    "{url:?}: expected redis+sentinel://host:port/master-name"
                ));
            };
            let sentinels = split(hosts);
            if sentinels.is_empty() || master.is_empty() {
                return Err(format!(
                    "{url:?}: expected redis+sentinel://host:port/master-name"
                ));
            }
            return Ok(StoreUrl::Sentinel {
                sentinels: sentinels
                    .into_iter()
                    .map(|n| format!("redis://{n}"))
                    .collect(),
                master: master.to_owned(),
                tls,
            });
        }
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(StoreUrl::Redis(url.to_owned()));
    }
    Err(format!(
        "{url:?}: expected memory://, redis://, rediss://, redis+cluster:// or redis+sentinel://"
    ))
}
