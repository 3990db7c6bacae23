//! Adoption (SPEC §8): an answer of the login service that carries an SiS
//! token bundle is rewritten to carry a bundle of the gateway's own before
//! the client sees it.
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

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use std::sync::Arc;

use super::SignIn;
use crate::body::{json_error, Body};
use crate::config::AdoptConfig;
use crate::ctx::RequestCtx;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::proxy::Reply;
use crate::session::service::{Bundle, CreateError};
use crate::tokens::jwks::{UpstreamClaims, UpstreamKeys, UpstreamVerifyError};
use crate::tokens::jwt::{AccessClaims, VerifyError};

/// JSON answers of the login service larger than this are not read: one
/// that may carry a bundle is refused (502) rather than passed on unread.
pub const MAX_JSON: usize = 64 * 1024;
/// The rest of a JSON answer must arrive within this once its head has.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The error message of an answer that carried a bundle the gateway could
/// not adopt.
pub const NOT_ADOPTED: &str = "Sign-in could not be adopted";

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

    /// Counts an answer that carried a bundle, and names its outcome in the
    /// request's access log line.
    fn count(&self, ctx: &RequestCtx, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        let _ = ctx.adoption.set(outcome);
    }
}

/// Where an answer carries a bundle, as far as its head tells.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CookieBundle {
    /// The value of a non-empty `{prefix}access_token` cookie, decoded.
    pub(crate) access_token: Option<String>,
    /// A non-empty `{prefix}refresh_token` cookie is set.
    pub(crate) refresh_token: bool,
}

impl CookieBundle {
    pub(crate) fn present(&self) -> bool {
        self.access_token.is_some() || self.refresh_token
    }
}

/// The name and decoded value of a `Set-Cookie` field.
fn set_cookie_pair(value: &HeaderValue) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(value.as_bytes());
    if let Ok(c) = cookie::Cookie::parse_encoded(text.as_ref()) {
        return Some((c.name().to_owned(), c.value_trimmed().to_owned()));
    }
    // Not a cookie the parser takes (bad percent-encoding, say): still
    // matched by name, so that a bundle cookie is never passed on unseen.
    let (name, rest) = text.split_once('=')?;
    let value = rest.split(';').next().unwrap_or_default().trim();
    Some((name.trim().to_owned(), value.trim_matches('"').to_owned()))
}

/// The index in `names` of the cookie a `Set-Cookie` sets, if it is one.
fn bundle_cookie(names: &[String; 4], value: &HeaderValue) -> Option<(usize, String)> {
    let (name, v) = set_cookie_pair(value)?;
    let i = names.iter().position(|n| n.eq_ignore_ascii_case(&name))?;
    Some((i, v))
}

/// What the `Set-Cookie` fields of `headers` carry of a bundle.
pub(crate) fn cookie_bundle(names: &[String; 4], headers: &HeaderMap) -> CookieBundle {
    let mut found = CookieBundle::default();
    for v in headers.get_all(header::SET_COOKIE) {
        match bundle_cookie(names, v) {
            Some((0, token)) if !token.is_empty() => found.access_token = Some(token),
            Some((1, token)) if !token.is_empty() => found.refresh_token = true,
            _ => {}
        }
    }
    found
}

/// Replaces every `Set-Cookie` of `headers` that sets one of `names` with
/// `gateway`'s, keeping the others in order.
pub(crate) fn replace_cookies(
    names: &[String; 4],
    headers: &mut HeaderMap,
    gateway: Vec<HeaderValue>,
) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| bundle_cookie(names, v).is_none())
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept.into_iter().chain(gateway) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// True for `application/json` and `application/*+json`.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let essence = ct
        .as_bytes()
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    let essence = String::from_utf8_lossy(essence).trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The login service's access token in a JSON answer, when the answer is
/// a bundle (`data.refresh_token` present). `Err` when it is one without a
/// usable access token.
pub(crate) fn json_bundle(body: &Value) -> Result<Option<&str>, ()> {
    let Some(data) = body.get("data").filter(|d| d.is_object()) else {
        return Ok(None);
    };
    let has_refresh = data.get("refresh_token").is_some_and(|r| !r.is_null());
    if !has_refresh {
        return Ok(None);
    }
    match data.get("access_token").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Ok(Some(t)),
        _ => Err(()),
    }
}

