//! A coarse monotonic clock for timeouts measured in seconds (idle
//! connections, pooled connections, upstream cooldowns): one atomic load
//! instead of a clock read on every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often the clock advances; also its resolution.
pub const TICK: Duration = Duration::from_millis(10);

static NOW_MS: AtomicU64 = AtomicU64::new(1);

/// Milliseconds since the clock started, plus one (so 0 can mean "unset").
/// Never behind the real time by more than [`TICK`] (plus scheduling delay).
pub fn now_ms() -> u64 {
    static TICKER: OnceLock<()> = OnceLock::new();
    TICKER.get_or_init(|| {
        let start = Instant::now();
        std::thread::Builder::new()
            .name("sis-coarse-clock".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                NOW_MS.store(start.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            })
            .expect("spawn the clock thread");
    });
    NOW_MS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances() {
        let a = now_ms();
        std::thread::sleep(Duration::from_millis(60));
        let b = now_ms();
        assert!(b >= a + 30, "{a} {b}");
        assert!(a >= 1);
    }
}
