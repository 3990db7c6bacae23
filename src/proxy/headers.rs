//! Header operations of a proxy hop: hop-by-hop fields, `X-Forwarded-*`,
//! identity header removal and the request's host.
//!
//! Each function works on a [`HeaderMap`] in place, never panics on odd input
//! (mixed case, duplicates, stray whitespace, non-UTF-8 bytes), and allocates
//! only when it has to change something.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::http::fields::{list_elements, lists};

pub use crate::http::fields::is_hop_by_hop;

/// True when the request asks to switch protocols: `Connection` lists
/// `upgrade` and an `Upgrade` header is present (RFC 9110 §7.8).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && lists(headers, &header::CONNECTION, b"upgrade")
}

pub use crate::http::fields::strip_hop_by_hop;

/// Sets `Connection: upgrade` and `Upgrade: <protocol>` (RFC 9110 §7.8), the
/// one hop-by-hop pair a proxy re-creates when it tunnels an upgrade.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// What this hop knows about the request, for the `X-Forwarded-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct ForwardedFor<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// Whether the peer is one of `server.trusted_proxies`.
    pub trusted: bool,
    /// `"https"` or `"http"`: how the request reached this hop.
    pub proto: &'static str,
    /// The `Host` (or `:authority`) the client asked for, if any.
    pub host: Option<&'a HeaderValue>,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The `X-Forwarded-For`, `-Proto` and `-Host` fields this hop sends (see
/// [`forwarded`]).
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub for_chain: HeaderValue,
    /// `None` when a trusted peer's own value stays among the client's fields.
    pub proto: Option<HeaderValue>,
    /// `None` when a trusted peer's own value stays, or there is no host.
    pub host: Option<HeaderValue>,
}

impl Forwarded {
    /// The fields, by name, to write after the request's own.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &HeaderValue)> {
        [
            Some(("x-forwarded-for", &self.for_chain)),
            self.proto.as_ref().map(|v| ("x-forwarded-proto", v)),
            self.host.as_ref().map(|v| ("x-forwarded-host", v)),
        ]
        .into_iter()
        .flatten()
    }
}

/// Works out `X-Forwarded-For`, `-Proto` and `-Host` (the de-facto forms of
/// RFC 7239 §5.2–5.4) and removes from `headers` the fields they replace,
/// so they can be written after the client's remaining fields.
///
/// From a trusted proxy the incoming chain is kept and the peer appended to
/// `X-Forwarded-For` (several instances are joined into one list, RFC 9110
/// §5.3); `-Proto` and `-Host` are kept when present. From anyone else all
/// three are replaced by what this hop saw, and an RFC 7239 `Forwarded`
/// header is removed, so a client cannot claim another address.
pub fn forwarded(headers: &mut HeaderMap, hop: ForwardedFor<'_>) -> Forwarded {
    // One scan of the names finds which are present; absent ones (the usual
    // case) cost no lookups.
    let (mut has_for, mut has_proto, mut has_host, mut has_forwarded) =
        (false, false, false, false);
    for key in headers.keys() {
        match key.as_str() {
            "x-forwarded-for" => has_for = true,
            "x-forwarded-proto" => has_proto = true,
            "x-forwarded-host" => has_host = true,
            "forwarded" => has_forwarded = true,
            _ => {}
        }
    }

    let peer = peer_value(hop.peer);
    let for_chain = if hop.trusted && has_for {
        let mut joined = Vec::with_capacity(64);
        for element in list_elements(headers, &X_FORWARDED_FOR) {
            joined.extend_from_slice(element);
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(peer.as_bytes());
        HeaderValue::from_bytes(&joined)
            .expect("received header bytes and an IP make a valid value")
    } else {
        peer
    };
    if has_for {
        headers.remove(X_FORWARDED_FOR);
    }
    if !hop.trusted && has_forwarded {
        headers.remove(FORWARDED);
    }
    let replace_proto = !hop.trusted || !has_proto;
    if replace_proto && has_proto {
        headers.remove(X_FORWARDED_PROTO);
    }
    let replace_host = !hop.trusted || !has_host;
    if replace_host && has_host {
        headers.remove(X_FORWARDED_HOST);
    }
    Forwarded {
        for_chain,
        proto: replace_proto.then(|| HeaderValue::from_static(hop.proto)),
        host: hop.host.filter(|_| replace_host).cloned(),
    }
}

/// `ip` as a header value. Requests from one address come in runs (keep-alive
/// connections, a load balancer in front), so the last value formatted on
/// this thread is kept.
fn peer_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((cached, value)) if *cached == ip => value.clone(),
            _ => {
                let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
                    .expect("an IP address is a valid header value");
                *last = Some((ip, value.clone()));
                value
            }
        }
    })
}

