//! Sessions as the sign-in endpoints and inline refresh see them: tokens in,
//! tokens out. Opens and checks the presented refresh token before the store
//! is touched, asks the store to rotate in one atomic step, and signs the
//! successor's access token. Concurrent refreshes of one token in this process
//! share a single store call.
//!
//! This file holds the service type, the bundle it hands out and the signing
//! of access tokens; `create` opens sessions, `refresh` rotates them, `recent`
//! remembers recent inline refreshes, `revoke` ends them.

mod create;
mod error;
mod recent;
mod refresh;
mod revoke;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{ClientConfig, Config};
use crate::metrics::Metrics;
use crate::session::store::{SessionRecord, SessionStore, Store, StoreError};
use crate::time::SharedClock;
use crate::tokens::jwt::{AccessClaims, AccessTokens, VerifyError};
use crate::tokens::seal::{RefreshPayload, Sealer};
use crate::tokens::token_hash;

pub use error::{CreateError, RefreshError};
use recent::Recent;
use refresh::Flight;

/// The tokens of one session after a create or a rotation.
#[derive(Clone)]
pub struct Bundle {
    pub session: SessionRecord,
    pub client: Arc<ClientConfig>,
    pub access_token: String,
    pub access_exp_ms: u64,
    pub refresh_token: String,
    pub anti_csrf_token: String,
    /// The claims signed into `access_token`.
    pub claims: Arc<AccessClaims>,
    /// The presented token was replayed inside the grace window.
    pub replayed: bool,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("session_handle", &self.session.handle)
            .field("client_id", &self.client.client_id)
            .field("replayed", &self.replayed)
            .finish_non_exhaustive()
    }
}

/// A refresh token with its [`token_hash`], computed once.
struct HashedToken {
    token: String,
    hash: String,
}

impl HashedToken {
    fn new(token: String) -> HashedToken {
        let hash = token_hash(&token);
        HashedToken { token, hash }
    }
}

/// How the refresh token of a new bundle came about.
enum Origin<'a> {
    /// A new session.
    Created,
    /// The rotation of the token whose hash this is.
    Rotated { presented_hash: &'a str },
    /// A replay, inside the grace window, of the token whose hash this is.
    Replayed { presented_hash: &'a str },
}

/// Random bytes behind an access token's `jti`.
const JTI_LEN: usize = 16;

pub struct Sessions {
    store: Store,
    sealer: Sealer,
    access: AccessTokens,
    clock: SharedClock,
    clients: HashMap<String, Arc<ClientConfig>>,
    issuer: String,
    grace: Duration,
    max_age: Duration,
    in_flight: Mutex<HashMap<String, Flight>>,
    recent: Mutex<Recent>,
    metrics: Arc<Metrics>,
}

impl Sessions {
    pub fn new(
        config: &Config,
        store: Store,
        sealer: Sealer,
        access: AccessTokens,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Sessions {
        Sessions {
            store,
            sealer,
            access,
            clock,
            clients: config
                .clients
                .iter()
                .map(|c| (c.client_id.clone(), Arc::new(c.clone())))
                .collect(),
            issuer: config.tokens.issuer.clone(),
            grace: config.tokens.refresh_grace,
            max_age: config.tokens.session_max_age,
            in_flight: Mutex::new(HashMap::new()),
            recent: Mutex::new(Recent::default()),
            metrics,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    pub fn access_tokens(&self) -> &AccessTokens {
        &self.access
    }

    pub fn client(&self, client_id: &str) -> Option<&Arc<ClientConfig>> {
        self.clients.get(client_id)
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn max_age_ms(&self) -> u64 {
        self.max_age.as_millis() as u64
    }

    fn bundle(
        &self,
        record: SessionRecord,
        client: Arc<ClientConfig>,
        payload: &RefreshPayload,
        refresh: HashedToken,
        origin: Origin<'_>,
        jti: String,
    ) -> Result<Bundle, RefreshError> {
        let (parent_hash, replayed) = match origin {
            Origin::Created => (None, false),
            Origin::Rotated { presented_hash } => (Some(presented_hash), false),
            Origin::Replayed { presented_hash } => (Some(presented_hash), true),
        };
        let HashedToken {
            token: refresh_token,
            hash: refresh_token_hash,
        } = refresh;
        let now = self.clock.now_ms();
        let access_exp_ms = now + client.access_token_ttl.as_millis() as u64;
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: client.audience.clone(),
            client_id: client.client_id.clone(),
            sub: record.user_uuid.clone(),
            jti,
            iat: now / 1000,
            exp: access_exp_ms / 1000,
            session_handle: record.handle.clone(),
            refresh_token_hash,
            parent_refresh_token_hash: parent_hash.map(str::to_owned),
            anti_csrf_token: payload.anti_csrf_token.clone(),
            last_regeneration_time: now / 1000,
            version: "V0".to_owned(),
            user_attributes: serde_json::from_str(&record.user_attributes)
                .unwrap_or(serde_json::Value::Object(Default::default())),
        };
        let access_token = self.access.sign(&claims).map_err(|e| {
            tracing::error!(error = %e, "signing an access token failed");
            RefreshError::Internal
        })?;
        Ok(Bundle {
            claims: Arc::new(claims),
            anti_csrf_token: payload.anti_csrf_token.clone(),
            session: record,
            client,
            access_token,
            access_exp_ms: (access_exp_ms / 1000) * 1000,
            refresh_token,
            replayed,
        })
    }

    /// Checks an access token against this gateway's keys and clock.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        self.access.verify(token, self.clock.now_secs())
    }

    pub async fn revoke_handle(&self, handle: &str) -> Result<bool, StoreError> {
        self.store.revoke(handle).await
    }

    pub async fn revoke_user(&self, user_uuid: &str) -> Result<usize, StoreError> {
        self.store.revoke_user(user_uuid).await
    }

    pub async fn list_user(&self, user_uuid: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.store
            .list_user(user_uuid, self.clock.now_ms(), self.max_age_ms())
            .await
    }

    pub async fn ready(&self) -> bool {
        self.store.ping().await.is_ok()
    }
}
