#![no_main]
//! Query strings, form and JSON bodies of sign-in calls, with their
//! percent-decoding.

use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sis_gateway::sign_in::params::credentials;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (query, body) = data.split_at(split);
    let query = std::str::from_utf8(query).ok();
    for ctype in ["application/x-www-form-urlencoded", "application/json"] {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
        let _ = credentials(query, &headers, body, "vagov_refresh_token", "vagov_anti_csrf_token");
    }
});
