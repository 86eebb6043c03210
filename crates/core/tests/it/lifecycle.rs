//! Start, stop, restart and delete through the gate (issue items 1–8 and 13).

use std::collections::BTreeSet;
use std::time::Duration;

use berth_core::ErrorCode;
use berth_core::engine::EngineError;
use berth_core::ids::{Incarnation, WorkspaceToken};
use berth_core::merge::OpKind;
use berth_core::model::{Actor, Cause, OpStatus};
use berth_core::ports::{ConflictReason, ProcessStatus, RuntimeError, Step};
use berth_core::state::{FailureReason, State};
use berth_core::testkit::{FakeCall, Plan};
use tokio::time::Instant;

use crate::support::{Rig, wait_all};

fn token_of(rig: &Rig, incarnation: u64) -> WorkspaceToken {
    let rec = rig
        .rt
        .launches()
        .into_iter()
        .find(|l| l.incarnation == Incarnation(incarnation))
        .expect("launch of that incarnation");
    WorkspaceToken::from_presented(&rec.env["BERTH_WORKSPACE_TOKEN"])
}

#[tokio::test(start_paused = true)]
async fn two_concurrent_starts_launch_once_and_share_the_op() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    let (t1, t2) = tokio::join!(
        rig.engine.start(&ws.id, Actor::Api),
        rig.engine.start(&ws.id, Actor::Cli)
    );
    let (t1, t2) = (t1.unwrap(), t2.unwrap());
    assert_eq!(t1.op_id(), t2.op_id(), "both callers get the same op");
    let ops = wait_all(vec![t1, t2]).await;
    assert_eq!(ops[0], ops[1]);
    assert_eq!(ops[0].status, OpStatus::Succeeded);
    assert_eq!(ops[0].joined, 1);
    assert_eq!(rig.rt.calls(FakeCall::Launch), 1, "one runtime launch");
    let ws = rig.engine.workspace(&ws.id).await.unwrap();
    assert_eq!((ws.state, ws.incarnation), (State::Running, Incarnation(1)));
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn start_on_a_running_workspace_is_a_no_op_that_mints_nothing() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let token = token_of(&rig, 1);
    let op = rig.op(OpKind::Start, &ws.id).await;
    assert_eq!(op.status, OpStatus::Succeeded);
    assert_eq!(op.incarnation, None, "a no-op start mints no incarnation");
    let after = rig.engine.workspace(&ws.id).await.unwrap();
    assert_eq!(
        (after.incarnation, after.version),
        (Incarnation(1), ws.version),
        "no new incarnation, no write"
    );
    assert_eq!(rig.rt.launches().len(), 1, "no new launch, so no new token");
    assert!(
        rig.engine.verify_token(&token).await.unwrap().is_some(),
        "the running token still verifies"
    );
    // Stop on a stopped workspace is the same kind of no-op.
    rig.op(OpKind::Stop, &ws.id).await;
    assert!(
        rig.engine.verify_token(&token).await.unwrap().is_none(),
        "a stopped workspace's token does not verify"
    );
    let stopped = rig.engine.workspace(&ws.id).await.unwrap();
    let op = rig.op(OpKind::Stop, &ws.id).await;
    assert_eq!(op.status, OpStatus::Succeeded);
    assert_eq!(
        rig.engine.workspace(&ws.id).await.unwrap().version,
        stopped.version
    );
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn ten_concurrent_restarts_give_at_most_two_cycles_each_serving_later_callers() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.rt.set_delay(FakeCall::Stop, Duration::from_millis(300));
    let launch = rig.rt.breakpoints().hold("launch");
    let mut requests = Vec::new();
    // First wave: five restarts while the first cycle is still stopping.
    for i in 0..5 {
        let actor = if i % 2 == 0 {
            Actor::Api
        } else {
            Actor::Policy
        };
        let at = rig.clock_now();
        requests.push((at, rig.engine.restart(&ws.id, actor).await.unwrap()));
    }
    // Second wave: five more once the first cycle's start phase began.
    launch.reached(1).await;
    for i in 0..5 {
        let actor = if i % 2 == 0 {
            Actor::Policy
        } else {
            Actor::Api
        };
        let at = rig.clock_now();
        requests.push((at, rig.engine.restart(&ws.id, actor).await.unwrap()));
    }
    launch.release();
    let mut ops = Vec::new();
    for (at, ticket) in requests {
        let op = ticket.wait().await.unwrap();
        assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
        let began = op.start_phase_at.expect("a restart has a start phase");
        assert!(
            began > at,
            "a caller was served by a cycle that began before its request"
        );
        ops.push(op);
    }
    let distinct: BTreeSet<_> = ops.iter().map(|o| o.id.clone()).collect();
    let cycles = rig.rt.launches().len() - 1;
    assert!(cycles <= 2, "at most 2 stop→start cycles, got {cycles}");
    assert_eq!(cycles, 2, "the second wave needs exactly one more cycle");
    assert_eq!(distinct.len(), cycles);
    let now = rig.engine.workspace(&ws.id).await.unwrap();
    assert_eq!(now.state, State::Running);
    assert_eq!(
        now.incarnation,
        Incarnation(1 + cycles as u64),
        "tokens minted == cycles"
    );
    let latest = token_of(&rig, now.incarnation.0);
    assert!(
        rig.engine.verify_token(&latest).await.unwrap().is_some(),
        "the final token verifies"
    );
    for old in 1..now.incarnation.0 {
        assert!(
            rig.engine
                .verify_token(&token_of(&rig, old))
                .await
                .unwrap()
                .is_none(),
            "token of incarnation {old} must not verify"
        );
    }
    assert_eq!(
        rig.rt.live_mains(&ws.id).len(),
        1,
        "one process runs at the end, the latest incarnation's"
    );
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn restarts_of_two_workspaces_run_in_parallel() {
    let rig = Rig::new().await;
    let a = rig.running("a").await;
    let b = rig.running("b").await;
    let held = rig.rt.breakpoints().hold(&format!("launch:{}", a.id));
    let ta = rig.engine.restart(&a.id, Actor::Api).await.unwrap();
    held.reached(1).await;
    let op_b = rig.op(OpKind::Restart, &b.id).await;
    assert_eq!(op_b.status, OpStatus::Succeeded);
    assert_eq!(rig.state(&b).await, State::Running);
    assert!(
        ta.finished().is_none(),
        "A is still held at its breakpoint while B finished"
    );
    assert_eq!(rig.state(&a).await, State::Starting);
    held.release();
    assert_eq!(ta.wait().await.unwrap().status, OpStatus::Succeeded);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn stop_during_a_held_start_cancels_it_and_removes_the_partial_resource() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    let held = rig
        .rt
        .breakpoints()
        .hold(&format!("launch.created:{}", ws.id));
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    held.reached(1).await;
    assert_eq!(
        rig.rt.live_mains(&ws.id).len(),
        1,
        "the partial resource exists"
    );
    let stop = rig.engine.stop(&ws.id, Actor::Api).await.unwrap();
    let start = start.wait().await.unwrap();
    let stop = stop.wait().await.unwrap();
    assert_eq!(start.status, OpStatus::Cancelled);
    assert_eq!(start.superseded_by.as_ref(), Some(&stop.id));
    assert_eq!(stop.status, OpStatus::Succeeded);
    assert_eq!(rig.state(&ws).await, State::Stopped);
    assert!(
        rig.rt.processes().iter().all(|p| p.workspace_id != ws.id),
        "partial resources removed"
    );
    let causes: Vec<_> = rig
        .store
        .all_events()
        .into_iter()
        .filter(|e| e.event.workspace_id == ws.id)
        .map(|e| e.event.cause)
        .collect();
    assert_eq!(
        causes,
        vec![Cause::Created, Cause::Start, Cause::StartCancelled]
    );
    held.release();
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn delete_during_a_start_that_never_returns_finishes_within_the_stop_ceiling() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    rig.rt.plan(FakeCall::Launch, Plan::Hang);
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    berth_core::testkit::wait_until("launch called", Duration::from_secs(1), || async {
        rig.rt.calls(FakeCall::Launch) == 1
    })
    .await;
    let began = Instant::now();
    let delete = rig.remove(&ws.id, false).await;
    assert!(
        began.elapsed() <= rig.config.stop_ceiling,
        "delete took {:?}",
        began.elapsed()
    );
    assert_eq!(delete.status, OpStatus::Succeeded, "{delete:?}");
    assert_eq!(start.wait().await.unwrap().status, OpStatus::Cancelled);
    let last = rig
        .store
        .all_events()
        .into_iter()
        .rfind(|e| e.event.workspace_id == ws.id)
        .unwrap();
    assert_eq!((last.event.cause, last.event.to), (Cause::Deleted, None));
    assert!(rig.rt.processes().is_empty(), "no resource left");
    match rig.engine.delete(&ws.id, false, Actor::Api).await {
        Err(EngineError::NotFound { .. }) => {}
        other => panic!("second delete must be NotFound, got {other:?}"),
    }
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn dirty_delete_is_refused_untouched_and_forced_delete_runs_in_order() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    for name in ["editor", "shell"] {
        rig.engine
            .launch_session(
                &ws.id,
                berth_core::ids::SessionName::parse(name).unwrap(),
                vec!["sleep".into()],
                Default::default(),
            )
            .await
            .unwrap();
    }
    let files = vec!["src/main.rs".to_owned(), "notes.txt".to_owned()];
    rig.rt.set_dirty(&ws.id, Ok(files.clone()));
    let before = rig.engine.workspace(&ws.id).await.unwrap();
    let events_before = rig.store.all_events().len();
    let refused = rig.remove(&ws.id, false).await;
    assert_eq!(refused.status, OpStatus::Failed);
    let error = refused.error.expect("refusal carries an error");
    assert_eq!(error.code, ErrorCode::WorkspaceDirty);
    assert_eq!(error.details["files"], files);
    assert_eq!(
        rig.engine.workspace(&ws.id).await.unwrap(),
        before,
        "state and version unchanged"
    );
    assert_eq!(rig.store.all_events().len(), events_before, "no event");
    assert_eq!(
        rig.engine.sessions(&ws.id).await.unwrap().len(),
        2,
        "session rows untouched"
    );
    assert_eq!(rig.rt.live_sessions(&ws.id).len(), 2, "sessions untouched");
    assert_eq!(
        rig.rt.calls(FakeCall::Stop) + rig.rt.calls(FakeCall::StopSession),
        0,
        "no stop issued"
    );
    // Sessions can still be launched after a refusal.
    rig.engine
        .launch_session(
            &ws.id,
            berth_core::ids::SessionName::parse("third").unwrap(),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
        .unwrap();
    // A directory that cannot be checked is refused too.
    rig.rt.set_dirty(&ws.id, Err("no such directory".into()));
    let failed = rig.remove(&ws.id, false).await;
    assert_eq!(
        failed.error.map(|e| e.code),
        Some(ErrorCode::DirtyCheckFailed)
    );
    assert_eq!(rig.state(&ws).await, State::Running);
    // Forced: sessions, main, resources, rows, in this order.
    let forced = rig.remove(&ws.id, true).await;
    assert_eq!(forced.status, OpStatus::Succeeded, "{forced:?}");
    let steps: Vec<_> = rig
        .reporter
        .steps()
        .into_iter()
        .filter(|s| !matches!(s, Step::MainLaunched))
        .collect();
    let names = |n: &str| berth_core::ids::SessionName::parse(n).unwrap();
    assert_eq!(
        steps,
        vec![
            Step::PreflightPassed,
            Step::SessionStopped(names("editor")),
            Step::SessionStopped(names("shell")),
            Step::SessionStopped(names("third")),
            Step::MainStopped,
            Step::ResourcesRemoved,
            Step::RowsRemoved
        ]
    );
    assert!(
        rig.store.all_workspaces().is_empty() && rig.store.all_sessions().is_empty(),
        "rows gone"
    );
    assert!(rig.rt.processes().is_empty(), "resources gone");
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn delete_works_when_the_workspace_runtime_is_not_configured() {
    // A workspace created on a daemon that ran an `other` runtime...
    let clock = std::sync::Arc::new(berth_core::testkit::TestClock::new());
    let store = std::sync::Arc::new(berth_core::testkit::MemoryStore::new());
    let other = std::sync::Arc::new(berth_core::testkit::FakeRuntime::named(
        "other",
        clock.clone(),
    ));
    let engine = berth_core::Engine::builder()
        .store(store.clone())
        .runtime(other.clone())
        .reporter(std::sync::Arc::new(
            berth_core::testkit::RecordingReporter::default(),
        ))
        .clock(clock.clone())
        .config(crate::support::config())
        .build()
        .await
        .unwrap();
    let ws = engine
        .create(berth_core::model::CreateWorkspace {
            name: berth_core::ids::WorkspaceName::parse("orphaned").unwrap(),
            runtime: berth_core::ids::RuntimeKind::parse("other").unwrap(),
            spec: Default::default(),
            actor: Actor::Api,
        })
        .await
        .unwrap();
    engine
        .start(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    berth_core::testkit::assert_no_engine_tasks(&engine).await;
    store.reopen();
    // ...is deleted by a daemon that only runs `fake`.
    let rig = crate::support::Rig::on(
        store,
        std::sync::Arc::new(berth_core::testkit::FakeRuntime::new(clock.clone())),
        clock,
        crate::support::config(),
    )
    .await;
    let op = rig.remove(&ws.id, false).await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert!(matches!(
        rig.engine.workspace(&ws.id).await,
        Err(EngineError::NotFound { .. })
    ));
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn name_in_use_and_removal_in_progress_of_our_own_resource_are_transient() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    // The fake keeps a stopped resource (like a stopped container): the next start
    // meets "name in use" from incarnation 1 and must replace it.
    rig.op(OpKind::Stop, &ws.id).await;
    assert_eq!(
        rig.rt.processes().len(),
        1,
        "the stopped resource is still there"
    );
    // And the runtime is still removing something twice.
    let removing = RuntimeError::Conflict {
        resource: "fake".into(),
        reason: ConflictReason::RemovalInProgress,
        message: "removal in progress".into(),
    };
    rig.rt.plan(FakeCall::Launch, Plan::Fail(removing.clone()));
    rig.rt.plan(FakeCall::Launch, Plan::Fail(removing));
    let op = rig.op(OpKind::Start, &ws.id).await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    let procs = rig.rt.processes();
    assert_eq!(procs.len(), 1, "exactly one resource: {procs:?}");
    assert_eq!(
        (procs[0].incarnation, procs[0].status),
        (Incarnation(2), ProcessStatus::Running)
    );
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_foreign_resource_on_the_name_fails_the_start_and_is_left_alone() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    rig.rt.add_foreign(&ws.id);
    let op = rig.op(OpKind::Start, &ws.id).await;
    assert_eq!(op.status, OpStatus::Failed);
    assert_eq!(op.error.unwrap().code, ErrorCode::NameTaken);
    let after = rig.engine.workspace(&ws.id).await.unwrap();
    assert_eq!(after.state, State::Failed);
    assert_eq!(after.last_error.unwrap().code, FailureReason::StartFailed);
    assert!(rig.rt.has_foreign(&ws.id));
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_start_past_its_ceiling_fails_with_start_timeout_and_cleans_up() {
    let mut config = crate::support::config();
    config.start_ceiling = Duration::from_secs(3);
    let rig = Rig::with(config).await;
    let ws = rig.create("a").await;
    rig.rt.plan(FakeCall::Launch, Plan::SucceedThenHang);
    let op = rig.op(OpKind::Start, &ws.id).await;
    assert_eq!(op.error.map(|e| e.code), Some(ErrorCode::StartTimeout));
    let after = rig.engine.workspace(&ws.id).await.unwrap();
    assert_eq!(
        (after.state, after.last_error.map(|e| e.code)),
        (State::Failed, Some(FailureReason::StartTimeout))
    );
    assert!(rig.rt.processes().is_empty(), "partial resource removed");
    // A later start works and mints the next incarnation.
    let op = rig.op(OpKind::Start, &ws.id).await;
    assert_eq!(
        (op.status, op.incarnation),
        (OpStatus::Succeeded, Some(Incarnation(2)))
    );
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn requests_after_a_queued_delete_are_refused_and_queued_ops_are_superseded() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let held = rig.rt.breakpoints().hold(&format!("stop:{}", ws.id));
    let stop = rig.engine.stop(&ws.id, Actor::Api).await.unwrap();
    held.reached(1).await;
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    let delete = rig.engine.delete(&ws.id, true, Actor::Api).await.unwrap();
    assert!(matches!(
        rig.engine.restart(&ws.id, Actor::Api).await,
        Err(EngineError::WorkspaceDeleting { .. })
    ));
    held.release();
    let start = start.wait().await.unwrap();
    let delete = delete.wait().await.unwrap();
    assert_eq!(stop.wait().await.unwrap().status, OpStatus::Succeeded);
    assert_eq!(
        (start.status, start.superseded_by),
        (OpStatus::Superseded, Some(delete.id.clone()))
    );
    assert_eq!(delete.status, OpStatus::Succeeded);
    rig.finish().await;
}

impl Rig {
    fn clock_now(&self) -> berth_core::model::Timestamp {
        use berth_core::ports::Clock;
        self.clock.now()
    }
}

/// Regression: a restart whose launch never created anything left the previous
/// incarnation's stopped resource behind; the fenced stop of the current incarnation
/// then met it as "another incarnation" and the delete stayed `deleting` forever.
#[tokio::test(start_paused = true)]
async fn delete_after_a_launch_that_created_nothing_removes_the_older_incarnation() {
    let mut cfg = crate::support::config();
    cfg.start_ceiling = Duration::from_secs(5);
    let rig = Rig::with(cfg).await;
    let ws = rig.running("a").await;
    rig.rt.plan(FakeCall::Launch, Plan::Hang);
    let op = rig.op(OpKind::Restart, &ws.id).await;
    assert_eq!(op.error.map(|e| e.code), Some(ErrorCode::StartTimeout));
    let left = rig.rt.processes();
    assert_eq!(
        (left.len(), left[0].incarnation),
        (1, Incarnation(1)),
        "the old stopped resource is still there"
    );
    let op = rig.remove(&ws.id, false).await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert!(rig.rt.processes().is_empty());
    assert!(rig.store.all_workspaces().is_empty());
    rig.finish().await;
}

/// Regression (review): a non-forced delete preempted a start before its dirty check,
/// so a refused delete still cancelled the start. A refusal must change nothing.
#[tokio::test(start_paused = true)]
async fn a_refused_delete_does_not_cancel_the_start_it_would_have_preempted() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    rig.rt.set_dirty(&ws.id, Ok(vec!["draft.md".into()]));
    let held = rig.rt.breakpoints().hold(&format!("launch:{}", ws.id));
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    held.reached(1).await;
    let refused = rig.remove(&ws.id, false).await;
    assert_eq!(refused.status, OpStatus::Failed);
    assert_eq!(
        refused.error.unwrap().details["files"],
        vec!["draft.md".to_owned()]
    );
    held.release();
    let start = start.wait().await.unwrap();
    assert_eq!(
        start.status,
        OpStatus::Succeeded,
        "the start was not cancelled: {start:?}"
    );
    assert_eq!(rig.state(&ws).await, State::Running);
    rig.finish().await;
}

/// Regression (review): a forced delete that joined a non-forced delete in flight was
/// refused as dirty: the runner read the flag it started with.
#[tokio::test(start_paused = true)]
async fn a_forced_delete_joining_a_plain_one_is_forced() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.rt.set_dirty(&ws.id, Ok(vec!["draft.md".into()]));
    let held = rig.rt.breakpoints().hold(&format!("dirty_check:{}", ws.id));
    let plain = rig.engine.delete(&ws.id, false, Actor::Api).await.unwrap();
    // The plain delete is in flight but has not looked at the directory yet.
    tokio::task::yield_now().await;
    let forced = rig.engine.delete(&ws.id, true, Actor::Api).await.unwrap();
    assert_eq!(plain.op_id(), forced.op_id(), "the forced request joined");
    held.release();
    let op = forced.wait().await.unwrap();
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert!(rig.store.all_workspaces().is_empty());
    rig.finish().await;
}

/// Regression (review): a caller dropped while its request was being persisted left an
/// op row that nothing ran. A submitted request now completes whatever the caller does.
#[tokio::test(start_paused = true)]
async fn a_request_whose_caller_went_away_still_runs_to_completion() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    rig.store.set_write_latency(Duration::from_millis(50));
    let gave_up = tokio::time::timeout(
        Duration::from_millis(10),
        rig.engine.start(&ws.id, Actor::Api),
    )
    .await;
    assert!(gave_up.is_err(), "the caller went away before the answer");
    // The final commit lands before it is acknowledged: wait for the engine's view.
    berth_core::testkit::wait_until("the start to finish", Duration::from_secs(5), || async {
        rig.store
            .all_ops()
            .iter()
            .any(|o| o.status == OpStatus::Succeeded)
            && rig.state(&ws).await == State::Running
    })
    .await;
    assert!(rig.store.all_ops().iter().all(|o| o.status.is_terminal()));
    rig.finish().await;
}

/// Defect 6: a restart replaced a queued start, so the start's callers got
/// `superseded` (and the CLI exited 1) although the workspace ended running. A restart
/// absorbs a queued start: its callers share the restart and get its result.
#[tokio::test(start_paused = true)]
async fn a_restart_absorbs_a_queued_start_and_its_callers_get_the_restart() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let held = rig.rt.breakpoints().hold("stop");
    let stop = rig.engine.stop(&ws.id, Actor::Api).await.unwrap();
    held.reached(1).await;
    let start = rig.engine.start(&ws.id, Actor::Cli).await.unwrap();
    let restart = rig.engine.restart(&ws.id, Actor::Api).await.unwrap();
    assert_eq!(
        start.op_id(),
        restart.op_id(),
        "the restart joins the queued op"
    );
    let queued = rig.engine.pending(&ws.id).queued.unwrap();
    assert_eq!((queued.kind, queued.joined), (OpKind::Restart, 1));
    held.release();
    stop.wait().await.unwrap();
    let (a, b) = (start.wait().await.unwrap(), restart.wait().await.unwrap());
    assert_eq!(a, b);
    assert_eq!((a.status, a.kind), (OpStatus::Succeeded, OpKind::Restart));
    assert_eq!(rig.state(&ws).await, State::Running);
    assert_eq!(
        rig.store
            .all_ops()
            .iter()
            .find(|o| o.id == a.id)
            .map(|o| o.kind),
        Some(OpKind::Restart),
        "the stored op says what ran"
    );
    rig.finish().await;
}

