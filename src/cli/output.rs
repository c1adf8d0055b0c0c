//! Formatting helpers shared by the verbs.

use crate::model::{FileType, Metadata};

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

pub fn time_or_dash(t: Option<i64>) -> String {
    t.map_or_else(|| "-".to_string(), crate::util::utc_timestamp)
}

/// `ls -l` style mode string.
pub fn mode_string(m: &Metadata) -> String {
    let t = match m.ftype {
        FileType::File => '-',
        FileType::Dir => 'd',
        FileType::Symlink => 'l',
        FileType::Fifo => 'p',
        FileType::CharDev => 'c',
        FileType::BlockDev => 'b',
        FileType::Socket => 's',
    };
    let mut s = String::from(t);
    for (shift, special, sc) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (m.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (m.mode & special != 0, x) {
            (true, true) => sc,
            (true, false) => sc.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// A path as JSON: a string when it is UTF-8, else also its bytes in hex.
pub fn path_json(p: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(p) {
        Ok(s) => serde_json::json!(s),
        Err(_) => serde_json::json!({ "lossy": String::from_utf8_lossy(p), "hex": hex::encode(p) }),
    }
}

/// Print one JSON document on stdout.
pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
