//! Processes run beside a workspace for a client: `exec` (pipes or a terminal) and
//! `attach` (a tmux client on a terminal). Each runs in a process group of its own,
//! bridged to the channels of an [`ExecIo`]; when the client goes away (the output end
//! is dropped) the group is killed. Its exit code is the last message.

use std::time::Duration;

use berth_core::ports::{ExecInput, ExecIo, ExecOutput, RuntimeError, TermSize};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// How long output may still arrive after the process exited (a background child
/// holding the pipe open does not hold the exec open longer).
const DRAIN: Duration = Duration::from_secs(1);

/// The exit code of a status, as a shell reports it (128 + signal).
fn code(status: std::process::ExitStatus) -> Option<i64> {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .map(i64::from)
        .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
}

fn spawn_error(what: &str, e: &dyn std::fmt::Display) -> RuntimeError {
    RuntimeError::Other {
        resource: what.to_owned(),
        message: format!("cannot start the process: {e}"),
    }
}

/// Copies `from` into `to` as `wrap`ped chunks until end of file or the receiver
/// leaves.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    to: mpsc::Sender<ExecOutput>,
    wrap: fn(Vec<u8>) -> ExecOutput,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Kills a process group when dropped before the process was seen to end.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_group(self.0.take(), Signal::SIGKILL);
    }
}

impl KillOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

fn kill_group(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Waits for `child`, or kills its group when the client leaves; then sends the exit
/// after the output (drained for at most [`DRAIN`]).
async fn supervise(
    mut child: tokio::process::Child,
    output: mpsc::Sender<ExecOutput>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    stdin_task: tokio::task::JoinHandle<()>,
) {
    let pid = child.id();
    // Dropped with the task (a runtime shutting down): the group goes with it.
    let guard = KillOnDrop(pid);
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        () = output.closed() => {
            kill_group(pid, Signal::SIGHUP);
            tokio::time::sleep(Duration::from_millis(100)).await;
            kill_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            // Reaped: its pid may be anyone's now.
            guard.disarm();
            stdin_task.abort();
            for r in readers {
                r.abort();
            }
            return;
        }
    };
    stdin_task.abort();
    guard.disarm();
    let drained = tokio::time::timeout(DRAIN, async {
        for r in readers {
            let _ = r.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::debug!("an exec's output stayed open after it exited; not waiting longer");
    }
    let _ = output.send(ExecOutput::Exit(status.and_then(code))).await;
}

/// Runs `command` on plain pipes in a process group of its own.
pub(crate) fn on_pipes(
    tasks: &TaskTracker,
    mut command: tokio::process::Command,
    what: &str,
) -> Result<ExecIo, RuntimeError> {
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(|e| spawn_error(what, &e))?;
    let (io, mut input, output) = ExecIo::channel();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tasks.spawn(pump(out, output.clone(), ExecOutput::Stdout)));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tasks.spawn(pump(err, output.clone(), ExecOutput::Stderr)));
    }
    let mut stdin = child.stdin.take();
    let stdin_task = tasks.spawn(async move {
        while let Some(msg) = input.recv().await {
            match msg {
                ExecInput::Stdin(bytes) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&bytes).await.is_err()
                    {
                        stdin = None;
                    }
                }
                ExecInput::CloseStdin => stdin = None,
                ExecInput::Resize(_) => {}
            }
        }
    });
    tasks.spawn(supervise(child, output, readers, stdin_task));
    Ok(io)
}

/// Runs `command` on a new terminal of `size` (its session leader, so its group is
/// its pid).
pub(crate) fn on_terminal(
    tasks: &TaskTracker,
    command: tokio::process::Command,
    size: TermSize,
    what: &str,
) -> Result<ExecIo, RuntimeError> {
    let (pty, pts) = pty_process::open().map_err(|e| spawn_error(what, &e))?;
    pty.resize(pty_process::Size::new(size.rows, size.cols))
        .map_err(|e| spawn_error(what, &e))?;
    let child = pty_process::Command::from(command)
        .kill_on_drop(false)
        .spawn(pts)
        .map_err(|e| spawn_error(what, &e))?;
    let (read, mut write) = pty.into_split();
    let (io, mut input, output) = ExecIo::channel();
    let readers = vec![tasks.spawn(pump(read, output.clone(), ExecOutput::Stdout))];
    let stdin_task = tasks.spawn(async move {
        while let Some(msg) = input.recv().await {
            let ok = match msg {
                ExecInput::Stdin(bytes) => write.write_all(&bytes).await.is_ok(),
                // End of file on a terminal: ^D.
                ExecInput::CloseStdin => write.write_all(&[4]).await.is_ok(),
                ExecInput::Resize(s) => {
                    write.resize(pty_process::Size::new(s.rows, s.cols)).is_ok()
                }
            };
            if !ok {
                return;
            }
        }
    });
    tasks.spawn(supervise(child, output, readers, stdin_task));
    Ok(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut io: ExecIo) -> (Vec<u8>, Vec<u8>, Option<i64>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(m) = io.output.recv().await {
            match m {
                ExecOutput::Stdout(b) => out.extend(b),
                ExecOutput::Stderr(b) => err.extend(b),
                ExecOutput::Exit(c) => return (out, err, c),
            }
        }
        panic!("the stream ended without an exit");
    }

    #[tokio::test]
    async fn pipes_carry_stdin_stdout_stderr_and_the_exit_code() {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", "cat; echo oops >&2; exit 7"]);
        let io = on_pipes(&TaskTracker::new(), cmd, "t").unwrap();
        io.input
            .send(ExecInput::Stdin(b"hello\n".to_vec()))
            .await
            .unwrap();
        io.input.send(ExecInput::CloseStdin).await.unwrap();
        let (out, err, code) = collect(io).await;
        assert_eq!(out, b"hello\n");
        assert_eq!(err, b"oops\n");
        assert_eq!(code, Some(7));
    }

    #[tokio::test]
    async fn a_terminal_is_a_tty_of_the_asked_size_and_follows_a_resize() {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", "stty size; read x; stty size; test -t 0"]);
        let mut io = on_terminal(
            &TaskTracker::new(),
            cmd,
            TermSize { cols: 91, rows: 17 },
            "t",
        )
        .unwrap();
        // The first size is printed before the resize is sent.
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("17 91") {
            match io.output.recv().await {
                Some(ExecOutput::Stdout(b)) => seen.extend(b),
                other => panic!("unexpected {other:?}"),
            }
        }
        io.input
            .send(ExecInput::Resize(TermSize {
                cols: 100,
                rows: 30,
            }))
            .await
            .unwrap();
        io.input
            .send(ExecInput::Stdin(b"go\n".to_vec()))
            .await
            .unwrap();
        let (out, _, code) = collect(io).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("30 100"), "{text}");
        assert_eq!(code, Some(0));
    }

    #[tokio::test]
    async fn a_client_that_leaves_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
        ]);
        let mut io = on_pipes(&TaskTracker::new(), cmd, "t").unwrap();
        // Wait until the grandchild is there.
        while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().is_empty() {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        io.output.close();
        drop(io);
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(std::time::Instant::now() < deadline, "the sleep survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
