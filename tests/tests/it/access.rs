//! Ways into a workspace through the real binary: `ws exec`, `ws logs`, `ws cp` and
//! `ws attach` (in a real terminal: a tmux pane of the test's own server), on tmux and
//! Docker workspaces, with the CLI's exit codes.

use std::process::Command;
use std::time::Duration;

use berth_tests::{
    Daemon, DockerCleanup, Terminal, berth_bin, docker_test_image, read_when_written,
};
use serde_json::json;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_logs_and_cp_reach_a_tmux_workspace_and_keep_its_output_after_it_ends() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let dir = d.data_dir().join("work");
    std::fs::create_dir_all(dir.join("sub")).expect("dir");
    std::fs::write(dir.join("sub/inside.txt"), "from the workspace\n").expect("file");
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "box", "dir": dir, "command": ["sh", "-c",
                "echo first line; echo second line; read x; echo \"read $x\"; exit 3"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = d
        .get("/v1/workspaces/box/wait?state=running&timeout=20s")
        .await;
    assert_eq!((s, &v["reached"]), (200, &json!(true)), "{v}");

    // exec: its directory, stdout and stderr apart, its exit code, stdin with -i.
    let out = d
        .cli(
            &[
                "ws",
                "exec",
                "box",
                "--",
                "sh",
                "-c",
                "pwd; echo oops >&2; exit 7",
            ],
            None,
        )
        .await;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), dir.display().to_string());
    assert_eq!(text(&out.stderr).trim(), "oops");
    let out = d
        .cli(
            &["ws", "exec", "-i", "box", "--", "tr", "a-z", "A-Z"],
            Some(b"shout\n"),
        )
        .await;
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "SHOUT\n")
    );
    // Never the workspace's token, never the daemon's environment.
    let out = d.cli(&["ws", "exec", "box", "--", "env"], None).await;
    let env = text(&out.stdout);
    assert!(env.contains("BERTH_WORKSPACE_ID=ws-"), "{env}");
    assert!(
        !env.contains("BERTH_WORKSPACE_TOKEN") && !env.contains("TMUX="),
        "{env}"
    );

    // The same through the API, run to completion; a timeout kills it.
    let (s, v) = d
        .post(
            "/v1/workspaces/box/exec",
            json!({"command": ["sh", "-c", "cat; echo done >&2"], "stdin": "in\n"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"exit_code": 0, "stdout": "in\n", "stderr": "done\n",
        "truncated": false, "timed_out": false})
    );
    // Bad input is a 4xx and runs nothing (found by schemathesis: a NUL was a 502).
    let (s, v) = d
        .post(
            "/v1/workspaces/box/exec",
            json!({"command": ["echo", "a\u{0}b"]}),
        )
        .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (422, &json!("validation_failed")),
        "{v}"
    );
    let (s, v) = d
        .post("/v1/workspaces/box/exec", json!({"command": []}))
        .await;
    assert_eq!(s, 422, "{v}");
    let pidfile = dir.join("slow.pid");
    let (s, v) = d
        .post(
            "/v1/workspaces/box/exec",
            json!({"command": ["sh", "-c", format!("echo $$ > {}; exec sleep 600", pidfile.display())],
                "timeout": "500ms"}),
        )
        .await;
    assert_eq!((s, &v["timed_out"]), (200, &json!(true)), "{v}");
    let pid = read_when_written(&pidfile, Duration::from_secs(5))
        .await
        .expect("pid");
    let proc = format!("/proc/{}", pid.trim());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(format!("{proc}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "a timed-out command was not killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // cp out (a file, a directory), cp in, and nothing outside the directory.
    let local = d.data_dir().join("here");
    std::fs::create_dir_all(&local).expect("dir");
    let out = d
        .cli(&["ws", "cp", "box:sub", local.to_str().unwrap_or("")], None)
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(local.join("sub/inside.txt")).expect("copied out"),
        "from the workspace\n"
    );
    let copy = local.join("renamed.txt");
    let out = d
        .cli(
            &[
                "ws",
                "cp",
                "box:sub/inside.txt",
                copy.to_str().unwrap_or(""),
            ],
            None,
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(copy.exists());
    std::fs::write(local.join("new.txt"), "from here\n").expect("file");
    let out = d
        .cli(
            &[
                "ws",
                "cp",
                local.join("new.txt").to_str().unwrap_or(""),
                "box:sub",
            ],
            None,
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.join("sub/new.txt")).expect("copied in"),
        "from here\n"
    );
    let out = d
        .cli(&["ws", "cp", "box:../../etc/passwd", "-"], None)
        .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a path leaving the directory: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("(unsupported)"),
        "{}",
        text(&out.stderr)
    );
    // Not an archive: refused as bad input (was a 502), nothing written.
    let before = std::fs::read_dir(dir.join("sub")).expect("dir").count();
    let out = d
        .cli(
            &["ws", "cp", "-", "box:sub"],
            Some(b"this is not a tar archive at all"),
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("validation_failed"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(dir.join("sub")).expect("dir").count(),
        before
    );
    let out = d.cli(&["ws", "cp", "box:missing", "-"], None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // logs: the output so far, with times; then the process ends (exit 3) and its
    // output is still there, and a follow ends with it.
    let out = d.cli(&["ws", "logs", "box", "-T"], None).await;
    let logs = text(&out.stdout);
    assert!(
        logs.contains("first line") && logs.contains("second line"),
        "{logs}"
    );
    assert!(
        logs.lines().all(|l| l.starts_with("20")),
        "every line has its time: {logs}"
    );
    #[allow(clippy::disallowed_methods, reason = "a test's own client task")]
    let follow = tokio::spawn({
        let args: Vec<String> = ["ws", "logs", "box", "-f", "-n", "1"]
            .map(str::to_owned)
            .to_vec();
        let data = d.data_dir().to_owned();
        async move {
            tokio::process::Command::new(berth_bin())
                .args(&args)
                .env("BERTH_DATA_DIR", data)
                .env_remove("BERTH_URL")
                .output()
                .await
                .expect("berth")
        }
    });
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .env_remove("TMUX")
            .arg("-S")
            .arg(d.tmux_socket())
            .args(args)
            .status()
            .expect("tmux")
    };
    // Whenever the follow starts, its last line is the process's last.
    let id = v_id(&d, "box").await;
    let pane = format!("=bw-{}:", id.trim_start_matches("ws-"));
    assert!(tmux(&["send-keys", "-t", &pane, "bye", "Enter"]).success());
    let followed = tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("the follow ends when the process does")
        .expect("joined");
    let followed = text(&followed.stdout);
    assert!(followed.contains("read bye"), "{followed}");
    let (s, v) = d
        .get("/v1/workspaces/box/wait?state=failed&timeout=20s")
        .await;
    assert_eq!(
        (s, &v["reached"]),
        (200, &json!(true)),
        "exit 3 fails it: {v}"
    );
    // The pane is gone; its output is not.
    let (s, v) = d.post("/v1/workspaces/box/stop", json!({})).await;
    assert!(s == 200 || s == 409, "{s} {v}");
    let out = d.cli(&["ws", "logs", "box", "--tail", "2"], None).await;
    assert_eq!(
        text(&out.stdout),
        "bye\nread bye\n",
        "{}",
        text(&out.stderr)
    );
    // An exec on a workspace that does not run: refused (4), as is an unknown one (3).
    let out = d.cli(&["ws", "exec", "box", "--", "true"], None).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("workspace_not_running"));
    let out = d.cli(&["ws", "exec", "nobody", "--", "true"], None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Deleting the workspace deletes its logs.
    let (s, v) = d.delete("/v1/workspaces/box?force=true").await;
    assert_eq!(s, 200, "{v}");
    let logs = std::fs::read_dir(d.data_dir().join("state/logs"))
        .map(|e| e.count())
        .unwrap_or(0);
    assert_eq!(logs, 0, "no log outlives its workspace");
}