/// Defect 7: a panic in an op driver left the op in flight forever, and every later
/// request of the workspace waited. The op now fails with `internal`, the gate is
/// freed, and the engine keeps serving.
#[tokio::test(start_paused = true)]
async fn a_panic_in_an_op_fails_that_op_and_the_workspace_keeps_working() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    rig.rt.plan(FakeCall::Launch, Plan::Panic);
    let held = rig.rt.breakpoints().hold("prepare");
    let first = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    held.reached(1).await;
    // A restart queued behind the op that is about to panic still runs; it finds the
    // workspace left `starting` and finishes that first, as recovery would.
    let restart = rig.engine.restart(&ws.id, Actor::Api).await.unwrap();
    held.release();
    let failed = first.wait().await.unwrap();
    assert_eq!(failed.status, OpStatus::Failed, "{failed:?}");
    let error = failed.error.unwrap();
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(
        !error.message.contains("planned panic"),
        "no internals: {error:?}"
    );
    let restarted = restart.wait().await.unwrap();
    assert_eq!(restarted.status, OpStatus::Succeeded, "{restarted:?}");
    assert!(rig.engine.pending(&ws.id).is_idle(), "the gate is free");
    assert_eq!(rig.state(&ws).await, State::Running);
    assert_eq!(
        rig.op(OpKind::Stop, &ws.id).await.status,
        OpStatus::Succeeded
    );
    rig.finish().await;
}

