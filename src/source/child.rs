//! Helpers for the commands a source reads a stream from (`btrfs send`,
//! `zfs diff`): their stdout is parsed as it arrives, so their stderr must
//! be read at the same time, or a chatty child blocks on a full pipe.

use std::io::Read;
use std::process::ChildStderr;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// How much of a child's stderr is kept for the error message; the rest is
/// read and dropped.
const KEEP: usize = 16 << 10;

/// A thread that reads a child's stderr to its end.
pub struct StderrTail(Option<Receiver<Vec<u8>>>);

impl StderrTail {
    pub fn spawn(stderr: Option<ChildStderr>) -> StderrTail {
        StderrTail(stderr.map(|mut e| {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    match e.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let room = KEEP.saturating_sub(kept.len());
                            kept.extend_from_slice(&buf[..n.min(room)]);
                        }
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(kept);
            });
            rx
        }))
    }

    /// What the child wrote, on one line. Call after the child exited (or
    /// was killed), when its stderr is closed; if something else still
    /// holds it open, this gives up after a few seconds.
    pub fn text(self) -> String {
        let bytes = self.0.and_then(|rx| rx.recv_timeout(Duration::from_secs(5)).ok()).unwrap_or_default();
        let s = String::from_utf8_lossy(&bytes);
        let one_line = s.trim().replace('\n', " ");
        if bytes.len() >= KEEP { format!("{one_line} [...]") } else { one_line }
    }
}
