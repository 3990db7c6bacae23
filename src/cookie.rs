//! The one reader of `Cookie` request headers (RFC 6265 §5.4).
//!
//! Every place that takes a credential from a cookie (the sign-in
//! endpoints, inline refresh, the access cookie on session routes) reads it
//! through [`get`], and the proxy removes and replaces cookies by the same
//! name rule ([`name_is`]), so whatever the gateway reads as a refresh
//! cookie is also what it keeps from upstreams.
//!
//! Names are matched as the most lenient upstream parser would read them:
//! trimmed (of Unicode whitespace too), unquoted, percent-decoded and ASCII
//! case-insensitive, with `,` (the old RFC 2965 separator some parsers still
//! split on) separating pairs as `;` does. Values are trimmed, unquoted and
//! percent-decoded once: the Rails Sign-in Service writes its cookies
//! percent-encoded (`v1%3A…`), the gateway writes them raw (`v1:…`), and
//! browsers arriving from either carry their form. A value with no `%` is
//! returned borrowed, so the common case costs no allocation.

use std::borrow::Cow;

use http::header::{HeaderMap, COOKIE};
use percent_encoding::percent_decode;

use crate::http::fields::hex_digit;

/// Every `name=value` piece of one `Cookie` value, split at `;` and `,`.
pub fn pieces(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    crate::http::fields::split_at_bytes(value, b';', b',')
}

/// The name of a piece as it is matched: the bytes before its first `=`
/// (the whole piece when there is none), trimmed and unquoted.
pub fn piece_name(piece: &[u8]) -> &[u8] {
    let name = match memchr::memchr(b'=', piece) {
        Some(i) => &piece[..i],
        None => piece,
    };
    let name = trim(name);
    unquote(name)
}

/// True when the raw name `raw` (from [`piece_name`]) reads as `name`:
/// percent-decoded on the fly, ASCII case-insensitively.
pub fn name_is(raw: &[u8], name: &str) -> bool {
    let mut i = 0;
    let mut target = name.as_bytes().iter();
    while i < raw.len() {
        let mut b = raw[i];
        if b == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex_digit(raw[i + 1]), hex_digit(raw[i + 2])) {
                b = h << 4 | l;
                i += 2;
            }
        }
        match target.next() {
            Some(&c) if c.eq_ignore_ascii_case(&b) => {}
            _ => return false,
        }
        i += 1;
    }
    target.next().is_none()
}

/// The value of a raw cookie value: trimmed, unquoted, percent-decoded once.
/// `None` when it is empty or not UTF-8 (no credential is either).
pub fn value(raw: &[u8]) -> Option<Cow<'_, str>> {
    let raw = unquote(trim(raw));
    if raw.is_empty() {
        return None;
    }
    let value = if memchr::memchr(b'%', raw).is_some() {
        match Cow::from(percent_decode(raw)) {
            Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).ok()?),
            Cow::Owned(b) => Cow::Owned(String::from_utf8(b).ok()?),
        }
    } else {
        Cow::Borrowed(std::str::from_utf8(raw).ok()?)
    };
    (!value.is_empty()).then_some(value)
}

/// Every cookie of every `Cookie` header, as raw name and raw value (pieces
/// without `=` are skipped).
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| pieces(v.as_bytes()))
        .filter_map(|piece| {
            let eq = memchr::memchr(b'=', piece)?;
            Some((piece_name(piece), &piece[eq + 1..]))
        })
}

/// The first non-empty cookie called `name`, decoded (see the module doc).
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    pairs(headers)
        .filter(|(n, _)| name_is(n, name))
        .find_map(|(_, v)| value(v))
}

/// Trimmed of ASCII whitespace, and of Unicode whitespace (a no-break space,
/// say) when an end is not ASCII and the bytes are UTF-8.
fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.trim_ascii();
    match (bytes.first(), bytes.last()) {
        (Some(&a), Some(&b)) if !a.is_ascii() || !b.is_ascii() => {
            match std::str::from_utf8(bytes) {
                Ok(text) => text.trim().as_bytes(),
                Err(_) => bytes,
            }
        }
        _ => bytes,
    }
}

fn unquote(bytes: &[u8]) -> &[u8] {
    match bytes {
        [b'"', inner @ .., b'"'] => inner,
        _ => bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn raw_encoded_and_quoted_values_read_alike() {
        for raw in [
            &b"vagov_refresh_token=v1:abc.0f.V0"[..],
            b"vagov_refresh_token=v1%3Aabc.0f.V0",
            b"vagov_refresh_token=\"v1%3Aabc.0f.V0\"",
            b"vagov_refresh_token=\"v1:abc.0f.V0\"",
            b"a=1; vagov_refresh_token = v1%3aabc.0f.V0 ;b=2",
            b"a=1, vagov_refresh_token=v1:abc.0f.V0",
            b"VAGOV_Refresh%5Ftoken=v1:abc.0f.V0",
            b"\"vagov_refresh_token\"=v1:abc.0f.V0",
            b"vagov_refresh_token\xc2\xa0 = \xc2\xa0v1:abc.0f.V0",
        ] {
            let h = headers(&[raw]);
            assert_eq!(
                get(&h, "vagov_refresh_token").as_deref(),
                Some("v1:abc.0f.V0"),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn raw_value_is_borrowed() {
        let h = headers(&[b"x=1; vagov_access_token=eyJ.a-b_c.sig"]);
        assert!(matches!(
            get(&h, "vagov_access_token"),
            Some(Cow::Borrowed("eyJ.a-b_c.sig"))
        ));
        let h = headers(&[b"vagov_access_token=\"q\""]);
        assert!(matches!(
            get(&h, "vagov_access_token"),
            Some(Cow::Borrowed("q"))
        ));
    }

    #[test]
    fn first_nonempty_across_headers() {
        let h = headers(&[b"a=; b=2", b"a=3", b"a=4"]);
        assert_eq!(get(&h, "a").as_deref(), Some("3"));
        assert_eq!(get(&h, "b").as_deref(), Some("2"));
        assert_eq!(get(&h, "c"), None);
        let h = headers(&[b"a=\"\"; a=%; b"]);
        assert_eq!(get(&h, "a").as_deref(), Some("%"));
        assert_eq!(get(&h, "b"), None);
    }

    #[test]
    fn odd_bytes_never_panic() {
        let h = headers(&[b"a=\xff\xfe; b=ok; c=%FF; d=%zz%4; =; ==; \"=\"; e=\""]);
        assert_eq!(get(&h, "a"), None);
        assert_eq!(get(&h, "b").as_deref(), Some("ok"));
        assert_eq!(get(&h, "c"), None);
        assert_eq!(get(&h, "d").as_deref(), Some("%zz%4"));
        assert_eq!(get(&h, "e").as_deref(), Some("\""));
        assert_eq!(get(&h, "").as_deref(), Some("="));
    }

    #[test]
    fn percent_decoding_compare() {
        assert!(name_is(b"a%62c", "abc"));
        assert!(!name_is(b"a%6", "ab"));
        assert!(name_is(b"a%6", "a%6"));
        assert!(name_is(b"%", "%"));
        assert!(!name_is(b"abc", "ab"));
        assert!(!name_is(b"ab", "abc"));
    }
}
