//! Group commit on PostgreSQL: the writes of the engine's hot path (a workspace's
//! create, commit and delete, op rows, session updates) go to one committer task per
//! store, which takes every write waiting (at most [`MAX_BATCH`]) and runs them in
//! **one** transaction: each write's statements in submission order, then the events
//! of all of them in one statement that takes the event counter once, then `COMMIT`.
//!
//! Why: every event append locks the counter row until its transaction commits, so
//! writes that append events commit one after another, each with its own WAL flush.
//! A batch holds that lock once, for one flush, however many writes it carries.
//!
//! - Each caller is answered only after `COMMIT` returned: its rows are durable.
//! - Writes are applied in the order they were submitted, so each workspace's writes
//!   (which its gate serialises anyway) keep their order, and events are numbered in
//!   that order.
//! - A write whose check fails (a stale version, a fenced epoch, a taken name, a
//!   vanished row) must not fail the others: the batch is rolled back whole and each of
//!   its writes runs again alone (the precise path), getting its own verdict.
//! - A write the server refuses (a constraint, a value, an exception a trigger raised)
//!   also runs alone: only it fails.
//! - A serialization failure or a deadlock runs the batch again; any other failure (the
//!   connection, the server's resources) rolls it back and fails every write in it with
//!   that error: nothing of it is half-applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use berth_core::ids::WorkspaceId;
use berth_core::model::{NewEvent, Operation, Session, Workspace};
use berth_core::ports::{Commit, Fence, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::{
    NewLease, RETRIES, Staged, Write, WriteError, Writer, Written, append_events, is_retryable,
    stage,
};

/// At most this many writes commit together.
pub(crate) const MAX_BATCH: usize = 128;

/// A write the committer takes: owned, so it can cross to the committer's task.
#[derive(Debug)]
pub(crate) enum Owned {
    Create {
        workspace: Workspace,
        event: NewEvent,
        lease: Option<NewLease>,
    },
    Commit(Commit),
    Delete {
        id: WorkspaceId,
        expected_version: u64,
        ops: Vec<Operation>,
        event: NewEvent,
        fence: Fence,
    },
    InsertOp(Operation),
    UpdateOp(Operation),
    UpdateSession(Session),
}

impl Owned {
    /// The write as the precise path takes it.
    fn as_write(&self) -> Write<'_> {
        match self {
            Owned::Create {
                workspace,
                event,
                lease,
            } => Write::Create {
                workspace,
                event,
                lease,
            },
            Owned::Commit(c) => Write::Commit(c),
            Owned::Delete {
                id,
                expected_version,
                ops,
                event,
                fence,
            } => Write::Delete {
                id,
                expected_version: *expected_version,
                ops,
                event,
                fence: *fence,
            },
            Owned::InsertOp(op) => Write::InsertOp(op),
            Owned::UpdateOp(op) => Write::UpdateOp(op),
            Owned::UpdateSession(s) => Write::UpdateSession(s),
        }
    }
}

/// One write waiting for the committer.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) what: &'static str,
    pub(crate) write: Owned,
    pub(crate) reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// What the group committer did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions (batches) it committed.
    pub batches: u64,
    /// Writes those batches held.
    pub writes: u64,
    /// Writes handed to it and not answered yet.
    pub pending: u64,
    /// Batches it rolled back to run each write alone (a write's check failed).
    pub separated: u64,
}

/// The committer's counts.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    pub(crate) pending: AtomicU64,
    separated: AtomicU64,
}

impl Counters {
    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            batches: self.batches.load(Relaxed),
            writes: self.writes.load(Relaxed),
            pending: self.pending.load(Relaxed),
            separated: self.separated.load(Relaxed),
        }
    }
}

/// Whether `e` can be one write's doing (a constraint, a value the server refuses, an
/// exception a trigger raised): then each write runs again alone, so that only that
/// write fails. Serialization failures and deadlocks run the batch again; the server's
/// own failures (connection, resources, operator intervention, system and internal
/// errors) and errors that are not the server's fail the whole batch.
fn one_writes_fault(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            !is_retryable(e)
                && !["08", "53", "57", "58", "XX"]
                    .iter()
                    .any(|c| code.starts_with(c))
        }
        _ => false,
    }
}

/// How one attempt at a batch ended.
enum Outcome {
    /// Committed: one result per job, in order.
    Committed(Vec<Written>),
    /// A check failed or a constraint refused a row: rolled back; run each job alone.
    Separate,
    /// Failed as a whole (rolled back).
    Failed(sqlx::Error),
}

