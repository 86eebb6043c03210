//! `restart`: the stop phase, then (unless a stop or delete preempted it meanwhile)
//! the start phase. On a stopped workspace the stop phase is the table's no-op, so a
//! restart acts as a start; on a failed one it stops what may be left first.

use crate::merge::Phase;
use crate::model::Workspace;

use super::{OpRun, PhaseEnd};

impl OpRun<'_> {
    pub(super) async fn restart(&mut self, mut ws: Workspace) {
        match self.stop_phase(&mut ws, false).await {
            PhaseEnd::Done => {}
            other => return self.conclude(&mut ws, other).await,
        }
        let end = if self.enter_start_phase() {
            self.start_phase(&mut ws).await
        } else {
            PhaseEnd::Cancelled
        };
        self.conclude(&mut ws, end).await;
    }

    /// Moves the in-flight op to its start phase, unless it was preempted. From here on
    /// a new restart queues instead of joining (its caller needs a cycle that begins
    /// after its request).
    fn enter_start_phase(&self) -> bool {
        self.gate.update(|st| match st.slot.in_flight.as_mut() {
            Some(p) if p.preempted_by.is_none() => {
                p.phase = Phase::StartPhase;
                true
            }
            _ => false,
        })
    }
}
