//! Group commit: the writes of the engine's hot path (a workspace's commit, create and
//! delete, op rows, session updates) go to one committer task, which takes every write
//! waiting (at most [`MAX_BATCH`]) and commits them in **one** transaction, in one round
//! trip to SQLite's worker thread: one query of two statements, an `INSERT` of every
//! write's rows into the view [`berth_write`](PREPARE), which is a transaction of its
//! own, and a read of the batch's last event number. One WAL commit (one fsync with
//! `synchronous=FULL`) for the whole batch.
//!
//! Why a view: sqlx's SQLite worker sends every statement's result to the caller's task
//! as a message of its own, and the two threads wake each other for most of them; a
//! batch written as its writes' own statements (five or so a write) spent its time in
//! those wake-ups. The view has no rows: its `INSTEAD OF` triggers (temporary, created
//! on the committer's connection when it opens) carry each row to its table, in the
//! order of the rows, and `RAISE` an error when a conditional write (a versioned update,
//! a delete, an op insert) changed no row. SQLite stops the statement at that error and
//! rolls it back, with every row of the batch.
//!
//! Why no `BEGIN … COMMIT` around it: inside an explicit transaction SQLite keeps a
//! statement journal for such a statement (a copy of every page it touches, so that the
//! statement alone can be undone), which cost a fifth of the worker thread's time; and
//! `BEGIN` was a round trip of its own. The window in which other writers' next writes
//! arrive is now one yield of the committer, taken only when the last batch had company.
//!
//! - Each caller is answered only after the statement committed: its rows are as durable as
//!   the database's synchronous mode makes them.
//! - Writes are applied in the order they were submitted, so each workspace's writes
//!   (which its gate serialises anyway) keep their order; events are numbered in that
//!   order (the table's `AUTOINCREMENT` under the write lock: consecutive, the last
//!   one kept in the connection's temporary table `berth_last`).
//! - A write whose check fails (a stale version, a taken name, a vanished row) or that
//!   the database refuses (a constraint, a value) must not fail the others: the batch is
//!   rolled back whole and each of its writes runs again alone (the precise path,
//!   `apply`), getting its own verdict.
//! - A failure of the database itself (a full disk, an I/O error, a failed commit, the
//!   lock deadline) rolls the batch back and fails every write in it with that error:
//!   nothing of it is half-applied. An error after the batch committed (reading its
//!   event number back) fails every write in it too, and none runs again.

use berth_core::ids::WorkspaceId;
use berth_core::model::{Event, NewEvent, Operation, Session, Workspace};
use berth_core::ports::{Commit, StoreError};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::{Write, WriteError, Writer, Written, i64_of, is_busy, no_transaction, to_json};

/// At most this many writes commit together.
pub(crate) const MAX_BATCH: usize = 128;

/// At most this many rows of `berth_write` in one batch (seven values each, within
/// SQLite's 32,766 bound values).
const MAX_ROWS: usize = 4_000;

/// Run on the committer's connection when it opens: the view `berth_write` and its
/// triggers (temporary: they live and die with the connection, and no other connection
/// sees them). A row is `(kind, k1 … k6)`; each kind's trigger says what its columns
/// hold. A check uses `RAISE(ABORT, …)`, never `FAIL`: the batch runs in autocommit
/// mode, where a statement stopped by `FAIL` commits the rows written before it (the
/// same holds for any trigger added to these tables).
pub(crate) const PREPARE: &str = "
PRAGMA temp_store = MEMORY;
CREATE TEMP TABLE berth_last (seq INTEGER);
INSERT INTO temp.berth_last VALUES (NULL);
CREATE TEMP VIEW berth_write (kind, k1, k2, k3, k4, k5, k6) AS
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;
-- (id, name, state, runtime, version, body)
CREATE TEMP TRIGGER berth_create INSTEAD OF INSERT ON berth_write WHEN NEW.kind = 'create' BEGIN
    INSERT INTO workspace_order (workspace_id) VALUES (NEW.k1);
    INSERT INTO workspaces (id, created_seq, name, state, runtime, version, body)
        VALUES (NEW.k1, last_insert_rowid(), NEW.k2, NEW.k3, NEW.k4, NEW.k5, NEW.k6);
