//! Graceful shutdown: one [`ShutdownControl`] moves the server from serving
//! to draining to stopped, every task that must react holds a [`Shutdown`]
//! made from it, and [`drain`] waits for open connections and tunnels up to
//! the grace period.
//!
//! Draining: connections finish the request in flight and close; idle ones
//! close at once. Stopped (the grace period is over): connections still
//! open close now.
//!
//! A worker thread holds a copy of the phase of its own ([`for_worker`]):
//! waiting on a channel registers the waiter under the channel's lock, and
//! one channel per worker keeps that lock to a single thread. Its idle
//! HTTP/1 connections wait in a per-thread list instead ([`Shutdown::idle`]),
//! a slot taken and given back without a lock or an atomic.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

use super::Shared;

/// Where the server is in its life.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) enum Phase {
    Serving,
    /// Every connection finishes what it is doing and closes.
    Draining,
    /// The drain deadline passed: connections still open close now.
    Stopped,
}

/// Moves the server through its [`Phase`]s; made once, by `serve`.
pub(super) struct ShutdownControl {
    phase: watch::Sender<Phase>,
}

impl ShutdownControl {
    pub(super) fn new() -> ShutdownControl {
        ShutdownControl {
            phase: watch::channel(Phase::Serving).0,
        }
    }

    /// A handle for a task off the worker threads.
    pub(super) fn subscribe(&self) -> Shutdown {
        Shutdown {
            phase: self.phase.subscribe(),
            worker: false,
        }
    }

    pub(super) fn start_draining(&self) {
        self.phase.send_replace(Phase::Draining);
    }

    pub(super) fn stop(&self) {
        self.phase.send_replace(Phase::Stopped);
    }
}

/// A task's view of the server's [`Phase`].
#[derive(Clone)]
pub(super) struct Shutdown {
    phase: watch::Receiver<Phase>,
    /// A worker thread's own copy (see [`for_worker`]).
    worker: bool,
}

impl Shutdown {
    pub(super) fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }

    /// Resolves once the server drains (or has stopped).
    pub(super) async fn draining(&mut self) {
        self.after(Phase::Serving).await;
    }

    /// Resolves with the phase once the server is past `seen`.
    pub(super) async fn after(&mut self, seen: Phase) -> Phase {
        let reached = self.phase.wait_for(|p| *p > seen).await.map(|p| *p);
        match reached {
            Ok(phase) => phase,
            // The control is gone without getting there: it never will.
            Err(_) => std::future::pending().await,
        }
    }

    /// [`draining`](Self::draining) for a connection waiting for its next
    /// request: on a worker thread, a slot in the thread's idle list rather
    /// than a waiter on the channel.
    pub(super) fn idle(&mut self) -> IdleWait<'_> {
        if self.worker {
            IdleWait::Worker(DrainWait::default())
        } else {
            IdleWait::Other(Box::pin(self.draining()))
        }
    }
}

/// See [`Shutdown::idle`].
pub(super) enum IdleWait<'a> {
    Worker(DrainWait),
    Other(Pin<Box<dyn Future<Output = ()> + Send + 'a>>),
}

impl Future for IdleWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            IdleWait::Worker(w) => Pin::new(w).poll(cx),
            IdleWait::Other(f) => f.as_mut().poll(cx),
        }
    }
}

/// What a worker thread keeps of the shutdown in its context
/// ([`crate::worker`]).
struct OnWorker {
    /// Its own copy of the phase (see [`for_worker`]).
    shutdown: Shutdown,
    /// Its idle HTTP/1 connections.
    idle: RefCell<IdleSet>,
}

/// Gives the current worker thread its own copy of `control`'s phase,
/// relayed by a task on the worker's runtime, which also wakes the thread's
/// idle connections when the server drains. Call once, inside the worker's
/// runtime, after [`crate::worker::enter`].
pub(super) fn for_worker(control: &ShutdownControl) {
    let (tx, rx) = watch::channel(*control.phase.borrow());
    let mut global = control.phase.subscribe();
    tokio::spawn(async move {
        loop {
            let phase = *global.borrow_and_update();
            if phase >= Phase::Draining {
                wake_idle();
            }
            tx.send_if_modified(|p| std::mem::replace(p, phase) != phase);
            if phase == Phase::Stopped || global.changed().await.is_err() {
                break;
            }
        }
        // Kept until the worker stops, so receivers never see it closed.
        std::future::pending::<()>().await;
    });
    if let Some(worker) = crate::worker::current() {
        worker.insert(Rc::new(OnWorker {
            shutdown: Shutdown {
                phase: rx,
                worker: true,
            },
            idle: RefCell::default(),
        }));
    }
}

/// The current worker thread's [`Shutdown`], if this is a worker thread.
pub(super) fn on_worker() -> Option<Shutdown> {
    crate::worker::with(|w: &OnWorker| w.shutdown.clone())
}

#[derive(Default)]
struct IdleSet {
    draining: bool,
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// Wakes every idle connection of this thread, and any that goes idle
/// later, to close.
fn wake_idle() {
    let Some(worker) = crate::worker::get::<OnWorker>() else {
        return;
    };
    let wakers: Vec<Waker> = {
        let mut set = worker.idle.borrow_mut();
        set.draining = true;
        set.wakers.iter_mut().filter_map(Option::take).collect()
    };
    for w in wakers {
        w.wake();
    }
}

/// Resolves when this thread's connections start draining.
#[derive(Default)]
pub(super) struct DrainWait {
    slot: Option<usize>,
}

impl Future for DrainWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Not a worker (any more): its connections are going anyway.
        let slot = &mut self.slot;
        crate::worker::with(|worker: &OnWorker| {
            let mut set = worker.idle.borrow_mut();
            if set.draining {
                return Poll::Ready(());
            }
            match *slot {
                Some(i) => match &mut set.wakers[i] {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                },
                None => {
                    let waker = Some(cx.waker().clone());
                    let i = match set.free.pop() {
                        Some(i) => {
                            set.wakers[i] = waker;
                            i
                        }
                        None => {
                            set.wakers.push(waker);
                            set.wakers.len() - 1
                        }
                    };
                    *slot = Some(i);
                }
            }
            Poll::Pending
        })
        .unwrap_or(Poll::Ready(()))
    }
}

impl Drop for DrainWait {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            crate::worker::with(|worker: &OnWorker| {
                let mut set = worker.idle.borrow_mut();
                set.wakers[i] = None;
                set.free.push(i);
            });
        }
    }
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
    shared.shutdown.start_draining();
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
    shared.shutdown.stop();
    tunnels.stop_all();
}
