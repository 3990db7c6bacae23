//! Idle upstream connections: a stack per upstream and worker thread, most
//! recently used first, each connection dropped once idle too long.
//!
//! A connection is taken from its upstream's idle stack, used for one
//! exchange (see [`super::exchange`]), and given back as soon as the
//! response body has been read to its end and the upstream allows reuse.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::connect::UpstreamConn;
use crate::time::coarse::monotonic_ms;

/// Idle connections kept per upstream and worker at most.
pub const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// The idle connections to one upstream, one [`Pool`] per worker thread (and
/// one for every other thread), so a connection is only ever used by the
/// thread whose runtime drives it.
pub struct Pools(Box<[Arc<Pool>]>);

impl Pools {
    pub fn new(idle_timeout: Duration) -> Pools {
        Pools(
            (0..crate::worker::slots())
                .map(|_| Pool::new(idle_timeout))
                .collect(),
        )
    }

    /// The pool of the current worker thread.
    pub fn current(&self) -> &Arc<Pool> {
        &self.0[crate::worker::slot()]
    }

    pub fn reap(&self) {
        for pool in self.0.iter() {
            pool.reap();
        }
    }
}

/// The idle connections to one upstream.
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    idle_timeout_ms: u64,
}

struct Idle {
    conn: UpstreamConn,
    /// [`monotonic_ms`] when it was given back.
    since: u64,
}

impl Pool {
    pub fn new(idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            idle_timeout_ms: idle_timeout.as_millis() as u64,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn checkout(&self) -> Option<UpstreamConn> {
        let now = monotonic_ms();
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if now - c.since < self.idle_timeout_ms {
                return Some(c.conn);
            }
        }
        None
    }

    pub(super) fn give_back(&self, conn: UpstreamConn) {
        if !conn.is_clean() {
            // Bytes after the response: not a connection to trust again.
            return;
        }
        let since = monotonic_ms();
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push(Idle { conn, since });
        }
    }

    /// Drops idle connections older than the idle timeout (closing them).
    pub fn reap(&self) {
        let now = monotonic_ms();
        self.lock().retain(|c| now - c.since < self.idle_timeout_ms);
    }

    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }
}
