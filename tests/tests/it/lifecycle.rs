//! Concurrency, delete, wait and events through HTTP.

use std::collections::HashSet;
use std::time::Duration;

use berth_tests::{Daemon, read_when_written};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

const SLEEP: &str = "sleep 600";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_share_one_launch_and_a_restart_storm_leaves_a_valid_token() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let token_file = d.data_dir().join("token");
    let script = format!(
        "echo \"$BERTH_WORKSPACE_TOKEN\" > {f}.tmp && mv {f}.tmp {f}; {SLEEP}",
        f = token_file.display()
    );
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "storm", "command": ["sh", "-c", script], "start": false}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let starts = (0..8).map(|_| d.post("/v1/workspaces/storm/start", json!({})));
    let answers = futures_util::future::join_all(starts).await;
    let mut op_ids = HashSet::new();
    for (s, v) in &answers {
        assert_eq!(*s, 200, "{v}");
        assert_eq!(v["workspace"]["state"], "running");
        op_ids.insert(v["operation"]["id"].as_str().unwrap_or("").to_owned());
    }
    let (_, ws) = d.get("/v1/workspaces/storm").await;
    assert_eq!(
        ws["incarnation"], 1,
        "eight concurrent starts launched once"
    );
    assert!(
        op_ids.len() <= 2,
        "starts joined or were no-ops: {op_ids:?}"
    );

    // A restart storm on this workspace while another restarts in parallel.
    let other = d.running("calm", SLEEP).await;
    let storm = (0..12).map(|_| d.post("/v1/workspaces/storm/restart", json!({})));
    let other_path = format!("/v1/workspaces/{other}/restart");
    let parallel = (0..3).map(|_| d.post(&other_path, json!({})));
    let (a, b) = tokio::join!(
        futures_util::future::join_all(storm),
        futures_util::future::join_all(parallel)
    );
    for (s, v) in a.iter().chain(b.iter()) {
        assert!(*s == 200, "{v}");
    }
    let (_, ws) = d
        .get("/v1/workspaces/storm/wait?state=settled&timeout=30s")
        .await;
    assert_eq!(ws["workspace"]["state"], "running", "{ws}");
    let (_, calm) = d
        .get(&format!(
            "/v1/workspaces/{other}/wait?state=settled&timeout=30s"
        ))
        .await;
    assert_eq!(calm["workspace"]["state"], "running", "{calm}");
    let incarnation = ws["workspace"]["incarnation"]
        .as_u64()
        .expect("incarnation");
    assert!(incarnation >= 2, "at least one restart ran");
    // The process of the final incarnation holds a token that verifies.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let token = read_when_written(&token_file, Duration::from_secs(10))
            .await
            .expect("token");
        let (s, me) = d.call_as(Some(&token), Method::GET, "/v1/self", None).await;
        if s == 200 {
            assert_eq!(me["incarnation"], incarnation);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the final token never verified: {s} {me}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git")
        .status
        .success();
    assert!(ok, "git {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_dirty_work_forces_and_handles_unknown_ids_and_stops_in_grace() {
    let d = Daemon::start(&["--stop-grace", "3s"])
        .await
        .expect("daemon");
    let repo = d.data_dir().join("user-repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("README"), "committed\n").expect("write");
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    std::fs::write(repo.join("unsaved.txt"), "work in progress\n").expect("write");
    let (s, v) = d
        .post("/v1/workspaces", json!({"name": "dirty", "dir": repo.display().to_string(), "command": ["sh", "-c", SLEEP]}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (_, _) = d
        .get("/v1/workspaces/dirty/wait?state=running&timeout=20s")
        .await;
    let events_before = d.all_events().await.len();
    let (s, v) = d.delete("/v1/workspaces/dirty").await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "workspace_dirty");
    assert!(
        v["error"]["details"].to_string().contains("unsaved.txt"),
        "{v}"
    );
    let (_, ws) = d.get("/v1/workspaces/dirty").await;
    assert_eq!(ws["state"], "running", "a refused delete touched nothing");
    assert!(repo.join("unsaved.txt").exists());
    let events_after = d.all_events().await.len();
    assert_eq!(
        events_before, events_after,
        "a refusal writes no state change"
    );

    let (s, v) = d.delete("/v1/workspaces/dirty?force=true").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["operation"]["status"], "succeeded");
    assert!(
        repo.join("unsaved.txt").exists(),
        "a user's directory is never deleted"
    );
    let (s, _) = d.get("/v1/workspaces/dirty").await;
    assert_eq!(s, 404);
    let (s, v) = d.delete("/v1/workspaces/dirty").await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));

    // A process that ignores SIGTERM keeps its stop in the grace period; a delete
    // requested meanwhile waits for it and completes.
    let id = d.running_ignoring_term("stubborn").await;
    let (s, v) = d
        .post(&format!("/v1/workspaces/{id}/stop?wait=false"), json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    // 202 means the stop is accepted; its move to `stopping` commits right after. The
    // process ignores SIGTERM, so `stopping` then lasts the whole 3 s grace.
    let began = std::time::Instant::now();
    loop {
        let (_, ws) = d.get(&format!("/v1/workspaces/{id}")).await;
        if ws["state"] == "stopping" {
            break;
        }
        assert!(
            ws["state"] == "running" && began.elapsed() < Duration::from_secs(2),
            "the stop never showed as stopping: {ws}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, v) = d.delete(&format!("/v1/workspaces/{id}?timeout=30s")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["operation"]["status"], "succeeded", "{v}");
    let (s, _) = d.get(&format!("/v1/workspaces/{id}")).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_when_the_workspace_settles_elsewhere_and_408_only_on_a_real_timeout() {
    let d = Daemon::start(&["--stop-grace", "5s"])
        .await
        .expect("daemon");
    // A start that fails (its directory does not exist): waiting for running ends as
    // soon as the workspace settles in failed, with the cause.
    let (s, v) = d
        .post("/v1/workspaces", json!({"name": "doomed", "dir": "/nonexistent/berth-test-dir", "command": ["sh", "-c", SLEEP], "start": false}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = d
        .post("/v1/workspaces/doomed/start?wait=false", json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    let began = std::time::Instant::now();
    let (s, v) = d
        .get("/v1/workspaces/doomed/wait?state=running&timeout=60s")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["reached"], false, "{v}");
    assert_eq!(v["settled_state"], "failed", "{v}");
    assert_eq!(v["cause"], "start_failed", "{v}");
    // Waiting for running again on the failed, idle workspace: answered at once.
    let (s, v) = d
        .get("/v1/workspaces/doomed/wait?state=running&timeout=60s")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["reached"], false, "{v}");
    assert!(
        began.elapsed() < Duration::from_secs(50),
        "the waits did not run to their timeout"
    );

    // A stop in its grace period is not settled: a short wait times out with 408.
    let id = d.running_ignoring_term("slow-stop").await;
    let (s, _) = d
        .post(&format!("/v1/workspaces/{id}/stop?wait=false"), json!({}))
        .await;
    assert_eq!(s, 202);
    let (s, v) = d
        .get(&format!(
            "/v1/workspaces/{id}/wait?state=stopped&timeout=1s"
        ))
        .await;
    assert_eq!(s, 408, "{v}");
    assert_eq!(v["error"]["code"], "wait_timeout");
    assert_eq!(v["error"]["details"]["state"], "stopping");
    // A delete elsewhere: the waiter learns at once that the workspace is gone.
    let wait_path = format!("/v1/workspaces/{id}/wait?state=running&timeout=60s");
    let waiter = d.get(&wait_path);
    let deleter = async {
        tokio::task::yield_now().await;
        d.delete(&format!("/v1/workspaces/{id}?force=true&wait=false"))
            .await
    };
    let ((s, v), (ds, _)) = tokio::join!(waiter, deleter);
    assert_eq!(ds, 202);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["reached"], false);
}

async fn read_sse(d: &Daemon, last: Option<u64>, count: usize) -> Vec<Value> {
    let mut req = reqwest::Client::new()
        .get(format!("{}/v1/events", d.url))
        .bearer_auth(&d.token);
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l.to_string());
    }
    let resp = req.send().await.expect("stream");
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("an event within 20 s")
            .expect("stream open")
            .expect("chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                out.push(serde_json::from_str(data.trim()).expect("event JSON"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_reconnecting_with_last_event_id_gets_every_event_once_in_order() {
    let d = Daemon::start(&[]).await.expect("daemon");
    d.running("one", SLEEP).await;
    let first = read_sse(&d, None, 3).await;
    let last = first.last().and_then(|e| e["seq"].as_u64()).expect("seq");
    // More events while disconnected, and more while reconnected.
    d.running("two", SLEEP).await;
    let writer = async {
        for _ in 0..3 {
            let (s, _) = d.post("/v1/workspaces/one/restart", json!({})).await;
            assert_eq!(s, 200);
        }
    };
    let all_after = d.all_events().await.len() - first.len() + 3 * 4;
    let (second, ()) = tokio::join!(read_sse(&d, Some(last), all_after), writer);
    let seqs: Vec<u64> = first
        .iter()
        .chain(second.iter())
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let stored: Vec<u64> = d
        .all_events()
        .await
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, stored, "every event exactly once, in order");
}
