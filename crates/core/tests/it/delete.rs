//! Delete: a refusal changes nothing, one stop ceiling bounds the whole delete, and a
//! delete that failed leaves `deleting`, which only another delete gets past.

use std::time::Duration;

use berth_core::ErrorCode;
use berth_core::engine::EngineError;
use berth_core::ids::SessionName;
use berth_core::merge::OpKind;
use berth_core::model::{Actor, OpStatus};
use berth_core::ports::RuntimeError;
use berth_core::state::State;
use berth_core::testkit::{FakeCall, Plan};
use tokio::time::Instant;

use crate::support::{Rig, config};

fn session(n: &str) -> SessionName {
    SessionName::parse(n).unwrap()
}

fn refused(message: &str) -> RuntimeError {
    RuntimeError::Other {
        resource: "fake".into(),
        message: message.into(),
    }
}

/// Defect 3: a non-forced delete on a dirty workspace that would replace a queued
/// restart was refused only after superseding it; the restart's caller got
/// `superseded` and the workspace ended stopped.
#[tokio::test(start_paused = true)]
async fn a_refused_delete_leaves_the_queued_op_it_would_have_replaced() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.rt.set_dirty(&ws.id, Ok(vec!["notes.txt".into()]));
    let held = rig.rt.breakpoints().hold("stop");
    let stop = rig.engine.stop(&ws.id, Actor::Api).await.unwrap();
    held.reached(1).await;
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    let delete = rig
        .engine
        .delete(&ws.id, false, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(delete.status, OpStatus::Failed);
    assert_eq!(
        delete.error.as_ref().map(|e| e.code),
        Some(ErrorCode::WorkspaceDirty)
    );
    let pending = rig.engine.pending(&ws.id);
    assert_eq!(
        pending.queued.as_ref().map(|o| o.id.clone()),
        Some(start.op_id().clone()),
        "the queued start is still queued"
    );
    held.release();
    assert_eq!(stop.wait().await.unwrap().status, OpStatus::Succeeded);
    let start = start.wait().await.unwrap();
    assert_eq!(start.status, OpStatus::Succeeded, "{start:?}");
    assert_eq!(rig.state(&ws).await, State::Running);
    rig.finish().await;
}

/// Defect 4: each runtime call of a delete had its own ceiling, so four slow calls
/// took four ceilings. The whole delete now spends one.
#[tokio::test(start_paused = true)]
async fn a_delete_whose_calls_are_each_slow_ends_within_one_stop_ceiling() {
    let rig = Rig::new().await;
    let ceiling = rig.config.stop_ceiling;
    let ws = rig.running("a").await;
    let slow = ceiling.mul_f64(0.4);
    for call in [
        FakeCall::DirtyCheck,
        FakeCall::Stop,
        FakeCall::Remove,
        FakeCall::Cleanup,
    ] {
        rig.rt.set_delay(call, slow);
    }
    let began = Instant::now();
    let op = rig.remove(&ws.id, false).await;
    assert!(
        began.elapsed() <= ceiling + Duration::from_millis(1),
        "the delete took {:?}, more than one ceiling of {ceiling:?}",
        began.elapsed()
    );
    assert_eq!(op.status, OpStatus::Failed);
    assert_eq!(
        op.error.as_ref().map(|e| e.code),
        Some(ErrorCode::RuntimeTimeout)
    );
    assert_eq!(
        rig.state(&ws).await,
        State::Deleting,
        "rows kept for a retry"
    );
    for call in [
        FakeCall::DirtyCheck,
        FakeCall::Stop,
        FakeCall::Remove,
        FakeCall::Cleanup,
    ] {
        rig.rt.set_delay(call, Duration::ZERO);
    }
    assert_eq!(rig.remove(&ws.id, false).await.status, OpStatus::Succeeded);
    assert!(rig.engine.workspace(&ws.id).await.is_err());
    rig.finish().await;
}

