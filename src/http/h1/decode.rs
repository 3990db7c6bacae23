//! HTTP/1 body decoding: `Content-Length`, `chunked` (RFC 9112 §7.1), and
//! (responses only) until the connection closes.
//!
//! The chunked decoder is strict: a chunk size is 1–16 hex digits, every
//! line ends in CRLF, chunk extensions and trailer fields are read and
//! discarded within size limits.

use bytes::{Buf, Bytes, BytesMut};

use crate::http::fields::hex_digit;

/// Bytes a chunk-size line may spend on extensions.
const MAX_EXTENSION: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk extensions too long")]
    ExtensionTooLong,
    #[error("missing CRLF after chunk data")]
    ChunkEnd,
    #[error("trailer section too large")]
    TrailersTooLarge,
    #[error("invalid trailer section")]
    Trailer,
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    /// The buffer holds no further part of the body; read more.
    NeedMore,
    /// The body is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting the first hex digit of a chunk size.
    SizeStart,
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: optional whitespace and `;ext` until CR.
    Extension {
        size: u64,
        len: usize,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    Length {
        left: u64,
    },
    /// Everything until the peer closes the connection (a response without
    /// length or chunking, RFC 9112 §6.3 rule 8).
    UntilClose,
    Chunked {
        state: Chunk,
        trailer_bytes: usize,
        trailer_limit: usize,
    },
    Done,
}

impl Decoder {
    pub(crate) fn length(n: u64) -> Decoder {
        if n == 0 {
            Decoder::Done
        } else {
            Decoder::Length { left: n }
        }
    }

    pub(crate) fn chunked(trailer_limit: usize) -> Decoder {
        Decoder::Chunked {
            state: Chunk::SizeStart,
            trailer_bytes: 0,
            trailer_limit,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// The exact bytes still to come, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length { left } => Some(*left),
            Decoder::Done => Some(0),
            Decoder::Chunked { .. } | Decoder::UntilClose => None,
        }
    }

    /// Takes the next piece of body out of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, DecodeError> {
        match self {
            Decoder::Done => Ok(Step::Done),
            Decoder::UntilClose => {
                if buf.is_empty() {
                    Ok(Step::NeedMore)
                } else {
                    Ok(Step::Data(buf.split().freeze()))
                }
            }
            Decoder::Length { left } => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                if *left == 0 {
                    *self = Decoder::Done;
                }
                Ok(Step::Data(data))
            }
            Decoder::Chunked {
                state,
                trailer_bytes,
                trailer_limit,
            } => {
                let step = decode_chunked(state, trailer_bytes, *trailer_limit, buf)?;
                if step == Step::Done {
                    *self = Decoder::Done;
                }
                Ok(step)
            }
        }
    }
}

