//! Which request fields go upstream: the one place that decides (README,
//! Pass-through routes and transparent refresh; README, The trust boundary).
//!
//! [`RequestPolicy::apply`] turns the client's fields into the ones
//! forwarded: hop-by-hop fields go (RFC 9110 §7.6.1), and so do every
//! route's identity headers, `Expect`, the refresh and anti-CSRF cookies,
//! the client's `X-Forwarded-*` (unless from a trusted proxy) and, unless
//! `server.underscores_in_headers`, every field whose name holds `_`: CGI,
//! WSGI, Rack and PHP upstreams read `X_Sis_User_Uuid` as `X-Sis-User-Uuid`.
//! Even when `_` is allowed, a name that reads as one the gateway strips or
//! sets is dropped. Only the upgrade protocols the route allows are offered.
//!
//! The fields the gateway writes itself as the request goes out (`Host`,
//! `X-Request-Id`, the framing fields) are named by [`written_by_gateway`]:
//! the upstream client leaves the request's own out.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use super::cookies;
use super::headers::{self, Forwarded, ForwardedFor};
use crate::config::{Config, RouteConfig};
use crate::ctx::X_REQUEST_ID;

/// Names the gateway sets or strips on every request, besides the identity
/// headers of the routes (lower case).
const RESERVED: [&str; 19] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "expect",
    "authorization",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "cookie",
];

/// The request side of the header policy, built once per configuration.
pub struct RequestPolicy {
    /// Removed from every request: every route's identity header names
    /// (only the gateway sets them) and `Expect` (answered on the client's
    /// hop).
    strip: Vec<HeaderName>,
    /// What a `_` name must not read as when `_` names are allowed:
    /// [`RESERVED`] and every route's identity header names.
    reserved: Vec<HeaderName>,
    underscores: bool,
    /// `{prefix}refresh_token`, `{prefix}anti_csrf_token`: never forwarded.
    secret_cookies: [String; 2],
}

impl RequestPolicy {
    pub fn new(config: &Config) -> RequestPolicy {
        let mut strip: Vec<HeaderName> = vec![header::EXPECT];
        // The sign-in upstream's route is forwarded like any other.
        let sign_in_route = config.sign_in.upstream_route();
        for r in config.routes.iter().chain(&sign_in_route) {
            let ih = &r.identity_headers;
            for name in [&ih.user_uuid, &ih.session_handle, &ih.client_id] {
                // An identity header named with `_` is also read from its
                // `-` spelling by CGI-style upstreams.
                let hyphens = name.as_str().replace('_', "-");
                let spellings = [
                    Some(name.clone()),
                    HeaderName::from_bytes(hyphens.as_bytes()).ok(),
                ];
                for spelling in spellings.into_iter().flatten() {
                    if !strip.contains(&spelling) {
                        strip.push(spelling);
                    }
                }
            }
        }
        let mut reserved: Vec<HeaderName> = RESERVED
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        for name in &strip {
            if !reserved.contains(name) {
                reserved.push(name.clone());
            }
        }
        RequestPolicy {
            strip,
            reserved,
            underscores: config.server.underscores_in_headers,
            secret_cookies: [
                config.cookies.refresh_name(),
                config.cookies.anti_csrf_name(),
            ],
        }
    }

    /// The upgrade protocols of an HTTP/1.1 upgrade request that `route`
    /// allows, as the value to offer upstream; `None` when the request asks
    /// for no upgrade or for none the route allows (it then goes upstream as
    /// a plain request). Read before [`apply`](Self::apply) strips them.
    pub fn upgrade_offer(
        &self,
        route: &RouteConfig,
        version: Version,
        headers: &HeaderMap,
    ) -> Option<HeaderValue> {
        if version != Version::HTTP_11 || !headers::is_upgrade_request(headers) {
            return None;
        }
        let asked = headers.get(header::UPGRADE)?;
        allowed_upgrades(&route.upgrades, asked)
    }

