//! Group commit: writes waiting together commit in one transaction, each caller is
//! answered after its rows are committed, a write whose check fails gets its own
//! verdict without failing the others, and a batch that fails fails every write in it
//! and applies none. Batches are formed deterministically by holding the write lock
//! from another connection (see [`together`]).

use std::sync::Arc;
use std::time::Duration;

use berth_core::ids::{Incarnation, RuntimeKind, WorkspaceId, WorkspaceName};
use berth_core::model::{Actor, Cause, NewEvent, Workspace, WorkspaceSpec};
use berth_core::ports::{Commit, Fence, Store, StoreError};
use berth_core::state::State;
use berth_sqlite::SqliteStore;
use sqlx::Connection as _;

fn workspace(name: &str) -> Workspace {
    let now = chrono::Utc::now();
    Workspace {
        id: WorkspaceId::generate(),
        name: WorkspaceName::parse(name).unwrap(),
        runtime: RuntimeKind::parse("fake").unwrap(),
        state: State::Stopped,
        incarnation: Incarnation(0),
        spec: WorkspaceSpec::default(),
        dir: None,
        created_at: now,
        updated_at: now,
        last_error: None,
        version: 1,
        pool: None,
    }
}

fn event(ws: &Workspace, to: State, message: &str) -> NewEvent {
    NewEvent {
        at: chrono::Utc::now(),
        workspace_id: ws.id.clone(),
        op_id: None,
        actor: Actor::Api,
        from: Some(ws.state),
        to: Some(to),
        cause: Cause::Start,
        message: message.to_owned(),
    }
}

fn starting(ws: &Workspace, expected_version: u64, message: &str) -> Commit {
    let mut next = ws.clone();
    next.state = State::Starting;
    next.version = expected_version + 1;
    Commit {
        event: Some(event(ws, State::Starting, message)),
        workspace: next,
        expected_version,
        token: None,
        ops: Vec::new(),
        fence: Fence::default(),
    }
}

/// `n` stopped workspaces in a fresh store.
async fn fixture(n: usize) -> (tempfile::TempDir, Arc<SqliteStore>, Vec<Workspace>) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::open(&dir.path().join("berth.db")).await;
    let mut all = Vec::new();
    for i in 0..n {
        let ws = workspace(&format!("g{i}"));
        let created = NewEvent {
            cause: Cause::Created,
            from: None,
            ..event(&ws, State::Stopped, "created")
        };
        store.create_workspace(&ws, &created).await.unwrap();
        all.push(ws);
    }
    (dir, store, all)
}

