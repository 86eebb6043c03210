//! Faults short of a crash: a filesystem that fills up and empties again, a write lock
//! held by another process while reads and ops go on.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_core::ids::{RuntimeKind, WorkspaceName};
use berth_core::model::{Actor, CreateWorkspace, OpStatus};
use berth_core::state::State;
use berth_core::testkit::{FakeRuntime, TestClock};
use sqlx::Connection;

/// A small tmpfs mounted on a temp dir (needs root, which CI has); unmounted on drop,
/// also when the test fails.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `None` (after a loud SKIPPED) when no filesystem can be mounted here, unless
    /// `BERTH_REQUIRE_FAULTS` says the faults must run (CI).
    fn mount(test: &str, size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .stderr(std::process::Stdio::piped())
            .output();
        match status {
            Ok(out) if out.status.success() => Some(Self { dir }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("BERTH_REQUIRE_FAULTS").is_none(),
                    "{test}: cannot mount a tmpfs ({why}) and BERTH_REQUIRE_FAULTS is set"
                );
                eprintln!(
                    "\n*** SKIPPED {test}: cannot mount a small filesystem ({why}); run as root ***\n"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem holding `dir` to the last byte; returns the ballast file.
fn fill(dir: &Path) -> PathBuf {
    let ballast = dir.join("ballast");
    let mut f = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // The last partial chunk, byte by byte.
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
    ballast
}

fn create(name: &str) -> CreateWorkspace {
    CreateWorkspace {
        name: WorkspaceName::parse(name).unwrap(),
        runtime: RuntimeKind::parse("fake").unwrap(),
        spec: Default::default(),
        actor: Actor::Api,
    }
}

/// A full disk fails writes (an error, never a panic or a hang); once space returns
/// the very next writes succeed, on the same store and engine, with no restart, and
/// every history is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_disk_empties_the_next_write_succeeds_without_a_restart() {
    let test = "after_a_full_disk_empties_the_next_write_succeeds_without_a_restart";
    let Some(fs) = SmallFs::mount(test, "8m") else {
        return;
    };
    let path = fs.path().join("berth.db");
    let store = crate::open(&path).await;
    let engine = crate::engine(store.clone()).await;
    let ws = engine.create(create("before")).await.unwrap();
    let op = engine
        .start(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(op.status, OpStatus::Succeeded);

    let ballast = fill(fs.path());
    let mut failed = 0;
    for i in 0..2000 {
        if let Err(e) = engine.create(create(&format!("full{i}"))).await {
            // A full disk is an operational condition with a stable code, not a bug.
            assert_eq!(e.code(), berth_core::ErrorCode::StoreUnavailable, "{e}");
            failed += 1;
            if failed == 3 {
                break;
            }
        }
    }
    assert_eq!(failed, 3, "writes never failed on a full filesystem");
    // An op on the full disk ends (its commit fails); it must not hang.
    let stop = engine.stop(&ws.id, Actor::Api).await;
    if let Ok(ticket) = stop {
        let _ = ticket.wait().await;
    }

    std::fs::remove_file(&ballast).unwrap();
    let after = engine
        .create(create("after"))
        .await
        .expect("the first write after space returned succeeds");
    let op = engine
        .start(&after.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    // The workspace whose stop met the full disk can be driven to a settled state.
    let op = engine
        .stop(&ws.id, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert_eq!(
        engine.workspace(&ws.id).await.unwrap().state,
        State::Stopped
    );
    engine.shutdown().await;

    let store = crate::open(&path).await;
    store.integrity_check().await.unwrap();
    crate::assert_histories_whole(&store).await;
}

/// Another process holds the write lock while an op's commit waits for it: reading
/// that workspace, listing, and reading another workspace answer at once (WAL readers
/// never wait for a writer). The lock is held until every read answered, so a read
/// that waited for it would hang here, not pass slowly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_while_another_process_holds_the_write_lock_under_an_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let rt = Arc::new(FakeRuntime::new(Arc::new(TestClock::new())));
    let ids = {
        let store = crate::open(&path).await;
        let engine = crate::engine_on(store.clone(), rt.clone()).await;
        let mut ids = Vec::new();
        for name in ["held", "other"] {
            let ws = engine.create(create(name)).await.unwrap();
            engine
                .start(&ws.id, Actor::Api)
                .await
                .unwrap()
                .wait()
                .await
                .unwrap();
            ids.push(ws.id);
        }
        engine.shutdown().await;
        ids
    };
    // A fresh engine: no row is cached yet, every first read goes to the file.
    let store = crate::open(&path).await;
    let engine = crate::engine_on(store.clone(), rt.clone()).await;
    // The stop commits `stopping`, then holds in the runtime's stop call while another
    // process takes the write lock; released, its `stopped` commit waits for the lock.
    let held = rt.breakpoints().hold_once("stop");
    let stop = engine.stop(&ids[0], Actor::Api).await.unwrap();
    held.reached(1).await;
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("UPDATE meta SET value = value WHERE key = 'engine_id'")
        .execute(&mut other)
        .await
        .unwrap();
    held.release();
    // Wait until the commit is really waiting on the lock (the op is in flight).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!engine.pending(&ids[0]).is_idle(), "the stop is in flight");
    let reads = async {
        for _ in 0..3 {
            let snap = engine.snapshot(&ids[0]).await.unwrap();
            assert_eq!(snap.workspace.state, State::Stopping);
            assert!(snap.pending.in_flight.is_some());
            let page = engine
                .list(berth_core::engine::ListQuery {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(page.items.len(), 2);
            assert_eq!(
                engine.workspace(&ids[1]).await.unwrap().state,
                State::Running
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), reads)
        .await
        .expect("reads waited for another process's write lock");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let op = stop.wait().await.unwrap();
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    engine.shutdown().await;
}