END;
-- (id, name, state, version, body, expected version). The name is set only when it
-- changes: SQLite rewrites the entry of every index whose column an UPDATE sets, equal
-- value or not, and the unique name index would cost a page per transition.
CREATE TEMP TRIGGER berth_commit INSTEAD OF INSERT ON berth_write WHEN NEW.kind = 'commit' BEGIN
    UPDATE workspaces SET state = NEW.k3, version = NEW.k4, body = NEW.k5
        WHERE id = NEW.k1 AND version = NEW.k6;
    SELECT RAISE(ABORT, 'berth: check failed') WHERE changes() <> 1;
    UPDATE workspaces SET name = NEW.k2 WHERE id = NEW.k1 AND name <> NEW.k2;
END;
-- (hash, workspace id, incarnation)
CREATE TEMP TRIGGER berth_token INSTEAD OF INSERT ON berth_write WHEN NEW.kind = 'token' BEGIN
    INSERT INTO tokens (hash, workspace_id, incarnation) VALUES (NEW.k1, NEW.k2, NEW.k3)
        ON CONFLICT (hash) DO UPDATE SET workspace_id = excluded.workspace_id, incarnation = excluded.incarnation;
END;
-- (id, workspace id, status, body): inserted or overwritten
CREATE TEMP TRIGGER berth_op INSTEAD OF INSERT ON berth_write WHEN NEW.kind = 'op' BEGIN
    INSERT INTO ops (id, workspace_id, status, body) VALUES (NEW.k1, NEW.k2, NEW.k3, NEW.k4)
        ON CONFLICT (id) DO UPDATE SET status = excluded.status, body = excluded.body;
END;
-- (id, workspace id, status, body): inserted, never overwritten
CREATE TEMP TRIGGER berth_op_insert INSTEAD OF INSERT ON berth_write WHEN NEW.kind = 'op_insert' BEGIN
    INSERT INTO ops (id, workspace_id, status, body) VALUES (NEW.k1, NEW.k2, NEW.k3, NEW.k4)
        ON CONFLICT (id) DO NOTHING;
    SELECT RAISE(ABORT, 'berth: check failed') WHERE changes() <> 1;
END;
-- (id, -, status, body): an existing op
CREATE TEMP TRIGGER berth_op_update INSTEAD OF INSERT ON berth_write WHEN NEW.kind = 'op_update' BEGIN
    UPDATE ops SET status = NEW.k3, body = NEW.k4 WHERE id = NEW.k1;
    SELECT RAISE(ABORT, 'berth: check failed') WHERE changes() <> 1;
END;
-- (workspace id, name, generation, body): an existing session
CREATE TEMP TRIGGER berth_session INSTEAD OF INSERT ON berth_write WHEN NEW.kind = 'session' BEGIN
    UPDATE sessions SET body = NEW.k4 WHERE workspace_id = NEW.k1 AND name = NEW.k2 AND generation = NEW.k3;
    SELECT RAISE(ABORT, 'berth: check failed') WHERE changes() <> 1;
END;
-- (id, expected version); sessions, tokens and pools' rows go by cascade
CREATE TEMP TRIGGER berth_delete INSTEAD OF INSERT ON berth_write WHEN NEW.kind = 'delete' BEGIN
    DELETE FROM workspaces WHERE id = NEW.k1 AND version = NEW.k2;
    SELECT RAISE(ABORT, 'berth: check failed') WHERE changes() <> 1;
END;
-- (workspace id, body)
CREATE TEMP TRIGGER berth_event INSTEAD OF INSERT ON berth_write WHEN NEW.kind = 'event' BEGIN
    INSERT INTO events (workspace_id, body) VALUES (NEW.k1, NEW.k2);
    UPDATE berth_last SET seq = last_insert_rowid();
END;
";

/// Whether `e` can be one write's doing: a failed check (`berth: check failed`), a
/// constraint, a value SQLite refuses. Then each write runs again alone, so that only
/// that write fails. The database's own failures (busy, out of memory, read-only, I/O,
/// corruption, a full disk, a file it cannot open) fail the whole batch.
fn one_writes_fault(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
            !matches!(code & 0xff, 5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 26)
        }
        _ => false,
    }
}

