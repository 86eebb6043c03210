//! Sessions: one process per name, refused while stopping or deleting (items 9–10).

use std::time::Duration;

use berth_core::engine::EngineError;
use berth_core::ids::SessionName;
use berth_core::model::{Actor, OpStatus};
use berth_core::state::State;
use berth_core::testkit::{FakeCall, wait_until};

use crate::support::Rig;

fn name(n: &str) -> SessionName {
    SessionName::parse(n).unwrap()
}

#[tokio::test(start_paused = true)]
async fn session_launches_are_refused_while_stopping_or_deleting_but_not_elsewhere() {
    let rig = Rig::new().await;
    let a = rig.running("a").await;
    let b = rig.running("b").await;
    // Stopping.
    let held = rig.rt.breakpoints().hold(&format!("stop:{}", a.id));
    let stop = rig.engine.stop(&a.id, Actor::Api).await.unwrap();
    held.reached(1).await;
    match rig
        .engine
        .launch_session(
            &a.id,
            name("shell"),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
    {
        Err(EngineError::WorkspaceStopping { .. }) => {}
        other => panic!("launch while stopping must be refused, got {other:?}"),
    }
    let on_b = rig
        .engine
        .launch_session(
            &b.id,
            name("shell"),
            vec!["sleep".into()],
            Default::default(),
        )
        .await;
    assert!(on_b.is_ok(), "another workspace is not affected: {on_b:?}");
    held.release();
    stop.wait().await.unwrap();
    // Not running at all.
    match rig
        .engine
        .launch_session(
            &a.id,
            name("shell"),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
    {
        Err(EngineError::InvalidTransition {
            from: State::Stopped,
            ..
        }) => {}
        other => panic!("launch in a stopped workspace must be invalid, got {other:?}"),
    }
    // Deleting (held in its preflight).
    let held = rig.rt.breakpoints().hold(&format!("dirty_check:{}", b.id));
    let delete = rig.engine.delete(&b.id, false, Actor::Api).await.unwrap();
    held.reached(1).await;
    match rig
        .engine
        .launch_session(
            &b.id,
            name("other"),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
    {
        Err(EngineError::WorkspaceDeleting { .. }) => {}
        other => panic!("launch while deleting must be refused, got {other:?}"),
    }
    held.release();
    assert_eq!(delete.wait().await.unwrap().status, OpStatus::Succeeded);
    assert!(rig.rt.processes().iter().all(|p| p.workspace_id != b.id));
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn twelve_concurrent_launches_of_one_name_run_one_process() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.rt
        .set_delay(FakeCall::LaunchSession, Duration::from_millis(50));
    let launches = (0..12).map(|_| {
        rig.engine.launch_session(
            &ws.id,
            name("agent"),
            vec!["sleep".into()],
            Default::default(),
        )
    });
    let results = crate::shutdown::futures_all(launches.collect()).await;
    let generations: std::collections::BTreeSet<_> = results
        .into_iter()
        .map(|r| r.expect("every caller gets the session").generation)
        .collect();
    assert_eq!(generations.len(), 1, "one session for all callers");
    assert_eq!(rig.rt.live_sessions(&ws.id).len(), 1, "one process");
    assert_eq!(rig.rt.calls(FakeCall::LaunchSession), 1);
    // Launching the running name again returns it without a new process.
    let again = rig
        .engine
        .launch_session(
            &ws.id,
            name("agent"),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
        .unwrap();
    assert!(generations.contains(&again.generation));
    assert_eq!(rig.rt.calls(FakeCall::LaunchSession), 1);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn stop_waits_for_an_in_flight_session_launch_and_stops_it_too() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let held = rig
        .rt
        .breakpoints()
        .hold(&format!("launch_session:{}", ws.id));
    let engine = rig.engine.clone();
    let id = ws.id.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let launching = async move {
        let r = engine
            .launch_session(&id, name("agent"), vec!["sleep".into()], Default::default())
            .await;
        let _ = tx.send(r);
    };
    let driver = async {
        held.reached(1).await;
        let stop = rig.engine.stop(&ws.id, Actor::Api).await.unwrap();
        wait_until("the stop to begin", Duration::from_secs(1), || async {
            rig.state(&ws).await == State::Stopping
        })
        .await;
        // Give the stop every chance to run ahead; it must keep waiting for the launch.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            rig.rt.calls(FakeCall::Stop),
            0,
            "stop ran while a session launch was in flight"
        );
        held.release();
        stop.wait().await.unwrap()
    };
    let ((), stop) = tokio::join!(launching, driver);
    assert_eq!(stop.status, OpStatus::Succeeded);
    let launched = rx.await.unwrap().expect("the in-flight launch completed");
    assert_eq!(launched.name, name("agent"));
    assert!(
        rig.rt.live_sessions(&ws.id).is_empty(),
        "the late session was stopped too"
    );
    assert!(
        rig.engine.sessions(&ws.id).await.unwrap().is_empty(),
        "its row is gone"
    );
    assert_eq!(rig.state(&ws).await, State::Stopped);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn stopping_a_session_forgets_it_and_unknown_sessions_are_not_found() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.engine
        .launch_session(
            &ws.id,
            name("agent"),
            vec!["echo".into(), "hello".into()],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        rig.engine
            .output(&ws.id, Some(&name("agent")), 10)
            .await
            .unwrap(),
        vec!["hello".to_owned()]
    );
    rig.engine
        .stop_session(&ws.id, &name("agent"))
        .await
        .unwrap();
    assert!(rig.rt.live_sessions(&ws.id).is_empty());
    assert!(matches!(
        rig.engine.stop_session(&ws.id, &name("agent")).await,
        Err(EngineError::NotFound { .. })
    ));
    assert!(matches!(
        rig.engine.output(&ws.id, Some(&name("agent")), 10).await,
        Err(EngineError::NotFound { .. })
    ));
    rig.finish().await;
}

/// Regression (review): the first caller of a session launch went away mid-launch and
/// the launch stayed registered, so every later stop waited for it forever.
#[tokio::test(start_paused = true)]
async fn a_session_launch_whose_caller_went_away_does_not_block_a_stop() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let held = rig
        .rt
        .breakpoints()
        .hold(&format!("launch_session:{}", ws.id));
    let launch = rig.engine.launch_session(
        &ws.id,
        name("agent"),
        vec!["sleep".into()],
        Default::default(),
    );
    let gave_up = tokio::time::timeout(Duration::from_secs(1), launch).await;
    assert!(
        gave_up.is_err(),
        "the caller gave up while the launch was held"
    );
    held.release();
    let stop = rig
        .engine
        .stop(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(stop.status, OpStatus::Succeeded);
    assert_eq!(rig.state(&ws).await, State::Stopped);
    rig.finish().await;
}

/// Defect 10: the name of a session that exited could be launched again only after a
/// minute (the orphan sweep); a running name with another command was a silent
/// success; a launch after the main process exited was a 502.
#[tokio::test(start_paused = true)]
async fn an_exited_session_name_launches_again_at_once_and_a_running_one_keeps_its_command() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let first = rig
        .engine
        .launch_session(
            &ws.id,
            name("agent"),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
        .unwrap();
    // The same command: the running session is returned, nothing launched.
    let same = rig
        .engine
        .launch_session(
            &ws.id,
            name("agent"),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(same, first);
    assert_eq!(rig.rt.calls(FakeCall::LaunchSession), 1);
    // Another command while it runs: refused, the running one untouched.
    match rig
        .engine
        .launch_session(
            &ws.id,
            name("agent"),
            vec!["other".into()],
            Default::default(),
        )
        .await
    {
        Err(EngineError::SessionExists { session, .. }) => assert_eq!(session, "agent"),
        other => panic!("another command on a running name: {other:?}"),
    }
    assert_eq!(rig.rt.live_sessions(&ws.id).len(), 1);
    // It exits; the reconciler has not run: the name launches again at once, as a new
    // generation, with whatever command.
    rig.rt.exit_session(&ws.id, "agent", 0);
    let second = rig
        .engine
        .launch_session(
            &ws.id,
            name("agent"),
            vec!["other".into()],
            Default::default(),
        )
        .await
        .unwrap();
    assert!(
        second.generation > first.generation,
        "{second:?} after {first:?}"
    );
    let live = rig.rt.live_sessions(&ws.id);
    assert_eq!(live.len(), 1, "one process for the name: {live:?}");
    assert_eq!(rig.store.all_sessions(), vec![second]);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_session_launch_after_the_main_process_exited_is_a_conflict_not_a_runtime_error() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.rt.exit_main(&ws.id, 3);
    match rig
        .engine
        .launch_session(
            &ws.id,
            name("late"),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
    {
        Err(e @ EngineError::InvalidTransition { .. }) => {
            assert_eq!(e.code(), berth_core::ErrorCode::InvalidTransition);
            assert!(e.to_string().contains("main process is not running"), "{e}");
        }
        other => panic!("a launch into an exited workspace: {other:?}"),
    }
    assert!(rig.store.all_sessions().is_empty(), "no row is left behind");
    rig.finish().await;
}

/// Defect 11: output of a stopped or never-started workspace was a 502.
#[tokio::test(start_paused = true)]
async fn output_of_a_workspace_without_a_process_is_an_empty_page() {
    let rig = Rig::new().await;
    let fresh = rig.create("fresh").await;
    assert_eq!(
        rig.engine.output(&fresh.id, None, 10).await.unwrap(),
        Vec::<String>::new()
    );
    let ws = rig
        .create_spec(
            "echo",
            berth_core::model::WorkspaceSpec {
                command: vec!["echo".into(), "hello".into()],
                ..Default::default()
            },
        )
        .await;
    rig.engine
        .start(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        rig.engine.output(&ws.id, None, 10).await.unwrap(),
        vec!["hello"]
    );
    rig.engine
        .stop(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    // A stopped process the runtime no longer has (tmux kills the session on stop).
    rig.rt.vanish(&ws.id);
    assert_eq!(
        rig.engine.output(&ws.id, None, 10).await.unwrap(),
        Vec::<String>::new()
    );
    rig.finish().await;
}

/// schemathesis (ST201): a session whose program is "" was launched; it is refused,
/// naming `command`, and so is a workspace's.
#[tokio::test(start_paused = true)]
async fn an_empty_program_is_refused_naming_the_command() {
    let rig = crate::support::Rig::new().await;
    let ws = rig.running("empty").await;
    let launched = rig
        .engine
        .launch_session(
            &ws.id,
            berth_core::ids::SessionName::parse("x").unwrap(),
            vec![String::new(), "arg".into()],
            Default::default(),
        )
        .await;
    assert!(
        matches!(&launched, Err(berth_core::engine::EngineError::Validation { field, .. }) if field == "command"),
        "{launched:?}"
    );
    let created = rig
        .engine
        .create(berth_core::model::CreateWorkspace {
            name: berth_core::ids::WorkspaceName::parse("blank").unwrap(),
            runtime: berth_core::ids::RuntimeKind::parse("fake").unwrap(),
            spec: berth_core::model::WorkspaceSpec {
                command: vec![String::new()],
                ..Default::default()
            },
            actor: berth_core::model::Actor::Api,
        })
        .await;
    assert!(
        matches!(&created, Err(berth_core::engine::EngineError::Validation { field, .. }) if field == "command"),
        "{created:?}"
    );
}
