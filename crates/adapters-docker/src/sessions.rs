//! Sessions as execs in the workspace's container.
//!
//! Docker cannot signal an exec, and killing the exec's first process leaves its
//! children. So a session is started by a short script that runs the command under
//! `setsid`: the session is its own process group, whose leader writes its pid to
//! `/tmp/.berth-sessions/<name>.<generation>.pid`. Output goes to `.log`, the exit
//! code to `.exit` (written by berth when it killed the group). Stop signals the whole
//! group: SIGTERM, then SIGKILL once the grace is over. Every value reaches the
//! scripts as a positional argument, never inside the script text.

use std::time::Duration;

use berth_core::ids::{Generation, Incarnation, SessionName, WorkspaceId};
use berth_core::ports::{
    ConflictReason, OwnedResource, ProcessStatus, ResourceKind, RuntimeError, SessionLaunch,
    SessionRef,
};
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;

use crate::DockerRuntime;

const LAUNCH: &str = r#"
d=/tmp/.berth-sessions; n=$1; g=$2; shift 2
mkdir -p "$d" || exit 90
[ -e "$d/$n.$g.pid" ] && exit 0
for f in "$d/$n".*.pid; do
  [ -e "$f" ] || continue
  o=${f#"$d/$n".}; o=${o%.pid}
  [ -e "$d/$n.$o.exit" ] && continue
  kill -0 "$(cat "$f")" 2>/dev/null && exit 91
done
setsid sh -c 'echo $$ > "$0.pid.tmp" && mv "$0.pid.tmp" "$0.pid"; "$@" > "$0.log" 2>&1; echo $? > "$0.exit.tmp"; mv "$0.exit.tmp" "$0.exit"' "$d/$n.$g" "$@" < /dev/null > /dev/null 2>&1 &
i=0
while [ ! -e "$d/$n.$g.pid" ]; do
  i=$((i+1)); [ "$i" -gt 200 ] && exit 92
  sleep 0.05
done
"#;

const LIST: &str = r#"
d=/tmp/.berth-sessions
[ -d "$d" ] || exit 0
for f in "$d"/*.pid; do
  [ -e "$f" ] || continue
  b=${f##*/}; b=${b%.pid}
  t=$(date -r "$f" +%s 2>/dev/null || echo 0)
  if [ -e "$d/$b.exit" ]; then echo "$b $t exited $(cat "$d/$b.exit")"
  elif kill -0 "$(cat "$f")" 2>/dev/null; then echo "$b $t running -"
  else echo "$b $t exited -"; fi
done
"#;

const STOP: &str = r#"
d=/tmp/.berth-sessions; n=$1; want=$2; t=$3
for f in "$d/$n".*.pid; do
  [ -e "$f" ] || continue
  g=${f#"$d/$n".}; g=${g%.pid}
  [ "$want" = - ] || [ "$g" = "$want" ] || continue
  [ -e "$d/$n.$g.exit" ] && continue
  p=$(cat "$f")
  kill -TERM -- "-$p" 2>/dev/null
  i=0
  while kill -0 -- "-$p" 2>/dev/null && [ "$i" -lt "$t" ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL -- "-$p" 2>/dev/null
  [ -e "$d/$n.$g.exit" ] || echo 143 > "$d/$n.$g.exit"
done
"#;

const CAPTURE: &str = r#"
d=/tmp/.berth-sessions; n=$1; want=$2; lines=$3
if [ "$want" = - ]; then
  for f in "$d/$n".*.log; do
    [ -e "$f" ] || continue
    g=${f#"$d/$n".}; g=${g%.log}
    if [ -z "$want" ] || [ "$want" = - ] || [ "$g" -gt "$want" ]; then want=$g; fi
  done
fi
[ "$want" != - ] && [ -e "$d/$n.$want.log" ] || exit 44
tail -n "$lines" "$d/$n.$want.log"
"#;

/// Runs `script` with `args` in `container` and returns its exit code and output.
async fn run(
    rt: &DockerRuntime,
    container: &str,
    script: &str,
    args: Vec<String>,
    env: Option<Vec<String>>,
    dir: Option<String>,
    limit: Duration,
) -> Result<(i64, Vec<u8>), RuntimeError> {
    let docker = rt.docker().await?;
    let mut cmd = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        "berth".to_owned(),
    ];
    cmd.extend(args);
    let created = rt
        .call(
            "exec create",
            docker.create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd),
                    env,
                    working_dir: dir,
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            ),
        )
        .await?;
    let output = async {
        let mut out = Vec::new();
        if let StartExecResults::Attached { mut output, .. } =
            docker.start_exec(&created.id, None).await?
        {
            while let Some(item) = output.next().await {
                out.extend_from_slice(&item?.into_bytes());
            }
        }
        Ok(out)
    };
    let out = rt.call_within("exec", limit, output).await?;
    let inspected = rt
        .call("exec inspect", docker.inspect_exec(&created.id))
        .await?;
    Ok((inspected.exit_code.unwrap_or(-1), out))
}

