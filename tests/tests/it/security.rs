//! The isolation and secrets matrix (docs/security.md): what a workspace can reach of
//! the daemon's keys, what the data directory holds and with which modes, what the CLI
//! sends where, and what the HTTP server tolerates from a local attacker. Each test
//! is an attempt and its expected outcome.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use berth_tests::{
    Daemon, DockerCleanup, berth_bin, docker_test_image, get_over, read_when_written,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `KEY=value` lines of an `env` dump (values with newlines are not used here).
fn env_of(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Every regular file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file()
                && std::fs::read(e.path())
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

/// A daemon started with the admin token and other secrets in its environment hands
/// none of them to a workspace or a session: they see the allow-list, the spec's
/// variables and berth's own, no `TMUX`, and a working directory outside the state
/// directory. The workspace token they do get works, and is on disk nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_secret_reaches_a_tmux_workspace_or_session() {
    let admin = "admin-token-that-must-not-leak-0123456789";
    let d = Daemon::start_with_env(
        &[],
        &[
            ("BERTH_TOKEN", admin),
            ("AWS_SECRET_ACCESS_KEY", "daemon-only-secret"),
            ("DOCKER_HOST", "unix:///var/run/docker.sock"),
        ],
    )
    .await
    .expect("daemon");
    assert_eq!(d.token, admin, "the daemon took its token from BERTH_TOKEN");
    let out = tempfile::tempdir().expect("temp dir");
    let main_env = out.path().join("main.env");
    let script = format!(
        "env > '{}.tmp'; pwd >> '{}.tmp'; mv '{}.tmp' '{}'; exec sleep 600",
        main_env.display(),
        main_env.display(),
        main_env.display(),
        main_env.display()
    );
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "probe", "command": ["sh", "-c", script], "env": {"MINE": "spec value"}, "start": true}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["workspace"]["id"].as_str().expect("id").to_owned();
    let text = read_when_written(&main_env, Duration::from_secs(20))
        .await
        .expect("the workspace wrote its environment");
    let cwd = text.lines().last().expect("pwd").to_owned();
    let env = env_of(&text);
    let leaked: Vec<&String> = env
        .iter()
        .filter(|(_, v)| v.contains(admin) || v.contains("daemon-only-secret"))
        .map(|(k, _)| k)
        .collect();
    assert!(leaked.is_empty(), "daemon secrets in {leaked:?}: {text}");
    for name in [
        "TMUX",
        "TMUX_PANE",
        "BERTH_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "DOCKER_HOST",
        "BERTH_LOG",
    ] {
        assert!(
            !env.contains_key(name),
            "{name} reached the workspace: {text}"
        );
    }
    assert_eq!(env.get("MINE").map(String::as_str), Some("spec value"));
    assert_eq!(env.get("BERTH_WORKSPACE_ID"), Some(&id));
    assert!(env.contains_key("PATH"), "{text}");
    let state = d.data_dir().join("state");
    assert!(
        !Path::new(&cwd).starts_with(&state),
        "the working directory {cwd} is inside the state directory"
    );
    // Its own token works for its own workspace, and is written nowhere.
    let token = env
        .get("BERTH_WORKSPACE_TOKEN")
        .expect("the workspace token")
        .clone();
    let (s, v) = d
        .call_as(Some(&token), reqwest::Method::GET, "/v1/self", None)
        .await;
    assert_eq!((s, v["id"].as_str()), (200, Some(id.as_str())), "{v}");
    assert_eq!(
        files_containing(d.data_dir(), &token),
        Vec::<String>::new(),
        "the workspace token is on disk in clear"
    );

    // A session: the same built environment.
    let session_env = out.path().join("session.env");
    let script = format!(
        "env > '{}.tmp'; mv '{}.tmp' '{}'; exec sleep 600",
        session_env.display(),
        session_env.display(),
        session_env.display()
    );
    let (s, v) = d
        .post(
            &format!("/v1/workspaces/{id}/sessions"),
            json!({"name": "agent", "command": ["sh", "-c", script]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let text = read_when_written(&session_env, Duration::from_secs(20))
        .await
        .expect("the session wrote its environment");
    let env = env_of(&text);
    for name in [
        "TMUX",
        "TMUX_PANE",
        "BERTH_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "DOCKER_HOST",
    ] {
        assert!(
            !env.contains_key(name),
            "{name} reached the session: {text}"
        );
    }
    assert!(!text.contains(admin), "{text}");
    assert_eq!(env.get("BERTH_SESSION").map(String::as_str), Some("agent"));
    let (s, _) = d.delete(&format!("/v1/workspaces/{id}?force=true")).await;
    assert_eq!(s, 200);
}

/// The data directory: the state directory and its files are the owner's alone, and
/// an admin token file others could read is tightened at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_is_private_and_a_loose_token_file_is_tightened() {
    let mut d = Daemon::start(&[]).await.expect("daemon");
    let state = d.data_dir().join("state");
    assert_eq!(mode(d.data_dir()), 0o700);
    assert_eq!(mode(&state), 0o700);
    for file in ["admin.token", "daemon.url", "daemon.lock"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    let id = d.running("modes", "exec sleep 600").await;
    assert_eq!(mode(&state.join("launch")), 0o700);
    let token = state.join("admin.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d.restart().await.expect("restart");
    assert_eq!(mode(&token), 0o600, "the loose token file was tightened");
    assert_eq!(
        mode(&state),
        0o700,
        "the loose state directory was tightened"
    );
    let (s, _) = d.delete(&format!("/v1/workspaces/{id}?force=true")).await;
    assert_eq!(s, 200);
}

/// A data directory of the older layout (database, token and tmux socket at its top)
/// is moved into `state/` at start, and its running workspace is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_layout_is_moved_into_the_state_directory_keeping_its_workspaces() {
    let mut d = Daemon::start(&[]).await.expect("daemon");
    let id = d.running("kept", "exec sleep 600").await;
    d.terminate().await.expect("terminate");
    let state = d.data_dir().join("state");
    for name in ["berth.db", "admin.token", "tmux.sock", "launch"] {
        std::fs::rename(state.join(name), d.data_dir().join(name)).expect("back to the old layout");
    }
    d.restart().await.expect("restart");
    assert!(state.join("berth.db").exists() && !d.data_dir().join("berth.db").exists());
    let (s, v) = d.get(&format!("/v1/workspaces/{id}")).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{v}");
    let (s, _) = d.delete(&format!("/v1/workspaces/{id}?force=true")).await;
    assert_eq!(s, 200);
}

/// The CLI sends the admin token only to the daemon of its data directory: with no
/// daemon running it refuses, and it never follows a `daemon.url` a dead daemon left
/// (another process may listen there now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_never_sends_the_token_to_an_address_no_daemon_of_its_data_dir_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(state.join("admin.token"), "a-token-for-nobody-else-0123").expect("token");
    // A stand-in listener, announced by a daemon.url no daemon holds the lock for.
    let stand_in = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = stand_in.local_addr().expect("addr");
    // And one on the old fallback address, when this machine lets us have it.
    let default_port = tokio::net::TcpListener::bind("127.0.0.1:7421").await.ok();
    if default_port.is_none() {
        eprintln!("note: 127.0.0.1:7421 is taken here; the stale-URL stand-in still runs");
    }
    let run = |args: &'static [&'static str]| {
        let dir = dir.path().to_owned();
        async move {
            tokio::process::Command::new(berth_bin())
                .args(args)
                .env("BERTH_DATA_DIR", dir)
                .env_remove("BERTH_URL")
                .env_remove("BERTH_TOKEN")
                .output()
                .await
                .expect("berth")
        }
    };
    for with_url in [false, true] {
        if with_url {
            std::fs::write(state.join("daemon.url"), format!("http://{addr}")).expect("url");
            std::fs::write(state.join("daemon.lock"), "").expect("lock file");
        }
        let out = run(&["ws", "ls"]).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no berth daemon runs"), "{stderr}");
        let doctor = run(&["doctor"]).await;
        let text = String::from_utf8_lossy(&doctor.stdout);
        assert!(text.contains("no berth daemon runs"), "{text}");
    }
    // Nothing ever connected to the stand-ins.
    let accepted = tokio::time::timeout(Duration::from_millis(200), stand_in.accept()).await;
    assert!(accepted.is_err(), "the CLI connected to the stand-in");
    if let Some(default_port) = default_port {
        let accepted =
            tokio::time::timeout(Duration::from_millis(200), default_port.accept()).await;
        assert!(accepted.is_err(), "the CLI connected to 127.0.0.1:7421");
    }
}

