//! Adoption (README, Putting sis-gateway in front of an existing Sign-in
//! Service): an answer of the login service that carries an SiS token bundle is
//! rewritten to carry a bundle of the gateway's own before the client sees it.
//!
//! - A JSON body with `data.access_token` and `data.refresh_token` (the
//!   `token` endpoint, API clients): the same body with the gateway's
//!   tokens, every other field kept.
//! - `Set-Cookie: {prefix}access_token=…` (the `callback`, cookie clients,
//!   usually a 302): the gateway's four cookies in place of the login
//!   service's `{prefix}` cookies; other cookies, the status and `Location`
//!   kept.
//!
//! The login service's access token must verify against `sign_in.adopt.jwks`
//! and name a configured client; the gateway then opens a session of its
//! own for that user and client. The login service's refresh token never
//! reaches the client: an answer that carries one but cannot be adopted, or
//! a JSON answer too large (or encoded) to be read, is answered 502.

use bytes::Bytes;
use http::header;
use http::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use std::sync::Arc;

use super::bundle::{
    cookie_bundle, is_json, json_bundle, read_limited, replace_cookies, replace_json,
    NoAccessToken, BODY_TIMEOUT,
};
pub use super::bundle::{NotAdopted, MAX_JSON, NOT_ADOPTED};
use super::SignIn;
use crate::config::AdoptConfig;
use crate::ctx::RequestCtx;
use crate::http::Reply;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::session::service::{Bundle, CreateError};
use crate::tokens::jwks::{UpstreamClaims, UpstreamKeys, UpstreamVerifyError};
use crate::tokens::jwt::{AccessClaims, VerifyError};

/// What adoption needs, built from `[sign_in.adopt]`.
pub(crate) struct Adopter {
    keys: Arc<UpstreamKeys>,
    issuer: Option<String>,
    /// `{prefix}access_token`, `refresh_token`, `anti_csrf_token`,
    /// `info_token`: the login service's bundle cookies, replaced.
    pub(crate) names: [String; 4],
    /// `sis_adoptions_total{outcome}`.
    outcomes: Family<OutcomeLabels, Counter>,
    /// With `migrate`: refresh tokens of the login service are migrated.
    pub(crate) migrator: Option<super::migrate::Migrator>,
}

impl Adopter {
    pub(crate) fn new(
        cfg: &AdoptConfig,
        keys: Arc<UpstreamKeys>,
        config: &crate::config::Config,
        metrics: &Metrics,
    ) -> Adopter {
        let cookies = &config.cookies;
        Adopter {
            migrator: cfg
                .migrate
                .then(|| super::migrate::Migrator::new(config, metrics)),
            keys,
            issuer: cfg.issuer.clone(),
            names: [
                cookies.access_name(),
                cookies.refresh_name(),
                cookies.anti_csrf_name(),
                cookies.info_name(),
            ],
            outcomes: metrics.family(
                "adoptions",
                "Answers of the login service carrying a token bundle, by outcome: adopted, \
                 invalid, expired, unknown_client, unreadable, store_error",
                Family::default,
            ),
        }
    }

    /// Counts an answer whose bundle was not adopted, and answers for it.
    fn refuse(&self, ctx: &RequestCtx, e: NotAdopted) -> Reply {
        self.count(ctx, e.outcome());
        e.response().into()
    }

    /// Counts an answer that carried a bundle, and names its outcome in the
    /// request's access log line.
    fn count(&self, ctx: &RequestCtx, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        let _ = ctx.adoption.set(outcome);
    }
}

