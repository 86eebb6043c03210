//! `berth serve`, the composition root: wires the SQLite store, the tmux and Docker
//! runtimes, the engine and the router, and runs until SIGTERM/SIGINT. Settings come from flags, then the environment, then
//! an optional TOML file, then the defaults of `lifecycle.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use tower::ServiceExt;

use anyhow::{Context, bail};
use berth_core::Engine;
use berth_core::engine::EngineConfig;
use berth_core::model::Sandbox;
use berth_core::ports::{ProcessRuntime, Reporter, Store, SystemClock};
use berth_core::reporter::{QueueReporter, ReportSink, TracingSink};
use berth_docker::{DockerConfig, DockerRuntime};
use berth_postgres::{MemberOptions, PgOptions, PgStore};
use berth_sqlite::{Durability, SqliteOptions, SqliteStore};
use berth_tmux::{TmuxConfig, TmuxRuntime};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::hub::EventHub;
use crate::http::metrics::Metrics;
use crate::http::{AppState, booting_router, router};

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7421";

/// How long `serve` waits for the Docker daemon's version at start (beside recovery).
const DOCKER_PROBE: Duration = Duration::from_secs(2);

/// Flags of `berth serve` (each also read from its environment variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Data directory (SQLite file, tmux socket, admin token). Default:
    /// $XDG_DATA_HOME/berth or ~/.local/share/berth.
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on; `127.0.0.1:0` picks a free port. The bound URL is the
    /// first line printed. [default: 127.0.0.1:7421]
    #[arg(long, env = "BERTH_LISTEN")]
    pub listen: Option<String>,
    /// Admin token. Default: <data dir>/admin.token, generated on first start.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// TOML file with any of the settings below (snake_case keys, durations as
    /// "5s"). Flags and environment win over it. Default: <data dir>/berth.toml if
    /// it exists.
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Period of the background reconciler. [default: 5s]
    #[arg(long, env = "BERTH_RECONCILE_PERIOD", value_parser = humantime::parse_duration)]
    pub reconcile_period: Option<Duration>,
    /// The most unclaimed members all warm pools may keep together. [default: 256]
    #[arg(long, env = "BERTH_POOL_CAPACITY")]
    pub pool_capacity: Option<u32>,
    /// Runtime resources of no known workspace younger than this are left alone.
    /// [default: 60s]
    #[arg(long, env = "BERTH_ORPHAN_GRACE", value_parser = humantime::parse_duration)]
    pub orphan_grace: Option<Duration>,
    /// A start still `starting` after this fails with `start_timeout`. [default: 120s]
    #[arg(long, env = "BERTH_START_CEILING", value_parser = humantime::parse_duration)]
    pub start_ceiling: Option<Duration>,
    /// A request's headers must arrive within this (also the idle timeout of a
    /// keep-alive connection). [default: 10s]
    #[arg(long, env = "BERTH_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Connections served at once; more wait in the listen backlog. [default: 512]
    #[arg(long, env = "BERTH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// `uid:gid` Docker workspaces run as when this daemon runs as root (a daemon
    /// running as a normal user runs them as itself). [default: 65532:65532]
    #[arg(long, env = "BERTH_DOCKER_USER", value_parser = parse_user)]
    pub docker_user: Option<String>,
    /// The sandbox of tmux workspaces whose spec names none: none, landlock or auto
    /// (docs/security.md). [default: none]
    #[arg(long, env = "BERTH_SANDBOX", value_parser = parse_sandbox)]
    pub sandbox: Option<Sandbox>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (refused without it: bearer tokens
    /// would cross the network in clear).
    #[arg(long, env = "BERTH_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// SIGTERM to SIGKILL delay when stopping a workspace. [default: 10s]
    #[arg(long, env = "BERTH_STOP_GRACE", value_parser = humantime::parse_duration)]
    pub stop_grace: Option<Duration>,
    /// Bound on one runtime listing or inspection (reconcile, readiness, recovery): a
    /// runtime that does not answer within it is reported degraded. [default: 15s]
    #[arg(long, env = "BERTH_RUNTIME_CALL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub runtime_call_timeout: Option<Duration>,
    /// On shutdown, how long in-flight ops may finish before they are interrupted.
    /// [default: 10s]
    #[arg(long, env = "BERTH_DRAIN_DEADLINE", value_parser = humantime::parse_duration)]
    pub drain_deadline: Option<Duration>,
    /// Longest an HTTP request may take; waits are capped 5 s below it. [default: 300s]
    #[arg(long, env = "BERTH_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Image of a docker workspace whose spec names none (the Docker daemon is found
    /// through DOCKER_HOST or its default socket). [default: none: the spec must name one]
    #[arg(long, env = "BERTH_DOCKER_IMAGE")]
    pub docker_image: Option<String>,
    /// The store: `sqlite` (a file in the data directory) or a PostgreSQL URL
    /// (`postgres://user:pass@host/db`, or `postgres:///db?host=/socket/dir`) shared by
    /// several daemons (docs/scale-out.md). [default: sqlite]
    #[arg(long, env = "BERTH_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// With a PostgreSQL store: this daemon's id in the fleet. [default: generated
    /// once and kept in the data directory]
    #[arg(long, env = "BERTH_DAEMON_ID")]
    pub daemon_id: Option<String>,
    /// With a PostgreSQL store: the URL other daemons forward requests to. [default:
    /// the address it listens on]
    #[arg(long, env = "BERTH_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// With a PostgreSQL store: how long this daemon's workspaces stay its own without
    /// a heartbeat (renewed every third of it); another daemon takes them over after.
    /// [default: 10s]
    #[arg(long, env = "BERTH_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// SQLite store: `normal` (a commit survives a crash of berth; the last commits may
    /// be lost in a power failure) or `full` (every acknowledged write is on disk:
    /// one fsync per group of concurrent writes). [default: normal]
    #[arg(long, env = "BERTH_DURABILITY", value_parser = parse_durability)]
    pub durability: Option<Durability>,
}

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "normal" => Ok(Durability::Normal),
        "full" => Ok(Durability::Full),
        _ => Err(format!("{text:?} is not normal or full")),
    }
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    token: Option<String>,
    #[serde(default, with = "opt_duration")]
    reconcile_period: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    orphan_grace: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    start_ceiling: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    stop_grace: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    runtime_call_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    header_read_timeout: Option<Duration>,
    max_connections: Option<usize>,
    sandbox: Option<Sandbox>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    docker_user: Option<String>,
    #[serde(default, with = "opt_duration")]
    drain_deadline: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    request_timeout: Option<Duration>,
    docker_image: Option<String>,
    store: Option<String>,
    daemon_id: Option<String>,
    advertise_url: Option<String>,
    #[serde(default, with = "opt_duration")]
    lease_ttl: Option<Duration>,
    durability: Option<String>,
    pool_capacity: Option<u32>,
    /// `[pools.<name>]`: warm pools, set at every start (the API's `PUT /v1/pools`).
    #[serde(default)]
    pools: std::collections::BTreeMap<String, crate::http::dto::PoolRequest>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The settings after merging flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: String,
    /// Admin token, if given (else the token file).
    pub token: Option<String>,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Longest request.
    pub request_timeout: Duration,
    /// Default image of docker workspaces.
    pub docker_image: Option<String>,
    /// Plain HTTP on a non-loopback address was asked for.
    pub insecure_listen: bool,
    /// The HTTP server's limits.
    pub server: crate::server::ServerLimits,
    /// The sandbox of tmux workspaces whose spec names none.
    pub sandbox: Sandbox,
    /// `uid:gid` of Docker workspaces when the daemon runs as root.
    pub docker_user: Option<String>,
    /// HTTPS: the certificate chain and the key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The store.
    pub store: StoreChoice,
    /// This daemon's id in a fleet (else generated and kept in the data directory).
    pub daemon_id: Option<String>,
    /// The URL other daemons forward to (else the listen URL).
    pub advertise_url: Option<String>,
    /// The lease time in a fleet.
    pub lease_ttl: Duration,
    /// How hard the SQLite store makes a commit durable.
    pub durability: Durability,
    /// The config file's warm pools, set at start.
    pub pools: Vec<berth_core::model::Pool>,
}

