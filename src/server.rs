//! Listeners, TLS, connection limits, dispatch, access log, graceful shutdown,
//! configuration reload.
//!
//! [`run`] takes bound listeners and a shutdown future, so tests (and `main`)
//! start the whole gateway on any port. The public listener speaks HTTP/1.1
//! and h2c, or HTTPS (ALPN `h2`, `http/1.1`) when `[server.tls]` is set; the
//! admin listener plain HTTP.
//!
//! Threads: the caller's runtime accepts connections, serves the admin
//! listener and handles signals and reloads. Public connections are handed
//! round robin to worker threads (`TOKIO_WORKER_THREADS`, default one per
//! CPU), each with a single-threaded runtime that also drives the upstream
//! connections its requests use, so a request never crosses threads.

mod conn;
pub mod h1;
mod tls;

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::Level;

use crate::app::App;
use crate::config::{Config, ServerConfig};
use crate::ctx::{RequestCtx, RequestId, GENERATED_LEN};
use crate::http::body::RequestBody;
use crate::http::Reply;
use crate::metrics::Metrics;
use crate::proxy::{self, headers};

use self::conn::{ActiveGuard, ConnState, ConnTicket, TrackedBody, TrackedStream, UntilClosed};

/// Connections the admin listener serves at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;
/// How often `watch_config = true` looks at the file's modification time.
pub const CONFIG_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The bound sockets the gateway serves.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `server.listen` and, when set, `server.admin_listen`.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let public = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("server.listen: cannot bind {}", config.server.listen))?;
        let admin = match config.server.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("server.admin_listen: cannot bind {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners { public, admin })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Public,
    Admin,
}

/// What every connection task shares.
struct Shared {
    app: ArcSwap<App>,
    metrics: Arc<Metrics>,
    builder: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_header_size: usize,
    tls: Option<TlsAcceptor>,
    public_slots: Arc<Semaphore>,
    admin_slots: Arc<Semaphore>,
    /// Set on shutdown: every connection finishes what it is doing and closes.
    drain: watch::Sender<bool>,
    /// Set when the drain deadline passes: connections still open close now.
    hard_stop: watch::Sender<bool>,
    /// Client connections open (public and admin, tunnels included).
    open: Arc<watch::Sender<usize>>,
    /// Bumped when a reload swaps `app`: workers let go of the old one.
    reloaded: watch::Sender<u64>,
}

/// The shutdown signals a connection watches.
#[derive(Clone)]
struct Signals {
    drain: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
    /// A worker thread's own (see [`relay_signals_to_worker`]).
    worker: bool,
}

thread_local! {
    /// A worker thread's own copy of the shutdown signals: waiting on a
    /// channel registers the waiter under the channel's lock, and one
    /// channel per worker keeps that lock to a single thread.
    static WORKER_SIGNALS: std::cell::RefCell<Option<Signals>> =
        const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// A worker thread's handle on the live [`App`]: its own reference
    /// count, so requests on different workers do not contend for the
    /// `App`'s. Replaced when a reload swaps the `App`; the one it holds
    /// stays alive until then, so its address cannot be reused by another.
    static WORKER_APP: std::cell::RefCell<Option<Arc<LiveApp>>> =
        const { std::cell::RefCell::new(None) };
}

/// The live [`App`] as one request holds it.
struct LiveApp(Arc<App>);

impl std::ops::Deref for LiveApp {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl Shared {
    /// The live `App`, for one request.
    fn app(&self) -> Arc<LiveApp> {
        let on_worker = WORKER_SIGNALS.with(|s| s.borrow().is_some());
        if !on_worker {
            return Arc::new(LiveApp(self.app.load_full()));
        }
        let live = self.app.load();
        WORKER_APP.with(|cached| {
            let mut cached = cached.borrow_mut();
            match &*cached {
                Some(app) if Arc::ptr_eq(&app.0, &*live) => app.clone(),
                _ => {
                    let app = Arc::new(LiveApp(arc_swap::Guard::into_inner(live)));
                    *cached = Some(app.clone());
                    app
                }
            }
        })
    }

