//! Sessions in Redis: a single node, a cluster, or a master found through
//! Sentinel.
//!
//! Layout (`P` = `store.key_prefix`):
//! - `P s:{<handle>}`: hash `user client attrs created exp cur prev prev_until
//!   succ`, with a key TTL of `exp - now`. The braces make the handle a hash
//!   tag, so every key of one session shares a cluster slot.
//! - `P u:{<user_uuid>}`: set of the user's handles, its TTL extended on
//!   create to the longest lifetime of its sessions. It may hold handles whose
//!   session is gone; readers skip and remove those.
//! - `P a:{<handle>}`: the first refresh token of a session opened by
//!   adoption, sealed under a key derived from the adopted token, kept for
//!   the replay window (`adopt.lua` writes it with the session, atomically).
//!
//! Rotation is one round trip: `rotate.lua` by EVALSHA (reloaded on
//! NOSCRIPT). Every operation is bounded by `store.timeout`; a connection
//! that is down is remade on the next operation, so `connect` never waits
//! for Redis.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Client, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisConnectionInfo,
    RedisError, RedisFuture, RedisResult, Script, ServerErrorKind, Value,
};
use futures_util::future::join_all;

use super::memory::sort_records;
use super::{
    AdoptOutcome, NewAdoption, NewSession, RevokeOutcome, RevokeRequest, RotateOutcome,
    RotateRequest, RotatedSession, SessionRecord, SessionStore, StoreError,
};
use crate::config::StoreConfig;

const ROTATE_LUA: &str = include_str!("rotate.lua");
const INDEX_ADD_LUA: &str = include_str!("index_add.lua");
const REVOKE_LUA: &str = include_str!("revoke.lua");
const ADOPT_LUA: &str = include_str!("adopt.lua");

/// Record fields, in the order `get` reads them.
const RECORD_FIELDS: [&str; 5] = ["user", "client", "attrs", "created", "exp"];

/// Sessions in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    prefix: String,
    timeout: Duration,
    rotate: Script,
    index_add: Script,
    revoke: Script,
    adopt: Script,
}

