//! Message heads, both roles: the server's request heads and the upstream
//! client's response heads, parsed with httparse through one field loop,
//! and the message framing of RFC 9112 §6.
//!
//! Request framing is strict, since a gateway that reads a body's length
//! differently from the upstream behind it is open to request smuggling: a
//! request with both `Transfer-Encoding` and `Content-Length`, with
//! differing `Content-Length` values, with a transfer coding other than a
//! final `chunked`, or with `Transfer-Encoding` on HTTP/1.0 is refused. A
//! response framed that way is read as RFC 9112 §6.3 says, and its
//! connection is not used again.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::ctx::X_REQUEST_ID;
use crate::http::fields::{BadLength, HopByHop};
use crate::http::h1::{Codings, FieldRanges, HeadFacts, RawFields};

/// Fields the gateway may add to a message before it goes on: growing a
/// header map later rehashes every field.
const ADDED_HEADERS: usize = 8;

/// Header fields a request head may carry.
pub(crate) const MAX_HEADERS: usize = 128;
/// Header fields a response head may carry.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 256;
/// The largest response head accepted from an upstream.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

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
    let path = req.path.unwrap_or_default().as_bytes();
    let path_range = (path.as_ptr() as usize - base, path.len());
    let mut ranges = FieldRanges::new();
    let facts = note_fields(req.headers, base, &mut ranges);

    let bytes: Bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(bytes.slice(path_range.0..path_range.0 + path_range.1))
        .map_err(|_| HeadError::Malformed)?;
    // Room for what the gateway adds (request id, X-Forwarded-*, Host).
    let mut headers = crate::http::h1::take_map(ranges.len() + ADDED_HEADERS);
    fill_map(&mut headers, &bytes, &ranges, |_| false).map_err(|_| HeadError::Malformed)?;

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
        match facts
            .content_length()
            .map_err(|BadLength| HeadError::BadLength)?
        {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        },
    )
}

/// Notes the framing facts of `fields` and where each lies in the buffer
/// that starts at `base`, so the fields can share the head's bytes once
/// they are split off. The field loop of both roles.
///
/// Inlined into both parsers, and filling the caller's `ranges`: returning
/// them would copy half a kilobyte per head.
#[inline(always)]
fn note_fields(
    fields: &[httparse::Header<'_>],
    base: usize,
    ranges: &mut FieldRanges,
) -> HeadFacts {
    let mut facts = HeadFacts::default();
    ranges.extend(fields.iter().map(|f| {
        let (name, value) = (f.name.as_bytes(), f.value);
        facts.note(name, value);
        (
            name.as_ptr() as usize - base,
            name.len(),
            value.as_ptr() as usize - base,
            value.len(),
        )
    }));
    facts
}

/// A field a header map does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadField {
    #[error("bad header name")]
    Name,
    #[error("bad header value")]
    Value,
}

/// Appends the fields at `ranges` of `bytes` to `map`, except those
/// `skip` names.
#[inline]
fn fill_map(
    map: &mut HeaderMap,
    bytes: &Bytes,
    ranges: &FieldRanges,
    skip: impl Fn(&[u8]) -> bool,
) -> Result<(), BadField> {
    for &(name_at, name_len, value_at, value_len) in ranges {
        let raw_name = &bytes[name_at..name_at + name_len];
        if skip(raw_name) {
            continue;
        }
        let name = HeaderName::from_bytes(raw_name).map_err(|_| BadField::Name)?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(value_at..value_at + value_len))
            .map_err(|_| BadField::Value)?;
        map.append(name, value);
    }
    Ok(())
}

/// Why an upstream's response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidResponse {
    #[error("response head too large")]
    TooLarge,
    #[error("malformed response head")]
    Malformed,
    #[error("bad status code")]
    Status,
    #[error(transparent)]
    Field(#[from] BadField),
}

/// A parsed response head.
pub(crate) struct ResponseHead {
    pub(crate) facts: HeadFacts,
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) fields: ResponseFields,
}

/// A response head's fields: kept as received, or in a header map for an
/// upgrade (whose hop-by-hop fields are edited) and a head too large for
/// [`RawFields`].
pub(crate) enum ResponseFields {
    Raw(Box<RawFields>),
    Map(HeaderMap),
}

