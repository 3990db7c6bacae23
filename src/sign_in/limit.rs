//! Failed sign-in calls per client address (`sign_in.failures_per_minute`).
//! Only failures count, so a browser with many tabs refreshing successfully
//! is never limited; a client guessing tokens is.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::time::SharedClock;

const WINDOW_MS: u64 = 60_000;
/// Past this many tracked addresses, stale windows are dropped on insert.
const PRUNE_AT: usize = 100_000;

pub struct FailureLimiter {
    limit: u32,
    clock: SharedClock,
    windows: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl FailureLimiter {
    /// `limit` failures per minute per address; 0 turns limiting off.
    pub fn new(limit: u32, clock: SharedClock) -> Self {
        FailureLimiter {
            limit,
            clock,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The address has used up its failures for the current minute.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        if self.limit == 0 {
            return false;
        }
        let now = self.clock.now_ms();
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows
            .get(&ip)
            .is_some_and(|(start, n)| now < start + WINDOW_MS && *n >= self.limit)
    }

    /// Counts one failed call.
    pub fn failed(&self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= PRUNE_AT {
            windows.retain(|_, (start, _)| now < *start + WINDOW_MS);
        }
        let entry = windows.entry(ip).or_insert((now, 0));
        if now >= entry.0 + WINDOW_MS {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn counts_failures_per_address_per_minute() {
        let clock = ManualClock::new();
        let l = FailureLimiter::new(3, Arc::new(clock.clone()));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!l.blocked(a));
            l.failed(a);
        }
        assert!(l.blocked(a));
        assert!(!l.blocked(b));
        clock.advance(Duration::from_secs(61));
        assert!(!l.blocked(a));
    }

    #[test]
    fn zero_is_off() {
        let l = FailureLimiter::new(0, Arc::new(ManualClock::new()));
        let a: IpAddr = "::1".parse().unwrap();
        for _ in 0..100 {
            l.failed(a);
        }
        assert!(!l.blocked(a));
    }
}
