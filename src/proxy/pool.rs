//! HTTP/1.1 connections to upstreams, pooled per upstream, and the client
//! that runs an exchange on one.
//!
//! The exchange runs in the request's own task: the request head is encoded
//! and written together with the start of its body, the response head is
//! parsed with httparse, and the response body is read from the connection
//! as the client side polls it. There is no connection task and no channel
//! between the request and its connection.
//!
//! A connection is taken from its upstream's idle stack (most recently used
//! first), used for one exchange, and given back as soon as the response
//! body has been read to its end and the upstream allows reuse. A pooled
//! connection the upstream closed in the meantime is noticed before the
//! request is written (a read that is not pending), and a request whose
//! pooled connection died before any of its body was sent is sent again on
//! a fresh connection.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::time::coarse::monotonic_ms;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::{BodyTooLarge, ForwardBody};
use super::headers::Forwarded;
use super::upstream::UpstreamTarget;
use crate::ctx::X_REQUEST_ID;
use crate::http::body::BoxError;
use crate::http::h1::decode::{Decoder, Step};
use crate::http::h1::{poll_fill, write_all, HeadFacts, RawFields, Rewind};
use crate::http::Reply;
use crate::metrics::UpstreamErrorKind;

/// Idle connections kept per upstream and worker at most.
pub const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// The largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Header fields a response head may carry.
const MAX_RESPONSE_HEADERS: usize = 256;
/// A request body frame up to this size joins the pending write.
const COALESCE: usize = 16 * 1024;

/// The idle connections to one upstream, one [`Pool`] per worker thread (and
/// one for every other thread), so a connection is only ever used by the
/// thread whose runtime drives it.
pub struct Pools(Box<[Arc<Pool>]>);

impl Pools {
    pub fn new(idle_timeout: Duration) -> Pools {
        Pools(
            (0..crate::worker::slots())
                .map(|_| Pool::new(idle_timeout))
                .collect(),
        )
    }

    /// The pool of the current worker thread.
    pub fn current(&self) -> &Arc<Pool> {
        &self.0[crate::worker::slot()]
    }

    pub fn reap(&self) {
        for pool in self.0.iter() {
            pool.reap();
        }
    }
}

/// The idle connections to one upstream.
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    idle_timeout_ms: u64,
}

struct Idle {
    conn: UpstreamConn,
    /// [`monotonic_ms`] when it was given back.
    since: u64,
}

impl Pool {
    pub fn new(idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            idle_timeout_ms: idle_timeout.as_millis() as u64,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkout(&self) -> Option<UpstreamConn> {
        let now = monotonic_ms();
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if now - c.since < self.idle_timeout_ms {
                return Some(c.conn);
            }
        }
        None
    }

    fn give_back(&self, conn: UpstreamConn) {
        if !conn.buf.is_empty() {
            // Bytes after the response: not a connection to trust again.
            return;
        }
        let since = monotonic_ms();
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push(Idle { conn, since });
        }
    }

    /// Drops idle connections older than the idle timeout (closing them).
    pub fn reap(&self) {
        let now = monotonic_ms();
        self.lock().retain(|c| now - c.since < self.idle_timeout_ms);
    }

    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

/// Where and how to connect to one upstream.
pub struct Endpoint {
    /// `host:port` for `TcpStream::connect`.
    pub addr: String,
    /// For TLS (`https://` upstreams): the name to verify.
    pub tls_name: Option<ServerName<'static>>,
}

/// Why an exchange failed.
pub enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(io::Error),
    /// The exchange failed after the request (or part of it) went out.
    Exchange(ExchangeError),
}

/// An exchange that failed once the request was on its way.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct ExchangeError {
    pub kind: UpstreamErrorKind,
    /// The route's `max_body` tripped while the body streamed.
    pub body_too_large: bool,
    /// The client's body failed while it streamed.
    pub client_body: bool,
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
            body_too_large: false,
            client_body: false,
            detail: format!("{what}: {e}"),
        }
    }

    fn other(kind: UpstreamErrorKind, detail: impl Into<String>) -> ExchangeError {
        ExchangeError {
            kind,
            body_too_large: false,
            client_body: false,
            detail: detail.into(),
        }
    }

    fn body(e: BoxError) -> ExchangeError {
        let too_large = e.is::<BodyTooLarge>();
        ExchangeError {
            kind: UpstreamErrorKind::other,
            body_too_large: too_large,
            client_body: !too_large,
            detail: format!("request body: {}", super::error::describe(&*e)),
        }
    }
}

