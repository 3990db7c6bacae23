//! A worker thread's context: what a thread serving public connections
//! keeps for its whole life, entered and left in one place.
//!
//! # Life cycle
//!
//! The server starts [`count`] worker threads, each with a single-threaded
//! runtime. A worker thread calls [`enter`] with its id (1 to [`count`])
//! first, and holds the returned [`Entered`] guard while its runtime serves
//! connections. Dropping the guard, before the runtime is dropped, clears
//! the context: what it holds (kept timers, the server's per-worker state)
//! belongs to that runtime and must go while it is still there. Every
//! other thread (the caller's runtime, tests) has no context: [`current`]
//! is `None` there, and [`slot`] is 0.
//!
//! # Per-thread items
//!
//! In the context:
//! - the worker's id, which is also its upstream pool slot ([`slot`]; the
//!   pools of `proxy::pool` have [`slots`] entries, one per worker plus one
//!   for every other thread);
//! - finished sleeps kept for the next request-path timeout (`time::timer`);
//! - state a higher layer keeps per worker, stored by type ([`Worker::insert`],
//!   [`get`]) so this module imports none of them: the server's copy of the
//!   shutdown phase and its list of idle HTTP/1 connections
//!   (`server::shutdown`), and its handle on the live `App`
//!   (`server::workers`).
//!
//! Left as thread-local caches, because they are valid on any thread, hold
//! nothing a runtime owns, and moving them behind the context would add a
//! lookup to hot paths for nothing:
//! - `http::h1`: the scratch read buffer (`SCRATCH`), the kept write
//!   buffers, header maps and read buffers (`BUFS`, `MAPS`, `READ_BUFS`),
//!   kept raw field lists (`raw.rs`, `KEPT`), and the formatted `Date`
//!   (`encode.rs`);
//! - `proxy::headers`: the last peer address formatted as a header value;
//! - `metrics::sharded`: the shard a thread counts into (`SHARD`);
//! - `server::request_id`: the per-thread request id generator (`STATE`).

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::OnceLock;

use tokio::time::Sleep;

/// What one worker thread keeps; see the module docs.
pub struct Worker {
    id: usize,
    sleeps: RefCell<Vec<Pin<Box<Sleep>>>>,
    held: RefCell<Vec<Rc<dyn Any>>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Worker>>> = const { RefCell::new(None) };
}

/// Worker threads serving the public listener's connections:
/// `TOKIO_WORKER_THREADS`, else one per CPU. Read once per process.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// Slots of a per-worker table: one per worker, and slot 0 for every
/// other thread.
pub fn slots() -> usize {
    count() + 1
}

/// The current thread's slot: its worker id, or 0 off the worker threads.
pub fn slot() -> usize {
    CURRENT
        .try_with(|c| c.borrow().as_ref().map_or(0, |w| w.id))
        .unwrap_or(0)
}

/// Holds the current thread's context; dropping it clears the context.
#[must_use = "the context is cleared when the guard is dropped"]
pub struct Entered {
    // Entered and left on one thread.
    _not_send: PhantomData<*const ()>,
}

/// Makes the current thread worker `id` (1 to [`count`]).
///
/// # Panics
///
/// When `id` is out of range or the thread is a worker already.
pub fn enter(id: usize) -> Entered {
    assert!((1..=count()).contains(&id), "worker id {id} out of range");
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        assert!(c.is_none(), "thread is a worker already");
        *c = Some(Rc::new(Worker {
            id,
            sleeps: RefCell::new(Vec::new()),
            held: RefCell::new(Vec::new()),
        }));
    });
    Entered {
        _not_send: PhantomData,
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(worker) = CURRENT.with(|c| c.borrow_mut().take()) {
            // Cleared here, not when the last handle goes, so nothing the
            // context held outlives the guard.
            worker.sleeps.borrow_mut().clear();
            let held = std::mem::take(&mut *worker.held.borrow_mut());
            drop(held);
        }
    }
}

/// The current thread's context, on a worker thread.
pub fn current() -> Option<Rc<Worker>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// Runs `f` on the current worker's context; `None` off the worker
/// threads. Nothing is cloned: the request path reads the context several
/// times per request.
pub fn with_current<R>(f: impl FnOnce(&Worker) -> R) -> Option<R> {
    CURRENT
        .try_with(|c| c.borrow().as_deref().map(f))
        .ok()
        .flatten()
}

/// Runs `f` on what a higher layer stored of type `T` in the current
/// worker's context; `None` off the worker threads or when nothing of that
/// type is stored. `f` must not store into the context.
pub fn with<T: Any, R>(f: impl FnOnce(&T) -> R) -> Option<R> {
    with_current(|w| {
        let held = w.held.borrow();
        held.iter().find_map(|h| h.downcast_ref::<T>()).map(f)
    })
    .flatten()
}

/// What a higher layer stored of type `T` in the current worker's context.
pub fn get<T: Any>() -> Option<Rc<T>> {
    CURRENT
        .try_with(|c| c.borrow().as_ref().and_then(|w| w.get::<T>()))
        .ok()
        .flatten()
}

impl Worker {
    /// 1 to [`count`].
    pub fn id(&self) -> usize {
        self.id
    }

    /// Finished sleeps kept for reuse (see `time::timer`).
    pub(crate) fn sleeps(&self) -> &RefCell<Vec<Pin<Box<Sleep>>>> {
        &self.sleeps
    }

    /// Keeps `value` until the worker leaves, replacing one of the same type.
    pub fn insert<T: Any>(&self, value: Rc<T>) {
        let mut held = self.held.borrow_mut();
        held.retain(|h| !h.is::<T>());
        held.push(value);
    }

    /// What was stored of type `T`.
    pub fn get<T: Any>(&self) -> Option<Rc<T>> {
        self.held
            .borrow()
            .iter()
            .find(|h| h.is::<T>())
            .and_then(|h| h.clone().downcast::<T>().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entering_sets_and_the_guard_clears_the_context() {
        std::thread::spawn(|| {
            assert!(current().is_none());
            assert_eq!(slot(), 0);
            let entered = enter(1);
            assert_eq!(slot(), 1);
            current().unwrap().insert(Rc::new(7u32));
            assert_eq!(get::<u32>().as_deref(), Some(&7));
            assert!(get::<u64>().is_none());
            drop(entered);
            assert!(current().is_none());
            assert!(get::<u32>().is_none());
            assert_eq!(slot(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_slot_per_worker_and_one_for_other_threads() {
        assert_eq!(slots(), count() + 1);
    }
}
