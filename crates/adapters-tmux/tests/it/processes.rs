//! What reaches the process and what survives it: exact argv and env under hostile
//! text, process-tree stop, exact targeting next to look-alike and foreign sessions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_core::merge::OpKind;
use berth_core::model::{OpStatus, WorkspaceSpec};
use berth_core::state::State;
use berth_core::testkit::{MemoryStore, wait_until};

use crate::{Fixture, create, pid_alive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_argv_and_env_reach_the_process_exactly_and_nothing_else_runs() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    let out = fx.path().join("argv.bin");
    let canary = fx.path().join("pwned");
    let hostile = vec![
        ";".to_owned(),
        "\\;".to_owned(),
        "a:b.c".to_owned(),
        format!("$(touch {})", canary.display()),
        format!("`touch {}`", canary.display()),
        "'single' \"double\" \\back".to_owned(),
        "  spaces  and\ttabs\nnewline".to_owned(),
        "ünïcødé 日本語 🚀".to_owned(),
        "x".repeat(10_240),
        "-t".to_owned(),
        "=bw-target".to_owned(),
    ];
    let mut command = vec!["sh".to_owned(), "-c".to_owned(), "for a in \"$@\"; do printf '%s\\0' \"$a\"; done > \"$OUT\"; printf '%s' \"$HOSTILE\" > \"$OUT.env\"; exec sleep 3600".to_owned(), "sh".to_owned()];
    command.extend(hostile.iter().cloned());
    let env_value = format!(
        "$(touch {}); `id` ' \" \\ ; \n ✓ {}",
        canary.display(),
        "y".repeat(10_240)
    );
    let env = BTreeMap::from([
        ("OUT".to_owned(), out.display().to_string()),
        ("HOSTILE".to_owned(), env_value.clone()),
    ]);
    let ws = create(
        &engine,
        "hostile",
        WorkspaceSpec {
            command,
            env,
            ..Default::default()
        },
    )
    .await;
    let op = crate::op(&engine, OpKind::Start, &ws).await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    let env_file = fx.path().join("argv.bin.env");
    wait_until(
        "the process to write its argv",
        Duration::from_secs(10),
        || async { std::fs::metadata(&env_file).is_ok_and(|m| m.len() > 0) },
    )
    .await;
    let written = std::fs::read(&out).unwrap();
    let got: Vec<String> = written
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    assert_eq!(got, hostile, "the process received exactly its argv");
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        env_value,
        "the process received exactly its env"
    );
    assert!(!canary.exists(), "nothing in the text was executed");
    crate::op(&engine, OpKind::Stop, &ws).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_whole_process_tree_even_children_ignoring_hup_and_term() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    let pids = fx.path().join("pids");
    let script = format!(
        "trap '' HUP TERM; (trap '' HUP TERM; exec sleep 3600) & echo $! >> {p}; (trap '' HUP TERM; sleep 3600; true) & echo $! >> {p}; setsid sh -c 'trap \"\" HUP TERM; exec sleep 3600' & echo $! >> {p}; echo $$ >> {p}; wait",
        p = pids.display()
    );
    let ws = crate::create_sh(&engine, "stubborn", &script).await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    wait_until("the children to start", Duration::from_secs(10), || async {
        std::fs::read_to_string(&pids).is_ok_and(|t| t.lines().count() == 4)
    })
    .await;
    let list: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(
        list.iter().all(|p| pid_alive(*p)),
        "all running before the stop"
    );
    let op = crate::op(&engine, OpKind::Stop, &ws).await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    for p in &list {
        assert!(!pid_alive(*p), "pid {p} survived the stop");
    }
    assert_eq!(
        engine.workspace(&ws.id).await.unwrap().state,
        State::Stopped
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_are_exact_and_foreign_sessions_are_never_touched() {
    let fx = Fixture::new();
    let store = Arc::new(MemoryStore::new());
    let engine = fx.engine(store.clone()).await;
    let foo = crate::create_sh(&engine, "foo", "exec sleep 3600").await;
    let foo_prod = crate::create_sh(&engine, "foo-prod", "exec sleep 3600").await;
    for ws in [&foo, &foo_prod] {
        assert_eq!(
            crate::op(&engine, OpKind::Start, ws).await.status,
            OpStatus::Succeeded
        );
    }
    // Look-alikes that a prefix match would hit: our session name plus a suffix, and a
    // bare foreign session, none with our markers.
    let ours = fx.tmux_out(&["list-sessions", "-F", "#{session_name}"]);
    let foo_session = ours
        .lines()
        .map(str::to_owned)
        .find(|n| n.ends_with(foo.id.as_str().trim_start_matches("ws-")))
        .unwrap();
    let lookalike = format!("{foo_session}_prod");
    assert!(
        fx.tmux(&["new-session", "-d", "-s", &lookalike, "sleep 3600"])
            .status
            .success()
    );
    assert!(
        fx.tmux(&["new-session", "-d", "-s", "foreign", "sleep 3600"])
            .status
            .success()
    );
    // Stop foo: foo-prod, the look-alike and the foreign session are untouched.
    assert_eq!(
        crate::op(&engine, OpKind::Stop, &foo).await.status,
        OpStatus::Succeeded
    );
    let sessions = fx.tmux_out(&["list-sessions", "-F", "#{session_name}"]);
    assert!(
        !sessions.lines().any(|n| n == foo_session),
        "foo is stopped"
    );
    assert!(
        sessions.lines().any(|n| n == lookalike),
        "the look-alike survived: {sessions}"
    );
    assert!(
        sessions.lines().any(|n| n == "foreign"),
        "the foreign session survived"
    );
    assert_eq!(
        engine.workspace(&foo_prod.id).await.unwrap().state,
        State::Running
    );
    // Reconcile with no orphan grace: foreign sessions are still not ours to remove.
    let report = engine.reconcile().await;
    assert_eq!(report.orphans_removed, 0, "{report:?}");
    let sessions = fx.tmux_out(&["list-sessions", "-F", "#{session_name}"]);
    assert!(
        sessions.lines().any(|n| n == lookalike) && sessions.lines().any(|n| n == "foreign"),
        "{sessions}"
    );
    assert_eq!(
        engine.workspace(&foo_prod.id).await.unwrap().state,
        State::Running
    );
    engine.shutdown().await;
}

/// Regression (review): tmux expands `new-session -c` as a format, so a user `dir`
/// holding `#(...)` ran a command on the tmux server. The directory never reaches tmux.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_name_is_never_expanded_by_tmux() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    let canary = fx.path().join("expanded");
    let dir = fx.path().join(format!("w#(touch {})", canary.display()));
    std::fs::create_dir_all(&dir).unwrap();
    let ws = create(
        &engine,
        "formats",
        WorkspaceSpec {
            command: crate::sh("pwd > here; exec sleep 3600"),
            dir: Some(dir.display().to_string()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    wait_until(
        "the process to report its directory",
        Duration::from_secs(10),
        || async { dir.join("here").exists() },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(dir.join("here")).unwrap().trim(),
        dir.display().to_string(),
        "it ran in the user's dir"
    );
    assert!(!canary.exists(), "tmux expanded the directory name");
    engine.shutdown().await;
}

/// Regression (review): a process left in the pane's process group after the pane's
/// own shell exited (`nohup worker &`) survived a stop, because a dead pane was not
/// signalled at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_outliving_its_pane_is_stopped() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    let pid_file = fx.path().join("worker.pid");
    let script = format!(
        "trap '' HUP; (trap '' HUP TERM; exec sleep 3600) & echo $! > {}; exit 0",
        pid_file.display()
    );
    let ws = crate::create_sh(&engine, "leftover", &script).await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    wait_until("the worker to start", Duration::from_secs(10), || async {
        std::fs::read_to_string(&pid_file).is_ok_and(|t| !t.trim().is_empty())
    })
    .await;
    let worker: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        "the pane's shell to exit",
        Duration::from_secs(10),
        || async {
            fx.tmux_out(&["list-panes", "-a", "-F", "#{session_name} #{pane_dead}"])
                .lines()
                .any(|l| l.starts_with("bw-") && l.ends_with(" 1"))
        },
    )
    .await;
    assert!(pid_alive(worker), "the worker outlived the pane");
    assert_eq!(
        crate::op(&engine, OpKind::Stop, &ws).await.status,
        OpStatus::Succeeded
    );
    assert!(!pid_alive(worker), "the worker survived the stop");
    engine.shutdown().await;
}

/// Regression: `list-panes -s -t =name` with no session `name` answers with another
/// session's panes (tmux 3.3a). A workspace whose session is gone must be seen as gone,
/// never as the look-alike next to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_session_is_gone_even_next_to_a_look_alike() {
    use berth_core::ports::ProcessRuntime;
    let fx = Fixture::new();
    let store = Arc::new(MemoryStore::new());
    let engine = fx.engine(store).await;
    let ws = crate::create_sh(&engine, "gone", "exec sleep 3600").await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    let name = fx.sessions().join("\n");
    let lookalike = format!("{name}_prod");
    assert!(
        fx.tmux(&["new-session", "-d", "-s", &lookalike, "sleep 3600"])
            .status
            .success()
    );
    assert!(
        fx.tmux(&["kill-session", "-t", &format!("={name}")])
            .status
            .success()
    );
    assert_eq!(
        fx.rt.inspect(engine.engine_id(), &ws.id).await.unwrap(),
        None,
        "the look-alike is not our workspace"
    );
    assert_eq!(engine.reconcile().await.missing, 1);
    assert!(
        fx.tmux_out(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .any(|n| n == lookalike),
        "the look-alike survived"
    );
    engine.shutdown().await;
}

/// Defect 1: a tmux workspace whose process handles SIGTERM was stopped in tens of
/// milliseconds and its handler was cut short: the launcher shell (the session leader)
/// died of the SIGTERM first, and its exit sent SIGHUP to the whole group. The process
/// now gets its grace: the handler runs to its end, and the tmux session goes away
/// only after the process exited. The same holds for a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_handles_sigterm_gets_its_grace_and_finishes_its_handler() {
    let fx = Fixture::new();
    // A grace far above the handler's second, so a loaded machine cannot cut it short.
    let engine = fx
        .engine_with_grace(Arc::new(MemoryStore::new()), Duration::from_secs(10))
        .await;
    let graceful = |dir: &std::path::Path| {
        format!(
            "trap 'echo term > {d}/term; sleep 1; echo done > {d}/done; exit 0' TERM; echo ready > {d}/ready; while :; do sleep 0.1; done",
            d = dir.display()
        )
    };
    let main_dir = fx.path().join("main");
    let session_dir = fx.path().join("session");
    std::fs::create_dir_all(&main_dir).unwrap();
    std::fs::create_dir_all(&session_dir).unwrap();
    let ws = crate::create_sh(&engine, "graceful", &graceful(&main_dir)).await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    engine
        .launch_session(
            &ws.id,
            berth_core::ids::SessionName::parse("agent").unwrap(),
            crate::sh(&graceful(&session_dir)),
            BTreeMap::new(),
        )
        .await
        .unwrap();
    for dir in [&main_dir, &session_dir] {
        let ready = dir.join("ready");
        wait_until(
            "the handler to be installed",
            Duration::from_secs(10),
            || async { ready.exists() },
        )
        .await;
    }
    let began = std::time::Instant::now();
    let op = crate::op(&engine, OpKind::Stop, &ws).await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    for dir in [&main_dir, &session_dir] {
        assert!(
            dir.join("term").exists(),
            "{}: SIGTERM was delivered",
            dir.display()
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("done")).ok().as_deref(),
            Some("done\n"),
            "{}: the SIGTERM handler ran to its end",
            dir.display()
        );
    }
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "the stop waited for the handler"
    );
    assert!(
        fx.sessions().is_empty(),
        "the tmux sessions went away after the processes"
    );
    engine.shutdown().await;
}