fn decode_chunked(
    state: &mut Chunk,
    trailer_bytes: &mut usize,
    trailer_limit: usize,
    buf: &mut BytesMut,
) -> Result<Step, DecodeError> {
    loop {
        if let Chunk::Data { left } = *state {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = left.min(buf.len() as u64) as usize;
            let data = buf.split_to(n).freeze();
            *state = if left == n as u64 {
                Chunk::DataCr
            } else {
                Chunk::Data {
                    left: left - n as u64,
                }
            };
            return Ok(Step::Data(data));
        }
        let Some(&b) = buf.first() else {
            return Ok(Step::NeedMore);
        };
        buf.advance(1);
        *state = match *state {
            Chunk::SizeStart => match hex_digit(b) {
                Some(d) => Chunk::Size {
                    size: u64::from(d),
                    digits: 1,
                },
                None => return Err(DecodeError::ChunkSize),
            },
            Chunk::Size { size, digits } => match (hex_digit(b), b) {
                (Some(d), _) => {
                    if digits >= 16 {
                        return Err(DecodeError::ChunkSize);
                    }
                    Chunk::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    }
                }
                (None, b'\r') => Chunk::SizeLf { size },
                (None, b';' | b' ' | b'\t') => Chunk::Extension { size, len: 1 },
                _ => return Err(DecodeError::ChunkSize),
            },
            Chunk::Extension { size, len } => match b {
                b'\r' => Chunk::SizeLf { size },
                b'\n' => return Err(DecodeError::ChunkSize),
                _ if len >= MAX_EXTENSION => return Err(DecodeError::ExtensionTooLong),
                _ => Chunk::Extension { size, len: len + 1 },
            },
            Chunk::SizeLf { size } => match (b, size) {
                (b'\n', 0) => Chunk::TrailerStart,
                (b'\n', left) => Chunk::Data { left },
                _ => return Err(DecodeError::ChunkSize),
            },
            Chunk::Data { .. } => unreachable!("handled above"),
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                _ => return Err(DecodeError::ChunkEnd),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::SizeStart,
                _ => return Err(DecodeError::ChunkEnd),
            },
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::EndLf,
                b'\n' => return Err(DecodeError::Trailer),
                _ => {
                    *trailer_bytes += 1;
                    Chunk::TrailerLine
                }
            },
            Chunk::TrailerLine => {
                *trailer_bytes += 1;
                if *trailer_bytes > trailer_limit {
                    return Err(DecodeError::TrailersTooLarge);
                }
                match b {
                    b'\r' => Chunk::TrailerLf,
                    b'\n' => return Err(DecodeError::Trailer),
                    _ => Chunk::TrailerLine,
                }
            }
            Chunk::TrailerLf => match b {
                b'\n' => Chunk::TrailerStart,
                _ => return Err(DecodeError::Trailer),
            },
            Chunk::EndLf => match b {
                b'\n' => return Ok(Step::Done),
                _ => return Err(DecodeError::Trailer),
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the body, or
    /// the error, and what was left after the body.
    fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
        let mut d = Decoder::chunked(64);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::Done => return Ok((out, buf.to_vec())),
                Step::NeedMore => {
                    assert!(fed < input.len(), "ran out of input");
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_in_any_split() {
        let input = b"5\r\nhello\r\nA;name=value\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, input.len()] {
            let (body, rest) = run(input, step).unwrap();
            assert_eq!(body, b"hello0123456789", "step {step}");
            // Only as much as was fed past the body stays.
            assert!(b"NEXT".starts_with(&rest), "step {step}");
        }
    }

    #[test]
    fn chunked_errors() {
        for (input, err) in [
            (&b"x\r\n"[..], DecodeError::ChunkSize),
            (b"5\nhello\r\n0\r\n\r\n", DecodeError::ChunkSize),
            (b"5\r\nhelloXX0\r\n\r\n", DecodeError::ChunkEnd),
            (b"11111111111111111\r\n", DecodeError::ChunkSize),
            (b"-1\r\n", DecodeError::ChunkSize),
            (b"0\r\nX: 1\n\r\n", DecodeError::Trailer),
        ] {
            assert_eq!(run(input, 4).unwrap_err(), err, "{input:?}");
        }
        let long_trailer = format!("0\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(
            run(long_trailer.as_bytes(), 8).unwrap_err(),
            DecodeError::TrailersTooLarge
        );
        let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(MAX_EXTENSION + 1));
        assert_eq!(
            run(long_ext.as_bytes(), 100).unwrap_err(),
            DecodeError::ExtensionTooLong
        );
    }

    #[test]
    fn sixteen_digit_sizes_are_read_exactly() {
        let mut d = Decoder::chunked(64);
        let mut buf = BytesMut::from(&b"00000000000000ff\r\nab"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Ok(Step::Data(Bytes::from_static(b"ab")))
        );
        assert!(matches!(
            d,
            Decoder::Chunked {
                state: Chunk::Data { left: 253 },
                ..
            }
        ));
    }

    #[test]
    fn length_stops_at_its_end() {
        let mut d = Decoder::length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Ok(Step::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(d.decode(&mut buf), Ok(Step::Done));
        assert_eq!(&buf[..], b"def");
        assert_eq!(Decoder::length(0), Decoder::Done);
    }
}
