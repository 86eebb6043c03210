//! Output kept past a pane's end. Each tmux session of berth's pipes its pane
//! (`pipe-pane`) into a log file per incarnation (per generation for a session),
//! `<state dir>/logs/<session>-<n>.log`, written by [`pipe_log`] (the `berth log-pipe`
//! helper): one line per output line, prefixed with the time it was read
//! (`2026-12-02T07:31:18.123Z<TAB>text`), rotated to `.log.1` past a size so a chatty
//! workspace cannot fill the disk. When the pane's output ends (the process exited, the
//! session or the server was killed) the writer leaves `<session>-<n>.log.done`, which
//! ends a follow. The files go with the workspace (cleanup); a new incarnation prunes
//! all but the previous one's.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::model::Timestamp;
use berth_core::ports::{LogLine, LogQuery, LogStream, RuntimeError};

/// The size past which a log rotates (two files are kept: at most twice this).
pub const DEFAULT_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// How often a follow looks for new output.
const FOLLOW_PERIOD: Duration = Duration::from_millis(200);

/// The log file of tmux session `name`, incarnation or generation `number`.
pub(crate) fn path(state_dir: &Path, name: &str, number: u64) -> PathBuf {
    state_dir.join("logs").join(format!("{name}-{number}.log"))
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The end marker of the log at `path`.
pub(crate) fn done_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".done");
    PathBuf::from(p)
}

/// Single-quotes `s` for `/bin/sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The shell command `pipe-pane` runs for `path`: the helper when there is one, else
/// `cat` (no times, no rotation); the end marker either way.
pub(crate) fn pipe_command(helper: Option<&Path>, path: &Path) -> String {
    let file = path.to_string_lossy();
    let writer = match helper {
        Some(h) => format!("{} log-pipe {}", quote(&h.to_string_lossy()), quote(&file)),
        None => format!("cat >> {}", quote(&file)),
    };
    format!(
        "{writer}; : > {}",
        quote(&done_path(path).to_string_lossy())
    )
}

/// Whether `file` is a log of tmux session `name` (`<name>-<n>.log[.1|.done]`).
fn log_number(file: &str, name: &str) -> Option<u64> {
    let rest = file.strip_prefix(name)?.strip_prefix('-')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || !matches!(&rest[digits..], ".log" | ".log.1" | ".log.done") {
        return None;
    }
    rest[..digits].parse().ok()
}

