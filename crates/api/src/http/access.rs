//! Ways into a workspace: exec (run to completion, or streamed over a WebSocket),
//! attach (a terminal over a WebSocket), logs (NDJSON, followed live) and files (tar in
//! and out).
//!
//! The WebSocket routes carry binary frames whose first byte is a channel: `0` stdin,
//! `4` resize (`{"cols","rows"}`), `5` stdin closed from the client; `1` stdout, `2`
//! stderr, `3` the exit (`{"exit_code"}`, the last frame) from the daemon. A text frame
//! from the daemon is an error (`{"error": {"code","message"}}`) before it closes.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_core::ErrorCode;
use berth_core::ids::SessionName;
use berth_core::ports::{ExecInput, ExecIo, ExecOutput, LogQuery, TermSize};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, JsonBody, QueryParams};
use super::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// The most output `POST .../exec` keeps per stream.
pub const EXEC_OUTPUT_LIMIT: usize = 1024 * 1024;

/// The largest archive `PUT .../files` accepts.
pub const UPLOAD_LIMIT: u64 = 1024 * 1024 * 1024;

/// Channel bytes of the WebSocket frames.
pub mod channel {
    /// Client to daemon: stdin bytes.
    pub const STDIN: u8 = 0;
    /// Daemon to client: stdout bytes (the terminal with a TTY).
    pub const STDOUT: u8 = 1;
    /// Daemon to client: stderr bytes.
    pub const STDERR: u8 = 2;
    /// Daemon to client: `{"exit_code": n|null}`, the last frame.
    pub const EXIT: u8 = 3;
    /// Client to daemon: `{"cols": n, "rows": n}`.
    pub const RESIZE: u8 = 4;
    /// Client to daemon: no more stdin.
    pub const CLOSE_STDIN: u8 = 5;
}

/// `POST .../exec`: a command run to completion.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The argv (at least the program).
    #[schema(min_items = 1)]
    pub command: Vec<String>,
    /// Text for its stdin (none: stdin is closed at once).
    pub stdin: Option<String>,
    /// How long it may run (default `60s`, at most the daemon's request timeout); past
    /// it the command is killed and `timed_out` is true.
    #[schema(pattern = "^[0-9]{1,9}(ns|us|ms|s|m|h|d)?$")]
    pub timeout: Option<String>,
}

/// What a command run to completion did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Its exit code (128 + signal when a signal ended it; null when unknown or timed out).
    pub exit_code: Option<i64>,
    /// Its stdout (lossy UTF-8, at most 1 MiB).
    pub stdout: String,
    /// Its stderr (lossy UTF-8, at most 1 MiB).
    pub stderr: String,
    /// Whether output past the limit was dropped.
    pub truncated: bool,
    /// Whether it was killed at its timeout.
    pub timed_out: bool,
}

/// The first text frame of a streamed exec.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    /// The argv.
    #[schema(min_items = 1)]
    pub command: Vec<String>,
    /// A terminal (stdout and stderr are then one stream).
    #[serde(default)]
    pub tty: bool,
    /// Terminal columns (default 80).
    #[schema(minimum = 1)]
    pub cols: Option<u16>,
    /// Terminal rows (default 24).
    #[schema(minimum = 1)]
    pub rows: Option<u16>,
    /// Terminal type (default `xterm-256color`).
    #[schema(pattern = "^[A-Za-z0-9._+-]{1,64}$")]
    pub term: Option<String>,
}

/// `?session=&cols=&rows=&term=` of attach.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttachQuery {
    /// A session's terminal instead of the main process's.
    pub session: Option<String>,
    /// Terminal columns (default 80).
    #[param(minimum = 1)]
    pub cols: Option<u16>,
    /// Terminal rows (default 24).
    #[param(minimum = 1)]
    pub rows: Option<u16>,
    /// Terminal type (default `xterm-256color`).
    #[param(pattern = "^[A-Za-z0-9._+-]{1,64}$")]
    pub term: Option<String>,
}

/// `?session=&tail=&since=&follow=` of logs.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// A session's output instead of the main process's.
    pub session: Option<String>,
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only lines from this time on: RFC 3339, or a duration back from now (`5m`).
    pub since: Option<String>,
    /// Keep the response open and send lines as they come, until the process ends.
    pub follow: Option<bool>,
}

/// One line of `logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogLineView {
    /// When it was written (RFC 3339), when known.
    pub time: Option<String>,
    /// The line.
    pub line: String,
}

/// `?path=` of files.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilesQuery {
    /// tmux: relative to the workspace directory (or absolute inside it); Docker:
    /// absolute in the container, or relative to `/workspace`. For `PUT`, a directory.
    #[param(pattern = "^[^\\u0000]+$")]
    pub path: String,
}

