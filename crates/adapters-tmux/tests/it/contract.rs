//! The runtime contract on real tmux.

use std::time::Duration;

use berth_core::model::WorkspaceSpec;
use berth_core::testkit::{ContractProgram, RuntimeHarness, runtime_contract};

use crate::Fixture;

fn command(p: ContractProgram) -> Vec<String> {
    p.posix_sh()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmux_runtime_passes_the_runtime_contract() {
    let fx = Fixture::new();
    run(fx.rt.clone()).await;
    assert!(
        fx.tmux_out(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .any(|n| n == "berth-control"),
        "control mode was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmux_runtime_passes_the_runtime_contract_through_the_cli() {
    let fx = Fixture::new();
    let mut config = berth_tmux::TmuxConfig::new(fx.path());
    config.control_mode = false;
    run(std::sync::Arc::new(berth_tmux::TmuxRuntime::new(config))).await;
    assert!(
        !fx.tmux_out(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .any(|n| n == "berth-control"),
        "no control client without control mode"
    );
}

async fn run(runtime: std::sync::Arc<berth_tmux::TmuxRuntime>) {
    let harness = RuntimeHarness {
        runtime,
        spec: Box::new(|p| WorkspaceSpec {
            command: command(p),
            ..Default::default()
        }),
        session_command: Box::new(command),
        settle: Duration::from_secs(10),
    };
    runtime_contract(&harness).await;
}

/// The control client dies (its session killed from outside): the next calls fall back
/// to the CLI, succeed, and a new control client takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_control_client_falls_back_to_the_cli_and_recovers() {
    use berth_core::ids::{EngineId, Incarnation, WorkspaceId};
    use berth_core::ports::{ProcessRuntime, ResourceRef};
    let fx = Fixture::new();
    let engine = EngineId::generate();
    let ws = WorkspaceId::generate();
    assert!(fx.rt.list_owned(&engine).await.unwrap().is_empty());
    // The call right after the kill races the client's own detach: repeat the loss so
    // both orders (the client already gone, the client still attached without a
    // session) are exercised.
    let control_runs = || {
        fx.tmux_out(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .any(|n| n == "berth-control")
    };
    for round in 0..20 {
        // A call starts a new control client when none is held. A call that finds the
        // held one dead (it may still have answered the previous call) answers through
        // the CLI and leaves the new client to the next call: at most two calls.
        for _ in 0..2 {
            assert!(fx.rt.list_owned(&engine).await.unwrap().is_empty());
            if control_runs() {
                break;
            }
        }
        assert!(
            fx.tmux(&["kill-session", "-t", "=berth-control"])
                .status
                .success(),
            "round {round}: the control client was running"
        );
        // Every call after the loss still answers correctly.
        assert!(fx.rt.list_owned(&engine).await.unwrap().is_empty());
    }
    assert_eq!(fx.rt.inspect(&engine, &ws).await.unwrap(), None);
    fx.rt
        .stop(
            &ResourceRef {
                engine_id: engine.clone(),
                workspace_id: ws.clone(),
                incarnation: Incarnation(1),
            },
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(
        fx.tmux_out(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .any(|n| n == "berth-control"),
        "a new control client took over"
    );
}

/// A server with no session at all (exit-empty off, or caught while exiting) answers
/// `list-panes -a` with "no current target": that is an empty listing, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_no_session_lists_nothing_instead_of_failing() {
    use berth_core::ids::EngineId;
    use berth_core::ports::ProcessRuntime;
    let fx = Fixture::new();
    let engine = EngineId::generate();
    assert!(fx.rt.list_owned(&engine).await.unwrap().is_empty());
    assert!(
        fx.tmux(&["set", "-g", "exit-empty", "off"])
            .status
            .success(),
        "exit-empty set"
    );
    assert!(
        fx.tmux(&["kill-session", "-t", "=berth-control"])
            .status
            .success(),
        "the control client was running"
    );
    // The next call meets a live server with zero sessions.
    assert!(fx.rt.list_owned(&engine).await.unwrap().is_empty());
    // Exact targets get "no current target" there too: the session is simply gone
    // (seen as a CI failure of the contract's inspect right after its last stop). A
    // CLI-only runtime keeps the server at zero sessions (a control client would add
    // its own).
    let mut config = berth_tmux::TmuxConfig::new(fx.path());
    config.control_mode = false;
    let cli = berth_tmux::TmuxRuntime::new(config);
    let _ = fx.tmux(&["kill-session", "-t", "=berth-control"]);
    assert_eq!(
        fx.tmux_out(&["list-sessions", "-F", "#{session_name}"])
            .trim(),
        "",
        "the server runs with zero sessions"
    );
    let ws = berth_core::ids::WorkspaceId::generate();
    assert_eq!(cli.inspect(&engine, &ws).await.unwrap(), None);
    let gone = berth_core::ports::ResourceRef {
        engine_id: engine.clone(),
        workspace_id: ws,
        incarnation: berth_core::ids::Incarnation(1),
    };
    cli.stop(&gone, std::time::Duration::from_secs(1))
        .await
        .expect("stop of a gone session is Ok");
    cli.remove(&gone)
        .await
        .expect("remove of a gone session is Ok");
}
