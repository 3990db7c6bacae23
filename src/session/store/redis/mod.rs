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

mod connect;
mod records;
mod scripts;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{ErrorKind, RedisError, RedisResult};
use futures_util::future::join_all;

use super::memory::sort_records;
use super::{
    AdoptOutcome, NewAdoption, NewSession, RevokeOutcome, RevokeRequest, RotateOutcome,
    RotateRequest, SessionRecord, SessionStore, StoreError,
};
use connect::{dead_connection, Backend, Conn};
use records::{corrupt, hmget_record, record, record_from_hmget, rotated, text};
use scripts::{eval_sha, Scripts};

/// Sessions in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    prefix: String,
    timeout: Duration,
    scripts: Scripts,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.inner.backend.kind())
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl RedisStore {
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

    /// Runs `op` on a connection within `store.timeout`. When the connection
    /// turns out dead (README, How rotation works), `op` is sent once more on a
    /// fresh one, so the first call after Redis comes back from a restart, a
    /// pause or a failover succeeds instead of failing with the old
    /// connection's error.
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
        let mut index = self.inner.scripts.index_add.key(&user_key);
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
        let mut index = self
            .inner
            .scripts
            .index_add
            .key(self.user_key(&rec.user_uuid));
        index.arg(&rec.handle).arg(index_ttl_ms);
        let mut call = ::redis::cmd("EVALSHA");
        call.arg(self.inner.scripts.adopt.get_hash())
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
                    eval_sha(c, call, &self.inner.scripts.adopt).await
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
            .arg(self.inner.scripts.rotate.get_hash())
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
        let reply: Vec<Vec<u8>> = self
            .run(|c| eval_sha(c, &call, &self.inner.scripts.rotate))
            .await?;
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
        call.arg(self.inner.scripts.revoke.get_hash())
            .arg(1)
            .arg(self.session_key(&r.handle))
            .arg(&r.presented_hash)
            .arg(r.parent_hash.as_deref().unwrap_or(""))
            .arg(r.now_ms)
            .arg(r.grace_ms)
            .arg(r.max_age_ms);
        let reply: Vec<Vec<u8>> = self
            .run(|c| eval_sha(c, &call, &self.inner.scripts.revoke))
            .await?;
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
