//! What the runtime port offers beyond the lifecycle: commands run in a workspace
//! (`exec`), interactive terminals (`attach`), output kept past a process's end
//! (`logs`) and files copied in and out as tar streams. All of them are optional for a
//! runtime: the defaults refuse with [`RuntimeError::Unsupported`] (logs fall back to
//! [`super::ProcessRuntime::capture`]).

use std::collections::BTreeMap;

use futures_util::stream::BoxStream;
use tokio::sync::mpsc;

use super::runtime::ResourceRef;
use crate::model::{Timestamp, WorkspaceSpec};

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl Default for TermSize {
    fn default() -> Self {
        Self { cols: 80, rows: 24 }
    }
}

/// A command to run inside a running workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The workspace's main resource: the command runs beside this incarnation.
    pub resource: ResourceRef,
    /// Its argv (at least one element).
    pub command: Vec<String>,
    /// The workspace's environment (its spec's, `BERTH_WORKSPACE_ID`): never its token.
    pub env: BTreeMap<String, String>,
    /// The workspace directory.
    pub dir: Option<String>,
    /// The workspace's spec: the command gets its sandbox, network and user.
    pub spec: WorkspaceSpec,
    /// A terminal of this size (stdout and stderr are then one stream), or plain pipes.
    pub tty: Option<TermSize>,
    /// The terminal type (`TERM`) when `tty` is set.
    pub term: Option<String>,
}

/// What a client sends to a running exec or attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    /// Bytes for the process's stdin (or terminal).
    Stdin(Vec<u8>),
    /// No more stdin: the process reads end of file.
    CloseStdin,
    /// The client's terminal changed size.
    Resize(TermSize),
}

/// What a running exec or attach sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// Bytes from stdout (or the terminal).
    Stdout(Vec<u8>),
    /// Bytes from stderr (never with a terminal).
    Stderr(Vec<u8>),
    /// The process ended, with its exit code when the runtime knows it. Last message.
    Exit(Option<i64>),
}

/// The two ends of a running exec or attach. Dropping `input` closes stdin; dropping
/// `output` means the client went away: an exec's process is then ended (its process
/// group killed where the runtime can), an attach only detaches.
#[derive(Debug)]
pub struct ExecIo {
    /// Towards the process.
    pub input: mpsc::Sender<ExecInput>,
    /// From the process; ends after [`ExecOutput::Exit`].
    pub output: mpsc::Receiver<ExecOutput>,
}

impl ExecIo {
    /// A pair of channels: the `ExecIo` for the caller and the runtime's ends.
    pub fn channel() -> (Self, mpsc::Receiver<ExecInput>, mpsc::Sender<ExecOutput>) {
        let (input, input_rx) = mpsc::channel(64);
        let (output_tx, output) = mpsc::channel(64);
        (Self { input, output }, input_rx, output_tx)
    }
}

/// Which output `logs` reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogQuery {
    /// Only the last `tail` lines (all kept lines when `None`).
    pub tail: Option<usize>,
    /// Only lines written at or after this time (lines without a time are kept).
    pub since: Option<Timestamp>,
    /// Keep the stream open and send lines as they are written, until the process
    /// ends (its log is closed) or the client goes away.
    pub follow: bool,
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When it was written, when the runtime records it.
    pub time: Option<Timestamp>,
    /// The line, without its line end.
    pub text: String,
}

/// A stream of output lines, oldest first.
pub type LogStream = BoxStream<'static, Result<LogLine, super::RuntimeError>>;

/// Captured lines (no times) as a finished [`LogStream`]: what a runtime without kept
/// logs answers.
pub fn captured(lines: Vec<String>) -> LogStream {
    Box::pin(futures_util::stream::iter(
        lines
            .into_iter()
            .map(|text| Ok(LogLine { time: None, text }))
            .collect::<Vec<_>>(),
    ))
}

/// A stream of bytes (a tar archive).
pub type ByteStream = BoxStream<'static, Result<Vec<u8>, std::io::Error>>;

/// A path inside a workspace, for copies: relative to its directory (tmux) or to the
/// container's working directory, or absolute inside the container (Docker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRequest {
    /// The workspace's main resource (running or stopped: Docker copies out of a
    /// stopped container; tmux needs none).
    pub resource: ResourceRef,
    /// The workspace directory.
    pub dir: Option<String>,
    /// The workspace's spec (its sandbox: a copy never reaches further than the
    /// workspace itself could).
    pub spec: WorkspaceSpec,
    /// The path.
    pub path: String,
}