async fn v_id(d: &Daemon, name: &str) -> String {
    let (_, v) = d.get(&format!("/v1/workspaces/{name}")).await;
    v["id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_token_execs_in_its_own_workspace_only() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let token_file = d.data_dir().join("token");
    let script = format!(
        "echo \"$BERTH_WORKSPACE_TOKEN\" > {f}.tmp && mv {f}.tmp {f}; exec sleep 600",
        f = token_file.display()
    );
    d.running("mine", &script).await;
    d.running("theirs", "exec sleep 600").await;
    let token = read_when_written(&token_file, Duration::from_secs(20))
        .await
        .expect("token");
    let token = token.trim();
    let body = json!({"command": ["true"]});
    let call = |path: &'static str| {
        d.call_as(Some(token), reqwest::Method::POST, path, Some(body.clone()))
    };
    let (s, v) = call("/v1/workspaces/mine/exec").await;
    assert_eq!((s, &v["exit_code"]), (200, &json!(0)), "{v}");
    let (s, v) = call("/v1/workspaces/theirs/exec").await;
    assert_eq!((s, &v["error"]["code"]), (403, &json!("forbidden")), "{v}");
    let (s, _) = d
        .call_as(
            None,
            reqwest::Method::POST,
            "/v1/workspaces/mine/exec",
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_is_a_real_terminal_on_the_workspace_and_detaches_without_stopping_it() {
    let d = Daemon::start(&[]).await.expect("daemon");
    d.running("talk", "while read l; do echo \"heard $l\"; done")
        .await;
    let (term, done) = Terminal::attached(&d, "talk");
    // The workspace's own tmux client took the terminal: its status line shows.
    term.shows("[bw-").await;
    term.tmux(&["send-keys", "hello there", "Enter"]);
    term.shows("heard hello there").await;
    // Ctrl-] detaches: the CLI exits 0, the workspace runs on.
    term.tmux(&["send-keys", "C-]"]);
    let code = read_when_written(&done, Duration::from_secs(20))
        .await
        .expect("the CLI ended");
    assert_eq!(code.trim(), "0");
    let (_, v) = d.get("/v1/workspaces/talk").await;
    assert_eq!(v["state"], "running", "{v}");
    // It still answers: its terminal was not taken with the client.
    let out = d.cli(&["ws", "logs", "talk", "-n", "1"], None).await;
    assert_eq!(text(&out.stdout).trim(), "heard hello there");
    // Attaching needs a terminal.
    let out = d.cli(&["ws", "attach", "talk"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("needs a terminal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exit_codes_tell_usage_not_found_refused_timeout_and_unreachable_apart() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let out = d.cli(&["ws", "show", "ghost"], None).await;
    assert_eq!(out.status.code(), Some(3), "not found");
    d.running("taken", "exec sleep 600").await;
    let out = d.cli(&["ws", "create", "taken", "--", "true"], None).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "name taken: {}",
        text(&out.stderr)
    );
    let out = d
        .cli(&["ws", "create", "Bad_Name", "--", "true"], None)
        .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "refused input: {}",
        text(&out.stderr)
    );
    let out = d.cli(&["ws", "cp", "a", "b"], None).await;
    assert_eq!(out.status.code(), Some(2), "usage: {}", text(&out.stderr));
    let out = d.cli(&["ws", "frobnicate"], None).await;
    assert_eq!(out.status.code(), Some(2), "clap usage");
    // An op still pending when the wait ends: 5 (it exited 0).
    d.running_ignoring_term("slow").await;
    let out = d
        .cli(&["ws", "stop", "slow", "--timeout", "1ms"], None)
        .await;
    assert_eq!(out.status.code(), Some(5), "timeout: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wait_timeout"),
        "{}",
        text(&out.stderr)
    );
    // A failed op: 1, with the reason.
    let out = d
        .cli(
            &[
                "ws",
                "create",
                "doomed",
                "--dir",
                "/nonexistent/berth-exit",
                "--",
                "true",
            ],
            None,
        )
        .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing dir is refused input: {}",
        text(&out.stderr)
    );
    let out = Command::new(berth_bin())
        .args(["ws", "ls", "--url", "http://127.0.0.1:9", "--token", "x"])
        .output()
        .expect("berth");
    assert_eq!(
        out.status.code(),
        Some(6),
        "unreachable: {}",
        text(&out.stderr)
    );
    let out = Command::new(berth_bin())
        .args([
            "events",
            "-f",
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "x",
        ])
        .output()
        .expect("berth");
    assert_eq!(
        out.status.code(),
        Some(6),
        "unreachable, following: {}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_ids_for_scripts_names_for_people_and_completions_for_shells() {
    let d = Daemon::start(&[]).await.expect("daemon");
    let out = d
        .cli(&["ws", "create", "quiet-one", "--no-start", "-q"], None)
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    assert!(
        id.starts_with("ws-") && !id.contains(' '),
        "only the id: {id:?}"
    );
    let out = d.cli(&["ws", "ls", "-q"], None).await;
    assert_eq!(text(&out.stdout), format!("{id}\n"));
    // Event tables name the workspace.
    let out = d.cli(&["events"], None).await;
    let table = text(&out.stdout);
    assert!(
        table
            .lines()
            .all(|l| l.contains("quiet-one") && !l.contains(&id)),
        "{table}"
    );
    // doctor --json is JSON (it printed text).
    let out = d.cli(&["doctor", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json is JSON");
    assert!(
        v["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["check"] == "tmux")),
        "{v}"
    );
    let out = Command::new(berth_bin())
        .args(["completions", "bash"])
        .output()
        .expect("berth");
    let script = text(&out.stdout);
    assert!(
        out.status.success() && script.contains("attach") && script.contains("complete"),
        "{script}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_logs_cp_and_attach_reach_a_docker_workspace() {
    let Some(image) = docker_test_image("exec_logs_cp_and_attach_reach_a_docker_workspace") else {
        return;
    };
    let d = Daemon::start(&[]).await.expect("daemon");
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "crate", "runtime": "docker", "image": image,
                "command": ["sh", "-c", "echo up; exec sleep 600"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["workspace"]["id"].as_str().unwrap_or_default().to_owned();
    let _cleanup = DockerCleanup(id.clone());
    let (s, v) = d
        .get("/v1/workspaces/crate/wait?state=running&timeout=60s")
        .await;
    assert_eq!((s, &v["reached"]), (200, &json!(true)), "{v}");

    let out = d
        .cli(
            &[
                "ws",
                "exec",
                "crate",
                "--",
                "sh",
                "-c",
                "id -u; pwd; echo e >&2; exit 5",
            ],
            None,
        )
        .await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "65532\n/workspace\n",
        "as the workspace's user"
    );
    assert_eq!(text(&out.stderr), "e\n");

    let local = d.data_dir().join("note.txt");
    std::fs::write(&local, "into the container\n").expect("file");
    let out = d
        .cli(&["ws", "cp", local.to_str().unwrap_or(""), "crate:."], None)
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = d
        .cli(&["ws", "exec", "crate", "--", "cat", "note.txt"], None)
        .await;
    assert_eq!(text(&out.stdout), "into the container\n");
    let back = d.data_dir().join("back.txt");
    let out = d
        .cli(
            &[
                "ws",
                "cp",
                "crate:/workspace/note.txt",
                back.to_str().unwrap_or(""),
            ],
            None,
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&back).expect("copied"),
        "into the container\n"
    );
    let out = d.cli(&["ws", "cp", "crate:/nowhere", "-"], None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    let out = d.cli(&["ws", "logs", "crate", "-T"], None).await;
    let logs = text(&out.stdout);
    assert!(logs.contains(" up"), "{logs}");

    // A session's output, followed until the session ends.
    let (s, v) = d
        .post(
            "/v1/workspaces/crate/sessions",
            json!({"name": "ticker", "command": ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.5; done"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        d.cli(&["ws", "logs", "crate", "ticker", "-f"], None),
    )
    .await
    .expect("the follow ends with the session");
    assert_eq!(
        text(&out.stdout),
        "line 1\nline 2\nline 3\n",
        "{}",
        text(&out.stderr)
    );

    // attach: a shell in the container, on a terminal.
    let (term, done) = Terminal::attached(&d, "crate");
    term.shows("attached to crate").await;
    term.tmux(&["send-keys", "echo $((6*7)) in $(pwd)", "Enter"]);
    term.shows("42 in /workspace").await;
    term.tmux(&["send-keys", "C-]"]);
    let code = read_when_written(&done, Duration::from_secs(20))
        .await
        .expect("the CLI ended");
    assert_eq!(code.trim(), "0");
    let (s, v) = d.delete("/v1/workspaces/crate?force=true").await;
    assert_eq!(s, 200, "{v}");
}
