//! Several daemons, one fleet: membership, workspace leases and their fencing epochs.
//!
//! - A daemon [joins](PgStore::join) with a stable id, the URL other daemons reach it
//!   at, and its host. Every join takes a new epoch from the `daemon_epochs` sequence;
//!   the daemon row carries it and an expiry on the database's clock, renewed by
//!   [`PgStore::heartbeat`].
//! - Every workspace has a lease row: its owner, the owner's epoch, the host and
//!   whether the workspace may move to another host (a tmux workspace may not). A
//!   lease is **live** while its owner's daemon row has the lease's epoch and has not
//!   expired; one renewal renews every lease of the daemon.
//! - Writes of a workspace are accepted only under its lease's epoch (see the crate
//!   docs). [`PgStore::acquire`] takes a lease that is free, expired, or held by an
//!   earlier incarnation of this daemon, in one conditional `UPDATE`: of two daemons
//!   racing for it one wins; the loser sees the winner as the owner.

use std::collections::HashSet;
use std::time::Duration;

use berth_core::ids::WorkspaceId;
use berth_core::ports::{Fence, Ownership, StoreError};
use sqlx::Row;

use crate::{PgStore, i64_of, u64_of};

/// What a daemon joins with.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// The daemon's stable id (its data directory keeps it across restarts).
    pub daemon_id: String,
    /// The URL other daemons forward requests to.
    pub url: String,
    /// The host it runs on; workspaces of `pinned_runtimes` only move between daemons
    /// of one host.
    pub host: String,
    /// How long a lease lives without a renewal.
    pub lease_ttl: Duration,
    /// Runtimes whose workspaces belong to a host (tmux).
    pub pinned_runtimes: HashSet<String>,
}

/// This daemon's membership.
#[derive(Debug, Clone)]
pub struct Member {
    /// The daemon id.
    pub daemon_id: String,
    /// This process's epoch: the fence of all its writes.
    pub epoch: u64,
    /// Its URL.
    pub url: String,
    /// Its host.
    pub host: String,
    /// The lease time.
    pub lease_ttl: Duration,
    /// Runtimes pinned to a host.
    pub pinned_runtimes: HashSet<String>,
}

/// Who holds a workspace's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOwner {
    /// This daemon (this epoch).
    Me,
    /// Another live daemon, reachable at `url`.
    Other {
        /// Its id.
        daemon_id: String,
        /// Its URL.
        url: String,
    },
    /// Nobody live: the lease may be acquired (by a daemon on `host` only, unless
    /// `movable`).
    Free {
        /// The last owner's host.
        host: String,
        /// Whether another host may take it.
        movable: bool,
    },
}

/// A workspace's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The owner as seen from this daemon.
    pub owner: LeaseOwner,
    /// The lease's epoch.
    pub epoch: u64,
}

