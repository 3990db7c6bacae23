//! Real parts for integration tests: `redis-server` processes, upstream
//! servers and the gateway itself, each on an ephemeral loopback port.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod gateway;
pub mod redis;
pub mod upstream;

/// The `Set-Cookie`s of a response, parsed.
pub fn set_cookies(h: &reqwest::header::HeaderMap) -> Vec<cookie::Cookie<'static>> {
    h.get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .collect()
}