/// A write the committer takes: owned, so it can cross to the committer's task.
#[derive(Debug, Clone)]
pub(crate) enum Owned {
    Create(Workspace, NewEvent),
    Commit(Commit),
    Delete {
        id: WorkspaceId,
        expected_version: u64,
        ops: Vec<Operation>,
        event: NewEvent,
    },
    InsertOp(Operation),
    UpdateOp(Operation),
    UpdateSession(Session),
}

impl Owned {
    /// The write as the precise path takes it.
    pub(crate) fn as_write(&self) -> Write<'_> {
        match self {
            Owned::Create(w, e) => Write::CreateWorkspace(w, e),
            Owned::Commit(c) => Write::Commit(c),
            Owned::Delete {
                id,
                expected_version,
                ops,
                event,
            } => Write::DeleteWorkspace {
                id,
                expected_version: *expected_version,
                ops,
                event,
            },
            Owned::InsertOp(op) => Write::InsertOp(op),
            Owned::UpdateOp(op) => Write::UpdateOp(op),
            Owned::UpdateSession(s) => Write::UpdateSession(s),
        }
    }
}

/// A bound value.
#[derive(Debug)]
enum Value {
    Text(String),
    Int(i64),
    Null,
}

/// One row of `berth_write`: its kind and `k1 … k6`.
type Row7 = (&'static str, [Value; 6]);

/// A write's rows for a batch.
#[derive(Debug)]
struct Script {
    rows: Vec<Row7>,
    /// The event it appends (numbered after the batch committed).
    event: Option<NewEvent>,
    /// A workspace commit (answered with its event or `None`).
    commit: bool,
}

fn script(write: &Owned) -> Result<Script, WriteError> {
    use Value::{Int, Null, Text};
    let mut s = Script {
        rows: Vec::new(),
        event: None,
        commit: false,
    };
    let op_row = |kind: &'static str, op: &Operation| -> Result<Row7, WriteError> {
        Ok((
            kind,
            [
                Text(op.id.to_string()),
                Text(op.workspace_id.to_string()),
                Text(op.status.as_str().to_owned()),
                Text(to_json(op)?),
                Null,
                Null,
            ],
        ))
    };
    let ops = |s: &mut Script, ops: &[Operation]| -> Result<(), WriteError> {
        for op in ops {
            s.rows.push(op_row("op", op)?);
        }
        Ok(())
    };
    let append = |s: &mut Script, e: &NewEvent| -> Result<(), WriteError> {
        s.rows.push((
            "event",
            [
                Text(e.workspace_id.to_string()),
                Text(to_json(e)?),
                Null,
                Null,
                Null,
                Null,
            ],
        ));
        s.event = Some(e.clone());
        Ok(())
    };
    match write {
        Owned::Create(ws, e) => {
            s.rows.push((
                "create",
                [
                    Text(ws.id.to_string()),
                    Text(ws.name.to_string()),
                    Text(ws.state.as_str().to_owned()),
                    Text(ws.runtime.as_str().to_owned()),
                    Int(i64_of(ws.version)),
                    Text(to_json(ws)?),
                ],
            ));
            append(&mut s, e)?;
        }
        Owned::Commit(c) => {
            let ws = &c.workspace;
            if ws.version != c.expected_version + 1 {
                // The precise path gives the verdict.
                return Err(WriteError::Store(StoreError::Conflict {
                    what: format!("workspace {} (version must advance by one)", ws.id),
                }));
            }
            s.rows.push((
                "commit",
                [
                    Text(ws.id.to_string()),
                    Text(ws.name.to_string()),
                    Text(ws.state.as_str().to_owned()),
                    Int(i64_of(ws.version)),
                    Text(to_json(ws)?),
                    Int(i64_of(c.expected_version)),
                ],
            ));
            s.commit = true;
            if let Some(hash) = &c.token {
                s.rows.push((
                    "token",
                    [
                        Text(hash.to_hex()),
                        Text(ws.id.to_string()),
                        Int(i64_of(ws.incarnation.0)),
                        Null,
                        Null,
                        Null,
                    ],
                ));
            }
            ops(&mut s, &c.ops)?;
            if let Some(e) = &c.event {
                append(&mut s, e)?;
            }
        }
        Owned::Delete {
            id,
            expected_version,
            ops: rows,
            event,
        } => {
            s.rows.push((
                "delete",
                [
                    Text(id.to_string()),
                    Int(i64_of(*expected_version)),
                    Null,
                    Null,
                    Null,
                    Null,
                ],
            ));
            ops(&mut s, rows)?;
            append(&mut s, event)?;
        }
        Owned::InsertOp(op) => s.rows.push(op_row("op_insert", op)?),
        Owned::UpdateOp(op) => s.rows.push(op_row("op_update", op)?),
        Owned::UpdateSession(session) => s.rows.push((
            "session",
            [
                Text(session.workspace_id.to_string()),
                Text(session.name.to_string()),
                Int(i64_of(session.generation.0)),
                Text(to_json(session)?),
                Null,
                Null,
            ],
        )),
    }
    Ok(s)
}

