//! Migration (README, Putting sis-gateway in front of an existing Sign-in
//! Service): users signed in at the login service before the gateway went in
//! front of it hold refresh tokens of its own. Such a token (SiS shape, not
//! sealed by any of the gateway's keys), met at the refresh endpoint or in an
//! inline refresh, is refreshed once at the login service's `{prefix}/refresh`,
//! and the bundle it answers is adopted as
//! [`adopt`](super::adopt) adopts a sign-in. The client gets the gateway's
//! bundle; the login service's new refresh token is dropped, so from then
//! on the user refreshes at the gateway alone. Any other answer is passed
//! back as the login service gave it.
//!
//! Parallel migrations of one token (with one anti-CSRF token) in this
//! process share one call to the login service, and its result is kept in
//! memory for the replay window. Across instances they converge in the
//! store: the session's handle is derived from the token and the first
//! adoption is recorded for the window ([`Sessions::adopt`]), so every
//! instance answers with the same session and refresh token.
//!
//! [`Sessions::adopt`]: crate::session::service::Sessions::adopt

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::bundle::{
    cookie_bundle, is_json, json_bundle, read_limited, NotAdopted, BODY_TIMEOUT, MAX_JSON,
};
use super::SignIn;
use crate::config::Config;
use crate::ctx::RequestCtx;
use crate::http::body::{Body, RequestBody};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::proxy::{Proxy, Route};
use crate::session::service::Bundle;
use crate::tokens::token_hash;

/// The login service, as the proxy reaches it: its pooled connections and
/// its route (`sign_in.upstream`).
#[derive(Clone, Copy)]
pub struct LoginService<'a> {
    pub proxy: &'a Proxy,
    pub route: &'a Route,
}

/// An answer of the login service that refused a migration, kept to be
/// passed back (to every caller that shared the call).
#[derive(Clone, Debug)]
pub struct Refusal {
    pub status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Refusal {
    /// The answer as the login service gave it: status, fields (its
    /// `Set-Cookie`s included) and body.
    pub fn response(&self) -> Response<Body> {
        let mut res = Response::new(crate::http::body::full(self.body.clone()));
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        res
    }
}

/// What a migration came to.
#[derive(Clone, Debug)]
pub enum Migration {
    /// Adopted: the gateway's bundle.
    Migrated(Bundle),
    /// The login service did not refresh the token: its answer.
    Refused(Refusal),
    /// The login service refreshed it, but the gateway could not adopt the
    /// result.
    Failed(NotAdopted),
}

impl Migration {
    /// The access log's word for it.
    fn outcome(&self) -> &'static str {
        match self {
            Migration::Migrated(_) => "migrated",
            Migration::Refused(_) => "migration_refused",
            Migration::Failed(_) => "migration_failed",
        }
    }
}

type Flight = Arc<OnceCell<Migration>>;

/// Past this many remembered results, expired ones are swept on insert.
const RECENT_SWEEP_AT: usize = 10_000;

/// What migration keeps: calls in flight and recent results.
pub(crate) struct Migrator {
    /// `{sign_in.path_prefix}/refresh`.
    path: http::uri::PathAndQuery,
    grace_ms: u64,
    /// Keyed by [`flight_key`].
    in_flight: Mutex<HashMap<String, Flight>>,
    /// Flight key → the bundle a migration gave and the end of its window.
    recent: Mutex<HashMap<String, (Bundle, u64)>>,
    /// `sis_migrations_total{outcome}`.
    outcomes: Family<OutcomeLabels, Counter>,
}

/// One flight per token and anti-CSRF token: a caller with another
/// anti-CSRF token never shares a result the login service did not check
/// for it.
fn flight_key(token: &str, anti_csrf: Option<&str>) -> String {
    let mut key = String::with_capacity(token.len() + 40);
    key.push_str(token);
    key.push('\0');
    key.push_str(anti_csrf.unwrap_or_default());
    token_hash(&key)
}

