//! An upgrade (`101 Switching Protocols`) requested on an HTTP/1
//! connection: the request carries a [`PendingUpgrade`] that resolves to
//! the client connection once the `101` has been written.

use std::sync::Arc;

use tokio::sync::oneshot;

pub(crate) use crate::http::h1::halves::Upgraded;

/// The client side of an upgrade requested on an HTTP/1 connection: resolves
/// to the connection once the `101` response has been written. (Request
/// extensions must be `Clone`; the first to take the receiver has it.)
#[derive(Clone)]
pub struct PendingUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    /// Resolves to the upgraded connection; `None` when the response was not
    /// a `101` or the connection is gone.
    pub(crate) async fn connection(self) -> Option<Upgraded> {
        let rx = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        rx.await.ok()
    }
}

impl PendingUpgrade {
    pub(crate) fn new(rx: oneshot::Receiver<Upgraded>) -> PendingUpgrade {
        PendingUpgrade(Arc::new(std::sync::Mutex::new(Some(rx))))
    }
}
