//! Interaction contracts, with mockall mocks of the ports (feature `testkit`): where the
//! contract is about calls (how many, with what, never after what), not about state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_core::Engine;
use berth_core::ids::{Incarnation, RuntimeKind, WorkspaceName};
use berth_core::merge::OpKind;
use berth_core::model::{Actor, CreateWorkspace, OpStatus, Workspace};
use berth_core::ports::{
    ConflictReason, DirtyReport, MockProcessRuntime, MockReporter, OwnedResource, ProcessStatus,
    ReporterStats, ResourceKind, RuntimeError,
};
use berth_core::state::State;
use berth_core::testkit::{MemoryStore, RecordingReporter, TestClock};

use crate::support::config;

fn fake_kind() -> RuntimeKind {
    RuntimeKind::parse("fake").unwrap()
}

/// A mock runtime that answers every call the engine makes on its own (listing,
/// events, spec checks) and nothing else: each test adds what it expects.
fn runtime() -> MockProcessRuntime {
    let mut rt = MockProcessRuntime::new();
    rt.expect_kind().returning(fake_kind);
    rt.expect_check_spec().returning(|_| Ok(()));
    rt.expect_list_owned().returning(|_| Ok(vec![]));
    rt.expect_watch_events().returning(|_, _, _| ());
    rt
}

async fn engine_on(rt: MockProcessRuntime) -> (Engine, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder()
        .store(store.clone())
        .runtime(Arc::new(rt))
        .reporter(Arc::new(RecordingReporter::default()))
        .clock(Arc::new(TestClock::new()))
        .config(config())
        .build()
        .await
        .unwrap();
    (engine, store)
}

async fn create(engine: &Engine, name: &str) -> Workspace {
    engine
        .create(CreateWorkspace {
            name: WorkspaceName::parse(name).unwrap(),
            runtime: fake_kind(),
            spec: Default::default(),
            actor: Actor::Api,
        })
        .await
        .unwrap()
}