    /// Edits the client's fields into those forwarded (see the module docs).
    /// `upgrade` is what [`upgrade_offer`](Self::upgrade_offer) gave.
    pub fn apply(
        &self,
        h: &mut HeaderMap,
        upgrade: Option<&HeaderValue>,
        hop: ForwardedFor<'_>,
    ) -> Forwarded {
        headers::strip_hop_by_hop(h);
        headers::remove_all(h, &self.strip);
        self.drop_underscored(h);
        if let Some(protocols) = upgrade {
            headers::set_upgrade(h, protocols.clone());
        }
        let [refresh, anti_csrf] = &self.secret_cookies;
        cookies::remove_cookies(h, &[refresh.as_str(), anti_csrf.as_str()]);
        headers::forwarded(h, hop)
    }

    /// Removes fields whose name holds `_`: all of them, or, with
    /// `server.underscores_in_headers`, those that read as a reserved name
    /// with `_` taken as `-`. One scan of the names when there are none.
    fn drop_underscored(&self, h: &mut HeaderMap) {
        let underscored = |name: &HeaderName| memchr::memchr(b'_', name.as_str().as_bytes());
        if !h.keys().any(|k| underscored(k).is_some()) {
            return;
        }
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|k| {
                underscored(k).is_some()
                    && (!self.underscores || self.reserved.iter().any(|r| reads_as(k, r)))
            })
            .cloned()
            .collect();
        for name in doomed {
            h.remove(name);
        }
    }
}

/// True when `name` and `reserved` are the same with `_` and `-` read
/// alike (both lower case, as header map names are).
fn reads_as(name: &HeaderName, reserved: &HeaderName) -> bool {
    let (a, b) = (name.as_str().as_bytes(), reserved.as_str().as_bytes());
    let fold = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// The protocols of `asked` (a comma-separated `Upgrade` value, RFC 9110
/// §7.8) that `allowed` names, by `name` or `name/version`, any case. The
/// value itself when all are allowed (no copy); `None` when none is.
pub fn allowed_upgrades(allowed: &[String], asked: &HeaderValue) -> Option<HeaderValue> {
    let is_allowed = |p: &[u8]| {
        let name = p.split(|&b| b == b'/').next().unwrap_or(p);
        allowed.iter().any(|a| {
            a.as_bytes().eq_ignore_ascii_case(p) || a.as_bytes().eq_ignore_ascii_case(name)
        })
    };
    let protocols = || {
        asked
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|p| !p.is_empty())
    };
    let (mut total, mut kept) = (0, 0);
    for p in protocols() {
        total += 1;
        if is_allowed(p) {
            kept += 1;
        }
    }
    if kept == 0 {
        return None;
    }
    if kept == total {
        return Some(asked.clone());
    }
    let joined = protocols()
        .filter(|p| is_allowed(p))
        .collect::<Vec<_>>()
        .join(&b", "[..]);
    HeaderValue::from_bytes(&joined).ok()
}

