//! Architecture and hygiene checks that the compiler cannot make.
//!
//! - `berth-core` is pure: it depends on no adapter crate and no I/O crate, and its
//!   sources use no filesystem, process or socket API.
//! - Every Rust module starts with a `//!` paragraph saying what it is for.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const FORBIDDEN_CORE_DEPS: &[&str] = &[
    "berth-sqlite",
    "berth-tmux",
    "berth-docker",
    "berth",
    "sqlx",
    "bollard",
    "axum",
    "tower-http",
    "hyper",
    "reqwest",
];
const FORBIDDEN_CORE_APIS: &[&str] = &[
    "std::fs",
    "tokio::fs",
    "std::process",
    "tokio::process",
    "std::net",
    "tokio::net",
];

pub fn run(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    core_is_pure(root, &mut problems)?;
    modules_are_documented(root, &mut problems)?;
    if problems.is_empty() {
        eprintln!("tidy: ok");
        return Ok(());
    }
    for p in &problems {
        eprintln!("tidy: {p}");
    }
    bail!("{} tidy problem(s)", problems.len());
}

fn core_is_pure(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    let manifest = std::fs::read_to_string(root.join("crates/core/Cargo.toml"))
        .context("reading crates/core/Cargo.toml")?;
    let mut section = String::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section != "[dependencies]" {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
        if FORBIDDEN_CORE_DEPS.contains(&name) {
            problems.push(format!(
                "berth-core must stay pure but depends on `{name}` (crates/core/Cargo.toml)"
            ));
        }
    }
    for file in rust_files(&root.join("crates/core/src"))? {
        let text = std::fs::read_to_string(&file)?;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for api in FORBIDDEN_CORE_APIS {
                if code.contains(api) {
                    problems.push(format!(
                        "{}:{}: berth-core must do no I/O but uses `{api}`",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    Ok(())
}

fn modules_are_documented(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    for dir in ["crates", "xtask", "tests"] {
        for file in rust_files(&root.join(dir))? {
            let text = std::fs::read_to_string(&file)?;
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            if !first.starts_with("//!") {
                problems.push(format!(
                    "{}: a module must start with a `//!` paragraph saying what it is for",
                    file.display()
                ));
            }
        }
    }
    Ok(())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}
