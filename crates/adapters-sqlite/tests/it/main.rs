//! berth-sqlite's integration tests: the store contract on a real file, concurrency
//! through the engine, crash durability under SIGKILL, schema upgrades, hostile text.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod concurrency;
mod contract;
mod crash;
mod faults;
mod group;
mod schema;

use std::path::Path;
use std::sync::Arc;

use berth_core::Engine;
use berth_core::engine::EngineConfig;
use berth_core::testkit::{FakeRuntime, RecordingReporter, TestClock};
use berth_sqlite::{SqliteOptions, SqliteStore};

pub async fn open(path: &Path) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(
            path,
            SqliteOptions {
                event_retention: None,
                ..SqliteOptions::default()
            },
        )
        .await
        .unwrap(),
    )
}

/// An engine on the SQLite store and the fake runtime.
pub async fn engine(store: Arc<SqliteStore>) -> Engine {
    engine_on(
        store,
        Arc::new(FakeRuntime::new(Arc::new(TestClock::new()))),
    )
    .await
}

/// An engine on the SQLite store and the given fake runtime.
pub async fn engine_on(store: Arc<SqliteStore>, rt: Arc<FakeRuntime>) -> Engine {
    let clock = Arc::new(TestClock::new());
    Engine::builder()
        .store(store)
        .runtime(rt)
        .reporter(Arc::new(RecordingReporter::default()))
        .clock(clock)
        .config(EngineConfig {
            reconcile_period: None,
            ..EngineConfig::default()
        })
        .build()
        .await
        .unwrap()
}

/// Every workspace's history is whole: its events chain (each `from` is the previous
/// `to`), its version counts its events, and its state is its last event's `to`.
pub async fn assert_histories_whole(store: &SqliteStore) {
    use berth_core::ports::Store;
    let events = store.events(0, None, usize::MAX).await.unwrap();
    let mut per_ws: std::collections::HashMap<_, Vec<_>> = std::collections::HashMap::new();
    for e in &events {
        per_ws
            .entry(e.event.workspace_id.clone())
            .or_default()
            .push(e.event.clone());
    }
    for (id, history) in &per_ws {
        for pair in history.windows(2) {
            assert_eq!(
                pair[0].to, pair[1].from,
                "history of {id} has a gap: {pair:?}"
            );
        }
        assert_eq!(
            history[0].from, None,
            "history of {id} does not start with its creation"
        );
        match store.workspace(id).await.unwrap() {
            Some(ws) => {
                assert_eq!(
                    ws.version,
                    history.len() as u64,
                    "workspace {id}: version {} but {} events",
                    ws.version,
                    history.len()
                );
                assert_eq!(
                    history.last().unwrap().to,
                    Some(ws.state),
                    "workspace {id}: state without its event"
                );
            }
            None => assert_eq!(
                history.last().unwrap().to,
                None,
                "workspace {id} is gone without a deleted event"
            ),
        }
    }
}
