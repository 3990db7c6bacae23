//! Session storage and the rotation rules (README, How rotation works).
//!
//! The store never sees a refresh token: only SHA-256 hex hashes of tokens and
//! an opaque sealed blob holding the successor token, which only the holder of
//! the presented token can open. Every time is passed in by the caller
//! (`now_ms`, wall-clock milliseconds), so tests drive expiry with an injected
//! clock; nothing here reads the system clock.
//!
//! Rotation rules, applied atomically and identically by both backends:
//!
//! - missing session → [`RotateOutcome::NoSession`];
//! - `now >= refresh_exp` or `now >= created_at + max_age` → the session is
//!   deleted, [`RotateOutcome::NoSession`];
//! - presented hash is the current one → it becomes `prev` (replayable until
//!   `now + grace`, with `sealed_successor` kept for the replays), `new_hash`
//!   becomes current, `refresh_exp = min(now + refresh_ttl, created_at + max_age)`
//!   → [`RotateOutcome::Rotated`];
//! - the presented token's sealed parent hash is the current one: the store
//!   lost the rotation that minted the presented token (an asynchronous replica
//!   promoted, a backup restored); it rotates as if that step had landed, the
//!   presented hash becoming `prev` exactly as above →
//!   [`RotateOutcome::RolledForward`];
//! - presented hash is `prev` and `new_hash` is already current: this very
//!   request was applied before and is being sent again after its answer was
//!   lost → [`RotateOutcome::Rotated`] again, nothing changes;
//! - presented hash is `prev`, `grace > 0` and `now < prev_until` →
//!   [`RotateOutcome::Replay`] with the blob stored by the first rotation
//!   (nothing changes);
//! - anything else → the session is deleted, [`RotateOutcome::Theft`].
//!
//! Adoption ([`SessionStore::adopt`]) writes a session as `create` does
//! and records the adoption under the session's handle for the window; while
//! the record lasts, adopting again writes nothing and answers the session
//! and the sealed first token of the first adoption.
//!
//! Revoking with a token ([`SessionStore::revoke_token`]) classifies it the
//! same way and deletes the session whatever the answer: current, the lost
//! successor of current, or `prev` inside its replay window →
//! [`RevokeOutcome::Revoked`]; any other token of a live session →
//! [`RevokeOutcome::Theft`].
//!
//! Backends: [`MemoryStore`] (one process, tests and development) and
//! [`RedisStore`] (single node, cluster or Sentinel), both behind [`Store`].

mod memory;
mod redis;

use std::future::Future;

pub use self::memory::{MemorySnapshot, MemoryStore};
pub use self::redis::RedisStore;

use crate::config::{StoreConfig, StoreUrl};

/// What the store knows about a session, apart from token hashes.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub handle: String,
    pub user_uuid: String,
    pub client_id: String,
    /// JSON text, opaque to the store.
    pub user_attributes: String,
    pub created_at_ms: u64,
    /// End of the sliding refresh window; moved forward by each rotation,
    /// never past `created_at_ms + max_age_ms`.
    pub refresh_exp_ms: u64,
}

impl SessionRecord {
    /// Whether the session is still usable at `now_ms`.
    pub fn is_live(&self, now_ms: u64, max_age_ms: u64) -> bool {
        now_ms < self.refresh_exp_ms && now_ms < self.created_at_ms.saturating_add(max_age_ms)
    }
}

/// A session to write; `record.refresh_exp_ms` is its first refresh expiry.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub record: SessionRecord,
    /// SHA-256 hex of the first refresh token.
    pub token_hash: String,
    /// Absolute lifetime; bounds the per-user index TTL.
    pub max_age_ms: u64,
    pub now_ms: u64,
}

/// A session opened by adopting a refresh token of another Sign-in Service
/// (README, Putting sis-gateway in front of an existing Sign-in Service). Its
/// handle is derived from that token, so every instance that adopts the token
/// names the same session; the adoption is recorded beside the session (same
/// hash tag) for the replay window.
#[derive(Clone, Debug)]
pub struct NewAdoption {
    pub session: NewSession,
    /// The session's first refresh token, sealed under a key derived from
    /// the adopted token: only its holder can open it.
    pub sealed_token: Vec<u8>,
    /// How long the adoption is recorded (the replay window); 0 records none.
    pub window_ms: u64,
}

