//! `cargo xtask chaos`: the daemon under a random concurrent workload on real tmux
//! (and Docker with `--docker`), killed with SIGKILL at random moments and again during
//! recovery, with faults injected (the tmux server killed, workspace processes killed
//! from outside, the database's write lock held by another process, the data
//! directory's filesystem full for a while: it is a small tmpfs when run as root; with
//! `--docker`, one round in eight whose daemon finds a Docker engine that accepts and
//! never answers). After every recovery it checks the invariants:
//!
//! - no workspace is left transitional once `/readyz` is 200;
//! - every acknowledged create is there (unless a delete was sent for it), every
//!   acknowledged delete is gone;
//! - never two main processes for one workspace;
//! - no orphan: no process, tmux session, container or volume of a workspace that does
//!   not exist, and no main process of a workspace that is not running, once the
//!   reconciler had its grace;
//! - only the current token verifies: a running workspace's process holds a token that
//!   works, and every token an earlier incarnation held is refused.
//!
//! The workload is drawn from `--seed` (printed; the timing of a real machine is not).
//! `cargo xtask chaos --rounds 6 --seed 11` is CI's short run; the long one is
//! `cargo xtask chaos --rounds 200 --docker --seed <n>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const MAIN_MARK: &str = "3001";
const SESSION_MARK: &str = "3002";
const TRANSITIONAL: [&str; 3] = ["starting", "stopping", "deleting"];

#[derive(Debug, Default)]
struct Figures {
    rounds: u64,
    /// Rounds whose daemon started against a Docker engine that never answers.
    hung_rounds: u64,
    requests: u64,
    acknowledged: u64,
    checks: u64,
    violations: Vec<String>,
}

/// What the workload was told happened.
#[derive(Debug, Default)]
struct Ledger {
    created: BTreeMap<String, u64>,
    delete_sent: BTreeSet<String>,
    deleted: BTreeSet<String>,
    requests: u64,
    acknowledged: u64,
}

