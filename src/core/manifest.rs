//! Changeset manifests: the sealed record of one backed-up snapshot.
//!
//! A manifest is a small sealed JSON header (the commit point of a
//! changeset, written last) plus sealed, zstd-compressed segments of binary
//! entry records. Segments keep memory bounded: a million-entry manifest is
//! written and read one segment at a time. Exact bytes: docs/FORMAT.md.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::compress;
use super::seal::Sealer;
use crate::model::{ChangeKind, ChunkId, FileType, Metadata, RelPath, is_safe_rel_path};

pub const MANIFEST_FORMAT: u32 = 1;
pub const HEADER_AAD: &[u8] = b"n2s manifest";
const SEGMENT_AAD: &[u8] = b"n2s manifest segment";
/// A segment is cut once its records pass this many bytes.
pub const SEGMENT_TARGET: usize = 4 * 1024 * 1024;
/// Decoding refuses segments that would inflate past this.
pub const SEGMENT_MAX: usize = 256 * 1024 * 1024;
const MAX_PATH_LEN: usize = 1 << 20;
const MAX_XATTR_LEN: usize = 1 << 20;
const NO_SYMLINK: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestKind {
    /// Holds only what changed since the parent.
    Delta,
    /// Holds the whole tree (a checkpoint): restore and prune need no older manifest.
    Full,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot's name as the source knows it (or the walk's label).
    pub name: String,
    /// "walk", "btrfs" or "zfs".
    pub source: String,
    /// What identifies the snapshot beyond its name: for zfs guid+createtxg,
    /// for btrfs uuid+generation, for walk the label.
    pub identity: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub added: u64,
    pub modified: u64,
    pub metadata: u64,
    pub removed: u64,
    /// Entries that could not be read; absent from this snapshot's tree.
    pub failed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    pub key: String,
    pub records: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    pub format: u32,
    pub dataset: String,
    pub seq: u64,
    pub changeset: String,
    pub parent: Option<String>,
    pub kind: ManifestKind,
    pub snapshot: SnapshotInfo,
    /// How the changeset was found: "walk", "diff", or "walk (fallback: why)".
    pub method: String,
    pub started_at: i64,
    pub completed_at: i64,
    pub counts: Counts,
    /// Content bytes of the entries that changed.
    pub bytes_changed: u64,
    /// Sealed bytes uploaded for this changeset (new packs).
    pub bytes_uploaded: u64,
    pub segments: Vec<SegmentRef>,
}

impl ManifestHeader {
    pub fn seal(&self, sealer: &Sealer) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)?;
        Ok(sealer.seal(HEADER_AAD, &compress::compress(&json)))
    }

    pub fn open(sealer: &Sealer, sealed: &[u8]) -> Result<ManifestHeader> {
        let payload = sealer.open(HEADER_AAD, sealed)?;
        let json = compress::decompress(&payload, 64 << 20)?;
        let h: ManifestHeader = serde_json::from_slice(&json).context("manifest header is not valid JSON")?;
        ensure!(h.format == MANIFEST_FORMAT, "manifest format {} is not supported", h.format);
        Ok(h)
    }

    /// Object key of a manifest header: ordered by seq within a dataset.
    pub fn object_key(dataset_id: &str, seq: u64, changeset: &str) -> String {
        format!("manifests/{dataset_id}/{seq:010}-{changeset}")
    }
}

/// What a record says about its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// In a full manifest: present and unchanged since the parent.
    Present,
    Changed(ChangeKind),
}

impl RecordKind {
    fn to_u8(self) -> u8 {
        match self {
            RecordKind::Present => 0,
            RecordKind::Changed(k) => k as u8,
        }
    }
    fn from_u8(v: u8) -> Option<RecordKind> {
        if v == 0 { Some(RecordKind::Present) } else { ChangeKind::from_u8(v).map(RecordKind::Changed) }
    }
}

/// One entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub path: RelPath,
    /// `None` for removals.
    pub meta: Option<Metadata>,
    /// BLAKE3 (unkeyed) of the whole content, for regular files.
    pub file_hash: Option<[u8; 32]>,
    pub chunks: Vec<ChunkId>,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

