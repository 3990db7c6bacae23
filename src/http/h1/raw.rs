//! An upstream response's fields kept in the bytes they arrived in.
//!
//! Most of an upstream's response head goes to the client unchanged: only
//! hop-by-hop fields are dropped, and the gateway adds a few of its own.
//! Building a header map for it (a name lookup, a hash and an insert per
//! field) and iterating that map to write it again costs more than the rest
//! of the exchange's head handling. So a plain response's end-to-end fields
//! stay where the parser found them, and the HTTP/1 writer copies them out
//! before the response's own (gateway-added) header map. Anything that reads
//! or changes them through a header map (the `Reply` that carries them, an
//! HTTP/2 client) has them folded in with [`RawFields::fold`].

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

thread_local! {
    // The boxes are what is reused: a response holds one.
    static KEPT: std::cell::RefCell<super::Kept<Box<RawFields>>> = const { std::cell::RefCell::new(super::Kept::new()) };
}

/// One field: where its name and value lie in the head.
#[derive(Debug, Clone, Copy)]
struct Span {
    name_at: u16,
    name_len: u16,
    value_at: u16,
    value_len: u16,
}

impl Span {
    fn name(self) -> std::ops::Range<usize> {
        self.name_at as usize..self.name_at as usize + self.name_len as usize
    }

    fn value(self) -> std::ops::Range<usize> {
        self.value_at as usize..self.value_at as usize + self.value_len as usize
    }
}

fn is_content_length(name: &[u8]) -> bool {
    name.len() == 14 && name.eq_ignore_ascii_case(b"content-length")
}

/// The end-to-end fields of an upstream response head, in the order and
/// the name case they were received in. Field names and values were
/// validated by the parser (the same character sets `http` accepts).
#[derive(Debug)]
pub(crate) struct RawFields {
    head: Bytes,
    spans: SmallVec<[Span; 12]>,
    /// The declared `Content-Length`, when one was kept.
    length: Option<u64>,
    has_date: bool,
}

impl RawFields {
    /// The largest head whose fields can be kept this way.
    pub(crate) const MAX_HEAD: usize = u16::MAX as usize;

    /// Fields of `head`, which must be the bytes the offsets were taken
    /// from and at most [`MAX_HEAD`](Self::MAX_HEAD) long; `length` is the
    /// `Content-Length` the head declared, if any.
    ///
    /// Boxed, so a response carrying them stays small as it is passed up
    /// from the exchange, and taken from those this thread gave back with
    /// [`recycle`](Self::recycle) when it can.
    pub(crate) fn new(head: Bytes, length: Option<u64>) -> Box<RawFields> {
        debug_assert!(head.len() <= Self::MAX_HEAD);
        let fresh = RawFields {
            head,
            spans: SmallVec::new(),
            length,
            has_date: false,
        };
        match super::take(&KEPT) {
            Some(mut kept) => {
                *kept = fresh;
                kept
            }
            None => Box::new(fresh),
        }
    }

    /// Gives the box back for the next [`new`](Self::new) on this thread,
    /// once the fields are written.
    pub(crate) fn recycle(mut self: Box<Self>) {
        if !self.spans.spilled() {
            self.head = Bytes::new();
            self.spans.clear();
            super::keep(&KEPT, self, std::mem::size_of::<RawFields>());
        }
    }

