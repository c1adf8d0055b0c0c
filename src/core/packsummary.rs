//! Pack summaries: sealed repository-wide index objects, each holding the
//! indexes of many packs, so that a machine with nothing but the key finds
//! every chunk with one GET per summary instead of two range reads per pack
//! (1.3 million reads for 10 TB in 16 MiB packs).
//!
//! A summary is a cache of the packs' own indexes, never more: it is
//! written after the packs it names are stored, it can be made again from
//! them at any time, and when the two disagree the pack wins.
//!
//! Object `index/<hex BLAKE3 of the object>`, the object being
//! `seal("n2s pack summary", compress(plaintext))`; the plaintext is
//! `version (1) | pack count u32 | pack*`, each pack
//! `pack id (32) | size u64 | entry count u32 | entry*`, each entry exactly
//! a pack index entry (docs/FORMAT.md §6.2 and §6.4).

use anyhow::{Context, Result, bail, ensure};

use super::compress;
use super::pack::{self, MAX_CHUNK_LEN, PACK_MAGIC, PackEntry, PackId, TRAILER_LEN};
use super::seal::{SEAL_OVERHEAD, Sealer};
use crate::model::ChunkId;

/// Where summaries live on the backend.
pub const SUMMARY_PREFIX: &str = "index/";
pub const SUMMARY_AAD: &[u8] = b"n2s pack summary";
pub const SUMMARY_VERSION: u8 = 1;
/// A writer puts at most this many packs in one summary: one unreadable
/// summary then costs at most 8192 range reads, and one summary of 16 MiB
/// packs of 1 MiB chunks is about 3 MiB.
pub const MAX_PACKS: usize = 4096;
/// The plaintext of one summary is at most this long; the reader bounds
/// decompression by it. A pack whose entries alone do not fit is in no
/// summary (a reader reads its own index).
pub const MAX_PLAIN: usize = 64 << 20;
const HEADER_LEN: usize = 1 + 4;
const PACK_HEADER_LEN: usize = 32 + 8 + 4;
/// The layout of a pack index entry (core::pack keeps its own copy private).
const ENTRY_LEN: usize = 32 + 1 + 8 + 4 + 4;
/// A pack index of n entries, sealed: version, count, entries, seal.
fn sealed_index_len(n: u64) -> u64 {
    5 + n * ENTRY_LEN as u64 + SEAL_OVERHEAD as u64
}

/// One pack as a summary describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummarizedPack {
    pub id: PackId,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

/// Does a pack of this many entries fit in a summary by itself?
pub fn fits_alone(entries: usize) -> bool {
    HEADER_LEN + PACK_HEADER_LEN + entries.saturating_mul(ENTRY_LEN) <= MAX_PLAIN
}

/// Builds the plaintext of one summary, packs in ascending id order.
pub struct SummaryBuilder {
    buf: Vec<u8>,
    packs: u32,
    last: Option<PackId>,
}

impl Default for SummaryBuilder {
    fn default() -> Self {
        let mut buf = Vec::with_capacity(1 << 16);
        buf.push(SUMMARY_VERSION);
        buf.extend_from_slice(&0u32.to_le_bytes());
        SummaryBuilder { buf, packs: 0, last: None }
    }
}

impl SummaryBuilder {
    /// Can a pack of `entries` entries still go in?
    pub fn has_room(&self, entries: usize) -> bool {
        (self.packs as usize) < MAX_PACKS
            && self.buf.len().saturating_add(PACK_HEADER_LEN).saturating_add(entries.saturating_mul(ENTRY_LEN))
                <= MAX_PLAIN
    }

    /// Add a pack. Ids must come in strictly ascending order (the reader
    /// refuses duplicates), and there must be room.
    pub fn push(&mut self, id: &PackId, size: u64, entries: &[PackEntry]) -> Result<()> {
        ensure!(self.has_room(entries.len()), "pack summary is full (packs or bytes)");
        ensure!(self.last.is_none_or(|l| l < *id), "pack summary: packs must come in ascending id order");
        self.buf.extend_from_slice(&id.0);
        self.buf.extend_from_slice(&size.to_le_bytes());
        self.buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        encode_entries(entries, &mut self.buf);
        self.packs += 1;
        self.last = Some(*id);
        self.buf[1..5].copy_from_slice(&self.packs.to_le_bytes());
        Ok(())
    }

    /// Packs added so far.
    pub fn len(&self) -> usize {
        self.packs as usize
    }

    pub fn is_empty(&self) -> bool {
        self.packs == 0
    }

    /// The plaintext.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn encode_entries(entries: &[PackEntry], out: &mut Vec<u8>) {
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.push(e.kind);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.sealed_len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
    }
}

/// A digest of a pack's entries in their encoded form, to compare what a
/// summary says of a pack with the pack's own index without keeping both.
pub fn entries_digest(entries: &[PackEntry]) -> [u8; 32] {
    let mut buf = Vec::with_capacity(entries.len() * ENTRY_LEN);
    encode_entries(entries, &mut buf);
    *blake3::hash(&buf).as_bytes()
}

