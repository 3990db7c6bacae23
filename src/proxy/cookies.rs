//! Removing and replacing cookies in a forwarded request's `Cookie` header.
//!
//! Like the other header operations, each function works on a [`HeaderMap`]
//! in place, never panics on odd input (mixed case, duplicates, stray
//! whitespace, non-UTF-8 bytes), and allocates only when it has to change
//! something.

use http::header::{self, HeaderMap, HeaderValue};

/// Removes the cookies called any of `names` from every `Cookie` header
/// (RFC 6265 §5.4), keeping all other cookies byte for byte.
///
/// Upstream cookie parsers differ, so a name is matched the way the most
/// lenient of them would read it: case-insensitively, percent-decoded, and
/// also after a `,` (old RFC 2965 separator that some parsers still split
/// on). Several `Cookie` headers (normal over HTTP/2, RFC 9113 §8.2.3) are
/// joined into one with `"; "` for the HTTP/1.1 upstream. An emptied header is
/// dropped. Returns true when anything changed.
pub fn remove_cookies(headers: &mut HeaderMap, names: &[&str]) -> bool {
    let mut count = 0;
    let mut matching = false;
    for value in headers.get_all(header::COOKIE) {
        count += 1;
        matching = matching || cookie_pairs(value.as_bytes()).any(|pair| names_match(pair, names));
    }
    if !matching && count < 2 {
        return false;
    }

    let mut out: Vec<u8> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        for segment in crate::http::fields::split_at_byte(value.as_bytes(), b';') {
            if segment.trim_ascii().is_empty() {
                continue;
            }
            let kept = if memchr::memchr(b',', segment).is_some()
                && crate::http::fields::split_at_byte(segment, b',').any(|p| names_match(p, names))
            {
                // Keep the comma-separated parts that are not forbidden.
                let parts: Vec<&[u8]> = crate::http::fields::split_at_byte(segment, b',')
                    .filter(|p| !names_match(p, names) && !p.trim_ascii().is_empty())
                    .collect();
                parts.join(&b","[..])
            } else if names_match(segment, names) {
                continue;
            } else {
                segment.to_vec()
            };
            let kept = kept.trim_ascii();
            if kept.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(kept);
        }
    }
    headers.remove(header::COOKIE);
    if !out.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&out) {
            headers.insert(header::COOKIE, v);
        }
    }
    true
}

/// Every `name=value` piece of a `Cookie` value, split on `;` and `,`.
fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    crate::cookie::pieces(value)
}

/// Names are read by the gateway's one cookie reader ([`crate::cookie`]),
/// so a cookie it reads as a credential is one it removes.
fn names_match(pair: &[u8], names: &[&str]) -> bool {
    let name = crate::cookie::piece_name(pair);
    names.iter().any(|n| crate::cookie::name_is(name, n))
}

