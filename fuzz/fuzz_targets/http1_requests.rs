#![no_main]
//! Client bytes as the HTTP/1 server reads them: request heads with their
//! framing, then Content-Length and chunked bodies, arriving split into
//! reads of any size (the first byte picks it).

use libfuzzer_sys::fuzz_target;
use sis_gateway::http::h1::parse_request_stream;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let whole = parse_request_stream(rest, usize::from(split));
    // The same input read all at once reads the same requests.
    assert_eq!(whole, parse_request_stream(rest, rest.len().max(1)));
});
