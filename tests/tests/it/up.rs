//! `berth up` / `berth down` on a workspace file, through the real binary.

use berth_tests::Daemon;
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn ids(d: &Daemon) -> Vec<(String, String, u64)> {
    let (_, v) = d.get("/v1/workspaces?limit=1000").await;
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|w: &Value| {
            (
                w["name"].as_str().unwrap_or("").to_owned(),
                w["id"].as_str().unwrap_or("").to_owned(),
                w["incarnation"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_is_idempotent_recreates_only_what_changed_and_down_keeps_unsaved_work() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let project = d.data_dir().join("project");
    std::fs::create_dir_all(project.join("api")).expect("dir");
    let file = project.join("berth.toml");
    let write = |worker: &str| {
        std::fs::write(
            &file,
            format!(
                r#"
[workspaces.api]
dir = "api"
command = ["sh", "-c", "exec sleep 600"]
env = {{ PORT = "3000" }}

[workspaces.api.sessions.tests]
command = ["sh", "-c", "exec sleep 601"]

[workspaces.worker]
command = ["sleep", "{worker}"]
"#
            ),
        )
        .expect("file");
    };
    write("602");
    let f = file.to_str().unwrap_or("");
    let out = d.cli(&["up", "-f", f], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "api: created, sessions launched\nworker: created\n"
    );
    let (_, api) = d.get("/v1/workspaces/api").await;
    assert_eq!(api["state"], "running");
    assert_eq!(
        api["dir"],
        project.join("api").display().to_string(),
        "relative to the file"
    );
    let (_, sessions) = d.get("/v1/workspaces/api/sessions").await;
    assert_eq!(sessions["items"][0]["name"], "tests");
    assert_eq!(sessions["items"][0]["state"], "running");

    // Twice: nothing happens (no new event at all).
    let before = (ids(&d).await, d.all_events().await.len());
    let out = d.cli(&["up", "-f", f], None).await;
    assert_eq!(
        text(&out.stdout),
        "api: up to date\nworker: up to date\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!((ids(&d).await, d.all_events().await.len()), before);

    // One workspace's spec changes: only that one is recreated.
    write("603");
    let out = d.cli(&["up", "-f", f, "--json"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["items"][0]["action"], "up to date");
    assert_eq!(v["items"][1]["action"], "recreated");
    let after = ids(&d).await;
    let api_before = before.0.iter().find(|w| w.0 == "api").cloned();
    assert_eq!(
        after.iter().find(|w| w.0 == "api").cloned(),
        api_before,
        "api untouched"
    );
    let (_, worker) = d.get("/v1/workspaces/worker").await;
    assert_eq!(worker["spec"]["command"][1], "603");
    assert_ne!(
        Some(worker["id"].as_str().unwrap_or("")),
        before
            .0
            .iter()
            .find(|w| w.0 == "worker")
            .map(|w| w.1.as_str())
    );

    // down stops; down --rm keeps a workspace with unsaved work unless forced.
    let out = d.cli(&["down", "-f", f], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, api) = d.get("/v1/workspaces/api").await;
    assert_eq!(api["state"], "stopped");
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(project.join("api"))
        .status()
        .expect("git");
    assert!(git.success());
    std::fs::write(project.join("api/unsaved.txt"), "work").expect("file");
    let out = d.cli(&["down", "-f", f, "--rm"], None).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("workspace_dirty"));
    let (s, _) = d.get("/v1/workspaces/api").await;
    assert_eq!(s, 200, "kept");
    let out = d.cli(&["down", "-f", f, "--rm", "--force"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "api: deleted\nworker: not there\n");
    assert!(
        project.join("api/unsaved.txt").exists(),
        "a user's directory is never removed"
    );
    // A file that is not one: a usage error, nothing done.
    std::fs::write(&file, "[workspaces.x]\nbogus = 1\n").expect("file");
    let out = d.cli(&["up", "-f", f], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(ids(&d).await.is_empty());
}
