//! Connections to Redis: one node (plain or TLS), a cluster, or the master
//! that Sentinel names; made lazily and remade after a failure.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Client, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisConnectionInfo,
    RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use std::sync::Arc;

use super::scripts::Scripts;
use super::{Inner, RedisStore};
use crate::config::StoreConfig;
use crate::session::store::StoreError;

pub(super) enum Backend {
    /// Reconnects by itself; lazy, so it exists before Redis answers.
    Single(Box<Single>),
    /// The cluster connection is made on first use, and again after a failed
    /// attempt; once made it follows the topology by itself.
    Cluster {
        client: Box<ClusterClient>,
        conn: tokio::sync::OnceCell<ClusterConnection>,
    },
    /// The master is asked of the sentinels on first use, and again after
    /// an error that suggests it moved (connection lost, timeout, READONLY).
    Sentinel(Box<Sentinel>),
}

impl Backend {
    /// Its name, for `Debug`.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Backend::Single(_) => "single",
            Backend::Cluster { .. } => "cluster",
            Backend::Sentinel(_) => "sentinel",
        }
    }
}

/// One Redis node. Each single-threaded runtime (the gateway's worker
/// threads) gets a connection of its own, made on that runtime: its reads and
/// writes then happen on the thread that handles the request, with no
/// cross-thread wakeup per command. Other runtimes share `shared`.
pub(super) struct Single {
    client: Client,
    timeout: Duration,
    shared: ConnectionManager,
    per_runtime: std::sync::Mutex<Vec<(tokio::runtime::Id, ConnectionManager)>>,
}

/// Past this many runtimes (tests make one per test), new ones use the
/// shared connection.
const MAX_RUNTIME_CONNECTIONS: usize = 16;

impl Single {
    fn manager(&self) -> RedisResult<ConnectionManager> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Ok(self.shared.clone());
        };
        if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return Ok(self.shared.clone());
        }
        let id = rt.id();
        let mut local = lock(&self.per_runtime);
        if let Some((_, m)) = local.iter().find(|(i, _)| *i == id) {
            return Ok(m.clone());
        }
        if local.len() >= MAX_RUNTIME_CONNECTIONS {
            return Ok(self.shared.clone());
        }
        let m = lazy_manager(self.client.clone(), self.timeout)?;
        local.push((id, m.clone()));
        Ok(m)
    }
}

/// The sentinels of one master, and the master they last named.
pub(super) struct Sentinel {
    sentinels: Vec<Client>,
    name: String,
    /// Held by the one caller that asks the sentinels.
    lookup: tokio::sync::Mutex<()>,
    master: std::sync::Mutex<Option<ConnectionManager>>,
}

impl Sentinel {
    /// Asks the sentinels in turn for the master's address, as the Sentinel
    /// client protocol has it: `SENTINEL GET-MASTER-ADDR-BY-NAME`, then `ROLE`
    /// on the named node, which must answer that it is a master. That address
    /// is the promoted replica's as soon as a failover promotes it, while
    /// `SENTINEL MASTERS` keeps naming the old master until the failover has
    /// reconfigured every replica.
    async fn find_master(&self) -> RedisResult<Client> {
        let mut last = None;
        for sentinel in &self.sentinels {
            match self.master_named_by(sentinel).await {
                Ok(client) => return Ok(client),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one sentinel"))
    }

    async fn master_named_by(&self, sentinel: &Client) -> RedisResult<Client> {
        let mut conn = sentinel.get_multiplexed_async_connection().await?;
        let addr: Option<(String, u16)> = ::redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.name)
            .query_async(&mut conn)
            .await?;
        let not_master = || {
            RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "no master of that name found through the sentinels",
            ))
        };
        let (host, port) = addr.ok_or_else(not_master)?;
        let info = (host, port).into_connection_info()?;
        let settings = RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))?;
        let mut node = client.get_multiplexed_async_connection().await?;
        let role: Vec<Value> = ::redis::cmd("ROLE").query_async(&mut node).await?;
        let is_master = match role.first() {
            Some(Value::BulkString(b)) => b == b"master",
            Some(Value::SimpleString(s)) => s == "master",
            _ => false,
        };
        if is_master {
            Ok(client)
        } else {
            Err(not_master())
        }
    }
}

/// One connection of either kind, cloned per operation.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// RESP3 lets the client notice a dropped connection and reconnect before
/// the next request instead of failing it. A `protocol=` in the URL wins.
fn protocol_for(url: &str) -> Option<ProtocolVersion> {
    (!url.contains("protocol=")).then_some(ProtocolVersion::RESP3)
}

