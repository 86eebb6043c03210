//! The per-workspace merge table of `lifecycle.md`: how a new request meets the op in
//! flight and the one queued. A pure function; the engine's gate applies its decision.
//!
//! Later requests win conflicts (like systemd's job merging): a queued op merges with a
//! newer request, stop and delete preempt the start phase of an in-flight start or
//! restart, and nothing but another delete gets past a delete.

use serde::{Deserialize, Serialize};

/// The four kinds of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Start the main process (a no-op on a running workspace).
    Start,
    /// Stop sessions and the main process (a no-op on a stopped workspace).
    Stop,
    /// Stop then start (acts as start on a stopped or failed workspace).
    Restart,
    /// Stop and remove everything, then the rows.
    Delete,
}

impl OpKind {
    /// All kinds, for exhaustive tests.
    pub const ALL: [OpKind; 4] = [OpKind::Start, OpKind::Stop, OpKind::Restart, OpKind::Delete];

    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Start => "start",
            OpKind::Stop => "stop",
            OpKind::Restart => "restart",
            OpKind::Delete => "delete",
        }
    }
}

/// Which half of a restart is running. Starts are always in their start phase; stops
/// and deletes have no start phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Stopping the previous incarnation (restart only).
    StopPhase,
    /// Launching the new incarnation.
    StartPhase,
    /// Any phase of a stop or delete.
    Other,
}

/// The op in flight, as far as merging cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// Its kind.
    pub kind: OpKind,
    /// Its phase.
    pub phase: Phase,
    /// It has been preempted (its start phase is being cancelled); nothing joins it.
    pub preempted: bool,
}

/// What is pending on a workspace's gate. There is never a queued op without one in
/// flight, so that state cannot be written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Nothing in flight, nothing queued.
    Idle,
    /// One op in flight and at most one queued.
    Busy {
        /// The op in flight.
        in_flight: InFlight,
        /// The queued op's kind, if any.
        queued: Option<OpKind>,
    },
}

/// Why a request is refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A delete is in flight or queued: 409 `workspace_deleting`.
    WorkspaceDeleting,
}

/// What the gate does with a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Becomes the op in flight now.
    Run,
    /// Shares the in-flight op (same op id, `joined` + 1).
    JoinInFlight,
    /// Shares the queued op.
    JoinQueued,
    /// Becomes the queued op (nothing was queued).
    Queue,
    /// Becomes the queued op; the callers of the old queued op get `superseded`.
    ReplaceQueued,
    /// The queued start becomes a restart: its callers and this one share it (same op
    /// id) and get the restart's result. Only a restart absorbs, only a start.
    Absorb,
    /// Cancels the start phase of the in-flight op (which ends `cancelled`), then
    /// becomes the queued op, replacing any queued one.
    Preempt,
    /// Refused.
    Refuse(Refusal),
}

