//! `TmuxRuntime`: berth's [`ProcessRuntime`] for local workspaces, on a tmux server the
//! engine owns (`tmux -S <data dir>/state/tmux.sock -f /dev/null`). The server is
//! started on demand and outlives the daemon, so workspaces keep running across a
//! restart.
//!
//! - Session names derive from ids only (`bw-<id>` for a workspace's main process,
//!   `bs-<id>-<session>` for its sessions) and are always targeted exactly (`=name`).
//! - Ownership markers are user options set when a session is created
//!   (`@berth`: `v1 <engine> <workspace> <incarnation> <kind> <session|-> <generation>
//!   <created>`, one option so marking is one command); if marking fails the
//!   session is killed and the launch fails. Sessions without our engine id are never
//!   touched.
//! - Commands run from a launcher script (mode 0700, in the state directory) with every
//!   value single-quoted; `remain-on-exit` keeps a finished pane so its exit code can
//!   be read. The process starts from a built environment (`env -i` and an allow-list
//!   of the daemon's variables, then the spec's and berth's), never the daemon's or the
//!   tmux server's: no `TMUX`, no daemon secret. The workspace token is never written
//!   to disk: the launcher reads it from a FIFO the runtime writes once.
//! - Every tmux client berth runs has that same built environment, so a server it
//!   starts holds nothing of the daemon's either.
//! - Stop sends SIGTERM to the pane's process group and every descendant, waits the
//!   grace period, sends SIGKILL, then kills the session.

mod access;
mod client;
mod exec;
mod launcher;
pub mod logs;
mod procs;
mod token;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use berth_core::ids::{EngineId, Generation, Incarnation, RuntimeKind, SessionName, WorkspaceId};
use berth_core::model::{Sandbox, WorkspaceSpec};
use berth_core::ports::{
    API_SOCKET, ByteStream, CaptureTarget, ConflictReason, CopyRequest, DirtyReport, ExecInput,
    ExecIo, ExecOutput, ExecRequest, LaunchRequest, LogQuery, LogStream, OwnedResource,
    ProcessRuntime, ProcessStatus, ResourceKind, ResourceRef, RuntimeError, SessionLaunch,
    SessionRef, SpecRefusal, TermSize, WorkspaceRef, WorkspaceSockets,
};
use nix::sys::signal::Signal;

use berth_hostdirs as dirs;
use client::Tmux;
use dirs::WorkDir;

/// Settings of a [`TmuxRuntime`].
#[derive(Debug, Clone)]
pub struct TmuxConfig {
    /// berth's data directory: worktrees and scratch directories live in its
    /// `workspaces/`.
    pub data_dir: PathBuf,
    /// The daemon's private state (0700): the tmux socket and the launchers live here.
    /// Never a workspace's working directory. Default: `<data_dir>/state`.
    pub state_dir: PathBuf,
    /// The environment every workspace and session process starts from (then the
    /// spec's variables and berth's `BERTH_*`): never the daemon's own. Default: an
    /// allow-list of the daemon's ([`base_environment`]).
    pub environment: Vec<(String, String)>,
    /// Bound on one tmux command.
    pub command_timeout: Duration,
    /// Bound on one git command (worktree add, status).
    pub git_timeout: Duration,
    /// Drive tmux through one persistent control-mode client (`tmux -C`) instead of a
    /// process per command, falling back to the CLI when it fails. Default: on.
    pub control_mode: bool,
    /// The sandbox of workspaces whose spec names none. Default: `none`.
    pub default_sandbox: Sandbox,
    /// Serves each workspace's API socket (`BERTH_API_SOCKET`); `None`: no socket.
    pub sockets: Option<std::sync::Arc<dyn WorkspaceSockets>>,
    /// The program that enters the sandbox and runs the launcher (`<it> sandbox-exec
    /// --policy <json> -- /bin/sh <launcher>`: the `berth` binary). `None`: sandboxed
    /// workspaces are refused.
    pub sandbox_helper: Option<PathBuf>,
}

impl TmuxConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            state_dir: data_dir.join("state"),
            data_dir,
            environment: base_environment(),
            default_sandbox: Sandbox::None,
            sandbox_helper: None,
            sockets: None,
            command_timeout: Duration::from_secs(5),
            git_timeout: Duration::from_secs(120),
            control_mode: true,
        }
    }
}

/// The variables of the daemon's environment a workspace process may see: where
/// programs are, who and where the user is, the locale and the time zone. Nothing
/// else (no token, no `DOCKER_HOST`, no `SSH_AUTH_SOCK`, no `TMUX`); `PATH` has a
/// default when the daemon has none.
pub fn base_environment() -> Vec<(String, String)> {
    const ALLOWED: [&str; 9] = [
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ",
    ];
    let mut env: Vec<(String, String)> = ALLOWED
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env
}

/// The tmux runtime.
#[derive(Debug, Clone)]
pub struct TmuxRuntime {
    tmux: Tmux,
    config: TmuxConfig,
    /// What the kernel offers the sandbox (probed once).
    support: berth_sandbox::Support,
    /// The tasks carrying execs and attaches (each kills its process group when it
    /// ends or is dropped).
    tasks: tokio_util::task::TaskTracker,
}

const FORMAT: &str = "#{session_name}\t#{@berth}\t#{pane_dead}\t#{pane_dead_status}\t#{pane_pid}\t#{pane_dead_signal}";

/// The marker format's version tag.
const MARK_VERSION: &str = "v1";

/// One pane as listed, with its markers.
#[derive(Debug, Clone)]
struct Pane {
    session: String,
    engine: String,
    workspace: String,
    incarnation: u64,
    kind: String,
    session_name: String,
    generation: u64,
    created: i64,
    dead: bool,
    status: Option<i64>,
    signal: Option<i64>,
    pid: i32,
}