/// The committer: takes what is waiting, commits it as one transaction, answers.
pub(crate) async fn run(writer: Writer, mut queue: mpsc::Receiver<Job>, counters: Arc<Counters>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        take_waiting(&mut jobs, &mut queue);
        commit(&writer, jobs, &mut queue, &counters).await;
    }
}

/// Adds every job waiting now, up to [`MAX_BATCH`].
fn take_waiting(jobs: &mut Vec<Job>, queue: &mut mpsc::Receiver<Job>) {
    while jobs.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

async fn commit(
    writer: &Writer,
    mut jobs: Vec<Job>,
    queue: &mut mpsc::Receiver<Job>,
    counters: &Counters,
) {
    let mut attempts = 0u32;
    let outcome = loop {
        attempts += 1;
        match once(writer, &mut jobs, queue).await {
            Outcome::Failed(e) if is_retryable(&e) && attempts < RETRIES => {
                tracing::debug!(error = %e, "transaction conflict; running the batch again");
                tokio::time::sleep(Duration::from_millis(u64::from(attempts) * 2)).await;
            }
            other => break other,
        }
    };
    let n = jobs.len() as u64;
    match outcome {
        Outcome::Committed(results) => {
            counters.batches.fetch_add(1, Relaxed);
            counters.writes.fetch_add(n, Relaxed);
            for (job, written) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(Ok(written));
            }
        }
        Outcome::Separate => {
            counters.separated.fetch_add(1, Relaxed);
            for job in jobs {
                let answer = writer.write(job.what, job.write.as_write()).await;
                let _ = job.reply.send(answer);
            }
        }
        Outcome::Failed(e) => {
            tracing::warn!(error = %e, writes = n, "a batch of writes failed; every write in it fails and none was applied");
            let error = writer.map(e, "a batch of writes");
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// One attempt: `BEGIN`; every write waiting by now joins (taking a connection is the
/// window in which the next writes arrive); each write's statements; the batch's
/// events; `COMMIT`.
async fn once(writer: &Writer, jobs: &mut Vec<Job>, queue: &mut mpsc::Receiver<Job>) -> Outcome {
    let mut tx = match writer.pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return Outcome::Failed(e),
    };
    take_waiting(jobs, queue);
    let writes: Vec<Write<'_>> = jobs.iter().map(|j| j.write.as_write()).collect();
    let mut staged = Vec::with_capacity(writes.len());
    let mut verdict = None;
    for write in &writes {
        match stage(&mut tx, write).await {
            Ok(s) => staged.push(s),
            Err(WriteError::Store(_)) => {
                verdict = Some(Outcome::Separate);
                break;
            }
            Err(WriteError::Sql(e)) if one_writes_fault(&e) => {
                verdict = Some(Outcome::Separate);
                break;
            }
            Err(WriteError::Sql(e)) => {
                verdict = Some(Outcome::Failed(e));
                break;
            }
        }
    }
    let verdict = match verdict {
        Some(v) => v,
        None => match finish(&mut tx, staged).await {
            Ok(results) => match tx.commit().await {
                Ok(()) => return Outcome::Committed(results),
                Err(e) => return Outcome::Failed(e),
            },
            Err(WriteError::Sql(e)) if one_writes_fault(&e) => Outcome::Separate,
            Err(WriteError::Sql(e)) => Outcome::Failed(e),
            Err(WriteError::Store(_)) => Outcome::Separate,
        },
    };
    if let Err(e) = tx.rollback().await {
        tracing::debug!(error = %e, "rollback of a batch failed; its connection is discarded");
    }
    verdict
}

/// Appends the batch's events (one statement, the counter taken once) and gives each
/// write its result.
async fn finish(
    tx: &mut sqlx::PgConnection,
    staged: Vec<Staged<'_>>,
) -> Result<Vec<Written>, WriteError> {
    let events: Vec<&NewEvent> = staged
        .iter()
        .filter_map(|s| match s {
            Staged::Append(e) => Some(*e),
            Staged::Done(_) => None,
        })
        .collect();
    let mut appended = if events.is_empty() {
        Vec::new()
    } else {
        append_events(tx, &events).await?
    }
    .into_iter();
    Ok(staged
        .into_iter()
        .map(|s| match s {
            Staged::Done(written) => written,
            Staged::Append(_) => Written::Event(appended.next()),
        })
        .collect())
}
