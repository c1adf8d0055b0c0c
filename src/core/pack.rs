//! Packs: many sealed chunks in one large object, with a sealed index at the
//! end, so a million small files do not become a million PUTs and the
//! repository can be re-indexed from the packs alone.
//!
//! Layout (docs/FORMAT.md has the exact bytes):
//! `"N2SPACK1" | blob* | zero padding | sealed index | index_len u32le | "N2SX"`.
//! The padding rounds the pack to a multiple of 4 KiB so its size does not
//! reveal exact file sizes. The pack's name is the BLAKE3 hash of its bytes,
//! so anyone can check a pack without the key.

use anyhow::{Result, bail, ensure};

use super::compress;
use super::seal::{SEAL_OVERHEAD, Sealer};
use crate::model::ChunkId;

pub const PACK_MAGIC: &[u8; 8] = b"N2SPACK1";
pub const TRAILER_MAGIC: &[u8; 4] = b"N2SX";
pub const TRAILER_LEN: usize = 8;
const INDEX_VERSION: u8 = 1;
const INDEX_ENTRY_LEN: usize = 32 + 1 + 8 + 4 + 4;
pub const INDEX_AAD: &[u8] = b"n2s pack index";
const PACK_ALIGN: usize = 4096;
/// No chunk is larger than this, whatever the chunker parameters: a bound on
/// what a hostile index can make us allocate.
pub const MAX_CHUNK_LEN: u32 = 16 * 1024 * 1024;

/// Blob kinds inside a pack.
pub const KIND_DATA: u8 = 1;

/// The bytes a sealed blob of `sealed_len` bytes occupies in its pack: the
/// length rounded up by Padmé (Nikitin et al., 2019), which keeps at most
/// O(log log L) bits of the length and costs at most 12% (1.3% measured on
/// /usr; docs/FORMAT.md §6). A restore reads the padded range, so the
/// backend never sees a chunk's exact length, which for a chunk stored
/// uncompressed would be its exact plaintext length.
pub fn padded_len(sealed_len: u32) -> u64 {
    let l = sealed_len as u64;
    if l < 2 {
        return l;
    }
    let e = 63 - l.leading_zeros() as u64; // floor(log2 l)
    let s = 64 - e.leading_zeros() as u64; // floor(log2 e) + 1
    let mask = (1u64 << (e - s)) - 1;
    (l + mask) & !mask
}

/// The name of a pack: BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct PackId(pub [u8; 32]);

impl PackId {
    pub fn of(bytes: &[u8]) -> PackId {
        PackId(*blake3::hash(bytes).as_bytes())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<PackId> {
        let v = hex::decode(s).ok()?;
        Some(PackId(v.try_into().ok()?))
    }
    /// The object key of this pack in the repository.
    pub fn object_key(&self) -> String {
        let h = self.to_hex();
        format!("data/{}/{}", &h[..2], h)
    }
    /// The pack id named by an object key under `data/`, if it is one.
    pub fn from_object_key(key: &str) -> Option<PackId> {
        let name = key.strip_prefix("data/")?;
        let (dir, hexname) = name.split_once('/')?;
        let id = PackId::from_hex(hexname)?;
        (dir.len() == 2 && hexname.starts_with(dir)).then_some(id)
    }
}

/// Where one blob sits in its pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub kind: u8,
    pub offset: u64,
    pub sealed_len: u32,
    pub raw_len: u32,
}

/// The additional data a chunk is sealed with: it binds the blob to its id.
fn chunk_aad(id: &ChunkId) -> [u8; 41] {
    let mut aad = [0u8; 41];
    aad[..9].copy_from_slice(b"n2s chunk");
    aad[9..].copy_from_slice(&id.0);
    aad
}

/// Compress and seal one chunk.
pub fn seal_chunk(sealer: &Sealer, id: &ChunkId, plaintext: &[u8]) -> Vec<u8> {
    let payload = compress::compress(plaintext);
    sealer.seal(&chunk_aad(id), &payload)
}

/// Open and decompress one chunk. The caller re-hashes the plaintext when
/// it wants to prove the id (verify --level full does).
pub fn open_chunk(sealer: &Sealer, id: &ChunkId, sealed: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    let payload = sealer.open(&chunk_aad(id), sealed)?;
    let plain = compress::decompress(&payload, raw_len.min(MAX_CHUNK_LEN) as usize)?;
    ensure!(
        plain.len() == raw_len as usize,
        "chunk {} has {} bytes, its index says {raw_len}",
        id.to_hex(),
        plain.len()
    );
    Ok(plain)
}

/// Accumulates sealed blobs into one pack.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A finished pack, ready to upload.
pub struct FinishedPack {
    pub id: PackId,
    pub bytes: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new(capacity: usize) -> PackBuilder {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(PACK_MAGIC);
        PackBuilder { buf, entries: Vec::new() }
    }