/// The upgrade, or our error shape (axum's rejection is plain text).
fn upgrade(ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> ApiResult<WebSocketUpgrade> {
    ws.map_err(|r| {
        ApiError::invalid(format!(
            "this route speaks WebSocket only (GET with Upgrade: websocket): {}",
            r.body_text()
        ))
    })
}

fn session_of(name: Option<&str>) -> ApiResult<Option<SessionName>> {
    name.map(|n| SessionName::parse(n).map_err(|e| ApiError::validation("session", e.to_string())))
        .transpose()
}

fn size_of(cols: Option<u16>, rows: Option<u16>) -> ApiResult<TermSize> {
    let size = TermSize {
        cols: cols.unwrap_or(80),
        rows: rows.unwrap_or(24),
    };
    if size.cols == 0 || size.rows == 0 {
        return Err(ApiError::validation(
            "cols",
            "a terminal has at least one column and row",
        ));
    }
    Ok(size)
}

fn term_of(term: Option<String>) -> ApiResult<Option<String>> {
    match term {
        Some(t)
            if t.is_empty()
                || t.len() > 64
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b)) =>
        {
            Err(ApiError::validation(
                "term",
                "a terminal type is 1 to 64 of [A-Za-z0-9-_.+]",
            ))
        }
        t => Ok(t),
    }
}

