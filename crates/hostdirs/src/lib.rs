//! Workspace directories on the host, shared by the runtimes whose workspace directory
//! lives on this machine (tmux; Docker's bind mounts and volumes): a directory the user
//! brings (never created or deleted by berth), a git worktree the runtime creates under
//! the data directory (removed on delete), or a scratch directory under the data
//! directory. The dirty check is `git status --porcelain` on the directory.
//!
//! Its own crate so that adapters never depend on each other.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_core::model::WorkspaceSpec;
use berth_core::ports::{DirtyReport, RuntimeError};
use tokio::process::Command;

/// Where a workspace's directory is and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkDir {
    /// The user's directory: used as is, never removed.
    User(PathBuf),
    /// A worktree of `repo` the runtime creates and removes.
    Worktree {
        repo: PathBuf,
        path: PathBuf,
        reference: String,
    },
    /// A scratch directory the runtime creates and removes.
    Scratch(PathBuf),
}

impl WorkDir {
    pub fn of(data_dir: &Path, workspace: &str, spec: &WorkspaceSpec) -> Self {
        if let Some(dir) = &spec.dir {
            WorkDir::User(PathBuf::from(dir))
        } else if let Some(git) = &spec.git {
            WorkDir::Worktree {
                repo: PathBuf::from(&git.repo),
                path: data_dir.join("worktrees").join(workspace),
                reference: git.reference.clone(),
            }
        } else {
            WorkDir::Scratch(data_dir.join("workspaces").join(workspace))
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            WorkDir::User(p) | WorkDir::Scratch(p) => p,
            WorkDir::Worktree { path, .. } => path,
        }
    }
}

/// `path` with symlinks resolved as far as it exists, and `.`/`..` removed lexically
/// from the rest (a directory that does not exist yet is judged by where it would be).
pub fn resolved(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return normalized(path);
    };
    if parent.as_os_str().is_empty() {
        return normalized(path);
    }
    normalized(&resolved(parent).join(name))
}

fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether a workspace's `dir` would reach into `protected` (berth's own directory):
/// it lies inside it or, with `or_holding`, holds it (a container given `$HOME` would
/// see `$HOME/.local/share/berth`). Both are compared resolved.
pub fn reaches_into(dir: &Path, protected: &Path, or_holding: bool) -> bool {
    let dir = resolved(dir);
    let protected = resolved(protected);
    dir.starts_with(&protected) || (or_holding && protected.starts_with(&dir))
}

fn other(resource: &Path, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Other {
        resource: resource.display().to_string(),
        message: message.into(),
    }
}

/// Runs git with a timeout; returns (success, stdout bytes, stderr text).
async fn git(
    args: &[&std::ffi::OsStr],
    timeout: Duration,
    resource: &Path,
) -> Result<(bool, Vec<u8>, String), RuntimeError> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| RuntimeError::Timeout {
            operation: format!("git on {}", resource.display()),
            after: timeout,
        })?
        .map_err(|e| other(resource, format!("cannot run git: {e}")))?;
    Ok((
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    ))
}

/// Creates the directory when berth owns it; checks it exists when the user does.
pub async fn prepare(dir: &WorkDir, timeout: Duration) -> Result<(), RuntimeError> {
    match dir {
        WorkDir::User(path) => {
            if tokio::fs::metadata(path)
                .await
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                Ok(())
            } else {
                // The user's input: a 4xx (`validation_failed`), never a runtime fault.
                Err(RuntimeError::BadInput {
                    message: format!(
                        "dir {}: the workspace directory does not exist or is not a directory",
                        path.display()
                    ),
                })
            }
        }
        WorkDir::Scratch(path) => tokio::fs::create_dir_all(path)
            .await
            .map_err(|e| other(path, format!("cannot create: {e}"))),
        WorkDir::Worktree {
            repo,
            path,
            reference,
        } => {
            if tokio::fs::metadata(path.join(".git")).await.is_ok() {
                return Ok(());
            }
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| other(parent, format!("cannot create: {e}")))?;
            }
            let args: [&std::ffi::OsStr; 8] = [
                "-C".as_ref(),
                repo.as_os_str(),
                "worktree".as_ref(),
                "add".as_ref(),
                "--detach".as_ref(),
                "--".as_ref(),
                path.as_os_str(),
                reference.as_ref(),
            ];
            let (ok, _, stderr) = git(&args, timeout, path).await?;
            if ok {
                Ok(())
            } else {
                Err(other(
                    path,
                    format!(
                        "git worktree add of {reference} from {} failed: {stderr}",
                        repo.display()
                    ),
                ))
            }
        }
    }
}

