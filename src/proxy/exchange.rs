//! One request and its response on an upstream connection: the HTTP/1.1
//! client.
//!
//! The exchange runs in the request's own task: the request head is encoded
//! and written together with the start of its body, the response head is
//! parsed, and the response body is read from the connection as the client
//! side polls it. There is no connection task and no channel between the
//! request and its connection.
//!
//! A pooled connection the upstream closed in the meantime is noticed
//! before the request is written (a read that is not pending), and a
//! request whose pooled connection died before any of its body was sent is
//! sent again on a fresh connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;

use super::body::{BodyTooLarge, ForwardBody};
use super::connect::{Connector, Endpoint, UpstreamConn};
use super::headers::Forwarded;
use super::pool::Pool;
use super::upstream::UpstreamTarget;
use crate::ctx::X_REQUEST_ID;
use crate::http::body::BoxError;
use crate::http::fields::BadLength;
use crate::http::h1::decode::{Decoder, Step};
use crate::http::h1::encode::{self, FieldWriter, RequestFraming};
use crate::http::h1::parse::{
    self, InvalidResponse, ResponseFields, ResponseFraming, ResponseHead,
};
use crate::http::h1::poll_fill;
use crate::http::Reply;
use crate::metrics::UpstreamErrorKind;

/// Why an exchange failed.
pub enum SendError {
    /// No connection could be made: nothing was sent, and the request can
    /// go to another upstream.
    Connect(io::Error),
    /// The route's `max_body` tripped while the body streamed.
    BodyTooLarge,
    /// The client's body failed while it streamed: how.
    ClientBody(String),
    /// The exchange failed after the request (or part of it) went out.
    Exchange(ExchangeError),
}

impl SendError {
    /// The client's body failed (or passed `max_body`) while it streamed.
    fn body(e: &BoxError) -> SendError {
        if e.is::<BodyTooLarge>() {
            SendError::BodyTooLarge
        } else {
            SendError::ClientBody(format!("request body: {}", super::error::describe(&**e)))
        }
    }
}

/// An exchange with the upstream that failed once the request was on its
/// way.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct ExchangeError {
    pub kind: UpstreamErrorKind,
    pub detail: String,
}

impl ExchangeError {
    fn io(e: &io::Error, what: &str) -> ExchangeError {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WriteZero => UpstreamErrorKind::reset,
            _ => UpstreamErrorKind::other,
        };
        ExchangeError {
            kind,
            detail: format!("{what}: {e}"),
        }
    }

    fn other(kind: UpstreamErrorKind, detail: impl Into<String>) -> ExchangeError {
        ExchangeError {
            kind,
            detail: detail.into(),
        }
    }
}

impl Connector {
    /// Sends the request (`parts`, `body`, and the fields in `added`) on a
    /// pooled or new connection and reads the response head. The response
    /// body reads from the connection and gives it back to `pool` at its
    /// end; a `101` response carries the connection as an
    /// [`UpstreamUpgrade`] extension. The request is borrowed, so a
    /// connection that cannot be made leaves it for the next upstream.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        pool: &Arc<Pool>,
        parts: &http::request::Parts,
        body: &mut ForwardBody,
        added: &Added<'_>,
    ) -> Result<Reply, SendError> {
        let mut head = crate::http::h1::take_buf(256);
        let framing = encode_request_head(parts, added, &HttpBody::size_hint(body), &mut head);
        let result =
            std::pin::pin!(self.exchange(endpoint, pool, &parts.method, body, &head, framing))
                .await;
        crate::http::h1::give_buf(head);
        result
    }

    /// [`send`](Self::send), with the request head encoded.
    async fn exchange(
        &self,
        endpoint: &Endpoint,
        pool: &Arc<Pool>,
        method: &Method,
        body: &mut ForwardBody,
        head: &[u8],
        framing: RequestFraming,
    ) -> Result<Reply, SendError> {
        let retry_after_eof = framing == RequestFraming::None
            && matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            );
        loop {
            let (mut conn, reused) = match pool.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting (TLS included) needs far more state than an
                // exchange on a pooled connection, and is rare.
                None => match Box::pin(self.connect(endpoint)).await {
                    Ok(conn) => (conn, false),
                    Err(error) => return Err(SendError::Connect(error)),
                },
            };
            if reused && !conn.still_open() {
                continue;
            }
            let mut body_started = false;
            let written = write_request(&mut conn, head, body, framing, &mut body_started).await;
            let write_error = match written {
                Ok(()) => None,
                Err(Written::Body(e)) => return Err(SendError::body(&e)),
                Err(Written::Io(_)) if reused && !body_started => continue,
                // The upstream may have answered early and closed; its
                // answer, if any, is read below.
                Err(Written::Io(e)) => Some(e),
            };
            let fully_written = write_error.is_none();
            let failed = match (read_response_head(&mut conn).await, write_error) {
                (Ok(res), _) => {
                    return into_response(res, conn, pool, method, fully_written)
                        .map_err(SendError::Exchange);
                }
                (Err(ReadHead::Closed), _)
                    if reused && !body_started && (retry_after_eof || !fully_written) =>
                {
                    continue
                }
                (Err(_), Some(e)) => ExchangeError::io(&e, "writing the request"),
                (Err(ReadHead::Closed | ReadHead::Cut), None) => ExchangeError::other(
                    UpstreamErrorKind::reset,
                    "upstream closed the connection before a complete response head",
                ),
                (Err(ReadHead::Io(e)), None) => ExchangeError::io(&e, "reading the response"),
                (Err(ReadHead::Invalid(what)), None) => ExchangeError::other(
                    UpstreamErrorKind::other,
                    format!("invalid response from the upstream: {what}"),
                ),
            };
            return Err(SendError::Exchange(failed));
        }
    }
}

