//! The request target as the gateway reads it (README, The trust
//! boundary): one path and one authority per request, settled once, before
//! dispatch.
//!
//! What a route is chosen on must be what the upstream acts on, so the path
//! is normalized here and the normalized path is what every later step sees:
//! sign-in endpoint dispatch, route matching, `strip_prefix` and the request
//! line sent upstream. Normalization (RFC 3986 §6.2.2) decodes
//! percent-encoded unreserved characters, removes dot segments (§5.2.4) and
//! merges runs of `/` (`server.merge_slashes`). A path that climbs above `/`
//! is refused, and so are an encoded `/` or `\` and a raw `\` unless
//! `server.escaped_slashes = "keep"`. The query is left as it is.
//!
//! An absolute-form target (`GET http://h/x`, and every HTTP/2 request,
//! whose `:authority` arrives the same way) replaces `Host` (RFC 9112
//! §3.2.2), so routing, the `Host` sent upstream and `X-Forwarded-Host` all
//! read the same authority. Userinfo in a target, authority-form and
//! asterisk-form targets, and `CONNECT` are refused.
//!
//! An already-normal path (no `%`, no `\`, no `/.`, no `//`) costs one scan
//! and no allocation.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request};

use crate::config::{EscapedSlashes, ServerConfig};
use crate::http::fields::hex_digit;

/// Why a request target was refused; every one is a 400 with this message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("CONNECT is not supported")]
    Connect,
    #[error("Invalid request target")]
    Form,
    #[error("Userinfo in the request target")]
    Userinfo,
    #[error("Multiple Host headers")]
    MultipleHosts,
    #[error("Missing Host header")]
    MissingHost,
    #[error("Path climbs above the root")]
    Climbs,
    #[error("Encoded slash or backslash in the path")]
    EscapedSlash,
    #[error("Malformed percent-encoding in the path")]
    BadPercent,
    #[error("Ambiguous dot segment in the path")]
    DotParameter,
}

/// How paths are normalized: `server.merge_slashes` and
/// `server.escaped_slashes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

impl PathRules {
    pub fn of(server: &ServerConfig) -> PathRules {
        PathRules {
            merge_slashes: server.merge_slashes,
            escaped_slashes: server.escaped_slashes,
        }
    }
}

/// Settles the target of `req` in place: refuses what §5a refuses, puts
/// the authority of an absolute-form target in `Host`, and replaces the
/// path with its normalized form.
pub fn admit<B>(req: &mut Request<B>, rules: PathRules) -> Result<(), TargetError> {
    if req.method() == Method::CONNECT {
        return Err(TargetError::Connect);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let has_host = hosts.next().is_some();
    if hosts.next().is_some() {
        return Err(TargetError::MultipleHosts);
    }
    let uri = req.uri();
    match (uri.scheme(), uri.authority()) {
        (None, None) => {
            // RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host.
            if !has_host && req.version() == http::Version::HTTP_11 {
                return Err(TargetError::MissingHost);
            }
        }
        (Some(scheme), Some(authority)) => {
            if scheme != &http::uri::Scheme::HTTP && scheme != &http::uri::Scheme::HTTPS {
                return Err(TargetError::Form);
            }
            if authority.as_str().contains('@') {
                return Err(TargetError::Userinfo);
            }
            let host = HeaderValue::from_str(authority.as_str()).map_err(|_| TargetError::Form)?;
            req.headers_mut().insert(header::HOST, host);
        }
        // Authority-form on a method other than CONNECT.
        _ => return Err(TargetError::Form),
    }
    let uri = req.uri();
    let path = uri.path();
    if !path.starts_with('/') {
        // Asterisk-form, or nothing a route could match.
        return Err(TargetError::Form);
    }
    let normal = normalize_path(path, rules)?;
    // `http://h?q` has an empty path: its request line upstream needs `/`.
    let origin_form = uri
        .path_and_query()
        .is_none_or(|pq| pq.as_str().starts_with('/'));
    if origin_form && matches!(normal, Cow::Borrowed(_)) {
        return Ok(());
    }
    let mut pq = normal.into_owned();
    if let Some(query) = uri.query() {
        pq.push('?');
        pq.push_str(query);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| TargetError::Form)?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| TargetError::Form)?;
    Ok(())
}