#[derive(Debug, PartialEq)]
pub enum AdoptOutcome {
    /// No adoption of the token is recorded: the session was written
    /// (replacing any under its handle) and the adoption recorded.
    Created,
    /// The token was adopted within the window: nothing was written; the
    /// session and the first token that adoption sealed.
    Adopted {
        session: SessionRecord,
        sealed_token: Vec<u8>,
    },
    /// The token was adopted within the window, but that session is gone
    /// (revoked or expired since).
    Gone,
}

/// One refresh: the presented token's hash and, should it be current, what
/// replaces it.
#[derive(Clone, Debug)]
pub struct RotateRequest {
    pub handle: String,
    pub presented_hash: String,
    /// The parent hash sealed in the presented token, when it has one.
    pub parent_hash: Option<String>,
    pub new_hash: String,
    /// The successor token sealed under a key derived from the presented one;
    /// handed back unchanged to replays of the presented token.
    pub sealed_successor: Vec<u8>,
    pub now_ms: u64,
    /// Replay window of the rotated-away token; 0 disables replays.
    pub grace_ms: u64,
    pub refresh_ttl_ms: u64,
    pub max_age_ms: u64,
}

/// What a rotation reports about its session: the part of the record that
/// the caller does not already know. Handle, user and client are sealed into
/// the presented token and never change for a session; see
/// [`RotatedSession::into_record`].
#[derive(Clone, Debug, PartialEq)]
pub struct RotatedSession {
    /// JSON text, opaque to the store.
    pub user_attributes: String,
    pub created_at_ms: u64,
    /// The refresh expiry after the rotation.
    pub refresh_exp_ms: u64,
}

impl RotatedSession {
    /// The whole record, with the parts the caller knows.
    pub fn into_record(self, handle: &str, user_uuid: &str, client_id: &str) -> SessionRecord {
        SessionRecord {
            handle: handle.to_owned(),
            user_uuid: user_uuid.to_owned(),
            client_id: client_id.to_owned(),
            user_attributes: self.user_attributes,
            created_at_ms: self.created_at_ms,
            refresh_exp_ms: self.refresh_exp_ms,
        }
    }
}

impl From<&SessionRecord> for RotatedSession {
    fn from(r: &SessionRecord) -> Self {
        RotatedSession {
            user_attributes: r.user_attributes.clone(),
            created_at_ms: r.created_at_ms,
            refresh_exp_ms: r.refresh_exp_ms,
        }
    }
}

#[derive(Debug)]
pub enum RotateOutcome {
    /// The presented hash was current; `new_hash` is now current and the
    /// session carries the new `refresh_exp_ms`.
    Rotated(RotatedSession),
    /// The presented token's parent was current: the rotation that minted it
    /// had been lost by the store and is now applied, together with this one.
    /// The caller proceeds as for [`RotateOutcome::Rotated`].
    RolledForward(RotatedSession),
    /// The presented hash was the previous one, inside its replay window, and
    /// its successor is still current: the blob stored at the first rotation.
    Replay {
        session: RotatedSession,
        sealed_successor: Vec<u8>,
    },
    /// The session existed but the presented hash is neither current nor a
    /// valid replay: the session has been deleted.
    Theft,
    /// Missing, past its refresh expiry or past its absolute lifetime.
    NoSession,
}

/// A revoke with a refresh token: which token it was.
#[derive(Clone, Debug)]
pub struct RevokeRequest {
    pub handle: String,
    pub presented_hash: String,
    /// The parent hash sealed in the presented token, when it has one.
    pub parent_hash: Option<String>,
    pub now_ms: u64,
    /// Replay window of the rotated-away token; 0 disables replays.
    pub grace_ms: u64,
    pub max_age_ms: u64,
}