/// How the request body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqFraming {
    None,
    Length,
    Chunked,
}

/// Makes connections and runs exchanges.
pub struct Connector {
    pub connect_timeout: Duration,
    /// Set when some upstream is `https://`.
    pub tls: Option<TlsConnector>,
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
        framing: ReqFraming,
    ) -> Result<Reply, SendError> {
        let retry_after_eof = framing == ReqFraming::None
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
                Err(Written::Body(e)) => return Err(SendError::Exchange(ExchangeError::body(e))),
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
                (Err(ReadHead::Eof { nothing_read: true }), _)
                    if reused && !body_started && (retry_after_eof || !fully_written) =>
                {
                    continue
                }
                (Err(_), Some(e)) => ExchangeError::io(&e, "writing the request"),
                (Err(ReadHead::Eof { .. }), None) => ExchangeError::other(
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

    async fn connect(&self, endpoint: &Endpoint) -> io::Result<UpstreamConn> {
        let connecting = async {
            let tcp = TcpStream::connect(endpoint.addr.as_str()).await?;
            tcp.set_nodelay(true)?;
            let io = match (&endpoint.tls_name, &self.tls) {
                (Some(name), Some(tls)) => {
                    UpstreamIo::Tls(Box::new(tls.connect(name.clone(), tcp).await?))
                }
                (Some(_), None) => {
                    return Err(io::Error::other("https upstream without TLS configuration"));
                }
                (None, _) => UpstreamIo::Plain(tcp),
            };
            Ok(UpstreamConn {
                io,
                buf: BytesMut::new(),
            })
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(res) => res,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
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
) -> ReqFraming {
    fn field(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        dst.extend_from_slice(name);
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(parts.method.as_str().as_bytes());
    dst.push(b' ');
    let (target, path) = added.target;
    target.write_target(path, dst);
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    field(dst, b"host", added.host.as_bytes());
    for (name, value) in &parts.headers {
        if super::policy::written_by_gateway(name) {
            continue;
        }
        field(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    field(dst, X_REQUEST_ID.as_str().as_bytes(), added.request_id);
    for (name, value) in added.forwarded.fields() {
        field(dst, name.as_bytes(), value.as_bytes());
    }
    let framing = match hint.exact() {
        Some(0) => {
            // A method that usually carries a body says it has none.
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                dst.extend_from_slice(b"content-length: 0\r\n");
            }
            ReqFraming::None
        }
        Some(n) => {
            dst.extend_from_slice(b"content-length: ");
            dst.extend_from_slice(n.to_string().as_bytes());
            dst.extend_from_slice(b"\r\n");
            ReqFraming::Length
        }
        None => {
            dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
            ReqFraming::Chunked
        }
    };
    dst.extend_from_slice(b"\r\n");
    framing
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
    framing: ReqFraming,
    body_started: &mut bool,
) -> Result<(), Written> {
    if framing == ReqFraming::None {
        return conn.write(&mut Vec::new(), head).await.map_err(Written::Io);
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
    framing: ReqFraming,
    body_started: &mut bool,
) -> Result<(), Written> {
    loop {
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                conn.write(out, b"").await.map_err(Written::Io)?;
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
        if framing == ReqFraming::Chunked {
            let _ = std::io::Write::write_fmt(out, format_args!("{:x}\r\n", data.len()));
        }
        if data.len() <= COALESCE {
            out.extend_from_slice(&data);
            if framing == ReqFraming::Chunked {
                out.extend_from_slice(b"\r\n");
            }
        } else {
            conn.write(out, &data).await.map_err(Written::Io)?;
            if framing == ReqFraming::Chunked {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if framing == ReqFraming::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    conn.write(out, b"").await.map_err(Written::Io)
}

/// A parsed response head.
struct ResponseHead {
    facts: HeadFacts,
    status: StatusCode,
    version: Version,
    fields: Fields,
}

/// A response head's fields: kept as received for a plain response, in a
/// header map when something must edit them (an upgrade, or a
/// `Connection` that names further hop-by-hop fields).
enum Fields {
    Raw(Box<RawFields>),
    Map(HeaderMap),
}

enum ReadHead {
    /// The connection ended; `nothing_read`: not a byte of a response came.
    Eof {
        nothing_read: bool,
    },
    Io(io::Error),
    Invalid(&'static str),
}

/// Reads the final response head, skipping interim (1xx other than 101)
/// responses.
async fn read_response_head(conn: &mut UpstreamConn) -> Result<ResponseHead, ReadHead> {
    let mut nothing_read = conn.buf.is_empty();
    loop {
        match parse_response_head(&mut conn.buf)? {
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
            Ok(0) => return Err(ReadHead::Eof { nothing_read }),
            Ok(_) => nothing_read = false,
            Err(e) => return Err(ReadHead::Io(e)),
        }
    }
}

fn parse_response_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, ReadHead> {
    // Uninitialised: initialising every field on each parse costs more
    // than the parse of a typical head.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(ReadHead::Invalid("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ReadHead::Invalid("malformed response head")),
    };
    let version = match res.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ReadHead::Invalid("bad status code"))?;
    let base = buf.as_ptr() as usize;
    // Where each field lies in `buf`, so the fields can share the head's
    // bytes once they are split off.
    let mut facts = HeadFacts::default();
    let ranges: crate::http::h1::FieldRanges = res
        .headers
        .iter()
        .map(|f| {
            let (name, value) = (f.name.as_bytes(), f.value);
            facts.note(name, value);
            (
                name.as_ptr() as usize - base,
                name.len(),
                value.as_ptr() as usize - base,
                value.len(),
            )
        })
        .collect();
    let bytes: Bytes = buf.split_to(len).freeze();
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    // Hop-by-hop fields are not forwarded (RFC 9110 §7.6.1), and what they
    // say about this connection is in `facts`: they are left out here
    // rather than removed later.
    if !upgrade && !facts.names_others && bytes.len() <= RawFields::MAX_HEAD {
        // With `Transfer-Encoding`, a `Content-Length` is wrong (RFC 9112
        // §6.3) and is not forwarded.
        let length = if facts.transfer_encoding {
            None
        } else {
            facts.content_length().ok().flatten()
        };
        let mut raw = RawFields::new(bytes, length);
        for &(name_at, name_len, value_at, value_len) in &ranges {
            let name = &raw.head()[name_at..name_at + name_len];
            // The gateway answers with its own request id.
            if super::headers::is_hop_by_hop(name)
                || name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes())
                || (facts.transfer_encoding && name.eq_ignore_ascii_case(b"content-length"))
            {
                continue;
            }
            raw.push((name_at, name_len), (value_at, value_len));
        }
        return Ok(Some(ResponseHead {
            facts,
            status,
            version,
            fields: Fields::Raw(raw),
        }));
    }
    // Room for what the gateway adds (request id, cookies): growing
    // the map later rehashes every field.
    let mut headers = crate::http::h1::take_map(ranges.len() + 8);
    for &(name_at, name_len, value_at, value_len) in &ranges {
        let raw_name = &bytes[name_at..name_at + name_len];
        // A `101` keeps the hop-by-hop fields for the upgrade, and
        // `Connection` stays when it names further fields, for
        // `strip_hop_by_hop` to remove. The request id is the gateway's, as
        // above.
        if (!upgrade
            && super::headers::is_hop_by_hop(raw_name)
            && !(facts.names_others && raw_name.eq_ignore_ascii_case(b"connection")))
            || raw_name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes())
        {
            continue;
        }
        let name =
            HeaderName::from_bytes(raw_name).map_err(|_| ReadHead::Invalid("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(value_at..value_at + value_len))
            .map_err(|_| ReadHead::Invalid("bad header value"))?;
        headers.append(name, value);
    }
    if facts.transfer_encoding {
        headers.remove(header::CONTENT_LENGTH);
    }
    Ok(Some(ResponseHead {
        facts,
        status,
        version,
        fields: Fields::Map(headers),
    }))
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
    let ResponseHead {
        facts,
        status,
        version,
        fields,
    } = head;
    let (headers, raw) = match fields {
        // The map holds only what the gateway adds, usually nothing (the
        // request id is written on its own): an empty map allocates
        // nothing until something is added.
        Fields::Raw(raw) => (HeaderMap::new(), Some(raw)),
        Fields::Map(map) => (map, None),
    };
    let mut reusable = request_written && keeps_alive(version, &facts);
    let decoder = if status == StatusCode::SWITCHING_PROTOCOLS {
        let mut res = Response::new(crate::http::body::empty());
        *res.status_mut() = status;
        *res.headers_mut() = headers;
        res.extensions_mut()
            .insert(UpstreamUpgrade(Arc::new(Mutex::new(Some(conn)))));
        return Ok(Reply::new(res));
    } else if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Decoder::Done
    } else if facts.transfer_encoding {
        // Its `Content-Length` was left out as the head was parsed.
        if facts.content_length() != Ok(None) {
            reusable = false;
        }
        if facts.chunked_last {
            Decoder::chunked(MAX_RESPONSE_HEAD)
        } else {
            reusable = false;
            Decoder::UntilClose
        }
    } else if let Some(length) = facts.content_length().map_err(|()| {
        ExchangeError::other(
            UpstreamErrorKind::other,
            "invalid or conflicting upstream Content-Length",
        )
    })? {
        Decoder::length(length)
    } else {
        reusable = false;
        Decoder::UntilClose
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
    Ok(Reply {
        response: res,
        received: raw,
        request_id: None,
    })
}

/// Whether the upstream lets the connection be used again.
fn keeps_alive(version: Version, facts: &HeadFacts) -> bool {
    !facts.close && (version == Version::HTTP_11 || facts.keep_alive)
}

/// A connection to an upstream, and what was read from it but not yet used.
pub struct UpstreamConn {
    io: UpstreamIo,
    buf: BytesMut,
}

impl UpstreamConn {
    /// False when a pooled connection has been closed (or has sent
    /// something unasked) while it waited: a read that does not wait.
    fn still_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        matches!(
            poll_fill(&mut self.io, &mut self.buf, &mut cx),
            Poll::Pending
        )
    }

    /// The connection as a stream for a tunnel, with what was read past the
    /// response head read first.
    pub(crate) fn into_stream(self) -> Rewind<UpstreamIo> {
        Rewind::new(self.buf.freeze(), self.io)
    }

    /// Writes `pending` then `extra`, and clears `pending`.
    async fn write(&mut self, pending: &mut Vec<u8>, extra: &[u8]) -> io::Result<()> {
        let mut bufs = [IoSlice::new(pending), IoSlice::new(extra)];
        let res = write_all(&mut self.io, &mut bufs).await;
        pending.clear();
        res
    }
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

/// A plain or TLS connection to an upstream.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
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

/// Parses `data` as the response heads an upstream sends on one connection;
/// returns how many were read. What the `http1_responses` fuzz target drives.
#[doc(hidden)]
pub fn parse_response_heads(data: &[u8]) -> usize {
    let mut buf = BytesMut::from(data);
    let mut heads = 0;
    while let Ok(Some(head)) = parse_response_head(&mut buf) {
        assert!(head.status.as_u16() >= 100);
        if let Fields::Raw(raw) = head.fields {
            // Fields kept as received are valid for a header map too, so
            // an HTTP/2 client loses none of them.
            let count = raw.iter().count();
            assert!(raw.iter().all(|(name, value, _)| {
                HeaderName::from_bytes(name).is_ok() && HeaderValue::from_bytes(value).is_ok()
            }));
            assert_eq!(raw.into_map(HeaderMap::new()).len(), count);
        }
        heads += 1;
    }
    heads
}
