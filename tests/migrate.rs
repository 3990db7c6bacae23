//! Migration (README, Putting sis-gateway in front of an existing Sign-in
//! Service): users signed in at a Rails-style Sign-in Service before the
//! gateway went in front of it hold its refresh tokens. The gateway refreshes
//! such a token once at the login service, adopts the result and answers with
//! its own bundle; from then on the user refreshes at the gateway alone.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use common::browser::Browser;
use common::gateway::{echoed, echoed_headers, TestGateway};
use common::redis::RedisServer;
use common::sis::{client, cookie_value, enc, everything, set_cookie_lines, StandIn, USER};
use reqwest::StatusCode;
use serde_json::Value;

const SEALING_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn config(redis: &RedisServer, login: &StandIn, migrate: bool) -> String {
    format!(
        r#"
[store]
url = "{}"
[tokens]
sealing_keys = ["{SEALING_KEY}"]
[cookies]
secure = false
refresh_path = "/"
[sign_in]
upstream = "{}"
[sign_in.adopt]
jwks = "file:{}"
issuer = "va.gov sign in"
migrate = {migrate}
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
    )
}

fn gateway(redis: &RedisServer, login: &StandIn) -> TestGateway {
    TestGateway::start(config(redis, login, true))
}

async fn metrics(gw: &TestGateway) -> String {
    reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sessions in the store.
fn sessions_in(redis: &RedisServer) -> usize {
    redis
        .cli(&["--scan", "--pattern", "sis:s:*"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

async fn refresh_api(http: &reqwest::Client, gw: &TestGateway, token: &str) -> (StatusCode, Value) {
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&[("refresh_token", token)])
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn an_api_clients_old_token_migrates_once_then_refreshes_at_the_gateway() {
    let redis = RedisServer::start();
    let login = StandIn::start().await;
    let gw = gateway(&redis, &login);
    let http = client();
    let (old, _) = login.signed_in("mobile");

    // Percent-encoded in the query, as SiS clients send it.
    let res = http
        .post(gw.url(&format!("/v0/sign_in/refresh?refresh_token={}", enc(&old))))
        .send()
        .await
        .unwrap();
    let (status, headers, text) = everything(res).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(login.refreshes(), 1);
    assert!(!login.leaks(&headers, &text), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let refresh = body["data"]["refresh_token"].as_str().unwrap().to_owned();
    let access = body["data"]["access_token"].as_str().unwrap().to_owned();
    assert!(
        refresh.starts_with("v1:") && refresh.ends_with(".V0"),
        "{refresh}"
    );
    assert!(body["data"].get("anti_csrf_token").is_none(), "{body}");

    // The gateway's access token, for the user of the login service.
    let res = http
        .get(gw.url("/api/x"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = echoed_headers(&res.json().await.unwrap());
    assert_eq!(echoed(&seen, "x-sis-user-uuid"), [USER]);

    // From here on the gateway refreshes alone.
    let mut token = refresh.clone();
    for _ in 0..3 {
        let (status, body) = refresh_api(&http, &gw, &token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        token = body["data"]["refresh_token"].as_str().unwrap().to_owned();
    }
    assert_eq!(login.refreshes(), 1);

    // The adoption is kept for the replay window only.
    let adoption = redis.cli(&["--scan", "--pattern", "sis:a:*"]);
    let adoption = adoption.trim();
    assert!(!adoption.is_empty());
    let ttl: i64 = redis.cli(&["PTTL", adoption]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "{ttl}");

    // Nothing in the store can be replayed: neither token is in a dump.
    let dump = String::from_utf8_lossy(&redis.dump_all()).into_owned();
    assert!(!login.leaks_in(&dump));
    assert!(!dump.contains(&refresh) && !dump.contains(&token));

    let m = metrics(&gw).await;
    assert!(
        m.contains(r#"sis_migrations_total{outcome="migrated"} 1"#),
        "{m}"
    );
    // A migration is not a failed rotation.
    assert!(!m.contains(r#"outcome="undecryptable""#), "{m}");
}

#[tokio::test]
async fn a_browsers_old_cookies_migrate_at_the_endpoint() {
    let redis = RedisServer::start();
    let login = StandIn::start().await;
    let gw = gateway(&redis, &login);
    let http = client();
    let (old, anti_csrf) = login.signed_in("web");

    // The cookies as the Rails service wrote them: percent-encoded.
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .header(
            "cookie",
            format!(
                "vagov_refresh_token={}; vagov_anti_csrf_token={}",
                enc(&old),
                enc(&anti_csrf)
            ),
        )
        .send()
        .await
        .unwrap();
    let (status, headers, text) = everything(res).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, "{}");
    assert_eq!(login.refreshes(), 1);
    assert!(!login.leaks(&headers, &text), "{headers:?}");
    let cookies = set_cookie_lines(&headers);
    let vagov: Vec<&String> = cookies.iter().filter(|c| c.starts_with("vagov_")).collect();
    assert_eq!(vagov.len(), 4, "{cookies:?}");
    let refresh = cookie_value(&cookies, "vagov_refresh_token")
        .unwrap()
        .to_owned();
    let new_anti_csrf = cookie_value(&cookies, "vagov_anti_csrf_token")
        .unwrap()
        .to_owned();

    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .header(
            "cookie",
            format!("vagov_refresh_token={refresh}; vagov_anti_csrf_token={new_anti_csrf}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let rotated = set_cookie_lines(res.headers());
    assert!(cookie_value(&rotated, "vagov_refresh_token").is_some_and(|r| r != refresh));
    assert_eq!(login.refreshes(), 1);

    // The wrong anti-CSRF token is the login service's to refuse.
    let (other, _) = login.signed_in("web");
    let res = http
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&[
            ("refresh_token", other.as_str()),
            ("anti_csrf_token", "nope"),
        ])
        .send()
        .await
        .unwrap();
    let (status, _, text) = everything(res).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(text, r#"{"errors":"Anti CSRF token is not valid"}"#);
}

#[tokio::test]
async fn an_inline_refresh_migrates_a_browser() {
    let redis = RedisServer::start();
    let login = StandIn::start().await;
    let gw = gateway(&redis, &login);
    let http = client();
    let (old, anti_csrf) = login.signed_in("web");

    let res = http
        .get(gw.url("/api/page"))
        .header(
            "cookie",
            format!(
                "vagov_refresh_token={}; vagov_anti_csrf_token={}; other=1",
                enc(&old),
                enc(&anti_csrf)
            ),
        )
        .send()
        .await
        .unwrap();
    let (status, headers, text) = everything(res).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(login.refreshes(), 1);
    // Neither the client nor the upstream app (the echo) sees the login
    // service's tokens.
    assert!(!login.leaks(&headers, &text), "{text}");
    let seen = echoed_headers(&serde_json::from_str(&text).unwrap());
    assert_eq!(echoed(&seen, "x-sis-user-uuid"), [USER]);
    assert_eq!(echoed(&seen, "x-sis-client-id"), ["web"]);
    let cookies = set_cookie_lines(&headers);
    let access = cookie_value(&cookies, "vagov_access_token").unwrap();
    let refresh = cookie_value(&cookies, "vagov_refresh_token").unwrap();
    let sent_cookie = echoed(&seen, "cookie").join("; ");
    assert!(
        sent_cookie.contains(&format!("vagov_access_token={access}")),
        "{sent_cookie}"
    );
    assert!(sent_cookie.contains("other=1"), "{sent_cookie}");

    // The next request carries the gateway's cookies: no call upstream.
    let res = http
        .get(gw.url("/api/page"))
        .header(
            "cookie",
            format!("vagov_access_token={access}; vagov_refresh_token={refresh}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(login.refreshes(), 1);

    // A token the login service refuses: anonymous on a session route, 401
    // on a required one.
    let refused = "v1:AAAA+/8=.0123456789abcdef0123456789abcdef.V0";
    let res = http
        .get(gw.url("/app/page"))
        .header("cookie", format!("vagov_refresh_token={}", enc(refused)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = echoed_headers(&res.json().await.unwrap());
    assert!(echoed(&seen, "x-sis-user-uuid").is_empty());
    let res = http
        .get(gw.url("/api/page"))
        .header("cookie", format!("vagov_refresh_token={}", enc(refused)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login.refreshes(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_migrations_on_two_instances_converge() {
    let redis = RedisServer::start();
    let login = StandIn::start().await;
    let a = gateway(&redis, &login);
    let b = gateway(&redis, &login);
    let http = client();
    let (old, _) = login.signed_in("mobile");

    let calls = [&a, &b].into_iter().flat_map(|gw| {
        let (http, old) = (http.clone(), old.clone());
        let url = gw.url("/v0/sign_in/refresh");
        (0..20).map(move |_| {
            let (http, old, url) = (http.clone(), old.clone(), url.clone());
            tokio::spawn(async move {
                let res = http
                    .post(url)
                    .form(&[("refresh_token", old.as_str())])
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                let text = res.text().await.unwrap();
                (status, text)
            })
        })
    });
    let results = futures_util::future::join_all(calls.collect::<Vec<_>>()).await;
    let mut tokens = HashSet::new();
    for r in results {
        let (status, text) = r.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(!login.leaks_in(&text), "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        tokens.insert(body["data"]["refresh_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let refreshes = login.refreshes();
    assert!((1..=2).contains(&refreshes), "{refreshes} calls upstream");
    assert_eq!(sessions_in(&redis), 1);

    // The one token refreshes on either instance.
    let token = tokens.into_iter().next().unwrap();
    let (status, body) = refresh_api(&http, &b, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let next = body["data"]["refresh_token"].as_str().unwrap().to_owned();
    let (status, body) = refresh_api(&http, &a, &next).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(login.refreshes(), refreshes);
}

#[tokio::test]
async fn a_refused_token_gets_the_login_services_answer() {
    let redis = RedisServer::start();
    let login = StandIn::start().await;
    let gw = gateway(&redis, &login);
    let refused = "v1:AAAA+/8=.0123456789abcdef0123456789abcdef.V0";
    let res = client()
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&[("refresh_token", refused)])
        .send()
        .await
        .unwrap();
    let (status, headers, text) = everything(res).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(text, r#"{"errors":"Refresh token cannot be decrypted"}"#);
    let cookies = set_cookie_lines(&headers);
    assert!(
        cookies.iter().any(|c| c == "stand_in_refused=1; path=/"),
        "{cookies:?}"
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("vagov_refresh_token=;")),
        "{cookies:?}"
    );
    assert_eq!(login.refreshes(), 1);
    let m = metrics(&gw).await;
    assert!(
        m.contains(r#"sis_migrations_total{outcome="refused"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn without_migrate_an_old_token_cannot_be_decrypted() {
    let redis = RedisServer::start();
    let login = StandIn::start().await;
    let gw = TestGateway::start(config(&redis, &login, false));
    let (old, _) = login.signed_in("mobile");
    let res = client()
        .post(gw.url("/v0/sign_in/refresh"))
        .form(&[("refresh_token", old.as_str())])
        .send()
        .await
        .unwrap();
    let (status, _, text) = everything(res).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(text, r#"{"errors":"Refresh token cannot be decrypted"}"#);
    assert_eq!(login.calls.load(Ordering::SeqCst), 0);
}

/// The gateway for a browser: access tokens that run out in two seconds,
/// refreshed only once they have.
fn browser_gateway(redis: &RedisServer, login: &StandIn) -> TestGateway {
    TestGateway::start(
        config(redis, login, true)
            .replace("[tokens]\n", "[tokens]\nrefresh_skew = \"0s\"\n")
            .replace(
                "anti_csrf = true\n",
                "anti_csrf = true\naccess_token_ttl = \"2s\"\n",
            ),
    )
}

/// Six parallel `fetch()`es on the `required` route, from the browser's
/// page; each must be signed in as the login service's user.
async fn six_fetches(browser: &mut Browser) {
    let results = browser
        .eval(
            "Promise.all([1,2,3,4,5,6].map(i => fetch('/api/item/' + i, {credentials: 'include'})\
               .then(async r => ({status: r.status, body: await r.json()}))))",
        )
        .await;
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 6);
    for r in results {
        assert_eq!(r["status"], 200, "{r}");
        let headers = r["body"]["headers"].to_string();
        assert!(headers.contains(USER), "every request signed in: {headers}");
        assert!(!headers.contains("vagov_refresh_token"), "{headers}");
    }
}

#[tokio::test]
async fn a_browser_signed_in_through_the_login_service_stays_signed_in() {
    let redis = RedisServer::start();
    let login = StandIn::start().await;
    let gw = browser_gateway(&redis, &login);
    let mut browser = Browser::launch().await;

    // Sign in: the login service's callback redirects to the app.
    let callback =
        gw.url("/v0/sign_in/callback?code=c&state=s&client_id=web&redirect_uri=/app/page");
    browser
        .page("Page.navigate", serde_json::json!({ "url": callback }))
        .await;
    let page = gw.url("/app/page");
    let mut arrived = false;
    for _ in 0..300 {
        let state = browser.eval("document.readyState").await;
        let href = browser.eval("location.href").await;
        if state == "complete" && href.as_str() == Some(page.as_str()) {
            arrived = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(arrived, "the callback redirected to {page}");
    let refresh = browser.cookie("vagov_refresh_token").await.unwrap();
    assert!(
        refresh.starts_with("v1:") && refresh.ends_with(".V0"),
        "{refresh}"
    );
    assert!(!login.leaks_in(&refresh));
    let calls = login.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 1);

    // The access token runs out; six parallel requests make one rotation,
    // at the gateway.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    six_fetches(&mut browser).await;
    let m = metrics(&gw).await;
    assert!(
        m.contains(r#"sis_rotations_total{outcome="ok"} 1"#),
        "one rotation for six requests: {m}"
    );
    assert_eq!(login.calls.load(Ordering::SeqCst), calls);
    assert_ne!(
        browser.cookie("vagov_refresh_token").await.unwrap(),
        refresh
    );
}

#[tokio::test]
async fn a_browser_signed_in_before_the_cut_over_migrates_once() {
    let redis = RedisServer::start();
    let login = StandIn::start().await;
    let gw = browser_gateway(&redis, &login);
    let (old, anti_csrf) = login.signed_in("web");
    let expired = login.key.access_token("web", common::sis::now_secs() - 60);
    let origin = gw.url("/");
    let mut browser = Browser::launch().await;
    // The cookies the login service wrote before the cut-over.
    for c in [
        format!("vagov_access_token={}; path=/; HttpOnly", enc(&expired)),
        format!("vagov_refresh_token={}; path=/; HttpOnly", enc(&old)),
        format!(
            "vagov_anti_csrf_token={}; path=/; HttpOnly",
            enc(&anti_csrf)
        ),
    ] {
        browser.set_cookie(&origin, &c).await;
    }
    // A page outside the routes, so nothing is refreshed yet.
    browser.navigate(&gw.url("/elsewhere")).await;

    six_fetches(&mut browser).await;
    assert_eq!(login.refreshes(), 1, "one migration for six requests");
    let refresh = browser.cookie("vagov_refresh_token").await.unwrap();
    assert!(
        refresh.starts_with("v1:") && refresh.ends_with(".V0"),
        "{refresh}"
    );
    assert!(!login.leaks_in(&refresh), "{refresh}");

    // Then refreshed by the gateway alone.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    six_fetches(&mut browser).await;
    assert_eq!(login.refreshes(), 1);
    let m = metrics(&gw).await;
    assert!(
        m.contains(r#"sis_rotations_total{outcome="ok"} 1"#),
        "one rotation for six requests: {m}"
    );
    assert!(
        m.contains(r#"sis_migrations_total{outcome="migrated"} 1"#),
        "{m}"
    );
    assert_ne!(
        browser.cookie("vagov_refresh_token").await.unwrap(),
        refresh
    );
}
