//! `cargo xtask bench`: the benchmarks of `targets.md`, each a ratio against a baseline
//! measured in the same run, medians of several runs. Writes `BENCHMARKS.md` and
//! `target/bench/results.json`.
//!
//! P1 / P1-full (engine cycles): create→start→stop→delete cycles through the engine
//! with a no-op runtime and the real SQLite store (`synchronous=NORMAL`, then `FULL`),
//! 8 concurrent and sequential, against (a) one single-row transaction per transition
//! and (b) the same rows in transactions of 8, each transaction one query (as directly
//! as sqlx allows), with the same pragmas. Each run uses fresh files under
//! `target/bench/tmp`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use berth_core::Engine;
use berth_core::engine::EngineConfig;
use berth_core::ids::{EngineId, RuntimeKind, WorkspaceId, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace, OpStatus};
use berth_core::ports::{
    CaptureTarget, DirtyReport, LaunchRequest, OwnedResource, ProcessRuntime, ResourceRef,
    RuntimeError, SessionLaunch, SessionRef, Store, WorkspaceRef,
};
use berth_core::reporter::QueueReporter;
use berth_sqlite::{Durability, SqliteOptions, SqliteStore};
use serde_json::json;

/// State changes (events) in one create→start→stop→delete cycle.
pub(crate) const TRANSITIONS_PER_CYCLE: u32 = 7;

/// One line of BENCHMARKS.md.
pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) case: String,
    pub(crate) berth: String,
    pub(crate) baseline: String,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: String,
    pub(crate) verdict: String,
    pub(crate) extra: serde_json::Value,
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    if cfg!(debug_assertions) {
        // Measure optimised code only.
        let mut forwarded = vec![
            "run",
            "--release",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
        ];
        forwarded.extend(args.iter().map(String::as_str));
        return crate::run(root, "cargo", &forwarded);
    }
    let quick = args.iter().any(|a| a == "--quick");
    // `cargo xtask bench P5 P7` runs only those cases (and prints, not records, them).
    let only: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.to_uppercase())
        .collect();
    let wanted = |id: &str| only.is_empty() || only.iter().any(|o| o == id);
    let bin = crate::bench_api::berth_binary(root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = runtime
        .block_on(async {
            let mut rows = Vec::new();
            // P6 first: its RSS is that of a process that has done nothing else (the
            // heap the other cases leave behind is not returned to the system, and
            // counted 354 MiB where P6 alone measures about 235).
            if wanted("P6") {
                rows.push(p6(root, quick).await);
            }
            if wanted("P1") || wanted("P1-FULL") {
                match p1_rows(root, quick).await {
                    Ok(both) => rows.extend(both.into_iter().map(Ok)),
                    Err(e) => rows.push(Err(e)),
                }
            }
            if wanted("P2") {
                rows.push(p2(root, quick).await);
            }
            if wanted("P3") {
                rows.push(p3(root, quick).await);
            }
            if wanted("P4") {
                rows.push(p4(root, quick).await);
            }
            if wanted("P5") {
                rows.push(crate::bench_api::p5(root, &bin, quick).await);
            }
            if wanted("P7") {
                rows.push(crate::bench_api::p7(root, &bin, quick).await);
            }
            if wanted("P8") {
                rows.push(crate::bench_api::p8(root, &bin, quick).await);
            }
            if wanted("P9") {
                rows.push(crate::bench_pg::p9(root, quick).await);
            }
            if wanted("P10") {
                rows.push(crate::bench_pg::p10(root, &bin, quick).await);
            }
            if wanted("P11") {
                rows.push(crate::bench_pool::p11(root, &bin, quick).await);
            }
            rows
        })
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    if !only.is_empty() {
        for r in &rows {
            eprintln!(
                "{} {}: {} | {} | {} | {}",
                r.id,
                r.case,
                r.berth,
                r.baseline,
                r.ratio
                    .map_or_else(|| "—".to_owned(), |x| format!("{x:.2}×")),
                r.verdict
            );
        }
        return Ok(());
    }
    write_results(root, &rows, quick)
}

/// The engine P1 measures: no-op runtime (launch and stop take no time).
async fn engine(store: Arc<dyn Store>) -> Result<Engine> {
    engine_with(store, Arc::new(MemoryRuntime::new(Duration::ZERO))).await
}

