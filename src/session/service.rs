//! Sessions as the sign-in endpoints and inline refresh see them: tokens in,
//! tokens out. Opens and checks the presented refresh token before the store
//! is touched, asks the store to rotate in one atomic step, and signs the
//! successor's access token. Concurrent refreshes of one token in this process
//! share a single store call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use crate::config::{ClientConfig, Config};
use crate::metrics::Metrics;
use crate::session::store::{
    AdoptOutcome, NewAdoption, NewSession, RevokeOutcome, RevokeRequest, RotateOutcome,
    RotateRequest, SessionRecord, SessionStore, Store, StoreError,
};
use crate::time::SharedClock;
use crate::tokens::jwt::{AccessClaims, AccessTokens, VerifyError};
use crate::tokens::seal::{
    open_successor, seal_successor, seal_successor_with_nonce, OpenError, RefreshPayload, Sealer,
    PAYLOAD_RANDOM_LEN, SEAL_NONCE_LEN,
};
use crate::tokens::{fill_random, hex, random_hex, token_hash};

/// Why a refresh (or revoke) failed; each maps to one row of SPEC §1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error("Refresh token is not defined")]
    NotDefined,
    #[error("Refresh token cannot be decrypted")]
    Undecryptable,
    #[error("Refresh token version is invalid")]
    Version,
    #[error("Refresh nonce is invalid")]
    Nonce,
    #[error("No valid Session found")]
    NoSession,
    #[error("Anti CSRF token is not valid")]
    AntiCsrf,
    #[error("Token theft detected")]
    Theft,
    #[error("Session store unavailable")]
    StoreUnavailable,
    #[error("Internal error")]
    Internal,
}

impl RefreshError {
    /// The session is gone for good: cookie clients get their cookies expired.
    pub fn session_gone(&self) -> bool {
        matches!(self, RefreshError::NoSession | RefreshError::Theft)
    }

    /// A metrics label.
    pub fn outcome(&self) -> &'static str {
        match self {
            RefreshError::NotDefined => "not_defined",
            RefreshError::Undecryptable => "undecryptable",
            RefreshError::Version => "version",
            RefreshError::Nonce => "nonce",
            RefreshError::NoSession => "expired",
            RefreshError::AntiCsrf => "anti_csrf",
            RefreshError::Theft => "theft",
            RefreshError::StoreUnavailable => "store_error",
            RefreshError::Internal => "internal",
        }
    }
}

impl RefreshError {
    fn from_store(e: StoreError, metrics: &Metrics) -> Self {
        metrics.rotation("store_error");
        e.into()
    }
}

impl From<StoreError> for RefreshError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "session store call failed");
        RefreshError::StoreUnavailable
    }
}

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

/// Every random value one rotation uses, drawn from the system generator in
/// one call: the successor's anti-CSRF token and nonce, the AES-GCM nonces
/// of the successor token and of its sealed copy for the replay window, and
/// the access token's `jti`. Each value has bytes of its own.
struct RotationRandom([u8; RotationRandom::LEN]);

impl RotationRandom {
    const LEN: usize = PAYLOAD_RANDOM_LEN + 2 * SEAL_NONCE_LEN + JTI_LEN;

    fn draw() -> RotationRandom {
        let mut bytes = [0u8; Self::LEN];
        fill_random(&mut bytes);
        RotationRandom(bytes)
    }

    fn part<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.0[at..at + N]);
        out
    }

    fn payload(&self) -> [u8; PAYLOAD_RANDOM_LEN] {
        self.part(0)
    }

    fn seal_nonce(&self) -> [u8; SEAL_NONCE_LEN] {
        self.part(PAYLOAD_RANDOM_LEN)
    }

    fn successor_nonce(&self) -> [u8; SEAL_NONCE_LEN] {
        self.part(PAYLOAD_RANDOM_LEN + SEAL_NONCE_LEN)
    }

    fn jti(&self) -> String {
        hex(&self.0[Self::LEN - JTI_LEN..])
    }
}

type Flight = Arc<OnceCell<Result<Bundle, RefreshError>>>;

/// Results of recent inline refreshes, reused for the replay window so a burst
/// of requests carrying one refresh cookie costs one store call.
#[derive(Default)]
struct Recent {
    /// Presented token hash → its successor bundle and the end of its window.
    by_presented: HashMap<String, (Bundle, u64)>,
    /// Successor token hash → the presented token hash it came from; when the
    /// successor is itself rotated, the older entry must stop answering.
    by_successor: HashMap<String, String>,
}

