//! HTTP/1.1 connections to upstreams, pooled per upstream.
//!
//! A connection is taken from its upstream's idle stack (most recently used
//! first), used for one exchange, and given back as soon as the response
//! body has been read to its end. Nothing is spawned per request: only the
//! connection itself runs as a task. A pooled connection the upstream closed
//! in the meantime is noticed before the request is written, and the request
//! goes out on a fresh connection instead.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use super::coarse::now_ms;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::ForwardBody;

/// Idle connections kept per upstream and worker at most.
pub const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// Pools per upstream: one per worker thread, so a connection is only ever
/// used by the thread whose runtime drives it.
pub const WORKER_SLOTS: usize = 64;

thread_local! {
    static WORKER_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `id` (1-based; 0 is every other thread).
pub fn set_worker_slot(id: usize) {
    WORKER_SLOT.with(|s| s.set(id % WORKER_SLOTS));
}

/// The idle connections to one upstream, one [`Pool`] per worker thread.
pub struct Pools(Box<[Arc<Pool>]>);

impl Pools {
    pub fn new(idle_timeout: Duration) -> Pools {
        Pools((0..WORKER_SLOTS).map(|_| Pool::new(idle_timeout)).collect())
    }

    /// The pool of the current worker thread.
    pub fn current(&self) -> &Arc<Pool> {
        &self.0[WORKER_SLOT.with(|s| s.get())]
    }

    pub fn reap(&self) {
        for pool in self.0.iter() {
            pool.reap();
        }
    }
}

/// The idle connections to one upstream.
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    idle_timeout_ms: u64,
}

struct Idle {
    sender: SendRequest<ForwardBody>,
    /// [`now_ms`] when it was given back.
    since: u64,
}

impl Pool {
    pub fn new(idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            idle_timeout_ms: idle_timeout.as_millis() as u64,
        })
    }

    fn checkout(&self) -> Option<SendRequest<ForwardBody>> {
        let now = now_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && now - conn.since < self.idle_timeout_ms {
                return Some(conn.sender);
            }
        }
        None
    }

    fn give_back(&self, sender: SendRequest<ForwardBody>) {
        if sender.is_closed() {
            return;
        }
        let since = now_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push(Idle { sender, since });
        }
    }

    /// Drops idle connections older than the idle timeout (closing them).
    pub fn reap(&self) {
        let now = now_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| !c.sender.is_closed() && now - c.since < self.idle_timeout_ms);
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Where and how to connect to one upstream.
pub struct Endpoint {
    /// `host:port` for `TcpStream::connect`.
    pub addr: String,
    /// For TLS (`https://` upstreams): the name to verify.
    pub tls_name: Option<ServerName<'static>>,
}

/// Why an exchange failed.
// Returned once per failed attempt and matched right away; boxing the
// request would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum SendError {
    /// No connection could be made: nothing was sent, and the request is
    /// handed back.
    Connect {
        error: io::Error,
        req: Request<ForwardBody>,
    },
    /// The exchange failed after the request (or part of it) went out.
    Exchange(hyper::Error),
}

/// Makes connections and runs exchanges.
pub struct Connector {
    pub connect_timeout: Duration,
    /// Set when some upstream is `https://`.
    pub tls: Option<TlsConnector>,
}

impl Connector {
    /// Sends `req` on a pooled or new connection. Returns the response and
    /// the connection, to be given back once the body has been read.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        pool: &Arc<Pool>,
        mut req: Request<ForwardBody>,
    ) -> Result<(Response<Incoming>, SendRequest<ForwardBody>), SendError> {
        loop {
            let (mut sender, reused) = match pool.checkout() {
                Some(sender) => (sender, true),
                None => match self.connect(endpoint).await {
                    Ok(sender) => (sender, false),
                    Err(error) => return Err(SendError::Connect { error, req }),
                },
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok((res, sender)),
                Err(mut e) => match e.take_message() {
                    // The pooled connection died before the request was
                    // written: send it on another.
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> io::Result<SendRequest<ForwardBody>> {
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
            let (sender, conn) = http1::Builder::new()
                .handshake::<_, ForwardBody>(TokioIo::new(io))
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection closed with error");
                }
            });
            Ok(sender)
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(res) => res,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
        }
    }
}

/// A plain or TLS connection to an upstream.
enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
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
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream response body that gives its connection back to the pool
/// once read to the end (or, when it had no body, once dropped).
pub struct UpstreamBody {
    inner: Incoming,
    conn: Option<(Arc<Pool>, SendRequest<ForwardBody>)>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, pool: Arc<Pool>, sender: SendRequest<ForwardBody>) -> Self {
        UpstreamBody {
            inner,
            conn: Some((pool, sender)),
        }
    }

    fn release(&mut self) {
        if let Some((pool, sender)) = self.conn.take() {
            pool.give_back(sender);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Unfinished bodies close their connection: the rest of the
        // response is still on the wire.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = res {
            self.release();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
