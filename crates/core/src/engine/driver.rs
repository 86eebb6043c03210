//! The driver of a busy workspace: runs the op in flight under the exec lock, hands
//! over to the queued one, until the gate is idle. One driver per busy gate.
//!
//! A panic inside an op fails that op with `internal`, frees the gate and leaves the
//! engine serving: the driver catches it, forgets the gate's row (its stored state is
//! unknown; a transitional one is finished by the next op or reconcile pass) and goes
//! on with the queue.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::code::ErrorCode;
use crate::merge::OpKind;
use crate::model::{OpError, OpStatus, Operation};
use crate::ports::Report;

use super::Engine;
use super::gate::{Gate, SettleOnDrop};
use super::ops::OpRun;

impl Engine {
    pub(crate) fn spawn_driver(&self, gate: Arc<Gate>) -> bool {
        let engine = self.clone();
        self.spawn(async move { engine.drive(gate).await })
    }

    async fn drive(&self, gate: Arc<Gate>) {
        loop {
            // Nothing in flight: this driver leaves, and says so in the same update, so
            // a request that finds the gate idle from here on spawns the next driver.
            let current = gate.update(|st| match st.slot.in_flight.as_ref() {
                Some(p) => Some((
                    p.op.clone(),
                    p.cancel.clone(),
                    p.deadline,
                    p.preflighted,
                    p.record.clone(),
                )),
                None => {
                    st.driving = false;
                    None
                }
            });
            let Some((op, cancel, deadline, preflighted, record)) = current else {
                return;
            };
            // Every path below writes the op; should one not (or panic past the guard
            // around the op), its requests must not wait for ever.
            let _settle = SettleOnDrop(record.clone());
            let mut done = if self.inner.ops_token.is_cancelled() {
                let mut op = op;
                let e = OpError::new(
                    ErrorCode::Interrupted,
                    "the engine shut down before this op ran; recovery finishes the workspace",
                );
                self.end_op(&mut op, &record, OpStatus::Interrupted, None, Some(e))
                    .await;
                op
            } else {
                let _exec = gate.exec.lock().await;
                let mut run = OpRun {
                    engine: self,
                    gate: &gate,
                    op,
                    cancel,
                    deadline,
                    preflighted,
                    final_written: false,
                    record: record.clone(),
                };
                let caught = AssertUnwindSafe(run.run()).catch_unwind().await;
                if let Err(panic) = caught {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(op = %run.op.id, workspace = %run.op.workspace_id, panic = %what, "an op driver panicked; the op fails and the workspace's gate is freed");
                    gate.update(|st| st.row = None);
                    let e = OpError::new(
                        ErrorCode::Internal,
                        "internal error in the op driver; the daemon's log has the cause",
                    );
                    self.end_op(&mut run.op, &record, OpStatus::Failed, None, Some(e))
                        .await;
                }
                run.op
            };
            gate.bump();
            // Joins and preemption happen under the intake lock: hold it while the op's
            // final record is fixed and the queued op takes its place.
            let _intake = gate.intake.lock().await;
            let fix = gate
                .read()
                .slot
                .in_flight
                .as_ref()
                .map(|p| (p.op.joined, p.op.force, p.preempted_by.clone()));
            if let Some((joined, force, preempted_by)) = fix {
                let mut fixed = done.clone();
                fixed.joined = joined;
                fixed.force |= force;
                if fixed.status == OpStatus::Cancelled {
                    fixed.superseded_by = preempted_by;
                }
                if fixed != done {
                    done = fixed;
                    self.write_op_detached(&done).await;
                }
            }
            let now = self.inner.clock.now();
            let stop_deadline = self.stop_deadline();
            let finished = gate.update(|st| {
                let finished = st.slot.in_flight.take();
                if let Some(mut next) = st.slot.queued.take() {
                    next.op.status = OpStatus::Running;
                    next.op.started_at = Some(now);
                    if matches!(next.op.kind, OpKind::Stop | OpKind::Delete)
                        && next.deadline.is_none()
                    {
                        next.deadline = Some(stop_deadline);
                    }
                    st.slot.in_flight = Some(next);
                }
                finished
            });
            if let Some(p) = finished {
                self.finished(&p.done, done);
            }
        }
    }

    /// Tells an op's waiters and the reporter how it ended.
    pub(crate) fn finished(
        &self,
        done: &tokio::sync::watch::Sender<Option<Operation>>,
        op: Operation,
    ) {
        self.inner
            .reporter
            .report(Report::OpFinished(Box::new(op.clone())));
        done.send_replace(Some(op));
    }
}
