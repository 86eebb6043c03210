//! Several daemons on one PostgreSQL store (`berth serve --store postgres://…`), each
//! its own process with its own data directory, sharing the Docker engine: the gate
//! holds across daemons, a killed owner's workspaces are taken over, a frozen owner is
//! fenced, events are one sequence, idempotency keys and names are global.
//! Needs PostgreSQL (`BERTH_TEST_POSTGRES_URL`) and Docker; SKIPPED loudly without
//! them, required in CI.

use std::process::Command;
use std::time::Duration;

use berth_postgres::testing;
use berth_tests::{Daemon, DockerCleanup, containers_of, docker_test_image};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

const TOKEN: &str = "fleet-admin-token-0123456789";
const LEASE: &str = "2s";

/// `n` daemons on a fresh database (`None`: SKIPPED), Docker workspaces on the test
/// image, a 2 s lease.
async fn fleet(test: &str, n: usize) -> Option<(String, Vec<Daemon>)> {
    let image = docker_test_image(test)?;
    let url = testing::scratch_database(test).await?;
    let mut daemons = Vec::new();
    for _ in 0..n {
        daemons.push(
            Daemon::start_with_env(
                &[
                    "--store",
                    &url,
                    "--lease-ttl",
                    LEASE,
                    "--docker-image",
                    &image,
                    "--stop-grace",
                    "1s",
                    "--reconcile-period",
                    "1s",
                ],
                &[("BERTH_TOKEN", TOKEN)],
            )
            .await
            .expect("daemon"),
        );
    }
    Some((url, daemons))
}