/// Append one record, prefixed by its length.
pub fn encode_record(r: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    put_u32(out, 0); // length, patched below
    out.push(r.kind.to_u8());
    put_bytes(out, &r.path);
    if let Some(m) = &r.meta {
        out.push(m.ftype as u8);
        put_u32(out, m.mode);
        put_u32(out, m.uid);
        put_u32(out, m.gid);
        put_u64(out, m.size);
        put_u64(out, m.mtime_ns as u64);
        put_u64(out, m.ctime_ns as u64);
        put_u64(out, m.ino);
        put_u64(out, m.nlink);
        put_u64(out, m.rdev);
        match &m.symlink_target {
            Some(t) => put_bytes(out, t),
            None => put_u32(out, NO_SYMLINK),
        }
        put_u32(out, m.xattrs.len() as u32);
        for (k, v) in &m.xattrs {
            put_bytes(out, k);
            put_bytes(out, v);
        }
        match &r.file_hash {
            Some(h) => {
                out.push(1);
                out.extend_from_slice(h);
            }
            None => out.push(0),
        }
        put_u32(out, r.chunks.len() as u32);
        for c in &r.chunks {
            out.extend_from_slice(&c.0);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// A bounds-checked reader over untrusted bytes.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(n <= self.buf.len(), "record is truncated");
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        ensure!(n <= max, "field of {n} bytes exceeds the limit {max}");
        self.take(n)
    }
}

/// Decode one record body (without its length prefix).
pub fn decode_record(body: &[u8]) -> Result<Record> {
    let mut c = Cursor { buf: body };
    let kind = RecordKind::from_u8(c.u8()?).context("unknown record kind")?;
    let path = c.bytes(MAX_PATH_LEN)?.to_vec();
    ensure!(is_safe_rel_path(&path), "record has an unsafe path");
    if kind == RecordKind::Changed(ChangeKind::Removed) {
        ensure!(c.buf.is_empty(), "removal record has trailing bytes");
        return Ok(Record { kind, path, meta: None, file_hash: None, chunks: Vec::new() });
    }
    let ftype = FileType::from_u8(c.u8()?).context("unknown file type")?;
    let mode = c.u32()?;
    ensure!(mode <= 0o7777, "mode {mode:o} has bits beyond 07777");
    let uid = c.u32()?;
    let gid = c.u32()?;
    let size = c.u64()?;
    let mtime_ns = c.u64()? as i64;
    let ctime_ns = c.u64()? as i64;
    let ino = c.u64()?;
    let nlink = c.u64()?;
    let rdev = c.u64()?;
    let symlink_target = {
        let n = c.u32()?;
        if n == NO_SYMLINK {
            None
        } else {
            ensure!(n as usize <= MAX_PATH_LEN, "symlink target too long");
            Some(c.take(n as usize)?.to_vec())
        }
    };
    ensure!(
        (ftype == FileType::Symlink) == symlink_target.is_some(),
        "symlink target present on a non-symlink or missing on a symlink"
    );
    let nx = c.u32()? as usize;
    ensure!(nx <= c.buf.len() / 8, "xattr count {nx} exceeds the record");
    let mut xattrs = Vec::with_capacity(nx);
    for _ in 0..nx {
        let k = c.bytes(MAX_XATTR_LEN)?.to_vec();
        let v = c.bytes(MAX_XATTR_LEN)?.to_vec();
        xattrs.push((k, v));
    }
    let file_hash = match c.u8()? {
        0 => None,
        1 => Some(c.take(32)?.try_into().expect("32 bytes")),
        _ => bail!("bad file hash flag"),
    };
    let nchunks = c.u32()? as usize;
    ensure!(nchunks.saturating_mul(32) == c.buf.len(), "chunk list length does not match the record");
    ensure!(nchunks == 0 || ftype == FileType::File, "chunks on a non-file");
    let chunks = c.buf.chunks_exact(32).map(|b| ChunkId::from_slice(b).expect("32 bytes")).collect();
    let meta = Metadata { ftype, mode, uid, gid, size, mtime_ns, ctime_ns, ino, nlink, rdev, symlink_target, xattrs };
    Ok(Record { kind, path, meta: Some(meta), file_hash, chunks })
}

/// Split a segment's plaintext into record bodies and decode each.
pub fn decode_records(plain: &[u8]) -> Result<Vec<Record>> {
    let mut c = Cursor { buf: plain };
    let mut out = Vec::new();
    while !c.buf.is_empty() {
        let body = c.bytes(plain.len())?;
        out.push(decode_record(body)?);
    }
    Ok(out)
}

pub fn seal_segment(sealer: &Sealer, plain: &[u8]) -> Vec<u8> {
    sealer.seal(SEGMENT_AAD, &compress::compress(plain))
}

pub fn open_segment(sealer: &Sealer, sealed: &[u8]) -> Result<Vec<Record>> {
    let payload = sealer.open(SEGMENT_AAD, sealed)?;
    let plain = compress::decompress(&payload, SEGMENT_MAX)?;
    decode_records(&plain)
}

/// Object key of a segment: named by the hash of its sealed bytes, like packs.
pub fn segment_key(sealed: &[u8]) -> String {
    format!("segments/{}", blake3::hash(sealed).to_hex())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_meta() -> impl Strategy<Value = Metadata> {
        (
            1u8..=7,
            0u32..=0o7777,
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<i64>(),
            any::<i64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..20), proptest::collection::vec(any::<u8>(), 0..40)),
                0..3,
            ),
        )
            .prop_map(|(t, mode, uid, gid, size, mt, ct, ino, target, xattrs)| {
                let ftype = FileType::from_u8(t).unwrap();
                Metadata {
                    ftype,
                    mode,
                    uid,
                    gid,
                    size,
                    mtime_ns: mt,
                    ctime_ns: ct,
                    ino,
                    nlink: 1,
                    rdev: 0,
                    symlink_target: (ftype == FileType::Symlink).then_some(target),
                    xattrs,
                }
            })
    }

    fn arb_path() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            proptest::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0), 1..12)
                .prop_filter("no dot names", |c| c != b"." && c != b".."),
            1..4,
        )
        .prop_map(|parts| parts.join(&b'/'))
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (arb_path(), 0u8..=4, arb_meta(), any::<bool>(), proptest::collection::vec(any::<[u8; 32]>(), 0..4)).prop_map(
            |(path, k, meta, has_hash, chunks)| {
                let kind = RecordKind::from_u8(k).unwrap();
                if kind == RecordKind::Changed(ChangeKind::Removed) {
                    return Record { kind, path, meta: None, file_hash: None, chunks: vec![] };
                }
                let is_file = meta.ftype == FileType::File;
                Record {
                    kind,
                    path,
                    file_hash: (is_file && has_hash).then_some([9u8; 32]),
                    chunks: if is_file { chunks.into_iter().map(ChunkId).collect() } else { vec![] },
                    meta: Some(meta),
                }
            },
        )
    }

    proptest! {
        #[test]
        fn records_roundtrip(records in proptest::collection::vec(arb_record(), 0..20)) {
            let mut buf = Vec::new();
            for r in &records { encode_record(r, &mut buf); }
            prop_assert_eq!(decode_records(&buf).unwrap(), records);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..500)) {
            let _ = decode_records(&data);
            let _ = decode_record(&data);
        }

        #[test]
        fn truncated_records_are_errors(r in arb_record(), cut in 0usize..100) {
            let mut buf = Vec::new();
            encode_record(&r, &mut buf);
            let cut = cut.min(buf.len() - 1);
            prop_assert!(decode_records(&buf[..cut]).is_err() || cut == 0);
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [&b"../../etc/passwd"[..], b"/etc/shadow", b"a/../../b"] {
            let r = Record {
                kind: RecordKind::Changed(ChangeKind::Removed),
                path: bad.to_vec(),
                meta: None,
                file_hash: None,
                chunks: vec![],
            };
            let mut buf = Vec::new();
            encode_record(&r, &mut buf);
            assert!(decode_records(&buf).is_err());
        }
    }

    #[test]
    fn header_and_segment_seal_roundtrip() {
        let sealer = Sealer::new(&[5u8; 32]);
        let h = ManifestHeader {
            format: MANIFEST_FORMAT,
            dataset: "tank/home".into(),
            seq: 3,
            changeset: "00ff".into(),
            parent: Some("00fe".into()),
            kind: ManifestKind::Delta,
            snapshot: SnapshotInfo { name: "s3".into(), source: "walk".into(), identity: Default::default() },
            method: "walk".into(),
            started_at: 1,
            completed_at: 2,
            counts: Counts::default(),
            bytes_changed: 10,
            bytes_uploaded: 20,
            segments: vec![SegmentRef { key: "segments/x".into(), records: 1 }],
        };
        let sealed = h.seal(&sealer).unwrap();
        assert_eq!(ManifestHeader::open(&sealer, &sealed).unwrap(), h);
        assert!(ManifestHeader::open(&Sealer::new(&[6u8; 32]), &sealed).is_err());
        let mut plain = Vec::new();
        let r = Record {
            kind: RecordKind::Changed(ChangeKind::Removed),
            path: b"x".to_vec(),
            meta: None,
            file_hash: None,
            chunks: vec![],
        };
        encode_record(&r, &mut plain);
        let seg = seal_segment(&sealer, &plain);
        assert_eq!(open_segment(&sealer, &seg).unwrap(), vec![r]);
        // A header is not accepted as a segment, nor the reverse.
        assert!(open_segment(&sealer, &sealed).is_err());
        assert!(ManifestHeader::open(&sealer, &seg).is_err());
    }
}
