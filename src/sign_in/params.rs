//! Where the refresh endpoint's inputs come from (README, The sign-in
//! endpoints): a query or form/JSON body parameter first, then the cookie of
//! the same name (read by
//! [`crate::cookie`], as every cookie is). An empty value counts as missing.

use std::borrow::Cow;

use http::header::{HeaderMap, CONTENT_TYPE};
use percent_encoding::percent_decode_str;

/// The two credentials a sign-in call may carry.
#[derive(Default, PartialEq, Eq)]
pub struct Credentials {
    pub refresh_token: Option<String>,
    pub anti_csrf_token: Option<String>,
    /// The refresh token came from the cookie (not a parameter).
    pub from_cookie: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "anti_csrf_token",
                &self.anti_csrf_token.as_ref().map(|_| "[redacted]"),
            )
            .field("from_cookie", &self.from_cookie)
            .finish()
    }
}

/// A body could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("malformed request body")]
pub struct MalformedBody;

/// Reads the credentials from `query`, a small already-read `body` and the
/// `Cookie` headers, in that order of precedence.
pub fn credentials(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    refresh_cookie: &str,
    anti_csrf_cookie: &str,
) -> Result<Credentials, MalformedBody> {
    let mut refresh = None;
    let mut anti_csrf = None;
    if let Some(q) = query {
        form_pairs(q.as_bytes(), &mut refresh, &mut anti_csrf);
    }
    if !body.is_empty() {
        let ctype = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .as_bytes();
        if starts_with_ignore_case(ctype, b"application/json")
            || ends_with_ignore_case(ctype, b"+json")
        {
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|_| MalformedBody)?;
            if let Some(obj) = value.as_object() {
                for (k, v) in obj {
                    if let Some(s) = v.as_str() {
                        take(&mut refresh, &mut anti_csrf, k, Cow::Borrowed(s));
                    }
                }
            }
        } else if starts_with_ignore_case(ctype, b"application/x-www-form-urlencoded")
            || ctype.is_empty()
        {
            form_pairs(body, &mut refresh, &mut anti_csrf);
        }
    }
    let mut from_cookie = false;
    if refresh.is_none() {
        refresh = crate::cookie::get(headers, refresh_cookie).map(Cow::into_owned);
        from_cookie = refresh.is_some();
    }
    if anti_csrf.is_none() {
        anti_csrf = crate::cookie::get(headers, anti_csrf_cookie).map(Cow::into_owned);
    }
    Ok(Credentials {
        refresh_token: refresh,
        anti_csrf_token: anti_csrf,
        from_cookie,
    })
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn ends_with_ignore_case(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// The `application/x-www-form-urlencoded` pairs of `input` (a query or a
/// body), read by `form_urlencoded`; only the two credentials are kept.
fn form_pairs(input: &[u8], refresh: &mut Option<String>, anti_csrf: &mut Option<String>) {
    for (name, value) in form_urlencoded::parse(input) {
        take(refresh, anti_csrf, &name, value);
    }
}

fn take(
    refresh: &mut Option<String>,
    anti_csrf: &mut Option<String>,
    key: &str,
    value: Cow<'_, str>,
) {
    let slot = match key {
        "refresh_token" => refresh,
        "anti_csrf_token" => anti_csrf,
        _ => return,
    };
    if slot.is_none() {
        *slot = nonempty(value);
    }
}

/// Empty counts as missing; a value still URI-encoded (`v1%3A...`, as SiS
/// clients send it inside bodies and cookies) is decoded once more. Tokens this
/// gateway issues never contain `%`, so the extra decode cannot alter one.
fn nonempty(value: Cow<'_, str>) -> Option<String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return None;
    }
    let decoded = if trimmed.contains('%') {
        percent_decode_str(trimmed).decode_utf8_lossy().into_owned()
    } else if trimmed.len() == value.len() {
        value.into_owned()
    } else {
        trimmed.to_owned()
    };
    (!decoded.is_empty()).then_some(decoded)
}

