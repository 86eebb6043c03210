//! `PgStore`: berth's [`Store`] on PostgreSQL, shared by several daemons.
//!
//! - The same records as the SQLite store: JSON bodies beside the columns that are
//!   queried or constrained; every value is bound, nothing is concatenated into SQL.
//! - Migrations are embedded and applied at connect (sqlx takes an advisory lock, so
//!   daemons that boot together migrate once); a database written by a newer berth is
//!   refused, never downgraded.
//! - A state change, its event, its token hash and its op rows commit in one
//!   transaction. Event numbers come from one counter row updated last in the
//!   transaction, so they become visible in order: a reader never skips an event that
//!   commits late. Every append also `NOTIFY`s [`EVENTS_CHANNEL`] (a wake-up only; the
//!   table is the truth).
//! - Scale-out ([`cluster`]): once a daemon [joins](PgStore::join), every workspace it
//!   creates gets a lease row under its epoch, and [`Store::commit`] and
//!   [`Store::delete_workspace`] are accepted only from the lease's epoch (a
//!   `FOR SHARE` lock on the lease row orders them against a takeover).
//! - Serialization failures and deadlocks are retried; callers never see them.

mod batch;
pub mod cluster;
mod schema;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};

pub use batch::CommitStats;
pub use cluster::{DaemonRow, EventWakes, Heartbeat, Lease, LeaseOwner, Member, MemberOptions};
pub use schema::latest_version;

/// The `LISTEN`/`NOTIFY` channel on which every event append is announced (payload:
/// its seq).
pub const EVENTS_CHANNEL: &str = "berth_events";

/// Options for [`PgStore::connect`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections of the pool.
    pub max_connections: u32,
    /// Give up (with `StoreError::Unavailable`) when no connection frees up this long.
    pub acquire_timeout: Duration,
    /// Keep at most this many newest events (`None`: every event).
    pub event_retention: Option<u64>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(30),
            event_retention: Some(1_000_000),
        }
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL does not parse.
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    /// The server refused, or the migrations failed.
    #[error("cannot use PostgreSQL at {url}: {source}")]
    Database {
        /// The URL without its password.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// The database was migrated by a newer berth.
    #[error(
        "PostgreSQL database at {url} has schema version {found}, newer than the {supported} this berth supports; upgrade berth (it never downgrades a database)"
    )]
    NewerSchema {
        /// The URL without its password.
        url: String,
        /// The version found.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
}

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    url: String,
    options: PgOptions,
    closed: AtomicBool,
    appended: AtomicU64,
    /// This daemon's membership, once it joined.
    member: OnceLock<Member>,
    /// The workspaces whose lease this daemon holds (refreshed by every heartbeat).
    held: parking_lot::RwLock<HashSet<WorkspaceId>>,
    writer: Writer,
    /// The group committer's queue (`None` once closed).
    committer: parking_lot::Mutex<Option<tokio::sync::mpsc::Sender<batch::Job>>>,
    counters: Arc<batch::Counters>,
    tasks: tokio_util::task::TaskTracker,
}

