//! Credentialed CORS for the sign-in endpoints (README, The sign-in endpoints):
//! listed origins only.

use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::Method;

/// Headers a front end may send on a sign-in call.
const ALLOWED_HEADERS: &str = "Content-Type, X-CSRF-Token, X-Request-Id, Authorization";
const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";

/// The request's `Origin` when it is one of `allowed` (exact match).
pub fn allowed_origin<'a>(headers: &'a HeaderMap, allowed: &[String]) -> Option<&'a HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    let s = origin.to_str().ok()?;
    allowed.iter().any(|a| a == s).then_some(origin)
}

/// A CORS preflight: `OPTIONS` with `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Adds the credentialed-CORS headers for `origin` (a listed one) to a response.
/// `Vary: Origin` is added whatever the origin, since the answer depends on it.
pub fn decorate(response: &mut HeaderMap, origin: Option<&HeaderValue>, preflight: bool) {
    response.append(VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin else { return };
    response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    response.insert(
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    if preflight {
        response.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        response.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        response.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_exactly() {
        let allowed = vec!["https://www.example.gov".to_string()];
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static("https://www.example.gov"));
        assert!(allowed_origin(&h, &allowed).is_some());
        for other in [
            "https://www.example.gov.evil.com",
            "http://www.example.gov",
            "https://www.example.gov/",
            "null",
        ] {
            h.insert(ORIGIN, HeaderValue::from_str(other).unwrap());
            assert!(allowed_origin(&h, &allowed).is_none(), "{other}");
        }
    }

    #[test]
    fn decorates() {
        let mut res = HeaderMap::new();
        let o = HeaderValue::from_static("https://a.gov");
        decorate(&mut res, Some(&o), true);
        assert_eq!(res[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.gov");
        assert_eq!(res[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(res.contains_key(ACCESS_CONTROL_ALLOW_METHODS));
        let mut res = HeaderMap::new();
        decorate(&mut res, None, true);
        assert_eq!(res.len(), 1);
        assert_eq!(res[VARY], "Origin");
    }
}
