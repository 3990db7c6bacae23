//! The gateway in front of an existing Sign-in Service (README, Putting
//! sis-gateway in front of an existing Sign-in Service): answers of a
//! Rails-style login service that carry its own tokens come back to the client
//! with the gateway's, which then refresh at the gateway alone.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::gateway::{echoed, echoed_headers};
use common::gateway::{temp_path, TestGateway};
use common::redis::RedisServer;
use common::sis::{client, cookie_value, everything, now_secs, set_cookie_lines, StandIn};
use reqwest::StatusCode;
use serde_json::{json, Value};

const NOT_ADOPTED: &str = r#"{"errors":"Sign-in could not be adopted"}"#;

async fn stand_in() -> StandIn {
    StandIn::start().await
}

fn gateway(redis: &RedisServer, login: &StandIn) -> TestGateway {
    TestGateway::start(format!(
        r#"
[store]
url = "{}"
[cookies]
secure = false
refresh_path = "/"
[sign_in]
upstream = "{}"
[sign_in.adopt]
jwks = "file:{}"
issuer = "va.gov sign in"
[[clients]]
client_id = "mobile"
authentication = "api"
[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = true
[[routes]]
path_prefix = "/app"
upstream = "{}"
auth = "session"
[[routes]]
path_prefix = "/api"
upstream = "{}"
auth = "required"
"#,
        redis.url(),
        login.url,
        login.jwks_file.display(),
        login.apps,
        login.apps,
    ))
}

#[tokio::test]
async fn an_api_token_exchange_is_adopted_and_refreshes_at_the_gateway() {
    let redis = RedisServer::start();
    let login = stand_in().await;
    let gw = gateway(&redis, &login);
    let http = client();

    let res = http
        .post(gw.url("/v0/sign_in/token"))
        .form(&[("grant_type", "authorization_code"), ("code", "c")])
        .send()
        .await
        .unwrap();
    let (status, headers, text) = everything(res).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(!login.leaks(&headers, &text), "{text}");
    assert_eq!(headers["x-request-from"], "stand-in");
    let body: Value = serde_json::from_str(&text).unwrap();
    // Other fields are kept, in `data` and beside it.
    assert_eq!(body["meta"], json!({"kept": true}));
    assert_eq!(body["data"]["note"], "kept");
    // The API client has no anti-CSRF token at the gateway.
    assert!(body["data"].get("anti_csrf_token").is_none(), "{body}");
    let access = body["data"]["access_token"].as_str().unwrap();
    let refresh = body["data"]["refresh_token"].as_str().unwrap().to_owned();
    assert!(
        refresh.starts_with("v1:") && refresh.ends_with(".V0"),
        "{refresh}"
    );

    // The access token is the gateway's: it verifies against its certs and
    // carries the user, client and attributes of the upstream's.
    let certs: Value = reqwest::get(gw.url("/v0/sign_in/openid_connect/certs"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(certs["keys"][0].clone()).unwrap();
    let header = jsonwebtoken::decode_header(access).unwrap();
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(
        access,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "user-uuid-1");
    assert_eq!(claims["client_id"], "mobile");
    assert_eq!(claims["user_attributes"]["email"], "ada@example.gov");
    assert_ne!(
        claims["session_handle"],
        "9a4c4f0f-6a38-4c07-9d7d-2a26b3f0f3ad"
    );

    // Refreshes are the gateway's alone from here on.
    let calls = login.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 1);
    let mut token = refresh;
    for _ in 0..3 {
        let res = http
            .post(gw.url("/v0/sign_in/refresh"))
            .form(&[("refresh_token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        token = body["data"]["refresh_token"].as_str().unwrap().to_owned();
    }
    assert_eq!(login.calls.load(Ordering::SeqCst), calls);
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"sis_adoptions_total{outcome="adopted"} 1"#),
        "{metrics}"
    );

    // A token that is neither the gateway's nor of SiS shape is refused
    // without a call upstream.
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&[("refresh_token", "not-a-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn a_browser_callback_is_adopted_with_the_gateways_cookies() {
    let redis = RedisServer::start();
    let login = stand_in().await;
    let gw = gateway(&redis, &login);
    let http = client();

    let res = http
        .get(gw.url("/v0/sign_in/callback?code=c&state=s&client_id=web"))
        .send()
        .await
        .unwrap();
    let (status, headers, text) = everything(res).await;
    // Status, Location and the other cookie are the stand-in's.
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(
        headers["location"],
        "https://www.example.gov/?type=logingov"
    );
    assert!(!login.leaks(&headers, &text), "{headers:?}");
    let cookies = set_cookie_lines(&headers);
    assert!(
        cookies
            .iter()
            .any(|c| c == "_vets_session=abc; path=/; HttpOnly"),
        "{cookies:?}"
    );
    // Exactly the gateway's four `vagov_` cookies.
    let vagov: Vec<&String> = cookies.iter().filter(|c| c.starts_with("vagov_")).collect();
    assert_eq!(vagov.len(), 4, "{cookies:?}");
    let refresh = cookie_value(&cookies, "vagov_refresh_token").unwrap();
    let anti_csrf = cookie_value(&cookies, "vagov_anti_csrf_token").unwrap();
    assert!(refresh.starts_with("v1:"), "{refresh}");
    let refresh_cookie = cookies
        .iter()
        .find(|c| c.starts_with("vagov_refresh_token="))
        .unwrap();
    // The gateway's attributes, not the stand-in's.
    assert!(refresh_cookie.contains("Path=/;"), "{refresh_cookie}");

    // The browser's refresh goes to the gateway alone.
    let calls = login.calls.load(Ordering::SeqCst);
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .header(
            "cookie",
            format!("vagov_refresh_token={refresh}; vagov_anti_csrf_token={anti_csrf}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let rotated = set_cookie_lines(res.headers());
    assert!(cookie_value(&rotated, "vagov_refresh_token").is_some_and(|r| r != refresh));
    assert_eq!(login.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn bundles_that_do_not_verify_are_refused() {
    let redis = RedisServer::start();
    let login = stand_in().await;
    let gw = gateway(&redis, &login);
    let http = client();

    for path in [
        "/v0/sign_in/token?rogue=1",
        "/v0/sign_in/token?expired=1",
        "/v0/sign_in/token?client_id=unknown",
        "/v0/sign_in/callback?rogue=1&client_id=web",
        "/v0/sign_in/callback?expired=1&client_id=web",
        // Too large to read: refused rather than passed on unread.
        "/v0/sign_in/big",
    ] {
        let res = http.get(gw.url(path)).send().await.unwrap();
        let (status, headers, text) = everything(res).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}: {text}");
        assert_eq!(text, NOT_ADOPTED, "{path}");
        assert!(!login.leaks(&headers, &text), "{path}");
        assert!(set_cookie_lines(&headers).is_empty(), "{path}");
    }
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"sis_adoptions_total{outcome="invalid"} 2"#,
        r#"sis_adoptions_total{outcome="expired"} 2"#,
        r#"sis_adoptions_total{outcome="unknown_client"} 1"#,
        r#"sis_adoptions_total{outcome="unreadable"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(!metrics.contains(r#"outcome="adopted""#), "{metrics}");
}

#[tokio::test]
async fn answers_without_a_bundle_pass_as_they_came() {
    let redis = RedisServer::start();
    let login = stand_in().await;
    let gw = gateway(&redis, &login);
    let res = client()
        .post(gw.url("/v0/sign_in/introspect"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.text().await.unwrap(),
        r#"{"data":{"active":true},"refresh_token":null}"#
    );
}

#[tokio::test]
async fn the_login_services_access_tokens_are_accepted_until_they_expire() {
    let redis = RedisServer::start();
    let login = stand_in().await;
    let gw = gateway(&redis, &login);
    let http = client();
    let token = login.key.access_token("web", now_secs() + 300);

    // As a Bearer header, and as the percent-encoded cookie the Rails
    // service wrote.
    let encoded = percent_encoding::utf8_percent_encode(&token, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    for req in [
        http.get(gw.url("/app/x")).bearer_auth(&token),
        http.get(gw.url("/api/x")).bearer_auth(&token),
        http.get(gw.url("/app/x"))
            .header("cookie", format!("vagov_access_token={encoded}")),
    ] {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let seen = echoed_headers(&res.json().await.unwrap());
        assert_eq!(echoed(&seen, "x-sis-user-uuid"), ["user-uuid-1"]);
        assert_eq!(echoed(&seen, "x-sis-client-id"), ["web"]);
        assert_eq!(
            echoed(&seen, "x-sis-session-handle"),
            ["9a4c4f0f-6a38-4c07-9d7d-2a26b3f0f3ad"]
        );
    }

    // revoke_all_sessions takes it as the gateway's own.
    let res = http
        .get(gw.url("/v0/sign_in/revoke_all_sessions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Signed by a key not in the JWKS: no identity, 401 where one is needed.
    let rogue = login.rogue.access_token("web", now_secs() + 300);
    let res = http
        .get(gw.url("/app/x"))
        .bearer_auth(&rogue)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = echoed_headers(&res.json().await.unwrap());
    assert!(echoed(&seen, "x-sis-user-uuid").is_empty());
    let res = http
        .get(gw.url("/api/x"))
        .bearer_auth(&rogue)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Expired: 403, as for the gateway's own.
    let expired = login.key.access_token("web", now_secs() - 1);
    let res = http
        .get(gw.url("/api/x"))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        res.text().await.unwrap(),
        r#"{"errors":"Access token has expired"}"#
    );
}

/// The gateway binary on `config`, logging JSON; every stdout line is kept.
struct Logged {
    child: std::process::Child,
    config: std::path::PathBuf,
    addr: std::net::SocketAddr,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Logged {
    fn spawn(config: &str) -> Logged {
        use std::io::BufRead;
        let path = temp_path("adopt-gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = std::process::Command::new(common::gateway::binary())
            .args(["--log-format", "json", "run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "public listener ready" {
                        let _ = tx.send(v["addr"].as_str().unwrap().parse().unwrap());
                    }
                }
                kept.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the gateway reports its listener");
        Logged {
            child,
            config: path,
            addr,
            lines,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_access_log_says_when_an_answer_was_adopted_or_migrated_and_never_holds_a_token() {
    let login = stand_in().await;
    let gw = Logged::spawn(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[sign_in]
upstream = "{}"
[sign_in.adopt]
jwks = "file:{}"
[[clients]]
client_id = "mobile"
authentication = "api"
[[routes]]
path_prefix = "/"
upstream = "{}"
"#,
        login.url,
        login.jwks_file.display(),
        login.apps,
    ));
    let http = client();
    let res = http.post(gw.url("/v0/sign_in/token")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let gateway_refresh = body["data"]["refresh_token"].as_str().unwrap().to_owned();
    let gateway_access = body["data"]["access_token"].as_str().unwrap().to_owned();
    let res = http
        .post(gw.url("/v0/sign_in/token?rogue=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    // A refresh token issued before the gateway went in is migrated.
    let (old, _) = login.signed_in("mobile");
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&[("refresh_token", old.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let migrated: Value = res.json().await.unwrap();
    let migrated_refresh = migrated["data"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The access lines are written as the answers go out; give them a moment.
    let lines = |path: &'static str| {
        gw.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "access" && v["path"] == path)
            .collect::<Vec<Value>>()
    };
    let mut access: Vec<Value> = Vec::new();
    for _ in 0..50 {
        access = lines("/v0/sign_in/token");
        if access.len() == 2 && lines("/v0/sign_in/refresh").len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(access.len(), 2, "{access:?}");
    assert_eq!(access[0]["adoption"], "adopted", "{}", access[0]);
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[1]["adoption"], "invalid", "{}", access[1]);
    assert_eq!(access[1]["status"], 502);
    let refresh = lines("/v0/sign_in/refresh");
    assert_eq!(refresh.len(), 1, "{refresh:?}");
    assert_eq!(refresh[0]["adoption"], "migrated", "{}", refresh[0]);
    assert_eq!(refresh[0]["status"], 200);

    let all = gw.lines.lock().unwrap().join("\n");
    assert!(
        all.contains("adopted a sign-in of the login service"),
        "{all}"
    );
    assert!(!login.leaks_in(&all), "{all}");
    assert!(
        all.contains("migrated a session of the login service"),
        "{all}"
    );
    for secret in [
        gateway_refresh.as_str(),
        gateway_access.as_str(),
        migrated_refresh.as_str(),
    ] {
        assert!(!all.contains(secret), "{secret} in the log:\n{all}");
    }
    // No JWT (the stand-in's, signed or rogue) either.
    assert!(!all.contains("eyJ"), "{all}");
}

#[tokio::test]
async fn the_jwks_is_read_again_on_reload() {
    let login = stand_in().await;
    let jwks = temp_path("reloaded-jwks.json");
    std::fs::copy(&login.jwks_file, &jwks).unwrap();
    let gw = Logged::spawn(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[sign_in]
upstream = "{}"
[sign_in.adopt]
jwks = "file:{}"
[[clients]]
client_id = "mobile"
authentication = "api"
"#,
        login.url,
        jwks.display(),
    ));
    let http = client();
    let status = |path: &'static str| {
        let http = http.clone();
        let url = gw.url(path);
        async move { http.post(url).send().await.unwrap().status() }
    };
    assert_eq!(
        status("/v0/sign_in/token?rogue=1").await,
        StatusCode::BAD_GATEWAY
    );

    // The login service rotated to the other key: publish it and reload.
    std::fs::write(&jwks, login.rogue_jwks.to_string()).unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let config = gw.config.display().to_string();
    for _ in 0..100 {
        let lines = gw.lines.lock().unwrap().join("\n");
        if lines.contains("configuration reloaded") && lines.contains(&config) {
            break;
        }
        drop(lines);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status("/v0/sign_in/token?rogue=1").await, StatusCode::OK);
    assert_eq!(status("/v0/sign_in/token").await, StatusCode::BAD_GATEWAY);
}