/// A daemon of the fleet, as `GET /v1/daemons` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DaemonRow {
    /// Its id.
    pub id: String,
    /// Its current epoch.
    pub epoch: u64,
    /// Its URL.
    pub url: String,
    /// Its host.
    pub host: String,
    /// Whether its lease time has not run out.
    pub live: bool,
    /// How many workspaces it owns.
    pub workspaces: u64,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Leases this daemon held and another daemon took (it was frozen or cut off past
    /// its lease time). The engine must forget these workspaces.
    pub lost: Vec<WorkspaceId>,
    /// The daemon's own row had expired before this renewal.
    pub was_expired: bool,
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Joins the fleet: takes a new epoch, writes the daemon row, and takes back the
    /// leases an earlier incarnation of this daemon held (fencing it, if it still runs
    /// somewhere). From now on every workspace this store creates is leased to it.
    ///
    /// # Errors
    /// A store error; `Conflict` when this store already joined.
    pub async fn join(&self, options: MemberOptions) -> Result<Member, StoreError> {
        self.check_open()?;
        if self.member.get().is_some() {
            return Err(StoreError::Conflict {
                what: "cluster membership (this store already joined)".into(),
            });
        }
        let map = |e| self.map(e, "daemon join");
        let epoch: i64 = sqlx::query_scalar(
            "WITH e AS (SELECT nextval('daemon_epochs') AS epoch) \
             INSERT INTO daemons (id, epoch, url, host, started_at, expires_at) \
             SELECT $1, e.epoch, $2, $3, clock_timestamp(), clock_timestamp() + make_interval(secs => $4::double precision / 1000) FROM e \
             ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, url = excluded.url, host = excluded.host, \
             started_at = excluded.started_at, expires_at = excluded.expires_at \
             RETURNING epoch",
        )
        .bind(&options.daemon_id)
        .bind(&options.url)
        .bind(&options.host)
        .bind(ttl_ms(options.lease_ttl))
        .fetch_one(&self.pool)
        .await
        .map_err(map)?;
        let member = Member {
            daemon_id: options.daemon_id,
            epoch: u64_of(epoch),
            url: options.url,
            host: options.host,
            lease_ttl: options.lease_ttl,
            pinned_runtimes: options.pinned_runtimes,
        };
        // The leases of earlier incarnations of this daemon: ours again, under the new
        // epoch (a pinned workspace only if this is still its host).
        // A batch of an earlier incarnation still writing locks several of these rows:
        // a deadlock with it is run again.
        let mut attempts = 0;
        let taken: Vec<String> = loop {
            attempts += 1;
            let taken = sqlx::query_scalar(
                "UPDATE leases SET epoch = $2, host = CASE WHEN movable THEN $3 ELSE host END, acquired_at = clock_timestamp() \
                 WHERE owner = $1 AND epoch <> $2 AND (movable OR host = $3) RETURNING workspace_id",
            )
            .bind(&member.daemon_id)
            .bind(epoch)
            .bind(&member.host)
            .fetch_all(&self.pool)
            .await;
            match taken {
                Err(e) if crate::is_retryable(&e) && attempts < crate::RETRIES => {
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempts) * 2))
                        .await;
                }
                other => break other.map_err(map)?,
            }
        };
        let mut held = self.held.write();
        held.clear();
        held.extend(taken.iter().filter_map(|id| WorkspaceId::parse(id).ok()));
        drop(held);
        self.member
            .set(member.clone())
            .map_err(|_| StoreError::Conflict {
                what: "cluster membership (joined concurrently)".into(),
            })?;
        Ok(member)
    }

    /// This daemon's membership, once joined.
    pub fn member(&self) -> Option<&Member> {
        self.member.get()
    }

    /// The fence of this daemon's writes (`Fence::default()` before joining).
    pub fn fence(&self) -> Fence {
        Fence {
            epoch: self.member.get().map_or(0, |m| m.epoch),
        }
    }

    /// Whether this daemon holds `id`'s lease, as of its last acquire or heartbeat.
    pub fn holds(&self, id: &WorkspaceId) -> bool {
        self.member.get().is_none() || self.held.read().contains(id)
    }

    /// The workspaces this daemon holds.
    pub fn held(&self) -> Vec<WorkspaceId> {
        self.held.read().iter().cloned().collect()
    }

    fn joined(&self) -> Result<&Member, StoreError> {
        self.check_open()?;
        self.member.get().ok_or_else(|| StoreError::Unavailable {
            message: "this daemon has not joined the fleet".into(),
        })
    }

    /// Renews this daemon's lease time and finds the leases it lost.
    ///
    /// # Errors
    /// `Fenced` when another process joined under this daemon id since (this one must
    /// stop); other store errors (retry at the next beat).
    pub async fn heartbeat(&self) -> Result<Heartbeat, StoreError> {
        let member = self.joined()?;
        let map = |e| self.map(e, "daemon heartbeat");
        let before: HashSet<WorkspaceId> = self.held.read().clone();
        let renewed: Option<bool> = sqlx::query_scalar(
            "UPDATE daemons d SET expires_at = clock_timestamp() + make_interval(secs => $3::double precision / 1000) \
             FROM (SELECT expires_at FROM daemons WHERE id = $1 AND epoch = $2 FOR UPDATE) old \
             WHERE d.id = $1 AND d.epoch = $2 RETURNING old.expires_at < clock_timestamp()",
        )
        .bind(&member.daemon_id)
        .bind(i64_of(member.epoch))
        .bind(ttl_ms(member.lease_ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(map)?;
        let Some(was_expired) = renewed else {
            return Err(StoreError::Fenced {
                what: format!(
                    "daemon {} (another process joined under its id)",
                    member.daemon_id
                ),
                epoch: member.epoch,
            });
        };
        let still: Vec<String> =
            sqlx::query_scalar("SELECT workspace_id FROM leases WHERE owner = $1 AND epoch = $2")
                .bind(&member.daemon_id)
                .bind(i64_of(member.epoch))
                .fetch_all(&self.pool)
                .await
                .map_err(map)?;
        let still: HashSet<&str> = still.iter().map(String::as_str).collect();
        // Only what was held before the query and is gone from the table is lost: a
        // workspace created or acquired meanwhile stays.
        let lost: Vec<WorkspaceId> = before
            .into_iter()
            .filter(|id| !still.contains(id.as_str()))
            .collect();
        if !lost.is_empty() {
            let mut held = self.held.write();
            for id in &lost {
                held.remove(id);
            }
        }
        Ok(Heartbeat { lost, was_expired })
    }

    /// A workspace's lease (`None`: no workspace, or one that has no lease yet).
    ///
    /// # Errors
    /// A store error.
    pub async fn lease(&self, id: &WorkspaceId) -> Result<Option<Lease>, StoreError> {
        let member = self.joined()?;
        let row = sqlx::query(
            "SELECT l.owner, l.epoch, l.host, l.movable, d.url, \
             COALESCE(d.epoch = l.epoch AND d.expires_at > clock_timestamp(), false) AS live \
             FROM leases l LEFT JOIN daemons d ON d.id = l.owner WHERE l.workspace_id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.map(e, "lease"))?;
        let Some(row) = row else { return Ok(None) };
        let owner: String = row.get(0);
        let epoch = u64_of(row.get(1));
        let live: bool = row.get(5);
        let owner = if owner == member.daemon_id && epoch == member.epoch {
            LeaseOwner::Me
        } else if live {
            LeaseOwner::Other {
                daemon_id: owner,
                url: row.get::<Option<String>, _>(4).unwrap_or_default(),
            }
        } else {
            LeaseOwner::Free {
                host: row.get(2),
                movable: row.get(3),
            }
        };
        Ok(Some(Lease {
            workspace_id: id.clone(),
            owner,
            epoch,
        }))
    }

    /// Takes `id`'s lease if it is free, expired, or held by an earlier incarnation of
    /// this daemon, and if this host may hold it. Returns whether this call took it
    /// (`false` when another daemon holds it live, or this one already did: exactly
    /// one caller adopts a workspace it took).
    ///
    /// # Errors
    /// A store error.
    pub async fn acquire(&self, id: &WorkspaceId) -> Result<bool, StoreError> {
        let member = self.joined()?;
        let map = |e| self.map(e, "lease acquire");
        let pinned: Vec<String> = member.pinned_runtimes.iter().cloned().collect();
        // A workspace without a lease row (created before this database had a fleet).
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO leases (workspace_id, owner, epoch, host, movable, acquired_at) \
             SELECT id, $2, $3, $4, NOT (runtime = ANY($5)), clock_timestamp() FROM workspaces WHERE id = $1 \
             ON CONFLICT (workspace_id) DO NOTHING RETURNING workspace_id",
        )
        .bind(id.as_str())
        .bind(&member.daemon_id)
        .bind(i64_of(member.epoch))
        .bind(&member.host)
        .bind(&pinned)
        .fetch_optional(&self.pool)
        .await
        .map_err(map)?;
        if inserted.is_some() {
            self.held.write().insert(id.clone());
            return Ok(true);
        }
        let taken: Option<String> = sqlx::query_scalar(
            "UPDATE leases l SET owner = $2, epoch = $3, host = CASE WHEN l.movable THEN $4 ELSE l.host END, \
             acquired_at = clock_timestamp() \
             WHERE l.workspace_id = $1 AND (l.movable OR l.host = $4) AND NOT (l.owner = $2 AND l.epoch = $3) \
             AND (l.owner = $2 OR NOT EXISTS ( \
               SELECT 1 FROM daemons d WHERE d.id = l.owner AND d.epoch = l.epoch AND d.expires_at > clock_timestamp())) \
             RETURNING l.workspace_id",
        )
        .bind(id.as_str())
        .bind(&member.daemon_id)
        .bind(i64_of(member.epoch))
        .bind(&member.host)
        .fetch_optional(&self.pool)
        .await
        .map_err(map)?;
        if taken.is_some() {
            self.held.write().insert(id.clone());
        }
        Ok(taken.is_some())
    }

    /// Workspaces whose lease nobody live holds and this daemon may take (at most
    /// `limit`), for the failover loop.
    ///
    /// # Errors
    /// A store error.
    pub async fn unowned(&self, limit: usize) -> Result<Vec<WorkspaceId>, StoreError> {
        let member = self.joined()?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT w.id FROM workspaces w LEFT JOIN leases l ON l.workspace_id = w.id \
             WHERE l.workspace_id IS NULL OR ((l.movable OR l.host = $2) AND NOT (l.owner = $1 AND l.epoch = $3) AND NOT EXISTS ( \
               SELECT 1 FROM daemons d WHERE d.id = l.owner AND d.epoch = l.epoch AND d.expires_at > clock_timestamp())) \
             ORDER BY w.created_seq LIMIT $4",
        )
        .bind(&member.daemon_id)
        .bind(&member.host)
        .bind(i64_of(member.epoch))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.map(e, "unowned leases"))?;
        Ok(ids
            .iter()
            .filter_map(|id| WorkspaceId::parse(id).ok())
            .collect())
    }

    /// Ends this daemon's lease time now (a clean shutdown): other daemons take its
    /// workspaces at their next pass instead of after the lease time.
    ///
    /// # Errors
    /// A store error.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let member = self.joined()?;
        sqlx::query(
            "UPDATE daemons SET expires_at = clock_timestamp() WHERE id = $1 AND epoch = $2",
        )
        .bind(&member.daemon_id)
        .bind(i64_of(member.epoch))
        .execute(&self.pool)
        .await
        .map_err(|e| self.map(e, "daemon leave"))?;
        self.held.write().clear();
        Ok(())
    }

    /// The fleet's daemons.
    ///
    /// # Errors
    /// A store error.
    pub async fn daemons(&self) -> Result<Vec<DaemonRow>, StoreError> {
        self.check_open()?;
        let rows = sqlx::query(
            "SELECT d.id, d.epoch, d.url, d.host, d.expires_at > clock_timestamp(), \
             (SELECT COUNT(*) FROM leases l WHERE l.owner = d.id AND l.epoch = d.epoch) \
             FROM daemons d ORDER BY d.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.map(e, "daemons"))?;
        Ok(rows
            .iter()
            .map(|r| DaemonRow {
                id: r.get(0),
                epoch: u64_of(r.get(1)),
                url: r.get(2),
                host: r.get(3),
                live: r.get(4),
                workspaces: u64_of(r.get(5)),
            })
            .collect())
    }

    /// How long, at most, until an expired lease is noticed: the lease time.
    pub fn lease_ttl(&self) -> Option<Duration> {
        self.member.get().map(|m| m.lease_ttl)
    }
}

