//! A real browser stays signed in across parallel requests: headless Chromium
//! against a page served through the gateway, with an expired access cookie.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::gateway::TestGateway;
use common::redis::RedisServer;
use common::upstream::TestUpstream;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token";

#[tokio::test]
async fn parallel_fetches_with_an_expired_access_cookie_stay_signed_in() {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(format!(
        r#"
[admin]
token = "{ADMIN}"
[store]
url = "{}"
[tokens]
refresh_skew = "0s"
[cookies]
secure = false
refresh_path = "/"
[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = true
access_token_ttl = "2s"
[[routes]]
path_prefix = "/app"
upstream = "{}"
auth = "session"
"#,
        redis.url(),
        upstream.url
    ));
    let http = reqwest::Client::new();
    let open = || async {
        let res = http
            .post(gw.admin_url("/admin/sessions"))
            .bearer_auth(ADMIN)
            .json(&json!({"user_uuid": "browser-user", "client_id": "web"}))
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap()
    };
    // Load the rotation script once, so each later rotation is one EVALSHA.
    let warm = open().await;
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .header(
            "cookie",
            format!(
                "vagov_refresh_token={}; vagov_anti_csrf_token={}",
                warm["refresh_token"].as_str().unwrap(),
                warm["anti_csrf_token"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let session = open().await;
    let origin = gw.url("/");
    let mut browser = Browser::launch().await;
    for c in session["set_cookie"].as_array().unwrap() {
        browser.set_cookie(&origin, c.as_str().unwrap()).await;
    }
    let first_refresh = browser.cookie("vagov_refresh_token").await.unwrap();
    browser.navigate(&gw.url("/app/page")).await;
    let signed_in: Value = serde_json::from_str(
        browser
            .eval("(document.querySelector('pre') || document.body).innerText")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(
        signed_in["headers"].to_string().contains("browser-user"),
        "signed in on the first navigation"
    );

    // Let the access cookie expire, then fire parallel requests from the page.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = redis.script_calls();
    let results = browser
        .eval(
            "Promise.all([1,2,3,4,5,6,7,8].map(i => fetch('/app/api/item/' + i, {credentials: 'include'})\
               .then(async r => ({status: r.status, body: await r.json()}))))",
        )
        .await;
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 8);
    for r in results {
        assert_eq!(r["status"], 200);
        let headers = r["body"]["headers"].to_string();
        assert!(
            headers.contains("browser-user"),
            "every request signed in: {headers}"
        );
        assert!(!headers.contains("vagov_refresh_token"));
    }
    assert_eq!(
        redis.script_calls() - before,
        1,
        "one rotation for eight requests"
    );

    let new_refresh = browser.cookie("vagov_refresh_token").await.unwrap();
    assert_ne!(
        new_refresh, first_refresh,
        "the jar holds the rotated refresh token"
    );
    assert!(browser.cookie("vagov_info_token").await.is_some());

    // Still signed in on the next navigation, with no further rotation.
    browser.navigate(&gw.url("/app/next")).await;
    let page: Value = serde_json::from_str(
        browser
            .eval("(document.querySelector('pre') || document.body).innerText")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(page["headers"].to_string().contains("browser-user"));
    assert_eq!(redis.script_calls() - before, 1);
}

/// As the Rails Sign-in Service writes its cookies: the value
/// percent-encoded (`v1%3A…`). The gateway writes them raw.
fn as_rails_writes_it(set_cookie: &str) -> String {
    set_cookie.replacen("vagov_refresh_token=v1:", "vagov_refresh_token=v1%3A", 1)
}

/// Six parallel `fetch()`es on a `required` route after the access cookie
/// ran out: every one signed in, one rotation in the store, and the jar
/// holding the rotated cookies.
async fn six_fetches_after_expiry_on_a_required_route(rails_cookies: bool) {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(format!(
        r#"
[admin]
token = "{ADMIN}"
[store]
url = "{}"
[tokens]
refresh_skew = "0s"
[cookies]
secure = false
refresh_path = "/"
[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = true
access_token_ttl = "2s"
[[routes]]
path_prefix = "/app"
upstream = "{}"
auth = "required"
"#,
        redis.url(),
        upstream.url
    ));
    let http = reqwest::Client::new();
    let open = || async {
        let res = http
            .post(gw.admin_url("/admin/sessions"))
            .bearer_auth(ADMIN)
            .json(&json!({"user_uuid": "browser-user", "client_id": "web"}))
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap()
    };
    // Load the rotation script once, so each later rotation is one EVALSHA.
    let warm = open().await;
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&[
            ("refresh_token", warm["refresh_token"].as_str().unwrap()),
            ("anti_csrf_token", warm["anti_csrf_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let session = open().await;
    let origin = gw.url("/");
    let mut browser = Browser::launch().await;
    for c in session["set_cookie"].as_array().unwrap() {
        let c = c.as_str().unwrap();
        let c = if rails_cookies {
            as_rails_writes_it(c)
        } else {
            c.to_owned()
        };
        browser.set_cookie(&origin, &c).await;
    }
    let first_refresh = browser.cookie("vagov_refresh_token").await.unwrap();
    let first_access = browser.cookie("vagov_access_token").await.unwrap();
    let prefix = if rails_cookies { "v1%3A" } else { "v1:" };
    assert!(first_refresh.starts_with(prefix), "{first_refresh}");

    // Let the access cookie expire, then fire parallel requests from a page
    // of the route.
    browser.navigate(&gw.url("/app/page")).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = redis.script_calls();
    let results = browser
        .eval(
            "Promise.all([1,2,3,4,5,6].map(i => fetch('/app/api/item/' + i, {credentials: 'include'})\
               .then(async r => ({status: r.status, body: await r.json()}))))",
        )
        .await;
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 6);
    for r in results {
        assert_eq!(r["status"], 200, "{r}");
        let headers = r["body"]["headers"].to_string();
        assert!(
            headers.contains("browser-user"),
            "every request signed in: {headers}"
        );
        assert!(!headers.contains("vagov_refresh_token"));
    }
    assert_eq!(
        redis.script_calls() - before,
        1,
        "one rotation for six requests"
    );

    // The jar holds the rotated cookies, as the gateway writes them.
    let new_refresh = browser.cookie("vagov_refresh_token").await.unwrap();
    assert_ne!(new_refresh, first_refresh);
    assert!(new_refresh.starts_with("v1:") && new_refresh.ends_with(".V0"));
    assert_ne!(
        browser.cookie("vagov_access_token").await.unwrap(),
        first_access
    );
    let results = browser
        .eval("fetch('/app/again', {credentials: 'include'}).then(r => r.status)")
        .await;
    assert_eq!(results, 200);
    assert_eq!(redis.script_calls() - before, 1);
}

#[tokio::test]
async fn cookies_written_by_the_rails_service_stay_signed_in() {
    six_fetches_after_expiry_on_a_required_route(true).await;
}

#[tokio::test]
async fn raw_cookies_stay_signed_in_on_a_required_route() {
    six_fetches_after_expiry_on_a_required_route(false).await;
}