    /// The head the fields lie in.
    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }

    /// Adds the field whose name and value lie at these offsets of the head.
    pub(crate) fn push(&mut self, name: (usize, usize), value: (usize, usize)) {
        let raw_name = &self.head[name.0..name.0 + name.1];
        self.has_date |= raw_name.len() == 4 && raw_name.eq_ignore_ascii_case(b"date");
        // Every offset is within the head, so it fits (see `new`).
        let at = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        self.spans.push(Span {
            name_at: at(name.0),
            name_len: at(name.1),
            value_at: at(value.0),
            value_len: at(value.1),
        });
    }

    /// The fields in order: name (as received), value, and whether it is a
    /// `Content-Length` (which the writer replaces with the length it frames
    /// the body with).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], bool)> + '_ {
        self.spans.iter().map(|&s| {
            let name = &self.head[s.name()];
            (name, &self.head[s.value()], is_content_length(name))
        })
    }

    /// The `Content-Length` these fields declare, if they hold one.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.length.filter(|_| self.has_content_length())
    }

    /// True when a `Content-Length` field is among them.
    pub(crate) fn has_content_length(&self) -> bool {
        self.iter().any(|(_, _, length)| length)
    }

    /// True when a `Date` field is among them.
    pub(crate) fn has_date(&self) -> bool {
        self.has_date
    }

    /// These fields then `rest`'s, in one header map, each kept: received
    /// fields first, in order, then the ones the gateway added. The fields
    /// stay, for [`case_of`](Self::case_of).
    pub(crate) fn fold(&self, rest: HeaderMap) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.spans.len() + rest.len());
        for &s in &self.spans {
            // Both were validated by the parser; a field that still fails
            // here is left out rather than failing the response.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&self.head[s.name()]),
                HeaderValue::from_maybe_shared(self.head.slice(s.value())),
            ) {
                map.append(name, value);
            }
        }
        let mut last: Option<HeaderName> = None;
        for (name, value) in rest {
            if let Some(n) = name {
                last = Some(n);
            }
            if let Some(n) = &last {
                map.append(n.clone(), value);
            }
        }
        map
    }

    /// The name `name` (lowercase) arrived with, when one of these fields
    /// has it.
    pub(crate) fn case_of(&self, name: &str) -> Option<&[u8]> {
        self.spans
            .iter()
            .map(|&s| &self.head[s.name()])
            .find(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(head: &'static [u8], names: &[&str], length: Option<u64>) -> Box<RawFields> {
        let mut raw = RawFields::new(Bytes::from_static(head), length);
        let text = std::str::from_utf8(head).unwrap();
        for name in names {
            let at = text.find(&format!("{name}:")).unwrap();
            let value_at = at + name.len() + 2;
            let value_len = text[value_at..].find("\r\n").unwrap();
            raw.push((at, name.len()), (value_at, value_len));
        }
        raw
    }

    #[test]
    fn fields_keep_order_case_and_length() {
        let raw = fields(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: x\r\nContent-Length: 5\r\n\r\n",
            &["Content-Type", "Date", "Content-Length"],
            Some(5),
        );
        let got: Vec<_> = raw.iter().collect();
        assert_eq!(
            got,
            [
                (&b"Content-Type"[..], &b"text/plain"[..], false),
                (b"Date", b"x", false),
                (b"Content-Length", b"5", true),
            ]
        );
        assert!(raw.has_date());
        assert_eq!(raw.content_length(), Some(5));
        let none = fields(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n", &["A"], None);
        assert!(!none.has_date() && !none.has_content_length());
        assert_eq!(none.content_length(), None);
    }

    #[test]
    fn fold_keeps_received_fields_first_then_the_added_ones() {
        let raw = fields(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Thing: up\r\nVary: accept\r\n\r\n",
            &["Set-Cookie", "X-Thing", "Vary"],
            None,
        );
        let mut rest = HeaderMap::new();
        rest.append("set-cookie", HeaderValue::from_static("b=2"));
        rest.append("set-cookie", HeaderValue::from_static("c=3"));
        rest.insert("x-thing", HeaderValue::from_static("gateway"));
        let map = raw.fold(rest);
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2", "c=3"]);
        let things: Vec<_> = map.get_all("x-thing").iter().collect();
        assert_eq!(things, ["up", "gateway"]);
        assert_eq!(map["vary"], "accept");
        assert_eq!(raw.case_of("x-thing"), Some(&b"X-Thing"[..]));
    }
}
