//! Warm pools through `berth serve`: a Docker pool of started members, claimed by a
//! create that answers `GET /v1/self` with a token the member first saw at its claim;
//! the pool refills, survives a daemon restart, shows in `berth pool ls`, and drains
//! when removed without touching the claimed workspace. Pools from the config file.

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use berth_tests::{Daemon, EngineCleanup, containers_of, docker_test_image, get_over};
use serde_json::{Value, json};

/// Waits until `GET /v1/pools/{name}` shows `ready` ready members.
async fn ready(d: &Daemon, name: &str, want: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let (s, v) = d.get(&format!("/v1/pools/{name}")).await;
        assert_eq!(s, 200, "{v}");
        if v["ready"] == want && v["members"].as_array().map(Vec::len) == Some(want as usize) {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pool {name} never had {want} ready members: {last}");
}

fn member_ids(pool: &Value) -> Vec<String> {
    pool["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_docker_member_answers_self_with_a_token_it_first_saw_at_its_claim() {
    #![allow(clippy::too_many_lines)]
    let Some(image) = docker_test_image(
        "a_claimed_docker_member_answers_self_with_a_token_it_first_saw_at_its_claim",
    ) else {
        return;
    };
    // Declared before the daemon: dropped after it, it removes whatever the pool made.
    let cleanup = EngineCleanup::default();
    let mut d = Daemon::start(&["--docker-image", &image, "--reconcile-period", "1s"])
        .await
        .expect("daemon");
    let script = "while [ ! -s \"$BERTH_TOKEN_FILE\" ]; do sleep 1; done; \
                  echo \"claimed with $(wc -c < \"$BERTH_TOKEN_FILE\") bytes\"; exec sleep 600";
    let template = json!({"runtime": "docker", "command": ["sh", "-c", script], "size": 2});
    let (s, v) = d
        .call(reqwest::Method::PUT, "/v1/pools/warm", Some(template))
        .await;
    assert_eq!(s, 200, "{v}");
    let pool = ready(&d, "warm", 2).await;
    let members = member_ids(&pool);
    cleanup.learn(&members[0]);
    // A member holds no token: its environment names the file it will come in.
    for id in &members {
        let env = docker_env(id);
        assert!(
            !env.iter().any(|e| e.starts_with("BERTH_WORKSPACE_TOKEN=")),
            "{env:?}"
        );
        assert!(
            env.contains(&"BERTH_TOKEN_FILE=/run/berth/token".to_owned()),
            "{env:?}"
        );
    }

    // A create from the pool claims the oldest ready member.
    let (s, v) = d
        .post("/v1/workspaces", json!({"name": "mine", "pool": "warm"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["workspace"]["id"].as_str().expect("id").to_owned();
    assert!(members.contains(&id), "a member was claimed: {v}");
    assert_eq!(v["workspace"]["name"], "mine");
    assert_eq!(v["workspace"]["state"], "running");
    assert_eq!(v["workspace"]["pool"], Value::Null);
    // Its start op is a no-op on a running workspace: no new incarnation.
    assert_eq!(v["operation"]["kind"], "start", "{v}");
    let op = v["operation"]["id"].as_str().expect("op").to_owned();
    let mut status = Value::Null;
    for _ in 0..100 {
        let (_, o) = d.get(&format!("/v1/operations/{op}")).await;
        status = o["status"].clone();
        if status == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "succeeded");
    let (_, w) = d.get(&format!("/v1/workspaces/{id}")).await;
    assert_eq!(w["incarnation"], v["workspace"]["incarnation"], "{w}");
    // Its token is in a file only the container's user can read, and it answers
    // `GET /v1/self` on the workspace's own socket.
    let dir = d.data_dir().join("run").join(&id);
    let file = dir.join("token");
    let meta = std::fs::metadata(&file).expect("the token file");
    assert_eq!(meta.mode() & 0o777, 0o600);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(meta.uid(), 65532, "the container's user owns it");
    }
    let token = std::fs::read_to_string(&file).expect("token");
    let answer = get_over(&dir.join("api.sock"), "/v1/self", &token).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&id), "{answer}");
    // The container's process read it.
    let mut output = String::new();
    for _ in 0..100 {
        let (_, v) = d.get(&format!("/v1/workspaces/{id}/output?lines=20")).await;
        output = v.to_string();
        if output.contains("claimed with") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        output.contains(&format!("claimed with {} bytes", token.len())),
        "{output}"
    );
    // The other member never saw a token.
    let other = members
        .iter()
        .find(|m| **m != id)
        .expect("the other member");
    assert!(!d.data_dir().join("run").join(other).join("token").exists());

    // The pool refills; a create of the same fields claims too.
    let pool = ready(&d, "warm", 2).await;
    let mut now = member_ids(&pool);
    assert!(!now.contains(&id));
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "same-fields", "runtime": "docker", "command": ["sh", "-c", script]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let second = v["workspace"]["id"].as_str().expect("id").to_owned();
    assert!(now.contains(&second), "{v}");
    let pool = ready(&d, "warm", 2).await;
    now = member_ids(&pool);

    // A daemon restart keeps the pool and its members, running.
    d.restart().await.expect("restart");
    let pool = ready(&d, "warm", 2).await;
    assert_eq!(member_ids(&pool), now, "the same members after a restart");
    let ls = d.cli(&["pool", "ls"], None).await;
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{text}");
    assert!(text.contains("warm") && text.contains("docker"), "{text}");
    let answer = get_over(&dir.join("api.sock"), "/v1/self", &token).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the claimed token still works: {answer}"
    );

    // Removing the pool deletes its members and nothing else.
    let (s, v) = d.delete("/v1/pools/warm").await;
    assert_eq!(s, 204, "{v}");
    for _ in 0..300 {
        if now.iter().all(|m| containers_of(m) == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in &now {
        assert_eq!(containers_of(m), 0, "member {m} was not drained");
    }
    for claimed in [&id, &second] {
        let (_, v) = d.get(&format!("/v1/workspaces/{claimed}")).await;
        assert_eq!(v["state"], "running", "{v}");
        assert_eq!(containers_of(claimed), 1);
    }
    let (s, v) = d.get("/v1/pools/warm").await;
    assert_eq!((s, &v["error"]["code"]), (404, &json!("not_found")), "{v}");
    for claimed in [&id, &second] {
        let (s, _) = d.delete(&format!("/v1/workspaces/{claimed}")).await;
        assert_eq!(s, 200);
    }
}

/// The container's environment as Docker keeps it.
fn docker_env(ws: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=dev.berth.workspace={ws}"),
        ])
        .output()
        .expect("docker ps");
    let container = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}", &container])
        .output()
        .expect("docker inspect");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_from_the_config_file_and_the_cli_and_what_a_pool_refuses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        "[pools.cold]\nsize = 1\nstart = false\ncommand = [\"sh\", \"-c\", \"exec sleep 600\"]\n",
    )
    .expect("config");
    let d = Daemon::start(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--reconcile-period",
        "1s",
    ])
    .await
    .expect("daemon");
    let (s, v) = d.get("/v1/pools").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"][0]["name"], "cold", "{v}");
    assert_eq!(v["items"][0]["start"], false, "{v}");
    // Members of a created-only pool are ready when stopped.
    let mut member = String::new();
    for _ in 0..100 {
        let (_, v) = d.get("/v1/pools/cold").await;
        if v["ready"] == 1 {
            member = v["members"][0]["id"].as_str().expect("id").to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!member.is_empty(), "the config file's pool was filled");
    let out = d
        .cli(&["ws", "create", "from-cold", "--pool", "cold"], None)
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, v) = d
        .get("/v1/workspaces/from-cold/wait?state=running&timeout=20s")
        .await;
    assert_eq!(v["reached"], true, "{v}");
    assert_eq!(v["workspace"]["id"], member.as_str(), "{v}");
    // What a pool refuses, with the field and nothing stored.
    for (body, field) in [
        (json!({"size": 1}), "start"),
        (json!({"size": 1, "start": false, "dir": "/tmp"}), ""),
        (json!({"size": 300, "start": false}), "size"),
    ] {
        let (s, v) = d
            .call(reqwest::Method::PUT, "/v1/pools/bad", Some(body.clone()))
            .await;
        if field.is_empty() {
            assert_eq!(s, 400, "an unknown field {body}: {v}");
        } else {
            assert_eq!(s, 422, "{body}: {v}");
            assert_eq!(v["error"]["details"]["field"], field, "{v}");
        }
    }
    let long = "p".repeat(55);
    let (s, v) = d
        .call(
            reqwest::Method::PUT,
            &format!("/v1/pools/{long}"),
            Some(json!({"size": 1, "start": false})),
        )
        .await;
    assert_eq!(
        (s, &v["error"]["details"]["field"]),
        (422, &json!("name")),
        "{v}"
    );
    let (s, v) = d
        .post("/v1/workspaces", json!({"name": "x", "pool": "nope"}))
        .await;
    assert_eq!(
        (s, &v["error"]["details"]["field"]),
        (422, &json!("pool")),
        "{v}"
    );
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "x", "pool": "cold", "command": ["true"]}),
        )
        .await;
    assert_eq!(
        (s, &v["error"]["details"]["field"]),
        (422, &json!("command")),
        "{v}"
    );
    let (_, v) = d.get("/v1/pools").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
    let (s, _) = d.delete("/v1/pools/bad").await;
    assert_eq!(s, 404);
}
