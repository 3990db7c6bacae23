//! The request body sent upstream: the client's body streamed through, with
//! the route's size limit enforced while streaming, and a way to take it back
//! when the upstream refused the connection before reading a byte.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use crate::body::BoxError;

/// The error a [`ForwardBody`] yields once more than `max_body` bytes went through.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's max_body of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Holds a request body until the upstream connection starts reading it.
///
/// The upstream client consumes the body it is given. When the connection is
/// refused nothing was read, and [`BodySlot::reclaim`] gets the body back so
/// the request can go to the next upstream.
#[derive(Clone)]
pub struct BodySlot(Arc<Mutex<Option<Incoming>>>);

impl BodySlot {
    pub fn new(body: Incoming) -> Self {
        BodySlot(Arc::new(Mutex::new(Some(body))))
    }

    /// True while the upstream has not started reading the body.
    pub fn is_intact(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The body, if the upstream never started reading it.
    pub fn reclaim(&self) -> Option<Incoming> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

enum Source {
    Direct(Incoming),
    Slot(BodySlot),
    Done,
}

/// A streamed request body with an optional byte limit.
pub struct ForwardBody {
    source: Source,
    limit: u64,
    seen: u64,
}

impl ForwardBody {
    pub fn new(body: Incoming, limit: Option<u64>) -> Self {
        ForwardBody {
            source: Source::Direct(body),
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
        }
    }

    /// A body that stays in `slot` until first polled.
    pub fn from_slot(slot: BodySlot, limit: Option<u64>) -> Self {
        ForwardBody {
            source: Source::Slot(slot),
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
        }
    }

    fn incoming(&mut self) -> Option<&mut Incoming> {
        if let Source::Slot(slot) = &self.source {
            self.source = match slot.reclaim() {
                Some(body) => Source::Direct(body),
                None => Source::Done,
            };
        }
        match &mut self.source {
            Source::Direct(body) => Some(body),
            _ => None,
        }
    }
}

impl HttpBody for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let limit = self.limit;
        let Some(body) = self.incoming() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            self.seen += data.len() as u64;
            if self.seen > limit {
                self.source = Source::Done;
                return Poll::Ready(Some(Err(BodyTooLarge { limit }.into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Direct(body) => body.is_end_stream(),
            Source::Slot(slot) => slot
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_none_or(|b| b.is_end_stream()),
            Source::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Direct(body) => body.size_hint(),
            Source::Slot(slot) => slot
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
            Source::Done => SizeHint::with_exact(0),
        }
    }
}
