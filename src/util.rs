//! Small helpers with no better home.

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A UTC timestamp `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn utc_timestamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for all i64 days we meet.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A list of messages that keeps the first `CAP` and counts the rest: a
/// run over millions of unreadable files must not hold millions of strings
/// (the catalog has a row for each anyway).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BoundedList {
    items: Vec<String>,
    total: u64,
}

impl BoundedList {
    pub const CAP: usize = 1000;

    pub fn push(&mut self, s: String) {
        self.total += 1;
        if self.items.len() < Self::CAP {
            self.items.push(s);
        }
    }
    /// Count `n` more that were not kept.
    pub fn add_uncounted(&mut self, n: u64) {
        self.total += n;
    }
    pub fn items(&self) -> &[String] {
        &self.items
    }
    pub fn into_items(self) -> Vec<String> {
        self.items
    }
    pub fn total(&self) -> u64 {
        self.total
    }
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// Test-only crash points: `N2S_FAULT=name:n` kills the process with
/// SIGKILL the n-th time `name` is reached, so crash-safety tests kill the
/// real binary at exact points. Unset, it costs one atomic load.
pub mod fault {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    static PAUSE: OnceLock<Option<(String, std::path::PathBuf)>> = OnceLock::new();

    pub fn hit(name: &str) {
        pause_at(name);
        let spec = SPEC.get_or_init(|| {
            let v = std::env::var("N2S_FAULT").ok()?;
            let (n, count) = v.split_once(':').unwrap_or((&v, "1"));
            Some((n.to_string(), count.parse().unwrap_or(1)))
        });
        if let Some((n, count)) = spec
            && n == name
            && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *count
        {
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    /// `N2S_PAUSE=name` with `N2S_PAUSE_DIR=D`: the first time `name` is
    /// reached, create `D/name.reached` and wait until `D/name.go` exists,
    /// so a test can line two agents up at the same point and release
    /// them together (races made deterministic).
    fn pause_at(name: &str) {
        let spec = PAUSE.get_or_init(|| {
            let n = std::env::var("N2S_PAUSE").ok()?;
            let d = std::env::var_os("N2S_PAUSE_DIR")?;
            Some((n, std::path::PathBuf::from(d)))
        });
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if let Some((n, dir)) = spec
            && n == name
            && !DONE.swap(true, Ordering::SeqCst)
        {
            let _ = std::fs::write(dir.join(format!("{name}.reached")), b"");
            let go = dir.join(format!("{name}.go"));
            let start = std::time::Instant::now();
            while !go.exists() && start.elapsed() < std::time::Duration::from_secs(600) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc_timestamp(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
    }
}
