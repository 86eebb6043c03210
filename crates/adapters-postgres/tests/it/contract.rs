//! The store contract on PostgreSQL, and the schema guard.

use std::sync::Arc;

use berth_core::ports::Store;
use berth_core::testkit::store_contract;
use berth_postgres::{ConnectError, PgOptions, PgStore, testing};

#[tokio::test]
async fn postgres_store_passes_the_store_contract() {
    if testing::server("postgres_store_passes_the_store_contract").is_none() {
        return;
    }
    store_contract(|| async {
        let (_, store) = crate::fresh("contract").await.unwrap();
        store as Arc<dyn Store>
    })
    .await;
}

#[tokio::test]
async fn a_database_of_a_newer_berth_is_refused_and_migrations_run_once() {
    let Some((url, store)) = crate::fresh("a_database_of_a_newer_berth_is_refused").await else {
        return;
    };
    // A second daemon on the same database: no second migration, same engine id.
    let again = crate::open(&url).await;
    let id = store
        .init_engine_id(&berth_core::ids::EngineId::generate())
        .await
        .unwrap();
    assert_eq!(
        again
            .init_engine_id(&berth_core::ids::EngineId::generate())
            .await
            .unwrap(),
        id
    );
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'from the future', true, '\\x00', 0)")
        .execute(store.pool())
        .await
        .unwrap();
    match PgStore::connect(&url, PgOptions::default()).await {
        Err(ConnectError::NewerSchema { found: 9999, .. }) => {}
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_password_never_appears_in_messages() {
    match PgStore::connect(
        "postgres://berth:s3cret-pw@127.0.0.1:1/nothing",
        PgOptions {
            acquire_timeout: std::time::Duration::from_secs(2),
            ..PgOptions::default()
        },
    )
    .await
    {
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.contains("s3cret-pw"), "{shown}");
            assert!(shown.contains("berth:***@127.0.0.1:1"), "{shown}");
        }
        Ok(_) => panic!("nothing listens on port 1"),
    }
}