/// Fields the upstream client writes itself as the request goes out
/// (`Host`, `X-Request-Id`, `Content-Length`, `Transfer-Encoding`): a copy
/// left in the request's map is never sent.
pub fn written_by_gateway(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::HOST
        || name == X_REQUEST_ID
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> RequestPolicy {
        let text = format!(
            "[server]\n{extra}\n[cookies]\nrefresh_path = \"/\"\n[[routes]]\nupstream = \"http://127.0.0.1:1\"\nidentity_headers = {{ user_uuid = \"X-Remote-User\" }}\n"
        );
        RequestPolicy::new(&Config::parse(&text, "t").unwrap())
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn hop() -> ForwardedFor<'static> {
        ForwardedFor {
            peer: "10.0.0.9".parse().unwrap(),
            trusted: false,
            proto: "http",
            host: None,
        }
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn underscore_names_dropped_by_default() {
        let mut h = map(&[
            ("X_Sis_User_Uuid", "victim"),
            ("Transfer_Encoding", "chunked"),
            ("x_custom", "1"),
            ("x-custom", "2"),
        ]);
        policy("").apply(&mut h, None, hop());
        assert_eq!(names(&h), ["x-custom"]);
    }

    #[test]
    fn allowed_underscores_never_read_as_reserved_names() {
        let mut h = map(&[
            ("x_sis_session_handle", "victim"),
            ("X_Remote_User", "victim"),
            ("transfer_encoding", "chunked"),
            ("content_length", "5"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_request_id", "spoof"),
            ("proxy_authorization", "x"),
            ("keep_alive", "x"),
            ("x_custom", "1"),
            ("x_sis_other", "1"),
            // Not an identity header here: this route renames it.
            ("x_sis_user_uuid", "1"),
        ]);
        policy("underscores_in_headers = true").apply(&mut h, None, hop());
        let mut left = names(&h);
        left.sort_unstable();
        assert_eq!(left, ["x_custom", "x_sis_other", "x_sis_user_uuid"]);
    }

    #[test]
    fn identity_names_with_underscores_cover_both_spellings() {
        let text = "[server]\nunderscores_in_headers = true\n[cookies]\nrefresh_path = \"/\"\n[[routes]]\nupstream = \"http://127.0.0.1:1\"\nidentity_headers = { user_uuid = \"X_Remote_User\" }\n";
        let p = RequestPolicy::new(&Config::parse(text, "t").unwrap());
        let mut h = map(&[
            ("x-remote-user", "victim"),
            ("x_remote_user", "victim"),
            ("x-remote_user", "victim"),
            ("x_remote_other", "1"),
        ]);
        p.apply(&mut h, None, hop());
        assert_eq!(names(&h), ["x_remote_other"]);
    }

    #[test]
    fn sign_in_upstream_never_gets_the_default_identity_headers() {
        // Every route renames its identity headers; the sign-in upstream's
        // route keeps the defaults, which a client must not send it either.
        let text = "[sign_in]\nupstream = \"http://127.0.0.1:2\"\n[cookies]\nrefresh_path = \"/\"\n[[routes]]\nupstream = \"http://127.0.0.1:1\"\nidentity_headers = { user_uuid = \"X-Remote-User\", session_handle = \"X-Remote-Session\", client_id = \"X-Remote-Client\" }\n";
        let p = RequestPolicy::new(&Config::parse(text, "t").unwrap());
        let mut h = map(&[
            ("x-sis-user-uuid", "victim"),
            ("x-sis-session-handle", "victim"),
            ("x-sis-client-id", "victim"),
            ("x-remote-user", "victim"),
            ("x-other", "1"),
        ]);
        p.apply(&mut h, None, hop());
        assert_eq!(names(&h), ["x-other"]);
    }

    #[test]
    fn upgrades_filtered_by_route() {
        let allowed = vec!["websocket".to_owned()];
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            allowed_upgrades(&allowed, &v("WebSocket")),
            Some(v("WebSocket"))
        );
        assert_eq!(allowed_upgrades(&allowed, &v("h2c")), None);
        assert_eq!(allowed_upgrades(&allowed, &v(" , ")), None);
        assert_eq!(
            allowed_upgrades(&allowed, &v("h2c, websocket/13")),
            Some(v("websocket/13"))
        );
        let versioned = vec!["foo/2".to_owned()];
        assert_eq!(allowed_upgrades(&versioned, &v("foo/1")), None);
        assert_eq!(allowed_upgrades(&versioned, &v("FOO/2")), Some(v("FOO/2")));
        assert_eq!(allowed_upgrades(&[], &v("websocket")), None);
    }

    #[test]
    fn h2c_upgrade_removed_websocket_kept() {
        let text =
            "[cookies]\nrefresh_path = \"/\"\n[[routes]]\nupstream = \"http://127.0.0.1:1\"\n";
        let config = Config::parse(text, "t").unwrap();
        let p = RequestPolicy::new(&config);
        let route = &config.routes[0];
        let h2c = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        assert_eq!(p.upgrade_offer(route, Version::HTTP_11, &h2c), None);
        let mut h = h2c.clone();
        p.apply(&mut h, None, hop());
        assert!(h.is_empty(), "{h:?}");
        let ws = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        let offer = p.upgrade_offer(route, Version::HTTP_11, &ws);
        assert_eq!(offer.as_ref().unwrap(), "websocket");
        assert_eq!(p.upgrade_offer(route, Version::HTTP_10, &ws), None);
        let mut h = ws.clone();
        p.apply(&mut h, offer.as_ref(), hop());
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn gateway_written_fields() {
        for n in [
            "host",
            "content-length",
            "transfer-encoding",
            "x-request-id",
        ] {
            assert!(written_by_gateway(&HeaderName::from_static(n)), "{n}");
        }
        assert!(!written_by_gateway(&HeaderName::from_static("x-other")));
    }
}