/// One write waiting for the committer.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) what: &'static str,
    pub(crate) write: Owned,
    pub(crate) reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// How a batch ended.
enum Outcome {
    /// Committed: one result per job, in order.
    Committed(Vec<Written>),
    /// A check failed or a constraint refused a row: rolled back; run each job alone.
    Separate,
    /// Failed as a whole (rolled back): every job fails with this.
    Failed(sqlx::Error),
    /// Committed, but what it wrote could not be read back (its event numbers): every
    /// job fails with this, as when the answer to a `COMMIT` is lost. Never rerun.
    Unknown(sqlx::Error),
}

/// Counts of the committer's work (for tests and the benchmark).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Transactions the committer ran (batches).
    pub(crate) batches: std::sync::atomic::AtomicU64,
    /// Writes those transactions committed.
    pub(crate) writes: std::sync::atomic::AtomicU64,
    /// Writes handed over and not answered yet.
    pub(crate) pending: std::sync::atomic::AtomicU64,
    /// Writes of the batch being committed now (fixed: no write joins it any more); 0
    /// between batches.
    pub(crate) committing: std::sync::atomic::AtomicU64,
    /// Batches rolled back so that each write ran alone (a failed check).
    pub(crate) separated: std::sync::atomic::AtomicU64,
}

/// The committer: takes what is waiting, commits it as one transaction, answers.
pub(crate) async fn run(
    writer: Writer,
    mut jobs: mpsc::Receiver<Job>,
    counters: std::sync::Arc<Counters>,
) {
    // The committer has a connection of its own, kept between batches: taking one from
    // a pool and giving it back costs more than a small batch's statements. (The
    // writer pool's connection serves the writes that run alone; the two take turns
    // through `Writer::turn`.)
    let mut conn = None;
    // Whether the last batch had company. Then other writers are busy, and letting the
    // tasks that are ready run first (one yield) lets their next writes join this
    // batch; a lone writer does not wait.
    let mut company = false;
    while let Some(first) = jobs.recv().await {
        let mut batch = Batch::default();
        batch.add(first);
        if company {
            tokio::task::yield_now().await;
        }
        batch.take_waiting(&mut jobs);
        company = batch.jobs.len() + batch.alone.len() > 1;
        commit(&writer, &mut conn, batch, &counters).await;
    }
    if let Some(c) = conn
        && let Err(e) = sqlx::Connection::close(c).await
    {
        tracing::warn!(error = %e, "closing the committer's connection");
    }
}

/// The jobs of one transaction and their statements.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    scripts: Vec<Script>,
    rows: usize,
    /// Jobs that run alone after the batch (their rows cannot be built, or are too
    /// many): the precise path gives them their verdict. Not during the batch: it holds
    /// the write lock they need.
    alone: Vec<Job>,
}

impl Batch {
    /// Adds a job.
    fn add(&mut self, job: Job) {
        match script(&job.write) {
            Ok(s) if s.rows.len() <= MAX_ROWS => {
                self.rows += s.rows.len();
                self.scripts.push(s);
                self.jobs.push(job);
            }
            _ => self.alone.push(job),
        }
    }

    /// Adds every job waiting now, up to [`MAX_BATCH`] jobs and [`MAX_ROWS`] rows.
    fn take_waiting(&mut self, jobs: &mut mpsc::Receiver<Job>) {
        while self.jobs.len() < MAX_BATCH && self.rows + self.alone.len() < MAX_ROWS {
            match jobs.try_recv() {
                Ok(job) => self.add(job),
                Err(_) => break,
            }
        }
    }
}

