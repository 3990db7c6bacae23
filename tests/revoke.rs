//! `POST /v0/sign_in/revoke` through the real gateway and a real Redis: which
//! token revokes a session, and what a rotated-away token answers (README, The
//! sign-in endpoints).

mod common;

use common::gateway::TestGateway;
use common::redis::RedisServer;
use common::{refresh_api, set_cookies};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token";
const REFRESH: &str = "/v0/sign_in/refresh";
const REVOKE: &str = "/v0/sign_in/revoke";

struct Env {
    gw: TestGateway,
    http: reqwest::Client,
    _redis: RedisServer,
}

impl Env {
    fn start(grace: &str) -> Env {
        let redis = RedisServer::start();
        let gw = TestGateway::start(format!(
            r#"
[server]
[admin]
token = "{ADMIN}"
[store]
url = "{url}"
timeout = "250ms"
[tokens]
sealing_keys = ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]
refresh_grace = "{grace}"
[cookies]
secure = false
[sign_in]
failures_per_minute = 0
[[clients]]
client_id = "mobile"
authentication = "api"
anti_csrf = false
[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = false
"#,
            url = redis.url(),
        ));
        Env {
            gw,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap(),
            _redis: redis,
        }
    }

    /// A new session's first refresh token.
    async fn create(&self, client_id: &str) -> String {
        let res = self
            .http
            .post(self.gw.admin_url("/admin/sessions"))
            .bearer_auth(ADMIN)
            .json(&json!({"user_uuid": "u-revoke", "client_id": client_id}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        body["refresh_token"].as_str().unwrap().to_owned()
    }

    /// Refreshes an API client's token; insists on success.
    async fn refresh(&self, token: &str) -> String {
        let (st, next) = refresh_api(&self.http, &self.gw.url(REFRESH), token).await;
        assert_eq!(st, StatusCode::OK, "{next:?}");
        next.unwrap()
    }

    async fn revoke(&self, token: &str) -> reqwest::Response {
        self.http
            .post(self.gw.url(REVOKE))
            .form(&[("refresh_token", token)])
            .send()
            .await
            .unwrap()
    }
}

async fn error_of(res: reqwest::Response) -> (StatusCode, String) {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (
        status,
        body["errors"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_with_a_rotated_away_token_is_theft_and_revokes_all_the_same() {
    // No replay window: a rotated-away token is outside it at once.
    let env = Env::start("0s");
    let t0 = env.create("mobile").await;
    let t1 = env.refresh(&t0).await;
    let t2 = env.refresh(&t1).await;

    assert_eq!(
        error_of(env.revoke(&t0).await).await,
        (StatusCode::UNAUTHORIZED, "Token theft detected".into())
    );
    // The session is gone: its current token no longer refreshes nor revokes.
    let (st, body) = refresh_api(&env.http, &env.gw.url(REFRESH), &t2).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body:?}");
    assert!(body.unwrap_err().contains("No valid Session found"));
    assert_eq!(
        error_of(env.revoke(&t2).await).await,
        (StatusCode::UNAUTHORIZED, "No valid Session found".into())
    );

    // The current token revokes: 200, empty body, and the session is gone.
    let t0 = env.create("mobile").await;
    let t1 = env.refresh(&t0).await;
    let res = env.revoke(&t1).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap().is_empty());
    let (st, _) = refresh_api(&env.http, &env.gw.url(REFRESH), &t1).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_inside_the_replay_window_is_a_plain_revoke() {
    let env = Env::start("30s");
    let t0 = env.create("mobile").await;
    let t1 = env.refresh(&t0).await;
    // t0 is still replayable: revoking with it is not theft.
    let res = env.revoke(&t0).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (st, body) = refresh_api(&env.http, &env.gw.url(REFRESH), &t1).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body:?}");
    // Once the successor was used, the old token is outside the window.
    let t0 = env.create("mobile").await;
    let t1 = env.refresh(&t0).await;
    let t2 = env.refresh(&t1).await;
    assert_eq!(
        error_of(env.revoke(&t0).await).await,
        (StatusCode::UNAUTHORIZED, "Token theft detected".into())
    );
    let (st, _) = refresh_api(&env.http, &env.gw.url(REFRESH), &t2).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn theft_on_revoke_expires_a_cookie_clients_cookies() {
    let env = Env::start("0s");
    let t0 = env.create("web").await;
    // A cookie client refreshes with its cookie; the new token comes back
    // in a Set-Cookie.
    let res = env
        .http
        .post(env.gw.url(REFRESH))
        .header("cookie", format!("vagov_refresh_token={t0}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let t1 = set_cookies(res.headers())
        .into_iter()
        .find(|c| c.name() == "vagov_refresh_token")
        .expect("a new refresh cookie")
        .value()
        .to_owned();
    assert_ne!(t1, t0);

    let res = env
        .http
        .post(env.gw.url(REVOKE))
        .header("cookie", format!("vagov_refresh_token={t0}"))
        .send()
        .await
        .unwrap();
    let expired: Vec<String> = set_cookies(res.headers())
        .into_iter()
        .filter(|c| c.value().is_empty())
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(
        error_of(res).await,
        (StatusCode::UNAUTHORIZED, "Token theft detected".into())
    );
    assert!(
        expired.iter().any(|n| n == "vagov_refresh_token"),
        "cookies expired: {expired:?}"
    );
    let res = env
        .http
        .post(env.gw.url(REFRESH))
        .header("cookie", format!("vagov_refresh_token={t1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(res).await,
        (StatusCode::UNAUTHORIZED, "No valid Session found".into())
    );
}
