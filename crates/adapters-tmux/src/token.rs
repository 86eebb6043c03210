//! Handing a secret (the workspace token) to a launcher without writing it to disk: a
//! FIFO (0600, in the state directory) the launcher reads one line from, and the
//! runtime writes once. Nothing is stored: the value only ever sits in the pipe's
//! kernel buffer between the two ends.
//!
//! However the delivery ends (written, timed out, or the launch dropped midway), the
//! FIFO is unlinked and both ends are opened and closed once, so neither side can stay
//! blocked: a writer blocked in `open` is released by our reader, and a launcher that
//! opened it meanwhile reads end-of-file and exits (125) without running the command.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Makes the FIFO (replacing one a failed launch left).
pub(crate) fn make_fifo(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR).map_err(std::io::Error::from)
}

/// A secret waiting for its launcher.
pub(crate) struct Pending {
    fifo: PathBuf,
    value: Option<String>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("fifo", &self.fifo)
            .finish_non_exhaustive()
    }
}

impl Pending {
    pub(crate) fn new(fifo: PathBuf, value: String) -> Self {
        Self {
            fifo,
            value: Some(value),
        }
    }

    /// Writes the secret once the launcher opens the FIFO, within `bound`.
    ///
    /// # Errors
    /// The launcher did not read it in time (it then exits without running anything).
    pub(crate) async fn deliver(mut self, bound: Duration) -> Result<(), String> {
        let Some(value) = self.value.take() else {
            return Ok(());
        };
        let fifo = self.fifo.clone();
        let mut writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // Blocks until the launcher opens its end.
            let mut end = std::fs::OpenOptions::new().write(true).open(&fifo)?;
            end.write_all(format!("{value}\n").as_bytes())
        });
        let outcome = tokio::time::timeout(bound, &mut writer).await;
        // Releases a writer still blocked in `open` (after a timeout) and unlinks.
        release(&self.fifo);
        match outcome {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("writing the token: {e}")),
            Ok(Err(e)) => Err(format!("writing the token: {e}")),
            Err(_) => {
                let _ = writer.await;
                Err(format!(
                    "the launcher did not read its token within {}s",
                    bound.as_secs()
                ))
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Dropped undelivered (the launch failed or was cancelled): nothing may wait.
        if self.value.is_some() {
            release(&self.fifo);
        }
    }
}

/// Opens both ends without blocking (which releases whoever waits in `open` on the
/// other side), unlinks the FIFO, and closes them: a launcher reading now sees
/// end-of-file; one opening later finds no FIFO.
fn release(fifo: &Path) {
    let nonblocking = OFlag::O_NONBLOCK.bits();
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nonblocking)
        .open(fifo);
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nonblocking)
        .open(fifo);
    let _ = std::fs::remove_file(fifo);
    drop(writer);
    drop(reader);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_gets_the_line_and_nothing_stays_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("t.token");
        make_fifo(&fifo).unwrap();
        let path = fifo.clone();
        let reader = std::thread::spawn(move || std::fs::read_to_string(path).unwrap());
        Pending::new(fifo.clone(), "s3cret".into())
            .deliver(Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(reader.join().unwrap(), "s3cret\n");
        assert!(!fifo.exists(), "the FIFO is gone once delivered");
    }

    #[tokio::test]
    async fn no_reader_times_out_without_leaving_a_blocked_writer_or_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("t.token");
        make_fifo(&fifo).unwrap();
        let err = Pending::new(fifo.clone(), "s3cret".into())
            .deliver(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.contains("did not read"), "{err}");
        assert!(!fifo.exists());
    }

    #[test]
    fn a_dropped_delivery_never_leaves_a_reader_waiting_nor_hands_it_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("t.token");
        make_fifo(&fifo).unwrap();
        let path = fifo.clone();
        let (opening, opened) = std::sync::mpsc::channel();
        // A launcher opening its end (blocked in open(2) until a writer comes, when it
        // gets there before the drop), with no delivery ever made.
        let reader = std::thread::spawn(move || {
            let _ = opening.send(());
            std::fs::read_to_string(path)
        });
        opened.recv().unwrap();
        drop(Pending::new(fifo.clone(), "s3cret".into()));
        // It gets end-of-file (or finds no FIFO), never the secret, and never hangs.
        match reader.join().unwrap() {
            Ok(text) => assert_eq!(text, ""),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        }
        assert!(!fifo.exists());
    }
}
