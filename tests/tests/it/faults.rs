//! Issue 11, item 3: a Docker daemon that accepts connections and never answers (a
//! unix socket whose listener holds every connection and says nothing). The daemon
//! is ready, tmux workspaces work and are reconciled, the Docker runtime is reported
//! degraded, a Docker start ends at its ceiling (plus one runtime call's bound), and
//! SIGTERM is as quick as without Docker. Timeouts here only detect a stall.

use std::path::PathBuf;
use std::time::Duration;

use berth_tests::Daemon;
use serde_json::{Value, json};

/// A socket that accepts and never answers; closed (with its connections) on drop.
struct HungSocket {
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl HungSocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener =
            tokio::net::UnixListener::bind(dir.path().join("docker.sock")).expect("bind");
        #[allow(clippy::disallowed_methods)]
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        Self { dir, task }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }
}

impl Drop for HungSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn state(d: &Daemon, id: &str) -> String {
    let (_, v) = d.get(&format!("/v1/workspaces/{id}")).await;
    v["state"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_docker_daemon_delays_only_docker_workspaces() {
    let hung = HungSocket::new();
    let host = format!("unix://{}", hung.path().display());
    let began = std::time::Instant::now();
    let mut d = Daemon::start_with_env(
        &[
            "--reconcile-period",
            "1s",
            "--start-ceiling",
            "3s",
            "--drain-deadline",
            "2s",
        ],
        &[("DOCKER_HOST", &host)],
    )
    .await
    .expect("the daemon gets ready although Docker never answers");
    eprintln!(
        "ready after {:?} with a hung Docker daemon",
        began.elapsed()
    );

    // Docker's first listing is still waiting at readiness; it is reported degraded
    // once its bound passes, tmux up.
    let degraded = async {
        loop {
            let (s, ready) = d.get("/readyz").await;
            assert_eq!(s, 200, "{ready}");
            if ready["runtimes"]["docker"]["state"] == "degraded" {
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ready = tokio::time::timeout(Duration::from_secs(60), degraded)
        .await
        .expect("docker never reported degraded");
    assert_eq!(ready["runtimes"]["tmux"]["state"], "up", "{ready}");
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        text.contains("berth_runtime_up{runtime=\"docker\"} 0")
            && text.contains("berth_runtime_up{runtime=\"tmux\"} 1"),
        "{text}"
    );

    // A tmux workspace whose process exits is noticed by the next pass (the Docker
    // listing of that pass does not answer; it must not hold tmux's back).
    let id = d.running("short", "sleep 1; exit 3").await;
    let noticed = async {
        loop {
            if state(&d, &id).await != "running" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), noticed)
        .await
        .expect("a tmux exit went unnoticed while Docker hangs");
    assert_eq!(state(&d, &id).await, "failed");

    // A Docker start ends with its ceiling, not after Docker's own call timeouts.
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "boxed", "runtime": "docker", "image": "busybox", "start": false}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let boxed = v["workspace"]["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/workspaces/{boxed}/start?timeout=60s");
    let start = d.post(&path, Value::Null);
    let (s, v) = tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .expect("a docker start with a 3 s ceiling was still running after 60 s");
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["error"]["code"], "start_timeout", "{v}");
    assert_eq!(state(&d, &boxed).await, "failed");

    let (code, took) = d.terminate().await.expect("terminate");
    assert_eq!(code, Some(0));
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} against a 2 s drain deadline"
    );
}
