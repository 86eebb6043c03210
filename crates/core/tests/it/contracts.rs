//! The conformance suites against the reference fakes.

use std::sync::Arc;
use std::time::Duration;

use berth_core::CachedStore;
use berth_core::model::WorkspaceSpec;
use berth_core::ports::{Commit, Store};
use berth_core::state::State;
use berth_core::testkit::{
    Breakpoints, ContractProgram, FakeRuntime, MemoryStore, RuntimeHarness, TestClock,
    runtime_contract, store_contract,
};

#[tokio::test]
async fn memory_store_passes_the_store_contract() {
    store_contract(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
}

#[tokio::test]
async fn the_read_cache_over_the_memory_store_passes_the_store_contract() {
    store_contract(|| async {
        Arc::new(CachedStore::new(Arc::new(MemoryStore::new()))) as Arc<dyn Store>
    })
    .await;
    // With no room, every read goes through: the same clauses hold.
    store_contract(|| async {
        Arc::new(CachedStore::with_capacity(Arc::new(MemoryStore::new()), 0)) as Arc<dyn Store>
    })
    .await;
}

/// A read that fetched a row before a commit and finishes after it must not leave that
/// old row in the cache: the next read sees the commit.
#[tokio::test]
async fn a_read_racing_a_commit_never_caches_the_older_row() {
    let rig = crate::support::Rig::new().await;
    let ws = rig.create("raced").await;
    let breakpoints = Arc::new(Breakpoints::default());
    let cached = Arc::new(
        CachedStore::new(rig.store.clone() as Arc<dyn Store>).with_breakpoints(breakpoints.clone()),
    );
    let fetched = breakpoints.hold("cache.fetched");
    let reader = {
        let cached = Arc::clone(&cached);
        let id = ws.id.clone();
        #[allow(clippy::disallowed_methods, reason = "a test's own reader task")]
        tokio::spawn(async move { cached.workspace(&id).await })
    };
    fetched.reached(1).await;
    // The reader holds version 1; a commit lands and returns.
    let mut next = ws.clone();
    next.version += 1;
    next.state = State::Failed;
    cached
        .commit(&Commit {
            workspace: next,
            expected_version: ws.version,
            event: None,
            token: None,
            ops: Vec::new(),
        })
        .await
        .expect("commit");
    fetched.release();
    let raced = reader.await.expect("reader").expect("read").expect("row");
    assert_eq!(raced.version, ws.version, "the racing read saw the old row");
    let after = cached.workspace(&ws.id).await.expect("read").expect("row");
    assert_eq!(after.version, ws.version + 1, "a stale row was cached");
    assert_eq!(after.state, State::Failed);
    // Once settled, reads are served from memory and still current.
    assert_eq!(cached.cached_rows(), 1);
    let again = cached.workspace(&ws.id).await.expect("read").expect("row");
    assert_eq!(again.version, ws.version + 1);
    rig.finish().await;
}

fn fake_command(p: ContractProgram) -> Vec<String> {
    match p {
        ContractProgram::Forever => vec!["sleep".into()],
        ContractProgram::Exit(code) => vec!["exit".into(), code.to_string()],
        ContractProgram::Print(text) => vec!["echo".into(), text],
    }
}

#[tokio::test(start_paused = true)]
async fn fake_runtime_passes_the_runtime_contract() {
    let harness = RuntimeHarness {
        runtime: Arc::new(FakeRuntime::new(Arc::new(TestClock::new()))),
        spec: Box::new(|p| WorkspaceSpec {
            command: fake_command(p),
            ..Default::default()
        }),
        session_command: Box::new(fake_command),
        settle: Duration::from_secs(5),
    };
    runtime_contract(&harness).await;
}
