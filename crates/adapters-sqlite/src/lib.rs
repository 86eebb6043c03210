//! `SqliteStore`: berth's embedded [`Store`], one SQLite file in the data directory.
//!
//! - The file is created with mode 0600 and its directory 0700; WAL mode, foreign keys
//!   on, a busy timeout, `synchronous=NORMAL` by default ([`Durability::Full`] as an
//!   option: NORMAL survives a process crash, FULL also a power loss).
//! - Writes go through two writer connections (the group committer's own, and the
//!   pool's one for the writes that never batch) that take turns through a fair lock;
//!   every transaction takes the write lock at its start (`BEGIN IMMEDIATE`, or a
//!   writing statement in autocommit mode), so a concurrent
//!   writer (another process on the same file) waits instead of failing; a busy or
//!   locked database is retried, and callers never see `SQLITE_BUSY`. Reads use a
//!   separate pool (WAL readers never block the writer). No transaction is held
//!   across anything but its own statements.
//! - Migrations are embedded and applied at open; a database written by a newer berth
//!   is refused with a clear message, never downgraded.
//! - A state change, its event, its token hash and its op rows commit in one
//!   transaction. Every query binds its values: nothing is concatenated into SQL.

mod batch;
pub mod schema;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use berth_core::ids::{
    EngineId, Generation, Incarnation, OpId, RuntimeKind, SessionName, TokenHash, WorkspaceId,
    WorkspaceName,
};
use berth_core::model::{Event, NewEvent, Operation, Pool, Session, SessionState, Workspace};
use berth_core::ports::{
    Commit, Fence, NewSession, Store, StoreError, WorkspacePage, WorkspaceQuery,
};
use berth_core::state::State;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};

/// WAL pages after which a commit copies the WAL back into the database.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// How hard a commit is made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL` (default): in WAL mode a commit survives a crash of the
    /// process; the last commits may be lost on a power failure or OS crash.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is synced to disk before it returns; it also
    /// survives a power loss, at the cost of one fsync per commit.
    Full,
}

/// Options for [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Durability of commits.
    pub durability: Durability,
    /// How long SQLite waits for a lock held by another connection before the store
    /// retries.
    pub busy_timeout: Duration,
    /// Give up (with `StoreError::Unavailable`) when the database stays locked this
    /// long in total.
    pub lock_deadline: Duration,
    /// Keep at most this many newest events; older ones are pruned as new ones are
    /// appended. `None` keeps every event. Default: 1,000,000 (a few hundred MB).
    pub event_retention: Option<u64>,
    /// Connections of the read pool.
    pub read_connections: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Normal,
            busy_timeout: Duration::from_secs(5),
            lock_deadline: Duration::from_secs(30),
            event_retention: Some(1_000_000),
            read_connections: 4,
        }
    }
}

/// Why opening the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The data directory or file could not be created or secured.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file was written by a newer berth.
    #[error(
        "database {path} has schema version {found}, newer than the {supported} this berth supports; upgrade berth (it never downgrades a database)"
    )]
    NewerSchema {
        /// The path.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// SQLite refused to open or migrate the file.
    #[error("cannot open database {path}: {source}")]
    Database {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: sqlx::Error,
    },
}

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    reader: SqlitePool,
    options: SqliteOptions,
    closed: Arc<AtomicBool>,
    appended: AtomicU64,
    /// The group committer's queue (`None` once closed).
    committer: parking_lot::Mutex<Option<tokio::sync::mpsc::Sender<batch::Job>>>,
    counters: Arc<batch::Counters>,
    tasks: tokio_util::task::TaskTracker,
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
    /// Writes of the batch it is committing now (no write joins that batch any more);
    /// 0 between batches.
    pub committing: u64,
    /// Batches it rolled back to run each write alone (a write's check failed).
    pub separated: u64,
}

/// The writer connection and what writing needs; shared with the group committer.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pub(crate) pool: SqlitePool,
    pub(crate) options: SqliteOptions,
    closed: Arc<AtomicBool>,
    /// How the group committer opens its own connection.
    connect: SqliteConnectOptions,
    /// Taken by each batch and by each write that runs alone, in turn (FIFO).
    pub(crate) turn: Arc<tokio::sync::Mutex<()>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the directory (0700) and the file (0600) if missing and tightens their modes.
fn secure_files(path: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    Ok(())
}

/// The database file's name inside berth's data directory.
pub const FILE_NAME: &str = "berth.db";

impl SqliteStore {
    /// Opens `<data_dir>/berth.db`: the embedded default store of `berth serve`.
    ///
    /// # Errors
    /// See [`SqliteStore::open`].
    pub async fn open_in(
        data_dir: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, OpenError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = data_dir.as_ref();
        // berth's data directory holds tokens, worktrees and the database: always private,
        // also when something else created it first.
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        Self::open(dir.join(FILE_NAME), options).await
    }

