//! How each runtime answers: every reconcile listing (bounded by
//! [`EngineConfig::runtime_call_timeout`](super::EngineConfig)) records whether the
//! runtime answered. A runtime that fails or does not answer is `degraded`: its own
//! workspaces' ops fail or wait within their ceilings, and nothing else waits for it.

use std::collections::BTreeMap;

use crate::ids::RuntimeKind;
use crate::model::Timestamp;

/// Whether a runtime answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RuntimeState {
    /// Not asked yet (before the first reconcile pass).
    Unknown,
    /// Its last listing answered.
    Up,
    /// Its last listing failed or did not answer in time.
    Degraded,
}

impl RuntimeState {
    /// `unknown`, `up` or `degraded`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeState::Unknown => "unknown",
            RuntimeState::Up => "up",
            RuntimeState::Degraded => "degraded",
        }
    }
}

/// One runtime's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeHealth {
    /// The runtime.
    pub runtime: RuntimeKind,
    /// Up, degraded or not yet known.
    pub state: RuntimeState,
    /// Since when it is in this state.
    pub since: Option<Timestamp>,
    /// Why it is degraded.
    pub detail: Option<String>,
}

/// The health of every runtime of an engine.
#[derive(Debug, Default)]
pub(crate) struct HealthBoard {
    runtimes: parking_lot::Mutex<BTreeMap<RuntimeKind, RuntimeHealth>>,
}

impl HealthBoard {
    pub(crate) fn new(kinds: impl IntoIterator<Item = RuntimeKind>) -> Self {
        let runtimes = kinds
            .into_iter()
            .map(|runtime| {
                (
                    runtime.clone(),
                    RuntimeHealth {
                        runtime,
                        state: RuntimeState::Unknown,
                        since: None,
                        detail: None,
                    },
                )
            })
            .collect();
        Self {
            runtimes: parking_lot::Mutex::new(runtimes),
        }
    }

    /// Records how a call to `runtime` ended; logs each change of state once.
    pub(crate) fn record(&self, runtime: &RuntimeKind, at: Timestamp, outcome: Result<(), String>) {
        let mut all = self.runtimes.lock();
        let Some(h) = all.get_mut(runtime) else {
            return;
        };
        let state = if outcome.is_ok() {
            RuntimeState::Up
        } else {
            RuntimeState::Degraded
        };
        if h.state != state {
            match &outcome {
                Ok(()) if h.state == RuntimeState::Degraded => {
                    tracing::info!(%runtime, "runtime answers again");
                }
                Ok(()) => {}
                Err(why) => tracing::warn!(%runtime, %why, "runtime degraded"),
            }
            h.state = state;
            h.since = Some(at);
        }
        h.detail = outcome.err();
    }

    pub(crate) fn all(&self) -> Vec<RuntimeHealth> {
        self.runtimes.lock().values().cloned().collect()
    }
}
