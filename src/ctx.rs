//! What the server knows about a request beyond the request itself.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::header::HeaderName;
use http::HeaderValue;

/// The request id, kept from a trusted proxy or made by the gateway, sent
/// upstream and returned to the client.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
    /// The outcome of adopting a login service's token bundle in the
    /// answer (`adopted`, `invalid`, …), when it carried one: named in the
    /// access log line.
    pub adoption: OnceLock<&'static str>,
}

/// A request id: one kept from a trusted proxy, or a generated UUID held
/// inline, so making, passing and writing one needs no allocation and no
/// reference count.
#[derive(Debug, Clone)]
pub struct RequestId(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Generated([u8; GENERATED_LEN]),
    Kept(HeaderValue),
}

/// The length of a generated id (a hyphenated UUID).
pub const GENERATED_LEN: usize = 36;

impl RequestId {
    /// A generated id: visible ASCII (the server writes a hyphenated UUID).
    pub fn generated(text: [u8; GENERATED_LEN]) -> RequestId {
        debug_assert!(text.iter().all(u8::is_ascii_graphic));
        RequestId(Repr::Generated(text))
    }

    /// An id received from a trusted proxy, already checked to be visible
    /// ASCII.
    pub fn kept(value: HeaderValue) -> RequestId {
        RequestId(Repr::Kept(value))
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Generated(text) => text,
            Repr::Kept(value) => value.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only visible ASCII is kept or generated (see the server).
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The id as a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        match &self.0 {
            Repr::Generated(text) => {
                HeaderValue::from_bytes(text).expect("a generated id is visible ASCII")
            }
            Repr::Kept(value) => value.clone(),
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
