//! Ways into a tmux workspace for a client: commands run beside it (with its
//! directory, environment and sandbox), a tmux client attached to its session, its
//! kept output, and file copies (tar run beside it, so a copy reaches exactly what the
//! workspace itself may).

use std::path::{Component, Path, PathBuf};

use super::{
    ByteStream, CaptureTarget, CopyRequest, ExecInput, ExecIo, ExecOutput, ExecRequest, LogQuery,
    LogStream, ResourceRef, RuntimeError, TermSize, TmuxRuntime, exact, exec, logs, main_name,
    pane_terminal, session_name,
};

/// A command to run beside a workspace.
pub(crate) struct Beside<'a> {
    pub resource: &'a ResourceRef,
    pub spec: &'a berth_core::model::WorkspaceSpec,
    pub dir: Option<&'a str>,
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub argv: &'a [String],
    pub term: Option<&'a str>,
}

impl TmuxRuntime {
    /// The built environment every process beside a workspace starts from, without
    /// `TERM` (a terminal's own, or none).
    fn allow_listed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.config
            .environment
            .iter()
            .filter(|(k, _)| k != "TERM")
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The running main pane of `resource`, or `NotFound`.
    async fn running_main(&self, resource: &ResourceRef) -> Result<(), RuntimeError> {
        match self.fenced_main(resource).await? {
            Some(p) if !p.dead => Ok(()),
            _ => Err(RuntimeError::NotFound {
                resource: main_name(&resource.workspace_id),
            }),
        }
    }

    /// The process `b` describes, built as the workspace's own are: from nothing but
    /// the allow-listed environment, the workspace's variables and API socket, in its
    /// directory, inside its sandbox.
    fn beside(&self, b: &Beside<'_>) -> Result<tokio::process::Command, RuntimeError> {
        let ws = &b.resource.workspace_id;
        let confined = self.confined(b.spec, ws, b.dir, None)?;
        let env = self.with_socket(ws, b.env)?;
        let private = confined.as_ref().map(|c| c.tmp.clone());
        let mut cmd = match (&confined, &self.config.sandbox_helper) {
            (Some(c), Some(helper)) => {
                let mut cmd = tokio::process::Command::new(helper);
                cmd.arg("sandbox-exec")
                    .arg("--policy")
                    .arg(berth_sandbox::encode(&c.policy))
                    .arg("--")
                    .args(b.argv);
                cmd
            }
            _ => {
                let mut cmd = tokio::process::Command::new(&b.argv[0]);
                cmd.args(&b.argv[1..]);
                cmd
            }
        };
        cmd.env_clear()
            .envs(self.allow_listed())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(term) = b.term {
            cmd.env("TERM", term);
        }
        if let Some(tmp) = &private {
            let _ = std::fs::create_dir_all(tmp);
            cmd.env("HOME", tmp).env("TMPDIR", tmp);
        }
        let cwd = b
            .dir
            .map(PathBuf::from)
            .or(private)
            .unwrap_or_else(|| PathBuf::from("/"));
        cmd.current_dir(cwd);
        Ok(cmd)
    }

    pub(crate) async fn exec_beside(&self, request: &ExecRequest) -> Result<ExecIo, RuntimeError> {
        self.running_main(&request.resource).await?;
        let term = request
            .term
            .clone()
            .unwrap_or_else(|| pane_terminal().to_owned());
        let cmd = self.beside(&Beside {
            resource: &request.resource,
            spec: &request.spec,
            dir: request.dir.as_deref(),
            env: &request.env,
            argv: &request.command,
            term: request.tty.is_some().then_some(term.as_str()),
        })?;
        let what = main_name(&request.resource.workspace_id);
        match request.tty {
            Some(size) => exec::on_terminal(&self.tasks, cmd, size, &what),
            None => exec::on_pipes(&self.tasks, cmd, &what),
        }
    }

    pub(crate) async fn attach_client(
        &self,
        target: &CaptureTarget,
        size: TermSize,
        term: Option<String>,
    ) -> Result<ExecIo, RuntimeError> {
        let (name, engine) = match target {
            CaptureTarget::Main(r) => (main_name(&r.workspace_id), &r.engine_id),
            CaptureTarget::Session(s) => (session_name(&s.workspace_id, &s.name), &s.engine_id),
        };
        match self.pane(&name).await? {
            Some(p) if p.engine == engine.as_str() && !p.dead => {}
            _ => return Err(RuntimeError::NotFound { resource: name }),
        }
        let mut cmd = tokio::process::Command::new("tmux");
        cmd.env_clear()
            .envs(self.allow_listed())
            .env("TERM", term.as_deref().unwrap_or("xterm-256color"))
            .arg("-S")
            .arg(self.socket())
            .arg("-f")
            .arg("/dev/null")
            .args(["attach-session", "-t", &exact(&name)])
            .current_dir("/");
        exec::on_terminal(&self.tasks, cmd, size, &name)
    }

