//! Opening sessions: for a user who has just signed in, and for the user of
//! a refresh token adopted from another Sign-in Service.

use std::sync::Arc;

use crate::config::ClientConfig;
use crate::session::store::{AdoptOutcome, NewAdoption, NewSession, SessionRecord, SessionStore};
use crate::tokens::random_hex;
use crate::tokens::seal::{open_successor, seal_successor, RefreshPayload};
use crate::tokens::token_hash;

use super::{Bundle, CreateError, HashedToken, Origin, Sessions, JTI_LEN};

impl Sessions {
    /// Opens a session for a user who has just authenticated.
    pub async fn create(
        &self,
        user_uuid: &str,
        client_id: &str,
        user_attributes: serde_json::Value,
    ) -> Result<Bundle, CreateError> {
        let Opening {
            client,
            payload,
            refresh_token,
            session,
        } = self.opening(
            uuid::Uuid::new_v4().to_string(),
            user_uuid,
            client_id,
            &user_attributes,
        )?;
        let record = session.record.clone();
        self.store
            .create(session)
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
    /// Sign-in Service that it has just refreshed for us (README, Putting
    /// sis-gateway in front of an existing Sign-in Service). Every adoption of
    /// one token within the replay window, on any instance, gives the same
    /// session and the same first refresh token: the session handle is derived
    /// from the token, and the store records the first adoption (its token
    /// sealed under a key derived from `adopted`, so the store holds nothing
    /// replayable) in the same atomic step as the session.
    pub async fn adopt(
        &self,
        adopted: &str,
        user_uuid: &str,
        client_id: &str,
        user_attributes: serde_json::Value,
    ) -> Result<Bundle, CreateError> {
        let Opening {
            client,
            payload,
            refresh_token,
            session,
        } = self.opening(
            adoption_handle(adopted),
            user_uuid,
            client_id,
            &user_attributes,
        )?;
        let record = session.record.clone();
        let outcome = self
            .store
            .adopt(NewAdoption {
                session,
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
}

/// A session about to be opened: its record and first refresh token, for
/// the store, and what its first answer is made of.
struct Opening {
    client: Arc<ClientConfig>,
    payload: RefreshPayload,
    refresh_token: String,
    session: NewSession,
}

impl Sessions {
    /// The session `handle` of `user_uuid` on `client_id`, as both ways of
    /// opening one start it: its first refresh token sealed, its expiry the
    /// client's refresh lifetime capped by the session's maximum age.
    fn opening(
        &self,
        handle: String,
        user_uuid: &str,
        client_id: &str,
        user_attributes: &serde_json::Value,
    ) -> Result<Opening, CreateError> {
        let client = self
            .clients
            .get(client_id)
            .cloned()
            .ok_or(CreateError::UnknownClient)?;
        let now = self.clock.now_ms();
        let payload =
            RefreshPayload::new(handle.clone(), user_uuid.to_owned(), client_id.to_owned());
        let refresh_token = self.sealer.seal(&payload);
        let refresh_exp_ms =
            (now + client.refresh_token_ttl.as_millis() as u64).min(now + self.max_age_ms());
        let session = NewSession {
            record: SessionRecord {
                handle,
                user_uuid: user_uuid.to_owned(),
                client_id: client_id.to_owned(),
                user_attributes: user_attributes.to_string(),
                created_at_ms: now,
                refresh_exp_ms,
            },
            token_hash: token_hash(&refresh_token),
            max_age_ms: self.max_age_ms(),
            now_ms: now,
        };
        Ok(Opening {
            client,
            payload,
            refresh_token,
            session,
        })
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
}
