//! How far a long operation has come: counters that the engine bumps and a
//! front end reads (the CLI's live display and `--progress=json`; any
//! client of the library can poll `progress()` the same way).
//!
//! The counters are process-wide atomics: bumping one costs a relaxed
//! add, so the engine reports unconditionally and never knows whether
//! anyone looks. Work that exists only to show progress (counting a
//! restore's files up front) is done only when `is_watched()`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct Progress {
    watched: AtomicBool,
    /// Bumped whenever a new phase starts, so a reader knows to reset.
    generation: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    /// Bytes stored to the backend in this phase (packs uploaded).
    bytes_stored: AtomicU64,
    phase: Mutex<String>,
    current: Mutex<Vec<u8>>,
    /// When the phase began (rates and ETAs are over the phase).
    began: Mutex<Option<std::time::Instant>>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProgressSnapshot {
    pub generation: u64,
    pub phase: String,
    pub files_done: u64,
    /// 0 while unknown (a listing in progress).
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_stored: u64,
    /// The file being worked on (lossy UTF-8).
    pub current: String,
    /// Seconds since the phase began.
    pub phase_secs: f64,
}

static PROGRESS: Progress = Progress {
    watched: AtomicBool::new(false),
    generation: AtomicU64::new(0),
    files_done: AtomicU64::new(0),
    bytes_done: AtomicU64::new(0),
    files_total: AtomicU64::new(0),
    bytes_total: AtomicU64::new(0),
    bytes_stored: AtomicU64::new(0),
    phase: Mutex::new(String::new()),
    current: Mutex::new(Vec::new()),
    began: Mutex::new(None),
};

/// The process's progress counters.
pub fn progress() -> &'static Progress {
    &PROGRESS
}

impl Progress {
    /// Say that a front end shows these counters (it enables the extra
    /// work of computing totals).
    pub fn set_watched(&self, on: bool) {
        self.watched.store(on, Ordering::Relaxed);
    }

    pub fn is_watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    /// A new phase (`"backup home: reading"`) with its totals (0: unknown).
    pub fn begin(&self, phase: impl Into<String>, files_total: u64, bytes_total: u64) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.into();
        }
        if let Ok(mut c) = self.current.lock() {
            c.clear();
        }
        if let Ok(mut b) = self.began.lock() {
            *b = Some(std::time::Instant::now());
        }
        self.files_done.store(0, Ordering::Relaxed);
        self.bytes_done.store(0, Ordering::Relaxed);
        self.bytes_stored.store(0, Ordering::Relaxed);
        self.files_total.store(files_total, Ordering::Relaxed);
        self.bytes_total.store(bytes_total, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Totals learnt after the phase began.
    pub fn set_totals(&self, files_total: u64, bytes_total: u64) {
        self.files_total.store(files_total, Ordering::Relaxed);
        self.bytes_total.store(bytes_total, Ordering::Relaxed);
    }

    pub fn add_files(&self, n: u64) {
        self.files_done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_stored(&self, n: u64) {
        self.bytes_stored.fetch_add(n, Ordering::Relaxed);
    }

    /// The file now being worked on. Cheap enough per file: a short lock,
    /// taken only when someone watches.
    pub fn set_current(&self, path: &[u8]) {
        if !self.is_watched() {
            return;
        }
        if let Ok(mut c) = self.current.try_lock() {
            c.clear();
            c.extend_from_slice(path);
        }
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            generation: self.generation.load(Ordering::Relaxed),
            phase: self.phase.lock().map(|p| p.clone()).unwrap_or_default(),
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_stored: self.bytes_stored.load(Ordering::Relaxed),
            current: self.current.lock().map(|c| String::from_utf8_lossy(&c).into_owned()).unwrap_or_default(),
            phase_secs: self.began.lock().ok().and_then(|b| *b).map_or(0.0, |b| b.elapsed().as_secs_f64()),
        }
    }
}
