//! The CLI client: `berth ws ...`, `berth session ...`, `berth events`, `berth doctor`.
//! It finds the daemon and the admin token from flags, the environment (`BERTH_URL`,
//! `BERTH_TOKEN`), or the data directory (`daemon.url`, `admin.token`). Tables for
//! people, `--json` for scripts; failures print the message and code and exit 1.

#![allow(clippy::print_stdout)]

mod access;
pub mod doctor;
mod pool;
mod up;

pub use pool::PoolCommand;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::Value;

use crate::serve::{default_data_dir, token_path, url_path};

/// How the client reaches the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Daemon URL. Default: the <data dir>/daemon.url of the daemon running there.
    #[arg(long, env = "BERTH_URL", global = true)]
    pub url: Option<String>,
    /// Admin token. Default: <data dir>/admin.token.
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory to find the daemon in.
    #[arg(long, env = "BERTH_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only ids (of listed or created workspaces), one per line.
    #[arg(short = 'q', long, global = true, conflicts_with = "json")]
    pub quiet: bool,
    /// Trust this CA certificate (PEM) for an HTTPS daemon, beside the system's.
    #[arg(long, env = "BERTH_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

impl Client {
    /// `--since`: a seq as given, or for a duration the seq just before the first event
    /// that recent (events are read in seq order, which is commit order).
    async fn since_seq(&self, since: &str, filter: &str) -> anyhow::Result<u64> {
        if let Ok(seq) = since.parse::<u64>() {
            return Ok(seq);
        }
        let ago = humantime::parse_duration(since).map_err(|_| {
            anyhow::anyhow!("--since {since:?} is neither a seq (a number) nor a duration (5m, 2h)")
        })?;
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(ago).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
        let mut cursor = 0;
        loop {
            let page = self
                .get(&format!(
                    "/v1/events?format=json&limit=1000&since={cursor}{filter}"
                ))
                .await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            for e in &items {
                let at = e["at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                if at.is_some_and(|at| at >= cutoff) {
                    return Ok(e["seq"].as_u64().unwrap_or(1).saturating_sub(1));
                }
                cursor = e["seq"].as_u64().unwrap_or(cursor);
            }
            if items.len() < 1000 {
                return Ok(cursor);
            }
        }
    }
}

/// One workspace for people: a field per line, the unset ones left out.
fn print_workspace_detail(w: &Value) {
    let text = |v: &Value| match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(a) if a.is_empty() => None,
        Value::Object(o) if o.is_empty() => None,
        Value::Array(a) => Some(
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        other => Some(other.to_string()),
    };
    let spec = &w["spec"];
    let env = spec["env"].as_object().map(|env| {
        env.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let limits = spec["limits"].as_object().map(|l| {
        l.iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let error = (!w["last_error"].is_null()).then(|| {
        format!(
            "{}: {}",
            w["last_error"]["code"].as_str().unwrap_or("?"),
            w["last_error"]["message"].as_str().unwrap_or("")
        )
    });
    let pending = [
        ("in flight", &w["pending"]["in_flight"]),
        ("queued", &w["pending"]["queued"]),
    ]
    .iter()
    .filter(|(_, op)| !op.is_null())
    .map(|(what, op)| format!("{} {what}", op["kind"].as_str().unwrap_or("?")))
    .collect::<Vec<_>>()
    .join(", ");
    let rows: [(&str, Option<String>); 17] = [
        ("Name", text(&w["name"])),
        ("Id", text(&w["id"])),
        ("State", text(&w["state"])),
        ("Runtime", text(&w["runtime"])),
        ("Incarnation", text(&w["incarnation"])),
        ("Directory", text(&w["dir"])),
        ("Command", text(&spec["command"])),
        ("Environment", env.filter(|e| !e.is_empty())),
        ("Image", text(&spec["image"])),
        (
            "Git",
            spec["git"]["repo"]
                .as_str()
                .map(|r| format!("{r} @ {}", spec["git"]["ref"].as_str().unwrap_or(""))),
        ),
        ("Limits", limits.filter(|l| !l.is_empty())),
        ("Sandbox", text(&spec["sandbox"])),
        (
            "Network",
            (spec["network"] == Value::Bool(false)).then(|| "none".to_owned()),
        ),
        ("Created", text(&w["created_at"])),
        ("Updated", text(&w["updated_at"])),
        ("Last error", error),
        ("Pending", (!pending.is_empty()).then_some(pending)),
    ];
    for (label, value) in rows {
        if let Some(value) = value {
            println!("{:<12} {value}", format!("{label}:"));
        }
    }
}

/// `512`, `64k`, `512m`, `2g` (powers of 1024) as bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (512, 64k, 512m, 2g)"))?;
    let unit: u64 = match unit.trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size (512, 64k, 512m, 2g)")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A failed call: the API's code and message.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code})")]
pub struct CallError {
    /// Stable code.
    pub code: String,
    /// Message.
    pub message: String,
    /// Details.
    pub details: Value,
}

impl CallError {
    /// The API's error object of a response body (`{"error": {...}}`).
    pub fn from_body(status: u16, body: &Value) -> Self {
        let e = &body["error"];
        CallError {
            code: e["code"].as_str().unwrap_or("unknown").to_owned(),
            message: e["message"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_owned),
            details: e["details"].clone(),
        }
    }
}

/// The daemon could not be reached (nothing listens, no daemon on the data directory).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Arguments that make no sense together (exit 2, like clap's own usage errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The CLI's exit code for an error (`docs/api.md`, "CLI"): 2 usage, 3 not found, 4
/// conflict or refused, 5 timeout, 6 daemon unreachable, 1 anything else (a failed
/// op among them).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    if e.downcast_ref::<Unreachable>().is_some() {
        return 6;
    }
    let Some(call) = e.downcast_ref::<CallError>() else {
        return 1;
    };
    match call.code.as_str() {
        "invalid_request" | "validation_failed" | "unsupported" => 2,
        "not_found" => 3,
        "name_taken"
        | "invalid_transition"
        | "session_exists"
        | "workspace_dirty"
        | "dirty_check_failed"
        | "workspace_deleting"
        | "workspace_stopping"
        | "idempotency_conflict"
        | "superseded"
        | "workspace_not_running"
        | "forbidden"
        | "unauthorized" => 4,
        "wait_timeout" | "request_timeout" | "runtime_timeout" | "start_timeout" => 5,
        _ => 1,
    }
}

