//! The scale-out benchmarks, on a real PostgreSQL: the server named by
//! `BERTH_TEST_POSTGRES_URL`, else a throwaway cluster this run starts with
//! `.ci/postgres` (Debian's server) and removes at the end.
//!
//! P9 (fleet throughput): create→start→stop→delete cycles through the engine with a
//! no-op runtime on the PostgreSQL store, with one daemon and with three daemons (three
//! engines, each its own store and membership, as three processes would be) sharing
//! the database, 8 concurrent workers in all, against the same number of raw
//! single-row PostgreSQL commits from 8 concurrent connections.
//! P10 (failover): three `berth serve` processes on the database and the Docker
//! engine; the owner of 5 running workspaces is killed with SIGKILL; the time until a
//! request for every one of them is answered by another daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_core::Engine;
use berth_core::ports::{Ownership, Store};
use berth_postgres::{MemberOptions, PgOptions, PgStore, testing};
use serde_json::json;

use crate::bench::{Row, TRANSITIONS_PER_CYCLE, median};

/// The PostgreSQL server of this run; stops a cluster it started when dropped.
pub(crate) struct Postgres {
    url: String,
    started: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("started", &self.started)
            .finish()
    }
}

impl Postgres {
    pub(crate) fn up(root: &Path) -> Result<Self> {
        if let Ok(url) = std::env::var(testing::URL_VAR)
            && !url.is_empty()
        {
            return Ok(Self { url, started: None });
        }
        // A Unix socket path must stay short (107 bytes): a temp dir, not the tree.
        let dir = std::env::temp_dir().join(format!("berth-pg-{}", std::process::id()));
        let script = root.join(".ci/postgres");
        let _ = std::process::Command::new(&script)
            .arg("stop")
            .arg(&dir)
            .status();
        let out = std::process::Command::new(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .context("running .ci/postgres")?;
        ensure!(
            out.status.success(),
            "starting a PostgreSQL cluster: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self {
            url: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            started: Some((script, dir)),
        })
    }

    /// The server's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    async fn database(&self) -> Result<String> {
        use sqlx::Connection as _;
        let name = format!("bench_{}", crate::bench::fresh_id());
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(testing::with_database(&self.url, &name))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some((script, dir)) = &self.started {
            let _ = std::process::Command::new(script)
                .arg("stop")
                .arg(dir)
                .status();
        }
    }
}

async fn joined(url: &str, daemon: &str) -> Result<Arc<PgStore>> {
    let store = Arc::new(
        PgStore::connect(
            url,
            PgOptions {
                max_connections: 12,
                ..PgOptions::default()
            },
        )
        .await?,
    );
    store
        .join(MemberOptions {
            daemon_id: daemon.to_owned(),
            url: format!("http://{daemon}.invalid"),
            host: "bench".into(),
            lease_ttl: Duration::from_secs(30),
            pinned_runtimes: Default::default(),
        })
        .await?;
    Ok(store)
}

/// Cycles with `daemons` engines on one fresh database, `workers` in all (spread
/// round-robin); returns seconds.
async fn time_fleet_cycles(
    pg: &Postgres,
    daemons: usize,
    workers: usize,
    per_worker: usize,
) -> Result<f64> {
    let url = pg.database().await?;
    let mut engines: Vec<Engine> = Vec::new();
    for d in 0..daemons {
        let store = joined(&url, &format!("bench-{d}")).await?;
        let engine = crate::bench::engine_on(
            Arc::clone(&store) as Arc<dyn Store>,
            Some((store.fence(), store as Arc<dyn Ownership>)),
        )
        .await?;
        engines.push(engine);
    }
    let secs = crate::bench::timed_workers(&engines, workers, per_worker).await?;
    for e in engines {
        e.shutdown().await;
    }
    Ok(secs)
}

