//! The README's quick start, run literally: the block between the `quickstart-cli`
//! markers is executed line by line against a fresh daemon.

use berth_tests::{Daemon, berth_bin};

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
