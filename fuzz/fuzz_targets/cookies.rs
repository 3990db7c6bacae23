#![no_main]
//! Cookie headers as browsers and attackers send them: parsing and the
//! rewriting done before a request goes upstream.

use http::{header::COOKIE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sis_gateway::proxy::headers::{remove_cookies, replace_cookie};
use sis_gateway::sign_in::params::{cookie, cookies};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.append(COOKIE, value);
    let _ = cookies(&headers).count();
    let _ = cookie(&headers, "vagov_refresh_token");
    replace_cookie(&mut headers, "vagov_access_token", "new");
    assert_eq!(cookie(&headers, "vagov_access_token"), Some("new"));
    remove_cookies(&mut headers, &["vagov_access_token"]);
    assert_eq!(cookie(&headers, "vagov_access_token"), None);
});