/// Parses a response head from the start of `buf`. `Ok(None)`: not complete
/// yet (and within [`MAX_RESPONSE_HEAD`]). On success the head's bytes are
/// taken out of `buf`; what follows (the body) stays. Hop-by-hop fields
/// (but those of a `101`) and the upstream's `X-Request-Id` are left out.
pub(crate) fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, InvalidResponse> {
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
            return Err(InvalidResponse::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(InvalidResponse::Malformed),
    };
    let version = match res.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(InvalidResponse::Status)?;
    let mut ranges = FieldRanges::new();
    let facts = note_fields(res.headers, buf.as_ptr() as usize, &mut ranges);
    let bytes: Bytes = buf.split_to(len).freeze();
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    // Hop-by-hop fields are not forwarded (RFC 9110 §7.6.1), and what they
    // say about this connection is in `facts`: they are left out here
    // rather than removed later. A `101` keeps them for the upgrade. The
    // gateway answers with its own request id; with `Transfer-Encoding`, a
    // `Content-Length` is wrong (RFC 9112 §6.3) and is not forwarded.
    let left_out = |hop_by_hop: &HopByHop, name: &[u8]| {
        (!upgrade && hop_by_hop.contains(name))
            || name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes())
            || (facts.transfer_encoding && name.eq_ignore_ascii_case(b"content-length"))
    };
    if !upgrade && bytes.len() <= RawFields::MAX_HEAD {
        let length = if facts.transfer_encoding {
            None
        } else {
            facts.content_length().ok().flatten()
        };
        let hop_by_hop = hop_by_hop_of(&bytes, &ranges, &facts);
        let mut raw = RawFields::new(bytes, length);
        for &(name_at, name_len, value_at, value_len) in &ranges {
            if !left_out(&hop_by_hop, &raw.head()[name_at..name_at + name_len]) {
                raw.push((name_at, name_len), (value_at, value_len));
            }
        }
        return Ok(Some(ResponseHead {
            facts,
            status,
            version,
            fields: ResponseFields::Raw(raw),
        }));
    }
    // Room for what the gateway adds (request id, cookies).
    let mut headers = crate::http::h1::take_map(ranges.len() + ADDED_HEADERS);
    let hop_by_hop = hop_by_hop_of(&bytes, &ranges, &facts);
    fill_map(&mut headers, &bytes, &ranges, |name| {
        left_out(&hop_by_hop, name)
    })?;
    Ok(Some(ResponseHead {
        facts,
        status,
        version,
        fields: ResponseFields::Map(headers),
    }))
}

/// The hop-by-hop decision for the fields at `ranges` of `head`: the values
/// of its `Connection` fields are only looked at when `facts` say they name
/// further fields.
fn hop_by_hop_of(head: &[u8], ranges: &FieldRanges, facts: &HeadFacts) -> HopByHop {
    if !facts.names_others {
        return HopByHop::default();
    }
    HopByHop::new(
        ranges
            .iter()
            .filter(|&&(name_at, name_len, _, _)| {
                head[name_at..name_at + name_len].eq_ignore_ascii_case(b"connection")
            })
            .map(|&(_, _, value_at, value_len)| &head[value_at..value_at + value_len]),
    )
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body: a response to `HEAD`, a `204` or a `304`.
    Empty,
    Length(u64),
    Chunked,
    /// The body ends when the connection does.
    UntilClose,
}

impl ResponseHead {
    /// How the body of this response to a `method` request is delimited.
    pub(crate) fn framing(&self, method: &Method) -> Result<ResponseFraming, BadLength> {
        if method == Method::HEAD
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
        {
            return Ok(ResponseFraming::Empty);
        }
        if self.facts.transfer_encoding {
            // Its `Content-Length` was left out as the head was parsed.
            return Ok(if self.facts.chunked_last {
                ResponseFraming::Chunked
            } else {
                ResponseFraming::UntilClose
            });
        }
        Ok(match self.facts.content_length()? {
            Some(n) => ResponseFraming::Length(n),
            None => ResponseFraming::UntilClose,
        })
    }

    /// Whether the upstream lets the connection be used again after this
    /// response, as far as its head says: it asks to keep it, and its
    /// framing is unambiguous.
    pub(crate) fn keeps_alive(&self) -> bool {
        let facts = &self.facts;
        !facts.close
            && (self.version == Version::HTTP_11 || facts.keep_alive)
            && !(facts.transfer_encoding && facts.content_length() != Ok(None))
    }
}

/// Parses `data` as the response heads an upstream sends on one connection;
/// returns how many were read. What the `http1_responses` fuzz target drives.
#[doc(hidden)]
pub fn parse_response_heads(data: &[u8]) -> usize {
    let mut buf = BytesMut::from(data);
    let mut heads = 0;
    while let Ok(Some(head)) = parse_response(&mut buf) {
        assert!(head.status.as_u16() >= 100);
        if let ResponseFields::Raw(raw) = head.fields {
            // Fields kept as received are valid for a header map too, so
            // an HTTP/2 client loses none of them.
            let count = raw.iter().count();
            assert!(raw.iter().all(|(name, value, _)| {
                HeaderName::from_bytes(name).is_ok() && HeaderValue::from_bytes(value).is_ok()
            }));
            assert_eq!(raw.fold(HeaderMap::new()).len(), count);
        }
        heads += 1;
    }
    heads
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

    fn response_names(text: &str) -> (StatusCode, Vec<String>) {
        let head = parse_response(&mut BytesMut::from(text.as_bytes()))
            .unwrap()
            .unwrap();
        let names = match head.fields {
            ResponseFields::Raw(raw) => raw
                .iter()
                .map(|(n, _, _)| String::from_utf8(n.to_vec()).unwrap())
                .collect(),
            ResponseFields::Map(map) => map.keys().map(|n| n.as_str().to_owned()).collect(),
        };
        (head.status, names)
    }

    #[test]
    fn response_hop_by_hop_fields_are_left_out_in_one_place() {
        let (_, names) = response_names(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\n\
             Keep-Alive: timeout=5\r\nX-Keep: 2\r\nX-Request-Id: up\r\n\
             Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(names, ["X-Keep"]);
        let (status, names) = response_names(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\n\r\n",
        );
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(names, ["connection", "upgrade"]);
    }
}