/// What the gateway sets on a request, written with the request's own
/// fields instead of being put into its parts first.
pub struct Added<'a> {
    /// Where the request goes on this upstream: its base path and the path.
    pub target: (&'a UpstreamTarget, &'a PathAndQuery),
    /// `Host`, first.
    pub host: &'a HeaderValue,
    pub request_id: &'a [u8],
    /// `X-Forwarded-*`, whose fields the map no longer holds.
    pub forwarded: &'a Forwarded,
}

/// `METHOD path HTTP/1.1`, `Host`, the headers, the fields in `added`, and
/// the body framing: the exact length when known, else chunked. The
/// request's own framing fields, `Host` and `X-Request-Id` are replaced.
pub(super) fn encode_request_head(
    parts: &http::request::Parts,
    added: &Added<'_>,
    hint: &SizeHint,
    dst: &mut Vec<u8>,
) -> RequestFraming {
    let (target, path) = added.target;
    let fields = |out: &mut FieldWriter<'_>| {
        out.field(b"host", added.host.as_bytes());
        for (name, value) in &parts.headers {
            if !super::policy::written_by_gateway(name) {
                out.field(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        out.field(X_REQUEST_ID.as_str().as_bytes(), added.request_id);
        for (name, value) in added.forwarded.fields() {
            out.field(name.as_bytes(), value.as_bytes());
        }
    };
    encode::request_head(
        &parts.method,
        |dst| target.write_target(path, dst),
        fields,
        hint,
        dst,
    )
}

enum Written {
    /// The client's body failed (or passed `max_body`).
    Body(BoxError),
    Io(io::Error),
}

/// Writes the head and streams the body: frames that are ready join the
/// pending write, so a small request goes out in one write.
async fn write_request(
    conn: &mut UpstreamConn,
    head: &[u8],
    body: &mut ForwardBody,
    framing: RequestFraming,
    body_started: &mut bool,
) -> Result<(), Written> {
    if framing == RequestFraming::None {
        return conn
            .write(&mut Vec::new(), &[head])
            .await
            .map_err(Written::Io);
    }
    let mut out = crate::http::h1::take_buf(head.len() + 64);
    out.extend_from_slice(head);
    let written = write_body(conn, &mut out, body, framing, body_started).await;
    crate::http::h1::give_buf(out);
    written
}

/// The body part of [`write_request`], after the head in `out`.
async fn write_body(
    conn: &mut UpstreamConn,
    out: &mut Vec<u8>,
    body: &mut ForwardBody,
    framing: RequestFraming,
    body_started: &mut bool,
) -> Result<(), Written> {
    let chunked = framing == RequestFraming::Chunked;
    loop {
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                conn.write(out, &[]).await.map_err(Written::Io)?;
                body.frame().await
            }
        };
        *body_started = true;
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(Written::Body(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
        };
        if let Some((large, tail)) = encode::frame_data(chunked, &data, out) {
            conn.write(out, &[large, tail]).await.map_err(Written::Io)?;
        }
    }
    encode::end_body(chunked, out);
    conn.write(out, &[]).await.map_err(Written::Io)
}

enum ReadHead {
    /// The connection ended before a byte of a response came.
    Closed,
    /// The connection ended within a response head.
    Cut,
    Io(io::Error),
    Invalid(InvalidResponse),
}

/// Reads the final response head, skipping interim (1xx other than 101)
/// responses.
async fn read_response_head(conn: &mut UpstreamConn) -> Result<ResponseHead, ReadHead> {
    let mut nothing_read = conn.buf.is_empty();
    loop {
        match parse::parse_response(&mut conn.buf).map_err(ReadHead::Invalid)? {
            Some(head)
                if head.status.is_informational()
                    && head.status != StatusCode::SWITCHING_PROTOCOLS =>
            {
                continue
            }
            Some(head) => return Ok(head),
            None => {}
        }
        match std::future::poll_fn(|cx| poll_fill(&mut conn.io, &mut conn.buf, cx)).await {
            Ok(0) if nothing_read => return Err(ReadHead::Closed),
            Ok(0) => return Err(ReadHead::Cut),
            Ok(_) => nothing_read = false,
            Err(e) => return Err(ReadHead::Io(e)),
        }
    }
}

/// The response with its body reading from `conn` (RFC 9112 §6.3 decides
/// how long it is), or the connection as an upgrade for a `101`.
fn into_response(
    head: ResponseHead,
    conn: UpstreamConn,
    pool: &Arc<Pool>,
    method: &Method,
    request_written: bool,
) -> Result<Reply, ExchangeError> {
    let mut reusable = request_written && head.keeps_alive();
    let framing = head.framing(method);
    let ResponseHead {
        status,
        version,
        fields,
        ..
    } = head;
    let (headers, raw) = match fields {
        // The map holds only what the gateway adds, usually nothing (the
        // request id is written on its own): an empty map allocates
        // nothing until something is added.
        ResponseFields::Raw(raw) => (HeaderMap::new(), Some(raw)),
        ResponseFields::Map(map) => (map, None),
    };
    let decoder = if status == StatusCode::SWITCHING_PROTOCOLS {
        let mut res = Response::new(crate::http::body::empty());
        *res.status_mut() = status;
        *res.headers_mut() = headers;
        res.extensions_mut()
            .insert(UpstreamUpgrade(Arc::new(Mutex::new(Some(conn)))));
        return Ok(Reply::new(res));
    } else {
        match framing.map_err(|BadLength| {
            ExchangeError::other(
                UpstreamErrorKind::other,
                "invalid or conflicting upstream Content-Length",
            )
        })? {
            ResponseFraming::Empty => Decoder::Done,
            ResponseFraming::Length(n) => Decoder::length(n),
            ResponseFraming::Chunked => Decoder::chunked(parse::MAX_RESPONSE_HEAD),
            ResponseFraming::UntilClose => {
                reusable = false;
                Decoder::UntilClose
            }
        }
    };
    let body = UpstreamBody {
        conn: Some(conn),
        decoder,
        pool: pool.clone(),
        reusable,
    };
    let mut res = Response::new(if body.decoder.is_done() {
        drop(body);
        crate::http::body::empty()
    } else {
        body.boxed_unsync()
    });
    *res.status_mut() = status;
    *res.version_mut() = version;
    *res.headers_mut() = headers;
    Ok(match raw {
        Some(raw) => Reply::with_received(res, raw),
        None => Reply::new(res),
    })
}

/// The upstream side of an upgrade, in the `101` response's extensions.
/// (Extensions must be `Clone`; the first to take the connection has it.)
#[derive(Clone)]
pub struct UpstreamUpgrade(Arc<Mutex<Option<UpstreamConn>>>);

impl UpstreamUpgrade {
    pub fn take(&self) -> Option<UpstreamConn> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// An upstream response body read from its connection, which goes back to
/// the pool once the body has been read to its end (and the upstream allows
/// reuse). A body dropped before its end closes the connection: the rest of
/// the response is still on the wire.
pub struct UpstreamBody {
    conn: Option<UpstreamConn>,
    decoder: Decoder,
    pool: Arc<Pool>,
    reusable: bool,
}

#[derive(Debug, thiserror::Error)]
enum UpstreamBodyError {
    #[error("upstream response body: {0}")]
    Decode(#[from] crate::http::h1::decode::DecodeError),
    #[error("upstream closed the connection before the response body ended")]
    Incomplete,
    #[error("upstream response body: {0}")]
    Io(#[from] io::Error),
}

impl UpstreamBody {
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let Some(conn) = self.conn.take() {
            if self.reusable {
                self.pool.give_back(conn);
            }
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match this.decoder.decode(&mut conn.buf) {
                Ok(Step::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(UpstreamBodyError::from(e).into())));
                }
            }
            match poll_fill(&mut conn.io, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.decoder == Decoder::UntilClose => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(UpstreamBodyError::Incomplete.into())));
                }
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(UpstreamBodyError::from(e).into())));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::RequestBody;
    use crate::proxy::connect::UpstreamIo;
    use bytes::BytesMut;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: up\r\n\r\n";

    fn connector() -> Connector {
        Connector {
            connect_timeout: Duration::from_millis(50),
            tls: None,
        }
    }

    /// An endpoint nothing listens on: a test that connects fails.
    fn nowhere() -> Endpoint {
        Endpoint {
            addr: "127.0.0.1:1".to_owned(),
            tls_name: None,
        }
    }

    /// A pooled in-memory connection, and the upstream's end of it.
    fn pooled(pool: &Pool) -> DuplexStream {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        pool.give_back(UpstreamConn {
            io: UpstreamIo::Mem(ours),
            buf: BytesMut::new(),
        });
        theirs
    }

    /// Reads one request head from the upstream's end.
    async fn read_request(upstream: &mut DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            if upstream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            got.push(byte[0]);
        }
        got
    }

    /// Sends a GET on `pool` and reads the response body whole.
    async fn get(pool: &Arc<Pool>) -> Result<(StatusCode, Bytes), String> {
        let mut body = ForwardBody::new(RequestBody::empty(), None);
        let reply = connector()
            .exchange(
                &nowhere(),
                pool,
                &Method::GET,
                &mut body,
                GET,
                RequestFraming::None,
            )
            .await
            .map_err(|e| match e {
                SendError::Connect(e) => format!("connect: {e}"),
                SendError::Exchange(e) => e.detail,
                SendError::BodyTooLarge | SendError::ClientBody(_) => "body".to_owned(),
            })?;
        let status = reply.status();
        let body = reply.into_response().into_body();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, bytes))
    }

    #[tokio::test]
    async fn a_connection_is_reused_after_a_complete_response() {
        let pool = Pool::new(Duration::from_secs(60));
        let mut upstream = pooled(&pool);
        let serve = tokio::spawn(async move {
            for body in ["one", "two"] {
                assert_eq!(read_request(&mut upstream).await, GET);
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{body}");
                upstream.write_all(answer.as_bytes()).await.unwrap();
            }
            upstream
        });
        assert_eq!(get(&pool).await.unwrap().1, "one");
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(get(&pool).await.unwrap().1, "two");
        assert_eq!(pool.idle_count(), 1);
        drop(serve.await.unwrap());
    }

    #[tokio::test]
    async fn a_request_whose_pooled_connection_closed_unanswered_is_sent_again() {
        let pool = Pool::new(Duration::from_secs(60));
        // Given back second, so taken first: it takes the request and
        // closes without a byte of answer.
        let mut fresh = pooled(&pool);
        let mut stale = pooled(&pool);
        let closing = tokio::spawn(async move {
            assert_eq!(read_request(&mut stale).await, GET);
        });
        let serve = tokio::spawn(async move {
            assert_eq!(read_request(&mut fresh).await, GET);
            fresh
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            fresh
        });
        let (status, body) = get(&pool).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        closing.await.unwrap();
        drop(serve.await.unwrap());
    }

    #[tokio::test]
    async fn a_connection_cut_short_or_desynced_is_not_given_back() {
        // Extra bytes after the response: the next response would be read
        // from the middle of something else.
        let pool = Pool::new(Duration::from_secs(60));
        let mut upstream = pooled(&pool);
        let serve = tokio::spawn(async move {
            read_request(&mut upstream).await;
            upstream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
                .await
                .unwrap();
            upstream
        });
        assert_eq!(get(&pool).await.unwrap().1, "ok");
        assert_eq!(pool.idle_count(), 0);
        drop(serve.await.unwrap());

        // A body cut short by the end of the connection.
        let pool = Pool::new(Duration::from_secs(60));
        let mut upstream = pooled(&pool);
        tokio::spawn(async move {
            read_request(&mut upstream).await;
            upstream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
                .await
                .unwrap();
        });
        assert!(get(&pool).await.is_err());
        assert_eq!(pool.idle_count(), 0);
    }
}