/// The scripts' generation argument: the number, or `-` for "whichever".
fn generation_arg(session: &SessionRef) -> String {
    session
        .generation
        .map_or_else(|| "-".to_owned(), |g| g.0.to_string())
}

fn failed(container: &str, what: &str, code: i64, out: &[u8]) -> RuntimeError {
    RuntimeError::Other {
        resource: format!("container {container}"),
        message: format!(
            "{what} failed with exit code {code}: {}",
            String::from_utf8_lossy(out).trim()
        ),
    }
}

pub(crate) async fn launch(
    rt: &DockerRuntime,
    container: &str,
    launch: &SessionLaunch,
) -> Result<(), RuntimeError> {
    let mut args = vec![launch.name.to_string(), launch.generation.0.to_string()];
    args.extend(launch.command.iter().cloned());
    let env = launch.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let (code, out) = run(
        rt,
        container,
        LAUNCH,
        args,
        Some(env),
        launch.dir.clone(),
        rt.config().call_timeout,
    )
    .await?;
    match code {
        0 => Ok(()),
        91 => Err(RuntimeError::Conflict {
            resource: format!("session {} in {container}", launch.name),
            reason: ConflictReason::NameInUse,
            message: "another generation of this session still runs".into(),
        }),
        _ => Err(failed(container, "session launch", code, &out)),
    }
}

pub(crate) async fn list(
    rt: &DockerRuntime,
    container: &str,
    workspace: &WorkspaceId,
    incarnation: Incarnation,
) -> Result<Vec<OwnedResource>, RuntimeError> {
    let (code, out) = match run(
        rt,
        container,
        LIST,
        Vec::new(),
        None,
        None,
        rt.config().call_timeout,
    )
    .await
    {
        Ok(r) => r,
        // Docker refuses an exec in a container that stopped or went away between the
        // listing and now: then it has no sessions. A container that still runs (a
        // paused one refuses execs too) has sessions we cannot see: never report none.
        Err(e @ (RuntimeError::NotFound { .. } | RuntimeError::Conflict { .. })) => {
            return match rt.inspect_name(container).await? {
                Some(c) if crate::is_running(&c) => Err(e),
                _ => Ok(Vec::new()),
            };
        }
        Err(e) => return Err(e),
    };
    if code == 126 || code == 127 {
        // No shell in the image: no session can have been launched in it.
        return Ok(Vec::new());
    }
    if code != 0 {
        return Err(failed(container, "session listing", code, &out));
    }
    let text = String::from_utf8_lossy(&out);
    let mut sessions = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(base), Some(time), Some(state), Some(code)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some((name, generation)) = base.rsplit_once('.') else {
            continue;
        };
        let (Ok(name), Ok(generation)) = (SessionName::parse(name), generation.parse::<u64>())
        else {
            continue;
        };
        let status = if state == "running" {
            ProcessStatus::Running
        } else {
            ProcessStatus::Exited(code.parse().ok())
        };
        sessions.push(OwnedResource {
            workspace_id: workspace.clone(),
            incarnation,
            kind: ResourceKind::Session {
                name,
                generation: Generation(generation),
            },
            created_at: time
                .parse::<i64>()
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .unwrap_or_else(chrono::Utc::now),
            status,
        });
    }
    Ok(sessions)
}

pub(crate) async fn stop(
    rt: &DockerRuntime,
    container: &str,
    session: &SessionRef,
    grace: Duration,
) -> Result<(), RuntimeError> {
    let tenths = grace.as_millis().div_ceil(100).to_string();
    let generation = generation_arg(session);
    let (code, out) = run(
        rt,
        container,
        STOP,
        vec![session.name.to_string(), generation, tenths],
        None,
        None,
        rt.config().call_timeout + grace,
    )
    .await?;
    if code == 0 {
        Ok(())
    } else {
        Err(failed(container, "session stop", code, &out))
    }
}

pub(crate) async fn capture(
    rt: &DockerRuntime,
    container: &str,
    session: &SessionRef,
    lines: usize,
) -> Result<Vec<String>, RuntimeError> {
    let generation = generation_arg(session);
    let (code, out) = run(
        rt,
        container,
        CAPTURE,
        vec![session.name.to_string(), generation, lines.to_string()],
        None,
        None,
        rt.config().call_timeout,
    )
    .await?;
    match code {
        0 => Ok(crate::last_lines(&out, lines)),
        44 => Err(RuntimeError::NotFound {
            resource: format!("session {} in {container}", session.name),
        }),
        _ => Err(failed(container, "session capture", code, &out)),
    }
}
