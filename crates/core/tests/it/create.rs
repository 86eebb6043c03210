//! Create: validation at the edge, runtimes that say what they cannot honour, names
//! that cannot impersonate ids, and the fencing hook of the store.

use berth_core::ErrorCode;
use berth_core::engine::{EngineError, IdempotencyKey};
use berth_core::ids::{RuntimeKind, WorkspaceName};
use berth_core::merge::OpKind;
use berth_core::model::{Actor, CreateWorkspace, OpStatus, WorkspaceSpec};
use berth_core::state::State;

use crate::support::Rig;

fn request(name: &str, runtime: &str, spec: WorkspaceSpec) -> CreateWorkspace {
    CreateWorkspace {
        name: WorkspaceName::parse(name).unwrap(),
        runtime: RuntimeKind::parse(runtime).unwrap(),
        spec,
        actor: Actor::Api,
    }
}

/// Defect 11: an unknown runtime was 503 `runtime_unavailable`; it is bad input.
#[tokio::test(start_paused = true)]
async fn an_unknown_runtime_is_a_validation_error_naming_the_field() {
    let rig = Rig::new().await;
    match rig
        .engine
        .create(request("a", "bogus", WorkspaceSpec::default()))
        .await
    {
        Err(e @ EngineError::Validation { .. }) => {
            assert_eq!(e.code(), ErrorCode::ValidationFailed);
            let EngineError::Validation { field, message } = e else {
                unreachable!()
            };
            assert_eq!(field, "runtime");
            assert!(
                message.contains("fake"),
                "names the runtimes it has: {message}"
            );
        }
        other => panic!("an unknown runtime: {other:?}"),
    }
    assert!(rig.store.all_workspaces().is_empty());
    rig.finish().await;
}

/// Ports say what they need: a field the runtime cannot honour is refused at create,
/// naming the field, and nothing is stored.
#[tokio::test(start_paused = true)]
async fn a_field_the_runtime_cannot_honour_is_refused_at_create() {
    let rig = Rig::new().await;
    rig.rt.refuse_field("image");
    let spec = WorkspaceSpec {
        image: Some("busybox".into()),
        ..WorkspaceSpec::default()
    };
    match rig.engine.create(request("a", "fake", spec)).await {
        Err(EngineError::Validation { field, .. }) => assert_eq!(field, "image"),
        other => panic!("an image on a runtime without images: {other:?}"),
    }
    assert!(rig.store.all_workspaces().is_empty());
    assert!(rig.store.all_events().is_empty(), "not even an event");
    assert!(
        rig.engine
            .create(request("a", "fake", WorkspaceSpec::default()))
            .await
            .is_ok()
    );
    rig.finish().await;
}

/// The same idempotency key and request give the first answer; another request with
/// that key is refused; a replay shows the workspace as it is now.
#[tokio::test(start_paused = true)]
async fn an_idempotency_key_replays_the_first_create() {
    let rig = Rig::new().await;
    let key = |hash: &str| {
        Some(IdempotencyKey {
            key: "k-1".into(),
            request_hash: hash.into(),
        })
    };
    let first = rig
        .engine
        .create_workspace(
            request("a", "fake", WorkspaceSpec::default()),
            true,
            key("h1"),
        )
        .await
        .unwrap();
    let op = first.operation.clone().unwrap();
    assert_eq!(op.kind, OpKind::Start);
    rig.engine
        .wait(
            &first.workspace.workspace.id,
            berth_core::engine::WaitTarget::Settled,
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
    let again = rig
        .engine
        .create_workspace(
            request("a", "fake", WorkspaceSpec::default()),
            true,
            key("h1"),
        )
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.workspace.workspace.id, first.workspace.workspace.id);
    assert_eq!(
        again.workspace.workspace.state,
        State::Running,
        "as it is now"
    );
    let replayed_op = again.operation.unwrap();
    assert_eq!(
        (replayed_op.id, replayed_op.status),
        (op.id, OpStatus::Succeeded)
    );
    match rig
        .engine
        .create_workspace(
            request("b", "fake", WorkspaceSpec::default()),
            true,
            key("h2"),
        )
        .await
    {
        Err(e @ EngineError::IdempotencyConflict { .. }) => {
            assert_eq!(e.code(), ErrorCode::IdempotencyConflict)
        }
        other => panic!("the key with another body: {other:?}"),
    }
    assert_eq!(rig.store.all_workspaces().len(), 1);
    rig.finish().await;
}

/// Issue 11, item 6: replaying a key whose workspace was since deleted gives the first
/// answer again (same ids, the workspace as first created), never a 404 on the create
/// and never a second workspace.
#[tokio::test(start_paused = true)]
async fn a_key_whose_workspace_was_deleted_replays_the_first_answer_and_creates_nothing() {
    let rig = Rig::new().await;
    let key = || {
        Some(IdempotencyKey {
            key: "k-gone".into(),
            request_hash: "h".into(),
        })
    };
    let first = rig
        .engine
        .create_workspace(request("a", "fake", WorkspaceSpec::default()), false, key())
        .await
        .unwrap();
    let id = first.workspace.workspace.id.clone();
    assert_eq!(rig.remove(&id, false).await.status, OpStatus::Succeeded);
    let again = rig
        .engine
        .create_workspace(request("a", "fake", WorkspaceSpec::default()), false, key())
        .await
        .expect("a replay of a deleted workspace's create answers, as the first time");
    assert!(again.replayed);
    assert_eq!(again.workspace.workspace, first.workspace.workspace);
    assert!(rig.store.all_workspaces().is_empty(), "nothing was created");
    assert!(rig.engine.workspace(&id).await.is_err());
    rig.finish().await;
}

/// The store's fencing hook: once the store knows a newer epoch for a workspace, this
/// engine's writes of it are refused and nothing of it changes.
#[tokio::test(start_paused = true)]
async fn a_fenced_store_refuses_the_engines_writes_and_the_row_stays() {
    let rig = Rig::new().await;
    let ws = rig.running("a").await;
    rig.store.fence_at(&ws.id, 1);
    let op = rig.op(OpKind::Stop, &ws.id).await;
    assert_eq!(op.status, OpStatus::Failed);
    assert_eq!(op.error.map(|e| e.code), Some(ErrorCode::Internal));
    assert_eq!(
        rig.store.all_workspaces()[0].state,
        State::Running,
        "no write landed"
    );
    assert_eq!(
        rig.rt.calls(berth_core::testkit::FakeCall::Stop),
        0,
        "and no stop ran"
    );
    rig.finish().await;
}
