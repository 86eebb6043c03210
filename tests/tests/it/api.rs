//! Auth, bad input, idempotency, OpenAPI.

use berth_tests::{Daemon, berth_bin, read_when_written};
use reqwest::Method;
use serde_json::{Value, json};

const SLEEP: &str = "sleep 600";

/// Every route of the document with `{id}`/`{op}`/`{name}` filled in.
fn routes(doc: &Value, id: &str, op: &str) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in item.as_object().expect("item").keys() {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).expect("method");
            let p = path
                .replace("{id}", id)
                .replace("{op}", op)
                .replace("{name}", "agent");
            out.push((method, p));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_or_wrong_token_is_401_everywhere_but_healthz_and_workspace_tokens_are_scoped() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let token_file = d.data_dir().join("token-a");
    let script = format!(
        "echo \"$BERTH_WORKSPACE_TOKEN\" > {}; {SLEEP}",
        token_file.display()
    );
    let a = d.running("alpha", &script).await;
    let b = d.running("beta", SLEEP).await;
    let (_, doc) = d.get("/openapi.json").await;
    let (_, ops) = d.get(&format!("/v1/workspaces/{a}/operations")).await;
    let op = ops["items"][0]["id"].as_str().expect("an op").to_owned();
    for (method, path) in routes(&doc, &b, &op) {
        let (s, _) = d.call_as(None, method.clone(), &path, None).await;
        let (s2, v2) = d
            .call_as(Some("not-the-token"), method.clone(), &path, None)
            .await;
        if path == "/healthz" || path == "/openapi.json" {
            assert_eq!((s, s2), (200, 200), "{path} is public");
        } else {
            assert_eq!(s, 401, "{method} {path} without a token");
            assert_eq!(s2, 401, "{method} {path} with a wrong token");
            assert_eq!(v2["error"]["code"], "unauthorized");
        }
    }
    let token = read_when_written(&token_file, std::time::Duration::from_secs(10))
        .await
        .expect("the process wrote its token");
    let (s, v) = d.call_as(Some(&token), Method::GET, "/v1/self", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], a.as_str());
    for path in [
        format!("/v1/workspaces/{b}"),
        "/v1/workspaces".to_owned(),
        "/metrics".to_owned(),
        "/v1/events?format=json".to_owned(),
    ] {
        let (s, v) = d.call_as(Some(&token), Method::GET, &path, None).await;
        assert_eq!(s, 403, "GET {path} with alpha's token: {v}");
        assert_eq!(v["error"]["code"], "forbidden");
    }
    let (s, _) = d
        .call_as(
            Some(&token),
            Method::POST,
            &format!("/v1/workspaces/{a}/stop"),
            None,
        )
        .await;
    assert_eq!(s, 403, "a workspace token cannot drive its workspace");
    // It may run commands in and copy files into itself, and nowhere else; never attach
    // (a tmux client could run commands outside the workspace's sandbox).
    for (method, path) in [
        (Method::GET, format!("/v1/workspaces/{a}/attach")),
        (Method::POST, format!("/v1/workspaces/{b}/exec")),
        (Method::PUT, format!("/v1/workspaces/{b}/files?path=.")),
        (Method::POST, format!("/v1/workspaces/{a}/sessions")),
        (Method::DELETE, format!("/v1/workspaces/{a}")),
    ] {
        let (s, v) = d.call_as(Some(&token), method.clone(), &path, None).await;
        assert_eq!(s, 403, "{method} {path} with alpha's token: {v}");
    }
    // A restart mints a new incarnation: the old token is dead.
    std::fs::remove_file(&token_file).expect("rm");
    let (s, v) = d
        .post(&format!("/v1/workspaces/{a}/restart"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = d.call_as(Some(&token), Method::GET, "/v1/self", None).await;
    assert_eq!(s, 401, "the previous incarnation's token: {v}");
    let fresh = read_when_written(&token_file, std::time::Duration::from_secs(10))
        .await
        .expect("the new process wrote its token");
    let (s, _) = d.call_as(Some(&fresh), Method::GET, "/v1/self", None).await;
    assert_eq!(s, 200);
}

async fn snapshot(d: &Daemon) -> (Value, usize) {
    let (_, list) = d.get("/v1/workspaces?limit=1000").await;
    let mut items = list["items"].clone();
    if let Some(a) = items.as_array_mut() {
        for w in a {
            w["pending"] = Value::Null;
        }
    }
    (items, d.all_events().await.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_status_and_code_and_changes_nothing() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let id = d.running("steady", SLEEP).await;
    let (s, _) = d
        .post("/v1/workspaces", json!({"name": "idle", "start": false}))
        .await;
    assert_eq!(s, 201);
    let before = snapshot(&d).await;
    let client = reqwest::Client::new();
    let raw = |body: String| {
        client
            .post(format!("{}/v1/workspaces", d.url))
            .bearer_auth(&d.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"name\": ".into(), 400, "invalid_request"),
        ("[1, 2]".into(), 400, "invalid_request"),
        (
            json!({"name": "x1", "bogus": true}).to_string(),
            400,
            "invalid_request",
        ),
        (
            json!({"runtime": "tmux"}).to_string(),
            422,
            "validation_failed",
        ),
        (
            json!({"name": "Bad Name; rm -rf /"}).to_string(),
            422,
            "validation_failed",
        ),
        (
            json!({"name": "-lead"}).to_string(),
            422,
            "validation_failed",
        ),
        (
            json!({"name": "a".repeat(64)}).to_string(),
            422,
            "validation_failed",
        ),
        (json!({"name": "steady"}).to_string(), 409, "name_taken"),
        (
            json!({"name": "ok1", "env": {"BAD NAME": "v"}}).to_string(),
            422,
            "validation_failed",
        ),
        (
            json!({"name": "ok2", "dir": "relative/path"}).to_string(),
            422,
            "validation_failed",
        ),
        (
            json!({"name": "ok3", "runtime": "podman"}).to_string(),
            422,
            "validation_failed",
        ),
        (
            format!(
                "{{\"name\": \"big\", \"env\": {{\"K\": \"{}\"}}}}",
                "x".repeat(2 * 1024 * 1024)
            ),
            413,
            "payload_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let resp = raw(body.clone()).await.expect("answer");
        let got = resp.status().as_u16();
        let v: Value = resp.json().await.expect("a JSON error body");
        let shown: String = body.chars().take(60).collect();
        assert_eq!(got, status, "{shown}: {v}");
        assert_eq!(v["error"]["code"], code, "{shown}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (s, v) = d.post("/v1/workspaces", json!({"runtime": "tmux"})).await;
    assert_eq!(s, 422);
    assert_eq!(v["error"]["details"]["field"], "name");
    // Unknown ids, invalid transitions, bad queries.
    for (method, path, status, code) in [
        (
            Method::GET,
            "/v1/workspaces/ws-0000000000000000".to_owned(),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/workspaces/nope/start".to_owned(),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/v1/workspaces/nope".to_owned(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/operations/op-0000000000000000".to_owned(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/no/such/route".to_owned(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/workspaces?limit=0".to_owned(),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/workspaces?bogus=1".to_owned(),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{id}/wait?state=sideways"),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/v1/workspaces/{id}/start?timeout=soon"),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/workspaces/idle/sessions".to_owned(),
            409,
            "invalid_transition",
        ),
        (
            Method::DELETE,
            format!("/v1/workspaces/{id}/sessions/never"),
            404,
            "not_found",
        ),
    ] {
        let body = (method == Method::POST && path.ends_with("/sessions"))
            .then(|| json!({"name": "agent", "command": ["sh", "-c", SLEEP]}));
        let (s, v) = d.call(method.clone(), &path, body).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path}");
    }
    assert_eq!(snapshot(&d).await, before, "bad input changed the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_result_and_refuses_another_body() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let client = reqwest::Client::new();
    let send = |key: &str, body: Value| {
        client
            .post(format!("{}/v1/workspaces", d.url))
            .bearer_auth(&d.token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let body = json!({"name": "once", "command": ["sh", "-c", SLEEP]});
    let (a, b) = tokio::join!(send("key-1", body.clone()), send("key-1", body.clone()));
    let a: Value = a.expect("a").json().await.expect("json");
    let b: Value = b.expect("b").json().await.expect("json");
    assert_eq!(a["workspace"]["id"], b["workspace"]["id"], "{a} {b}");
    assert_eq!(a["operation"]["id"], b["operation"]["id"]);
    let c = send("key-1", body.clone()).await.expect("c");
    assert_eq!(c.status().as_u16(), 201);
    let c: Value = c.json().await.expect("json");
    assert_eq!(c["workspace"]["id"], a["workspace"]["id"]);
    let other = send("key-1", json!({"name": "twice"})).await.expect("d");
    assert_eq!(other.status().as_u16(), 409);
    let v: Value = other.json().await.expect("json");
    assert_eq!(v["error"]["code"], "idempotency_conflict");
    let (_, list) = d.get("/v1/workspaces").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    // Issue 11, item 6: once the workspace is deleted, the key still replays the first
    // answer (201, same ids), never a 404 on a create, and creates nothing.
    let id = a["workspace"]["id"].as_str().expect("id").to_owned();
    let (s, v) = d.delete(&format!("/v1/workspaces/{id}?force=true")).await;
    assert_eq!(s, 200, "{v}");
    let replay = send("key-1", body).await.expect("replay");
    assert_eq!(replay.status().as_u16(), 201);
    assert_eq!(
        replay
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let replay: Value = replay.json().await.expect("json");
    assert_eq!(replay["workspace"]["id"], a["workspace"]["id"], "{replay}");
    let (_, list) = d.get("/v1/workspaces").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_the_checked_in_one_and_every_route_answers() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let (s, served) = d.get("/openapi.json").await;
    assert_eq!(s, 200);
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .expect("docs/openapi.json"),
    )
    .expect("valid JSON");
    assert_eq!(
        served, checked_in,
        "run `cargo xtask openapi` to update docs/openapi.json"
    );
    assert_eq!(
        served["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true)
    );
    let id = d.running("doc", SLEEP).await;
    let (s, _) = d
        .post(
            &format!("/v1/workspaces/{id}/sessions"),
            json!({"name": "agent", "command": ["sh", "-c", SLEEP]}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, ops) = d.get(&format!("/v1/workspaces/{id}/operations")).await;
    let op = ops["items"][0]["id"].as_str().expect("op").to_owned();
    let mut routes = routes(&served, &id, &op);
    // Destructive routes last.
    routes.sort_by_key(|(m, p)| match (m.as_str(), p.as_str()) {
        ("DELETE", p) if p.contains("/sessions/") => 1,
        (_, p) if p.ends_with("/stop") => 2,
        (_, p) if p.ends_with("/restart") => 3,
        ("DELETE", _) => 4,
        _ => 0,
    });
    assert!(routes.len() >= 20, "{routes:?}");
    for (method, path) in routes {
        let path = if path.ends_with("/wait") {
            format!("{path}?state=settled&timeout=5s")
        } else {
            path
        };
        let path = if path == "/v1/events" {
            "/v1/events?format=json".to_owned()
        } else {
            path
        };
        let path = if path.ends_with("/files") {
            format!("{path}?path=.")
        } else {
            path
        };
        let body = (method == Method::POST && path.ends_with("/sessions"))
            .then(|| json!({"name": "agent", "command": ["sh", "-c", SLEEP]}))
            .or_else(|| {
                (method == Method::POST && path == "/v1/workspaces")
                    .then(|| json!({"name": "doc2", "start": false}))
            })
            .or_else(|| {
                (method == Method::POST && path.ends_with("/exec"))
                    .then(|| json!({"command": ["true"]}))
            })
            .or_else(|| {
                (method == Method::PUT && path.starts_with("/v1/pools/"))
                    .then(|| json!({"size": 0, "start": false}))
            });
        let (s, v) = d.call(method.clone(), &path, body).await;
        let websocket =
            method == Method::GET && (path.ends_with("/attach") || path.ends_with("/exec"));
        let ok = if websocket {
            // A plain GET on a WebSocket route: our error shape, not axum's text.
            s == 400 && v["error"]["code"] == "invalid_request"
        } else if method == Method::PUT && path.contains("/files?") {
            // No body: not an archive, a 4xx that changes nothing.
            (200..300).contains(&s) || (s == 422 && v["error"]["code"] == "validation_failed")
        } else {
            (200..300).contains(&s)
                || (path == "/v1/self" && s == 404)
                // Read or removed before the PUT made it.
                || (path.starts_with("/v1/pools/") && s == 404)
        };
        let shown: String = v.to_string().chars().take(300).collect();
        assert!(ok, "{method} {path} answered {s}: {shown}");
    }
}

/// Defect 13: an op that ended badly answered 200 with a failed op, and the CLI exited
/// 0. It now answers with its error's status, still with the workspace and the op, and
/// the CLI exits non-zero with the error. A directory that is not there is the caller's
/// input: 422 `validation_failed` (it was 502 `runtime_error` until schemathesis's
/// stateful phase reused a deleted workspace's directory: a 5xx is always a bug).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_that_ends_badly_answers_with_its_error_status_and_the_cli_fails() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "nodir", "dir": "/nonexistent/berth-test", "command": ["sleep", "600"], "start": false}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.post("/v1/workspaces/nodir/start", json!({})).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "validation_failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent/berth-test")),
        "the error names the thing: {v}"
    );
    assert_eq!(v["operation"]["status"], "failed");
    assert_eq!(v["operation"]["error"]["code"], "validation_failed");
    assert_eq!(v["workspace"]["state"], "failed");
    let out = tokio::process::Command::new(berth_bin())
        .args(["ws", "start", "nodir"])
        .env("BERTH_DATA_DIR", d.data_dir())
        .env_remove("BERTH_URL")
        .env_remove("BERTH_TOKEN")
        .output()
        .await
        .expect("berth");
    assert!(!out.status.success(), "the CLI exits non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("validation_failed"), "{stderr}");
    // A directory that cannot be checked refuses a plain delete (409, with the
    // workspace and the op); a forced one is a success, 200.
    let (s, v) = d.delete("/v1/workspaces/nodir").await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("dirty_check_failed")),
        "{v}"
    );
    assert_eq!(
        v["workspace"]["state"], "failed",
        "a refusal changes nothing"
    );
    let (s, v) = d.delete("/v1/workspaces/nodir?force=true").await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("error").is_none(), "{v}");
}

/// Defects 11 and 12: output of a workspace that never ran is an empty page, not a
/// 502; a name shaped like a workspace id is refused, so `{id}` is never ambiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_without_a_process_is_empty_and_names_cannot_look_like_ids() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "idle", "command": ["sleep", "600"], "start": false}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.get("/v1/workspaces/idle/output").await;
    assert_eq!((s, v["lines"].clone()), (200, json!([])), "{v}");
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "ws-0123456789abcdef", "start": false}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "validation_failed");
    assert_eq!(v["error"]["details"]["field"], "name");
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "img", "image": "busybox", "start": false}),
        )
        .await;
    assert_eq!(s, 422, "an image on tmux: {v}");
    assert_eq!(v["error"]["details"]["field"], "image");
    let (_, list) = d.get("/v1/workspaces").await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "nothing else was created"
    );
}

