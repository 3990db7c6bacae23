//! The gateway's server: binds nothing itself, but serves bound listeners
//! until shutdown. Its parts: accepting and connection limits (`accept`),
//! worker threads (`workers`), which server a connection gets (`dispatch`,
//! `h2c`, `tls`, the HTTP/1 loop [`h1`]), per-connection bookkeeping
//! (`conn`), one public request with its request id and access log
//! (`request`, `request_id`), configuration reload (`reload`) and graceful
//! shutdown (`shutdown`).
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

mod accept;
mod close;
mod conn;
mod dispatch;
pub mod h1;
mod h2c;
mod reload;
mod request;
mod request_id;
mod shutdown;
mod tls;
mod workers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use crate::config::Config;
use crate::metrics::Metrics;

use self::accept::{accept, accept_connection};
use self::dispatch::connection_builder;
use self::reload::{reload, reload_triggers};
use self::shutdown::{Shutdown, ShutdownControl};
use self::workers::{WorkerApp, Workers};

pub use self::reload::CONFIG_WATCH_INTERVAL;

/// Connections the admin listener serves at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

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
    /// Draining, then stopped, on shutdown.
    shutdown: ShutdownControl,
    /// Client connections open (public and admin, tunnels included).
    open: Arc<watch::Sender<usize>>,
    /// Bumped when a reload swaps `app`: workers let go of the old one.
    reloaded: watch::Sender<u64>,
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
    /// What connections share, for `app`.
    fn new(app: App) -> anyhow::Result<Shared> {
        let server = app.config.server.clone();
        let tls = match &server.tls {
            Some(t) => Some(tls::acceptor(t)?),
            None => None,
        };
        Ok(Shared {
            metrics: app.metrics.clone(),
            app: ArcSwap::from_pointee(app),
            builder: connection_builder(&server),
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_header_size: server.max_header_size,
            tls,
            public_slots: Arc::new(Semaphore::new(server.max_connections)),
            admin_slots: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
            shutdown: ShutdownControl::new(),
            reloaded: watch::channel(0).0,
            open: Arc::new(watch::channel(0).0),
        })
    }

    /// The live `App`, for one request.
    fn app(&self) -> Arc<LiveApp> {
        crate::worker::with(|slot: &WorkerApp| {
            let live = self.app.load();
            let mut cached = slot.0.borrow_mut();
            match &*cached {
                Some(app) if Arc::ptr_eq(&app.0, &*live) => app.clone(),
                _ => {
                    let app = Arc::new(LiveApp(arc_swap::Guard::into_inner(live)));
                    *cached = Some(app.clone());
                    app
                }
            }
        })
        .unwrap_or_else(|| Arc::new(LiveApp(self.app.load_full())))
    }

    /// The shutdown phase as this thread's tasks watch it.
    fn shutdown(&self) -> Shutdown {
        shutdown::on_worker().unwrap_or_else(|| self.shutdown.subscribe())
    }
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
    let shared = Arc::new(Shared::new(app)?);
    let Listeners { public, admin } = listeners;
    let workers = Workers::start(crate::worker::count(), &shared)?;
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
    shutdown::drain(&shared).await;
    workers.stop().await;
    Ok(())
}
