//! A stand-in for a Rails-style Sign-in Service, for tests of the gateway
//! in front of one (README, Putting sis-gateway in front of an existing Sign-in
//! Service). It signs RS256 access tokens with a key of its own (published as a
//! JWKS file), hands out refresh tokens in the Rails shape (`v1:<base64>.<32
//! hex>.V0`) and answers as the Rails service does:
//!
//! - `token`: a JSON bundle (`data.access_token`, `refresh_token`,
//!   `anti_csrf_token`) for the client the query's `client_id` names
//!   (default `mobile`);
//! - `callback`: a 302 with its `vagov_` cookies, percent-encoded;
//! - `refresh`: `refresh_token` (+ `anti_csrf_token`) from the query, a form
//!   body or its percent-encoded cookies; a token it issued gets a new
//!   bundle (JSON for API clients, cookies for `web`), and stays valid (the
//!   Rails service rotates lazily); anything else gets
//!   401 `{"errors":"…"}` with its cookies expired;
//! - `big`: a bundle too large to read; anything else a JSON answer without
//!   a bundle.
//!
//! The query of `token` and `callback` may ask for a key not in the JWKS
//! (`rogue=1`) or an expired access token (`expired=1`), and name the
//! callback's redirect (`redirect_uri`). Every call is
//! counted, refresh calls apart as well.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sis_gateway::config::Algorithm;
use sis_gateway::tokens::{generate_pem, random_hex, AccessTokens};
use tokio::net::TcpListener;

use super::gateway::temp_path;
use super::upstream::TestUpstream;

/// The client of the stand-in whose answers are cookies (with anti-CSRF);
/// every other client gets JSON.
pub const COOKIE_CLIENT: &str = "web";
/// The user every sign-in of the stand-in is for.
pub const USER: &str = "user-uuid-1";
/// The session handle in the stand-in's access tokens.
pub const UPSTREAM_SESSION: &str = "9a4c4f0f-6a38-4c07-9d7d-2a26b3f0f3ad";
/// How long the stand-in takes to answer a refresh: long enough for
/// parallel callers to meet.
pub const REFRESH_DELAY: Duration = Duration::from_millis(150);

/// An RS256 key of the stand-in.
pub struct Key {
    pem: Vec<u8>,
    kid: String,
    pub jwks: Value,
}

impl Key {
    pub fn new() -> Key {
        let pem = generate_pem(Algorithm::Rs256).unwrap();
        let tokens = AccessTokens::from_pem(std::slice::from_ref(&pem)).unwrap();
        Key {
            kid: tokens.kid().to_owned(),
            jwks: tokens.jwks(),
            pem,
        }
    }