async fn commit(
    writer: &Writer,
    conn: &mut Option<sqlx::SqliteConnection>,
    mut batch: Batch,
    counters: &Counters,
) {
    use std::sync::atomic::Ordering::Relaxed;
    if batch.jobs.is_empty() {
        run_alone(writer, std::mem::take(&mut batch.alone)).await;
        return;
    }
    let n = batch.jobs.len() as u64;
    counters.committing.store(n, Relaxed);
    let started = tokio::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(5);
    let outcome = loop {
        match once(writer, conn, &batch).await {
            Outcome::Failed(e)
                if is_busy(&e) && started.elapsed() < writer.options.lock_deadline =>
            {
                // Another process holds the write lock.
                tracing::debug!(error = %e, "database busy; retrying the batch");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_millis(200));
            }
            other => break other,
        }
    };
    counters.committing.store(0, Relaxed);
    let alone = std::mem::take(&mut batch.alone);
    match outcome {
        Outcome::Committed(results) => {
            counters.batches.fetch_add(1, Relaxed);
            counters.writes.fetch_add(n, Relaxed);
            for (job, written) in batch.jobs.into_iter().zip(results) {
                let _ = job.reply.send(Ok(written));
            }
        }
        Outcome::Separate => {
            counters.separated.fetch_add(1, Relaxed);
            run_alone(writer, batch.jobs).await;
        }
        Outcome::Failed(e) => {
            tracing::warn!(error = %e, writes = n, "a batch of writes failed; every write in it fails and none was applied");
            let error = writer.map(e, "a batch of writes");
            for job in batch.jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
        Outcome::Unknown(e) => {
            tracing::error!(error = %e, writes = n, "a batch of writes committed but its result could not be read; every write in it is answered with this error");
            let error = writer.map(e, "a batch of writes (committed; its result was lost)");
            for job in batch.jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
    run_alone(writer, alone).await;
}

/// Runs each job in a transaction of its own (the precise path), in order. They were
/// accepted before any `close`, so they run even when the store is closing.
async fn run_alone(writer: &Writer, jobs: Vec<Job>) {
    for job in jobs {
        let answer = writer.write_accepted(job.what, job.write.as_write()).await;
        let _ = job.reply.send(answer);
    }
}

/// One attempt: the batch's rows as one `INSERT` into [`berth_write`](PREPARE), a
/// transaction of its own (autocommit), then the last event number it wrote.
async fn once(
    writer: &Writer,
    held: &mut Option<sqlx::SqliteConnection>,
    batch: &Batch,
) -> Outcome {
    let conn = match held {
        Some(c) => c,
        None => match open(writer).await {
            Ok(c) => held.insert(c),
            Err(e) => return Outcome::Failed(e),
        },
    };
    let mut keep = false;
    // Writes that run alone take turns with the batches (a fair lock): SQLite's busy
    // handler is not fair, and a committer that begins again microseconds after each
    // commit could starve them until their lock deadline.
    let turn = writer.turn.lock().await;
    let outcome = attempt(conn, &mut keep, batch).await;
    drop(turn);
    if !keep && let Some(c) = held.take() {
        // In an unknown state: closed, and the next batch opens a fresh one.
        if let Err(e) = sqlx::Connection::close(c).await {
            tracing::debug!(error = %e, "closing the committer's connection");
        }
    }
    outcome
}

/// Opens the committer's connection, with [`PREPARE`] run on it.
async fn open(writer: &Writer) -> Result<sqlx::SqliteConnection, sqlx::Error> {
    let mut conn = writer.connect().await?;
    sqlx::query(PREPARE).execute(&mut conn).await?;
    Ok(conn)
}

/// [`once`] on the committer's connection; sets `keep` when it may be used again
/// (committed, rolled back, or never begun).
///
/// The `INSERT` runs in autocommit mode, not inside `BEGIN … COMMIT`: SQLite then
/// needs no statement journal (inside an explicit transaction, a statement that writes
/// several rows and may abort copies every page it touches first, so that it can be
/// undone alone), and a failed check rolls back the whole statement, which is the whole
/// batch. The write lock is taken by the statement itself (busy handler as for
/// `BEGIN IMMEDIATE`). The event number is read from the connection's own temporary
/// table, which the statement updated, so another connection's writes in between do not
/// change it.
async fn attempt(conn: &mut sqlx::SqliteConnection, keep: &mut bool, batch: &Batch) -> Outcome {
    let scripts = &batch.scripts;
    let rows = scripts.iter().map(|s| s.rows.len()).sum::<usize>();
    let events = scripts.iter().filter(|s| s.event.is_some()).count();
    let mut sql = String::with_capacity(64 + rows * 16);
    // `OR ABORT`: a conflict rolls back the whole statement whatever a table's own
    // conflict clause says (`FAIL` would keep, and in autocommit mode commit, the rows
    // before it).
    sql.push_str("INSERT OR ABORT INTO temp.berth_write (kind, k1, k2, k3, k4, k5, k6) VALUES ");
    for i in 0..rows {
        sql.push_str(if i == 0 {
            "(?,?,?,?,?,?,?)"
        } else {
            ",(?,?,?,?,?,?,?)"
        });
    }
    sql.push(';');
    if events > 0 {
        sql.push_str("SELECT seq AS appended_seq FROM temp.berth_last;");
    }
    let mut q = sqlx::query(&sql);
    for (kind, values) in scripts.iter().flat_map(|s| &s.rows) {
        q = q.bind(*kind);
        for v in values {
            q = match v {
                Value::Text(t) => q.bind(t.as_str()),
                Value::Int(i) => q.bind(*i),
                Value::Null => q.bind(None::<i64>),
            };
        }
    }
    // The stream says when the `INSERT` is done (its result comes before the next
    // statement's rows): from then on the batch is committed, and an error can no longer
    // be answered by rerunning its writes.
    let mut inserted = false;
    let mut seq_rows = Vec::new();
    let failed = {
        use futures_util::TryStreamExt;
        let mut stream = sqlx::Executor::fetch_many(&mut *conn, q);
        loop {
            match stream.try_next().await {
                Ok(Some(sqlx::Either::Left(_))) => inserted = true,
                Ok(Some(sqlx::Either::Right(row))) => seq_rows.push(row),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        }
    };
    let verdict = match failed {
        None => {
            *keep = true;
            return match results(&seq_rows, scripts, events) {
                Some(results) => Outcome::Committed(results),
                None => Outcome::Unknown(sqlx::Error::Protocol(
                    "a committed batch returned no event number".into(),
                )),
            };
        }
        // Committed; reading the event number failed (the connection's own temporary
        // table: only the connection itself can fail here). It is closed.
        Some(e) if inserted => return Outcome::Unknown(e),
        Some(e) if one_writes_fault(&e) => Outcome::Separate,
        Some(e) => Outcome::Failed(e),
    };
    // A failed statement rolled its transaction back; nothing should be open, but a
    // connection left inside one must not write the next batch into it.
    match sqlx::query("ROLLBACK").execute(&mut *conn).await {
        Ok(_) => *keep = true,
        Err(e) if no_transaction(&e) => *keep = true,
        Err(e) => tracing::warn!(error = %e, "rollback failed; discarding the connection"),
    }
    if let Outcome::Failed(e) = &verdict
        && is_busy(e)
    {
        *keep = true;
    }
    verdict
}

/// Each script's result; the batch's `events` are numbered consecutively up to the
/// last number the query returned. `None` when it returned none.
fn results(
    rows: &[sqlx::sqlite::SqliteRow],
    scripts: &[Script],
    events: usize,
) -> Option<Vec<Written>> {
    let mut next = match rows {
        [] if events == 0 => 0,
        [row] => {
            let last = u64::try_from(row.try_get::<i64, _>("appended_seq").ok()?).ok()?;
            (last + 1).checked_sub(events as u64)?
        }
        _ => return None,
    };
    let mut out = Vec::with_capacity(scripts.len());
    for s in scripts {
        out.push(match &s.event {
            Some(event) => {
                let seq = next;
                next += 1;
                Written::Event(Some(Event {
                    seq,
                    event: event.clone(),
                }))
            }
            None if s.commit => Written::Event(None),
            None => Written::Nothing,
        });
    }
    Some(out)
}