    fn signals(&self) -> Signals {
        WORKER_SIGNALS
            .with(|s| s.borrow().clone())
            .unwrap_or_else(|| Signals {
                drain: self.drain.subscribe(),
                hard_stop: self.hard_stop.subscribe(),
                worker: false,
            })
    }
}

/// Relays the server's shutdown signals to channels of the current worker
/// thread (see [`WORKER_SIGNALS`]).
fn relay_signals_to_worker(shared: &Shared) {
    let relay = |global: &watch::Sender<bool>, idle_too: bool| {
        let (tx, rx) = watch::channel(false);
        let mut global = global.subscribe();
        tokio::spawn(async move {
            if global.wait_for(|on| *on).await.is_ok() {
                tx.send_replace(true);
                if idle_too {
                    h1::idle::start_draining();
                }
            }
            // Kept until the worker stops, so receivers never see it closed.
            std::future::pending::<()>().await;
        });
        rx
    };
    let signals = Signals {
        drain: relay(&shared.drain, true),
        hard_stop: relay(&shared.hard_stop, false),
        worker: true,
    };
    WORKER_SIGNALS.with(|s| *s.borrow_mut() = Some(signals));
    // A replaced App is released by an idle worker too, not only when its
    // next request sees the new one.
    let mut reloaded = shared.reloaded.subscribe();
    tokio::spawn(async move {
        while reloaded.changed().await.is_ok() {
            WORKER_APP.with(|app| app.borrow_mut().take());
        }
    });
}

/// Builds the [`App`] for `config` and serves it until `shutdown` resolves,
/// then drains connections for up to `server.shutdown_grace`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let app = App::build(config, metrics).await?;
    serve(app, listeners, shutdown).await
}

/// Serves an already built [`App`]; see [`run`].
pub async fn serve(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = app.config.server.clone();
    let tls = match &server.tls {
        Some(t) => Some(tls::acceptor(t)?),
        None => None,
    };
    let shared = Arc::new(Shared {
        metrics: app.metrics.clone(),
        app: ArcSwap::from_pointee(app),
        builder: connection_builder(&server),
        header_read_timeout: server.header_read_timeout,
        idle_timeout: server.idle_timeout,
        max_header_size: server.max_header_size,
        tls,
        public_slots: Arc::new(Semaphore::new(server.max_connections)),
        admin_slots: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
        drain: watch::channel(false).0,
        hard_stop: watch::channel(false).0,
        reloaded: watch::channel(0).0,
        open: Arc::new(watch::channel(0).0),
    });
    let Listeners { public, admin } = listeners;
    let workers = Workers::start(worker_count(), &shared)?;
    let mut reloads = reload_triggers(&shared);
    tracing::info!(
        addr = %public.local_addr()?,
        tls = shared.tls.is_some(),
        "public listener ready"
    );
    if let Some(admin) = &admin {
        tracing::info!(addr = %admin.local_addr()?, "admin listener ready");
    }

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (res, kind) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(source) = reloads.recv() => {
                tokio::spawn(reload(shared.clone(), source));
                continue;
            }
            res = public.accept() => (res, Kind::Public),
            res = accept(admin.as_ref()) => (res, Kind::Admin),
        };
        match res {
            Ok((stream, peer)) => accept_connection(&shared, &workers, stream, peer, kind),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, ?kind, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // Stop accepting: new connections are refused from here on.
    drop(public);
    drop(admin);
    let app = shared.app.load_full();
    let grace = app.config.server.shutdown_grace;
    let tunnels = app.proxy.tunnels().clone();
    tracing::info!(
        connections = *shared.open.borrow(),
        tunnels = tunnels.active(),
        ?grace,
        "shutting down: draining"
    );
    shared.drain.send_replace(true);
    let drained = async {
        let _ = shared.open.subscribe().wait_for(|n| *n == 0).await;
        tunnels.drained().await;
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(()) => tracing::info!("drained; stopped"),
        Err(_) => tracing::warn!(
            connections = *shared.open.borrow(),
            tunnels = tunnels.active(),
            "shutdown grace expired; closing the remaining connections"
        ),
    }
    shared.hard_stop.send_replace(true);
    tunnels.stop_all();
    workers.stop().await;
    Ok(())
}

