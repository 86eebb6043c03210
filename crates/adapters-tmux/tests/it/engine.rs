//! The engine end to end on tmux: exit codes, a daemon restart, git worktrees and user
//! directories, a tmux server killed from outside.

use std::sync::Arc;
use std::time::Duration;

use berth_core::merge::OpKind;
use berth_core::model::{Actor, GitSource, OpStatus, WorkspaceSpec};
use berth_core::state::{FailureReason, State};
use berth_core::testkit::{MemoryStore, wait_until};

use crate::{Fixture, create};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_recorded_with_their_codes_through_reconcile() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    let clean = crate::create_sh(&engine, "clean", "sleep 0.2; exit 0").await;
    let crash = crate::create_sh(&engine, "crash", "sleep 0.2; exit 7").await;
    for ws in [&clean, &crash] {
        assert_eq!(
            crate::op(&engine, OpKind::Start, ws).await.status,
            OpStatus::Succeeded
        );
    }
    wait_until(
        "both exits to be recorded",
        Duration::from_secs(10),
        || async {
            engine.reconcile().await;
            let (a, b) = (
                engine.workspace(&clean.id).await.unwrap(),
                engine.workspace(&crash.id).await.unwrap(),
            );
            a.state == State::Stopped && b.state == State::Failed
        },
    )
    .await;
    let failed = engine
        .workspace(&crash.id)
        .await
        .unwrap()
        .last_error
        .unwrap();
    assert_eq!(failed.code, FailureReason::Exited);
    assert!(failed.message.contains("code 7"), "{}", failed.message);
    assert_eq!(
        fx.sessions(),
        Vec::<String>::new(),
        "exited sessions are removed"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restart_adopts_the_running_workspace_with_the_same_pid() {
    let fx = Fixture::new();
    let store = Arc::new(MemoryStore::new());
    let engine = fx.engine(store.clone()).await;
    let ws = crate::create_sh(&engine, "survivor", "exec sleep 3600").await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    let pid_before = fx.main_pids();
    assert!(!pid_before.is_empty());
    // The daemon goes away: shutdown never stops workspaces. A new runtime and engine
    // on the same data dir find it again.
    engine.shutdown().await;
    store.reopen();
    let rt = Arc::new(berth_tmux::TmuxRuntime::new(berth_tmux::TmuxConfig::new(
        fx.path(),
    )));
    let again = berth_core::Engine::builder()
        .store(store.clone())
        .runtime(rt)
        .reporter(Arc::new(berth_core::testkit::RecordingReporter::default()))
        .config(berth_core::EngineConfig {
            reconcile_period: None,
            stop_grace: Duration::from_secs(2),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    assert_eq!(
        again.reconcile().await.missing,
        0,
        "the running workspace is found"
    );
    let found = again.workspace(&ws.id).await.unwrap();
    assert_eq!((found.state, found.incarnation.0), (State::Running, 1));
    assert_eq!(fx.main_pids(), pid_before, "same process");
    let op = crate::op(&again, OpKind::Stop, &ws).await;
    assert_eq!(op.status, OpStatus::Succeeded);
    let pid: i32 = pid_before.parse().unwrap();
    assert!(!crate::pid_alive(pid), "stopped by the new engine");
    again.shutdown().await;
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository at `path` with README "v1\n" committed on `main`.
fn repo_with_a_commit(path: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(path).unwrap();
    git(path, &["init", "-q", "-b", "main"]);
    std::fs::write(path.join("README"), "v1\n").unwrap();
    git(path, &["add", "README"]);
    git(path, &["commit", "-q", "-m", "v1"]);
    path.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_worktrees_are_created_checked_and_removed_and_user_dirs_are_kept() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    let repo = repo_with_a_commit(&fx.path().join("repo"));
    git(&repo, &["tag", "v1"]);
    std::fs::write(repo.join("README"), "v2\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "v2"]);
    let v1 = git(&repo, &["rev-parse", "v1"]);

    let spec = WorkspaceSpec {
        command: crate::sh("exec sleep 3600"),
        git: Some(GitSource {
            repo: repo.display().to_string(),
            reference: "v1".into(),
        }),
        ..Default::default()
    };
    let ws = create(&engine, "checkout", spec).await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    let dir = std::path::PathBuf::from(engine.workspace(&ws.id).await.unwrap().dir.unwrap());
    assert!(
        dir.starts_with(fx.path()),
        "the worktree lives under the data dir"
    );
    assert_eq!(
        git(&dir, &["rev-parse", "HEAD"]),
        v1,
        "checked out at the ref"
    );
    assert_eq!(std::fs::read_to_string(dir.join("README")).unwrap(), "v1\n");
    // Unsaved work: an edit and an untracked file.
    std::fs::write(dir.join("README"), "edited\n").unwrap();
    std::fs::write(dir.join("new file.txt"), "draft\n").unwrap();
    let refused = engine
        .delete(&ws.id, false, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let error = refused.error.unwrap();
    assert_eq!(error.code, berth_core::ErrorCode::WorkspaceDirty);
    let mut files = error.details["files"].clone();
    files.sort();
    assert_eq!(files, vec!["README".to_owned(), "new file.txt".to_owned()]);
    assert!(
        dir.join("new file.txt").exists(),
        "nothing removed on refusal"
    );
    assert_eq!(
        engine.workspace(&ws.id).await.unwrap().state,
        State::Running
    );
    let forced = engine
        .delete(&ws.id, true, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(forced.status, OpStatus::Succeeded, "{forced:?}");
    assert!(!dir.exists(), "the worktree is removed");
    assert!(
        !git(&repo, &["worktree", "list"]).contains(&dir.display().to_string()),
        "and unregistered"
    );

    // A user-brought directory is never removed, even by a forced delete.
    let mine = fx.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("keep.txt"), "precious").unwrap();
    let ws = create(
        &engine,
        "brought",
        WorkspaceSpec {
            command: crate::sh("exec sleep 3600"),
            dir: Some(mine.display().to_string()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    assert_eq!(
        engine
            .delete(&ws.id, true, Actor::Api)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap()
            .status,
        OpStatus::Succeeded
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("keep.txt")).unwrap(),
        "precious"
    );
    // A directory that vanished cannot be checked: refused, not deleted.
    let gone = fx.path().join("gone");
    std::fs::create_dir_all(&gone).unwrap();
    let ws = create(
        &engine,
        "vanishing",
        WorkspaceSpec {
            command: crate::sh("exec sleep 3600"),
            dir: Some(gone.display().to_string()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    std::fs::remove_dir_all(&gone).unwrap();
    let refused = engine
        .delete(&ws.id, false, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        refused.error.unwrap().code,
        berth_core::ErrorCode::DirtyCheckFailed
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tmux_server_killed_from_outside_is_detected_and_a_later_start_works() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    let ws = crate::create_sh(&engine, "victim", "exec sleep 3600").await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    assert!(fx.tmux(&["kill-server"]).status.success());
    let report = engine.reconcile().await;
    assert_eq!(
        (report.missing, report.listing_failures),
        (1, 0),
        "{report:?}"
    );
    let failed = engine.workspace(&ws.id).await.unwrap();
    assert_eq!(
        (failed.state, failed.last_error.unwrap().code),
        (State::Failed, FailureReason::RuntimeMissing)
    );
    let op = crate::op(&engine, OpKind::Start, &ws).await;
    assert_eq!(
        (op.status, op.incarnation.map(|i| i.0)),
        (OpStatus::Succeeded, Some(2)),
        "{op:?}"
    );
    assert_eq!(
        engine.workspace(&ws.id).await.unwrap().state,
        State::Running
    );
    engine.shutdown().await;
}

/// Regression (review): a worktree whose repository moved made `git rev-parse` fail
/// with "not a git repository", which was taken as clean, and the delete removed the
/// uncommitted work. It must be refused as uncheckable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worktree_whose_repository_moved_is_not_deleted_as_clean() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    let repo = repo_with_a_commit(&fx.path().join("repo"));
    let spec = WorkspaceSpec {
        command: crate::sh("exec sleep 3600"),
        git: Some(GitSource {
            repo: repo.display().to_string(),
            reference: "main".into(),
        }),
        ..Default::default()
    };
    let ws = create(&engine, "orphaned-tree", spec).await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    let dir = std::path::PathBuf::from(engine.workspace(&ws.id).await.unwrap().dir.unwrap());
    std::fs::write(dir.join("unsaved.txt"), "work").unwrap();
    std::fs::rename(&repo, fx.path().join("moved-repo")).unwrap();
    let refused = engine
        .delete(&ws.id, false, Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        refused.error.map(|e| e.code),
        Some(berth_core::ErrorCode::DirtyCheckFailed)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("unsaved.txt")).unwrap(),
        "work",
        "the work is still there"
    );
    engine.shutdown().await;
}

/// Ports say what they need: the tmux runtime has no images and enforces no limits; a
/// spec asking for either is refused at create, naming the field, and nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_or_limits_on_tmux_are_refused_at_create() {
    use berth_core::engine::EngineError;
    use berth_core::ids::{RuntimeKind, WorkspaceName};
    use berth_core::model::{CreateWorkspace, Limits};
    let fx = Fixture::new();
    let store = Arc::new(MemoryStore::new());
    let engine = fx.engine(store.clone()).await;
    for (spec, field) in [
        (
            WorkspaceSpec {
                image: Some("busybox".into()),
                ..Default::default()
            },
            "image",
        ),
        (
            WorkspaceSpec {
                limits: Some(Limits {
                    pids: Some(10),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "limits",
        ),
    ] {
        match engine
            .create(CreateWorkspace {
                name: WorkspaceName::parse("refused").unwrap(),
                runtime: RuntimeKind::parse("tmux").unwrap(),
                spec,
                actor: Actor::Api,
            })
            .await
        {
            Err(EngineError::Validation { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field} on tmux: {other:?}"),
        }
    }
    assert!(store.all_workspaces().is_empty());
    engine.shutdown().await;
}
