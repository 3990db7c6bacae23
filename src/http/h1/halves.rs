//! The connection's two halves, reading without a resident buffer, and the
//! connection after an upgrade.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::h1::Rewind;

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The read half of a client connection and the bytes read but not yet used.
pub(crate) struct ReadSide {
    pub(crate) io: BoxRead,
    pub(crate) buf: BytesMut,
}

impl ReadSide {
    pub(crate) fn new(io: BoxRead) -> ReadSide {
        ReadSide {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Reads what the socket has into `buf`; `Ok(0)` at end of stream.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        crate::http::h1::poll_fill(&mut self.io, &mut self.buf, cx)
    }

    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// A client connection handed over after `101 Switching Protocols`: the
/// bytes the client sent after its request first, then the socket.
pub(crate) type Upgraded = Rewind<Joined>;

/// What a connection holds while it lives (its slot and gauge in the
/// server's accounting), kept by the upgraded connection until it closes.
pub(crate) type Held = Box<dyn Send>;

pub(crate) fn upgraded(read: ReadSide, write: BoxWrite, held: Option<Held>) -> Upgraded {
    Rewind::new(
        read.buf.freeze(),
        Joined {
            read: read.io,
            write,
            _held: held,
        },
    )
}

/// The two halves of a client connection as one stream. It keeps the
/// connection's slot and gauge while a tunnel runs on it.
pub(crate) struct Joined {
    read: BoxRead,
    write: BoxWrite,
    _held: Option<Held>,
}

impl AsyncRead for Joined {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Joined {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.write.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}