/// Holds the database's write lock from another connection until dropped.
async fn hold_write_lock(store: &SqliteStore) -> sqlx::SqliteConnection {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", store.path().display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Submits `commits` while the write lock is held elsewhere and returns each answer, in
/// two batches of a fixed shape: the first write alone (submitted first, and waited
/// for until the committer is committing it, waiting inside SQLite for the lock), then
/// every other write, queued meanwhile (the lock is released once all are queued).
async fn together(
    store: &Arc<SqliteStore>,
    commits: Vec<Commit>,
) -> Vec<Result<Option<berth_core::model::Event>, StoreError>> {
    let mut lock = hold_write_lock(store).await;
    let n = commits.len() as u64;
    let tasks = tokio_util::task::TaskTracker::new();
    let mut handles = Vec::new();
    for (i, c) in commits.into_iter().enumerate() {
        let task = Arc::clone(store);
        handles.push(tasks.spawn(async move { task.commit(&c).await }));
        if i == 0 {
            berth_core::testkit::wait_until(
                "the first write to be committing alone",
                Duration::from_secs(10),
                || async { store.commit_stats().committing == 1 },
            )
            .await;
        }
    }
    berth_core::testkit::wait_until(
        "every write to be queued",
        Duration::from_secs(10),
        || async { store.commit_stats().pending == n },
    )
    .await;
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_wait_together_commit_in_one_transaction_in_order() {
    let (_dir, store, all) = fixture(16).await;
    let before = store.commit_stats();
    let commits = all.iter().map(|w| starting(w, 1, "go")).collect();
    let answers = together(&store, commits).await;
    let after = store.commit_stats();
    assert_eq!(after.writes - before.writes, 16);
    assert_eq!(
        after.batches - before.batches,
        2,
        "the first write alone, then the 15 queued while it waited commit in one transaction"
    );
    // Every caller got its event, numbered in submission order and without gaps.
    let mut seqs: Vec<u64> = answers
        .into_iter()
        .map(|a| a.unwrap().unwrap().seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (17..=32).collect::<Vec<_>>());
    for w in &all {
        let row = store.workspace(&w.id).await.unwrap().unwrap();
        assert_eq!((row.state, row.version), (State::Starting, 2));
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_writes_without_contention_all_commit_in_batches_never_alone() {
    let (_dir, store, all) = fixture(32).await;
    let before = store.commit_stats();
    let tasks = tokio_util::task::TaskTracker::new();
    let handles: Vec<_> = all
        .iter()
        .map(|w| {
            let (store, c) = (Arc::clone(&store), starting(w, 1, "go"));
            tasks.spawn(async move { store.commit(&c).await })
        })
        .collect();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let after = store.commit_stats();
    assert_eq!(
        after.writes - before.writes,
        32,
        "every write through a batch"
    );
    assert_eq!(
        after.separated, before.separated,
        "no valid write ran alone"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_write_in_a_batch_gets_its_own_verdict_and_the_others_commit() {
    let (_dir, store, all) = fixture(8).await;
    let commits = all
        .iter()
        .enumerate()
        .map(|(i, w)| starting(w, if i == 3 { 7 } else { 1 }, "go"))
        .collect();
    let answers = together(&store, commits).await;
    for (i, answer) in answers.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(answer, Err(StoreError::Conflict { .. })),
                "the stale write: {answer:?}"
            );
        } else {
            assert!(answer.is_ok(), "write {i}: {answer:?}");
        }
    }
    assert_eq!(
        store.workspace(&all[3].id).await.unwrap().unwrap().version,
        1
    );
    assert_eq!(store.last_event_seq().await.unwrap(), 8 + 7);
    store.close().await;
}

/// Poisons the events whose message contains `poison`: appending one aborts its
/// statement (a trigger of the test's own, on another connection).
async fn poison_events(store: &SqliteStore) {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", store.path().display()))
        .await
        .unwrap();
    sqlx::query("CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.body LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_database_refuses_fails_alone_and_the_others_commit() {
    let (_dir, store, all) = fixture(8).await;
    poison_events(&store).await;
    let commits = all
        .iter()
        .enumerate()
        .map(|(i, w)| starting(w, 1, if i == 5 { "poison" } else { "fine" }))
        .collect();
    let before = store.commit_stats();
    let answers = together(&store, commits).await;
    for (i, answer) in answers.iter().enumerate() {
        if i == 5 {
            assert!(
                matches!(answer, Err(StoreError::Unavailable { .. })),
                "the refused write: {answer:?}"
            );
        } else {
            assert!(answer.is_ok(), "write {i}: {answer:?}");
        }
    }
    assert_eq!(
        store.workspace(&all[5].id).await.unwrap().unwrap().version,
        1,
        "nothing of the refused write applied"
    );
    assert_eq!(store.last_event_seq().await.unwrap(), 8 + 7);
    assert_eq!(store.commit_stats().separated, before.separated + 1);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_every_write_in_it_and_applies_none() {
    let (_dir, store, all) = fixture(8).await;
    // Every write's event is refused: the batch fails half-way through its rows, and
    // each write run alone fails too.
    poison_events(&store).await;
    let commits = all.iter().map(|w| starting(w, 1, "poison")).collect();
    let answers = together(&store, commits).await;
    for (i, answer) in answers.iter().enumerate() {
        assert!(
            matches!(answer, Err(StoreError::Unavailable { .. })),
            "write {i} of the failed batch: {answer:?}"
        );
    }
    for w in &all {
        let row = store.workspace(&w.id).await.unwrap().unwrap();
        assert_eq!(
            (row.state, row.version),
            (State::Stopped, 1),
            "nothing applied"
        );
    }
    assert_eq!(
        store.last_event_seq().await.unwrap(),
        8,
        "no event appended"
    );
    // The store goes on: the next write commits.
    store.commit(&starting(&all[0], 1, "fine")).await.unwrap();
    store.close().await;
}
