//! SIGTERM with ops in flight and SSE clients, then a restart on the same data dir.

use std::time::Duration;

use berth_tests::Daemon;
use futures_util::StreamExt;
use serde_json::json;

/// The pid of each workspace's main pane (tmux session `bw-<id without "ws-">`).
fn main_pids(d: &Daemon, ids: &[String]) -> Vec<i32> {
    let out = std::process::Command::new("tmux")
        .arg("-S")
        .arg(d.tmux_socket())
        .args(["list-panes", "-a", "-F", "#{session_name} #{pane_pid}"])
        .output()
        .expect("tmux");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ids.iter()
        .map(|id| {
            let session = format!("bw-{}", id.trim_start_matches("ws-"));
            text.lines()
                .find_map(|l| {
                    let (name, pid) = l.split_once(' ')?;
                    (name == session).then(|| pid.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no pane for {id} in {text}"))
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exits_zero_keeps_workspaces_and_the_next_serve_recovers() {
    // The stop below lasts its whole 6 s grace: it is still in flight when the drain
    // deadline (1 s) passes, and the next serve's recovery finishes it.
    let mut d = Daemon::start(&["--drain-deadline", "1s", "--stop-grace", "6s"])
        .await
        .expect("daemon");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(d.running(&format!("keep-{i}"), "sleep 600").await);
    }
    let stubborn = d.running_ignoring_term("stubborn").await;
    let pids = main_pids(&d, &ids);
    assert!(pids.iter().all(|p| alive(*p)));
    // SSE clients connected.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let resp = reqwest::Client::new()
            .get(format!("{}/v1/events", d.url))
            .bearer_auth(&d.token)
            .send()
            .await
            .expect("sse");
        streams.push(resp.bytes_stream());
    }
    // An op in flight that cannot finish within the drain deadline.
    let (s, v) = d
        .post(
            &format!("/v1/workspaces/{stubborn}/stop?wait=false"),
            json!({}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let (code, took) = d.terminate().await.expect("terminate");
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    // The drain deadline (1 s) plus a second.
    assert!(took < Duration::from_secs(1 + 1), "exited in {took:?}");
    for mut s in streams {
        // Each stream ends (possibly after delivering what was buffered).
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = s.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "an SSE stream did not end");
    }
    for (id, pid) in ids.iter().zip(&pids) {
        assert!(alive(*pid), "shutdown killed the process of {id}");
    }
    // The next serve answers at once, but is not ready while its recovery waits out
    // the stubborn stop's grace (the process ignores SIGTERM, so that takes the grace).
    d.restart_booting().await.expect("second serve");
    let (s, v) = d.get("/readyz").await;
    assert_eq!((s, v["status"].as_str()), (503, Some("starting")), "{v}");
    let (s, v) = d.get("/v1/workspaces").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("not_ready")),
        "{v}"
    );
    let (s, _) = d
        .call_as(None, reqwest::Method::GET, "/v1/workspaces", None)
        .await;
    assert_eq!(s, 401, "no token while booting");
    let health = reqwest::get(format!("{}/healthz", d.url))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200, "healthz while booting");
    d.wait_ready().await.expect("ready after recovery");
    let (s, list) = d.get("/v1/workspaces").await;
    assert_eq!(s, 200);
    for w in list["items"].as_array().expect("items") {
        let state = w["state"].as_str().unwrap_or("");
        assert!(
            ["running", "stopped", "failed"].contains(&state),
            "{} left in {state}",
            w["name"]
        );
    }
    for id in &ids {
        let (_, w) = d.get(&format!("/v1/workspaces/{id}")).await;
        assert_eq!(
            w["state"], "running",
            "a running workspace survived the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_dir_is_refused_and_the_first_keeps_serving() {
    let mut d = Daemon::start(&[]).await.expect("daemon");
    let url_file = d.data_dir().join("state/daemon.url");
    let before = std::fs::read_to_string(&url_file).expect("daemon.url");
    let second = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(berth_tests::berth_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(d.data_dir())
            .args(["--listen", "127.0.0.1:0"])
            .env("BERTH_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second serve exits by itself")
    .expect("spawn");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second serve started: {stderr}");
    assert!(
        stderr.contains("already using the data directory"),
        "the refusal says why: {stderr}"
    );
    assert!(
        second.stdout.is_empty(),
        "it printed a URL: {:?}",
        second.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&url_file).expect("daemon.url"),
        before,
        "the refused serve rewrote daemon.url"
    );
    assert_eq!(
        d.get("/readyz").await.0,
        200,
        "the first daemon stopped serving"
    );
    // Once the first exits, the lock is free again.
    d.restart().await.expect("a serve after the first exited");
}