/// What a revoke with a token found. The session is deleted in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The token was current (or the lost successor of current, or inside
    /// its replay window).
    Revoked,
    /// The token was one the session had rotated away.
    Theft,
    /// Missing, past its refresh expiry or past its absolute lifetime.
    NoSession,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store timed out")]
    Timeout,
    #[error("session store returned malformed data: {0}")]
    Corrupt(String),
}

/// Session storage. Every operation either applies completely or not at all.
pub trait SessionStore: Send + Sync + 'static {
    /// Writes a new session (replacing any under the same handle) and adds it
    /// to its user's index.
    fn create(&self, s: NewSession) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Opens a session by adoption unless the same token was adopted within
    /// the window, in one atomic step: parallel adoptions of one token, on
    /// any number of instances, give one session.
    fn adopt(
        &self,
        a: NewAdoption,
    ) -> impl Future<Output = Result<AdoptOutcome, StoreError>> + Send;

    /// Applies the rotation rules (module docs) in one atomic step.
    fn rotate(
        &self,
        r: RotateRequest,
    ) -> impl Future<Output = Result<RotateOutcome, StoreError>> + Send;

    /// The session, unless missing, expired or past its absolute lifetime.
    fn get(
        &self,
        handle: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send;

    /// Deletes a session; `true` when there was one.
    fn revoke(&self, handle: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes a session and says, in the same atomic step, whether the
    /// presented token was still good (module docs).
    fn revoke_token(
        &self,
        r: RevokeRequest,
    ) -> impl Future<Output = Result<RevokeOutcome, StoreError>> + Send;

    /// The live sessions of a user, oldest first.
    fn list_user(
        &self,
        user_uuid: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> impl Future<Output = Result<Vec<SessionRecord>, StoreError>> + Send;

    /// Deletes every session of a user; returns how many were deleted.
    fn revoke_user(
        &self,
        user_uuid: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Whether the store answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The configured backend. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// Builds the backend named by `store.url`. Never waits for Redis: the
    /// connection is made on first use and remade after failures, so the
    /// gateway starts (not ready) while Redis is down.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        match &cfg.url {
            StoreUrl::Memory => Ok(Store::Memory(MemoryStore::new())),
            StoreUrl::Redis(url) => Ok(Store::Redis(RedisStore::single(url, cfg)?)),
            StoreUrl::Cluster(nodes) => Ok(Store::Redis(RedisStore::cluster(nodes, cfg)?)),
            StoreUrl::Sentinel {
                sentinels,
                master,
                tls: false,
            } => Ok(Store::Redis(RedisStore::sentinel(sentinels, master, cfg)?)),
            StoreUrl::Sentinel { tls: true, .. } => Err(StoreError::Unavailable(
                "rediss+sentinel:// (TLS) is not supported by this build".into(),
            )),
        }
    }

    /// Short backend name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Memory($s) => $e.await,
            Store::Redis($s) => $e.await,
        }
    };
}

impl SessionStore for Store {
    async fn create(&self, s: NewSession) -> Result<(), StoreError> {
        delegate!(self, st => st.create(s))
    }

    async fn adopt(&self, a: NewAdoption) -> Result<AdoptOutcome, StoreError> {
        delegate!(self, st => st.adopt(a))
    }

    async fn rotate(&self, r: RotateRequest) -> Result<RotateOutcome, StoreError> {
        delegate!(self, st => st.rotate(r))
    }

    async fn get(
        &self,
        handle: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        delegate!(self, st => st.get(handle, now_ms, max_age_ms))
    }

    async fn revoke(&self, handle: &str) -> Result<bool, StoreError> {
        delegate!(self, st => st.revoke(handle))
    }

    async fn revoke_token(&self, r: RevokeRequest) -> Result<RevokeOutcome, StoreError> {
        delegate!(self, st => st.revoke_token(r))
    }

    async fn list_user(
        &self,
        user_uuid: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        delegate!(self, st => st.list_user(user_uuid, now_ms, max_age_ms))
    }

    async fn revoke_user(&self, user_uuid: &str) -> Result<usize, StoreError> {
        delegate!(self, st => st.revoke_user(user_uuid))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, st => st.ping())
    }
}