/// Which store `berth serve` uses.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// `<data dir>/state/berth.db`.
    Sqlite,
    /// A PostgreSQL database shared by a fleet (the URL may hold a password).
    Postgres(String),
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Sqlite => f.write_str("Sqlite"),
            StoreChoice::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

fn parse_store(text: &str) -> anyhow::Result<StoreChoice> {
    if text == "sqlite" {
        Ok(StoreChoice::Sqlite)
    } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(StoreChoice::Postgres(text.to_owned()))
    } else {
        bail!("store must be `sqlite` or a postgres:// URL")
    }
}

fn parse_user(text: &str) -> Result<String, String> {
    match text.split_once(':') {
        Some((u, g)) if u.parse::<u32>().is_ok_and(|u| u != 0) && g.parse::<u32>().is_ok() => {
            Ok(text.to_owned())
        }
        _ => Err(format!(
            "{text:?} is not uid:gid with a uid other than 0 (numbers)"
        )),
    }
}

fn parse_sandbox(text: &str) -> Result<Sandbox, String> {
    Sandbox::parse(text).ok_or_else(|| format!("{text:?} is not none, landlock or auto"))
}

/// The default data directory: `$XDG_DATA_HOME/berth`, else `~/.local/share/berth`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("berth"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("neither XDG_DATA_HOME nor HOME is set; pass --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/berth"))
}

