//! The gateway as VA.gov's real clients use it: the VA mobile app's token
//! storage, cookies as the Rails Sign-in Service writes them, sign-in traffic
//! passed through to the login service, and logout's `client_id`.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::gateway::TestGateway;
use common::redis::RedisServer;
use common::upstream::TestUpstream;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const ADMIN: &str = "test-admin-token";

/// A gateway on a real Redis with an API client (`mobile`, as the VA mobile
/// app is), a cookie client (`web`), a `required` route and `extra` config.
fn gateway(redis: &RedisServer, upstream: &str, extra: &str) -> TestGateway {
    TestGateway::start(format!(
        r#"
[admin]
token = "{ADMIN}"
[store]
url = "{}"
[cookies]
secure = false
refresh_path = "/"
{extra}
[[clients]]
client_id = "mobile"
authentication = "api"
[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = true
logout_redirect_uri = "https://www.example.gov/signed-out"
[[routes]]
path_prefix = "/app"
upstream = "{upstream}"
auth = "required"
"#,
        redis.url()
    ))
}

async fn open_session(http: &reqwest::Client, gw: &TestGateway, client_id: &str) -> Value {
    let res = http
        .post(gw.admin_url("/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({"user_uuid": "user-1", "client_id": client_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

/// A refresh as the VA mobile app sends it: a form body.
async fn refresh_form(
    http: &reqwest::Client,
    gw: &TestGateway,
    token: &str,
) -> (StatusCode, Value) {
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&[("refresh_token", token)])
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The app's two stores: the part before the first `.` in one, the part
/// after it in the other (the biometric keychain).
#[derive(Default)]
struct MobileStorage {
    async_storage: HashMap<&'static str, String>,
    keychain: HashMap<&'static str, String>,
}

impl MobileStorage {
    /// What `storeRefreshToken` does: split at `.`, keep parts 0 and 1 apart.
    fn store(&mut self, token: &str) {
        let parts: Vec<&str> = token.split('.').collect();
        self.async_storage
            .insert("encrypted_component", parts[0].to_owned());
        self.keychain
            .insert("nonce", parts.get(1).copied().unwrap_or("").to_owned());
    }

    /// What `retrieveRefreshToken` does: `${part0}.${part1}.V0`.
    fn retrieve(&self) -> Option<String> {
        let a = self.async_storage.get("encrypted_component")?;
        let b = self.keychain.get("nonce").filter(|n| !n.is_empty())?;
        Some(format!("{a}.{b}.V0"))
    }
}

#[tokio::test]
async fn mobile_app_token_storage_round_trips_over_rotations() {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let gw = gateway(&redis, &upstream.url, "");
    let http = reqwest::Client::new();

    let session = open_session(&http, &gw, "mobile").await;
    let mut token = session["refresh_token"].as_str().unwrap().to_owned();
    let mut seen = vec![token.clone()];
    for round in 0..5 {
        // SiS's wire shape: v1:<sealed>.<32 hex>.V0.
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        assert!(parts[0].starts_with("v1:"));
        assert_eq!(parts[1].len(), 32);
        assert!(parts[1]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(parts[2], "V0");

        // App restart: the token comes back from storage, not from memory.
        let mut storage = MobileStorage::default();
        storage.store(&token);
        let restored = storage.retrieve().unwrap();
        assert_eq!(restored, token);
        let (status, body) = refresh_form(&http, &gw, &restored).await;
        assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        token = body["data"]["refresh_token"].as_str().unwrap().to_owned();
        assert!(!seen.contains(&token));
        seen.push(token.clone());
    }

    // A changed nonce or version is refused with its own error, and does
    // not end the session.
    let parts: Vec<&str> = token.split('.').collect();
    let other_nonce: String = parts[1]
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let cases = [
        (
            format!("{}.{other_nonce}.V0", parts[0]),
            "Refresh nonce is invalid",
        ),
        (
            format!("{}.{}.V1", parts[0], parts[1]),
            "Refresh token version is invalid",
        ),
        (
            format!("{}.{}.", parts[0], parts[1]),
            "Refresh token version is invalid",
        ),
    ];
    for (bad, message) in &cases {
        let (status, body) = refresh_form(&http, &gw, bad).await;
        assert_eq!(
            (status, body["errors"].as_str().unwrap_or("")),
            (StatusCode::UNAUTHORIZED, *message),
            "{bad}"
        );
    }
    let (status, body) = refresh_form(&http, &gw, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_token_of_the_earlier_shape_still_refreshes() {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let gw = gateway(&redis, &upstream.url, "");
    let http = reqwest::Client::new();

    // A session whose current token is of the earlier shape, `v1:<sealed>`
    // (no outer nonce and version), as the previous release stored it.
    let session = open_session(&http, &gw, "mobile").await;
    let token = session["refresh_token"].as_str().unwrap();
    let earlier = token.split('.').next().unwrap().to_owned();
    let key = format!("sis:s:{{{}}}", session["session_handle"].as_str().unwrap());
    let hash = sis_gateway::tokens::token_hash(&earlier);
    assert_eq!(redis.cli(&["HSET", &key, "cur", &hash]), "0");

    let (status, body) = refresh_form(&http, &gw, &earlier).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Its successor comes in the current shape, and refreshes in turn.
    let next = body["data"]["refresh_token"].as_str().unwrap();
    assert_eq!(next.split('.').count(), 3);
    assert!(next.ends_with(".V0"));
    let (status, body) = refresh_form(&http, &gw, next).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The earlier token's successor has been used: replaying it is theft,
    // as for any token.
    let (status, replay) = refresh_form(&http, &gw, &earlier).await;
    assert_eq!(
        (status, replay["errors"].as_str().unwrap_or("")),
        (StatusCode::UNAUTHORIZED, "Token theft detected")
    );
}

/// What the login service received: method, path and query, headers, body.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A login service that records every request and answers 200 `{"ok":true}`.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let record = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes().to_vec();
                        record.lock().unwrap().push(Recorded {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(n, v)| {
                                    (
                                        n.as_str().to_owned(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect(),
                            body,
                        });
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, log)
}

#[tokio::test]
async fn sign_in_traffic_reaches_the_login_service_and_intercepted_endpoints_do_not() {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let (login_url, log) = recording_upstream().await;
    let gw = gateway(
        &redis,
        &upstream.url,
        &format!("[sign_in]\nupstream = \"{login_url}\""),
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = open_session(&http, &gw, "web").await;
    let refresh = session["refresh_token"].as_str().unwrap();
    let anti_csrf = session["anti_csrf_token"].as_str().unwrap();
    let access = session["access_token"].as_str().unwrap();
    let cookies = format!(
        "vagov_access_token={access}; vagov_refresh_token=v1%3A{}; other=kept; vagov_anti_csrf_token={anti_csrf}",
        &refresh[3..]
    );

    let authorize =
        "/v0/sign_in/authorize?type=logingov&client_id=web&code_challenge=x%2By&acr=ial2";
    let callback = "/v0/sign_in/callback?code=abc&state=s%20t";
    let token_body = "grant_type=authorization_code&code=c0de&code_verifier=v%2Bw";
    let requests = [
        ("GET", authorize, None),
        ("GET", callback, None),
        ("POST", "/v0/sign_in/token", Some(token_body)),
        ("PUT", "/v0/sign_in/introspect/", Some("{\"a\":1}")),
        ("GET", "/v0/sign_in", None),
    ];
    for (method, path, body) in requests {
        let mut req = http
            .request(method.parse().unwrap(), gw.url(path))
            .header("cookie", &cookies)
            .header("x-sis-user-uuid", "spoofed");
        if let Some(body) = body {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{method} {path}");
        assert_eq!(res.text().await.unwrap(), "{\"ok\":true}");
        let seen = log.lock().unwrap().pop().expect("the login service saw it");
        assert_eq!(seen.method, method);
        assert_eq!(seen.uri, path);
        assert_eq!(seen.body, body.unwrap_or("").as_bytes());
        let cookie = seen.header("cookie").unwrap_or("");
        assert!(!cookie.contains("refresh_token"), "{cookie}");
        assert!(!cookie.contains("anti_csrf"), "{cookie}");
        assert!(cookie.contains("other=kept"), "{cookie}");
        assert!(seen.header("x-sis-user-uuid").is_none());
    }

    // The endpoints the gateway answers never reach the login service.
    let form = [("refresh_token", refresh), ("anti_csrf_token", anti_csrf)];
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for (method, path) in [
        ("GET", "/v0/sign_in/openid_connect/certs"),
        ("GET", "/v0/sign_in/revoke_all_sessions"),
        ("POST", "/v0/sign_in/revoke"),
        ("GET", "/v0/sign_in/logout?client_id=web"),
        ("GET", "/v0/sign_in/refresh"),
        ("POST", "/v0/sign_in/refresh/"),
    ] {
        let res = http
            .request(method.parse().unwrap(), gw.url(path))
            .header("cookie", &cookies)
            .send()
            .await
            .unwrap();
        assert_ne!(
            res.text().await.unwrap(),
            "{\"ok\":true}",
            "{method} {path}"
        );
    }
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
}

#[tokio::test]
async fn without_a_login_service_other_sign_in_paths_are_404() {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let gw = gateway(&redis, &upstream.url, "");
    let http = reqwest::Client::new();
    for path in [
        "/v0/sign_in/authorize?client_id=web",
        "/v0/sign_in/callback",
        "/v0/sign_in/token",
        "/v0/sign_in",
    ] {
        let res = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            res.json::<Value>().await.unwrap(),
            json!({"errors": "Not found"})
        );
    }
    assert_eq!(
        upstream.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn logout_needs_a_known_client_id() {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let gw = gateway(&redis, &upstream.url, "");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = open_session(&http, &gw, "web").await;
    let access = session["access_token"].as_str().unwrap();
    let cookie = format!("vagov_access_token={access}");

    for query in ["", "?client_id=", "?client_id=nobody", "?clientid=web"] {
        let res = http
            .get(gw.url(&format!("/v0/sign_in/logout{query}")))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{query:?}");
        assert!(res.headers().get("set-cookie").is_none());
        assert_eq!(
            res.json::<Value>().await.unwrap(),
            json!({"errors": "Client id is not valid"})
        );
    }
    // Nothing was revoked: the session still refreshes.
    let form = [
        ("refresh_token", session["refresh_token"].as_str().unwrap()),
        (
            "anti_csrf_token",
            session["anti_csrf_token"].as_str().unwrap(),
        ),
    ];
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let new_access = common::set_cookies(res.headers())
        .into_iter()
        .find(|c| c.name() == "vagov_access_token")
        .unwrap()
        .value()
        .to_owned();

    // A known client: the session ends and the client's redirect follows
    // (the access cookie quoted, as some clients send it).
    let res = http
        .get(gw.url("/v0/sign_in/logout?client_id=web"))
        .header("cookie", format!("vagov_access_token=\"{new_access}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(
        res.headers()["location"],
        "https://www.example.gov/signed-out"
    );
    assert_eq!(
        redis.cli(&[
            "EXISTS",
            &format!("sis:s:{{{}}}", session["session_handle"].as_str().unwrap())
        ]),
        "0"
    );
}

#[tokio::test]
async fn inline_refresh_reads_encoded_and_quoted_cookies() {
    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let gw = gateway(&redis, &upstream.url, "");
    let http = reqwest::Client::new();

    type CookieForm = fn(&str) -> String;
    let forms: [(&str, CookieForm); 4] = [
        ("raw", |t| t.to_owned()),
        ("percent-encoded", |t| t.replace(':', "%3A")),
        ("quoted", |t| format!("\"{t}\"")),
        ("quoted and encoded", |t| {
            format!("\"{}\"", t.replace(':', "%3A"))
        }),
    ];
    for (name, form) in forms {
        let session = open_session(&http, &gw, "web").await;
        let refresh = session["refresh_token"].as_str().unwrap();
        let anti_csrf = session["anti_csrf_token"].as_str().unwrap();
        // No access cookie: the gateway must refresh inline from the
        // refresh cookie, in whatever form it came.
        let res = http
            .get(gw.url("/app/page"))
            .header(
                "cookie",
                format!(
                    "vagov_refresh_token={}; vagov_anti_csrf_token={}",
                    form(refresh),
                    form(anti_csrf)
                ),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{name}");
        let cookies = common::set_cookies(res.headers());
        let rotated = cookies
            .iter()
            .find(|c| c.name() == "vagov_refresh_token")
            .unwrap_or_else(|| panic!("{name}: rotated cookies"));
        assert_ne!(rotated.value(), refresh);
        let body: Value = res.json().await.unwrap();
        let headers = body["headers"].to_string();
        assert!(headers.contains("user-1"), "{name}: signed in: {headers}");
        assert!(!headers.contains("vagov_refresh_token"), "{name}");
        assert!(!headers.contains(&refresh[3..20]), "{name}");
    }
}