/// The form body of a refresh call: `refresh_token` and, when there is one,
/// `anti_csrf_token`.
fn refresh_form(token: &str, anti_csrf: Option<&str>) -> Bytes {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("refresh_token", token);
    if let Some(a) = anti_csrf {
        form.append_pair("anti_csrf_token", a);
    }
    Bytes::from(form.finish())
}

impl Migrator {
    pub(crate) fn new(config: &Config, metrics: &Metrics) -> Migrator {
        let path = format!(
            "{}/refresh",
            config.sign_in.path_prefix.trim_end_matches('/')
        );
        Migrator {
            path: path
                .parse()
                .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/v0/sign_in/refresh")),
            grace_ms: config.tokens.refresh_grace.as_millis() as u64,
            in_flight: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            outcomes: metrics.family(
                "migrations",
                "Refresh tokens of the login service refreshed there and adopted, by outcome: \
                 migrated, refused (the login service's answer passed back), invalid, expired, \
                 unknown_client, unreadable, gone, store_error",
                Family::default,
            ),
        }
    }

    fn count(&self, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn remembered(&self, key: &str, now_ms: u64) -> Option<Bundle> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .get(key)
            .filter(|(_, until)| now_ms < *until)
            .map(|(b, _)| b.clone())
    }

    fn remember(&self, key: &str, bundle: &Bundle, now_ms: u64) {
        if self.grace_ms == 0 {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_SWEEP_AT {
            recent.retain(|_, (_, until)| now_ms < *until);
        }
        recent.insert(key.to_owned(), (bundle.clone(), now_ms + self.grace_ms));
    }
}

impl SignIn {
    /// True when `token` is one to migrate: migration is on and the token
    /// has the SiS shape but no key of the gateway sealed it. No store call,
    /// no allocation.
    pub fn migrates(&self, token: &str) -> bool {
        self.adopter.as_ref().is_some_and(|a| a.migrator.is_some())
            && self.sessions.sealer().is_foreign(token)
    }

    /// Migrates `token` when it is a refresh token of the login service
    /// and migration is on; `None` when it is not one to migrate.
    pub async fn migrate(
        &self,
        token: &str,
        anti_csrf: Option<&str>,
        login: Option<LoginService<'_>>,
        ctx: &RequestCtx,
    ) -> Option<Migration> {
        let adopter = self.adopter.as_ref()?;
        let migrator = adopter.migrator.as_ref()?;
        let login = login?;
        if !self.migrates(token) {
            return None;
        }
        let key = flight_key(token, anti_csrf);
        let result = match migrator.remembered(&key, self.sessions.now_ms()) {
            Some(bundle) => Migration::Migrated(bundle),
            None => {
                let flight = {
                    let mut map = migrator.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                    map.entry(key.clone()).or_default().clone()
                };
                let result = flight
                    .get_or_init(|| async {
                        // A flight that ended just before this one began
                        // left its result here.
                        if let Some(b) = migrator.remembered(&key, self.sessions.now_ms()) {
                            return Migration::Migrated(b);
                        }
                        let m = self
                            .migrate_once(&adopter.names, migrator, token, anti_csrf, login, ctx)
                            .await;
                        if let Migration::Migrated(b) = &m {
                            migrator.remember(&key, b, self.sessions.now_ms());
                        }
                        m
                    })
                    .await
                    .clone();
                let mut map = migrator.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                    map.remove(&key);
                }
                result
            }
        };
        let _ = ctx.adoption.set(result.outcome());
        Some(result)
    }

    /// One call to the login service, and the adoption of its answer.
    async fn migrate_once(
        &self,
        names: &[String; 4],
        migrator: &Migrator,
        token: &str,
        anti_csrf: Option<&str>,
        login: LoginService<'_>,
        ctx: &RequestCtx,
    ) -> Migration {
        let result = self
            .call_login_service(names, migrator, token, anti_csrf, login, ctx)
            .await;
        match &result {
            Migration::Migrated(b) => {
                migrator.count("migrated");
                tracing::info!(
                    client_id = %b.client.client_id,
                    session_handle = %b.session.handle,
                    "migrated a session of the login service"
                );
            }
            Migration::Refused(r) => {
                migrator.count("refused");
                tracing::info!(status = %r.status, "the login service refused to refresh a token to migrate");
            }
            Migration::Failed(e) => migrator.count(e.outcome()),
        }
        result
    }