impl ServeArgs {
    /// Merges flags/env (already in `self` via clap) with the file and the defaults.
    ///
    /// # Errors
    /// An unreadable or invalid config file, or no data directory.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let data_dir = match &self.data_dir {
            Some(d) => d.clone(),
            None => default_data_dir()?,
        };
        let file = match &self.config {
            Some(path) => read_file_config(path)?,
            None => {
                let path = data_dir.join("berth.toml");
                if path.exists() {
                    read_file_config(&path)?
                } else {
                    FileConfig::default()
                }
            }
        };
        let d = EngineConfig::default();
        let engine = EngineConfig {
            reconcile_period: Some(
                self.reconcile_period
                    .or(file.reconcile_period)
                    .or(d.reconcile_period)
                    .unwrap_or(Duration::from_secs(5)),
            ),
            orphan_grace: self
                .orphan_grace
                .or(file.orphan_grace)
                .unwrap_or(d.orphan_grace),
            start_ceiling: self
                .start_ceiling
                .or(file.start_ceiling)
                .unwrap_or(d.start_ceiling),
            stop_grace: self.stop_grace.or(file.stop_grace).unwrap_or(d.stop_grace),
            runtime_call_timeout: self
                .runtime_call_timeout
                .or(file.runtime_call_timeout)
                .unwrap_or(d.runtime_call_timeout),
            drain_deadline: self
                .drain_deadline
                .or(file.drain_deadline)
                .unwrap_or(d.drain_deadline),
            pool_capacity: self
                .pool_capacity
                .or(file.pool_capacity)
                .unwrap_or(d.pool_capacity),
            ..d
        };
        Ok(Settings {
            data_dir,
            listen: self
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            token: self.token.clone().or(file.token),
            engine,
            request_timeout: self
                .request_timeout
                .or(file.request_timeout)
                .unwrap_or(Duration::from_secs(300)),
            docker_image: self.docker_image.clone().or(file.docker_image),
            insecure_listen: self.insecure_listen,
            tls: match (
                self.tls_cert.clone().or(file.tls_cert),
                self.tls_key.clone().or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => bail!("HTTPS needs both a certificate (tls_cert) and its key (tls_key)"),
            },
            sandbox: self.sandbox.or(file.sandbox).unwrap_or_default(),
            docker_user: match self.docker_user.clone().or(file.docker_user) {
                Some(user) => {
                    Some(parse_user(&user).map_err(|e| anyhow::anyhow!("docker_user: {e}"))?)
                }
                None => None,
            },
            store: match self.store.clone().or(file.store) {
                Some(text) => parse_store(&text)?,
                None => StoreChoice::Sqlite,
            },
            daemon_id: self.daemon_id.clone().or(file.daemon_id),
            advertise_url: self.advertise_url.clone().or(file.advertise_url),
            lease_ttl: self
                .lease_ttl
                .or(file.lease_ttl)
                .unwrap_or(Duration::from_secs(10)),
            pools: file
                .pools
                .iter()
                .map(|(name, body)| {
                    let name = berth_core::ids::WorkspaceName::parse(name)
                        .map_err(|e| anyhow::anyhow!("pools.{name}: {e}"))?;
                    crate::http::pools::pool_of(name.clone(), body)
                        .map_err(|e| anyhow::anyhow!("pools.{name}: {}", e.detail.message))
                })
                .collect::<anyhow::Result<_>>()?,
            durability: match (self.durability, &file.durability) {
                (Some(d), _) => d,
                (None, Some(text)) => {
                    parse_durability(text).map_err(|e| anyhow::anyhow!("durability: {e}"))?
                }
                (None, None) => Durability::Normal,
            },
            server: {
                let d = crate::server::ServerLimits::default();
                crate::server::ServerLimits {
                    max_connections: self
                        .max_connections
                        .or(file.max_connections)
                        .unwrap_or(d.max_connections),
                    header_read_timeout: self
                        .header_read_timeout
                        .or(file.header_read_timeout)
                        .unwrap_or(d.header_read_timeout),
                }
            },
        })
    }
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// Creates the data directory and its `state/` (both 0700) if needed, and tightens
/// either when a looser mode is found.
///
/// # Errors
/// A directory cannot be created or secured.
pub fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    private_dir(dir, "data directory")?;
    private_dir(&state_dir(dir), "state directory")
}

