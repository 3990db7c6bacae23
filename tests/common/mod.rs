//! Real parts for integration tests: `redis-server` processes, upstream
//! servers and the gateway itself, each on an ephemeral loopback port.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod fixture;
pub mod gateway;
pub mod raw;
pub mod redis;
pub mod sis;
pub mod upstream;

/// The `Set-Cookie`s of a response, parsed.
pub fn set_cookies(h: &reqwest::header::HeaderMap) -> Vec<cookie::Cookie<'static>> {
    h.get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .collect()
}

/// One API refresh with the token as a query parameter: the status, and the
/// next token or the error body.
pub async fn refresh_api(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> (reqwest::StatusCode, Result<String, String>) {
    let res = http
        .post(url)
        .query(&[("refresh_token", token)])
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .expect("the gateway answers");
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap_or(serde_json::Value::Null);
    match body["data"]["refresh_token"].as_str() {
        Some(t) if status == reqwest::StatusCode::OK => (status, Ok(t.to_owned())),
        _ => (status, Err(body.to_string())),
    }
}
