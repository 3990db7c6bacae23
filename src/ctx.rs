//! What the server knows about a request beyond the request itself.

use std::net::{IpAddr, SocketAddr};

/// Facts about one request, set by the server before dispatch.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client address: the peer, or the first untrusted address in
    /// `X-Forwarded-For` when the peer is a trusted proxy.
    pub client_ip: IpAddr,
    /// `X-Request-Id`, kept from a trusted proxy or generated.
    pub request_id: String,
    /// The request came over TLS.
    pub tls: bool,
}
