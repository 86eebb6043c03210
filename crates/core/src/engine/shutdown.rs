//! Shutdown of the engine, once: refuse new ops, end waits and streams, let in-flight
//! ops finish until the drain deadline, then interrupt them, wait for every task (a
//! bounded barrier whose result is reported, never assumed), flush the reporter with a
//! bounded wait, and close the store last. Workspaces keep running.

use super::Engine;

/// What `shutdown` did. Every caller gets the first result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// All in-flight ops finished before the drain deadline.
    pub drained: bool,
    /// Ops ended as `interrupted`.
    pub interrupted: usize,
    /// The reporter's final flush finished within its bound.
    pub reporter_flushed: bool,
    /// Engine tasks still alive when the store was closed (0 unless a task ignored
    /// cancellation for longer than the final-flush bound: a bug).
    pub tasks_alive: usize,
}

impl Engine {
    pub(crate) async fn shutdown_once(&self) -> ShutdownReport {
        let inner = &self.inner;
        *inner.accepting.write() = false;
        inner.stop_token.cancel();
        inner.loops_token.cancel();
        inner.tracker.close();
        let drained = tokio::time::timeout(inner.config.drain_deadline, inner.tracker.wait())
            .await
            .is_ok();
        let interrupted = if drained {
            0
        } else {
            let before = self.count_pending();
            inner.ops_token.cancel();
            // Cancelled ops record their interruption with writes bounded by the same
            // timeout; a task still alive after it ignored cancellation.
            let _ =
                tokio::time::timeout(inner.config.final_flush_timeout * 2, inner.tracker.wait())
                    .await;
            before
        };
        let tasks_alive = inner.tracker.len();
        if tasks_alive > 0 {
            tracing::error!(tasks_alive, "engine tasks outlived shutdown's bounded wait");
        }
        let reporter_flushed =
            tokio::time::timeout(inner.config.final_flush_timeout, inner.reporter.shutdown())
                .await
                .is_ok();
        inner.store.close().await;
        ShutdownReport {
            drained,
            interrupted,
            reporter_flushed,
            tasks_alive,
        }
    }

    fn count_pending(&self) -> usize {
        self.inner
            .gates
            .all()
            .iter()
            .map(|(_, gate)| {
                let st = gate.read();
                usize::from(st.slot.in_flight.is_some()) + usize::from(st.slot.queued.is_some())
            })
            .sum()
    }
}