/// True when `path` may need normalizing: it holds a `%`, a `\`, a `/.` or
/// a `//`. One scan, no allocation.
pub fn needs_normalizing(path: &str) -> bool {
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' | b'\\' => return true,
            b'/' if matches!(b.get(i + 1), Some(b'/' | b'.')) => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// The normalized form of an origin-form `path` (starting with `/`):
/// borrowed when it is already normal. See the module docs.
pub fn normalize_path(path: &str, rules: PathRules) -> Result<Cow<'_, str>, TargetError> {
    if !needs_normalizing(path) {
        return Ok(Cow::Borrowed(path));
    }
    let rest = path.strip_prefix('/').ok_or(TargetError::Form)?;
    let mut out = String::with_capacity(path.len());
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        out.push('/');
        decode_segment(segment, rules, &mut out)?;
        match &out[start + 1..] {
            "." => {
                out.truncate(start);
                if last {
                    out.push('/');
                }
            }
            ".." => {
                out.truncate(start);
                let Some(parent) = out.rfind('/') else {
                    return Err(TargetError::Climbs);
                };
                out.truncate(parent);
                if last {
                    out.push('/');
                }
            }
            "" if rules.merge_slashes && !last => out.truncate(start),
            // `..;x` is `..` to servers that cut path parameters off a
            // segment before resolving it (Tomcat, Jetty).
            s if matches!(s.split(';').next(), Some("." | "..")) && s.contains(';') => {
                return Err(TargetError::DotParameter);
            }
            _ => {}
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    if out == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(out))
}