/// Each op runs exactly once. A driver that had just finished an op and was about to
/// look for the next one, and a new driver spawned for a request that found the gate
/// idle in that moment, both ran the new op: the second run overwrote the op's record
/// after its caller had its answer (a restart stored `cancelled` and left the
/// workspace stopped; a delete stored `failed: not found`). Found by the SQLite crash
/// test on a loaded machine. Requests here follow each other at once, on two threads;
/// every answer must be the stored record, and the runtime must have seen each op's
/// calls once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_runs_once_when_requests_follow_each_other_at_once() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let mut answers = Vec::new();
    for i in 0..1500 {
        let kind = if i % 2 == 0 {
            OpKind::Restart
        } else {
            OpKind::Start
        };
        let op = rig
            .engine
            .request(&ws.id, kind, Actor::Api, false)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
        answers.push(op);
    }
    let stored: std::collections::HashMap<_, _> = rig
        .store
        .all_ops()
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect();
    for op in &answers {
        assert_eq!(
            stored.get(&op.id).map(|o| o.status),
            Some(op.status),
            "op {} answered {:?} but stored {:?}",
            op.id,
            op.status,
            stored.get(&op.id)
        );
    }
    assert_eq!(rig.state(&ws).await, State::Running);
    assert_eq!(
        rig.rt.launches().len(),
        1 + 750,
        "one launch per restart, none for a start of a running workspace"
    );
    rig.finish().await;
}

