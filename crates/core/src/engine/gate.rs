//! The per-workspace gate: one op in flight, one queued, and the session registry.
//!
//! A gate is created on first use and lives until its workspace is deleted. Different
//! workspaces never share a lock: the registry map is only held to look a gate up.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::ids::{OpId, SessionName, WorkspaceId};
use crate::merge::{InFlight, OpKind, Phase, Slot};
use crate::model::{Operation, Session};

use super::EngineError;

/// An op the gate holds, in flight or queued.
#[derive(Debug)]
pub(crate) struct PendingOp {
    pub(crate) op: Operation,
    pub(crate) phase: Phase,
    /// Set when a stop or delete preempted it; its final status is `cancelled`.
    pub(crate) preempted_by: Option<OpId>,
    /// Cancelled on preemption; a child of the engine's ops token (shutdown).
    pub(crate) cancel: CancellationToken,
    pub(crate) done: watch::Sender<Option<Operation>>,
}

impl PendingOp {
    pub(crate) fn new(op: Operation, cancel: CancellationToken) -> Self {
        let phase = match op.kind {
            OpKind::Start => Phase::StartPhase,
            OpKind::Restart => Phase::StopPhase,
            OpKind::Stop | OpKind::Delete => Phase::Other,
        };
        let (done, _) = watch::channel(None);
        Self {
            op,
            phase,
            preempted_by: None,
            cancel,
            done,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct SlotState {
    pub(crate) in_flight: Option<PendingOp>,
    pub(crate) queued: Option<PendingOp>,
}

impl SlotState {
    /// The merge table's view of this slot.
    pub(crate) fn view(&self) -> Slot {
        match &self.in_flight {
            None => Slot::Idle,
            Some(p) => Slot::Busy {
                in_flight: InFlight {
                    kind: p.op.kind,
                    phase: p.phase,
                    preempted: p.preempted_by.is_some(),
                },
                queued: self.queued.as_ref().map(|q| q.op.kind),
            },
        }
    }
}

/// Why session launches are refused right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionsClosed {
    Stopping,
    Deleting,
}

pub(crate) type LaunchResult = Result<Session, EngineError>;

#[derive(Debug, Default)]
pub(crate) struct SessionGate {
    pub(crate) closed: Option<SessionsClosed>,
    /// Launches in progress (counted before the closed check, so a stop can wait for them).
    pub(crate) active: usize,
    /// One launch per name: later launches of the name wait for the first one's result.
    pub(crate) launching: HashMap<SessionName, watch::Receiver<Option<LaunchResult>>>,
}

#[derive(Debug, Default)]
pub(crate) struct Gate {
    pub(crate) slot: tokio::sync::Mutex<SlotState>,
    /// Serializes every runtime side effect of the workspace (ops, reconciler, recovery).
    pub(crate) exec: tokio::sync::Mutex<()>,
    pub(crate) sessions: parking_lot::Mutex<SessionGate>,
    pub(crate) sessions_idle: Notify,
    /// The workspace row as last committed through this gate. Every write of the row
    /// goes through the gate (under the exec lock), so this is the stored row; it is
    /// cleared when a write fails (the stored row is then unknown) and read again.
    pub(crate) row: parking_lot::Mutex<Option<crate::model::Workspace>>,
    /// True once a stop removed every session and none was launched since: the next
    /// stop can skip reading the session rows. False (unknown) on a fresh gate.
    pub(crate) no_sessions: std::sync::atomic::AtomicBool,
    /// Bumped whenever an op or session change finishes; the reconciler acts only on
    /// workspaces whose epoch did not move while it listed the runtime.
    pub(crate) epoch: AtomicU64,
}

impl Gate {
    pub(crate) fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Refuses new session launches and waits until the launches in progress ended.
    pub(crate) async fn close_sessions(&self, why: SessionsClosed) {
        self.sessions.lock().closed = Some(why);
        loop {
            let notified = self.sessions_idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.sessions.lock().active == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn open_sessions(&self) {
        self.sessions.lock().closed = None;
    }
}

/// The gate registry.
#[derive(Debug, Default)]
pub(crate) struct Gates {
    map: parking_lot::Mutex<HashMap<WorkspaceId, Arc<Gate>>>,
}

impl Gates {
    pub(crate) fn get(&self, id: &WorkspaceId) -> Arc<Gate> {
        self.map.lock().entry(id.clone()).or_default().clone()
    }

    pub(crate) fn existing(&self, id: &WorkspaceId) -> Option<Arc<Gate>> {
        self.map.lock().get(id).cloned()
    }

    pub(crate) fn remove(&self, id: &WorkspaceId) {
        self.map.lock().remove(id);
    }

    pub(crate) fn epochs(&self) -> HashMap<WorkspaceId, u64> {
        self.map
            .lock()
            .iter()
            .map(|(k, g)| (k.clone(), g.epoch()))
            .collect()
    }
}
