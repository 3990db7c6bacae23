//! Why a request could not be forwarded, who caused it, and the answer the
//! client gets.

use std::error::Error as StdError;
use std::io;

use http::{Response, StatusCode};

use crate::http::body::{json_error, Body};
use crate::metrics::UpstreamErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the host and path (client).
    #[error("no route")]
    NoRoute,
    /// The body is larger than the route's `max_body` (client).
    #[error("request body too large")]
    BodyTooLarge,
    /// The client's body broke off or was malformed while streaming (client).
    #[error("malformed request body")]
    BadRequestBody,
    /// CONNECT is not forwarded (client).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Every upstream of the route is cooling down after refusing connections.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// No connection to the upstream could be made: nothing was sent.
    #[error("upstream failed ({kind:?}): {source}")]
    Connect {
        kind: UpstreamErrorKind,
        source: io::Error,
    },
    /// The upstream exchange failed.
    #[error("upstream failed ({kind:?}): {detail}")]
    Upstream {
        kind: UpstreamErrorKind,
        detail: String,
    },
    /// No response head within `server.upstream_timeout`.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream answered 101 to a request that did not ask for that
    /// protocol.
    #[error("upstream switched protocols unasked")]
    BadUpgrade,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequestBody => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoHealthyUpstream
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BadUpgrade => StatusCode::BAD_GATEWAY,
        }
    }

    /// True when the client caused it (logged at debug, not warn).
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// `{"errors":"…"}` with the status.
    pub fn to_response(&self) -> Response<Body> {
        let message = match self {
            ProxyError::NoRoute => "No route",
            ProxyError::BodyTooLarge => "Request body too large",
            ProxyError::BadRequestBody => "Malformed request body",
            ProxyError::MethodNotAllowed => "Method not allowed",
            ProxyError::Timeout => "Upstream timed out",
            ProxyError::NoHealthyUpstream
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BadUpgrade => "Upstream unavailable",
        };
        json_error(self.status(), message)
    }
}

fn sources<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// A connection that could not be made: nothing was sent.
pub(super) fn classify_connect(err: &io::Error) -> UpstreamErrorKind {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => UpstreamErrorKind::refused,
        io::ErrorKind::TimedOut => UpstreamErrorKind::connect_timeout,
        _ => UpstreamErrorKind::connect,
    }
}

/// The error and its causes on one line, for logs.
pub(super) fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    for (i, e) in sources(err).enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&e.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failure_reads_as_other_upstream_failures() {
        let e = ProxyError::Connect {
            kind: UpstreamErrorKind::refused,
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
        };
        assert_eq!(
            e.to_string(),
            "upstream failed (refused): connection refused"
        );
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.source().is_some());
    }
}
