//! A small client of the n2s-agent library: it makes files in memory,
//! pushes them as two changesets of a dataset into a new local repository,
//! and pulls them back, whole and one file at a time.
//!
//! `cargo run --example client [DIR]` (default: a new directory under the
//! system's temporary directory). CI runs it (scripts/test).

use anyhow::{Result, ensure};
use n2s_agent::client::{Client, Entry};
use std::io::Cursor;

fn main() -> Result<()> {
    let base = match std::env::args_os().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("n2s-client-example-{}", std::process::id())),
    };
    std::fs::create_dir_all(&base)?;
    let repo = base.join("repo");
    let client = Client::init(repo.to_str().unwrap_or("/nonexistent"), &base.join("key"), &base.join("state"))?;

    // Monday: two files and a link, made in memory.
    // 12 MB that do not compress (xorshift), so dedup is what saves space.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let big: Vec<u8> = (0..12_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let monday = client.push(
        "app-data",
        "monday",
        vec![
            Entry::dir("db", 0o750),
            Entry::file("db/table.bin", 0o640, Cursor::new(big.clone())).with_mtime(1_700_000_000),
            Entry::file("README", 0o644, Cursor::new(b"hello from memory\n".to_vec())),
            Entry::symlink("latest", "db/table.bin"),
        ],
    )?;
    // Tuesday: the big file again with a small change, README gone.
    let mut changed = big.clone();
    changed[6_000_000..6_000_100].fill(7);
    let tuesday = client.push(
        "app-data",
        "tuesday",
        vec![Entry::dir("db", 0o750), Entry::file("db/table.bin", 0o640, Cursor::new(changed.clone()))],
    )?;
    println!("monday: changeset {} uploaded {} bytes", monday.changeset, monday.bytes_uploaded);
    println!("tuesday: changeset {} uploaded {} bytes", tuesday.changeset, tuesday.bytes_uploaded);
    ensure!(tuesday.bytes_uploaded * 4 < monday.bytes_uploaded, "tuesday's push was not deduplicated");

    for c in client.changesets("app-data")? {
        println!("changeset {} {} {}", c.number, c.snapshot, c.status);
    }
    let mut readme = Vec::new();
    client.pull_file("app-data", "monday", "README", &mut readme)?;
    ensure!(readme == b"hello from memory\n", "README came back different");

    let target = base.join("restored-tuesday");
    client.pull("app-data", "tuesday", &target, &[])?;
    ensure!(std::fs::read(target.join("db/table.bin"))? == changed, "db/table.bin came back different");
    ensure!(!target.join("README").exists(), "README was removed on tuesday");
    let found = client.search("app-data", "table", 10)?;
    ensure!(found.len() == 2, "search found {found:?}");
    println!("pulled back and checked; repository in {}", repo.display());
    Ok(())
}
