//! The HTTP/1 codec, one for both directions: the server's connection loop
//! (`server::h1`) and the upstream client (`proxy::exchange`) read heads,
//! decode bodies and write messages with it. This file holds what both
//! share below the parsers: the framing facts noted while a head is parsed,
//! socket reads without a resident buffer, and the per-thread reuse of
//! buffers and header maps.

pub(crate) mod body;
pub(crate) mod decode;
mod drive;
pub(crate) mod encode;
pub(crate) mod halves;
pub(crate) mod parse;
mod raw;

pub(crate) use self::drive::parse_head;
pub use self::drive::parse_request_stream;
pub use self::parse::parse_response_heads;
pub(crate) use self::raw::RawFields;

use std::cell::RefCell;
use std::io::{self, IoSlice};

use crate::http::fields::{elements, BadLength, LengthRule};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes taken from a socket per read.
const READ_SIZE: usize = 16 * 1024;

thread_local! {
    /// Reads land here first and are copied out in exactly the size that
    /// arrived, so a connection between messages holds no read buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// Where a head's fields lie in its buffer (name offset, name length, value
/// offset, value length), noted while the parser borrows the buffer so the
/// fields can share its bytes once it is split off. Typical heads fit
/// without an allocation.
pub(crate) type FieldRanges = smallvec::SmallVec<[(usize, usize, usize, usize); 16]>;

/// Reused buffers and header maps kept per thread: at most this many of
/// each kind, so a worker serving this many messages at once takes and gives
/// back without going to the allocator…
const REUSE_COUNT: usize = 256;
/// …and at most this much memory in each kind, whatever their sizes.
const REUSE_BYTES: usize = 512 * 1024;
/// A write buffer that grew beyond this is freed rather than kept.
const REUSE_BUF_CAPACITY: usize = 64 * 1024;
/// A header map with room for more fields than this is freed rather than kept.
const REUSE_MAP_CAPACITY: usize = 128;
/// What one field of room in a header map is counted as against
/// [`REUSE_BYTES`]: its entry and its index slot, roughly.
const MAP_FIELD_BYTES: usize = 128;
/// Read buffers are made at least this large, so one serves the next
/// message too.
const READ_BUF_MIN: usize = 1024;
/// A read buffer larger than this is freed rather than kept.
const REUSE_READ_BUF_CAPACITY: usize = 8 * 1024;

/// Items of one kind kept for reuse, each with the bytes it holds.
struct Kept<T> {
    items: Vec<(T, usize)>,
    bytes: usize,
}

impl<T> Kept<T> {
    const fn new() -> Kept<T> {
        Kept {
            items: Vec::new(),
            bytes: 0,
        }
    }
}

thread_local! {
    static BUFS: RefCell<Kept<Vec<u8>>> = const { RefCell::new(Kept::new()) };
    static MAPS: RefCell<Kept<HeaderMap>> = const { RefCell::new(Kept::new()) };
    static READ_BUFS: RefCell<Kept<BytesMut>> = const { RefCell::new(Kept::new()) };
}

type KeptKey<T> = std::thread::LocalKey<RefCell<Kept<T>>>;

fn take<T>(kept: &'static KeptKey<T>) -> Option<T> {
    kept.with(|k| {
        let mut k = k.borrow_mut();
        let (item, bytes) = k.items.pop()?;
        k.bytes -= bytes;
        Some(item)
    })
}

/// Keeps `item`, which holds `bytes`, unless `kept` is full by count or by
/// memory (see [`REUSE_COUNT`], [`REUSE_BYTES`]); otherwise it is dropped.
fn keep<T>(kept: &'static KeptKey<T>, item: T, bytes: usize) {
    kept.with(|k| {
        let mut k = k.borrow_mut();
        if k.items.len() < REUSE_COUNT && k.bytes + bytes <= REUSE_BYTES {
            k.bytes += bytes;
            k.items.push((item, bytes));
        }
    });
}

/// An empty write buffer: one that an earlier message on this thread gave
/// back, or a new one. Give it back with [`give_buf`] once written.
pub(crate) fn take_buf(capacity: usize) -> Vec<u8> {
    take(&BUFS).unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Keeps `buf` for the next [`take_buf`] on this thread (or frees it).
pub(crate) fn give_buf(mut buf: Vec<u8>) {
    if buf.capacity() > 0 && buf.capacity() <= REUSE_BUF_CAPACITY {
        buf.clear();
        let bytes = buf.capacity();
        keep(&BUFS, buf, bytes);
    }
}

/// An empty header map with room for `capacity` fields: one that an earlier
/// message on this thread gave back, or a new one.
pub(crate) fn take_map(capacity: usize) -> HeaderMap {
    let mut map = take(&MAPS).unwrap_or_else(|| HeaderMap::with_capacity(capacity));
    map.reserve(capacity);
    map
}

/// Keeps `map`, emptied, for the next [`take_map`] on this thread (or frees
/// it).
pub(crate) fn give_map(mut map: HeaderMap) {
    if map.capacity() > 0 && map.capacity() <= REUSE_MAP_CAPACITY {
        map.clear();
        let bytes = map.capacity() * MAP_FIELD_BYTES;
        keep(&MAPS, map, bytes);
    }
}

/// Gives back a connection's emptied read buffer for the next
/// [`poll_fill`] on this thread that needs one, so a connection between
/// messages holds none. Kept only when no message parsed from it still
/// shares its bytes, and when it is small.
pub(crate) fn give_read_buf(mut buf: BytesMut) {
    if buf.is_empty() && buf.try_reclaim(1) && buf.capacity() <= REUSE_READ_BUF_CAPACITY {
        let bytes = buf.capacity();
        keep(&READ_BUFS, buf, bytes);
    }
}

/// Reads what `io` has into `buf`; `Ok(0)` at end of stream. An empty `buf`
/// without room gets a buffer given back earlier on this thread (see
/// [`give_read_buf`]) or a new one.
pub(crate) fn poll_fill<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut rb = ReadBuf::new(&mut scratch[..]);
        ready!(Pin::new(io).poll_read(cx, &mut rb))?;
        let filled = rb.filled();
        if buf.is_empty() && buf.capacity() < filled.len() {
            *buf = take(&READ_BUFS)
                .unwrap_or_else(|| BytesMut::with_capacity(filled.len().max(READ_BUF_MIN)));
        }
        buf.extend_from_slice(filled);
        Poll::Ready(Ok(filled.len()))
    })
}