/// Replaces (or adds) the cookie `name` in the request's `Cookie` header with
/// `name=value`: for an auth step that forwards a freshly issued access
/// token in place of the expired one. `value` must already be a valid
/// cookie-value (RFC 6265 §4.1.1).
pub fn replace_cookie(headers: &mut HeaderMap, name: &str, value: &str) {
    remove_cookies(headers, &[name]);
    let mut out: Vec<u8> = headers
        .get(header::COOKIE)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    if !out.is_empty() {
        out.extend_from_slice(b"; ");
    }
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&out) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

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

    fn cookie(h: &HeaderMap) -> Option<&[u8]> {
        h.get(header::COOKIE).map(|v| v.as_bytes())
    }

    const SECRET: [&str; 2] = ["vagov_refresh_token", "vagov_anti_csrf_token"];

    #[test]
    fn cookies_untouched_without_secrets() {
        let mut h = map(&[("cookie", b"a=1; vagov_access_token=x;b=2")]);
        assert!(!remove_cookies(&mut h, &SECRET));
        assert_eq!(cookie(&h), Some(&b"a=1; vagov_access_token=x;b=2"[..]));
        let mut h = HeaderMap::new();
        assert!(!remove_cookies(&mut h, &SECRET));
    }

    #[test]
    fn cookies_secrets_removed_others_kept() {
        let mut h = map(&[(
            "cookie",
            b"a=1; vagov_refresh_token=v1%3Aabc;  vagov_access_token=x ;vagov_anti_csrf_token=z; b=\"q\"",
        )]);
        assert!(remove_cookies(&mut h, &SECRET));
        assert_eq!(cookie(&h), Some(&b"a=1; vagov_access_token=x; b=\"q\""[..]));
    }

    #[test]
    fn cookies_header_dropped_when_empty() {
        let mut h = map(&[
            ("cookie", b"vagov_refresh_token=a"),
            ("cookie", b" ; vagov_anti_csrf_token=b;"),
        ]);
        assert!(remove_cookies(&mut h, &SECRET));
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn cookies_several_headers_joined() {
        let mut h = map(&[
            ("cookie", b"a=1"),
            ("cookie", b"vagov_refresh_token=a; b=2"),
            ("cookie", b"c=3"),
        ]);
        assert!(remove_cookies(&mut h, &SECRET));
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(cookie(&h), Some(&b"a=1; b=2; c=3"[..]));
    }

    #[test]
    fn cookies_lenient_name_forms_removed() {
        for raw in [
            &b"VAGOV_Refresh_Token=a; b=2"[..],
            b"vagov%5Frefresh%5ftoken=a; b=2",
            b"\"vagov_refresh_token\"=a; b=2",
            b"  vagov_refresh_token  =a; b=2",
            b"vagov_refresh_token; b=2",
            // A no-break space around the name: `crate::cookie` reads
            // this as the refresh cookie, so it must not get through.
            b"vagov_refresh_token\xc2\xa0 = \xc2\xa0a; b=2",
            b"\xc2\xa0vagov_refresh_token=a; b=2",
        ] {
            let mut h = map(&[("cookie", raw)]);
            assert!(remove_cookies(&mut h, &SECRET), "{raw:?}");
            assert_eq!(cookie(&h), Some(&b"b=2"[..]), "{raw:?}");
        }
    }

    #[test]
    fn cookies_comma_separated_secret_removed() {
        let mut h = map(&[("cookie", b"a=1, vagov_refresh_token=x, c=3; d=4,5")]);
        assert!(remove_cookies(&mut h, &SECRET));
        assert_eq!(cookie(&h), Some(&b"a=1, c=3; d=4,5"[..]));
    }

    #[test]
    fn cookies_non_utf8_kept_and_no_panic() {
        let mut h = map(&[(
            "cookie",
            b"a=\xff\xfe; vagov_refresh_token=\xff; %=%; %4=1; =; ;;",
        )]);
        assert!(remove_cookies(&mut h, &SECRET));
        assert_eq!(cookie(&h), Some(&b"a=\xff\xfe; %=%; %4=1; ="[..]));
    }

    #[test]
    fn replace_cookie_swaps_value() {
        let mut h = map(&[
            ("cookie", b"a=1; vagov_access_token=old"),
            ("cookie", b"b=2"),
        ]);
        replace_cookie(&mut h, "vagov_access_token", "new");
        assert_eq!(cookie(&h), Some(&b"a=1; b=2; vagov_access_token=new"[..]));
        let mut h = HeaderMap::new();
        replace_cookie(&mut h, "vagov_access_token", "new");
        assert_eq!(cookie(&h), Some(&b"vagov_access_token=new"[..]));
        // Whatever the gateway reads as the access cookie is what it replaces.
        let mut h = map(&[("cookie", b"vagov_access_token\xc2\xa0 = \xc2\xa0\xc2\xa0")]);
        replace_cookie(&mut h, "vagov_access_token", "new");
        assert_eq!(
            crate::cookie::get(&h, "vagov_access_token").as_deref(),
            Some("new")
        );
    }
}