/// An access token of the login service as the gateway's own claims, for
/// identity headers: what it does not carry is left empty.
fn as_access_claims(c: UpstreamClaims) -> AccessClaims {
    let aud = match c.aud {
        Some(Value::String(a)) => vec![a],
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    AccessClaims {
        iss: c.iss.unwrap_or_default(),
        aud,
        client_id: c.client_id,
        sub: c.sub,
        jti: String::new(),
        iat: c.iat,
        exp: c.exp,
        session_handle: c.session_handle.unwrap_or_default(),
        refresh_token_hash: String::new(),
        parent_refresh_token_hash: None,
        anti_csrf_token: String::new(),
        last_regeneration_time: 0,
        version: "V0".into(),
        user_attributes: c.user_attributes.unwrap_or(Value::Null),
    }
}

impl SignIn {
    /// True when answers of the login service are adopted.
    pub fn adopts(&self) -> bool {
        self.adopter.is_some()
    }

    /// The login service's answer, with a bundle of its own replaced by
    /// the gateway's (see the module docs). Answers without a bundle are
    /// passed on as they came (a JSON one read and given back).
    pub async fn adopt(&self, reply: Reply, ctx: &RequestCtx) -> Reply {
        let Some(adopter) = &self.adopter else {
            return reply;
        };
        let mut res = reply.into_response();
        let cookies = cookie_bundle(&adopter.names, res.headers());
        let mut json: Option<Value> = None;
        if is_json(res.headers()) {
            let encoded = res
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
            let declared = crate::http::fields::content_length(res.headers())
                .ok()
                .flatten()
                .unwrap_or(0);
            if encoded || declared > MAX_JSON as u64 {
                tracing::warn!(
                    encoded,
                    declared,
                    "a JSON answer of the login service could not be read for adoption"
                );
                return adopter.refuse(ctx, NotAdopted::Unreadable);
            }
            let (parts, body) = res.into_parts();
            let bytes = match tokio::time::timeout(BODY_TIMEOUT, read_limited(body)).await {
                Ok(Some(bytes)) => bytes,
                _ => {
                    tracing::warn!(
                        "a JSON answer of the login service was too large, slow or broken to read for adoption"
                    );
                    return adopter.refuse(ctx, NotAdopted::Unreadable);
                }
            };
            json = serde_json::from_slice::<Value>(&bytes).ok();
            res = Response::from_parts(parts, crate::http::body::full(bytes));
        }
        let json_token = match json.as_ref().map(json_bundle) {
            Some(Ok(t)) => t.map(str::to_owned),
            Some(Err(NoAccessToken)) => {
                tracing::warn!("{NoAccessToken}");
                return adopter.refuse(ctx, NotAdopted::Invalid);
            }
            None => None,
        };
        let in_json = json_token.is_some();
        let in_cookies = cookies.present();
        if !in_json && !in_cookies {
            return res.into();
        }
        let Some(token) = json_token.or(cookies.access_token) else {
            tracing::warn!("{NoAccessToken}");
            return adopter.refuse(ctx, NotAdopted::Invalid);
        };
        let bundle = match self.open_adopted(adopter, &token, None).await {
            Ok(b) => b,
            Err(e) => return adopter.refuse(ctx, e),
        };
        adopter.count(ctx, "adopted");
        tracing::info!(
            client_id = %bundle.client.client_id,
            session_handle = %bundle.session.handle,
            "adopted a sign-in of the login service"
        );
        if in_cookies {
            replace_cookies(&adopter.names, res.headers_mut(), self.set_cookies(&bundle));
        }
        if let (true, Some(mut body)) = (in_json, json) {
            replace_json(&mut body, &bundle);
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            res.headers_mut().remove(header::CONTENT_LENGTH);
            *res.body_mut() = crate::http::body::full(Bytes::from(bytes));
        }
        res.into()
    }

    /// An access token of the gateway's, or, with `[sign_in.adopt]`, one of
    /// the login service's that verifies against its JWKS (until it expires).
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        let own = self.sessions.verify_access(token);
        let (Err(VerifyError::Invalid), Some(adopter)) = (&own, &self.adopter) else {
            return own;
        };
        let now_secs = self.sessions.now_ms() / 1000;
        match adopter
            .keys
            .verify(token, adopter.issuer.as_deref(), now_secs)
        {
            Ok(c) if !c.sub.is_empty() => Ok(as_access_claims(c)),
            Err(UpstreamVerifyError::Expired(c)) => {
                Err(VerifyError::Expired(Box::new(as_access_claims(*c))))
            }
            _ => Err(VerifyError::Invalid),
        }
    }

    /// Verifies the login service's access token and opens a session of
    /// the gateway's own for its user and client: a new one, or, for a
    /// migration (`migrated` is the login service's refresh token that was
    /// refreshed), the one every adoption of that token shares. `Err` names
    /// the outcome (for metrics) and the answer.
    pub(crate) async fn open_adopted(
        &self,
        adopter: &Adopter,
        token: &str,
        migrated: Option<&str>,
    ) -> Result<Bundle, NotAdopted> {
        let now_secs = self.sessions.now_ms() / 1000;
        let claims = match adopter
            .keys
            .verify_fresh(token, adopter.issuer.as_deref(), now_secs)
            .await
        {
            Ok(c) if !c.sub.is_empty() => c,
            Ok(_) => {
                tracing::warn!("a sign-in of the login service names no user (empty sub)");
                return Err(NotAdopted::Invalid);
            }
            Err(e) => {
                tracing::warn!(reason = %e, "a sign-in of the login service was not adopted");
                return Err(match e {
                    UpstreamVerifyError::Expired(_) => NotAdopted::Expired,
                    UpstreamVerifyError::Invalid => NotAdopted::Invalid,
                });
            }
        };
        let attrs = match claims.user_attributes {
            Some(v @ Value::Object(_)) => v,
            _ => Value::Object(Default::default()),
        };
        let opened = match migrated {
            Some(old) => {
                self.sessions
                    .adopt(old, &claims.sub, &claims.client_id, attrs)
                    .await
            }
            None => {
                self.sessions
                    .create(&claims.sub, &claims.client_id, attrs)
                    .await
            }
        };
        match opened {
            Ok(b) => Ok(b),
            Err(CreateError::UnknownClient) => {
                tracing::warn!(
                    client_id = %claims.client_id,
                    "a sign-in of the login service names a client that is not configured"
                );
                Err(NotAdopted::UnknownClient)
            }
            Err(CreateError::Gone) => Err(NotAdopted::Gone),
            Err(CreateError::Store(e)) => {
                tracing::warn!(error = %e, "session store call failed");
                Err(NotAdopted::StoreUnavailable)
            }
            Err(CreateError::Internal) => Err(NotAdopted::Internal),
        }
    }
}
