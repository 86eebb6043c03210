//! berth's sandbox for local (tmux) workspaces: what Codex CLI does with Landlock and
//! Claude Code with bubblewrap, applied by a launcher to itself just before it runs a
//! workspace's command.
//!
//! [`enter`] turns the calling process (single-threaded: `berth sandbox-exec` calls it
//! before anything else runs) into a sandboxed one, for itself and everything it
//! starts:
//!
//! 1. New user and mount namespaces (and a network namespace when the network is cut),
//!    the caller's uid and gid mapped to themselves. The process keeps its uid for
//!    file access but holds no capability over the host (not even as root).
//! 2. Sockets it must not reach are hidden in that mount namespace: `/dev/null` is
//!    bound over each socket file, an empty read-only tmpfs over each directory. On
//!    kernels before Landlock ABI 9, Landlock does not govern `connect(2)` to a
//!    named UNIX socket, so this is what keeps a workspace off the engine's tmux
//!    server and the Docker socket.
//! 3. A Landlock domain: read and execute in the system directories, read and write in
//!    the workspace's directory and its private temp directory, the single files the
//!    launcher needs, nothing else; no signals to and no abstract UNIX sockets of
//!    processes outside the domain (ABI 6); no TCP at all when the network is cut
//!    (ABI 4); no mounts, no `ptrace` of anything outside.
//!
//! It fails closed: whatever cannot be set up is an error, and the launcher then does
//! not run the command.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible as _, Ruleset,
    RulesetAttr as _, RulesetCreatedAttr as _, RulesetStatus, Scope, path_beneath_rules,
};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

/// The system directories a sandboxed workspace reads and executes from (those that
/// exist on the host).
pub const SYSTEM_DIRS: [&str; 10] = [
    "/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/nix",
];

/// What a sandboxed process may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Directories it reads and executes from.
    pub read: Vec<PathBuf>,
    /// Directories it reads and writes (its own directory, its private temp directory).
    pub write: Vec<PathBuf>,
    /// Single files it may read (the launcher script, the token FIFO).
    pub read_files: Vec<PathBuf>,
    /// Single files it may write; created empty (0600) first when missing.
    pub write_files: Vec<PathBuf>,
    /// Paths made unreachable: sockets it must not connect to (the tmux server's, the
    /// Docker daemon's), and anything else it must not even see.
    pub hide: Vec<PathBuf>,
    /// Whether it may use the network. `false`: a new network namespace (loopback
    /// only, down) and no TCP through Landlock.
    pub network: bool,
}

impl Policy {
    /// The policy of a workspace working in `dir` with the private temp directory
    /// `tmp`: the system directories to read, `/dev` for its terminal and `/dev/null`,
    /// `/proc` to read (Landlock keeps other domains' processes out of reach).
    pub fn for_workspace(dir: &Path, tmp: &Path, network: bool) -> Self {
        let mut read: Vec<PathBuf> = SYSTEM_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        read.push("/proc".into());
        Self {
            read,
            write: vec![dir.to_owned(), tmp.to_owned(), "/dev".into()],
            read_files: Vec::new(),
            write_files: Vec::new(),
            hide: Vec::new(),
            network,
        }
    }
}

/// What the running kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Support {
    /// Landlock filesystem rules (ABI 1 and later).
    pub landlock: bool,
    /// Landlock TCP rules (ABI 4): the network cut without a namespace.
    pub landlock_network: bool,
    /// Landlock scopes (ABI 6): signals and abstract UNIX sockets stay inside.
    pub landlock_scopes: bool,
    /// Landlock governs `connect(2)` to named UNIX sockets (ABI 9); before it, the
    /// sandbox hides sockets in its mount namespace instead.
    pub landlock_unix_sockets: bool,
    /// Unprivileged user namespaces are allowed (or the caller is root).
    pub user_namespaces: bool,
}

impl Support {
    /// Whether `sandbox: landlock` can be enforced here.
    pub fn sandbox(&self) -> bool {
        self.landlock && self.user_namespaces
    }

    /// One line for people (`berth doctor`).
    pub fn describe(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "landlock {}, network rules {}, scopes {}, unix-socket rules {}, user namespaces {}",
            yes(self.landlock),
            yes(self.landlock_network),
            yes(self.landlock_scopes),
            yes(self.landlock_unix_sockets),
            yes(self.user_namespaces)
        )
    }
}

