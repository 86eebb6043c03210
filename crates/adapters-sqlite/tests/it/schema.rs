//! Schema upgrades: an old database migrates; a newer one is refused.

use berth_core::ids::{Incarnation, RuntimeKind, WorkspaceId, WorkspaceName};
use berth_core::model::{Actor, Cause, NewEvent, Workspace};
use berth_core::ports::Store;
use berth_core::state::State;
use berth_sqlite::{OpenError, SqliteOptions, SqliteStore, schema};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

#[tokio::test]
async fn a_first_version_database_opens_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    // A database exactly as schema version 1 left it, written by the migration code.
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    schema::migrate_up_to(&pool, 1).await.unwrap();
    let has_keys: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'idempotency_keys'")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(has_keys, None, "the fixture is really version 1");
    let now = chrono::Utc::now();
    let ws = Workspace {
        id: WorkspaceId::generate(),
        name: WorkspaceName::parse("legacy").unwrap(),
        runtime: RuntimeKind::parse("tmux").unwrap(),
        state: State::Stopped,
        incarnation: Incarnation(0),
        spec: Default::default(),
        dir: None,
        created_at: now,
        updated_at: now,
        last_error: None,
        version: 1,
        pool: None,
    };
    let event = NewEvent {
        at: now,
        workspace_id: ws.id.clone(),
        op_id: None,
        actor: Actor::Api,
        from: None,
        to: Some(State::Stopped),
        cause: Cause::Created,
        message: "created".into(),
    };
    sqlx::query("INSERT INTO workspace_order (workspace_id) VALUES (?)")
        .bind(ws.id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO workspaces (id, created_seq, name, state, version, body) VALUES (?, 1, ?, 'stopped', 1, ?)")
        .bind(ws.id.as_str())
        .bind(ws.name.as_str())
        .bind(serde_json::to_string(&ws).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO events (workspace_id, body) VALUES (?, ?)")
        .bind(ws.id.as_str())
        .bind(serde_json::to_string(&event).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        store.workspace(&ws.id).await.unwrap(),
        Some(ws.clone()),
        "old rows survive the upgrade"
    );
    assert_eq!(store.events(0, None, 10).await.unwrap()[0].event, event);
    assert_eq!(
        store.claim_idempotency_key("k", "h", "r").await.unwrap(),
        None,
        "the new table exists"
    );
    let tmux = store
        .list_workspaces(&berth_core::ports::WorkspaceQuery {
            limit: 10,
            runtime: Some(RuntimeKind::parse("tmux").unwrap()),
            state: Some(State::Stopped),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        tmux.items.iter().map(|w| w.id.clone()).collect::<Vec<_>>(),
        vec![ws.id.clone()],
        "the runtime column is back-filled for old rows"
    );
    let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(
            &SqlitePoolOptions::new()
                .connect_with(SqliteConnectOptions::new().filename(&path))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(version, schema::latest_version());
    store.close().await;
}

#[tokio::test]
async fn a_database_from_a_newer_berth_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap()
        .close()
        .await;
    let pool = SqlitePoolOptions::new()
        .connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'from the future', 1, x'00', 0)").execute(&pool).await.unwrap();
    pool.close().await;
    match SqliteStore::open(&path, SqliteOptions::default()).await {
        Err(e @ OpenError::NewerSchema { found: 99, .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("newer") && message.contains("upgrade berth"),
                "{message}"
            );
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
    // And nothing was downgraded or touched.
    let pool = SqlitePoolOptions::new()
        .connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 99]);
}
