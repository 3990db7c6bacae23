//! The SiS endpoints under `sign_in.path_prefix` (README, The sign-in
//! endpoints) and the session admin API (README, Admin listener).
//!
//! - `POST refresh`, `POST revoke`, `GET revoke_all_sessions`, `GET logout`,
//!   `GET openid_connect/certs`, each with credentialed CORS for listed origins.
//! - Every other path under the prefix goes to `sign_in.upstream` (dispatched
//!   in [`crate::app`]), or is 404 without it.
//! - With `[sign_in.adopt]`, the login service's answers that carry a token
//!   bundle of its own get the gateway's instead ([`adopt`]), and its access
//!   tokens are accepted until they expire ([`SignIn::verify_access`]);
//!   its refresh tokens are migrated ([`migrate`]).
//! - Error bodies are `{"errors":"<message>"}` with the exact SiS messages.

pub mod admin;
pub mod adopt;
mod bundle;
pub mod cookies;
pub mod cors;
pub mod limit;
pub mod migrate;
pub mod params;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::http::body::RequestBody;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::config::{Authentication, ClientConfig, Config, CookiesConfig};
use crate::ctx::RequestCtx;
use crate::http::body::{empty, json, json_error, Body};
use crate::metrics::Metrics;
use crate::session::service::{Bundle, RefreshError, Sessions};
use crate::session::store::Store;
use crate::time::{SharedClock, SystemClock};
use crate::tokens::jwks::UpstreamKeys;
use crate::tokens::jwt::{AccessClaims, AccessTokens, VerifyError};
use crate::tokens::seal::Sealer;

enum Endpoint {
    Refresh,
    Revoke,
    RevokeAll,
    Logout,
    Certs,
}

/// The refresh-token sealer, ephemeral (with a warning) when none is configured.
fn sealer_for(config: &Config) -> Sealer {
    if config.tokens.sealing_keys.is_empty() {
        tracing::warn!(
            "no tokens.sealing_keys configured: using an ephemeral sealing key; refresh tokens \
             will not survive a restart and other instances cannot open them (dev only)"
        );
        Sealer::ephemeral()
    } else {
        Sealer::new(&config.tokens.sealing_keys)
    }
}

/// Sign-in request bodies are a few hundred bytes; anything past this is refused.
const MAX_BODY: usize = 64 * 1024;
/// A client that has not sent its (small) body within this is cut off.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The sign-in endpoints and everything they need.
pub struct SignIn {
    prefix: String,
    cookies: CookiesConfig,
    /// `cookies.refresh_name()` and `cookies.anti_csrf_name()`, formatted once.
    refresh_cookie: String,
    anti_csrf_cookie: String,
    cors_origins: Vec<String>,
    sessions: Arc<Sessions>,
    admin_token: Option<crate::config::Secret>,
    limiter: Arc<limit::FailureLimiter>,
    clock: SharedClock,
    /// `[sign_in.adopt]`: answers of the login service carrying a bundle of
    /// its own are adopted.
    adopter: Option<adopt::Adopter>,
}

