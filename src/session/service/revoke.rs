//! Revoking the session a refresh token belongs to.

use std::sync::Arc;

use crate::config::ClientConfig;
use crate::session::store::{RevokeOutcome, RevokeRequest, SessionStore};
use crate::tokens::token_hash;

use super::{RefreshError, Sessions};

impl Sessions {
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
}