/// One create→start→stop→delete cycle of workspace `name`; every op must succeed.
async fn full_cycle(
    engine: &Engine,
    name: &str,
    runtime: &str,
    spec: berth_core::model::WorkspaceSpec,
) -> Result<()> {
    let ws = engine
        .create(CreateWorkspace {
            name: WorkspaceName::parse(name)?,
            runtime: RuntimeKind::parse(runtime)?,
            spec,
            actor: Actor::Api,
        })
        .await?;
    let op = engine.start(&ws.id, Actor::Api).await?.wait().await?;
    anyhow::ensure!(op.status == OpStatus::Succeeded, "start failed: {op:?}");
    let op = engine.stop(&ws.id, Actor::Api).await?.wait().await?;
    anyhow::ensure!(op.status == OpStatus::Succeeded, "stop failed: {op:?}");
    let op = engine
        .delete(&ws.id, true, Actor::Api)
        .await?
        .wait()
        .await?;
    anyhow::ensure!(op.status == OpStatus::Succeeded, "delete failed: {op:?}");
    Ok(())
}

pub(crate) async fn cycles(engine: &Engine, worker: usize, n: usize) -> Result<()> {
    for i in 0..n {
        full_cycle(
            engine,
            &format!("w{worker}-{i}"),
            "noop",
            Default::default(),
        )
        .await?;
    }
    Ok(())
}

/// Engine cycles, `workers` concurrent sequences of `per_worker` cycles; returns
/// seconds, and how many writes the store's group committer put in each transaction.
async fn time_cycles(
    dir: &Path,
    workers: usize,
    per_worker: usize,
    durability: Durability,
) -> Result<(f64, f64)> {
    let store = Arc::new(
        SqliteStore::open(
            dir.join(format!("engine-{workers}-{per_worker}-{}.db", fresh())),
            SqliteOptions {
                durability,
                ..SqliteOptions::default()
            },
        )
        .await?,
    );
    let engine = engine(store.clone()).await?;
    let secs = timed_workers(std::slice::from_ref(&engine), workers, per_worker).await?;
    let stats = store.commit_stats();
    engine.shutdown().await;
    Ok((secs, stats.writes as f64 / stats.batches.max(1) as f64))
}

/// The same cycles on the in-memory store of the testkit (no storage at all): what the
/// engine itself costs. Returns seconds.
async fn time_memory_cycles(workers: usize, per_worker: usize) -> Result<f64> {
    let engine = engine(Arc::new(berth_core::testkit::MemoryStore::new())).await?;
    let secs = timed_workers(std::slice::from_ref(&engine), workers, per_worker).await?;
    engine.shutdown().await;
    Ok(secs)
}

/// `workers` concurrent sequences of `per_worker` cycles, spread round-robin over
/// `engines`; returns seconds.
pub(crate) async fn timed_workers(
    engines: &[Engine],
    workers: usize,
    per_worker: usize,
) -> Result<f64> {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let e = engines[w % engines.len()].clone();
        set.spawn(async move { cycles(&e, w, per_worker).await });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The baselines: `n` committed single-row SQLite transactions with the store's pragmas
/// (WAL, the given synchronous mode, busy timeout, foreign keys), no engine, each
/// transaction sent as one query (`BEGIN IMMEDIATE; UPDATE …; COMMIT`, one round trip)
/// on a connection held for the whole run (as directly as sqlx allows: taking it from
/// the pool per transaction adds a task hop that costs more than the write on a fast
/// machine, as berth's committer, which holds its own, knows); `per_tx` rows per transaction (1: baseline (a); 8:
/// baseline (b), the same rows batched). Returns seconds.
async fn time_raw_commits(dir: &Path, n: u32, per_tx: u32, durability: Durability) -> Result<f64> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    let options = SqliteConnectOptions::new()
        .filename(dir.join(format!("raw-{}.db", fresh())))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        })
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO t (id, v) VALUES (1, '')")
        .execute(&pool)
        .await?;
    let mut sql = String::from("BEGIN IMMEDIATE;");
    for _ in 0..per_tx {
        sql.push_str("UPDATE t SET v = ? WHERE id = 1;");
    }
    sql.push_str("COMMIT;");
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    for i in 0..n.div_ceil(per_tx) {
        let mut q = sqlx::query(&sql);
        for k in 0..per_tx {
            q = q.bind((i * per_tx + k).to_string());
        }
        q.execute(&mut *conn).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(conn);
    pool.close().await;
    Ok(secs)
}

/// A number no other call of this process returned (fresh names).
pub(crate) fn fresh_id() -> String {
    format!("{}_{}", std::process::id(), fresh())
}

