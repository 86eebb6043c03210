//! The lifecycle state machine: a pure `(state, event) -> (state, effects)` function.
//!
//! No I/O and no clock: the engine executes the returned effects through the ports.
//! Every cell of the table is covered by the table-driven test at the bottom.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a workspace is in its lifecycle. A deleted workspace has no state: it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// Boot recovery could not finish a delete (the runtime kept failing); delete again.
    DeleteFailed,
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
            FailureReason::DeleteFailed => "delete_failed",
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
    /// Boot recovery gave up finishing a delete: the workspace becomes `failed`.
    DeleteFailed,
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
            LifecycleEvent::DeleteFailed => "delete_failed",
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

/// What a transition makes the engine do, in the order given.
///
/// A transition is carried out by the engine's one interpreter: the record effects
/// (only [`Effect::MintIncarnation`]) shape the transition's commit, which moves the
/// row and appends the event in one store write; then the runtime effects run, in
/// order, and the first that fails ends the list. A transition whose next state is
/// its current state and that has no record effect commits nothing (a no-op, or
/// recovery re-running the effects of an interrupted stop or delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Record effect: the commit mints incarnation n+1 and a fresh token (only its
    /// hash is stored).
    MintIncarnation,
    /// Prepare the directory and launch the main process of the minted incarnation.
    Launch,
    /// Remove whatever a cancelled or failed launch left behind.
    RemovePartial,
    /// Stop every session (awaiting in-flight launches first).
    StopSessions,
    /// Stop the main process: SIGTERM, grace, SIGKILL.
    StopMain,
    /// Remove the main resource of an exited process.
    RemoveExited,
    /// Remove runtime resources: the main resource, and what `prepare` created
    /// (volume, the engine's worktree).
    RemoveResources,
}

impl Effect {
    /// Whether the effect is part of the transition's commit rather than a runtime
    /// call after it. Record effects always come first in a transition's list.
    pub fn is_record(self) -> bool {
        matches!(self, Effect::MintIncarnation)
    }

    /// A stable lowercase name, for messages and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::MintIncarnation => "mint_incarnation",
            Effect::Launch => "launch",
            Effect::RemovePartial => "remove_partial",
            Effect::StopSessions => "stop_sessions",
            Effect::StopMain => "stop_main",
            Effect::RemoveExited => "remove_exited",
            Effect::RemoveResources => "remove_resources",
        }
    }
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

impl Transition {
    /// Whether carrying it out writes a commit: the state moves or something is minted.
    /// A transition that does neither is a no-op for the store (its effects, if any,
    /// still run).
    pub fn commits(&self, from: State) -> bool {
        self.next != Next::State(from) || self.effects.iter().any(|e| e.is_record())
    }
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
        // Stop: a no-op on a stopped workspace. Re-entering `stopping` is recovery
        // finishing a stop that an engine crash or shutdown interrupted.
        (S::Stopped, Ev::Stop) => to(S::Stopped, &[]),
        (S::Running | S::Failed | S::Starting | S::Stopping, Ev::Stop) => {
            to(S::Stopping, &[E::StopSessions, E::StopMain])
        }
        (S::Stopping, Ev::Stopped) => to(S::Stopped, &[]),
        (S::Stopping, Ev::StopFailed) => to(S::Failed, &[]),
        // Observed by reconciliation.
        (S::Running, Ev::Exited(0)) => to(S::Stopped, &[E::StopSessions, E::RemoveExited]),
        (S::Running, Ev::Exited(_)) => to(S::Failed, &[E::StopSessions, E::RemoveExited]),
        (S::Running, Ev::Missing) => to(S::Failed, &[E::StopSessions]),
        // Delete works from every state. A stopped workspace's process is already
        // stopped (removing its resource stops anything left); re-entering `deleting`
        // is a retry, or recovery finishing the delete.
        (S::Stopped, Ev::Delete) => to(S::Deleting, &[E::StopSessions, E::RemoveResources]),
        (_, Ev::Delete) => to(
            S::Deleting,
            &[E::StopSessions, E::StopMain, E::RemoveResources],
        ),
        (S::Deleting, Ev::Deleted) => Ok(Transition {
            next: Next::Gone,
            effects: vec![],
        }),
        (S::Deleting, Ev::DeleteFailed) => to(S::Failed, &[]),
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

    const EVENTS: [LifecycleEvent; 13] = [
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
        Ev::DeleteFailed,
    ];

    /// The whole table, one row per state, one column per event in `EVENTS` order.
    /// `-` is a refused transition; `gone` means deleted.
    fn expected(state: State, event: LifecycleEvent) -> Option<(Next, Vec<Effect>)> {
        let st = |s| Some((Next::State(s), vec![]));
        let stop_fx = vec![E::StopSessions, E::StopMain];
        use State::*;
        match (state, event) {
            (Stopped, Ev::Delete) => Some((
                Next::State(Deleting),
                vec![E::StopSessions, E::RemoveResources],
            )),
            (_, Ev::Delete) => Some((
                Next::State(Deleting),
                vec![E::StopSessions, E::StopMain, E::RemoveResources],
            )),
            (Stopped, Ev::Start) | (Failed, Ev::Start) => {
                Some((Next::State(Starting), vec![E::MintIncarnation, E::Launch]))
            }
            (Running, Ev::Start) => st(Running),
            (Starting, Ev::Launched) => st(Running),
            (Starting, Ev::StartFailed(_)) => Some((Next::State(Failed), vec![E::RemovePartial])),
            (Starting, Ev::StartCancelled) => Some((Next::State(Stopped), vec![E::RemovePartial])),
            (Stopped, Ev::Stop) => st(Stopped),
            (Running, Ev::Stop)
            | (Failed, Ev::Stop)
            | (Starting, Ev::Stop)
            | (Stopping, Ev::Stop) => Some((Next::State(Stopping), stop_fx)),
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
            (Deleting, Ev::DeleteFailed) => st(Failed),
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
        // 78 cells; the count pins the table's shape so a new permissive arm is noticed.
        assert_eq!(refused, 78 - 24);
    }

    #[test]
    fn record_effects_come_first_and_only_real_moves_commit() {
        for state in State::ALL {
            for event in EVENTS {
                let Ok(t) = transition(state, event) else {
                    continue;
                };
                let first_runtime = t.effects.iter().position(|e| !e.is_record());
                if let Some(i) = first_runtime {
                    assert!(
                        t.effects[i..].iter().all(|e| !e.is_record()),
                        "{state} + {event:?}: a record effect after a runtime effect"
                    );
                }
                let stays = t.next == Next::State(state);
                assert_eq!(
                    t.commits(state),
                    !stays || t.effects.contains(&E::MintIncarnation),
                    "{state} + {event:?}"
                );
            }
        }
        // The no-ops of the contract: nothing written, nothing run.
        for (state, event) in [(State::Running, Ev::Start), (State::Stopped, Ev::Stop)] {
            let t = transition(state, event).unwrap();
            assert!(!t.commits(state) && t.effects.is_empty());
        }
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
