//! A coarse monotonic clock for timeouts measured in seconds (idle
//! connections, pooled connections, upstream cooldowns): one atomic load
//! instead of a clock read on every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often the clock advances; also its resolution.
pub const TICK: Duration = Duration::from_millis(10);

static NOW_MS: AtomicU64 = AtomicU64::new(1);
static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the clock started, plus one (so 0 can mean "unset").
/// Never behind the real time by more than [`TICK`] (plus scheduling delay).
pub fn monotonic_ms() -> u64 {
    START.get_or_init(|| {
        let start = Instant::now();
        std::thread::Builder::new()
            .name("sis-coarse-clock".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                NOW_MS.store(start.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            })
            .expect("spawn the clock thread");
        start
    });
    NOW_MS.load(Ordering::Relaxed)
}

/// A deadline `after` from now, up to about [`TICK`] later, for timeouts
/// that need no finer resolution (it can be early only by however long the
/// clock thread was kept from running beyond a tick). A duration too long to
/// add is as good as none: the deadline is then decades away.
pub fn deadline(after: Duration) -> tokio::time::Instant {
    let ms = monotonic_ms();
    let start = *START.get().expect("set by monotonic_ms");
    // The clock may lag by a tick; adding one means never firing early.
    let now = start + Duration::from_millis(ms - 1) + TICK;
    tokio::time::Instant::from_std(
        now.checked_add(after)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_never_early() {
        // Let the clock run first, so a deadline that left out the time
        // since it started would be well over the allowance early.
        monotonic_ms();
        std::thread::sleep(Duration::from_millis(250));
        for after in [
            Duration::ZERO,
            Duration::from_millis(5),
            Duration::from_secs(1),
        ] {
            let before = Instant::now();
            let at = deadline(after).into_std();
            // Allowing for a clock thread kept waiting on a loaded machine.
            assert!(
                at + Duration::from_millis(150) >= before + after,
                "{after:?}"
            );
            // Lag of the clock thread aside, at most one tick late.
            assert!(at <= Instant::now() + after + TICK * 2, "{after:?}");
        }
        assert!(deadline(Duration::MAX).into_std() > Instant::now() + Duration::from_secs(86_400));
    }

    #[test]
    fn advances() {
        let a = monotonic_ms();
        std::thread::sleep(Duration::from_millis(60));
        let b = monotonic_ms();
        assert!(b >= a + 30, "{a} {b}");
        assert!(a >= 1);
    }
}