impl SignIn {
    /// Connects the store and loads keys as configured, on the system clock.
    /// `adopt_keys`: the login service's keys, with `[sign_in.adopt]`.
    pub async fn new(
        config: &Config,
        adopt_keys: Option<Arc<UpstreamKeys>>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<SignIn> {
        Self::with_clock(config, adopt_keys, metrics, Arc::new(SystemClock)).await
    }

    pub async fn with_clock(
        config: &Config,
        adopt_keys: Option<Arc<UpstreamKeys>>,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> anyhow::Result<SignIn> {
        let store = Store::connect(&config.store).await?;
        let sealer = sealer_for(config);
        let access = AccessTokens::load(&config.tokens)?;
        let limiter = limit::FailureLimiter::new(config.sign_in.failures_per_minute, clock.clone());
        Ok(Self::assemble(
            config,
            adopt_keys,
            metrics,
            clock,
            store,
            sealer,
            access,
            Arc::new(limiter),
        ))
    }

    /// The sign-in endpoints for a reloaded `config`. What cannot be rebuilt
    /// without losing state is carried over when the new config keeps it: the
    /// store connection (the in-process memory store above all), ephemeral
    /// keys, and the failure counts.
    pub async fn reloaded(
        &self,
        old: &Config,
        config: &Config,
        adopt_keys: Option<Arc<UpstreamKeys>>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<SignIn> {
        let s = &self.sessions;
        let store = if old.store == config.store {
            s.store().clone()
        } else {
            Store::connect(&config.store).await?
        };
        let sealer = if old.tokens.sealing_keys == config.tokens.sealing_keys {
            s.sealer().clone()
        } else {
            sealer_for(config)
        };
        let access = if old.tokens.signing_keys.is_empty()
            && config.tokens.signing_keys.is_empty()
            && old.tokens.algorithm == config.tokens.algorithm
        {
            s.access_tokens().clone()
        } else {
            AccessTokens::load(&config.tokens)?
        };
        let limiter = if old.sign_in.failures_per_minute == config.sign_in.failures_per_minute {
            self.limiter.clone()
        } else {
            let limit = config.sign_in.failures_per_minute;
            Arc::new(limit::FailureLimiter::new(limit, self.clock.clone()))
        };
        let clock = self.clock.clone();
        Ok(Self::assemble(
            config, adopt_keys, metrics, clock, store, sealer, access, limiter,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: &Config,
        adopt_keys: Option<Arc<UpstreamKeys>>,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        store: Store,
        sealer: Sealer,
        access: AccessTokens,
        limiter: Arc<limit::FailureLimiter>,
    ) -> SignIn {
        let adopter = config
            .sign_in
            .adopt
            .as_ref()
            .zip(adopt_keys)
            .map(|(a, keys)| adopt::Adopter::new(a, keys, config, &metrics));
        let sessions = Sessions::new(config, store, sealer, access, clock.clone(), metrics);
        SignIn {
            adopter,
            prefix: config.sign_in.path_prefix.clone(),
            cookies: config.cookies.clone(),
            refresh_cookie: config.cookies.refresh_name(),
            anti_csrf_cookie: config.cookies.anti_csrf_name(),
            cors_origins: config.sign_in.cors_origins.clone(),
            sessions: Arc::new(sessions),
            admin_token: config.admin.token.clone(),
            limiter,
            clock,
        }
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    pub fn cookies(&self) -> &CookiesConfig {
        &self.cookies
    }

    /// True when `path` belongs to the sign-in endpoints.
    pub fn matches(&self, path: &str) -> bool {
        path.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Answers a sign-in endpoint. `login` reaches the login service, for
    /// migrations of its refresh tokens.
    pub async fn handle(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestCtx,
        login: Option<migrate::LoginService<'_>>,
    ) -> Response<Body> {
        let origin = cors::allowed_origin(req.headers(), &self.cors_origins).cloned();
        let preflight = cors::is_preflight(req.method(), req.headers());
        let mut res = if preflight {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        } else {
            // An address over its failure budget is still served: a call that
            // succeeds (it carries a credential this gateway issued, checked
            // before any store work) is never limited; one that fails gets 429.
            let blocked = self.limiter.blocked(ctx.client_ip);
            // Boxed: keeps the connection future small on the pass-through path.
            let res = Box::pin(self.route(req, ctx, login)).await;
            let failed = res.status().is_client_error()
                && !matches!(
                    res.status(),
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                );
            if failed {
                self.limiter.failed(ctx.client_ip);
            }
            if failed && blocked {
                json_error(StatusCode::TOO_MANY_REQUESTS, "Too many failed requests")
            } else {
                res
            }
        };
        cors::decorate(res.headers_mut(), origin.as_ref(), preflight);
        res
    }

    /// The endpoint the gateway answers itself at `path` (one that
    /// [`matches`](Self::matches)), and its method.
    fn endpoint(&self, path: &str) -> Option<(Endpoint, Method)> {
        let endpoint = path.get(self.prefix.len()..)?.trim_end_matches('/');
        Some(match endpoint {
            "/refresh" => (Endpoint::Refresh, Method::POST),
            "/revoke" => (Endpoint::Revoke, Method::POST),
            "/revoke_all_sessions" => (Endpoint::RevokeAll, Method::GET),
            "/logout" => (Endpoint::Logout, Method::GET),
            "/openid_connect/certs" => (Endpoint::Certs, Method::GET),
            _ => return None,
        })
    }

    /// True when the gateway answers `path` (one that
    /// [`matches`](Self::matches)) itself; other sign-in paths go to
    /// `sign_in.upstream` when it is set (README, Putting sis-gateway in front
    /// of an existing Sign-in Service).
    pub fn intercepts(&self, path: &str) -> bool {
        self.endpoint(path).is_some()
    }

    async fn route(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestCtx,
        login: Option<migrate::LoginService<'_>>,
    ) -> Response<Body> {
        let Some((endpoint, allowed)) = self.endpoint(req.uri().path()) else {
            return json_error(StatusCode::NOT_FOUND, "Not found");
        };
        if req.method() != allowed {
            let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
            if let Ok(v) = HeaderValue::from_str(allowed.as_str()) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            return r;
        }
        match endpoint {
            Endpoint::Refresh => self.refresh(req, ctx, login).await,
            Endpoint::Revoke => self.revoke(req).await,
            Endpoint::RevokeAll => self.revoke_all(req).await,
            Endpoint::Logout => self.logout(req).await,
            Endpoint::Certs => self.certs(),
        }
    }

    /// Reads the query, body and cookies of a refresh or revoke call.
    async fn credentials(
        &self,
        req: Request<RequestBody>,
    ) -> Result<params::Credentials, Response<Body>> {
        let (parts, body) = req.into_parts();
        let body = read_small_body(&parts.headers, body).await?;
        params::credentials(
            parts.uri.query(),
            &parts.headers,
            &body,
            &self.refresh_cookie,
            &self.anti_csrf_cookie,
        )
        .map_err(|_| json_error(StatusCode::BAD_REQUEST, "Malformed request body"))
    }

    /// The refresh token (required) and anti-CSRF token of a refresh or revoke call.
    async fn presented(
        &self,
        req: Request<RequestBody>,
    ) -> Result<(String, Option<String>), Response<Body>> {
        let creds = self.credentials(req).await?;
        match creds.refresh_token {
            Some(token) => Ok((token, creds.anti_csrf_token)),
            None => Err(self.error(RefreshError::NotDefined, None)),
        }
    }

    async fn refresh(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestCtx,
        login: Option<migrate::LoginService<'_>>,
    ) -> Response<Body> {
        let (token, anti_csrf) = match self.presented(req).await {
            Ok(p) => p,
            Err(res) => return res,
        };
        // A token of the login service is migrated (README, Putting sis-gateway
        // in front of an existing Sign-in Service).
        if self.migrates(&token) {
            return match self.migrate(&token, anti_csrf.as_deref(), login, ctx).await {
                Some(migrate::Migration::Migrated(bundle)) => self.issued(&bundle, StatusCode::OK),
                Some(migrate::Migration::Refused(r)) => r.response(),
                Some(migrate::Migration::Failed(e)) => e.response(),
                None => self.token_error(RefreshError::Undecryptable, &token),
            };
        }
        match self.sessions.refresh(&token, anti_csrf.as_deref()).await {
            Ok(bundle) => self.issued(&bundle, StatusCode::OK),
            Err(e) => self.token_error(e, &token),
        }
    }

    /// An error about a presented refresh token, shaped for the client the
    /// token names (cookie clients may get their cookies expired).
    fn token_error(&self, e: RefreshError, token: &str) -> Response<Body> {
        let client = self.sessions.open_client(token);
        self.error(e, client.as_deref())
    }

    async fn revoke(&self, req: Request<RequestBody>) -> Response<Body> {
        let (token, anti_csrf) = match self.presented(req).await {
            Ok(p) => p,
            Err(res) => return res,
        };
        match self.sessions.revoke(&token, anti_csrf.as_deref()).await {
            Ok(client) => {
                let mut res = Response::new(empty());
                if client.authentication == Authentication::Cookie {
                    append_cookies(res.headers_mut(), cookies::expire_all(&self.cookies));
                }
                res
            }
            Err(e) => self.token_error(e, &token),
        }
    }

    /// The access token of a request: a Bearer header wins over the cookie.
    fn access_token<'a>(&self, headers: &'a HeaderMap) -> Option<Cow<'a, str>> {
        params::bearer(headers)
            .map(Cow::Borrowed)
            .or_else(|| crate::cookie::get(headers, &self.cookies.access_name()))
    }

    fn verified_access(&self, headers: &HeaderMap) -> Result<AccessClaims, Response<Body>> {
        let Some(token) = self.access_token(headers) else {
            return Err(json_error(
                StatusCode::UNAUTHORIZED,
                "Access token JWT is malformed",
            ));
        };
        match self.verify_access(&token) {
            Ok(claims) => Ok(claims),
            Err(VerifyError::Expired(_)) => Err(json_error(
                StatusCode::FORBIDDEN,
                "Access token has expired",
            )),
            Err(VerifyError::Invalid) => Err(json_error(
                StatusCode::UNAUTHORIZED,
                "Access token JWT is malformed",
            )),
        }
    }

    async fn revoke_all(&self, req: Request<RequestBody>) -> Response<Body> {
        let claims = match self.verified_access(req.headers()) {
            Ok(c) => c,
            Err(res) => return res,
        };
        match self.sessions.revoke_user(&claims.sub).await {
            Ok(_) => Response::new(empty()),
            Err(e) => self.error(e.into(), None),
        }
    }

    async fn logout(&self, req: Request<RequestBody>) -> Response<Body> {
        // As in the Rails SiS, the client is named by the query alone, and
        // nothing happens without a known one.
        let client = req
            .uri()
            .query()
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "client_id")
                    .map(|(_, v)| v)
            })
            .and_then(|id| self.sessions.client(&id).cloned());
        let Some(client) = client else {
            return json_error(StatusCode::BAD_REQUEST, "Client id is not valid");
        };
        // An expired access token still names the session to end.
        let claims =
            self.access_token(req.headers())
                .and_then(|t| match self.sessions.verify_access(&t) {
                    Ok(c) => Some(c),
                    Err(VerifyError::Expired(c)) => Some(*c),
                    Err(VerifyError::Invalid) => None,
                });
        if let Some(c) = &claims {
            if let Err(e) = self.sessions.revoke_handle(&c.session_handle).await {
                return self.error(e.into(), None);
            }
        }
        let redirect = client.logout_redirect_uri.as_deref();
        let mut res = match redirect.and_then(|r| HeaderValue::from_str(r).ok()) {
            Some(location) => {
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::FOUND;
                r.headers_mut().insert(header::LOCATION, location);
                r
            }
            None => Response::new(empty()),
        };
        append_cookies(res.headers_mut(), cookies::expire_all(&self.cookies));
        res
    }

    fn certs(&self) -> Response<Body> {
        let mut res = json(StatusCode::OK, &self.sessions.access_tokens().jwks());
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        res
    }

    /// A successful create or refresh, shaped for the client's kind.
    fn issued(&self, b: &Bundle, status: StatusCode) -> Response<Body> {
        match b.client.authentication {
            Authentication::Api => {
                // Written straight from the bundle: no copy of the tokens into
                // a JSON value first. Same bytes as a `serde_json::Value`
                // (keys in sorted order); the head comes from `json`.
                #[derive(serde::Serialize)]
                struct Data<'a> {
                    access_token: &'a str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    anti_csrf_token: Option<&'a str>,
                    refresh_token: &'a str,
                }
                #[derive(serde::Serialize)]
                struct Answer<'a> {
                    data: Data<'a>,
                }
                let answer = Answer {
                    data: Data {
                        access_token: &b.access_token,
                        anti_csrf_token: b.client.anti_csrf.then_some(b.anti_csrf_token.as_str()),
                        refresh_token: &b.refresh_token,
                    },
                };
                let mut bytes = Vec::with_capacity(
                    b.access_token.len() + b.refresh_token.len() + b.anti_csrf_token.len() + 96,
                );
                if serde_json::to_writer(&mut bytes, &answer).is_err() {
                    return json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error");
                }
                let mut res = json(status, &serde_json::Value::Null);
                *res.body_mut() = crate::http::body::full(bytes);
                res
            }
            Authentication::Cookie => {
                let mut res = json(status, &serde_json::json!({}));
                append_cookies(res.headers_mut(), self.set_cookies(b));
                res
            }
        }
    }

