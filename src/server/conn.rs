//! Per-connection bookkeeping: the open-connection gauge and permit (every
//! connection), and for connections hyper serves (HTTP/2, the admin
//! listener) the header-read and idle timeouts. The HTTP/1 connection loop
//! (`h1`) keeps its own timers.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection
//! waits for its next request, so it would close idle connections after the
//! (short) header timeout. Here the two are separate: the header clock starts
//! with the first byte of a request head, the idle clock when the last
//! response finished, and a watchdog per connection closes it when the
//! running clock passes its limit. The watchdog is a task of its own, so the
//! connection's hot path only checks a flag.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};

use super::close::Close;
use super::shutdown::{Phase, Shutdown};
use crate::http::body::{Body, BoxError};
use crate::metrics::Metrics;

use crate::time::coarse::monotonic_ms;

/// What the watchdog needs to know about one connection.
pub(crate) struct ConnState {
    /// Requests whose response has not finished yet.
    active: AtomicUsize,
    /// When the first byte of the next request head arrived (0 = none yet).
    head_started: AtomicU64,
    /// When the connection last became idle.
    idle_since: AtomicU64,
    /// HTTP/2: many streams, control frames between them; only the idle clock applies.
    h2: AtomicBool,
    /// Since when a write to the client has been blocked on a full socket
    /// (0 = not blocked): a client that stops reading a response is cut off
    /// after the idle timeout instead of holding its slot forever.
    write_blocked_since: AtomicU64,
    /// Set by the watchdog: the connection closes at its next poll.
    close: AtomicBool,
    /// Set by the watchdog on shutdown: the connection finishes its request
    /// in flight, then closes.
    drain: AtomicBool,
    close_waker: AtomicWaker,
    /// The connection has ended: the watchdog stops.
    done: Notify,
}

impl ConnState {
    pub(crate) fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            active: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(monotonic_ms()),
            h2: AtomicBool::new(false),
            write_blocked_since: AtomicU64::new(0),
            close: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            close_waker: AtomicWaker::new(),
            done: Notify::new(),
        })
    }

    fn close(&self) {
        self.close.store(true, Ordering::Release);
        self.close_waker.wake();
    }

    fn drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.close_waker.wake();
    }

    /// Tells the watchdog the connection is over.
    pub(crate) fn finished(&self) {
        self.done.notify_one();
    }

    pub(crate) fn set_h2(&self) {
        if !self.h2.load(Ordering::Relaxed) {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    fn on_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(monotonic_ms(), Ordering::Relaxed);
        }
    }

    fn on_write(&self, blocked: bool) {
        let since = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked && since == 0 {
            self.write_blocked_since
                .store(monotonic_ms(), Ordering::Relaxed);
        } else if !blocked && since != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// Resolves when the connection has been idle longer than `idle`, has
    /// taken longer than `header` to send a request head, or has not taken
    /// any of its response for longer than `idle`.
    async fn expired(&self, header: Duration, idle: Duration) -> Close {
        let header_ms = header.as_millis() as u64;
        let idle_ms = idle.as_millis() as u64;
        loop {
            let now = monotonic_ms();
            let wait_ms = if self.active.load(Ordering::Relaxed) > 0 {
                let blocked = self.write_blocked_since.load(Ordering::Relaxed);
                if blocked != 0 && now >= blocked + idle_ms {
                    return Close::ClientStoppedReading;
                }
                header_ms.min(idle_ms)
            } else {
                let started = self.head_started.load(Ordering::Relaxed);
                if started != 0 && !self.h2.load(Ordering::Relaxed) {
                    let deadline = started + header_ms;
                    if now >= deadline {
                        return Close::HeadTimeout;
                    }
                    deadline - now
                } else {
                    let deadline = self.idle_since.load(Ordering::Relaxed) + idle_ms;
                    if now >= deadline {
                        return Close::Idle;
                    }
                    // Wake at least once per header timeout: a request head
                    // may start arriving meanwhile, and its clock is shorter.
                    (deadline - now).min(header_ms)
                }
            };
            tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        }
    }
}