/// Makes the log directory and removes the logs of `name` older than `keep_from`
/// (every one when `None`).
pub(crate) async fn prune(state_dir: &Path, name: &str, keep_from: Option<u64>) {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = state_dir.join("logs");
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let file = entry.file_name();
        if let Some(n) = log_number(&file.to_string_lossy(), name)
            && keep_from.is_none_or(|k| n < k)
        {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

/// Copies stdin into `path` line by line, each line prefixed with the time it was
/// read, rotating past `max_bytes`. Returns at end of input (a partial last line is
/// written too).
///
/// # Errors
/// The file cannot be opened or written.
pub fn pipe_log(path: &Path, max_bytes: u64) -> std::io::Result<()> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    let mut file = open()?;
    let mut written = file.metadata()?.len();
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::new(stdin.lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input.by_ref().read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut record = Vec::with_capacity(stamp.len() + line.len() + 2);
        record.extend_from_slice(stamp.as_bytes());
        record.push(b'\t');
        record.extend_from_slice(&line);
        record.push(b'\n');
        if written > 0 && written + record.len() as u64 > max_bytes {
            std::fs::rename(path, rotated(path))?;
            file = open()?;
            written = 0;
        }
        file.write_all(&record)?;
        written += record.len() as u64;
    }
}

/// One stored line: the time and text, or the whole line as text without a time.
fn parse(line: &str) -> LogLine {
    if let Some((stamp, text)) = line.split_once('\t')
        && let Ok(time) = chrono::DateTime::parse_from_rfc3339(stamp)
    {
        return LogLine {
            time: Some(time.with_timezone(&chrono::Utc)),
            text: text.to_owned(),
        };
    }
    LogLine {
        time: None,
        text: line.trim_end_matches('\r').to_owned(),
    }
}

fn wanted(line: &LogLine, since: Option<Timestamp>) -> bool {
    match (since, line.time) {
        (Some(since), Some(t)) => t >= since,
        _ => true,
    }
}

/// The lines of the log at `path` (its rotated part first) that `query` asks for, and
/// the follow position: `None` when there is no log at all.
async fn read_kept(path: &Path, query: &LogQuery) -> Option<(Vec<LogLine>, u64)> {
    let old = tokio::fs::read(rotated(path)).await.unwrap_or_default();
    let current = tokio::fs::read(path).await.ok()?;
    // Only whole lines: a partial last line is read by the follow once complete.
    let complete = current
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let mut lines: Vec<LogLine> = String::from_utf8_lossy(&old)
        .lines()
        .chain(String::from_utf8_lossy(&current[..complete]).lines())
        .map(parse)
        .filter(|l| wanted(l, query.since))
        .collect();
    if let Some(tail) = query.tail {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    Some((lines, complete as u64))
}

/// The log at `path` as `query` asks: `NotFound` when the session never had one.
pub(crate) async fn read(path: PathBuf, query: LogQuery) -> Result<LogStream, RuntimeError> {
    let Some((kept, offset)) = read_kept(&path, &query).await else {
        return Err(RuntimeError::NotFound {
            resource: path.display().to_string(),
        });
    };
    let head = futures_util::stream::iter(kept.into_iter().map(Ok));
    if !query.follow {
        return Ok(Box::pin(head));
    }
    let since = query.since;
    let follow = futures_util::stream::unfold(
        (path, offset, Vec::<u8>::new(), false),
        move |(path, mut offset, mut partial, mut ended)| async move {
            loop {
                if let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    let rest = partial.split_off(i + 1);
                    let line = parse(String::from_utf8_lossy(&partial).trim_end_matches('\n'));
                    partial = rest;
                    if wanted(&line, since) {
                        return Some((Ok(line), (path, offset, partial, ended)));
                    }
                    continue;
                }
                if ended {
                    if partial.is_empty() {
                        return None;
                    }
                    // The writer is done: a last line without its line end.
                    partial.push(b'\n');
                    continue;
                }
                // Look for the end marker before reading, so nothing written before it
                // is missed.
                ended = tokio::fs::try_exists(done_path(&path))
                    .await
                    .unwrap_or(false);
                match tokio::fs::read(&path).await {
                    Ok(bytes) if (bytes.len() as u64) < offset => {
                        // Rotated: the new file starts from nothing.
                        offset = 0;
                        partial.clear();
                        continue;
                    }
                    Ok(bytes) => {
                        let start = usize::try_from(offset)
                            .unwrap_or(usize::MAX)
                            .min(bytes.len());
                        partial.extend_from_slice(&bytes[start..]);
                        offset = bytes.len() as u64;
                    }
                    Err(_) => ended = true,
                }
                if !ended && !partial.contains(&b'\n') {
                    tokio::time::sleep(FOLLOW_PERIOD).await;
                }
            }
        },
    );
    Ok(Box::pin(futures_util::StreamExt::chain(head, follow)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_belong_to_their_session_exactly() {
        assert_eq!(log_number("bw-abc-3.log", "bw-abc"), Some(3));
        assert_eq!(log_number("bw-abc-3.log.1", "bw-abc"), Some(3));
        assert_eq!(log_number("bw-abc-3.log.done", "bw-abc"), Some(3));
        assert_eq!(log_number("bs-abc-foo-bar-2.log", "bs-abc-foo"), None);
        assert_eq!(log_number("bw-abc-3.sh", "bw-abc"), None);
    }

    #[test]
    fn a_stored_line_keeps_its_time_and_a_foreign_line_has_none() {
        let l = parse("2026-12-02T07:31:18.123Z\thello\tworld");
        assert_eq!(l.text, "hello\tworld");
        assert!(l.time.is_some());
        let l = parse("plain\r");
        assert_eq!((l.text.as_str(), l.time), ("plain", None));
    }

    #[tokio::test]
    async fn tail_since_and_follow_read_what_was_written_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("bw-x-1.log");
        std::fs::write(
            rotated(&log),
            "2026-01-01T00:00:00.000Z\told\n2026-06-01T00:00:00.000Z\tmid\n",
        )
        .unwrap();
        std::fs::write(&log, "2026-12-01T00:00:00.000Z\tnew\npartial").unwrap();
        let all = |q: LogQuery| {
            let log = log.clone();
            async move {
                let s = read(log, q).await.unwrap();
                futures_util::StreamExt::collect::<Vec<_>>(s)
                    .await
                    .into_iter()
                    .map(|l| l.unwrap().text)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(all(LogQuery::default()).await, ["old", "mid", "new"]);
        assert_eq!(
            all(LogQuery {
                tail: Some(2),
                ..LogQuery::default()
            })
            .await,
            ["mid", "new"]
        );
        let since = chrono::DateTime::parse_from_rfc3339("2026-05-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            all(LogQuery {
                since: Some(since),
                ..LogQuery::default()
            })
            .await,
            ["mid", "new"]
        );
        // Follow: the partial line completes, the writer ends, the stream ends.
        let follow = read(
            log.clone(),
            LogQuery {
                tail: Some(0),
                follow: true,
                ..LogQuery::default()
            },
        )
        .await
        .unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b" line\n2026-12-01T00:00:01.000Z\tlast")
            .unwrap();
        std::fs::write(done_path(&log), "").unwrap();
        let followed: Vec<String> = futures_util::StreamExt::collect::<Vec<_>>(follow)
            .await
            .into_iter()
            .map(|l| l.unwrap().text)
            .collect();
        assert_eq!(followed, ["partial line", "last"]);
        assert!(matches!(
            read(dir.path().join("none.log"), LogQuery::default()).await,
            Err(RuntimeError::NotFound { .. })
        ));
    }
}