fn private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {what} {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("{what} {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %dir.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "tightening a {what} others could read to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing {what} {}", dir.display()))?;
    }
    Ok(())
}

/// The daemon's private state inside a data directory (0700): the database, the admin
/// token, the daemon's lock and URL, the tmux socket and the launchers. No workspace
/// directory is ever inside it, and a Docker `dir` inside it is refused.
pub fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state")
}

/// What an older berth kept at the top of the data directory, now in `state/`.
const LEGACY_STATE: [&str; 6] = [
    "berth.db",
    "berth.db-wal",
    "berth.db-shm",
    "admin.token",
    "tmux.sock",
    "launch",
];

/// Moves an older layout's state (the database, the admin token, the tmux socket and
/// the launchers at the top of the data directory) into `state/`. Called under the
/// new lock; refused while an older daemon still holds the old one. A tmux server
/// keeps serving a renamed socket, so running workspaces stay reachable.
///
/// # Errors
/// An older daemon runs on the directory, or a rename fails.
pub fn migrate_legacy_layout(data_dir: &Path) -> anyhow::Result<()> {
    let state = state_dir(data_dir);
    let legacy_lock = data_dir.join("daemon.lock");
    if let Ok(file) = std::fs::File::open(&legacy_lock) {
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
            bail!(
                "an older berth serve still runs on the data directory {} (it holds {}); stop it first",
                data_dir.display(),
                legacy_lock.display()
            );
        }
        let _ = std::fs::remove_file(&legacy_lock);
    }
    let _ = std::fs::remove_file(data_dir.join("daemon.url"));
    for name in LEGACY_STATE {
        let old = data_dir.join(name);
        let new = state.join(name);
        if std::fs::symlink_metadata(&old).is_ok() && std::fs::symlink_metadata(&new).is_err() {
            std::fs::rename(&old, &new)
                .with_context(|| format!("moving {} to {}", old.display(), new.display()))?;
            tracing::info!(from = %old.display(), to = %new.display(), "moved state of an older layout");
        }
    }
    Ok(())
}

/// Takes the data directory's exclusive lock (`state/daemon.lock`, an advisory file
/// lock the kernel drops when the process exits, however it exits).
///
/// # Errors
/// Another process holds it, or the file cannot be opened.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir(dir).join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another berth serve is already using the data directory {} (it holds {}); stop it or pass another --data-dir",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Whether a daemon holds the data directory's lock now (a shared lock cannot be had).
/// A directory without a lock file has no daemon.
pub fn data_dir_in_use(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(state_dir(dir).join("daemon.lock")) else {
        return false;
    };
    matches!(
        file.try_lock_shared(),
        Err(std::fs::TryLockError::WouldBlock)
    )
}

/// The admin token file of a data directory.
pub fn token_path(data_dir: &Path) -> PathBuf {
    state_dir(data_dir).join("admin.token")
}

/// The file where a running daemon writes its URL.
pub fn url_path(data_dir: &Path) -> PathBuf {
    state_dir(data_dir).join("daemon.url")
}