/// The client address behind a chain of proxies: the right-most
/// `X-Forwarded-For` element that is not itself a trusted proxy, or the
/// left-most one when all are trusted. Unparsable elements stop the walk
/// (nothing left of them can be believed). Only meaningful when the peer is
/// trusted.
pub fn client_ip_from_forwarded(
    headers: &HeaderMap,
    peer: IpAddr,
    is_trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let elements: Vec<&[u8]> = list_elements(headers, &X_FORWARDED_FOR).collect();
    let mut client = peer;
    for element in elements.iter().rev() {
        let Some(ip) = std::str::from_utf8(element)
            .ok()
            .and_then(parse_forwarded_ip)
        else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// Accepts `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` and `[::1]:80`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

/// Removes every header in `names` (e.g. identity headers, which only the
/// gateway may set). One scan of the map's names finds those present, so
/// the common case (none) costs no lookups.
pub fn remove_all(headers: &mut HeaderMap, names: &[HeaderName]) {
    if names.len() > 64 {
        for name in names {
            headers.remove(name);
        }
        return;
    }
    let mut present = 0u64;
    for key in headers.keys() {
        if let Some(i) = names.iter().position(|n| n == key) {
            present |= 1 << i;
        }
    }
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The host the client asked for, from `Host` or the HTTP/2 `:authority`
/// (RFC 9110 §7.2), without port, for route matching (hosts compare
/// case-insensitively). Returns `None` when absent or not valid UTF-8.
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a http::Uri) -> Option<&'a str> {
    let raw = match uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => headers.get(header::HOST)?.as_bytes(),
    };
    std::str::from_utf8(strip_port(raw)).ok()
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`. Also drops any
/// userinfo an absolute-form target might carry.
fn strip_port(authority: &[u8]) -> &[u8] {
    let start = authority
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(0, |i| i + 1);
    let host = &authority[start..];
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fixed_list_and_connection_names() {
        let mut h = map(&[
            ("Connection", b"close, X-Foo ,x-bar"),
            ("connection", b"X-Baz"),
            ("x-foo", b"1"),
            ("X-BAR", b"2"),
            ("x-baz", b"3"),
            ("keep-alive", b"timeout=5"),
            ("proxy-connection", b"keep-alive"),
            ("te", b"trailers"),
            ("trailer", b"x-t"),
            ("transfer-encoding", b"chunked"),
            ("upgrade", b"websocket"),
            ("proxy-authenticate", b"Basic"),
            ("proxy-authorization", b"Basic abc"),
            ("x-keep", b"yes"),
            ("authorization", b"Bearer x"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep", "authorization"]);
    }

    #[test]
    fn hop_by_hop_ignores_invalid_names_in_connection() {
        let mut h = map(&[("connection", b"a b, \xff, ,,"), ("x-keep", b"1")]);
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key("x-keep"));
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn upgrade_detection() {
        assert!(is_upgrade_request(&map(&[
            ("connection", b"keep-alive, Upgrade"),
            ("upgrade", b"websocket")
        ])));
        assert!(is_upgrade_request(&map(&[
            ("connection", b"keep-alive"),
            ("connection", b"UPGRADE"),
            ("upgrade", b"websocket")
        ])));
        assert!(!is_upgrade_request(&map(&[("upgrade", b"websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", b"upgrade")])));
        assert!(!is_upgrade_request(&map(&[
            ("connection", b"upgraded"),
            ("upgrade", b"websocket")
        ])));
    }

    /// The request's fields as sent: what is left of the client's, then
    /// the forwarded ones.
    fn set_forwarded(h: &mut HeaderMap, hop: ForwardedFor<'_>) {
        let fwd = forwarded(h, hop);
        for (name, value) in fwd.fields() {
            assert!(!h.contains_key(name), "{name} would be sent twice");
            h.append(HeaderName::from_static(name), value.clone());
        }
    }

    fn hop(trusted: bool, host: Option<&HeaderValue>) -> ForwardedFor<'_> {
        ForwardedFor {
            peer: "10.0.0.9".parse().unwrap(),
            trusted,
            proto: "http",
            host,
        }
    }

    #[test]
    fn forwarded_from_untrusted_peer_is_replaced() {
        let host = HeaderValue::from_static("app.example:8080");
        let mut h = map(&[
            ("x-forwarded-for", b"1.2.3.4"),
            ("X-Forwarded-For", b"5.6.7.8"),
            ("x-forwarded-proto", b"https"),
            ("x-forwarded-host", b"evil"),
            ("forwarded", b"for=1.2.3.4"),
        ]);
        set_forwarded(&mut h, hop(false, Some(&host)));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example:8080");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn forwarded_from_trusted_peer_is_appended() {
        let host = HeaderValue::from_static("inner");
        let mut h = map(&[
            ("x-forwarded-for", b" 1.2.3.4 ,"),
            ("x-forwarded-for", b"5.6.7.8"),
            ("x-forwarded-proto", b"https"),
            ("x-forwarded-host", b"outer.example"),
        ]);
        set_forwarded(&mut h, hop(true, Some(&host)));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "outer.example");

        let mut h = HeaderMap::new();
        set_forwarded(&mut h, hop(true, None));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn forwarded_keeps_non_utf8_chain_from_trusted_peer() {
        let mut h = map(&[("x-forwarded-for", b"1.2.3.4, \xfe")]);
        set_forwarded(&mut h, hop(true, None));
        assert_eq!(h["x-forwarded-for"].as_bytes(), b"1.2.3.4, \xfe, 10.0.0.9");
    }

    #[test]
    fn client_ip_walks_from_the_right() {
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = map(&[("x-forwarded-for", b"6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(
            client_ip_from_forwarded(&h, peer, trusted).to_string(),
            "1.2.3.4"
        );
        let h = map(&[("x-forwarded-for", b"10.0.0.3, 10.0.0.2")]);
        assert_eq!(
            client_ip_from_forwarded(&h, peer, trusted).to_string(),
            "10.0.0.3"
        );
        let h = map(&[("x-forwarded-for", b"1.2.3.4, garbage, 10.0.0.2")]);
        assert_eq!(
            client_ip_from_forwarded(&h, peer, trusted).to_string(),
            "10.0.0.2"
        );
        let h = map(&[
            ("x-forwarded-for", b"[2001:db8::1]:443"),
            ("x-forwarded-for", b"5.5.5.5:80"),
        ]);
        assert_eq!(
            client_ip_from_forwarded(&h, peer, trusted).to_string(),
            "5.5.5.5"
        );
        assert_eq!(
            client_ip_from_forwarded(&HeaderMap::new(), peer, trusted),
            peer
        );
        assert_eq!(
            parse_forwarded_ip("[2001:db8::1]:443").unwrap().to_string(),
            "2001:db8::1"
        );
    }

    #[test]
    fn identity_headers_removed_case_insensitively() {
        let mut h = map(&[
            ("X-Sis-User-Uuid", b"spoof"),
            ("x-sis-user-uuid", b"again"),
            ("x-other", b"1"),
        ]);
        remove_all(&mut h, &[HeaderName::from_static("x-sis-user-uuid")]);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn host_without_port() {
        let uri: http::Uri = "/x".parse().unwrap();
        let h = map(&[("host", b"App.Example:8080")]);
        assert_eq!(request_host(&h, &uri), Some("App.Example"));
        let h = map(&[("host", b"[::1]:80")]);
        assert_eq!(request_host(&h, &uri), Some("[::1]"));
        let h = map(&[("host", b"\xff")]);
        assert_eq!(request_host(&h, &uri), None);
        let abs: http::Uri = "http://h2.example:443/x".parse().unwrap();
        assert_eq!(request_host(&HeaderMap::new(), &abs), Some("h2.example"));
    }
}