/// `berth ws create` takes the spec's fields as flags, and a create whose start ends
/// `failed` exits non-zero with the reason (issue 13, item 5, in part).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_create_takes_spec_flags_and_a_failed_start_exits_non_zero() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let cli = |args: &[&str]| {
        tokio::process::Command::new(berth_bin())
            .args(args)
            .env("BERTH_DATA_DIR", d.data_dir())
            .env_remove("BERTH_URL")
            .env_remove("BERTH_TOKEN")
            .output()
    };
    let out = cli(&[
        "ws",
        "create",
        "flagged",
        "--runtime",
        "docker",
        "--image",
        "busybox-test:none",
        "--memory",
        "64m",
        "--millicpus",
        "500",
        "--pids",
        "64",
        "--no-network",
        "--read-only-root",
        "--no-start",
        "--json",
    ])
    .await
    .expect("berth");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, v) = d.get("/v1/workspaces/flagged").await;
    let spec = &v["spec"];
    assert_eq!(spec["image"], "busybox-test:none", "{v}");
    assert_eq!(spec["limits"]["memory_bytes"], 64 * 1024 * 1024);
    assert_eq!(spec["limits"]["millicpus"], 500);
    assert_eq!(spec["limits"]["pids"], 64);
    assert_eq!(spec["network"], false);
    assert_eq!(spec["read_only_root"], true);
    // A start that fails (the directory does not exist): exit 1, the reason on stderr.
    let out = cli(&[
        "ws",
        "create",
        "doomed",
        "--dir",
        "/nonexistent/berth-cli",
        "--",
        "true",
    ])
    .await
    .expect("berth");
    assert!(!out.status.success(), "a failed start exits non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed to start") && stderr.contains("/nonexistent/berth-cli"),
        "{stderr}"
    );
    // `--json`: a list is the API's page shape; an error is one JSON object on stderr.
    let out = cli(&["ws", "ls", "--json"]).await.expect("berth");
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(page["next_cursor"], serde_json::Value::Null, "{page}");
    assert!(
        page["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|w| w["name"] == "flagged")),
        "{page}"
    );
    let out = cli(&["ws", "show", "no-such-workspace", "--json"])
        .await
        .expect("berth");
    assert!(!out.status.success());
    let error: serde_json::Value = serde_json::from_slice(&out.stderr).expect("a JSON error");
    assert_eq!(error["error"]["code"], "not_found", "{error}");
    // `ws show` is for people without --json.
    let out = cli(&["ws", "show", "flagged"]).await.expect("berth");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("Name:        flagged\n"), "{text}");
    assert!(
        text.contains("\nImage:       busybox-test:none\n"),
        "{text}"
    );
    assert!(text.contains("memory_bytes=67108864"), "{text}");
    assert!(!text.trim_start().starts_with('{'), "{text}");
    // Several names at once; one that does not exist fails the command, the others
    // are still done.
    let out = cli(&[
        "ws",
        "rm",
        "--force",
        "flagged",
        "no-such-workspace",
        "doomed",
    ])
    .await
    .expect("berth");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-workspace"), "{stderr}");
    for gone in ["flagged", "doomed"] {
        let (s, _) = d.get(&format!("/v1/workspaces/{gone}")).await;
        assert_eq!(s, 404, "{gone} was removed");
    }
    // The size flag refuses what is not a size, before any request.
    let out = cli(&["ws", "create", "bad-size", "--memory", "lots"])
        .await
        .expect("berth");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let (s, _) = d.get("/v1/workspaces/bad-size").await;
    assert_eq!(s, 404);
}

