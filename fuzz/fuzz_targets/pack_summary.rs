//! Pack summary parsing (`core::packsummary`) on hostile bytes, three ways
//! in on every input:
//!
//! 1. raw: the input as a summary's plaintext (`decode`);
//! 2. object: the input as a stored summary object (`open`, under its own
//!    hash as key, so the check that the bytes hash to the key passes and
//!    the seal is what refuses it);
//! 3. crafted: the input compressed and sealed with the key, so `decode`
//!    is reached past the authentication check, as a summary written by a
//!    buggy or hostile holder of the key would be.
//!
//! Never panics. Whatever `decode` accepts names packs in strictly
//! ascending order whose entries lie inside the blob area, in order and
//! without overlap, and encodes back to the very same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use n2s_agent::core::compress::compress;
use n2s_agent::core::pack::{
    padded_len, seal_chunk, PackBuilder, KIND_DATA, MAX_CHUNK_LEN, PACK_MAGIC, TRAILER_LEN,
};
use n2s_agent::core::packsummary::{
    decode, object_key, open, seal, SummarizedPack, SummaryBuilder, MAX_PACKS, SUMMARY_AAD,
};
use n2s_agent::core::seal::SEAL_OVERHEAD;
use n2s_agent::model::ChunkId;

#[path = "../common/mod.rs"]
mod common;

/// What decode promises about what it returns.
fn check(packs: &[SummarizedPack]) {
    for w in packs.windows(2) {
        assert!(w[0].id < w[1].id, "packs out of order or repeated");
    }
    for p in packs {
        let index_len = 5 + 49 * p.entries.len() as u64 + SEAL_OVERHEAD as u64;
        let blob_end = p.size - TRAILER_LEN as u64 - index_len;
        let mut end_of_last = PACK_MAGIC.len() as u64;
        for e in &p.entries {
            assert!(e.offset >= end_of_last, "entry at {} overlaps or precedes {end_of_last}", e.offset);
            let end = e.offset + padded_len(e.sealed_len);
            assert!(end <= blob_end, "entry ends at {end}, past the blob area ending at {blob_end}");
            assert!(e.sealed_len as usize > SEAL_OVERHEAD && e.raw_len <= MAX_CHUNK_LEN);
            end_of_last = end;
        }
    }
}

fn decode_and_check(plain: &[u8]) {
    let Ok(packs) = decode(plain) else { return };
    check(&packs);
    if packs.len() <= MAX_PACKS {
        let mut b = SummaryBuilder::default();
        for p in &packs {
            b.push(&p.id, p.size, &p.entries).expect("the builder takes what decode accepted");
        }
        assert_eq!(b.finish(), plain, "decode then encode changed the bytes");
    }
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let s = common::sealer();
    let mut packs = Vec::new();
    for salt in 0..3u8 {
        let mut b = PackBuilder::new(1 << 14);
        for i in 0..(salt as usize + 1) {
            let plain = vec![salt ^ i as u8; 200 + 50 * i];
            let id = ChunkId([salt.wrapping_mul(16).wrapping_add(i as u8); 32]);
            b.add(id, KIND_DATA, plain.len() as u32, &seal_chunk(s, &id, &plain));
        }
        let p = b.finish(s);
        packs.push((p.id, p.bytes.len() as u64, p.entries));
    }
    packs.sort_by_key(|p| p.0);
    let mut b = SummaryBuilder::default();
    for (id, size, entries) in &packs {
        b.push(id, *size, entries).expect("fits");
    }
    let plain = b.finish();
    let (_, object) = seal(s, &plain);
    vec![("plain-3-packs", plain), ("object-3-packs", object), ("plain-empty", SummaryBuilder::default().finish())]
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let s = common::sealer();
    decode_and_check(data);
    if let Ok(packs) = open(s, &object_key(data), data) {
        check(&packs);
    }
    let crafted = s.seal(SUMMARY_AAD, &compress(data));
    match open(s, &object_key(&crafted), &crafted) {
        Ok(packs) => {
            check(&packs);
            assert!(decode(data).is_ok(), "open accepted what decode refuses");
        }
        Err(_) => assert!(decode(data).is_err(), "open refused what decode accepts"),
    }
});
