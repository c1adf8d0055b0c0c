//! `Repository::open` on hostile `config` and `config.sealed` objects: the
//! backend controls both. Never panics; every error is one line; an opened
//! repository's chunker parameters are within FastCDC's limits.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use n2s_agent::backend::Backend;
use n2s_agent::backend::memory::MemoryBackend;
use n2s_agent::core::keys::MasterKey;
use n2s_agent::repo::{CONFIG_COPY_KEY, CONFIG_KEY, Repository};

#[path = "../common/mod.rs"]
mod common;

fn key() -> MasterKey {
    MasterKey::from_bytes(common::KEY)
}

/// A real repository's two config objects, made with the fuzz key (once).
fn real() -> &'static (Vec<u8>, Vec<u8>) {
    static REAL: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    REAL.get_or_init(|| {
        let dynb: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        Repository::init(dynb.clone(), &key()).expect("init");
        (dynb.get(CONFIG_KEY, None).expect("config"), dynb.get(CONFIG_COPY_KEY, None).expect("copy"))
    })
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let (cfg, copy) = real();
    let (cfg, copy) = (cfg.clone(), copy.clone());
    let mut both = vec![0u8];
    both.extend_from_slice(&(cfg.len() as u32).to_le_bytes());
    both.extend_from_slice(&cfg);
    both.extend_from_slice(&copy);
    vec![("config-only", [&[1u8][..], &cfg].concat()), ("copy-only", [&[2u8][..], &copy].concat()), ("both", both)]
}

fuzz_target!(
    init: { common::write_seeds(seeds) },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else { return };
        let b = Arc::new(MemoryBackend::new());
        match mode % 3 {
            // Both objects from the input: a length-prefixed config, then the copy.
            0 => {
                if rest.len() < 4 {
                    return;
                }
                let n = (u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize).min(rest.len() - 4);
                b.overwrite(CONFIG_KEY, rest[4..4 + n].to_vec());
                b.overwrite(CONFIG_COPY_KEY, rest[4 + n..].to_vec());
            }
            // A hostile config beside a genuine copy, or a hostile copy alone.
            1 => {
                b.overwrite(CONFIG_KEY, rest.to_vec());
                b.overwrite(CONFIG_COPY_KEY, real().1.clone());
            }
            _ => b.overwrite(CONFIG_COPY_KEY, rest.to_vec()),
        }
        let dynb: Arc<dyn Backend> = b;
        match Repository::open(dynb, &key()) {
            Ok(r) => assert!(r.config.chunker.validate().is_ok(), "opened with bad chunker sizes"),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(!msg.contains('\n'), "a multi-line error: {msg}");
            }
        }
    }
);
