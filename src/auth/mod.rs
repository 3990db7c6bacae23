//! Route auth modes (README, Pass-through routes and transparent
//! refresh): `public`, `session`, `required`.
//!
//! On `session` and `required` routes a valid access token is checked with no
//! store call (and remembered until it expires, so the hot path skips the
//! signature check too). When the access cookie is missing, expired or within
//! `tokens.refresh_skew` of expiry and a refresh cookie is present, the
//! gateway rotates inline: the request goes upstream with the new access
//! cookie and the response carries the new `Set-Cookie`s.

mod cache;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::config::{AuthMode, CookiesConfig, RouteConfig};
use crate::cookie;
use crate::ctx::RequestCtx;
use crate::http::body::{empty, json_error, Body};
use crate::proxy::cookies::{remove_cookies, replace_cookie};
use crate::session::service::RefreshError;
use crate::sign_in::adopt::NotAdopted;
use crate::sign_in::migrate::{LoginService, Migration};
use crate::sign_in::{cookies, params, SignIn};
use crate::tokens::jwt::VerifyError;

pub use cache::{Verified, VerifiedCache};

/// Who the request is, once auth has run.
#[derive(Debug, Clone)]
pub struct Identity {
    pub verified: Arc<Verified>,
    /// The access token, kept when the route forwards it as
    /// `Authorization: Bearer`.
    pub access_token: Option<Arc<str>>,
}

/// What auth decided for a request that may go upstream.
#[derive(Debug, Default)]
pub struct Decision {
    pub identity: Option<Identity>,
    /// `Set-Cookie`s to add to the upstream's response.
    pub set_cookies: Vec<HeaderValue>,
    /// Whether an inline refresh happened (for metrics).
    pub rotated: bool,
    /// The inline refresh was answered from memory.
    pub coalesced: bool,
}

/// Session work shared by every route: verified-token cache and inline refresh.
pub struct Auth {
    skew: Duration,
    verified: VerifiedCache,
    /// `cookies.access_name()`, `refresh_name()`, `anti_csrf_name()`,
    /// formatted once.
    access_name: String,
    refresh_name: String,
    anti_csrf_name: String,
}

impl Auth {
    pub fn new(skew: Duration, cookies: &CookiesConfig) -> Auth {
        Auth {
            skew,
            verified: VerifiedCache::new(100_000),
            access_name: cookies.access_name(),
            refresh_name: cookies.refresh_name(),
            anti_csrf_name: cookies.anti_csrf_name(),
        }
    }

    /// Runs the route's auth mode over the request headers, editing them for
    /// the upstream. `Err` is the response to send instead of forwarding.
    ///
    /// A refresh cookie of the login service (README, Putting sis-gateway in
    /// front of an existing Sign-in Service) is migrated through
    /// `login` when migration is on.
    pub async fn authenticate(
        &self,
        sign_in: &SignIn,
        login: Option<LoginService<'_>>,
        route: &RouteConfig,
        headers: &mut HeaderMap,
        ctx: &RequestCtx,
    ) -> Result<Decision, Response<Body>> {
        if route.auth == AuthMode::Public {
            return Ok(Decision::default());
        }
        let sessions = sign_in.sessions();
        let now_secs = sessions.now_ms() / 1000;
        let skew = self.skew.as_secs();
        let cfg = sign_in.cookies();
        let mut decision = Decision::default();

        // A Bearer header wins over the cookie and is never refreshed inline.
        if let Some(bearer) = params::bearer(headers) {
            return match self.verify(sign_in, bearer, now_secs) {
                Ok(verified) => {
                    decision.identity = Some(Identity {
                        verified,
                        access_token: route.forward_bearer.then(|| bearer.into()),
                    });
                    Ok(decision)
                }
                Err(VerifyError::Expired(_)) if route.auth == AuthMode::Required => Err(
                    json_error(StatusCode::FORBIDDEN, "Access token has expired"),
                ),
                Err(_) if route.auth == AuthMode::Required => Err(json_error(
                    StatusCode::UNAUTHORIZED,
                    "Access token JWT is malformed",
                )),
                Err(_) => Ok(decision),
            };
        }

        let access_name = &self.access_name;
        // Cookies are read by the one reader (raw, percent-encoded or
        // quoted alike); a raw value is borrowed, not copied.
        if let Some(token) = cookie::get(headers, access_name) {
            if let Ok(verified) = self.verify(sign_in, &token, now_secs) {
                if verified.claims.exp > now_secs + skew {
                    decision.identity = Some(Identity {
                        verified,
                        access_token: route.forward_bearer.then(|| (*token).into()),
                    });
                    return Ok(decision);
                }
            }
        }

        let refresh = cookie::get(headers, &self.refresh_name).map(Cow::into_owned);
        if let Some(refresh) = refresh {
            let anti_csrf = cookie::get(headers, &self.anti_csrf_name).map(Cow::into_owned);
            let refreshed = if sign_in.migrates(&refresh) {
                migrated(sign_in, &refresh, anti_csrf.as_deref(), login, ctx).await
            } else {
                sessions
                    .refresh_inline(&refresh, anti_csrf.as_deref())
                    .await
            };
            match refreshed {
                Ok((bundle, coalesced)) => {
                    decision.coalesced = coalesced;
                    replace_cookie(headers, access_name, &bundle.access_token);
                    decision.set_cookies = sign_in.set_cookies(&bundle);
                    decision.rotated = true;
                    let verified = Verified::new(bundle.claims.clone());
                    self.verified.insert(&bundle.access_token, verified.clone());
                    decision.identity = Some(Identity {
                        verified,
                        access_token: route
                            .forward_bearer
                            .then(|| bundle.access_token.as_str().into()),
                    });
                }
                Err(e) => {
                    if e.session_gone() {
                        decision.set_cookies = cookies::expire_all(cfg);
                    }
                    if e == RefreshError::StoreUnavailable && route.auth == AuthMode::Required {
                        return Err(json_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Session store unavailable",
                        ));
                    }
                    remove_cookies(headers, &[access_name.as_str()]);
                }
            }
        } else if route.auth == AuthMode::Session {
            // An expired access cookie with nothing to refresh it is dropped,
            // so the upstream never mistakes it for a session.
            remove_cookies(headers, &[access_name.as_str()]);
        }

