//! Reads: snapshots of the row and the pending ops at one moment, that never wait on a
//! gate; `wait` never answers for a moment when an op is pending.

use std::time::Duration;

use berth_core::engine::{EngineError, ListQuery, WaitTarget};
use berth_core::ids::Incarnation;
use berth_core::merge::OpKind;
use berth_core::model::{Actor, OpStatus};
use berth_core::state::State;

use crate::support::Rig;

/// Defect 8: a delete's preflight held the gate's slot lock, and `GET` of the
/// workspace (and the list, and `wait`) waited for a 30 s dirty check.
#[tokio::test(start_paused = true)]
async fn reads_never_wait_for_a_slow_dirty_check_or_a_held_op() {
    let rig = Rig::new().await;
    let ws = rig.create("a").await;
    let other = rig.create("b").await;
    // A start in flight, held at its launch; a non-forced delete that would preempt it
    // checks for unsaved work first, and that check hangs.
    let launch = rig.rt.breakpoints().hold(&format!("launch:{}", ws.id));
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    launch.reached(1).await;
    let check = rig.rt.breakpoints().hold(&format!("dirty_check:{}", ws.id));
    let engine = rig.engine.clone();
    let id = ws.id.clone();
    #[allow(clippy::disallowed_methods, reason = "a test's own client task")]
    let delete = tokio::spawn(async move { engine.delete(&id, false, Actor::Api).await });
    check.reached(1).await;
    let bound = Duration::from_secs(1);
    let snap = tokio::time::timeout(bound, rig.engine.snapshot(&ws.id))
        .await
        .expect("GET must not wait on the gate")
        .unwrap();
    assert_eq!(snap.workspace.state, State::Starting);
    assert_eq!(
        snap.pending.in_flight.map(|o| o.kind),
        Some(OpKind::Start),
        "the read shows the op in flight"
    );
    let page = tokio::time::timeout(
        bound,
        rig.engine.list(ListQuery {
            limit: 10,
            ..ListQuery::default()
        }),
    )
    .await
    .expect("the list must not wait on the gate")
    .unwrap();
    assert_eq!(page.items.len(), 2);
    match tokio::time::timeout(
        bound * 3,
        rig.engine.wait(&ws.id, WaitTarget::Settled, bound),
    )
    .await
    {
        Ok(Err(EngineError::WaitTimeout { state, .. })) => assert_eq!(state, State::Starting),
        other => panic!("wait must answer with its own timeout, got {other:?}"),
    }
    // Another workspace's requests are not affected either.
    let op = tokio::time::timeout(bound, rig.op(OpKind::Start, &other.id))
        .await
        .expect("another workspace never waits");
    assert_eq!(op.status, OpStatus::Succeeded);
    check.release();
    launch.release();
    assert_eq!(
        delete.await.unwrap().unwrap().wait().await.unwrap().status,
        OpStatus::Succeeded
    );
    assert_eq!(start.wait().await.unwrap().status, OpStatus::Cancelled);
    rig.finish().await;
}

/// Defect 2: `wait` answered `reached: true` for the current state while an op was in
/// flight (a restart of a running workspace "reached" running before it stopped).
#[tokio::test(start_paused = true)]
async fn wait_never_answers_while_an_op_is_in_flight_or_queued() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let stop = rig.rt.breakpoints().hold("stop");
    let restart = rig.engine.restart(&ws.id, Actor::Api).await.unwrap();
    stop.reached(1).await;
    let engine = rig.engine.clone();
    let waiting = engine.wait(
        &ws.id,
        WaitTarget::State(State::Running),
        Duration::from_secs(60),
    );
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), &mut waiting)
            .await
            .is_err(),
        "wait answered while a restart was in flight"
    );
    stop.release();
    let outcome = waiting.await.unwrap();
    assert!(outcome.reached);
    assert_eq!(outcome.settled_state, Some(State::Running));
    let snap = outcome.workspace.unwrap();
    assert_eq!(
        snap.workspace.incarnation,
        Incarnation(2),
        "after the restart, not before"
    );
    assert!(snap.pending.is_idle());
    assert_eq!(
        outcome.operation.map(|o| o.id),
        Some(restart.op_id().clone())
    );
    rig.finish().await;
}

/// Defect 2: a stop in flight with a start queued behind it: waiting for `stopped`
/// answers only once the start ran, with `reached: false`.
#[tokio::test(start_paused = true)]
async fn waiting_for_stopped_past_a_queued_start_reports_where_it_settled() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    let held = rig.rt.breakpoints().hold("stop");
    let stop = rig.engine.stop(&ws.id, Actor::Api).await.unwrap();
    held.reached(1).await;
    let start = rig.engine.start(&ws.id, Actor::Api).await.unwrap();
    let engine = rig.engine.clone();
    let waiting = engine.wait(
        &ws.id,
        WaitTarget::State(State::Stopped),
        Duration::from_secs(60),
    );
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), &mut waiting)
            .await
            .is_err()
    );
    held.release();
    let outcome = waiting.await.unwrap();
    assert!(!outcome.reached, "{outcome:?}");
    assert_eq!(outcome.settled_state, Some(State::Running));
    assert_eq!(stop.wait().await.unwrap().status, OpStatus::Succeeded);
    assert_eq!(start.wait().await.unwrap().status, OpStatus::Succeeded);
    // Waiting for an op answers when it ends; a deleted workspace settles as deleted.
    let delete = rig.engine.delete(&ws.id, true, Actor::Api).await.unwrap();
    let outcome = rig
        .engine
        .wait(
            &ws.id,
            WaitTarget::Op(delete.op_id().clone()),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(outcome.reached);
    assert!(outcome.workspace.is_none() && outcome.settled_state.is_none());
    rig.finish().await;
}

/// The gate keeps the row it committed; a read that fetched a row before a commit and
/// returns after it must not leave that older row behind (the next read sees the
/// commit).
#[tokio::test(start_paused = true)]
async fn a_read_racing_a_commit_never_keeps_the_older_row() {
    let rig = Rig::new().await;
    let ws = rig.running("raced").await;
    // A fresh engine on the same store: no gate knows the row yet.
    let rig = rig.restart_engine().await;
    let fetched = rig.store.breakpoints().hold_once("store.workspace");
    let engine = rig.engine.clone();
    let id = ws.id.clone();
    #[allow(clippy::disallowed_methods, reason = "a test's own reader task")]
    let reader = tokio::spawn(async move { engine.workspace(&id).await });
    fetched.reached(1).await;
    // The reader holds the running row; a stop commits and returns.
    assert_eq!(
        rig.op(OpKind::Stop, &ws.id).await.status,
        OpStatus::Succeeded
    );
    fetched.release();
    let raced = reader.await.unwrap().unwrap();
    assert_eq!(
        raced.state,
        State::Stopped,
        "the read answered with the row it raced"
    );
    let after = rig.engine.workspace(&ws.id).await.unwrap();
    assert_eq!(after.state, State::Stopped, "an older row was kept");
    assert_eq!(after, rig.store.all_workspaces()[0]);
    rig.finish().await;
}