/// Live processes whose environment names `ws` (what berth gave them), from `/proc`.
fn processes_of(ws: &berth_core::ids::WorkspaceId) -> Vec<i32> {
    let entry = format!("BERTH_WORKSPACE_ID={ws}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let has = std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|x| x == entry.as_bytes()));
        if has && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Kills the engine's tmux server and waits until the launcher (the session leader)
/// died of SIGHUP while the command, which ignores it, lives on.
async fn kill_server_and_wait(fx: &Fixture, ws: &berth_core::ids::WorkspaceId, what: &str) {
    let _ = fx.tmux(&["kill-server"]);
    wait_until(what, Duration::from_secs(10), || async {
        !processes_of(ws).is_empty() && fx.sessions().is_empty()
    })
    .await;
}

/// Issue 11, item 5: a workspace process that ignores SIGHUP outlives a killed tmux
/// server. berth still owns it, through its launcher's record (the exact group id, the
/// launcher's command line, the environment it gave the process; never a name match):
/// the reconciler does not call the workspace missing while its process runs, a start
/// adds no second process, and a stop (and later a delete) ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_outlives_its_tmux_server_is_never_doubled_and_is_stopped() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    // One process (exec), which ignores SIGHUP (an ignored signal stays ignored).
    let stubborn = "trap '' HUP; exec sleep 3001";
    let ws = crate::create_sh(&engine, "stubborn", stubborn).await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    wait_until("the command to run", Duration::from_secs(10), || async {
        !processes_of(&ws.id).is_empty()
    })
    .await;
    kill_server_and_wait(&fx, &ws.id, "the tmux server to be gone").await;
    let survivors = processes_of(&ws.id);
    assert!(
        !survivors.is_empty(),
        "the process ignoring SIGHUP survived"
    );

    let report = engine.reconcile().await;
    assert_eq!(report.missing, 0, "its process runs: {report:?}");
    assert_eq!(
        engine.workspace(&ws.id).await.unwrap().state,
        State::Running
    );
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    assert_eq!(
        processes_of(&ws.id).len(),
        survivors.len(),
        "a start added a second process beside the survivor"
    );

    let op = crate::op(&engine, OpKind::Stop, &ws).await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert_eq!(processes_of(&ws.id), Vec::<i32>::new(), "the stop ended it");
    assert_eq!(
        engine.workspace(&ws.id).await.unwrap().state,
        State::Stopped
    );

    // Again, then a forced delete.
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    wait_until("the command to run", Duration::from_secs(10), || async {
        !processes_of(&ws.id).is_empty()
    })
    .await;
    kill_server_and_wait(&fx, &ws.id, "the tmux server to be gone again").await;
    let op = engine
        .delete(&ws.id, true, berth_core::model::Actor::Api)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert_eq!(
        processes_of(&ws.id),
        Vec::<i32>::new(),
        "the delete ended it"
    );
    engine.shutdown().await;
}

/// Issue 11, item 5, for sessions: a session process that outlives a killed tmux
/// server still holds its name. Launching it again is the same session (no second
/// process); another command is refused; stopping the session ends the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_outlives_its_tmux_server_is_never_doubled_and_is_stopped() {
    let fx = Fixture::new();
    let engine = fx.engine(Arc::new(MemoryStore::new())).await;
    let stubborn = "trap '' HUP; exec sleep 3002";
    let ws = crate::create_sh(&engine, "stubborn-sessions", stubborn).await;
    assert_eq!(
        crate::op(&engine, OpKind::Start, &ws).await.status,
        OpStatus::Succeeded
    );
    let agent = berth_core::ids::SessionName::parse("agent").unwrap();
    let first = engine
        .launch_session(&ws.id, agent.clone(), crate::sh(stubborn), BTreeMap::new())
        .await
        .unwrap();
    wait_until(
        "main and session to run",
        Duration::from_secs(10),
        || async { processes_of(&ws.id).len() == 2 },
    )
    .await;
    kill_server_and_wait(&fx, &ws.id, "the tmux server to be gone").await;
    let survivors = processes_of(&ws.id);
    assert_eq!(survivors.len(), 2, "both ignore SIGHUP: {survivors:?}");

    let again = engine
        .launch_session(&ws.id, agent.clone(), crate::sh(stubborn), BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(again.generation, first.generation, "the same session");
    assert_eq!(
        processes_of(&ws.id),
        survivors,
        "a launch added a second process beside the survivor"
    );
    let other = engine
        .launch_session(
            &ws.id,
            agent.clone(),
            crate::sh("exec sleep 9"),
            BTreeMap::new(),
        )
        .await;
    assert!(
        matches!(
            other,
            Err(berth_core::engine::EngineError::SessionExists { .. })
        ),
        "{other:?}"
    );
    assert_eq!(processes_of(&ws.id), survivors);

    engine.stop_session(&ws.id, &agent).await.unwrap();
    assert_eq!(
        processes_of(&ws.id).len(),
        1,
        "the session's survivor ended"
    );
    let op = crate::op(&engine, OpKind::Stop, &ws).await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert_eq!(
        processes_of(&ws.id),
        Vec::<i32>::new(),
        "the stop ended main"
    );
    engine.shutdown().await;
}