    /// Opens (creating if needed) the database at `path` and migrates it.
    ///
    /// # Errors
    /// [`OpenError`]: files that cannot be created, a newer schema, SQLite errors.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let blocking_path = path.clone();
        tokio::task::spawn_blocking(move || secure_files(&blocking_path))
            .await
            .map_err(|e| OpenError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            })??;
        let db = |source| OpenError::Database {
            path: path.clone(),
            source,
        };
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(&path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true)
            // The WAL is copied back into the database (a checkpoint, with an fsync) by
            // the connection whose commit finds it longer than this many pages: in the
            // committer's path, so rarely. Hot pages (the ends of `events` and `ops`)
            // are copied once per checkpoint however often they changed since: a
            // longer WAL (≈ 40 MiB; the file keeps its largest size, and grows past it
            // while a reader on an old snapshot keeps a checkpoint from finishing)
            // means less copying per write, and the batch that runs it waits longer.
            // Measured on P1: ≈ 18% more cycles/s than SQLite's default of 1,000 pages.
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
            .statement_cache_capacity(256);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(options.lock_deadline)
            .connect_with(connect.clone())
            .await
            .map_err(db)?;
        schema::refuse_newer(&writer, &path).await?;
        schema::migrator()
            .run(&writer)
            .await
            .map_err(|e| db(sqlx::Error::Migrate(Box::new(e))))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(options.lock_deadline)
            .connect_with(connect.clone().read_only(true))
            .await
            .map_err(db)?;
        let closed = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            pool: writer,
            options: options.clone(),
            closed: Arc::clone(&closed),
            connect,
            turn: Arc::default(),
        };
        let (jobs, queue) = tokio::sync::mpsc::channel(4 * batch::MAX_BATCH);
        let tasks = tokio_util::task::TaskTracker::new();
        let counters = Arc::new(batch::Counters::default());
        tasks.spawn(batch::run(writer.clone(), queue, Arc::clone(&counters)));
        tasks.close();
        Ok(Self {
            path,
            writer,
            reader,
            options,
            closed,
            appended: AtomicU64::new(0),
            committer: parking_lot::Mutex::new(Some(jobs)),
            counters,
            tasks,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `PRAGMA integrity_check`: `Ok(())` when the file is sound.
    ///
    /// # Errors
    /// The problems SQLite reports, or a query error.
    pub async fn integrity_check(&self) -> Result<(), StoreError> {
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.reader)
            .await
            .map_err(|e| self.map(e, "integrity check"))?;
        if rows == ["ok"] {
            Ok(())
        } else {
            Err(StoreError::Unavailable {
                message: format!("integrity check failed: {}", rows.join("; ")),
            })
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn map(&self, e: sqlx::Error, what: &str) -> StoreError {
        self.writer.map(e, what)
    }

    async fn write(&self, what: &str, write: Write<'_>) -> Result<Written, StoreError> {
        self.writer.write(what, write).await
    }

    /// Hands a write to the group committer and waits until its batch committed.
    async fn submit(&self, what: &'static str, write: batch::Owned) -> Result<Written, StoreError> {
        self.check_open()?;
        let Some(jobs) = self.committer.lock().clone() else {
            return Err(StoreError::Closed);
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        let sent = jobs.send(batch::Job { what, write, reply }).await;
        let answered = match sent {
            Ok(()) => answer.await.map_err(|_| StoreError::Closed),
            Err(_) => Err(StoreError::Closed),
        };
        self.counters.pending.fetch_sub(1, Ordering::Relaxed);
        answered?
    }

    /// What the group committer did so far: how many writes it committed in how many
    /// transactions, and how many wait for it now.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            pending: self.counters.pending.load(Ordering::Relaxed),
            committing: self.counters.committing.load(Ordering::Relaxed),
            separated: self.counters.separated.load(Ordering::Relaxed),
        }
    }

    async fn read<T>(
        &self,
        what: &str,
        q: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        q.await.map_err(|e| self.map(e, what))
    }
}

impl Writer {
    /// Opens a writer connection outside the pool (the group committer's).
    pub(crate) async fn connect(&self) -> Result<sqlx::SqliteConnection, sqlx::Error> {
        use sqlx::ConnectOptions as _;
        self.connect.connect().await
    }

    pub(crate) fn map(&self, e: sqlx::Error, what: &str) -> StoreError {
        match e {
            sqlx::Error::PoolClosed => StoreError::Closed,
            sqlx::Error::PoolTimedOut => StoreError::Unavailable {
                message: format!(
                    "{what}: the database stayed locked past {:?}",
                    self.options.lock_deadline
                ),
            },
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
                what: what.to_owned(),
            },
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound {
                what: what.to_owned(),
            },
            other => StoreError::Unavailable {
                message: format!("{what}: {other}"),
            },
        }
    }

    /// Runs one write in a `BEGIN IMMEDIATE` transaction, retrying while the database
    /// is busy or locked by another process, up to the lock deadline.
    ///
    /// The transaction is driven by hand (`BEGIN IMMEDIATE`, `COMMIT`, `ROLLBACK`), not
    /// by sqlx's transaction manager: when a `COMMIT` fails (a full disk, an I/O
    /// error) SQLite may already have rolled back, and sqlx then believes a transaction
    /// is still open and refuses every later `BEGIN`. Here every failed write rolls
    /// back, and a connection whose state is in doubt (any error but "busy", or a write
    /// abandoned half-way by a timeout) is closed instead of going back to the pool: the
    /// next write opens a fresh one, so the store heals as soon as the fault is gone.
    pub(crate) async fn write(&self, what: &str, write: Write<'_>) -> Result<Written, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.write_accepted(what, write).await
    }

    /// [`Writer::write`] of a write accepted before the store began to close.
    pub(crate) async fn write_accepted(
        &self,
        what: &str,
        write: Write<'_>,
    ) -> Result<Written, StoreError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.write_once(&write).await {
                Ok(v) => return Ok(v),
                Err(WriteError::Store(e)) => return Err(e),
                Err(WriteError::Sql(e))
                    if is_busy(&e) && started.elapsed() < self.options.lock_deadline =>
                {
                    tracing::debug!(what, error = %e, "database busy; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(WriteError::Sql(e)) => {
                    tracing::warn!(what, error = %e, "write failed; the connection was rolled back or discarded");
                    return Err(self.map(e, what));
                }
            }
        }
    }

    /// One attempt of a write on the writer connection.
    async fn write_once(&self, write: &Write<'_>) -> Result<Written, WriteError> {
        let _turn = self.turn.lock().await;
        let mut conn = InDoubt::arm(self.pool.acquire().await?);
        if write.is_single_statement() {
            // One statement is its own transaction: no BEGIN/COMMIT round trips.
            let result = apply(conn.get(), write).await;
            conn.settle(&result);
            return result;
        }
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut **conn.get())
            .await
        {
            // Nothing began; a busy database leaves the connection as it was.
            let failed = Err(WriteError::Sql(e));
            conn.settle(&failed);
            return failed;
        }
        let mut result = apply(conn.get(), write).await;
        if result.is_ok()
            && let Err(e) = sqlx::query("COMMIT").execute(&mut **conn.get()).await
        {
            result = Err(WriteError::Sql(e));
        }
        if result.is_err() {
            // A verdict (`Store`) or an SQL error: undo whatever the transaction did.
            // "No transaction is active" means SQLite already rolled back: fine.
            match sqlx::query("ROLLBACK").execute(&mut **conn.get()).await {
                Ok(_) => {}
                Err(e) if no_transaction(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "rollback failed; discarding the connection");
                    conn.discard();
                }
            }
        }
        conn.settle(&result);
        result
    }
}

