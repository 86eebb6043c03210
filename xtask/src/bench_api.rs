//! The benchmarks that drive the real `berth serve` (release build) from this process
//! over HTTP on loopback: the load comes from a second process, as targets.md asks.
//!
//! P5 (API read): `GET /v1/workspaces/{id}` with 10,000 workspaces stored against
//! `GET /healthz` on the same server, same client, same concurrency; and the p99 of a
//! list page. P7 (event fan-out): 5,000 SSE subscribers, every one must receive every
//! event; delivery latency is the event's commit time (its `at`) to its arrival.
//! P8 (shutdown): SIGTERM with 100 ops in flight; the time to exit against the drain
//! deadline, and the engine tasks alive at exit (the daemon's last line says).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_core::Engine;
use berth_core::engine::EngineConfig;
use berth_core::ids::{RuntimeKind, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace};
use berth_core::ports::SystemClock;
use berth_core::reporter::QueueReporter;
use berth_sqlite::{SqliteOptions, SqliteStore};
use berth_tmux::{TmuxConfig, TmuxRuntime};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::bench::{Row, median};

/// A `berth serve` child on a free port in its own data directory; killed (with its
/// tmux server) on drop.
pub(crate) struct Server {
    child: Option<Child>,
    lines: Option<tokio::io::Lines<BufReader<tokio::process::ChildStdout>>>,
    dir: PathBuf,
    pub(crate) url: String,
    token: String,
    http: reqwest::Client,
}