enum Backend {
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

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "backend",
                &match self.inner.backend {
                    Backend::Single(_) => "single",
                    Backend::Cluster { .. } => "cluster",
                    Backend::Sentinel(_) => "sentinel",
                },
            )
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// One Redis node. Each single-threaded runtime (the gateway's worker
/// threads) gets a connection of its own, made on that runtime: its reads and
/// writes then happen on the thread that handles the request, with no
/// cross-thread wakeup per command. Other runtimes share `shared`.
struct Single {
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
struct Sentinel {
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
enum Conn {
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
                rotate: Script::new(ROTATE_LUA),
                index_add: Script::new(INDEX_ADD_LUA),
                revoke: Script::new(REVOKE_LUA),
                adopt: Script::new(ADOPT_LUA),
            }),
        }
    }

    /// `{prefix}s:{<handle>}`
    pub fn session_key(&self, handle: &str) -> String {
        format!("{}s:{{{handle}}}", self.inner.prefix)
    }

    /// `{prefix}a:{<handle>}`: the adoption that opened the session, for
    /// its window.
    pub fn adoption_key(&self, handle: &str) -> String {
        format!("{}a:{{{handle}}}", self.inner.prefix)
    }

    /// `{prefix}u:{<user_uuid>}`
    pub fn user_key(&self, user_uuid: &str) -> String {
        format!("{}u:{{{user_uuid}}}", self.inner.prefix)
    }

    async fn conn(&self) -> RedisResult<Conn> {
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
    fn forget_master(&self, e: Option<&RedisError>) -> bool {
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

    /// Runs `op` on a connection within `store.timeout`. When the connection
    /// turns out dead (SPEC §7), `op` is sent once more on a fresh one, so the
    /// first call after Redis comes back from a restart, a pause or a failover
    /// succeeds instead of failing with the old connection's error.
    ///
    /// A dead connection is one that was refused, closed or reset, whose last
    /// connection attempt failed or timed out (the connection manager hands
    /// that failure to the next caller at once, before sending anything and
    /// while it starts a fresh attempt), or, behind Sentinel, a master that
    /// answers READONLY (a demoted node executes no write). Only one re-send:
    /// while Redis is down every call fails fast rather than spinning.
    ///
    /// Not every such error proves the command was never sent: a connection
    /// reset may come after the command went out and ran. Every operation is
    /// therefore safe to send twice. Writes of `create` and deletes are
    /// idempotent (a re-sent revoke of a session that the first send deleted
    /// answers "no session"). A rotation is keyed by its `new_hash`, random
    /// per request: if the first send ran, the session now has `new_hash` as
    /// current and the presented hash as previous, and `rotate.lua` answers
    /// the re-send exactly as it answered the first, changing nothing; if it
    /// did not run, the re-send is the first. The re-sent rotation cannot
    /// mint a second successor nor, by itself, be taken for theft; it meets
    /// theft only if, in the milliseconds between the two sends, another
    /// holder of the presented token replayed it and already rotated the
    /// successor it got, which the client's own retry would meet as well.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempt = async {
            let mut retried = false;
            loop {
                let result = match self.conn().await {
                    Ok(conn) => op(conn).await,
                    Err(e) => Err(e),
                };
                let moved = match &result {
                    Err(e) => self.forget_master(Some(e)),
                    Ok(_) => false,
                };
                match result {
                    Err(e) if !retried && (moved || dead_connection(&e)) => {
                        tracing::debug!(error = %e, "store connection dead; sending again");
                        retried = true;
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(self.inner.timeout, attempt).await {
            Ok(result) => result.map_err(store_error),
            Err(_) => {
                self.forget_master(None);
                Err(StoreError::Timeout)
            }
        }
    }

    /// Removes a handle from a user's index. The index tolerates stale
    /// entries, so a failure here is only logged.
    async fn unindex(&self, user_uuid: &str, handle: &str) {
        let key = self.user_key(user_uuid);
        let res = self
            .run(|mut c| {
                let key = &key;
                async move {
                    ::redis::cmd("SREM")
                        .arg(key)
                        .arg(handle)
                        .query_async::<i64>(&mut c)
                        .await
                }
            })
            .await;
        if let Err(e) = res {
            tracing::debug!(error = %e, "could not remove a handle from its user index");
        }
    }
}

/// The error of a connection that is dead (see [`RedisStore::run`]): any
/// I/O failure, refusals, resets, closed connections and failed connection
/// attempts included.
fn dead_connection(e: &RedisError) -> bool {
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

/// Runs an `EVALSHA` of `script`, loading the script first when the node
/// does not have it yet (or flushed it).
async fn eval_sha(mut c: Conn, call: &Cmd, script: &Script) -> RedisResult<Vec<Vec<u8>>> {
    match call.query_async(&mut c).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(&mut c).await?;
            call.query_async(&mut c).await
        }
        other => other,
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn config_error(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("invalid redis configuration: {e}"))
}

fn store_error(e: RedisError) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout;
    }
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Corrupt(e.to_string()),
        _ if e.code() == Some("WRONGTYPE") => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn text(bytes: Vec<u8>, field: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| corrupt(format_args!("{field} is not UTF-8")))
}

fn number(s: &str, field: &str) -> Result<u64, StoreError> {
    s.parse()
        .map_err(|_| corrupt(format_args!("{field} is not a number")))
}

/// A record from `user client attrs created exp`, as stored.
fn record(handle: &str, fields: Vec<Vec<u8>>) -> Result<SessionRecord, StoreError> {
    let [user, client, attrs, created, exp]: [Vec<u8>; 5] = fields
        .try_into()
        .map_err(|_| corrupt("wrong number of session fields"))?;
    Ok(SessionRecord {
        handle: handle.to_owned(),
        user_uuid: text(user, "user")?,
        client_id: text(client, "client")?,
        user_attributes: text(attrs, "attrs")?,
        created_at_ms: number(&text(created, "created")?, "created")?,
        refresh_exp_ms: number(&text(exp, "exp")?, "exp")?,
    })
}

/// What `rotate.lua` answers about a rotated session: `attrs created exp`.
fn rotated(fields: impl Iterator<Item = Vec<u8>>) -> Result<RotatedSession, StoreError> {
    let mut fields = fields.fuse();
    let (Some(attrs), Some(created), Some(exp), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(corrupt("wrong number of session fields"));
    };
    Ok(RotatedSession {
        user_attributes: text(attrs, "attrs")?,
        created_at_ms: number(&text(created, "created")?, "created")?,
        refresh_exp_ms: number(&text(exp, "exp")?, "exp")?,
    })
}

/// A record from an HMGET of [`RECORD_FIELDS`]; `None` when the hash is gone.
fn record_from_hmget(
    handle: &str,
    fields: Vec<Option<Vec<u8>>>,
) -> Result<Option<SessionRecord>, StoreError> {
    if fields.iter().all(Option::is_none) {
        return Ok(None);
    }
    let fields: Option<Vec<Vec<u8>>> = fields.into_iter().collect();
    let fields = fields.ok_or_else(|| corrupt("session hash lacks a field"))?;
    record(handle, fields).map(Some)
}

fn hmget_record(key: &str) -> Cmd {
    let mut cmd = ::redis::cmd("HMGET");
    cmd.arg(key).arg(&RECORD_FIELDS[..]);
    cmd
}

impl SessionStore for RedisStore {
    async fn create(&self, s: NewSession) -> Result<(), StoreError> {
        let rec = &s.record;
        let key = self.session_key(&rec.handle);
        let user_key = self.user_key(&rec.user_uuid);
        let ttl_ms = rec.refresh_exp_ms.saturating_sub(s.now_ms).max(1);
        let index_ttl_ms = rec
            .created_at_ms
            .saturating_add(s.max_age_ms)
            .saturating_sub(s.now_ms)
            .max(ttl_ms);
        // Index first: a stale index entry is harmless, an unindexed session
        // would escape revoke_user.
        let mut index = self.inner.index_add.key(&user_key);
        index.arg(&rec.handle).arg(index_ttl_ms);
        let mut write = ::redis::pipe();
        write
            .atomic()
            .del(&key)
            .ignore()
            .hset_multiple(
                &key,
                &[
                    ("user", rec.user_uuid.as_str()),
                    ("client", rec.client_id.as_str()),
                    ("attrs", rec.user_attributes.as_str()),
                    ("cur", s.token_hash.as_str()),
                ],
            )
            .ignore()
            .hset_multiple(
                &key,
                &[("created", rec.created_at_ms), ("exp", rec.refresh_exp_ms)],
            )
            .ignore()
            .pexpire(&key, ttl_ms as i64)
            .ignore();
        self.run(|mut c| {
            let (index, write) = (&index, &write);
            async move {
                index.invoke_async::<i64>(&mut c).await?;
                write.query_async::<()>(&mut c).await
            }
        })
        .await
    }

    async fn adopt(&self, a: NewAdoption) -> Result<AdoptOutcome, StoreError> {
        let s = &a.session;
        let rec = &s.record;
        let ttl_ms = rec.refresh_exp_ms.saturating_sub(s.now_ms).max(1);
        let index_ttl_ms = rec
            .created_at_ms
            .saturating_add(s.max_age_ms)
            .saturating_sub(s.now_ms)
            .max(ttl_ms);
        // Index first, as in `create`.
        let mut index = self.inner.index_add.key(self.user_key(&rec.user_uuid));
        index.arg(&rec.handle).arg(index_ttl_ms);
        let mut call = ::redis::cmd("EVALSHA");
        call.arg(self.inner.adopt.get_hash())
            .arg(2)
            .arg(self.session_key(&rec.handle))
            .arg(self.adoption_key(&rec.handle))
            .arg(&rec.user_uuid)
            .arg(&rec.client_id)
            .arg(&rec.user_attributes)
            .arg(&s.token_hash)
            .arg(rec.created_at_ms)
            .arg(rec.refresh_exp_ms)
            .arg(ttl_ms)
            .arg(&a.sealed_token[..])
            .arg(a.window_ms)
            .arg(s.now_ms)
            .arg(s.max_age_ms);
        let reply: Vec<Vec<u8>> = self
            .run(|mut c| {
                let (index, call) = (&index, &call);
                async move {
                    index.invoke_async::<i64>(&mut c).await?;
                    eval_sha(c, call, &self.inner.adopt).await
                }
            })
            .await?;
        let mut reply = reply.into_iter();
        match reply.next().unwrap_or_default().as_slice() {
            b"created" => Ok(AdoptOutcome::Created),
            b"gone" => Ok(AdoptOutcome::Gone),
            b"adopted" => {
                let sealed_token = reply
                    .next()
                    .ok_or_else(|| corrupt("adoption lacks its token"))?;
                let session = record(&rec.handle, reply.collect())?;
                Ok(AdoptOutcome::Adopted {
                    session,
                    sealed_token,
                })
            }
            other => Err(corrupt(format_args!(
                "unexpected adopt reply {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    async fn rotate(&self, r: RotateRequest) -> Result<RotateOutcome, StoreError> {
        // EVALSHA written directly: the same command `Script::invoke_async`
        // sends, without copying every argument twice on the way, into a
        // buffer sized for all of them.
        let key = self.session_key(&r.handle);
        // The name, the script's hash and the numbers fit in the 128.
        let parent = r.parent_hash.as_deref().unwrap_or("");
        let size = 128
            + key.len()
            + r.presented_hash.len()
            + r.new_hash.len()
            + r.sealed_successor.len()
            + parent.len();
        let mut call = ::redis::Cmd::with_capacity(12, size);
        call.arg("EVALSHA")
            .arg(self.inner.rotate.get_hash())
            .arg(1)
            .arg(key)
            .arg(&r.presented_hash)
            .arg(&r.new_hash)
            .arg(&r.sealed_successor[..])
            .arg(r.now_ms)
            .arg(r.grace_ms)
            .arg(r.refresh_ttl_ms)
            .arg(r.max_age_ms)
            .arg(parent);
        let reply: Vec<Vec<u8>> = self.run(|c| eval_sha(c, &call, &self.inner.rotate)).await?;
        let mut reply = reply.into_iter();
        let tag = reply.next().unwrap_or_default();
        match tag.as_slice() {
            b"missing" => Ok(RotateOutcome::NoSession),
            b"expired" | b"theft" => {
                if let Some(user) = reply.next() {
                    self.unindex(&text(user, "user")?, &r.handle).await;
                }
                Ok(if tag == b"theft" {
                    RotateOutcome::Theft
                } else {
                    RotateOutcome::NoSession
                })
            }
            b"rotated" => Ok(RotateOutcome::Rotated(rotated(reply)?)),
            b"rolled" => Ok(RotateOutcome::RolledForward(rotated(reply)?)),
            b"replay" => {
                let mut rest: Vec<Vec<u8>> = reply.collect();
                let sealed_successor = rest.pop().ok_or_else(|| corrupt("replay lacks succ"))?;
                Ok(RotateOutcome::Replay {
                    session: rotated(rest.into_iter())?,
                    sealed_successor,
                })
            }
            b"corrupt" => Err(corrupt("session hash lacks a field")),
            other => Err(corrupt(format_args!(
                "unexpected rotate reply {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    async fn get(
        &self,
        handle: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let cmd = hmget_record(&self.session_key(handle));
        let fields: Vec<Option<Vec<u8>>> = self
            .run(|mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        Ok(record_from_hmget(handle, fields)?.filter(|r| r.is_live(now_ms, max_age_ms)))
    }

    async fn revoke(&self, handle: &str) -> Result<bool, StoreError> {
        let key = self.session_key(handle);
        let mut pipe = ::redis::pipe();
        pipe.atomic().hget(&key, "user").del(&key);
        let (user, deleted): (Option<String>, i64) = self
            .run(|mut c| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        if let Some(user) = user {
            self.unindex(&user, handle).await;
        }
        Ok(deleted > 0)
    }

    async fn revoke_token(&self, r: RevokeRequest) -> Result<RevokeOutcome, StoreError> {
        let mut call = ::redis::cmd("EVALSHA");
        call.arg(self.inner.revoke.get_hash())
            .arg(1)
            .arg(self.session_key(&r.handle))
            .arg(&r.presented_hash)
            .arg(r.parent_hash.as_deref().unwrap_or(""))
            .arg(r.now_ms)
            .arg(r.grace_ms)
            .arg(r.max_age_ms);
        let reply: Vec<Vec<u8>> = self.run(|c| eval_sha(c, &call, &self.inner.revoke)).await?;
        let mut reply = reply.into_iter();
        let tag = reply.next().unwrap_or_default();
        if let Some(user) = reply.next().filter(|u| !u.is_empty()) {
            self.unindex(&text(user, "user")?, &r.handle).await;
        }
        match tag.as_slice() {
            b"missing" | b"expired" => Ok(RevokeOutcome::NoSession),
            b"revoked" => Ok(RevokeOutcome::Revoked),
            b"theft" => Ok(RevokeOutcome::Theft),
            other => Err(corrupt(format_args!(
                "unexpected revoke reply {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    async fn list_user(
        &self,
        user_uuid: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let user_key = self.user_key(user_uuid);
        let (found, stale) = self
            .run(|c| {
                let user_key = &user_key;
                async move {
                    let handles: Vec<String> = ::redis::cmd("SMEMBERS")
                        .arg(user_key)
                        .query_async(&mut c.clone())
                        .await?;
                    let reads = handles.iter().map(|h| {
                        let mut c = c.clone();
                        let cmd = hmget_record(&self.session_key(h));
                        async move {
                            let fields: Vec<Option<Vec<u8>>> = cmd.query_async(&mut c).await?;
                            Ok::<_, RedisError>((h, fields))
                        }
                    });
                    let mut found = Vec::new();
                    let mut stale = Vec::new();
                    for read in join_all(reads).await {
                        let (h, fields) = read?;
                        match record_from_hmget(h, fields) {
                            Ok(Some(r)) if r.user_uuid == user_uuid => found.push(r),
                            // Gone, or a handle that is not this user's.
                            Ok(_) => stale.push(h.clone()),
                            // Reported below, without failing the listing.
                            Err(e) => {
                                tracing::warn!(error = %e, "skipping a malformed session");
                            }
                        }
                    }
                    Ok((found, stale))
                }
            })
            .await?;
        if !stale.is_empty() {
            let cmd = {
                let mut cmd = ::redis::cmd("SREM");
                cmd.arg(&user_key).arg(&stale);
                cmd
            };
            let res = self
                .run(|mut c| {
                    let cmd = &cmd;
                    async move { cmd.query_async::<i64>(&mut c).await }
                })
                .await;
            if let Err(e) = res {
                tracing::debug!(error = %e, "could not clean a user index");
            }
        }
        let mut live: Vec<SessionRecord> = found
            .into_iter()
            .filter(|r| r.is_live(now_ms, max_age_ms))
            .collect();
        sort_records(&mut live);
        Ok(live)
    }

    async fn revoke_user(&self, user_uuid: &str) -> Result<usize, StoreError> {
        let user_key = self.user_key(user_uuid);
        self.run(|c| {
            let user_key = &user_key;
            async move {
                let handles: Vec<String> = ::redis::cmd("SMEMBERS")
                    .arg(user_key)
                    .query_async(&mut c.clone())
                    .await?;
                let deletes = handles.iter().map(|h| {
                    let mut c = c.clone();
                    let key = self.session_key(h);
                    async move {
                        ::redis::cmd("DEL")
                            .arg(key)
                            .query_async::<i64>(&mut c)
                            .await
                    }
                });
                let mut deleted = 0;
                for d in join_all(deletes).await {
                    deleted += d? as usize;
                }
                ::redis::cmd("DEL")
                    .arg(user_key)
                    .query_async::<i64>(&mut c.clone())
                    .await?;
                Ok(deleted)
            }
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move { ::redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(drop)
    }
}