/// The HTTP server closes a connection whose headers do not arrive in time, and
/// refuses plain HTTP on a non-loopback address unless told the network is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_plain_http_stays_on_loopback() {
    let d = Daemon::start(&["--header-read-timeout", "1s"])
        .await
        .expect("daemon");
    let addr = d.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half the headers");
    let mut buf = Vec::new();
    // A stall detector, not a speed test: the server's timeout is 1 s.
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "a connection with half-sent headers stayed open"
    );
    // An idle connection never sends anything: closed too.
    let mut idle = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let closed = tokio::time::timeout(Duration::from_secs(20), idle.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "an idle connection stayed open");
    // The daemon still serves.
    let (s, _) = d.get("/v1/workspaces").await;
    assert_eq!(s, 200);

    let dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::process::Command::new(berth_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("BERTH_TOKEN")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("the refused serve exits")
        .expect("berth");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure-listen"), "{stderr}");
}

/// What a spec may not ask of Docker, refused at create (422, the field named, nothing
/// created), with or without a Docker daemon: limits of 0 (Docker's "no limit") or
/// above the daemon's maximum, and a `dir` reaching into berth's own directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_specs_that_would_lift_limits_or_mount_berths_state_are_refused() {
    let d = Daemon::start(&["--docker-image", "busybox"])
        .await
        .expect("daemon");
    let state = d.data_dir().join("state");
    let cases = [
        (
            json!({"limits": {"memory_bytes": 0}}),
            "limits.memory_bytes",
        ),
        (json!({"limits": {"pids": 0}}), "limits.pids"),
        (json!({"limits": {"millicpus": 0}}), "limits.millicpus"),
        (
            json!({"limits": {"memory_bytes": u64::MAX}}),
            "limits.memory_bytes",
        ),
        (json!({"dir": state.display().to_string()}), "dir"),
        (json!({"dir": d.data_dir().display().to_string()}), "dir"),
        (
            json!({"dir": d.data_dir().parent().expect("parent").display().to_string()}),
            "dir",
        ),
    ];
    for (i, (extra, field)) in cases.into_iter().enumerate() {
        let mut body = json!({"name": format!("bad-{i}"), "runtime": "docker"});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (s, v) = d.post("/v1/workspaces", body.clone()).await;
        assert_eq!(
            (
                s,
                v["error"]["code"].as_str(),
                v["error"]["details"]["field"].as_str()
            ),
            (422, Some("validation_failed"), Some(field)),
            "{body}: {v}"
        );
    }
    let (_, v) = d.get("/v1/workspaces").await;
    assert_eq!(v["items"], json!([]), "nothing was created");
    // And a tmux workspace may not work inside the state directory.
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "in-state", "dir": state.join("launch").display().to_string()}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["details"]["field"].as_str()),
        (422, Some("dir")),
        "{v}"
    );
}

