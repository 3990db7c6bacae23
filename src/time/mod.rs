//! Time, in three kinds: the injectable wall clock that expiry and grace
//! windows read ([`Clock`]), a coarse monotonic clock for connection
//! timeouts ([`coarse`]), and request-path timeouts whose timers are reused
//! on worker threads (`timer`).

mod clock;
pub mod coarse;
pub(crate) mod timer;

pub use self::clock::{Clock, ManualClock, SharedClock, SystemClock};
