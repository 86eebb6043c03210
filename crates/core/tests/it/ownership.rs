//! Engines sharing a store (scale-out): an engine recovers and reconciles only what it
//! owns, takes a workspace over with `adopt` exactly as boot recovery would finish it,
//! and two engines given one idempotency key create one workspace.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use berth_core::Engine;
use berth_core::engine::IdempotencyKey;
use berth_core::ids::{RuntimeKind, WorkspaceId, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace, OpStatus, WorkspaceSpec};
use berth_core::ports::Ownership;
use berth_core::state::State;
use berth_core::testkit::{FakeCall, Plan, RecordingReporter, assert_no_engine_tasks};

use crate::support::{Rig, config};

/// The workspaces an engine holds, changed by the test.
#[derive(Debug, Default)]
struct Held(parking_lot::Mutex<HashSet<WorkspaceId>>);

impl Ownership for Held {
    fn owns(&self, id: &WorkspaceId) -> bool {
        self.0.lock().contains(id)
    }
}

#[tokio::test(start_paused = true)]
async fn an_engine_acts_only_on_what_it_owns_and_adopt_finishes_the_rest_as_recovery_would() {
    let mut cfg = config();
    cfg.drain_deadline = Duration::from_secs(1);
    let rig = Rig::with(cfg.clone()).await;
    let mine = rig.running("mine").await;
    let theirs = rig.running("theirs").await;
    // The first engine dies with both stops in flight (their runtime stop hangs).
    rig.rt.plan(FakeCall::Stop, Plan::Hang);
    rig.rt.plan(FakeCall::Stop, Plan::Hang);
    let stop_mine = rig.engine.stop(&mine.id, Actor::Api).await.unwrap();
    let stop_theirs = rig.engine.stop(&theirs.id, Actor::Api).await.unwrap();
    berth_core::testkit::wait_until("both stops to hang", Duration::from_secs(1), || async {
        rig.rt.calls(FakeCall::Stop) == 2
    })
    .await;
    let report = rig.engine.shutdown().await;
    assert_eq!(report.interrupted, 2, "{report:?}");
    rig.store.reopen();
    // Leave the previous owner's ops unfinished in the store, as a kill -9 would.
    for op in rig.store.all_ops() {
        if [stop_mine.op_id(), stop_theirs.op_id()].contains(&&op.id) {
            let mut running = op.clone();
            running.status = OpStatus::Running;
            running.finished_at = None;
            running.error = None;
            berth_core::ports::Store::update_op(rig.store.as_ref(), &running)
                .await
                .unwrap();
        }
    }
    rig.rt.clear_plans();

    // A new engine that owns only `mine`.
    let held = Arc::new(Held::default());
    held.0.lock().insert(mine.id.clone());
    let engine = Engine::builder()
        .store(rig.store.clone())
        .runtime(rig.rt.clone())
        .reporter(Arc::new(RecordingReporter::default()))
        .clock(rig.clock.clone())
        .config(cfg)
        .ownership(held.clone())
        .build()
        .await
        .unwrap();
    let recovery = engine.recovery_report().unwrap();
    assert_eq!(
        (recovery.stops_finished, recovery.ops_interrupted),
        (1, 1),
        "boot recovery finished only the owned workspace: {recovery:?}"
    );
    assert_eq!(
        engine.workspace(&mine.id).await.unwrap().state,
        State::Stopped
    );
    assert_eq!(
        engine.workspace(&theirs.id).await.unwrap().state,
        State::Stopping,
        "another engine's workspace is left to its owner"
    );
    let stops = rig.rt.calls(FakeCall::Stop);
    let report = engine.reconcile().await;
    assert_eq!(rig.rt.calls(FakeCall::Stop), stops, "{report:?}");
    assert!(
        !rig.rt.live_mains(&theirs.id).is_empty(),
        "its process untouched"
    );
    assert_eq!(
        engine.op(stop_theirs.op_id()).await.unwrap().status,
        OpStatus::Running,
        "its op is its owner's"
    );

    // Its owner died: this engine takes it over.
    held.0.lock().insert(theirs.id.clone());
    assert!(engine.owns(&theirs.id));
    engine.adopt(&theirs.id).await.unwrap();
    assert_eq!(
        engine.workspace(&theirs.id).await.unwrap().state,
        State::Stopped
    );
    assert!(rig.rt.live_mains(&theirs.id).is_empty());
    let op = engine.op(stop_theirs.op_id()).await.unwrap();
    assert_eq!(op.status, OpStatus::Interrupted, "{op:?}");
    // Adopting again (a second caller) changes nothing and interrupts nothing new.
    let events = rig.store.all_events().len();
    engine.adopt(&theirs.id).await.unwrap();
    assert_eq!(rig.store.all_events().len(), events);
    // It then serves the workspace like its own.
    let op = engine
        .start(&theirs.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert_no_engine_tasks(&engine).await;
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_workspace_is_read_again_from_the_store() {
    let rig = Rig::new().await;
    let ws = rig.running("moved").await;
    // Another engine changed the row meanwhile (a shared store).
    let mut row = rig.store.all_workspaces()[0].clone();
    row.last_error = None;
    row.spec.env.insert("CHANGED".into(), "elsewhere".into());
    let commit = berth_core::ports::Commit {
        workspace: {
            let mut next = row.clone();
            next.version += 1;
            next
        },
        expected_version: row.version,
        event: None,
        token: None,
        ops: Vec::new(),
        fence: Default::default(),
    };
    berth_core::ports::Store::commit(rig.store.as_ref(), &commit)
        .await
        .unwrap();
    assert!(
        !rig.engine
            .workspace(&ws.id)
            .await
            .unwrap()
            .spec
            .env
            .contains_key("CHANGED"),
        "the gate serves the row it committed"
    );
    rig.engine.forget(&ws.id);
    assert!(
        rig.engine
            .workspace(&ws.id)
            .await
            .unwrap()
            .spec
            .env
            .contains_key("CHANGED")
    );
    rig.finish().await;
}

fn request(name: &str) -> CreateWorkspace {
    CreateWorkspace {
        name: WorkspaceName::parse(name).unwrap(),
        runtime: RuntimeKind::parse("fake").unwrap(),
        spec: WorkspaceSpec {
            command: vec!["agent".into()],
            ..Default::default()
        },
        actor: Actor::Api,
    }
}

#[tokio::test(start_paused = true)]
async fn one_idempotency_key_through_two_engines_on_one_store_creates_one_workspace() {
    let a = Rig::new().await;
    let b = Engine::builder()
        .store(a.store.clone())
        .runtime(a.rt.clone())
        .reporter(Arc::new(RecordingReporter::default()))
        .clock(a.clock.clone())
        .config(config())
        .build()
        .await
        .unwrap();
    let key = || {
        Some(IdempotencyKey {
            key: "same".into(),
            request_hash: "h".into(),
        })
    };
    // Every write takes a moment: both engines look the key up before either creates.
    a.store.set_write_latency(Duration::from_millis(1));
    let (x, y) = tokio::join!(
        a.engine.create_workspace(request("keyed"), true, key()),
        b.create_workspace(request("keyed"), true, key())
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.workspace.workspace.id, y.workspace.workspace.id);
    assert_eq!(
        [x.replayed, y.replayed].iter().filter(|r| **r).count(),
        1,
        "one created, one answered from its record"
    );
    assert_eq!(a.store.all_workspaces().len(), 1);
    assert_no_engine_tasks(&b).await;
    a.finish().await;
}
