//! `DockerRuntime`: berth's [`ProcessRuntime`] for container workspaces, through the
//! Docker Engine API (bollard).
//!
//! - One container per workspace, named `berth-<engine id>-<workspace id>` and labelled
//!   `<prefix>.engine`, `<prefix>.workspace`, `<prefix>.incarnation` (prefix
//!   `dev.berth` unless configured), plus `<prefix>.created` (orphan ages count from it). Containers are found by exact name (inspect) or
//!   by label filter, never by Docker's name filter (it matches substrings). A
//!   container without our engine label is never stopped, removed or adopted.
//! - Launch is create+start and conflict-proof: "name in use" → inspect: ours with
//!   this incarnation → adopt; ours, another incarnation, not running → remove and
//!   retry; ours, another incarnation, running → `Conflict{NameInUse}` (the engine
//!   stops it first); "removal in progress" → wait and retry; not ours →
//!   `Conflict{Foreign}` naming the container.
//! - Hardening: every capability dropped, `no-new-privileges`, pids/memory/CPU limits
//!   (a spec may tighten the configured ones, never loosen them), Docker's init as
//!   PID 1, never privileged, the Docker socket never mounted.
//! - Workspace data: a host `dir` bind-mounted at `/workspace`, or a named volume per
//!   workspace (labelled; removed on delete). A user's directory is never removed.
//! - Sessions run as execs: a small `sh` script starts the command with `setsid`, so
//!   the session is a process group whose leader's pid is written to
//!   `/tmp/.berth-sessions/<name>.<generation>.pid`; its output goes to `.log`, its
//!   exit code to `.exit`. Stopping signals the whole group (SIGTERM, the grace, then
//!   SIGKILL). Sessions need `sh`, `kill`, `sleep`, `setsid` and `tail` in the image.
//! - The daemon is reached lazily: the API version is negotiated on first use (the
//!   daemon may be older than bollard), and after a connection error the next call
//!   connects and negotiates again, so a restarted daemon is picked up.

mod access;
mod sessions;
pub mod test_image;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::ids::{EngineId, Incarnation, RuntimeKind, WorkspaceId, WorkspaceToken};
use berth_core::model::{Timestamp, WorkspaceSpec};
use berth_core::ports::{
    API_SOCKET, ByteStream, CaptureTarget, ConflictReason, CopyRequest, DirtyReport, EventWake,
    ExecIo, ExecRequest, LaunchRequest, LogQuery, LogStream, OwnedResource, ProcessRuntime,
    ProcessStatus, ResourceKind, ResourceRef, RuntimeError, SessionLaunch, SessionRef, SpecRefusal,
    TermSize, WorkspaceRef, WorkspaceSockets,
};
use bollard::Docker;
use bollard::container::{
    Config, CreateContainerOptions, ListContainersOptions, LogOutput, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, HostConfig, Mount, MountTypeEnum,
    MountVolumeOptions,
};
use bollard::system::EventsOptions;
use bollard::volume::{CreateVolumeOptions, RemoveVolumeOptions};
use futures_util::StreamExt;
use slot::Slot;
use tokio_util::sync::CancellationToken;

/// Where the workspace's data is mounted in its container.
pub const WORKSPACE_MOUNT: &str = "/workspace";

/// Settings of a [`DockerRuntime`].
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// `unix:///path`, `tcp://host:port`, or `None` for `DOCKER_HOST` or the default
    /// socket.
    pub host: Option<String>,
    /// The image of a workspace whose spec names none. `None`: such a spec is refused.
    pub default_image: Option<String>,
    /// Label prefix: `<prefix>.engine`, `.workspace`, `.incarnation`.
    pub label_prefix: String,
    /// Memory limit in bytes (a spec may ask for less).
    pub memory_bytes: u64,
    /// CPU limit in thousandths of a CPU (a spec may ask for less).
    pub millicpus: u64,
    /// Process limit (a spec may ask for less).
    pub pids: u64,
    /// Capabilities added back after dropping all. Empty by default; this is the one
    /// documented way to loosen the hardening (privileged mode is never used).
    pub extra_capabilities: Vec<String>,
    /// Bound on one API call (stop adds the grace period to it).
    pub call_timeout: Duration,
    /// How long a launch keeps retrying name conflicts (removals in progress).
    pub start_deadline: Duration,
    /// The daemon's socket path, whose mount is refused.
    pub docker_socket: PathBuf,
    /// berth's own directory (the data directory, state included): a `dir` inside it,
    /// or holding it, is refused, so no container is given berth's keys.
    pub protected_dir: Option<PathBuf>,
    /// `uid:gid` workspaces run as when the daemon runs as root (and the workspace's
    /// `dir` belongs to root). A daemon running as a normal user runs them as itself.
    pub root_daemon_user: String,
    /// Give a volume to the workspace's user by changing its owner on this host
    /// (when the daemon may) before trying a short-lived helper container.
    pub chown_volumes_locally: bool,
    /// Serves each workspace's API socket, bind-mounted at `/run/berth`
    /// (`BERTH_API_SOCKET=/run/berth/api.sock`); `None`: no socket. The Docker engine
    /// must see this host's paths (a local engine).
    pub sockets: Option<Arc<dyn WorkspaceSockets>>,
}

/// Where a workspace's API socket directory is mounted in its container.
pub const SOCKET_MOUNT: &str = "/run/berth";
/// The token file a warm pool member finds in [`SOCKET_MOUNT`] once claimed
/// (`BERTH_TOKEN_FILE`).
pub const TOKEN_FILE: &str = "token";

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: None,
            default_image: None,
            label_prefix: "dev.berth".into(),
            memory_bytes: 2 * 1024 * 1024 * 1024,
            millicpus: 2000,
            pids: 1024,
            extra_capabilities: Vec::new(),
            call_timeout: Duration::from_secs(30),
            start_deadline: Duration::from_secs(60),
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            protected_dir: None,
            root_daemon_user: "65532:65532".into(),
            chown_volumes_locally: true,
            sockets: None,
        }
    }
}

