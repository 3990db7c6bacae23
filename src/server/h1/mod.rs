//! The HTTP/1.1 server side of client connections.
//!
//! Written for what a gateway holds most of: keep-alive connections waiting
//! for their next request. Between requests a connection owns its socket
//! halves and a few words of state, no buffers: reads go through a
//! per-thread scratch buffer and are copied out in the size that arrived,
//! responses are encoded into a buffer that lives while they are written.
//! Its timeouts (idle, request head, client not reading) are timers of its
//! own task, so no second task watches it.
//!
//! Per request: the head is parsed with httparse (strict framing, see
//! `parse`), the body is streamed to the handler as it polls it
//! (`body`), and the response is written with `Content-Length` when its
//! size is known, else chunked (HTTP/1.1) or until close (HTTP/1.0). A small
//! response goes out in one write together with its head. A body the
//! handler did not read to its end is drained when it is small and quick,
//! otherwise the connection closes after the response.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt as _;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::oneshot;

#[cfg(test)]
mod tests;

use super::close::Close;
use super::conn::ConnTicket;
use super::shutdown::Shutdown;
use super::Shared;
use crate::ctx::RequestId;
use crate::http::body::{json_error, RequestBody};
use crate::http::Reply;

use crate::http::h1::body::{BodyShared, Streamed};
use crate::http::h1::decode::{Decoder, Step};
use crate::http::h1::encode::{self, Exchange, Framing};
use crate::http::h1::halves::{self, BoxRead, BoxWrite, ReadSide};
use crate::http::h1::parse::{self, HeadError};
use crate::http::h1::{self, write_all};
use crate::http::PendingUpgrade;

/// A body the handler left unread is drained, so the connection can stay
/// open, when this little of it is left.
const DRAIN_LIMIT: u64 = 64 * 1024;
/// How long, and for how many bytes, a connection closed with unread input
/// keeps reading (see [`linger`]).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Per-connection settings, fixed at start.
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_header_size: usize,
}

/// Serves HTTP/1 requests on one client connection until it closes, times
/// out, is upgraded, or the server shuts down.
pub(super) async fn serve(
    shared: Arc<Shared>,
    read: BoxRead,
    write: BoxWrite,
    peer: SocketAddr,
    tls: bool,
    ticket: Option<ConnTicket>,
) {
    let mut conn = Conn {
        shutdown: shared.shutdown(),
        limits: Limits {
            header_read_timeout: shared.header_read_timeout,
            idle_timeout: shared.idle_timeout,
            max_header_size: shared.max_header_size,
        },
        shared,
        peer,
        tls,
        read: Some(ReadSide::new(read)),
        write,
        ticket,
        linger: false,
        idle_timer: None,
    };
    let reason = conn.run().await;
    tracing::debug!(%peer, %reason, "closing connection");
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.write.shutdown()).await;
    if conn.linger {
        if let Some(read) = conn.read.as_mut() {
            linger(read).await;
        }
    }
}