fn fresh() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// P1 and P1-full: engine cycles with the no-op runtime on SQLite in each durability
/// mode, against baselines (a) one single-row transaction per transition and (b) the
/// same rows in transactions of 8, both sent as directly as sqlx allows.
async fn p1_rows(root: &Path, quick: bool) -> Result<Vec<Row>> {
    let dir = root.join("target/bench/tmp");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let runs = if quick { 3 } else { 5 };
    let sequential = if quick { 300 } else { 1_000 };
    let (workers, per_worker) = if quick { (8, 100) } else { (8, 500) };
    let mut rows = Vec::new();
    // The engine alone, for the attribution of P1's figures (not a target).
    let (mut alone_seq, mut alone_cps) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let n = sequential as u32 * TRANSITIONS_PER_CYCLE;
        alone_seq.push(time_memory_cycles(1, sequential).await? / f64::from(n));
        alone_cps
            .push((workers * per_worker) as f64 / time_memory_cycles(workers, per_worker).await?);
    }
    let (alone_seq, alone_cps) = (median(alone_seq), median(alone_cps));
    for durability in [Durability::Normal, Durability::Full] {
        let (mut per_transition, mut base_a, mut base_b, mut throughput, mut batch) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let n = sequential as u32 * TRANSITIONS_PER_CYCLE;
            let (secs, _) = time_cycles(&dir, 1, sequential, durability).await?;
            per_transition.push(secs / f64::from(n));
            base_a.push(time_raw_commits(&dir, n, 1, durability).await? / f64::from(n));
            base_b.push(time_raw_commits(&dir, n, 8, durability).await? / f64::from(n));
            let (secs, per_batch) = time_cycles(&dir, workers, per_worker, durability).await?;
            throughput.push((workers * per_worker) as f64 / secs);
            batch.push(per_batch);
        }
        let (t, a, b, cps, per_batch) = (
            median(per_transition),
            median(base_a),
            median(base_b),
            median(throughput),
            median(batch),
        );
        let ratio = t / a;
        let c = f64::from(TRANSITIONS_PER_CYCLE);
        let (ceiling_a, ceiling_b) = (1.0 / (a * c), 1.0 / (b * c));
        let row = match durability {
            Durability::Normal => {
                let verdict = match (ratio <= 3.0, cps >= 5_000.0) {
                    (true, true) => "pass",
                    (false, true) => "FAIL (sequential above 3× (a))",
                    (true, false) => "FAIL (below 5,000 cycles/s)",
                    (false, false) => "FAIL (sequential above 3× (a); below 5,000 cycles/s)",
                };
                Row {
                    id: "P1",
                    case: "engine cycles: create→start→stop→delete, no-op runtime, SQLite synchronous=NORMAL".into(),
                    berth: format!("{cps:.0} cycles/s (8 concurrent, {per_batch:.1} writes per transaction); {:.1} µs/transition sequential; the engine alone on the in-memory store: {alone_cps:.0} cycles/s, {:.1} µs/transition", t * 1e6, alone_seq * 1e6),
                    baseline: format!("(a) {:.1} µs per single-row transaction (≈ {ceiling_a:.0} cycles/s at 7 a cycle); (b) {:.1} µs per row in transactions of 8 (≈ {ceiling_b:.0} cycles/s)", a * 1e6, b * 1e6),
                    ratio: Some(ratio),
                    target: "≥ 5,000 cycles/s; sequential ≤ 3× (a)".into(),
                    verdict: verdict.into(),
                    extra: json!({ "cycles_per_sec": cps, "writes_per_transaction": per_batch, "per_transition_us": t * 1e6, "baseline_a_us": a * 1e6, "baseline_b_us": b * 1e6, "ratio_to_b": t / b, "engine_alone_cycles_per_sec": alone_cps, "engine_alone_per_transition_us": alone_seq * 1e6, "runs": runs, "store": "sqlite (WAL, synchronous=NORMAL)" }),
                }
            }
            Durability::Full => Row {
                id: "P1-full",
                case: "engine cycles as P1, SQLite synchronous=FULL (every acknowledged write on disk)".into(),
                berth: format!("{cps:.0} cycles/s (8 concurrent, {per_batch:.1} writes per transaction); {:.1} µs/transition sequential", t * 1e6),
                baseline: format!("(a) {:.1} µs per single-row transaction (≈ {ceiling_a:.0} cycles/s); (b) {:.1} µs per row in transactions of 8 (≈ {ceiling_b:.0} cycles/s)", a * 1e6, b * 1e6),
                ratio: Some(ratio),
                target: "≥ 2,000 cycles/s".into(),
                verdict: if cps >= 2_000.0 { "pass".into() } else { "FAIL (below 2,000 cycles/s)".into() },
                extra: json!({ "cycles_per_sec": cps, "writes_per_transaction": per_batch, "per_transition_us": t * 1e6, "baseline_a_us": a * 1e6, "baseline_b_us": b * 1e6, "runs": runs, "store": "sqlite (WAL, synchronous=FULL)" }),
            },
        };
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