impl Pane {
    fn parse(line: &str) -> Result<Self, String> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 6 {
            return Err(format!("unexpected tmux listing line {line:?}"));
        }
        // Sessions without a well-formed marker (foreign ones) parse with empty fields
        // and are never treated as ours.
        let m: Vec<&str> = f[1].split(' ').collect();
        let mark = |i: usize| {
            if m.len() == 8 && m[0] == MARK_VERSION {
                m[i]
            } else {
                ""
            }
        };
        Ok(Pane {
            session: f[0].to_owned(),
            engine: mark(1).to_owned(),
            workspace: mark(2).to_owned(),
            incarnation: mark(3).parse().unwrap_or(0),
            kind: mark(4).to_owned(),
            session_name: if mark(5) == "-" {
                String::new()
            } else {
                mark(5).to_owned()
            },
            generation: mark(6).parse().unwrap_or(0),
            created: mark(7).parse().unwrap_or(0),
            dead: f[2] == "1",
            status: f[3].parse().ok(),
            pid: f[4].parse().unwrap_or(0),
            signal: f[5].parse().ok(),
        })
    }

    /// tmux marks a pane dead when its pty closes, before (and, seen with 3.3a,
    /// sometimes without ever) reaping the process; the launcher's exit file fills the
    /// gap (see `settle`). A dead pane with no status yet still counts as running. A
    /// death by signal reads as 128 + the signal, as shells report it.
    fn status(&self) -> ProcessStatus {
        match (self.dead, self.status, self.signal) {
            (false, _, _) | (true, None, None) => ProcessStatus::Running,
            (true, Some(code), _) => ProcessStatus::Exited(Some(code)),
            (true, None, Some(signal)) => ProcessStatus::Exited(Some(128 + signal)),
        }
    }

    /// The launcher's number: the generation of a session, the incarnation of a main.
    fn number(&self) -> u64 {
        if self.kind == "session" {
            self.generation
        } else {
            self.incarnation
        }
    }

    fn owned(&self) -> Option<OwnedResource> {
        let workspace_id = WorkspaceId::parse(&self.workspace).ok()?;
        let kind = match self.kind.as_str() {
            "main" => ResourceKind::Main,
            "session" => ResourceKind::Session {
                name: SessionName::parse(&self.session_name).ok()?,
                generation: Generation(self.generation),
            },
            _ => return None,
        };
        Some(OwnedResource {
            workspace_id,
            incarnation: Incarnation(self.incarnation),
            kind,
            created_at: chrono::DateTime::from_timestamp(self.created, 0).unwrap_or_default(),
            status: self.status(),
        })
    }
}

/// The command of a pane whose stop came while its launcher was still starting it.
///
/// The launcher traps SIGTERM (see `launcher::script`), so a SIGTERM that reaches it
/// before its command runs is taken by the trap (the launcher checks for it, but the
/// shell runs a trap's action only between commands), and the command it forks next
/// never sees the signal: it ran until the stop's grace ended, then got SIGKILL (a stop
/// right after a start took the whole grace about once in thirty). While a stop waits,
/// this finds the processes that missed the signal: the first children of a launcher
/// that had none when signalled, and a process that exec'd after it was signalled (its
/// command line changed: a child forked just before the signal took it in the
/// launcher's handler). Each is signalled once more at most; only processes still in
/// the launcher's tree count (a pid that exited and was reused is not ours). Processes a
/// command starts while it shuts down are left alone.
struct LateStart {
    leader: i32,
    /// Whether the launcher had started anything when signalled.
    started: bool,
    /// Signalled processes not signalled again yet, with their command line then.
    lines: std::collections::HashMap<i32, Option<Vec<u8>>>,
}

impl LateStart {
    fn new(leader: i32, signalled: &[i32]) -> Self {
        Self {
            leader,
            started: signalled.iter().any(|p| *p != leader),
            lines: signalled
                .iter()
                .filter(|p| **p != leader)
                .map(|p| (*p, procs::cmdline(*p)))
                .collect(),
        }
    }

    /// The processes to signal now (each at most once more).
    fn missed(&mut self, signalled: &[i32]) -> Vec<i32> {
        let tree = procs::tree(self.leader);
        if !self.started {
            let children: Vec<i32> = tree
                .iter()
                .copied()
                .filter(|p| *p != self.leader && !signalled.contains(p))
                .collect();
            if !children.is_empty() {
                self.started = true;
                return children;
            }
        }
        let out: Vec<i32> = self
            .lines
            .iter()
            .filter(|(pid, then)| {
                tree.contains(pid) && {
                    let now = procs::cmdline(**pid);
                    now.is_some() && now != **then
                }
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in &out {
            self.lines.remove(pid);
        }
        out
    }
}

fn main_name(ws: &WorkspaceId) -> String {
    format!("bw-{}", ws.as_str().trim_start_matches("ws-"))
}

fn session_name(ws: &WorkspaceId, name: &SessionName) -> String {
    format!("bs-{}-{name}", ws.as_str().trim_start_matches("ws-"))
}

/// An exact target for pane, window and option commands: `=name:`. The bare `=name`
/// form is not enough there: `list-panes -s -t =foo` with no session `foo` falls back to
/// another session (seen with tmux 3.3a), so lookups also check the returned name.
fn exact(name: &str) -> String {
    format!("={name}:")
}

/// An exact target for `kill-session` (a session target, where `=name` is exact).
fn exact_session(name: &str) -> String {
    format!("={name}")
}

/// Whether `file` is one of `name`'s launcher files: `<name>-<n>.sh`, `<name>-<n>.exit`,
/// `<name>-<n>.exit.tmp`, `.<name>-<n>.tmp` or the record `<name>.pid`, exactly (session `foo` must not match
/// the files of session `foo-bar`).
fn launcher_of(file: &str, name: &str) -> bool {
    if file.strip_prefix(name) == Some(".pid") {
        return true;
    }
    let file = file.strip_prefix('.').unwrap_or(file);
    let Some(rest) = file.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0
        && matches!(
            &rest[digits..],
            ".sh" | ".exit" | ".exit.tmp" | ".tmp" | ".token"
        )
}

/// Markers of a new tmux session.
struct Markers<'a> {
    engine: &'a EngineId,
    workspace: &'a WorkspaceId,
    incarnation: Incarnation,
    kind: &'a str,
    session: &'a str,
    generation: u64,
}

impl Markers<'_> {
    /// The `@berth` marker text (also the launcher's record line), created now.
    fn text(&self) -> String {
        let session = if self.session.is_empty() {
            "-"
        } else {
            self.session
        };
        [
            MARK_VERSION,
            self.engine.as_str(),
            self.workspace.as_str(),
            &self.incarnation.0.to_string(),
            self.kind,
            session,
            &self.generation.to_string(),
            &chrono::Utc::now().timestamp().to_string(),
        ]
        .join(" ")
    }

    /// The launcher's number: the incarnation of a main, the generation of a session.
    fn number(&self) -> u64 {
        if self.kind == "session" {
            self.generation
        } else {
            self.incarnation.0
        }
    }
}

/// The variable that carries the workspace token; it reaches the process through a
/// FIFO, never through the launcher's text.
const TOKEN_VAR: &str = "BERTH_WORKSPACE_TOKEN";

/// A written launcher: its script, and the secret it waits for.
#[derive(Debug)]
struct Launcher {
    script: PathBuf,
    /// Where it writes the command's exit status, and its process group's record.
    exit_file: PathBuf,
    record: PathBuf,
    /// The FIFO it reads the token from.
    fifo: Option<PathBuf>,
    secret: Option<token::Pending>,
}

/// What a tmux session runs: a workspace's main process or one of its sessions.
#[derive(Debug)]
struct Command<'a> {
    dir: Option<&'a str>,
    env: &'a std::collections::BTreeMap<String, String>,
    argv: &'a [String],
    /// The workspace's spec (its sandbox and network).
    spec: &'a WorkspaceSpec,
}