/// After the response and our FIN, reads and discards what the client is
/// still sending (the rest of a body it was told it need not send) for a
/// moment. Closing a socket with unread input resets it, and a reset can
/// destroy the response before the client has read it.
async fn linger(read: &mut ReadSide) {
    let discard = async {
        let mut total = 0usize;
        loop {
            read.buf.clear();
            match read.fill().await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
            if total > LINGER_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, discard).await;
    read.buf = BytesMut::new();
}

struct Conn {
    shared: Arc<Shared>,
    limits: Limits,
    shutdown: Shutdown,
    peer: SocketAddr,
    tls: bool,
    /// `None` while a request body holds it.
    read: Option<ReadSide>,
    write: BoxWrite,
    /// The connection's slot, unless its stream holds it; handed on to an
    /// upgraded connection.
    ticket: Option<ConnTicket>,
    /// Closing with client input unread: read it away first.
    linger: bool,
    /// Armed while the connection waits for its next request; kept from one
    /// wait to the next (see [`Conn::run`]).
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    /// Serves requests until the connection should close; says why.
    async fn run(&mut self) -> Close {
        loop {
            let Some(mut read) = self.read.take() else {
                return Close::BodyNotRecovered;
            };
            if read.buf.is_empty() {
                // Idle: give the buffer back and wait for the next request.
                crate::http::h1::give_read_buf(std::mem::take(&mut read.buf));
                if self.shutdown.is_draining() {
                    return Close::ShuttingDown;
                }
                // Under load the next request is often there already: a
                // read that does not wait needs no timer.
                let ready = std::future::poll_fn(|cx| read.poll_fill(cx)).now_or_never();
                let got = match ready {
                    Some(got) => Wait::Read(got),
                    None => {
                        // Seconds-scale: the coarse clock saves a clock read.
                        let due = crate::time::coarse::deadline(self.limits.idle_timeout);
                        // The connection's one idle timer stays armed from
                        // wait to wait, so a busy connection does not
                        // register and cancel a timer for every request: when
                        // it fires for an earlier wait, it is moved on to
                        // this one's deadline.
                        let timer = self
                            .idle_timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                        loop {
                            let woke = tokio::select! {
                                biased;
                                () = self.shutdown.idle() => return Close::ShuttingDown,
                                got = read.fill() => Wait::Read(got),
                                () = timer.as_mut() => Wait::TimerFired,
                            };
                            match woke {
                                Wait::TimerFired if timer.deadline() < due => {
                                    timer.as_mut().reset(due)
                                }
                                woke => break woke,
                            }
                        }
                    }
                };
                match got {
                    Wait::Read(Ok(0)) => return Close::ClosedByClient,
                    Wait::Read(Err(_)) => return Close::ReadError,
                    Wait::TimerFired => return Close::Idle,
                    Wait::Read(Ok(_)) => {}
                }
            }
            // A head that arrived whole (the usual case) needs no timer.
            let head = match parse::parse(&mut read.buf, self.limits.max_header_size) {
                Ok(Some(head)) => HeadRead::Head(head),
                Err(e) => HeadRead::Malformed(e),
                Ok(None) => {
                    // Boxed, as the answer below: a head that comes in
                    // pieces waits on the network anyway, and its timer and
                    // reads need not be part of every connection's state.
                    crate::boxed!(tokio::time::timeout(
                        self.limits.header_read_timeout,
                        read_head(&mut read, self.limits.max_header_size),
                    ))
                    .await
                    .unwrap_or(HeadRead::TimedOut)
                }
            };
            let head = match head {
                HeadRead::TimedOut => return Close::HeadTimeout,
                HeadRead::Closed => return Close::ClosedDuringHead,
                HeadRead::Malformed(e) => {
                    self.linger_on(read);
                    let mut res = json_error(e.status(), &e.to_string());
                    res.headers_mut()
                        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    let exchange = Exchange {
                        version: http::Version::HTTP_11,
                        head_request: false,
                    };
                    // Boxed: this rare answer's state would otherwise be part
                    // of every connection's, idle ones included.
                    let _ = crate::boxed!(self.respond(res.into(), exchange, false)).await;
                    return Close::MalformedHead;
                }
                HeadRead::Head(head) => head,
            };
            // Boxed: an exchange's state (request head, response writing) is
            // large, and only needed while it runs, not while the connection
            // waits for its next request.
            match crate::boxed!(self.exchange(head, read)).await {
                Next::Continue => {}
                Next::Close(reason) => return reason,
            }
        }
    }

    /// One request and its response.
    async fn exchange(&mut self, head: parse::Head, read: ReadSide) -> Next {
        let exchange = Exchange {
            version: head.version,
            head_request: head.method == Method::HEAD,
        };
        if head.expect_continue
            && tokio::time::timeout(
                self.limits.idle_timeout,
                write_all(
                    &mut self.write,
                    &mut [IoSlice::new(b"HTTP/1.1 100 Continue\r\n\r\n")],
                ),
            )
            .await
            .is_err()
        {
            return Next::Close(Close::ClientStoppedReading);
        }
        let (body, shared_body) = match head.framing {
            parse::Framing::Empty => {
                self.read = Some(read);
                (RequestBody::empty(), None)
            }
            parse::Framing::Length(n) => {
                let shared = BodyShared::new(read, Decoder::length(n));
                (RequestBody::h1(Streamed::new(shared.clone())), Some(shared))
            }
            parse::Framing::Chunked => {
                let shared = BodyShared::new(read, Decoder::chunked(self.limits.max_header_size));
                (RequestBody::h1(Streamed::new(shared.clone())), Some(shared))
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        let upgrade = head.upgrade.then(|| {
            let (tx, rx) = oneshot::channel();
            req.extensions_mut().insert(PendingUpgrade::new(rx));
            tx
        });

        // Boxed, so the connection's own future stays small while idle.
        // No wait on the stop signal here: when the drain deadline passes,
        // the worker's runtime is dropped, and every connection with it.
        let res = std::pin::pin!(super::request::public_request(
            &self.shared,
            req,
            self.peer,
            self.tls
        ))
        .await;
        let upgrading = upgrade.is_some() && res.status() == StatusCode::SWITCHING_PROTOCOLS;
        let keep_alive = head.keep_alive
            && !self.shutdown.is_draining()
            && !shared_body
                .as_ref()
                .is_some_and(|b| b.beyond_drain(DRAIN_LIMIT));
        let keep_alive = match self.respond(res, exchange, keep_alive).await {
            Ok(keep_alive) => keep_alive,
            Err(reason) => return Next::Close(reason),
        };

        if let Some(shared) = shared_body {
            let Some((mut read, mut decoder, failed)) = shared.reclaim() else {
                return Next::Close(Close::BodyNotRecovered);
            };
            if failed {
                self.linger_on(read);
                return Next::Close(Close::MalformedBody);
            }
            let finished = decoder.is_done()
                || (keep_alive
                    && drain_body(&mut read, &mut decoder, self.limits.header_read_timeout).await);
            if !finished {
                self.linger_on(read);
                return Next::Close(Close::BodyNotRead);
            }
            self.read = Some(read);
        }
        if upgrading {
            if let (Some(tx), Some(read)) = (upgrade, self.read.take()) {
                let ticket = self.ticket.take();
                let write: BoxWrite =
                    std::mem::replace(&mut self.write, Box::new(tokio::io::sink()));
                let _ = tx.send(halves::upgraded(
                    read,
                    write,
                    ticket.map(|t| Box::new(t) as halves::Held),
                ));
            }
            return Next::Close(Close::Upgraded);
        }
        if keep_alive {
            Next::Continue
        } else {
            Next::Close(Close::NotKeepAlive)
        }
    }

    /// Keeps the read side for [`linger`] when the connection closes.
    fn linger_on(&mut self, read: ReadSide) {
        self.read = Some(read);
        self.linger = true;
    }

    /// Writes a response; `Ok(keep_alive)` when it went out whole.
    async fn respond(
        &mut self,
        res: Reply,
        exchange: Exchange,
        keep_alive: bool,
    ) -> Result<bool, Close> {
        let mut out = h1::take_buf(512);
        let result = self
            .write_response(res, exchange, keep_alive, &mut out)
            .await;
        h1::give_buf(out);
        result
    }

    /// [`respond`](Self::respond), with `out` to gather writes in.
    async fn write_response(
        &mut self,
        res: Reply,
        exchange: Exchange,
        mut keep_alive: bool,
        out: &mut Vec<u8>,
    ) -> Result<bool, Close> {
        let (parts, mut body, received, request_id) = res.into_parts();
        let fields = encode::Fields {
            received: received.untouched(),
            cased: received.folded(),
            map: &parts.headers,
            request_id: request_id.as_ref().map(RequestId::as_bytes),
        };
        let framing = encode::head(
            parts.status,
            fields,
            &http_body::Body::size_hint(&body),
            exchange,
            &mut keep_alive,
            out,
        );
        h1::give_map(parts.headers);
        received.recycle();
        let idle = self.limits.idle_timeout;
        if framing == Framing::None {
            drop(body);
            self.flush(out, None, idle).await?;
            return Ok(keep_alive);
        }
        let mut sent: u64 = 0;
        loop {
            // Frames ready now join the pending write; otherwise write what
            // is pending before waiting for the next one.
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    self.flush(out, None, idle).await?;
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "response body failed");
                    // Whatever was sent, the client must not take it as whole.
                    let _ = self.flush(out, None, idle).await;
                    return Err(Close::ResponseBodyFailed);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            let len = data.len() as u64;
            if let Framing::Length(n) = framing {
                if sent + len > n {
                    tracing::debug!(peer = %self.peer, "response body longer than its length");
                    return Err(Close::ResponseTooLong);
                }
            }
            sent += len;
            if let Some(large) = encode::frame_data(framing == Framing::Chunked, &data, out) {
                self.flush(out, Some(large), idle).await?;
            }
        }
        if let Framing::Length(n) = framing {
            if sent != n {
                let _ = self.flush(out, None, idle).await;
                return Err(Close::ResponseTooShort);
            }
        }
        encode::end_body(framing == Framing::Chunked, out);
        self.flush(out, None, idle).await?;
        Ok(keep_alive)
    }

    /// Writes `pending` (then `extra`, when given) and clears `pending`. A
    /// client that takes none of it for `idle` is cut off.
    async fn flush(
        &mut self,
        pending: &mut Vec<u8>,
        extra: Option<(&[u8], &[u8])>,
        idle: Duration,
    ) -> Result<(), Close> {
        if pending.is_empty() && extra.is_none() {
            return Ok(());
        }
        let (a, b) = extra.unwrap_or((b"", b""));
        let mut bufs = [IoSlice::new(pending), IoSlice::new(a), IoSlice::new(b)];
        // A write the socket takes at once (the usual case) needs no timer.
        let result = {
            let mut write = std::pin::pin!(write_all(&mut self.write, &mut bufs));
            match write.as_mut().now_or_never() {
                Some(done) => Ok(done),
                None => tokio::time::timeout(idle, write).await,
            }
        };
        pending.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close::WriteError),
            Err(_) => Err(Close::ClientStoppedReading),
        }
    }
}