async fn tmux(socket: &Path, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .arg("-f")
        .arg("/dev/null")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Kills the tmux servers at these sockets when dropped.
struct KillServers(Vec<std::path::PathBuf>);

impl Drop for KillServers {
    fn drop(&mut self) {
        for socket in &self.0 {
            let _ = std::process::Command::new("tmux")
                .arg("-S")
                .arg(socket)
                .arg("kill-server")
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// P2: a tmux workspace through berth (engine, SQLite store, tmux runtime):
/// create+start then stop+delete, against `tmux new-session -d` + `tmux kill-session`
/// by CLI, and beside them the floor of a graceful cycle (see
/// [`crate::bench_tmux::Control::graceful_cycle`]). Both servers are kept warm by an
/// idle session.
async fn p2(root: &Path, quick: bool) -> Result<Row> {
    use berth_tmux::{TmuxConfig, TmuxRuntime};
    let dir = root.join("target/bench/tmp-p2");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cycles = if quick { 10 } else { 40 };
    let raw_sock = dir.join("raw.sock");
    let data = dir.join("berth");
    let runtime = Arc::new(TmuxRuntime::new(TmuxConfig::new(&data)));
    // Both servers go, with whatever they run, however the case ends.
    let servers = KillServers(vec![raw_sock.clone(), runtime.socket().to_owned()]);
    tmux(
        &raw_sock,
        &["new-session", "-d", "-s", "keep", "sleep 3600"],
    )
    .await?;

    let store = Arc::new(SqliteStore::open_in(&data, SqliteOptions::default()).await?);
    let config = EngineConfig {
        reconcile_period: None,
        stop_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let engine = Engine::builder()
        .store(store)
        .runtime(runtime.clone())
        .reporter(Arc::new(QueueReporter::new(1 << 16, vec![])))
        .config(config)
        .build()
        .await?;
    tmux(
        runtime.socket(),
        &["new-session", "-d", "-s", "keep", "sleep 3600"],
    )
    .await?;
    // The floor: what any tmux-backed runtime must do for a graceful cycle, through one
    // control-mode client (no tmux process per command) and nothing else: no store, no
    // launcher, no token, no log, no fencing. On the CLI's server, which keeps exit
    // codes as berth's does.
    tmux(&raw_sock, &["set-option", "-g", "remain-on-exit", "on"]).await?;
    let mut control = crate::bench_tmux::Control::attach(&raw_sock, "keep").await?;
    // Side by side: one cycle of each per round, in an order that rotates, so a change
    // in the machine's speed during the case weighs on all alike.
    let (mut berth, mut raw, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..cycles {
        for k in 0..3 {
            let started = Instant::now();
            match (i + k) % 3 {
                0 => {
                    let spec = berth_core::model::WorkspaceSpec {
                        command: vec!["sleep".into(), "3600".into()],
                        ..Default::default()
                    };
                    full_cycle(&engine, &format!("p2-{i}"), "tmux", spec).await?;
                    berth.push(started.elapsed().as_secs_f64());
                }
                1 => {
                    let name = format!("raw-{i}");
                    tmux(&raw_sock, &["new-session", "-d", "-s", &name, "sleep 3600"]).await?;
                    tmux(&raw_sock, &["kill-session", "-t", &format!("={name}")]).await?;
                    raw.push(started.elapsed().as_secs_f64());
                }
                _ => {
                    control.graceful_cycle(&format!("floor-{i}")).await?;
                    floor.push(started.elapsed().as_secs_f64());
                }
            }
        }
    }
    drop(control);
    engine.shutdown().await;
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    // The slowest cycle too: a median hides a stop that takes its whole grace.
    let slowest = berth.iter().copied().fold(0.0, f64::max);
    let (b, r, f) = (median(berth), median(raw), median(floor));
    let ratio = b / r;
    let verdict = if ratio <= 0.6 {
        "pass"
    } else {
        "FAIL (above 0.6×)"
    };
    Ok(Row {
        id: "P2",
        case: "tmux workspace: create+start, stop+delete (engine, SQLite store, tmux runtime)"
            .into(),
        berth: format!(
            "{:.2} ms/cycle (median); slowest {:.2} ms",
            b * 1e3,
            slowest * 1e3
        ),
        baseline: format!(
            "{:.2} ms/cycle (`tmux new-session -d` + `tmux kill-session`); floor {:.2} ms = {:.2}× (one control-mode client: new-session, SIGTERM, wait for the exit, kill-session; nothing stored)",
            r * 1e3,
            f * 1e3,
            f / r
        ),
        ratio: Some(ratio),
        target: "≤ 0.6×".into(),
        verdict: verdict.into(),
        extra: json!({ "berth_ms": b * 1e3, "berth_slowest_ms": slowest * 1e3, "raw_cli_ms": r * 1e3, "floor_ms": f * 1e3, "cycles": cycles }),
    })
}

async fn cli(program: &str, args: &[&str], dir: &Path) -> Result<()> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// P3: a docker workspace through berth (engine, SQLite store, Docker runtime, the
/// busybox test image): create+start then stop+delete, against `docker run -d` +
/// `docker rm -f` and against `docker-compose up -d` + `down` for one service.
/// `cycles` create→start→stop→remove sequences straight on the Engine API; seconds each.
/// One create, start, stop, remove of a container through the Engine API (bollard, as
/// berth uses it), no engine and no store; returns seconds.
async fn raw_api_cycle(docker: &bollard::Docker, image: &str) -> Result<f64> {
    use bollard::container::{
        Config, CreateContainerOptions, RemoveContainerOptions, StartContainerOptions,
        StopContainerOptions,
    };
    let name = format!("berth-bench-p3-api-{}", fresh_id());
    let started = Instant::now();
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: name.as_str(),
                platform: None,
            }),
            Config {
                image: Some(image),
                cmd: Some(vec!["sleep", "3600"]),
                host_config: Some(bollard::models::HostConfig {
                    init: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
    docker
        .start_container(&name, None::<StartContainerOptions<String>>)
        .await?;
    docker
        .stop_container(&name, Some(StopContainerOptions { t: 5 }))
        .await?;
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// One `docker run -d` + `docker rm -f`; returns seconds.
async fn cli_cycle(image: &str, dir: &Path) -> Result<f64> {
    let name = format!("berth-bench-p3-cli-{}", fresh_id());
    let started = Instant::now();
    cli(
        "docker",
        &["run", "-d", "--name", &name, image, "sleep", "3600"],
        dir,
    )
    .await?;
    cli("docker", &["rm", "-f", &name], dir).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn p3(root: &Path, quick: bool) -> Result<Row> {
    use berth_docker::{DockerConfig, DockerRuntime, test_image};
    let dir = root.join("target/bench/tmp-p3");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cycles = if quick { 3 } else { 10 };
    let prefix = format!("bench.berth.p3{}", fresh());
    let runtime = Arc::new(DockerRuntime::new(DockerConfig {
        label_prefix: prefix.clone(),
        ..DockerConfig::default()
    }));
    let image = test_image::ensure_test_image(&runtime).await?;

    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            "version: \"3\"\nservices:\n  app:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n"
        ),
    )?;
    // docker-compose (v1, Python) takes seconds per cycle: three give a median.
    let mut compose = Vec::new();
    for i in 0..cycles.min(3) {
        let project = format!("berthbenchp3{i}x{}", fresh());
        let started = Instant::now();
        cli("docker-compose", &["-p", &project, "up", "-d"], &dir).await?;
        cli("docker-compose", &["-p", &project, "down"], &dir).await?;
        compose.push(started.elapsed().as_secs_f64());
    }

    let data = dir.join("berth");
    let store = Arc::new(SqliteStore::open_in(&data, SqliteOptions::default()).await?);
    let engine = Engine::builder()
        .store(store)
        .runtime(runtime.clone())
        .reporter(Arc::new(QueueReporter::new(1 << 16, vec![])))
        .config(EngineConfig {
            reconcile_period: None,
            stop_grace: Duration::from_secs(5),
            ..EngineConfig::default()
        })
        .build()
        .await?;
    // The Engine API itself, through the same client library berth uses (bollard), no
    // engine and no store: create (with an init, as berth's containers have), start,
    // stop, remove. The limit berth's Docker path can approach.
    let docker = bollard::Docker::connect_with_defaults()?
        .negotiate_version()
        .await?;
    // Side by side: each round runs one cycle of berth, the Engine API and the CLI, in
    // an order that rotates, so a change in the machine's or the Docker daemon's speed
    // during the case weighs on all three alike.
    let (mut berth, mut api, mut cli_times) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..cycles {
        for k in 0..3 {
            match (i + k) % 3 {
                0 => {
                    let spec = berth_core::model::WorkspaceSpec {
                        command: vec!["sleep".into(), "3600".into()],
                        image: Some(image.clone()),
                        ..Default::default()
                    };
                    let started = Instant::now();
                    full_cycle(&engine, &format!("p3-{i}"), "docker", spec).await?;
                    berth.push(started.elapsed().as_secs_f64());
                }
                1 => api.push(raw_api_cycle(&docker, &image).await?),
                _ => cli_times.push(cli_cycle(&image, &dir).await?),
            }
        }
    }
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let (b, c, k, a) = (
        median(berth),
        median(cli_times),
        median(compose),
        median(api),
    );
    let (vs_cli, vs_compose, vs_api) = (b / c, b / k, b / a);
    let verdict = match (vs_api <= 1.15, vs_cli <= 0.6) {
        (true, true) => "pass",
        (false, true) => "FAIL (above 1.15× the Engine API)",
        (true, false) => "FAIL (above 0.6× the CLI)",
        (false, false) => "FAIL (above 1.15× the Engine API; above 0.6× the CLI)",
    };
    Ok(Row {
        id: "P3",
        case: "docker workspace: create+start, stop+delete (engine, SQLite store, Docker runtime, busybox test image)".into(),
        berth: format!("{:.1} ms/cycle", b * 1e3),
        baseline: format!(
            "{:.1} ms/cycle (Engine API through bollard: create, start, stop, remove; {vs_api:.2}×); {:.1} ms/cycle (`docker run -d` + `docker rm -f`, {vs_cli:.2}×); {:.1} ms/cycle (`docker-compose up -d` + `down`, {vs_compose:.2}×)",
            a * 1e3,
            c * 1e3,
            k * 1e3,
        ),
        ratio: Some(vs_api),
        target: "≤ 1.15× the Engine API; ≤ 0.6× the CLI".into(),
        verdict: verdict.into(),
        extra: json!({ "berth_ms": b * 1e3, "api_ms": a * 1e3, "cli_ms": c * 1e3, "compose_ms": k * 1e3, "vs_api": vs_api, "vs_cli": vs_cli, "vs_compose": vs_compose, "cycles": cycles }),
    })
}

/// The benchmarks' runtime: it remembers what it launched (so reconciliation sees it),
/// takes `delay` per launch and per stop (zero: the no-op runtime of P1 and P6), and
/// counts launches.
#[derive(Debug)]
struct MemoryRuntime {
    delay: Duration,
    live: parking_lot::Mutex<std::collections::HashMap<WorkspaceId, berth_core::ids::Incarnation>>,
    launches: std::sync::atomic::AtomicUsize,
}

impl MemoryRuntime {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            live: Default::default(),
            launches: Default::default(),
        }
    }

    /// Takes `delay`; a zero delay returns at once (a zero sleep still waits for a
    /// timer tick).
    async fn pause(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[async_trait]
impl ProcessRuntime for MemoryRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::parse("noop").unwrap_or_else(|_| unreachable!("a valid name"))
    }
    fn check_spec(
        &self,
        _: &berth_core::model::WorkspaceSpec,
    ) -> Result<(), berth_core::ports::SpecRefusal> {
        Ok(())
    }
    async fn inspect_session(&self, _: &SessionRef) -> Result<Option<OwnedResource>, RuntimeError> {
        Ok(None)
    }
    async fn prepare(&self, _: &WorkspaceRef) -> Result<Option<String>, RuntimeError> {
        Ok(None)
    }
    async fn launch(&self, r: &LaunchRequest) -> Result<(), RuntimeError> {
        self.pause().await;
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.live
            .lock()
            .insert(r.resource.workspace_id.clone(), r.resource.incarnation);
        Ok(())
    }
    async fn stop(&self, r: &ResourceRef, _: Duration) -> Result<(), RuntimeError> {
        self.pause().await;
        self.live.lock().remove(&r.workspace_id);
        Ok(())
    }
    async fn remove(&self, r: &ResourceRef) -> Result<(), RuntimeError> {
        self.live.lock().remove(&r.workspace_id);
        Ok(())
    }
    async fn cleanup(&self, _: &WorkspaceRef) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn inspect(
        &self,
        _: &EngineId,
        w: &WorkspaceId,
    ) -> Result<Option<OwnedResource>, RuntimeError> {
        Ok(self.live.lock().get(w).map(|i| owned(w, *i)))
    }
    async fn list_owned(&self, _: &EngineId) -> Result<Vec<OwnedResource>, RuntimeError> {
        Ok(self.live.lock().iter().map(|(w, i)| owned(w, *i)).collect())
    }
    async fn launch_session(&self, _: &SessionLaunch) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn stop_session(&self, _: &SessionRef, _: Duration) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn capture(&self, _: &CaptureTarget, _: usize) -> Result<Vec<String>, RuntimeError> {
        Ok(vec![])
    }
    async fn dirty_check(&self, _: &WorkspaceRef) -> Result<DirtyReport, RuntimeError> {
        Ok(DirtyReport::Clean)
    }
}

fn owned(w: &WorkspaceId, i: berth_core::ids::Incarnation) -> OwnedResource {
    OwnedResource {
        workspace_id: w.clone(),
        incarnation: i,
        kind: berth_core::ports::ResourceKind::Main,
        created_at: chrono::Utc::now(),
        status: berth_core::ports::ProcessStatus::Running,
    }
}

async fn engine_with(store: Arc<dyn Store>, runtime: Arc<MemoryRuntime>) -> Result<Engine> {
    engine_built(store, runtime, None).await
}

/// The no-op engine of P1 on `store`, with a fleet member's fence and ownership.
pub(crate) async fn engine_on(
    store: Arc<dyn Store>,
    fleet: Option<(
        berth_core::ports::Fence,
        Arc<dyn berth_core::ports::Ownership>,
    )>,
) -> Result<Engine> {
    engine_built(store, Arc::new(MemoryRuntime::new(Duration::ZERO)), fleet).await
}

async fn engine_built(
    store: Arc<dyn Store>,
    runtime: Arc<MemoryRuntime>,
    fleet: Option<(
        berth_core::ports::Fence,
        Arc<dyn berth_core::ports::Ownership>,
    )>,
) -> Result<Engine> {
    let config = EngineConfig {
        reconcile_period: None,
        ..EngineConfig::default()
    };
    let mut builder = Engine::builder();
    if let Some((fence, ownership)) = fleet {
        builder = builder.fence(fence).ownership(ownership);
    }
    Ok(builder
        .store(store)
        .runtime(runtime)
        .reporter(Arc::new(QueueReporter::new(1 << 16, vec![])))
        .config(config)
        .build()
        .await?)
}

/// P4: 100 concurrent restarts of one workspace against one restart, runtime stop and
/// launch taking 20 ms each, SQLite store.
async fn p4(root: &Path, quick: bool) -> Result<Row> {
    let dir = root.join("target/bench/tmp-p4");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let runs = if quick { 3 } else { 5 };
    let (mut single, mut storm, mut cycles) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let runtime = Arc::new(MemoryRuntime::new(Duration::from_millis(20)));
        let store = Arc::new(
            SqliteStore::open(dir.join(format!("p4-{run}.db")), SqliteOptions::default()).await?,
        );
        let engine = engine_with(store, runtime.clone()).await?;
        let ws = engine
            .create(CreateWorkspace {
                name: WorkspaceName::parse("storm")?,
                runtime: RuntimeKind::parse("noop")?,
                spec: Default::default(),
                actor: Actor::Api,
            })
            .await?;
        engine.start(&ws.id, Actor::Api).await?.wait().await?;
        let started = Instant::now();
        engine.restart(&ws.id, Actor::Api).await?.wait().await?;
        single.push(started.elapsed().as_secs_f64());
        let before = runtime.launches.load(std::sync::atomic::Ordering::SeqCst);
        let started = Instant::now();
        let mut tickets = Vec::new();
        for _ in 0..100 {
            tickets.push(engine.restart(&ws.id, Actor::Api).await?);
        }
        for t in tickets {
            let op = t.wait().await?;
            anyhow::ensure!(op.status == OpStatus::Succeeded, "restart failed: {op:?}");
        }
        storm.push(started.elapsed().as_secs_f64());
        cycles.push((runtime.launches.load(std::sync::atomic::Ordering::SeqCst) - before) as f64);
        engine.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (s1, s100, c) = (median(single), median(storm), median(cycles));
    let ratio = s100 / s1;
    let verdict = if c <= 2.0 && ratio <= 2.2 {
        "pass"
    } else {
        "FAIL"
    };
    Ok(Row {
        id: "P4",
        case: "restart storm: 100 concurrent restarts of one workspace (runtime stop/launch 20 ms each, SQLite)".into(),
        berth: format!("{:.1} ms wall, {c:.0} runtime cycles", s100 * 1e3),
        baseline: format!("{:.1} ms (one restart)", s1 * 1e3),
        ratio: Some(ratio),
        target: "≤ 2 runtime cycles; wall ≤ 2.2×".into(),
        verdict: verdict.into(),
        extra: json!({ "storm_ms": s100 * 1e3, "single_ms": s1 * 1e3, "runtime_cycles": c }),
    })
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// P6: 10,000 running workspaces (no-op runtime that lists what it launched, SQLite):
/// RSS, one reconcile pass, boot recovery.
async fn p6(root: &Path, quick: bool) -> Result<Row> {
    let dir = root.join("target/bench/tmp-p6");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let n = if quick { 10_000 } else { 100_000 };
    let runtime = Arc::new(MemoryRuntime::new(Duration::ZERO));
    let path = dir.join("p6.db");
    let store = Arc::new(SqliteStore::open(&path, SqliteOptions::default()).await?);
    let engine = engine_with(store, runtime.clone()).await?;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..8 {
        let e = engine.clone();
        set.spawn(async move {
            for i in (w..n).step_by(8) {
                let ws = e
                    .create(CreateWorkspace {
                        name: WorkspaceName::parse(&format!("s{i}"))?,
                        runtime: RuntimeKind::parse("noop")?,
                        spec: Default::default(),
                        actor: Actor::Api,
                    })
                    .await?;
                e.start(&ws.id, Actor::Api).await?.wait().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let rss = rss_mib();
    let mut passes = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let report = engine.reconcile().await;
        passes.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            report.missing == 0 && report.listing_failures == 0,
            "reconcile changed things: {report:?}"
        );
    }
    // A client paging through the whole list, 100 a page: every page's latency.
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let started = Instant::now();
        let page = engine
            .list(berth_core::engine::ListQuery {
                state: None,
                runtime: None,
                after: after.clone(),
                limit: 100,
            })
            .await?;
        pages.push(started.elapsed().as_secs_f64());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut sorted = pages.clone();
    sorted.sort_by(f64::total_cmp);
    let list_p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    engine.shutdown().await;
    let started = Instant::now();
    let store = Arc::new(SqliteStore::open(&path, SqliteOptions::default()).await?);
    let again = engine_with(store, runtime).await?;
    let boot = started.elapsed().as_secs_f64();
    again.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let pass = median(passes);
    let ok = rss < 300.0 && pass < 1.0 && boot < 5.0 && list_p99 < 0.05;
    Ok(Row {
        id: "P6",
        case: format!("scale: {n} running workspaces, no-op runtime, SQLite"),
        berth: format!(
            "RSS {rss:.0} MiB; reconcile pass {:.0} ms; boot recovery {:.0} ms; list page (100) p99 {:.1} ms",
            pass * 1e3,
            boot * 1e3,
            list_p99 * 1e3
        ),
        baseline: "—".into(),
        ratio: None,
        target: "RSS < 300 MiB; pass < 1 s; boot < 5 s; list page p99 < 50 ms".into(),
        verdict: if ok { "pass" } else { "FAIL" }.into(),
        extra: json!({ "workspaces": n, "rss_mib": rss, "reconcile_pass_ms": pass * 1e3, "boot_recovery_ms": boot * 1e3, "list_page_p99_ms": list_p99 * 1e3, "pages": pages.len() }),
    })
}

fn write_results(root: &Path, rows: &[Row], quick: bool) -> Result<()> {
    let mut md = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` (release build, medians of several runs, every figure a ratio against a baseline measured in the same run on the same machine). Targets: `../shared/design/targets.md`.\n\n| case | berth median | baseline median | ratio | target | verdict |\n|---|---|---|---|---|---|\n",
    );
    let mut results = BTreeMap::new();
    // In case order (P6 runs first), P1, P1-full, P2, …, P11.
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| {
        let digits: String = r.id[1..].chars().take_while(char::is_ascii_digit).collect();
        (digits.parse::<u32>().unwrap_or(u32::MAX), r.id)
    });
    for r in rows {
        let ratio = r
            .ratio
            .map_or_else(|| "—".to_owned(), |x| format!("{x:.2}×"));
        md.push_str(&format!(
            "| {} {} | {} | {} | {} | {} | {} |\n",
            r.id, r.case, r.berth, r.baseline, ratio, r.target, r.verdict
        ));
        results.insert(r.id, json!({ "case": r.case, "berth": r.berth, "baseline": r.baseline, "ratio": r.ratio, "target": r.target, "verdict": r.verdict, "figures": r.extra }));
    }
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    );
    let mode = if quick {
        "a --quick run (fewer cycles; P6 with 2,000 workspaces), not for the record"
    } else {
        "a full run"
    };
    md.push_str(&format!("\nMachine: {machine}. These figures are from {mode}. Reproduce with `cargo xtask bench` (`--quick` for a short run).\n"));
    std::fs::write(root.join("BENCHMARKS.md"), md).context("writing BENCHMARKS.md")?;
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    eprintln!("{}", std::fs::read_to_string(root.join("BENCHMARKS.md"))?);
    Ok(())
}
