//! What the server knows about a request beyond the request itself.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::HeaderValue;

/// Facts about one request, set by the server before dispatch.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client address: the peer, or the first untrusted address in
    /// `X-Forwarded-For` when the peer is a trusted proxy.
    pub client_ip: IpAddr,
    /// `X-Request-Id`, kept from a trusted proxy or generated.
    pub request_id: RequestId,
    /// The request came over TLS.
    pub tls: bool,
    /// The upstream that answered (or failed), once one was tried: named in
    /// the access log line.
    pub upstream: OnceLock<Arc<str>>,
}

/// A request id: the header value itself, shown as text in log lines.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is kept or generated (see the server).
        self.0.to_str().unwrap_or_default()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