/// A connected client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// JSON output.
    pub json: bool,
    /// Ids only.
    pub quiet: bool,
}

impl Target {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => default_data_dir(),
        }
    }

    /// The daemon URL this target resolves to: `--url`/`BERTH_URL`, else the
    /// `daemon.url` the running daemon of the data directory wrote. Never a guessed
    /// address: whoever listens there would be sent the admin token.
    ///
    /// # Errors
    /// No URL was given and no daemon runs on the data directory (no `daemon.url`, or
    /// one left by a daemon that no longer holds the directory's lock).
    pub fn base_url(&self) -> anyhow::Result<String> {
        if let Some(u) = &self.url {
            return Ok(u.trim_end_matches('/').to_owned());
        }
        let dir = self.data_dir()?;
        let not_running = || {
            anyhow::Error::from(Unreachable(format!(
                "no berth daemon runs on the data directory {} (start one with `berth serve`, or pass --url / BERTH_URL)",
                dir.display()
            )))
        };
        let url = match std::fs::read_to_string(url_path(&dir)) {
            Ok(u) if !u.trim().is_empty() => u.trim().trim_end_matches('/').to_owned(),
            _ => return Err(not_running()),
        };
        // A `daemon.url` left by a daemon that died (SIGKILL leaves it): the directory's
        // lock is free, and another process may listen on that address by now.
        if !crate::serve::data_dir_in_use(&dir) {
            return Err(not_running());
        }
        Ok(url)
    }

    /// Connects (no request is made yet).
    ///
    /// # Errors
    /// No token can be found.
    pub fn connect(&self) -> anyhow::Result<Client> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let path = token_path(&self.data_dir()?);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no admin token: pass --token or BERTH_TOKEN, or start `berth serve` to create {}",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA certificate {}", path.display()))?;
            http = http.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", path.display()))?,
            );
        }
        Ok(Client {
            http: http.build()?,
            base: self.base_url()?,
            token,
            json: self.json,
            quiet: self.quiet,
        })
    }
}

impl Client {
    /// One request; while the daemon is still in boot recovery (503 `not_ready`) it
    /// is retried for up to a minute.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let began = std::time::Instant::now();
        loop {
            match self.call_once(method.clone(), path, body).await {
                Err(e)
                    if e.downcast_ref::<CallError>()
                        .is_some_and(|c| c.code == "not_ready")
                        && began.elapsed() < Duration::from_secs(60) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            return Err(CallError::from_body(status, &value).into());
        }
        Ok((status, value))
    }