/// Worker threads serving the public listener's connections: `TOKIO_WORKER_THREADS`,
/// else one per CPU.
fn worker_count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A connection accepted by the listener loop, on its way to a worker.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    ticket: ConnTicket,
}

/// The worker threads. Each runs a single-threaded runtime and serves the
/// connections handed to it, round robin, from accept to close, together with
/// the upstream connections it opens (see `proxy::pool`): like an nginx
/// worker, a request is handled on one thread with no cross-thread wakeups.
struct Workers {
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
    next: std::sync::atomic::AtomicUsize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Tasks a worker polls before it checks its sockets again while tasks
/// are still queued (tokio's default is 61). Under saturation the queue
/// rarely empties, and a socket that became ready waited behind up to 61
/// other tasks: checking more often serves connections closer to the order
/// they became ready in, which trims the latency tail (see
/// `bench/README.md`).
const WORKER_EVENT_INTERVAL: u32 = 16;

impl Workers {
    fn start(count: usize, shared: &Arc<Shared>) -> anyhow::Result<Workers> {
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for id in 1..=count {
            let (tx, mut rx) = mpsc::unbounded_channel::<Handoff>();
            let shared = shared.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .event_interval(WORKER_EVENT_INTERVAL)
                .build()
                .context("cannot start a worker runtime")?;
            let thread = std::thread::Builder::new()
                .name(format!("sis-worker-{id}"))
                .spawn(move || {
                    proxy::pool::set_worker_slot(id);
                    crate::time::timer::start_worker();
                    runtime.block_on(async move {
                        relay_signals_to_worker(&shared);
                        while let Some(h) = rx.recv().await {
                            match TcpStream::from_std(h.stream) {
                                Ok(stream) if shared.tls.is_none() => {
                                    tokio::spawn(serve_plain(
                                        shared.clone(),
                                        stream,
                                        h.peer,
                                        h.ticket,
                                    ));
                                }
                                Ok(stream) => {
                                    tokio::spawn(serve_connection(
                                        shared.clone(),
                                        stream,
                                        h.peer,
                                        Kind::Public,
                                        h.ticket,
                                    ));
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot register a connection")
                                }
                            }
                        }
                    });
                    // What this thread kept for its requests goes while the
                    // runtime it belongs to is still there.
                    crate::time::timer::end_worker();
                    WORKER_APP.with(|app| app.borrow_mut().take());
                    // Dropping the runtime ends what is left: pooled upstream
                    // connections, connections past the drain deadline.
                    drop(runtime);
                })
                .context("cannot start a worker thread")?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Workers {
            senders,
            next: std::sync::atomic::AtomicUsize::new(0),
            threads,
        })
    }

    fn dispatch(&self, handoff: Handoff) {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.senders.len();
        if self.senders[i].send(handoff).is_err() {
            tracing::error!(worker = i + 1, "worker gone; connection dropped");
        }
    }

