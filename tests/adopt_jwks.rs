//! The adopt JWKS fetched from an `https://` URL (README, "Fetching the
//! JWKS"): a real TLS server publishes the login service's keys, and the
//! test changes what it serves and counts its fetches.

mod common;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::gateway::{binary, echoed, echoed_headers, replace_file, temp_path};
use common::gateway::{GatewayProcess, TestGateway};
use common::upstream::TestUpstream;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};
use sis_gateway::config::Algorithm;
use sis_gateway::tokens::{generate_pem, AccessTokens};
use tokio::net::TcpListener;

const NOT_ADOPTED: &str = r#"{"errors":"Sign-in could not be adopted"}"#;
const UPSTREAM_REFRESH: &str = "v1:dXBzdHJlYW0tcmVmcmVzaA==.0123456789abcdef.V0";

/// An RS256 key of the login service.
struct Key {
    pem: Vec<u8>,
    kid: String,
    jwks: Value,
}

impl Key {
    fn new() -> Key {
        let pem = generate_pem(Algorithm::Rs256).unwrap();
        let tokens = AccessTokens::from_pem(std::slice::from_ref(&pem)).unwrap();
        Key {
            kid: tokens.kid().to_owned(),
            jwks: tokens.jwks(),
            pem,
        }
    }

    fn access_token(&self) -> String {
        let now = now_secs();
        let claims = json!({
            "iss": "va.gov sign in",
            "client_id": "mobile",
            "sub": "user-uuid-1",
            "exp": now + 300,
            "iat": now,
            "session_handle": "9a4c4f0f-6a38-4c07-9d7d-2a26b3f0f3ad",
            "user_attributes": {"email": "ada@example.gov"},
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&self.pem).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWKS of `keys`.
fn jwks(keys: &[&Key]) -> String {
    let keys: Vec<Value> = keys.iter().map(|k| k.jwks["keys"][0].clone()).collect();
    json!({ "keys": keys }).to_string()
}

/// What the JWKS server answers.
#[derive(Clone)]
enum Serve {
    Jwks(String),
    Fail(u16),
}

/// An HTTPS server publishing a JWKS at `/jwks`, with a self-signed
/// certificate for 127.0.0.1 (its PEM in `ca`).
struct JwksServer {
    url: String,
    ca: PathBuf,
    serve: Arc<Mutex<Serve>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(first: Serve) -> JwksServer {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let ca = temp_path("jwks-ca.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(
            cert.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/jwks", listener.local_addr().unwrap());
        let serve = Arc::new(Mutex::new(first));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (serving, counted) = (serve.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, serving, counted) =
                    (acceptor.clone(), serving.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let now = serving.lock().unwrap().clone();
                        if req.uri().path() == "/jwks" {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        let res = match now {
                            Serve::Jwks(body) if req.uri().path() == "/jwks" => {
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .header("cache-control", "public, max-age=300")
                                    .body(Full::new(Bytes::from(body)))
                            }
                            Serve::Fail(status) => hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"unavailable"))),
                            _ => hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new())),
                        };
                        async move { Ok::<_, Infallible>(res.unwrap()) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        JwksServer {
            url,
            ca,
            serve,
            fetches,
        }
    }

    fn set(&self, serve: Serve) {
        *self.serve.lock().unwrap() = serve;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A login service whose `token` endpoint answers a bundle signed by the
/// key `?key=N` picks.
struct LoginService {
    url: String,
}

async fn login_service(keys: Vec<Arc<Key>>) -> LoginService {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let keys = keys.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let n: usize = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("key="))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let body = json!({"data": {
                        "access_token": keys[n].access_token(),
                        "refresh_token": UPSTREAM_REFRESH,
                    }});
                    let res = hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())));
                    async move { Ok::<_, Infallible>(res.unwrap()) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    LoginService { url }
}

fn config(login: &LoginService, jwks: &JwksServer, apps: &TestUpstream, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{extra}
[cookies]
secure = false
refresh_path = "/"
[sign_in]
upstream = "{}"
[sign_in.adopt]
jwks = "{}"
ca = "file:{}"
issuer = "va.gov sign in"
[[clients]]
client_id = "mobile"
authentication = "api"
[[routes]]
path_prefix = "/api"
upstream = "{}"
auth = "required"
"#,
        login.url,
        jwks.url,
        jwks.ca.display(),
        apps.url,
    )
}