/// Reads the admin token file, or creates it (0600) with a fresh random token.
///
/// # Errors
/// I/O errors, or no randomness.
pub fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            tighten_token_file(&path)?;
            return Ok(t.trim().to_owned());
        }
        Ok(_) => bail!(
            "{} is empty; delete it to generate a new token",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// An admin token file others could read is made 0600, with a warning: whoever could
/// read it may have the token, so it should be rotated (delete the file and restart).
fn tighten_token_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("securing {}", path.display()))?;
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the admin token file was readable by others: made 0600; rotate the token (delete the file and restart) if others may have read it");
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Serves again the API socket of every workspace (a restart closed them all); one that
/// cannot be made is logged, and made again by its next start.
async fn reopen_sockets(engine: &Engine, sockets: &crate::sockets::Sockets) {
    use berth_core::ports::WorkspaceSockets as _;
    let mut after = None;
    loop {
        let page = match engine
            .list(berth_core::engine::ListQuery {
                state: None,
                runtime: None,
                after: after.clone(),
                limit: 1000,
            })
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "listing workspaces to reopen their API sockets failed");
                return;
            }
        };
        for snapshot in &page.items {
            if !engine.owns(&snapshot.workspace.id) {
                continue;
            }
            if let Err(e) = sockets.open(&snapshot.workspace.id) {
                tracing::warn!(workspace = %snapshot.workspace.id, error = %e, "cannot reopen a workspace's API socket");
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return,
        }
    }
}

/// Bearer tokens over plain HTTP are only safe on loopback: any other address is
/// refused unless `--insecure-listen` says the network is trusted (and then warned
/// about).
fn refuse_plain_http_beyond_loopback(
    listener: &tokio::net::TcpListener,
    insecure: bool,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !insecure {
        bail!(
            "refusing to serve bearer tokens over plain HTTP on {addr}, a non-loopback address: give --tls-cert and --tls-key for HTTPS, listen on 127.0.0.1, or pass --insecure-listen if this network is trusted"
        );
    }
    tracing::warn!(%addr, "serving bearer tokens over plain HTTP on a non-loopback address (--insecure-listen): anyone on this network who can read the traffic can take the tokens");
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "berth: WARNING: plain HTTP on {addr} (--insecure-listen): tokens cross the network in clear"
        );
    }
    Ok(())
}