    /// A transport error: `Unreachable` when no connection could be made.
    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() || e.is_timeout() {
            Unreachable(format!(
                "cannot reach the berth daemon at {}: {e}",
                self.base
            ))
            .into()
        } else {
            anyhow::Error::from(e).context(format!("talking to the berth daemon at {}", self.base))
        }
    }

    /// A request whose answer is read as a stream (logs, archives); an error status is
    /// a [`CallError`].
    async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
                .body(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let text = resp.text().await.unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(CallError::from_body(status, &v).into());
        }
        Ok(resp)
    }

    /// GET.
    ///
    /// # Errors
    /// Transport errors and API errors ([`CallError`]).
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.call(reqwest::Method::GET, path, None).await?.1)
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            human(value);
        }
    }

    /// Runs a request that may take a while, with a spinner showing the workspace's
    /// state on a terminal.
    async fn with_spinner(
        &self,
        workspace: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let call = self.call(method, path, body);
        if self.json || !std::io::stderr().is_terminal() {
            return call.await;
        }
        tokio::pin!(call);
        let frames = ['|', '/', '-', '\\'];
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut i = 0usize;
        let mut state = String::from("...");
        loop {
            tokio::select! {
                r = &mut call => {
                    eprint!("\r\x1b[2K");
                    return r;
                }
                _ = tick.tick() => {
                    if i.is_multiple_of(4)
                        && let Ok(ws) = self.get(&format!("/v1/workspaces/{workspace}")).await
                    {
                        state = ws["state"].as_str().unwrap_or("?").to_owned();
                    }
                    eprint!("\r{} {workspace}: {state}", frames[i % frames.len()]);
                    i += 1;
                }
            }
        }
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The terminal's width when stdout is one.
fn terminal_width() -> Option<usize> {
    std::io::stdout()
        .is_terminal()
        .then(|| terminal_size::terminal_size().map(|(w, _)| usize::from(w.0)))
        .flatten()
}

/// `text` cut to `width` characters, the cut marked with `…` at its `start` or end.
fn fit(text: &str, width: usize, start: bool) -> String {
    let n = text.chars().count();
    if n <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    if start {
        let tail: String = text.chars().skip(n - (width - 1)).collect();
        format!("…{tail}")
    } else {
        let head: String = text.chars().take(width - 1).collect();
        format!("{head}…")
    }
}

fn print_workspaces(items: &[Value]) {
    let field = |w: &Value, k: &str| w[k].as_str().unwrap_or("").to_owned();
    // Columns as wide as their widest value; on a terminal, the directory (then the
    // name) gives way so a row fits the screen.
    let mut name_w = items
        .iter()
        .map(|w| field(w, "name").chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let fixed = 19 + 1 + 8 + 1 + 9 + 1 + 4 + 2;
    let mut dir_w = items
        .iter()
        .map(|w| field(w, "dir").chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    if let Some(width) = terminal_width() {
        let room = width.saturating_sub(fixed + 1);
        if name_w + dir_w > room {
            dir_w = room.saturating_sub(name_w).max(12);
            name_w = room.saturating_sub(dir_w).max(8).min(name_w);
        }
    }
    println!(
        "{:<19} {:<name_w$} {:<8} {:<9} {:>4}  DIR",
        "ID", "NAME", "RUNTIME", "STATE", "INC"
    );
    for w in items {
        let dir = w["dir"].as_str().unwrap_or("-");
        println!(
            "{:<19} {:<name_w$} {:<8} {:<9} {:>4}  {}",
            field(w, "id"),
            fit(&field(w, "name"), name_w, false),
            field(w, "runtime"),
            field(w, "state"),
            w["incarnation"].as_u64().unwrap_or(0),
            fit(dir, dir_w, true),
        );
    }
}

fn print_op(v: &Value) {
    let op = &v["operation"];
    let ws = &v["workspace"];
    let state = ws["state"].as_str().unwrap_or("deleted");
    let mut line = format!(
        "{} {} {}: {} (workspace {})",
        op["kind"].as_str().unwrap_or("op"),
        op["id"].as_str().unwrap_or(""),
        ws["name"].as_str().unwrap_or(""),
        op["status"].as_str().unwrap_or(""),
        state
    );
    if let Some(e) = op["error"].as_object() {
        line.push_str(&format!(
            "; {} ({})",
            e.get("message").and_then(Value::as_str).unwrap_or(""),
            e.get("code").and_then(Value::as_str).unwrap_or("")
        ));
    }
    println!("{line}");
}

/// `berth ws ...`.
#[derive(Debug, clap::Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process from the command line"
)]
pub enum WsCommand {
    /// Create a workspace (and start it unless --no-start).
    Create {
        /// Name: 1-63 of [a-z0-9-], starting with a letter.
        name: String,
        /// Runtime.
        #[arg(long, default_value = "tmux")]
        runtime: String,
        /// An existing directory to work in (never deleted by berth).
        #[arg(long)]
        dir: Option<String>,
        /// A git repository to check out as a worktree (with --git-ref).
        #[arg(long, requires = "git_ref")]
        git_repo: Option<String>,
        /// The ref for --git-repo.
        #[arg(long, requires = "git_repo")]
        git_ref: Option<String>,
        /// Environment, KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Container image (docker).
        #[arg(long)]
        image: Option<String>,
        /// Memory limit (docker), in bytes or with a k, m or g suffix: 512m.
        #[arg(long, value_parser = parse_bytes)]
        memory: Option<u64>,
        /// CPU limit (docker) in thousandths of a CPU: 500 is half a CPU.
        #[arg(long)]
        millicpus: Option<u64>,
        /// Process limit (docker).
        #[arg(long)]
        pids: Option<u64>,
        /// Sandbox of a tmux workspace: none, landlock or auto.
        #[arg(long)]
        sandbox: Option<String>,
        /// No network (tmux: needs a sandbox; docker: network mode none).
        #[arg(long)]
        no_network: bool,
        /// Run the container as root (docker).
        #[arg(long)]
        run_as_root: bool,
        /// A read-only root filesystem (docker).
        #[arg(long)]
        read_only_root: bool,
        /// Only create it.
        #[arg(long)]
        no_start: bool,
        /// Idempotency key (a retry with the same key returns the first result).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Take this warm pool's template, and a ready member of it when there is one
        /// (`berth pool ls`).
        #[arg(long, conflicts_with_all = ["runtime", "dir", "git_repo", "env", "image", "memory", "millicpus", "pids", "sandbox", "no_network", "run_as_root", "read_only_root", "command"])]
        pool: Option<String>,
        /// The main process's argv (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List workspaces.
    Ls {
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
        /// Only this runtime.
        #[arg(long)]
        runtime: Option<String>,
    },
    /// Show one workspace.
    Show {
        /// Id or name.
        id: String,
    },
    /// Start a workspace.
    Start(OpArgs),
    /// Stop a workspace.
    Stop(OpArgs),
    /// Restart a workspace.
    Restart(OpArgs),
    /// Delete a workspace (refused when its directory has uncommitted work).
    Rm {
        #[command(flatten)]
        op: OpArgs,
        /// Delete even with uncommitted work.
        #[arg(long)]
        force: bool,
    },
    /// Run a command in a running workspace; exits with its exit code.
    Exec {
        /// Id or name.
        id: String,
        /// A terminal (stdout and stderr become one stream).
        #[arg(short = 't', long)]
        tty: bool,
        /// Pass stdin through (without it the command reads end of file).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// The command (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// An interactive terminal on the workspace's main process or a session (tmux: its
    /// own terminal; docker: a shell). Detach with Ctrl-] (tmux also: Ctrl-b d).
    Attach {
        /// Id or name.
        id: String,
        /// A session instead of the main process.
        session: Option<String>,
    },
    /// The output of the main process or a session, kept after it ends.
    Logs {
        /// Id or name.
        id: String,
        /// A session instead of the main process.
        session: Option<String>,
        /// Keep following new output until the process ends.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only output this recent (5m, 2h) or since a time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only the last N lines.
        #[arg(long, short = 'n')]
        tail: Option<usize>,
        /// Prefix each line with the time it was written.
        #[arg(long, short = 'T')]
        timestamps: bool,
    },
    /// Copy files between a workspace and here: `ws cp NAME:PATH LOCAL` or `ws cp LOCAL
    /// NAME:PATH` (a directory in the workspace); `-` for a tar stream on stdin/stdout.
    Cp {
        /// Source.
        src: String,
        /// Destination.
        dst: String,
    },
    /// Wait for a state (running, stopped, failed, settled) or an op.
    Wait {
        /// Id or name.
        id: String,
        /// Target state.
        #[arg(long, default_value = "settled", conflicts_with = "op")]
        state: String,
        /// An op id instead.
        #[arg(long)]
        op: Option<String>,
        /// How long.
        #[arg(long, default_value = "30s")]
        timeout: String,
    },
}

/// Arguments of op commands.
#[derive(Debug, clap::Args)]
pub struct OpArgs {
    /// Ids or names (each is done in turn; the command fails if any did).
    #[arg(required = true, num_args = 1..)]
    pub ids: Vec<String>,
    /// Return at once instead of waiting for the op to settle.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
}

/// `berth session ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SessionCommand {
    /// Launch a named session in a running workspace.
    Launch {
        /// Workspace id or name.
        workspace: String,
        /// Session name.
        name: String,
        /// Environment, KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// argv (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List sessions.
    Ls {
        /// Workspace id or name.
        workspace: String,
    },
    /// Stop a session.
    Stop {
        /// Workspace id or name.
        workspace: String,
        /// Session name.
        name: String,
    },
    /// Recent output of a session (or of the main process without a name).
    Output {
        /// Workspace id or name.
        workspace: String,
        /// Session name.
        name: Option<String>,
        /// How many lines.
        #[arg(long, default_value_t = 200)]
        lines: usize,
    },
}

fn env_pairs(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--env {kv:?}: use KEY=VALUE"))
        })
        .collect()
}

impl Client {
    /// Runs `berth up` on the workspace file `file`.
    ///
    /// # Errors
    /// An unreadable file, transport or API errors (the first of them; every workspace
    /// is tried).
    pub async fn run_up(&self, file: &std::path::Path, force: bool) -> anyhow::Result<()> {
        self.up(file, force).await
    }

    /// Runs `berth down` on the workspace file `file`.
    ///
    /// # Errors
    /// As [`Client::run_up`].
    pub async fn run_down(
        &self,
        file: &std::path::Path,
        rm: bool,
        force: bool,
    ) -> anyhow::Result<()> {
        self.down(file, rm, force).await
    }

    /// Runs `berth ws ...`.
    ///
    /// # Errors
    /// Bad arguments, transport or API errors.
    pub async fn ws(&self, cmd: WsCommand) -> anyhow::Result<i32> {
        match cmd {
            WsCommand::Exec {
                id,
                tty,
                interactive,
                command,
            } => return self.exec(&id, command, tty, interactive).await,
            WsCommand::Attach { id, session } => return self.attach(&id, session.as_deref()).await,
            WsCommand::Logs {
                id,
                session,
                follow,
                since,
                tail,
                timestamps,
            } => {
                self.logs(
                    &id,
                    session.as_deref(),
                    follow,
                    since.as_deref(),
                    tail,
                    timestamps,
                )
                .await?;
            }
            WsCommand::Cp { src, dst } => self.cp(&src, &dst).await?,
            WsCommand::Create {
                name,
                runtime,
                dir,
                git_repo,
                git_ref,
                env,
                image,
                memory,
                millicpus,
                pids,
                sandbox,
                no_network,
                run_as_root,
                read_only_root,
                no_start,
                idempotency_key,
                pool,
                command,
            } => {
                let mut body = match pool {
                    Some(pool) => {
                        serde_json::json!({"name": name, "start": !no_start, "pool": pool})
                    }
                    None => serde_json::json!({
                        "name": name, "runtime": runtime, "start": !no_start,
                        "env": env_pairs(&env)?,
                    }),
                };
                if let Some(image) = image {
                    body["image"] = Value::String(image);
                }
                if memory.is_some() || millicpus.is_some() || pids.is_some() {
                    body["limits"] = serde_json::json!({
                        "memory_bytes": memory, "millicpus": millicpus, "pids": pids,
                    });
                }
                if let Some(sandbox) = sandbox {
                    body["sandbox"] = Value::String(sandbox);
                }
                if no_network {
                    body["network"] = Value::Bool(false);
                }
                if run_as_root {
                    body["run_as_root"] = Value::Bool(true);
                }
                if read_only_root {
                    body["read_only_root"] = Value::Bool(true);
                }
                if !command.is_empty() {
                    body["command"] = serde_json::json!(command);
                }
                if let Some(d) = dir {
                    let abs = std::path::absolute(&d).unwrap_or_else(|_| PathBuf::from(&d));
                    body["dir"] = Value::String(abs.display().to_string());
                }
                if let (Some(repo), Some(reference)) = (git_repo, git_ref) {
                    body["git"] = serde_json::json!({"repo": repo, "ref": reference});
                }
                let mut req = self
                    .http
                    .post(format!("{}/v1/workspaces", self.base))
                    .bearer_auth(&self.token)
                    .json(&body);
                if let Some(k) = idempotency_key {
                    req = req.header("Idempotency-Key", k);
                }
                let resp = req.send().await.map_err(|e| self.unreachable(e))?;
                let status = resp.status().as_u16();
                let value: Value = resp.json().await.unwrap_or(Value::Null);
                if status >= 400 {
                    let e = &value["error"];
                    return Err(CallError {
                        code: e["code"].as_str().unwrap_or("unknown").to_owned(),
                        message: e["message"].as_str().unwrap_or("").to_owned(),
                        details: e["details"].clone(),
                    }
                    .into());
                }
                let mut ws = value["workspace"].clone();
                if !no_start && let Some(id) = ws["id"].as_str().map(str::to_owned) {
                    let (_, waited) = self
                        .with_spinner(
                            &id,
                            reqwest::Method::GET,
                            &format!("/v1/workspaces/{id}/wait?state=settled&timeout=120s"),
                            None,
                        )
                        .await?;
                    ws = waited["workspace"].clone();
                }
                if self.quiet {
                    println!("{}", ws["id"].as_str().unwrap_or(""));
                } else {
                    self.print(&ws, |w| print_workspaces(std::slice::from_ref(w)));
                }
                if ws["state"] == "failed" {
                    // The row is printed; the exit status and the reason say it failed,
                    // with the code of the op that failed (its exit code follows it).
                    let e = &ws["last_error"];
                    let op_code = match value["operation"]["id"].as_str() {
                        Some(op) => self
                            .get(&format!("/v1/operations/{}", enc(op)))
                            .await
                            .ok()
                            .and_then(|o| o["error"]["code"].as_str().map(str::to_owned)),
                        None => None,
                    };
                    return Err(CallError {
                        code: op_code
                            .or_else(|| e["code"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| "start_failed".to_owned()),
                        message: format!(
                            "workspace {} failed to start: {}",
                            ws["name"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("no reason recorded")
                        ),
                        details: Value::Null,
                    }
                    .into());
                }
            }
            WsCommand::Ls { state, runtime } => {
                let mut items = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let mut q = vec!["limit=1000".to_owned()];
                    if let Some(s) = &state {
                        q.push(format!("state={}", enc(s)));
                    }
                    if let Some(r) = &runtime {
                        q.push(format!("runtime={}", enc(r)));
                    }
                    if let Some(c) = &cursor {
                        q.push(format!("cursor={}", enc(c)));
                    }
                    let page = self.get(&format!("/v1/workspaces?{}", q.join("&"))).await?;
                    items.extend(page["items"].as_array().cloned().unwrap_or_default());
                    match page["next_cursor"].as_str() {
                        Some(c) => cursor = Some(c.to_owned()),
                        None => break,
                    }
                }
                // The API's page shape; the CLI read every page, so no cursor is left.
                let page = serde_json::json!({"items": items, "next_cursor": null});
                if self.quiet {
                    for w in &items {
                        println!("{}", w["id"].as_str().unwrap_or(""));
                    }
                } else {
                    self.print(&page, |_| print_workspaces(&items));
                }
            }
            WsCommand::Show { id } => {
                let ws = self.get(&format!("/v1/workspaces/{}", enc(&id))).await?;
                self.print(&ws, print_workspace_detail);
            }
            WsCommand::Start(a) => self.op(&a, "start", "POST", "").await?,
            WsCommand::Stop(a) => self.op(&a, "stop", "POST", "").await?,
            WsCommand::Restart(a) => self.op(&a, "restart", "POST", "").await?,
            WsCommand::Rm { op, force } => {
                self.op(&op, "", "DELETE", &format!("&force={force}"))
                    .await?;
            }
            WsCommand::Wait {
                id,
                state,
                op,
                timeout,
            } => {
                let target = match op {
                    Some(o) => format!("op={}", enc(&o)),
                    None => format!("state={}", enc(&state)),
                };
                let path = format!(
                    "/v1/workspaces/{}/wait?{target}&timeout={}",
                    enc(&id),
                    enc(&timeout)
                );
                let (_, v) = self
                    .with_spinner(&enc(&id), reqwest::Method::GET, &path, None)
                    .await?;
                self.print(&v, |v| {
                    println!(
                        "{}: {} (reached: {})",
                        id,
                        v["settled_state"].as_str().unwrap_or(""),
                        v["reached"].as_bool().unwrap_or(false)
                    );
                });
                if v["reached"] != Value::Bool(true) {
                    anyhow::bail!(
                        "workspace {id} settled as {} without reaching the target",
                        v["settled_state"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        Ok(0)
    }

    /// Runs the op on every workspace `a` names, in turn; with several, a failure is
    /// reported and the next one still runs, and the first failure is the result.
    async fn op(&self, a: &OpArgs, verb: &str, method: &str, extra: &str) -> anyhow::Result<()> {
        let mut first_error = None;
        for id in &a.ids {
            if let Err(e) = self.op_one(a, id, verb, method, extra).await {
                if a.ids.len() == 1 {
                    return Err(e);
                }
                eprintln!("error: {id}: {e:#}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn op_one(
        &self,
        a: &OpArgs,
        id: &str,
        verb: &str,
        method: &str,
        extra: &str,
    ) -> anyhow::Result<()> {
        let id = enc(id);
        let path = if verb.is_empty() {
            format!(
                "/v1/workspaces/{id}?wait={}&timeout={}{extra}",
                !a.no_wait,
                enc(&a.timeout)
            )
        } else {
            format!(
                "/v1/workspaces/{id}/{verb}?wait={}&timeout={}{extra}",
                !a.no_wait,
                enc(&a.timeout)
            )
        };
        let method = if method == "DELETE" {
            reqwest::Method::DELETE
        } else {
            reqwest::Method::POST
        };
        let (status, v) = self.with_spinner(&id, method, &path, None).await?;
        self.print(&v, print_op);
        let op_status = v["operation"]["status"].as_str().unwrap_or("");
        if !a.no_wait && matches!(op_status, "pending" | "running") {
            return Err(CallError {
                code: "wait_timeout".into(),
                message: format!(
                    "the {} op was still {op_status} after {} (workspace {})",
                    v["operation"]["kind"].as_str().unwrap_or("?"),
                    a.timeout,
                    v["workspace"]["state"].as_str().unwrap_or("?")
                ),
                details: Value::Null,
            }
            .into());
        }
        if status == 200 && !matches!(op_status, "succeeded") {
            let e = &v["operation"]["error"];
            return Err(CallError {
                code: e["code"].as_str().unwrap_or(op_status).to_owned(),
                message: e["message"]
                    .as_str()
                    .map_or_else(|| format!("the operation ended {op_status}"), str::to_owned),
                details: e["details"].clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Runs `berth session ...`.
    ///
    /// # Errors
    /// Bad arguments, transport or API errors.
    pub async fn session(&self, cmd: SessionCommand) -> anyhow::Result<()> {
        match cmd {
            SessionCommand::Launch {
                workspace,
                name,
                env,
                command,
            } => {
                let body =
                    serde_json::json!({"name": name, "command": command, "env": env_pairs(&env)?});
                let (_, v) = self
                    .call(
                        reqwest::Method::POST,
                        &format!("/v1/workspaces/{}/sessions", enc(&workspace)),
                        Some(&body),
                    )
                    .await?;
                self.print(&v, |s| {
                    println!(
                        "session {} {}",
                        s["name"].as_str().unwrap_or(""),
                        s["state"].as_str().unwrap_or("")
                    );
                });
            }
            SessionCommand::Ls { workspace } => {
                let v = self
                    .get(&format!("/v1/workspaces/{}/sessions", enc(&workspace)))
                    .await?;
                self.print(&v, |v| {
                    println!("{:<24} {:<8} {:>5}  COMMAND", "NAME", "STATE", "EXIT");
                    for s in v["items"].as_array().into_iter().flatten() {
                        println!(
                            "{:<24} {:<8} {:>5}  {}",
                            s["name"].as_str().unwrap_or(""),
                            s["state"].as_str().unwrap_or(""),
                            s["exit_code"]
                                .as_i64()
                                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                            s["command"]
                                .as_array()
                                .map(|a| a
                                    .iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join(" "))
                                .unwrap_or_default()
                        );
                    }
                });
            }
            SessionCommand::Stop { workspace, name } => {
                self.call(
                    reqwest::Method::DELETE,
                    &format!("/v1/workspaces/{}/sessions/{}", enc(&workspace), enc(&name)),
                    None,
                )
                .await?;
                self.print(&serde_json::json!({"stopped": name}), |_| {
                    println!("session {name} stopped");
                });
            }
            SessionCommand::Output {
                workspace,
                name,
                lines,
            } => {
                let path = match &name {
                    Some(n) => format!(
                        "/v1/workspaces/{}/sessions/{}/output?lines={lines}",
                        enc(&workspace),
                        enc(n)
                    ),
                    None => format!("/v1/workspaces/{}/output?lines={lines}", enc(&workspace)),
                };
                let v = self.get(&path).await?;
                self.print(&v, |v| {
                    for l in v["lines"].as_array().into_iter().flatten() {
                        println!("{}", l.as_str().unwrap_or(""));
                    }
                });
            }
        }
        Ok(())
    }

    /// Runs `berth events [-f]`.
    ///
    /// # Errors
    /// Transport or API errors.
    pub async fn events(
        &self,
        follow: bool,
        workspace: Option<String>,
        since: String,
    ) -> anyhow::Result<()> {
        let filter = workspace
            .map(|w| format!("&workspace={}", enc(&w)))
            .unwrap_or_default();
        let since = self.since_seq(&since, &filter).await?;
        // People think in names: each workspace's is looked up once (a deleted one
        // keeps its id).
        let names = std::sync::Arc::new(parking_lot::Mutex::new(BTreeMap::<String, String>::new()));
        let show = |e: Value| {
            let names = std::sync::Arc::clone(&names);
            async move {
                if self.json {
                    println!("{e}");
                    return;
                }
                let id = e["workspace_id"].as_str().unwrap_or("").to_owned();
                let known = names.lock().get(&id).cloned();
                let name = match known {
                    Some(n) => n,
                    None => {
                        let n = self
                            .get(&format!("/v1/workspaces/{}", enc(&id)))
                            .await
                            .ok()
                            .and_then(|w| w["name"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| id.clone());
                        names.lock().insert(id.clone(), n.clone());
                        n
                    }
                };
                println!(
                    "{:>6} {} {:<22} {:>8} -> {:<8} {:<16} {}",
                    e["seq"].as_u64().unwrap_or(0),
                    e["at"].as_str().unwrap_or(""),
                    name,
                    e["from"].as_str().unwrap_or("-"),
                    e["to"].as_str().unwrap_or("-"),
                    e["cause"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                );
            }
        };
        if !follow {
            let mut cursor = since;
            loop {
                let page = self
                    .get(&format!(
                        "/v1/events?format=json&limit=1000&since={cursor}{filter}"
                    ))
                    .await?;
                let items = page["items"].as_array().cloned().unwrap_or_default();
                for e in items.iter().cloned() {
                    show(e).await;
                }
                if items.len() < 1000 {
                    return Ok(());
                }
                cursor = page["next_since"].as_u64().unwrap_or(cursor);
            }
        }
        let resp = self
            .send_raw(
                reqwest::Method::GET,
                &format!("/v1/events?since={since}{filter}"),
                None,
            )
            .await?;
        let mut stream = resp.bytes_stream();
        // Bytes until a whole line: a character split across chunks stays whole.
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&raw);
                if let Some(data) = line.trim_end().strip_prefix("data:")
                    && let Ok(e) = serde_json::from_str::<Value>(data.trim())
                {
                    show(e).await;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_bytes() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("64k"), Ok(64 * 1024));
        assert_eq!(parse_bytes("512m"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_bytes("2G"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("1gib"), Ok(1024 * 1024 * 1024));
        for bad in ["", "m", "12x", "-1", "99999999999999999999g"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_long_value_is_cut_to_its_column_with_a_mark() {
        assert_eq!(fit("short", 10, false), "short");
        assert_eq!(fit("a-very-long-name", 8, false), "a-very-…");
        assert_eq!(fit("/home/me/src/project", 10, true), "…c/project");
        assert_eq!(fit("/home/me/src/project", 10, true).chars().count(), 10);
        assert_eq!(fit("x", 0, true), "");
    }

    #[test]
    fn exit_codes_follow_the_error_code_table() {
        let call = |code: &str| -> anyhow::Error {
            CallError {
                code: code.into(),
                message: String::new(),
                details: Value::Null,
            }
            .into()
        };
        assert_eq!(exit_code(&call("not_found")), 3);
        assert_eq!(exit_code(&call("workspace_dirty")), 4);
        assert_eq!(exit_code(&call("wait_timeout")), 5);
        assert_eq!(exit_code(&call("validation_failed")), 2);
        assert_eq!(exit_code(&call("runtime_error")), 1);
        assert_eq!(exit_code(&Unreachable("x".into()).into()), 6);
        assert_eq!(exit_code(&UsageError("x".into()).into()), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
    }
}