/// The merge table. Total over every `(slot, request)`.
pub fn merge(slot: Slot, request: OpKind) -> Decision {
    use Decision as D;
    use OpKind as K;
    let (in_flight, queued) = match slot {
        Slot::Idle => return D::Run,
        Slot::Busy { in_flight, queued } => (in_flight, queued),
    };
    // Nothing gets past a delete but another delete, which joins it.
    if in_flight.kind == K::Delete {
        return if request == K::Delete {
            D::JoinInFlight
        } else {
            D::Refuse(Refusal::WorkspaceDeleting)
        };
    }
    if queued == Some(K::Delete) {
        return if request == K::Delete {
            D::JoinQueued
        } else {
            D::Refuse(Refusal::WorkspaceDeleting)
        };
    }
    let startish = matches!(in_flight.kind, K::Start | K::Restart);
    let can_preempt = startish && !in_flight.preempted;
    match queued {
        // A queued op merges with the newer request.
        Some(q) => match (request, q) {
            (K::Delete | K::Stop, _) if can_preempt && !(request == K::Stop && q == K::Stop) => {
                D::Preempt
            }
            (K::Delete, _) => D::ReplaceQueued,
            (K::Stop, K::Stop) => D::JoinQueued,
            (K::Stop, _) => D::ReplaceQueued,
            (K::Start, K::Start | K::Restart) => D::JoinQueued,
            (K::Start, _) => D::ReplaceQueued,
            (K::Restart, K::Restart) => D::JoinQueued,
            (K::Restart, K::Start) => D::Absorb,
            (K::Restart, _) => D::ReplaceQueued,
        },
        // Nothing queued: the column of the in-flight op decides.
        None => match (in_flight.kind, request) {
            (K::Stop, K::Stop) => D::JoinInFlight,
            (K::Stop, _) => D::Queue,
            (_, K::Stop | K::Delete) if can_preempt => D::Preempt,
            // A preempted op always has its preemptor queued, so these are unreachable
            // through the gate; queueing is the safe answer for a total function.
            (_, K::Stop | K::Delete) => D::Queue,
            (K::Start | K::Restart, K::Start) if !in_flight.preempted => D::JoinInFlight,
            (K::Restart, K::Restart)
                if in_flight.phase == Phase::StopPhase && !in_flight.preempted =>
            {
                D::JoinInFlight
            }
            (_, K::Start | K::Restart) => D::Queue,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table as data: for each slot (row label) the decision for
    /// start, stop, restart, delete (columns). Codes: run, jf (join in flight),
    /// jq (join queued), q (queue), rq (replace queued), abs (absorb the queued start),
    /// pre (preempt), del (refused: workspace_deleting).
    const TABLE: &str = "
        idle                     | run  run  run  run
        start                    | jf   pre  q    pre
        start/preempted          | q    q    q    q
        restart:stop             | jf   pre  jf   pre
        restart:start            | jf   pre  q    pre
        stop                     | q    jf   q    q
        delete                   | del  del  del  jf
        start+start              | jq   pre  abs  pre
        start+stop               | rq   jq   rq   pre
        start+restart            | jq   pre  jq   pre
        start+delete             | del  del  del  jq
        start/preempted+stop     | rq   jq   rq   rq
        start/preempted+delete   | del  del  del  jq
        restart:stop+restart     | jq   pre  jq   pre
        restart:start+restart    | jq   pre  jq   pre
        restart:start/preempted+stop   | rq   jq   rq   rq
        restart:stop/preempted+delete  | del  del  del  jq
        stop+start               | jq   rq   abs  rq
        stop+stop                | rq   jq   rq   rq
        stop+restart             | jq   rq   jq   rq
        stop+delete              | del  del  del  jq
        delete+start             | del  del  del  jf
    ";

    fn parse_slot(label: &str) -> Slot {
        if label == "idle" {
            return Slot::Idle;
        }
        let (flight, queued) = match label.split_once('+') {
            Some((f, q)) => (f, Some(kind(q))),
            None => (label, None),
        };
        let (flight, preempted) = match flight.strip_suffix("/preempted") {
            Some(f) => (f, true),
            None => (flight, false),
        };
        let (k, phase) = match flight {
            "start" => (OpKind::Start, Phase::StartPhase),
            "restart:stop" => (OpKind::Restart, Phase::StopPhase),
            "restart:start" => (OpKind::Restart, Phase::StartPhase),
            "stop" => (OpKind::Stop, Phase::Other),
            "delete" => (OpKind::Delete, Phase::Other),
            other => panic!("bad in-flight label {other}"),
        };
        Slot::Busy {
            in_flight: InFlight {
                kind: k,
                phase,
                preempted,
            },
            queued,
        }
    }

    fn kind(s: &str) -> OpKind {
        match s {
            "start" => OpKind::Start,
            "stop" => OpKind::Stop,
            "restart" => OpKind::Restart,
            "delete" => OpKind::Delete,
            other => panic!("bad kind {other}"),
        }
    }

    fn decision(code: &str) -> Decision {
        match code {
            "run" => Decision::Run,
            "jf" => Decision::JoinInFlight,
            "jq" => Decision::JoinQueued,
            "q" => Decision::Queue,
            "rq" => Decision::ReplaceQueued,
            "abs" => Decision::Absorb,
            "pre" => Decision::Preempt,
            "del" => Decision::Refuse(Refusal::WorkspaceDeleting),
            other => panic!("bad decision code {other}"),
        }
    }

    #[test]
    fn every_cell_of_the_merge_table() {
        let mut cells = 0;
        for line in TABLE.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (label, row) = line.split_once('|').expect("row has a label");
            let slot = parse_slot(label.trim());
            let codes: Vec<_> = row.split_whitespace().collect();
            assert_eq!(codes.len(), 4, "row {label}");
            for (request, code) in OpKind::ALL.into_iter().zip(codes) {
                assert_eq!(
                    merge(slot, request),
                    decision(code),
                    "slot {label}, request {request:?}"
                );
                cells += 1;
            }
        }
        assert_eq!(cells, 22 * 4);
    }

    /// Every representable slot gives a decision, and the structural rules hold for all
    /// of them (not only the rows written above).
    #[test]
    fn structural_rules_hold_for_every_slot() {
        let phases = [Phase::StopPhase, Phase::StartPhase, Phase::Other];
        let mut slots = vec![Slot::Idle];
        for kind in OpKind::ALL {
            for phase in phases {
                for preempted in [false, true] {
                    // Only a start phase can be preempted.
                    if preempted && !matches!(kind, OpKind::Start | OpKind::Restart) {
                        continue;
                    }
                    for queued in [
                        None,
                        Some(OpKind::Start),
                        Some(OpKind::Stop),
                        Some(OpKind::Restart),
                        Some(OpKind::Delete),
                    ] {
                        slots.push(Slot::Busy {
                            in_flight: InFlight {
                                kind,
                                phase,
                                preempted,
                            },
                            queued,
                        });
                    }
                }
            }
        }
        for slot in slots {
            for request in OpKind::ALL {
                let d = merge(slot, request);
                if let Slot::Busy { in_flight, queued } = slot {
                    let deleting =
                        in_flight.kind == OpKind::Delete || queued == Some(OpKind::Delete);
                    // Only a delete gets past a delete.
                    assert_eq!(
                        deleting && request != OpKind::Delete,
                        d == Decision::Refuse(Refusal::WorkspaceDeleting),
                        "{slot:?} {request:?}"
                    );
                    // A preempted op is never joined.
                    if in_flight.preempted {
                        assert_ne!(d, Decision::JoinInFlight, "{slot:?} {request:?}");
                    }
                    // Joining/replacing the queue needs a queue; queueing needs an empty one.
                    if matches!(
                        d,
                        Decision::JoinQueued | Decision::ReplaceQueued | Decision::Absorb
                    ) {
                        assert!(queued.is_some(), "{slot:?} {request:?}");
                    }
                    // Only a restart absorbs, and only a queued start.
                    if d == Decision::Absorb {
                        assert_eq!((request, queued), (OpKind::Restart, Some(OpKind::Start)));
                    }
                    if d == Decision::Queue {
                        assert!(queued.is_none(), "{slot:?} {request:?}");
                    }
                    // Only stop and delete preempt, and only a start phase that can still be cancelled.
                    if d == Decision::Preempt {
                        assert!(matches!(request, OpKind::Stop | OpKind::Delete));
                        assert!(
                            matches!(in_flight.kind, OpKind::Start | OpKind::Restart)
                                && !in_flight.preempted
                        );
                    }
                } else {
                    assert_eq!(d, Decision::Run);
                }
            }
        }
    }
}
