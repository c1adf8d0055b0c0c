//! Pack parsing on hostile bytes. Three ways in, all on every input:
//!
//! 1. raw: the input as a whole pack / trailer / sealed index;
//! 2. builder: the input drives a `PackBuilder` (real sealed chunks and
//!    junk blobs), then edits the finished pack at input-chosen positions;
//! 3. crafted index: the input writes an index (hostile offsets, lengths,
//!    counts) that is sealed with the key, so `open_index` validation is
//!    reached past the authentication check.
//!
//! Never panics. Whatever `parse_pack` accepts lies inside the blob area,
//! in order, without overlap; `open_chunk` on it never panics either.
#![no_main]

use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use n2s_agent::core::pack::{
    index_len_from_trailer, open_chunk, open_index, parse_pack, seal_chunk, PackBuilder, PackEntry, PackId,
    KIND_DATA, MAX_CHUNK_LEN, PACK_MAGIC, TRAILER_LEN, TRAILER_MAGIC,
};
use n2s_agent::core::seal::{Sealer, SEAL_OVERHEAD};
use n2s_agent::model::ChunkId;

#[path = "../common/mod.rs"]
mod common;

/// The index's associated data (private in core::pack; keep in sync).
use n2s_agent::core::pack::INDEX_AAD;
const INDEX_VERSION: u8 = 1;

/// What parse_pack/open_index promise about the entries they return.
fn check_entries(entries: &[PackEntry], index_offset: u64) {
    let mut end_of_last = PACK_MAGIC.len() as u64;
    for e in entries {
        assert!(e.offset >= end_of_last, "entry at {} overlaps or precedes {end_of_last}", e.offset);
        // A blob takes its Padmé-padded length in the pack.
        let end = e.offset.saturating_add(n2s_agent::core::pack::padded_len(e.sealed_len));
        assert!(end <= index_offset, "entry ends at {end}, past the index at {index_offset}");
        assert!(e.sealed_len as usize > SEAL_OVERHEAD, "entry of {} sealed bytes", e.sealed_len);
        assert!(e.raw_len <= MAX_CHUNK_LEN, "entry raw_len {}", e.raw_len);
        end_of_last = end;
    }
}

/// parse_pack, then what a reader does with its answer: slice each blob and
/// open it. Also the ranged-read path of Repo::read_pack_index.
fn parse_and_open(s: &Sealer, bytes: &[u8]) -> Option<Vec<(PackEntry, Vec<u8>)>> {
    ranged_read(s, bytes);
    let entries = parse_pack(s, bytes).ok()?;
    let index_len = index_len_from_trailer(&bytes[bytes.len() - TRAILER_LEN..]).expect("parse_pack accepted the trailer");
    let index_offset = (bytes.len() - TRAILER_LEN - index_len as usize) as u64;
    check_entries(&entries, index_offset);
    let mut out = Vec::new();
    for e in entries {
        let blob = &bytes[e.offset as usize..(e.offset + e.sealed_len as u64) as usize];
        if let Ok(plain) = open_chunk(s, &e.id, blob, e.raw_len) {
            assert_eq!(plain.len(), e.raw_len as usize, "open_chunk returned a length its index does not say");
            out.push((e, plain));
        }
    }
    Some(out)
}

/// Mirror of Repo::read_pack_index over an in-memory object.
fn ranged_read(s: &Sealer, bytes: &[u8]) {
    let size = bytes.len() as u64;
    if size < (PACK_MAGIC.len() + TRAILER_LEN) as u64 {
        return;
    }
    let Ok(len) = index_len_from_trailer(&bytes[bytes.len() - TRAILER_LEN..]) else { return };
    let len = len as u64;
    if len + (TRAILER_LEN + PACK_MAGIC.len()) as u64 > size {
        return;
    }
    let start = size - TRAILER_LEN as u64 - len;
    if let Ok(entries) = open_index(s, &bytes[start as usize..(start + len) as usize], start) {
        check_entries(&entries, start);
    }
}

fn raw(s: &Sealer, data: &[u8]) {
    let _ = parse_and_open(s, data);
    if data.len() >= TRAILER_LEN {
        let _ = index_len_from_trailer(&data[data.len() - TRAILER_LEN..]);
    }
    let _ = index_len_from_trailer(data);
    if let Ok(entries) = open_index(s, data, data.len() as u64) {
        check_entries(&entries, data.len() as u64);
    }
}

