//! `berth doctor`: checks what berth needs on this machine and says what to fix.
//! tmux (present and its version), the Docker daemon (reachable, its API version),
//! the data directory (exists, private) and its token file, the daemon's port, and
//! the health of the running daemon's runtimes.

#![allow(clippy::print_stdout)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::Target;
use crate::serve::{default_data_dir, token_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

fn report(level: Level, what: &str, detail: &str) {
    let tag = match level {
        Level::Ok => "ok  ",
        Level::Warn => "warn",
        Level::Fail => "FAIL",
    };
    println!("[{tag}] {what}: {detail}");
}

fn tmux() -> (Level, String) {
    match std::process::Command::new("tmux").arg("-V").output() {
        Ok(out) if out.status.success() => (
            Level::Ok,
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ),
        Ok(out) => (
            Level::Fail,
            format!(
                "tmux -V failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ),
        Err(e) => (
            Level::Fail,
            format!("tmux not found ({e}); install it: apt-get install tmux"),
        ),
    }
}

/// What the kernel offers `sandbox: landlock` (a warning, not a failure: `none` and
/// `auto` work everywhere).
fn sandbox() -> (Level, String) {
    let support = berth_sandbox::support();
    if support.sandbox() {
        (
            Level::Ok,
            format!("landlock available ({})", support.describe()),
        )
    } else {
        (
            Level::Warn,
            format!(
                "landlock unavailable ({}): sandbox landlock is refused, auto runs unconfined",
                support.describe()
            ),
        )
    }
}

/// How long doctor waits for the Docker daemon: a hung daemon is a finding, not a hang.
const DOCKER_PROBE: Duration = Duration::from_secs(3);

async fn docker() -> (Level, String) {
    let rt = berth_docker::DockerRuntime::new(berth_docker::DockerConfig::default());
    match tokio::time::timeout(DOCKER_PROBE, rt.version()).await {
        Ok(Ok(v)) => (Level::Ok, v),
        Ok(Err(e)) => (
            Level::Warn,
            format!("no Docker daemon ({e}); docker workspaces are unavailable"),
        ),
        Err(_) => (
            Level::Warn,
            format!(
                "the Docker daemon accepts connections but did not answer within {}s (hung?); docker workspaces are degraded, tmux ones are not affected",
                DOCKER_PROBE.as_secs()
            ),
        ),
    }
}

/// The runtimes' health as the running daemon sees it (`/readyz`, admin token).
async fn daemon_runtimes(target: &Target) -> Vec<(Level, String, String)> {
    let Ok(client) = target.connect() else {
        return Vec::new();
    };
    let Ok(ready) = client.get("/readyz").await else {
        return Vec::new();
    };
    let Some(runtimes) = ready["runtimes"].as_object() else {
        return Vec::new();
    };
    runtimes
        .iter()
        .map(|(name, h)| {
            let state = h["state"].as_str().unwrap_or("unknown");
            let level = if state == "degraded" {
                Level::Warn
            } else {
                Level::Ok
            };
            let detail = match h["detail"].as_str() {
                Some(d) => format!("{state} ({d})"),
                None => state.to_owned(),
            };
            (level, format!("daemon runtime {name}"), detail)
        })
        .collect()
}

fn data_dir(dir: &Path) -> Vec<(Level, String, String)> {
    let mut out = Vec::new();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 == 0 {
                out.push((
                    Level::Ok,
                    "data dir".into(),
                    format!("{} (mode {mode:o})", dir.display()),
                ));
            } else {
                out.push((
                    Level::Fail,
                    "data dir".into(),
                    format!(
                        "{} is mode {mode:o}; fix: chmod 700 {}",
                        dir.display(),
                        dir.display()
                    ),
                ));
            }
        }
        Ok(_) => out.push((
            Level::Fail,
            "data dir".into(),
            format!("{} is not a directory", dir.display()),
        )),
        Err(_) => out.push((
            Level::Warn,
            "data dir".into(),
            format!(
                "{} does not exist yet; `berth serve` creates it",
                dir.display()
            ),
        )),
    }
    let token = token_path(dir);
    if let Ok(m) = std::fs::metadata(&token) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            out.push((
                Level::Ok,
                "admin token".into(),
                format!("{} (mode {mode:o})", token.display()),
            ));
        } else {
            out.push((
                Level::Fail,
                "admin token".into(),
                format!(
                    "{} is mode {mode:o}; fix: chmod 600 {}",
                    token.display(),
                    token.display()
                ),
            ));
        }
    }
    out
}

async fn daemon(target: &Target) -> (Level, String) {
    let url = match target.base_url() {
        Ok(url) => url,
        Err(e) => {
            // No daemon of this data directory: say whether one could start on the
            // default address, without talking to whatever listens there.
            let addr = crate::serve::DEFAULT_LISTEN;
            return match std::net::TcpListener::bind(addr) {
                Ok(_) => (Level::Ok, format!("{e}; {addr} is free for `berth serve`")),
                Err(bind) => (
                    Level::Warn,
                    format!(
                        "{e}; {addr} is taken by another process ({bind}): `berth serve --listen` another address"
                    ),
                ),
            };
        }
    };
    let client = reqwest::Client::new();
    match client
        .get(format!("{url}/healthz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => (Level::Ok, format!("a berth daemon answers at {url}")),
        Ok(r) => (Level::Warn, format!("{url} answered HTTP {}", r.status())),
        Err(_) => {
            let addr = url.trim_start_matches("http://");
            match std::net::TcpListener::bind(addr) {
                Ok(_) => (
                    Level::Ok,
                    format!("no daemon running; {addr} is free for `berth serve`"),
                ),
                Err(e) => (
                    Level::Fail,
                    format!("no berth daemon answers at {url} but the port is taken ({e})"),
                ),
            }
        }
    }
}

/// Runs every check; returns the exit code (1 when something failed).
pub async fn run(target: &Target) -> i32 {
    let mut worst = Level::Ok;
    // With --json, one object at the end: `{"items": [{check, status, detail}], "ok"}`.
    let mut checks = Vec::new();
    let mut note = |level: Level, what: &str, detail: &str| {
        if target.json {
            let status = match level {
                Level::Ok => "ok",
                Level::Warn => "warn",
                Level::Fail => "fail",
            };
            checks.push(serde_json::json!({"check": what, "status": status, "detail": detail}));
        } else {
            report(level, what, detail);
        }
        if level == Level::Fail || (level == Level::Warn && worst == Level::Ok) {
            worst = level;
        }
    };
    let (l, d) = tmux();
    note(l, "tmux", &d);
    let (l, d) = sandbox();
    note(l, "sandbox", &d);
    let (l, d) = docker().await;
    note(l, "docker", &d);
    match target.data_dir.clone().map_or_else(default_data_dir, Ok) {
        Ok(dir) => {
            for (l, what, d) in data_dir(&dir) {
                note(l, &what, &d);
            }
        }
        Err(e) => note(Level::Fail, "data dir", &e.to_string()),
    }
    let (l, d) = daemon(target).await;
    note(l, "daemon", &d);
    if l == Level::Ok && d.starts_with("a berth daemon answers") {
        for (l, what, d) in daemon_runtimes(target).await {
            note(l, &what, &d);
        }
    }
    if target.json {
        println!(
            "{}",
            serde_json::json!({"items": checks, "next_cursor": null, "ok": worst != Level::Fail})
        );
    }
    i32::from(worst == Level::Fail)
}