/// A sandboxed launch: the policy `berth sandbox-exec` enters, and the private temp
/// directory (`HOME`, `TMPDIR`).
#[derive(Debug)]
struct Confined {
    policy: berth_sandbox::Policy,
    tmp: PathBuf,
}

/// The terminal type panes get (and the server's `default-terminal`): tmux's own when
/// this host's terminfo has it, else `screen`, which every terminfo has.
fn pane_terminal() -> &'static str {
    let known = ["/usr/share/terminfo", "/lib/terminfo", "/etc/terminfo"]
        .iter()
        .any(|d| Path::new(d).join("t/tmux-256color").exists());
    if known { "tmux-256color" } else { "screen" }
}

/// A process group a launcher recorded, with its live members (proven ours).
#[derive(Debug)]
struct Recorded {
    /// The record read as a pane (never dead: it has live members).
    pane: Pane,
    members: Vec<i32>,
}

impl TmuxRuntime {
    /// A runtime on `<state dir>/tmux.sock`.
    pub fn new(config: TmuxConfig) -> Self {
        use std::os::unix::fs::DirBuilderExt as _;
        // The socket's directory: tmux makes the socket, not its directory.
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir);
        let tmux = Tmux::new(
            config.state_dir.join("tmux.sock"),
            config.command_timeout,
            config.control_mode,
            config.environment.clone(),
        );
        Self {
            tmux,
            config,
            support: berth_sandbox::support(),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// The server's socket.
    pub fn socket(&self) -> &Path {
        &self.tmux.socket
    }

    /// `tmux -V`, for `berth doctor` and start-up logs.
    ///
    /// # Errors
    /// `Unavailable` when tmux cannot be run.
    pub async fn version() -> Result<String, RuntimeError> {
        let out = tokio::process::Command::new("tmux")
            .arg("-V")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| RuntimeError::Unavailable {
                message: format!("cannot run tmux: {e}"),
            })?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn workdir(&self, ws: &WorkspaceId, spec: &berth_core::model::WorkspaceSpec) -> WorkDir {
        WorkDir::of(&self.config.data_dir, ws.as_str(), spec)
    }

    /// The sandbox `spec` gets here: `Some(network)` when it is confined. A spec that
    /// cannot be honoured is refused, naming why (the kernel, the helper, a network
    /// cut without a sandbox).
    fn confinement(&self, spec: &WorkspaceSpec) -> Result<Option<bool>, SpecRefusal> {
        let network = spec.network.unwrap_or(true);
        let wanted = spec.sandbox.unwrap_or(self.config.default_sandbox);
        let possible = self.support.sandbox() && self.config.sandbox_helper.is_some();
        let why_not = || {
            if self.config.sandbox_helper.is_none() {
                "no sandbox helper is configured (TmuxConfig::sandbox_helper)".to_owned()
            } else {
                format!(
                    "this kernel cannot enforce it ({})",
                    self.support.describe()
                )
            }
        };
        let confined = match wanted {
            Sandbox::None => false,
            Sandbox::Landlock if !possible => {
                return Err(SpecRefusal {
                    field: "sandbox",
                    message: format!(
                        "sandbox landlock is not available: {}; use sandbox auto to run unconfined where it is not",
                        why_not()
                    ),
                });
            }
            Sandbox::Landlock => true,
            Sandbox::Auto => possible,
        };
        if !network && !confined {
            return Err(SpecRefusal {
                field: "network",
                message: "network false needs a sandbox on the tmux runtime (sandbox landlock, where the kernel allows it)".into(),
            });
        }
        Ok(confined.then_some(network))
    }

    /// `env` with `BERTH_API_SOCKET`, the workspace's API socket (served from now on),
    /// when this runtime has sockets.
    fn with_socket(
        &self,
        ws: &WorkspaceId,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<std::collections::BTreeMap<String, String>, RuntimeError> {
        let mut env = env.clone();
        if let Some(sockets) = &self.config.sockets {
            let dir = sockets.open(ws).map_err(|message| RuntimeError::Other {
                resource: ws.to_string(),
                message,
            })?;
            env.insert(
                "BERTH_API_SOCKET".into(),
                dir.join(API_SOCKET).display().to_string(),
            );
        }
        Ok(env)
    }

    /// The private temp directory of a sandboxed workspace.
    fn private_tmp(&self, ws: &WorkspaceId) -> PathBuf {
        self.config.data_dir.join("tmp").join(ws.as_str())
    }

    /// What a sandboxed launch of `launcher` may reach: its directory, its private temp
    /// directory, the launcher's own files; never the tmux server or the Docker socket.
    fn confined(
        &self,
        spec: &WorkspaceSpec,
        ws: &WorkspaceId,
        dir: Option<&str>,
        launcher: Option<&Launcher>,
    ) -> Result<Option<Confined>, RuntimeError> {
        let network = match self.confinement(spec) {
            Ok(None) => return Ok(None),
            Ok(Some(network)) => network,
            Err(refusal) => {
                return Err(RuntimeError::Other {
                    resource: ws.to_string(),
                    message: refusal.message,
                });
            }
        };
        let tmp = self.private_tmp(ws);
        let own = dir.map_or_else(|| tmp.clone(), PathBuf::from);
        let mut policy = berth_sandbox::Policy::for_workspace(&own, &tmp, network);
        if let Some(sockets) = &self.config.sockets {
            // Its API socket (Landlock governs connecting to it from ABI 9 on).
            policy
                .write
                .push(sockets.open(ws).map_err(|message| RuntimeError::Other {
                    resource: ws.to_string(),
                    message,
                })?);
        }
        if let Some(launcher) = launcher {
            policy.read_files.push(launcher.script.clone());
            policy.read_files.extend(launcher.fifo.clone());
            policy.write_files = vec![launcher.record.clone(), launcher.exit_file.clone()];
        }
        policy.hide.push(self.tmux.socket.clone());
        policy.hide.extend(
            ["/var/run/docker.sock", "/run/docker.sock"]
                .iter()
                .map(PathBuf::from),
        );
        if let Some(path) = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        {
            policy.hide.push(path);
        }
        Ok(Some(Confined { policy, tmp }))
    }

    /// The panes of one tmux session, or `None` when it does not exist.
    async fn pane(&self, name: &str) -> Result<Option<Pane>, RuntimeError> {
        let out = self
            .tmux
            .run(
                &["list-panes", "-s", "-t", &exact(name), "-F", FORMAT],
                None,
            )
            .await?;
        if !out.ok {
            if out.is_gone() {
                return Ok(None);
            }
            return Err(RuntimeError::Other {
                resource: name.to_owned(),
                message: format!("tmux list-panes failed: {}", out.stderr.trim()),
            });
        }
        let line = out.stdout.lines().next().unwrap_or("");
        let pane = Pane::parse(line).map_err(|m| RuntimeError::Other {
            resource: name.to_owned(),
            message: m,
        })?;
        // Never act on a session tmux substituted for the one asked for.
        if pane.session != name {
            return Ok(None);
        }
        let mut pane = pane;
        self.settle(&mut pane).await;
        Ok(Some(pane))
    }

    async fn write_launcher(
        &self,
        name: &str,
        m: &Markers<'_>,
        mark: &str,
        dir: Option<&str>,
        env: &std::collections::BTreeMap<String, String>,
        argv: &[String],
    ) -> Result<Launcher, RuntimeError> {
        let incarnation = m.number();
        let dir_path = self.config.state_dir.join("launch");
        let path = dir_path.join(format!("{name}-{incarnation}.sh"));
        let exit_file = dir_path.join(format!("{name}-{incarnation}.exit"));
        let record = self.record_path(name);
        // The token goes through a FIFO, never into the script.
        let mut env = env.clone();
        let secret = env
            .remove(TOKEN_VAR)
            .map(|token| (dir_path.join(format!("{name}-{incarnation}.token")), token));
        let text = launcher::script(
            dir,
            &env,
            argv,
            &exit_file.to_string_lossy(),
            (&record.to_string_lossy(), mark),
            secret
                .as_ref()
                .map(|(fifo, _)| (TOKEN_VAR, fifo.to_str().unwrap_or_default())),
        );
        let tmp = dir_path.join(format!(".{name}-{incarnation}.tmp"));
        let target = path.clone();
        let fifo = secret.as_ref().map(|(fifo, _)| fifo.clone());
        // One blocking task for the handful of file operations.
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::create_dir_all(&dir_path)?;
            std::fs::set_permissions(&dir_path, std::fs::Permissions::from_mode(0o700))?;
            if let Some(fifo) = &fifo {
                token::make_fifo(fifo)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o700)
                .open(&tmp)?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            std::fs::rename(&tmp, &target)
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(Launcher {
                script: path,
                exit_file,
                record,
                fifo: secret.as_ref().map(|(fifo, _)| fifo.clone()),
                secret: secret.map(|(fifo, value)| token::Pending::new(fifo, value)),
            }),
            Ok(Err(e)) => Err(RuntimeError::Other {
                resource: path.display().to_string(),
                message: format!("cannot write the launcher: {e}"),
            }),
            Err(e) => Err(RuntimeError::Other {
                resource: path.display().to_string(),
                message: format!("writing the launcher failed: {e}"),
            }),
        }
    }

    /// Creates a marked session running `script`; kills it again if marking fails.
    async fn create(
        &self,
        name: &str,
        dir: Option<&str>,
        launcher: &Launcher,
        sandbox: Option<&Confined>,
        m: &Markers<'_>,
        mark: &str,
    ) -> Result<(), RuntimeError> {
        let target = exact(name);
        let script = launcher.script.to_string_lossy();
        // Never the user's `dir`: tmux expands `-c` as a format (`#(...)` would run a
        // command). The launcher does `cd` to it, quoted. Never the state directory
        // either: `/` until the launcher's `cd`.
        let _ = dir;
        let term = pane_terminal();
        // The process starts from nothing but the built environment (`env -i`): not
        // the tmux server's, which holds `TMUX` and whatever started it.
        // Sandboxed: `HOME` and `TMPDIR` are its private temp directory (the only place
        // besides its own directory it may write).
        let private = sandbox.map(|c| c.tmp.display().to_string());
        let environment: Vec<String> = self
            .config
            .environment
            .iter()
            .filter(|(k, _)| k != "TERM" && !(private.is_some() && (k == "HOME" || k == "TMPDIR")))
            .map(|(k, v)| format!("{k}={v}"))
            .chain([format!("TERM={term}")])
            .chain(
                private
                    .iter()
                    .flat_map(|t| [format!("HOME={t}"), format!("TMPDIR={t}")]),
            )
            .collect();
        let helper = self
            .config
            .sandbox_helper
            .as_ref()
            .map(|h| h.display().to_string())
            .unwrap_or_default();
        let policy = sandbox
            .map(|c| berth_sandbox::encode(&c.policy))
            .unwrap_or_default();
        // One invocation: keep finished panes (exit codes) before anything can exit,
        // create the session, mark it. tmux stops at the first failing command.
        let mut args: Vec<&str> = vec![
            "start-server",
            ";",
            "set-option",
            "-gw",
            "remain-on-exit",
            "on",
            ";",
            "set-option",
            "-g",
            "default-terminal",
            term,
            ";",
        ];
        args.extend([
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "200",
            "-y",
            "50",
            "-c",
            "/",
        ]);
        args.extend(["env", "-i"]);
        args.extend(environment.iter().map(String::as_str));
        if sandbox.is_some() {
            args.extend([helper.as_str(), "sandbox-exec", "--policy", &policy, "--"]);
        }
        args.extend(["/bin/sh", &script]);
        args.extend([";", "set-option", "-t", &target, "@berth", mark]);
        // Its output goes to a log kept past its end (before it can write anything:
        // the server reads the pane only after this command list).
        let number = m.number();
        logs::prune(&self.config.state_dir, name, Some(number.saturating_sub(1))).await;
        let log = logs::path(&self.config.state_dir, name, number);
        let _ = tokio::fs::remove_file(logs::done_path(&log)).await;
        let pipe = logs::pipe_command(self.config.sandbox_helper.as_deref(), &log);
        args.extend([";", "pipe-pane", "-t", &target, &pipe]);
        let out = self.tmux.run(&args, None).await?;
        if out.ok {
            return Ok(());
        }
        if out.stderr.contains("duplicate session") {
            return Err(RuntimeError::Conflict {
                resource: name.to_owned(),
                reason: ConflictReason::NameInUse,
                message: "tmux session name already in use".into(),
            });
        }
        // Created but not (fully) marked: kill it, but only if it carries no other
        // engine's marker.
        if let Ok(Some(pane)) = self.pane(name).await
            && (pane.engine.is_empty() || pane.engine == m.engine.as_str())
        {
            let _ = self
                .tmux
                .run(&["kill-session", "-t", &exact_session(name)], None)
                .await;
        }
        Err(RuntimeError::Other {
            resource: name.to_owned(),
            message: format!(
                "creating and marking the tmux session failed (nothing was left running): {}",
                out.stderr.trim()
            ),
        })
    }

    /// Writes the launcher of `command`, creates the marked tmux session `name` running
    /// it (sandboxed when its spec says so), and hands the launcher its secret. The
    /// create's error as is (`Conflict{NameInUse}` for a taken name); an undelivered
    /// secret is released with the launcher.
    async fn start_marked(
        &self,
        name: &str,
        markers: &Markers<'_>,
        command: &Command<'_>,
    ) -> Result<(), RuntimeError> {
        let mark = markers.text();
        let launcher = self
            .write_launcher(
                name,
                markers,
                &mark,
                command.dir,
                &self.with_socket(markers.workspace, command.env)?,
                command.argv,
            )
            .await?;
        let confined = self.confined(
            command.spec,
            markers.workspace,
            command.dir,
            Some(&launcher),
        )?;
        self.create(
            name,
            command.dir,
            &launcher,
            confined.as_ref(),
            markers,
            &mark,
        )
        .await?;
        self.hand_over(name, launcher).await
    }

    /// Gives a created session's launcher its secret, if it waits for one.
    async fn hand_over(&self, name: &str, launcher: Launcher) -> Result<(), RuntimeError> {
        let Some(secret) = launcher.secret else {
            return Ok(());
        };
        secret
            .deliver(self.config.command_timeout)
            .await
            .map_err(|message| RuntimeError::Other {
                resource: name.to_owned(),
                message,
            })
    }

    /// Fills in the exit status of a dead pane from the file its launcher wrote, when
    /// tmux itself does not know it.
    async fn settle(&self, pane: &mut Pane) {
        if !pane.dead || pane.status.is_some() {
            return;
        }
        let n = pane.number();
        let file = self
            .config
            .state_dir
            .join("launch")
            .join(format!("{}-{n}.exit", pane.session));
        if let Ok(text) = tokio::fs::read_to_string(&file).await {
            pane.status = text.trim().parse().ok();
        }
    }

    /// SIGTERM to the pane's process tree, `grace`, SIGKILL, then kill the session.
    async fn stop_pane(&self, pane: &Pane, grace: Duration) -> Result<(), RuntimeError> {
        if pane.pid > 1 {
            // The pane's process, its descendants, and every member of its process
            // group (also when the pane itself already exited).
            // While the leader exists (even as a zombie) the group is reached by killpg;
            // only when it is gone do members have to be found by scanning /proc.
            let members = |pid: i32| {
                let mut pids = procs::tree(pid);
                if !procs::leads_group(pid) {
                    for p in procs::group(pid) {
                        if !pids.contains(&p) {
                            pids.extend(procs::tree(p));
                        }
                    }
                }
                pids.sort_unstable();
                pids.dedup();
                pids
            };
            let mut pids = members(pane.pid);
            // Decided once: the group was ours when the stop began, and the stop lasts
            // at most the grace period (pid reuse within it would need the pid space to
            // wrap in seconds). A leader already gone means its members were scanned.
            let group_ours = procs::leads_group(pane.pid);
            if !pids.is_empty() || group_ours {
                if group_ours {
                    procs::kill_group(pane.pid, Signal::SIGTERM);
                }
                procs::signal_all(&pids, Signal::SIGTERM);
                let mut late = LateStart::new(pane.pid, &pids);
                let deadline = tokio::time::Instant::now() + grace;
                // Most processes end within milliseconds of SIGTERM (the launcher
                // records the exit status, then exits): poll finely at first, then back
                // off for the ones that use their grace.
                let began = tokio::time::Instant::now();
                let mut pause = Duration::from_micros(250);
                while pids.iter().any(|p| procs::alive(*p))
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(pause).await;
                    let missed = late.missed(&pids);
                    if !missed.is_empty() {
                        procs::signal_all(&missed, Signal::SIGTERM);
                        pids.extend(missed);
                    }
                    let cap = if began.elapsed() < Duration::from_millis(50) {
                        Duration::from_millis(1)
                    } else {
                        Duration::from_millis(50)
                    };
                    pause = (pause * 2).min(cap);
                }
                let mut rest: Vec<i32> =
                    pids.iter().copied().filter(|p| procs::alive(*p)).collect();
                // Something resisted SIGTERM: look again for anything it spawned meanwhile.
                if !rest.is_empty() {
                    for p in members(pane.pid) {
                        if !rest.contains(&p) {
                            rest.push(p);
                        }
                    }
                }
                if !rest.is_empty() || group_ours {
                    if group_ours {
                        procs::kill_group(pane.pid, Signal::SIGKILL);
                    }
                    procs::signal_all(&rest, Signal::SIGKILL);
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    while rest.iter().any(|p| procs::alive(*p))
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
        let out = self
            .tmux
            .run(&["kill-session", "-t", &exact_session(&pane.session)], None)
            .await?;
        if out.ok || out.is_gone() {
            // Its group is ended: the record has nothing left to find.
            let _ = tokio::fs::remove_file(self.record_path(&pane.session)).await;
            Ok(())
        } else {
            Err(RuntimeError::Other {
                resource: pane.session.clone(),
                message: format!("tmux kill-session failed: {}", out.stderr.trim()),
            })
        }
    }

    /// The main pane of `resource` if it is ours, fenced by incarnation.
    async fn fenced_main(&self, resource: &ResourceRef) -> Result<Option<Pane>, RuntimeError> {
        let name = main_name(&resource.workspace_id);
        let Some(pane) = self.pane(&name).await? else {
            return Ok(None);
        };
        if pane.engine != resource.engine_id.as_str() {
            return Err(RuntimeError::Conflict {
                resource: name,
                reason: ConflictReason::Foreign,
                message: "the tmux session is not this engine's".into(),
            });
        }
        if pane.incarnation != resource.incarnation.0 {
            return Err(RuntimeError::Conflict {
                resource: name,
                reason: ConflictReason::IncarnationMismatch,
                message: format!(
                    "carries incarnation {}, not {}",
                    pane.incarnation, resource.incarnation
                ),
            });
        }
        Ok(Some(pane))
    }

    /// Stops the recorded group of `resource`'s main process when its tmux session is
    /// gone, fenced by incarnation as a pane is.
    async fn stop_recorded_main(
        &self,
        resource: &ResourceRef,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let name = main_name(&resource.workspace_id);
        let Some(found) = self.recorded(&name).await else {
            return Ok(());
        };
        if found.pane.engine != resource.engine_id.as_str() {
            return Ok(());
        }
        if found.pane.incarnation != resource.incarnation.0 {
            return Err(RuntimeError::Conflict {
                resource: name,
                reason: ConflictReason::IncarnationMismatch,
                message: format!(
                    "carries incarnation {}, not {}",
                    found.pane.incarnation, resource.incarnation
                ),
            });
        }
        self.end_recorded(&name, found, grace).await;
        Ok(())
    }

    /// Session names with a launcher record but no tmux session in `listed`.
    async fn unlisted_records(&self, listed: &std::collections::HashSet<String>) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(self.config.state_dir.join("launch")).await
        else {
            return out;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let file = entry.file_name();
            if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".pid"))
                && !listed.contains(name)
            {
                out.push(name.to_owned());
            }
        }
        out
    }