/// The token of an `Authorization: Bearer` header (RFC 6750 §2.1; the scheme
/// is case-insensitive), when there is a non-empty one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const RC: &str = "vagov_refresh_token";
    const AC: &str = "vagov_anti_csrf_token";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn creds(q: Option<&str>, h: &[(&str, &str)], body: &str) -> Credentials {
        credentials(q, &headers(h), body.as_bytes(), RC, AC).unwrap()
    }

    #[test]
    fn query_encoded_and_raw() {
        let c = creds(Some("refresh_token=v1%3Aabc&anti_csrf_token=x"), &[], "");
        assert_eq!(c.refresh_token.as_deref(), Some("v1:abc"));
        assert_eq!(c.anti_csrf_token.as_deref(), Some("x"));
        let c = creds(Some("refresh_token=v1:abc"), &[], "");
        assert_eq!(c.refresh_token.as_deref(), Some("v1:abc"));
        assert!(!c.from_cookie);
    }

    #[test]
    fn form_body_encoded_raw_and_double_encoded() {
        let form = [("content-type", "application/x-www-form-urlencoded")];
        for body in [
            "refresh_token=v1:abc-_Z",
            "refresh_token=v1%3Aabc-_Z",
            "refresh_token=v1%253Aabc-_Z",
        ] {
            let c = creds(None, &form, body);
            assert_eq!(c.refresh_token.as_deref(), Some("v1:abc-_Z"), "{body}");
        }
    }

    #[test]
    fn json_body() {
        let c = creds(
            None,
            &[("content-type", "application/json")],
            r#"{"refresh_token":"v1%3Aq","anti_csrf_token":"t","other":1}"#,
        );
        assert_eq!(c.refresh_token.as_deref(), Some("v1:q"));
        assert_eq!(c.anti_csrf_token.as_deref(), Some("t"));
        assert!(credentials(
            None,
            &headers(&[("content-type", "application/json")]),
            b"{nope",
            RC,
            AC
        )
        .is_err());
    }

    #[test]
    fn parameter_wins_over_cookie_and_empty_is_missing() {
        let cookie = [(
            "cookie",
            "a=b; vagov_refresh_token=v1:fromcookie;vagov_anti_csrf_token=c",
        )];
        let c = creds(Some("refresh_token=v1:param"), &cookie, "");
        assert_eq!(c.refresh_token.as_deref(), Some("v1:param"));
        assert_eq!(c.anti_csrf_token.as_deref(), Some("c"));
        let c = creds(Some("refresh_token="), &cookie, "");
        assert_eq!(c.refresh_token.as_deref(), Some("v1:fromcookie"));
        assert!(c.from_cookie);
        let c = creds(None, &[("cookie", "vagov_refresh_token=")], "");
        assert_eq!(c.refresh_token, None);
    }

    #[test]
    fn cookies_raw_encoded_and_quoted() {
        for cookie in [
            "  x = 1 ;;; broken ; vagov_refresh_token=\"v1%3Aq\"",
            "vagov_refresh_token=v1%3Aq; vagov_anti_csrf_token=\"a\"",
            "vagov_refresh_token=v1:q",
        ] {
            let c = creds(None, &[("cookie", cookie)], "");
            assert_eq!(c.refresh_token.as_deref(), Some("v1:q"), "{cookie}");
            assert!(c.from_cookie);
        }
        let c = creds(None, &[("cookie", "vagov_anti_csrf_token=a%2Bb")], "");
        assert_eq!(c.anti_csrf_token.as_deref(), Some("a+b"));
        assert!(!c.from_cookie);
    }

    #[test]
    fn form_pairs_keep_the_first_nonempty_credentials() {
        let cases: &[(&[u8], Option<&str>, Option<&str>)] = &[
            (b"refresh_token=v1%3Aabc", Some("v1:abc"), None),
            (
                b"a=1&&refresh_token=x+y%20z&=&anti_csrf_token=%",
                Some("x y z"),
                Some("%"),
            ),
            (
                b"refresh%5Ftoken=%41%4&anti_csrf_token=%zz%%41",
                Some("A%4"),
                Some("%zz%A"),
            ),
            (b"refresh_token", None, None),
            (
                b"refresh_token=%E2%82%AC%FF&anti_csrf_token=a=b",
                Some("\u{20ac}\u{fffd}"),
                Some("a=b"),
            ),
            (b"&&&", None, None),
            (b"refresh_token=+%2B+&refresh_token=second", Some("+"), None),
            (b"refresh_token=&refresh_token=second", Some("second"), None),
            (b"anti_csrf_token=%C3%A9t%C3", None, Some("\u{e9}t\u{fffd}")),
        ];
        for (input, refresh, anti_csrf) in cases {
            let mut got = (None, None);
            form_pairs(input, &mut got.0, &mut got.1);
            assert_eq!(
                (got.0.as_deref(), got.1.as_deref()),
                (*refresh, *anti_csrf),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn content_type_is_case_insensitive() {
        let c = creds(
            None,
            &[("content-type", "Application/JSON; charset=utf-8")],
            r#"{"refresh_token":"v1:j"}"#,
        );
        assert_eq!(c.refresh_token.as_deref(), Some("v1:j"));
        let c = creds(
            None,
            &[("content-type", "application/vnd.api+JSON")],
            r#"{"refresh_token":"v1:k"}"#,
        );
        assert_eq!(c.refresh_token.as_deref(), Some("v1:k"));
        let c = creds(
            None,
            &[("content-type", "APPLICATION/X-WWW-FORM-URLENCODED")],
            "refresh_token=v1%3Af",
        );
        assert_eq!(c.refresh_token.as_deref(), Some("v1:f"));
        // Another type: the body is not read for credentials.
        let c = creds(
            None,
            &[("content-type", "text/plain")],
            "refresh_token=v1:t",
        );
        assert_eq!(c.refresh_token, None);
    }

    #[test]
    fn bearer_parsing() {
        let h = |v: &'static str| headers(&[("authorization", v)]);
        assert_eq!(bearer(&h("bEaReR  tok ")), Some("tok"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn debug_redacts() {
        let c = creds(Some("refresh_token=v1:secret"), &[], "");
        assert!(!format!("{c:?}").contains("secret"));
    }
}