/// Removes what berth created; never a user's directory.
pub async fn cleanup(dir: &WorkDir, timeout: Duration) -> Result<(), RuntimeError> {
    match dir {
        WorkDir::User(_) => Ok(()),
        WorkDir::Scratch(path) => remove_tree(path).await,
        WorkDir::Worktree { repo, path, .. } => {
            if tokio::fs::metadata(path).await.is_ok() {
                let args: [&std::ffi::OsStr; 6] = [
                    "-C".as_ref(),
                    repo.as_os_str(),
                    "worktree".as_ref(),
                    "remove".as_ref(),
                    "--force".as_ref(),
                    path.as_os_str(),
                ];
                let (ok, _, stderr) = git(&args, timeout, path).await?;
                if !ok {
                    tracing::warn!(path = %path.display(), %stderr, "git worktree remove failed; removing the directory");
                    remove_tree(path).await?;
                }
            }
            let prune: [&std::ffi::OsStr; 4] = [
                "-C".as_ref(),
                repo.as_os_str(),
                "worktree".as_ref(),
                "prune".as_ref(),
            ];
            let _ = git(&prune, timeout, path).await;
            Ok(())
        }
    }
}

async fn remove_tree(path: &Path) -> Result<(), RuntimeError> {
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(other(path, format!("cannot remove: {e}"))),
    }
}

/// Uncommitted or untracked files of the directory; clean when it is not a git work
/// tree; an error when it cannot be checked (missing, unreadable).
pub async fn dirty(dir: &WorkDir, timeout: Duration) -> Result<DirtyReport, RuntimeError> {
    let path = dir.path();
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(other(path, "is not a directory")),
        Err(e) => return Err(other(path, format!("cannot be checked: {e}"))),
    }
    let inside: [&std::ffi::OsStr; 4] = [
        "-C".as_ref(),
        path.as_os_str(),
        "rev-parse".as_ref(),
        "--is-inside-work-tree".as_ref(),
    ];
    let (ok, out, stderr) = git(&inside, timeout, path).await?;
    if !ok {
        // Clean only when it really is no git work tree. A worktree berth created, or a
        // directory with a `.git` entry, that git cannot read (its repository moved,
        // its admin directory gone) cannot be checked: never call that clean.
        let has_git = tokio::fs::symlink_metadata(path.join(".git")).await.is_ok();
        if stderr.contains("not a git repository")
            && !has_git
            && !matches!(dir, WorkDir::Worktree { .. })
        {
            return Ok(DirtyReport::Clean);
        }
        return Err(other(path, format!("git rev-parse failed: {stderr}")));
    }
    if out.trim_ascii() != b"true" {
        return Ok(DirtyReport::Clean);
    }
    let status: [&std::ffi::OsStr; 6] = [
        "-C".as_ref(),
        path.as_os_str(),
        "status".as_ref(),
        "--porcelain=v1".as_ref(),
        "-z".as_ref(),
        "--untracked-files=all".as_ref(),
    ];
    let (ok, out, stderr) = git(&status, timeout, path).await?;
    if !ok {
        return Err(other(path, format!("git status failed: {stderr}")));
    }
    let files = porcelain_files(&out);
    Ok(if files.is_empty() {
        DirtyReport::Clean
    } else {
        DirtyReport::Dirty(files)
    })
}

/// Paths of `git status --porcelain=v1 -z` entries (a rename's second path is skipped).
fn porcelain_files(out: &[u8]) -> Vec<String> {
    let mut files = Vec::new();
    let mut entries = out.split(|b| *b == 0).filter(|e| !e.is_empty());
    while let Some(entry) = entries.next() {
        if entry.len() < 4 {
            continue;
        }
        let (code, path) = entry.split_at(3);
        files.push(String::from_utf8_lossy(path).into_owned());
        if code[0] == b'R' || code[0] == b'C' {
            entries.next();
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_entries_give_their_paths() {
        let out = b" M src/main.rs\0?? notes with space.txt\0R  new.rs\0old.rs\0";
        assert_eq!(
            porcelain_files(out),
            vec!["src/main.rs", "notes with space.txt", "new.rs"]
        );
        assert!(porcelain_files(b"").is_empty());
    }

    #[test]
    fn a_dir_reaches_into_berths_directory_however_it_is_spelled() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("state")).unwrap();
        std::fs::create_dir_all(root.path().join("repo")).unwrap();
        std::os::unix::fs::symlink(data.join("state"), root.path().join("link")).unwrap();
        let inside = [
            data.join("state"),
            data.join("state/launch"),
            root.path().join("repo/../data/state"),
            root.path().join("link"),
            root.path().join("link/not-yet"),
        ];
        for dir in inside {
            assert!(reaches_into(&dir, &data, false), "{}", dir.display());
        }
        assert!(!reaches_into(&root.path().join("repo"), &data, true));
        assert!(!reaches_into(&root.path().join("data-other"), &data, true));
        assert!(!reaches_into(root.path(), &data, false));
        assert!(
            reaches_into(root.path(), &data, true),
            "it holds the data dir"
        );
    }
}