enum Next {
    Continue,
    Close(Close),
}

/// What waiting for the next request ended with.
enum Wait {
    /// A read finished: bytes, the client's end (0), or an error.
    Read(std::io::Result<usize>),
    /// The idle timer fired (perhaps for an earlier wait).
    TimerFired,
}

/// What reading a request head ended with.
// Unboxed: a head is read for every request, and boxing it would cost an
// allocation each time, as the `Result` this replaces did not.
#[allow(clippy::large_enum_variant)]
enum HeadRead {
    Head(parse::Head),
    Malformed(HeadError),
    /// The connection ended first.
    Closed,
    /// `server.header_read_timeout` passed first.
    TimedOut,
}

/// Reads until a whole request head is in `read.buf`.
async fn read_head(read: &mut ReadSide, max: usize) -> HeadRead {
    loop {
        match parse::parse(&mut read.buf, max) {
            Ok(Some(head)) => return HeadRead::Head(head),
            Err(e) => return HeadRead::Malformed(e),
            Ok(None) => {}
        }
        match read.fill().await {
            Ok(0) | Err(_) => return HeadRead::Closed,
            Ok(_) => {}
        }
    }
}

/// Reads and discards the rest of a request body the handler did not read,
/// when at most [`DRAIN_LIMIT`] bytes of it arrive within `deadline`. True
/// when the body ended and the connection can go on.
async fn drain_body(read: &mut ReadSide, decoder: &mut Decoder, deadline: Duration) -> bool {
    if decoder.remaining().is_some_and(|n| n > DRAIN_LIMIT) {
        return false;
    }
    let drain = async {
        let mut seen = 0u64;
        loop {
            match decoder.decode(&mut read.buf) {
                Ok(Step::Done) => return true,
                Ok(Step::Data(d)) => {
                    seen += d.len() as u64;
                    if seen > DRAIN_LIMIT {
                        return false;
                    }
                }
                Ok(Step::NeedMore) => match read.fill().await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                },
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(deadline, drain).await.unwrap_or(false)
}