    /// Where the launcher of session `name` records its process group.
    fn record_path(&self, name: &str) -> PathBuf {
        self.config
            .state_dir
            .join("launch")
            .join(format!("{name}.pid"))
    }

    /// The process group the launcher of session `name` recorded, when it still has
    /// live members that are provably ours (see [`procs::recorded_group`]). Found from
    /// the data directory and `/proc` alone: it works when the tmux server is gone.
    async fn recorded(&self, name: &str) -> Option<Recorded> {
        let text = tokio::fs::read_to_string(self.record_path(name))
            .await
            .ok()?;
        let (pid, mark) = text.trim_end().split_once(' ')?;
        let pid: i32 = pid.parse().ok()?;
        let pane = Pane::parse(&format!("{name}\t{mark}\t0\t\t{pid}\t")).ok()?;
        if pane.workspace.is_empty() {
            return None;
        }
        let (script, entry) = self.group_identity(&pane);
        let members =
            tokio::task::spawn_blocking(move || procs::recorded_group(pid, &script, &entry))
                .await
                .ok()?;
        (!members.is_empty()).then_some(Recorded { pane, members })
    }

    /// What proves a recorded group's processes ours: the launcher script its leader
    /// runs, and the environment entry berth gave its command.
    fn group_identity(&self, pane: &Pane) -> (String, String) {
        let script = self
            .config
            .state_dir
            .join("launch")
            .join(format!("{}-{}.sh", pane.session, pane.number()))
            .to_string_lossy()
            .into_owned();
        (script, format!("BERTH_WORKSPACE_ID={}", pane.workspace))
    }