        if decision.identity.is_none() && route.auth == AuthMode::Required {
            let mut res = unauthenticated(route, headers);
            for c in decision.set_cookies {
                res.headers_mut().append(header::SET_COOKIE, c);
            }
            return Err(res);
        }
        Ok(decision)
    }

    fn verify(
        &self,
        sign_in: &SignIn,
        token: &str,
        now_secs: u64,
    ) -> Result<Arc<Verified>, VerifyError> {
        if let Some(verified) = self.verified.get(token, now_secs) {
            return Ok(verified);
        }
        // The gateway's own tokens, and the login service's when adopting.
        let verified = Verified::new(Arc::new(sign_in.verify_access(token)?));
        self.verified.insert(token, verified.clone());
        Ok(verified)
    }
}

/// An inline refresh with a refresh token of the login service: migrated,
/// or told apart as a refresh error. A token the login service refused for
/// good (401) counts as a session gone, so the browser's cookies are
/// expired.
async fn migrated(
    sign_in: &SignIn,
    token: &str,
    anti_csrf: Option<&str>,
    login: Option<LoginService<'_>>,
    ctx: &RequestCtx,
) -> Result<(crate::session::service::Bundle, bool), RefreshError> {
    match sign_in.migrate(token, anti_csrf, login, ctx).await {
        Some(Migration::Migrated(bundle)) => Ok((bundle, false)),
        Some(Migration::Refused(r)) if r.status == StatusCode::UNAUTHORIZED => {
            Err(RefreshError::NoSession)
        }
        Some(Migration::Failed(NotAdopted::StoreUnavailable)) => {
            Err(RefreshError::StoreUnavailable)
        }
        Some(Migration::Failed(NotAdopted::Gone)) => Err(RefreshError::NoSession),
        _ => Err(RefreshError::Undecryptable),
    }
}

/// Adds the identity headers (and the Bearer token when the route asks) for a
/// request with a valid session. Incoming copies were removed before auth ran.
pub fn add_identity(route: &RouteConfig, identity: &Identity, headers: &mut HeaderMap) {
    let h = &route.identity_headers;
    let names = [&h.user_uuid, &h.session_handle, &h.client_id];
    for (name, value) in names.into_iter().zip(&identity.verified.identity_values) {
        if let Some(v) = value {
            headers.insert(name.clone(), v.clone());
        }
    }
    if let (true, Some(token)) = (route.forward_bearer, &identity.access_token) {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
}

/// 401, or a redirect to the route's `login_url` for a browser navigation.
fn unauthenticated(route: &RouteConfig, headers: &HeaderMap) -> Response<Body> {
    let navigation = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if let (true, Some(login)) = (navigation, &route.login_url) {
        if let Ok(location) = HeaderValue::from_str(login) {
            let mut res = Response::new(empty());
            *res.status_mut() = StatusCode::FOUND;
            res.headers_mut().insert(header::LOCATION, location);
            return res;
        }
    }
    json_error(StatusCode::UNAUTHORIZED, "Not authenticated")
}
