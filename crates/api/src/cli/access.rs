//! `berth ws exec`, `attach`, `logs` and `cp`: the ways into a workspace, over the API
//! (so they work against a remote daemon too). Exec and attach speak the WebSocket
//! channel frames of `docs/api.md`; the terminal is put in raw mode while attached and
//! restored on every way out.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{CallError, Client, enc};
use crate::http::access::channel;

/// The detach key of `attach` (Ctrl-]).
const DETACH: u8 = 0x1d;

/// The terminal's size, or 80x24.
fn term_size() -> (u16, u16) {
    terminal_size::terminal_size().map_or((80, 24), |(w, h)| (w.0, h.0))
}

/// Raw mode on stdin while alive; the saved mode comes back on drop.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Self(None);
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return Self(None);
        }
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

fn frame(ch: u8, bytes: &[u8]) -> Message {
    let mut data = Vec::with_capacity(bytes.len() + 1);
    data.push(ch);
    data.extend_from_slice(bytes);
    Message::Binary(data.into())
}

/// How a streamed exec or attach ended.
enum Ended {
    Exit(Option<i64>),
    Detached,
}

impl Client {
    /// Opens a WebSocket on `path` (an upgraded request through the same HTTP client,
    /// so the same URL, CA and token rules apply).
    async fn websocket(&self, path: &str) -> anyhow::Result<WebSocketStream<reqwest::Upgraded>> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONNECTION, "Upgrade")
            .header(reqwest::header::UPGRADE, "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header(
                "Sec-WebSocket-Key",
                tokio_tungstenite::tungstenite::handshake::client::generate_key(),
            )
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if status != 101 {
            let text = resp.text().await.unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(CallError::from_body(status, &v).into());
        }
        let upgraded = resp
            .upgrade()
            .await
            .context("the WebSocket upgrade failed")?;
        Ok(WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await)
    }

    /// Carries stdin (raw when `raw`), resizes and output over `ws` until the exit
    /// frame, a detach key (with `detach`), or the end of the connection.
    async fn pump_terminal(
        mut ws: WebSocketStream<reqwest::Upgraded>,
        stdin_open: bool,
        tty: bool,
        detach: bool,
    ) -> anyhow::Result<Ended> {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 8192];
        let mut stdin_open = stdin_open;
        if !stdin_open {
            ws.send(frame(channel::CLOSE_STDIN, &[])).await?;
        }
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .context("cannot watch the terminal's size")?;
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        loop {
            tokio::select! {
                msg = ws.next() => {
                    let data = match msg {
                        Some(Ok(Message::Binary(d))) => d,
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                            return Err(CallError::from_body(500, &v).into());
                        }
                        Some(Ok(Message::Close(_))) | None => return Ok(Ended::Exit(None)),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(anyhow::anyhow!("the connection to the daemon broke: {e}")),
                    };
                    let Some((&ch, rest)) = data.split_first() else { continue };
                    match ch {
                        channel::STDOUT => { out.write_all(rest)?; out.flush()?; }
                        channel::STDERR => { err.write_all(rest)?; err.flush()?; }
                        channel::EXIT => {
                            let v: Value = serde_json::from_slice(rest).unwrap_or(Value::Null);
                            return Ok(Ended::Exit(v["exit_code"].as_i64()));
                        }
                        _ => {}
                    }
                }
                n = stdin.read(&mut buf), if stdin_open => {
                    match n {
                        Ok(0) | Err(_) => {
                            stdin_open = false;
                            ws.send(frame(channel::CLOSE_STDIN, &[])).await?;
                        }
                        Ok(n) => {
                            if detach && buf[..n].contains(&DETACH) {
                                let _ = ws.send(Message::Close(None)).await;
                                return Ok(Ended::Detached);
                            }
                            ws.send(frame(channel::STDIN, &buf[..n])).await?;
                        }
                    }
                }
                _ = winch.recv(), if tty => {
                    let (cols, rows) = term_size();
                    let body = serde_json::json!({"cols": cols, "rows": rows}).to_string();
                    ws.send(frame(channel::RESIZE, body.as_bytes())).await?;
                }
            }
        }
    }

    /// `berth ws exec`: the command's exit code.
    pub(crate) async fn exec(
        &self,
        workspace: &str,
        command: Vec<String>,
        tty: bool,
        interactive: bool,
    ) -> anyhow::Result<i32> {
        let mut ws = self
            .websocket(&format!("/v1/workspaces/{}/exec", enc(workspace)))
            .await?;
        let (cols, rows) = term_size();
        let start = serde_json::json!({
            "command": command, "tty": tty, "cols": cols, "rows": rows,
            "term": std::env::var("TERM").ok().filter(|t| !t.is_empty()),
        });
        ws.send(Message::Text(start.to_string().into())).await?;
        let raw = if tty && interactive {
            Some(RawMode::enter())
        } else {
            None
        };
        let ended = Self::pump_terminal(ws, interactive, tty, false).await;
        drop(raw);
        match ended? {
            Ended::Exit(code) => Ok(code.map_or(1, |c| i32::try_from(c).unwrap_or(1))),
            Ended::Detached => Ok(0),
        }
    }

    /// `berth ws attach`.
    pub(crate) async fn attach(
        &self,
        workspace: &str,
        session: Option<&str>,
    ) -> anyhow::Result<i32> {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("attach needs a terminal on stdin; use `berth ws exec` for scripts");
        }
        let (cols, rows) = term_size();
        let mut path = format!(
            "/v1/workspaces/{}/attach?cols={cols}&rows={rows}",
            enc(workspace)
        );
        if let Some(s) = session {
            path.push_str(&format!("&session={}", enc(s)));
        }
        if let Ok(term) = std::env::var("TERM")
            && !term.is_empty()
        {
            path.push_str(&format!("&term={}", enc(&term)));
        }
        let ws = self.websocket(&path).await?;
        eprintln!(
            "attached to {workspace}{}; detach with Ctrl-] (tmux: also Ctrl-b d)\r",
            session.map(|s| format!(" session {s}")).unwrap_or_default()
        );
        let raw = RawMode::enter();
        let ended = Self::pump_terminal(ws, true, true, true).await;
        drop(raw);
        match ended? {
            Ended::Detached => eprintln!("\r\ndetached from {workspace}"),
            Ended::Exit(_) => eprintln!("\r\n[detached from {workspace}]"),
        }
        Ok(0)
    }

    /// `berth ws logs`.
    pub(crate) async fn logs(
        &self,
        workspace: &str,
        session: Option<&str>,
        follow: bool,
        since: Option<&str>,
        tail: Option<usize>,
        timestamps: bool,
    ) -> anyhow::Result<()> {
        let mut path = format!("/v1/workspaces/{}/logs?follow={follow}", enc(workspace));
        if let Some(s) = session {
            path.push_str(&format!("&session={}", enc(s)));
        }
        if let Some(s) = since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        if let Some(n) = tail {
            path.push_str(&format!("&tail={n}"));
        }
        let resp = self.send_raw(reqwest::Method::GET, &path, None).await?;
        let mut body = resp.bytes_stream();
        let mut partial: Vec<u8> = Vec::new();
        let mut out = std::io::stdout();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the log stream broke")?;
            partial.extend_from_slice(&chunk);
            while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                let rest = partial.split_off(i + 1);
                let line = std::mem::replace(&mut partial, rest);
                if self.json {
                    out.write_all(&line)?;
                } else {
                    let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
                    let text = v["line"].as_str().unwrap_or("");
                    if timestamps {
                        writeln!(out, "{} {text}", v["time"].as_str().unwrap_or("-"))?;
                    } else {
                        writeln!(out, "{text}")?;
                    }
                }
            }
            out.flush()?;
        }
        Ok(())
    }

    /// `berth ws cp`: `NAME:PATH LOCAL` or `LOCAL NAME:PATH` (`-` for a tar on
    /// stdin/stdout).
    pub(crate) async fn cp(&self, src: &str, dst: &str) -> anyhow::Result<()> {
        match (remote(src), remote(dst)) {
            (Some((ws, path)), None) => self.copy_out(ws, path, dst).await,
            (None, Some((ws, path))) => self.copy_in(src, ws, path).await,
            _ => Err(super::UsageError(
                "ws cp copies between a workspace and here: one of SRC and DST is NAME:PATH, the other a local path or -".into(),
            )
            .into()),
        }
    }

    async fn copy_out(&self, workspace: &str, path: &str, local: &str) -> anyhow::Result<()> {
        let resp = self
            .send_raw(
                reqwest::Method::GET,
                &format!("/v1/workspaces/{}/files?path={}", enc(workspace), enc(path)),
                None,
            )
            .await?;
        let bytes = resp.bytes().await.context("the archive stream broke")?;
        if local == "-" {
            std::io::stdout().write_all(&bytes)?;
            return Ok(());
        }
        let local = PathBuf::from(local);
        tokio::task::spawn_blocking(move || unpack(&bytes, &local)).await??;
        Ok(())
    }

    async fn copy_in(&self, local: &str, workspace: &str, path: &str) -> anyhow::Result<()> {
        let archive = if local == "-" {
            let mut buf = Vec::new();
            tokio::io::stdin().read_to_end(&mut buf).await?;
            buf
        } else {
            let local = PathBuf::from(local);
            tokio::task::spawn_blocking(move || pack(&local)).await??
        };
        self.send_raw(
            reqwest::Method::PUT,
            &format!("/v1/workspaces/{}/files?path={}", enc(workspace), enc(path)),
            Some(archive),
        )
        .await?;
        Ok(())
    }
}