/// The private CA of `store.tls_ca`, for `rediss://`.
fn tls_certificates(cfg: &StoreConfig) -> Result<Option<redis::TlsCertificates>, StoreError> {
    let Some(path) = &cfg.tls_ca else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| {
        StoreError::Unavailable(format!("cannot read store.tls_ca {}: {e}", path.display()))
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

impl RedisStore {
    /// A store on one Redis node (`redis://` or `rediss://`).
    pub fn single(url: &str, cfg: &StoreConfig) -> Result<RedisStore, StoreError> {
        let mut info = url.into_connection_info().map_err(config_error)?;
        if let Some(p) = protocol_for(url) {
            let settings = info.redis_settings().clone().set_protocol(p);
            info = info.set_redis_settings(settings);
        }
        let client = match tls_certificates(cfg)? {
            Some(certs) => Client::build_with_tls(info, certs),
            None => Client::open(info),
        }
        .map_err(config_error)?;
        let shared = lazy_manager(client.clone(), cfg.timeout).map_err(config_error)?;
        let single = Single {
            client,
            timeout: cfg.timeout,
            shared,
            per_runtime: std::sync::Mutex::new(Vec::new()),
        };
        Ok(Self::with_backend(Backend::Single(Box::new(single)), cfg))
    }

    /// A store on the master that the sentinels name `master`; `sentinels`
    /// are `redis://host:port` URLs of Sentinel nodes.
    pub fn sentinel(
        sentinels: &[String],
        master: &str,
        cfg: &StoreConfig,
    ) -> Result<RedisStore, StoreError> {
        let sentinels = sentinels
            .iter()
            .map(|url| Client::open(url.as_str()))
            .collect::<RedisResult<Vec<Client>>>()
            .map_err(config_error)?;
        if sentinels.is_empty() {
            return Err(StoreError::Unavailable(
                "invalid redis configuration: no sentinels".into(),
            ));
        }
        Ok(Self::with_backend(
            Backend::Sentinel(Box::new(Sentinel {
                sentinels,
                name: master.to_owned(),
                lookup: tokio::sync::Mutex::new(()),
                master: std::sync::Mutex::new(None),
            })),
            cfg,
        ))
    }

    /// A store on a Redis cluster; `nodes` are seed URLs.
    pub fn cluster(nodes: &[String], cfg: &StoreConfig) -> Result<RedisStore, StoreError> {
        let mut builder = ClusterClient::builder(nodes.to_vec())
            .connection_timeout(cfg.timeout)
            .response_timeout(cfg.timeout)
            .retries(2);
        if let Some(p) = nodes.first().and_then(|n| protocol_for(n)) {
            builder = builder.use_protocol(p);
        }
        if let Some(certs) = tls_certificates(cfg)? {
            builder = builder.certs(certs);
        }
        let client = builder.build().map_err(config_error)?;
        Ok(Self::with_backend(
            Backend::Cluster {
                client: Box::new(client),
                conn: tokio::sync::OnceCell::new(),
            },
            cfg,
        ))
    }

    fn with_backend(backend: Backend, cfg: &StoreConfig) -> RedisStore {
        RedisStore {
            inner: Arc::new(Inner {
                backend,
                prefix: cfg.key_prefix.clone(),
                timeout: cfg.timeout,
                scripts: Scripts::new(),
            }),
        }
    }

    pub(super) async fn conn(&self) -> RedisResult<Conn> {
        match &self.inner.backend {
            Backend::Single(s) => s.manager().map(Conn::Single),
            Backend::Cluster { client, conn } => conn
                .get_or_try_init(|| client.get_async_connection())
                .await
                .map(|c| Conn::Cluster(c.clone())),
            Backend::Sentinel(sentinel) => {
                if let Some(m) = lock(&sentinel.master).clone() {
                    return Ok(Conn::Single(m));
                }
                // One lookup at a time; the others then find its result.
                let _lookup = sentinel.lookup.lock().await;
                if let Some(m) = lock(&sentinel.master).clone() {
                    return Ok(Conn::Single(m));
                }
                let client = sentinel.find_master().await?;
                let m = lazy_manager(client, self.inner.timeout)?;
                *lock(&sentinel.master) = Some(m.clone());
                Ok(Conn::Single(m))
            }
        }
    }

    /// After an error that may mean the master moved (or none at all: an
    /// outer timeout), forget it so the next operation asks the sentinels.
    /// Returns whether it did.
    pub(super) fn forget_master(&self, e: Option<&RedisError>) -> bool {
        let Backend::Sentinel(sentinel) = &self.inner.backend else {
            return false;
        };
        let master = &sentinel.master;
        let moved = e.is_none_or(|e| {
            e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || matches!(
                    e.kind(),
                    ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
                )
        });
        if moved {
            lock(master).take();
        }
        moved
    }
}

/// The error of a connection that is dead (see [`RedisStore::run`]): any
/// I/O failure, refusals, resets, closed connections and failed connection
/// attempts included.
pub(super) fn dead_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// A connection manager that connects on first use. No retry loop inside
/// it: an operation while Redis is down fails at once and the next one tries
/// a fresh connection, instead of every caller waiting out a backoff.
fn lazy_manager(client: Client, timeout: Duration) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, config)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn config_error(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("invalid redis configuration: {e}"))
}
