//! Crash windows, deterministic through breakpoints and planned failures (item 12).

use std::sync::Arc;
use std::time::Duration;

use berth_core::Engine;
use berth_core::ids::{Incarnation, RuntimeKind, WorkspaceName};
use berth_core::merge::OpKind;
use berth_core::model::{Actor, CreateWorkspace, OpStatus};
use berth_core::ports::{ProcessStatus, RuntimeError, StoreError};
use berth_core::state::State;
use berth_core::testkit::{FakeCall, FakeRuntime, MemoryStore, Plan, RecordingReporter, TestClock};

use crate::support::{Rig, config};

/// Runs an engine on its own runtime on another thread until `name` is reached, then
/// drops that runtime: every engine task dies where it stands, as in a `kill -9`.
fn crash_at(
    store: Arc<MemoryStore>,
    rt: Arc<FakeRuntime>,
    point: String,
) -> berth_core::ids::WorkspaceId {
    let held = rt.breakpoints().hold(&point);
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let id = runtime.block_on(async move {
            let clock = Arc::new(TestClock::new());
            let engine = Engine::builder()
                .store(store)
                .runtime(rt)
                .reporter(Arc::new(RecordingReporter::default()))
                .clock(clock)
                .config(config())
                .build()
                .await
                .unwrap();
            let ws = engine
                .create(CreateWorkspace {
                    name: WorkspaceName::parse("victim").unwrap(),
                    runtime: RuntimeKind::parse("fake").unwrap(),
                    spec: Default::default(),
                    actor: Actor::Api,
                })
                .await
                .unwrap();
            let _ticket = engine.start(&ws.id, Actor::Api).await.unwrap();
            held.reached(1).await;
            ws.id
        });
        drop(runtime);
        id
    });
    thread.join().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_the_launch_before_the_running_commit_is_adopted_at_boot() {
    let clock = Arc::new(TestClock::new());
    let store = Arc::new(MemoryStore::new());
    let rt = Arc::new(FakeRuntime::new(clock.clone()));
    let id = crash_at(store.clone(), rt.clone(), "launch.created".into());
    assert_eq!(
        store.all_workspaces()[0].state,
        State::Starting,
        "the crash left it starting"
    );
    rt.breakpoints().hold("launch.created").release();

    let rig = Rig::on(store, rt, clock, config()).await;
    let report = rig.engine.recovery_report().unwrap();
    assert_eq!(
        (
            report.adopted,
            report.ops_interrupted,
            report.still_transitional
        ),
        (1, 1, 0),
        "{report:?}"
    );
    let ws = rig.engine.workspace(&id).await.unwrap();
    assert_eq!((ws.state, ws.incarnation), (State::Running, Incarnation(1)));
    let procs = rig.rt.processes();
    assert_eq!(procs.len(), 1, "adopted, not duplicated");
    assert_eq!(
        (procs[0].incarnation, procs[0].status),
        (Incarnation(1), ProcessStatus::Running)
    );
    assert!(rig.store.all_ops().iter().all(|o| o.status.is_terminal()));
    assert_eq!(rig.store.all_ops()[0].status, OpStatus::Interrupted);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_before_the_launch_leaves_no_transitional_state_after_boot() {
    let clock = Arc::new(TestClock::new());
    let store = Arc::new(MemoryStore::new());
    let rt = Arc::new(FakeRuntime::new(clock.clone()));
    let id = crash_at(store.clone(), rt.clone(), "launch".into());
    rt.breakpoints().hold("launch").release();
    let rig = Rig::on(store, rt, clock, config()).await;
    let ws = rig.engine.workspace(&id).await.unwrap();
    assert_eq!(
        ws.state,
        State::Failed,
        "no live resource: the start failed as interrupted"
    );
    assert!(rig.rt.processes().is_empty());
    // A later start works.
    let op = rig.op(OpKind::Start, &id).await;
    assert_eq!(
        (op.status, op.incarnation),
        (OpStatus::Succeeded, Some(Incarnation(2)))
    );
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_running_commit_is_finished_by_the_reconciler() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    rig.store.fail_commit_to(
        State::Running,
        StoreError::Unavailable {
            message: "disk full".into(),
        },
    );
    let op = rig.op(OpKind::Start, &ws.id).await;
    assert_eq!(op.status, OpStatus::Failed);
    assert_eq!(
        rig.state(&ws).await,
        State::Starting,
        "the row never committed"
    );
    let report = rig.engine.reconcile().await;
    assert_eq!(report.transitional_finished, 1);
    assert_eq!(
        rig.state(&ws).await,
        State::Running,
        "the live resource of that incarnation is adopted"
    );
    assert_eq!(rig.rt.processes().len(), 1);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_resource_the_record_does_not_own_is_removed_after_the_grace_period() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    // The runtime creates the container but answers with an error, and the cleanup fails.
    rig.rt.plan(
        FakeCall::Launch,
        Plan::SucceedThenFail(RuntimeError::Other {
            resource: "fake".into(),
            message: "connection reset".into(),
        }),
    );
    rig.rt.plan(
        FakeCall::Remove,
        Plan::Fail(RuntimeError::Other {
            resource: "fake".into(),
            message: "connection reset".into(),
        }),
    );
    let op = rig.op(OpKind::Start, &ws.id).await;
    assert_eq!(op.status, OpStatus::Failed);
    assert_eq!(rig.state(&ws).await, State::Failed);
    assert_eq!(
        rig.rt.live_mains(&ws.id).len(),
        1,
        "the leaked resource runs"
    );
    let report = rig.engine.reconcile().await;
    assert_eq!(
        (report.orphans_kept, report.orphans_removed),
        (1, 0),
        "too young to remove"
    );
    rig.clock.advance(Duration::from_secs(61));
    let report = rig.engine.reconcile().await;
    assert_eq!(report.orphans_removed, 1, "{report:?}");
    assert!(rig.rt.processes().is_empty());
    assert!(
        rig.store
            .all_workspaces()
            .iter()
            .all(|w| !w.state.is_transitional())
    );
    rig.finish().await;
}

/// Two running workspaces whose stop and delete hang until shutdown interrupts them:
/// the engine is shut down with one left `stopping` and one `deleting`.
async fn interrupt_a_stop_and_a_delete(
    rig: &Rig,
) -> (berth_core::model::Workspace, berth_core::model::Workspace) {
    let stopping = rig.running("stopping").await;
    let deleting = rig.running("deleting").await;
    rig.rt.plan(FakeCall::Stop, Plan::Hang);
    rig.rt.plan(FakeCall::Stop, Plan::Hang);
    let _a = rig.engine.stop(&stopping.id, Actor::Api).await.unwrap();
    let _b = rig
        .engine
        .delete(&deleting.id, true, Actor::Api)
        .await
        .unwrap();
    berth_core::testkit::wait_until("both stops to hang", Duration::from_secs(1), || async {
        rig.rt.calls(FakeCall::Stop) == 2
    })
    .await;
    let report = rig.engine.shutdown().await;
    assert!(!report.drained && report.interrupted == 2, "{report:?}");
    (stopping, deleting)
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_stop_and_delete_are_finished_at_boot() {
    let mut cfg = config();
    cfg.drain_deadline = Duration::from_secs(1);
    let rig = Rig::with(cfg).await;
    let (stopping, deleting) = interrupt_a_stop_and_a_delete(&rig).await;
    assert_eq!(
        rig.store
            .all_workspaces()
            .iter()
            .map(|w| w.state)
            .collect::<Vec<_>>(),
        vec![State::Stopping, State::Deleting]
    );
    let rig = rig.restart_engine().await;
    let recovery = rig.engine.recovery_report().unwrap();
    assert_eq!(
        (
            recovery.stops_finished,
            recovery.deletes_finished,
            recovery.still_transitional
        ),
        (1, 1, 0),
        "{recovery:?}"
    );
    assert_eq!(rig.state(&stopping).await, State::Stopped);
    assert!(rig.engine.workspace(&deleting.id).await.is_err());
    assert!(
        rig.rt.live_mains(&stopping.id).is_empty()
            && rig
                .rt
                .processes()
                .iter()
                .all(|p| p.workspace_id != deleting.id)
    );
    rig.finish().await;
}

/// Defect 9: a runtime error during boot recovery left workspaces `starting` or
/// `deleting` after the engine was ready. Errors are retried with backoff; what still
/// cannot be finished ends `failed` with the reason, never transitional.
#[tokio::test(start_paused = true)]
async fn boot_recovery_retries_and_leaves_nothing_transitional_when_the_runtime_is_down() {
    let mut cfg = config();
    cfg.drain_deadline = Duration::from_secs(1);
    let rig = Rig::with(cfg).await;
    let (stopping, deleting) = interrupt_a_stop_and_a_delete(&rig).await;
    // The runtime is down for the whole recovery.
    rig.rt.set_unavailable(true);
    let stops_before = rig.rt.calls(FakeCall::Stop);
    let rig = rig.restart_engine().await;
    let report = rig.engine.recovery_report().unwrap();
    assert_eq!(
        (report.failed, report.still_transitional),
        (2, 0),
        "{report:?}"
    );
    assert!(
        rig.rt.calls(FakeCall::Stop) - stops_before >= 2 * 2,
        "each stop was retried"
    );
    for ws in rig.store.all_workspaces() {
        assert_eq!(ws.state, State::Failed, "{ws:?}");
    }
    let reasons: Vec<_> = [&stopping, &deleting]
        .iter()
        .map(|w| {
            rig.store
                .all_workspaces()
                .into_iter()
                .find(|s| s.id == w.id)
                .and_then(|s| s.last_error)
                .map(|e| e.code)
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            Some(berth_core::state::FailureReason::StopFailed),
            Some(berth_core::state::FailureReason::DeleteFailed)
        ]
    );
    // Once the runtime is back, both can be dealt with.
    rig.rt.set_unavailable(false);
    assert_eq!(
        rig.remove(&deleting.id, false).await.status,
        OpStatus::Succeeded
    );
    assert_eq!(
        rig.op(OpKind::Stop, &stopping.id).await.status,
        OpStatus::Succeeded
    );
    rig.finish().await;
}

/// Defect 9: a transient inspect error at boot is retried; the live resource of a
/// workspace left `starting` is adopted instead of failed.
#[tokio::test(start_paused = true)]
async fn boot_recovery_retries_a_failed_inspect_and_adopts_the_live_resource() {
    let clock = Arc::new(TestClock::new());
    let store = Arc::new(MemoryStore::new());
    let rt = Arc::new(FakeRuntime::new(clock.clone()));
    let id = crash_at(store.clone(), rt.clone(), "launch.created".into());
    rt.breakpoints().hold("launch.created").release();
    for _ in 0..2 {
        rt.plan(
            FakeCall::Inspect,
            Plan::Fail(RuntimeError::Unavailable {
                message: "daemon restarting".into(),
            }),
        );
    }
    let rig = Rig::on(store, rt, clock, config()).await;
    let report = rig.engine.recovery_report().unwrap();
    assert_eq!(
        (report.adopted, report.still_transitional),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(rig.state_of(&id).await, State::Running);
    assert_eq!(rig.rt.calls(FakeCall::Inspect), 3);
    rig.finish().await;
}

/// Defect 9: when the runtime cannot say whether a `starting` workspace runs at boot,
/// it ends `failed{interrupted}` with the reason (not `starting`).
#[tokio::test(start_paused = true)]
async fn boot_recovery_fails_a_start_it_cannot_inspect_with_the_reason() {
    let clock = Arc::new(TestClock::new());
    let store = Arc::new(MemoryStore::new());
    let rt = Arc::new(FakeRuntime::new(clock.clone()));
    let id = crash_at(store.clone(), rt.clone(), "launch".into());
    rt.breakpoints().hold("launch").release();
    rt.set_unavailable(true);
    let rig = Rig::on(store, rt, clock, config()).await;
    let ws = rig.engine.workspace(&id).await.unwrap();
    assert_eq!(ws.state, State::Failed);
    let error = ws.last_error.unwrap();
    assert_eq!(error.code, berth_core::state::FailureReason::Interrupted);
    assert!(
        error.message.contains("could not be inspected"),
        "{error:?}"
    );
    rig.finish().await;
}

/// Issue 11, item 4: boot recovery finishes workspaces concurrently. Six workspaces
/// left `stopping`, whose stops each take 3 s (their grace), recover in about one
/// grace, not six (tokio's paused clock: the figure is exact, not a timing).
#[tokio::test(start_paused = true)]
async fn boot_recovery_finishes_workspaces_concurrently_so_the_outage_is_one_grace() {
    let mut cfg = config();
    cfg.drain_deadline = Duration::from_secs(1);
    let rig = Rig::with(cfg).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(rig.running(&format!("w{i}")).await.id);
    }
    for _ in &ids {
        rig.rt.plan(FakeCall::Stop, Plan::Hang);
    }
    let mut tickets = Vec::new();
    for id in &ids {
        tickets.push(rig.engine.stop(id, Actor::Api).await.unwrap());
    }
    berth_core::testkit::wait_until("every stop to hang", Duration::from_secs(1), || async {
        rig.rt.calls(FakeCall::Stop) == 6
    })
    .await;
    let report = rig.engine.shutdown().await;
    assert_eq!(report.interrupted, 6, "{report:?}");
    drop(tickets);
    let grace = Duration::from_secs(3);
    rig.rt.set_delay(FakeCall::Stop, grace);
    let began = tokio::time::Instant::now();
    let rig = rig.restart_engine().await;
    let outage = began.elapsed();
    let report = rig.engine.recovery_report().unwrap();
    assert_eq!(
        (report.stops_finished, report.still_transitional),
        (6, 0),
        "{report:?}"
    );
    assert!(
        outage < grace * 2,
        "recovery took {outage:?} for 6 stops of {grace:?} each: it is serial"
    );
    for id in &ids {
        assert_eq!(
            rig.engine.workspace(id).await.unwrap().state,
            State::Stopped
        );
    }
    rig.finish().await;
}
