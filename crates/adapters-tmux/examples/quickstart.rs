//! berth embedded, end to end on this machine: the engine with the SQLite store and the
//! tmux runtime in a fresh data directory. It creates a workspace, starts it, reads its
//! output, launches a session, restarts, deletes, prints the events it left, and shuts
//! down. `cargo run -p berth-tmux --example quickstart [data-dir]`.

// An example speaks to the person running it.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use berth_core::Engine;
use berth_core::ids::{RuntimeKind, SessionName, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace, WorkspaceSpec};
use berth_core::reporter::{QueueReporter, TracingSink};
use berth_sqlite::{SqliteOptions, SqliteStore};
use berth_tmux::{TmuxConfig, TmuxRuntime};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (data_dir, temporary) = match std::env::args().nth(1) {
        Some(dir) => (std::path::PathBuf::from(dir), false),
        None => (
            std::env::temp_dir().join(format!("berth-quickstart-{}", std::process::id())),
            true,
        ),
    };
    println!("data dir: {}", data_dir.display());
    let runtime = Arc::new(TmuxRuntime::new(TmuxConfig::new(&data_dir)));
    println!("tmux: {}", TmuxRuntime::version().await?);
    let engine = Engine::builder()
        .store(Arc::new(
            SqliteStore::open_in(&data_dir, SqliteOptions::default()).await?,
        ))
        .runtime(runtime.clone())
        .reporter(Arc::new(QueueReporter::new(
            1024,
            vec![Arc::new(TracingSink)],
        )))
        .build()
        .await?;
    let spec = WorkspaceSpec {
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo \"hello from $BERTH_WORKSPACE_ID\"; exec sleep 3600".into(),
        ],
        ..Default::default()
    };
    let ws = engine
        .create(CreateWorkspace {
            name: WorkspaceName::parse("hello")?,
            runtime: RuntimeKind::parse("tmux")?,
            spec,
            actor: Actor::Cli,
        })
        .await?;
    println!("created {} ({})", ws.name, ws.id);
    let op = engine.start(&ws.id, Actor::Cli).await?.wait().await?;
    println!("start: {:?}, incarnation {:?}", op.status, op.incarnation);
    let mut output = Vec::new();
    for _ in 0..50 {
        output = engine.output(&ws.id, None, 5).await?;
        if !output.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("output: {output:?}");
    let session = engine
        .launch_session(
            &ws.id,
            SessionName::parse("shell")?,
            vec![
                "sh".into(),
                "-c".into(),
                "echo session up; exec sleep 3600".into(),
            ],
            Default::default(),
        )
        .await?;
    println!(
        "session {} (generation {})",
        session.name, session.generation
    );
    let op = engine.restart(&ws.id, Actor::Cli).await?.wait().await?;
    println!("restart: {:?}, incarnation {:?}", op.status, op.incarnation);
    let op = engine
        .delete(&ws.id, true, Actor::Cli)
        .await?
        .wait()
        .await?;
    println!("delete: {:?}", op.status);
    for event in engine.events(0, Some(&ws.id), 100).await? {
        println!(
            "event {:>3} {:?} -> {:?} ({:?})",
            event.seq, event.event.from, event.event.to, event.event.cause
        );
    }
    let report = engine.shutdown().await;
    println!("shutdown: {report:?}, tasks left {}", engine.live_tasks());
    // The example's own tmux server and, unless a data dir was given, its files.
    let _ = std::process::Command::new("tmux")
        .arg("-S")
        .arg(runtime.socket())
        .arg("kill-server")
        .status();
    if temporary {
        std::fs::remove_dir_all(&data_dir)?;
    }
    Ok(())
}
