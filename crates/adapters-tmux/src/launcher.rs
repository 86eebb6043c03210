//! Launcher scripts: the command of a workspace or session runs from a script the
//! runtime writes (mode 0700), so no user text is ever part of a tmux argument or an
//! interpreted shell line. Every value is single-quoted for `/bin/sh`, which makes
//! every byte but NUL literal (NUL is refused before it gets here).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// `'...'` with each `'` written as `'\''`: literal for any text without NUL.
pub(crate) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The script's text: cd to `dir`, export `env`, run `argv` (or an interactive shell),
/// then record its exit status in `exit_file` and exit with it. The status is written
/// by the script because a tmux server does not always reap its panes in time to know
/// it (seen with tmux 3.3a: dead panes left as zombies without `pane_dead_status`).
///
/// The script catches SIGTERM with a trap, so a stop's SIGTERM to the process group
/// does not end the script before the command: the script is the session leader, and
/// its exit would send SIGHUP to the whole group, cutting short a command that handles
/// SIGTERM gracefully. A caught signal is reset to its default in the command (exec
/// resets handlers), so the command sees SIGTERM exactly as sent; the script waits for
/// it, records its status, and exits. The trap notes the signal: a stop that comes
/// while the script is still setting up (a stop right after a start) would otherwise be
/// taken by the trap and then miss the command the script starts next, which would run
/// until the stop's grace ran out. So the script checks the note just before the command
/// and ends instead (status 143, as a command ended by SIGTERM). The shell runs a trap's
/// action only between commands, so a signal can still land too late for the check: the
/// stop signals a command that starts after its signal (`LateStart` in the runtime).
///
/// First of all, the script records its process id (the process group's: it leads the
/// pane's group) with `record`'s marker line in `record`'s file, so berth can find and
/// end the group even when the tmux server is gone.
///
/// A secret (`secret`: a variable name and a FIFO) is never in the script: it reads the
/// value from the FIFO, which the runtime writes once, and exports it. Without it the
/// script does not run the command (exit 125).
pub(crate) fn script(
    dir: Option<&str>,
    env: &BTreeMap<String, String>,
    argv: &[String],
    exit_file: &str,
    record: (&str, &str),
    secret: Option<(&str, &str)>,
) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Written by berth: runs one workspace command. Do not edit.\nunset BERTH_STOPPING\ntrap 'BERTH_STOPPING=1' TERM\n",
    );
    let (record_file, mark) = record;
    let _ = writeln!(
        s,
        "printf '%s %s\\n' \"$$\" {} > {}",
        quote(mark),
        quote(record_file)
    );
    if let Some((name, fifo)) = secret {
        // Names are berth's own ([A-Z_]+).
        let _ = writeln!(
            s,
            "IFS= read -r {name} < {} || {{ echo 'berth: {name} was not delivered' >&2; exit 125; }}\nexport {name}",
            quote(fifo)
        );
    }
    if let Some(dir) = dir {
        let _ = writeln!(s, "cd {} || exit 126", quote(dir));
    }
    for (k, v) in env {
        // Names are checked to be [A-Za-z_][A-Za-z0-9_]* before they get here.
        let _ = writeln!(s, "export {k}={}", quote(v));
    }
    // `BERTH_` names are berth's: no user variable can set this one.
    let _ = writeln!(
        s,
        "[ -z \"${{BERTH_STOPPING-}}\" ] || {{ printf '143\\n' > {file}; exit 143; }}",
        file = quote(exit_file)
    );
    if argv.is_empty() {
        s.push_str("\"${SHELL:-/bin/sh}\"");
    } else {
        let words: Vec<String> = argv.iter().map(|a| quote(a)).collect();
        s.push_str(&words.join(" "));
    }
    // A builtin write, no `mv`: a process per stop costs milliseconds, and no reader can
    // see it half-written (the file is read only once the pane is dead, that is after
    // this shell exited; a shell killed mid-write leaves a file that does not parse,
    // read as "no status").
    let _ = write!(
        s,
        "\ncode=$?\nprintf '%s\\n' \"$code\" > {file}\nexit \"$code\"\n",
        file = quote(exit_file)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The note of a stop is the script's own: the same name in the environment it
    /// inherits (from the tmux server, say) neither stops the command nor reaches it.
    #[test]
    fn an_inherited_stop_note_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let text = script(
            None,
            &BTreeMap::new(),
            &[
                "sh".into(),
                "-c".into(),
                format!(
                    "printf '%s' \"${{BERTH_STOPPING-unset}}\" > '{}'",
                    seen.display()
                ),
            ],
            &dir.path().join("exit").display().to_string(),
            (&dir.path().join("record").display().to_string(), "mark"),
            None,
        );
        let path = dir.path().join("launcher");
        std::fs::write(&path, text).unwrap();
        let status = std::process::Command::new("/bin/sh")
            .arg(&path)
            .env("BERTH_STOPPING", "1")
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(0));
        assert_eq!(std::fs::read_to_string(&seen).unwrap(), "unset");
    }

    /// A stop that comes while the script sets up (here: while it waits to write its
    /// record, a FIFO nobody reads until the signal was sent) ends the script before the
    /// command, with status 143 recorded, instead of being lost to the trap.
    #[test]
    fn a_sigterm_before_the_command_starts_ends_the_script_without_running_it() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record");
        let ran = dir.path().join("ran");
        let exit = dir.path().join("exit");
        let status = std::process::Command::new("mkfifo")
            .arg(&record)
            .status()
            .unwrap();
        assert!(status.success());
        let text = script(
            None,
            &BTreeMap::new(),
            &["touch".into(), ran.display().to_string()],
            &exit.display().to_string(),
            (&record.display().to_string(), "mark"),
            None,
        );
        let path = dir.path().join("launcher");
        std::fs::write(&path, text).unwrap();
        /// Kills the script if the test fails before it ended.
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Reap(
            std::process::Command::new("/bin/sh")
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        // The script blocks opening the FIFO for its record, after its trap is set
        // (the kernel's wait for the FIFO's other end: `wait_for_partner`).
        let pid = child.0.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            if wchan == "wait_for_partner" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the script never blocked on its record ({wchan})"
            );
            std::thread::yield_now();
        }
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let code = child.0.wait().unwrap().code();
        assert_eq!(
            code,
            Some(143),
            "the script ended as a command ended by SIGTERM"
        );
        assert!(!ran.exists(), "the command did not run");
        assert_eq!(std::fs::read_to_string(&exit).unwrap(), "143\n");
    }

    #[test]
    fn quoting_keeps_every_character_literal() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(
            quote("$(rm -rf /); `x` \\; \"q\""),
            "'$(rm -rf /); `x` \\; \"q\"'"
        );
    }

    #[test]
    fn the_script_execs_the_argv() {
        let env = BTreeMap::from([("A".to_owned(), "x y".to_owned())]);
        let text = script(
            Some("/w"),
            &env,
            &["echo".into(), "a'b".into()],
            "/d/x.exit",
            ("/d/x.pid", "v1 en-1 ws-1 1 main - 0 5"),
            Some(("BERTH_WORKSPACE_TOKEN", "/d/x.token")),
        );
        assert!(
            text.contains("\nIFS= read -r BERTH_WORKSPACE_TOKEN < '/d/x.token' || { echo 'berth: BERTH_WORKSPACE_TOKEN was not delivered' >&2; exit 125; }\nexport BERTH_WORKSPACE_TOKEN\ncd '/w'"),
            "{text}"
        );
        assert!(
            text.contains("\nunset BERTH_STOPPING\ntrap 'BERTH_STOPPING=1' TERM\n"),
            "{text}"
        );
        assert!(
            text.contains("\nprintf '%s %s\\n' \"$$\" 'v1 en-1 ws-1 1 main - 0 5' > '/d/x.pid'\n"),
            "{text}"
        );
        assert!(text.contains("cd '/w' || exit 126\n"));
        assert!(text.contains("export A='x y'\n[ -z \"${BERTH_STOPPING-}\" ] || { printf '143\\n' > '/d/x.exit'; exit 143; }\n'echo' 'a'\\''b'\ncode=$?\n"), "{text}");
        assert!(
            text.ends_with("printf '%s\\n' \"$code\" > '/d/x.exit'\nexit \"$code\"\n"),
            "{text}"
        );
    }
}