    /// Ends the workers once their connections are done, and waits for them.
    async fn stop(self) {
        drop(self.senders);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn connection_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Header and idle timeouts are enforced per connection (see conn.rs);
        // hyper's own header timeout would also close idle keep-alive connections.
        .header_read_timeout(None)
        // A request head that does not fit is answered 431 by hyper.
        .max_buf_size(server.max_header_size.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_size).unwrap_or(u32::MAX));
    builder
}

fn accept_connection(
    shared: &Arc<Shared>,
    workers: &Workers,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
) {
    let slots = match kind {
        Kind::Public => &shared.public_slots,
        Kind::Admin => &shared.admin_slots,
    };
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        shared.metrics.connections_rejected.inc();
        tracing::debug!(%peer, ?kind, "connection limit reached; closing");
        return;
    };
    let _ = stream.set_nodelay(true);
    let ticket = ConnTicket::new(permit, shared.metrics.clone(), shared.open.clone());
    match kind {
        Kind::Public => match stream.into_std() {
            Ok(stream) => workers.dispatch(Handoff {
                stream,
                peer,
                ticket,
            }),
            Err(e) => tracing::warn!(%peer, error = %e, "cannot hand a connection over"),
        },
        Kind::Admin => {
            tokio::spawn(serve_connection(shared.clone(), stream, peer, kind, ticket));
        }
    }
}