/// The URL with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:pass@host/db`, or `?host=/socket/dir`),
    /// refuses a newer schema, and migrates.
    ///
    /// # Errors
    /// [`ConnectError`].
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, ConnectError> {
        let shown = redact(url);
        let connect: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| ConnectError::Url(format!("{shown}: {e}")))?;
        let connect = connect.application_name("berth");
        let db = |source| ConnectError::Database {
            url: shown.clone(),
            source,
        };
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(db)?;
        schema::refuse_newer(&pool, &shown).await?;
        schema::migrator()
            .run(&pool)
            .await
            .map_err(|e| db(sqlx::Error::Migrate(Box::new(e))))?;
        let writer = Writer {
            pool: pool.clone(),
            acquire_timeout: options.acquire_timeout,
        };
        let (jobs, queue) = tokio::sync::mpsc::channel(4 * batch::MAX_BATCH);
        let counters = Arc::new(batch::Counters::default());
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(batch::run(writer.clone(), queue, Arc::clone(&counters)));
        tasks.close();
        Ok(Self {
            pool,
            url: shown,
            options,
            closed: AtomicBool::new(false),
            appended: AtomicU64::new(0),
            member: OnceLock::new(),
            held: parking_lot::RwLock::new(HashSet::new()),
            writer,
            committer: parking_lot::Mutex::new(Some(jobs)),
            counters,
            tasks,
        })
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool (for tests and the benchmark's raw baseline).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn map(&self, e: sqlx::Error, what: &str) -> StoreError {
        map_error(e, what, self.options.acquire_timeout)
    }

    /// Runs `write` in a transaction of its own (the precise path).
    async fn write(&self, what: &str, write: Write<'_>) -> Result<Written, StoreError> {
        self.check_open()?;
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

    /// What the group committer did so far.
    pub fn commit_stats(&self) -> CommitStats {
        self.counters.stats()
    }

    async fn read<T>(
        &self,
        what: &str,
        q: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        q.await.map_err(|e| self.map(e, what))
    }

    async fn after_append(&self, seq: u64) {
        let Some(keep) = self.options.event_retention else {
            return;
        };
        if self.appended.fetch_add(1, Ordering::Relaxed) % 1024 != 1023 || seq <= keep {
            return;
        }
        let cutoff = i64_of(seq - keep);
        let pruned = self
            .read(
                "event pruning",
                sqlx::query("DELETE FROM events WHERE seq <= $1")
                    .bind(cutoff)
                    .execute(&self.pool),
            )
            .await;
        if let Err(e) = pruned {
            tracing::warn!(error = %e, "could not prune old events");
        }
    }

    /// The epoch a created workspace's lease gets, when this daemon joined a fleet.
    fn lease_for(&self, ws: &Workspace) -> Option<NewLease> {
        self.member.get().map(|m| {
            (
                m.daemon_id.clone(),
                i64_of(m.epoch),
                m.host.clone(),
                !m.pinned_runtimes.contains(ws.runtime.as_str()),
            )
        })
    }
}

