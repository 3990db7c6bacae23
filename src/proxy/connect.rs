//! Connections to upstreams: TCP, with TLS for `https://` upstreams, and
//! what was read from one but not yet used.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::http::h1::{poll_fill, write_all, Rewind};

/// Where and how to connect to one upstream.
pub struct Endpoint {
    /// `host:port` for `TcpStream::connect`.
    pub addr: String,
    /// For TLS (`https://` upstreams): the name to verify.
    pub tls_name: Option<ServerName<'static>>,
}

/// Makes connections and runs exchanges.
pub struct Connector {
    pub connect_timeout: Duration,
    /// Set when some upstream is `https://`.
    pub tls: Option<TlsConnector>,
}

impl Connector {
    pub(super) async fn connect(&self, endpoint: &Endpoint) -> io::Result<UpstreamConn> {
        let connecting = async {
            let tcp = TcpStream::connect(endpoint.addr.as_str()).await?;
            tcp.set_nodelay(true)?;
            let io = match (&endpoint.tls_name, &self.tls) {
                (Some(name), Some(tls)) => {
                    UpstreamIo::Tls(Box::new(tls.connect(name.clone(), tcp).await?))
                }
                (Some(_), None) => {
                    return Err(io::Error::other("https upstream without TLS configuration"));
                }
                (None, _) => UpstreamIo::Plain(tcp),
            };
            Ok(UpstreamConn {
                io,
                buf: BytesMut::new(),
            })
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(res) => res,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
        }
    }
}

/// A connection to an upstream, and what was read from it but not yet used.
pub struct UpstreamConn {
    pub(super) io: UpstreamIo,
    pub(super) buf: BytesMut,
}

impl UpstreamConn {
    /// False when a pooled connection has been closed (or has sent
    /// something unasked) while it waited: a read that does not wait.
    pub(super) fn still_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        matches!(
            poll_fill(&mut self.io, &mut self.buf, &mut cx),
            Poll::Pending
        )
    }

    /// The connection as a stream for a tunnel, with what was read past the
    /// response head read first.
    pub(crate) fn into_stream(self) -> Rewind<UpstreamIo> {
        Rewind::new(self.buf.freeze(), self.io)
    }

    /// Writes `pending` then `extra`, and clears `pending`.
    pub(super) async fn write(&mut self, pending: &mut Vec<u8>, extra: &[&[u8]]) -> io::Result<()> {
        let mut bufs = [
            IoSlice::new(pending),
            IoSlice::new(extra.first().copied().unwrap_or_default()),
            IoSlice::new(extra.get(1).copied().unwrap_or_default()),
        ];
        let res = write_all(&mut self.io, &mut bufs).await;
        pending.clear();
        res
    }

    /// True when nothing was read past the last response: a connection
    /// that can be trusted again.
    pub(super) fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }
}

/// A plain or TLS connection to an upstream.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-memory connection, for tests of the exchange.
    #[cfg(test)]
    Mem(tokio::io::DuplexStream),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(test)]
            UpstreamIo::Mem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(test)]
            UpstreamIo::Mem(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(test)]
            UpstreamIo::Mem(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
            #[cfg(test)]
            UpstreamIo::Mem(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            UpstreamIo::Mem(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            UpstreamIo::Mem(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
