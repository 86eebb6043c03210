//! The per-workspace gate: one op in flight and one queued, the row last committed, the
//! session registry, and the locks that order them.
//!
//! - `intake` (async) serialises request intake: the merge decision, the op insert and
//!   the slot update of one request, and the driver's hand-over from one op to the next.
//! - `exec` (async) serialises runtime side effects: ops, the reconciler, recovery.
//! - `state` (sync, never held across an `await`) holds what readers snapshot: the
//!   committed row and the pending ops, together, so a read is one consistent moment
//!   and never waits for an op or a runtime call.
//!
//! A gate is created on first use of an existing workspace and lives until the
//! workspace is deleted. Different workspaces never share a lock: the registry map is
//! only held to look a gate up.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ids::{OpId, SessionName, WorkspaceId};
use crate::merge::{InFlight, OpKind, Phase, Slot};
use crate::model::{Operation, Session, Workspace};

use super::EngineError;

/// Whether an op's row is durable. An op that runs at once is not inserted at intake:
/// its row goes out with its first write (one write fewer per op), and the request that
/// created it, and every request that joined it, is answered only once that write is
/// durable, so an acknowledged op is always on record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recording {
    /// Not written yet.
    Pending,
    /// On record.
    Durable,
    /// Its first write failed: the requests that wait for it get this error.
    Failed(EngineError),
}

/// The shared handle of an op's [`Recording`].
#[derive(Debug, Clone)]
pub(crate) struct Record(Arc<watch::Sender<Recording>>);

impl Record {
    /// An op already on record (inserted at intake).
    pub(crate) fn durable() -> Self {
        Self(Arc::new(watch::channel(Recording::Durable).0))
    }

    /// An op whose row goes out with its first write.
    pub(crate) fn pending() -> Self {
        Self(Arc::new(watch::channel(Recording::Pending).0))
    }

    pub(crate) fn is_durable(&self) -> bool {
        *self.0.borrow() == Recording::Durable
    }

    /// Settles the recording with a write's outcome: a durable row stays durable.
    pub(crate) fn settle(&self, written: Result<(), EngineError>) {
        self.0.send_if_modified(|r| match (&*r, written) {
            (Recording::Durable, _) => false,
            (_, Ok(())) => {
                *r = Recording::Durable;
                true
            }
            (Recording::Pending, Err(e)) => {
                *r = Recording::Failed(e);
                true
            }
            (Recording::Failed(_), Err(_)) => false,
        });
    }

    /// Waits until the op is on record (or its first write failed).
    pub(crate) async fn wait(&self) -> Result<(), EngineError> {
        let mut rx = self.0.subscribe();
        let settled = rx.wait_for(|r| *r != Recording::Pending).await;
        match settled.as_deref() {
            Ok(Recording::Failed(e)) => Err(e.clone()),
            Ok(_) => Ok(()),
            Err(_) => Err(EngineError::ShuttingDown),
        }
    }
}

/// Settles a record as failed when dropped, unless it was settled before: an op's
/// driver holds one, so that even a panic outside the op's own unwinding guard leaves
/// no request waiting for ever.
#[derive(Debug)]
pub(crate) struct SettleOnDrop(pub(crate) Record);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        self.0.settle(Err(EngineError::Internal(
            "the op's driver ended before the op was on record".into(),
        )));
    }
}

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
    /// The op's runtime work ends by this instant (a stop or delete: one stop ceiling
    /// in total). A preempted start's cleanup inherits its preemptor's deadline, so a
    /// delete that cancels a start still ends within one ceiling.
    pub(crate) deadline: Option<Instant>,
    /// A delete whose preflight passed at intake does not check again.
    pub(crate) preflighted: bool,
    /// Whether its row is on record yet.
    pub(crate) record: Record,
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
            deadline: None,
            preflighted: false,
            record: Record::durable(),
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

    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.queued.is_none()
    }

    pub(crate) fn pending(&self) -> PendingView {
        PendingView {
            in_flight: self.in_flight.as_ref().map(|p| p.op.clone()),
            queued: self.queued.as_ref().map(|p| p.op.clone()),
        }
    }
}

/// The ops pending on a workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingView {
    /// The op in flight.
    pub in_flight: Option<Operation>,
    /// The op queued behind it.
    pub queued: Option<Operation>,
}