/// Writes all of `bufs` (gathered), then flushes.
pub(crate) async fn write_all<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    let mut bufs = bufs;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    w.flush().await
}

/// A stream some of whose bytes were read ahead: those are read again
/// first. Writes go straight through.
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Rewind<T> {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a head's framing and connection fields say, noted field by field
/// while it is parsed, so nothing looks them up in its header map later.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HeadFacts {
    length: LengthRule,
    /// `Transfer-Encoding` is present.
    pub(crate) transfer_encoding: bool,
    /// Its last coding is `chunked`.
    pub(crate) chunked_last: bool,
    strict: Codings,
    /// `Connection` lists `close`.
    pub(crate) close: bool,
    /// `Connection` lists `keep-alive`.
    pub(crate) keep_alive: bool,
    /// `Connection` lists `upgrade`.
    pub(crate) upgrade_token: bool,
    /// `Connection` lists a token other than those three: the name of a
    /// further field that is hop-by-hop.
    pub(crate) names_others: bool,
    /// An `Upgrade` field is present.
    pub(crate) upgrade: bool,
    /// The first `Expect` is `100-continue`.
    pub(crate) expect_continue: bool,
    expect_seen: bool,
}

/// The transfer codings in order, judged strictly: `chunked` must be the
/// final coding, applied once, and no other coding is supported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codings {
    /// None listed.
    #[default]
    None,
    /// Only `chunked`, once.
    Chunked,
    /// A coding after `chunked`.
    AfterChunked,
    /// A coding other than `chunked`, before any `chunked`.
    Unsupported,
}

