//! h2c with prior knowledge: telling an HTTP/2 connection preface from an
//! HTTP/1 request on a plain connection.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::Shared;

/// How a plain connection opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    /// With the HTTP/2 connection preface (h2c with prior knowledge).
    H2,
    /// With anything else: HTTP/1.
    Http1,
    /// It closed, stayed silent past the idle timeout, or the server is
    /// shutting down.
    Gone,
}

/// Whether a plain connection opens with the HTTP/2 connection preface.
/// Only peeks, so either server reads the bytes itself.
pub(super) async fn opening(stream: &TcpStream, shared: &Shared) -> Opening {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut shutdown = shared.shutdown();
    let ready = tokio::select! {
        biased;
        () = shutdown.draining() => return Opening::Gone,
        ready = tokio::time::timeout(shared.idle_timeout, stream.readable()) => ready,
    };
    if !matches!(ready, Ok(Ok(()))) {
        return Opening::Gone;
    }
    let deadline = Instant::now() + shared.header_read_timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Opening::Gone,
            Ok(n) => n,
        };
        if buf[..n] != PREFACE[..n] {
            return Opening::Http1;
        }
        if n == PREFACE.len() {
            return Opening::H2;
        }
        // A prefix of the preface: wait for the rest (it normally comes in
        // one segment).
        if Instant::now() >= deadline {
            return Opening::Gone;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
