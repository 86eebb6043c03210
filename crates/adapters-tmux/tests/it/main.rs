//! berth-tmux's integration tests, on real tmux: one private server per test (its own
//! socket in its own temp dir), killed when the test ends, also on failure.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod contract;
mod engine;
mod processes;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_core::Engine;
use berth_core::engine::EngineConfig;
use berth_core::ids::{RuntimeKind, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace, Workspace, WorkspaceSpec};
use berth_core::testkit::{MemoryStore, RecordingReporter};
use berth_tmux::{TmuxConfig, TmuxRuntime};

/// A temp data dir with a private tmux server, killed on drop.
#[derive(Debug)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub rt: Arc<TmuxRuntime>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(TmuxRuntime::new(TmuxConfig::new(dir.path())));
        Self { dir, rt }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs tmux on this fixture's server (for the test's own checks and sabotage).
    pub fn tmux(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux")
            .arg("-S")
            .arg(self.rt.socket())
            .arg("-f")
            .arg("/dev/null")
            .args(args)
            .output()
            .unwrap()
    }

    pub fn tmux_out(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.tmux(args).stdout)
            .trim()
            .to_owned()
    }

    /// Session names on this server, without the runtime's own control session.
    pub fn sessions(&self) -> Vec<String> {
        self.tmux_out(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .filter(|n| *n != "berth-control")
            .map(str::to_owned)
            .collect()
    }

    /// Pane pids of workspace main sessions.
    pub fn main_pids(&self) -> String {
        let panes = self.tmux_out(&["list-panes", "-a", "-F", "#{session_name} #{pane_pid}"]);
        panes
            .lines()
            .filter(|l| l.starts_with("bw-"))
            .filter_map(|l| l.split(' ').nth(1))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// An engine on this runtime and `store`.
    pub async fn engine(&self, store: Arc<MemoryStore>) -> Engine {
        self.engine_with_grace(store, Duration::from_secs(2)).await
    }

    /// An engine on this runtime and `store` whose stops give `grace`.
    pub async fn engine_with_grace(&self, store: Arc<MemoryStore>, grace: Duration) -> Engine {
        let config = EngineConfig {
            reconcile_period: None,
            stop_grace: grace,
            orphan_grace: Duration::ZERO,
            ..EngineConfig::default()
        };
        Engine::builder()
            .store(store)
            .runtime(self.rt.clone())
            .reporter(Arc::new(RecordingReporter::default()))
            .config(config)
            .build()
            .await
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

pub async fn create(engine: &Engine, name: &str, spec: WorkspaceSpec) -> Workspace {
    engine
        .create(CreateWorkspace {
            name: WorkspaceName::parse(name).unwrap(),
            runtime: RuntimeKind::parse("tmux").unwrap(),
            spec,
            actor: Actor::Api,
        })
        .await
        .unwrap()
}

/// A workspace running `script` under `sh -c`.
pub async fn create_sh(engine: &Engine, name: &str, script: &str) -> Workspace {
    create(
        engine,
        name,
        WorkspaceSpec {
            command: sh(script),
            ..Default::default()
        },
    )
    .await
}

/// Requests `kind` on `ws` as the API and waits for the op to end.
pub async fn op(
    engine: &Engine,
    kind: berth_core::merge::OpKind,
    ws: &Workspace,
) -> berth_core::model::Operation {
    engine
        .request(&ws.id, kind, Actor::Api, false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap()
}

pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

pub fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st != "Z")
    })
}
