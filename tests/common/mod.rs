//! Real parts for integration tests: `redis-server` processes, upstream
//! servers and the gateway itself, each on an ephemeral loopback port.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod fixture;
pub mod gateway;
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

/// Sends `GET path` on a kept-alive raw connection and reads its
/// (Content-Length) response; returns the status.
pub async fn keep_alive_get(stream: &mut tokio::net::TcpStream, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head.split(' ').nth(1).unwrap().parse().unwrap();
            }
        }
    }
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