/// Creates and starts a Docker workspace through `d`; returns its id.
async fn running(d: &Daemon, name: &str, script: &str) -> String {
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": name, "runtime": "docker", "command": ["sh", "-c", script]}),
        )
        .await;
    assert!(s == 201 || s == 202, "{s} {v}");
    let id = v["workspace"]["id"].as_str().expect("id").to_owned();
    let (s, v) = d
        .get(&format!(
            "/v1/workspaces/{id}/wait?state=running&timeout=60s"
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    id
}

async fn workspace_events(d: &Daemon, id: &str) -> Vec<Value> {
    d.all_events()
        .await
        .into_iter()
        .filter(|e| e["workspace_id"] == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_restarts_through_three_daemons_cycle_the_runtime_at_most_twice() {
    let test = "a_hundred_restarts_through_three_daemons_cycle_the_runtime_at_most_twice";
    let Some((url, d)) = fleet(test, 3).await else {
        return;
    };
    let id = running(&d[0], "contended", "exec sleep 600").await;
    let _cleanup = DockerCleanup(id.clone());
    let (s, before) = d[1].get(&format!("/v1/workspaces/{id}")).await;
    assert_eq!(s, 200, "{before}");
    let first = before["incarnation"].as_u64().expect("incarnation");
    let restarts = (0..100).map(|i| {
        let d = &d[i % 3];
        let path = format!("/v1/workspaces/{id}/restart");
        async move { d.post(&path, json!({})).await }
    });
    let answers = futures_util::future::join_all(restarts).await;
    for (s, v) in &answers {
        assert!(*s == 200 || *s == 409, "a restart answered {s} {v}");
    }
    let (s, after) = d[2]
        .get(&format!(
            "/v1/workspaces/{id}/wait?state=running&timeout=60s"
        ))
        .await;
    assert_eq!(s, 200, "{after}");
    let (_, after) = d[2].get(&format!("/v1/workspaces/{id}")).await;
    let cycles = after["incarnation"].as_u64().expect("incarnation") - first;
    assert!(
        (1..=2).contains(&cycles),
        "100 concurrent restarts through 3 daemons ran {cycles} runtime cycles"
    );
    let launched = workspace_events(&d[1], &id)
        .await
        .iter()
        .filter(|e| e["cause"] == "launched")
        .count();
    assert_eq!(launched as u64, 1 + cycles, "one launch per incarnation");
    // One token per incarnation, minted once (hashes at rest).
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("db");
    let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE workspace_id = $1")
        .bind(&id)
        .fetch_one(&mut db)
        .await
        .expect("tokens");
    assert_eq!(tokens as u64, 1 + cycles, "one token per cycle");
    assert_eq!(containers_of(&id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_owner_mid_restart_lets_another_daemon_finish_it() {
    let test = "killing_the_owner_mid_restart_lets_another_daemon_finish_it";
    let Some((_url, mut d)) = fleet(test, 3).await else {
        return;
    };
    // PID 1 ignores SIGTERM: the stop waits out its grace, so the kill lands mid-op.
    let id = running(&d[0], "orphaned", "trap '' TERM; while :; do sleep 1; done").await;
    let _cleanup = DockerCleanup(id.clone());
    let (s, v) = d[0]
        .post(
            &format!("/v1/workspaces/{id}/restart?wait=false"),
            json!({}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let op = v["operation"]["id"].as_str().expect("op").to_owned();
    // Killed in the middle of the restart's stop (which waits out the grace).
    wait_for_state(&d[0], &id, "stopping").await;
    d[0].kill9().await.expect("kill -9");
    // Through another daemon: it waits out the dead owner's lease, takes over, and
    // finishes the restart's stop as boot recovery would (`stopped`, the op
    // `interrupted`), then answers.
    let (s, v) = d[1]
        .get(&format!(
            "/v1/workspaces/{id}/wait?state=stopped&timeout=30s"
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, ws) = d[2].get(&format!("/v1/workspaces/{id}")).await;
    assert_eq!(s, 200, "{ws}");
    assert_eq!(ws["state"], "stopped", "{ws}");
    let (s, op) = d[2].get(&format!("/v1/operations/{op}")).await;
    assert_eq!(s, 200, "{op}");
    assert_eq!(op["status"], "interrupted", "{op}");
    assert_eq!(running_containers(&id), 0, "the stop was finished");
    // And it starts again through a third daemon: exactly one container runs.
    let (s, v) = d[2]
        .post(&format!("/v1/workspaces/{id}/start"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["workspace"]["state"], "running", "{v}");
    assert_eq!(running_containers(&id), 1);
    assert!(
        containers_of(&id) <= 1,
        "no container left beside the new one"
    );
    let (_, list) = d[1].get("/v1/workspaces").await;
    for w in list["items"].as_array().expect("items") {
        assert!(
            !["starting", "stopping", "deleting"].contains(&w["state"].as_str().unwrap_or("")),
            "left transitional: {w}"
        );
    }
}

/// Polls `d` until workspace `id` is in `state` (at most 10 s).
async fn wait_for_state(d: &Daemon, id: &str, state: &str) {
    let mut seen = Value::Null;
    for _ in 0..1000 {
        let (_, ws) = d.get(&format!("/v1/workspaces/{id}")).await;
        seen = ws["state"].clone();
        if seen == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never reached {state}; last {seen}");
}

fn running_containers(ws: &str) -> usize {
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=dev.berth.workspace={ws}"),
        ])
        .output()
        .expect("docker");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_owner_is_fenced_and_never_touches_the_new_incarnation() {
    let test = "a_frozen_owner_is_fenced_and_never_touches_the_new_incarnation";
    let Some((_url, d)) = fleet(test, 2).await else {
        return;
    };
    let id = running(&d[0], "frozen", "trap '' TERM; while :; do sleep 1; done").await;
    let _cleanup = DockerCleanup(id.clone());
    // The owner begins a stop (PID 1 ignores SIGTERM: it waits out the grace) and is
    // frozen in the middle of it.
    let (s, v) = d[0]
        .post(&format!("/v1/workspaces/{id}/stop?wait=false"), json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    wait_for_state(&d[0], &id, "stopping").await;
    d[0].signal(nix::sys::signal::Signal::SIGSTOP)
        .expect("SIGSTOP");
    // The other daemon takes over past the lease and starts a new incarnation.
    let (s, v) = d[1]
        .post(&format!("/v1/workspaces/{id}/start"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["workspace"]["state"], "running", "{v}");
    let new = v["workspace"]["incarnation"].as_u64().expect("incarnation");
    let events_before = workspace_events(&d[1], &id).await.len();
    // The frozen owner resumes, finishes its stop as far as it can, and is refused.
    d[0].signal(nix::sys::signal::Signal::SIGCONT)
        .expect("SIGCONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (s, ws) = d[1].get(&format!("/v1/workspaces/{id}")).await;
    assert_eq!(s, 200, "{ws}");
    assert_eq!(ws["state"], "running", "{ws}");
    assert_eq!(ws["incarnation"], new, "{ws}");
    let after = workspace_events(&d[1], &id).await;
    assert_eq!(
        after.len(),
        events_before,
        "the fenced owner wrote nothing: {:?}",
        &after[events_before..]
    );
    let out = Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=dev.berth.workspace={id}"),
            "--format",
            "{{.State}} {{.Label \"dev.berth.incarnation\"}}",
        ])
        .output()
        .expect("docker");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        listed.trim(),
        format!("running {new}"),
        "only the new incarnation's container, untouched"
    );
    // The resumed daemon answers like the owner (it forwards).
    let (s, seen) = d[0].get(&format!("/v1/workspaces/{id}")).await;
    assert_eq!(s, 200, "{seen}");
    assert_eq!(seen["incarnation"], new);
}

/// Reads `n` events of an SSE stream from `d` after `since`: `(seq, body)`.
async fn sse(d: &Daemon, since: u64, n: usize) -> Vec<(u64, Value)> {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/events", d.url))
        .bearer_auth(&d.token)
        .header("last-event-id", since.to_string())
        .send()
        .await
        .expect("sse");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("events keep coming")
            .expect("stream open")
            .expect("chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<u64>().ok();
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str::<Value>(v.trim()).ok();
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_clients_on_two_daemons_see_one_gap_free_sequence_while_three_write() {
    let test = "sse_clients_on_two_daemons_see_one_gap_free_sequence_while_three_write";
    let Some((_url, d)) = fleet(test, 3).await else {
        return;
    };
    const PER_DAEMON: usize = 8;
    // Each create writes one event, each delete two (deleting, deleted).
    let total = 3 * PER_DAEMON * 3;
    let (a, b, ()) = tokio::join!(sse(&d[0], 0, total), sse(&d[1], 0, total), async {
        let work = (0..3).map(|k| {
            let d = &d[k];
            async move {
                for i in 0..PER_DAEMON {
                    let (s, v) = d
                        .post(
                            "/v1/workspaces",
                            json!({"name": format!("ev-{k}-{i}"), "runtime": "docker", "start": false,
                                   "command": ["true"]}),
                        )
                        .await;
                    assert_eq!(s, 201, "{v}");
                    let id = v["workspace"]["id"].as_str().expect("id").to_owned();
                    let (s, v) = d.delete(&format!("/v1/workspaces/{id}")).await;
                    assert!(s == 200 || s == 202, "{s} {v}");
                }
            }
        });
        futures_util::future::join_all(work).await;
    });
    let seqs: Vec<u64> = a.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "gap-free, in order"
    );
    assert_eq!(a, b, "both daemons' clients saw the same events");
    // Resuming on a third daemon from the middle gives the rest, the same.
    let half = total / 2;
    let rest = sse(&d[2], half as u64, total - half).await;
    assert_eq!(rest, a[half..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_through_two_daemons_gives_one_workspace() {
    let test = "one_idempotency_key_through_two_daemons_gives_one_workspace";
    let Some((_url, d)) = fleet(test, 2).await else {
        return;
    };
    let client = reqwest::Client::new();
    for round in 0..5 {
        let create = |daemon: &Daemon| {
            client
                .post(format!("{}/v1/workspaces", daemon.url))
                .bearer_auth(TOKEN)
                .header("idempotency-key", format!("key-{round}"))
                .json(&json!({"name": format!("keyed-{round}"), "runtime": "docker", "start": false, "command": ["true"]}))
                .send()
        };
        let (x, y) = tokio::join!(create(&d[0]), create(&d[1]));
        let (x, y) = (x.expect("answer"), y.expect("answer"));
        let (sx, sy) = (x.status().as_u16(), y.status().as_u16());
        let (vx, vy): (Value, Value) =
            (x.json().await.expect("json"), y.json().await.expect("json"));
        assert!(sx < 300 && sy < 300, "round {round}: {sx} {vx} / {sy} {vy}");
        assert_eq!(
            vx["workspace"]["id"], vy["workspace"]["id"],
            "round {round}: one workspace"
        );
        // Without a key, the same name through two daemons: one create, one name_taken.
        let plain = |daemon: &Daemon| {
            client
                .post(format!("{}/v1/workspaces", daemon.url))
                .bearer_auth(TOKEN)
                .json(&json!({"name": format!("plain-{round}"), "runtime": "docker", "start": false, "command": ["true"]}))
                .send()
        };
        let (x, y) = tokio::join!(plain(&d[0]), plain(&d[1]));
        let mut statuses = [
            x.expect("answer").status().as_u16(),
            y.expect("answer").status().as_u16(),
        ];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "round {round}");
    }
    let (_, list) = d[0].get("/v1/workspaces?limit=100").await;
    assert_eq!(list["items"].as_array().expect("items").len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workspace_token_verifies_on_every_daemon() {
    let test = "a_workspace_token_verifies_on_every_daemon";
    let Some((_url, d)) = fleet(test, 2).await else {
        return;
    };
    let id = running(
        &d[0],
        "tokened",
        "echo \"token=$BERTH_WORKSPACE_TOKEN\"; exec sleep 600",
    )
    .await;
    let _cleanup = DockerCleanup(id.clone());
    // Its output read through the other daemon (forwarded to the owner).
    let mut token = None;
    for _ in 0..100 {
        let (_, v) = d[1]
            .get(&format!("/v1/workspaces/{id}/output?lines=20"))
            .await;
        token = v.to_string().split("token=").nth(1).map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect::<String>()
        });
        if token.as_ref().is_some_and(|t| !t.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = token.expect("the workspace printed its token");
    for daemon in &d {
        let (s, me) = daemon
            .call_as(Some(&token), reqwest::Method::GET, "/v1/self", None)
            .await;
        assert_eq!(s, 200, "{me}");
        assert_eq!(me["id"], id.as_str(), "{me}");
    }
    // The headers daemons set on a forward are a client's input when a client sets
    // them: a 4xx, never a 5xx.
    let client = reqwest::Client::new();
    let late = client
        .get(format!("{}/v1/workspaces/{id}", d[0].url))
        .bearer_auth(TOKEN)
        .header("x-berth-forward-deadline", "1")
        .send()
        .await
        .expect("answer");
    assert_eq!(late.status().as_u16(), 400);
    let looped = client
        .get(format!("{}/v1/workspaces/{id}", d[1].url))
        .bearer_auth(TOKEN)
        .header("x-berth-forwarded-by", "x")
        .header("x-berth-forwarded-by", "y")
        .send()
        .await
        .expect("answer");
    assert_eq!(looped.status().as_u16(), 400);
    let body: Value = looped.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
}
