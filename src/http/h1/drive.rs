//! Whole-input drivers of the request parser, for the fuzz targets and for
//! [`crate::proxy::Probe`].

use bytes::BytesMut;
use http::Request;

use super::decode::{Decoder, Step};
use super::parse;

/// Runs the request-head parser and the body decoders over `data` as one
/// connection's input, arriving in reads of `read_size` bytes; returns how
/// many requests were read whole. What the `http1_requests` fuzz target
/// drives: no input may panic, and no decoded body may hold more bytes than
/// came in.
#[doc(hidden)]
pub fn parse_request_stream(data: &[u8], read_size: usize) -> usize {
    let read_size = read_size.max(1);
    let mut input = data.chunks(read_size);
    let mut buf = BytesMut::new();
    let mut whole = 0;
    let mut body_bytes = 0usize;
    'requests: loop {
        let head = loop {
            match parse::parse(&mut buf, 8192) {
                Ok(Some(head)) => break head,
                Ok(None) => match input.next() {
                    Some(chunk) => buf.extend_from_slice(chunk),
                    None => break 'requests,
                },
                Err(_) => break 'requests,
            }
        };
        let mut decoder = match head.framing {
            parse::Framing::Empty => Decoder::Done,
            parse::Framing::Length(n) => Decoder::length(n),
            parse::Framing::Chunked => Decoder::chunked(8192),
        };
        loop {
            match decoder.decode(&mut buf) {
                Ok(Step::Data(d)) => {
                    body_bytes += d.len();
                    assert!(body_bytes <= data.len(), "a body larger than its input");
                }
                Ok(Step::Done) => break,
                Ok(Step::NeedMore) => match input.next() {
                    Some(chunk) => buf.extend_from_slice(chunk),
                    None => break 'requests,
                },
                Err(_) => break 'requests,
            }
        }
        whole += 1;
    }
    whole
}

/// Parses one request head from `bytes` as the server does; `None` when it
/// is incomplete or refused. For [`crate::proxy::Probe`].
pub(crate) fn parse_head(bytes: &[u8]) -> Option<http::request::Parts> {
    let head = parse::parse(&mut BytesMut::from(bytes), 64 * 1024).ok()??;
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = head.method;
    parts.uri = head.uri;
    parts.version = head.version;
    parts.headers = head.headers;
    Some(parts)
}