/// An error inside a write transaction: a store verdict (rolls back, returned as is) or
/// an SQL error (mapped; retried when busy).
#[derive(Debug)]
pub(crate) enum WriteError {
    Store(StoreError),
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Sql(e)
    }
}

/// The writer connection during a write. Dropped before [`InDoubt::settle`] (a write
/// abandoned half-way: a timeout or a cancelled caller), or after an error that may
/// have left it in an unknown state, it is closed instead of returned to the pool.
pub(crate) struct InDoubt {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    armed: bool,
}

impl InDoubt {
    pub(crate) fn arm(conn: sqlx::pool::PoolConnection<sqlx::Sqlite>) -> Self {
        Self { conn, armed: true }
    }

    pub(crate) fn get(&mut self) -> &mut sqlx::pool::PoolConnection<sqlx::Sqlite> {
        &mut self.conn
    }

    /// Keeps the connection after a success, a store verdict or a busy database (all
    /// rolled back or never begun); discards it after any other error.
    fn settle<T>(&mut self, result: &Result<T, WriteError>) {
        match result {
            Ok(_) | Err(WriteError::Store(_)) => self.armed = false,
            Err(WriteError::Sql(e)) if is_busy(e) => self.armed = false,
            Err(WriteError::Sql(_)) => self.discard(),
        }
    }

    fn discard(&mut self) {
        self.armed = true;
    }
}

impl Drop for InDoubt {
    fn drop(&mut self) {
        if self.armed {
            self.conn.close_on_drop();
        }
    }
}

/// "cannot rollback - no transaction is active": SQLite rolled back by itself.
pub(crate) fn no_transaction(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.message().contains("no transaction is active"))
}

pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
            matches!(code & 0xff, 5 | 6)
        }
        _ => false,
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, WriteError> {
    serde_json::to_string(value).map_err(|e| {
        WriteError::Store(StoreError::Unavailable {
            message: format!("cannot encode a record: {e}"),
        })
    })
}

fn from_json<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Unavailable {
        message: format!("a stored record does not decode: {e}"),
    })
}

pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    async fn after_append(&self, seq: u64) {
        let Some(keep) = self.options.event_retention else {
            return;
        };
        // Prune in batches, every 1024 appends, outside the lifecycle transactions.
        if self.appended.fetch_add(1, Ordering::Relaxed) % 1024 != 1023 || seq <= keep {
            return;
        }
        if let Err(e) = self
            .write("event pruning", Write::PruneEvents(i64_of(seq - keep)))
            .await
        {
            tracing::warn!(error = %e, "could not prune old events");
        }
    }
}