impl PendingView {
    /// Nothing in flight, nothing queued.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.queued.is_none()
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

/// What the gate's sync lock guards.
#[derive(Debug, Default)]
pub(crate) struct GateState {
    /// The row as last committed through this gate (`None`: not known, read the store).
    /// Every write of the row goes through the gate under the exec lock (the store's
    /// writer model), so this is the stored row.
    pub(crate) row: Option<Workspace>,
    /// The rows were deleted.
    pub(crate) gone: bool,
    /// Row writes in progress; a reader fills `row` from the store only when none is.
    pub(crate) writing: u32,
    /// Row writes finished; a reader fills `row` only if none finished since it began.
    pub(crate) writes: u64,
    pub(crate) slot: SlotState,
    pub(crate) sessions: SessionGate,
    /// True once a stop removed every session and none was launched since: the next
    /// stop can skip reading the session rows. False (unknown) on a fresh gate.
    pub(crate) no_sessions: bool,
    /// A driver is running for this gate. Set when an op is put in flight on an idle
    /// gate, cleared by the driver in the same state update in which it finds nothing
    /// in flight: so exactly one driver runs a gate's ops, and an op is never run
    /// twice (a driver about to leave and a driver spawned for a new request).
    pub(crate) driving: bool,
}

#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) intake: tokio::sync::Mutex<()>,
    pub(crate) exec: tokio::sync::Mutex<()>,
    state: parking_lot::Mutex<GateState>,
    pub(crate) sessions_idle: Notify,
    /// Bumped after every change of `state` (`wait` re-evaluates on it).
    changed: watch::Sender<u64>,
    /// Bumped whenever an op or session change finishes; the reconciler acts only on
    /// workspaces whose epoch did not move while it listed the runtime.
    epoch: AtomicU64,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            intake: tokio::sync::Mutex::new(()),
            exec: tokio::sync::Mutex::new(()),
            state: parking_lot::Mutex::new(GateState::default()),
            sessions_idle: Notify::new(),
            changed: watch::channel(0).0,
            epoch: AtomicU64::new(0),
        }
    }
}

impl Gate {
    /// Reads the state. Never hold the guard across an `await`, and never call
    /// [`Gate::update`] while holding it.
    pub(crate) fn read(&self) -> parking_lot::MutexGuard<'_, GateState> {
        self.state.lock()
    }

    /// Changes the state and wakes `wait` callers. A waiter subscribes before it reads
    /// a snapshot, so skipping the notification while nobody waits loses no wake-up.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut GateState) -> R) -> R {
        let r = f(&mut self.state.lock());
        if self.changed.receiver_count() > 0 {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        r
    }

    /// A receiver that changes whenever the state did.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Refuses new session launches and waits until the launches in progress ended.
    pub(crate) async fn close_sessions(&self, why: SessionsClosed) {
        self.update(|st| st.sessions.closed = Some(why));
        loop {
            let notified = self.sessions_idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.read().sessions.active == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn open_sessions(&self) {
        self.update(|st| st.sessions.closed = None);
    }
}

/// The gate registry.
#[derive(Debug, Default)]
pub(crate) struct Gates {
    map: parking_lot::Mutex<HashMap<WorkspaceId, Arc<Gate>>>,
}

impl Gates {
    /// The gate of a workspace the caller knows exists, created on first use.
    pub(crate) fn get(&self, id: &WorkspaceId) -> Arc<Gate> {
        self.map.lock().entry(id.clone()).or_default().clone()
    }

    pub(crate) fn existing(&self, id: &WorkspaceId) -> Option<Arc<Gate>> {
        self.map.lock().get(id).cloned()
    }

    pub(crate) fn remove(&self, id: &WorkspaceId) {
        self.map.lock().remove(id);
    }

    pub(crate) fn all(&self) -> Vec<(WorkspaceId, Arc<Gate>)> {
        self.map
            .lock()
            .iter()
            .map(|(k, g)| (k.clone(), Arc::clone(g)))
            .collect()
    }

    pub(crate) fn epochs(&self) -> HashMap<WorkspaceId, u64> {
        self.map
            .lock()
            .iter()
            .map(|(k, g)| (k.clone(), g.epoch()))
            .collect()
    }
}
