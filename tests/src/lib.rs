//! A harness for black-box tests of the `berth` binary: each [`Daemon`] runs the real
//! binary on port 0 with its own temp data directory (so its own SQLite file and tmux
//! socket), and is killed with its tmux server when dropped, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `berth` binary next to the test executable (built by `cargo xtask ci`; built
/// here when missing).
pub fn berth_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        // target/<profile>/deps/it-<hash> -> target/<profile>/berth
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let bin = dir.join("berth");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "-p", "berth", "--bin", "berth"])
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "building the berth binary failed"
            );
        }
        bin
    })
    .clone()
}

/// A running `berth serve`.
#[derive(Debug)]
pub struct Daemon {
    /// Its data directory (kept when the daemon restarts).
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The admin token.
    pub token: String,
    child: Option<Child>,
    http: reqwest::Client,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts a daemon in a fresh data directory with `extra` serve flags.
    pub async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(extra, &[]).await
    }

    /// Starts a daemon with `extra` serve flags and extra environment variables.
    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut d = Daemon {
            dir,
            url: String::new(),
            token: String::new(),
            child: None,
            http: reqwest::Client::new(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        d.spawn().await?;
        d.wait_ready().await?;
        Ok(d)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(berth_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(&self.extra)
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_URL")
            .env("BERTH_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning berth serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("berth serve printed nothing in 30 s")??
            .context("berth serve exited before printing its address")?;
        if !first.starts_with("http://127.0.0.1:") {
            bail!("unexpected first line {first:?}");
        }
        // Keep draining stdout so the daemon never blocks on a full pipe; the task ends
        // with the pipe.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.url = first;
        self.token = match self.env.iter().find(|(k, _)| k == "BERTH_TOKEN") {
            Some((_, token)) => token.clone(),
            None => std::fs::read_to_string(self.dir.path().join("state/admin.token"))?
                .trim()
                .to_owned(),
        };
        self.child = Some(child);
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code and how long it took.
    pub async fn terminate(&mut self) -> anyhow::Result<(Option<i32>, Duration)> {
        let child = self.child.as_mut().context("not running")?;
        let pid = child.id().context("no pid")?;
        let began = std::time::Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .context("berth did not exit within 60 s of SIGTERM")??;
        self.child = None;
        Ok((status.code(), began.elapsed()))
    }

    /// Sends `signal` to the daemon (SIGSTOP freezes it, SIGCONT resumes it).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    /// Kills the daemon with SIGKILL (no shutdown at all) and reaps it.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Starts the daemon again on the same data directory (a new port) and waits
    /// until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_booting().await?;
        self.wait_ready().await
    }

    /// Starts the daemon again on the same data directory and returns as soon as it
    /// printed its URL: boot recovery may still be running.
    pub async fn restart_booting(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.terminate().await?;
        }
        self.spawn().await
    }

    /// Polls `/readyz` until it answers 200 (boot recovery finished), at most 60 s.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let began = std::time::Instant::now();
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 {
                return Ok(());
            }
            if status != 503 || began.elapsed() > Duration::from_secs(60) {
                bail!(
                    "/readyz answered {status} {body} after {:?}",
                    began.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A request with the admin token.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(Some(&self.token), method, path, body).await
    }

    /// A request with any (or no) token.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the daemon answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GET with the admin token.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// POST with the admin token.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// DELETE with the admin token.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// A running workspace whose processes ignore SIGTERM and SIGHUP, returned only
    /// once the shell has installed that trap (so a stop always lasts its grace).
    /// `running` alone is not enough: the pane exists before its shell ran a line.
    pub async fn running_ignoring_term(&self, name: &str) -> String {
        let marker = self.dir.path().join(format!("{name}.trapped"));
        let script = format!(
            "trap '' TERM HUP; echo trapped > '{}'; while :; do sleep 1; done",
            marker.display()
        );
        let id = self.running(name, &script).await;
        read_when_written(&marker, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{name} never installed its trap: {e}"));
        id
    }

    /// Creates and starts a workspace running `sh -c script`, waits for `running`,
    /// and returns its id.
    pub async fn running(&self, name: &str, script: &str) -> String {
        let (s, v) = self
            .post(
                "/v1/workspaces",
                serde_json::json!({"name": name, "command": ["sh", "-c", script]}),
            )
            .await;
        assert_eq!(s, 201, "create {name}: {v}");
        let id = v["workspace"]["id"].as_str().expect("an id").to_owned();
        let (s, v) = self
            .get(&format!(
                "/v1/workspaces/{id}/wait?state=running&timeout=20s"
            ))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["reached"], true, "{name} did not reach running: {v}");
        id
    }

    /// Runs the CLI against this daemon (found through its data directory), with
    /// `stdin` on its stdin (closed when `None`).
    pub async fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        use tokio::io::AsyncWriteExt as _;
        let mut child = tokio::process::Command::new(berth_bin())
            .args(args)
            .env("BERTH_DATA_DIR", self.data_dir())
            .env_remove("BERTH_URL")
            .env_remove("BERTH_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("berth runs");
        if let Some(mut input) = child.stdin.take() {
            if let Some(bytes) = stdin {
                input.write_all(bytes).await.expect("stdin");
            }
            drop(input);
        }
        child.wait_with_output().await.expect("berth ends")
    }

    /// The tmux server's socket.
    pub fn tmux_socket(&self) -> PathBuf {
        self.dir.path().join("state/tmux.sock")
    }

    /// All events, via the JSON page form.
    pub async fn all_events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = 0;
        loop {
            let (s, v) = self
                .get(&format!("/v1/events?format=json&limit=1000&since={since}"))
                .await;
            assert_eq!(s, 200, "{v}");
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let n = items.len();
            out.extend(items);
            if n < 1000 {
                return out;
            }
            since = v["next_since"].as_u64().unwrap_or(since);
        }
    }
}

impl Drop for Daemon {
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
        // The workspaces' tmux server outlives the daemon by design; end it here. A
        // tmux client the daemon forked just before it died can still start a server
        // after the first kill, so a second round follows; and whatever still names
        // this data directory (such a late server, a log writer) goes with it.
        let dir = format!("{}/", self.dir.path().display());
        for round in 0..2 {
            if round > 0 {
                #[allow(clippy::disallowed_methods, reason = "a Drop cannot await")]
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = std::process::Command::new("tmux")
                .env_remove("TMUX")
                .arg("-S")
                .arg(self.tmux_socket())
                .arg("kill-server")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::process::Command::new("pkill")
                .args(["-KILL", "-f", &dir])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Waits until `path` exists and holds a non-empty first line; returns it.
pub async fn read_when_written(path: &Path, within: Duration) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(t) = std::fs::read_to_string(path)
            && t.ends_with('\n')
        {
            return Ok(t.trim().to_owned());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} was not written within {within:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The busybox test image (imported by `berth doctor --test-image`, no registry), or
/// `None` after a loud SKIPPED line naming `what` when Docker cannot be used here.
/// With `BERTH_REQUIRE_DOCKER=1` (CI) that is a failure instead.
pub fn docker_test_image(what: &str) -> Option<String> {
    let imported = std::process::Command::new(berth_bin())
        .args(["doctor", "--test-image"])
        .output()
        .expect("berth doctor --test-image");
    if imported.status.success() {
        return Some(String::from_utf8_lossy(&imported.stdout).trim().to_owned());
    }
    let why = String::from_utf8_lossy(&imported.stderr).into_owned();
    assert!(
        !std::env::var("BERTH_REQUIRE_DOCKER").is_ok_and(|v| v == "1"),
        "BERTH_REQUIRE_DOCKER=1 but the test image cannot be imported: {why}"
    );
    eprintln!("\n*** SKIPPED {what}: {why} ***\n");
    None
}

/// How many containers (running or not) carry workspace `ws`'s label.
pub fn containers_of(ws: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=dev.berth.workspace={ws}"),
        ])
        .output()
        .expect("docker");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Removes the containers and volumes of one workspace when dropped (even on failure).
#[derive(Debug)]
pub struct DockerCleanup(pub String);

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        remove_labelled(&format!("label=dev.berth.workspace={}", self.0));
    }
}

/// Removes every container and volume that `filter` (`label=…`) selects.
fn remove_labelled(filter: &str) {
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for id in docker(&["ps", "-aq", "--filter", filter]).lines() {
        docker(&["rm", "-f", "-v", id]);
    }
    for v in docker(&["volume", "ls", "-q", "--filter", filter]).lines() {
        docker(&["volume", "rm", "-f", v]);
    }
}

/// A test's own tmux server (a real terminal for `ws attach`), killed on drop.
#[derive(Debug)]
pub struct Terminal {
    socket: std::path::PathBuf,
}

impl Terminal {
    pub fn new(dir: &Path, command: &str) -> Self {
        let socket = dir.join("outer.sock");
        let ok = std::process::Command::new("tmux")
            .env_remove("TMUX")
            .arg("-S")
            .arg(&socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "30",
                command,
            ])
            .status()
            .expect("tmux")
            .success();
        assert!(ok, "the outer terminal starts");
        Self { socket }
    }

    /// A terminal running `berth ws attach <name>`, and the file its exit code goes to.
    pub fn attached(d: &Daemon, name: &str) -> (Self, std::path::PathBuf) {
        let done = d.data_dir().join(format!("attach-{name}.exit"));
        let cmd = format!(
            "env BERTH_DATA_DIR={} {} ws attach {name}; echo $? > {}; sleep 60",
            d.data_dir().display(),
            berth_bin().display(),
            done.display()
        );
        (Self::new(d.data_dir(), &cmd), done)
    }

    pub fn tmux(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .env_remove("TMUX")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-S", "-100"])
    }

    /// Waits until the screen shows `what` (at most 20 s).
    pub async fn shows(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the terminal never showed {what:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// `GET path` over a workspace's API socket with `token`: the raw HTTP answer.
///
/// # Panics
/// When the socket cannot be reached.
pub async fn get_over(socket: &Path, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// Removes every container and volume of one daemon's engine when dropped (even on
/// failure): what a test's pool may still be making. Name the engine with
/// [`EngineCleanup::learn`] from any of its workspaces.
#[derive(Debug, Default)]
pub struct EngineCleanup(std::cell::RefCell<Option<String>>);

impl EngineCleanup {
    /// Learns the engine from the container of workspace `ws`.
    pub fn learn(&self, ws: &str) {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=dev.berth.workspace={ws}"),
                "--format",
                "{{.Label \"dev.berth.engine\"}}",
            ])
            .output()
            .expect("docker");
        let engine = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !engine.is_empty() {
            *self.0.borrow_mut() = Some(engine);
        }
    }
}

impl Drop for EngineCleanup {
    fn drop(&mut self) {
        if let Some(engine) = self.0.borrow().clone() {
            remove_labelled(&format!("label=dev.berth.engine={engine}"));
        }
    }
}