/// A workspace token reads its own workspace only, whatever name the caller chose: a
/// name spelled like another workspace's id is refused at create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_never_alias_ids() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let a = d.running("victim", "exec sleep 600").await;
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": a, "command": ["sleep", "1"]}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("validation_failed")),
        "{v}"
    );
    let (s, _) = d.delete(&format!("/v1/workspaces/{a}?force=true")).await;
    assert_eq!(s, 200);
}

/// Runs `probe` lines (`label command…`) in a shell and writes `label ok|denied` for
/// each to `out`, then sleeps: the script a workspace under test runs.
fn probe_script(checks: &[(&str, String)], out: &str) -> String {
    let mut s = String::from("exec 2>/dev/null\n");
    for (label, command) in checks {
        s.push_str(&format!(
            "if {command} >/dev/null; then echo '{label} ok'; else echo '{label} denied'; fi >> {out}.tmp\n"
        ));
    }
    s.push_str(&format!("mv {out}.tmp {out}\nexec sleep 600\n"));
    s
}

fn outcomes(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The sandbox matrix on this machine's kernel: a `landlock` workspace writes only its
/// own directory and its private temp directory, reads none of berth's state nor
/// another workspace's directory, cannot drive the tmux server, signal or inspect a
/// process outside its sandbox, or (with `network: false`) open a TCP connection; it
/// still reaches the API with its own token when the network is on. A `none`
/// workspace reads the admin token by its path, as docs/security.md says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landlock_workspace_reaches_only_its_own_directory() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let state = d.data_dir().join("state");
    let out = tempfile::tempdir().expect("temp dir");
    // Another workspace, unconfined, with a file in its directory and its pid known.
    let other_pid = out.path().join("other.pid");
    let other = d
        .running(
            "other",
            &format!(
                "echo private > secret.txt; echo $$ > '{}'; exec sleep 600",
                other_pid.display()
            ),
        )
        .await;
    let pid = read_when_written(&other_pid, Duration::from_secs(20))
        .await
        .expect("the other workspace's pid");
    let pid = pid.trim().to_owned();
    let (_, v) = d.get(&format!("/v1/workspaces/{other}")).await;
    let other_dir = v["dir"].as_str().expect("its dir").to_owned();
    let port = d.url.rsplit(':').next().expect("port").to_owned();
    let checks = |result: &str| -> Vec<(&'static str, String)> {
        vec![
            ("read-admin-token", format!("cat '{}/admin.token'", state.display())),
            ("read-db", format!("cat '{}/berth.db'", state.display())),
            ("list-state", format!("ls '{}'", state.display())),
            ("read-other-dir", format!("cat '{other_dir}/secret.txt'")),
            ("tmux-server", format!("tmux -S '{}/tmux.sock' list-sessions", state.display())),
            ("signal-other", format!("kill -0 {pid}")),
            ("read-other-environ", format!("cat /proc/{pid}/environ")),
            ("write-outside", format!("touch '{}/outside-{result}'", d.data_dir().display())),
            ("write-own", "touch ./own.txt".to_owned()),
            ("write-tmp", "touch \"$TMPDIR/tmp.txt\"".to_owned()),
            ("read-system", "cat /etc/hostname".to_owned()),
            ("healthz", format!("busybox wget -q -O- http://127.0.0.1:{port}/healthz")),
            (
                "self",
                "busybox wget -q -O- --header \"Authorization: Bearer $BERTH_WORKSPACE_TOKEN\" \"$BERTH_API_URL/v1/self\"".to_owned(),
            ),
        ]
    };
    let mut seen = BTreeMap::new();
    for (name, sandbox, network) in [
        ("boxed", "landlock", true),
        ("offline", "landlock", false),
        ("open", "none", true),
    ] {
        // In its own directory: the only place (with its temp directory) it may write.
        let script = probe_script(&checks(name), "probe.txt");
        let (s, v) = d
            .post(
                "/v1/workspaces",
                json!({"name": name, "command": ["sh", "-c", script], "sandbox": sandbox, "network": network}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["workspace"]["spec"]["sandbox"], sandbox);
        let id = v["workspace"]["id"].as_str().expect("id").to_owned();
        let (_, v) = d
            .get(&format!(
                "/v1/workspaces/{id}/wait?state=running&timeout=20s"
            ))
            .await;
        assert_eq!(v["reached"], true, "{name}: {v}");
        let (_, v) = d.get(&format!("/v1/workspaces/{id}")).await;
        let result = Path::new(v["dir"].as_str().expect("its dir")).join("probe.txt");
        let text = read_when_written(&result, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{name} wrote no results: {e}"));
        seen.insert(name, outcomes(&text));
        // A session of the sandboxed workspace is sandboxed the same way.
        if name == "boxed" {
            let script = probe_script(&checks("session"), "session-probe.txt");
            let (s, v) = d
                .post(
                    &format!("/v1/workspaces/{id}/sessions"),
                    json!({"name": "probe", "command": ["sh", "-c", script]}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            let text = read_when_written(
                &result.with_file_name("session-probe.txt"),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("the session wrote no results: {e}"));
            seen.insert("boxed-session", outcomes(&text));
        }
    }
    let expect = |name: &str, ok: &[&str]| {
        let got = &seen[name];
        for (label, outcome) in got {
            let want = if ok.contains(&label.as_str()) {
                "ok"
            } else {
                "denied"
            };
            assert_eq!(outcome, want, "{name}: {label} ({got:?})");
        }
        assert_eq!(got.len(), 13, "{name}: {got:?}");
    };
    expect(
        "boxed",
        &["write-own", "write-tmp", "read-system", "healthz", "self"],
    );
    expect("offline", &["write-own", "write-tmp", "read-system"]);
    // Sessions get no workspace token: `/v1/self` is refused (401), the rest as above.
    expect(
        "boxed-session",
        &["write-own", "write-tmp", "read-system", "healthz"],
    );
    // `none`: what the daemon's user can do (docs/security.md), bar the private
    // temp directory it does not have.
    let open = &seen["open"];
    for label in [
        "read-admin-token",
        "read-other-dir",
        "tmux-server",
        "signal-other",
        "write-outside",
        "healthz",
        "self",
    ] {
        assert_eq!(open[label], "ok", "none: {label} ({open:?})");
    }
    assert!(!d.data_dir().join("outside-boxed").exists());
}

/// A sandbox the runtime cannot give is refused at create, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_settings_that_cannot_hold_are_refused() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let cases = [
        (json!({"network": false}), "network"),
        (json!({"sandbox": "none", "network": false}), "network"),
        (json!({"sandbox": "strict"}), "sandbox"),
        (
            json!({"runtime": "docker", "image": "x", "sandbox": "landlock"}),
            "sandbox",
        ),
        (json!({"run_as_root": true}), "run_as_root"),
        (json!({"read_only_root": true}), "read_only_root"),
    ];
    for (i, (extra, field)) in cases.into_iter().enumerate() {
        let mut body = json!({"name": format!("sbx-{i}"), "command": ["true"]});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (s, v) = d.post("/v1/workspaces", body.clone()).await;
        assert_eq!(
            (s, v["error"]["details"]["field"].as_str()),
            (422, Some(field)),
            "{body}: {v}"
        );
    }
}

/// `tests/fixtures/unix-get.c` built static into `dir` (it runs in the busybox image
/// and in a sandbox alike).
fn unix_get(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("unix-get");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/unix-get.c");
    let built = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc runs");
    assert!(
        built.success(),
        "cc -static failed (needs gcc and libc6-dev)"
    );
    out
}

/// Item 5: every workspace reaches the API through its own socket: a container at
/// `/run/berth/api.sock`, a sandboxed tmux workspace at its path, both announced in
/// `BERTH_API_SOCKET`; `GET /v1/self` answers with their own token. A workspace's
/// socket refuses the admin token (401) and another workspace's token (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workspace_reaches_the_api_through_its_own_socket() {
    #![allow(clippy::too_many_lines)]
    let imported = docker_test_image(
        "the Docker half of each_workspace_reaches_the_api_through_its_own_socket",
    );
    let docker = imported.is_some();
    let image = imported.unwrap_or_default();
    let mut d = Daemon::start(&["--docker-image", &image])
        .await
        .expect("daemon");
    let tools = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    unix_get(tools.path());
    let probe = |out: &str| {
        format!(
            "\"$UNIX_GET\" \"$BERTH_API_SOCKET\" /v1/self \"$BERTH_WORKSPACE_TOKEN\" > {out}.tmp; echo >> {out}.tmp; echo \"$BERTH_API_SOCKET\" >> {out}.tmp; mv {out}.tmp {out}; exec sleep 600"
        )
    };
    let mut cases = vec![(
        "sock-tmux",
        json!({"sandbox": "landlock", "dir": tools.path().display().to_string(),
               "env": {"UNIX_GET": tools.path().join("unix-get").display().to_string()}}),
        "tmux.txt",
    )];
    if docker {
        cases.push((
            "sock-docker",
            json!({"runtime": "docker", "dir": tools.path().display().to_string(),
                   "env": {"UNIX_GET": "/workspace/unix-get"}}),
            "docker.txt",
        ));
    }
    let mut ids = Vec::new();
    // Containers and volumes go also when the test fails half-way.
    let mut cleanups = Vec::new();
    for (name, extra, out) in &cases {
        let mut body = json!({"name": name, "command": ["sh", "-c", probe(out)]});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (s, v) = d.post("/v1/workspaces", body).await;
        assert_eq!(s, 201, "{v}");
        let id = v["workspace"]["id"].as_str().expect("id").to_owned();
        cleanups.push(DockerCleanup(id.clone()));
        let text = read_when_written(&tools.path().join(out), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{name} wrote nothing: {e}"));
        assert!(text.starts_with("HTTP/1.1 200"), "{name}: {text}");
        assert!(text.contains(&format!("\"id\":\"{id}\"")), "{name}: {text}");
        let announced = text.lines().last().unwrap_or_default();
        if *name == "sock-docker" {
            assert_eq!(announced, "/run/berth/api.sock");
            // Nothing of the daemon's in the container's environment.
            let docker = |args: &[&str]| {
                std::process::Command::new("docker")
                    .args(args)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_default()
            };
            let container = docker(&[
                "ps",
                "-q",
                "--filter",
                &format!("label=dev.berth.workspace={id}"),
            ]);
            let env = docker(&["inspect", "--format", "{{json .Config.Env}}", &container]);
            assert!(env.contains("BERTH_WORKSPACE_ID"), "{env}");
            assert!(
                !env.contains(&d.token),
                "the admin token is in the container: {env}"
            );
        } else {
            assert_eq!(
                announced,
                d.data_dir()
                    .join("run")
                    .join(&id)
                    .join("api.sock")
                    .display()
                    .to_string()
            );
        }
        ids.push(id);
    }
    // From the host: the admin token is refused on a workspace's socket, and so is
    // another workspace's token.
    let a = &ids[0];
    let socket = d.data_dir().join("run").join(a).join("api.sock");
    let answer = get_over(&socket, "/v1/self", &d.token).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "sock-other", "command": ["sh", "-c", "exec sleep 600"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let other = v["workspace"]["id"].as_str().expect("id").to_owned();
    let (_, v) = d
        .get(&format!(
            "/v1/workspaces/{other}/wait?state=running&timeout=20s"
        ))
        .await;
    assert_eq!(v["reached"], true, "{v}");
    // Its token, read as the workspace sees it. `running` means launched: the command
    // itself may still be starting (its launcher sets up, then runs it).
    let find = || {
        std::fs::read_dir("/proc")
            .expect("proc")
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("environ")).ok())
            .find(|env| {
                env.split(|b| *b == 0)
                    .any(|x| x == format!("BERTH_WORKSPACE_ID={other}").as_bytes())
            })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pid_env = loop {
        match find() {
            Some(env) => break env,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None => panic!("the other workspace's process never started"),
        }
    };
    let token = pid_env
        .split(|b| *b == 0)
        .find_map(|x| x.strip_prefix(b"BERTH_WORKSPACE_TOKEN="))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .expect("its token");
    let answer = get_over(&socket, "/v1/self", &token).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // A daemon restart serves every workspace's socket again, at the same path.
    d.restart().await.expect("restart");
    let own = d.data_dir().join("run").join(&other).join("api.sock");
    let answer = get_over(&own, "/v1/self", &token).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Deleting a workspace removes its socket.
    for id in ids.iter().chain([&other]) {
        let (s, _) = d.delete(&format!("/v1/workspaces/{id}?force=true")).await;
        assert_eq!(s, 200);
    }
    assert!(!socket.exists(), "the socket outlived its workspace");
}

/// Item 7: with a certificate, `berth serve` serves HTTPS, also on a non-loopback
/// address; the CLI talks to it when it trusts the certificate (`--ca-cert`) and
/// refuses it otherwise, and plain HTTP to that port gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_may_listen_beyond_loopback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=berth-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A server certificate, not a CA (rustls refuses a CA as the end entity).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let data = dir.path().join("data");
    let mut serve = tokio::process::Command::new(berth_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env_remove("BERTH_TOKEN")
        .env("BERTH_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("berth serve");
    let stdout = serve.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout);
    let mut first = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first),
    )
    .await
    .expect("a first line")
    .expect("read");
    let port = first
        .trim()
        .strip_prefix("https://0.0.0.0:")
        .unwrap_or_else(|| panic!("an https URL: {first:?}"))
        .to_owned();
    let url = format!("https://127.0.0.1:{port}");
    let cli = |trust: bool| {
        let mut c = tokio::process::Command::new(berth_bin());
        c.args(["ws", "ls", "--json", "--url", &url])
            .env("BERTH_DATA_DIR", &data)
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_URL")
            .env_remove("BERTH_CA_CERT");
        if trust {
            c.arg("--ca-cert").arg(&cert);
        }
        c.output()
    };
    let mut trusted = None;
    for _ in 0..100 {
        let out = cli(true).await.expect("berth");
        if out.status.success() {
            trusted = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let trusted = trusted.expect("the CLI talks HTTPS with the certificate trusted");
    assert!(
        String::from_utf8_lossy(&trusted.stdout).contains('['),
        "{trusted:?}"
    );
    let untrusted = cli(false).await.expect("berth");
    assert!(
        !untrusted.status.success(),
        "an untrusted certificate is refused"
    );
    // Plain HTTP to the HTTPS port: no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), plain.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "plain HTTP was answered");
    let _ = serve.start_kill();
    let _ = serve.wait().await;
    // The engine's tmux server outlives its daemon by design: end it with the test.
    let _ = std::process::Command::new("tmux")
        .arg("-S")
        .arg(data.join("state/tmux.sock"))
        .arg("kill-server")
        .output();
}
