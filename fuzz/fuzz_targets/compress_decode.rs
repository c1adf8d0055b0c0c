//! `core::compress::decompress` on hostile payloads: never panics, never
//! returns more than `max_len` bytes; and compress/decompress round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use n2s_agent::core::compress::{compress, decompress};

#[path = "../common/mod.rs"]
mod common;

const MAX: usize = 1 << 20;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let text = b"all work and no play makes jack a dull boy ".repeat(200);
    let noise: Vec<u8> = (0u32..700).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    vec![
        ("zstd-text", compress(&text)),
        ("stored-noise", compress(&noise)),
        ("stored-small", compress(b"hello")),
        ("empty-stored", vec![0]),
        ("empty", Vec::new()),
    ]
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    if let Ok(out) = decompress(data, MAX) {
        assert!(out.len() <= MAX, "decompress returned {} bytes, over its limit {MAX}", out.len());
    }
    // A tight limit, as open_chunk uses (the index's raw_len).
    if let Some(&lim) = data.last() {
        if let Ok(out) = decompress(data, lim as usize) {
            assert!(out.len() <= lim as usize, "decompress returned {} bytes, over its limit {lim}", out.len());
        }
    }
    // Round trip of the fuzz bytes as plaintext.
    let c = compress(data);
    let back = decompress(&c, data.len()).expect("decompress(compress(x), x.len()) must succeed");
    assert_eq!(back, data, "compress/decompress round trip changed the data");
});
