//! Timeouts on the request path without a timer allocation per request.
//!
//! A fresh `tokio::time::timeout` allocates its timer entry on first wait and
//! frees it after. Worker threads run one runtime each for their whole life,
//! so they keep finished sleeps in their context ([`crate::worker`]) and
//! re-arm them for the next timeout instead.
//! Elsewhere (tests, the caller's runtime) each timeout takes a fresh sleep,
//! as `tokio::time::timeout` does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Sleeps kept per worker thread: as many as the buffers and header maps
/// `wire` keeps, so a worker with that many requests waiting on upstreams
/// reuses a sleep for each (a sleep is about a hundred bytes).
const KEPT: usize = 256;

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Runs `fut` until it finishes or `after` passes.
pub(crate) fn timeout<F: Future>(after: Duration, fut: F) -> Timeout<F> {
    let now = Instant::now();
    Timeout {
        fut,
        // A duration too long to add is as good as none.
        deadline: now
            .checked_add(after)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400)),
        sleep: None,
    }
}

pin_project_lite::pin_project! {
    /// See [`timeout`]. (A plain struct rather than an `async fn`: an async
    /// wrapper would hold the wrapped future twice in its state.)
    pub(crate) struct Timeout<F> {
        #[pin]
        fut: F,
        deadline: Instant,
        // Taken only when the first poll of `fut` waits.
        sleep: Option<Pin<Box<Sleep>>>,
    }

    impl<F> PinnedDrop for Timeout<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(sleep) = this.project().sleep.take() {
                keep(sleep);
            }
        }
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let deadline = *this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| match kept() {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        });
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A kept sleep, on a worker thread that has one.
fn kept() -> Option<Pin<Box<Sleep>>> {
    crate::worker::with_current(|w| w.sleeps().borrow_mut().pop()).flatten()
}

/// Keeps `sleep` for a later timeout on this worker thread (or drops it).
fn keep(sleep: Pin<Box<Sleep>>) {
    crate::worker::with_current(|worker| {
        let mut sleeps = worker.sleeps().borrow_mut();
        if sleeps.len() < KEPT {
            sleeps.push(sleep);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_sleeps_time_out_and_finish_like_fresh_ones() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let entered = crate::worker::enter(1);
            for _ in 0..3 {
                let slow = timeout(
                    Duration::from_millis(20),
                    tokio::time::sleep(Duration::from_secs(10)),
                );
                assert_eq!(slow.await, Err(Elapsed));
                let quick = timeout(Duration::from_secs(10), async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    7
                });
                assert_eq!(quick.await, Ok(7));
                assert_eq!(timeout(Duration::from_secs(10), async { 8 }).await, Ok(8));
            }
            // One sleep served every wait.
            let worker = crate::worker::current().unwrap();
            assert_eq!(worker.sleeps().borrow().len(), 1);
            // A duration too long to add to now does not panic.
            assert_eq!(timeout(Duration::MAX, async { 9 }).await, Ok(9));
            drop(entered);
            assert!(worker.sleeps().borrow().is_empty());
        });
    }
}
