//! Many concurrent lifecycle writes through the engine: no busy error reaches a caller,
//! every history is whole.

use berth_core::ids::{RuntimeKind, WorkspaceName};
use berth_core::merge::OpKind;
use berth_core::model::{Actor, CreateWorkspace, OpStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_on_sixteen_workspaces_never_see_busy_and_keep_whole_histories() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::open(&dir.path().join("berth.db")).await;
    let engine = crate::engine(store.clone()).await;
    let mut ids = Vec::new();
    for i in 0..16 {
        let ws = engine
            .create(CreateWorkspace {
                name: WorkspaceName::parse(&format!("w{i}")).unwrap(),
                runtime: RuntimeKind::parse("fake").unwrap(),
                spec: Default::default(),
                actor: Actor::Api,
            })
            .await
            .unwrap();
        ids.push(ws.id);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64usize {
        let engine = engine.clone();
        let ids = ids.clone();
        tasks.spawn(async move {
            let mut ops = 0;
            for round in 0..12usize {
                let ws = &ids[(t * 7 + round * 3) % ids.len()];
                let kind = [OpKind::Start, OpKind::Restart, OpKind::Stop, OpKind::Start][(t + round) % 4];
                let op = engine.request(ws, kind, Actor::Api, false).await.expect("request accepted").wait().await.expect("op ends");
                assert!(op.status.is_terminal());
                assert!(
                    !matches!(op.status, OpStatus::Failed),
                    "an op failed under concurrency (a busy database must never reach a caller): {op:?}"
                );
                ops += 1;
            }
            ops
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap();
    }
    assert_eq!(total, 64 * 12);
    engine.shutdown().await;
    assert_eq!(engine.live_tasks(), 0);
    let store = crate::open(store.path()).await;
    store.integrity_check().await.unwrap();
    crate::assert_histories_whole(&store).await;
}

/// Another connection (a second process, a backup tool) holds the write lock far past
/// the busy timeout: the engine's write waits for it instead of failing, and succeeds
/// once the lock is released. No busy error reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_makes_callers_wait_not_fail() {
    use berth_sqlite::{SqliteOptions, SqliteStore};
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let options = SqliteOptions {
        busy_timeout: std::time::Duration::from_millis(50),
        event_retention: None,
        ..SqliteOptions::default()
    };
    let store = std::sync::Arc::new(SqliteStore::open(&path, options).await.unwrap());
    let engine = crate::engine(store.clone()).await;
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let e = engine.clone();
    let mut create = tokio::task::JoinSet::new();
    create.spawn(async move {
        e.create(CreateWorkspace {
            name: WorkspaceName::parse("patient").unwrap(),
            runtime: RuntimeKind::parse("fake").unwrap(),
            spec: Default::default(),
            actor: Actor::Api,
        })
        .await
    });
    // Many busy timeouts long: a surfaced busy error would have finished the call.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(
        create.try_join_next().is_none(),
        "the write did not wait for the lock (or failed early)"
    );
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let ws = create
        .join_next()
        .await
        .unwrap()
        .unwrap()
        .expect("the write succeeds once the lock is released");
    let op = engine
        .start(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(op.status, OpStatus::Succeeded);
    engine.shutdown().await;
    crate::assert_histories_whole(&*crate::open(&path).await).await;
}