/// Issue 15 (lean write path): an op that runs at once is not inserted at intake; its
/// row goes out with its first commit, and its request is answered only once that
/// commit is durable. A queued op, which nothing writes before it runs, is inserted.
#[tokio::test(start_paused = true)]
async fn an_op_that_runs_at_once_is_on_record_when_answered_with_no_insert_of_its_own() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    let held = rig.rt.breakpoints().hold(&format!("launch:{}", ws.id));
    let inserts = rig.store.op_inserts();
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    let stored = rig
        .store
        .all_ops()
        .into_iter()
        .find(|o| o.id == *start.op_id())
        .expect("the start is on record when its request is answered");
    assert_eq!(stored.status, OpStatus::Running);
    assert_eq!(
        rig.store
            .all_workspaces()
            .iter()
            .find(|w| w.id == ws.id)
            .map(|w| w.state),
        Some(State::Starting),
        "its first commit carried it"
    );
    assert_eq!(rig.store.op_inserts(), inserts, "no insert of its own");
    // A stop now waits behind the launch: queued, so inserted at intake.
    let stop = rig.engine.stop(&ws.id, Actor::Api).await.unwrap();
    assert_eq!(rig.store.op_inserts(), inserts + 1);
    assert!(rig.store.all_ops().iter().any(|o| o.id == *stop.op_id()));
    held.release();
    assert_eq!(stop.wait().await.unwrap().status, OpStatus::Succeeded);
    rig.finish().await;
}

