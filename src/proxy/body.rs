//! The request body sent upstream: the client's body streamed through, with
//! the route's size limit enforced while streaming.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::http::body::RequestBody;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::http::body::BoxError;

/// The error a [`ForwardBody`] yields once more than `max_body` bytes went through.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's max_body of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The client's body failed while it was streamed upstream: malformed
/// framing, or the client went away mid-body.
#[derive(Debug, thiserror::Error)]
#[error("client request body failed")]
pub struct ClientBodyFailed(#[source] pub BoxError);

/// A streamed request body with an optional byte limit.
pub struct ForwardBody {
    /// `None` once the limit tripped.
    inner: Option<RequestBody>,
    limit: u64,
    seen: u64,
}

impl ForwardBody {
    pub fn new(body: RequestBody, limit: Option<u64>) -> Self {
        ForwardBody {
            inner: Some(body),
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
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
        let Some(body) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(ClientBodyFailed(e).into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            self.seen += data.len() as u64;
            if self.seen > limit {
                self.inner = None;
                return Poll::Ready(Some(Err(BodyTooLarge { limit }.into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