    /// Ends a recorded group whose tmux session is gone: SIGTERM, `grace`, SIGKILL (to
    /// what it spawned meanwhile too), then forgets the record.
    async fn end_recorded(&self, name: &str, found: Recorded, grace: Duration) {
        let pane = found.pane;
        let (script, entry) = self.group_identity(&pane);
        let pgid = pane.pid;
        tracing::info!(session = name, pgid, members = ?found.members, "ending a process group that outlived its tmux session");
        procs::end(found.members, grace, || {
            procs::recorded_group(pgid, &script, &entry)
        })
        .await;
        let _ = tokio::fs::remove_file(self.record_path(name)).await;
    }

    async fn remove_launchers(&self, name: &str) {
        let dir = self.config.state_dir.join("launch");
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            if launcher_of(&entry.file_name().to_string_lossy(), name) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
}

#[async_trait]
impl ProcessRuntime for TmuxRuntime {
    fn kind(&self) -> RuntimeKind {
        #[allow(clippy::expect_used)]
        RuntimeKind::parse("tmux").expect("a valid runtime name")
    }

    fn check_spec(&self, spec: &WorkspaceSpec) -> Result<(), SpecRefusal> {
        if spec.image.is_some() {
            return Err(SpecRefusal {
                field: "image",
                message: "the tmux runtime runs commands on this host and has no images; use the docker runtime for an image".into(),
            });
        }
        if spec.limits.is_some() {
            return Err(SpecRefusal {
                field: "limits",
                message: "the tmux runtime cannot enforce resource limits; use the docker runtime for limits".into(),
            });
        }
        if spec.run_as_root || spec.read_only_root {
            return Err(SpecRefusal {
                field: if spec.run_as_root {
                    "run_as_root"
                } else {
                    "read_only_root"
                },
                message: "the tmux runtime runs commands as the daemon's user on the host's filesystem; use the docker runtime for that".into(),
            });
        }
        self.confinement(spec)?;
        if let Some(dir) = &spec.dir
            && dirs::reaches_into(Path::new(dir), &self.config.state_dir, false)
        {
            return Err(SpecRefusal {
                field: "dir",
                message: format!(
                    "{dir} is inside berth's state directory {}; a workspace never works there",
                    self.config.state_dir.display()
                ),
            });
        }
        Ok(())
    }