    /// An access token as the Rails service signs it.
    pub fn access_token(&self, client_id: &str, exp: u64) -> String {
        let now = now_secs();
        let claims = json!({
            "iss": "va.gov sign in",
            "aud": ["vets-api"],
            "client_id": client_id,
            "jti": "b0f5d3c8-3d25-4a5e-9e54-6a2c6d1c1a11",
            "sub": USER,
            "exp": exp,
            "iat": now,
            "session_handle": UPSTREAM_SESSION,
            "refresh_token_hash": "0f1e2d",
            "parent_refresh_token_hash": null,
            "anti_csrf_token": "5e1f0a",
            "last_regeneration_time": now,
            "version": "V0",
            "user_attributes": {"first_name": "ADA", "last_name": "LOVELACE", "email": "ada@example.gov"},
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&self.pem).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

impl Default for Key {
    fn default() -> Self {
        Key::new()
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Percent-encodes everything but letters and digits, as the Rails service
/// writes its cookies.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A refresh token in the Rails shape: standard base64 (with `+`, `/` and
/// `=`, which must survive every encoding), a nonce, the version.
fn rails_refresh_token() -> String {
    let hex = random_hex(61);
    let mut sealed: Vec<u8> = (0..61)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    // Starts with bytes that make `+` and `/` certain to appear.
    sealed[0] = 0xfb;
    sealed[1] = 0xff;
    sealed[2] = 0xbf;
    format!(
        "v1:{}.{}.V0",
        base64::engine::general_purpose::STANDARD.encode(sealed),
        random_hex(16)
    )
}

/// A session of the stand-in: its client and anti-CSRF token.
#[derive(Clone, Debug)]
struct Issued {
    client_id: String,
    anti_csrf: String,
}

#[derive(Default)]
struct State {
    /// Every refresh token handed out; each stays valid.
    issued: Mutex<HashMap<String, Issued>>,
    calls: AtomicUsize,
    refreshes: AtomicUsize,
}

impl State {
    /// A new refresh and anti-CSRF token for `client_id`.
    fn issue(&self, client_id: &str) -> (String, String) {
        let refresh = rails_refresh_token();
        let anti_csrf = random_hex(16);
        self.issued.lock().unwrap().insert(
            refresh.clone(),
            Issued {
                client_id: client_id.to_owned(),
                anti_csrf: anti_csrf.clone(),
            },
        );
        (refresh, anti_csrf)
    }
}

/// The stand-in, on an ephemeral port, with an echoing upstream for the
/// gateway's routes.
pub struct StandIn {
    pub url: String,
    /// The JWKS of the key not published in `jwks_file`.
    pub rogue_jwks: Value,
    /// An echoing upstream for the gateway's routes.
    pub apps: String,
    _apps: TestUpstream,
    pub key: Arc<Key>,
    pub rogue: Arc<Key>,
    /// Every call the stand-in got.
    pub calls: Arc<AtomicUsize>,
    state: Arc<State>,
    pub jwks_file: std::path::PathBuf,
}

impl StandIn {
    pub async fn start() -> StandIn {
        let key = Arc::new(Key::new());
        let rogue = Arc::new(Key::new());
        let jwks_file = temp_path("upstream-jwks.json");
        std::fs::write(&jwks_file, key.jwks.to_string()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let (k, r, s, c) = (key.clone(), rogue.clone(), state.clone(), calls.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (k, r, s, c) = (k.clone(), r.clone(), s.clone(), c.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (k, r, s, c) = (k.clone(), r.clone(), s.clone(), c.clone());
                        async move {
                            c.fetch_add(1, Ordering::SeqCst);
                            s.calls.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(answer(req, &k, &r, &s).await)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let apps = TestUpstream::start().await;
        StandIn {
            rogue_jwks: rogue.jwks.clone(),
            url,
            apps: apps.url.clone(),
            _apps: apps,
            key,
            rogue,
            calls,
            state,
            jwks_file,
        }
    }

    /// A refresh token and anti-CSRF token of a user signed in at the
    /// stand-in before the gateway went in front of it (no call counted).
    pub fn signed_in(&self, client_id: &str) -> (String, String) {
        self.state.issue(client_id)
    }

    /// How many refresh calls the stand-in got.
    pub fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// Every refresh token the stand-in handed out.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().keys().cloned().collect()
    }

    /// True when `text` holds one of the stand-in's refresh tokens, raw,
    /// percent-encoded or by its sealed part.
    pub fn leaks_in(&self, text: &str) -> bool {
        self.issued_tokens().iter().any(|t| {
            let sealed = t[3..].split('.').next().unwrap();
            text.contains(t.as_str()) || text.contains(&enc(t)) || text.contains(sealed)
        })
    }

    /// True when a response's headers or body hold one of the stand-in's
    /// refresh tokens.
    pub fn leaks(&self, headers: &reqwest::header::HeaderMap, body: &str) -> bool {
        self.leaks_in(body)
            || headers
                .values()
                .any(|v| self.leaks_in(&String::from_utf8_lossy(v.as_bytes())))
    }
}

type Res = hyper::Response<Full<Bytes>>;

fn json_response(status: u16) -> hyper::http::response::Builder {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
}

/// The stand-in's `vagov_` cookies for a bundle, percent-encoded.
fn bundle_cookies(
    b: hyper::http::response::Builder,
    access: &str,
    refresh: &str,
    anti_csrf: &str,
) -> hyper::http::response::Builder {
    b.header(
        "set-cookie",
        format!("vagov_access_token={}; path=/; HttpOnly", enc(access)),
    )
    .header(
        "set-cookie",
        format!(
            "vagov_refresh_token={}; path=/v0/sign_in/refresh; HttpOnly",
            enc(refresh)
        ),
    )
    .header(
        "set-cookie",
        format!("vagov_anti_csrf_token={}; path=/; HttpOnly", enc(anti_csrf)),
    )
    .header(
        "set-cookie",
        format!(
            "vagov_info_token={}; path=/",
            enc(r#"{"access_token_expiration":"x"}"#)
        ),
    )
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    key: &Key,
    rogue: &Key,
    state: &State,
) -> Res {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let signer = if q("rogue").is_some() { rogue } else { key };
    let exp = if q("expired").is_some() {
        now_secs() - 10
    } else {
        now_secs() + 300
    };
    let client = q("client_id").unwrap_or_else(|| "mobile".into());
    let path = req.uri().path().to_owned();
    let res = match path.as_str() {
        "/v0/sign_in/token" => {
            let access = signer.access_token(&client, exp);
            let (refresh, anti_csrf) = state.issue(&client);
            json_response(200)
                .header("x-request-from", "stand-in")
                .body(Full::new(Bytes::from(
                    json!({
                        "data": {
                            "access_token": access,
                            "refresh_token": refresh,
                            "anti_csrf_token": anti_csrf,
                            "note": "kept",
                        },
                        "meta": {"kept": true},
                    })
                    .to_string(),
                )))
        }
        "/v0/sign_in/callback" => {
            let access = signer.access_token(&client, exp);
            let (refresh, anti_csrf) = state.issue(&client);
            bundle_cookies(
                hyper::Response::builder().status(302).header(
                    "location",
                    q("redirect_uri")
                        .unwrap_or_else(|| "https://www.example.gov/?type=logingov".into()),
                ),
                &access,
                &refresh,
                &anti_csrf,
            )
            .header("set-cookie", "_vets_session=abc; path=/; HttpOnly")
            .body(Full::new(Bytes::new()))
        }
        "/v0/sign_in/refresh" => return refresh(req, key, state).await,
        "/v0/sign_in/big" => {
            let access = signer.access_token(&client, exp);
            let (refresh, _) = state.issue(&client);
            json_response(200).body(Full::new(Bytes::from(
                json!({
                    "data": {"access_token": access, "refresh_token": refresh},
                    "padding": "x".repeat(100 * 1024),
                })
                .to_string(),
            )))
        }
        _ => json_response(200).body(Full::new(Bytes::from_static(
            br#"{"data":{"active":true},"refresh_token":null}"#,
        ))),
    };
    res.unwrap()
}

/// The value of cookie `name` in the request, percent-decoded.
fn cookie(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
        .filter(|v| !v.is_empty())
}

/// `POST refresh`, as the Rails service answers it.
async fn refresh(req: hyper::Request<hyper::body::Incoming>, key: &Key, state: &State) -> Res {
    state.refreshes.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(REFRESH_DELAY).await;
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut params: HashMap<String, String> = HashMap::new();
    for input in [parts.uri.query().unwrap_or("").as_bytes(), &body[..]] {
        for (k, v) in form_urlencoded::parse(input) {
            if !v.is_empty() {
                params.entry(k.into_owned()).or_insert(v.into_owned());
            }
        }
    }
    let token = params
        .get("refresh_token")
        .cloned()
        .or_else(|| cookie(&parts.headers, "vagov_refresh_token"));
    let anti_csrf = params
        .get("anti_csrf_token")
        .cloned()
        .or_else(|| cookie(&parts.headers, "vagov_anti_csrf_token"));
    let refused = |status: u16, message: &str| {
        json_response(status)
            .header(
                "set-cookie",
                "vagov_access_token=; path=/; max-age=0; expires=Thu, 01 Jan 1970 00:00:00 GMT",
            )
            .header(
                "set-cookie",
                "vagov_refresh_token=; path=/v0/sign_in/refresh; max-age=0; expires=Thu, 01 Jan 1970 00:00:00 GMT",
            )
            .header("set-cookie", "stand_in_refused=1; path=/")
            .body(Full::new(Bytes::from(
                json!({ "errors": message }).to_string(),
            )))
            .unwrap()
    };
    let Some(token) = token else {
        return refused(400, "Refresh token is not defined");
    };
    let found = state.issued.lock().unwrap().get(&token).cloned();
    let Some(session) = found else {
        return refused(401, "Refresh token cannot be decrypted");
    };
    let cookies = session.client_id == COOKIE_CLIENT;
    if cookies && anti_csrf.as_deref() != Some(session.anti_csrf.as_str()) {
        return refused(401, "Anti CSRF token is not valid");
    }
    let access = key.access_token(&session.client_id, now_secs() + 300);
    let (refresh, new_anti_csrf) = state.issue(&session.client_id);
    if cookies {
        bundle_cookies(json_response(200), &access, &refresh, &new_anti_csrf)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    } else {
        json_response(200)
            .body(Full::new(Bytes::from(
                json!({"data": {
                    "access_token": access,
                    "refresh_token": refresh,
                    "anti_csrf_token": new_anti_csrf,
                }})
                .to_string(),
            )))
            .unwrap()
    }
}

/// A client that does not follow redirects: a sign-in's 302 is the answer
/// under test.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The status, headers and body of a response, for searching all of it.
pub async fn everything(
    res: reqwest::Response,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.text().await.unwrap();
    (status, headers, body)
}

/// Every `Set-Cookie` line of a response, as sent.
pub fn set_cookie_lines(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The value a list of `Set-Cookie` lines gives `name`.
pub fn cookie_value<'a>(cookies: &'a [String], name: &str) -> Option<&'a str> {
    cookies.iter().find_map(|c| {
        let pair = c.split(';').next()?;
        let (n, v) = pair.split_once('=')?;
        (n.trim() == name).then_some(v.trim())
    })
}