/// Appends `segment` to `out` with its percent-encoded unreserved
/// characters (RFC 3986 §2.3) decoded and every other encoding kept as it
/// is. A `%` that does not start an encoding is refused: kept, it would let
/// `%%32%65` turn into `%2e` here and into `.` upstream.
fn decode_segment(segment: &str, rules: PathRules, out: &mut String) -> Result<(), TargetError> {
    let b = segment.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex_digit),
                    b.get(i + 2).copied().and_then(hex_digit),
                ) else {
                    return Err(TargetError::BadPercent);
                };
                let c = hi << 4 | lo;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push_str(&segment[copied..i]);
                    out.push(char::from(c));
                    copied = i + 3;
                } else if matches!(c, b'/' | b'\\')
                    && rules.escaped_slashes == EscapedSlashes::Reject
                {
                    return Err(TargetError::EscapedSlash);
                }
                i += 3;
            }
            b'\\' if rules.escaped_slashes == EscapedSlashes::Reject => {
                return Err(TargetError::EscapedSlash);
            }
            _ => i += 1,
        }
    }
    out.push_str(&segment[copied..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: PathRules = PathRules {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Keep,
    };
    const NO_MERGE: PathRules = PathRules {
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::Reject,
    };

    fn n(path: &str) -> Result<String, TargetError> {
        normalize_path(path, PathRules::default()).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a.b/c..d/e.",
            "/~x/-_",
            "/a;b=c",
            "/%20x",
        ] {
            if !needs_normalizing(p) {
                assert!(matches!(
                    normalize_path(p, PathRules::default()),
                    Ok(Cow::Borrowed(_))
                ));
            }
        }
        // Scanned as possibly abnormal, found normal: still no copy.
        assert!(matches!(
            normalize_path("/.well-known/x", PathRules::default()),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            normalize_path("/a%20b", PathRules::default()),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn dot_segments_removed() {
        assert_eq!(n("/a/../secure/x").unwrap(), "/secure/x");
        assert_eq!(n("/./secure/x").unwrap(), "/secure/x");
        assert_eq!(n("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/.").unwrap(), "/");
        assert_eq!(n("/a/...").unwrap(), "/a/...");
        assert_eq!(n("/a/.b/..c").unwrap(), "/a/.b/..c");
    }

    #[test]
    fn encoded_dots_are_dots() {
        assert_eq!(n("/a/%2e%2e/secure/x").unwrap(), "/secure/x");
        assert_eq!(n("/a/%2E./secure").unwrap(), "/secure");
        assert_eq!(n("/a/.%2e/secure").unwrap(), "/secure");
        assert_eq!(n("/%2e/secure").unwrap(), "/secure");
    }

    #[test]
    fn climbing_above_root_is_refused() {
        for p in [
            "/..",
            "/../x",
            "/a/../..",
            "/a/../../b",
            "/%2e%2e/x",
            "/./../x",
        ] {
            assert_eq!(n(p), Err(TargetError::Climbs), "{p}");
        }
    }

    #[test]
    fn unreserved_decoded_others_kept() {
        assert_eq!(n("/%73ecure/x").unwrap(), "/secure/x");
        assert_eq!(n("/%41%7a%30%2D%5F%7E").unwrap(), "/Az0-_~");
        assert_eq!(n("/a%20b/%3F%23%25").unwrap(), "/a%20b/%3F%23%25");
        assert_eq!(n("/a%2fb").unwrap_err(), TargetError::EscapedSlash);
        assert_eq!(n("/%25%32%65").unwrap(), "/%252e");
        assert_eq!(n("/%e2%82%ac").unwrap(), "/%e2%82%ac");
    }

    #[test]
    fn malformed_percent_refused() {
        for p in ["/%", "/%2", "/%ZZ", "/a%g1", "/%%32%65", "/%2%65"] {
            assert_eq!(n(p), Err(TargetError::BadPercent), "{p}");
        }
    }

    #[test]
    fn slashes_merged_or_kept() {
        assert_eq!(n("//secure//x").unwrap(), "/secure/x");
        assert_eq!(n("/a//").unwrap(), "/a/");
        assert_eq!(n("//").unwrap(), "/");
        assert_eq!(n("///a/.//b").unwrap(), "/a/b");
        let keep = |p| normalize_path(p, NO_MERGE).map(Cow::into_owned);
        assert_eq!(keep("//secure//x").unwrap(), "//secure//x");
        assert_eq!(keep("/a//../b").unwrap(), "/a/b");
        assert_eq!(keep("//..").unwrap(), "/");
    }

    #[test]
    fn escaped_slashes_refused_or_kept() {
        for p in [
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a%5cb",
            "/a\\b",
            "/..%2F..%2Fetc",
        ] {
            assert_eq!(n(p), Err(TargetError::EscapedSlash), "{p}");
        }
        let keep = |p| normalize_path(p, KEEP).map(Cow::into_owned);
        assert_eq!(keep("/a%2Fb").unwrap(), "/a%2Fb");
        assert_eq!(keep("/a%5cb").unwrap(), "/a%5cb");
        assert_eq!(keep("/a\\b").unwrap(), "/a\\b");
        // Routed undecoded: not a dot segment.
        assert_eq!(keep("/x/..%2F/y").unwrap(), "/x/..%2F/y");
    }

    #[test]
    fn dot_segments_with_parameters_refused() {
        for p in ["/a/..;/secure", "/a/.;x/b", "/%2e%2e;/x"] {
            assert_eq!(n(p), Err(TargetError::DotParameter), "{p}");
        }
        assert_eq!(n("/a/..x;/b").unwrap(), "/a/..x;/b");
    }

    #[test]
    fn normalizing_is_idempotent() {
        for p in [
            "/a/../b/./c//d/%2e%2e/e%41",
            "/%25%32%65/x",
            "/a/%2e/",
            "/a/b/..",
            "//x//",
            "/a;b/./c",
        ] {
            for rules in [PathRules::default(), KEEP, NO_MERGE] {
                let once = normalize_path(p, rules).unwrap().into_owned();
                let twice = normalize_path(&once, rules).unwrap();
                assert_eq!(once, twice, "{p} {rules:?}");
            }
        }
    }

    fn req(method: &str, target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(target);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn absolute_form_replaces_host() {
        let mut r = req("GET", "http://www.example/x/../y?q=..", &["admin.example"]);
        admit(&mut r, PathRules::default()).unwrap();
        assert_eq!(r.headers()["host"], "www.example");
        assert_eq!(r.headers().get_all("host").iter().count(), 1);
        assert_eq!(r.uri().path(), "/y");
        assert_eq!(r.uri().query(), Some("q=.."));
        assert_eq!(r.uri().authority().unwrap().as_str(), "www.example");
        let mut r = req("GET", "http://www.example?q", &["h"]);
        admit(&mut r, PathRules::default()).unwrap();
        assert_eq!(r.uri().path_and_query().unwrap(), "/?q");
    }

    #[test]
    fn refused_targets() {
        let cases = [
            (
                req("GET", "http://admin@www.example/x", &["h"]),
                TargetError::Userinfo,
            ),
            (req("GET", "www.example:80", &["h"]), TargetError::Form),
            (
                req("CONNECT", "www.example:443", &["h"]),
                TargetError::Connect,
            ),
            (req("OPTIONS", "*", &["h"]), TargetError::Form),
            (req("GET", "ftp://h/x", &["h"]), TargetError::Form),
            (req("GET", "/x", &["a", "b"]), TargetError::MultipleHosts),
            (req("GET", "/x", &[]), TargetError::MissingHost),
            (req("GET", "/a/%2e%2e/%2e%2e", &["h"]), TargetError::Climbs),
        ];
        for (mut r, want) in cases {
            assert_eq!(
                admit(&mut r, PathRules::default()),
                Err(want),
                "{:?}",
                r.uri()
            );
        }
    }

    #[test]
    fn origin_form_kept_or_normalized() {
        let mut r = req("GET", "/a/b?x=/../", &["h"]);
        admit(&mut r, PathRules::default()).unwrap();
        assert_eq!(r.uri(), "/a/b?x=/../");
        let mut r = req("GET", "/a/./b?x=%2F", &["h"]);
        admit(&mut r, PathRules::default()).unwrap();
        assert_eq!(r.uri(), "/a/b?x=%2F");
        let mut r = Request::builder()
            .version(http::Version::HTTP_10)
            .uri("/x")
            .body(())
            .unwrap();
        assert_eq!(admit(&mut r, PathRules::default()), Ok(()));
    }
}
