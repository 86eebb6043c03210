//! The lifecycle state machine: a pure `(state, event) -> (state, effects)` function.
//!
//! No I/O and no clock: the engine executes the returned effects through the ports.
//! Every cell of the table is covered by the table-driven test at the bottom.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a workspace is in its lifecycle. A deleted workspace has no state: it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created or stopped; no process runs.
    Stopped,
    /// A start is launching the main process.
    Starting,
    /// The main process of the current incarnation runs.
    Running,
    /// Sessions and the main process are being stopped.
    Stopping,
    /// A start failed, the process crashed or vanished; see `last_error`.
    Failed,
    /// A delete is removing everything.
    Deleting,
}

impl State {
    /// All states, for exhaustive tests and metrics.
    pub const ALL: [State; 6] = [
        State::Stopped,
        State::Starting,
        State::Running,
        State::Stopping,
        State::Failed,
        State::Deleting,
    ];

    /// `starting`, `stopping` and `deleting` are transitional: after boot recovery no
    /// workspace may remain in one of them.
    pub fn is_transitional(self) -> bool {
        matches!(self, State::Starting | State::Stopping | State::Deleting)
    }

    /// The state as its stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Failed => "failed",
            State::Deleting => "deleting",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a workspace became `failed`. Stable codes, shown as `last_error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The runtime refused or failed the launch.
    StartFailed,
    /// The start was still running at the start ceiling.
    StartTimeout,
    /// The main process exited with a non-zero code.
    Exited,
    /// The record said running but the runtime had no resource.
    RuntimeMissing,
    /// Stopping the main process failed; it may still run.
    StopFailed,
    /// The engine stopped during the start and recovery found no live resource.
    Interrupted,
}

impl FailureReason {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            FailureReason::StartFailed => "start_failed",
            FailureReason::StartTimeout => "start_timeout",
            FailureReason::Exited => "exited",
            FailureReason::RuntimeMissing => "runtime_missing",
            FailureReason::StopFailed => "stop_failed",
            FailureReason::Interrupted => "interrupted",
        }
    }
}

/// What happened to a workspace: the input of [`transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// A start (or the start phase of a restart) begins.
    Start,
    /// The runtime launched the main process (or recovery adopted the live resource).
    Launched,
    /// The start ended without a running process.
    StartFailed(FailureReason),
    /// The start was preempted by a stop or delete and its partial resources removed.
    StartCancelled,
    /// A stop (or the stop phase of a restart) begins.
    Stop,
    /// Sessions and the main process are gone.
    Stopped,
    /// Stopping failed.
    StopFailed,
    /// The main process exited by itself with this code.
    Exited(i64),
    /// The runtime has no resource for a workspace recorded as running.
    Missing,
    /// A delete passed its preflight and begins removing things.
    Delete,
    /// Everything is removed; the rows go.
    Deleted,
}

impl LifecycleEvent {
    fn name(self) -> &'static str {
        match self {
            LifecycleEvent::Start => "start",
            LifecycleEvent::Launched => "launched",
            LifecycleEvent::StartFailed(_) => "start_failed",
            LifecycleEvent::StartCancelled => "start_cancelled",
            LifecycleEvent::Stop => "stop",
            LifecycleEvent::Stopped => "stopped",
            LifecycleEvent::StopFailed => "stop_failed",
            LifecycleEvent::Exited(_) => "exited",
            LifecycleEvent::Missing => "missing",
            LifecycleEvent::Delete => "delete",
            LifecycleEvent::Deleted => "deleted",
        }
    }
}

/// Where a transition leads: a state, or gone (deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The workspace is in this state.
    State(State),
    /// The workspace's rows are removed.
    Gone,
}

/// A side effect the engine must carry out, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Mint incarnation n+1 and a fresh token (store only its hash).
    MintIncarnation,
    /// Launch the main process with the new incarnation.
    Launch,
    /// Remove whatever a cancelled or failed launch left behind.
    RemovePartial,
    /// Stop every session (awaiting in-flight launches first).
    StopSessions,
    /// Stop the main process: SIGTERM, grace, SIGKILL.
    StopMain,
    /// Remove the main resource of an exited process.
    RemoveExited,
    /// Remove runtime resources: container, volume, the engine's worktree.
    RemoveResources,
    /// Remove the rows and append the `deleted` event.
    RemoveRows,
}

/// The event does not apply in this state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {event} to a workspace that is {from}")]
pub struct TransitionError {
    /// The state the workspace was in.
    pub from: State,
    /// The refused event's name.
    pub event: &'static str,
}

/// The result of a transition: the next place and the effects to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Where the workspace goes.
    pub next: Next,
    /// What the engine must do, in order.
    pub effects: Vec<Effect>,
}

fn to(state: State, effects: &[Effect]) -> Result<Transition, TransitionError> {
    Ok(Transition {
        next: Next::State(state),
        effects: effects.to_vec(),
    })
}