/// One write transaction's work.
#[derive(Debug)]
pub(crate) enum Write<'a> {
    EngineId(&'a str),
    CreateWorkspace(&'a Workspace, &'a NewEvent),
    Commit(&'a Commit),
    DeleteWorkspace {
        id: &'a WorkspaceId,
        expected_version: u64,
        ops: &'a [Operation],
        event: &'a NewEvent,
    },
    InsertOp(&'a Operation),
    UpdateOp(&'a Operation),
    InsertSession(&'a NewSession),
    UpdateSession(&'a Session),
    DeleteSession(&'a WorkspaceId, &'a SessionName, Generation),
    ClaimKey {
        key: &'a str,
        request_hash: &'a str,
        result: &'a str,
        now: String,
    },
    PruneEvents(i64),
    PutPool(&'a Pool),
    DeletePool(&'a WorkspaceName),
}

/// What a write returned.
#[derive(Debug)]
pub(crate) enum Written {
    Nothing,
    Text(String),
    Event(Option<Event>),
    Session(Session),
    Deleted(bool),
    Claimed(Option<(String, String)>),
}

// Transaction bodies are sent as ONE multi-statement query (sqlx binds the values
// across the statements in order): each round trip to sqlx's SQLite worker thread
// costs tens of microseconds, more than the statements themselves. The SQL text is
// built only from the fixed fragments below, never from values.
pub(crate) const UPSERT_OP: &str = "INSERT INTO ops (id, workspace_id, status, body) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status, body = excluded.body;";
pub(crate) const APPEND_EVENT: &str =
    "INSERT INTO events (workspace_id, body) VALUES (?, ?) RETURNING seq AS appended_seq;";
pub(crate) const UPSERT_TOKEN: &str = "INSERT INTO tokens (hash, workspace_id, incarnation) VALUES (?, ?, ?) ON CONFLICT (hash) DO UPDATE SET workspace_id = excluded.workspace_id, incarnation = excluded.incarnation;";

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds the values of one [`UPSERT_OP`] fragment per op.
fn bind_ops<'q>(
    mut q: SqliteQuery<'q>,
    ops: &'q [Operation],
) -> Result<SqliteQuery<'q>, WriteError> {
    for op in ops {
        q = q
            .bind(op.id.as_str())
            .bind(op.workspace_id.as_str())
            .bind(op.status.as_str())
            .bind(to_json(op)?);
    }
    Ok(q)
}

/// The value of `column` in the first returned row that has it.
fn returned(rows: &[sqlx::sqlite::SqliteRow], column: &str) -> Option<i64> {
    rows.iter().find_map(|r| r.try_get::<i64, _>(column).ok())
}

fn stored_event(rows: &[sqlx::sqlite::SqliteRow], event: &NewEvent) -> Result<Event, WriteError> {
    let seq = returned(rows, "appended_seq").ok_or_else(|| {
        refused(StoreError::Unavailable {
            message: "the event append returned no seq".into(),
        })
    })?;
    Ok(Event {
        seq: u64::try_from(seq).unwrap_or(0),
        event: event.clone(),
    })
}

impl Write<'_> {
    /// Writes of one statement run in autocommit mode.
    fn is_single_statement(&self) -> bool {
        matches!(
            self,
            Write::InsertOp(_)
                | Write::UpdateOp(_)
                | Write::UpdateSession(_)
                | Write::DeleteSession(..)
                | Write::PruneEvents(_)
        )
    }
}

fn refused(e: StoreError) -> WriteError {
    WriteError::Store(e)
}

async fn apply(tx: &mut SqliteConnection, write: &Write<'_>) -> Result<Written, WriteError> {
    match write {
        Write::EngineId(candidate) => {
            sqlx::query("INSERT INTO meta (key, value) VALUES ('engine_id', ?) ON CONFLICT (key) DO NOTHING").bind(*candidate).execute(&mut *tx).await?;
            let v: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'engine_id'")
                .fetch_one(&mut *tx)
                .await?;
            Ok(Written::Text(v))
        }
        Write::CreateWorkspace(workspace, event) => {
            let sql = format!(
                "INSERT INTO workspace_order (workspace_id) VALUES (?); INSERT INTO workspaces (id, created_seq, name, state, runtime, version, body) VALUES (?, last_insert_rowid(), ?, ?, ?, ?, ?); {APPEND_EVENT}"
            );
            let q = sqlx::query(&sql)
                .bind(workspace.id.as_str())
                .bind(workspace.id.as_str())
                .bind(workspace.name.as_str())
                .bind(workspace.state.as_str())
                .bind(workspace.runtime.as_str())
                .bind(i64_of(workspace.version))
                .bind(to_json(workspace)?)
                .bind(event.workspace_id.as_str())
                .bind(to_json(event)?);
            match q.fetch_all(&mut *tx).await {
                Ok(rows) => Ok(Written::Event(Some(stored_event(&rows, event)?))),
                Err(sqlx::Error::Database(db))
                    if db.is_unique_violation() && db.message().contains("workspaces.name") =>
                {
                    Err(refused(StoreError::NameTaken {
                        name: workspace.name.to_string(),
                    }))
                }
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    Err(refused(StoreError::Conflict {
                        what: format!("workspace {}", workspace.id),
                    }))
                }
                Err(e) => Err(e.into()),
            }
        }
        Write::Commit(commit) => {
            let ws = &commit.workspace;
            if ws.version != commit.expected_version + 1 {
                return Err(refused(StoreError::Conflict {
                    what: format!("workspace {} (version must advance by one)", ws.id),
                }));
            }
            // The name only when it changes (a pool member claimed): an UPDATE that sets
            // a column rewrites its index entry, equal value or not. First, and fenced
            // by the expected version like the rest: a stale commit renames nothing, so
            // it is `Conflict` whatever its name.
            let mut sql = String::from(
                "UPDATE workspaces SET name = ? WHERE id = ? AND version = ? AND name <> ?; UPDATE workspaces SET state = ?, version = ?, body = ? WHERE id = ? AND version = ? RETURNING version AS committed_version;",
            );
            if commit.token.is_some() {
                sql.push_str(UPSERT_TOKEN);
            }
            for _ in &commit.ops {
                sql.push_str(UPSERT_OP);
            }
            if commit.event.is_some() {
                sql.push_str(APPEND_EVENT);
            }
            let mut q = sqlx::query(&sql)
                .bind(ws.name.as_str())
                .bind(ws.id.as_str())
                .bind(i64_of(commit.expected_version))
                .bind(ws.name.as_str())
                .bind(ws.state.as_str())
                .bind(i64_of(ws.version))
                .bind(to_json(ws)?)
                .bind(ws.id.as_str())
                .bind(i64_of(commit.expected_version));
            if let Some(hash) = &commit.token {
                q = q
                    .bind(hash.to_hex())
                    .bind(ws.id.as_str())
                    .bind(i64_of(ws.incarnation.0));
            }
            q = bind_ops(q, &commit.ops)?;
            if let Some(e) = &commit.event {
                q = q.bind(e.workspace_id.as_str()).bind(to_json(e)?);
            }
            let rows = match q.fetch_all(&mut *tx).await {
                Ok(rows) => rows,
                // A rename (a pool member claimed) onto a name another workspace holds.
                Err(sqlx::Error::Database(db))
                    if db.is_unique_violation() && db.message().contains("workspaces.name") =>
                {
                    return Err(refused(StoreError::NameTaken {
                        name: ws.name.to_string(),
                    }));
                }
                Err(e) => return Err(e.into()),
            };
            if returned(&rows, "committed_version").is_none() {
                // Nothing matched: the caller's transaction rolls back the rest.
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM workspaces WHERE id = ?")
                        .bind(ws.id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                let what = format!("workspace {}", ws.id);
                return Err(refused(if exists.is_some() {
                    StoreError::Conflict { what }
                } else {
                    StoreError::NotFound { what }
                }));
            }
            match &commit.event {
                Some(e) => Ok(Written::Event(Some(stored_event(&rows, e)?))),
                None => Ok(Written::Event(None)),
            }
        }
        Write::DeleteWorkspace {
            id,
            expected_version,
            ops,
            event,
        } => {
            // Sessions and tokens go by cascade; ops and events stay as history.
            let mut sql = String::from(
                "DELETE FROM workspaces WHERE id = ? AND version = ? RETURNING version AS deleted_version;",
            );
            for _ in ops.iter() {
                sql.push_str(UPSERT_OP);
            }
            sql.push_str(APPEND_EVENT);
            let q = bind_ops(
                sqlx::query(&sql)
                    .bind(id.as_str())
                    .bind(i64_of(*expected_version)),
                ops,
            )?
            .bind(event.workspace_id.as_str())
            .bind(to_json(event)?);
            let rows = q.fetch_all(&mut *tx).await?;
            if returned(&rows, "deleted_version").is_none() {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM workspaces WHERE id = ?")
                        .bind(id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                let what = format!("workspace {id}");
                return Err(refused(if exists.is_some() {
                    StoreError::Conflict { what }
                } else {
                    StoreError::NotFound { what }
                }));
            }
            Ok(Written::Event(Some(stored_event(&rows, event)?)))
        }
        Write::InsertOp(op) => {
            let inserted = sqlx::query("INSERT INTO ops (id, workspace_id, status, body) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
                .bind(op.id.as_str())
                .bind(op.workspace_id.as_str())
                .bind(op.status.as_str())
                .bind(to_json(op)?)
                .execute(&mut *tx)
                .await?;
            if inserted.rows_affected() == 0 {
                return Err(refused(StoreError::Conflict {
                    what: format!("operation {}", op.id),
                }));
            }
            Ok(Written::Nothing)
        }
        Write::UpdateOp(op) => {
            let updated = sqlx::query("UPDATE ops SET status = ?, body = ? WHERE id = ?")
                .bind(op.status.as_str())
                .bind(to_json(op)?)
                .bind(op.id.as_str())
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() == 0 {
                return Err(refused(StoreError::NotFound {
                    what: format!("operation {}", op.id),
                }));
            }
            Ok(Written::Nothing)
        }
        Write::InsertSession(session) => {
            let ws: Option<i64> = sqlx::query_scalar("SELECT 1 FROM workspaces WHERE id = ?")
                .bind(session.workspace_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if ws.is_none() {
                return Err(refused(StoreError::NotFound {
                    what: format!("workspace {}", session.workspace_id),
                }));
            }
            let taken: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM sessions WHERE workspace_id = ? AND name = ?")
                    .bind(session.workspace_id.as_str())
                    .bind(session.name.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if taken.is_some() {
                return Err(refused(StoreError::Conflict {
                    what: format!("session {}", session.name),
                }));
            }
            let generation: i64 = sqlx::query_scalar(
                "INSERT INTO session_generations (workspace_id) VALUES (?) RETURNING generation",
            )
            .bind(session.workspace_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
            let row = Session {
                workspace_id: session.workspace_id.clone(),
                name: session.name.clone(),
                command: session.command.clone(),
                env: session.env.clone(),
                generation: Generation(u64::try_from(generation).unwrap_or(0)),
                created_at: session.created_at,
                state: SessionState::Running,
                exit_code: None,
            };
            sqlx::query(
                "INSERT INTO sessions (workspace_id, name, generation, body) VALUES (?, ?, ?, ?)",
            )
            .bind(row.workspace_id.as_str())
            .bind(row.name.as_str())
            .bind(generation)
            .bind(to_json(&row)?)
            .execute(&mut *tx)
            .await?;
            Ok(Written::Session(row))
        }
        Write::UpdateSession(session) => {
            let updated = sqlx::query("UPDATE sessions SET body = ? WHERE workspace_id = ? AND name = ? AND generation = ?")
                .bind(to_json(session)?)
                .bind(session.workspace_id.as_str())
                .bind(session.name.as_str())
                .bind(i64_of(session.generation.0))
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() == 0 {
                return Err(refused(StoreError::NotFound {
                    what: format!("session {} generation {}", session.name, session.generation),
                }));
            }
            Ok(Written::Nothing)
        }
        Write::DeleteSession(workspace_id, name, generation) => {
            let deleted = sqlx::query(
                "DELETE FROM sessions WHERE workspace_id = ? AND name = ? AND generation = ?",
            )
            .bind(workspace_id.as_str())
            .bind(name.as_str())
            .bind(i64_of(generation.0))
            .execute(&mut *tx)
            .await?;
            Ok(Written::Deleted(deleted.rows_affected() > 0))
        }
        Write::ClaimKey {
            key,
            request_hash,
            result,
            now,
        } => {
            let found =
                sqlx::query("SELECT request_hash, result FROM idempotency_keys WHERE key = ?")
                    .bind(*key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(row) = found {
                return Ok(Written::Claimed(Some((
                    row.get::<String, _>(0),
                    row.get::<String, _>(1),
                ))));
            }
            sqlx::query("INSERT INTO idempotency_keys (key, request_hash, result, created_at) VALUES (?, ?, ?, ?)").bind(*key).bind(*request_hash).bind(*result).bind(now.as_str()).execute(&mut *tx).await?;
            Ok(Written::Claimed(None))
        }
        Write::PutPool(pool) => {
            sqlx::query("INSERT INTO pools (name, body) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET body = excluded.body")
                .bind(pool.name.as_str())
                .bind(to_json(pool)?)
                .execute(&mut *tx)
                .await?;
            Ok(Written::Nothing)
        }
        Write::DeletePool(name) => {
            let done = sqlx::query("DELETE FROM pools WHERE name = ?")
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?;
            Ok(Written::Deleted(done.rows_affected() > 0))
        }
        Write::PruneEvents(cutoff) => {
            sqlx::query("DELETE FROM events WHERE seq <= ?")
                .bind(*cutoff)
                .execute(&mut *tx)
                .await?;
            Ok(Written::Nothing)
        }
    }
}

fn unexpected(written: Written) -> StoreError {
    StoreError::Unavailable {
        message: format!("internal: unexpected write result {written:?}"),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn init_engine_id(&self, candidate: &EngineId) -> Result<EngineId, StoreError> {
        let candidate = candidate.to_string();
        match self.write("engine id", Write::EngineId(&candidate)).await? {
            Written::Text(stored) => {
                EngineId::parse(&stored).map_err(|e| StoreError::Unavailable {
                    message: format!("stored engine id is invalid: {e}"),
                })
            }
            other => Err(unexpected(other)),
        }
    }

    async fn create_workspace(
        &self,
        workspace: &Workspace,
        event: &NewEvent,
    ) -> Result<Event, StoreError> {
        match self
            .submit(
                "workspace create",
                batch::Owned::Create(workspace.clone(), event.clone()),
            )
            .await?
        {
            Written::Event(Some(stored)) => {
                self.after_append(stored.seq).await;
                Ok(stored)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>, StoreError> {
        let body: Option<String> = self
            .read(
                "workspace",
                sqlx::query_scalar("SELECT body FROM workspaces WHERE id = ?")
                    .bind(id.as_str())
                    .fetch_optional(&self.reader),
            )
            .await?;
        body.map(|b| from_json(&b)).transpose()
    }

    async fn workspace_by_name(
        &self,
        name: &WorkspaceName,
    ) -> Result<Option<Workspace>, StoreError> {
        let body: Option<String> = self
            .read(
                "workspace",
                sqlx::query_scalar("SELECT body FROM workspaces WHERE name = ?")
                    .bind(name.as_str())
                    .fetch_optional(&self.reader),
            )
            .await?;
        body.map(|b| from_json(&b)).transpose()
    }

    async fn list_workspaces(&self, query: &WorkspaceQuery) -> Result<WorkspacePage, StoreError> {
        let from = match &query.after {
            None => 0,
            Some(id) => {
                let seq: Option<i64> = self
                    .read(
                        "cursor",
                        sqlx::query_scalar(
                            "SELECT created_seq FROM workspace_order WHERE workspace_id = ?",
                        )
                        .bind(id.as_str())
                        .fetch_optional(&self.reader),
                    )
                    .await?;
                seq.ok_or_else(|| StoreError::NotFound {
                    what: format!("cursor {id}"),
                })?
            }
        };
        let limit = query.limit;
        let fetch = i64::try_from(limit)
            .unwrap_or(i64::MAX - 1)
            .saturating_add(1);
        // NULL filters match everything; the indexes on (state|runtime, created_seq)
        // serve the filtered forms.
        let bodies: Vec<String> = self
            .read(
                "workspace list",
                sqlx::query_scalar(
                    "SELECT body FROM workspaces WHERE created_seq > ?1 AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR runtime = ?3) ORDER BY created_seq LIMIT ?4",
                )
                .bind(from)
                .bind(query.state.map(State::as_str))
                .bind(query.runtime.as_ref().map(RuntimeKind::as_str))
                .bind(fetch)
                .fetch_all(&self.reader),
            )
            .await?;
        let more = bodies.len() > limit;
        let items = bodies
            .iter()
            .take(limit)
            .map(|b| from_json::<Workspace>(b))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            items.last().map(|w| w.id.clone())
        } else {
            None
        };
        Ok(WorkspacePage { items, next })
    }

    async fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .read(
                "workspace counts",
                sqlx::query_as("SELECT state, COUNT(*) FROM workspaces GROUP BY state")
                    .fetch_all(&self.reader),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(state, n)| {
                let state = State::ALL.into_iter().find(|s| s.as_str() == state)?;
                Some((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect())
    }

    async fn commit(&self, commit: &Commit) -> Result<Option<Event>, StoreError> {
        match self
            .submit("workspace commit", batch::Owned::Commit(commit.clone()))
            .await?
        {
            Written::Event(stored) => {
                if let Some(e) = &stored {
                    self.after_append(e.seq).await;
                }
                Ok(stored)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_workspace(
        &self,
        id: &WorkspaceId,
        expected_version: u64,
        ops: &[Operation],
        event: &NewEvent,
        _fence: Fence,
    ) -> Result<Event, StoreError> {
        // One writer per data directory (`daemon.lock`): every fence is accepted.
        match self
            .submit(
                "workspace delete",
                batch::Owned::Delete {
                    id: id.clone(),
                    expected_version,
                    ops: ops.to_vec(),
                    event: event.clone(),
                },
            )
            .await?
        {
            Written::Event(Some(stored)) => {
                self.after_append(stored.seq).await;
                Ok(stored)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn insert_op(&self, op: &Operation) -> Result<(), StoreError> {
        self.submit("operation insert", batch::Owned::InsertOp(op.clone()))
            .await
            .map(|_| ())
    }

    async fn update_op(&self, op: &Operation) -> Result<(), StoreError> {
        self.submit("operation update", batch::Owned::UpdateOp(op.clone()))
            .await
            .map(|_| ())
    }

    async fn op(&self, id: &OpId) -> Result<Option<Operation>, StoreError> {
        let body: Option<String> = self
            .read(
                "operation",
                sqlx::query_scalar("SELECT body FROM ops WHERE id = ?")
                    .bind(id.as_str())
                    .fetch_optional(&self.reader),
            )
            .await?;
        body.map(|b| from_json(&b)).transpose()
    }

    async fn list_ops(
        &self,
        workspace_id: &WorkspaceId,
        limit: usize,
    ) -> Result<Vec<Operation>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let bodies: Vec<String> = self
            .read(
                "operation list",
                sqlx::query_scalar(
                    "SELECT body FROM ops WHERE workspace_id = ? ORDER BY rowid DESC LIMIT ?",
                )
                .bind(workspace_id.as_str())
                .bind(limit)
                .fetch_all(&self.reader),
            )
            .await?;
        bodies.iter().map(|b| from_json(b)).collect()
    }

    async fn unfinished_ops(&self) -> Result<Vec<Operation>, StoreError> {
        let bodies: Vec<String> = self
            .read(
                "unfinished operations",
                sqlx::query_scalar(
                    "SELECT body FROM ops WHERE status IN ('queued', 'running') ORDER BY rowid",
                )
                .fetch_all(&self.reader),
            )
            .await?;
        bodies.iter().map(|b| from_json(b)).collect()
    }

    async fn events<'a>(
        &self,
        after: u64,
        workspace_id: Option<&'a WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match workspace_id {
            Some(ws) => self.read("events", sqlx::query("SELECT seq, body FROM events WHERE workspace_id = ? AND seq > ? ORDER BY seq LIMIT ?").bind(ws.as_str()).bind(i64_of(after)).bind(limit).fetch_all(&self.reader)).await?,
            None => self.read("events", sqlx::query("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?").bind(i64_of(after)).bind(limit).fetch_all(&self.reader)).await?,
        };
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let body: String = r.get(1);
                Ok(Event {
                    seq: u64::try_from(seq).unwrap_or(0),
                    event: from_json(&body)?,
                })
            })
            .collect()
    }

    async fn last_event_seq(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> = self
            .read(
                "events",
                sqlx::query_scalar("SELECT MAX(seq) FROM events").fetch_one(&self.reader),
            )
            .await?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }

    async fn insert_session(&self, session: &NewSession) -> Result<Session, StoreError> {
        match self
            .write("session insert", Write::InsertSession(session))
            .await?
        {
            Written::Session(row) => Ok(row),
            other => Err(unexpected(other)),
        }
    }

    async fn update_session(&self, session: &Session) -> Result<(), StoreError> {
        self.submit(
            "session update",
            batch::Owned::UpdateSession(session.clone()),
        )
        .await
        .map(|_| ())
    }

    async fn delete_session(
        &self,
        workspace_id: &WorkspaceId,
        name: &SessionName,
        generation: Generation,
    ) -> Result<bool, StoreError> {
        match self
            .write(
                "session delete",
                Write::DeleteSession(workspace_id, name, generation),
            )
            .await?
        {
            Written::Deleted(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }

    async fn sessions(&self, workspace_id: &WorkspaceId) -> Result<Vec<Session>, StoreError> {
        let bodies: Vec<String> = self
            .read(
                "sessions",
                sqlx::query_scalar(
                    "SELECT body FROM sessions WHERE workspace_id = ? ORDER BY name",
                )
                .bind(workspace_id.as_str())
                .fetch_all(&self.reader),
            )
            .await?;
        bodies.iter().map(|b| from_json(b)).collect()
    }

    async fn workspaces_with_sessions(&self) -> Result<Vec<WorkspaceId>, StoreError> {
        let ids: Vec<String> = self
            .read(
                "sessions",
                sqlx::query_scalar("SELECT DISTINCT workspace_id FROM sessions")
                    .fetch_all(&self.reader),
            )
            .await?;
        ids.iter()
            .map(|id| {
                WorkspaceId::parse(id).map_err(|e| StoreError::Unavailable {
                    message: format!("stored workspace id is invalid: {e}"),
                })
            })
            .collect()
    }

    async fn token_owner(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<(WorkspaceId, Incarnation)>, StoreError> {
        let row = self
            .read(
                "token",
                sqlx::query("SELECT workspace_id, incarnation FROM tokens WHERE hash = ?")
                    .bind(hash.to_hex())
                    .fetch_optional(&self.reader),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.get(0);
        let incarnation: i64 = row.get(1);
        let id = WorkspaceId::parse(&id).map_err(|e| StoreError::Unavailable {
            message: format!("stored workspace id is invalid: {e}"),
        })?;
        Ok(Some((
            id,
            Incarnation(u64::try_from(incarnation).unwrap_or(0)),
        )))
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        request_hash: &str,
        result: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let now = chrono::Utc::now().to_rfc3339();
        match self
            .write(
                "idempotency key",
                Write::ClaimKey {
                    key,
                    request_hash,
                    result,
                    now,
                },
            )
            .await?
        {
            Written::Claimed(found) => Ok(found),
            other => Err(unexpected(other)),
        }
    }

    async fn pools(&self) -> Result<Vec<Pool>, StoreError> {
        let bodies: Vec<String> = self
            .read(
                "pools",
                sqlx::query_scalar("SELECT body FROM pools ORDER BY name").fetch_all(&self.reader),
            )
            .await?;
        bodies.iter().map(|b| from_json(b)).collect()
    }

    async fn put_pool(&self, pool: &Pool) -> Result<(), StoreError> {
        self.write("pool", Write::PutPool(pool)).await.map(|_| ())
    }

    async fn delete_pool(&self, name: &WorkspaceName) -> Result<bool, StoreError> {
        match self.write("pool", Write::DeletePool(name)).await? {
            Written::Deleted(found) => Ok(found),
            other => Err(unexpected(other)),
        }
    }

    async fn pool_members<'a>(
        &self,
        name: Option<&'a WorkspaceName>,
    ) -> Result<Vec<Workspace>, StoreError> {
        let bodies: Vec<String> = match name {
            Some(name) => {
                self.read(
                    "pool members",
                    sqlx::query_scalar("SELECT body FROM workspaces WHERE json_extract(body, '$.pool') = ? ORDER BY created_seq")
                        .bind(name.as_str())
                        .fetch_all(&self.reader),
                )
                .await?
            }
            None => {
                self.read(
                    "pool members",
                    sqlx::query_scalar("SELECT body FROM workspaces WHERE json_extract(body, '$.pool') IS NOT NULL ORDER BY created_seq")
                        .fetch_all(&self.reader),
                )
                .await?
            }
        };
        bodies.iter().map(|b| from_json(b)).collect()
    }

    async fn idempotency_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        let row: Option<(String, String)> = self
            .read(
                "idempotency key",
                sqlx::query_as("SELECT request_hash, result FROM idempotency_keys WHERE key = ?")
                    .bind(key)
                    .fetch_optional(&self.reader),
            )
            .await?;
        Ok(row)
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // The committer answers what it was given, then ends with its queue.
        drop(self.committer.lock().take());
        self.tasks.wait().await;
        self.reader.close().await;
        self.writer.pool.close().await;
    }
}
