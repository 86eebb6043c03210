//! `cargo xtask fuzz-api`: schemathesis against a real daemon, from the checked-in
//! OpenAPI document. Every generated request must get an answer that is not a 5xx
//! (`not_a_server_error`): bad input is a 4xx with a stable code, a 5xx is a bug; and
//! every other check schemathesis has (answers match their schemas, documented statuses
//! and content types, refused bad input, the auth), but positive-data acceptance.
//!
//! The daemon runs on its own temp data directory, tmux workspaces sandboxed (`--sandbox
//! auto`), and is stopped (its tmux server too) however the run ends. Streams that stay
//! open by design (SSE events, followed logs, `wait`, WebSocket attach) are left out:
//! their handlers are covered by the black-box tests. Without schemathesis the step
//! says SKIPPED, unless `BERTH_REQUIRE_FUZZ=1` (CI), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A daemon killed (and its tmux server with it) when dropped.
struct Served {
    child: Child,
    data: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGTERM,
        );
        let began = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && began.elapsed() < Duration::from_secs(30)
        {
            pause();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("tmux")
            .env_remove("TMUX")
            .arg("-S")
            .arg(self.data.join("state/tmux.sock"))
            .arg("kill-server")
            .output();
        // Whatever still names the data directory (a tmux server that outlived its
        // kill, a log writer): it is this run's, and goes with it.
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-f")
            .arg(self.data.as_os_str())
            .output();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A short wait between polls (this step is synchronous: no async worker to block).
#[allow(clippy::disallowed_methods, reason = "a synchronous xtask step")]
fn pause() {
    std::thread::sleep(Duration::from_millis(50));
}

fn schemathesis() -> Option<&'static str> {
    ["schemathesis", "st"].into_iter().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

pub fn run(root: &Path) -> Result<()> {
    let Some(st) = schemathesis() else {
        if std::env::var("BERTH_REQUIRE_FUZZ").is_ok_and(|v| v == "1") {
            bail!(
                "BERTH_REQUIRE_FUZZ=1 but schemathesis is not installed (pip install schemathesis)"
            );
        }
        eprintln!(
            "\n*** SKIPPED the API fuzz: schemathesis is not installed (pip install schemathesis) ***\n"
        );
        return Ok(());
    };
    let bin = root.join("target/debug/berth");
    let data = std::env::temp_dir().join(format!("berth-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    let log = root.join("target/fuzz");
    std::fs::create_dir_all(&log)?;
    let child = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sandbox",
            "auto",
            // Generated pools make real members: a few, not hundreds.
            "--pool-capacity",
            "8",
            "--data-dir",
        ])
        .arg(&data)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log.join("daemon.log"))?)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let served = Served { child, data };
    let url_file = served.data.join("state/daemon.url");
    let began = Instant::now();
    let url = loop {
        if let Ok(u) = std::fs::read_to_string(&url_file)
            && !u.trim().is_empty()
        {
            break u.trim().to_owned();
        }
        if began.elapsed() > Duration::from_secs(60) {
            bail!("the daemon wrote no daemon.url within 60 s (see target/fuzz/daemon.log)");
        }
        pause();
    };
    let token = std::fs::read_to_string(served.data.join("state/admin.token"))?
        .trim()
        .to_owned();
    let schema = root.join("docs/openapi.json");
    let report = log.join("schemathesis.log");
    eprintln!("$ {st} run docs/openapi.json --url {url} (report: target/fuzz/schemathesis.log)");
    let status = Command::new(st)
        .arg("run")
        .arg(&schema)
        .args(["--url", &url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // Every check but positive-data acceptance: a schema cannot say that
        // `read_only_root` is refused on the tmux runtime, or that a name is taken.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args([
            "--max-examples",
            "8",
            "--seed",
            "7",
            "--request-timeout",
            "90",
        ])
        .args([
            "--exclude-path-regex",
            "^/v1/events$|/logs$|/wait$|/attach$",
        ])
        // WebSocket only: a plain request is refused by design.
        .args(["--exclude-operation-id", "exec_stream"])
        // Its cache goes under target/, never into the tree.
        .current_dir(&log)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .stdout(std::fs::File::create(&report)?)
        .stderr(Stdio::inherit())
        .status()
        .context("cannot run schemathesis")?;
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let summary: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    eprintln!("{}", summary.join("\n"));
    drop(served);
    if !status.success() {
        bail!("the API fuzz found answers that break the contract (target/fuzz/schemathesis.log)");
    }
    Ok(())
}
