//! h2c with prior knowledge: telling an HTTP/2 connection preface from an
//! HTTP/1 request on a plain connection.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::Shared;

/// Whether a plain connection opens with the HTTP/2 connection preface
/// (h2c with prior knowledge). Only peeks, so either server reads the
/// bytes itself. `None`: the connection closed, stayed silent past the idle
/// timeout, or the server is shutting down.
pub(super) async fn starts_with_h2_preface(stream: &TcpStream, shared: &Shared) -> Option<bool> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut shutdown = shared.shutdown();
    let ready = tokio::select! {
        biased;
        () = shutdown.draining() => return None,
        ready = tokio::time::timeout(shared.idle_timeout, stream.readable()) => ready,
    };
    if !matches!(ready, Ok(Ok(()))) {
        return None;
    }
    let deadline = Instant::now() + shared.header_read_timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        // A prefix of the preface: wait for the rest (it normally comes in
        // one segment).
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