/// Past this many entries, expired ones are swept on insert.
const RECENT_SWEEP_AT: usize = 50_000;

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

    /// Opens a session for a user who has just authenticated.
    pub async fn create(
        &self,
        user_uuid: &str,
        client_id: &str,
        user_attributes: serde_json::Value,
    ) -> Result<Bundle, CreateError> {
        let client = self
            .clients
            .get(client_id)
            .cloned()
            .ok_or(CreateError::UnknownClient)?;
        let now = self.clock.now_ms();
        let handle = uuid::Uuid::new_v4().to_string();
        let payload =
            RefreshPayload::new(handle.clone(), user_uuid.to_owned(), client_id.to_owned());
        let refresh_token = self.sealer.seal(&payload);
        let refresh_exp_ms =
            (now + client.refresh_token_ttl.as_millis() as u64).min(now + self.max_age_ms());
        let record = SessionRecord {
            handle,
            user_uuid: user_uuid.to_owned(),
            client_id: client_id.to_owned(),
            user_attributes: user_attributes.to_string(),
            created_at_ms: now,
            refresh_exp_ms,
        };
        self.store
            .create(NewSession {
                record: record.clone(),
                token_hash: token_hash(&refresh_token),
                max_age_ms: self.max_age_ms(),
                now_ms: now,
            })
            .await
            .map_err(CreateError::Store)?;
        self.bundle(
            record,
            client,
            &payload,
            HashedToken::new(refresh_token),
            Origin::Created,
            random_hex(JTI_LEN),
        )
        .map_err(|_| CreateError::Internal)
    }

    /// Opens a session for the user of `adopted`, a refresh token of another
    /// Sign-in Service that it has just refreshed for us (SPEC §8). Every
    /// adoption of one token within the replay window, on any instance,
    /// gives the same session and the same first refresh token: the session
    /// handle is derived from the token, and the store records the first
    /// adoption (its token sealed under a key derived from `adopted`, so the
    /// store holds nothing replayable) in the same atomic step as the
    /// session.
    pub async fn adopt(
        &self,
        adopted: &str,
        user_uuid: &str,
        client_id: &str,
        user_attributes: serde_json::Value,
    ) -> Result<Bundle, CreateError> {
        let client = self
            .clients
            .get(client_id)
            .cloned()
            .ok_or(CreateError::UnknownClient)?;
        let now = self.clock.now_ms();
        let handle = adoption_handle(adopted);
        let payload =
            RefreshPayload::new(handle.clone(), user_uuid.to_owned(), client_id.to_owned());
        let refresh_token = self.sealer.seal(&payload);
        let refresh_exp_ms =
            (now + client.refresh_token_ttl.as_millis() as u64).min(now + self.max_age_ms());
        let record = SessionRecord {
            handle,
            user_uuid: user_uuid.to_owned(),
            client_id: client_id.to_owned(),
            user_attributes: user_attributes.to_string(),
            created_at_ms: now,
            refresh_exp_ms,
        };
        let outcome = self
            .store
            .adopt(NewAdoption {
                session: NewSession {
                    record: record.clone(),
                    token_hash: token_hash(&refresh_token),
                    max_age_ms: self.max_age_ms(),
                    now_ms: now,
                },
                sealed_token: seal_successor(adopted, &refresh_token),
                window_ms: self.grace.as_millis() as u64,
            })
            .await
            .map_err(CreateError::Store)?;
        let jti = random_hex(JTI_LEN);
        match outcome {
            AdoptOutcome::Created => self
                .bundle(
                    record,
                    client,
                    &payload,
                    HashedToken::new(refresh_token),
                    Origin::Created,
                    jti,
                )
                .map_err(|_| CreateError::Internal),
            AdoptOutcome::Adopted {
                session,
                sealed_token,
            } => {
                let first = open_successor(adopted, &sealed_token).ok_or_else(|| {
                    tracing::error!("a recorded adoption does not open with the adopted token");
                    CreateError::Internal
                })?;
                let payload = self.sealer.open(&first).map_err(|_| {
                    tracing::error!("a recorded adoption is not a token of this gateway");
                    CreateError::Internal
                })?;
                let client = self
                    .clients
                    .get(&payload.client_id)
                    .cloned()
                    .ok_or(CreateError::UnknownClient)?;
                self.bundle(
                    session,
                    client,
                    &payload,
                    HashedToken::new(first),
                    Origin::Created,
                    jti,
                )
                .map_err(|_| CreateError::Internal)
            }
            AdoptOutcome::Gone => Err(CreateError::Gone),
        }
    }

    /// Opens a presented refresh token and checks its anti-CSRF token; no
    /// store call. Returns the payload and its client.
    pub fn open(
        &self,
        refresh_token: &str,
        anti_csrf: Option<&str>,
    ) -> Result<(RefreshPayload, Arc<ClientConfig>), RefreshError> {
        let payload = self.sealer.open(refresh_token).map_err(|e| match e {
            OpenError::Undecryptable => RefreshError::Undecryptable,
            OpenError::Version => RefreshError::Version,
            OpenError::Nonce => RefreshError::Nonce,
        })?;
        // A client removed from the configuration has no valid sessions.
        let client = self
            .clients
            .get(&payload.client_id)
            .cloned()
            .ok_or(RefreshError::NoSession)?;
        if client.anti_csrf {
            let ok = anti_csrf.is_some_and(|given| {
                bool::from(given.as_bytes().ct_eq(payload.anti_csrf_token.as_bytes()))
            });
            if !ok {
                return Err(RefreshError::AntiCsrf);
            }
        }
        Ok((payload, client))
    }

    /// The client a token names, when it opens; for shaping error responses.
    pub fn open_client(&self, refresh_token: &str) -> Option<Arc<ClientConfig>> {
        let payload = self.sealer.open(refresh_token).ok()?;
        self.clients.get(&payload.client_id).cloned()
    }

    /// SPEC §2: rotates `refresh_token` once; concurrent and replayed calls
    /// converge on the same successor.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        anti_csrf: Option<&str>,
    ) -> Result<Bundle, RefreshError> {
        self.refresh_once(refresh_token, anti_csrf, false)
            .await
            .map(|(bundle, _)| bundle)
    }

    /// [`refresh`](Self::refresh): concurrent callers with the same token
    /// share one flight. With `inline`, the flight's leader first looks for
    /// a remembered result (see [`refresh_inline`](Self::refresh_inline))
    /// and remembers its own before the flight ends, so a caller that just
    /// missed both the memory and the flight still finds one of them.
    /// Returns whether this caller went without a store call of its own.
    async fn refresh_once(
        &self,
        refresh_token: &str,
        anti_csrf: Option<&str>,
        inline: bool,
    ) -> Result<(Bundle, bool), RefreshError> {
        let (payload, client) = self.open(refresh_token, anti_csrf).inspect_err(|e| {
            self.metrics.rotation(e.outcome());
        })?;
        let presented_hash = token_hash(refresh_token);
        let flight = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(presented_hash.clone()).or_default().clone()
        };
        let called_store = std::sync::atomic::AtomicBool::new(false);
        flight
            .get_or_init(|| async {
                if inline {
                    if let Some(bundle) = self.remembered(&presented_hash) {
                        return Ok(bundle);
                    }
                }
                called_store.store(true, std::sync::atomic::Ordering::Relaxed);
                let rotated = self
                    .rotate(refresh_token, &presented_hash, payload, client)
                    .await;
                if let (true, Ok(bundle)) = (inline, &rotated) {
                    self.remember(&presented_hash, bundle);
                }
                rotated
            })
            .await;
        {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if map
                .get(&presented_hash)
                .is_some_and(|f| Arc::ptr_eq(f, &flight))
            {
                map.remove(&presented_hash);
            }
        }
        // The last caller of a flight takes its result; the others copy it.
        match Arc::try_unwrap(flight) {
            Ok(cell) => cell.into_inner(),
            Err(shared) => shared.get().cloned(),
        }
        .unwrap_or(Err(RefreshError::Internal))
        .map(|bundle| {
            (
                bundle,
                !called_store.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// As [`Sessions::refresh`], but a token refreshed in this process within
    /// the replay window is answered from memory. Used by inline refresh on
    /// pass-through routes, where bursts of parallel requests are the norm.
    /// Returns whether the answer came without a store call of its own.
    pub async fn refresh_inline(
        &self,
        refresh_token: &str,
        anti_csrf: Option<&str>,
    ) -> Result<(Bundle, bool), RefreshError> {
        if self.grace.is_zero() {
            return self
                .refresh(refresh_token, anti_csrf)
                .await
                .map(|b| (b, false));
        }
        // Checked per caller: a remembered result never skips the anti-CSRF check.
        self.open(refresh_token, anti_csrf)
            .inspect_err(|e| self.metrics.rotation(e.outcome()))?;
        if let Some(bundle) = self.remembered(&token_hash(refresh_token)) {
            return Ok((bundle, true));
        }
        self.refresh_once(refresh_token, anti_csrf, true).await
    }

    /// The result of a recent inline refresh of the token with this hash,
    /// while its replay window lasts.
    fn remembered(&self, presented_hash: &str) -> Option<Bundle> {
        let now = self.clock.now_ms();
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .by_presented
            .get(presented_hash)
            .filter(|(_, until)| now < *until)
            .map(|(bundle, _)| bundle.clone())
    }

    /// Remembers `bundle` as the answer to the token with this hash for the
    /// replay window.
    fn remember(&self, presented_hash: &str, bundle: &Bundle) {
        let now = self.clock.now_ms();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.by_presented.len() >= RECENT_SWEEP_AT {
            let Recent {
                by_presented,
                by_successor,
            } = &mut *recent;
            by_presented.retain(|_, (_, until)| now < *until);
            by_successor.retain(|_, presented| by_presented.contains_key(presented));
        }
        recent
            .by_successor
            .insert(token_hash(&bundle.refresh_token), presented_hash.to_owned());
        recent.by_presented.insert(
            presented_hash.to_owned(),
            (bundle.clone(), now + self.grace.as_millis() as u64),
        );
    }

    /// `presented_hash` was just rotated away: a remembered result that handed
    /// it out as a successor must not be served any more.
    fn forget_predecessor(&self, presented_hash: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(older) = recent.by_successor.remove(presented_hash) {
            recent.by_presented.remove(&older);
        }
    }

    /// The session of the token with this hash is gone: forget the result
    /// that handed it out and the result it was answered with.
    fn forget_token(&self, hash: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(older) = recent.by_successor.remove(hash) {
            recent.by_presented.remove(&older);
        }
        if let Some((bundle, _)) = recent.by_presented.remove(hash) {
            recent
                .by_successor
                .remove(&bundle.claims.refresh_token_hash);
        }
    }

    async fn rotate(
        &self,
        presented: &str,
        presented_hash: &str,
        payload: RefreshPayload,
        client: Arc<ClientConfig>,
    ) -> Result<Bundle, RefreshError> {
        let random = RotationRandom::draw();
        let handle = payload.session_handle.clone();
        // The successor names its parent, so a store that loses this
        // rotation can still roll it forward (SPEC §2).
        let next = RefreshPayload::with_random(
            payload.session_handle,
            payload.user_uuid,
            payload.client_id,
            &random.payload(),
        )
        .with_parent(presented_hash);
        let next_token = self.sealer.seal_with_nonce(&next, random.seal_nonce());
        let next_hash = token_hash(&next_token);
        let started = std::time::Instant::now();
        let outcome = self
            .store
            .rotate(RotateRequest {
                handle,
                presented_hash: presented_hash.to_owned(),
                parent_hash: payload.parent_hash,
                new_hash: next_hash.clone(),
                sealed_successor: seal_successor_with_nonce(
                    presented,
                    &next_token,
                    random.successor_nonce(),
                ),
                now_ms: self.clock.now_ms(),
                grace_ms: self.grace.as_millis() as u64,
                refresh_ttl_ms: client.refresh_token_ttl.as_millis() as u64,
                max_age_ms: self.max_age_ms(),
            })
            .await;
        self.metrics.store_call(started.elapsed());
        let outcome = outcome.map_err(|e| RefreshError::from_store(e, &self.metrics))?;
        self.metrics.rotation(match &outcome {
            RotateOutcome::Rotated(_) => "ok",
            RotateOutcome::RolledForward(_) => "rolled_forward",
            RotateOutcome::Replay { .. } => "replay",
            RotateOutcome::Theft => "theft",
            RotateOutcome::NoSession => "expired",
        });
        match outcome {
            RotateOutcome::Rotated(session) | RotateOutcome::RolledForward(session) => {
                self.forget_predecessor(presented_hash);
                let record =
                    session.into_record(&next.session_handle, &next.user_uuid, &next.client_id);
                self.bundle(
                    record,
                    client,
                    &next,
                    HashedToken {
                        token: next_token,
                        hash: next_hash,
                    },
                    Origin::Rotated { presented_hash },
                    random.jti(),
                )
            }
            RotateOutcome::Replay {
                session,
                sealed_successor,
            } => {
                let successor = open_successor(presented, &sealed_successor).ok_or_else(|| {
                    tracing::error!("stored successor does not open with the presented token");
                    RefreshError::Internal
                })?;
                let next = self.sealer.open(&successor).map_err(|_| {
                    tracing::error!("stored successor is not a token of this gateway");
                    RefreshError::Internal
                })?;
                let record =
                    session.into_record(&next.session_handle, &next.user_uuid, &next.client_id);
                self.bundle(
                    record,
                    client,
                    &next,
                    HashedToken::new(successor),
                    Origin::Replayed { presented_hash },
                    random.jti(),
                )
            }
            RotateOutcome::Theft => {
                self.forget_predecessor(presented_hash);
                tracing::warn!(
                    session_handle = %next.session_handle,
                    "refresh token replayed outside the grace rules; session revoked"
                );
                Err(RefreshError::Theft)
            }
            RotateOutcome::NoSession => Err(RefreshError::NoSession),
        }
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

    /// Revokes the session a refresh token belongs to. As in the Rails SiS,
    /// a token the session has rotated away (outside its replay window)
    /// revokes the session all the same but answers [`RefreshError::Theft`].
    pub async fn revoke(
        &self,
        refresh_token: &str,
        anti_csrf: Option<&str>,
    ) -> Result<Arc<ClientConfig>, RefreshError> {
        let (payload, client) = self.open(refresh_token, anti_csrf)?;
        let presented_hash = token_hash(refresh_token);
        let outcome = self
            .store
            .revoke_token(RevokeRequest {
                handle: payload.session_handle.clone(),
                presented_hash: presented_hash.clone(),
                parent_hash: payload.parent_hash,
                now_ms: self.clock.now_ms(),
                grace_ms: self.grace.as_millis() as u64,
                max_age_ms: self.max_age_ms(),
            })
            .await?;
        // Whatever the outcome, nothing about this token is served from
        // memory any more.
        self.forget_token(&presented_hash);
        match outcome {
            RevokeOutcome::Revoked => Ok(client),
            RevokeOutcome::Theft => {
                tracing::warn!(
                    session_handle = %payload.session_handle,
                    "revoke with a rotated-away refresh token; session revoked"
                );
                Err(RefreshError::Theft)
            }
            RevokeOutcome::NoSession => Err(RefreshError::NoSession),
        }
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

/// The handle of the session that adopts `adopted`: a UUID derived from
/// the token, the same on every instance.
fn adoption_handle(adopted: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"sis-gateway adopted session handle v1\0");
    ctx.update(adopted.as_bytes());
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("unknown client_id")]
    UnknownClient,
    /// The token was adopted moments ago, and that session is gone since.
    #[error("the adopted session is gone")]
    Gone,
    #[error(transparent)]
    Store(StoreError),
    #[error("internal error")]
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adoption_handles_are_uuids_of_the_token() {
        let a = adoption_handle("v1:abc.0.V0");
        assert_eq!(a, adoption_handle("v1:abc.0.V0"));
        assert_ne!(a, adoption_handle("v1:abd.0.V0"));
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 4);
    }

    #[test]
    fn rotation_random_values_do_not_share_bytes() {
        let mut bytes = [0u8; RotationRandom::LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        let r = RotationRandom(bytes);
        let expect =
            |from: usize, len: usize| (from..from + len).map(|i| i as u8).collect::<Vec<_>>();
        assert_eq!(r.payload().to_vec(), expect(0, PAYLOAD_RANDOM_LEN));
        assert_eq!(
            r.seal_nonce().to_vec(),
            expect(PAYLOAD_RANDOM_LEN, SEAL_NONCE_LEN)
        );
        assert_eq!(
            r.successor_nonce().to_vec(),
            expect(PAYLOAD_RANDOM_LEN + SEAL_NONCE_LEN, SEAL_NONCE_LEN)
        );
        assert_eq!(
            r.jti(),
            hex(&expect(RotationRandom::LEN - JTI_LEN, JTI_LEN))
        );
        assert_eq!(
            RotationRandom::LEN,
            PAYLOAD_RANDOM_LEN + 2 * SEAL_NONCE_LEN + JTI_LEN
        );
        // Two draws differ.
        assert_ne!(RotationRandom::draw().0, RotationRandom::draw().0);
    }
}