    pub fn add(&mut self, id: ChunkId, kind: u8, raw_len: u32, sealed: &[u8]) {
        self.entries.push(PackEntry {
            id,
            kind,
            offset: self.buf.len() as u64,
            sealed_len: sealed.len() as u32,
            raw_len,
        });
        self.buf.extend_from_slice(sealed);
        let pad = padded_len(sealed.len() as u32) as usize - sealed.len();
        self.buf.resize(self.buf.len() + pad, 0);
    }

    /// Bytes of blob data so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn finish(self, sealer: &Sealer) -> FinishedPack {
        let PackBuilder { mut buf, entries } = self;
        let mut index = Vec::with_capacity(5 + entries.len() * INDEX_ENTRY_LEN);
        index.push(INDEX_VERSION);
        index.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in &entries {
            index.extend_from_slice(&e.id.0);
            index.push(e.kind);
            index.extend_from_slice(&e.offset.to_le_bytes());
            index.extend_from_slice(&e.sealed_len.to_le_bytes());
            index.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let sealed_index_len = index.len() + SEAL_OVERHEAD;
        let unpadded = buf.len() + sealed_index_len + TRAILER_LEN;
        let padded = unpadded.div_ceil(PACK_ALIGN) * PACK_ALIGN;
        buf.resize(buf.len() + (padded - unpadded), 0);
        sealer.seal_into(INDEX_AAD, &index, &mut buf);
        buf.extend_from_slice(&(sealed_index_len as u32).to_le_bytes());
        buf.extend_from_slice(TRAILER_MAGIC);
        FinishedPack { id: PackId::of(&buf), bytes: buf, entries }
    }
}

/// From the last `TRAILER_LEN` bytes of a pack, the length of its sealed index.
pub fn index_len_from_trailer(trailer: &[u8]) -> Result<u32> {
    ensure!(trailer.len() == TRAILER_LEN, "pack trailer must be {TRAILER_LEN} bytes");
    ensure!(&trailer[4..] == TRAILER_MAGIC, "not an n2s pack (bad trailer magic)");
    let len = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    ensure!(len as usize >= SEAL_OVERHEAD + 5, "pack index length {len} is too small");
    Ok(len)
}

/// Open a sealed pack index. `index_offset` is where it starts in the pack:
/// every entry must lie between the magic and the index.
pub fn open_index(sealer: &Sealer, sealed_index: &[u8], index_offset: u64) -> Result<Vec<PackEntry>> {
    let index = sealer.open(INDEX_AAD, sealed_index)?;
    ensure!(index.len() >= 5, "pack index is truncated");
    ensure!(index[0] == INDEX_VERSION, "unknown pack index version {}", index[0]);
    let count = u32::from_le_bytes([index[1], index[2], index[3], index[4]]) as usize;
    let body = &index[5..];
    ensure!(
        body.len() == count.saturating_mul(INDEX_ENTRY_LEN),
        "pack index says {count} entries but holds {} bytes",
        body.len()
    );
    let mut entries = Vec::with_capacity(count);
    let mut end_of_last = PACK_MAGIC.len() as u64;
    for raw in body.chunks_exact(INDEX_ENTRY_LEN) {
        let id = ChunkId::from_slice(&raw[..32]).expect("slice of 32");
        let kind = raw[32];
        let offset = u64::from_le_bytes(raw[33..41].try_into().expect("8 bytes"));
        let sealed_len = u32::from_le_bytes(raw[41..45].try_into().expect("4 bytes"));
        let raw_len = u32::from_le_bytes(raw[45..49].try_into().expect("4 bytes"));
        ensure!(offset >= end_of_last, "pack index entries overlap or are out of order");
        let end = offset.saturating_add(padded_len(sealed_len));
        ensure!(end <= index_offset, "pack index entry points past the blob area");
        ensure!(sealed_len as usize > SEAL_OVERHEAD, "pack index entry is too short");
        ensure!(raw_len <= MAX_CHUNK_LEN, "pack index entry of {raw_len} bytes is too large");
        end_of_last = end;
        entries.push(PackEntry { id, kind, offset, sealed_len, raw_len });
    }
    Ok(entries)
}

