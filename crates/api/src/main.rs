//! The `berth` binary: `berth serve` runs the daemon; every other command is a client
//! of a running daemon.

#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use berth::cli::{CallError, PoolCommand, SessionCommand, Target, WsCommand};
use clap::{Parser, Subcommand};

/// berth: a workspace lifecycle engine.
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Isolated workspaces (tmux sessions, Docker containers): create, start, stop, restart, delete, and keep them true to their records.",
    long_about = "Isolated workspaces (tmux sessions, Docker containers): create, start, stop, restart, delete, and keep them true to their records.\n\n`berth serve` runs the daemon (HTTP API) in the foreground; every other command talks to it: the daemon of the data directory (its daemon.url), or --url."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (HTTP API) in the foreground.
    Serve(berth::serve::ServeArgs),
    /// Workspaces.
    Ws {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: WsCommand,
    },
    /// Sessions: named extra processes of a workspace.
    Session {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Warm pools: workspaces created (and started) ahead of demand, claimed by creates.
    Pool {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// Bring up the workspaces and sessions a workspace file describes: create what is
    /// missing, start what is stopped, recreate what changed. Run twice, nothing happens.
    Up {
        #[command(flatten)]
        target: Target,
        /// The workspace file (see README).
        #[arg(short = 'f', long, default_value = "berth.toml")]
        file: std::path::PathBuf,
        /// Recreate a changed workspace even when it holds unsaved work.
        #[arg(long)]
        force: bool,
    },
    /// Stop the workspaces of a workspace file (--rm: delete them).
    Down {
        #[command(flatten)]
        target: Target,
        /// The workspace file.
        #[arg(short = 'f', long, default_value = "berth.toml")]
        file: std::path::PathBuf,
        /// Delete them (refused for a workspace with unsaved work, unless --force).
        #[arg(long)]
        rm: bool,
        /// With --rm: delete even with unsaved work.
        #[arg(long, requires = "rm")]
        force: bool,
    },
    /// Lifecycle events (-f follows them live).
    Events {
        #[command(flatten)]
        target: Target,
        /// Follow: stream new events as they happen.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only this workspace (id or name).
        #[arg(long)]
        workspace: Option<String>,
        /// Events after this seq (a number), or of the last duration (`5m`, `2h`).
        #[arg(long, default_value = "0")]
        since: String,
    },
    /// Check tmux, Docker, the data directory and the port.
    Doctor {
        #[command(flatten)]
        target: Target,
        /// Instead of the checks: import the busybox test image into the local Docker
        /// daemon (built from Debian's busybox-static, no registry) and print its name.
        #[arg(long)]
        test_image: bool,
    },
    /// Print a shell completion script: `berth completions bash > /etc/bash_completion.d/berth`
    /// (zsh: into a directory of `$fpath` as `_berth`; fish: `~/.config/fish/completions/berth.fish`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the OpenAPI document.
    #[command(hide = true)]
    Openapi,
    /// Run a command in berth's sandbox (what a sandboxed tmux workspace's launcher
    /// runs under; see docs/security.md).
    #[command(hide = true)]
    SandboxExec {
        /// The policy (JSON, paths only).
        #[arg(long)]
        policy: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<std::ffi::OsString>,
    },
    /// Copy stdin into a tmux workspace's log file, each line with its time, rotated
    /// past a size (what each pane's output is piped through).
    #[command(hide = true)]
    LogPipe {
        /// The log file.
        file: std::path::PathBuf,
    },
}

/// Sandboxes this (still single-threaded) process and execs `argv`; returns only on
/// failure, which the launcher reports as exit 125 without running the command.
fn sandbox_exec(policy: &str, argv: &[std::ffi::OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    let entered = berth_sandbox::parse(policy).and_then(|p| berth_sandbox::enter(&p));
    if let Err(e) = entered {
        eprintln!("berth: {e}; the command was not run");
        return ExitCode::from(125);
    }
    let Some((program, args)) = argv.split_first() else {
        return ExitCode::from(125);
    };
    let e = std::process::Command::new(program).args(args).exec();
    eprintln!("berth: cannot run {}: {e}", program.to_string_lossy());
    ExitCode::from(127)
}

/// A client whose reader went away (`berth events | head -1`) ends quietly with 0,
/// as a pipeline expects, instead of panicking on the failed write.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    // Colour for a person at a terminal only: never in a redirected log, never with
    // NO_COLOR set.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .try_init();
}

fn fail(e: &anyhow::Error, json: bool) -> ExitCode {
    if json {
        // One JSON object on stderr, the API's error shape; `cli_error` for what never
        // reached the API (a daemon that cannot be reached, a bad argument).
        let error = match e.downcast_ref::<CallError>() {
            Some(c) => {
                serde_json::json!({"code": c.code, "message": c.message, "details": c.details})
            }
            None => {
                serde_json::json!({"code": "cli_error", "message": format!("{e:#}"), "details": {}})
            }
        };
        eprintln!("{}", serde_json::json!({ "error": error }));
        return ExitCode::from(berth::cli::exit_code(e));
    }
    match e.downcast_ref::<CallError>() {
        Some(c) => {
            eprintln!("error: {} ({})", c.message, c.code);
            if let Some(files) = c.details.get("files").and_then(|f| f.as_array()) {
                for f in files {
                    eprintln!("  {}", f.as_str().unwrap_or(""));
                }
            }
        }
        None => eprintln!("error: {e:#}"),
    }
    ExitCode::from(berth::cli::exit_code(e))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: a process with threads cannot enter a user namespace.
    if let Command::SandboxExec { policy, argv } = &cli.command {
        return sandbox_exec(policy, argv);
    }
    if let Command::Completions { shell } = &cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(*shell, &mut command, "berth", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if let Command::LogPipe { file } = &cli.command {
        return match berth_tmux::logs::pipe_log(file, berth_tmux::logs::DEFAULT_MAX_BYTES) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth: cannot write {}: {e}", file.display());
                ExitCode::FAILURE
            }
        };
    }
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_on_broken_pipe();
    }
    let json = match &cli.command {
        Command::Ws { target, .. }
        | Command::Session { target, .. }
        | Command::Pool { target, .. }
        | Command::Events { target, .. }
        | Command::Up { target, .. }
        | Command::Down { target, .. }
        | Command::Doctor { target, .. } => target.json,
        _ => false,
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<i32> = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => berth::serve::serve(args).await,
            Command::Ws { target, command } => target.connect()?.ws(command).await,
            Command::Pool { target, command } => target.connect()?.pool(command).await.map(|()| 0),
            Command::Session { target, command } => {
                target.connect()?.session(command).await.map(|()| 0)
            }
            Command::Up {
                target,
                file,
                force,
            } => target.connect()?.run_up(&file, force).await.map(|()| 0),
            Command::Down {
                target,
                file,
                rm,
                force,
            } => target
                .connect()?
                .run_down(&file, rm, force)
                .await
                .map(|()| 0),
            Command::Events {
                target,
                follow,
                workspace,
                since,
            } => target
                .connect()?
                .events(follow, workspace, since)
                .await
                .map(|()| 0),
            Command::Doctor {
                test_image: true, ..
            } => {
                let rt = berth_docker::DockerRuntime::new(berth_docker::DockerConfig::default());
                match berth_docker::test_image::ensure_test_image(&rt).await {
                    Ok(image) => {
                        println!("{image}");
                        Ok(0)
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        Ok(1)
                    }
                }
            }
            Command::Doctor { target, .. } => Ok(berth::cli::doctor::run(&target).await),
            Command::Openapi => {
                print!("{}", berth::http::openapi::document());
                Ok(0)
            }
            Command::SandboxExec { .. } | Command::LogPipe { .. } | Command::Completions { .. } => {
                Ok(125)
            }
        }
    });
    // Do not wait for stray blocking tasks (a stdin read) on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => fail(&e, json),
    }
}