    async fn prepare(&self, workspace: &WorkspaceRef) -> Result<Option<String>, RuntimeError> {
        let dir = self.workdir(&workspace.workspace_id, &workspace.spec);
        dirs::prepare(&dir, self.config.git_timeout).await?;
        if matches!(self.confinement(&workspace.spec), Ok(Some(_))) {
            let tmp = self.private_tmp(&workspace.workspace_id);
            let made = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&tmp)
            })
            .await;
            if !matches!(made, Ok(Ok(()))) {
                return Err(RuntimeError::Other {
                    resource: self
                        .private_tmp(&workspace.workspace_id)
                        .display()
                        .to_string(),
                    message: format!("cannot make the private temp directory: {made:?}"),
                });
            }
        }
        Ok(Some(dir.path().to_string_lossy().into_owned()))
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<(), RuntimeError> {
        let r = &request.resource;
        let name = main_name(&r.workspace_id);
        // A group that outlived its tmux session (the server was killed) still holds
        // the workspace: never a second process beside it.
        if let Some(found) = self.recorded(&name).await
            && self.pane(&name).await?.is_none()
        {
            if found.pane.engine == r.engine_id.as_str()
                && found.pane.incarnation == r.incarnation.0
            {
                return Ok(());
            }
            return Err(RuntimeError::Conflict {
                resource: name,
                reason: ConflictReason::NameInUse,
                message: format!(
                    "incarnation {} still runs (its tmux session is gone)",
                    found.pane.incarnation
                ),
            });
        }
        let markers = Markers {
            engine: &r.engine_id,
            workspace: &r.workspace_id,
            incarnation: r.incarnation,
            kind: "main",
            session: "",
            generation: 0,
        };
        // Create first (one tmux process in the common case); only a taken name is
        // inspected. Rewriting the launcher is safe: a running shell keeps the old file.
        let command = Command {
            dir: request.dir.as_deref(),
            env: &request.env,
            argv: &request.spec.command,
            spec: &request.spec,
        };
        match self.start_marked(&name, &markers, &command).await {
            Ok(()) => return Ok(()),
            Err(RuntimeError::Conflict {
                reason: ConflictReason::NameInUse,
                ..
            }) => {}
            other => return other,
        }
        let Some(pane) = self.pane(&name).await? else {
            // Gone in between: the engine retries the launch.
            return Err(RuntimeError::Conflict {
                resource: name,
                reason: ConflictReason::RemovalInProgress,
                message: "the session was being removed".into(),
            });
        };
        if pane.engine != r.engine_id.as_str() {
            return Err(RuntimeError::Conflict {
                resource: name,
                reason: ConflictReason::Foreign,
                message: "a tmux session that is not this engine's holds the name".into(),
            });
        }
        if pane.incarnation == r.incarnation.0 && !pane.dead {
            return Ok(());
        }
        Err(RuntimeError::Conflict {
            resource: name,
            reason: ConflictReason::NameInUse,
            message: format!("incarnation {} still holds the session", pane.incarnation),
        })
    }

    async fn stop(&self, resource: &ResourceRef, grace: Duration) -> Result<(), RuntimeError> {
        match self.fenced_main(resource).await? {
            Some(pane) => self.stop_pane(&pane, grace).await,
            None => self.stop_recorded_main(resource, grace).await,
        }
    }

    async fn remove(&self, resource: &ResourceRef) -> Result<(), RuntimeError> {
        let name = main_name(&resource.workspace_id);
        match self.fenced_main(resource).await? {
            Some(pane) => self.stop_pane(&pane, Duration::ZERO).await?,
            None => self.stop_recorded_main(resource, Duration::ZERO).await?,
        }
        self.remove_launchers(&name).await;
        Ok(())
    }

    async fn cleanup(&self, workspace: &WorkspaceRef) -> Result<(), RuntimeError> {
        let _ = tokio::fs::remove_dir_all(self.private_tmp(&workspace.workspace_id)).await;
        self.remove_logs(&workspace.workspace_id).await;
        if let Some(sockets) = &self.config.sockets {
            sockets.close(&workspace.workspace_id);
        }
        dirs::cleanup(
            &self.workdir(&workspace.workspace_id, &workspace.spec),
            self.config.git_timeout,
        )
        .await
    }

    async fn inspect(
        &self,
        engine_id: &EngineId,
        workspace_id: &WorkspaceId,
    ) -> Result<Option<OwnedResource>, RuntimeError> {
        let name = main_name(workspace_id);
        let pane = match self.pane(&name).await? {
            Some(pane) => Some(pane),
            None => self.recorded(&name).await.map(|r| r.pane),
        };
        Ok(pane
            .filter(|p| p.engine == engine_id.as_str())
            .and_then(|p| p.owned()))
    }

    async fn list_owned(&self, engine_id: &EngineId) -> Result<Vec<OwnedResource>, RuntimeError> {
        let list = ["list-panes", "-a", "-F", FORMAT];
        let out = self.tmux.run(&list, None).await?;
        let mut owned = Vec::new();
        let mut listed = std::collections::HashSet::new();
        if out.ok {
            for line in out.stdout.lines().filter(|l| !l.is_empty()) {
                let mut pane = Pane::parse(line).map_err(|m| RuntimeError::Other {
                    resource: self.tmux.socket.display().to_string(),
                    message: m,
                })?;
                listed.insert(pane.session.clone());
                if pane.engine != engine_id.as_str() {
                    continue;
                }
                self.settle(&mut pane).await;
                if let Some(r) = pane.owned() {
                    owned.push(r);
                }
            }
        } else if !(out.stderr.contains("no server running")
            || out.stderr.trim() == "no current target"
            || (out.stderr.contains("error connecting to")
                && out.stderr.contains("No such file or directory")))
        {
            // No server means no sessions, and so does a server with no session left
            // (`list-panes -a` then finds no current target: seen while the server
            // exits after its last session, or with exit-empty off). Anything else is
            // a failed listing.
            return Err(RuntimeError::Other {
                resource: self.tmux.socket.display().to_string(),
                message: format!("tmux list-panes failed: {}", out.stderr.trim()),
            });
        }
        // Process groups that outlived their tmux session (the server was killed, and
        // the process ignores SIGHUP): found through their launchers' records.
        for name in self.unlisted_records(&listed).await {
            if let Some(found) = self.recorded(&name).await
                && found.pane.engine == engine_id.as_str()
                && let Some(r) = found.pane.owned()
            {
                owned.push(r);
            }
        }
        Ok(owned)
    }

    async fn launch_session(&self, launch: &SessionLaunch) -> Result<(), RuntimeError> {
        let r = &launch.resource;
        let main = match self.pane(&main_name(&r.workspace_id)).await? {
            Some(pane) => Some(pane),
            None => self
                .recorded(&main_name(&r.workspace_id))
                .await
                .map(|r| r.pane),
        };
        match main {
            Some(p)
                if p.engine == r.engine_id.as_str()
                    && p.incarnation == r.incarnation.0
                    && !p.dead => {}
            _ => {
                return Err(RuntimeError::NotFound {
                    resource: main_name(&r.workspace_id),
                });
            }
        }
        let name = session_name(&r.workspace_id, &launch.name);
        let pane = self.pane(&name).await?;
        // A group that outlived its tmux session (the server was killed) still holds
        // the session name: the same generation is this launch already done; any other
        // still runs, so the name is in use (never two processes beside each other).
        if pane.is_none()
            && let Some(found) = self.recorded(&name).await
        {
            if found.pane.engine == r.engine_id.as_str()
                && found.pane.incarnation == r.incarnation.0
                && found.pane.generation == launch.generation.0
            {
                return Ok(());
            }
            return Err(RuntimeError::Conflict {
                resource: name,
                reason: ConflictReason::NameInUse,
                message: format!(
                    "generation {} still runs (its tmux session is gone)",
                    found.pane.generation
                ),
            });
        }
        if let Some(pane) = pane {
            let ours = pane.engine == r.engine_id.as_str();
            if ours && pane.generation == launch.generation.0 && !pane.dead {
                return Ok(());
            }
            if !(ours && pane.status() != ProcessStatus::Running) {
                return Err(RuntimeError::Conflict {
                    resource: name,
                    reason: ConflictReason::NameInUse,
                    message: "the session name is in use".into(),
                });
            }
            // An exited generation of ours: it gives way to the new one.
            self.stop_pane(&pane, Duration::ZERO).await?;
            self.remove_launchers(&name).await;
        }
        let markers = Markers {
            engine: &r.engine_id,
            workspace: &r.workspace_id,
            incarnation: r.incarnation,
            kind: "session",
            session: launch.name.as_str(),
            generation: launch.generation.0,
        };
        let command = Command {
            dir: launch.dir.as_deref(),
            env: &launch.env,
            argv: &launch.command,
            spec: &launch.spec,
        };
        self.start_marked(&name, &markers, &command).await
    }

    async fn inspect_session(
        &self,
        session: &SessionRef,
    ) -> Result<Option<OwnedResource>, RuntimeError> {
        let name = session_name(&session.workspace_id, &session.name);
        let pane = match self.pane(&name).await? {
            Some(pane) => Some(pane),
            None => self.recorded(&name).await.map(|r| r.pane),
        };
        Ok(pane
            .filter(|p| p.engine == session.engine_id.as_str() && p.kind == "session")
            .and_then(|p| p.owned()))
    }

    async fn stop_session(
        &self,
        session: &SessionRef,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let name = session_name(&session.workspace_id, &session.name);
        let Some(pane) = self.pane(&name).await? else {
            // Its tmux session is gone; a group that outlived it is ended all the same.
            if let Some(found) = self.recorded(&name).await
                && found.pane.engine == session.engine_id.as_str()
                && session
                    .generation
                    .is_none_or(|g| g.0 == found.pane.generation)
            {
                self.end_recorded(&name, found, grace).await;
            }
            return Ok(());
        };
        if pane.engine != session.engine_id.as_str() {
            return Err(RuntimeError::Conflict {
                resource: name,
                reason: ConflictReason::Foreign,
                message: "the tmux session is not this engine's".into(),
            });
        }
        if session.generation.is_some_and(|g| g.0 != pane.generation) {
            return Ok(());
        }
        self.stop_pane(&pane, grace).await?;
        self.remove_launchers(&name).await;
        Ok(())
    }

    async fn capture(
        &self,
        target: &CaptureTarget,
        lines: usize,
    ) -> Result<Vec<String>, RuntimeError> {
        let (name, engine) = match target {
            CaptureTarget::Main(r) => (main_name(&r.workspace_id), &r.engine_id),
            CaptureTarget::Session(s) => (session_name(&s.workspace_id, &s.name), &s.engine_id),
        };
        match self.pane(&name).await? {
            Some(p) if p.engine == engine.as_str() => {}
            _ => return Err(RuntimeError::NotFound { resource: name }),
        }
        let start = format!("-{}", lines.max(1));
        let text = self
            .tmux
            .ok(
                &[
                    "capture-pane",
                    "-p",
                    "-J",
                    "-t",
                    &exact(&name),
                    "-S",
                    &start,
                ],
                &name,
            )
            .await?;
        let mut out: Vec<String> = text.lines().map(str::to_owned).collect();
        while out.last().is_some_and(|l| l.trim().is_empty()) {
            out.pop();
        }
        let skip = out.len().saturating_sub(lines);
        Ok(out.split_off(skip))
    }

    async fn logs(
        &self,
        target: &CaptureTarget,
        query: &LogQuery,
    ) -> Result<LogStream, RuntimeError> {
        if let Some(kept) = self.kept_logs(target, query).await? {
            return Ok(kept);
        }
        // Started before logs were kept: what the pane still shows.
        let lines = self.capture(target, query.tail.unwrap_or(10_000)).await?;
        Ok(berth_core::ports::captured(lines))
    }

    async fn exec(&self, request: &ExecRequest) -> Result<ExecIo, RuntimeError> {
        self.exec_beside(request).await
    }

    async fn attach(
        &self,
        target: &CaptureTarget,
        size: TermSize,
        term: Option<String>,
    ) -> Result<ExecIo, RuntimeError> {
        self.attach_client(target, size, term).await
    }

    async fn copy_out(&self, request: &CopyRequest) -> Result<ByteStream, RuntimeError> {
        self.tar_out(request).await
    }

    async fn copy_in(
        &self,
        request: &CopyRequest,
        archive: ByteStream,
    ) -> Result<(), RuntimeError> {
        self.tar_in(request, archive).await
    }

    async fn dirty_check(&self, workspace: &WorkspaceRef) -> Result<DirtyReport, RuntimeError> {
        dirs::dirty(
            &self.workdir(&workspace.workspace_id, &workspace.spec),
            self.config.git_timeout,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{LateStart, launcher_of, procs};

    /// A shell that runs `script` and is killed when dropped.
    struct Shell(std::process::Child);

    impl Shell {
        fn new(script: &str) -> Self {
            Self(
                std::process::Command::new("/bin/sh")
                    .args(["-c", script])
                    .spawn()
                    .unwrap(),
            )
        }

        fn pid(&self) -> i32 {
            i32::try_from(self.0.id()).unwrap()
        }
    }

    impl Drop for Shell {
        fn drop(&mut self) {
            for p in procs::tree(self.pid()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.0.wait();
        }
    }

    /// Waits (bounded) until `ready` holds; the test fails otherwise.
    fn until(what: &str, ready: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ready() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::yield_now();
        }
    }

    fn children(pid: i32) -> Vec<i32> {
        procs::tree(pid).into_iter().filter(|p| *p != pid).collect()
    }

    /// A FIFO `go` in `dir`: a shell reading it waits until the test writes to it.
    fn fifo(dir: &std::path::Path) -> std::path::PathBuf {
        let go = dir.join("go");
        let made = std::process::Command::new("mkfifo")
            .arg(&go)
            .status()
            .unwrap();
        assert!(made.success());
        go
    }

    #[test]
    fn a_command_started_after_the_stop_signal_is_signalled_once() {
        let dir = tempfile::tempdir().unwrap();
        let go = fifo(dir.path());
        // A launcher with nothing started yet: it waits for `go`, then starts a command.
        let leader = Shell::new(&format!("read x < '{}'; sleep 100 & wait", go.display()));
        let pid = leader.pid();
        until("the launcher to wait", || {
            std::fs::read_to_string(format!("/proc/{pid}/wchan"))
                .is_ok_and(|w| w == "wait_for_partner")
        });
        let mut late = LateStart::new(pid, &[pid]);
        assert!(late.missed(&[pid]).is_empty(), "nothing started yet");
        std::fs::write(&go, "go\n").unwrap();
        until("the command to start", || !children(pid).is_empty());
        let command = children(pid);
        assert_eq!(
            late.missed(&[pid]),
            command,
            "the late command is signalled"
        );
        let mut signalled = vec![pid];
        signalled.extend(&command);
        assert!(late.missed(&signalled).is_empty(), "and only once");
    }

    #[test]
    fn a_process_that_execs_after_the_stop_signal_is_signalled_again_and_new_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let go = fifo(dir.path());
        // A launcher whose child is still a shell when signalled, and execs later into a
        // command that starts a helper: the helper, started after the signal, is the
        // command's own business.
        let leader = Shell::new(&format!(
            "(read x < '{go}'; exec sh -c 'sleep 100 & wait') & wait",
            go = go.display()
        ));
        let pid = leader.pid();
        until("the child to start", || !children(pid).is_empty());
        let child = children(pid);
        let mut signalled = vec![pid];
        signalled.extend(&child);
        let mut late = LateStart::new(pid, &signalled);
        assert!(
            late.missed(&signalled).is_empty(),
            "the child has not exec'd"
        );
        std::fs::write(&go, "go\n").unwrap();
        until("the child to exec and start its helper", || {
            procs::cmdline(child[0]).is_some_and(|c| c.starts_with(b"sh\0-c\0sleep"))
                && children(pid).len() == 2
        });
        assert_eq!(
            late.missed(&signalled),
            child,
            "signalled again after its exec, its helper not"
        );
        assert!(late.missed(&signalled).is_empty(), "once");
    }

    #[test]
    fn launcher_files_match_their_session_exactly() {
        assert!(launcher_of("bs-1-foo-3.sh", "bs-1-foo"));
        assert!(launcher_of("bs-1-foo-3.exit", "bs-1-foo"));
        assert!(launcher_of("bs-1-foo-3.exit.tmp", "bs-1-foo"));
        assert!(launcher_of(".bs-1-foo-3.tmp", "bs-1-foo"));
        assert!(
            !launcher_of("bs-1-foo-bar-3.sh", "bs-1-foo"),
            "another session's file"
        );
        assert!(!launcher_of("bs-1-foo-bar-3.exit", "bs-1-foo"));
        assert!(!launcher_of("bs-1-foo-.sh", "bs-1-foo"));
        assert!(!launcher_of("bs-1-foo-3.sh.bak", "bs-1-foo"));
    }
}