/// Runs a command in the running workspace to completion.
#[utoipa::path(post, path = "/v1/workspaces/{id}/exec", tag = "access", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name")), request_body = ExecBody,
    responses((status = 200, body = ExecResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn exec_to_end(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> ApiResult<Json<ExecResult>> {
    let limit = state
        .request_timeout
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_secs(1));
    let timeout =
        super::workspaces::parse_timeout(body.timeout.as_deref(), Duration::from_secs(60), limit)?;
    let ws = state.engine.resolve(&id).await?.workspace;
    let ExecIo { input, mut output } = state.engine.exec(&ws.id, body.command, None, None).await?;
    if let Some(text) = body.stdin {
        let _ = input.send(ExecInput::Stdin(text.into_bytes())).await;
    }
    let _ = input.send(ExecInput::CloseStdin).await;
    let mut result = ExecResult {
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        timed_out: false,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let collect = async {
        while let Some(msg) = output.recv().await {
            let (buf, bytes) = match msg {
                ExecOutput::Stdout(b) => (&mut out, b),
                ExecOutput::Stderr(b) => (&mut err, b),
                ExecOutput::Exit(code) => return code,
            };
            let room = EXEC_OUTPUT_LIMIT.saturating_sub(buf.len());
            if bytes.len() > room {
                result.truncated = true;
            }
            buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
        None
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(code) => result.exit_code = code,
        // Dropping the output end kills the command.
        Err(_) => result.timed_out = true,
    }
    drop(input);
    result.stdout = String::from_utf8_lossy(&out).into_owned();
    result.stderr = String::from_utf8_lossy(&err).into_owned();
    Ok(Json(result))
}

/// Runs a command in the running workspace, streamed over a WebSocket: the first text
/// frame is an `ExecStart`, then channel frames both ways.
#[utoipa::path(get, path = "/v1/workspaces/{id}/exec", tag = "access", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name")),
    responses((status = 101, description = "Switching to the WebSocket protocol"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn exec_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = upgrade(ws)?;
    let workspace = state.engine.resolve(&id).await?.workspace;
    if workspace.state != berth_core::state::State::Running {
        return Err(ApiError::from(
            berth_core::engine::EngineError::NotRunning {
                workspace: workspace.id.to_string(),
                state: workspace.state,
            },
        ));
    }
    Ok(ws.on_upgrade(move |mut socket| async move {
        let start = loop {
            match socket.recv().await {
                Some(Ok(Message::Text(text))) => break serde_json::from_str::<ExecStart>(&text),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => return,
            }
        };
        let start = match start {
            Ok(s) => s,
            Err(e) => {
                refuse(
                    socket,
                    ApiError::invalid(format!("the first frame is not an exec request: {e}")),
                )
                .await;
                return;
            }
        };
        let opened = async {
            let size = size_of(start.cols, start.rows)?;
            let term = term_of(start.term)?;
            state
                .engine
                .exec(
                    &workspace.id,
                    start.command,
                    start.tty.then_some(size),
                    term,
                )
                .await
                .map_err(ApiError::from)
        };
        match opened.await {
            Ok(io) => bridge(socket, io).await,
            Err(e) => refuse(socket, e).await,
        }
    }))
}

/// An interactive terminal on the main process or a session, over a WebSocket.
#[utoipa::path(get, path = "/v1/workspaces/{id}/attach", tag = "access", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), AttachQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn attach(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AttachQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = upgrade(ws)?;
    let session = session_of(q.session.as_deref())?;
    let size = size_of(q.cols, q.rows)?;
    let term = term_of(q.term)?;
    let workspace = state.engine.resolve(&id).await?.workspace;
    let io = state
        .engine
        .attach(&workspace.id, session.as_ref(), size, term)
        .await?;
    Ok(ws.on_upgrade(move |socket| bridge(socket, io)))
}

/// Sends `error` as a text frame and closes.
async fn refuse(mut socket: WebSocket, error: ApiError) {
    let body = serde_json::to_string(&ErrorBody {
        error: error.detail.clone(),
    })
    .unwrap_or_default();
    let _ = socket.send(Message::Text(body.into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

fn frame(channel: u8, bytes: &[u8]) -> Message {
    let mut data = Vec::with_capacity(bytes.len() + 1);
    data.push(channel);
    data.extend_from_slice(bytes);
    Message::Binary(data.into())
}

/// Carries frames between the socket and a running exec or attach until the process
/// ends (its exit is the last frame) or the client leaves (dropping `io` ends an exec,
/// detaches an attach).
async fn bridge(mut socket: WebSocket, io: ExecIo) {
    let ExecIo { input, mut output } = io;
    loop {
        tokio::select! {
            msg = output.recv() => {
                let Some(msg) = msg else { break };
                let sent = match msg {
                    ExecOutput::Stdout(b) => socket.send(frame(channel::STDOUT, &b)).await,
                    ExecOutput::Stderr(b) => socket.send(frame(channel::STDERR, &b)).await,
                    ExecOutput::Exit(code) => {
                        let body = serde_json::json!({ "exit_code": code }).to_string();
                        let _ = socket.send(frame(channel::EXIT, body.as_bytes())).await;
                        break;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            msg = socket.recv() => {
                let data = match msg {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return,
                };
                let Some((&ch, rest)) = data.split_first() else { continue };
                let input_msg = match ch {
                    channel::STDIN => ExecInput::Stdin(rest.to_vec()),
                    channel::CLOSE_STDIN => ExecInput::CloseStdin,
                    channel::RESIZE => match serde_json::from_slice::<serde_json::Value>(rest) {
                        Ok(v) => {
                            let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0);
                            match (dim("cols"), dim("rows")) {
                                (Some(cols), Some(rows)) => ExecInput::Resize(TermSize { cols, rows }),
                                _ => continue,
                            }
                        }
                        Err(_) => continue,
                    },
                    _ => continue,
                };
                let _ = input.send(input_msg).await;
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// `since`: RFC 3339, or a duration back from now.
fn since_of(text: Option<&str>) -> ApiResult<Option<berth_core::model::Timestamp>> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&chrono::Utc)));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        ApiError::invalid(format!(
            "since {text:?} is neither an RFC 3339 time nor a duration (5m)"
        ))
    })?;
    let ago = chrono::Duration::from_std(ago)
        .map_err(|_| ApiError::invalid(format!("since {text:?} is too far back")))?;
    Ok(chrono::Utc::now().checked_sub_signed(ago))
}

/// The output of the main process or a session as NDJSON, kept past the process's end;
/// with `follow=true` the response stays open until the process ends.
#[utoipa::path(get, path = "/v1/workspaces/{id}/logs", tag = "access", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), LogsQuery),
    responses((status = 200, description = "One `LogLineView` per line", content_type = "application/x-ndjson", body = LogLineView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<LogsQuery>,
) -> ApiResult<Response> {
    let session = session_of(q.session.as_deref())?;
    let query = LogQuery {
        tail: q.tail,
        since: since_of(q.since.as_deref())?,
        follow: q.follow.unwrap_or(false),
    };
    let ws = state.engine.resolve(&id).await?.workspace;
    let lines = state.engine.logs(&ws.id, session.as_ref(), &query).await?;
    let body = lines.map(|line| match line {
        Ok(l) => {
            let view = LogLineView {
                time: l
                    .time
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                line: l.text,
            };
            let mut text = serde_json::to_string(&view).unwrap_or_default();
            text.push('\n');
            Ok::<_, std::io::Error>(text)
        }
        Err(e) => Err(std::io::Error::other(e.to_string())),
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// A tar archive of a path in the workspace.
#[utoipa::path(get, path = "/v1/workspaces/{id}/files", tag = "access", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), FilesQuery),
    responses((status = 200, description = "A tar archive", content_type = "application/x-tar"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn files_out(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<FilesQuery>,
) -> ApiResult<Response> {
    let ws = state.engine.resolve(&id).await?.workspace;
    let archive = state.engine.copy_out(&ws.id, &q.path).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(archive),
    )
        .into_response())
}

/// Extracts a tar archive (the body, at most 1 GiB) into a directory of the workspace.
#[utoipa::path(put, path = "/v1/workspaces/{id}/files", tag = "access", security(("bearer" = [])),
    params(("id" = String, Path, description = "Workspace id or name"), FilesQuery),
    request_body(description = "A tar archive", content((Vec<u8> = "application/x-tar"), (Vec<u8> = "application/octet-stream"))),
    responses((status = 204, description = "Extracted"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn files_in(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<FilesQuery>,
    body: Body,
) -> ApiResult<StatusCode> {
    let ws = state.engine.resolve(&id).await?.workspace;
    let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&over);
    let mut seen = 0u64;
    let archive = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > UPLOAD_LIMIT {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(std::io::Error::other("the archive is larger than 1 GiB"));
        }
        Ok(chunk.to_vec())
    });
    let copied = state
        .engine
        .copy_in(&ws.id, &q.path, Box::pin(archive))
        .await;
    if over.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the archive is larger than 1 GiB",
        ));
    }
    copied?;
    Ok(StatusCode::NO_CONTENT)
}
