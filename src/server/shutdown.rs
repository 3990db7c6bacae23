//! Graceful shutdown: the drain and stop signals connections watch, and the
//! drain that waits for open connections and tunnels up to the grace period.

use tokio::sync::watch;

use super::Shared;

/// The shutdown signals a connection watches.
#[derive(Clone)]
pub(super) struct Signals {
    pub(super) drain: watch::Receiver<bool>,
    pub(super) hard_stop: watch::Receiver<bool>,
    /// A worker thread's own (see [`relay_signals_to_worker`]).
    pub(super) worker: bool,
}

thread_local! {
    /// A worker thread's own copy of the shutdown signals: waiting on a
    /// channel registers the waiter under the channel's lock, and one
    /// channel per worker keeps that lock to a single thread.
    pub(super) static WORKER_SIGNALS: std::cell::RefCell<Option<Signals>> =
        const { std::cell::RefCell::new(None) };
}

/// Drains the connections and tunnels still open, for up to
/// `server.shutdown_grace`, then closes what is left.
pub(super) async fn drain(shared: &Shared) {
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
}