mod slot {
    //! A lazily filled, resettable slot for the negotiated client.
    use tokio::sync::Mutex;

    #[derive(Debug)]
    pub(crate) struct Slot<T>(Mutex<Option<T>>);

    impl<T> Default for Slot<T> {
        fn default() -> Self {
            Self(Mutex::new(None))
        }
    }

    impl<T: Clone> Slot<T> {
        pub(crate) async fn get_or_try_init<E, F, Fut>(&self, init: F) -> Result<T, E>
        where
            F: FnOnce() -> Fut,
            Fut: std::future::Future<Output = Result<T, E>>,
        {
            let mut guard = self.0.lock().await;
            if let Some(v) = guard.as_ref() {
                return Ok(v.clone());
            }
            let v = init().await?;
            *guard = Some(v.clone());
            Ok(v)
        }

        pub(crate) async fn reset(&self) {
            *self.0.lock().await = None;
        }
    }
}

/// The Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    config: Arc<DockerConfig>,
    client: Arc<Slot<Docker>>,
    /// The tasks carrying execs and attaches.
    tasks: tokio_util::task::TaskTracker,
}

/// The labels of one of our containers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    engine: String,
    workspace: String,
    incarnation: u64,
    /// When berth launched it (`<prefix>.created`), if labelled.
    created: Option<Timestamp>,
}

impl DockerRuntime {
    /// A runtime with `config`. Nothing is contacted until the first call.
    pub fn new(config: DockerConfig) -> Self {
        Self {
            config: Arc::new(config),
            client: Arc::new(Slot::default()),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// The daemon's version and API version (for `berth doctor` and start-up).
    ///
    /// # Errors
    /// `Unavailable` when the daemon does not answer.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let docker = self.docker().await?;
        let v = self.call("version", docker.version()).await?;
        Ok(format!(
            "Docker Engine {}, API {}",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default()
        ))
    }

    /// Follows the daemon's `die`, `destroy` and `oom` events of `engine_id`'s
    /// containers and calls `on_event` for each, and once after every (re)connection
    /// (events missed while disconnected are then caught by the pass it triggers).
    /// Reconnects with backoff after the stream fails or the daemon restarts; returns
    /// when `cancel` fires. The periodic reconcile stays the safety net.
    pub async fn follow_events(
        &self,
        engine_id: &EngineId,
        cancel: &CancellationToken,
        on_event: impl Fn() + Send + Sync,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            // Connecting can hang on a daemon that accepts and never answers: it must
            // not hold back shutdown.
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                connected = self.docker() => connected,
            };
            if let Ok(docker) = connected {
                let filters = HashMap::from([
                    ("type".to_owned(), vec!["container".to_owned()]),
                    (
                        "label".to_owned(),
                        vec![format!("{}={engine_id}", self.label("engine"))],
                    ),
                    (
                        "event".to_owned(),
                        vec!["die".to_owned(), "destroy".to_owned(), "oom".to_owned()],
                    ),
                ]);
                let mut stream = docker.events(Some(EventsOptions::<String> {
                    filters,
                    ..Default::default()
                }));
                on_event();
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        item = stream.next() => match item {
                            Some(Ok(_)) => {
                                backoff = Duration::from_millis(100);
                                on_event();
                            }
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "docker events stream failed; reconnecting");
                                self.client.reset().await;
                                break;
                            }
                            None => break,
                        }
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// The negotiated client (connecting and negotiating on first use).
    pub(crate) async fn docker(&self) -> Result<Docker, RuntimeError> {
        let config = Arc::clone(&self.config);
        self.client
            .get_or_try_init(|| async move {
                let docker = match &config.host {
                    Some(h) if h.starts_with("unix://") => {
                        Docker::connect_with_unix(h, 600, bollard::API_DEFAULT_VERSION)
                    }
                    Some(h) => Docker::connect_with_http(h, 600, bollard::API_DEFAULT_VERSION),
                    None => Docker::connect_with_defaults(),
                }
                .map_err(|e| unavailable(&e))?;
                tokio::time::timeout(config.call_timeout, docker.negotiate_version())
                    .await
                    .map_err(|_| RuntimeError::Unavailable {
                        message: "the Docker daemon did not answer the version negotiation".into(),
                    })?
                    .map_err(|e| unavailable(&e))
            })
            .await
    }