/// Defect 4: whichever call hangs, the delete ends within one stop ceiling.
#[tokio::test(start_paused = true)]
async fn a_delete_ends_within_one_stop_ceiling_whichever_runtime_call_hangs() {
    for hung in [
        FakeCall::DirtyCheck,
        FakeCall::StopSession,
        FakeCall::Stop,
        FakeCall::Remove,
        FakeCall::Cleanup,
    ] {
        let rig = Rig::new().await;
        let ceiling = rig.config.stop_ceiling;
        let ws = rig.running("a").await;
        rig.engine
            .launch_session(
                &ws.id,
                session("agent"),
                vec!["sleep".into()],
                Default::default(),
            )
            .await
            .unwrap();
        rig.rt.plan(hung, Plan::Hang);
        let began = Instant::now();
        let op = rig.remove(&ws.id, false).await;
        assert!(
            began.elapsed() <= ceiling + Duration::from_millis(1),
            "{hung:?}: the delete took {:?}",
            began.elapsed()
        );
        let code = op.error.as_ref().map(|e| e.code);
        if hung == FakeCall::DirtyCheck {
            // Nothing could be checked: refused, nothing changed.
            assert_eq!(code, Some(ErrorCode::DirtyCheckFailed), "{op:?}");
            assert_eq!(rig.state(&ws).await, State::Running);
        } else {
            assert_eq!(code, Some(ErrorCode::RuntimeTimeout), "{hung:?}: {op:?}");
            assert_eq!(rig.state(&ws).await, State::Deleting);
        }
        rig.finish().await;
    }
}

/// Defect 4: a delete that preempts a start that hangs spends one ceiling in total,
/// the start's cleanup included.
#[tokio::test(start_paused = true)]
async fn a_delete_preempting_a_hung_start_whose_cleanup_hangs_too_ends_within_one_ceiling() {
    let rig = Rig::new().await;
    let ceiling = rig.config.stop_ceiling;
    let ws = rig.create("a").await;
    // The launch created the process and never answers.
    let launch = rig.rt.breakpoints().hold("launch.created");
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    launch.reached(1).await;
    rig.rt.plan(FakeCall::Remove, Plan::Hang);
    let began = Instant::now();
    let op = rig.remove(&ws.id, true).await;
    assert!(
        began.elapsed() <= ceiling + Duration::from_millis(1),
        "the delete took {:?}",
        began.elapsed()
    );
    assert_eq!(start.wait().await.unwrap().status, OpStatus::Cancelled);
    // The hung cleanup spent the budget; what is left of the delete runs at once.
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert!(rig.rt.processes().is_empty());
    launch.release();
    rig.finish().await;
}

/// Defect 5: a workspace left `deleting` by a failed delete refuses start, restart,
/// stop and session launches with `workspace_deleting`; a retried delete finishes it.
#[tokio::test(start_paused = true)]
async fn a_workspace_a_failed_delete_left_deleting_refuses_all_but_delete() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.rt
        .plan(FakeCall::Remove, Plan::Fail(refused("device busy")));
    let op = rig.remove(&ws.id, false).await;
    assert_eq!(op.status, OpStatus::Failed);
    assert_eq!(
        op.error.as_ref().map(|e| e.code),
        Some(ErrorCode::RuntimeError)
    );
    assert!(
        op.error.as_ref().unwrap().message.contains("device busy"),
        "{op:?}"
    );
    assert_eq!(rig.state(&ws).await, State::Deleting);
    for kind in [OpKind::Start, OpKind::Restart, OpKind::Stop] {
        match rig.engine.request(&ws.id, kind, Actor::Api, false).await {
            Err(EngineError::WorkspaceDeleting { .. }) => {}
            other => panic!("{kind:?} on a deleting workspace: {other:?}"),
        }
    }
    match rig
        .engine
        .launch_session(
            &ws.id,
            session("s"),
            vec!["sleep".into()],
            Default::default(),
        )
        .await
    {
        Err(EngineError::WorkspaceDeleting { .. }) => {}
        other => panic!("a session launch on a deleting workspace: {other:?}"),
    }
    assert_eq!(rig.state(&ws).await, State::Deleting, "nothing changed it");
    let retry = rig.remove(&ws.id, false).await;
    assert_eq!(retry.status, OpStatus::Succeeded, "{retry:?}");
    assert!(rig.engine.workspace(&ws.id).await.is_err());
    assert!(rig.rt.processes().is_empty());
    rig.finish().await;
}

