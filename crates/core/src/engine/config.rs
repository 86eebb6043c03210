//! Engine settings, with the defaults of `lifecycle.md`.

use std::time::Duration;

/// Timing and behaviour settings. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A start still `starting` after this is cancelled and fails with `start_timeout`.
    pub start_ceiling: Duration,
    /// SIGTERM to SIGKILL delay when stopping a process.
    pub stop_grace: Duration,
    /// Upper bound on one runtime stop/remove call (grace included).
    pub stop_ceiling: Duration,
    /// Orphans younger than this are kept (a start may still be committing them).
    pub orphan_grace: Duration,
    /// Period of the background reconciler; `None` runs no background loop.
    pub reconcile_period: Option<Duration>,
    /// How long `shutdown` lets in-flight ops finish before cancelling them.
    pub drain_deadline: Duration,
    /// Bound on the final writes and the reporter flush after cancellation.
    pub final_flush_timeout: Duration,
    /// Delay between retries when the runtime reports a transient name conflict.
    pub conflict_backoff: Duration,
    /// Value of `BERTH_API_URL` given to workspace processes.
    pub api_url: String,
    /// Bound on a runtime call no op deadline bounds: the reconciler's listing of a
    /// runtime. A runtime that does not answer within it is reported degraded.
    pub runtime_call_timeout: Duration,
    /// How many transitional workspaces boot recovery finishes at once.
    pub recovery_concurrency: usize,
    /// The most unclaimed members all warm pools may ask for together (the sum of
    /// their sizes).
    pub pool_capacity: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            start_ceiling: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
            stop_ceiling: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(60),
            reconcile_period: Some(Duration::from_secs(5)),
            drain_deadline: Duration::from_secs(10),
            final_flush_timeout: Duration::from_secs(5),
            conflict_backoff: Duration::from_millis(100),
            api_url: "http://127.0.0.1:7421".to_owned(),
            runtime_call_timeout: Duration::from_secs(15),
            recovery_concurrency: 64,
            pool_capacity: 256,
        }
    }
}
