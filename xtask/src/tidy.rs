//! Architecture and hygiene checks that the compiler cannot make.
//!
//! - `berth-core` is pure: it depends on no adapter crate and no I/O crate, and its
//!   sources use no filesystem, process or socket API.
//! - Adapters never depend on each other (shared code gets its own crate).
//! - No file of the engine (`crates/core/src/engine/`) is over 500 lines.
//! - The files of the api crate import each other without a cycle.
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
    adapters_are_independent(root, &mut problems)?;
    engine_files_are_small(root, &mut problems)?;
    no_import_cycles(&root.join("crates/api/src"), &mut problems)?;
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

const ADAPTERS: &[&str] = &["berth-sqlite", "berth-tmux", "berth-docker"];

fn adapters_are_independent(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    for dir in std::fs::read_dir(root.join("crates"))? {
        let dir = dir?.path();
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let own = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = \""))
            .and_then(|n| n.strip_suffix('"'))
            .unwrap_or("");
        if !ADAPTERS.contains(&own) {
            continue;
        }
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            if section != "[dependencies]" {
                continue;
            }
            let name = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
            if ADAPTERS.contains(&name) {
                problems.push(format!(
                    "adapter {own} depends on adapter {name} ({}): move the shared code into its own crate",
                    manifest.display()
                ));
            }
        }
    }
    Ok(())
}

fn engine_files_are_small(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    for file in rust_files(&root.join("crates/core/src/engine"))? {
        let lines = std::fs::read_to_string(&file)?.lines().count();
        if lines > 500 {
            problems.push(format!(
                "{}: {lines} lines; split engine files by concern (at most 500)",
                file.display()
            ));
        }
    }
    Ok(())
}

/// The module path of a file under `src` (`http/mod.rs` is `http`, `lib.rs` is ``).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The module paths a file's `use` lines and `crate::`/`super::` paths name.
fn referenced(text: &str, own: &[String], is_dir_module: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `super` of a file module is its parent; of `x/mod.rs`, the parent of `x`.
    let parent: Vec<String> = if is_dir_module || own.is_empty() {
        own.iter()
            .take(own.len().saturating_sub(1))
            .cloned()
            .collect()
    } else {
        own[..own.len() - 1].to_vec()
    };
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let bytes: Vec<char> = code.chars().collect();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let boundary = i == 0 || !word(bytes[i - 1]);
        if boundary && (rest.starts_with("crate::") || rest.starts_with("super::")) {
            let mut j = i;
            while j < bytes.len() && word(bytes[j]) {
                j += 1;
            }
            let path: String = bytes[i..j].iter().collect();
            let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let mut base = if segs.first() == Some(&"crate") {
                segs.remove(0);
                Vec::new()
            } else {
                let mut b = parent.clone();
                segs.remove(0);
                while segs.first() == Some(&"super") {
                    segs.remove(0);
                    b.pop();
                }
                b
            };
            // `use super::{a, b::C}`: each braced item extends the prefix.
            if j < bytes.len() && bytes[j] == '{' {
                let close = bytes[j..]
                    .iter()
                    .position(|c| *c == '}')
                    .map_or(bytes.len(), |p| j + p);
                let inner: String = bytes[j + 1..close].iter().collect();
                for item in inner.split(',') {
                    let mut p = base.clone();
                    p.extend(segs.iter().map(|s| (*s).to_owned()));
                    p.extend(
                        item.trim()
                            .split("::")
                            .filter(|s| !s.is_empty() && *s != "self")
                            .map(str::to_owned),
                    );
                    out.push(p);
                }
                i = close;
                continue;
            }
            base.extend(segs.iter().map(|s| (*s).to_owned()));
            out.push(base);
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn no_import_cycles(src: &Path, problems: &mut Vec<String>) -> Result<()> {
    use std::collections::{BTreeMap, BTreeSet};
    let files = rust_files(src)?;
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file)?;
        let dir_module = file.file_name().is_some_and(|n| n == "mod.rs");
        for path in referenced(&text, module, dir_module) {
            // The deepest module the path reaches names the file it depends on.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p))
                .unwrap_or_default();
            if &target != module {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| s == m) {
            let names: Vec<String> = stack[at..]
                .iter()
                .chain(std::iter::once(m))
                .map(|s| {
                    if s.is_empty() {
                        "crate".to_owned()
                    } else {
                        s.join("::")
                    }
                })
                .collect();
            cycles.push(names.join(" -> "));
            return;
        }
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, stack, done, cycles);
        }
        stack.pop();
        done.insert(m.clone());
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for m in modules.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    for c in cycles {
        problems.push(format!(
            "{}: an import cycle between files: {c}",
            src.display()
        ));
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
