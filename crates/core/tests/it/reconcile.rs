//! Reconciliation: missing, exited, orphans, foreign resources, listing failures (item 11).

use std::time::Duration;

use berth_core::ids::{EngineId, Incarnation, WorkspaceId};
use berth_core::merge::OpKind;
use berth_core::model::{Actor, Cause};
use berth_core::ports::{ProcessStatus, ResourceKind, RuntimeError};
use berth_core::state::{FailureReason, State};
use berth_core::testkit::{FakeCall, FakeProcess, Plan};

use crate::support::Rig;

fn planted(rig: &Rig, engine: &EngineId, ws: WorkspaceId) -> FakeProcess {
    use berth_core::ports::Clock;
    FakeProcess {
        engine_id: engine.clone(),
        workspace_id: ws,
        incarnation: Incarnation(1),
        kind: ResourceKind::Main,
        created_at: rig.clock.now(),
        status: ProcessStatus::Running,
        output: vec![],
        env: Default::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn reconcile_marks_missing_removes_only_old_orphans_and_never_foreign_ones() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let ours = rig.engine.engine_id().clone();
    let old_orphan = WorkspaceId::generate();
    rig.rt.plant(planted(&rig, &ours, old_orphan.clone()));
    let foreign = WorkspaceId::generate();
    rig.rt
        .plant(planted(&rig, &EngineId::generate(), foreign.clone()));
    rig.clock.advance(Duration::from_secs(61));
    let young_orphan = WorkspaceId::generate();
    rig.rt.plant(planted(&rig, &ours, young_orphan.clone()));
    rig.rt.vanish(&ws.id);

    let report = rig.engine.reconcile().await;
    assert_eq!(
        (report.missing, report.orphans_removed, report.orphans_kept),
        (1, 1, 1),
        "{report:?}"
    );
    let after = rig.engine.workspace(&ws.id).await.unwrap();
    assert_eq!(after.state, State::Failed);
    assert_eq!(
        after.last_error.unwrap().code,
        FailureReason::RuntimeMissing
    );
    let last = rig.store.all_events().into_iter().last().unwrap().event;
    assert_eq!(
        (last.cause, last.actor, last.to),
        (
            Cause::RuntimeMissing,
            Actor::Reconciler,
            Some(State::Failed)
        )
    );
    let left: Vec<_> = rig
        .rt
        .processes()
        .into_iter()
        .map(|p| p.workspace_id)
        .collect();
    assert!(!left.contains(&old_orphan), "the old orphan is removed");
    assert!(left.contains(&young_orphan), "the young orphan is kept");
    assert!(
        left.contains(&foreign),
        "another engine's resource is never touched"
    );
    // A later start makes a fresh incarnation; delete works too.
    let op = rig.op(OpKind::Start, &ws.id).await;
    assert_eq!(op.incarnation, Some(Incarnation(2)));
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_listing_changes_nothing() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let orphan = WorkspaceId::generate();
    rig.rt.plant(planted(
        &rig,
        &rig.engine.engine_id().clone(),
        orphan.clone(),
    ));
    rig.clock.advance(Duration::from_secs(120));
    rig.rt.vanish(&ws.id);
    rig.rt.plan(
        FakeCall::List,
        Plan::Fail(RuntimeError::Unavailable {
            message: "daemon down".into(),
        }),
    );
    let report = rig.engine.reconcile().await;
    assert_eq!(report.listing_failures, 1);
    assert_eq!((report.missing, report.orphans_removed), (0, 0));
    assert_eq!(
        rig.state(&ws).await,
        State::Running,
        "nothing marked on a failed listing"
    );
    assert!(
        rig.rt.processes().iter().any(|p| p.workspace_id == orphan),
        "nothing removed on a failed listing"
    );
    // The next good listing does the work.
    let report = rig.engine.reconcile().await;
    assert_eq!(
        (report.missing, report.orphans_removed),
        (1, 1),
        "{report:?}"
    );
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn exits_are_recorded_with_their_code() {
    let rig = Rig::new().await;
    let clean = rig.running("clean").await;
    let crashed = rig.running("crashed").await;
    rig.rt.exit_main(&clean.id, 0);
    rig.rt.exit_main(&crashed.id, 7);
    let report = rig.engine.reconcile().await;
    assert_eq!(report.exited, 2);
    assert_eq!(rig.state(&clean).await, State::Stopped);
    let failed = rig.engine.workspace(&crashed.id).await.unwrap();
    assert_eq!(failed.state, State::Failed);
    let error = failed.last_error.unwrap();
    assert_eq!(error.code, FailureReason::Exited);
    assert!(error.message.contains("code 7"), "{}", error.message);
    assert!(
        rig.rt.processes().is_empty(),
        "exited resources are removed"
    );
    rig.finish().await;
}

/// A reconcile pass that decided to forget a session's row on old information (its
/// process was gone when it listed) must not forget the session re-created meanwhile:
/// the forget is for the generation that exited only.
#[tokio::test(start_paused = true)]
async fn a_stale_forget_never_removes_a_re_created_session() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let name = berth_core::ids::SessionName::parse("agent").unwrap();
    let first = rig
        .engine
        .launch_session(
            &ws.id,
            name.clone(),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
        .unwrap();
    // The session's process vanishes; a pass lists that and decides to forget its row.
    let engine_id = rig.engine.engine_id().clone();
    rig.rt
        .stop_session_for_test(&engine_id, &ws.id, &name)
        .await;
    let forget = rig.store.breakpoints().hold_once("store.delete_session");
    let engine = rig.engine.clone();
    #[allow(clippy::disallowed_methods, reason = "a test's own reconcile task")]
    let pass = tokio::spawn(async move { engine.reconcile().await });
    forget.reached(1).await;
    // Meanwhile the name is launched again: a new generation.
    let second = rig
        .engine
        .launch_session(
            &ws.id,
            name.clone(),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
        .unwrap();
    assert!(second.generation > first.generation);
    // The stale forget lands now.
    forget.release();
    let report = pass.await.unwrap();
    assert_eq!(report.sessions_pruned, 0, "{report:?}");
    assert_eq!(
        rig.engine.sessions(&ws.id).await.unwrap(),
        vec![second.clone()]
    );
    assert_eq!(rig.rt.live_sessions(&ws.id).len(), 1);
    // A pass on current information keeps it too.
    assert_eq!(rig.engine.reconcile().await.sessions_pruned, 0);
    assert_eq!(rig.engine.sessions(&ws.id).await.unwrap(), vec![second]);
    rig.finish().await;
}

trait StopForTest {
    async fn stop_session_for_test(
        &self,
        engine: &EngineId,
        ws: &WorkspaceId,
        name: &berth_core::ids::SessionName,
    );
}

impl StopForTest for berth_core::testkit::FakeRuntime {
    async fn stop_session_for_test(
        &self,
        engine: &EngineId,
        ws: &WorkspaceId,
        name: &berth_core::ids::SessionName,
    ) {
        use berth_core::ports::{ProcessRuntime, SessionRef};
        let target = SessionRef {
            engine_id: engine.clone(),
            workspace_id: ws.clone(),
            name: name.clone(),
            generation: None,
        };
        self.stop_session(&target, Duration::from_secs(1))
            .await
            .unwrap();
    }
}

/// P6's boot: a fresh engine knows nothing of its workspaces' sessions. A pass reads
/// which workspaces have session rows once, and each workspace's rows only for those.
#[tokio::test(start_paused = true)]
async fn a_fresh_engine_reads_session_rows_only_of_workspaces_that_have_them() {
    let rig = Rig::new().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(rig.running(&format!("w{i}")).await.id);
    }
    rig.engine
        .launch_session(
            &ids[0],
            berth_core::ids::SessionName::parse("agent").unwrap(),
            vec!["agent".into()],
            Default::default(),
        )
        .await
        .unwrap();
    rig.engine.shutdown().await;
    let before = rig.store.session_reads();
    // Boot recovery runs one pass; then one more.
    let rig = rig.restart_engine().await;
    let report = rig.engine.reconcile().await;
    assert_eq!(
        rig.store.session_reads() - before,
        2,
        "one read per pass, of the one workspace with a session: {report:?}"
    );
    assert_eq!(rig.engine.sessions(&ids[0]).await.unwrap().len(), 1);
    for id in &ids {
        assert_eq!(
            rig.engine.workspace(id).await.unwrap().state,
            State::Running
        );
    }
}

/// Issue 15 (P6): the pass acts on each page of rows while the next is read. A read
/// that fails after some pages must not make the resources of unread rows orphans:
/// the pass stops for that runtime and removes nothing.
#[tokio::test(start_paused = true)]
async fn a_store_read_failing_mid_pass_removes_no_resource_of_an_unread_row() {
    let rig = Rig::new().await;
    for i in 0..1000 {
        rig.create(&format!("s{i}")).await;
    }
    // Created last: its row is on the second page.
    let late = rig.running("late").await;
    rig.clock.advance(Duration::from_secs(3600));
    rig.store
        .fail_next_page(berth_core::ports::StoreError::Unavailable {
            message: "disk I/O error".into(),
        });
    let report = rig.engine.reconcile().await;
    assert_eq!(
        (report.orphans_removed, report.missing),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(
        rig.rt.processes().len(),
        1,
        "the process of the unread row is alive"
    );
    assert_eq!(rig.state(&late).await, State::Running);
    // The next pass reads every page and finds nothing to do.
    let report = rig.engine.reconcile().await;
    assert_eq!(
        (report.orphans_removed, report.missing),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(rig.rt.processes().len(), 1);
    rig.finish().await;
}
