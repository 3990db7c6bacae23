#![no_main]
//! Upstream bytes as the upstream client reads them: response heads.

use libfuzzer_sys::fuzz_target;
use sis_gateway::http::h1::parse_response_heads;

fuzz_target!(|data: &[u8]| {
    let _ = parse_response_heads(data);
});
