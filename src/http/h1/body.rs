//! A request body read from the client connection as the handler polls it.
//!
//! The body borrows the connection's read side for as long as the request
//! runs; the connection takes it back after the response (see
//! [`BodyShared::reclaim`]) and reads on only if the body was read to its end.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::halves::ReadSide;
use crate::http::h1::decode::{Decoder, Step};
use crate::http::BoxError;

/// The read side while a body is being read, and the body's decoder.
pub(crate) struct BodyState {
    pub(crate) read: Option<ReadSide>,
    pub(crate) decoder: Decoder,
    /// The body is broken (malformed framing, early end of stream).
    pub(crate) failed: bool,
}

/// Shared between the connection and the [`Streamed`] body it handed out.
#[derive(Clone)]
pub(crate) struct BodyShared(Arc<Mutex<BodyState>>);

impl BodyShared {
    pub(crate) fn new(read: ReadSide, decoder: Decoder) -> BodyShared {
        BodyShared(Arc::new(Mutex::new(BodyState {
            read: Some(read),
            decoder,
            failed: false,
        })))
    }

    /// True when what is left of the body cannot be drained cheaply after
    /// the response (it failed, or more than `limit` bytes are still to
    /// come), so the response should announce the connection's close.
    pub(crate) fn beyond_drain(&self, limit: u64) -> bool {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.failed || state.decoder.remaining().is_some_and(|n| n > limit)
    }

    /// Takes the read side back, with the decoder as the body left it.
    pub(crate) fn reclaim(&self) -> Option<(ReadSide, Decoder, bool)> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let read = state.read.take()?;
        Some((read, state.decoder, state.failed))
    }
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body: {0}")]
    Decode(#[from] crate::http::h1::decode::DecodeError),
    #[error("request body: connection closed before the body ended")]
    Incomplete,
    #[error("request body: the connection has moved on")]
    Gone,
}

/// The body of a request read from an HTTP/1 connection.
pub(crate) struct Streamed {
    shared: BodyShared,
}

impl Streamed {
    pub(crate) fn new(shared: BodyShared) -> Streamed {
        Streamed { shared }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BodyState> {
        self.shared.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HttpBody for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.decoder.is_done() {
            return Poll::Ready(None);
        }
        if state.failed {
            return Poll::Ready(Some(Err(BodyError::Incomplete.into())));
        }
        let Some(read) = state.read.as_mut() else {
            return Poll::Ready(Some(Err(BodyError::Gone.into())));
        };
        loop {
            match state.decoder.decode(&mut read.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::Done) => return Poll::Ready(None),
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    state.failed = true;
                    return Poll::Ready(Some(Err(BodyError::from(e).into())));
                }
            }
            match read.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    state.failed = true;
                    return Poll::Ready(Some(Err(BodyError::Incomplete.into())));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.lock().decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.lock().decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