/// The object key of a summary: named by the hash of its bytes, like segments.
pub fn object_key(object: &[u8]) -> String {
    format!("{SUMMARY_PREFIX}{}", blake3::hash(object).to_hex())
}

/// Is this an object key a summary can have (`index/` and 64 hex digits)?
pub fn is_summary_key(key: &str) -> bool {
    key.strip_prefix(SUMMARY_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Seal a summary's plaintext: its object key and bytes.
pub fn seal(sealer: &Sealer, plain: &[u8]) -> (String, Vec<u8>) {
    let object = sealer.seal(SUMMARY_AAD, &compress::compress(plain));
    (object_key(&object), object)
}

/// Open the summary stored under `key`: its bytes must hash to the key (a
/// summary moved to another name is refused), open under the key, and
/// decode.
pub fn open(sealer: &Sealer, key: &str, object: &[u8]) -> Result<Vec<SummarizedPack>> {
    ensure!(object_key(object) == key, "its content does not hash to its name");
    let payload = sealer.open(SUMMARY_AAD, object).context("it does not open with this key")?;
    let plain = compress::decompress(&payload, MAX_PLAIN)?;
    decode(&plain)
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8]> {
    ensure!(b.len() >= n, "truncated in {what}");
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn u32_at(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn u64_at(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Decode a summary's plaintext, checking everything a pack's own index
/// would be checked for (docs/FORMAT.md §6.4), so nothing a summary says
/// can point a reader outside a pack's blob area.
pub fn decode(plain: &[u8]) -> Result<Vec<SummarizedPack>> {
    let mut b = plain;
    let head = take(&mut b, HEADER_LEN, "its header")?;
    if head[0] != SUMMARY_VERSION {
        bail!("unknown pack summary version {}", head[0]);
    }
    let count = u32_at(&head[1..]) as usize;
    // Each pack takes at least its header: a count the bytes cannot hold
    // is refused before anything is allocated for it.
    ensure!(count <= b.len() / PACK_HEADER_LEN, "says {count} packs but holds {} bytes", b.len());
    let mut packs: Vec<SummarizedPack> = Vec::with_capacity(count);
    for i in 0..count {
        let ph = take(&mut b, PACK_HEADER_LEN, "a pack header")?;
        let id = PackId(ph[..32].try_into().expect("32 bytes"));
        let size = u64_at(&ph[32..40]);
        let n = u32_at(&ph[40..44]) as usize;
        if let Some(prev) = packs.last() {
            ensure!(prev.id < id, "pack {i} ({}) is out of order or repeated", id.to_hex());
        }
        ensure!(n <= b.len() / ENTRY_LEN, "pack {} says {n} entries, more than the bytes left", id.to_hex());
        // The blob area ends where the pack's own index would begin.
        let blob_end = size
            .checked_sub(TRAILER_LEN as u64 + sealed_index_len(n as u64))
            .filter(|&e| e >= PACK_MAGIC.len() as u64)
            .with_context(|| format!("pack {} of {size} bytes is too small for {n} entries", id.to_hex()))?;
        let raw = take(&mut b, n * ENTRY_LEN, "entries")?;
        let mut entries = Vec::with_capacity(n);
        let mut end_of_last = PACK_MAGIC.len() as u64;
        for r in raw.chunks_exact(ENTRY_LEN) {
            let e = PackEntry {
                id: ChunkId(r[..32].try_into().expect("32 bytes")),
                kind: r[32],
                offset: u64_at(&r[33..41]),
                sealed_len: u32_at(&r[41..45]),
                raw_len: u32_at(&r[45..49]),
            };
            ensure!(e.offset >= end_of_last, "pack {}: entries overlap or are out of order", id.to_hex());
            let end = e.offset.saturating_add(pack::padded_len(e.sealed_len));
            ensure!(end <= blob_end, "pack {}: an entry points past the blob area", id.to_hex());
            ensure!(e.sealed_len as usize > SEAL_OVERHEAD, "pack {}: an entry is too short", id.to_hex());
            ensure!(e.raw_len <= MAX_CHUNK_LEN, "pack {}: an entry of {} bytes is too large", id.to_hex(), e.raw_len);
            end_of_last = end;
            entries.push(e);
        }
        packs.push(SummarizedPack { id, size, entries });
    }
    ensure!(b.is_empty(), "{} bytes after its last pack", b.len());
    Ok(packs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pack::{KIND_DATA, PackBuilder, seal_chunk};
    use proptest::prelude::*;

    fn real_pack(sealer: &Sealer, n: usize, salt: u8) -> SummarizedPack {
        let mut b = PackBuilder::new(1 << 16);
        for i in 0..n {
            let plain = vec![salt ^ i as u8; 300 + i * 7];
            let id = ChunkId(*blake3::hash(&plain).as_bytes());
            b.add(id, KIND_DATA, plain.len() as u32, &seal_chunk(sealer, &id, &plain));
        }
        let p = b.finish(sealer);
        SummarizedPack { id: p.id, size: p.bytes.len() as u64, entries: p.entries }
    }

    fn build(packs: &mut [SummarizedPack]) -> Vec<u8> {
        packs.sort_by_key(|p| p.id);
        let mut b = SummaryBuilder::default();
        for p in packs.iter() {
            b.push(&p.id, p.size, &p.entries).unwrap();
        }
        b.finish()
    }

    #[test]
    fn roundtrip_through_seal_and_key() {
        let s = Sealer::new(&[5u8; 32]);
        let mut packs: Vec<_> = (0..5).map(|i| real_pack(&s, 3 + i, i as u8)).collect();
        let plain = build(&mut packs);
        assert_eq!(plain.len(), 5 + packs.iter().map(|p| 44 + 49 * p.entries.len()).sum::<usize>());
        let (key, object) = seal(&s, &plain);
        assert!(is_summary_key(&key), "{key}");
        assert_eq!(open(&s, &key, &object).unwrap(), packs);
        // Moved to another name, another key, or a flipped bit: refused.
        let other = format!("{SUMMARY_PREFIX}{}", "0".repeat(64));
        assert!(open(&s, &other, &object).is_err());
        assert!(open(&Sealer::new(&[6u8; 32]), &key, &object).is_err());
        let mut bad = object.clone();
        bad[30] ^= 1;
        assert!(open(&s, &object_key(&bad), &bad).is_err());
        // The same entries give the same digest, other entries another.
        assert_eq!(entries_digest(&packs[0].entries), entries_digest(&packs[0].entries.clone()));
        assert_ne!(entries_digest(&packs[0].entries), entries_digest(&packs[1].entries));
        assert!(!is_summary_key("index/xyz") && !is_summary_key(&format!("data/{}", "a".repeat(64))));
    }

    #[test]
    fn the_builder_keeps_order_and_bounds() {
        let mut b = SummaryBuilder::default();
        let (a, z) = (PackId([1u8; 32]), PackId([2u8; 32]));
        b.push(&z, 4096, &[]).unwrap();
        assert!(b.push(&a, 4096, &[]).is_err(), "descending");
        assert!(b.push(&z, 4096, &[]).is_err(), "repeated");
        assert_eq!(b.len(), 1);
        for i in 1..MAX_PACKS {
            let mut id = [3u8; 32];
            id[28..].copy_from_slice(&(i as u32).to_be_bytes());
            b.push(&PackId(id), 4096, &[]).unwrap();
        }
        assert!(!b.has_room(0), "{MAX_PACKS} packs at most");
        assert!(fits_alone(1000) && !fits_alone(MAX_PLAIN / ENTRY_LEN));
        assert_eq!(decode(&b.finish()).unwrap().len(), MAX_PACKS);
    }

    #[test]
    fn hostile_plaintexts_are_refused() {
        let s = Sealer::new(&[5u8; 32]);
        let mut packs = vec![real_pack(&s, 4, 1), real_pack(&s, 2, 2)];
        let good = build(&mut packs);
        assert!(decode(&good).is_ok());
        let first_entry = HEADER_LEN + PACK_HEADER_LEN;
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut v = good.clone();
        v[0] = 2;
        cases.push(("version", v));
        let mut v = good.clone();
        v[1..5].copy_from_slice(&3u32.to_le_bytes());
        cases.push(("count too high", v));
        let mut v = good.clone();
        v[1..5].copy_from_slice(&1u32.to_le_bytes());
        cases.push(("trailing bytes", v));
        let mut v = good.clone();
        v[HEADER_LEN + 32..HEADER_LEN + 40].copy_from_slice(&100u64.to_le_bytes());
        cases.push(("pack too small for its index", v));
        let mut v = good.clone();
        v[first_entry + 33..first_entry + 41].copy_from_slice(&2u64.to_le_bytes());
        cases.push(("offset inside the magic", v));
        let mut v = good.clone();
        v[first_entry + 33..first_entry + 41].copy_from_slice(&(packs[0].size - 100).to_le_bytes());
        cases.push(("blob past the blob area", v));
        let mut v = good.clone();
        v[first_entry + 41..first_entry + 45].copy_from_slice(&10u32.to_le_bytes());
        cases.push(("sealed_len below the seal", v));
        let mut v = good.clone();
        v[first_entry + 45..first_entry + 49].copy_from_slice(&(MAX_CHUNK_LEN + 1).to_le_bytes());
        cases.push(("raw_len too large", v));
        let second = first_entry + packs[0].entries.len() * ENTRY_LEN;
        let mut v = good.clone();
        let first_id = v[HEADER_LEN..HEADER_LEN + 32].to_vec();
        v[second..second + 32].copy_from_slice(&first_id);
        cases.push(("repeated pack", v));
        cases.push(("truncated", good[..good.len() - 1].to_vec()));
        cases.push(("empty", Vec::new()));
        for (what, bytes) in cases {
            assert!(decode(&bytes).is_err(), "{what} accepted");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&data);
            let mut framed = vec![SUMMARY_VERSION];
            framed.extend_from_slice(&1u32.to_le_bytes());
            framed.extend_from_slice(&data);
            let _ = decode(&framed);
        }
    }
}
