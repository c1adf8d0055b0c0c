//! The live progress display of long verbs (`backup`, `restore`, `verify`,
//! `catalog rebuild`, `prune`), drawn from the library's counters
//! (`crate::progress`).
//!
//! - `--progress=auto` (the default): an `indicatif` display on stderr when
//!   stderr is a terminal, and nothing otherwise (a timer's journal, a pipe);
//! - `--progress=json`: one JSON object a line on stderr, once a second and
//!   once at the end, for programs that drive the agent (stdout keeps the
//!   verb's own output and `--json` document);
//! - `--progress=none`: nothing.
//!
//! Log lines are written around the display (`suspend`), never through it.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::progress::{ProgressSnapshot, progress};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    #[default]
    Auto,
    Json,
    None,
}

/// The display of this process, while one is drawn.
static BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Run `f` (a log write) with the display lifted off the terminal.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let bar = BAR.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

/// Shows progress until dropped; drop it before printing the verb's result.
pub struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Display {
    pub fn start(mode: ProgressMode, quiet: bool, verb: &'static str) -> Display {
        let draw = match mode {
            ProgressMode::None => None,
            ProgressMode::Auto if quiet || !std::io::stderr().is_terminal() => None,
            ProgressMode::Auto => Some(false),
            ProgressMode::Json => Some(true),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let Some(json) = draw else { return Display { stop, thread: None } };
        progress().set_watched(true);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || if json { json_loop(verb, &stop2) } else { bar_loop(&stop2) })
            .ok();
        Display { stop, thread }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        progress().set_watched(false);
    }
}

/// Bytes a second over the phase so far, and the seconds left at that rate.
fn rate_and_eta(s: &ProgressSnapshot) -> (u64, Option<u64>) {
    // Under a second, a rate says little and an ETA less.
    if s.phase_secs < 1.0 {
        return (0, None);
    }
    let secs = s.phase_secs;
    let rate = (s.bytes_done as f64 / secs) as u64;
    let eta = if s.bytes_total > 0 && rate > 0 {
        Some(s.bytes_total.saturating_sub(s.bytes_done) / rate)
    } else if s.files_total > 0 && s.files_done > 0 {
        let per_file = secs / s.files_done as f64;
        Some((s.files_total.saturating_sub(s.files_done) as f64 * per_file) as u64)
    } else {
        None
    };
    (rate, eta)
}

fn json_loop(verb: &str, stop: &AtomicBool) {
    let started = Instant::now();
    let emit = |s: &ProgressSnapshot, done: bool| {
        let (rate, eta) = rate_and_eta(s);
        let event = serde_json::json!({
            "event": if done { "done" } else { "progress" },
            "verb": verb,
            "phase": s.phase,
            "files_done": s.files_done,
            "files_total": s.files_total,
            "bytes_done": s.bytes_done,
            "bytes_total": s.bytes_total,
            "bytes_stored": s.bytes_stored,
            "bytes_per_second": rate,
            "eta_seconds": eta,
            "current": s.current,
            "elapsed_seconds": started.elapsed().as_secs_f64(),
        });
        super::logging::write_stderr_line(&event.to_string());
    };
    loop {
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::park_timeout(until - Instant::now());
        }
        let s = progress().snapshot();
        if stop.load(Ordering::Relaxed) {
            emit(&s, true);
            return;
        }
        emit(&s, false);
    }
}

fn bar_loop(stop: &AtomicBool) {
    // With a total, a bar; without (a listing), a spinner.
    let known = indicatif::ProgressStyle::with_template("{prefix:.bold} {wide_bar} {percent:>3}%\n  {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let unknown = indicatif::ProgressStyle::with_template("{prefix:.bold} {spinner}\n  {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(unknown.clone());
    let mut has_total = false;
    if let Ok(mut b) = BAR.lock() {
        *b = Some(bar.clone());
    }
    let mut generation = u64::MAX;
    while !stop.load(Ordering::Relaxed) {
        let s = progress().snapshot();
        if s.generation != generation {
            generation = s.generation;
            bar.reset();
            bar.set_prefix(s.phase.clone());
        }
        let (rate, eta) = rate_and_eta(&s);
        // Bytes when the phase counts them, else files.
        let (pos, len) = if s.bytes_total > 0 { (s.bytes_done, s.bytes_total) } else { (s.files_done, s.files_total) };
        if (len > 0) != has_total {
            has_total = len > 0;
            bar.set_style(if has_total { known.clone() } else { unknown.clone() });
        }
        if has_total {
            bar.set_length(len.max(pos));
        }
        bar.set_position(pos);
        let files = match s.files_total {
            0 => format!("{} files", s.files_done),
            t => format!("{}/{} files", s.files_done, t),
        };
        let bytes = match s.bytes_total {
            0 if s.bytes_done == 0 => String::new(),
            0 => format!(", {}", super::output::human_bytes(s.bytes_done)),
            t => format!(", {}/{}", super::output::human_bytes(s.bytes_done), super::output::human_bytes(t)),
        };
        let stored = match s.bytes_stored {
            0 => String::new(),
            n => format!(", {} uploaded", super::output::human_bytes(n)),
        };
        let rate = if rate > 0 { format!(", {}/s", super::output::human_bytes(rate)) } else { String::new() };
        let eta = eta.map(|e| format!(", ETA {}", human_secs(e))).unwrap_or_default();
        let current = if s.current.is_empty() { String::new() } else { format!("  {}", s.current) };
        bar.set_message(format!("{files}{bytes}{stored}{rate}{eta}{current}"));
        std::thread::park_timeout(Duration::from_millis(200));
    }
    if let Ok(mut b) = BAR.lock() {
        *b = None;
    }
    bar.finish_and_clear();
}

fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_bytes_then_files() {
        let s = ProgressSnapshot { bytes_done: 100, bytes_total: 300, phase_secs: 1.0, ..Default::default() };
        assert_eq!(rate_and_eta(&s), (100, Some(2)));
        let s = ProgressSnapshot { files_done: 10, files_total: 30, phase_secs: 5.0, ..Default::default() };
        assert_eq!(rate_and_eta(&s), (0, Some(10)));
        let s = ProgressSnapshot { files_done: 10, phase_secs: 5.0, ..Default::default() };
        assert_eq!(rate_and_eta(&s).1, None, "no total, no ETA");
        let s = ProgressSnapshot { bytes_done: 100, bytes_total: 300, phase_secs: 0.2, ..Default::default() };
        assert_eq!(rate_and_eta(&s), (0, None), "too early to say");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(61), "1m01s");
        assert_eq!(human_secs(7260), "2h01m");
    }
}
