//! The SiS endpoints over real HTTP against a real `redis-server`.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::gateway::TestGateway;
use common::redis::RedisServer;
use common::set_cookies;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub const SEALING_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const ADMIN: &str = "test-admin-token";
const ORIGIN: &str = "https://www.example.gov";

fn config(redis_url: &str, extra_tokens: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN}"
[store]
url = "{redis_url}"
timeout = "250ms"
[tokens]
sealing_keys = ["{SEALING_KEY}"]
{extra_tokens}
[sign_in]
failures_per_minute = 0
cors_origins = ["{ORIGIN}"]
[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = true
[[clients]]
client_id = "mobile"
authentication = "api"
anti_csrf = false
refresh_token_ttl = "45d"
[[clients]]
client_id = "api_csrf"
authentication = "api"
anti_csrf = true
[[clients]]
client_id = "short"
authentication = "api"
refresh_token_ttl = "1s"
[[routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:9"
"#
    )
}

struct Env {
    redis: RedisServer,
    gw: TestGateway,
    http: reqwest::Client,
}

impl Env {
    async fn start(extra_tokens: &str) -> Env {
        let redis = RedisServer::start();
        let gw = TestGateway::start(config(&redis.url(), extra_tokens));
        Env {
            redis,
            gw,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.addr, path)
    }

    async fn create(&self, client_id: &str) -> Value {
        let res = self
            .http
            .post(format!("http://{}/admin/sessions", self.gw.admin_addr))
            .bearer_auth(ADMIN)
            .json(&json!({"user_uuid": "u-1", "client_id": client_id, "user_attributes": {"first_name": "Ada"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    /// An API refresh with the token as a URI-encoded query parameter.
    async fn refresh_api(&self, token: &str, anti_csrf: Option<&str>) -> (StatusCode, Value) {
        let mut q = vec![("refresh_token", token)];
        if let Some(a) = anti_csrf {
            q.push(("anti_csrf_token", a));
        }
        let res = self
            .http
            .post(self.url("/v0/sign_in/refresh"))
            .query(&q)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

fn error_of(body: &Value) -> &str {
    body["errors"].as_str().unwrap_or("")
}

#[tokio::test]
async fn api_client_rotation_and_error_table() {
    let env = Env::start("").await;
    let s = env.create("mobile").await;
    let t0 = s["refresh_token"].as_str().unwrap().to_owned();
    assert!(t0.starts_with("v1:"));

    // Raw and URI-encoded forms both work (reqwest encodes ':' as %3A).
    let (st, body) = env.refresh_api(&t0, None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let t1 = body["data"]["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(t1, t0);
    assert!(
        body["data"]["access_token"]
            .as_str()
            .unwrap()
            .split('.')
            .count()
            == 3
    );
    assert!(body["data"].get("anti_csrf_token").is_none());

    // Form body with the raw token.
    let res = env
        .http
        .post(env.url("/v0/sign_in/refresh"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("refresh_token={t1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let t2 = body["data"]["refresh_token"].as_str().unwrap().to_owned();

    // JSON body.
    let res = env
        .http
        .post(env.url("/v0/sign_in/refresh"))
        .json(&json!({ "refresh_token": t2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // 400: nothing given, or empty.
    let (st, body) = env.refresh_api("", None).await;
    assert_eq!(
        (st, error_of(&body)),
        (StatusCode::BAD_REQUEST, "Refresh token is not defined")
    );

    // 401: garbage, truncated and tampered tokens.
    let mut tampered = t2.clone().into_bytes();
    // A byte of the sealed part (before the outer nonce and version).
    let i = t2.find('.').unwrap() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    for bad in [
        "garbage",
        "v1:",
        "v1:AAAA",
        &t2[..t2.len() - 3],
        std::str::from_utf8(&tampered).unwrap(),
    ] {
        let (st, body) = env.refresh_api(bad, None).await;
        assert_eq!(
            (st, error_of(&body)),
            (
                StatusCode::UNAUTHORIZED,
                "Refresh token cannot be decrypted"
            ),
            "{bad}"
        );
    }

    // 401: a token sealed by this gateway's key but of another version.
    let sealer = sis_gateway::tokens::seal::Sealer::new(&[key()]);
    let payload = sis_gateway::tokens::seal::RefreshPayload::new(
        s["session_handle"].as_str().unwrap(),
        "u-1",
        "mobile",
    );
    let foreign = sealer.seal_with_version(&payload, 0xff);
    let (st, body) = env.refresh_api(&foreign, None).await;
    assert_eq!(
        (st, error_of(&body)),
        (StatusCode::UNAUTHORIZED, "Refresh token version is invalid")
    );

    // 401: a well-sealed token of a session that does not exist.
    let stranger = sealer.seal(&sis_gateway::tokens::seal::RefreshPayload::new(
        "00000000-0000-4000-8000-000000000000",
        "u-1",
        "mobile",
    ));
    let (st, body) = env.refresh_api(&stranger, None).await;
    assert_eq!(
        (st, error_of(&body)),
        (StatusCode::UNAUTHORIZED, "No valid Session found")
    );

    // 401: theft — t0 was used, t1 was used; replaying t0 revokes the session.
    let (st, body) = env.refresh_api(&t0, None).await;
    assert_eq!(
        (st, error_of(&body)),
        (StatusCode::UNAUTHORIZED, "Token theft detected")
    );
    let (st, body) = env.refresh_api(&t2, None).await;
    assert_eq!(
        (st, error_of(&body)),
        (StatusCode::UNAUTHORIZED, "No valid Session found")
    );
    drop(env.redis);
}

fn key() -> [u8; 32] {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(SEALING_KEY)
        .unwrap()
        .try_into()
        .unwrap()
}

#[tokio::test]
async fn anti_csrf_is_checked_and_a_wrong_one_does_not_revoke() {
    let env = Env::start("").await;
    let s = env.create("api_csrf").await;
    let t = s["refresh_token"].as_str().unwrap();
    let csrf = s["anti_csrf_token"].as_str().unwrap();
    for wrong in [None, Some("nope"), Some("")] {
        let (st, body) = env.refresh_api(t, wrong).await;
        assert_eq!(
            (st, error_of(&body)),
            (StatusCode::UNAUTHORIZED, "Anti CSRF token is not valid")
        );
    }
    let (st, body) = env.refresh_api(t, Some(csrf)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let new_csrf = body["data"]["anti_csrf_token"].as_str().unwrap();
    assert_ne!(new_csrf, csrf, "a fresh anti-CSRF token on every rotation");
}

#[tokio::test]
async fn cookie_client_flow_sets_four_cookies() {
    let env = Env::start("").await;
    let s = env.create("web").await;
    let t = s["refresh_token"].as_str().unwrap();
    let csrf = s["anti_csrf_token"].as_str().unwrap();
    let res = env
        .http
        .post(env.url("/v0/sign_in/refresh"))
        .header(
            "cookie",
            format!("vagov_refresh_token={t}; vagov_anti_csrf_token={csrf}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookies = set_cookies(res.headers());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({}));
    let names: Vec<_> = cookies.iter().map(|c| c.name().to_owned()).collect();
    assert_eq!(
        names,
        [
            "vagov_access_token",
            "vagov_refresh_token",
            "vagov_anti_csrf_token",
            "vagov_info_token"
        ]
    );
    let by = |n: &str| cookies.iter().find(|c| c.name() == n).unwrap();
    let refresh = by("vagov_refresh_token");
    assert_eq!(refresh.path(), Some("/v0/sign_in/refresh"));
    assert_eq!(refresh.http_only(), Some(true));
    assert_eq!(refresh.secure(), Some(true));
    assert_eq!(refresh.same_site(), Some(cookie::SameSite::Lax));
    assert_ne!(refresh.value(), t);
    assert_eq!(by("vagov_access_token").path(), Some("/"));
    assert_eq!(by("vagov_info_token").http_only(), None);
    let exp = refresh.expires_datetime().unwrap();
    for c in &cookies {
        assert_eq!(c.expires_datetime().unwrap(), exp, "{}", c.name());
    }
    let info = percent_encoding::percent_decode_str(by("vagov_info_token").value())
        .decode_utf8()
        .unwrap()
        .into_owned();
    let info: Value = serde_json::from_str(&info).unwrap();
    let re = info["refresh_token_expiration"].as_str().unwrap();
    assert!(re.ends_with('Z') && re.len() == 24, "{re}");

    // A stale cookie replayed after its successor was used: theft, and the
    // four cookies are expired.
    let c2 = by("vagov_refresh_token").value().to_owned();
    let csrf2 = by("vagov_anti_csrf_token").value().to_owned();
    let res = env
        .http
        .post(env.url("/v0/sign_in/refresh"))
        .header(
            "cookie",
            format!("vagov_refresh_token={c2}; vagov_anti_csrf_token={csrf2}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = env
        .http
        .post(env.url("/v0/sign_in/refresh"))
        .header(
            "cookie",
            format!("vagov_refresh_token={t}; vagov_anti_csrf_token={csrf}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let expired = set_cookies(res.headers());
    assert_eq!(expired.len(), 4);
    assert!(expired.iter().all(|c| c.value().is_empty()));
}

#[tokio::test]
async fn hundred_concurrent_refreshes_converge() {
    let env = Env::start("").await;
    let s = env.create("mobile").await;
    let t = s["refresh_token"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let http = env.http.clone();
        let url = env.url("/v0/sign_in/refresh");
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(url)
                .query(&[("refresh_token", t)])
                .send()
                .await
                .unwrap();
            let st = res.status();
            let body: Value = res.json().await.unwrap();
            (
                st,
                body["data"]["refresh_token"].as_str().map(str::to_owned),
            )
        }));
    }
    let mut successors = HashSet::new();
    for t in tasks {
        let (st, next) = t.await.unwrap();
        assert_eq!(st, StatusCode::OK);
        successors.insert(next.unwrap());
    }
    assert_eq!(successors.len(), 1, "no sibling tokens");
    let next = successors.into_iter().next().unwrap();
    let (st, _) = env.refresh_api(&next, None).await;
    assert_eq!(st, StatusCode::OK, "the one successor is live");
}

#[tokio::test]
async fn replay_after_the_window_is_theft() {
    let env = Env::start("refresh_grace = \"1s\"").await;
    let s = env.create("mobile").await;
    let t0 = s["refresh_token"].as_str().unwrap();
    let (_, b1) = env.refresh_api(t0, None).await;
    let t1 = b1["data"]["refresh_token"].as_str().unwrap();
    let (st, b) = env.refresh_api(t0, None).await;
    assert_eq!(st, StatusCode::OK, "inside the window: {b}");
    assert_eq!(
        b["data"]["refresh_token"].as_str().unwrap(),
        t1,
        "same successor"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, b) = env.refresh_api(t0, None).await;
    assert_eq!(
        (st, error_of(&b)),
        (StatusCode::UNAUTHORIZED, "Token theft detected")
    );
    let (st, b) = env.refresh_api(t1, None).await;
    assert_eq!(
        (st, error_of(&b)),
        (StatusCode::UNAUTHORIZED, "No valid Session found"),
        "the successor died with the session"
    );
}

#[tokio::test]
async fn expired_and_over_age_sessions() {
    let env = Env::start("session_max_age = \"3s\"").await;
    // Sliding expiry: the short client's refresh lifetime is 1s.
    let s = env.create("short").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, b) = env
        .refresh_api(s["refresh_token"].as_str().unwrap(), None)
        .await;
    assert_eq!(
        (st, error_of(&b)),
        (StatusCode::UNAUTHORIZED, "No valid Session found")
    );

    // Absolute lifetime: rotating every 0.7s keeps the session alive, but not
    // past session_max_age.
    let s = env.create("mobile").await;
    let mut t = s["refresh_token"].as_str().unwrap().to_owned();
    let started = Instant::now();
    loop {
        let (st, b) = env.refresh_api(&t, None).await;
        if started.elapsed() < Duration::from_millis(2800) {
            assert_eq!(st, StatusCode::OK, "{b}");
            t = b["data"]["refresh_token"].as_str().unwrap().to_owned();
        } else if started.elapsed() > Duration::from_millis(3200) {
            assert_eq!(
                (st, error_of(&b)),
                (StatusCode::UNAUTHORIZED, "No valid Session found")
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

#[tokio::test]
async fn redis_down_answers_503_and_loses_nothing() {
    let mut env = Env::start("").await;
    let s = env.create("mobile").await;
    let t = s["refresh_token"].as_str().unwrap().to_owned();
    let dot = t.find('.').unwrap();
    let other = if t.as_bytes()[dot - 5] == b'A' {
        "B"
    } else {
        "A"
    };
    let tampered = format!("{}{other}{}", &t[..dot - 5], &t[dot - 4..]);
    env.redis.stop();

    let started = Instant::now();
    let (st, b) = env.refresh_api(&t, None).await;
    let took = started.elapsed();
    assert_eq!(
        (st, error_of(&b)),
        (StatusCode::SERVICE_UNAVAILABLE, "Session store unavailable")
    );
    assert!(took < Duration::from_millis(250 + 150), "took {took:?}");
    // A forged token is refused without the store.
    let (st, b) = env.refresh_api(&tampered, None).await;
    assert_eq!(
        (st, error_of(&b)),
        (
            StatusCode::UNAUTHORIZED,
            "Refresh token cannot be decrypted"
        )
    );
    // Readiness follows the store.
    let ready = env
        .http
        .get(format!("http://{}/readyz", env.gw.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    env.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, b) = env.refresh_api(&t, None).await;
        if st == StatusCode::OK {
            break;
        }
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert!(Instant::now() < deadline, "store never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_dump_of_redis_holds_no_replayable_token() {
    let env = Env::start("").await;
    let mut tokens = Vec::new();
    for client in ["web", "mobile", "api_csrf"] {
        let s = env.create(client).await;
        let t = s["refresh_token"].as_str().unwrap().to_owned();
        let (_, b) = env.refresh_api(&t, s["anti_csrf_token"].as_str()).await;
        if let Some(next) = b["data"]["refresh_token"].as_str() {
            tokens.push(next.to_owned());
        }
        tokens.push(t);
    }
    let dump = env.redis.dump_all();
    assert!(!dump.is_empty());
    for t in &tokens {
        let body = &t[3..];
        assert!(
            !dump.windows(body.len()).any(|w| w == body.as_bytes()),
            "a token is stored"
        );
    }
    // Token-shaped: `v1:` and a run of URL-safe base64. The dump also holds
    // sealed random bytes, in which a bare `v1:` turns up now and then.
    let token_shaped = |w: &[u8]| {
        w.starts_with(b"v1:")
            && w[3..]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    };
    assert!(
        !dump.windows(3 + 16).any(token_shaped),
        "something token-shaped is stored"
    );
}

#[tokio::test]
async fn access_token_verifies_against_the_published_jwks() {
    let env = Env::start("").await;
    let s = env.create("mobile").await;
    let jwks: Value = env
        .http
        .get(env.url("/v0/sign_in/openid_connect/certs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = s["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.clone().unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let jwk = set.find(&kid).expect("kid published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&["mobile"]);
    v.set_issuer(&["va.gov sign in"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).unwrap();
    let c = data.claims;
    assert_eq!(c["sub"], "u-1");
    assert_eq!(c["client_id"], "mobile");
    assert_eq!(c["version"], "V0");
    assert_eq!(c["user_attributes"]["first_name"], "Ada");
    assert_eq!(c["session_handle"], s["session_handle"]);
    for k in [
        "jti",
        "iat",
        "exp",
        "refresh_token_hash",
        "anti_csrf_token",
        "last_regeneration_time",
    ] {
        assert!(!c[k].is_null(), "claim {k}");
    }
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
}

#[tokio::test]
async fn cors_for_listed_origins_only() {
    let env = Env::start("").await;
    let pre = env
        .http
        .request(reqwest::Method::OPTIONS, env.url("/v0/sign_in/refresh"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), StatusCode::NO_CONTENT);
    assert_eq!(pre.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(pre.headers()["access-control-allow-credentials"], "true");
    assert!(pre.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(pre.headers()["vary"], "Origin");

    let res = env
        .http
        .post(env.url("/v0/sign_in/refresh"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");

    for other in [
        "https://evil.example.com",
        "https://www.example.gov.evil.com",
    ] {
        let pre = env
            .http
            .request(reqwest::Method::OPTIONS, env.url("/v0/sign_in/refresh"))
            .header("origin", other)
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert!(pre.headers().get("access-control-allow-origin").is_none());
        assert!(pre
            .headers()
            .get("access-control-allow-credentials")
            .is_none());
    }
}

#[tokio::test]
async fn revoke_logout_and_admin_api() {
    let env = Env::start("").await;
    let admin = format!("http://{}", env.gw.admin_addr);

    // Admin auth.
    let res = env
        .http
        .get(format!("{admin}/admin/sessions?user_uuid=u-1"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = env
        .http
        .post(format!("{admin}/admin/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({"user_uuid": "u-1", "client_id": "nobody"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let a = env.create("mobile").await;
    let b = env.create("mobile").await;
    let c = env.create("web").await;
    let list: Value = env
        .http
        .get(format!("{admin}/admin/sessions?user_uuid=u-1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 3);

    // revoke with the refresh token.
    let res = env
        .http
        .post(env.url("/v0/sign_in/revoke"))
        .query(&[("refresh_token", a["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (st, body) = env
        .refresh_api(a["refresh_token"].as_str().unwrap(), None)
        .await;
    assert_eq!(
        (st, error_of(&body)),
        (StatusCode::UNAUTHORIZED, "No valid Session found")
    );

    // DELETE through the admin API.
    let res = env
        .http
        .delete(format!(
            "{admin}/admin/sessions/{}",
            b["session_handle"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (st, _) = env
        .refresh_api(b["refresh_token"].as_str().unwrap(), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // logout with the access cookie: session gone, cookies expired.
    let res = env
        .http
        .get(env.url("/v0/sign_in/logout?client_id=web"))
        .header(
            "cookie",
            format!("vagov_access_token={}", c["access_token"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(set_cookies(res.headers()).len(), 4);
    let (st, _) = env
        .refresh_api(
            c["refresh_token"].as_str().unwrap(),
            c["anti_csrf_token"].as_str(),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // revoke_all_sessions needs a valid access token, then ends every session.
    let d = env.create("mobile").await;
    let e = env.create("mobile").await;
    let res = env
        .http
        .get(env.url("/v0/sign_in/revoke_all_sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = env
        .http
        .get(env.url("/v0/sign_in/revoke_all_sessions"))
        .bearer_auth(d["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for s in [&d, &e] {
        let (st, _) = env
            .refresh_api(s["refresh_token"].as_str().unwrap(), None)
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
}