    /// `names` are the login service's bundle cookies.
    async fn call_login_service(
        &self,
        names: &[String; 4],
        migrator: &Migrator,
        token: &str,
        anti_csrf: Option<&str>,
        login: LoginService<'_>,
        ctx: &RequestCtx,
    ) -> Migration {
        let mut req = Request::new(RequestBody::full(refresh_form(token, anti_csrf)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = migrator.path.clone().into();
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        // The request's own facts (client address, request id), but the
        // upstream it names in the access log stays the request's.
        let call_ctx = RequestCtx {
            upstream: OnceLock::new(),
            adoption: OnceLock::new(),
            ..ctx.clone()
        };
        let reply = login
            .proxy
            .forward(login.route, req, &call_ctx, HeaderMap::new())
            .await;
        let (parts, body) = reply.into_response().into_parts();
        let declared = crate::http::fields::content_length(&parts.headers)
            .ok()
            .flatten()
            .unwrap_or(0);
        let encoded = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let bytes = if encoded || declared > MAX_JSON as u64 {
            None
        } else {
            tokio::time::timeout(BODY_TIMEOUT, read_limited(body))
                .await
                .ok()
                .flatten()
        };
        let Some(bytes) = bytes else {
            tracing::warn!("an answer of the login service to a migration could not be read");
            return Migration::Failed(NotAdopted::Unreadable);
        };
        let cookies = cookie_bundle(names, &parts.headers);
        let json: Option<Value> = is_json(&parts.headers)
            .then(|| serde_json::from_slice(&bytes).ok())
            .flatten();
        let json_token = json.as_ref().map(json_bundle);
        let in_json = matches!(json_token, Some(Ok(Some(_))) | Some(Err(_)));
        let carries = in_json || cookies.present();
        if !carries {
            let mut headers = parts.headers;
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::TRANSFER_ENCODING);
            // The request's own id is the server's to write.
            headers.remove(crate::ctx::X_REQUEST_ID);
            return Migration::Refused(Refusal {
                status: parts.status,
                headers,
                body: bytes,
            });
        }
        // A bundle is adopted or refused: never passed on.
        let access = match json_token {
            Some(Ok(Some(t))) => Some(t.to_owned()),
            _ => cookies.access_token,
        };
        let (StatusCode::OK, Some(access)) = (parts.status, access) else {
            tracing::warn!(status = %parts.status, "an answer of the login service to a migration carries no usable bundle");
            return Migration::Failed(NotAdopted::Invalid);
        };
        // Migration is on only with `[sign_in.adopt]`.
        let Some(adopter) = &self.adopter else {
            return Migration::Failed(NotAdopted::Invalid);
        };
        match self.open_adopted(adopter, &access, Some(token)).await {
            Ok(bundle) => Migration::Migrated(bundle),
            Err(e) => Migration::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_form_encodes_the_rails_alphabet() {
        assert_eq!(
            refresh_form("v1:a+b/c=.0f.V0", Some("x y")),
            "refresh_token=v1%3Aa%2Bb%2Fc%3D.0f.V0&anti_csrf_token=x+y"
        );
        assert_eq!(refresh_form("v1:a", None), "refresh_token=v1%3Aa");
    }

    #[test]
    fn flights_are_per_token_and_anti_csrf_token() {
        let a = flight_key("v1:a", Some("x"));
        assert_eq!(a, flight_key("v1:a", Some("x")));
        assert_ne!(a, flight_key("v1:a", Some("y")));
        assert_ne!(a, flight_key("v1:a", None));
        assert_ne!(flight_key("v1:a", None), flight_key("v1:b", None));
        // The separator keeps the two apart.
        assert_ne!(flight_key("v1:a", Some("b")), flight_key("v1:a\0b", None));
    }
}
