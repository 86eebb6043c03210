//! Runs tmux commands against the engine's private server. By default through one
//! persistent control-mode client (`tmux -C`, attached to an unmarked `berth-control`
//! session), which saves a process per command; on any control-mode failure (EOF,
//! timeout, a response that does not parse) the client is dropped, the command runs
//! through the CLI (`tmux -S <socket> -f /dev/null ...`, with a timeout and
//! `kill_on_drop`), and a new client is started later. Commands whose output a
//! workspace process controls (`capture-pane`) always use the CLI, so nothing a process
//! prints can forge the control protocol's framing. Only ids, numbers, fixed words and
//! our own paths are ever passed.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use berth_core::ports::RuntimeError;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The session the control client attaches to. It carries no berth markers, so the
/// reconciler never lists or touches it.
pub(crate) const CONTROL_SESSION: &str = "berth-control";

/// What a tmux invocation printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    /// The server is not running or the target does not exist: the thing is gone.
    pub(crate) fn is_gone(&self) -> bool {
        let e = &self.stderr;
        e.contains("can't find session")
            || e.contains("can't find pane")
            || e.contains("can't find window")
            || e.contains("no server running")
            || (e.contains("error connecting to") && e.contains("No such file or directory"))
            // A live server with no session at all (exiting after its last one, or
            // exit-empty off) answers an exact target this way: nothing is there.
            || e.trim() == "no current target"
    }
}

/// The control client's own session is gone (killed from outside) while the client is
/// still attached: every command we send names its target exactly or uses `-a`, so
/// these answers can only come from the client having no session.
fn lost_its_session(out: &Output) -> bool {
    !out.ok
        && (out.stderr.contains("no current target")
            || out.stderr.contains("no current session")
            || out.stderr.contains("no current client"))
}

/// A live control-mode client.
#[derive(Debug)]
struct Control {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Set while an exchange is under way; still set afterwards only if the caller was
    /// dropped mid-exchange, and then the stream holds a stale answer: discard.
    busy: bool,
}

/// Quotes one argument for tmux's command parser: single quotes, with `'` written as
/// `'\''` (closing quote, escaped quote, opening quote). `;` stays a bare separator.
fn quote(arg: &str) -> String {
    if arg == ";" {
        return ";".to_owned();
    }
    format!("'{}'", arg.replace('\'', "'\\''"))
}

impl Control {
    async fn start(
        socket: &PathBuf,
        timeout: Duration,
        environment: &[(String, String)],
    ) -> Result<Self, String> {
        let mut child = Command::new("tmux")
            .env_clear()
            .envs(environment.iter().map(|(k, v)| (k, v)))
            .arg("-S")
            .arg(socket)
            .args([
                "-f",
                "/dev/null",
                "-C",
                "new-session",
                "-A",
                "-s",
                CONTROL_SESSION,
                "exec sleep 2147483647",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes".into());
        };
        let mut control = Control {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            busy: false,
        };
        // Synchronise: everything before our marker's answer is start-up noise.
        let out = tokio::time::timeout(
            timeout,
            control.call_list(&["display-message", "-p", "berth-control-ready"]),
        )
        .await
        .map_err(|_| "start timed out".to_owned())??;
        if out.ok && out.stdout.trim() == "berth-control-ready" {
            Ok(control)
        } else {
            Err(format!("unexpected start-up answer {out:?}"))
        }
    }

    /// A `;`-separated command list sent as ONE line, so the server queues and runs it
    /// as a unit (as with the CLI): creating and marking a session cannot be split by a
    /// timeout or a crash. Control mode answers each command with its own block and
    /// stops at the first failure, as tmux does.
    async fn call_list(&mut self, args: &[&str]) -> Result<Output, String> {
        if self.busy {
            return Err("a previous exchange was abandoned".into());
        }
        self.busy = true;
        let out = self.exchange_list(args).await;
        self.busy = false;
        out
    }

    async fn exchange_list(&mut self, args: &[&str]) -> Result<Output, String> {
        let commands = args.split(|a| *a == ";").filter(|c| !c.is_empty()).count();
        self.send(args).await?;
        let mut stdout = Vec::new();
        for _ in 0..commands {
            let out = self.read_block().await?;
            if !out.ok {
                return Ok(out);
            }
            if !out.stdout.is_empty() {
                stdout.push(out.stdout);
            }
        }
        Ok(Output {
            ok: true,
            stdout: stdout.join("\n"),
            stderr: String::new(),
        })
    }

    async fn send(&mut self, args: &[&str]) -> Result<(), String> {
        let words: Vec<String> = args.iter().map(|a| quote(a)).collect();
        let mut line = words.join(" ");
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        self.stdin.flush().await.map_err(|e| e.to_string())
    }

    async fn read_block(&mut self) -> Result<Output, String> {
        // Read blocks until one answers a command of ours (flags 1): the start-up block
        // of the control client's own session has flags 0, and notifications (`%...`
        // lines outside blocks) are skipped.
        loop {
            let (time, number, ours) = loop {
                let l = self
                    .lines
                    .next_line()
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("control client closed")?;
                if let Some(rest) = l.strip_prefix("%begin ") {
                    let f: Vec<&str> = rest.split(' ').collect();
                    break (
                        f.first().copied().unwrap_or("").to_owned(),
                        f.get(1).copied().unwrap_or("").to_owned(),
                        f.get(2) == Some(&"1"),
                    );
                }
                if l.starts_with("%exit") {
                    return Err("control client exited".into());
                }
            };
            let mut body = Vec::new();
            let ok = loop {
                let l = self
                    .lines
                    .next_line()
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("control client closed")?;
                let closing =
                    [("%end ", true), ("%error ", false)]
                        .into_iter()
                        .find_map(|(tag, ok)| {
                            let rest = l.strip_prefix(tag)?;
                            let mut f = rest.split(' ');
                            (f.next() == Some(time.as_str()) && f.next() == Some(number.as_str()))
                                .then_some(ok)
                        });
                match closing {
                    Some(ok) => break ok,
                    None => body.push(l),
                }
            };
            if !ours {
                continue;
            }
            let text = body.join("\n");
            return Ok(if ok {
                Output {
                    ok,
                    stdout: text,
                    stderr: String::new(),
                }
            } else {
                Output {
                    ok,
                    stdout: String::new(),
                    stderr: text,
                }
            });
        }
    }
}

/// A tmux client for one server socket.
#[derive(Debug, Clone)]
pub(crate) struct Tmux {
    pub(crate) socket: PathBuf,
    pub(crate) timeout: Duration,
    /// The whole environment of every tmux client berth runs (a server started by one
    /// inherits it): never the daemon's own.
    pub(crate) environment: Arc<Vec<(String, String)>>,
    /// The control-mode client, when one runs; `None` when control mode is off.
    control: Option<Arc<tokio::sync::Mutex<Option<Control>>>>,
}

impl Tmux {
    pub(crate) fn new(
        socket: PathBuf,
        timeout: Duration,
        control_mode: bool,
        environment: Vec<(String, String)>,
    ) -> Self {
        Self {
            socket,
            timeout,
            environment: Arc::new(environment),
            control: control_mode.then(|| Arc::new(tokio::sync::Mutex::new(None))),
        }
    }

