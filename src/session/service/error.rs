//! The errors of creating, refreshing and revoking sessions.

use crate::metrics::Metrics;
use crate::session::store::StoreError;

/// Why a refresh (or revoke) failed; each maps to one row of the error table in
/// README, The sign-in endpoints.
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
    pub(super) fn from_store(e: StoreError, metrics: &Metrics) -> Self {
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
