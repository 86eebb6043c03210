//! Process trees: signalling a pane's process group and every descendant, and telling
//! whether they are gone. Descendants are found through `/proc`, so children that left
//! the process group (setsid) are still stopped.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Whether `pid` still exists (alive or a zombie) and leads its own process group. While
/// it does, its pid — and so the group id — cannot be reused, so signalling the group
/// reaches exactly our processes.
pub(crate) fn leads_group(pid: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = text.rfind(')') else {
        return false;
    };
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    fields.len() > 2 && fields[2].parse() == Ok(pid)
}

/// Sends `signal` to the process group `pgid` (the caller established it is ours).
pub(crate) fn kill_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// Live processes whose process group is `pgid`, by scanning `/proc`: members that
/// outlived the group leader (a `nohup worker &` after its shell exited) are no longer
/// descendants of anything we know, but they are still in the group.
pub(crate) fn group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(close) = text.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
            // state ppid pgrp ...
            if fields.len() > 2 && fields[0] != "Z" && fields[2].parse() == Ok(pgid) {
                out.push(pid);
            }
        }
    }
    out
}

/// `(ppid, state)` of a process, from `/proc/<pid>/stat` (the command name may hold
/// spaces and parentheses, so fields are read after the last `)`).
fn stat(pid: i32) -> Option<(i32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// The command line of `pid` (`/proc/<pid>/cmdline`; it changes when the process
/// execs, also from one shell to another).
pub(crate) fn cmdline(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// Whether `pid` is a live process (zombies count as gone).
pub(crate) fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((_, state)) if state != 'Z' && state != 'X')
}

/// Direct children of `pid` from `/proc/<pid>/task/*/children`, or `None` when the
/// kernel does not provide those files.
fn children(pid: i32) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).ok()?;
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// `root` and all its live descendants: through the `children` files when the kernel
/// has them (cost proportional to the tree), else by scanning every process.
pub(crate) fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        match children(out[i]) {
            Some(kids) => out.extend(kids),
            None if alive(out[i]) => return scan_tree(root),
            None => {}
        }
        i += 1;
    }
    out.retain(|p| alive(*p));
    out
}

/// `tree` by scanning `/proc/*/stat` for parent links.
fn scan_tree(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                && let Some((ppid, state)) = stat(pid)
                && state != 'Z'
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    out.retain(|p| alive(*p));
    out
}

/// Sends `signal` to every pid in `pids` (found alive just before). Processes already
/// gone are ignored. No group-wide `killpg`: a group id whose members are all gone
/// may by now belong to someone else.
pub(crate) fn signal_all(pids: &[i32], signal: Signal) {
    for pid in pids {
        if *pid > 1 {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
    }
}

/// Whether `pid`'s command line names `script` (the launcher that leads a group).
fn runs_script(pid: i32, script: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == script.as_bytes()))
}

/// Whether `pid`'s environment holds exactly the entry `entry` (`NAME=value`).
fn has_env(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

/// The live processes of a group a launcher recorded, proven ours by exact ids, never
/// by a name match: the leader `pgid` only while its command line is the launcher
/// `script`; any other member of the group only when its environment carries `entry`
/// (the workspace id berth gave it). While a member lives, its group id cannot be given
/// to another process, so an unrelated process can neither hold the leader's pid with
/// that command line nor join the group with that environment.
pub(crate) fn recorded_group(pgid: i32, script: &str, entry: &str) -> Vec<i32> {
    if pgid <= 1 {
        return Vec::new();
    }
    let leader = alive(pgid) && runs_script(pgid, script);
    let mut out: Vec<i32> = group(pgid)
        .into_iter()
        .filter(|p| (*p == pgid && leader) || (*p != pgid && has_env(*p, entry)))
        .collect();
    // Descendants that left the group (setsid) but carry the workspace's environment.
    let roots = out.clone();
    for root in roots {
        for p in tree(root) {
            if !out.contains(&p) && has_env(p, entry) {
                out.push(p);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// SIGTERM to `pids`, up to `grace` for them to end, then SIGKILL to what is left
/// (found again, through `find`, so what they spawned meanwhile goes too).
pub(crate) async fn end(pids: Vec<i32>, grace: std::time::Duration, find: impl Fn() -> Vec<i32>) {
    use std::time::Duration;
    if pids.is_empty() {
        return;
    }
    signal_all(&pids, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while pids.iter().any(|p| alive(*p)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut rest: Vec<i32> = pids.into_iter().filter(|p| alive(*p)).collect();
    for p in find() {
        if !rest.contains(&p) {
            rest.push(p);
        }
    }
    if rest.is_empty() {
        return;
    }
    signal_all(&rest, Signal::SIGKILL);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rest.iter().any(|p| alive(*p)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