/// Watches one connection in a task of its own: drains it when the server
/// drains, closes it when a timeout passes or the server stops;
/// ends when the connection reports [`ConnState::finished`].
pub(crate) fn spawn_watchdog(
    state: Arc<ConnState>,
    header: Duration,
    idle: Duration,
    mut shutdown: Shutdown,
    peer: std::net::SocketAddr,
) {
    tokio::spawn(async move {
        let mut seen = Phase::Serving;
        loop {
            tokio::select! {
                reason = state.expired(header, idle) => {
                    tracing::debug!(%peer, %reason, "closing connection");
                    state.close();
                    return;
                }
                phase = shutdown.after(seen) => {
                    seen = phase;
                    if phase == Phase::Stopped {
                        state.close();
                        return;
                    }
                    state.drain();
                }
                _ = state.done.notified() => return,
            }
        }
    });
}

pin_project_lite::pin_project! {
    /// Runs a connection until it ends (`Some(result)`), shutting it down
    /// gracefully when the watchdog drains it, or until the watchdog closes
    /// it (`None`).
    pub(crate) struct UntilClosed<F> {
        #[pin]
        conn: F,
        state: Arc<ConnState>,
        draining: bool,
    }
}

impl<F> UntilClosed<F> {
    pub(crate) fn new(conn: F, state: Arc<ConnState>) -> Self {
        UntilClosed {
            conn,
            state,
            draining: false,
        }
    }
}

impl<F: GracefulConnection> Future for UntilClosed<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        this.state.close_waker.register(cx.waker());
        if this.state.close.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        if !*this.draining && this.state.drain.load(Ordering::Acquire) {
            *this.draining = true;
            this.conn.as_mut().graceful_shutdown();
        }
        this.conn.poll(cx).map(Some)
    }
}

/// Marks a request in progress on its connection until dropped.
pub(crate) struct ActiveGuard(Arc<ConnState>);

impl ActiveGuard {
    pub(crate) fn new(state: &Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Ordering::Relaxed);
        state.head_started.store(0, Ordering::Relaxed);
        ActiveGuard(state.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(monotonic_ms(), Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted as active until hyper has
/// written (or dropped) it.
pub(crate) struct TrackedBody {
    inner: Body,
    _guard: ActiveGuard,
}

impl TrackedBody {
    pub(crate) fn new(inner: Body, guard: ActiveGuard) -> Self {
        TrackedBody {
            inner,
            _guard: guard,
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Owned by a connection's IO for as long as it is open (including as an
/// upgraded tunnel): keeps its slot under `server.max_connections` and the
/// open-connection gauge up.
pub(crate) struct ConnTicket {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    /// The count shutdown waits on.
    open: Arc<watch::Sender<usize>>,
}

impl ConnTicket {
    pub(crate) fn new(
        permit: OwnedSemaphorePermit,
        metrics: Arc<Metrics>,
        open: Arc<watch::Sender<usize>>,
    ) -> Self {
        metrics.open_connections.inc();
        metrics.connections.inc();
        open.send_modify(|n| *n += 1);
        ConnTicket {
            _permit: permit,
            metrics,
            open,
        }
    }
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        self.metrics.open_connections.dec();
        self.open.send_modify(|n| *n -= 1);
    }
}

/// A client stream that reports reads and blocked writes to its [`ConnState`].
pub(crate) struct TrackedStream<S> {
    inner: S,
    state: Arc<ConnState>,
    _ticket: ConnTicket,
}

impl<S> TrackedStream<S> {
    pub(crate) fn new(inner: S, state: Arc<ConnState>, ticket: ConnTicket) -> Self {
        TrackedStream {
            inner,
            state,
            _ticket: ticket,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.state.on_write(res.is_pending());
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.state.on_write(res.is_pending());
        res
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