/// Defect 5: a runtime error aborts the delete with the resource named and keeps the
/// rows; every other session is still attempted, and the main process is not touched.
#[tokio::test(start_paused = true)]
async fn a_session_that_cannot_be_stopped_aborts_the_delete_after_every_session_was_tried() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    for n in ["one", "two", "three"] {
        rig.engine
            .launch_session(&ws.id, session(n), vec!["sleep".into()], Default::default())
            .await
            .unwrap();
    }
    rig.rt.plan(
        FakeCall::StopSession,
        Plan::Fail(refused("permission denied")),
    );
    let stops_before = rig.rt.calls(FakeCall::Stop);
    let op = rig.remove(&ws.id, true).await;
    assert_eq!(op.status, OpStatus::Failed);
    let error = op.error.unwrap();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert_eq!(error.details["resources"].len(), 1, "{error:?}");
    assert!(error.details["resources"][0].contains("permission denied"));
    assert_eq!(
        rig.rt.calls(FakeCall::StopSession),
        3,
        "every session was attempted"
    );
    assert_eq!(
        rig.rt.calls(FakeCall::Stop),
        stops_before,
        "the main process is not stopped after a failed effect"
    );
    assert_eq!(rig.rt.live_sessions(&ws.id).len(), 1);
    assert_eq!(
        rig.store.all_sessions().len(),
        1,
        "the failed session's row is kept"
    );
    assert_eq!(rig.state(&ws).await, State::Deleting);
    assert_eq!(rig.remove(&ws.id, false).await.status, OpStatus::Succeeded);
    assert!(rig.rt.processes().is_empty());
    assert!(rig.store.all_sessions().is_empty());
    rig.finish().await;
}

/// A workspace that never started is deleted without force, and nothing is stopped.
#[tokio::test(start_paused = true)]
async fn a_workspace_never_started_is_deleted_without_force_or_a_stop() {
    let rig = Rig::with(config()).await;
    let ws = rig.create("fresh").await;
    let op = rig.remove(&ws.id, false).await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert_eq!(
        rig.rt.calls(FakeCall::Stop),
        0,
        "nothing ran, nothing to stop"
    );
    assert!(rig.engine.workspace(&ws.id).await.is_err());
    rig.finish().await;
}

/// Issue 11, item 1: a forced delete preempts a start whose launch the runtime is
/// already carrying out (dockerd finishes a container create whether or not its
/// client still waits). The delete waits for that launch, within half its budget,
/// and removes what it made: once the runtime is done, nothing of the workspace is
/// left. Dropping the launch instead let it create its process after the delete
/// looked.
#[tokio::test(start_paused = true)]
async fn a_delete_preempting_a_launch_the_runtime_already_carries_out_leaves_nothing() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    rig.rt
        .plan(FakeCall::Launch, Plan::Detached(Duration::from_secs(2)));
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    berth_core::testkit::wait_until("the launch to be sent", Duration::from_secs(1), || async {
        rig.rt.calls(FakeCall::Launch) == 1
    })
    .await;
    let began = Instant::now();
    let delete = rig.engine.delete(&ws.id, true, Actor::Api).await.unwrap();
    let op = delete.wait().await.unwrap();
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert!(
        began.elapsed() <= config().stop_ceiling,
        "one ceiling bounds the delete"
    );
    assert_eq!(start.wait().await.unwrap().status, OpStatus::Cancelled);
    // Long after the runtime finished everything it was asked to do.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let left: Vec<_> = rig
        .rt
        .processes()
        .into_iter()
        .filter(|p| p.workspace_id == ws.id)
        .collect();
    assert!(left.is_empty(), "the delete left {left:?}");
    rig.finish().await;
}