/// The status and body of a token exchange signed with key `n`.
async fn exchange(base: &str, n: usize) -> (StatusCode, String) {
    let res = reqwest::Client::new()
        .post(format!("{base}/v0/sign_in/token?key={n}"))
        .form(&[("grant_type", "authorization_code"), ("code", "c")])
        .send()
        .await
        .unwrap();
    (res.status(), res.text().await.unwrap())
}

/// Asserts that an exchange was adopted: the gateway's own tokens.
fn assert_adopted(status: StatusCode, body: &str) {
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(body).unwrap();
    let refresh = v["data"]["refresh_token"].as_str().unwrap();
    assert!(
        refresh.starts_with("v1:") && refresh != UPSTREAM_REFRESH,
        "{body}"
    );
}

async fn readyz(admin: &str) -> (StatusCode, Value) {
    let res = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    (res.status(), res.json().await.unwrap())
}

/// The value of one sample line of `/metrics`, 0 when absent.
async fn metric(admin: &str, sample: &str) -> u64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

fn admin_base(gw: &TestGateway) -> String {
    gw.admin_url("").trim_end_matches('/').to_owned()
}

fn base(gw: &TestGateway) -> String {
    gw.url("").trim_end_matches('/').to_owned()
}

#[tokio::test]
async fn not_ready_until_a_first_good_fetch_then_served_keys_are_adopted() {
    let key = Arc::new(Key::new());
    let server = JwksServer::start(Serve::Fail(503)).await;
    let login = login_service(vec![key.clone()]).await;
    let apps = TestUpstream::start().await;
    let gw = TestGateway::start(config(&login, &server, &apps, ""));
    let (gw_url, admin) = (base(&gw), admin_base(&gw));

    // No set yet: not ready, and saying why.
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unavailable");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains(&server.url) && reason.contains("503"),
        "{reason}"
    );
    // ... and nothing of the login service's is accepted: fail closed.
    let (status, text) = exchange(&gw_url, 0).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_GATEWAY, NOT_ADOPTED)
    );
    let res = reqwest::Client::new()
        .get(format!("{gw_url}/api/x"))
        .bearer_auth(key.access_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(server.fetches() >= 1);

    // The server recovers: a retry soon fetches it.
    server.set(Serve::Jwks(jwks(&[&key])));
    let mut ready = false;
    for _ in 0..150 {
        if readyz(&admin).await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready once the JWKS is fetched");
    assert_eq!(readyz(&admin).await.1, json!({"status": "ready"}));

    let (status, text) = exchange(&gw_url, 0).await;
    assert_adopted(status, &text);
    let res = reqwest::Client::new()
        .get(format!("{gw_url}/api/x"))
        .bearer_auth(key.access_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = echoed_headers(&res.json().await.unwrap());
    assert_eq!(echoed(&seen, "x-sis-user-uuid"), ["user-uuid-1"]);

    let fetches = "sis_adopt_jwks_fetches_total{outcome=";
    assert!(metric(&admin, &format!("{fetches}\"status\"}}")).await >= 1);
    assert_eq!(metric(&admin, &format!("{fetches}\"ok\"}}")).await, 1);
}

#[tokio::test]
async fn a_failing_server_keeps_the_last_good_set() {
    let (key, other) = (Arc::new(Key::new()), Arc::new(Key::new()));
    let server = JwksServer::start(Serve::Jwks(jwks(&[&key]))).await;
    let login = login_service(vec![key.clone(), other.clone()]).await;
    let apps = TestUpstream::start().await;
    let gw = TestGateway::start(config(&login, &server, &apps, ""));
    let (gw_url, admin) = (base(&gw), admin_base(&gw));
    // The first fetch is done before the gateway serves.
    assert_eq!(readyz(&admin).await.0, StatusCode::OK);
    assert_eq!(server.fetches(), 1);

    server.set(Serve::Fail(500));
    // A key the set lacks: one early refetch, which fails.
    let (status, text) = exchange(&gw_url, 1).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_GATEWAY, NOT_ADOPTED)
    );
    assert!(server.fetches() >= 2);
    // The last good set still serves, and the gateway stays ready (failed
    // fetches are retried meanwhile, and keep failing).
    let (status, text) = exchange(&gw_url, 0).await;
    assert_adopted(status, &text);
    assert_eq!(readyz(&admin).await.0, StatusCode::OK);
    assert!(metric(&admin, "sis_adopt_jwks_fetches_total{outcome=\"status\"}").await >= 1);
    let res = reqwest::Client::new()
        .get(format!("{gw_url}/api/x"))
        .bearer_auth(key.access_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_by_an_early_refetch() {
    let keys: Vec<Arc<Key>> = (0..3).map(|_| Arc::new(Key::new())).collect();
    let server = JwksServer::start(Serve::Jwks(jwks(&[&keys[0]]))).await;
    let login = login_service(keys.clone()).await;
    let apps = TestUpstream::start().await;
    let gw = TestGateway::start(config(&login, &server, &apps, ""));
    let gw_url = base(&gw);
    let (status, text) = exchange(&gw_url, 0).await;
    assert_adopted(status, &text);
    assert_eq!(server.fetches(), 1);

    // The login service rotates to a new key: the first sign-in signed with
    // it waits for the refetch it causes, and is adopted.
    server.set(Serve::Jwks(jwks(&[&keys[0], &keys[1]])));
    let (status, text) = exchange(&gw_url, 1).await;
    assert_adopted(status, &text);
    assert_eq!(server.fetches(), 2);
    // Its access tokens are accepted from then on.
    let res = reqwest::Client::new()
        .get(format!("{gw_url}/api/x"))
        .bearer_auth(keys[1].access_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Another rotation right away waits for the rate limit (or the interval).
    server.set(Serve::Jwks(jwks(&[&keys[1], &keys[2]])));
    let (status, _) = exchange(&gw_url, 2).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn an_access_token_with_a_new_kid_brings_the_rotated_key_in() {
    let (old, new) = (Key::new(), Key::new());
    let server = JwksServer::start(Serve::Jwks(jwks(&[&old]))).await;
    let login = login_service(Vec::new()).await;
    let apps = TestUpstream::start().await;
    let gw = TestGateway::start(config(&login, &server, &apps, ""));
    // Serving (so the first fetch is done) before the key rotates.
    assert_eq!(readyz(&admin_base(&gw)).await.0, StatusCode::OK);
    assert_eq!(server.fetches(), 1);
    server.set(Serve::Jwks(jwks(&[&old, &new])));

    // A request is not held up for the refetch its token causes: refused
    // at first, accepted once the new set is in.
    let get = || {
        reqwest::Client::new()
            .get(gw.url("/api/x"))
            .bearer_auth(new.access_token())
            .send()
    };
    let first = get().await.unwrap();
    let (status, text) = (first.status(), first.text().await.unwrap());
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    let mut accepted = false;
    for _ in 0..100 {
        if get().await.unwrap().status() == StatusCode::OK {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "the rotated key is fetched early");
    assert_eq!(server.fetches(), 2);
}

// Multi-threaded: the JWKS server must answer while the gateway process
// starts (`spawn` blocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_the_same_url_keeps_the_fetched_set() {
    let key = Key::new();
    let server = JwksServer::start(Serve::Jwks(jwks(&[&key]))).await;
    let login = login_service(vec![Arc::new(key)]).await;
    let apps = TestUpstream::start().await;
    let gw = GatewayProcess::spawn(&config(&login, &server, &apps, ""));
    let gw_url = gw.url("").trim_end_matches('/').to_owned();
    let admin = gw.admin_url("").trim_end_matches('/').to_owned();
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(server.fetches(), 1);

    // The server is down; the config changes elsewhere and is reloaded.
    server.set(Serve::Fail(503));
    replace_file(
        gw.config_path(),
        &config(&login, &server, &apps, "upstream_timeout = \"3s\""),
    );
    gw.signal("HUP");
    let reloads = "sis_config_reloads_total{result=\"ok\"}";
    let mut reloaded = false;
    for _ in 0..100 {
        if metric(&admin, reloads).await == 1 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the reload is taken");
    // The fetched set was kept: no fetch, still ready, still adopting.
    assert_eq!(server.fetches(), 1);
    assert_eq!(readyz(&admin).await.0, StatusCode::OK);
    let (status, text) = exchange(&gw_url, 0).await;
    assert_adopted(status, &text);
}

#[test]
fn check_takes_an_https_jwks_and_refuses_plain_http() {
    let run_check = |jwks: &str| {
        let path = temp_path("check.toml");
        std::fs::write(
            &path,
            format!(
                "[sign_in]\nupstream = \"http://127.0.0.1:3001\"\n[sign_in.adopt]\njwks = \"{jwks}\"\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(binary())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        out
    };
    // Not fetched by check: the host need not answer.
    let out = run_check("https://sis.invalid/v0/sign_in/openid_connect/certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_check("http://sis.example.gov/jwks");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sign_in.adopt.jwks: ") && stderr.contains("plain http://"),
        "{stderr}"
    );
}
