//! Shared by the fuzz targets (each includes it with `#[path]`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use n2s_agent::core::seal::Sealer;

/// The fixed key every target seals and opens with.
pub const KEY: [u8; 32] = [7u8; 32];

pub fn sealer() -> &'static Sealer {
    static S: OnceLock<Sealer> = OnceLock::new();
    S.get_or_init(|| Sealer::new(&KEY))
}

/// Seed corpus support: when `N2S_FUZZ_SEED_DIR` is set (scripts/fuzz-smoke
/// sets it to the target's corpus directory), write each seed there as
/// `seed-NAME` unless that file already exists. Runs from the target's
/// `init:` block, i.e. before libFuzzer reads its corpus directories, so no
/// separate generator binary (and no second build of the crate) is needed.
pub fn write_seeds(make: impl FnOnce() -> Vec<(&'static str, Vec<u8>)>) {
    let Some(dir) = std::env::var_os("N2S_FUZZ_SEED_DIR") else { return };
    let dir = PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("fuzz seeds: cannot create {}: {e}", dir.display());
        return;
    }
    let mut written = 0;
    for (name, bytes) in make() {
        let path = dir.join(format!("seed-{name}"));
        if path.exists() {
            continue;
        }
        match std::fs::write(&path, &bytes) {
            Ok(()) => written += 1,
            Err(e) => eprintln!("fuzz seeds: cannot write {}: {e}", path.display()),
        }
    }
    if written > 0 {
        eprintln!("fuzz seeds: wrote {written} seed(s) to {}", dir.display());
    }
}
