//! The clock port: wall time comes through the engine's clock so tests control it.

use crate::model::Timestamp;

/// Wall-clock time for timestamps and ages (orphan grace). Durations and timeouts use
/// `tokio::time`, which tests pause.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current UTC time. MUST NOT go backwards by more than the host clock does.
    fn now(&self) -> Timestamp;
}

/// The host's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        chrono::Utc::now()
    }
}