/// Runs the daemon until a signal. Returns the process exit code.
///
/// # Errors
/// Start-up failures (data dir, store, listen address).
pub async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let settings = args.settings()?;
    ensure_data_dir(&settings.data_dir)?;
    // Held until the process exits: one daemon per data directory.
    let _lock = lock_data_dir(&settings.data_dir)?;
    migrate_legacy_layout(&settings.data_dir)?;
    let token = match &settings.token {
        Some(t) if t.len() >= 16 => t.clone(),
        Some(_) => bail!("the admin token must be at least 16 characters"),
        None => load_or_create_token(&settings.data_dir)?,
    };
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let tls = match &settings.tls {
        Some((cert, key)) => Some(
            crate::server::tls_acceptor(cert, key).map_err(|e| anyhow::anyhow!("HTTPS: {e}"))?,
        ),
        None => {
            refuse_plain_http_beyond_loopback(&listener, settings.insecure_listen)?;
            None
        }
    };
    let addr: SocketAddr = listener.local_addr()?;
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });

    let opened = open_store(&settings, &token, &url).await?;
    let store = Arc::clone(&opened.store);

    // Registered before the URL is printed: a SIGTERM from then on is a clean shutdown.
    let mut signals = Signals::new()?;
    // The daemon answers from here on: while boot recovery runs, `/healthz` is 200
    // and everything else 503 (`/readyz` included); the full router replaces it once
    // the engine is built.
    let live: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let app = switch(booting_router(&token), Arc::clone(&live));
    // The listener stays open through the engine's drain (new requests get 503
    // `shutting_down`); it closes once the engine has shut down.
    let server_stop = CancellationToken::new();
    let server_closing = server_stop.clone();
    let server_tasks = TaskTracker::new();
    // Each workspace's API socket, served by the same router (its owner set).
    let sockets = Arc::new(
        crate::sockets::Sockets::new(
            settings.data_dir.join("run"),
            app.clone(),
            settings.server,
            server_stop.clone(),
            server_tasks.clone(),
        )
        .map_err(|e| anyhow::anyhow!("workspace sockets: {e}"))?,
    );
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    match tls {
        Some(tls) => server_tasks.spawn(crate::server::serve_tls(
            listener,
            app,
            settings.server,
            server_closing,
            tls,
        )),
        None => server_tasks.spawn(crate::server::serve(
            listener,
            app,
            settings.server,
            server_closing,
        )),
    };
    server_tasks.close();
    write_private(&url_path(&settings.data_dir), &url)?;
    // The first line is the URL alone, for scripts; the rest is for people.
    #[allow(clippy::print_stdout)]
    {
        println!("{url}");
    }

    let tmux = Arc::new(TmuxRuntime::new(TmuxConfig {
        default_sandbox: settings.sandbox,
        // This binary enters the sandbox (`berth sandbox-exec`).
        sandbox_helper: std::env::current_exe().ok(),
        sockets: Some(Arc::clone(&sockets) as Arc<dyn berth_core::ports::WorkspaceSockets>),
        ..TmuxConfig::new(&settings.data_dir)
    }));
    let tmux_version = TmuxRuntime::version().await;
    let docker = Arc::new(DockerRuntime::new(DockerConfig {
        default_image: settings.docker_image.clone(),
        protected_dir: Some(settings.data_dir.clone()),
        sockets: Some(Arc::clone(&sockets) as Arc<dyn berth_core::ports::WorkspaceSockets>),
        root_daemon_user: settings
            .docker_user
            .clone()
            .unwrap_or_else(|| DockerConfig::default().root_daemon_user),
        ..DockerConfig::default()
    }));
    // Probed beside boot recovery, bounded, and never waited for past it: a Docker
    // daemon that accepts and never answers delays neither readiness nor the tmux
    // side (the reconciler reports it degraded on /readyz).
    let docker_probe = {
        let docker = Arc::clone(&docker);
        server_tasks.spawn(async move {
            match tokio::time::timeout(DOCKER_PROBE, docker.version()).await {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err(format!("did not answer within {}s", DOCKER_PROBE.as_secs())),
            }
        })
    };
    let hub = Arc::new(EventHub::new());
    let metrics = Arc::new(Metrics::default());
    let sinks: Vec<Arc<dyn ReportSink>> = vec![
        Arc::new(TracingSink),
        Arc::clone(&hub) as Arc<dyn ReportSink>,
        Arc::clone(&metrics) as Arc<dyn ReportSink>,
    ];
    let reporter: Arc<dyn Reporter> = Arc::new(QueueReporter::new(65_536, sinks));
    let mut build = Engine::builder();
    if let Some(pg) = &opened.fleet {
        // A shared store: this engine acts on the workspaces it holds, and every
        // write it makes carries its epoch.
        build = build
            .fence(pg.fence())
            .ownership(Arc::clone(pg) as Arc<dyn berth_core::ports::Ownership>);
    }
    let build = build
        .store(store)
        .runtime(tmux)
        .runtime(Arc::clone(&docker) as Arc<dyn ProcessRuntime>)
        .reporter(reporter)
        .clock(Arc::new(SystemClock))
        .config(EngineConfig {
            api_url: url.clone(),
            ..settings.engine.clone()
        })
        .build();
    let engine = tokio::select! {
        built = build => built.context("starting the engine")?,
        () = signals.next() => {
            // Recovery is written to survive a crash at any point, so stopping it
            // half-way loses nothing: the next start resumes it.
            tracing::warn!("signal during boot recovery: exiting; the next start resumes recovery");
            server_stop.cancel();
            server_tasks.wait().await;
            let _ = std::fs::remove_file(url_path(&settings.data_dir));
            return Ok(0);
        }
    };

    let docker_version = match tokio::time::timeout(Duration::from_millis(100), docker_probe).await
    {
        Ok(Ok(probed)) => probed,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer yet".to_owned()),
    };

    let closing = CancellationToken::new();
    let tracker = TaskTracker::new();
    let start_seq = engine
        .last_event_seq()
        .await
        .context("reading the event log")?;
    hub.run_pump(engine.clone(), &tracker, closing.clone(), start_seq);
    let mut state = AppState::new(
        engine.clone(),
        &token,
        Arc::clone(&hub),
        metrics,
        closing.clone(),
    );
    state.request_timeout = settings.request_timeout;
    // Cancelled when another process joined the fleet under this daemon's id.
    let replaced = CancellationToken::new();
    if let Some(pg) = &opened.fleet {
        let cluster = Arc::new(crate::cluster::Cluster::new(
            Arc::clone(pg),
            engine.clone(),
        )?);
        cluster.spawn_loops(
            Arc::clone(&hub),
            &tracker,
            closing.clone(),
            replaced.clone(),
        );
        state.placement = Some(cluster as Arc<dyn crate::http::placement::Placement>);
    }
    reopen_sockets(&engine, &sockets).await;
    for pool in &settings.pools {
        let name = pool.name.clone();
        engine
            .set_pool(pool.clone())
            .await
            .map_err(|e| anyhow::anyhow!("config file, pools.{name}: {e}"))?;
    }
    state.set_ready(true);
    if live.set(router(state.clone())).is_err() {
        bail!("the API router was installed twice");
    }
    #[allow(clippy::print_stdout)]
    {
        let tmux_line = match &tmux_version {
            Ok(v) => format!("tmux ({v})"),
            Err(e) => format!("tmux (not working: {e})"),
        };
        println!("berth {} serving", env!("CARGO_PKG_VERSION"));
        let docker_line = match &docker_version {
            Ok(v) => format!("docker ({v})"),
            Err(e) => format!(
                "docker (unreachable now: {e}; retried by every reconcile pass, see /readyz)"
            ),
        };
        println!("runtimes: {tmux_line}; {docker_line}");
        println!("data dir: {}", settings.data_dir.display());
        println!("admin token: {}", token_path(&settings.data_dir).display());
        if let Some(r) = engine.recovery_report() {
            println!(
                "recovered: {} adopted, {} failed starts, {} stops and {} deletes finished, {} failed, {} ops interrupted",
                r.adopted,
                r.failed_starts,
                r.stops_finished,
                r.deletes_finished,
                r.failed,
                r.ops_interrupted
            );
        }
    }

    tokio::select! {
        () = signals.next() => {}
        () = replaced.cancelled() => {}
    }
    tracing::info!("shutting down");
    let deadline = tokio::time::Instant::now()
        + settings.engine.drain_deadline
        + settings.engine.final_flush_timeout
        + Duration::from_secs(1);
    // Streams and waits end now; the engine drains its ops, then closes the store.
    state.set_ready(false);
    closing.cancel();
    // Not awaited: it ends with the process.
    let second = TaskTracker::new();
    second.spawn(async move {
        // A second signal exits at once.
        signals.next().await;
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
    let report = tokio::time::timeout_at(deadline, engine.shutdown()).await;

    server_stop.cancel();
    tracker.close();
    let _ = tokio::time::timeout_at(deadline, async {
        tokio::join!(tracker.wait(), server_tasks.wait())
    })
    .await;
    let _ = std::fs::remove_file(url_path(&settings.data_dir));
    tracing::info!(?report, "stopped");
    let live_tasks = engine.live_tasks();
    #[allow(clippy::print_stdout)]
    match &report {
        Ok(r) => println!(
            "stopped: drained {}, {} ops interrupted, engine tasks alive {live_tasks}",
            r.drained, r.interrupted
        ),
        Err(_) => {
            println!("stopped: the drain overran its deadline, engine tasks alive {live_tasks}")
        }
    }
    Ok(if report.is_ok() { 0 } else { 1 })
}

/// The store `serve` opened: SQLite, or a PostgreSQL store this daemon joined.
struct OpenedStore {
    store: Arc<dyn Store>,
    fleet: Option<Arc<PgStore>>,
}

/// Opens the configured store. A PostgreSQL store is joined as this daemon (its id
/// from the data directory, its URL, its host), after checking that the fleet shares
/// this daemon's admin token.
async fn open_store(settings: &Settings, token: &str, url: &str) -> anyhow::Result<OpenedStore> {
    match &settings.store {
        // This daemon is the data directory's only writer (`daemon.lock`): the store's
        // single-writer model, under which the engine serves rows it committed from
        // memory.
        StoreChoice::Sqlite => Ok(OpenedStore {
            store: Arc::new(
                SqliteStore::open_in(
                    &state_dir(&settings.data_dir),
                    SqliteOptions {
                        durability: settings.durability,
                        ..SqliteOptions::default()
                    },
                )
                .await
                .with_context(|| format!("opening the store in {}", settings.data_dir.display()))?,
            ),
            fleet: None,
        }),
        StoreChoice::Postgres(pg_url) => {
            let pg = Arc::new(
                PgStore::connect(pg_url, PgOptions::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("opening the PostgreSQL store: {e}"))?,
            );
            let digest = sha256_hex(token);
            if !pg
                .fleet_token(&digest)
                .await
                .map_err(|e| anyhow::anyhow!("PostgreSQL store: {e}"))?
            {
                bail!(
                    "this daemon's admin token is not the one the other daemons of this database use; start every daemon of a fleet with the same --token (BERTH_TOKEN)"
                );
            }
            let daemon_id = match &settings.daemon_id {
                Some(id) => id.clone(),
                None => load_or_create_daemon_id(&settings.data_dir)?,
            };
            let host = format!(
                "{}:{}",
                hostname(),
                settings
                    .data_dir
                    .canonicalize()
                    .unwrap_or_else(|_| settings.data_dir.clone())
                    .display()
            );
            let member = pg
                .join(MemberOptions {
                    daemon_id,
                    url: settings
                        .advertise_url
                        .clone()
                        .unwrap_or_else(|| url.to_owned()),
                    host,
                    lease_ttl: settings.lease_ttl,
                    // A tmux workspace lives in this data directory's tmux server.
                    pinned_runtimes: std::collections::HashSet::from(["tmux".to_owned()]),
                })
                .await
                .map_err(|e| anyhow::anyhow!("joining the fleet: {e}"))?;
            tracing::info!(daemon = %member.daemon_id, epoch = member.epoch, store = %pg.url(), "joined the fleet");
            Ok(OpenedStore {
                store: Arc::clone(&pg) as Arc<dyn Store>,
                fleet: Some(pg),
            })
        }
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// This daemon's id in a fleet: `state/daemon-id`, generated once.
fn load_or_create_daemon_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir(data_dir).join("daemon-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let id = format!(
        "{}-{}",
        hostname(),
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    write_private(&path, &id)?;
    Ok(id)
}

/// A router that serves `booting` until `live` holds the full router.
fn switch(booting: Router, live: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback_service(tower::service_fn(move |req: axum::extract::Request| {
        let current = live.get().cloned().unwrap_or_else(|| booting.clone());
        current.oneshot(req)
    }))
}

/// SIGTERM and SIGINT, registered once so no signal between two waits is lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_beats_the_config_file_which_beats_the_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("berth.toml"),
            "runtime_call_timeout = \"3s\"\nstop_grace = \"4s\"\ndurability = \"full\"\n",
        )
        .expect("config file");
        let args = ServeArgs {
            data_dir: Some(dir.path().to_owned()),
            runtime_call_timeout: Some(Duration::from_secs(7)),
            ..ServeArgs::default()
        };
        let settings = args.settings().expect("settings");
        assert_eq!(settings.engine.runtime_call_timeout, Duration::from_secs(7));
        assert_eq!(settings.durability, Durability::Full, "from the file");
        assert_eq!(settings.engine.stop_grace, Duration::from_secs(4));
        let from_file = ServeArgs {
            data_dir: Some(dir.path().to_owned()),
            ..ServeArgs::default()
        }
        .settings()
        .expect("settings");
        assert_eq!(
            from_file.engine.runtime_call_timeout,
            Duration::from_secs(3)
        );
        let defaults = ServeArgs {
            data_dir: Some(dir.path().join("elsewhere")),
            ..ServeArgs::default()
        }
        .settings()
        .expect("settings");
        assert_eq!(
            defaults.engine.runtime_call_timeout,
            EngineConfig::default().runtime_call_timeout
        );
        assert_eq!(defaults.durability, Durability::Normal);
        let flag = ServeArgs {
            data_dir: Some(dir.path().to_owned()),
            durability: Some(Durability::Normal),
            ..ServeArgs::default()
        }
        .settings()
        .expect("settings");
        assert_eq!(
            flag.durability,
            Durability::Normal,
            "the flag beats the file"
        );
    }
}