/// `NAME:PATH` as its two parts (a local path with a `/` before the colon is local).
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (name, path) = arg.split_once(':')?;
    (!name.is_empty() && !name.contains('/')).then_some((name, path))
}

/// A tar of `local` with its file name as the top entry.
fn pack(local: &Path) -> anyhow::Result<Vec<u8>> {
    let name = local
        .file_name()
        .with_context(|| format!("{} has no file name to copy as", local.display()))?;
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let meta = std::fs::symlink_metadata(local)
        .with_context(|| format!("cannot read {}", local.display()))?;
    if meta.is_dir() {
        builder.append_dir_all(name, local)?;
    } else {
        builder.append_path_with_name(local, name)?;
    }
    Ok(builder.into_inner()?)
}

/// Unpacks an archive whose top entry is the copied file or directory: into `local`
/// when it is a directory, else as `local` itself.
fn unpack(bytes: &[u8], local: &Path) -> anyhow::Result<()> {
    if local.is_dir() {
        tar::Archive::new(bytes).unpack(local)?;
        return Ok(());
    }
    let parent = local
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = tempdir_in(parent)?;
    let result = (|| {
        tar::Archive::new(bytes).unpack(&staging)?;
        let mut entries = std::fs::read_dir(&staging)?;
        let top = entries.next().context("the archive is empty")??;
        std::fs::rename(top.path(), local)
            .with_context(|| format!("cannot create {}", local.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn tempdir_in(parent: &Path) -> anyhow::Result<PathBuf> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = parent.join(format!(".berth-cp-{name}"));
    std::fs::create_dir(&dir).with_context(|| format!("cannot write in {}", parent.display()))?;
    Ok(dir)
}