/// `n` single-row commits (one `UPDATE` each, autocommit) from `connections`
/// concurrent connections; returns seconds.
async fn time_raw_commits(pg: &Postgres, n: usize, connections: usize) -> Result<f64> {
    let url = pg.database().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(connections)?)
        .connect(&url)
        .await?;
    sqlx::query("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    for c in 0..connections {
        sqlx::query("INSERT INTO t (id, v) VALUES ($1, '')")
            .bind(i64::try_from(c)?)
            .execute(&pool)
            .await?;
    }
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..connections {
        let pool = pool.clone();
        let each = n / connections;
        set.spawn(async move {
            for i in 0..each {
                sqlx::query("UPDATE t SET v = $1 WHERE id = $2")
                    .bind(i.to_string())
                    .bind(i64::try_from(c).unwrap_or(0))
                    .execute(&pool)
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok(secs)
}

pub(crate) async fn p9(root: &Path, quick: bool) -> Result<Row> {
    let pg = Postgres::up(root)?;
    let runs = if quick { 1 } else { 3 };
    let (workers, per_worker) = if quick { (8, 25) } else { (8, 150) };
    let cycles = workers * per_worker;
    let commits = cycles * TRANSITIONS_PER_CYCLE as usize;
    let (mut one, mut three, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        one.push(cycles as f64 / time_fleet_cycles(&pg, 1, workers, per_worker).await?);
        three.push(cycles as f64 / time_fleet_cycles(&pg, 3, workers, per_worker).await?);
        raw.push(commits as f64 / time_raw_commits(&pg, commits, workers).await?);
    }
    let (one, three, raw) = (median(one), median(three), median(raw));
    // The raw commits' rate expressed in cycles (7 commits each).
    let raw_cycles = raw / f64::from(TRANSITIONS_PER_CYCLE);
    Ok(Row {
        id: "P9",
        case: "fleet throughput: create→start→stop→delete, no-op runtime, PostgreSQL store, 1 and 3 daemons, 8 concurrent".into(),
        berth: format!("{one:.0} cycles/s (1 daemon); {three:.0} cycles/s (3 daemons)"),
        baseline: format!(
            "{raw:.0} raw single-row PostgreSQL commits/s, 8 connections (≈ {raw_cycles:.0} cycles/s at 7 commits a cycle)"
        ),
        ratio: Some(raw_cycles / three),
        target: "recorded (no target yet); ratio = raw-commit cycles ÷ 3-daemon cycles".into(),
        verdict: "recorded".into(),
        extra: json!({ "one_daemon_cycles_per_sec": one, "three_daemons_cycles_per_sec": three, "raw_commits_per_sec": raw, "runs": runs, "workers": workers }),
    })
}

pub(crate) async fn p10(root: &Path, bin: &Path, quick: bool) -> Result<Row> {
    use crate::bench_api::Server;
    let pg = Postgres::up(root)?;
    let image = {
        let out = std::process::Command::new(bin)
            .args(["doctor", "--test-image"])
            .output()?;
        ensure!(
            out.status.success(),
            "P10 needs Docker and the test image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (lease, period) = (Duration::from_secs(2), Duration::from_secs(1));
    let rounds = if quick { 1 } else { 3 };
    let workspaces = 5;
    let mut took = Vec::new();
    for round in 0..rounds {
        let url = pg.database().await?;
        let dir = root.join(format!("target/bench/tmp-p10-{round}"));
        let _ = std::fs::remove_dir_all(&dir);
        let token = "bench-fleet-token-0123456789";
        let lease_s = format!("{}s", lease.as_secs());
        let period_s = format!("{}s", period.as_secs());
        let args = [
            "--store",
            url.as_str(),
            "--token",
            token,
            "--lease-ttl",
            lease_s.as_str(),
            "--reconcile-period",
            period_s.as_str(),
            "--docker-image",
            image.as_str(),
            "--stop-grace",
            "1s",
        ];
        let mut daemons = Vec::new();
        for d in 0..3 {
            daemons.push(Server::start(bin, &dir.join(format!("d{d}")), &args).await?);
        }
        let mut ids = Vec::new();
        for i in 0..workspaces {
            let v = daemons[0]
                .call(
                    reqwest::Method::POST,
                    "/v1/workspaces",
                    Some(json!({"name": format!("p10-{i}"), "runtime": "docker", "command": ["sleep", "3600"]})),
                )
                .await?;
            let id = v["workspace"]["id"].as_str().context("id")?.to_owned();
            daemons[0]
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/workspaces/{id}/wait?state=running&timeout=60s"),
                    None,
                )
                .await?;
            ids.push(id);
        }
        let killed = Instant::now();
        daemons[0].kill9().await?;
        let survivors = &daemons[1..];
        let answered = futures_util::future::join_all(ids.iter().enumerate().map(|(i, id)| {
            let d = &survivors[i % survivors.len()];
            async move {
                d.call(reqwest::Method::GET, &format!("/v1/workspaces/{id}"), None)
                    .await
            }
        }))
        .await;
        let secs = killed.elapsed().as_secs_f64();
        for a in answered {
            let v = a?;
            ensure!(v["state"] == "running", "after failover: {v}");
        }
        took.push(secs);
        for id in &ids {
            let _ = daemons[1]
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/workspaces/{id}?force=true"),
                    None,
                )
                .await;
        }
        drop(daemons);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let t = median(took);
    let bound = (lease + period + Duration::from_secs(1)).as_secs_f64();
    Ok(Row {
        id: "P10",
        case: format!(
            "failover: SIGKILL of the owner of {workspaces} running Docker workspaces, 3 daemons, lease 2s, reconcile period 1s"
        ),
        berth: format!("{t:.2} s until every workspace was served by another daemon"),
        baseline: format!("lease time + one reconcile period + 1 s = {bound:.0} s"),
        ratio: Some(t / bound),
        target: "≤ lease time + one reconcile period + 1 s".into(),
        verdict: if t <= bound {
            "pass".into()
        } else {
            "FAIL".into()
        },
        extra: json!({ "failover_secs": t, "bound_secs": bound, "rounds": rounds }),
    })
}