/// Issue 15: a request waits for its op's first write; when that write is a commit that
/// fails, the op still goes on record (failed) before the request is answered.
#[tokio::test(start_paused = true)]
async fn an_op_whose_first_commit_fails_is_recorded_as_failed_before_the_answer() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    rig.store.fail_commit_to(
        State::Starting,
        berth_core::ports::StoreError::Unavailable {
            message: "disk full".into(),
        },
    );
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    let stored = rig
        .store
        .all_ops()
        .into_iter()
        .find(|o| o.id == *start.op_id())
        .expect("on record when answered");
    assert_eq!(stored.status, OpStatus::Failed, "{stored:?}");
    assert_eq!(start.wait().await.unwrap().status, OpStatus::Failed);
    assert_eq!(rig.state(&ws).await, State::Stopped, "nothing changed");
    assert!(rig.rt.launches().is_empty(), "nothing launched");
    rig.finish().await;
}

/// Issue 15: a retried delete of a `deleting` workspace commits nothing before its
/// runtime calls, so it goes on record first: its request does not wait for them.
#[tokio::test(start_paused = true)]
async fn a_delete_that_runs_effects_before_any_commit_is_answered_before_them() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.rt.plan(
        FakeCall::Remove,
        Plan::Fail(RuntimeError::Other {
            resource: "fake".into(),
            message: "device busy".into(),
        }),
    );
    let failed = rig.op(OpKind::Delete, &ws.id).await;
    assert_eq!(failed.status, OpStatus::Failed);
    assert_eq!(rig.state(&ws).await, State::Deleting);
    let held = rig.rt.breakpoints().hold(&format!("cleanup:{}", ws.id));
    let retry = rig.engine.delete(&ws.id, true, Actor::Api).await.unwrap();
    assert!(
        rig.store.all_ops().iter().any(|o| o.id == *retry.op_id()),
        "on record while its runtime calls are held"
    );
    assert!(
        retry.finished().is_none(),
        "answered before its effects ended"
    );
    held.release();
    assert_eq!(retry.wait().await.unwrap().status, OpStatus::Succeeded);
    rig.finish().await;
}