/// Probes the kernel: creates (never enforces) a ruleset per feature with the feature
/// required, and reads the user-namespace switches.
pub fn support() -> Support {
    let fs = |abi: ABI, access: BitFlags<AccessFs>| {
        Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(access)
            .and_then(|r| r.create())
            .is_ok()
            && abi != ABI::Unsupported
    };
    let landlock = fs(ABI::V1, AccessFs::from_all(ABI::V1));
    let landlock_network = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessNet::from_all(ABI::V4))
        .and_then(|r| r.create())
        .is_ok();
    let landlock_scopes = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .scope(Scope::from_all(ABI::V6))
        .and_then(|r| r.create())
        .is_ok();
    let landlock_unix_sockets = fs(ABI::V9, AccessFs::ResolveUnix.into());
    Support {
        landlock,
        landlock_network,
        landlock_scopes,
        landlock_unix_sockets,
        user_namespaces: user_namespaces_allowed(),
    }
}

fn user_namespaces_allowed() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|t| t.trim().to_owned());
    let debian_switch = read("/proc/sys/kernel/unprivileged_userns_clone");
    let max = read("/proc/sys/user/max_user_namespaces");
    debian_switch.is_none_or(|v| v != "0") && max.is_none_or(|v| v != "0")
}

/// Why a sandbox could not be entered.
#[derive(Debug)]
pub struct SandboxError(pub String);

impl std::fmt::Display for SandboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sandbox: {}", self.0)
    }
}

impl std::error::Error for SandboxError {}

fn fail(what: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError(format!("{what}: {e}"))
}

/// What [`enter`] enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforced {
    /// Every Landlock restriction asked for is in force (else some newer ones, which the
    /// namespaces stand in for, are not).
    pub fully: bool,
}

/// Sandboxes the calling process and its future children. Call it from a
/// single-threaded process (user namespaces require it), then exec the command.
///
/// # Errors
/// Anything that could not be set up; the process is then partly restricted and must
/// not run the command.
pub fn enter(policy: &Policy) -> Result<Enforced, SandboxError> {
    for file in &policy.write_files {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(file)
            .map_err(|e| fail(&format!("creating {}", file.display()), e))?;
    }
    namespaces(policy.network)?;
    hide(&policy.hide)?;
    landlock(policy)
}

fn namespaces(network: bool) -> Result<(), SandboxError> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let mut flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS;
    if !network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).map_err(|e| fail("creating the namespaces", e))?;
    let write = |path: &str, text: String| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| fail(&format!("writing {path}"), e))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    // Nothing done here propagates back to the host's mounts.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("making the mounts private", e))
}

fn hide(paths: &[PathBuf]) -> Result<(), SandboxError> {
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue; // nothing there to reach
        };
        let done = if meta.is_dir() {
            nix::mount::mount(
                Some("none"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=4k,mode=0500"),
            )
        } else {
            nix::mount::mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        done.map_err(|e| fail(&format!("hiding {}", path.display()), e))?;
    }
    Ok(())
}

fn landlock(policy: &Policy) -> Result<Enforced, SandboxError> {
    // The newest ABI this crate knows, in best-effort mode: what the kernel lacks is
    // reported as partial enforcement, and the namespaces stand in for it.
    let abi = ABI::V10;
    let err = |e: landlock::RulesetError| fail("landlock", e);
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?;
    if !policy.network {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(err)?;
    }
    let file_rw = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let status = ruleset
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(&policy.read, AccessFs::from_read(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(&policy.write, AccessFs::from_all(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(&policy.read_files, AccessFs::ReadFile))
        .map_err(err)?
        .add_rules(path_beneath_rules(&policy.write_files, file_rw))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    match status.ruleset {
        RulesetStatus::NotEnforced => Err(SandboxError(
            "this kernel does not enforce Landlock (not built in, or not enabled at boot)".into(),
        )),
        RulesetStatus::FullyEnforced => Ok(Enforced { fully: true }),
        RulesetStatus::PartiallyEnforced => Ok(Enforced { fully: false }),
    }
}

/// The policy as one command-line argument, and back.
///
/// # Errors
/// Text that is not a policy.
pub fn parse(text: &str) -> Result<Policy, SandboxError> {
    serde_json::from_str(text).map_err(|e| fail("the policy", e))
}

/// The policy as one command-line argument (paths only: no secret is ever in it).
pub fn encode(policy: &Policy) -> String {
    serde_json::to_string(policy).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_survives_the_command_line() {
        let p = Policy {
            read_files: vec!["/s/launch/bw-x-1.sh".into()],
            write_files: vec!["/s/launch/bw-x.pid".into()],
            hide: vec!["/s/tmux.sock".into()],
            ..Policy::for_workspace(Path::new("/w"), Path::new("/t"), false)
        };
        assert_eq!(parse(&encode(&p)).unwrap(), p);
        assert!(parse("{\"read\": [], \"extra\": 1}").is_err());
        assert!(p.write.contains(&PathBuf::from("/w")) && p.write.contains(&PathBuf::from("/t")));
        assert!(
            !p.read
                .iter()
                .any(|r| r.starts_with("/home") || r == Path::new("/"))
        );
    }
}