    /// Runs one API call under the call timeout; a connection failure forgets the
    /// client so the next call reconnects.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, BollardError>>,
    ) -> Result<T, RuntimeError> {
        self.call_within(what, self.config.call_timeout, fut).await
    }

    pub(crate) async fn call_within<T>(
        &self,
        what: &str,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, BollardError>>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(limit, fut).await {
            Err(_) => Err(RuntimeError::Timeout {
                operation: format!("docker {what}"),
                after: limit,
            }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let mapped = map_error(what, &e);
                if matches!(mapped, RuntimeError::Unavailable { .. }) {
                    self.client.reset().await;
                }
                Err(mapped)
            }
        }
    }

    fn name(&self, engine: &EngineId, workspace: &WorkspaceId) -> String {
        format!("berth-{engine}-{workspace}")
    }

    fn volume_name(&self, engine: &EngineId, workspace: &WorkspaceId) -> String {
        format!("berth-{engine}-{workspace}-data")
    }

    /// The labels of a workspace's data volume, on every call that can create it.
    fn volume_labels(&self, engine: &EngineId, workspace: &WorkspaceId) -> HashMap<String, String> {
        HashMap::from([
            (self.label("engine"), engine.to_string()),
            (self.label("workspace"), workspace.to_string()),
        ])
    }

    fn label(&self, key: &str) -> String {
        format!("{}.{key}", self.config.label_prefix)
    }

    fn owner(&self, labels: Option<&HashMap<String, String>>) -> Option<Owner> {
        let labels = labels?;
        Some(Owner {
            engine: labels.get(&self.label("engine"))?.clone(),
            workspace: labels.get(&self.label("workspace"))?.clone(),
            incarnation: labels.get(&self.label("incarnation"))?.parse().ok()?,
            created: labels
                .get(&self.label("created"))
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        })
    }

    /// Inspects a container by exact name; `None` when it does not exist.
    pub(crate) async fn inspect_name(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        let docker = self.docker().await?;
        match self
            .call("inspect", docker.inspect_container(name, None))
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(RuntimeError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Our container of `resource`'s workspace with its owner labels, or `None` when
    /// there is none or it is not ours.
    pub(crate) async fn ours(
        &self,
        engine: &EngineId,
        workspace: &WorkspaceId,
    ) -> Result<Option<(ContainerInspectResponse, Owner)>, RuntimeError> {
        let Some(c) = self.inspect_name(&self.name(engine, workspace)).await? else {
            return Ok(None);
        };
        let owner = self.owner(c.config.as_ref().and_then(|c| c.labels.as_ref()));
        Ok(match owner {
            Some(o) if o.engine == engine.as_str() && o.workspace == workspace.as_str() => {
                Some((c, o))
            }
            _ => None,
        })
    }

    /// Our running container of exactly `resource`'s incarnation (sessions live in it).
    pub(crate) async fn running_incarnation(
        &self,
        resource: &ResourceRef,
    ) -> Result<String, RuntimeError> {
        let name = self.name(&resource.engine_id, &resource.workspace_id);
        match self
            .ours(&resource.engine_id, &resource.workspace_id)
            .await?
        {
            // By id, never by name: a name outlives its container (a newer incarnation
            // reuses it), an id does not.
            Some((c, o)) if o.incarnation == resource.incarnation.0 && is_running(&c) => {
                c.id.ok_or_else(|| RuntimeError::NotFound {
                    resource: format!("the id of container {name}"),
                })
            }
            _ => Err(RuntimeError::NotFound {
                resource: format!(
                    "running container {name} (incarnation {})",
                    resource.incarnation
                ),
            }),
        }
    }

    /// Who a workspace's container runs as (`uid`, `gid`): `None` for root, only when
    /// the spec asks. A daemon running as a normal user runs it as itself (files in a
    /// bind-mounted `dir` are then theirs); a root daemon as the owner of the `dir`
    /// when that is not root, else as `root_daemon_user`.
    fn user_of(&self, spec: &WorkspaceSpec) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt as _;
        if spec.run_as_root {
            return None;
        }
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Some((euid.as_raw(), nix::unistd::getegid().as_raw()));
        }
        if let Some(meta) = spec.dir.as_ref().and_then(|d| std::fs::metadata(d).ok())
            && meta.uid() != 0
        {
            return Some((meta.uid(), meta.gid()));
        }
        let (uid, gid) = self
            .config
            .root_daemon_user
            .split_once(':')
            .unwrap_or((&self.config.root_daemon_user, &self.config.root_daemon_user));
        Some((uid.parse().unwrap_or(65532), gid.parse().unwrap_or(65532)))
    }

    /// Makes a fresh volume's top directory the workspace user's: on this host when the
    /// daemon may change its owner, else through a short-lived helper container (the
    /// workspace's image, root with only `CAP_CHOWN`, no network), removed at once.
    async fn give_volume(
        &self,
        ws: &WorkspaceRef,
        mountpoint: &str,
        (uid, gid): (u32, u32),
    ) -> Result<(), RuntimeError> {
        use std::os::unix::fs::MetadataExt as _;
        let path = PathBuf::from(mountpoint);
        let owned = tokio::fs::metadata(&path)
            .await
            .is_ok_and(|m| m.uid() == uid && m.gid() == gid);
        if owned {
            return Ok(());
        }
        if self.config.chown_volumes_locally {
            let target = path.clone();
            let local = tokio::task::spawn_blocking(move || {
                std::os::unix::fs::chown(&target, Some(uid), Some(gid))
            })
            .await;
            if matches!(local, Ok(Ok(()))) {
                return Ok(());
            }
        }
        self.chown_by_container(ws, uid, gid).await
    }

    async fn chown_by_container(
        &self,
        ws: &WorkspaceRef,
        uid: u32,
        gid: u32,
    ) -> Result<(), RuntimeError> {
        let name = format!("{}-owner", self.name(&ws.engine_id, &ws.workspace_id));
        let image = ws
            .spec
            .image
            .clone()
            .or_else(|| self.config.default_image.clone())
            .ok_or_else(|| RuntimeError::Other {
                resource: name.clone(),
                message: "no image to give the volume to its user with".into(),
            })?;
        let docker = self.docker().await?;
        // One a crash left behind.
        self.force_remove(&docker, &name).await?;
        let config = Config {
            image: Some(image),
            user: Some("0:0".into()),
            cmd: Some(vec![
                "chown".into(),
                format!("{uid}:{gid}"),
                WORKSPACE_MOUNT.into(),
            ]),
            labels: Some(HashMap::from([
                (self.label("engine"), ws.engine_id.to_string()),
                (self.label("helper"), "volume-owner".into()),
            ])),
            host_config: Some(HostConfig {
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(vec!["CHOWN".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                network_mode: Some("none".into()),
                mounts: Some(vec![Mount {
                    target: Some(WORKSPACE_MOUNT.into()),
                    source: Some(self.volume_name(&ws.engine_id, &ws.workspace_id)),
                    typ: Some(MountTypeEnum::VOLUME),
                    volume_options: Some(MountVolumeOptions {
                        no_copy: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ran = async {
            self.call(
                "create",
                docker.create_container(
                    Some(CreateContainerOptions {
                        name: name.clone(),
                        platform: None,
                    }),
                    config,
                ),
            )
            .await?;
            self.start(&docker, &name).await?;
            let mut wait = docker.wait_container(
                &name,
                Some(bollard::container::WaitContainerOptions {
                    condition: "not-running",
                }),
            );
            let waited = tokio::time::timeout(self.config.call_timeout, wait.next()).await;
            match waited {
                Ok(Some(Ok(r))) if r.status_code == 0 => Ok(()),
                Ok(Some(Ok(r))) => Err(format!("chown exited {}", r.status_code)),
                Ok(Some(Err(e))) => Err(e.to_string()),
                Ok(None) => Err("no exit status".into()),
                Err(_) => Err("timed out".into()),
            }
            .map_err(|m| RuntimeError::Other {
                resource: name.clone(),
                message: format!("giving the workspace volume to {uid}:{gid} failed: {m}"),
            })
        }
        .await;
        let removed = self.force_remove(&docker, &name).await;
        ran.and(removed)
    }

    /// A spec may lower the daemon's limits, never lift them: 0 (which Docker reads as
    /// "no limit") and anything above the daemon's maximum are refused.
    fn check_limits(&self, limits: &berth_core::model::Limits) -> Result<(), SpecRefusal> {
        let asked = [
            (
                "limits.memory_bytes",
                limits.memory_bytes,
                self.config.memory_bytes,
            ),
            ("limits.millicpus", limits.millicpus, self.config.millicpus),
            ("limits.pids", limits.pids, self.config.pids),
        ];
        for (field, value, max) in asked {
            match value {
                Some(0) => {
                    return Err(SpecRefusal {
                        field,
                        message: format!(
                            "{field} must be at least 1 (0 would mean no limit); this daemon allows up to {max}"
                        ),
                    });
                }
                Some(v) if v > max => {
                    return Err(SpecRefusal {
                        field,
                        message: format!(
                            "{field} is {v}, above this daemon's maximum {max}; a workspace may only lower its limits"
                        ),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn limits(&self, spec: &berth_core::model::WorkspaceSpec) -> (i64, i64, i64) {
        let asked = spec.limits.clone().unwrap_or_default();
        let memory = asked.memory_bytes.map_or(self.config.memory_bytes, |m| {
            m.min(self.config.memory_bytes)
        });
        let millicpus = asked
            .millicpus
            .map_or(self.config.millicpus, |m| m.min(self.config.millicpus));
        let pids = asked
            .pids
            .map_or(self.config.pids, |p| p.min(self.config.pids));
        (
            i64::try_from(memory).unwrap_or(i64::MAX),
            i64::try_from(millicpus.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
            i64::try_from(pids).unwrap_or(i64::MAX),
        )
    }

    /// The mount of the workspace's data at `/workspace`.
    fn mount(&self, engine: &EngineId, ws: &WorkspaceRef) -> Result<Mount, RuntimeError> {
        if let Some(dir) = &ws.spec.dir {
            let path = std::path::Path::new(dir);
            let real = std::fs::canonicalize(path).map_err(|e| RuntimeError::Other {
                resource: dir.clone(),
                message: format!("the workspace directory cannot be used: {e}"),
            })?;
            let socket = std::fs::canonicalize(&self.config.docker_socket)
                .unwrap_or_else(|_| self.config.docker_socket.clone());
            if let Some(protected) = &self.config.protected_dir
                && berth_hostdirs::reaches_into(&real, protected, true)
            {
                return Err(RuntimeError::Other {
                    resource: dir.clone(),
                    message: format!(
                        "mounting {} would expose berth's own directory {}; refused",
                        real.display(),
                        protected.display()
                    ),
                });
            }
            if socket.starts_with(&real) {
                return Err(RuntimeError::Other {
                    resource: dir.clone(),
                    message: format!(
                        "mounting {} would expose the Docker socket {}; refused",
                        real.display(),
                        socket.display()
                    ),
                });
            }
            return Ok(Mount {
                target: Some(WORKSPACE_MOUNT.into()),
                source: Some(real.to_string_lossy().into_owned()),
                typ: Some(MountTypeEnum::BIND),
                ..Default::default()
            });
        }
        // The volume exists (`prepare` made it, labelled); should it be gone by the
        // time dockerd creates the container (a delete raced the create), dockerd makes
        // it again from this mount: with our labels, so nothing is ever unlabelled.
        Ok(Mount {
            target: Some(WORKSPACE_MOUNT.into()),
            source: Some(self.volume_name(engine, &ws.workspace_id)),
            typ: Some(MountTypeEnum::VOLUME),
            volume_options: Some(MountVolumeOptions {
                labels: Some(self.volume_labels(engine, &ws.workspace_id)),
                // Docker would copy the image's `/workspace` into an empty volume, and
                // its owner with it, undoing the volume's hand-over to the workspace's
                // user: a workspace's volume starts empty and stays its user's.
                no_copy: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn create_and_start(&self, request: &LaunchRequest) -> Result<(), RuntimeError> {
        let r = &request.resource;
        let name = self.name(&r.engine_id, &r.workspace_id);
        let image = request
            .spec
            .image
            .clone()
            .or_else(|| self.config.default_image.clone())
            .ok_or_else(|| RuntimeError::Other {
                resource: name.clone(),
                message: "the workspace names no image and no default image is configured".into(),
            })?;
        let wref = WorkspaceRef {
            engine_id: r.engine_id.clone(),
            workspace_id: r.workspace_id.clone(),
            spec: request.spec.clone(),
        };
        let mut mounts = vec![self.mount(&r.engine_id, &wref)?];
        let mut env: Vec<String> = request
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if let Some(sockets) = &self.config.sockets {
            let dir = sockets
                .open(&r.workspace_id)
                .map_err(|message| RuntimeError::Other {
                    resource: name.clone(),
                    message,
                })?;
            mounts.push(Mount {
                target: Some(SOCKET_MOUNT.into()),
                source: Some(dir.display().to_string()),
                typ: Some(MountTypeEnum::BIND),
                ..Default::default()
            });
            env.push(format!("BERTH_API_SOCKET={SOCKET_MOUNT}/{API_SOCKET}"));
            if request.token_by_file {
                env.push(format!("BERTH_TOKEN_FILE={SOCKET_MOUNT}/{TOKEN_FILE}"));
            } else {
                // A token an earlier claim left is dead (another incarnation): gone.
                let _ = std::fs::remove_file(dir.join(TOKEN_FILE));
            }
        }
        let (memory, nano_cpus, pids) = self.limits(&request.spec);
        let labels = HashMap::from([
            (self.label("engine"), r.engine_id.to_string()),
            (self.label("workspace"), r.workspace_id.to_string()),
            (self.label("incarnation"), r.incarnation.0.to_string()),
            (self.label("created"), chrono::Utc::now().to_rfc3339()),
        ]);
        let config = Config {
            image: Some(image),
            cmd: (!request.spec.command.is_empty()).then(|| request.spec.command.clone()),
            env: Some(env),
            labels: Some(labels),
            working_dir: Some(WORKSPACE_MOUNT.into()),
            user: Some(
                self.user_of(&request.spec)
                    .map_or_else(|| "0:0".to_owned(), |(u, g)| format!("{u}:{g}")),
            ),
            host_config: Some(HostConfig {
                init: Some(true),
                privileged: Some(false),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(self.config.extra_capabilities.clone()),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some(nano_cpus),
                pids_limit: Some(pids),
                mounts: Some(mounts),
                // `network: false`: no interface but loopback.
                network_mode: (request.spec.network == Some(false)).then(|| "none".to_owned()),
                readonly_rootfs: Some(request.spec.read_only_root),
                // Sessions keep their files in /tmp: writable on a read-only root too.
                tmpfs: request.spec.read_only_root.then(|| {
                    HashMap::from([("/tmp".to_owned(), "rw,nosuid,nodev,mode=1777".to_owned())])
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let docker = self.docker().await?;
        let deadline = tokio::time::Instant::now() + self.config.start_deadline;
        loop {
            let created = self
                .call(
                    "create",
                    docker.create_container(
                        Some(CreateContainerOptions {
                            name: name.clone(),
                            platform: None,
                        }),
                        config.clone(),
                    ),
                )
                .await;
            match created {
                Ok(_) => return self.start(&docker, &name).await,
                Err(RuntimeError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
            // The name is taken: decide from what holds it.
            match self.inspect_name(&name).await? {
                None => {} // removed meanwhile: create again
                Some(c) => {
                    let owner = self.owner(c.config.as_ref().and_then(|c| c.labels.as_ref()));
                    let ours = owner.as_ref().filter(|o| {
                        o.engine == r.engine_id.as_str() && o.workspace == r.workspace_id.as_str()
                    });
                    let Some(o) = ours else {
                        return Err(RuntimeError::Conflict {
                            resource: name.clone(),
                            reason: ConflictReason::Foreign,
                            message: format!(
                                "the container name {name} is held by a container berth does not own ({}); it is left alone",
                                c.id.as_deref().unwrap_or("?")
                            ),
                        });
                    };
                    let state = container_state(&c);
                    if o.incarnation == r.incarnation.0 {
                        // Ours, this incarnation: adopt (start it if it never ran).
                        if state == Some(ContainerStateStatusEnum::CREATED) {
                            return self.start(&docker, &name).await;
                        }
                        return Ok(());
                    }
                    if state == Some(ContainerStateStatusEnum::RUNNING)
                        || state == Some(ContainerStateStatusEnum::RESTARTING)
                        || state == Some(ContainerStateStatusEnum::PAUSED)
                    {
                        return Err(RuntimeError::Conflict {
                            resource: name.clone(),
                            reason: ConflictReason::NameInUse,
                            message: format!(
                                "{name} still runs incarnation {}; stop it first",
                                o.incarnation
                            ),
                        });
                    }
                    if state != Some(ContainerStateStatusEnum::REMOVING) {
                        // A stale container of ours: replace it.
                        match self.force_remove(&docker, &name).await {
                            Ok(()) | Err(RuntimeError::Conflict { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Conflict {
                    resource: name.clone(),
                    reason: ConflictReason::RemovalInProgress,
                    message: format!(
                        "{name} was still being removed after {:?}",
                        self.config.start_deadline
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn start(&self, docker: &Docker, name: &str) -> Result<(), RuntimeError> {
        match self
            .call(
                "start",
                docker.start_container(name, None::<StartContainerOptions<String>>),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(RuntimeError::Other { message, .. }) if message.contains("304") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn force_remove(&self, docker: &Docker, name: &str) -> Result<(), RuntimeError> {
        match self
            .call(
                "remove",
                docker.remove_container(
                    name,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: false,
                        link: false,
                    }),
                ),
            )
            .await
        {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Our container if it carries `resource`'s incarnation; `Ok(None)` when there is
    /// none (or it is not ours); `IncarnationMismatch` when it is another incarnation.
    async fn fenced(
        &self,
        resource: &ResourceRef,
    ) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        let Some((c, o)) = self
            .ours(&resource.engine_id, &resource.workspace_id)
            .await?
        else {
            return Ok(None);
        };
        if o.incarnation != resource.incarnation.0 {
            return Err(RuntimeError::Conflict {
                resource: self.name(&resource.engine_id, &resource.workspace_id),
                reason: ConflictReason::IncarnationMismatch,
                message: format!(
                    "the container carries incarnation {}, not {}",
                    o.incarnation, resource.incarnation
                ),
            });
        }
        Ok(Some(c))
    }

    /// The container of `resource`'s incarnation (running or not), or `NotFound`.
    pub(crate) async fn this_incarnation(
        &self,
        resource: &ResourceRef,
    ) -> Result<String, RuntimeError> {
        let name = self.name(&resource.engine_id, &resource.workspace_id);
        match self.fenced(resource).await {
            // By id: see `running_incarnation`.
            Ok(Some(c)) => c.id.ok_or_else(|| RuntimeError::NotFound {
                resource: format!("the id of container {name}"),
            }),
            Ok(None) | Err(RuntimeError::Conflict { .. }) => Err(RuntimeError::NotFound {
                resource: format!("container {name} (incarnation {})", resource.incarnation),
            }),
            Err(e) => Err(e),
        }
    }

    /// The listing entry of a main container; its age counts from berth's `created`
    /// label, else from Docker's creation time.
    fn resource_of(
        &self,
        owner: &Owner,
        created: Timestamp,
        status: ProcessStatus,
    ) -> Option<OwnedResource> {
        Some(OwnedResource {
            workspace_id: WorkspaceId::parse(&owner.workspace).ok()?,
            incarnation: Incarnation(owner.incarnation),
            kind: ResourceKind::Main,
            created_at: owner.created.unwrap_or(created),
            status,
        })
    }

    /// The host directory holding the workspace's data: the user's `dir`, or the
    /// volume's mount point.
    async fn data_dir(&self, ws: &WorkspaceRef) -> Result<PathBuf, RuntimeError> {
        if let Some(dir) = &ws.spec.dir {
            return Ok(PathBuf::from(dir));
        }
        let docker = self.docker().await?;
        let name = self.volume_name(&ws.engine_id, &ws.workspace_id);
        let volume = self
            .call("volume inspect", docker.inspect_volume(&name))
            .await?;
        Ok(PathBuf::from(volume.mountpoint))
    }
}

fn container_state(c: &ContainerInspectResponse) -> Option<ContainerStateStatusEnum> {
    c.state.as_ref().and_then(|s| s.status)
}

pub(crate) fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().and_then(|s| s.running) == Some(true)
}

fn status_of(c: &ContainerInspectResponse) -> ProcessStatus {
    if is_running(c) {
        return ProcessStatus::Running;
    }
    match container_state(c) {
        Some(ContainerStateStatusEnum::CREATED) | None => ProcessStatus::Exited(None),
        _ => ProcessStatus::Exited(c.state.as_ref().and_then(|s| s.exit_code)),
    }
}

fn parse_time(text: Option<&str>) -> Timestamp {
    text.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now)
}

fn unavailable(e: &BollardError) -> RuntimeError {
    RuntimeError::Unavailable {
        message: format!("cannot reach the Docker daemon: {e}"),
    }
}

/// Maps bollard's errors onto the port's: 404 → `NotFound`, 409 → `Conflict`
/// (`RemovalInProgress` when Docker says so, else `NameInUse`), connection failures →
/// `Unavailable`, anything else → `Other` with the call named.
fn map_error(what: &str, e: &BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => RuntimeError::NotFound {
                resource: message.clone(),
            },
            409 => RuntimeError::Conflict {
                resource: what.into(),
                reason: if message.contains("removal") {
                    ConflictReason::RemovalInProgress
                } else {
                    ConflictReason::NameInUse
                },
                message: message.clone(),
            },
            304 => RuntimeError::Other {
                resource: what.into(),
                message: "304 not modified".into(),
            },
            _ => RuntimeError::Other {
                resource: format!("docker {what}"),
                message: format!("{status_code}: {message}"),
            },
        },
        BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::RequestTimeoutError => unavailable(e),
        other => RuntimeError::Other {
            resource: format!("docker {what}"),
            message: other.to_string(),
        },
    }
}

#[async_trait]
impl ProcessRuntime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::parse("docker").unwrap_or_else(|_| unreachable!("a valid runtime name"))
    }

    fn check_spec(&self, spec: &WorkspaceSpec) -> Result<(), SpecRefusal> {
        if spec.git.is_some() {
            return Err(SpecRefusal {
                field: "git",
                message: "the docker runtime does not check out git sources; give a dir (bind-mounted at /workspace) or nothing (a volume)".into(),
            });
        }
        if spec.image.is_none() && self.config.default_image.is_none() {
            return Err(SpecRefusal {
                field: "image",
                message: "a docker workspace needs an image, and this daemon has no default image (berth serve --docker-image)".into(),
            });
        }
        if spec
            .image
            .as_deref()
            .is_some_and(|i| i.is_empty() || i.contains(char::is_whitespace))
        {
            return Err(SpecRefusal {
                field: "image",
                message: "an image reference is non-empty and holds no whitespace".into(),
            });
        }
        if let Some(limits) = &spec.limits {
            self.check_limits(limits)?;
        }
        if spec.sandbox == Some(berth_core::model::Sandbox::Landlock) {
            return Err(SpecRefusal {
                field: "sandbox",
                message: "sandbox landlock is for tmux workspaces; a container is confined by Docker (capabilities dropped, no-new-privileges, limits; network false for no network)".into(),
            });
        }
        if let (Some(dir), Some(protected)) = (&spec.dir, &self.config.protected_dir)
            && berth_hostdirs::reaches_into(std::path::Path::new(dir), protected, true)
        {
            return Err(SpecRefusal {
                field: "dir",
                message: format!(
                    "{dir} reaches into berth's own directory {} (its state holds the daemon's keys); mount a directory outside it",
                    protected.display()
                ),
            });
        }
        Ok(())
    }

    async fn watch_events(&self, engine_id: &EngineId, stop: &CancellationToken, wake: &EventWake) {
        self.follow_events(engine_id, stop, || wake.wake()).await;
    }

    async fn inspect_session(
        &self,
        session: &SessionRef,
    ) -> Result<Option<OwnedResource>, RuntimeError> {
        let Some((c, owner)) = self.ours(&session.engine_id, &session.workspace_id).await? else {
            return Ok(None);
        };
        if !is_running(&c) {
            return Ok(None);
        }
        let Some(main) = self.resource_of(&owner, parse_time(c.created.as_deref()), status_of(&c))
        else {
            return Ok(None);
        };
        let name = self.name(&session.engine_id, &session.workspace_id);
        let mut found: Vec<OwnedResource> = sessions::list(
            self,
            &name,
            &main.workspace_id,
            main.incarnation,
        )
        .await?
        .into_iter()
        .filter(|r| matches!(&r.kind, ResourceKind::Session { name, .. } if *name == session.name))
        .collect();
        // The running generation if there is one, else the latest.
        found.sort_by_key(|r| {
            let generation = match &r.kind {
                ResourceKind::Session { generation, .. } => generation.0,
                ResourceKind::Main => 0,
            };
            (r.status == ProcessStatus::Running, generation)
        });
        Ok(found.pop())
    }

    async fn prepare(&self, workspace: &WorkspaceRef) -> Result<Option<String>, RuntimeError> {
        if let Some(dir) = &workspace.spec.dir {
            // The user's input: a 4xx (`validation_failed`), never a runtime fault.
            let meta = tokio::fs::metadata(dir)
                .await
                .map_err(|e| RuntimeError::BadInput {
                    message: format!("dir {dir}: the workspace directory cannot be used: {e}"),
                })?;
            if !meta.is_dir() {
                return Err(RuntimeError::BadInput {
                    message: format!("dir {dir}: is not a directory"),
                });
            }
            return Ok(Some(WORKSPACE_MOUNT.into()));
        }
        let docker = self.docker().await?;
        let name = self.volume_name(&workspace.engine_id, &workspace.workspace_id);
        let labels = self.volume_labels(&workspace.engine_id, &workspace.workspace_id);
        // Creating an existing volume returns it: idempotent.
        let volume = self
            .call(
                "volume create",
                docker.create_volume(CreateVolumeOptions {
                    name: name.clone(),
                    driver: "local".into(),
                    driver_opts: HashMap::new(),
                    labels,
                }),
            )
            .await?;
        if let Some(user) = self.user_of(&workspace.spec) {
            self.give_volume(workspace, &volume.mountpoint, user)
                .await?;
        }
        Ok(Some(WORKSPACE_MOUNT.into()))
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<(), RuntimeError> {
        self.create_and_start(request).await
    }

    async fn stop(&self, resource: &ResourceRef, grace: Duration) -> Result<(), RuntimeError> {
        let Some(c) = self.fenced(resource).await? else {
            return Ok(());
        };
        if !is_running(&c) {
            return Ok(());
        }
        // The container checked above, by id: between the check and the call a newer
        // incarnation's container may take the name (another daemon took the
        // workspace over while this one was frozen); it never has this id.
        let Some(name) = c.id else {
            return Ok(());
        };
        let docker = self.docker().await?;
        let secs = i64::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
            .unwrap_or(i64::MAX);
        match self
            .call_within(
                "stop",
                self.config.call_timeout + grace,
                docker.stop_container(&name, Some(StopContainerOptions { t: secs })),
            )
            .await
        {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(RuntimeError::Other { message, .. }) if message.contains("304") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, resource: &ResourceRef) -> Result<(), RuntimeError> {
        // By id, as `stop`: never a newer incarnation's container under the same name.
        let Some(name) = self.fenced(resource).await?.and_then(|c| c.id) else {
            return Ok(());
        };
        let docker = self.docker().await?;
        let deadline = tokio::time::Instant::now() + self.config.start_deadline;
        loop {
            match self.force_remove(&docker, &name).await {
                Ok(()) => return Ok(()),
                Err(RuntimeError::Conflict {
                    reason: ConflictReason::RemovalInProgress,
                    ..
                }) if tokio::time::Instant::now() < deadline => {
                    // Docker is already removing it: wait until it is gone.
                    if self.inspect_name(&name).await?.is_none() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn cleanup(&self, workspace: &WorkspaceRef) -> Result<(), RuntimeError> {
        if let Some(sockets) = &self.config.sockets {
            sockets.close(&workspace.workspace_id);
        }
        if workspace.spec.dir.is_some() {
            // The user's directory: never removed.
            return Ok(());
        }
        let docker = self.docker().await?;
        let name = self.volume_name(&workspace.engine_id, &workspace.workspace_id);
        let volume = match self
            .call("volume inspect", docker.inspect_volume(&name))
            .await
        {
            Ok(v) => v,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mine = volume.labels.get(&self.label("engine")).map(String::as_str)
            == Some(workspace.engine_id.as_str());
        if !mine {
            return Ok(());
        }
        match self
            .call(
                "volume remove",
                docker.remove_volume(&name, Some(RemoveVolumeOptions { force: false })),
            )
            .await
        {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn inspect(
        &self,
        engine_id: &EngineId,
        workspace_id: &WorkspaceId,
    ) -> Result<Option<OwnedResource>, RuntimeError> {
        let Some((c, o)) = self.ours(engine_id, workspace_id).await? else {
            return Ok(None);
        };
        Ok(self.resource_of(&o, parse_time(c.created.as_deref()), status_of(&c)))
    }

    async fn list_owned(&self, engine_id: &EngineId) -> Result<Vec<OwnedResource>, RuntimeError> {
        let docker = self.docker().await?;
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{}={engine_id}", self.label("engine"))],
        )]);
        let listed = self
            .call(
                "list",
                docker.list_containers(Some(ListContainersOptions {
                    all: true,
                    filters,
                    ..Default::default()
                })),
            )
            .await?;
        let mut out = Vec::new();
        for summary in listed {
            let Some(owner) = self.owner(summary.labels.as_ref()) else {
                continue;
            };
            if owner.engine != engine_id.as_str() {
                continue;
            }
            let created = summary
                .created
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .unwrap_or_else(chrono::Utc::now);
            // A paused container's processes still exist (inspect says Running too).
            let running = matches!(summary.state.as_deref(), Some("running" | "paused"));
            let status = if running {
                ProcessStatus::Running
            } else {
                ProcessStatus::Exited(exit_code_of(summary.status.as_deref()))
            };
            let Some(main) = self.resource_of(&owner, created, status) else {
                continue;
            };
            if running {
                let name = summary
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default();
                out.extend(
                    sessions::list(self, &name, &main.workspace_id, main.incarnation).await?,
                );
            }
            out.push(main);
        }
        Ok(out)
    }

    async fn launch_session(&self, launch: &SessionLaunch) -> Result<(), RuntimeError> {
        let container = self.running_incarnation(&launch.resource).await?;
        sessions::launch(self, &container, launch).await
    }

    async fn stop_session(
        &self,
        session: &SessionRef,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let Some((c, _)) = self.ours(&session.engine_id, &session.workspace_id).await? else {
            return Ok(());
        };
        if !is_running(&c) {
            return Ok(());
        }
        let name = self.name(&session.engine_id, &session.workspace_id);
        sessions::stop(self, &name, session, grace).await
    }

    async fn capture(
        &self,
        target: &CaptureTarget,
        lines: usize,
    ) -> Result<Vec<String>, RuntimeError> {
        match target {
            CaptureTarget::Main(r) => {
                let name = self.this_incarnation(r).await?;
                let docker = self.docker().await?;
                let mut stream = docker.logs(
                    &name,
                    Some(LogsOptions::<String> {
                        stdout: true,
                        stderr: true,
                        tail: lines.to_string(),
                        ..Default::default()
                    }),
                );
                let mut text = Vec::new();
                let read = async {
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(
                                LogOutput::StdOut { message }
                                | LogOutput::StdErr { message }
                                | LogOutput::Console { message },
                            ) => {
                                text.extend_from_slice(&message);
                            }
                            Ok(LogOutput::StdIn { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                };
                self.call("logs", read).await?;
                Ok(last_lines(&text, lines))
            }
            CaptureTarget::Session(s) => {
                let Some((c, _)) = self.ours(&s.engine_id, &s.workspace_id).await? else {
                    return Err(RuntimeError::NotFound {
                        resource: format!("session {} of {}", s.name, s.workspace_id),
                    });
                };
                if !is_running(&c) {
                    return Err(RuntimeError::NotFound {
                        resource: format!("session {} of {}", s.name, s.workspace_id),
                    });
                }
                let name = self.name(&s.engine_id, &s.workspace_id);
                sessions::capture(self, &name, s, lines).await
            }
        }
    }

    async fn logs(
        &self,
        target: &CaptureTarget,
        query: &LogQuery,
    ) -> Result<LogStream, RuntimeError> {
        match target {
            CaptureTarget::Main(r) => self.container_logs(r, query).await,
            // A session's output is a file in the container, followed by `tail -f`.
            CaptureTarget::Session(s) if query.follow => self.follow_session(s, query.tail).await,
            CaptureTarget::Session(_) => {
                let lines = self.capture(target, query.tail.unwrap_or(10_000)).await?;
                Ok(berth_core::ports::captured(lines))
            }
        }
    }

    async fn exec(&self, request: &ExecRequest) -> Result<ExecIo, RuntimeError> {
        self.exec_in(request).await
    }

    async fn attach(
        &self,
        target: &CaptureTarget,
        size: TermSize,
        term: Option<String>,
    ) -> Result<ExecIo, RuntimeError> {
        self.shell_in(target, size, term).await
    }

    async fn copy_out(&self, request: &CopyRequest) -> Result<ByteStream, RuntimeError> {
        self.archive_out(request).await
    }

    async fn copy_in(
        &self,
        request: &CopyRequest,
        archive: ByteStream,
    ) -> Result<(), RuntimeError> {
        self.archive_in(request, archive).await
    }

    fn delivers_tokens(&self) -> bool {
        self.config.sockets.is_some()
    }

    async fn deliver_token(
        &self,
        workspace: &WorkspaceRef,
        token: &WorkspaceToken,
    ) -> Result<(), RuntimeError> {
        let name = self.name(&workspace.engine_id, &workspace.workspace_id);
        let Some(sockets) = &self.config.sockets else {
            return Err(RuntimeError::Unsupported {
                message:
                    "this daemon serves no API socket to containers, so it cannot hand them tokens"
                        .into(),
            });
        };
        let dir = sockets
            .open(&workspace.workspace_id)
            .map_err(|message| RuntimeError::Other {
                resource: name.clone(),
                message,
            })?;
        let owner = self.user_of(&workspace.spec);
        write_token_file(&dir, token, owner).map_err(|e| RuntimeError::Other {
            resource: name,
            message: format!("cannot write the token file in {}: {e}", dir.display()),
        })
    }

    async fn dirty_check(&self, workspace: &WorkspaceRef) -> Result<DirtyReport, RuntimeError> {
        let dir = match self.data_dir(workspace).await {
            Ok(dir) => dir,
            // No volume yet (never started): nothing unsaved can be in it.
            Err(e) if e.is_not_found() && workspace.spec.dir.is_none() => {
                return Ok(DirtyReport::Clean);
            }
            Err(e) => return Err(e),
        };
        berth_hostdirs::dirty(
            &berth_hostdirs::WorkDir::User(dir),
            Duration::from_secs(120),
        )
        .await
    }
}

/// The exit code in a container summary's status text ("Exited (7) 3 seconds ago").
fn exit_code_of(status: Option<&str>) -> Option<i64> {
    let rest = status?.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
}

/// The last `n` lines of `text`, lossily decoded.
pub(crate) fn last_lines(text: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip).collect()
}

/// Writes `token` to `dir/token` for the container's user `owner` (root when `None`):
/// mode 0600, owned by that user when this daemon may give files away, and renamed
/// into place so a reader sees no token or the whole token.
fn write_token_file(
    dir: &std::path::Path,
    token: &WorkspaceToken,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let partial = dir.join(format!(".{TOKEN_FILE}.partial"));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(token.expose_secret().as_bytes())?;
    drop(file);
    if nix::unistd::geteuid().is_root() {
        let (uid, gid) = owner.unwrap_or((0, 0));
        std::os::unix::fs::chown(&partial, Some(uid), Some(gid))?;
    }
    std::fs::rename(&partial, dir.join(TOKEN_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_come_from_the_status_text() {
        assert_eq!(exit_code_of(Some("Exited (7) 3 seconds ago")), Some(7));
        assert_eq!(exit_code_of(Some("Exited (0) About a minute ago")), Some(0));
        assert_eq!(exit_code_of(Some("Up 2 seconds")), None);
        assert_eq!(exit_code_of(Some("Created")), None);
        assert_eq!(exit_code_of(None), None);
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), vec!["b", "c"]);
        assert_eq!(last_lines(b"a", 5), vec!["a"]);
        assert!(last_lines(b"", 5).is_empty());
    }
}