/// Issue 15 (review): an op that runs at once is written by its first write, later than
/// its request; an op queued behind it before that write must not come first in the
/// workspace's history. The reconciler holds the exec lock (cleaning up after an exit),
/// so the start's driver waits before its first write while a stop preempts it.
#[tokio::test(start_paused = true)]
async fn history_keeps_request_order_when_an_op_is_queued_before_the_one_in_flight_is_written() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.rt.exit_main(&ws.id, 1);
    let held = rig.rt.breakpoints().hold(&format!("remove:{}", ws.id));
    let pass = rig.engine.reconcile();
    let requests = async {
        held.reached(1).await;
        {
            let start = rig.engine.start(&ws.id, Actor::Api);
            tokio::pin!(start);
            // The start's intake runs; its driver waits for the exec lock.
            assert!(
                tokio::time::timeout(Duration::from_millis(1), &mut start)
                    .await
                    .is_err(),
                "the start is answered only once it is on record"
            );
            let stop = rig.engine.stop(&ws.id, Actor::Api).await.unwrap();
            held.release();
            (start.await.unwrap(), stop)
        }
    };
    let (report, (start, stop)) = tokio::join!(pass, requests);
    assert_eq!(report.exited, 1, "{report:?}");
    let (start_id, stop_id) = (start.op_id().clone(), stop.op_id().clone());
    assert_eq!(start.wait().await.unwrap().status, OpStatus::Cancelled);
    assert_eq!(stop.wait().await.unwrap().status, OpStatus::Succeeded);
    let order: Vec<_> = rig.store.all_ops().into_iter().map(|o| o.id).collect();
    let at = |id| order.iter().position(|o| *o == id).unwrap();
    assert!(
        at(start_id) < at(stop_id),
        "the start was requested first: {order:?}"
    );
    rig.finish().await;
}
