//! Refreshing a session: opening the presented refresh token, rotating it in
//! one atomic store step (with its grace window for replays), and sharing one
//! store call between concurrent refreshes of the same token.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use crate::config::ClientConfig;
use crate::session::store::{RotateOutcome, RotateRequest, SessionStore};
use crate::tokens::seal::{
    open_successor, seal_successor_with_nonce, OpenError, RefreshPayload, PAYLOAD_RANDOM_LEN,
    SEAL_NONCE_LEN,
};
use crate::tokens::{fill_random, hex, token_hash};

use super::{Bundle, HashedToken, Origin, RefreshError, Sessions, JTI_LEN};

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

pub(super) type Flight = Arc<OnceCell<Result<Bundle, RefreshError>>>;

impl Sessions {
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

    /// Rotates `refresh_token` once; concurrent and replayed calls converge
    /// on the same successor (README, How rotation works).
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
        // rotation can still roll it forward (README, How rotation works, step
        // 6).
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::hex;

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