    /// Runs `tmux <args>` through the control client when possible, else the CLI.
    pub(crate) async fn run(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Output, RuntimeError> {
        let controllable = stdin.is_none()
            && args.first() != Some(&"capture-pane")
            && args.iter().all(|a| !a.contains(['\n', '\r']));
        if let (true, Some(slot)) = (controllable, &self.control) {
            let mut guard = slot.lock().await;
            if guard.is_none() {
                match Control::start(&self.socket, self.timeout, &self.environment).await {
                    Ok(c) => *guard = Some(c),
                    Err(e) => {
                        tracing::debug!(socket = %self.socket.display(), error = %e, "tmux control mode unavailable; using the CLI")
                    }
                }
            }
            if let Some(control) = guard.as_mut() {
                match tokio::time::timeout(self.timeout, control.call_list(args)).await {
                    // A control client whose session was just killed from outside is
                    // still attached for a moment; the server then answers commands
                    // that resolve a default target with "no current target". That
                    // is the client's loss, not the command's answer: use the CLI.
                    Ok(Ok(out)) if !lost_its_session(&out) => return Ok(out),
                    Ok(Ok(out)) => {
                        tracing::debug!(error = %out.stderr.trim(), "tmux control client lost its session; falling back to the CLI")
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "tmux control client failed; falling back to the CLI")
                    }
                    Err(_) => {
                        tracing::debug!("tmux control client timed out; falling back to the CLI")
                    }
                }
                if let Some(mut dead) = guard.take() {
                    let _ = dead.child.start_kill();
                }
            }
        }
        self.cli(args, stdin).await
    }

    /// Runs `tmux -S <socket> -f /dev/null <args>` as its own process.
    pub(crate) async fn cli(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Output, RuntimeError> {
        // A server caught while exiting (its last session just ended) answers "server
        // exited unexpectedly" without running the command: ask again briefly.
        let mut out = self.cli_once(args, stdin).await?;
        for _ in 0..10 {
            if out.ok || !out.stderr.contains("server exited unexpectedly") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            out = self.cli_once(args, stdin).await?;
        }
        Ok(out)
    }

    async fn cli_once(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, RuntimeError> {
        let mut cmd = Command::new("tmux");
        cmd.env_clear()
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let what = args.first().copied().unwrap_or("tmux");
        let run = async {
            let mut child = cmd.spawn().map_err(|e| RuntimeError::Unavailable {
                message: format!("cannot run tmux: {e}"),
            })?;
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(data)
                    .await
                    .map_err(|e| RuntimeError::Other {
                        resource: "tmux".into(),
                        message: format!("writing to tmux {what}: {e}"),
                    })?;
            }
            child
                .wait_with_output()
                .await
                .map_err(|e| RuntimeError::Other {
                    resource: "tmux".into(),
                    message: format!("tmux {what}: {e}"),
                })
        };
        let out = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| RuntimeError::Timeout {
                operation: format!("tmux {what}"),
                after: self.timeout,
            })??;
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs a command that must succeed.
    pub(crate) async fn ok(&self, args: &[&str], resource: &str) -> Result<String, RuntimeError> {
        let out = self.run(args, None).await?;
        if out.ok {
            return Ok(out.stdout);
        }
        if out.is_gone() {
            return Err(RuntimeError::NotFound {
                resource: resource.to_owned(),
            });
        }
        Err(RuntimeError::Other {
            resource: resource.to_owned(),
            message: format!(
                "tmux {} failed: {}",
                args.first().copied().unwrap_or(""),
                out.stderr.trim()
            ),
        })
    }
}