struct Daemon {
    child: tokio::sync::Mutex<Option<Child>>,
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Daemon {
    /// Starts a daemon; when the data dir's lock is still held (the killed daemon's
    /// lock not yet released), tries again for up to 10 s and reports the holders.
    async fn start(bin: &Path, dir: &Path, docker_host: Option<&str>) -> Result<Self> {
        let began = std::time::Instant::now();
        loop {
            match Self::start_once(bin, dir, docker_host).await {
                Ok(d) => return Ok(d),
                Err(e)
                    if e.to_string().contains("daemon.lock is open in")
                        && began.elapsed() < Duration::from_secs(10) =>
                {
                    eprintln!("chaos: NOTE the data dir's lock was still held at a restart: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(bin: &Path, dir: &Path, docker_host: Option<&str>) -> Result<Self> {
        // The daemons' errors, beside the data dir (which may be a tmpfs).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))?;
        let mut command = Command::new(bin);
        if let Some(host) = docker_host {
            command.env("DOCKER_HOST", host);
        }
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--reconcile-period", "500ms", "--orphan-grace", "1s"])
            .args(["--stop-grace", "1s", "--drain-deadline", "1s"])
            .args(["--start-ceiling", "20s"])
            .env_remove("BERTH_TOKEN")
            .env("BERTH_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning berth serve")?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("berth serve printed nothing in 30 s")??
            .with_context(|| {
                format!(
                    "berth serve exited before printing its URL; daemon.lock is open in: {:?}",
                    holders(&dir.join("state/daemon.lock"))
                )
            })?;
        #[allow(clippy::disallowed_methods, reason = "drains the pipe until it closes")]
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let token = std::fs::read_to_string(dir.join("state/admin.token"))?
            .trim()
            .to_owned();
        Ok(Self {
            child: tokio::sync::Mutex::new(Some(child)),
            url,
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    async fn kill(&self) {
        if let Some(mut child) = self.child.lock().await.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    async fn ready(&self) -> Result<()> {
        let began = std::time::Instant::now();
        loop {
            if let Ok((200, _)) = self.call(reqwest::Method::GET, "/readyz", None, None).await {
                return Ok(());
            }
            if began.elapsed() > Duration::from_secs(90) {
                bail!("/readyz not 200 after 90 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token.unwrap_or(&self.token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Every workspace, page by page: id -> (state, incarnation).
    async fn workspaces(&self) -> Result<BTreeMap<String, (String, u64)>> {
        let mut out = BTreeMap::new();
        let mut after = String::new();
        loop {
            let path = if after.is_empty() {
                "/v1/workspaces?limit=1000".to_owned()
            } else {
                format!("/v1/workspaces?limit=1000&after={after}")
            };
            let (s, v) = self.call(reqwest::Method::GET, &path, None, None).await?;
            if s != 200 {
                bail!("listing answered {s} {v}");
            }
            for w in v["items"].as_array().cloned().unwrap_or_default() {
                out.insert(
                    w["id"].as_str().unwrap_or_default().to_owned(),
                    (
                        w["state"].as_str().unwrap_or_default().to_owned(),
                        w["incarnation"].as_u64().unwrap_or(0),
                    ),
                );
            }
            match v["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => after = c.to_owned(),
                _ => return Ok(out),
            }
        }
    }
}

/// The pids of `/proc`.
fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The processes that have `path` open, with their command lines.
fn holders(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for pid in pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path))
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            out.push(format!(
                "{pid} {} [{}]",
                String::from_utf8_lossy(&cmd).replace('\0', " "),
                stat.rsplit(')').next().unwrap_or("").trim()
            ));
        }
    }
    out
}

/// A live process berth gave a workspace: pid, workspace id, the marker of its
/// command (main or session), and its token.
#[derive(Debug, Clone)]
struct Proc {
    pid: i32,
    workspace: String,
    main: bool,
    token: Option<String>,
}

fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for pid in pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
        {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is = |mark: &str| {
            args.first().is_some_and(|a| a.ends_with(b"sleep"))
                && args.get(1) == Some(&mark.as_bytes())
        };
        let main = is(MAIN_MARK);
        if !main && !is(SESSION_MARK) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut workspace = None;
        let mut token = None;
        for var in env.split(|b| *b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(v) = var.strip_prefix("BERTH_WORKSPACE_ID=") {
                workspace = Some(v.to_owned());
            } else if let Some(v) = var.strip_prefix("BERTH_WORKSPACE_TOKEN=") {
                token = Some(v.to_owned());
            }
        }
        if let Some(workspace) = workspace {
            out.push(Proc {
                pid,
                workspace,
                main,
                token,
            });
        }
    }
    out
}

/// Kills the tmux server of the data dir `dir`.
/// A stand-in Docker engine socket that accepts connections and never answers.
struct HungSocket {
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl HungSocket {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::UnixListener::bind(dir.path().join("docker.sock"))?;
        #[allow(clippy::disallowed_methods, reason = "holds the fault's connections")]
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        Ok(Self { dir, task })
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }
}

impl Drop for HungSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn kill_tmux_server(dir: &Path) {
    let _ = std::process::Command::new("tmux")
        .arg("-S")
        .arg(dir.join("state/tmux.sock"))
        .arg("kill-server")
        .stderr(Stdio::null())
        .status();
}

fn tmux_sessions(dir: &Path) -> Vec<String> {
    std::process::Command::new("tmux")
        .arg("-S")
        .arg(dir.join("state/tmux.sock"))
        .args(["list-sessions", "-F", "#{session_name}"])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|n| n.starts_with("bw-") || n.starts_with("bs-"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    std::process::Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The workspace id in a tmux session name (`bw-<hex>`, `bs-<hex>-<name>`) or a Docker
/// resource name (`berth-<engine>-ws-<hex>[-data]`).
fn id_in(name: &str) -> Option<String> {
    let hex = if let Some(rest) = name
        .strip_prefix("bw-")
        .or_else(|| name.strip_prefix("bs-"))
    {
        rest.get(..16)?
    } else {
        let at = name.find("-ws-")?;
        name.get(at + 4..at + 20)?
    };
    hex.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| format!("ws-{hex}"))
}

/// A tmpfs mounted on the data directory; unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &Path) -> Option<Self> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m,mode=0700", "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_owned()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem holding `ballast` to the last byte.
fn fill(ballast: &Path) {
    use std::io::Write as _;
    let Ok(mut f) = std::fs::File::create(ballast) else {
        return;
    };
    let chunk = vec![0u8; 1 << 16];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[0]).is_ok() {}
}

/// One worker of the workload until `stop` fires.
async fn worker(
    d: Arc<Daemon>,
    ledger: Arc<parking_lot::Mutex<Ledger>>,
    seed: u64,
    round: u64,
    me: u64,
    docker: bool,
    stop: tokio_util_like::Stop,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (round << 8) ^ me);
    let mut n = 0u64;
    while !stop.is_set() {
        n += 1;
        let known: Vec<String> = ledger.lock().created.keys().cloned().collect();
        let pick = rng.random_range(0..100u32);
        let target = (!known.is_empty()).then(|| known[rng.random_range(0..known.len())].clone());
        let (method, path, body) = match (pick, target) {
            (0..20, _) | (_, None) => {
                let name = format!("c{round}-{me}-{n}");
                let body = if docker && rng.random_range(0..5u32) == 0 {
                    json!({"name": name, "runtime": "docker",
                        "image": "berth-test/busybox:1", "command": ["sleep", MAIN_MARK]})
                } else {
                    json!({"name": name, "command": ["sh", "-c", format!("exec sleep {MAIN_MARK}")]})
                };
                (
                    reqwest::Method::POST,
                    "/v1/workspaces".to_owned(),
                    Some(body),
                )
            }
            (20..70, Some(id)) => {
                let op = ["start", "stop", "restart"][rng.random_range(0..3usize)];
                (
                    reqwest::Method::POST,
                    format!("/v1/workspaces/{id}/{op}?timeout=10s"),
                    None,
                )
            }
            (70..85, Some(id)) => {
                ledger.lock().delete_sent.insert(id.clone());
                (
                    reqwest::Method::DELETE,
                    format!("/v1/workspaces/{id}?force=true"),
                    None,
                )
            }
            (_, Some(id)) => (
                reqwest::Method::POST,
                format!("/v1/workspaces/{id}/sessions"),
                Some(
                    json!({"name": "s", "command": ["sh", "-c", format!("exec sleep {SESSION_MARK}")]}),
                ),
            ),
        };
        let is_delete = method == reqwest::Method::DELETE;
        let is_create = path == "/v1/workspaces";
        let answer = tokio::select! {
            () = stop.wait() => return,
            a = d.call(method, &path, body, None) => a,
        };
        let mut l = ledger.lock();
        l.requests += 1;
        if let Ok((status, v)) = answer
            && (200..300).contains(&status)
        {
            l.acknowledged += 1;
            if is_create && let Some(id) = v["workspace"]["id"].as_str() {
                l.created.insert(id.to_owned(), round);
            }
            if is_delete && let Some(id) = path.split('/').nth(3).and_then(|p| p.split('?').next())
            {
                l.deleted.insert(id.to_owned());
                l.created.remove(id);
            }
        }
    }
}

/// A tiny stop flag (the xtask does not depend on tokio-util).
mod tokio_util_like {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default)]
    pub struct Stop(Arc<(AtomicBool, tokio::sync::Notify)>);

    impl Stop {
        pub fn set(&self) {
            self.0.0.store(true, Ordering::SeqCst);
            self.0.1.notify_waiters();
        }
        pub fn is_set(&self) -> bool {
            self.0.0.load(Ordering::SeqCst)
        }
        pub async fn wait(&self) {
            loop {
                let notified = self.0.1.notified();
                if self.is_set() {
                    return;
                }
                notified.await;
            }
        }
    }
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: u64 = value("--rounds").map_or(Ok(20), |v| v.parse())?;
    let seed: u64 = value("--seed").map_or_else(|| Ok(rand::random()), |v| v.parse())?;
    let docker = args.iter().any(|a| a == "--docker");
    crate::run(
        root,
        "cargo",
        &["build", "--quiet", "-p", "berth", "--bin", "berth"],
    )?;
    let bin = root.join("target/debug/berth");
    let dir = root.join(format!("target/chaos/{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "chaos: seed {seed}, {rounds} rounds, docker {docker}, data dir {}",
        dir.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ledger = Arc::new(parking_lot::Mutex::new(Ledger::default()));
    let figures = runtime.block_on(campaign(&bin, &dir, seed, rounds, docker, ledger.clone()));
    cleanup(&dir, &ledger.lock(), docker);
    let figures = figures?;
    eprintln!(
        "chaos: seed {seed}: {} rounds ({} with a hung Docker), {} requests, {} acknowledged, {} checks, {} violations",
        figures.rounds,
        figures.hung_rounds,
        figures.requests,
        figures.acknowledged,
        figures.checks,
        figures.violations.len()
    );
    for v in &figures.violations {
        eprintln!("  VIOLATION {v}");
    }
    if !figures.violations.is_empty() {
        bail!(
            "chaos found {} violations (replay: cargo xtask chaos --rounds {rounds} --seed {seed}{})",
            figures.violations.len(),
            if docker { " --docker" } else { "" }
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn campaign(
    bin: &Path,
    dir: &Path,
    seed: u64,
    rounds: u64,
    docker: bool,
    ledger: Arc<parking_lot::Mutex<Ledger>>,
) -> Result<Figures> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut figures = Figures::default();
    // The data directory on its own small filesystem (root only), so a round can fill it.
    let full = SmallFs::mount(dir);
    if full.is_none() {
        eprintln!("chaos: cannot mount a tmpfs on the data dir (not root?): no full-disk faults");
    }
    // Tokens each workspace's processes held, by incarnation.
    let mut tokens: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for round in 0..rounds {
        // One Docker round in eight: the daemon's Docker engine accepts connections and
        // never answers. Readiness and the tmux workload must not wait for it.
        let hung = (docker && rng.random_range(0..8u32) == 0)
            .then(HungSocket::new)
            .transpose()?;
        let host = hung.as_ref().map(HungSocket::host);
        let began = std::time::Instant::now();
        let d = Arc::new(Daemon::start(bin, dir, host.as_deref()).await?);
        d.ready().await?;
        if hung.is_some() {
            figures.hung_rounds += 1;
            let took = began.elapsed();
            // A stall detector, not a speed test: a stall is the 60 s of a Docker call
            // left unbounded; readiness has nothing of Docker to wait for.
            if took > Duration::from_secs(30) {
                figures.violations.push(format!(
                    "round {round}: ready {took:?} after a start with a hung Docker"
                ));
            }
        }
        let stop = tokio_util_like::Stop::default();
        let mut workers = Vec::new();
        for me in 0..4 {
            #[allow(clippy::disallowed_methods, reason = "the workload's own tasks")]
            workers.push(tokio::spawn(worker(
                d.clone(),
                ledger.clone(),
                seed,
                round,
                me,
                docker,
                stop.clone(),
            )));
        }
        let length = Duration::from_millis(rng.random_range(300..1500));
        let fault_at = length.mul_f64(rng.random_range(0.1..0.9));
        let fault = rng.random_range(0..6u32);
        tokio::time::sleep(fault_at).await;
        // The ballast of a full disk, removed before the kill.
        let mut ballast: Option<std::path::PathBuf> = None;
        let mut lock: Option<sqlx::SqliteConnection> = None;
        match fault {
            2 => {
                // Another process holds the database's write lock.
                use sqlx::Connection as _;
                let url = format!("sqlite://{}", dir.join("state/berth.db").display());
                if let Ok(mut conn) = sqlx::SqliteConnection::connect(&url).await
                    && sqlx::query("BEGIN IMMEDIATE")
                        .execute(&mut conn)
                        .await
                        .is_ok()
                {
                    lock = Some(conn);
                }
            }
            3 if full.is_some() => {
                // The data directory's filesystem fills up.
                let file = dir.join("ballast");
                fill(&file);
                ballast = Some(file);
            }
            0 => {
                kill_tmux_server(dir);
            }
            1 => {
                let mains: Vec<Proc> = processes().into_iter().filter(|p| p.main).collect();
                if !mains.is_empty() {
                    let p = &mains[rng.random_range(0..mains.len())];
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            _ => {}
        }
        tokio::time::sleep(length.saturating_sub(fault_at)).await;
        if let Some(mut conn) = lock.take() {
            let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
        }
        if let Some(file) = ballast.take() {
            let _ = std::fs::remove_file(file);
            // The store heals by itself: writes succeed again before the kill.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // SIGKILL while the workload runs.
        d.kill().await;
        drop(hung);
        stop.set();
        for w in workers {
            let _ = w.await;
        }
        // A third of the rounds: killed again during recovery.
        if rng.random_range(0..3u32) == 0 {
            let again = Daemon::start(bin, dir, None).await?;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            again.kill().await;
        }
        let d = Daemon::start(bin, dir, None).await?;
        d.ready().await?;
        check(&d, dir, &ledger, &mut tokens, &mut figures, round, docker).await?;
        d.kill().await;
        figures.rounds += 1;
    }
    // The tmux server's socket is on the data dir's filesystem: end it before that goes.
    kill_tmux_server(dir);
    drop(full);
    let l = ledger.lock();
    figures.requests = l.requests;
    figures.acknowledged = l.acknowledged;
    Ok(figures)
}

async fn check(
    d: &Daemon,
    dir: &Path,
    ledger: &Arc<parking_lot::Mutex<Ledger>>,
    tokens: &mut BTreeMap<String, BTreeMap<u64, String>>,
    figures: &mut Figures,
    round: u64,
    docker: bool,
) -> Result<()> {
    let mut violate = |what: String| figures.violations.push(format!("round {round}: {what}"));
    // Right after readiness: nothing transitional.
    let listed = d.workspaces().await?;
    for (id, (state, _)) in &listed {
        if TRANSITIONAL.contains(&state.as_str()) {
            violate(format!("{id} is {state} after recovery"));
        }
    }
    let (created, delete_sent, deleted) = {
        let l = ledger.lock();
        (l.created.clone(), l.delete_sent.clone(), l.deleted.clone())
    };
    for id in created.keys() {
        if !delete_sent.contains(id) && !listed.contains_key(id) {
            violate(format!("acknowledged workspace {id} is missing"));
        }
    }
    for id in &deleted {
        if listed.contains_key(id) {
            violate(format!("acknowledged delete of {id}, but it is listed"));
        }
    }
    // Let the reconciler have its grace (orphan grace 1 s, period 500 ms).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let listed = d.workspaces().await?;
    let procs = processes();
    let mut mains: BTreeMap<&str, Vec<&Proc>> = BTreeMap::new();
    for p in &procs {
        if !listed.contains_key(&p.workspace) {
            violate(format!(
                "orphan process {} of missing workspace {}",
                p.pid, p.workspace
            ));
        }
        if p.main {
            mains.entry(&p.workspace).or_default().push(p);
        }
    }
    for (id, ps) in &mains {
        if ps.len() > 1 {
            violate(format!("{} main processes for {id}", ps.len()));
        }
        let state = listed.get(*id).map(|(s, _)| s.as_str());
        if state.is_some_and(|s| s != "running") {
            violate(format!(
                "a main process of {id}, which is {}",
                state.unwrap_or("?")
            ));
        }
    }
    // Tokens: a running workspace's process holds the token that verifies; every token
    // an earlier incarnation held is refused.
    for (id, ps) in &mains {
        let Some((_, incarnation)) = listed.get(*id) else {
            continue;
        };
        let Some(token) = ps.first().and_then(|p| p.token.clone()) else {
            continue;
        };
        let seen = tokens.entry((*id).to_owned()).or_default();
        seen.insert(*incarnation, token);
    }
    for (id, seen) in tokens.iter() {
        let current = listed
            .get(id)
            .filter(|(s, _)| s == "running")
            .map(|(_, i)| *i);
        for (inc, token) in seen {
            let (status, _) = d
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/workspaces/{id}"),
                    None,
                    Some(token),
                )
                .await?;
            let should = Some(*inc) == current && mains.contains_key(id.as_str());
            if should && status != 200 {
                violate(format!(
                    "the current token of {id} (incarnation {inc}) is refused: {status}"
                ));
            }
            if !should && Some(*inc) != current && status == 200 {
                violate(format!(
                    "a token of {id}'s incarnation {inc} still verifies"
                ));
            }
        }
    }
    for s in tmux_sessions(dir) {
        if let Some(id) = id_in(&s)
            && !listed.contains_key(&id)
        {
            violate(format!("orphan tmux session {s}"));
        }
    }
    if docker {
        for c in docker_lines(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            "name=berth-en-",
        ]) {
            if let Some(id) = id_in(&c)
                && (created.contains_key(&id) || deleted.contains(&id) || delete_sent.contains(&id))
                && !listed.contains_key(&id)
            {
                violate(format!("orphan container {c}"));
            }
        }
        for v in docker_lines(&["volume", "ls", "-q", "--filter", "name=berth-en-"]) {
            if let Some(id) = id_in(&v)
                && (created.contains_key(&id) || deleted.contains(&id) || delete_sent.contains(&id))
                && !listed.contains_key(&id)
            {
                violate(format!("orphan volume {v}"));
            }
        }
    }
    figures.checks += 1;
    Ok(())
}

/// Kills everything the campaign may have left: the tmux server, the workspace
/// processes, the containers and volumes of its workspaces.
fn cleanup(dir: &Path, ledger: &Ledger, docker: bool) {
    kill_tmux_server(dir);
    // A server whose socket went with the data dir's filesystem (a failed run).
    let _ = std::process::Command::new("pkill")
        .arg("-f")
        .arg(format!("tmux -S {}", dir.join("state/tmux.sock").display()))
        .status();
    let ours: BTreeSet<&String> = ledger
        .created
        .keys()
        .chain(ledger.deleted.iter())
        .chain(ledger.delete_sent.iter())
        .collect();
    for p in processes() {
        if ours.contains(&p.workspace) || !docker {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if docker {
        for c in docker_lines(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            "name=berth-en-",
        ]) {
            if id_in(&c).is_some_and(|id| ours.contains(&id)) {
                let _ = docker_lines(&["rm", "-f", "-v", &c]);
            }
        }
        for v in docker_lines(&["volume", "ls", "-q", "--filter", "name=berth-en-"]) {
            if id_in(&v).is_some_and(|id| ours.contains(&id)) {
                let _ = docker_lines(&["volume", "rm", "-f", &v]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::id_in;

    #[test]
    fn workspace_ids_are_read_from_resource_names() {
        assert_eq!(
            id_in("bw-0123456789abcdef").as_deref(),
            Some("ws-0123456789abcdef")
        );
        assert_eq!(
            id_in("bs-0123456789abcdef-agent").as_deref(),
            Some("ws-0123456789abcdef")
        );
        assert_eq!(
            id_in("berth-en-1-ws-0123456789abcdef-data").as_deref(),
            Some("ws-0123456789abcdef")
        );
        assert_eq!(id_in("berth-control"), None);
        assert_eq!(id_in("bw-xyz"), None);
    }
}