/// A refused delete makes no runtime call but its dirty check: nothing is stopped,
/// removed or cleaned.
#[tokio::test(start_paused = true)]
async fn a_refused_delete_makes_no_runtime_call_but_the_dirty_check() {
    let mut rt = runtime();
    rt.expect_dirty_check()
        .times(1)
        .returning(|_| Ok(DirtyReport::Dirty(vec!["wip.rs".into()])));
    rt.expect_stop().never();
    rt.expect_remove().never();
    rt.expect_cleanup().never();
    rt.expect_stop_session().never();
    rt.expect_launch().never();
    let (engine, _store) = engine_on(rt).await;
    let ws = create(&engine, "dirty").await;
    let op = engine
        .delete(&ws.id, false, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(op.status, OpStatus::Failed);
    assert_eq!(
        engine.workspace(&ws.id).await.unwrap().state,
        State::Stopped
    );
    engine.shutdown().await;
}

/// A resource of another (newer) incarnation than the record's is never stopped or
/// removed: the fenced stop is refused, the inspect shows the newer one, and the stop
/// fails instead.
#[tokio::test(start_paused = true)]
async fn a_resource_of_a_newer_incarnation_is_never_stopped() {
    let mut rt = runtime();
    rt.expect_prepare().returning(|_| Ok(None));
    rt.expect_launch().times(1).returning(|_| Ok(()));
    rt.expect_stop()
        .withf(|r, _| r.incarnation == Incarnation(1))
        .times(1)
        .returning(|r, _| {
            Err(RuntimeError::Conflict {
                resource: r.workspace_id.to_string(),
                reason: ConflictReason::IncarnationMismatch,
                message: "holds incarnation 2".into(),
            })
        });
    rt.expect_stop()
        .withf(|r, _| r.incarnation != Incarnation(1))
        .never();
    rt.expect_remove().never();
    rt.expect_inspect().returning(|_, ws| {
        Ok(Some(OwnedResource {
            workspace_id: ws.clone(),
            incarnation: Incarnation(2),
            kind: ResourceKind::Main,
            created_at: chrono::Utc::now(),
            status: ProcessStatus::Running,
        }))
    });
    let (engine, _store) = engine_on(rt).await;
    let ws = create(&engine, "fenced").await;
    let start = engine
        .start(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(start.status, OpStatus::Succeeded);
    let stop = engine
        .stop(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(stop.status, OpStatus::Failed, "{stop:?}");
    assert_eq!(engine.workspace(&ws.id).await.unwrap().state, State::Failed);
    engine.shutdown().await;
}

/// N concurrent restarts of one workspace make at most two launch calls (one cycle in
/// flight, one queued that absorbs every later request).
#[tokio::test(start_paused = true)]
async fn a_hundred_concurrent_restarts_make_at_most_two_launches() {
    let mut rt = runtime();
    rt.expect_prepare().returning(|_| Ok(None));
    rt.expect_stop().returning(|_, _| Ok(()));
    rt.expect_launch().times(1..=3).returning(|_| Ok(()));
    let (engine, _store) = engine_on(rt).await;
    let ws = create(&engine, "storm").await;
    engine
        .start(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let requests = (0..100).map(|_| engine.restart(&ws.id, Actor::Api));
    let tickets: Vec<_> = futures_all(requests.collect()).await;
    let mut ops = std::collections::BTreeSet::new();
    for t in tickets {
        let op = t.unwrap().wait().await.unwrap();
        assert_eq!(op.status, OpStatus::Succeeded);
        ops.insert(op.id);
    }
    assert!(ops.len() <= 2, "{} distinct cycles", ops.len());
    engine.shutdown().await;
}

async fn futures_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    crate::shutdown::futures_all(futs).await
}

/// No port is called after `shutdown()` returns: not by a background loop, a driver, a
/// late report, or a request (refused before it reaches a port).
#[tokio::test(start_paused = true)]
async fn no_port_is_called_after_shutdown_returns() {
    let closed = Arc::new(AtomicBool::new(false));
    let guard = |closed: &Arc<AtomicBool>| {
        let closed = closed.clone();
        move || {
            assert!(
                !closed.load(Ordering::SeqCst),
                "a port was called after shutdown"
            )
        }
    };
    let mut rt = MockProcessRuntime::new();
    let g = guard(&closed);
    rt.expect_kind().returning(move || {
        g();
        fake_kind()
    });
    let g = guard(&closed);
    rt.expect_check_spec().returning(move |_| {
        g();
        Ok(())
    });
    let g = guard(&closed);
    rt.expect_list_owned().returning(move |_| {
        g();
        Ok(vec![])
    });
    let g = guard(&closed);
    rt.expect_watch_events().returning(move |_, _, _| g());
    let g = guard(&closed);
    rt.expect_prepare().returning(move |_| {
        g();
        Ok(None)
    });
    let g = guard(&closed);
    rt.expect_launch().returning(move |_| {
        g();
        Ok(())
    });
    let g = guard(&closed);
    rt.expect_stop().returning(move |_, _| {
        g();
        Ok(())
    });
    let mut reporter = MockReporter::new();
    let g = guard(&closed);
    reporter.expect_report().returning(move |_| g());
    reporter.expect_start().returning(|| ());
    reporter.expect_flush().returning(|| ());
    let g = guard(&closed);
    reporter.expect_shutdown().times(1).returning(g);
    reporter.expect_stats().returning(ReporterStats::default);
    let mut cfg = config();
    cfg.reconcile_period = Some(Duration::from_secs(5));
    let engine = Engine::builder()
        .store(Arc::new(MemoryStore::new()))
        .runtime(Arc::new(rt))
        .reporter(Arc::new(reporter))
        .clock(Arc::new(TestClock::new()))
        .config(cfg)
        .build()
        .await
        .unwrap();
    let ws = create(&engine, "a").await;
    engine
        .start(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    // An op still queued when shutdown begins.
    let _stop = engine.stop(&ws.id, Actor::Api).await;
    let report = engine.shutdown().await;
    assert_eq!(report.tasks_alive, 0);
    closed.store(true, Ordering::SeqCst);
    // Time passes (reconcile periods); requests come; a second shutdown is asked for.
    tokio::time::sleep(Duration::from_secs(60)).await;
    for kind in OpKind::ALL {
        assert!(
            engine
                .request(&ws.id, kind, Actor::Api, false)
                .await
                .is_err()
        );
    }
    assert_eq!(engine.reconcile().await, Default::default());
    assert_eq!(engine.shutdown().await, report);
    assert_eq!(engine.live_tasks(), 0);
}