    /// The `Set-Cookie` values that carry a bundle to a browser.
    pub fn set_cookies(&self, b: &Bundle) -> Vec<HeaderValue> {
        cookies::issue(
            &self.cookies,
            &cookies::Issued {
                access_token: &b.access_token,
                refresh_token: &b.refresh_token,
                anti_csrf_token: b.client.anti_csrf.then_some(b.anti_csrf_token.as_str()),
                access_exp_ms: b.access_exp_ms,
                refresh_exp_ms: b.session.refresh_exp_ms,
            },
        )
    }

    /// The error table of README, The sign-in endpoints: the status of each
    /// error (its message is the error's text).
    fn error(&self, e: RefreshError, client: Option<&ClientConfig>) -> Response<Body> {
        let status = match e {
            RefreshError::NotDefined => StatusCode::BAD_REQUEST,
            RefreshError::Undecryptable
            | RefreshError::Version
            | RefreshError::Nonce
            | RefreshError::NoSession
            | RefreshError::AntiCsrf
            | RefreshError::Theft => StatusCode::UNAUTHORIZED,
            RefreshError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RefreshError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut res = json_error(status, &e.to_string());
        if e.session_gone() && client.is_some_and(|c| c.authentication == Authentication::Cookie) {
            append_cookies(res.headers_mut(), cookies::expire_all(&self.cookies));
        }
        res
    }

    /// The session admin API (`/admin/...` on the admin listener).
    pub async fn admin(&self, req: Request<RequestBody>) -> Response<Body> {
        Box::pin(admin::handle(self, req)).await
    }

    /// Readiness of what sign-in depends on (the session store).
    pub async fn ready(&self) -> bool {
        self.sessions.ready().await
    }

    /// The access-token keys in use.
    pub fn access_tokens(&self) -> &AccessTokens {
        self.sessions.access_tokens()
    }
}

fn append_cookies(headers: &mut HeaderMap, values: Vec<HeaderValue>) {
    for v in values {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Reads a small body with a size cap and a deadline.
async fn read_small_body(headers: &HeaderMap, body: RequestBody) -> Result<Bytes, Response<Body>> {
    // The rest of the body stays unread, so the connection closes after this
    // answer: say so (RFC 9112 §9.6), or a pooling client reuses it.
    let too_large = || {
        let mut res = json_error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        res
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(json_error(
            StatusCode::BAD_REQUEST,
            "Malformed request body",
        )),
        Err(_) => Err(json_error(
            StatusCode::REQUEST_TIMEOUT,
            "Request body timed out",
        )),
    }
}