pub(crate) fn map_error(e: sqlx::Error, what: &str, acquire: Duration) -> StoreError {
    match e {
        sqlx::Error::PoolClosed => StoreError::Closed,
        sqlx::Error::PoolTimedOut => StoreError::Unavailable {
            message: format!("{what}: no database connection came free within {acquire:?}"),
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

/// The pool and what writing needs; shared with the group committer.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pub(crate) pool: PgPool,
    acquire_timeout: Duration,
}

impl Writer {
    pub(crate) fn map(&self, e: sqlx::Error, what: &str) -> StoreError {
        map_error(e, what, self.acquire_timeout)
    }

    /// Runs `write` in a transaction of its own, retrying serialization failures and
    /// deadlocks.
    pub(crate) async fn write(&self, what: &str, write: Write<'_>) -> Result<Written, StoreError> {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let outcome = async {
                let mut tx = self.pool.begin().await?;
                match apply(&mut tx, &write).await {
                    Ok(v) => {
                        tx.commit().await?;
                        Ok(v)
                    }
                    Err(e) => {
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }
            .await;
            match outcome {
                Ok(v) => return Ok(v),
                Err(WriteError::Store(e)) => return Err(e),
                Err(WriteError::Sql(e)) if is_retryable(&e) && attempts < RETRIES => {
                    tracing::debug!(what, error = %e, "transaction conflict; retrying");
                    tokio::time::sleep(Duration::from_millis(u64::from(attempts) * 2)).await;
                }
                Err(WriteError::Sql(e)) => {
                    tracing::warn!(what, error = %e, "write failed");
                    return Err(self.map(e, what));
                }
            }
        }
    }
}

/// How often a transaction that hit a serialization failure or a deadlock runs again.
pub(crate) const RETRIES: u32 = 20;

/// Serialization failure or deadlock: the transaction can simply run again.
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// An error inside a write transaction: a store verdict, or an SQL error.
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

fn refused(e: StoreError) -> WriteError {
    WriteError::Store(e)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, WriteError> {
    serde_json::to_string(value).map_err(|e| {
        refused(StoreError::Unavailable {
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

pub(crate) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Appends `events` in order, numbered by the counter row (taken once for all of them),
/// and announces the last; the last statement of its transaction (the counter's row
/// lock is held until the commit is visible, so events become visible in order).
async fn append_events(
    tx: &mut PgConnection,
    events: &[&NewEvent],
) -> Result<Vec<Event>, WriteError> {
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let mut ids = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    for e in events {
        ids.push(e.workspace_id.to_string());
        bodies.push(to_json(e)?);
    }
    let top: i64 = sqlx::query_scalar(
        "WITH c AS (UPDATE event_counter SET seq = seq + $1 WHERE id = 1 RETURNING seq), \
         e AS (INSERT INTO events (seq, workspace_id, body) \
               SELECT c.seq - $1 + i.ord, i.ws, i.body FROM c, \
               unnest($2::text[], $3::text[]) WITH ORDINALITY AS i(ws, body, ord)) \
         SELECT c.seq FROM c, LATERAL (SELECT pg_notify($4, c.seq::text)) n",
    )
    .bind(n)
    .bind(&ids)
    .bind(&bodies)
    .bind(EVENTS_CHANNEL)
    .fetch_one(&mut *tx)
    .await?;
    let first = u64_of(top - n + 1);
    Ok(events
        .iter()
        .zip(first..)
        .map(|(e, seq)| Event {
            seq,
            event: (*e).clone(),
        })
        .collect())
}

async fn upsert_ops(tx: &mut PgConnection, ops: &[Operation]) -> Result<(), WriteError> {
    for op in ops {
        sqlx::query(
            "INSERT INTO ops (id, workspace_id, status, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, body = excluded.body",
        )
        .bind(op.id.as_str())
        .bind(op.workspace_id.as_str())
        .bind(op.status.as_str())
        .bind(to_json(op)?)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Why a conditional write of `id` matched no row: fenced, stale, or gone.
async fn diagnose(
    tx: &mut PgConnection,
    id: &WorkspaceId,
    fence: Fence,
) -> Result<StoreError, WriteError> {
    let row = sqlx::query(
        "SELECT w.version, l.epoch FROM workspaces w LEFT JOIN leases l ON l.workspace_id = w.id WHERE w.id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let what = format!("workspace {id}");
    Ok(match row {
        None => StoreError::NotFound { what },
        Some(row) => match row.get::<Option<i64>, _>(1) {
            Some(epoch) if epoch != i64_of(fence.epoch) => StoreError::Fenced {
                what,
                epoch: fence.epoch,
            },
            _ => StoreError::Conflict { what },
        },
    })
}

/// The lease condition every fenced write carries: no lease row, or one under the
/// writer's epoch. `FOR SHARE` waits for a takeover in progress and then sees its row.
const LEASE_CHECK: &str = "lease AS (SELECT epoch FROM leases WHERE workspace_id = $1 FOR SHARE)";

/// One write transaction's work.
#[derive(Debug)]
pub(crate) enum Write<'a> {
    EngineId(&'a str),
    Create {
        workspace: &'a Workspace,
        event: &'a NewEvent,
        lease: &'a Option<NewLease>,
    },
    Commit(&'a Commit),
    Delete {
        id: &'a WorkspaceId,
        expected_version: u64,
        ops: &'a [Operation],
        event: &'a NewEvent,
        fence: Fence,
    },
    InsertSession(&'a NewSession),
    ClaimKey {
        key: &'a str,
        request_hash: &'a str,
        result: &'a str,
    },
    PutPool(&'a Pool),
    DeletePool(&'a WorkspaceName),
    InsertOp(&'a Operation),
    UpdateOp(&'a Operation),
    UpdateSession(&'a Session),
}

/// The lease row a created workspace gets: owner, epoch, host, movable.
pub(crate) type NewLease = (String, i64, String, bool);

/// What a write returned.
#[derive(Debug)]
pub(crate) enum Written {
    Text(String),
    Event(Option<Event>),
    Session(Session),
    Claimed(Option<(String, String)>),
    Deleted(bool),
    Done,
}

fn unexpected(written: Written) -> StoreError {
    StoreError::Unavailable {
        message: format!("internal: unexpected write result {written:?}"),
    }
}

/// A write's statements run, short of its event.
pub(crate) enum Staged<'a> {
    /// Done: what it returned.
    Done(Written),
    /// Its event is still to append (last, with the events of its batch).
    Append(&'a NewEvent),
}

/// Runs `write` in `tx` (its own transaction: the precise path).
async fn apply(tx: &mut PgConnection, write: &Write<'_>) -> Result<Written, WriteError> {
    match stage(tx, write).await? {
        Staged::Done(written) => Ok(written),
        Staged::Append(event) => {
            let mut appended = append_events(tx, &[event]).await?;
            Ok(Written::Event(appended.pop()))
        }
    }
}

/// Runs `write`'s statements in `tx`, all but its event append.
pub(crate) async fn stage<'a>(
    tx: &mut PgConnection,
    write: &Write<'a>,
) -> Result<Staged<'a>, WriteError> {
    use Staged::{Append, Done};
    match write {
        Write::EngineId(candidate) => {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('engine_id', $1) ON CONFLICT (key) DO NOTHING",
            )
            .bind(*candidate)
            .execute(&mut *tx)
            .await?;
            Ok(Done(Written::Text(
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'engine_id'")
                    .fetch_one(&mut *tx)
                    .await?,
            )))
        }
        Write::Create {
            workspace,
            event,
            lease,
        } => {
            let inserted = sqlx::query(
                "WITH o AS (INSERT INTO workspace_order (workspace_id) VALUES ($1) RETURNING created_seq) \
                 INSERT INTO workspaces (id, created_seq, name, state, runtime, version, body) \
                 SELECT $1, created_seq, $2, $3, $4, $5, $6 FROM o ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(workspace.id.as_str())
            .bind(workspace.name.as_str())
            .bind(workspace.state.as_str())
            .bind(workspace.runtime.as_str())
            .bind(i64_of(workspace.version))
            .bind(to_json(workspace)?)
            .fetch_optional(&mut *tx)
            .await;
            match inserted {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let by_name: Option<String> =
                        sqlx::query_scalar("SELECT id FROM workspaces WHERE name = $1")
                            .bind(workspace.name.as_str())
                            .fetch_optional(&mut *tx)
                            .await?;
                    return Err(refused(match by_name {
                        Some(id) if id != workspace.id.as_str() => StoreError::NameTaken {
                            name: workspace.name.to_string(),
                        },
                        _ => StoreError::Conflict {
                            what: format!("workspace {}", workspace.id),
                        },
                    }));
                }
                // The creation order row of an id used before.
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    return Err(refused(StoreError::Conflict {
                        what: format!("workspace {}", workspace.id),
                    }));
                }
                Err(e) => return Err(e.into()),
            }
            if let Some((owner, epoch, host, movable)) = lease {
                sqlx::query(
                    "INSERT INTO leases (workspace_id, owner, epoch, host, movable, acquired_at) \
                     VALUES ($1, $2, $3, $4, $5, clock_timestamp())",
                )
                .bind(workspace.id.as_str())
                .bind(owner)
                .bind(*epoch)
                .bind(host)
                .bind(*movable)
                .execute(&mut *tx)
                .await?;
            }
            Ok(Append(event))
        }
        Write::Commit(commit) => {
            let ws = &commit.workspace;
            let updated: Option<i64> = sqlx::query_scalar(&format!(
                "WITH {LEASE_CHECK} UPDATE workspaces SET name = $2, state = $3, version = $4, body = $5 \
                 WHERE id = $1 AND version = $6 AND NOT EXISTS (SELECT 1 FROM lease WHERE epoch <> $7) \
                 RETURNING version"
            ))
            .bind(ws.id.as_str())
            .bind(ws.name.as_str())
            .bind(ws.state.as_str())
            .bind(i64_of(ws.version))
            .bind(to_json(ws)?)
            .bind(i64_of(commit.expected_version))
            .bind(i64_of(commit.fence.epoch))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| match e {
                // A rename (a pool member claimed) onto a name another workspace holds.
                sqlx::Error::Database(db)
                    if db.is_unique_violation()
                        && db.constraint() == Some("workspaces_name_key") =>
                {
                    refused(StoreError::NameTaken {
                        name: ws.name.to_string(),
                    })
                }
                e => WriteError::Sql(e),
            })?;
            if updated.is_none() {
                return Err(refused(diagnose(tx, &ws.id, commit.fence).await?));
            }
            if let Some(hash) = &commit.token {
                sqlx::query(
                    "INSERT INTO tokens (hash, workspace_id, incarnation) VALUES ($1, $2, $3) \
                     ON CONFLICT (hash) DO UPDATE SET workspace_id = excluded.workspace_id, incarnation = excluded.incarnation",
                )
                .bind(hash.to_hex())
                .bind(ws.id.as_str())
                .bind(i64_of(ws.incarnation.0))
                .execute(&mut *tx)
                .await?;
            }
            upsert_ops(tx, &commit.ops).await?;
            Ok(match &commit.event {
                Some(e) => Append(e),
                None => Done(Written::Event(None)),
            })
        }
        Write::Delete {
            id,
            expected_version,
            ops,
            event,
            fence,
        } => {
            // Sessions, tokens and the lease go by cascade; ops and events stay.
            let deleted: Option<i64> = sqlx::query_scalar(&format!(
                "WITH {LEASE_CHECK} DELETE FROM workspaces \
                 WHERE id = $1 AND version = $2 AND NOT EXISTS (SELECT 1 FROM lease WHERE epoch <> $3) \
                 RETURNING version"
            ))
            .bind(id.as_str())
            .bind(i64_of(*expected_version))
            .bind(i64_of(fence.epoch))
            .fetch_optional(&mut *tx)
            .await?;
            if deleted.is_none() {
                return Err(refused(diagnose(tx, id, *fence).await?));
            }
            upsert_ops(tx, ops).await?;
            Ok(Append(event))
        }
        Write::InsertSession(session) => {
            let ws: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM workspaces WHERE id = $1 FOR SHARE")
                    .bind(session.workspace_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if ws.is_none() {
                return Err(refused(StoreError::NotFound {
                    what: format!("workspace {}", session.workspace_id),
                }));
            }
            let generation: i64 = sqlx::query_scalar("SELECT nextval('session_generations')")
                .fetch_one(&mut *tx)
                .await?;
            let row = Session {
                workspace_id: session.workspace_id.clone(),
                name: session.name.clone(),
                command: session.command.clone(),
                env: session.env.clone(),
                generation: Generation(u64_of(generation)),
                created_at: session.created_at,
                state: SessionState::Running,
                exit_code: None,
            };
            let inserted = sqlx::query(
                "INSERT INTO sessions (workspace_id, name, generation, body) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(row.workspace_id.as_str())
            .bind(row.name.as_str())
            .bind(generation)
            .bind(to_json(&row)?)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(refused(StoreError::Conflict {
                    what: format!("session {}", session.name),
                }));
            }
            Ok(Done(Written::Session(row)))
        }
        Write::ClaimKey {
            key,
            request_hash,
            result,
        } => {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (key, request_hash, result) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
            )
            .bind(*key)
            .bind(*request_hash)
            .bind(*result)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(Done(Written::Claimed(None)));
            }
            let found: (String, String) =
                sqlx::query_as("SELECT request_hash, result FROM idempotency_keys WHERE key = $1")
                    .bind(*key)
                    .fetch_one(&mut *tx)
                    .await?;
            Ok(Done(Written::Claimed(Some(found))))
        }
        Write::PutPool(pool) => {
            sqlx::query(
                "INSERT INTO pools (name, body) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            )
            .bind(pool.name.as_str())
            .bind(to_json(pool)?)
            .execute(&mut *tx)
            .await?;
            Ok(Done(Written::Deleted(false)))
        }
        Write::DeletePool(name) => {
            let done = sqlx::query("DELETE FROM pools WHERE name = $1")
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?;
            Ok(Done(Written::Deleted(done.rows_affected() > 0)))
        }
        Write::InsertOp(op) => {
            let inserted = sqlx::query(
                "INSERT INTO ops (id, workspace_id, status, body) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            )
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
            Ok(Done(Written::Done))
        }
        Write::UpdateOp(op) => {
            let updated = sqlx::query("UPDATE ops SET status = $1, body = $2 WHERE id = $3")
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
            Ok(Done(Written::Done))
        }
        Write::UpdateSession(session) => {
            let updated = sqlx::query(
                "UPDATE sessions SET body = $1 WHERE workspace_id = $2 AND name = $3 AND generation = $4",
            )
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
            Ok(Done(Written::Done))
        }
    }
}

#[async_trait]
impl Store for PgStore {
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
        let lease = self.lease_for(workspace);
        let stored = match self
            .submit(
                "workspace create",
                batch::Owned::Create {
                    workspace: workspace.clone(),
                    event: event.clone(),
                    lease,
                },
            )
            .await?
        {
            Written::Event(Some(e)) => e,
            other => return Err(unexpected(other)),
        };
        if self.member.get().is_some() {
            self.held.write().insert(workspace.id.clone());
        }
        self.after_append(stored.seq).await;
        Ok(stored)
    }

    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>, StoreError> {
        let body: Option<String> = self
            .read(
                "workspace",
                sqlx::query_scalar("SELECT body FROM workspaces WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool),
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
                sqlx::query_scalar("SELECT body FROM workspaces WHERE name = $1")
                    .bind(name.as_str())
                    .fetch_optional(&self.pool),
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
                            "SELECT created_seq FROM workspace_order WHERE workspace_id = $1",
                        )
                        .bind(id.as_str())
                        .fetch_optional(&self.pool),
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
        let bodies: Vec<String> = self
            .read(
                "workspace list",
                sqlx::query_scalar(
                    "SELECT body FROM workspaces WHERE created_seq > $1 \
                     AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR runtime = $3) \
                     ORDER BY created_seq LIMIT $4",
                )
                .bind(from)
                .bind(query.state.map(State::as_str))
                .bind(query.runtime.as_ref().map(RuntimeKind::as_str))
                .bind(fetch)
                .fetch_all(&self.pool),
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
                    .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(state, n)| {
                let state = State::ALL.into_iter().find(|s| s.as_str() == state)?;
                Some((state, u64_of(n)))
            })
            .collect())
    }

    async fn commit(&self, commit: &Commit) -> Result<Option<Event>, StoreError> {
        let ws = &commit.workspace;
        if ws.version != commit.expected_version + 1 {
            return Err(StoreError::Conflict {
                what: format!("workspace {} (version must advance by one)", ws.id),
            });
        }
        let stored = match self
            .submit("workspace commit", batch::Owned::Commit(commit.clone()))
            .await?
        {
            Written::Event(e) => e,
            other => return Err(unexpected(other)),
        };
        if let Some(e) = &stored {
            self.after_append(e.seq).await;
        }
        Ok(stored)
    }

    async fn delete_workspace(
        &self,
        id: &WorkspaceId,
        expected_version: u64,
        ops: &[Operation],
        event: &NewEvent,
        fence: Fence,
    ) -> Result<Event, StoreError> {
        let stored = match self
            .submit(
                "workspace delete",
                batch::Owned::Delete {
                    id: id.clone(),
                    expected_version,
                    ops: ops.to_vec(),
                    event: event.clone(),
                    fence,
                },
            )
            .await?
        {
            Written::Event(Some(e)) => e,
            other => return Err(unexpected(other)),
        };
        self.held.write().remove(id);
        self.after_append(stored.seq).await;
        Ok(stored)
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
                sqlx::query_scalar("SELECT body FROM ops WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool),
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
                    "SELECT body FROM ops WHERE workspace_id = $1 ORDER BY ord DESC LIMIT $2",
                )
                .bind(workspace_id.as_str())
                .bind(limit)
                .fetch_all(&self.pool),
            )
            .await?;
        bodies.iter().map(|b| from_json(b)).collect()
    }

    async fn unfinished_ops(&self) -> Result<Vec<Operation>, StoreError> {
        let bodies: Vec<String> = self
            .read(
                "unfinished operations",
                sqlx::query_scalar(
                    "SELECT body FROM ops WHERE status IN ('queued', 'running') ORDER BY ord",
                )
                .fetch_all(&self.pool),
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
        let rows: Vec<PgRow> = self
            .read(
                "events",
                sqlx::query(
                    "SELECT seq, body FROM events WHERE seq > $1 AND ($2::text IS NULL OR workspace_id = $2) ORDER BY seq LIMIT $3",
                )
                .bind(i64_of(after))
                .bind(workspace_id.map(WorkspaceId::as_str))
                .bind(limit)
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    seq: u64_of(r.get(0)),
                    event: from_json(&r.get::<String, _>(1))?,
                })
            })
            .collect()
    }

    async fn last_event_seq(&self) -> Result<u64, StoreError> {
        // The counter, not MAX(seq): pruning never lowers it, and it is what commits.
        let seq: i64 = self
            .read(
                "events",
                sqlx::query_scalar("SELECT seq FROM event_counter WHERE id = 1")
                    .fetch_one(&self.pool),
            )
            .await?;
        Ok(u64_of(seq))
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
        let deleted = self
            .read(
                "session delete",
                sqlx::query(
                    "DELETE FROM sessions WHERE workspace_id = $1 AND name = $2 AND generation = $3",
                )
                .bind(workspace_id.as_str())
                .bind(name.as_str())
                .bind(i64_of(generation.0))
                .execute(&self.pool),
            )
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn sessions(&self, workspace_id: &WorkspaceId) -> Result<Vec<Session>, StoreError> {
        let bodies: Vec<String> = self
            .read(
                "sessions",
                sqlx::query_scalar(
                    "SELECT body FROM sessions WHERE workspace_id = $1 ORDER BY name COLLATE \"C\"",
                )
                .bind(workspace_id.as_str())
                .fetch_all(&self.pool),
            )
            .await?;
        bodies.iter().map(|b| from_json(b)).collect()
    }

    async fn workspaces_with_sessions(&self) -> Result<Vec<WorkspaceId>, StoreError> {
        let ids: Vec<String> = self
            .read(
                "sessions",
                sqlx::query_scalar("SELECT DISTINCT workspace_id FROM sessions")
                    .fetch_all(&self.pool),
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
        let row: Option<(String, i64)> = self
            .read(
                "token",
                sqlx::query_as("SELECT workspace_id, incarnation FROM tokens WHERE hash = $1")
                    .bind(hash.to_hex())
                    .fetch_optional(&self.pool),
            )
            .await?;
        let Some((id, incarnation)) = row else {
            return Ok(None);
        };
        let id = WorkspaceId::parse(&id).map_err(|e| StoreError::Unavailable {
            message: format!("stored workspace id is invalid: {e}"),
        })?;
        Ok(Some((id, Incarnation(u64_of(incarnation)))))
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        request_hash: &str,
        result: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        match self
            .write(
                "idempotency key",
                Write::ClaimKey {
                    key,
                    request_hash,
                    result,
                },
            )
            .await?
        {
            Written::Claimed(found) => Ok(found),
            other => Err(unexpected(other)),
        }
    }

    async fn idempotency_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        self.read(
            "idempotency key",
            sqlx::query_as("SELECT request_hash, result FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool),
        )
        .await
    }

    async fn pools(&self) -> Result<Vec<Pool>, StoreError> {
        let bodies: Vec<String> = self
            .read(
                "pools",
                sqlx::query_scalar("SELECT body FROM pools ORDER BY name").fetch_all(&self.pool),
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
        // Two statements, so each is planned against the partial index.
        let q = match name {
            Some(name) => sqlx::query_scalar(
                "SELECT body FROM workspaces WHERE ((body::jsonb) ->> 'pool') = $1 ORDER BY created_seq",
            )
            .bind(name.as_str()),
            None => sqlx::query_scalar(
                "SELECT body FROM workspaces WHERE ((body::jsonb) ->> 'pool') IS NOT NULL ORDER BY created_seq",
            ),
        };
        let bodies: Vec<String> = self.read("pool members", q.fetch_all(&self.pool)).await?;
        bodies.iter().map(|b| from_json(b)).collect()
    }

    /// Closes the store. A daemon that joined a fleet ends its lease time first: the
    /// engine closes its store after its last write, so other daemons may take its
    /// workspaces over at once instead of after the lease time.
    async fn close(&self) {
        if self.member.get().is_some()
            && let Err(e) = self.leave().await
        {
            tracing::warn!(error = %e, "could not hand this daemon's workspaces back; they move when its lease time ends");
        }
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // The committer answers what it was given, then ends with its queue.
        drop(self.committer.lock().take());
        self.tasks.wait().await;
        self.pool.close().await;
    }
}

pub mod testing;
