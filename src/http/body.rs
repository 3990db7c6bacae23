//! The one response body type, and JSON responses.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub use super::BoxError;

/// Every response the gateway produces: streamed upstream bodies and small
/// generated ones alike.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(full(bytes));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `{"errors":"<message>"}`, the SiS error shape, used for every error the
/// gateway answers itself.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "errors": message }))
}

/// Every request body the gateway handles: read from an HTTP/1 connection
/// by the gateway's own server, from hyper (HTTP/2, the admin listener), or
/// none.
pub struct RequestBody(RequestInner);

enum RequestInner {
    Empty,
    /// A body the gateway made itself (a request of its own upstream).
    Full(Option<Bytes>),
    Hyper(hyper::body::Incoming),
    H1(crate::http::h1::body::Streamed),
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody(RequestInner::Empty)
    }

    /// A body of `bytes`, for a request the gateway sends itself.
    pub fn full(bytes: Bytes) -> RequestBody {
        RequestBody(RequestInner::Full(Some(bytes).filter(|b| !b.is_empty())))
    }

    pub(crate) fn h1(body: crate::http::h1::body::Streamed) -> RequestBody {
        RequestBody(RequestInner::H1(body))
    }
}

impl From<hyper::body::Incoming> for RequestBody {
    fn from(body: hyper::body::Incoming) -> RequestBody {
        RequestBody(RequestInner::Hyper(body))
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::pin::Pin;
        match &mut self.0 {
            RequestInner::Empty => std::task::Poll::Ready(None),
            RequestInner::Full(b) => {
                std::task::Poll::Ready(b.take().map(|b| Ok(http_body::Frame::data(b))))
            }
            RequestInner::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestInner::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            RequestInner::Empty => true,
            RequestInner::Full(b) => b.is_none(),
            RequestInner::Hyper(b) => b.is_end_stream(),
            RequestInner::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            RequestInner::Empty => http_body::SizeHint::with_exact(0),
            RequestInner::Full(b) => {
                http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestInner::Hyper(b) => b.size_hint(),
            RequestInner::H1(b) => b.size_hint(),
        }
    }
}
