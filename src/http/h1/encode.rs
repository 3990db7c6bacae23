//! Message heads and body framing, both roles: the server's response heads,
//! the upstream client's request heads, and the body writer both share.

use std::cell::RefCell;
use std::time::SystemTime;

use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};
use http_body::SizeHint;

use crate::ctx::X_REQUEST_ID;
use crate::http::fields::{content_length, elements};
use crate::http::h1::RawFields;

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body is sent (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client, length unknown: the body ends when the connection does.
    Close,
}

/// What the writer needs to know about the request being answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    pub(crate) version: Version,
    pub(crate) head_request: bool,
}

/// What happens to the response's own `Content-Length` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    /// Sent as they are.
    Keep,
    /// Left out.
    Drop,
    /// Left out; this length is sent instead.
    Write(u64),
}

/// A response's fields, in the order they are written.
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    /// An upstream's, as they arrived (written before `map`).
    pub(crate) received: Option<&'a RawFields>,
    /// An upstream's, folded into `map`: the case `map`'s names are written
    /// in, when they arrived there.
    pub(crate) cased: Option<&'a RawFields>,
    /// The response's header map.
    pub(crate) map: &'a HeaderMap,
    /// `X-Request-Id`, in place of any in `map`.
    pub(crate) request_id: Option<&'a [u8]>,
}

/// Decides the framing of a response and writes its head to `dst`, with the
/// framing and connection fields that decision calls for (the response's
/// own `Transfer-Encoding`, and its `Connection` unless it is a `101`, are
/// never copied). `keep_alive` comes in as what the request and the server
/// allow and goes out as what the response allows.
pub(crate) fn head(
    status: StatusCode,
    fields: Fields<'_>,
    hint: &SizeHint,
    exchange: Exchange,
    keep_alive: &mut bool,
    dst: &mut Vec<u8>,
) -> Framing {
    let Fields {
        received,
        cased,
        map: headers,
        request_id,
    } = fields;
    let (framing, length) = framing(status, received, headers, hint, exchange);
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    if framing == Framing::Close {
        *keep_alive = false;
    }

    dst.extend_from_slice(if exchange.version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    dst.extend_from_slice(b"\r\n");
    let mut has_date = false;
    if let Some(received) = received {
        has_date = received.has_date();
        for (name, value, is_length) in received.iter() {
            if !is_length || length == Length::Keep {
                field(dst, name, value);
            }
        }
    }
    for (name, value) in headers.iter() {
        if name == header::CONNECTION && !upgrade {
            // Not copied; a `close` in it closes this connection.
            if elements(value.as_bytes()).any(|e| e.eq_ignore_ascii_case(b"close")) {
                *keep_alive = false;
            }
            continue;
        }
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && length != Length::Keep)
            || (request_id.is_some() && name == X_REQUEST_ID)
        {
            continue;
        }
        has_date |= name == header::DATE;
        let name = name.as_str();
        let name = cased
            .and_then(|c| c.case_of(name))
            .unwrap_or(name.as_bytes());
        field(dst, name, value.as_bytes());
    }
    if let Some(id) = request_id {
        field(dst, X_REQUEST_ID.as_str().as_bytes(), id);
    }
    if let Length::Write(n) = length {
        let mut digits = itoa::Buffer::new();
        field(dst, b"content-length", digits.format(n).as_bytes());
    }
    if framing == Framing::Chunked {
        field(dst, b"transfer-encoding", b"chunked");
    }
    if !upgrade {
        if !*keep_alive {
            field(dst, b"connection", b"close");
        } else if exchange.version == Version::HTTP_10 {
            field(dst, b"connection", b"keep-alive");
        }
    }
    if !has_date {
        write_date(dst);
    }
    dst.extend_from_slice(b"\r\n");
    framing
}

fn field(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

fn framing(
    status: StatusCode,
    received: Option<&RawFields>,
    headers: &HeaderMap,
    hint: &SizeHint,
    exchange: Exchange,
) -> (Framing, Length) {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        return (Framing::None, Length::Drop);
    }
    if exchange.head_request || status == StatusCode::NOT_MODIFIED {
        // The length of what a GET would have sent, when known, stays.
        let declared = headers.contains_key(header::CONTENT_LENGTH)
            || received.is_some_and(RawFields::has_content_length);
        if status != StatusCode::NOT_MODIFIED && !declared {
            if let Some(n) = hint.exact().filter(|n| *n > 0) {
                return (Framing::None, Length::Write(n));
            }
        }
        return (Framing::None, Length::Keep);
    }
    if let Some(n) = hint.exact() {
        return (Framing::Length(n), Length::Write(n));
    }
    let declared = match received.and_then(RawFields::content_length) {
        Some(n) => Some(n),
        None => content_length(headers).ok().flatten(),
    };
    match declared {
        Some(n) => (Framing::Length(n), Length::Keep),
        None if exchange.version == Version::HTTP_10 => (Framing::Close, Length::Drop),
        None => (Framing::Chunked, Length::Drop),
    }
}

/// A `Date` field, its value formatted once per second per thread.
fn write_date(dst: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            cached.1 = httpdate::fmt_http_date(now);
            cached.0 = secs;
        }
        field(dst, b"date", cached.1.as_bytes());
    })
}

/// The size line of a chunk: hex length and CRLF.
pub(crate) fn chunk_size_line(len: usize, dst: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(dst, "{len:x}\r\n");
}

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    None,
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Where a request head's caller writes its fields, one `name: value` line
/// at a time.
pub(crate) struct FieldWriter<'a>(&'a mut Vec<u8>);

impl FieldWriter<'_> {
    pub(crate) fn field(&mut self, name: &[u8], value: &[u8]) {
        field(self.0, name, value);
    }
}