/// Parse a whole pack held in memory: check its magic, open its index.
pub fn parse_pack(sealer: &Sealer, bytes: &[u8]) -> Result<Vec<PackEntry>> {
    if bytes.len() < PACK_MAGIC.len() + TRAILER_LEN || &bytes[..PACK_MAGIC.len()] != PACK_MAGIC {
        bail!("not an n2s pack (bad magic)");
    }
    let index_len = index_len_from_trailer(&bytes[bytes.len() - TRAILER_LEN..])? as usize;
    let index_end = bytes.len() - TRAILER_LEN;
    ensure!(index_len <= index_end - PACK_MAGIC.len(), "pack index length exceeds the pack");
    let index_start = index_end - index_len;
    open_index(sealer, &bytes[index_start..index_end], index_start as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize) -> (Sealer, FinishedPack, Vec<Vec<u8>>) {
        let sealer = Sealer::new(&[3u8; 32]);
        let mut b = PackBuilder::new(1 << 20);
        let mut plains = Vec::new();
        for i in 0..n {
            let plain = format!("chunk number {i} ").repeat(100 + i).into_bytes();
            let id = ChunkId(*blake3::hash(&plain).as_bytes());
            let sealed = seal_chunk(&sealer, &id, &plain);
            b.add(id, KIND_DATA, plain.len() as u32, &sealed);
            plains.push(plain);
        }
        let p = b.finish(&sealer);
        (sealer, p, plains)
    }

    #[test]
    fn pack_roundtrip() {
        let (sealer, p, plains) = sample(20);
        assert_eq!(p.bytes.len() % PACK_ALIGN, 0);
        assert_eq!(p.id, PackId::of(&p.bytes));
        let entries = parse_pack(&sealer, &p.bytes).unwrap();
        assert_eq!(entries, p.entries);
        for (e, plain) in entries.iter().zip(&plains) {
            let blob = &p.bytes[e.offset as usize..(e.offset + e.sealed_len as u64) as usize];
            assert_eq!(&open_chunk(&sealer, &e.id, blob, e.raw_len).unwrap(), plain);
        }
        assert_eq!(PackId::from_object_key(&p.id.object_key()), Some(p.id));
        assert_eq!(PackId::from_object_key("data/zz/abc"), None);
    }

    #[test]
    fn every_flipped_bit_in_a_blob_or_index_is_detected() {
        let (sealer, p, _) = sample(3);
        let entries = parse_pack(&sealer, &p.bytes).unwrap();
        let e = &entries[1];
        let blob = &p.bytes[e.offset as usize..(e.offset + e.sealed_len as u64) as usize];
        for i in (0..blob.len() * 8).step_by(7) {
            let mut b = blob.to_vec();
            b[i / 8] ^= 1 << (i % 8);
            assert!(open_chunk(&sealer, &e.id, &b, e.raw_len).is_err());
        }
        let mut bad = p.bytes.clone();
        let n = bad.len();
        bad[n - 20] ^= 0x10; // inside the sealed index
        assert!(parse_pack(&sealer, &bad).is_err());
        // A blob swapped under another id is refused (the AAD binds the id).
        let other = &entries[0];
        assert!(open_chunk(&sealer, &other.id, blob, e.raw_len).is_err());
    }

    #[test]
    fn blobs_are_padded_by_padme() {
        // Known Padmé values, and its bound.
        assert_eq!(padded_len(41), 44);
        assert_eq!(padded_len(1000), 1024);
        assert_eq!(padded_len(1 << 20), 1 << 20);
        assert_eq!(padded_len((1 << 20) + 1), (1 << 20) + (1 << 15));
        for l in [41u32, 100, 4097, 65_537, 1_000_001, 4_194_345, 16 << 20] {
            let p = padded_len(l);
            assert!(p >= l as u64 && (p - l as u64) * 100 <= l as u64 * 12, "{l} -> {p}");
        }
        let (sealer, p, _) = sample(20);
        let entries = parse_pack(&sealer, &p.bytes).unwrap();
        for w in entries.windows(2) {
            assert_eq!(w[1].offset, w[0].offset + padded_len(w[0].sealed_len), "each blob takes its padded length");
        }
        // The index may not claim a blob whose padding would run into the index.
        let (last, n) = (entries.last().unwrap(), entries.len());
        assert!(padded_len(last.sealed_len) > last.sealed_len as u64 || n == 0);
    }

    #[test]
    fn wrong_key_and_truncation_fail_cleanly() {
        let (_, p, _) = sample(2);
        let other = Sealer::new(&[4u8; 32]);
        assert!(parse_pack(&other, &p.bytes).is_err());
        let sealer = Sealer::new(&[3u8; 32]);
        for cut in [0, 5, 12, p.bytes.len() / 2, p.bytes.len() - 1] {
            assert!(parse_pack(&sealer, &p.bytes[..cut]).is_err());
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let sealer = Sealer::new(&[3u8; 32]);
            let _ = parse_pack(&sealer, &data);
            let mut framed = PACK_MAGIC.to_vec();
            framed.extend_from_slice(&data);
            framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
            framed.extend_from_slice(TRAILER_MAGIC);
            let _ = parse_pack(&sealer, &framed);
        }
    }
}
