//! Ways into a Docker workspace for a client: execs (pipes or a terminal) as the
//! workspace's user in `/workspace`, a shell on a terminal for `attach` (a container's
//! main process has no terminal to attach to), the container's logs (kept by Docker
//! until the container is removed) and copies through the Engine's archive API.

use berth_core::ports::{
    ByteStream, CaptureTarget, CopyRequest, ExecInput, ExecIo, ExecOutput, ExecRequest, LogLine,
    LogQuery, LogStream, ResourceRef, RuntimeError, SessionRef, TermSize,
};
use bollard::Docker;
use bollard::container::{
    DownloadFromContainerOptions, LogOutput, LogsOptions, UploadToContainerOptions,
};
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use crate::{DockerRuntime, WORKSPACE_MOUNT, is_running, map_error};

/// Follows a session's log until its exit file appears (`$1` name, `$2` generation,
/// `$3` the `tail -n` count).
const FOLLOW: &str = r#"
d=/tmp/.berth-sessions; f="$d/$1.$2.log"; x="$d/$1.$2.exit"
[ -e "$f" ] || exit 44
tail -n "$3" -f "$f" & t=$!
while [ ! -e "$x" ] && kill -0 "$t" 2>/dev/null; do sleep 0.2; done
sleep 0.3; kill "$t" 2>/dev/null; wait "$t" 2>/dev/null; exit 0
"#;

impl DockerRuntime {
    /// The running container of `resource`, or `NotFound`.
    async fn running_container(&self, resource: &ResourceRef) -> Result<String, RuntimeError> {
        let name = self.name(&resource.engine_id, &resource.workspace_id);
        match self.fenced(resource).await {
            // By id: a newer incarnation may reuse the name, never the id.
            Ok(Some(c)) if is_running(&c) => Ok(c.id.unwrap_or(name)),
            Ok(_) | Err(RuntimeError::Conflict { .. }) => Err(RuntimeError::NotFound {
                resource: format!("container {name} (incarnation {})", resource.incarnation),
            }),
            Err(e) => Err(e),
        }
    }

    /// Starts `cmd` as an exec in `container` and bridges it to an [`ExecIo`].
    async fn start_exec_io(
        &self,
        container: &str,
        cmd: Vec<String>,
        env: Vec<String>,
        user: String,
        tty: Option<TermSize>,
    ) -> Result<ExecIo, RuntimeError> {
        let docker = self.docker().await?;
        let created = self
            .call(
                "exec create",
                docker.create_exec(
                    container,
                    CreateExecOptions {
                        cmd: Some(cmd),
                        env: Some(env),
                        working_dir: Some(WORKSPACE_MOUNT.to_owned()),
                        user: Some(user),
                        tty: Some(tty.is_some()),
                        attach_stdin: Some(true),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                ),
            )
            .await?;
        let started = self
            .call(
                "exec start",
                docker.start_exec(
                    &created.id,
                    Some(StartExecOptions {
                        detach: false,
                        tty: tty.is_some(),
                        output_capacity: None,
                    }),
                ),
            )
            .await?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(RuntimeError::Other {
                resource: container.to_owned(),
                message: "the exec started detached".into(),
            });
        };
        let id = created.id;
        if let Some(size) = tty {
            resize(&docker, &id, size).await;
        }
        let (io, mut from_client, to_client) = ExecIo::channel();
        let resizer = docker.clone();
        let exec_id = id.clone();
        let stdin_task = self.tasks.spawn(async move {
            while let Some(msg) = from_client.recv().await {
                match msg {
                    ExecInput::Stdin(bytes) => {
                        if input.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    ExecInput::CloseStdin => {
                        let _ = input.shutdown().await;
                    }
                    ExecInput::Resize(size) => resize(&resizer, &exec_id, size).await,
                }
            }
        });
        self.tasks.spawn(async move {
            loop {
                let item = tokio::select! {
                    item = output.next() => item,
                    () = to_client.closed() => {
                        // The client left: a terminal exec gets its hang-up when the
                        // connection closes; nothing more Docker offers.
                        stdin_task.abort();
                        return;
                    }
                };
                let msg = match item {
                    Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                        ExecOutput::Stdout(message.to_vec())
                    }
                    Some(Ok(LogOutput::StdErr { message })) => ExecOutput::Stderr(message.to_vec()),
                    Some(Ok(LogOutput::StdIn { .. })) => continue,
                    Some(Err(_)) | None => break,
                };
                if to_client.send(msg).await.is_err() {
                    stdin_task.abort();
                    return;
                }
            }
            stdin_task.abort();
            let code = docker
                .inspect_exec(&id)
                .await
                .ok()
                .and_then(|i| i.exit_code);
            let _ = to_client.send(ExecOutput::Exit(code)).await;
        });
        Ok(io)
    }

