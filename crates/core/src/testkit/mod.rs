//! Fakes and conformance suites for berth's ports (feature `testkit`).
//!
//! Used by every adapter crate and by other teams embedding the engine:
//! [`MemoryStore`], [`FakeRuntime`] (scripted delays, failures, hangs, breakpoints and
//! planned failures), [`RecordingReporter`], [`TestClock`], the suites
//! [`store_contract`] and [`runtime_contract`], and [`assert_no_engine_tasks`].

mod breakpoints;
mod clock;
mod fake_runtime;
mod memory_store;
mod recording;
mod reporter_contract;
mod runtime_contract;
mod store_contract;

pub use breakpoints::{Breakpoint, Breakpoints};
pub use clock::TestClock;
pub use fake_runtime::{FakeCall, FakeProcess, FakeRuntime, LaunchRecord, Plan};
pub use memory_store::MemoryStore;
pub use recording::{RecordingReporter, RecordingSink};
pub use reporter_contract::{Delivered, reporter_contract};
pub use runtime_contract::{ContractProgram, RuntimeHarness, runtime_contract};
pub use store_contract::store_contract;

use std::time::Duration;

use crate::Engine;

/// Shuts the engine down, bounded by its own deadlines, and asserts that no task it
/// spawned is alive. Every engine test ends with this.
///
/// # Panics
/// When shutdown overran its bounds or a task outlived it.
pub async fn assert_no_engine_tasks(engine: &Engine) {
    let config = engine.config();
    let bound = config.drain_deadline + config.final_flush_timeout * 4 + Duration::from_secs(1);
    let report = tokio::time::timeout(bound, engine.shutdown())
        .await
        .unwrap_or_else(|_| panic!("shutdown did not finish within {bound:?}"));
    assert_eq!(
        report.tasks_alive, 0,
        "engine tasks outlived shutdown: {report:?}"
    );
    assert_eq!(engine.live_tasks(), 0, "engine tasks alive after shutdown");
}

/// Waits until `check` returns true, polling every 10 ms, or panics after `deadline`.
/// For conditions that settle asynchronously (a process exiting); never a sleep in
/// place of a condition.
///
/// # Panics
/// When the condition does not hold within `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let limit = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < limit,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
