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
/// The script catches SIGTERM with a no-op trap, so a stop's SIGTERM to the process
/// group does not end the script before the command: the script is the session
/// leader, and its exit would send SIGHUP to the whole group, cutting short a command
/// that handles SIGTERM gracefully. A caught signal is reset to its default in the
/// command (exec resets handlers), so the command sees SIGTERM exactly as sent; the
/// script waits for it, records its status, and exits.
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
        "#!/bin/sh\n# Written by berth: runs one workspace command. Do not edit.\ntrap : TERM\n",
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
        assert!(text.contains("\ntrap : TERM\n"), "{text}");
        assert!(
            text.contains("\nprintf '%s %s\\n' \"$$\" 'v1 en-1 ws-1 1 main - 0 5' > '/d/x.pid'\n"),
            "{text}"
        );
        assert!(text.contains("cd '/w' || exit 126\n"));
        assert!(text.contains("export A='x y'\n"));
        assert!(text.contains("\n'echo' 'a'\\''b'\ncode=$?\n"), "{text}");
        assert!(
            text.ends_with("printf '%s\\n' \"$code\" > '/d/x.exit'\nexit \"$code\"\n"),
            "{text}"
        );
    }
}