impl Ownership for PgStore {
    fn owns(&self, id: &WorkspaceId) -> bool {
        self.holds(id)
    }
}

impl PgStore {
    /// Checks that every daemon of the fleet uses one admin token (requests are
    /// forwarded with the caller's token, so the owner must accept it): stores the
    /// token's SHA-256 `digest` (hex) on first use; returns whether this daemon's
    /// digest is the fleet's.
    ///
    /// # Errors
    /// A store error.
    pub async fn fleet_token(&self, digest: &str) -> Result<bool, StoreError> {
        self.check_open()?;
        let map = |e| self.map(e, "fleet token");
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('admin_token_sha256', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(digest)
        .execute(&self.pool)
        .await
        .map_err(map)?;
        let stored: String =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'admin_token_sha256'")
                .fetch_one(&self.pool)
                .await
                .map_err(map)?;
        Ok(stored == digest)
    }

    /// A listener woken by every event append of any daemon (`LISTEN`
    /// [`crate::EVENTS_CHANNEL`]). A wake-up only: read the events from the table.
    ///
    /// # Errors
    /// A store error.
    pub async fn event_wakes(&self) -> Result<EventWakes, StoreError> {
        self.check_open()?;
        let map = |e| self.map(e, "event listener");
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(map)?;
        listener.listen(crate::EVENTS_CHANNEL).await.map_err(map)?;
        Ok(EventWakes { listener })
    }
}

/// Wake-ups for new events (see [`PgStore::event_wakes`]).
#[derive(Debug)]
pub struct EventWakes {
    listener: sqlx::postgres::PgListener,
}

impl EventWakes {
    /// Waits for the next append. After a lost connection it reconnects and returns at
    /// once (appends may have been missed: read the table).
    ///
    /// # Errors
    /// The connection could not be re-established.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        match self.listener.try_recv().await {
            Ok(_) => Ok(()),
            Err(e) => Err(StoreError::Unavailable {
                message: format!("event listener: {e}"),
            }),
        }
    }
}
