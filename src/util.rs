//! Small helpers with no better home.

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A UTC timestamp `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn utc_timestamp(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) of a day
/// number counted from 1970-01-01 (Howard Hinnant's civil_from_days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m as u32, d as u32)
}

/// The day number (from 1970-01-01) of a proleptic Gregorian date; the
/// inverse of `civil_from_days`.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A duration such as `90s`, `30m` (minutes), `12h`, `7d`, `2w`, `1y`
/// (365 days), or a sum of them (`1d12h`), in seconds. A bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    let bad = || format!("{s:?} is not a duration: write a number and a unit, such as 90s, 30m, 12h, 7d, 2w or 1y");
    let mut total: i64 = 0;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..].bytes().take_while(u8::is_ascii_alphabetic).count();
        if digits == 0 || units == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = match &rest[digits..digits + units] {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "y" => 365 * 86_400,
            _ => return Err(bad()),
        };
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        rest = &rest[digits + units..];
    }
    Ok(total)
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

    #[test]
    fn days_and_dates_round_trip() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = super::civil_from_days(days);
            assert_eq!(super::days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(super::days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn durations() {
        use super::parse_duration as p;
        assert_eq!(p("0"), Ok(0));
        assert_eq!(p("90s"), Ok(90));
        assert_eq!(p("30m"), Ok(1800));
        assert_eq!(p("1d12h"), Ok(129_600));
        assert_eq!(p("2w"), Ok(1_209_600));
        assert_eq!(p("1y"), Ok(31_536_000));
        for bad in ["", "7", "d", "7x", "1d 2h", "-1d", "99999999999999999999d"] {
            assert!(p(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