    fn user_arg(&self, spec: &berth_core::model::WorkspaceSpec) -> String {
        self.user_of(spec)
            .map_or_else(|| "0:0".to_owned(), |(u, g)| format!("{u}:{g}"))
    }

    pub(crate) async fn exec_in(&self, request: &ExecRequest) -> Result<ExecIo, RuntimeError> {
        let container = self.running_container(&request.resource).await?;
        let mut env: Vec<String> = request
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if request.tty.is_some() {
            env.push(format!(
                "TERM={}",
                request.term.as_deref().unwrap_or("xterm-256color")
            ));
        }
        self.start_exec_io(
            &container,
            request.command.clone(),
            env,
            self.user_arg(&request.spec),
            request.tty,
        )
        .await
    }

    pub(crate) async fn shell_in(
        &self,
        target: &CaptureTarget,
        size: TermSize,
        term: Option<String>,
    ) -> Result<ExecIo, RuntimeError> {
        let (engine, workspace) = match target {
            CaptureTarget::Main(r) => (&r.engine_id, &r.workspace_id),
            CaptureTarget::Session(s) => (&s.engine_id, &s.workspace_id),
        };
        let Some((c, _)) = self.ours(engine, workspace).await? else {
            return Err(RuntimeError::NotFound {
                resource: self.name(engine, workspace),
            });
        };
        if !is_running(&c) {
            return Err(RuntimeError::NotFound {
                resource: self.name(engine, workspace),
            });
        }
        let user = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.user.clone())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "0:0".to_owned());
        let env = vec![format!(
            "TERM={}",
            term.as_deref().unwrap_or("xterm-256color")
        )];
        self.start_exec_io(
            &self.name(engine, workspace),
            vec!["/bin/sh".to_owned()],
            env,
            user,
            Some(size),
        )
        .await
    }

    pub(crate) async fn container_logs(
        &self,
        r: &ResourceRef,
        query: &LogQuery,
    ) -> Result<LogStream, RuntimeError> {
        let name = self.this_incarnation(r).await?;
        let docker = self.docker().await?;
        let stream = docker.logs(
            &name,
            Some(LogsOptions::<String> {
                stdout: true,
                stderr: true,
                follow: query.follow,
                timestamps: true,
                since: query.since.map_or(0, |t| t.timestamp()),
                tail: query
                    .tail
                    .map_or_else(|| "all".to_owned(), |n| n.to_string()),
                ..Default::default()
            }),
        );
        let since = query.since;
        // Docker sends each line as its own frame, its timestamp first.
        let lines = stream
            .map(|item| -> Vec<Result<LogLine, RuntimeError>> {
                match item {
                    Ok(
                        LogOutput::StdOut { message }
                        | LogOutput::StdErr { message }
                        | LogOutput::Console { message },
                    ) => message
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(|l| Ok(stamped(l)))
                        .collect(),
                    Ok(LogOutput::StdIn { .. }) => Vec::new(),
                    Err(e) => vec![Err(map_error("logs", &e))],
                }
            })
            .flat_map(futures_util::stream::iter)
            .filter(move |l| {
                // Docker's `since` is in whole seconds.
                let keep = match (l, since) {
                    (Ok(LogLine { time: Some(t), .. }), Some(s)) => *t >= s,
                    _ => true,
                };
                std::future::ready(keep)
            });
        Ok(Box::pin(lines))
    }

    /// A session's output followed live: its log file in the container, read by `tail
    /// -f` until the session's exit file appears (then what is left, and the end).
    pub(crate) async fn follow_session(
        &self,
        session: &SessionRef,
        tail: Option<usize>,
    ) -> Result<LogStream, RuntimeError> {
        let missing = || RuntimeError::NotFound {
            resource: format!("session {} of {}", session.name, session.workspace_id),
        };
        let Some((c, _)) = self.ours(&session.engine_id, &session.workspace_id).await? else {
            return Err(missing());
        };
        let Some(generation) = session.generation.filter(|_| is_running(&c)) else {
            return Err(missing());
        };
        let lines = tail.map_or_else(|| "+1".to_owned(), |n| n.to_string());
        let io = self
            .start_exec_io(
                &self.name(&session.engine_id, &session.workspace_id),
                vec![
                    "sh".into(),
                    "-c".into(),
                    FOLLOW.into(),
                    "berth".into(),
                    session.name.to_string(),
                    generation.0.to_string(),
                    lines,
                ],
                Vec::new(),
                "0:0".into(),
                None,
            )
            .await?;
        let ExecIo { input, output } = io;
        drop(input);
        let stream = futures_util::stream::unfold(
            (output, Vec::<u8>::new(), false),
            |(mut output, mut partial, mut ended)| async move {
                loop {
                    if let Some(i) = partial.iter().position(|b| *b == b'\n') {
                        let rest = partial.split_off(i + 1);
                        let text = String::from_utf8_lossy(&partial)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned();
                        partial = rest;
                        return Some((Ok(LogLine { time: None, text }), (output, partial, ended)));
                    }
                    if ended {
                        if partial.is_empty() {
                            return None;
                        }
                        partial.push(b'\n');
                        continue;
                    }
                    match output.recv().await {
                        Some(ExecOutput::Stdout(b)) => partial.extend(b),
                        Some(ExecOutput::Stderr(_)) => {}
                        Some(ExecOutput::Exit(_)) | None => ended = true,
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    /// A path in the container: absolute as given, relative to `/workspace`.
    fn container_path(request: &CopyRequest) -> String {
        if request.path.starts_with('/') {
            request.path.clone()
        } else {
            format!("{WORKSPACE_MOUNT}/{}", request.path)
        }
    }

    /// The container of `resource`, running or not (copies work on a stopped one).
    async fn existing_container(&self, resource: &ResourceRef) -> Result<String, RuntimeError> {
        let name = self.name(&resource.engine_id, &resource.workspace_id);
        match self.fenced(resource).await {
            Ok(Some(c)) => Ok(c.id.unwrap_or(name)),
            Ok(None) | Err(RuntimeError::Conflict { .. }) => Err(RuntimeError::Unsupported {
                message: format!(
                    "workspace {} has no container now (start it first): files are copied through its container",
                    resource.workspace_id
                ),
            }),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn archive_out(
        &self,
        request: &CopyRequest,
    ) -> Result<ByteStream, RuntimeError> {
        let container = self.existing_container(&request.resource).await?;
        let docker = self.docker().await?;
        let path = Self::container_path(request);
        let mut stream = docker
            .download_from_container(
                &container,
                Some(DownloadFromContainerOptions { path: path.clone() }),
            )
            .boxed();
        // The first chunk tells a missing path from a stream.
        let first = self
            .call("archive", async { Ok(stream.next().await.transpose()) })
            .await?;
        let first = match first {
            Ok(first) => first,
            Err(e) => {
                return Err(match map_error(&path, &e) {
                    RuntimeError::NotFound { .. } => RuntimeError::NotFound {
                        resource: format!("{path} in the workspace"),
                    },
                    other => other,
                });
            }
        };
        let head = futures_util::stream::iter(first.map(|b| Ok(b.to_vec())));
        let rest = stream.map(|item| item.map(|b| b.to_vec()).map_err(std::io::Error::other));
        Ok(Box::pin(head.chain(rest)))
    }

    pub(crate) async fn archive_in(
        &self,
        request: &CopyRequest,
        archive: ByteStream,
    ) -> Result<(), RuntimeError> {
        let container = self.existing_container(&request.resource).await?;
        let docker = self.docker().await?;
        let path = Self::container_path(request);
        // An archive that fails midway ends the upload short; Docker then refuses it.
        let body = archive
            .take_while(|c| std::future::ready(c.is_ok()))
            .filter_map(|c| std::future::ready(c.ok().map(bytes_of)));
        docker
            .upload_to_container_streaming(
                &container,
                Some(UploadToContainerOptions {
                    path: path.clone(),
                    no_overwrite_dir_non_dir: "true".to_owned(),
                }),
                body,
            )
            .await
            .map_err(|e| match (&e, map_error(&path, &e)) {
                (_, RuntimeError::NotFound { .. }) => RuntimeError::NotFound {
                    resource: format!("directory {path} in the workspace"),
                },
                // Docker refused what was sent (not an archive, not a directory).
                (
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 400 | 403,
                        message,
                    },
                    _,
                ) => RuntimeError::BadInput {
                    message: format!("Docker refused the archive for {path}: {message}"),
                },
                (_, other) => other,
            })
    }
}

fn bytes_of(v: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from(v)
}

async fn resize(docker: &Docker, id: &str, size: TermSize) {
    let _ = docker
        .resize_exec(
            id,
            ResizeExecOptions {
                height: size.rows,
                width: size.cols,
            },
        )
        .await;
}

/// A log line with Docker's timestamp prefix (`2026-12-02T07:31:18.123456789Z text`).
fn stamped(line: &[u8]) -> LogLine {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    if let Some((stamp, rest)) = text.split_once(' ')
        && let Ok(t) = chrono::DateTime::parse_from_rfc3339(stamp)
    {
        return LogLine {
            time: Some(t.with_timezone(&chrono::Utc)),
            text: rest.trim_end_matches('\r').to_owned(),
        };
    }
    LogLine {
        time: None,
        text: text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_docker_log_line_keeps_its_time() {
        let l = super::stamped(b"2026-12-02T07:31:18.123456789Z hello world\r\n");
        assert_eq!(l.text, "hello world");
        assert!(l.time.is_some());
        assert_eq!(super::stamped(b"no time\n").time, None);
    }
}
