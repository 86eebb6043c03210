//! Group commit on PostgreSQL: writes waiting together commit in one transaction with
//! their events numbered without gaps, a write whose check fails (stale, fenced) gets
//! its own verdict without failing the others, and a batch that fails fails every write
//! in it and applies none. The batch is formed deterministically: the test holds every
//! connection of the store's pool until every write is queued.

use std::sync::Arc;
use std::time::Duration;

use berth_core::model::Event;
use berth_core::ports::{Commit, Fence, Store, StoreError};
use berth_core::state::State;
use berth_postgres::PgStore;

use crate::{create, join, moved, workspace};

/// `n` stopped workspaces in a fresh store (`None`: SKIPPED).
async fn fixture(
    test: &str,
    n: usize,
) -> Option<(Arc<PgStore>, Vec<berth_core::model::Workspace>)> {
    let (_, store) = crate::fresh(test).await?;
    let mut all = Vec::new();
    for i in 0..n {
        let ws = workspace(&format!("g{i}"), "docker");
        create(&store, &ws).await;
        all.push(ws);
    }
    Some((store, all))
}

/// Submits `commits` concurrently while every pool connection is held, releases them
/// once all are queued, and returns each answer in submission order.
async fn together(
    store: &Arc<PgStore>,
    commits: Vec<Commit>,
) -> Vec<Result<Option<Event>, StoreError>> {
    let mut held = Vec::new();
    while let Ok(Some(conn)) = tokio::time::timeout(Duration::from_millis(200), async {
        Some(store.pool().acquire().await.unwrap())
    })
    .await
    {
        held.push(conn);
    }
    assert!(!held.is_empty(), "the pool lends connections");
    let n = commits.len() as u64;
    let tasks = tokio_util::task::TaskTracker::new();
    let handles: Vec<_> = commits
        .into_iter()
        .map(|c| {
            let store = Arc::clone(store);
            tasks.spawn(async move { store.commit(&c).await })
        })
        .collect();
    berth_core::testkit::wait_until(
        "every write to be queued",
        Duration::from_secs(10),
        || async { store.commit_stats().pending == n },
    )
    .await;
    drop(held);
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_wait_together_commit_in_one_transaction_with_gapless_events() {
    let Some((store, all)) = fixture("pg_group_together", 16).await else {
        return;
    };
    let before = store.commit_stats();
    let commits = all
        .iter()
        .map(|w| moved(w, State::Starting, Fence::default()))
        .collect();
    let answers = together(&store, commits).await;
    let after = store.commit_stats();
    assert_eq!(after.writes - before.writes, 16);
    assert_eq!(
        after.batches - before.batches,
        1,
        "16 writes queued together commit in one transaction"
    );
    let mut seqs: Vec<u64> = answers
        .into_iter()
        .map(|a| a.unwrap().unwrap().seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (17..=32).collect::<Vec<_>>());
    // What a reader sees is what each caller was told.
    let read = store.events(16, None, 100).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (17..=32).collect::<Vec<_>>()
    );
    for w in &all {
        let row = store.workspace(&w.id).await.unwrap().unwrap();
        assert_eq!((row.state, row.version), (State::Starting, 2));
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_fenced_write_in_a_batch_gets_its_own_verdict_and_the_others_commit() {
    let Some((url, store)) = crate::fresh("pg_group_verdicts").await else {
        return;
    };
    let member = join(&store, "d1", "h", Duration::from_secs(60)).await;
    let mut all = Vec::new();
    for i in 0..8 {
        let ws = workspace(&format!("v{i}"), "docker");
        create(&store, &ws).await;
        all.push(ws);
    }
    // A second daemon takes workspace 5 over once this one's lease is gone: writes under
    // this daemon's epoch are fenced for it.
    let other = crate::open(&url).await;
    join(&other, "d2", "h", Duration::from_secs(60)).await;
    sqlx::query(
        "UPDATE daemons SET expires_at = clock_timestamp() - interval '1 second' WHERE id = 'd1'",
    )
    .execute(other.pool())
    .await
    .unwrap();
    assert!(other.acquire(&all[5].id).await.unwrap());
    let fence = Fence {
        epoch: member.epoch,
    };
    let commits = all
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut c = moved(w, State::Starting, fence);
            if i == 3 {
                c.expected_version = 7;
                c.workspace.version = 8;
            }
            c
        })
        .collect();
    let answers = together(&store, commits).await;
    for (i, answer) in answers.iter().enumerate() {
        match i {
            3 => assert!(
                matches!(answer, Err(StoreError::Conflict { .. })),
                "the stale write: {answer:?}"
            ),
            5 => assert!(
                matches!(answer, Err(StoreError::Fenced { .. })),
                "the fenced write: {answer:?}"
            ),
            _ => assert!(answer.is_ok(), "write {i}: {answer:?}"),
        }
    }
    for i in [3, 5] {
        let row = store.workspace(&all[i].id).await.unwrap().unwrap();
        assert_eq!(row.version, 1, "workspace {i} unchanged");
    }
    assert_eq!(store.last_event_seq().await.unwrap(), 8 + 6);
    assert!(store.commit_stats().separated >= 1);
    other.close().await;
    store.close().await;
}

/// Poisons the events whose body contains `poison`: appending one raises.
async fn poison_events(store: &PgStore) {
    sqlx::query(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.body LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION poison()",
    )
    .execute(store.pool())
    .await
    .unwrap();
}

/// Commits moving every workspace to `starting`; those at `poisoned` carry a poisoned
/// event.
fn poisoned(all: &[berth_core::model::Workspace], poisoned: &[usize]) -> Vec<Commit> {
    all.iter()
        .enumerate()
        .map(|(i, w)| {
            let mut c = moved(w, State::Starting, Fence::default());
            if let Some(e) = c.event.as_mut() {
                e.message = if poisoned.contains(&i) {
                    "poison"
                } else {
                    "fine"
                }
                .into();
            }
            c
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_server_refuses_fails_alone_and_the_others_commit() {
    let Some((store, all)) = fixture("pg_group_refused", 8).await else {
        return;
    };
    poison_events(&store).await;
    let answers = together(&store, poisoned(&all, &[5])).await;
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
    let row = store.workspace(&all[5].id).await.unwrap().unwrap();
    assert_eq!(row.version, 1, "nothing of the refused write applied");
    assert_eq!(store.last_event_seq().await.unwrap(), 8 + 7);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_every_write_in_it_and_applies_none() {
    let Some((store, all)) = fixture("pg_group_failed", 8).await else {
        return;
    };
    // Every event is refused: the batch fails at its last statement, after every
    // workspace row was written, and each write run alone fails too.
    poison_events(&store).await;
    let answers = together(&store, poisoned(&all, &[0, 1, 2, 3, 4, 5, 6, 7])).await;
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
    store
        .commit(&moved(&all[0], State::Starting, Fence::default()))
        .await
        .unwrap();
    store.close().await;
}