impl HeadFacts {
    /// Notes one field, its name in any case, as received.
    pub(crate) fn note(&mut self, name: &[u8], value: &[u8]) {
        let elements = elements(value);
        // The length and first letter rule out most fields before any
        // comparison.
        let first = name.first().map_or(0, |b| b.to_ascii_lowercase());
        match (name.len(), first) {
            (14, b'c') if name.eq_ignore_ascii_case(b"content-length") => {
                self.length.note(value);
            }
            (17, b't') if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding = true;
                for coding in elements {
                    let chunked = coding.eq_ignore_ascii_case(b"chunked");
                    self.chunked_last = chunked;
                    self.strict = match self.strict {
                        Codings::None if chunked => Codings::Chunked,
                        Codings::None => Codings::Unsupported,
                        Codings::Chunked => Codings::AfterChunked,
                        verdict => verdict,
                    };
                }
            }
            (10, b'c') if name.eq_ignore_ascii_case(b"connection") => {
                for token in elements {
                    self.close |= token.eq_ignore_ascii_case(b"close");
                    self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    self.upgrade_token |= token.eq_ignore_ascii_case(b"upgrade");
                    self.names_others |= !token.eq_ignore_ascii_case(b"close")
                        && !token.eq_ignore_ascii_case(b"keep-alive")
                        && !token.eq_ignore_ascii_case(b"upgrade");
                }
            }
            (7, b'u') if name.eq_ignore_ascii_case(b"upgrade") => self.upgrade = true,
            (6, b'e') if !self.expect_seen && name.eq_ignore_ascii_case(b"expect") => {
                self.expect_seen = true;
                self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
    }

    /// The message's `Content-Length` (RFC 9112 §6.3): `Ok(None)` without
    /// one, [`BadLength`] when a value is not a number, the values
    /// disagree, or there is none in a present field.
    pub(crate) fn content_length(&self) -> Result<Option<u64>, BadLength> {
        self.length.length()
    }

    /// The transfer codings, judged strictly (see [`Codings`]).
    pub(crate) fn codings(&self) -> Codings {
        self.strict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields<'a> = &'a [(&'a str, &'a str)];

    fn facts(fields: Fields<'_>) -> HeadFacts {
        let mut facts = HeadFacts::default();
        for (name, value) in fields {
            facts.note(name.as_bytes(), value.as_bytes());
        }
        facts
    }

    #[test]
    fn content_length_from_fields() {
        let cases: &[(Fields<'_>, Result<Option<u64>, BadLength>)] = &[
            (&[], Ok(None)),
            (&[("Content-Length", "42")], Ok(Some(42))),
            (&[("content-length", " 7 ")], Ok(Some(7))),
            (
                &[("CONTENT-LENGTH", "5, 5"), ("Content-Length", "5")],
                Ok(Some(5)),
            ),
            (
                &[("Content-Length", "5"), ("Content-Length", "")],
                Ok(Some(5)),
            ),
            (
                &[("Content-Length", "5"), ("Content-Length", "6")],
                Err(BadLength),
            ),
            (&[("Content-Length", "")], Err(BadLength)),
            (&[("Content-Length", "-1")], Err(BadLength)),
            (&[("Content-Length", "1x")], Err(BadLength)),
            (
                &[("Content-Length", "99999999999999999999")],
                Err(BadLength),
            ),
            (
                &[("Content-Lengths", "1"), ("X-Content-Length", "2")],
                Ok(None),
            ),
        ];
        for (fields, expected) in cases {
            assert_eq!(facts(fields).content_length(), *expected, "{fields:?}");
        }
    }

    #[test]
    fn transfer_codings_from_fields() {
        let cases: &[(Fields<'_>, bool, bool, Codings)] = &[
            (&[], false, false, Codings::None),
            (
                &[("Transfer-Encoding", "chunked")],
                true,
                true,
                Codings::Chunked,
            ),
            (
                &[("transfer-encoding", "Chunked")],
                true,
                true,
                Codings::Chunked,
            ),
            (&[("Transfer-Encoding", "")], true, false, Codings::None),
            (
                &[("Transfer-Encoding", "gzip, chunked")],
                true,
                true,
                Codings::Unsupported,
            ),
            (
                &[
                    ("Transfer-Encoding", "gzip"),
                    ("Transfer-Encoding", "chunked"),
                ],
                true,
                true,
                Codings::Unsupported,
            ),
            (
                &[("Transfer-Encoding", "chunked, gzip")],
                true,
                false,
                Codings::AfterChunked,
            ),
            (
                &[
                    ("Transfer-Encoding", "chunked"),
                    ("Transfer-Encoding", "chunked"),
                ],
                true,
                true,
                Codings::AfterChunked,
            ),
            (
                &[
                    ("Transfer-Encoding", "chunked"),
                    ("Transfer-Encoding", " , "),
                ],
                true,
                true,
                Codings::Chunked,
            ),
        ];
        for (fields, present, chunked_last, codings) in cases {
            let f = facts(fields);
            assert_eq!(f.transfer_encoding, *present, "{fields:?}");
            assert_eq!(f.chunked_last, *chunked_last, "{fields:?}");
            assert_eq!(f.codings(), *codings, "{fields:?}");
        }
    }
    #[test]
    fn connection_upgrade_and_expect_from_fields() {
        let f = facts(&[("Connection", "Keep-Alive, foo"), ("connection", "UPGRADE")]);
        assert!(f.keep_alive && f.upgrade_token && !f.close && !f.upgrade && f.names_others);
        let f = facts(&[("Connection", "foo,close"), ("Upgrade", "websocket")]);
        assert!(f.close && !f.keep_alive && !f.upgrade_token && f.upgrade && f.names_others);
        let f = facts(&[("Connection", "close, Keep-Alive , upgrade")]);
        assert!(!f.names_others);
        // `closed` and `keep-alive2` are other tokens.
        let f = facts(&[("Connection", "closed, keep-alive2")]);
        assert!(!f.close && !f.keep_alive);
        assert!(facts(&[("Expect", "100-Continue")]).expect_continue);
        // Only the first `Expect` counts.
        assert!(!facts(&[("Expect", "foo"), ("Expect", "100-continue")]).expect_continue);
        assert!(!facts(&[("X-Expect", "100-continue")]).expect_continue);
    }

    #[test]
    fn kept_buffers_are_bounded_by_count_and_by_memory() {
        // A thread of its own, so the kept lists start empty.
        std::thread::spawn(|| {
            for _ in 0..REUSE_COUNT + 50 {
                give_buf(Vec::with_capacity(64));
            }
            assert_eq!(BUFS.with(|k| k.borrow().items.len()), REUSE_COUNT);
            while take(&BUFS).is_some() {}
            assert_eq!(BUFS.with(|k| k.borrow().bytes), 0);

            for _ in 0..20 {
                give_buf(Vec::with_capacity(REUSE_BUF_CAPACITY));
            }
            let kept = BUFS.with(|k| k.borrow().items.len());
            assert_eq!(kept, REUSE_BYTES / REUSE_BUF_CAPACITY);
            let big = (0..20)
                .filter(|_| take_buf(0).capacity() >= REUSE_BUF_CAPACITY)
                .count();
            assert_eq!(big, kept);

            let each =
                HeaderMap::<http::HeaderValue>::with_capacity(REUSE_MAP_CAPACITY / 2).capacity();
            for _ in 0..REUSE_COUNT {
                give_map(HeaderMap::with_capacity(REUSE_MAP_CAPACITY / 2));
            }
            let maps = MAPS.with(|k| k.borrow().items.len());
            assert_eq!(maps, REUSE_BYTES / (each * MAP_FIELD_BYTES), "{each}");
        })
        .join()
        .unwrap();
    }
}
