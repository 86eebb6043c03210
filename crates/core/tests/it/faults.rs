//! Issue 11, item 3: a runtime that does not answer delays only its own workspaces.
//! Readiness (the engine build), the reconcile of another runtime and shutdown go on;
//! the runtime is reported degraded. Paused tokio time: the bounds are exact.

use std::sync::Arc;
use std::time::Duration;

use berth_core::Engine;
use berth_core::engine::{EngineConfig, RuntimeState};
use berth_core::ids::{RuntimeKind, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace, OpStatus, WorkspaceSpec};
use berth_core::state::State;
use berth_core::testkit::{FakeCall, FakeRuntime, MemoryStore, RecordingReporter, TestClock};
use tokio::time::Instant;

use crate::support::config;

struct TwoRuntimes {
    engine: Engine,
    fast: Arc<FakeRuntime>,
    boot: Duration,
    config: EngineConfig,
}

/// An engine on `fake` (answers) and `hung` (its listing never answers).
async fn two_runtimes() -> TwoRuntimes {
    let clock = Arc::new(TestClock::new());
    let fast = Arc::new(FakeRuntime::new(clock.clone()));
    let hung = Arc::new(FakeRuntime::named("hung", clock.clone()));
    hung.set_delay(FakeCall::List, Duration::from_secs(24 * 3600));
    let config = EngineConfig {
        reconcile_period: Some(Duration::from_secs(5)),
        runtime_call_timeout: Duration::from_secs(5),
        ..config()
    };
    let began = Instant::now();
    let engine = Engine::builder()
        .store(Arc::new(MemoryStore::new()))
        .runtime(fast.clone())
        .runtime(hung)
        .reporter(Arc::new(RecordingReporter::default()))
        .clock(clock)
        .config(config.clone())
        .build()
        .await
        .expect("engine builds");
    TwoRuntimes {
        engine,
        fast,
        boot: began.elapsed(),
        config,
    }
}

fn health(engine: &Engine, kind: &str) -> RuntimeState {
    engine
        .runtime_health()
        .into_iter()
        .find(|h| h.runtime.as_str() == kind)
        .map(|h| h.state)
        .unwrap_or(RuntimeState::Unknown)
}

#[tokio::test(start_paused = true)]
async fn a_runtime_that_never_answers_delays_neither_readiness_nor_another_runtime() {
    let rig = two_runtimes().await;
    let engine = &rig.engine;
    assert!(
        rig.boot < Duration::from_secs(1),
        "boot (readiness) waited {:?} for a runtime that never answers",
        rig.boot
    );
    berth_core::testkit::wait_until(
        "the hung runtime to be reported degraded",
        rig.config.runtime_call_timeout + Duration::from_secs(1),
        || async { health(engine, "hung") == RuntimeState::Degraded },
    )
    .await;
    assert_eq!(health(engine, "fake"), RuntimeState::Up);
    let detail = engine
        .runtime_health()
        .into_iter()
        .find(|h| h.runtime.as_str() == "hung")
        .and_then(|h| h.detail)
        .unwrap_or_default();
    assert!(detail.contains("did not answer"), "{detail}");

    // A workspace of the runtime that answers: its process exits, and the reconciler
    // notices within one period, although the other runtime's listing still hangs.
    let ws = engine
        .create(CreateWorkspace {
            name: WorkspaceName::parse("a").unwrap(),
            runtime: RuntimeKind::parse("fake").unwrap(),
            spec: WorkspaceSpec {
                command: vec!["agent".into()],
                ..Default::default()
            },
            actor: Actor::Api,
        })
        .await
        .unwrap();
    let op = engine
        .start(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(op.status, OpStatus::Succeeded);
    rig.fast.exit_main(&ws.id, 0);
    let noticed = Instant::now();
    berth_core::testkit::wait_until(
        "the exit to be noticed",
        rig.config.reconcile_period.unwrap() + Duration::from_secs(1),
        || async { engine.workspace(&ws.id).await.unwrap().state != State::Running },
    )
    .await;
    assert!(noticed.elapsed() <= rig.config.reconcile_period.unwrap() + Duration::from_secs(1));
    assert_eq!(health(engine, "hung"), RuntimeState::Degraded);

    // Shutdown does not wait for the hung listing.
    let began = Instant::now();
    let report = engine.shutdown().await;
    assert_eq!(report.tasks_alive, 0, "{report:?}");
    assert!(
        began.elapsed() <= rig.config.drain_deadline,
        "shutdown took {:?}",
        began.elapsed()
    );
}

/// A runtime that fails fast is degraded too, and up again once it answers.
#[tokio::test(start_paused = true)]
async fn a_runtime_that_fails_is_degraded_and_up_again_once_it_answers() {
    let rig = two_runtimes().await;
    rig.fast.set_unavailable(true);
    rig.engine.reconcile().await;
    assert_eq!(health(&rig.engine, "fake"), RuntimeState::Degraded);
    rig.fast.set_unavailable(false);
    rig.engine.reconcile().await;
    assert_eq!(health(&rig.engine, "fake"), RuntimeState::Up);
    rig.engine.shutdown().await;
}
