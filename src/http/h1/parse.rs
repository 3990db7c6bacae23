//! Request heads: parsing (httparse) and the message framing of RFC 9112 §6.
//!
//! Framing is strict, since a gateway that reads a body's length differently
//! from the upstream behind it is open to request smuggling: a request with
//! both `Transfer-Encoding` and `Content-Length`, with differing
//! `Content-Length` values, with a transfer coding other than a final
//! `chunked`, or with `Transfer-Encoding` on HTTP/1.0 is refused.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::http::h1::{Codings, FieldRanges, HeadFacts};

/// Fields the gateway may add to a request before it goes upstream.
const ADDED_HEADERS: usize = 8;

/// Header fields a request head may carry.
pub(crate) const MAX_HEADERS: usize = 128;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (no `Content-Length`, no `Transfer-Encoding`).
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The client allows the connection to stay open after this exchange.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1 with a body.
    pub(crate) expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header, on HTTP/1.1.
    pub(crate) upgrade: bool,
}

/// Why a request head was refused. Each maps to the status and message the
/// client gets before the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("Request header fields too large")]
    TooLarge,
    #[error("Malformed request")]
    Malformed,
    #[error("Invalid Content-Length")]
    BadLength,
    #[error("Conflicting message framing")]
    Conflict,
    #[error("Unsupported transfer coding")]
    UnsupportedCoding,
    #[error("HTTP version not supported")]
    Version,
}

impl HeadError {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            // RFC 9112 allows 501 for an unknown transfer coding and 505 for
            // an unknown version; a client's malformed request is not a
            // server error in anyone's alerting.
            HeadError::Version
            | HeadError::UnsupportedCoding
            | HeadError::Malformed
            | HeadError::BadLength
            | HeadError::Conflict => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)`: not complete
/// yet (and still within `max_size`). On success the head's bytes are taken
/// out of `buf`; what follows (body, pipelined requests) stays.
pub(crate) fn parse(buf: &mut BytesMut, max_size: usize) -> Result<Option<Head>, HeadError> {
    // Uninitialised: initialising 128 fields on every parse costs more
    // than the parse of a typical head.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_size {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > max_size {
        return Err(HeadError::TooLarge);
    }
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(HeadError::Version),
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed)?;
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let path = req.path.unwrap_or_default().as_bytes();
    let path_range = (offset(path), path.len());
    // Where each field lies in `buf`, so the fields can share the head's
    // bytes once they are split off.
    let mut facts = HeadFacts::default();
    let ranges: FieldRanges = req
        .headers
        .iter()
        .map(|f| {
            let (name, value) = (f.name.as_bytes(), f.value);
            facts.note(name, value);
            (offset(name), name.len(), offset(value), value.len())
        })
        .collect();

    let bytes: Bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(bytes.slice(path_range.0..path_range.0 + path_range.1))
        .map_err(|_| HeadError::Malformed)?;
    // Room for what the gateway adds (request id, X-Forwarded-*, Host):
    // growing the map later rehashes every field.
    let mut headers = crate::http::h1::take_map(ranges.len() + ADDED_HEADERS);
    for &(name_at, name_len, value_at, value_len) in &ranges {
        let name = HeaderName::from_bytes(&bytes[name_at..name_at + name_len])
            .map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(value_at..value_at + value_len))
            .map_err(|_| HeadError::Malformed)?;
        headers.append(name, value);
    }

    let framing = framing(&facts, version)?;
    let keep_alive = !facts.close && (version == Version::HTTP_11 || facts.keep_alive);
    let upgrade = version == Version::HTTP_11 && facts.upgrade_token && facts.upgrade;
    let expect_continue =
        version == Version::HTTP_11 && framing != Framing::Empty && facts.expect_continue;
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    }))
}

/// RFC 9112 §6.3, strictly: see the module docs.
fn framing(facts: &HeadFacts, version: Version) -> Result<Framing, HeadError> {
    if facts.transfer_encoding {
        if version == Version::HTTP_10 || facts.content_length() != Ok(None) {
            return Err(HeadError::Conflict);
        }
        return match facts.codings() {
            Codings::Chunked => Ok(Framing::Chunked),
            Codings::AfterChunked => Err(HeadError::Conflict),
            Codings::Unsupported => Err(HeadError::UnsupportedCoding),
            Codings::None => Err(HeadError::Malformed),
        };
    }
    Ok(
        match facts.content_length().map_err(|()| HeadError::BadLength)? {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Option<Head>, HeadError> {
        parse(&mut BytesMut::from(s.as_bytes()), 8192)
    }

    #[test]
    fn simple_get_keeps_what_follows() {
        let mut buf =
            BytesMut::from(&b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nNEXT"[..]);
        let head = parse(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.path(), "/a");
        assert_eq!(head.uri.query(), Some("b=1"));
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
        assert!(!head.upgrade);
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn partial_then_too_large() {
        assert!(parse_str("GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(parse_str(&big).unwrap_err(), HeadError::TooLarge);
        let complete = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse_str(&complete).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse_str(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn keep_alive_rules() {
        let h = parse_str("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse_str("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse_str("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_str("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.upgrade);
        let h = parse_str("GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.upgrade);
    }

    #[test]
    fn framing_is_strict() {
        let f = |s: &str| parse_str(s).map(|h| h.unwrap().framing);
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Err(HeadError::BadLength)
        );
        for bad in ["+5", "-1", "5 5", "0x5", "", "99999999999999999999"] {
            assert_eq!(
                f(&format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n")),
                Err(HeadError::BadLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            Err(HeadError::Conflict)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            Err(HeadError::Conflict)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(HeadError::UnsupportedCoding)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Err(HeadError::Conflict)
        );
        assert_eq!(
            f("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::Conflict)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n"),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn malformed_heads() {
        for bad in [
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            "G\x01T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n x: folded\r\n\r\n",
        ] {
            assert!(parse_str(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_str("GET / HTTP/2.0\r\n\r\n").unwrap_err(),
            HeadError::Version
        );
    }

    #[test]
    fn expect_continue_needs_a_body() {
        let h = parse_str("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.expect_continue);
        let h = parse_str("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.expect_continue);
    }
}