/// Serves one accepted connection. Public connections speak HTTP/1.1 to the
/// gateway's own server ([`h1`]) and HTTP/2 (h2c with prior knowledge, or
/// ALPN `h2`) to hyper's; the admin listener is served by hyper.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    ticket: ConnTicket,
) {
    match (&shared.tls, kind) {
        (Some(acceptor), Kind::Public) => {
            let state = ConnState::new();
            let io = TrackedStream::new(stream, state.clone(), ticket);
            // Boxed, as the HTTP/2 arms below: the connection task is as
            // large as its largest state, and the HTTP/1 arm is the one that
            // should decide it.
            let handshake = Box::pin(tokio::time::timeout(
                shared.header_read_timeout,
                acceptor.accept(io),
            ));
            match handshake.await {
                Ok(Ok(tls)) => {
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        Box::pin(serve_http(
                            &shared,
                            TokioIo::new(tls),
                            peer,
                            kind,
                            true,
                            state,
                        ))
                        .await
                    } else {
                        let (read, write) = tokio::io::split(tls);
                        h1::serve(
                            shared.clone(),
                            Box::new(read),
                            Box::new(write),
                            peer,
                            true,
                            None,
                        )
                        .await
                    }
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
        (None, Kind::Public) => serve_plain(shared, stream, peer, ticket).await,
        (_, Kind::Admin) => serve_plain_with_hyper(&shared, stream, peer, kind, ticket).await,
    }
}

/// A public connection without TLS: HTTP/1.1, or h2c with prior knowledge.
/// Its own task, kept apart from the TLS and admin paths so that the task
/// of a waiting HTTP/1 connection is no larger than HTTP/1 needs.
async fn serve_plain(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, ticket: ConnTicket) {
    match starts_with_h2_preface(&stream, &shared).await {
        Some(true) => serve_plain_with_hyper(&shared, stream, peer, Kind::Public, ticket).await,
        Some(false) => {
            let (read, write) = stream.into_split();
            h1::serve(
                shared,
                Box::new(read),
                Box::new(write),
                peer,
                false,
                Some(ticket),
            )
            .await
        }
        None => tracing::debug!(%peer, "closed before a request"),
    }
}

/// A plain connection served by hyper (h2c, or the admin listener), boxed
/// so that its state does not size the caller's.
async fn serve_plain_with_hyper(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    ticket: ConnTicket,
) {
    let state = ConnState::new();
    let io = TrackedStream::new(stream, state.clone(), ticket);
    Box::pin(serve_http(
        shared,
        TokioIo::new(io),
        peer,
        kind,
        false,
        state,
    ))
    .await
}

/// Whether a plain connection opens with the HTTP/2 connection preface
/// (h2c with prior knowledge). Only peeks, so either server reads the
/// bytes itself. `None`: the connection closed, stayed silent past the idle
/// timeout, or the server is shutting down.
async fn starts_with_h2_preface(stream: &TcpStream, shared: &Shared) -> Option<bool> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut drain = shared.signals().drain;
    let ready = tokio::select! {
        biased;
        _ = drain.wait_for(|d| *d) => return None,
        ready = tokio::time::timeout(shared.idle_timeout, stream.readable()) => ready,
    };
    if !matches!(ready, Ok(Ok(()))) {
        return None;
    }
    let deadline = Instant::now() + shared.header_read_timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        // A prefix of the preface: wait for the rest (it normally comes in
        // one segment).
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve_http<I>(
    shared: &Arc<Shared>,
    io: I,
    peer: SocketAddr,
    kind: Kind,
    tls: bool,
    state: Arc<ConnState>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        let state = state.clone();
        service_fn(move |req: Request<Incoming>| {
            let guard = ActiveGuard::new(&state);
            if req.version() == Version::HTTP_2 {
                state.set_h2();
            }
            let shared = shared.clone();
            // Boxed: hyper keeps room for one request future per connection
            // for the connection's whole life. Unboxed, that room is as large
            // as the deepest request path (auth, store, upstream) and stays
            // resident on every idle keep-alive connection; boxed, it is a
            // pointer, and the request's state lives only while it runs.
            Box::pin(async move {
                let res = match kind {
                    Kind::Public => public_request(&shared, req.map(RequestBody::from), peer, tls)
                        .await
                        .into_response(),
                    Kind::Admin => {
                        let app = shared.app.load_full();
                        crate::admin::handle(&app, req.map(RequestBody::from)).await
                    }
                };
                Ok::<_, Infallible>(res.map(|body| TrackedBody::new(body, guard)))
            })
        })
    };
    conn::spawn_watchdog(
        state.clone(),
        shared.header_read_timeout,
        shared.idle_timeout,
        shared.signals().drain,
        shared.signals().hard_stop,
        peer,
    );
    let conn = shared.builder.serve_connection_with_upgrades(io, service);
    if let Some(Err(e)) = UntilClosed::new(conn, state.clone()).await {
        tracing::debug!(%peer, error = %e, "connection closed with error");
    }
    state.finished();
}

/// One request on the public listener: request id, client address, dispatch,
/// metrics and the access log line.
async fn public_request(
    shared: &Shared,
    req: Request<RequestBody>,
    peer: SocketAddr,
    tls: bool,
) -> Reply {
    let start = Instant::now();
    let app = shared.app();
    let trusted_proxies = &app.config.server.trusted_proxies;
    let trusted = proxy::is_trusted(trusted_proxies, peer.ip());

    let kept = trusted
        .then(|| req.headers().get(&crate::ctx::X_REQUEST_ID))
        .flatten()
        .filter(|v| valid_request_id(v));
    let request_id = match kept {
        Some(id) => RequestId::kept(id.clone()),
        None => new_request_id(),
    };
    let client_ip = if trusted {
        headers::client_ip_from_forwarded(req.headers(), peer.ip().to_canonical(), |ip| {
            proxy::is_trusted(trusted_proxies, ip)
        })
    } else {
        peer.ip().to_canonical()
    };
    let ctx = RequestCtx {
        peer,
        client_ip,
        request_id,
        tls,
        upstream: OnceLock::new(),
        adoption: OnceLock::new(),
    };
    // Only pay for copying what the log line needs when it is written.
    let log = tracing::enabled!(target: "access", Level::INFO).then(|| {
        (
            req.method().clone(),
            req.version(),
            req.uri().path().to_owned(),
        )
    });

    let handled = std::pin::pin!(app.handle(req, &ctx)).await;
    let mut reply = handled.response;
    let elapsed = start.elapsed();
    let status = reply.response.status().as_u16();
    handled.route.record(status, elapsed);
    if let Some((method, version, path)) = log {
        let upstream = ctx.upstream.get().map(|u| &**u);
        let adoption = ctx.adoption.get().copied();
        tracing::info!(
            target: "access",
            method = %method,
            path = %path,
            version = ?version,
            route = %handled.route.name,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream,
            adoption,
            request_id = %ctx.request_id,
            client_ip = %ctx.client_ip,
        );
    }
    reply.request_id = Some(ctx.request_id);
    reply
}

/// A request id from a trusted proxy is kept when it is 1–128 visible ASCII
/// characters; anything else is replaced.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// A random (v4) UUID. Request ids need to be unique, not secret, so they
/// come from a per-thread generator seeded once from the OS.
fn new_request_id() -> RequestId {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
            a ^ b.rotate_left(32)
        });
    }
    // splitmix64
    fn next(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let bytes = STATE.with(|s| {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&next(s).to_le_bytes());
        out[8..].copy_from_slice(&next(s).to_le_bytes());
        out
    });
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0u8; GENERATED_LEN];
    uuid.hyphenated().encode_lower(&mut text);
    RequestId::generated(text)
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy)]
enum ReloadSource {
    Signal,
    FileChanged,
}

