//! Transparent refresh on pass-through routes (README, Pass-through routes and
//! transparent refresh): a real upstream, a
//! real `redis-server`, real HTTP clients.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::gateway::{GatewayProcess, TestGateway};
use common::redis::RedisServer;
use common::set_cookies;
use common::upstream::TestUpstream;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SEALING_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const ADMIN: &str = "test-admin-token";

fn config(redis_url: &str, upstream: &str, signing_key: Option<&str>) -> String {
    let signing = signing_key
        .map(|p| format!("signing_keys = [\"{p}\"]"))
        .unwrap_or_default();
    format!(
        r#"
[admin]
token = "{ADMIN}"
[store]
url = "{redis_url}"
[tokens]
sealing_keys = ["{SEALING_KEY}"]
{signing}
refresh_skew = "0s"
[cookies]
secure = false
refresh_path = "/"
[sign_in]
failures_per_minute = 0
[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = true
access_token_ttl = "1s"
[[routes]]
path_prefix = "/app"
upstream = "{upstream}"
auth = "session"
[[routes]]
path_prefix = "/pub"
upstream = "{upstream}"
auth = "public"
[[routes]]
path_prefix = "/req"
upstream = "{upstream}"
auth = "required"
login_url = "/sign-in?next=here"
[[routes]]
path_prefix = "/bearer"
upstream = "{upstream}"
auth = "required"
forward_bearer = true
"#
    )
}

/// A browser's cookie jar, reduced to what these tests need.
#[derive(Clone, Debug)]
struct Jar {
    access: String,
    refresh: String,
    csrf: String,
}

impl Jar {
    fn header(&self) -> String {
        format!(
            "vagov_access_token={}; vagov_refresh_token={}; vagov_anti_csrf_token={}; theme=dark",
            self.access, self.refresh, self.csrf
        )
    }

    fn updated(&self, h: &HeaderMap) -> Jar {
        let mut j = self.clone();
        for c in set_cookies(h) {
            match c.name() {
                "vagov_access_token" => j.access = c.value().to_owned(),
                "vagov_refresh_token" => j.refresh = c.value().to_owned(),
                "vagov_anti_csrf_token" => j.csrf = c.value().to_owned(),
                _ => {}
            }
        }
        j
    }
}

async fn open_session(http: &reqwest::Client, admin: &str) -> Jar {
    let res = http
        .post(format!("{admin}/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({"user_uuid": "user-7", "client_id": "web"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let s: Value = res.json().await.unwrap();
    Jar {
        access: s["access_token"].as_str().unwrap().to_owned(),
        refresh: s["refresh_token"].as_str().unwrap().to_owned(),
        csrf: s["anti_csrf_token"].as_str().unwrap().to_owned(),
    }
}

/// What the upstream received: header pairs from its echo.
fn seen(body: &Value) -> Vec<(String, String)> {
    body["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn seen_one<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

struct Env {
    redis: RedisServer,
    upstream: TestUpstream,
    gw: TestGateway,
    http: reqwest::Client,
}

async fn env() -> Env {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start(config(&redis.url(), &upstream.url, None));
    Env {
        redis,
        upstream,
        gw,
        http: reqwest::Client::new(),
    }
}

async fn expired_jar(e: &Env) -> Jar {
    let jar = open_session(&e.http, &e.gw.admin_url("")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    jar
}

#[tokio::test]
async fn expired_access_cookie_is_refreshed_inline() {
    let e = env().await;
    let jar = expired_jar(&e).await;
    let res = e
        .http
        .get(e.gw.url("/app/page?set_cookie=1"))
        .header("cookie", jar.header())
        .header("x-sis-user-uuid", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let next = jar.updated(res.headers());
    let names: Vec<_> = set_cookies(res.headers())
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "app_pref",
            "vagov_access_token",
            "vagov_refresh_token",
            "vagov_anti_csrf_token",
            "vagov_info_token"
        ],
        "the upstream's own cookie, then the rotated ones"
    );
    assert_ne!(next.refresh, jar.refresh);
    assert_ne!(next.access, jar.access);
    let body: Value = res.json().await.unwrap();
    let h = seen(&body);
    let cookie = seen_one(&h, "cookie").unwrap();
    assert!(
        cookie.contains(&format!("vagov_access_token={}", next.access)),
        "{cookie}"
    );
    assert!(cookie.contains("theme=dark"));
    assert!(
        !cookie.contains("vagov_refresh_token"),
        "refresh cookie reached the upstream"
    );
    assert!(
        !cookie.contains("vagov_anti_csrf_token"),
        "anti-CSRF cookie reached the upstream"
    );
    assert!(
        !cookie.contains(&jar.access),
        "the old access cookie went upstream"
    );
    assert_eq!(seen_one(&h, "x-sis-user-uuid"), Some("user-7"));
    assert_eq!(seen_one(&h, "x-sis-client-id"), Some("web"));
    assert!(seen_one(&h, "x-sis-session-handle").is_some());
    assert_eq!(h.iter().filter(|(k, _)| k == "x-sis-user-uuid").count(), 1);

    // The browser now holds a fresh access token: no rotation, same identity.
    let before = e.redis.script_calls();
    let res = e
        .http
        .get(e.gw.url("/app/again"))
        .header("cookie", next.header())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(set_cookies(res.headers()).is_empty());
    assert_eq!(
        e.redis.script_calls(),
        before,
        "a valid access cookie costs no store call"
    );
}

#[tokio::test]
async fn fifty_parallel_requests_cost_one_rotation() {
    let e = env().await;
    // Load the script once, so EVALSHA is counted alone.
    let warm = expired_jar(&e).await;
    let res = e
        .http
        .get(e.gw.url("/app/"))
        .header("cookie", warm.header())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let jar = expired_jar(&e).await;
    let before = e.redis.script_calls();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let http = e.http.clone();
        let url = e.gw.url(&format!("/app/item/{i}"));
        let cookie = jar.header();
        tasks.push(tokio::spawn(async move {
            let res = http.get(url).header("cookie", cookie).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let mut values: Vec<String> = set_cookies(res.headers())
                .iter()
                .filter(|c| c.name() != "vagov_info_token")
                .map(|c| format!("{}={}", c.name(), c.value()))
                .collect();
            values.sort();
            values
        }));
    }
    let mut distinct = HashSet::new();
    for t in tasks {
        distinct.insert(t.await.unwrap());
    }
    assert_eq!(
        e.redis.script_calls() - before,
        1,
        "one store call for fifty requests"
    );
    assert_eq!(distinct.len(), 1, "every response carries the same cookies");
    let cookies = distinct.into_iter().next().unwrap();
    assert_eq!(cookies.len(), 3);
}

#[tokio::test]
async fn two_gateways_sharing_redis_converge() {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let dir = common::gateway::temp_path("keys");
    let keys = sis_gateway::tokens::keygen(&dir, sis_gateway::config::Algorithm::Es256).unwrap();
    let key_path = keys.signing_key.to_str().unwrap().to_owned();
    // Two gateway processes (the built binary), one Redis.
    let listeners = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";
    let cfg = format!(
        "{listeners}{}",
        config(&redis.url(), &upstream.url, Some(&key_path))
    );
    let a = GatewayProcess::spawn(&cfg);
    let b = GatewayProcess::spawn(&cfg);
    let http = reqwest::Client::new();
    let jar = open_session(&http, &format!("http://{}", a.admin_addr.unwrap())).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut tasks = Vec::new();
    for i in 0..40 {
        let http = http.clone();
        let url = if i % 2 == 0 {
            a.url("/app/x")
        } else {
            b.url("/app/x")
        };
        let jar = jar.clone();
        tasks.push(tokio::spawn(async move {
            let res = http
                .get(url)
                .header("cookie", jar.header())
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                set_cookies(res.headers()).len(),
                4,
                "rotated cookies on every response"
            );
            let next = jar.updated(res.headers());
            let body: Value = res.json().await.unwrap();
            let user = seen_one(&seen(&body), "x-sis-user-uuid").map(str::to_owned);
            (next, user)
        }));
    }
    let mut successors = HashSet::new();
    let mut next = None;
    for t in tasks {
        let (jar, user) = t.await.unwrap();
        assert_eq!(
            user.as_deref(),
            Some("user-7"),
            "every request is signed in"
        );
        successors.insert((jar.refresh.clone(), jar.csrf.clone()));
        next = Some(jar);
    }
    assert_eq!(successors.len(), 1, "both instances hand out one successor");
    // No theft was detected: the successor works on either instance.
    let next = next.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = http
        .get(b.url("/app/y"))
        .header("cookie", next.header())
        .send()
        .await;
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(seen_one(&seen(&body), "x-sis-user-uuid"), Some("user-7"));
    drop(redis);
}

#[tokio::test]
async fn spoofed_identity_headers_never_arrive() {
    let e = env().await;
    for path in ["/pub/x", "/app/x"] {
        let res = e
            .http
            .get(e.gw.url(path))
            .header("x-sis-user-uuid", "admin")
            .header("X-Sis-Session-Handle", "h")
            .header("x-sis-client-id", "c")
            .header(
                "cookie",
                "vagov_refresh_token=v1:x; vagov_anti_csrf_token=y; a=b",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let body: Value = res.json().await.unwrap();
        let h = seen(&body);
        for name in ["x-sis-user-uuid", "x-sis-session-handle", "x-sis-client-id"] {
            assert_eq!(seen_one(&h, name), None, "{path}: {name} arrived");
        }
        let cookie = seen_one(&h, "cookie").unwrap_or("");
        assert!(
            !cookie.contains("vagov_refresh_token") && !cookie.contains("vagov_anti_csrf"),
            "{cookie}"
        );
    }
}

#[tokio::test]
async fn anonymous_requests_pass_unchanged_on_session_routes() {
    let e = env().await;
    let res = e
        .http
        .get(e.gw.url("/app/open"))
        .header("cookie", "a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(set_cookies(res.headers()).is_empty());
    let body: Value = res.json().await.unwrap();
    let h = seen(&body);
    assert_eq!(seen_one(&h, "cookie"), Some("a=b"));
    assert_eq!(seen_one(&h, "x-sis-user-uuid"), None);
    assert_eq!(e.upstream.count(), 1);
}

#[tokio::test]
async fn required_routes_answer_401_403_and_redirect() {
    let e = env().await;
    let res = e.http.get(e.gw.url("/req/x")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert!(body["errors"].is_string());

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_redirects
        .get(e.gw.url("/req/x"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(res.headers()["location"], "/sign-in?next=here");

    let jar = open_session(&e.http, &e.gw.admin_url("")).await;
    let res = e
        .http
        .get(e.gw.url("/bearer/x"))
        .bearer_auth(&jar.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let h = seen(&body);
    assert_eq!(
        seen_one(&h, "authorization"),
        Some(format!("Bearer {}", jar.access).as_str())
    );
    assert_eq!(seen_one(&h, "x-sis-user-uuid"), Some("user-7"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = e
        .http
        .get(e.gw.url("/req/x"))
        .bearer_auth(&jar.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"], "Access token has expired");

    let res = e
        .http
        .get(e.gw.url("/req/x"))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // The expired access cookie with its refresh cookie still gets through.
    let res = e
        .http
        .get(e.gw.url("/req/x"))
        .header("cookie", jar.header())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(set_cookies(res.headers()).len(), 4);
}

#[tokio::test]
async fn websocket_through_a_session_route() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let e = env().await;
    let jar = expired_jar(&e).await;
    let mut req = format!("ws://{}/app/ws", e.gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", jar.header().parse().unwrap());
    let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.status(), 101);
    assert_eq!(
        set_cookies(res.headers()).len(),
        4,
        "the 101 carries the rotated cookies"
    );
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello");
}
