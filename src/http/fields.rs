//! Field values shared by every reader of HTTP fields: list elements
//! (RFC 9110 §5.6.1), `Content-Length` (RFC 9112 §6.3), hex digits and
//! fast splits of long values.

use http::header::{self, HeaderMap, HeaderName};

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

/// The message's `Content-Length`: `Ok(None)` without one, `Err` when a
/// value is not a number or the values disagree (RFC 9112 §6.3).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    if !headers.contains_key(header::CONTENT_LENGTH) {
        return Ok(None);
    }
    let mut length = None;
    for element in list_elements(headers, &header::CONTENT_LENGTH) {
        let n = parse_length(element).ok_or(())?;
        if length.is_some_and(|l| l != n) {
            return Err(());
        }
        length = Some(n);
    }
    // Present, but empty.
    length.map(Some).ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