    pub(crate) async fn kept_logs(
        &self,
        target: &CaptureTarget,
        query: &LogQuery,
    ) -> Result<Option<LogStream>, RuntimeError> {
        let state = &self.config.state_dir;
        let path = match target {
            CaptureTarget::Main(r) => {
                logs::path(state, &main_name(&r.workspace_id), r.incarnation.0)
            }
            CaptureTarget::Session(s) => {
                let name = session_name(&s.workspace_id, &s.name);
                match s.generation {
                    Some(g) => logs::path(state, &name, g.0),
                    None => return Ok(None),
                }
            }
        };
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(None);
        }
        logs::read(path, query.clone()).await.map(Some)
    }

    /// `request.path` inside the workspace directory, relative to it: `Unsupported`
    /// for a path that leaves it (`..`, or absolute elsewhere).
    fn inside(request: &CopyRequest) -> Result<(PathBuf, PathBuf), RuntimeError> {
        let Some(dir) = request.dir.as_deref().map(PathBuf::from) else {
            return Err(RuntimeError::Unsupported {
                message: "this workspace has no directory to copy to or from".into(),
            });
        };
        let path = Path::new(&request.path);
        let relative = if path.is_absolute() {
            path.strip_prefix(&dir).map(Path::to_path_buf).map_err(|_| {
                RuntimeError::Unsupported {
                    message: format!(
                        "{} is outside the workspace directory {}: tmux workspaces copy only inside it",
                        request.path,
                        dir.display()
                    ),
                }
            })?
        } else {
            path.to_path_buf()
        };
        if relative
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
        {
            return Err(RuntimeError::Unsupported {
                message: format!(
                    "{}: a path with .. cannot be copied (tmux workspaces copy only inside their directory)",
                    request.path
                ),
            });
        }
        let relative = if relative.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            relative
        };
        Ok((dir, relative))
    }

    /// Runs `tar` beside the workspace with `args`, in its directory.
    async fn tar(&self, request: &CopyRequest, args: Vec<String>) -> Result<ExecIo, RuntimeError> {
        let env = std::collections::BTreeMap::new();
        let mut argv = vec!["tar".to_owned()];
        argv.extend(args);
        let cmd = self.beside(&Beside {
            resource: &request.resource,
            spec: &request.spec,
            dir: request.dir.as_deref(),
            env: &env,
            argv: &argv,
            term: None,
        })?;
        exec::on_pipes(&self.tasks, cmd, &main_name(&request.resource.workspace_id))
    }

    pub(crate) async fn tar_out(&self, request: &CopyRequest) -> Result<ByteStream, RuntimeError> {
        let (dir, relative) = Self::inside(request)?;
        if tokio::fs::symlink_metadata(dir.join(&relative))
            .await
            .is_err()
        {
            return Err(RuntimeError::NotFound {
                resource: format!("{} in the workspace", request.path),
            });
        }
        let io = self
            .tar(
                request,
                // The copied file or directory is the archive's top entry, as Docker's
                // archive API gives it.
                vec![
                    "-C".into(),
                    relative
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .map_or_else(|| ".".to_owned(), |p| p.to_string_lossy().into_owned()),
                    "-cf".into(),
                    "-".into(),
                    "--".into(),
                    relative
                        .file_name()
                        .map_or_else(|| ".".to_owned(), |n| n.to_string_lossy().into_owned()),
                ],
            )
            .await?;
        let ExecIo { input, output } = io;
        drop(input);
        let stream = futures_util::stream::unfold(
            (output, Vec::new()),
            |(mut output, mut errors)| async move {
                loop {
                    match output.recv().await? {
                        ExecOutput::Stdout(bytes) => return Some((Ok(bytes), (output, errors))),
                        ExecOutput::Stderr(bytes) => errors.extend(bytes),
                        ExecOutput::Exit(Some(0)) => return None,
                        ExecOutput::Exit(code) => {
                            let message = format!(
                                "tar ended with {code:?}: {}",
                                String::from_utf8_lossy(&errors).trim()
                            );
                            return Some((
                                Err(std::io::Error::other(message)),
                                (output, Vec::new()),
                            ));
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    pub(crate) async fn tar_in(
        &self,
        request: &CopyRequest,
        mut archive: ByteStream,
    ) -> Result<(), RuntimeError> {
        use futures_util::StreamExt as _;
        let (dir, relative) = Self::inside(request)?;
        if !tokio::fs::metadata(dir.join(&relative))
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return Err(RuntimeError::NotFound {
                resource: format!("directory {} in the workspace", request.path),
            });
        }
        let ExecIo { input, mut output } = self
            .tar(
                request,
                vec![
                    "-xf".into(),
                    "-".into(),
                    "--no-same-owner".into(),
                    "-C".into(),
                    relative.to_string_lossy().into_owned(),
                ],
            )
            .await?;
        let what = main_name(&request.resource.workspace_id);
        let feed = async {
            while let Some(chunk) = archive.next().await {
                let chunk = chunk.map_err(|e| RuntimeError::Other {
                    resource: what.clone(),
                    message: format!("reading the archive failed: {e}"),
                })?;
                if input.send(ExecInput::Stdin(chunk)).await.is_err() {
                    break;
                }
            }
            let _ = input.send(ExecInput::CloseStdin).await;
            Ok::<(), RuntimeError>(())
        };
        let mut errors = Vec::new();
        let drain = async {
            while let Some(msg) = output.recv().await {
                match msg {
                    ExecOutput::Stderr(bytes) => errors.extend(bytes),
                    ExecOutput::Stdout(_) => {}
                    ExecOutput::Exit(code) => return code,
                }
            }
            None
        };
        let (fed, code) = tokio::join!(feed, drain);
        fed?;
        if code == Some(0) {
            return Ok(());
        }
        // tar read the archive the caller sent: its refusal is about that input.
        let _ = what;
        Err(RuntimeError::BadInput {
            message: format!(
                "the archive could not be extracted (tar exited {}): {}",
                code.map_or_else(|| "without a code".to_owned(), |c| c.to_string()),
                String::from_utf8_lossy(&errors).trim()
            ),
        })
    }

    /// Removes every kept log of workspace `ws` (its main process and sessions).
    pub(crate) async fn remove_logs(&self, ws: &berth_core::ids::WorkspaceId) {
        let id = ws.as_str().trim_start_matches("ws-");
        let prefixes = [format!("bw-{id}-"), format!("bs-{id}-")];
        let Ok(mut entries) = tokio::fs::read_dir(self.config.state_dir.join("logs")).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
}