/// Puts `b`'s tokens in place of the login service's in a JSON bundle,
/// keeping every other field.
pub(crate) fn replace_json(body: &mut Value, b: &Bundle) {
    let Some(data) = body.get_mut("data").and_then(Value::as_object_mut) else {
        return;
    };
    data.insert("access_token".into(), b.access_token.clone().into());
    data.insert("refresh_token".into(), b.refresh_token.clone().into());
    if b.client.anti_csrf {
        data.insert("anti_csrf_token".into(), b.anti_csrf_token.clone().into());
    } else {
        data.remove("anti_csrf_token");
    }
}

/// The whole of `body` when it is at most [`MAX_JSON`] bytes and arrives
/// without error.
pub(crate) async fn read_limited(mut body: Body) -> Option<Bytes> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else {
            continue;
        };
        if out.len() + data.len() > MAX_JSON {
            return None;
        }
        out.extend_from_slice(&data);
    }
    Some(out.freeze())
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

fn not_adopted() -> Response<Body> {
    NotAdopted::bad_gateway("").response()
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
            let declared = crate::wire::content_length(res.headers())
                .ok()
                .flatten()
                .unwrap_or(0);
            if encoded || declared > MAX_JSON as u64 {
                adopter.count(ctx, "unreadable");
                tracing::warn!(
                    encoded,
                    declared,
                    "a JSON answer of the login service could not be read for adoption"
                );
                return not_adopted().into();
            }
            let (parts, body) = res.into_parts();
            let bytes = match tokio::time::timeout(BODY_TIMEOUT, read_limited(body)).await {
                Ok(Some(bytes)) => bytes,
                _ => {
                    adopter.count(ctx, "unreadable");
                    tracing::warn!(
                        "a JSON answer of the login service was too large, slow or broken to read for adoption"
                    );
                    return not_adopted().into();
                }
            };
            json = serde_json::from_slice::<Value>(&bytes).ok();
            res = Response::from_parts(parts, crate::body::full(bytes));
        }
        let json_token = match json.as_ref().map(json_bundle) {
            Some(Ok(t)) => t.map(str::to_owned),
            Some(Err(())) => {
                adopter.count(ctx, "invalid");
                tracing::warn!("a token bundle of the login service has no access token");
                return not_adopted().into();
            }
            None => None,
        };
        let in_json = json_token.is_some();
        let in_cookies = cookies.present();
        if !in_json && !in_cookies {
            return res.into();
        }
        let Some(token) = json_token.or(cookies.access_token) else {
            adopter.count(ctx, "invalid");
            tracing::warn!("a token bundle of the login service has no access token");
            return not_adopted().into();
        };
        let bundle = match self.open_adopted(adopter, &token, None).await {
            Ok(b) => b,
            Err(e) => {
                adopter.count(ctx, e.outcome);
                return e.response().into();
            }
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
            *res.body_mut() = crate::body::full(Bytes::from(bytes));
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
                return Err(NotAdopted::bad_gateway("invalid"));
            }
            Err(e) => {
                tracing::warn!(reason = %e, "a sign-in of the login service was not adopted");
                return Err(NotAdopted::bad_gateway(match e {
                    UpstreamVerifyError::Expired(_) => "expired",
                    UpstreamVerifyError::Invalid => "invalid",
                }));
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
                Err(NotAdopted::bad_gateway("unknown_client"))
            }
            Err(CreateError::Gone) => Err(NotAdopted {
                outcome: "gone",
                status: StatusCode::UNAUTHORIZED,
                message: "No valid Session found",
            }),
            Err(CreateError::Store(e)) => {
                tracing::warn!(error = %e, "session store call failed");
                Err(NotAdopted {
                    outcome: "store_error",
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "Session store unavailable",
                })
            }
            Err(CreateError::Internal) => Err(NotAdopted {
                outcome: "store_error",
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "Internal error",
            }),
        }
    }
}

