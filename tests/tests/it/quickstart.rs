//! The README's quick start, run literally: the block between the `quickstart-cli`
//! markers is executed line by line against a fresh daemon.

use std::path::Path;
use std::time::Duration;

use berth_tests::{Daemon, Terminal, berth_bin, read_when_written};

/// Runs an attach line in a real terminal (a pane of the test's own tmux server),
/// detaches with Ctrl-] once the workspace's terminal shows, and checks it exited 0.
async fn attach_in_a_terminal(line: &str, path: &str, data: &Path) {
    let done = data.join("quickstart-attach.exit");
    let script = format!(
        "export PATH='{path}' BERTH_DATA_DIR='{}'; {line}; echo $? > '{}'; sleep 60",
        data.display(),
        done.display()
    );
    let term = Terminal::new(data, &script);
    term.shows("hello from demo").await;
    term.tmux(&["send-keys", "C-]"]);
    let code = read_when_written(&done, Duration::from_secs(20)).await;
    assert_eq!(code.expect("the attach ended").trim(), "0", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let block = readme
        .split("<!-- quickstart-cli -->")
        .nth(1)
        .expect("the README has a quickstart-cli block");
    let commands: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("berth "))
        .collect();
    assert!(commands.len() >= 5, "{commands:?}");
    let d = Daemon::start(&[]).await.expect("daemon");
    let bin_dir = berth_bin().parent().expect("dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for line in commands {
        if line.contains(" ws attach ") {
            let line = line.split(" #").next().unwrap_or(line).trim();
            attach_in_a_terminal(line, &path, d.data_dir()).await;
            continue;
        }
        let out = tokio::process::Command::new("sh")
            .args(["-c", line])
            .env("PATH", &path)
            .env("BERTH_DATA_DIR", d.data_dir())
            .env_remove("BERTH_URL")
            .env_remove("BERTH_TOKEN")
            .output()
            .await
            .expect("sh");
        assert!(
            out.status.success(),
            "{line}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, list) = d.get("/v1/workspaces").await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(0),
        "the quick start cleans up: {list}"
    );
}