fn plaintext(u: &mut Unstructured) -> AResult<Vec<u8>> {
    Ok(if u.arbitrary()? {
        // Repetitive, so that compress() picks zstd once it is >= 512 bytes.
        let n = u.int_in_range(1..=16)?;
        let unit = u.bytes(n)?.to_vec();
        let reps = u.int_in_range(0..=400)?;
        unit.repeat(reps)
    } else {
        let n = u.int_in_range(0..=256)?;
        u.bytes(n)?.to_vec()
    })
}

fn raw_len_for(u: &mut Unstructured, real: usize) -> AResult<u32> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 | 1 => real as u32,
        2 => (real as u32).wrapping_add(u.int_in_range(0..=2u32)?).wrapping_sub(1),
        _ => u.arbitrary()?,
    })
}

struct Added {
    id: ChunkId,
    plain: Option<Vec<u8>>,
    raw_len: u32,
}

/// Mode 2: a PackBuilder driven by the input, then edits.
fn builder(s: &Sealer, u: &mut Unstructured) -> AResult<()> {
    let n = u.int_in_range(0..=6)?;
    let mut b = PackBuilder::new(u.int_in_range(0..=1usize << 16)?);
    let mut added = Vec::new();
    let mut well_formed = true;
    for _ in 0..n {
        let id = ChunkId([u.arbitrary::<u8>()?; 32]);
        let kind = if u.ratio(1, 4)? { u.arbitrary()? } else { KIND_DATA };
        if u.ratio(1, 5)? {
            // A junk blob: any length, possibly shorter than a seal.
            let len = u.int_in_range(0..=128)?;
            let junk = u.bytes(len)?.to_vec();
            let raw_len = u.arbitrary()?;
            well_formed &= junk.len() > SEAL_OVERHEAD && raw_len <= MAX_CHUNK_LEN;
            b.add(id, kind, raw_len, &junk);
            added.push(Added { id, plain: None, raw_len });
        } else {
            let plain = plaintext(u)?;
            let raw_len = raw_len_for(u, plain.len())?;
            well_formed &= raw_len <= MAX_CHUNK_LEN;
            b.add(id, kind, raw_len, &seal_chunk(s, &id, &plain));
            added.push(Added { id, plain: Some(plain), raw_len });
        }
    }
    let p = b.finish(s);
    assert_eq!(p.id, PackId::of(&p.bytes));
    assert_eq!(p.bytes.len() % 4096, 0, "pack of {} bytes is not padded to 4 KiB", p.bytes.len());

    // Unedited: parse_pack accepts exactly the well-formed packs, and gives
    // back the builder's entries and plaintexts.
    match parse_and_open(s, &p.bytes) {
        Some(_) if !well_formed => panic!("parse_pack accepted a pack with a malformed entry"),
        None if well_formed => panic!("parse_pack rejected a well-formed pack"),
        None => {}
        Some(opened) => {
            let entries = parse_pack(s, &p.bytes).expect("parsed once already");
            assert_eq!(entries, p.entries, "parse_pack entries differ from the builder's");
            for a in &added {
                if let Some(plain) = &a.plain {
                    if plain.len() == a.raw_len as usize {
                        assert!(
                            opened.iter().any(|(e, got)| e.id == a.id && got == plain),
                            "a chunk sealed into the pack does not open to its plaintext"
                        );
                    }
                }
            }
        }
    }

    // Edits at input-chosen places.
    let mut bytes = p.bytes;
    let edits = u.int_in_range(0..=6)?;
    for _ in 0..edits {
        let len = bytes.len();
        match u.int_in_range(0..=5u8)? {
            0 => {
                if len > 0 {
                    let at = u.choose_index(len)?;
                    bytes[at] ^= u.int_in_range(1..=255u8)?;
                }
            }
            1 => {
                // Somewhere near the end: trailer, index length, index.
                if len > 0 {
                    let back = u.int_in_range(1..=len.min(128))?;
                    bytes[len - back] = u.arbitrary()?;
                }
            }
            2 => {
                if len >= TRAILER_LEN {
                    let v: u32 = u.arbitrary()?;
                    bytes[len - TRAILER_LEN..len - 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            3 => {
                let at = u.int_in_range(0..=len)?;
                bytes.truncate(at);
            }
            4 => {
                let n = u.int_in_range(0..=64)?;
                let extra = u.bytes(n)?.to_vec();
                let at = u.int_in_range(0..=len)?;
                bytes.splice(at..at, extra);
            }
            _ => {
                let a = u.int_in_range(0..=len)?;
                let b = u.int_in_range(a..=len)?;
                bytes.drain(a..b);
            }
        }
    }
    let _ = parse_and_open(s, &bytes);
    Ok(())
}

/// Mode 3: an input-written index, sealed with the key.
fn crafted(s: &Sealer, u: &mut Unstructured) -> AResult<()> {
    let mut bytes = PACK_MAGIC.to_vec();
    let mut blobs: Vec<(ChunkId, u64, u32, u32)> = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let id = ChunkId([u.arbitrary::<u8>()?; 32]);
        let plain = plaintext(u)?;
        let sealed = seal_chunk(s, &id, &plain);
        blobs.push((id, bytes.len() as u64, sealed.len() as u32, plain.len() as u32));
        bytes.extend_from_slice(&sealed);
    }
    let pad = u.int_in_range(0..=64)?;
    bytes.resize(bytes.len() + pad, 0);
    let blob_end = bytes.len() as u64;

    let n = u.int_in_range(0..=8u32)?;
    let mut index = vec![if u.ratio(1, 16)? { u.arbitrary()? } else { INDEX_VERSION }];
    let count = if u.ratio(1, 8)? { u.arbitrary()? } else { n };
    index.extend_from_slice(&count.to_le_bytes());
    for i in 0..n {
        let real = (!blobs.is_empty()).then(|| blobs[i as usize % blobs.len()]);
        let (id, off, slen, rlen) = match real {
            Some(r) if u.ratio(3, 4)? => r,
            _ => (ChunkId([0; 32]), 0, 0, 0),
        };
        let id = if u.ratio(1, 8)? { ChunkId([u.arbitrary()?; 32]) } else { id };
        let offset = match u.int_in_range(0..=5u8)? {
            0..=2 => off,
            3 => off.wrapping_add(u.int_in_range(0..=64u64)?).wrapping_sub(32),
            4 => u64::MAX - u.int_in_range(0..=64u64)?,
            _ => u.arbitrary()?,
        };
        let sealed_len = match u.int_in_range(0..=4u8)? {
            0..=2 => slen,
            3 => slen.wrapping_add(u.int_in_range(0..=8u32)?).wrapping_sub(4),
            _ => u.arbitrary()?,
        };
        let raw_len = match u.int_in_range(0..=4u8)? {
            0..=2 => rlen,
            3 => MAX_CHUNK_LEN.wrapping_add(u.int_in_range(0..=2u32)?).wrapping_sub(1),
            _ => u.arbitrary()?,
        };
        index.extend_from_slice(&id.0);
        index.push(if u.ratio(1, 8)? { u.arbitrary()? } else { KIND_DATA });
        index.extend_from_slice(&offset.to_le_bytes());
        index.extend_from_slice(&sealed_len.to_le_bytes());
        index.extend_from_slice(&raw_len.to_le_bytes());
    }
    if u.ratio(1, 8)? {
        let cut = u.int_in_range(0..=index.len())?;
        index.truncate(cut);
    }
    let sealed_index = s.seal(INDEX_AAD, &index);

    // open_index directly, at the true offset and at an input-chosen one.
    if let Ok(entries) = open_index(s, &sealed_index, blob_end) {
        check_entries(&entries, blob_end);
    }
    let other: u64 = u.arbitrary()?;
    if let Ok(entries) = open_index(s, &sealed_index, other) {
        check_entries(&entries, other);
    }

    bytes.extend_from_slice(&sealed_index);
    let len_field = if u.ratio(1, 8)? { u.arbitrary()? } else { sealed_index.len() as u32 };
    bytes.extend_from_slice(&len_field.to_le_bytes());
    bytes.extend_from_slice(TRAILER_MAGIC);
    let _ = parse_and_open(s, &bytes);
    Ok(())
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let s = common::sealer();
    let mut b = PackBuilder::new(1 << 16);
    for i in 0..3u8 {
        let plain = format!("chunk number {i} ").repeat(60 + i as usize).into_bytes();
        let id = ChunkId([i; 32]);
        b.add(id, KIND_DATA, plain.len() as u32, &seal_chunk(s, &id, &plain));
    }
    let pack = b.finish(s).bytes;
    let empty = PackBuilder::new(0).finish(s).bytes;
    let mut trailer_only = PACK_MAGIC.to_vec();
    trailer_only.extend_from_slice(&(SEAL_OVERHEAD as u32 + 5).to_le_bytes());
    trailer_only.extend_from_slice(TRAILER_MAGIC);
    let structured: Vec<u8> = (0u32..512).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    vec![
        ("pack-3-chunks", pack),
        ("pack-empty", empty),
        ("trailer-only", trailer_only),
        ("structured-bytes", structured),
    ]
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let s = common::sealer();
    raw(s, data);
    // The structured modes read the same bytes through Unstructured; the
    // first byte picks which one.
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut u = Unstructured::new(rest);
    let _ = if mode & 1 == 0 { builder(s, &mut u) } else { crafted(s, &mut u) };
});