/// Why a bundle of the login service was not adopted: the outcome (a
/// metrics label) and the answer.
#[derive(Clone, Copy, Debug)]
pub struct NotAdopted {
    pub outcome: &'static str,
    pub status: StatusCode,
    pub message: &'static str,
}

impl NotAdopted {
    pub(crate) fn bad_gateway(outcome: &'static str) -> NotAdopted {
        NotAdopted {
            outcome,
            status: StatusCode::BAD_GATEWAY,
            message: NOT_ADOPTED,
        }
    }

    pub fn response(&self) -> Response<Body> {
        json_error(self.status, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> [String; 4] {
        [
            "vagov_access_token".into(),
            "vagov_refresh_token".into(),
            "vagov_anti_csrf_token".into(),
            "vagov_info_token".into(),
        ]
    }

    fn headers(set_cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in set_cookies {
            h.append(header::SET_COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn bundle_cookies_are_found_decoded() {
        let h = headers(&[
            "other=1; Path=/",
            "vagov_access_token=eyJ.a%2Eb.c; Path=/; HttpOnly",
            "VAGOV_REFRESH_TOKEN=v1%3Aabc.0123.V0; Path=/v0/sign_in/refresh",
        ]);
        let found = cookie_bundle(&names(), &h);
        assert_eq!(found.access_token.as_deref(), Some("eyJ.a.b.c"));
        assert!(found.refresh_token);

        // Cookies being cleared are no bundle.
        let h = headers(&["vagov_access_token=; Max-Age=0", "vagov_refresh_token=\"\""]);
        assert!(!cookie_bundle(&names(), &h).present());
        assert!(!cookie_bundle(&names(), &headers(&["x=1"])).present());
        // A refresh cookie alone is a bundle (with no access token).
        let found = cookie_bundle(&names(), &headers(&["vagov_refresh_token=v1%3Ax"]));
        assert!(found.present() && found.access_token.is_none());
        // One the cookie parser refuses is still found by its name.
        let found = cookie_bundle(
            &names(),
            &headers(&["vagov_refresh_token=v1%FF%FE; Path=/"]),
        );
        assert!(found.refresh_token);
    }

    #[test]
    fn bundle_cookies_are_replaced_and_others_kept_in_order() {
        let mut h = headers(&[
            "a=1",
            "vagov_access_token=up; Path=/",
            "vagov_info_token=%7B%7D",
            "b=2",
            "vagov_refresh_token=v1%3Aup",
            "vagov_anti_csrf_token=up",
        ]);
        let gateway = vec![
            HeaderValue::from_static("vagov_access_token=gw"),
            HeaderValue::from_static("vagov_refresh_token=v1:gw"),
        ];
        replace_cookies(&names(), &mut h, gateway);
        let got: Vec<_> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "a=1",
                "b=2",
                "vagov_access_token=gw",
                "vagov_refresh_token=v1:gw"
            ]
        );
    }

    #[test]
    fn json_bundles_are_recognised() {
        let v = serde_json::json!({"data": {"access_token": "a", "refresh_token": "r"}});
        assert_eq!(json_bundle(&v), Ok(Some("a")));
        let v = serde_json::json!({"data": {"refresh_token": "r"}});
        assert_eq!(json_bundle(&v), Err(()));
        let v = serde_json::json!({"data": {"access_token": 3, "refresh_token": "r"}});
        assert_eq!(json_bundle(&v), Err(()));
        for none in [
            serde_json::json!({"data": {"access_token": "a"}}),
            serde_json::json!({"data": {"active": true}, "refresh_token": "r"}),
            serde_json::json!({"data": "x"}),
            serde_json::json!([1, 2]),
        ] {
            assert_eq!(json_bundle(&none), Ok(None), "{none}");
        }
    }

    #[test]
    fn json_content_types() {
        let h = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            h
        };
        assert!(is_json(&h("application/json; charset=utf-8")));
        assert!(is_json(&h("Application/JSON")));
        assert!(is_json(&h("application/vnd.api+json")));
        assert!(!is_json(&h("text/html")));
        assert!(!is_json(&HeaderMap::new()));
    }
}
