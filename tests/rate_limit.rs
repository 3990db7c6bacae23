//! `sign_in.failures_per_minute`: failed sign-in calls per client address,
//! over real HTTP against a real `redis-server`. Client addresses come from
//! real source addresses on the loopback network (127.0.0.x) and from
//! `X-Forwarded-For` sent by a trusted proxy.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::gateway::TestGateway;
use common::redis::RedisServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SEALING_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const ADMIN: &str = "test-admin-token";
const LIMIT: usize = 5;

fn config(redis_url: &str) -> String {
    format!(
        r#"
[server]
trusted_proxies = ["127.0.0.1/32"]
[admin]
token = "{ADMIN}"
[store]
url = "{redis_url}"
[tokens]
sealing_keys = ["{SEALING_KEY}"]
[sign_in]
failures_per_minute = {LIMIT}
[[clients]]
client_id = "mobile"
authentication = "api"
anti_csrf = false
[[routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:9"
"#
    )
}

struct Env {
    _redis: RedisServer,
    gw: TestGateway,
}

impl Env {
    fn start() -> Env {
        let redis = RedisServer::start();
        let gw = TestGateway::start(config(&redis.url()));
        Env { _redis: redis, gw }
    }

    async fn create(&self) -> String {
        let res = http_client()
            .post(self.gw.admin_url("/admin/sessions"))
            .bearer_auth(ADMIN)
            .json(&json!({"user_uuid": "u-rl", "client_id": "mobile"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        body["refresh_token"].as_str().unwrap().to_owned()
    }
}

/// A client whose connections come from `source` (any 127.0.0.x works on
/// Linux), optionally claiming to forward for `forwarded_for`.
struct Caller {
    http: reqwest::Client,
    forwarded_for: Option<&'static str>,
}

impl Caller {
    fn new(source: &str, forwarded_for: Option<&'static str>) -> Caller {
        let source: IpAddr = source.parse().unwrap();
        Caller {
            http: reqwest::Client::builder()
                .local_address(source)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            forwarded_for,
        }
    }

    async fn refresh(&self, gw: &TestGateway, token: &str) -> (StatusCode, Option<String>, Value) {
        let mut req = self
            .http
            .post(gw.url("/v0/sign_in/refresh"))
            .query(&[("refresh_token", token)]);
        if let Some(xff) = self.forwarded_for {
            req = req.header("x-forwarded-for", xff);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let ctype = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, ctype, res.json().await.unwrap_or(Value::Null))
    }

    /// A successful rotation; returns the next token.
    async fn rotate(&self, gw: &TestGateway, token: &str) -> String {
        let (st, _, body) = self.refresh(gw, token).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        body["data"]["refresh_token"].as_str().unwrap().to_owned()
    }

    /// A refresh with a token the gateway never sealed.
    async fn fail(&self, gw: &TestGateway) -> (StatusCode, Value) {
        let (st, _, body) = self.refresh(gw, "v1:not-a-real-token").await;
        (st, body)
    }
}

fn assert_unauthorized(st: StatusCode, body: &Value) {
    assert_eq!(
        (st, body["errors"].as_str().unwrap_or("")),
        (
            StatusCode::UNAUTHORIZED,
            "Refresh token cannot be decrypted"
        )
    );
}

fn assert_limited(st: StatusCode, ctype: Option<&str>, body: &Value) {
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        ctype.is_some_and(|c| c.starts_with("application/json")),
        "{ctype:?}"
    );
    assert!(
        body["errors"].as_str().is_some_and(|m| !m.is_empty()),
        "429 carries a JSON error: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixth_failure_from_one_address_is_429_and_successes_do_not_count() {
    let env = Env::start();
    let gw = &env.gw;
    let direct = Caller::new("127.0.0.1", None);
    let mut token = env.create().await;

    // Many more successes than the limit: never limited, never counted.
    for _ in 0..(4 * LIMIT) {
        token = direct.rotate(gw, &token).await;
    }
    // Unknown sign-in paths (404) are not failures of a sign-in call.
    for _ in 0..(2 * LIMIT) {
        let res = direct
            .http
            .get(gw.url("/v0/sign_in/no_such_endpoint"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    // Failures interleaved with successes: only the failures count.
    for _ in 0..LIMIT {
        token = direct.rotate(gw, &token).await;
        let (st, body) = direct.fail(gw).await;
        assert_unauthorized(st, &body);
    }
    // The sixth failure within the minute is refused.
    let (st, ctype, body) = direct.refresh(gw, "v1:still-not-a-token").await;
    assert_limited(st, ctype.as_deref(), &body);
    // A blocked address still gets its successful calls answered (a browser
    // behind a shared address keeps its session), while every further
    // failure is refused until its window ends.
    let token = direct.rotate(gw, &token).await;
    let (st, ctype, body) = direct.refresh(gw, "v1:guess").await;
    assert_limited(st, ctype.as_deref(), &body);

    // Another address is not affected.
    let other = Caller::new("127.0.0.2", None);
    let token = other.rotate(gw, &token).await;
    // A client behind the trusted proxy has an address of its own.
    let proxied = Caller::new("127.0.0.1", Some("127.0.0.3"));
    let token = proxied.rotate(gw, &token).await;
    for _ in 0..LIMIT {
        let (st, body) = proxied.fail(gw).await;
        assert_unauthorized(st, &body);
    }
    let (st, ctype, body) = proxied.refresh(gw, "v1:guess").await;
    assert_limited(st, ctype.as_deref(), &body);
    let token = proxied.rotate(gw, &token).await;
    // Its block is its own: the proxy's other clients are unaffected.
    let neighbour = Caller::new("127.0.0.1", Some("127.0.0.4"));
    let token = neighbour.rotate(gw, &token).await;
    let (st, body) = neighbour.fail(gw).await;
    assert_unauthorized(st, &body);
    neighbour.rotate(gw, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_does_not_escape_a_block() {
    let env = Env::start();
    let gw = &env.gw;
    let token = env.create().await;
    let untrusted = Caller::new("127.0.0.5", None);
    for _ in 0..LIMIT {
        let (st, body) = untrusted.fail(gw).await;
        assert_unauthorized(st, &body);
    }
    let (st, ctype, body) = untrusted.refresh(gw, "v1:x").await;
    assert_limited(st, ctype.as_deref(), &body);
    // The same peer claiming to forward for someone else is still itself.
    let spoofing = Caller::new("127.0.0.5", Some("127.0.0.6"));
    let (st, ctype, body) = spoofing.refresh(gw, "v1:y").await;
    assert_limited(st, ctype.as_deref(), &body);
    // The address it named is not blocked.
    Caller::new("127.0.0.6", None).rotate(gw, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tabs_refreshing_from_one_address_are_never_limited() {
    let env = Env::start();
    let gw = &env.gw;
    let token = env.create().await;
    // Ten tabs race on the same token, ten times in a row: all converge on
    // one successor per round, and none is limited.
    let mut token = token;
    for _ in 0..10 {
        let calls = (0..10).map(|_| {
            let token = token.clone();
            let url = gw.url("/v0/sign_in/refresh");
            async move {
                let res = http_client()
                    .post(url)
                    .query(&[("refresh_token", token.as_str())])
                    .send()
                    .await
                    .unwrap();
                let st = res.status();
                let body: Value = res.json().await.unwrap();
                assert_eq!(st, StatusCode::OK, "{body}");
                body["data"]["refresh_token"].as_str().unwrap().to_owned()
            }
        });
        let next = futures_util::future::join_all(calls).await;
        assert!(
            next.iter().all(|t| *t == next[0]),
            "one successor per round"
        );
        token = next[0].clone();
    }
}

/// A client whose every request gives up after five seconds: a hang fails
/// the test instead of stalling it.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap()
}
