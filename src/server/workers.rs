//! The worker threads that serve public connections: their count, their
//! runtimes, and the round-robin handoff of accepted connections.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::conn::ConnTicket;
use super::dispatch::{serve_connection, serve_plain};
use super::shutdown;
use super::{Kind, LiveApp, Shared};
use crate::worker;

/// A worker's handle on the live [`App`](crate::app::App), kept in its
/// context ([`crate::worker`]): its own reference count, so requests on
/// different workers do not contend for the `App`'s. Replaced when a reload
/// swaps the `App`; the one it holds stays alive until then, so its address
/// cannot be reused by another.
#[derive(Default)]
pub(super) struct WorkerApp(pub(super) RefCell<Option<Arc<LiveApp>>>);

/// A connection accepted by the listener loop, on its way to a worker.
pub(super) struct Handoff {
    pub(super) stream: std::net::TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) ticket: ConnTicket,
}

/// The worker threads. Each runs a single-threaded runtime and serves the
/// connections handed to it, round robin, from accept to close, together with
/// the upstream connections it opens (see `proxy::pool`): like an nginx
/// worker, a request is handled on one thread with no cross-thread wakeups.
pub(super) struct Workers {
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
pub(super) const WORKER_EVENT_INTERVAL: u32 = 16;

impl Workers {
    pub(super) fn start(count: usize, shared: &Arc<Shared>) -> anyhow::Result<Workers> {
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
                    let entered = worker::enter(id);
                    runtime.block_on(async move {
                        shutdown::for_worker(&shared.shutdown);
                        release_replaced_apps(&shared);
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
                    drop(entered);
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

    pub(super) fn dispatch(&self, handoff: Handoff) {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.senders.len();
        if self.senders[i].send(handoff).is_err() {
            tracing::error!(worker = i + 1, "worker gone; connection dropped");
        }
    }

    /// Ends the workers once their connections are done, and waits for them.
    pub(super) async fn stop(self) {
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

/// Lets go of this worker's [`LiveApp`] when a reload replaces it, so an
/// idle worker releases the old `App` too, not only when its next request
/// sees the new one.
fn release_replaced_apps(shared: &Shared) {
    let slot = Rc::new(WorkerApp::default());
    if let Some(worker) = worker::current() {
        worker.insert(slot);
    }
    let mut reloaded = shared.reloaded.subscribe();
    tokio::spawn(async move {
        while reloaded.changed().await.is_ok() {
            if let Some(app) = worker::get::<WorkerApp>() {
                app.0.borrow_mut().take();
            }
        }
    });
}
