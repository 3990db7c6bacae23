//! The idle HTTP/1 connections of a worker thread, woken together when the
//! server starts draining.
//!
//! A connection waiting for its next request must notice a drain at once.
//! Waiting on a channel for that registers the waiter under the channel's
//! lock on every request; here it is a slot in a per-thread list, taken
//! and given back without a lock or an atomic.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct IdleSet {
    draining: bool,
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

thread_local! {
    static IDLE: RefCell<IdleSet> = RefCell::new(IdleSet::default());
}

/// Wakes every idle connection of this thread, and any that goes idle
/// later, to close.
pub(crate) fn start_draining() {
    let wakers: Vec<Waker> = IDLE.with(|set| {
        let mut set = set.borrow_mut();
        set.draining = true;
        set.wakers.iter_mut().filter_map(Option::take).collect()
    });
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
        IDLE.with(|set| {
            let mut set = set.borrow_mut();
            if set.draining {
                return Poll::Ready(());
            }
            match self.slot {
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
                    self.slot = Some(i);
                }
            }
            Poll::Pending
        })
    }
}

impl Drop for DrainWait {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let _ = IDLE.try_with(|set| {
                let mut set = set.borrow_mut();
                set.wakers[i] = None;
                set.free.push(i);
            });
        }
    }
}