/// The lifecycle transition function. Pure and total: every `(state, event)` pair
/// gives either a transition or a typed error, never a panic.
///
/// # Errors
/// [`TransitionError`] when the event does not apply to `state`.
pub fn transition(state: State, event: LifecycleEvent) -> Result<Transition, TransitionError> {
    use Effect as E;
    use LifecycleEvent as Ev;
    use State as S;
    match (state, event) {
        // Start: a no-op on a running workspace (mints nothing).
        (S::Running, Ev::Start) => to(S::Running, &[]),
        (S::Stopped | S::Failed, Ev::Start) => to(S::Starting, &[E::MintIncarnation, E::Launch]),
        (S::Starting, Ev::Launched) => to(S::Running, &[]),
        (S::Starting, Ev::StartFailed(_)) => to(S::Failed, &[E::RemovePartial]),
        (S::Starting, Ev::StartCancelled) => to(S::Stopped, &[E::RemovePartial]),
        // Stop: a no-op on a stopped workspace.
        (S::Stopped, Ev::Stop) => to(S::Stopped, &[]),
        (S::Running | S::Failed | S::Starting, Ev::Stop) => {
            to(S::Stopping, &[E::StopSessions, E::StopMain])
        }
        (S::Stopping, Ev::Stopped) => to(S::Stopped, &[]),
        (S::Stopping, Ev::StopFailed) => to(S::Failed, &[]),
        // Observed by reconciliation.
        (S::Running, Ev::Exited(0)) => to(S::Stopped, &[E::StopSessions, E::RemoveExited]),
        (S::Running, Ev::Exited(_)) => to(S::Failed, &[E::StopSessions, E::RemoveExited]),
        (S::Running, Ev::Missing) => to(S::Failed, &[E::StopSessions]),
        // Delete works from every state; re-entering `deleting` is recovery finishing it.
        (_, Ev::Delete) => to(
            S::Deleting,
            &[
                E::StopSessions,
                E::StopMain,
                E::RemoveResources,
                E::RemoveRows,
            ],
        ),
        (S::Deleting, Ev::Deleted) => Ok(Transition {
            next: Next::Gone,
            effects: vec![],
        }),
        (from, event) => Err(TransitionError {
            from,
            event: event.name(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect as E;
    use LifecycleEvent as Ev;

    const EVENTS: [LifecycleEvent; 12] = [
        Ev::Start,
        Ev::Launched,
        Ev::StartFailed(FailureReason::StartTimeout),
        Ev::StartCancelled,
        Ev::Stop,
        Ev::Stopped,
        Ev::StopFailed,
        Ev::Exited(0),
        Ev::Exited(7),
        Ev::Missing,
        Ev::Delete,
        Ev::Deleted,
    ];

    /// The whole table, one row per state, one column per event in `EVENTS` order.
    /// `-` is a refused transition; `gone` means deleted.
    fn expected(state: State, event: LifecycleEvent) -> Option<(Next, Vec<Effect>)> {
        let st = |s| Some((Next::State(s), vec![]));
        let stop_fx = vec![E::StopSessions, E::StopMain];
        let delete = Some((
            Next::State(State::Deleting),
            vec![
                E::StopSessions,
                E::StopMain,
                E::RemoveResources,
                E::RemoveRows,
            ],
        ));
        use State::*;
        match (state, event) {
            (_, Ev::Delete) => delete,
            (Stopped, Ev::Start) | (Failed, Ev::Start) => {
                Some((Next::State(Starting), vec![E::MintIncarnation, E::Launch]))
            }
            (Running, Ev::Start) => st(Running),
            (Starting, Ev::Launched) => st(Running),
            (Starting, Ev::StartFailed(_)) => Some((Next::State(Failed), vec![E::RemovePartial])),
            (Starting, Ev::StartCancelled) => Some((Next::State(Stopped), vec![E::RemovePartial])),
            (Stopped, Ev::Stop) => st(Stopped),
            (Running, Ev::Stop) | (Failed, Ev::Stop) | (Starting, Ev::Stop) => {
                Some((Next::State(Stopping), stop_fx))
            }
            (Stopping, Ev::Stopped) => st(Stopped),
            (Stopping, Ev::StopFailed) => st(Failed),
            (Running, Ev::Exited(0)) => {
                Some((Next::State(Stopped), vec![E::StopSessions, E::RemoveExited]))
            }
            (Running, Ev::Exited(_)) => {
                Some((Next::State(Failed), vec![E::StopSessions, E::RemoveExited]))
            }
            (Running, Ev::Missing) => Some((Next::State(Failed), vec![E::StopSessions])),
            (Deleting, Ev::Deleted) => Some((Next::Gone, vec![])),
            _ => None,
        }
    }

    #[test]
    fn every_cell_of_the_transition_table() {
        let mut refused = 0;
        for state in State::ALL {
            for event in EVENTS {
                let got = transition(state, event);
                match expected(state, event) {
                    Some((next, effects)) => {
                        let t = got.unwrap_or_else(|e| panic!("{state} + {event:?} refused: {e}"));
                        assert_eq!((t.next, t.effects), (next, effects), "{state} + {event:?}");
                    }
                    None => {
                        let err = got.expect_err(&format!("{state} + {event:?} must be refused"));
                        assert_eq!(err.from, state);
                        refused += 1;
                    }
                }
            }
        }
        // 72 cells; the count pins the table's shape so a new permissive arm is noticed.
        assert_eq!(refused, 72 - 22);
    }

    #[test]
    fn no_op_start_and_stop_have_no_effects() {
        assert!(
            transition(State::Running, Ev::Start)
                .unwrap()
                .effects
                .is_empty()
        );
        assert!(
            transition(State::Stopped, Ev::Stop)
                .unwrap()
                .effects
                .is_empty()
        );
    }

    #[test]
    fn only_three_states_are_transitional() {
        let t: Vec<_> = State::ALL
            .into_iter()
            .filter(|s| s.is_transitional())
            .collect();
        assert_eq!(t, vec![State::Starting, State::Stopping, State::Deleting]);
    }
}
