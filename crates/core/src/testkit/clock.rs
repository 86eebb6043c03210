//! A clock that follows tokio's (pausable) time plus a manual offset.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::model::Timestamp;
use crate::ports::Clock;

/// Wall time that moves with `tokio::time` (so `tokio::time::pause()` and
/// `advance()` control it) plus whatever a test adds with [`TestClock::advance`].
#[derive(Debug)]
pub struct TestClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
    offset: parking_lot::Mutex<Duration>,
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClock {
    /// Starts at 2026-01-01T00:00:00Z. Call from inside a tokio runtime.
    pub fn new() -> Self {
        let base = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default();
        Self {
            base,
            start: tokio::time::Instant::now(),
            offset: parking_lot::Mutex::new(Duration::ZERO),
        }
    }

    /// Moves wall time forward without moving tokio time (ages of resources).
    pub fn advance(&self, by: Duration) {
        *self.offset.lock() += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.start.elapsed() + *self.offset.lock();
        self.base + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero())
    }
}
