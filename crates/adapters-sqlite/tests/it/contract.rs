//! The store contract and the adapter's own guarantees (file modes, hostile text).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use berth_core::ids::{RuntimeKind, SessionName, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace, OpStatus, WorkspaceSpec};
use berth_core::ports::Store;
use berth_core::testkit::store_contract;
use berth_sqlite::{Durability, SqliteOptions, SqliteStore};

#[tokio::test]
async fn sqlite_store_passes_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    store_contract(|| async {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        crate::open(&dir.path().join(format!("contract-{n}.db"))).await as Arc<dyn Store>
    })
    .await;
}

#[tokio::test]
async fn the_database_file_is_private_and_full_durability_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/nested/berth.db");
    let store = SqliteStore::open(
        &path,
        SqliteOptions {
            durability: Durability::Full,
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(
            &sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    store.integrity_check().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn hostile_text_round_trips_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::open(&dir.path().join("berth.db")).await;
    let engine = crate::engine(store.clone()).await;
    let big = "'); DROP TABLE workspaces; -- \"quoted\" \\ $(rm -rf /) `x` ; \\; ñ 日本 🚀 "
        .repeat(1_600);
    assert!(big.len() > 100_000);
    let spec = WorkspaceSpec {
        command: vec!["sh".into(), "-c".into(), big.clone()],
        env: BTreeMap::from([
            ("HOSTILE".to_owned(), big.clone()),
            ("QUOTES".to_owned(), "'\"`".to_owned()),
        ]),
        ..Default::default()
    };
    let ws = engine
        .create(CreateWorkspace {
            name: WorkspaceName::parse("hostile").unwrap(),
            runtime: RuntimeKind::parse("fake").unwrap(),
            spec: spec.clone(),
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
    let session = engine
        .launch_session(
            &ws.id,
            SessionName::parse("s").unwrap(),
            vec![big.clone()],
            BTreeMap::from([("V".to_owned(), big.clone())]),
        )
        .await
        .unwrap();
    let stored = store.workspace(&ws.id).await.unwrap().unwrap();
    assert_eq!(stored.spec, spec);
    assert_eq!(store.sessions(&ws.id).await.unwrap(), vec![session]);
    assert_eq!(store.op(&op.id).await.unwrap(), Some(op));
    let tables: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'workspaces'")
            .fetch_one(
                &sqlx::SqlitePool::connect(&format!("sqlite://{}", store.path().display()))
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
    assert_eq!(tables, 1, "nothing was executed from the text");
    engine.shutdown().await;
    assert_eq!(engine.live_tasks(), 0);
}
