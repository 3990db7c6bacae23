//! The login service's token bundle in one of its answers: finding it (in
//! `Set-Cookie` fields or a JSON body), reading a JSON body within bounds,
//! putting the gateway's bundle in its place, and the answer given when it
//! cannot be adopted. Shared by adoption and migration.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::http::body::{json_error, Body};
use crate::session::service::Bundle;

/// JSON answers of the login service larger than this are not read: one
/// that may carry a bundle is refused (502) rather than passed on unread.
pub const MAX_JSON: usize = 64 * 1024;
/// The rest of a JSON answer must arrive within this once its head has.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The error message of an answer that carried a bundle the gateway could
/// not adopt.
pub const NOT_ADOPTED: &str = "Sign-in could not be adopted";

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

/// A JSON answer that is a bundle (`data.refresh_token` present) but has no
/// usable access token (`data.access_token` missing, empty or not a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a token bundle of the login service has no access token")]
pub(crate) struct NoAccessToken;

/// The login service's access token in a JSON answer, when the answer is
/// a bundle (`data.refresh_token` present).
pub(crate) fn json_bundle(body: &Value) -> Result<Option<&str>, NoAccessToken> {
    let Some(data) = body.get("data").filter(|d| d.is_object()) else {
        return Ok(None);
    };
    let has_refresh = data.get("refresh_token").is_some_and(|r| !r.is_null());
    if !has_refresh {
        return Ok(None);
    }
    match data.get("access_token").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Ok(Some(t)),
        _ => Err(NoAccessToken),
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

/// Why a bundle of the login service was not adopted. Each has its
/// answer ([`status`](Self::status) and the message it displays) and its
/// metrics label ([`outcome`](Self::outcome)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAdopted {
    /// The answer could not be read: too large, encoded, slow or broken.
    #[error("{NOT_ADOPTED}")]
    Unreadable,
    /// The bundle has no usable access token, or it does not verify, or it
    /// names no user.
    #[error("{NOT_ADOPTED}")]
    Invalid,
    /// The access token has expired.
    #[error("{NOT_ADOPTED}")]
    Expired,
    /// The access token names a client that is not configured.
    #[error("{NOT_ADOPTED}")]
    UnknownClient,
    /// The token was adopted moments ago, and that session is gone since.
    #[error("No valid Session found")]
    Gone,
    /// The session store did not answer.
    #[error("Session store unavailable")]
    StoreUnavailable,
    /// The session could not be opened for a reason of the gateway's own.
    #[error("Internal error")]
    Internal,
}

impl NotAdopted {
    /// The metrics label (`sis_adoptions_total{outcome}`).
    pub fn outcome(&self) -> &'static str {
        match self {
            NotAdopted::Unreadable => "unreadable",
            NotAdopted::Invalid => "invalid",
            NotAdopted::Expired => "expired",
            NotAdopted::UnknownClient => "unknown_client",
            NotAdopted::Gone => "gone",
            NotAdopted::StoreUnavailable | NotAdopted::Internal => "store_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            NotAdopted::Unreadable
            | NotAdopted::Invalid
            | NotAdopted::Expired
            | NotAdopted::UnknownClient => StatusCode::BAD_GATEWAY,
            NotAdopted::Gone => StatusCode::UNAUTHORIZED,
            NotAdopted::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            NotAdopted::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn response(&self) -> Response<Body> {
        json_error(self.status(), &self.to_string())
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
    fn refusals_answer_with_the_sis_messages() {
        for e in [
            NotAdopted::Unreadable,
            NotAdopted::Invalid,
            NotAdopted::Expired,
            NotAdopted::UnknownClient,
        ] {
            assert_eq!(
                (e.status(), e.to_string()),
                (StatusCode::BAD_GATEWAY, NOT_ADOPTED.into())
            );
        }
        assert_eq!(NotAdopted::Gone.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(NotAdopted::Gone.to_string(), "No valid Session found");
        assert_eq!(
            NotAdopted::StoreUnavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            NotAdopted::StoreUnavailable.to_string(),
            "Session store unavailable"
        );
        assert_eq!(
            NotAdopted::Internal.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(NotAdopted::Internal.to_string(), "Internal error");
        assert_eq!(NotAdopted::Internal.outcome(), "store_error");
    }

    #[test]
    fn json_bundles_are_recognised() {
        let v = serde_json::json!({"data": {"access_token": "a", "refresh_token": "r"}});
        assert_eq!(json_bundle(&v), Ok(Some("a")));
        let v = serde_json::json!({"data": {"refresh_token": "r"}});
        assert_eq!(json_bundle(&v), Err(NoAccessToken));
        let v = serde_json::json!({"data": {"access_token": 3, "refresh_token": "r"}});
        assert_eq!(json_bundle(&v), Err(NoAccessToken));
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
