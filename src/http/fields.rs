//! Field values shared by every reader of HTTP fields: list elements
//! (RFC 9110 §5.6.1), `Content-Length` (RFC 9112 §6.3), which fields are
//! hop-by-hop (RFC 9110 §7.6.1), hex digits and fast splits of long values.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that are hop-by-hop whether or not `Connection` names them
/// (RFC 9110 §7.6.1, plus the obsolete `Keep-Alive` and `Proxy-Connection`
/// that clients still send). Names rather than `HeaderName`s: a `const`
/// array of those is built and dropped at every use, and comparing with a
/// `static` one goes through the general comparison for each.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Where `name` (any case) is in [`HOP_BY_HOP`].
fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    // Most names have a length none of these has.
    if !matches!(name.len(), 2 | 7 | 10 | 16..=19) {
        return None;
    }
    HOP_BY_HOP
        .iter()
        .position(|h| h.len() == name.len() && name.eq_ignore_ascii_case(h.as_bytes()))
}

/// True when `name` (any case, as received) is one of the fields that are
/// hop-by-hop whether or not `Connection` names them.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    hop_by_hop_index(name).is_some()
}

/// Which fields of one message are hop-by-hop (RFC 9110 §7.6.1): the fixed
/// list ([`is_hop_by_hop`]) and every field its `Connection` names. The one
/// decision for both the fields of a parsed response head and those of a
/// header map ([`strip_hop_by_hop`]).
#[derive(Default)]
pub(crate) struct HopByHop {
    /// The names `Connection` lists that are not in the fixed list (most
    /// messages have none: then this allocates nothing).
    named: Vec<Vec<u8>>,
}

impl HopByHop {
    /// The decision for a message whose `Connection` fields have `values`.
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> HopByHop {
        // `close` names no field; those in the fixed list go anyway.
        let named = values
            .into_iter()
            .flat_map(elements)
            .filter(|e| !e.eq_ignore_ascii_case(b"close") && !is_hop_by_hop(e))
            .map(<[u8]>::to_vec)
            .collect();
        HopByHop { named }
    }

    /// True when the field `name` (any case) is not forwarded.
    pub(crate) fn contains(&self, name: &[u8]) -> bool {
        is_hop_by_hop(name) || self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1, see [`HopByHop`]): every
/// header named in `Connection`, then the fixed list of
/// connection-specific fields. A proxy must not forward them; the next hop
/// gets its own.
///
/// Callers that tunnel an upgrade re-add `Connection: upgrade` and `Upgrade`
/// afterwards.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One scan of the names finds which are present, so absent ones cost no
    // lookups; most messages carry none or only `Connection: keep-alive`.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str().as_bytes()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let values = headers
            .get_all(header::CONNECTION)
            .into_iter()
            .map(|v| v.as_bytes());
        let listed: Vec<HeaderName> = HopByHop::new(values)
            .named
            .iter()
            .filter_map(|e| HeaderName::from_bytes(e).ok())
            .collect();
        for name in listed {
            headers.remove(&name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// 1*DIGIT, without sign or whitespace, at most 19 digits (so it always
/// fits a u64).
pub(crate) fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// The value of one hexadecimal digit (either case).
pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `haystack` split at every `sep`, as `split` would, but found with
/// `memchr` (many bytes per instruction): cookie headers carry tokens
/// hundreds of bytes long, and a byte-by-byte split was most of the cost
/// of a request that carried one.
pub(crate) fn split_at_byte(haystack: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    segments(haystack, memchr::memchr_iter(sep, haystack))
}

/// As [`split_at_byte`], at either of two bytes.
pub(crate) fn split_at_bytes(haystack: &[u8], a: u8, b: u8) -> impl Iterator<Item = &[u8]> {
    segments(haystack, memchr::memchr2_iter(a, b, haystack))
}

/// The segments between the separators found at `positions` (ascending).
fn segments<'a>(
    haystack: &'a [u8],
    positions: impl Iterator<Item = usize> + 'a,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut start = 0;
    positions
        .map(Some)
        .chain(std::iter::once(None))
        .map(move |end| {
            let end = end.unwrap_or(haystack.len());
            let segment = &haystack[start..end];
            start = end + 1;
            segment
        })
}

/// Splits a comma-separated list header (RFC 9110 §5.6.1) into trimmed,
/// non-empty elements, across every instance of the header.
pub(crate) fn list_elements<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| elements(v.as_bytes()))
}

/// The trimmed, non-empty elements of one comma-separated list value.
pub(crate) fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

/// True when the list header `name` has the element `token` (any case).
pub(crate) fn lists(headers: &HeaderMap, name: &HeaderName, token: &[u8]) -> bool {
    list_elements(headers, name).any(|e| e.eq_ignore_ascii_case(token))
}

/// A `Content-Length` that is not a number, values that disagree, or a
/// field with no value (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid or conflicting Content-Length")]
pub struct BadLength;

/// The `Content-Length` rule (RFC 9112 §6.3), noted value by value: the one
/// rule for heads as they are parsed and for header maps.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LengthRule {
    present: bool,
    length: Option<u64>,
    bad: bool,
}

impl LengthRule {
    /// Notes the value of one `Content-Length` field.
    pub(crate) fn note(&mut self, value: &[u8]) {
        self.present = true;
        for element in elements(value) {
            match parse_length(element) {
                Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                _ => self.bad = true,
            }
        }
    }

    /// `Ok(None)` without a `Content-Length`; [`BadLength`] when a value is
    /// not a number, the values disagree, or there is none in a present
    /// field.
    pub(crate) fn length(&self) -> Result<Option<u64>, BadLength> {
        match (self.present, self.bad, self.length) {
            (false, _, _) => Ok(None),
            (true, false, Some(n)) => Ok(Some(n)),
            _ => Err(BadLength),
        }
    }
}

/// The message's `Content-Length`: `Ok(None)` without one (RFC 9112 §6.3).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, BadLength> {
    let mut rule = LengthRule::default();
    for value in headers.get_all(header::CONTENT_LENGTH) {
        rule.note(value.as_bytes());
    }
    rule.length()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hop_by_hop_name_is_recognised_in_any_case() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
            assert!(is_hop_by_hop(name.to_uppercase().as_bytes()), "{name}");
        }
        for other in [
            "host",
            "te2",
            "connections",
            "x-connection",
            "upgrade-insecure-requests",
        ] {
            assert!(!is_hop_by_hop(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"0042"), Some(42));
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"12345678901234567890",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1a",
            b"\xff",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn splits_match_slice_split() {
        for text in [
            &b""[..],
            b";",
            b"a",
            b"a;b",
            b";a;;b;",
            b"a=1; b=2,c=3;;d",
            b",;,",
        ] {
            let want: Vec<&[u8]> = text.split(|&b| b == b';').collect();
            assert_eq!(split_at_byte(text, b';').collect::<Vec<_>>(), want);
            let want: Vec<&[u8]> = text.split(|&b| b == b';' || b == b',').collect();
            assert_eq!(split_at_bytes(text, b';', b',').collect::<Vec<_>>(), want);
        }
    }
}
