//! P2's floor: a tmux control-mode client (`tmux -C`), one process for all commands,
//! which is how berth's runtime talks to its server too. A graceful cycle through it
//! is what any tmux-backed runtime must do at least: create the session (which answers
//! its process's pid), SIGTERM that process, wait for the exit, kill the session.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// One control-mode client attached to a session of the server at a socket.
pub(crate) struct Control {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Control {
    /// Attaches to `session` (which must exist) and waits until the client answers.
    pub(crate) async fn attach(socket: &Path, session: &str) -> Result<Self> {
        let mut child = Command::new("tmux")
            .arg("-S")
            .arg(socket)
            .args(["-C", "attach-session", "-t", session])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a tmux control client")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let mut control = Self {
            _child: child,
            stdin,
            lines,
        };
        // The attach itself answers with a block of its own: skip to a marker.
        control.send("display-message -p berth-bench-sync").await?;
        loop {
            let line = control.line().await?;
            if line == "berth-bench-sync" {
                break;
            }
        }
        control.line().await?; // its %end
        Ok(control)
    }

    async fn send(&mut self, command: &str) -> Result<()> {
        self.stdin.write_all(command.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn line(&mut self) -> Result<String> {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .context("the control client said nothing for 10 s")??
            .context("the control client exited")
    }

    /// Runs one command; its output lines. Notifications between blocks are skipped, and
    /// so are blocks not of this client's commands (flags other than 1: the attach
    /// itself, commands the server runs on its own).
    pub(crate) async fn run(&mut self, command: &str) -> Result<Vec<String>> {
        self.send(command).await?;
        loop {
            let begin = self.line().await?;
            if !begin.starts_with("%begin ") {
                continue;
            }
            let ours = begin.rsplit(' ').next() == Some("1");
            let mut out = Vec::new();
            loop {
                let line = self.line().await?;
                if line.starts_with("%end ") {
                    break;
                }
                if line.starts_with("%error ") {
                    if ours {
                        bail!("tmux {command}: {}", out.join("; "));
                    }
                    break;
                }
                out.push(line);
            }
            if ours {
                return Ok(out);
            }
        }
    }

    /// Creates session `name` running `sleep` (one command that also answers its
    /// pid), sends its process SIGTERM, waits until it has exited (polling as berth's
    /// stop does), and kills the session.
    pub(crate) async fn graceful_cycle(&mut self, name: &str) -> Result<()> {
        let out = self
            .run(&format!(
                "new-session -d -P -F '#{{pane_pid}}' -s {name} 'exec sleep 3600'"
            ))
            .await?;
        let pid: i32 = out
            .iter()
            .find_map(|line| line.trim().parse().ok())
            .with_context(|| format!("no pane pid in {out:?}"))?;
        ensure!(pid > 1, "tmux answered pid {pid}");
        kill(Pid::from_raw(pid), Signal::SIGTERM)?;
        let mut pause = Duration::from_micros(250);
        let mut waited = Duration::ZERO;
        while alive(pid) {
            ensure!(
                waited < Duration::from_secs(10),
                "pid {pid} outlived SIGTERM"
            );
            tokio::time::sleep(pause).await;
            waited += pause;
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        self.run(&format!("kill-session -t ={name}")).await?;
        Ok(())
    }
}

/// Whether `pid` exists and has not exited (a zombie, or one being reaped, has).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
    })
}
