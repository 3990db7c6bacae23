#![no_main]
//! Cookie headers as browsers and attackers send them: the one reader and
//! the rewriting done before a request goes upstream.

use http::{header::COOKIE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sis_gateway::cookie::{get, pairs};
use sis_gateway::proxy::cookies::{remove_cookies, replace_cookie};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.append(COOKIE, value);
    let _ = pairs(&headers).count();
    let _ = get(&headers, "vagov_refresh_token");
    replace_cookie(&mut headers, "vagov_access_token", "new");
    assert_eq!(get(&headers, "vagov_access_token").as_deref(), Some("new"));
    remove_cookies(&mut headers, &["vagov_access_token"]);
    assert_eq!(get(&headers, "vagov_access_token"), None);
    // What the reader finds as a secret cookie, the proxy removes.
    remove_cookies(&mut headers, &["vagov_refresh_token"]);
    assert_eq!(get(&headers, "vagov_refresh_token"), None);
});
