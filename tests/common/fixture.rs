//! The gateway of the fault and hostile-input tests: a public, a session
//! and a required route over one upstream, an API client and an anti-CSRF
//! cookie client, a fixed sealing key, and sessions opened through the
//! admin API.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::gateway::TestGateway;

pub const SEALING_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const ADMIN: &str = "test-admin-token";
pub const REFRESH: &str = "/v0/sign_in/refresh";
/// `store.timeout` of these tests; a store call answers 503 within it
/// (README, `[store]`); allow 50 ms on top, CI some more.
pub const STORE_TIMEOUT_MS: u64 = 250;

/// The config: `server` goes in `[server]`, `routes` after the three routes.
pub fn config(redis_url: &str, upstream: &str, server: &str, routes: &str) -> String {
    format!(
        r#"
[server]
{server}
[admin]
token = "{ADMIN}"
[store]
url = "{redis_url}"
timeout = "{STORE_TIMEOUT_MS}ms"
[tokens]
sealing_keys = ["{SEALING_KEY}"]
[cookies]
secure = false
refresh_path = "/"
[sign_in]
failures_per_minute = 0
[[clients]]
client_id = "mobile"
authentication = "api"
anti_csrf = false
[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = true
[[routes]]
path_prefix = "/pub"
upstream = "{upstream}"
auth = "public"
[[routes]]
path_prefix = "/app"
upstream = "{upstream}"
auth = "session"
[[routes]]
path_prefix = "/req"
upstream = "{upstream}"
auth = "required"
{routes}
"#
    )
}

/// Opens a session of `client_id` through the admin API.
pub async fn create(http: &reqwest::Client, gw: &TestGateway, client_id: &str) -> Value {
    let res = http
        .post(gw.admin_url("/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({"user_uuid": "u-faults", "client_id": client_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}
