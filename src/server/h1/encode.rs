//! Response heads and body framing.

use std::cell::RefCell;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Version};
use http_body::SizeHint;

use crate::wire::{content_length, lists};

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

/// Decides the framing of a response, fixes its framing and connection
/// headers accordingly, and writes its head to `dst`. `keep_alive` comes in
/// as what the request and the server allow and goes out as what the
/// response allows.
pub(crate) fn head(
    status: StatusCode,
    headers: &mut HeaderMap,
    hint: &SizeHint,
    exchange: Exchange,
    keep_alive: &mut bool,
    dst: &mut Vec<u8>,
) -> Framing {
    let framing = framing(status, headers, hint, exchange);
    if framing == Framing::Close {
        *keep_alive = false;
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if lists(headers, &header::CONNECTION, b"close") {
            *keep_alive = false;
        }
        headers.remove(header::CONNECTION);
        if !*keep_alive {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else if exchange.version == Version::HTTP_10 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date());
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
    for (name, value) in headers.iter() {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    framing
}

fn framing(
    status: StatusCode,
    headers: &mut HeaderMap,
    hint: &SizeHint,
    exchange: Exchange,
) -> Framing {
    headers.remove(header::TRANSFER_ENCODING);
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
        return Framing::None;
    }
    if exchange.head_request || status == StatusCode::NOT_MODIFIED {
        // The length of what a GET would have sent, when known, stays.
        if !headers.contains_key(header::CONTENT_LENGTH) && status != StatusCode::NOT_MODIFIED {
            if let Some(n) = hint.exact().filter(|n| *n > 0) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        return Framing::None;
    }
    if let Some(n) = hint.exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return Framing::Length(n);
    }
    match content_length(headers).ok().flatten() {
        Some(n) => Framing::Length(n),
        None => {
            headers.remove(header::CONTENT_LENGTH);
            if exchange.version == Version::HTTP_10 {
                Framing::Close
            } else {
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
                Framing::Chunked
            }
        }
    }
}

/// The `Date` header value, formatted once per second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            cached.1 = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
            cached.0 = secs;
        }
        cached.1.clone()
    })
}

/// The size line of a chunk: hex length and CRLF.
pub(crate) fn chunk_size_line(len: usize, dst: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(dst, "{len:x}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

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
            &mut map,
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