/// Writes a request head to `dst`: `METHOD target HTTP/1.1` (`target`
/// writes the target), the fields `fields` writes, in order, and the body
/// framing: the exact length when `hint` knows it, else chunked. `fields`
/// must write no framing field of its own. (Callbacks rather than an
/// iterator of fields: a chain of filtered iterators cost more than the
/// rest of the encoding.)
pub(crate) fn request_head(
    method: &Method,
    target: impl FnOnce(&mut Vec<u8>),
    fields: impl FnOnce(&mut FieldWriter<'_>),
    hint: &SizeHint,
    dst: &mut Vec<u8>,
) -> RequestFraming {
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    target(dst);
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    fields(&mut FieldWriter(dst));
    let framing = match hint.exact() {
        Some(0) => {
            // A method that usually carries a body says it has none.
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                dst.extend_from_slice(b"content-length: 0\r\n");
            }
            RequestFraming::None
        }
        Some(n) => {
            let mut digits = itoa::Buffer::new();
            field(dst, b"content-length", digits.format(n).as_bytes());
            RequestFraming::Length
        }
        None => {
            dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
            RequestFraming::Chunked
        }
    };
    dst.extend_from_slice(b"\r\n");
    framing
}

/// A body frame of this size or less joins the pending write; a larger one
/// is written from where it is, after what is pending.
pub(crate) const COALESCE: usize = 16 * 1024;

/// Frames one non-empty body chunk `data`, of either role, `chunked` or
/// not. A small one (see [`COALESCE`]) joins `out` whole and `None` is
/// returned; for a large one only its size line (when chunked) joins `out`,
/// and the caller writes `out`, then the returned chunk, then the returned
/// tail (its CRLF when chunked), without copying the chunk.
pub(crate) fn frame_data<'a>(
    chunked: bool,
    data: &'a [u8],
    out: &mut Vec<u8>,
) -> Option<(&'a [u8], &'static [u8])> {
    if chunked {
        chunk_size_line(data.len(), out);
    }
    let tail: &'static [u8] = if chunked { b"\r\n" } else { b"" };
    if data.len() <= COALESCE {
        out.extend_from_slice(data);
        out.extend_from_slice(tail);
        None
    } else {
        Some((data, tail))
    }
}

/// The end of a body: the last chunk and an empty trailer when chunked.
pub(crate) fn end_body(chunked: bool, out: &mut Vec<u8>) {
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    fn encode(
        status: u16,
        headers: &[(&str, &str)],
        hint: SizeHint,
        version: Version,
        head_request: bool,
    ) -> (Framing, bool, String) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut keep_alive = true;
        let mut out = Vec::new();
        let framing = head(
            StatusCode::from_u16(status).unwrap(),
            Fields {
                received: None,
                cased: None,
                map: &map,
                request_id: None,
            },
            &hint,
            Exchange {
                version,
                head_request,
            },
            &mut keep_alive,
            &mut out,
        );
        (framing, keep_alive, String::from_utf8(out).unwrap())
    }

    #[test]
    fn exact_length_wins_over_headers() {
        let (f, ka, text) = encode(
            200,
            &[("content-length", "99"), ("transfer-encoding", "chunked")],
            SizeHint::with_exact(5),
            Version::HTTP_11,
            false,
        );
        assert_eq!(f, Framing::Length(5));
        assert!(ka);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("content-length: 5\r\n"));
        assert!(!text.contains("transfer-encoding"));
        assert!(text.contains("date: "));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn unknown_length_is_chunked_or_closes() {
        let (f, ka, text) = encode(200, &[], SizeHint::new(), Version::HTTP_11, false);
        assert_eq!(f, Framing::Chunked);
        assert!(ka);
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        let (f, ka, text) = encode(200, &[], SizeHint::new(), Version::HTTP_10, false);
        assert_eq!(f, Framing::Close);
        assert!(!ka);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(text.contains("connection: close\r\n"));
        let (f, _, _) = encode(
            200,
            &[("content-length", "7")],
            SizeHint::new(),
            Version::HTTP_11,
            false,
        );
        assert_eq!(f, Framing::Length(7));
    }

    #[test]
    fn bodiless_responses() {
        let (f, _, text) = encode(
            204,
            &[("content-length", "3")],
            SizeHint::with_exact(0),
            Version::HTTP_11,
            false,
        );
        assert_eq!(f, Framing::None);
        assert!(!text.contains("content-length"));
        let (f, _, text) = encode(200, &[], SizeHint::with_exact(12), Version::HTTP_11, true);
        assert_eq!(f, Framing::None);
        assert!(text.contains("content-length: 12\r\n"));
        let (f, _, text) = encode(
            304,
            &[("content-length", "40")],
            SizeHint::new(),
            Version::HTTP_11,
            false,
        );
        assert_eq!(f, Framing::None);
        assert!(text.contains("content-length: 40\r\n"));
    }

    #[test]
    fn connection_header_follows_the_decision() {
        let (_, ka, text) = encode(
            413,
            &[("connection", "close")],
            SizeHint::with_exact(2),
            Version::HTTP_11,
            false,
        );
        assert!(!ka);
        assert_eq!(text.matches("connection: close").count(), 1);
        let (_, ka, text) = encode(200, &[], SizeHint::with_exact(2), Version::HTTP_10, false);
        assert!(ka);
        assert!(text.contains("connection: keep-alive\r\n"));
        let (f, _, text) = encode(
            101,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            SizeHint::with_exact(0),
            Version::HTTP_11,
            false,
        );
        assert_eq!(f, Framing::None);
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("connection: upgrade\r\n"));
    }

    #[test]
    fn chunk_size_lines_are_hex() {
        let mut out = Vec::new();
        chunk_size_line(255, &mut out);
        assert_eq!(out, b"ff\r\n");
    }
}
