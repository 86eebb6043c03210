//! Project automation: `cargo xtask ci`, `cargo xtask tidy`, `cargo xtask bench`.
//!
//! `ci` is what `.ci/run` and the README's test command run: formatting, clippy with
//! warnings as errors (also on the HTTP API without the daemon feature), the tidy checks, `cargo deny` when it is installed, doctests, the
//! README's quick start, and the whole test suite under nextest.

mod bench;
mod bench_api;
mod bench_pg;
mod bench_pool;
mod bench_sse;
mod bench_tmux;
mod chaos;
mod fuzz;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("tidy") => tidy::run(&root),
        Some("bench") => bench::run(&root, &args[1..]),
        Some("chaos") => chaos::run(&root, &args[1..]),
        Some("openapi") => openapi(&root, args.get(1).map(String::as_str) == Some("--check")),
        Some("test-image") => test_image(&root),
        Some("fuzz-api") => fuzz::run(&root),
        // P7's baseline server, started by `bench`.
        Some("sse-baseline") => bench_sse::serve(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|tidy|bench|chaos|openapi [--check]|test-image|fuzz-api>\n  fuzz-api  schemathesis against a daemon from docs/openapi.json: no 5xx\n  chaos  the daemon under a random workload, killed and faulted, invariants checked (--rounds N --seed S --docker)\n  test-image  imports the busybox test image into the local Docker daemon (no registry)\n  openapi  writes docs/openapi.json from the code (--check: fails when it differs)\n  ci     fmt, clippy, tidy, tests, doctests (the README's test command)\n  tidy   architecture and hygiene checks\n  bench  benchmarks; writes BENCHMARKS.md and target/bench/results.json"
            );
            bail!("unknown or missing command");
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the project root, failing with its name when it fails.
pub fn run(root: &Path, program: &str, args: &[&str]) -> Result<()> {
    run_env(root, program, args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_env(root: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("could not run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn have(program: &str, probe: &[&str]) -> bool {
    Command::new(program)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Docker tests build their image from Debian's static busybox: install it with
/// apt-get when it is missing and we can, else stop with the exact command.
fn ensure_busybox() -> Result<()> {
    if ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .any(|p| Path::new(p).is_file())
    {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let (program, prefix): (&str, &[&str]) = if root {
        ("apt-get", &[])
    } else if have("sudo", &["-n", "true"]) {
        ("sudo", &["-n", "apt-get"])
    } else {
        bail!(
            "the Docker tests need a static busybox; install it with: sudo apt-get install -y busybox-static"
        );
    };
    let mut install: Vec<&str> = prefix.to_vec();
    install.extend(["install", "-y", "--no-install-recommends", "busybox-static"]);
    let direct = Command::new(program)
        .args(&install)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if !direct.is_ok_and(|s| s.success()) {
        let mut update: Vec<&str> = prefix.to_vec();
        update.push("update");
        let _ = Command::new(program).args(&update).status();
        let status = Command::new(program)
            .args(&install)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("installing busybox-static failed; run: sudo apt-get install -y busybox-static");
        }
    }
    Ok(())
}

/// `cargo xtask test-image`: imports the Docker test image.
fn test_image(root: &Path) -> Result<()> {
    ensure_busybox()?;
    run(
        root,
        "cargo",
        &[
            "run",
            "--locked",
            "-q",
            "-p",
            "berth",
            "--bin",
            "berth",
            "--",
            "doctor",
            "--test-image",
        ],
    )
}

fn ci(root: &Path) -> Result<()> {
    ensure_busybox()?;
    run(root, "cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        root,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The HTTP API builds without the daemon's adapters (other teams mount it).
    run(
        root,
        "cargo",
        &[
            "clippy",
            "-p",
            "berth",
            "--no-default-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    tidy::run(root)?;
    if have("cargo", &["deny", "--version"]) {
        run(
            root,
            "cargo",
            &["deny", "check", "bans", "licenses", "sources"],
        )?;
    } else {
        eprintln!(
            "note: cargo-deny is not installed; skipping `cargo deny check` (install with `cargo install cargo-deny`)"
        );
    }
    openapi(root, true)?;
    run(root, "cargo", &["test", "--doc", "--workspace", "--locked"])?;
    // The embedded quick start (library use), as written in the README.
    run(
        root,
        "cargo",
        &[
            "run",
            "--locked",
            "-p",
            "berth-tmux",
            "--example",
            "quickstart",
        ],
    )?;
    // The black-box tests run this binary.
    run(
        root,
        "cargo",
        &["build", "--locked", "-p", "berth", "--bin", "berth"],
    )?;
    // schemathesis from the OpenAPI document: bad input is never a 5xx.
    fuzz::run(root)?;
    // The fault campaign's short run (the long one: `cargo xtask chaos --rounds 200
    // --docker --seed <n>`).
    chaos::run(
        root,
        &["--rounds".into(), "6".into(), "--seed".into(), "11".into()],
    )?;
    // Last, so its summary is the closing line of the run.
    let profile = if std::env::var_os("CI").is_some() {
        "ci"
    } else {
        "default"
    };
    // The PostgreSQL tests: the server of BERTH_TEST_POSTGRES_URL, else a throwaway
    // cluster from Debian's server when it is installed (stopped when this ends);
    // without either they say SKIPPED (and fail where BERTH_REQUIRE_POSTGRES=1).
    let pg = match bench_pg::Postgres::up(root) {
        Ok(pg) => Some(pg),
        Err(e) => {
            eprintln!("note: no PostgreSQL for the store tests: {e:#}");
            None
        }
    };
    let pg_env: Vec<(&str, &str)> = pg
        .as_ref()
        .map(|pg| vec![(berth_postgres::testing::URL_VAR, pg.url())])
        .unwrap_or_default();
    run_env(
        root,
        "cargo",
        &[
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--profile",
            profile,
        ],
        &pg_env,
    )?;
    Ok(())
}

/// Writes `docs/openapi.json` from the code, or with `check` fails when it differs.
fn openapi(root: &Path, check: bool) -> Result<()> {
    eprintln!("$ cargo run -p berth -- openapi");
    let out = Command::new("cargo")
        .args([
            "run", "--locked", "-q", "-p", "berth", "--bin", "berth", "--", "openapi",
        ])
        .current_dir(root)
        .output()
        .context("could not run cargo")?;
    if !out.status.success() {
        bail!(
            "`berth openapi` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = root.join("docs/openapi.json");
    if check {
        let current = std::fs::read(&path).unwrap_or_default();
        if current != out.stdout {
            bail!(
                "docs/openapi.json differs from the document the code generates; run `cargo xtask openapi` and commit it"
            );
        }
        eprintln!("docs/openapi.json matches the code");
        return Ok(());
    }
    std::fs::write(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