/// SIGHUP, and with `server.watch_config` a change of the file's
/// modification time, both for configs loaded from a file.
fn reload_triggers(shared: &Arc<Shared>) -> mpsc::Receiver<ReloadSource> {
    let (tx, rx) = mpsc::channel(4);
    let app = shared.app.load();
    let Some(path) = app.config.path.clone() else {
        return rx;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send(ReloadSource::Signal).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload on signal is off")
            }
        }
    }
    if app.config.server.watch_config {
        tokio::spawn(async move {
            let modified =
                |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last: Option<SystemTime> = modified(&path);
            loop {
                tokio::time::sleep(CONFIG_WATCH_INTERVAL).await;
                let now = modified(&path);
                if now.is_some() && now != last {
                    last = now;
                    if tx.send(ReloadSource::FileChanged).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
    rx
}

/// Re-reads the config file and swaps in a new [`App`]. An invalid file is
/// logged and the running configuration kept. Listener addresses, TLS and
/// connection settings only change on restart.
async fn reload(shared: Arc<Shared>, source: ReloadSource) {
    let current = shared.app.load_full();
    let Some(path) = current.config.path.clone() else {
        return;
    };
    let count = |result: &'static str| {
        shared
            .metrics
            .reloads
            .get_or_create(&crate::metrics::ResultLabels { result })
            .inc();
    };
    let config = match Config::load(&path, &crate::tokens::KeyFiles) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                ?source,
                "config reload failed; keeping the running configuration: {e}"
            );
            count("invalid");
            return;
        }
    };
    let (old, new) = (&current.config.server, &config.server);
    if old.listen != new.listen
        || old.admin_listen != new.admin_listen
        || old.tls.is_some() != new.tls.is_some()
        || old.max_connections != new.max_connections
        || old.header_read_timeout != new.header_read_timeout
        || old.idle_timeout != new.idle_timeout
        || old.max_header_size != new.max_header_size
    {
        tracing::warn!(
            "server listener and connection settings changed; they take effect on restart"
        );
    }
    match current.rebuild(config).await {
        Ok(app) => {
            shared.app.store(Arc::new(app));
            shared.reloaded.send_modify(|n| *n += 1);
            count("ok");
            tracing::info!(?source, path = %path.display(), "configuration reloaded");
        }
        Err(e) => {
            count("failed");
            tracing::error!(
                ?source,
                "config reload failed; keeping the running configuration: {e:#}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = new_request_id();
            let text = id.as_str().to_owned();
            let parsed = uuid::Uuid::parse_str(&text).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(text, parsed.hyphenated().to_string());
            assert_eq!(id.to_header_value(), text.as_str());
            assert!(seen.insert(text.clone()), "{text} repeated");
        }
    }

    #[test]
    fn request_id_validation() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_request_id(
            &HeaderValue::from_bytes(b"\xff").unwrap()
        ));
        assert!(!valid_request_id(
            &HeaderValue::from_str(&"x".repeat(129)).unwrap()
        ));
    }
}