impl Server {
    pub(crate) async fn start(bin: &Path, dir: &Path, extra: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("BERTH_TOKEN")
            .env("BERTH_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning berth serve")?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("berth serve printed nothing in 30 s")??
            .context("berth serve exited before printing its URL")?;
        let given = extra
            .iter()
            .position(|a| *a == "--token")
            .and_then(|i| extra.get(i + 1));
        let token = match given {
            Some(t) => (*t).to_owned(),
            None => std::fs::read_to_string(dir.join("state/admin.token"))?
                .trim()
                .to_owned(),
        };
        let server = Self {
            child: Some(child),
            lines: Some(lines),
            dir: dir.to_owned(),
            url,
            token,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()?,
        };
        let began = Instant::now();
        loop {
            let status = server
                .http
                .get(format!("{}/readyz", server.url))
                .bearer_auth(&server.token)
                .send()
                .await?
                .status();
            if status.is_success() {
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(60),
                "berth serve not ready after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "{path}: {status} {value}");
        Ok(value)
    }

    /// SIGKILL, reaped: the daemon ends with no shutdown at all.
    pub(crate) async fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// SIGTERM; waits for the exit and returns (seconds to exit, exit code, the last
    /// line printed).
    async fn terminate(&mut self) -> Result<(f64, Option<i32>, String)> {
        let mut child = self.child.take().context("not running")?;
        let pid = i32::try_from(child.id().context("no pid")?)?;
        let mut lines = self.lines.take().context("no stdout")?;
        let began = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
            .await
            .context("berth did not exit within 120 s of SIGTERM")??;
        let took = began.elapsed().as_secs_f64();
        let mut last = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            last = line;
        }
        Ok((took, status.code(), last))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            // Wait for it to be gone: a daemon still alive after the server below is
            // killed could start a new server (its control client creates one), which
            // would then outlive the test.
            for _ in 0..500 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                #[allow(clippy::disallowed_methods, reason = "a Drop cannot await")]
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(self.dir.join("state/tmux.sock"))
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

/// Builds the release `berth` binary and returns its path.
pub(crate) fn berth_binary(root: &Path) -> Result<PathBuf> {
    crate::run(
        root,
        "cargo",
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "berth",
            "--bin",
            "berth",
        ],
    )?;
    Ok(root.join("target/release/berth"))
}

/// Creates `n` tmux workspaces (not started) straight through an engine on the data
/// directory's store, 8 at a time; returns their ids.
async fn seed(dir: &Path, n: usize) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let store = Arc::new(SqliteStore::open_in(dir, SqliteOptions::default()).await?);
    let engine = Engine::builder()
        .store(store)
        .runtime(Arc::new(TmuxRuntime::new(TmuxConfig::new(dir))))
        .reporter(Arc::new(QueueReporter::new(1024, Vec::new())))
        .clock(Arc::new(SystemClock))
        .config(EngineConfig {
            reconcile_period: None,
            ..EngineConfig::default()
        })
        .build()
        .await?;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..8 {
        let e = engine.clone();
        set.spawn(async move {
            let mut ids = Vec::new();
            for i in (w..n).step_by(8) {
                let ws = e
                    .create(CreateWorkspace {
                        name: WorkspaceName::parse(&format!("seed-{i}"))?,
                        runtime: RuntimeKind::parse("tmux")?,
                        spec: Default::default(),
                        actor: Actor::Api,
                    })
                    .await?;
                ids.push(ws.id.as_str().to_owned());
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        ids.extend(r??);
    }
    engine.shutdown().await;
    Ok(ids)
}

/// Requests per second: `connections` concurrent loops GETting `paths` (round robin)
/// for `secs` seconds. Every answer must be 200.
async fn throughput(
    server: &Server,
    paths: Arc<Vec<String>>,
    connections: usize,
    secs: f64,
) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = tokio::task::JoinSet::new();
    for c in 0..connections {
        let http = server.http.clone();
        let base = server.url.clone();
        let token = server.token.clone();
        let paths = Arc::clone(&paths);
        set.spawn(async move {
            let mut done = 0u64;
            let mut i = c;
            while Instant::now() < deadline {
                let resp = http
                    .get(format!("{base}{}", paths[i % paths.len()]))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                ensure!(resp.status().is_success(), "answer {}", resp.status());
                resp.bytes().await?;
                done += 1;
                i += connections;
            }
            anyhow::Ok(done)
        });
    }
    let began = Instant::now();
    let mut total = 0u64;
    while let Some(r) = set.join_next().await {
        total += r??;
    }
    Ok(total as f64 / began.elapsed().as_secs_f64())
}

pub(crate) fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// P5: API read throughput with 10,000 workspaces stored, against `/healthz`.
pub(crate) async fn p5(root: &Path, bin: &Path, quick: bool) -> Result<Row> {
    let dir = root.join("target/bench/tmp-p5");
    let _ = std::fs::remove_dir_all(&dir);
    let n = 10_000;
    let ids = seed(&dir, n).await?;
    let server = Server::start(bin, &dir, &[]).await?;
    let listed = server
        .call(reqwest::Method::GET, "/v1/workspaces?limit=1", None)
        .await?;
    ensure!(listed["items"].as_array().is_some_and(|i| i.len() == 1));
    let get_paths: Arc<Vec<String>> = Arc::new(
        ids.iter()
            .step_by(7)
            .map(|id| format!("/v1/workspaces/{id}"))
            .collect(),
    );
    let health_paths = Arc::new(vec!["/healthz".to_owned()]);
    let (runs, secs, connections) = if quick { (1, 1.0, 16) } else { (5, 3.0, 16) };
    // Warm up both paths, then alternate so drift hits both alike.
    throughput(&server, Arc::clone(&health_paths), connections, 0.5).await?;
    throughput(&server, Arc::clone(&get_paths), connections, 0.5).await?;
    let (mut health, mut get) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        health.push(throughput(&server, Arc::clone(&health_paths), connections, secs).await?);
        get.push(throughput(&server, Arc::clone(&get_paths), connections, secs).await?);
    }
    // List pages: walk the whole list 100 at a time (first page to last), timing each.
    let mut page_ms = Vec::new();
    for _ in 0..if quick { 1 } else { 3 } {
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/workspaces?limit=100&cursor={c}"),
                None => "/v1/workspaces?limit=100".to_owned(),
            };
            let began = Instant::now();
            let page = server.call(reqwest::Method::GET, &path, None).await?;
            page_ms.push(began.elapsed().as_secs_f64() * 1e3);
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
    }
    ensure!(
        page_ms.len() >= n / 100,
        "the list walk saw {} pages",
        page_ms.len()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let (h, g) = (median(health), median(get));
    let ratio = g / h;
    let p99 = percentile(page_ms.clone(), 99.0);
    let verdict = if ratio >= 0.5 && p99 < 50.0 {
        "pass"
    } else {
        "FAIL"
    };
    Ok(Row {
        id: "P5",
        case: format!(
            "API read: GET /v1/workspaces/{{id}}, {n} workspaces stored (rows cached after their first read), {connections} keep-alive connections from a second process"
        ),
        berth: format!("{g:.0} req/s; list page (100 items) p99 {p99:.1} ms"),
        baseline: format!("{h:.0} req/s (GET /healthz, same server and client)"),
        ratio: Some(ratio),
        target: "≥ 0.5× healthz throughput; list page p99 < 50 ms".into(),
        verdict: verdict.into(),
        extra: json!({ "get_rps": g, "healthz_rps": h, "list_page_p99_ms": p99, "list_pages": page_ms.len() }),
    })
}

/// P7: 5,000 SSE subscribers; every one must get every event. Beside it, the same
/// client and cadence against the raw fan-out of [`crate::bench_sse`].
pub(crate) async fn p7(root: &Path, bin: &Path, quick: bool) -> Result<Row> {
    use crate::bench_sse::{FanOut, fan_out};
    let dir = root.join("target/bench/tmp-p7");
    let _ = std::fs::remove_dir_all(&dir);
    let subscribers = 5_000;
    let events = if quick { 20 } else { 100 };
    // Each subscriber holds a connection: past the default limit (512) the rest would
    // wait for a free one, as they should. An operator serving this many raises it.
    let server = Server::start(bin, &dir, &["--max-connections", "6000"]).await?;
    // Each create commits one event (`created`); spaced so that each is a fan-out of
    // its own rather than one batch.
    let url = format!("{}/v1/events?since=0", server.url);
    let berth = fan_out(
        &url,
        Some(&server.token),
        subscribers,
        events,
        None,
        async |i| {
            server
                .call(
                    reqwest::Method::POST,
                    "/v1/workspaces",
                    Some(json!({ "name": format!("fan-{i}"), "start": false })),
                )
                .await
                .map(drop)
        },
    )
    .await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let berth: FanOut = berth?;
    // The baseline's events are as long as berth's were, and come at the same moments.
    let raw = crate::bench_sse::raw_fan_out(subscribers, &berth.triggered, berth.bytes_per_event())
        .await?;
    let (p50, p99) = (berth.percentile(50.0), berth.percentile(99.0));
    let (raw_p50, raw_p99) = (raw.percentile(50.0), raw.percentile(99.0));
    let verdict = if berth.complete == subscribers && p99 < 100.0 {
        "pass".to_owned()
    } else if raw_p99 >= 100.0 {
        "FAIL (the raw fan-out's p99 is above 100 ms too)".to_owned()
    } else {
        "FAIL".to_owned()
    };
    Ok(Row {
        id: "P7",
        case: format!(
            "event fan-out: {subscribers} SSE subscribers, {events} events (one create each, 10 ms apart)"
        ),
        berth: format!(
            "{}/{subscribers} subscribers got every event once, in order; delivery p50 {p50:.1} ms, p99 {p99:.1} ms",
            berth.complete
        ),
        baseline: format!(
            "p50 {raw_p50:.1} ms, p99 {raw_p99:.1} ms (raw fan-out: tokio and the kernel, events of the same size at the same moments, same client; its latency counts from its emit, berth's from before its commit; one run of each)"
        ),
        ratio: Some(p99 / raw_p99),
        target: "every subscriber receives each event; p99 < 100 ms".into(),
        verdict,
        extra: json!({
            "subscribers": subscribers, "events": events, "complete": berth.complete,
            "p50_ms": p50, "p99_ms": p99, "deliveries": berth.latencies.len(),
            "wall_s": berth.wall_s, "bytes_per_event": berth.bytes_per_event(),
            "trigger_span_s": berth.triggered.last().map_or(0.0, Duration::as_secs_f64),
            "raw_p50_ms": raw_p50, "raw_p99_ms": raw_p99, "raw_wall_s": raw.wall_s,
        }),
    })
}

/// P8: SIGTERM with 100 stops in flight (processes that ignore SIGTERM, a 60 s grace)
/// and a 2 s drain deadline.
pub(crate) async fn p8(root: &Path, bin: &Path, quick: bool) -> Result<Row> {
    let deadline = 2.0;
    let in_flight = 100;
    let runs = if quick { 1 } else { 3 };
    let mut exits = Vec::new();
    let mut alive_max = 0u64;
    let mut interrupted = Vec::new();
    for run in 0..runs {
        let dir = root.join(format!("target/bench/tmp-p8-{run}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut server = Server::start(
            bin,
            &dir,
            &["--drain-deadline", "2s", "--stop-grace", "60s"],
        )
        .await?;
        let mut ids = Vec::new();
        for i in 0..in_flight {
            let v = server
                .call(
                    reqwest::Method::POST,
                    "/v1/workspaces",
                    Some(json!({
                        "name": format!("busy-{i}"),
                        "command": ["sh", "-c", "trap '' TERM HUP; while :; do sleep 1; done"],
                    })),
                )
                .await?;
            let id = v["workspace"]["id"]
                .as_str()
                .context("create answered no id")?
                .to_owned();
            ids.push(id);
        }
        for id in &ids {
            let v = server
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/workspaces/{id}/wait?state=running&timeout=30s"),
                    None,
                )
                .await?;
            ensure!(v["reached"] == json!(true), "{id} did not start: {v}");
        }
        for id in &ids {
            server
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/workspaces/{id}/stop?wait=false"),
                    Some(json!({})),
                )
                .await?;
        }
        // Accepted stops begin at once; wait until every one has (all `stopping`).
        let began = Instant::now();
        loop {
            let stopping = server
                .call(
                    reqwest::Method::GET,
                    "/v1/workspaces?state=stopping&limit=1000",
                    None,
                )
                .await?;
            let n = stopping["items"].as_array().map_or(0, Vec::len);
            if n == in_flight {
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(20),
                "{n} of {in_flight} stops in flight after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (took, code, last) = server.terminate().await?;
        ensure!(
            code == Some(0) || code == Some(1),
            "berth exited with {code:?}: {last}"
        );
        let alive = last
            .rsplit("engine tasks alive ")
            .next()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .with_context(|| format!("no task count in the last line {last:?}"))?;
        let ops = last
            .split(", ")
            .find_map(|p| p.strip_suffix(" ops interrupted")?.parse::<u64>().ok())
            .unwrap_or(0);
        alive_max = alive_max.max(alive);
        interrupted.push(ops as f64);
        exits.push(took);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let exit = median(exits);
    let ratio = exit / deadline;
    let verdict = if exit <= deadline + 1.0 && alive_max == 0 {
        "pass"
    } else {
        "FAIL"
    };
    Ok(Row {
        id: "P8",
        case: format!(
            "shutdown: SIGTERM with {in_flight} stops in flight (processes ignore SIGTERM, 60 s grace)"
        ),
        berth: format!(
            "exit {exit:.2} s after SIGTERM; {:.0} ops interrupted; {alive_max} engine tasks alive",
            median(interrupted)
        ),
        baseline: format!("{deadline:.0} s drain deadline"),
        ratio: Some(ratio),
        target: "exit ≤ deadline + 1 s; 0 engine tasks alive".into(),
        verdict: verdict.into(),
        extra: json!({ "exit_s": exit, "drain_deadline_s": deadline, "engine_tasks_alive": alive_max }),
    })
}