/// `berth events -f | head -1`: when the reader goes away, the CLI ends quietly with 0
/// (it panicked, exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_whose_reader_goes_away_ends_quietly() {
    use tokio::io::AsyncBufReadExt as _;
    let d = Daemon::start(&[]).await.expect("daemon");
    let id = d.running("piped", "exec sleep 600").await;
    let mut child = tokio::process::Command::new(berth_bin())
        .args(["events", "-f"])
        .env("BERTH_DATA_DIR", d.data_dir())
        .env_remove("BERTH_URL")
        .env_remove("BERTH_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("berth events -f");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("a first line in time")
        .expect("read");
    assert!(first.is_some());
    drop(lines); // the reader goes away, as `head -1` does
    // New events to write: the write fails, and the CLI must end.
    for _ in 0..3 {
        let (s, _) = d
            .post(&format!("/v1/workspaces/{id}/restart"), json!({}))
            .await;
        assert_eq!(s, 200);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the CLI ended")
        .expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `berth serve`'s log written to a file or a pipe holds no colour codes (issue 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirected_daemon_log_has_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("serve.log");
    let mut serve = tokio::process::Command::new(berth_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("BERTH_LOG", "info")
        .env_remove("BERTH_TOKEN")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("berth serve");
    let stdout = serve.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("a URL in time")
        .expect("read");
    assert!(first.is_some_and(|l| l.starts_with("http://")));
    // Past boot recovery, so the shutdown logs at INFO.
    loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("serving in time")
            .expect("read")
            .expect("serve printed its status");
        if line.contains("serving") {
            break;
        }
    }
    let pid = nix::unistd::Pid::from_raw(serve.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let _ = serve.wait().await;
    // The engine's tmux server outlives its daemon by design: end it with the test.
    let _ = std::process::Command::new("tmux")
        .arg("-S")
        .arg(dir.path().join("data/state/tmux.sock"))
        .arg("kill-server")
        .output();
    let text = std::fs::read_to_string(&log).expect("the log");
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a redirected log: {text:?}"
    );
}

/// `berth events --since` takes a seq or a duration (issue 13: `--since 5m` was refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_since_takes_a_seq_or_a_duration() {
    let d = Daemon::start(&[]).await.expect("daemon");
    d.running("timed", "exec sleep 600").await;
    let events = |since: &'static str| {
        let dir = d.data_dir().to_owned();
        async move {
            let out = tokio::process::Command::new(berth_bin())
                .args(["events", "--json", "--since", since])
                .env("BERTH_DATA_DIR", dir)
                .env_remove("BERTH_URL")
                .env_remove("BERTH_TOKEN")
                .output()
                .await
                .expect("berth events");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).lines().count(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (ok, all, _) = events("0").await;
    assert!(ok && all >= 3, "create, starting, running: {all}");
    assert_eq!(events("1h").await.1, all, "every event is within the hour");
    assert_eq!(events("2").await.1, all - 2, "after seq 2");
    // Every event is older than this by construction (the wait comes after them).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(events("1s").await.1, 0, "none in the last second");
    let (ok, _, stderr) = events("soon").await;
    assert!(!ok && stderr.contains("neither a seq"), "{stderr}");
}
