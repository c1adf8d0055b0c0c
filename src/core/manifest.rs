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
pub const MAX_PATH_LEN: usize = 1 << 20;
pub const MAX_XATTR_LEN: usize = 1 << 20;
/// All xattr names and values of one entry together; with the limits above
/// and the chunk ids of one record it keeps every record far below
/// SEGMENT_MAX (Linux itself allows 64 KiB of names and 64 KiB per value).
pub const MAX_XATTRS_TOTAL: usize = 16 << 20;
/// Chunk ids in one record (32 MiB of ids). A longer chunk list goes on in
/// continuation records, which may sit in the next segment.
pub const CHUNKS_PER_RECORD: usize = 1 << 20;
/// Chunks of one file, at most: its catalog row holds the whole list in one
/// SQLite blob (at most 10^9 bytes). At the minimum chunk size (256 KiB)
/// that is 7.1 TiB; at the average (1 MiB) about 28 TiB.
pub const MAX_FILE_CHUNKS: usize = 30_000_000;
const NO_SYMLINK: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestKind {
    /// Holds only what changed since the parent.
    Delta,
    /// Holds the whole tree (a checkpoint): restore and prune need no older manifest.
    Full,
    /// A changeset `forget` removed: it keeps its number and identity in the
    /// chain (so no reader takes it for a hole) but has no records, and the
    /// next changeset that is not forgotten is full.
    Forgotten,
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
    /// 0 for the header a backup writes (the number claim); `forget`
    /// rewrites a changeset as revision 1, 2, ... at a key of its own, and
    /// readers take the highest revision of each number (FORMAT.md §7.9).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
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

    /// Object key of a manifest header: its number within the dataset, so
    /// put-if-absent lets exactly one writer own each number (two hosts
    /// backing up one dataset name cannot both write changeset N).
    pub fn object_key(dataset_id: &str, seq: u64) -> String {
        format!("manifests/{dataset_id}/{seq:010}")
    }

    /// Object key of revision `rev` of a header: revision 0 is the number
    /// claim at `object_key`; later ones sort right after it.
    pub fn revision_key(dataset_id: &str, seq: u64, rev: u32) -> String {
        match rev {
            0 => Self::object_key(dataset_id, seq),
            r => format!("manifests/{dataset_id}/{seq:010}.r{r:06}"),
        }
    }

    /// The dataset id, number and revision a header key names, if it is one.
    pub fn parse_object_key(key: &str) -> Option<(&str, u64, u32)> {
        let (ds, name) = key.strip_prefix("manifests/")?.split_once('/')?;
        let (seq, rev) = match name.split_once(".r") {
            Some((seq, rev)) if rev.len() == 6 && rev.bytes().all(|b| b.is_ascii_digit()) => (seq, rev.parse().ok()?),
            Some(_) => return None,
            None => (name, 0),
        };
        let ok = ds.len() == 32 && ds.bytes().all(|b| b.is_ascii_hexdigit()) && seq.len() == 10;
        if !ok || !seq.bytes().all(|b| b.is_ascii_digit()) || (rev == 0 && name.len() != 10) {
            return None;
        }
        Some((ds, seq.parse().ok()?, rev))
    }
}

/// What a record says about its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// In a full manifest: present and unchanged since the parent.
    Present,
    Changed(ChangeKind),
    /// More chunk ids of the file named by the record just before it (kind
    /// byte 5). Only `RecordJoiner` sees these; joined records never are.
    Continued,
}

const KIND_CONTINUED: u8 = 5;

impl RecordKind {
    fn to_u8(self) -> u8 {
        match self {
            RecordKind::Present => 0,
            RecordKind::Changed(k) => k as u8,
            RecordKind::Continued => KIND_CONTINUED,
        }
    }
    fn from_u8(v: u8) -> Option<RecordKind> {
        match v {
            0 => Some(RecordKind::Present),
            KIND_CONTINUED => Some(RecordKind::Continued),
            _ => ChangeKind::from_u8(v).map(RecordKind::Changed),
        }
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

/// Append one record, prefixed by its length, exactly as given (no
/// splitting: writers use `encode_split`, which keeps every limit the
/// decoder checks).
pub fn encode_record(r: &Record, out: &mut Vec<u8>) {
    encode_parts(r.kind, &r.path, r.meta.as_ref(), r.file_hash.as_ref(), &r.chunks, out)
}

fn encode_parts(
    kind: RecordKind,
    path: &[u8],
    meta: Option<&Metadata>,
    file_hash: Option<&[u8; 32]>,
    chunks: &[ChunkId],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    put_u32(out, 0); // length, patched below
    out.push(kind.to_u8());
    put_bytes(out, path);
    if kind == RecordKind::Continued {
        put_u32(out, chunks.len() as u32);
        for c in chunks {
            out.extend_from_slice(&c.0);
        }
    } else if let Some(m) = meta {
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
        match file_hash {
            Some(h) => {
                out.push(1);
                out.extend_from_slice(h);
            }
            None => out.push(0),
        }
        put_u32(out, chunks.len() as u32);
        for c in chunks {
            out.extend_from_slice(&c.0);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Why an entry cannot be described by a manifest record, if it cannot:
/// writers check this when they list changes, so that they never store a
/// manifest the reader would refuse.
pub fn check_encodable(path: &[u8], meta: Option<&Metadata>) -> Result<(), String> {
    if path.len() > MAX_PATH_LEN {
        return Err(format!("its path is {} bytes long; the manifest format allows {MAX_PATH_LEN}", path.len()));
    }
    let Some(m) = meta else { return Ok(()) };
    if m.symlink_target.as_ref().is_some_and(|t| t.len() > MAX_PATH_LEN) {
        return Err(format!("its symlink target is longer than {MAX_PATH_LEN} bytes"));
    }
    let mut total = 0usize;
    for (k, v) in &m.xattrs {
        if k.len() > MAX_XATTR_LEN || v.len() > MAX_XATTR_LEN {
            return Err(format!("an xattr name or value is longer than {MAX_XATTR_LEN} bytes"));
        }
        total += k.len() + v.len();
    }
    if total > MAX_XATTRS_TOTAL {
        return Err(format!("its xattrs hold {total} bytes; the manifest format allows {MAX_XATTRS_TOTAL}"));
    }
    Ok(())
}

/// Encode `r` as one record or, when its chunk list is longer than
/// `per_record`, as a head record followed by continuation records. Each
/// encoded record goes to `sink` on its own, so a writer can start a new
/// segment between them and no segment outgrows what the decoder accepts.
pub fn encode_split(r: &Record, per_record: usize, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let per_record = per_record.clamp(1, CHUNKS_PER_RECORD);
    ensure!(
        r.chunks.len() <= MAX_FILE_CHUNKS,
        "{} has {} chunks; one file may have at most {MAX_FILE_CHUNKS}",
        crate::model::display_path(&r.path),
        r.chunks.len()
    );
    check_encodable(&r.path, r.meta.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", crate::model::display_path(&r.path)))?;
    let mut buf = Vec::new();
    let mut parts = r.chunks.chunks(per_record);
    let head = parts.next().unwrap_or(&[]);
    encode_parts(r.kind, &r.path, r.meta.as_ref(), r.file_hash.as_ref(), head, &mut buf);
    sink(&buf)?;
    for part in parts {
        buf.clear();
        encode_parts(RecordKind::Continued, &r.path, None, None, part, &mut buf);
        sink(&buf)?;
    }
    Ok(())
}

/// Joins continuation records onto the file record they continue, across
/// segment boundaries: feed every record of a manifest in order, then call
/// `finish`.
#[derive(Default)]
pub struct RecordJoiner {
    pending: Option<Record>,
}

impl RecordJoiner {
    /// Take the next record; returns the previous one once it is whole.
    pub fn push(&mut self, r: Record) -> Result<Option<Record>> {
        if r.kind != RecordKind::Continued {
            return Ok(self.pending.replace(r));
        }
        let Some(p) = self.pending.as_mut() else {
            bail!("a continuation record of {} follows no record", crate::model::display_path(&r.path));
        };
        ensure!(
            p.path == r.path && p.meta.as_ref().is_some_and(|m| m.ftype == FileType::File),
            "a continuation record of {} does not follow a file record of the same path",
            crate::model::display_path(&r.path)
        );
        ensure!(
            p.chunks.len() + r.chunks.len() <= MAX_FILE_CHUNKS,
            "{} has more than {MAX_FILE_CHUNKS} chunks",
            crate::model::display_path(&r.path)
        );
        p.chunks.extend_from_slice(&r.chunks);
        Ok(None)
    }

    pub fn finish(&mut self) -> Option<Record> {
        self.pending.take()
    }
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
    if kind == RecordKind::Continued {
        let n = c.u32()? as usize;
        ensure!(
            n > 0 && n.saturating_mul(32) == c.buf.len(),
            "continuation record length does not match its chunk count"
        );
        let chunks = c.buf.chunks_exact(32).map(|b| ChunkId::from_slice(b).expect("32 bytes")).collect();
        return Ok(Record { kind, path, meta: None, file_hash: None, chunks });
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
            revision: 0,
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

    fn file_record(path: &[u8], n: usize) -> Record {
        let meta = Metadata {
            ftype: FileType::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: n as u64 * 1000,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: 3,
            nlink: 1,
            rdev: 0,
            symlink_target: None,
            xattrs: vec![],
        };
        let chunks = (0..n as u32).map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            ChunkId(id)
        });
        Record {
            kind: RecordKind::Changed(ChangeKind::Added),
            path: path.to_vec(),
            meta: Some(meta),
            file_hash: Some([1; 32]),
            chunks: chunks.collect(),
        }
    }

    #[test]
    fn a_long_chunk_list_is_split_and_joined_back_across_segments() {
        // The old writer put every chunk id of a file in one record: past
        // 2^23 ids (SEGMENT_MAX / 32) the reader refused the segment.
        let big = file_record(b"vm/disk.img", 2 * CHUNKS_PER_RECORD + 5);
        let small = file_record(b"vm/notes", 3);
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        for r in [&big, &small] {
            encode_split(r, CHUNKS_PER_RECORD, &mut |b| {
                encoded.push(b.to_vec());
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(encoded.len(), 4, "head + 2 continuations + the small file");
        assert!(encoded.iter().all(|e| e.len() < 40 << 20), "every record stays far below the segment limit");
        // Each record in a segment of its own: joining spans segments.
        let mut j = RecordJoiner::default();
        let mut out = Vec::new();
        for e in &encoded {
            for r in decode_records(e).unwrap() {
                out.extend(j.push(r).unwrap());
            }
        }
        out.extend(j.finish());
        assert_eq!(out, vec![big, small]);
    }

    #[test]
    fn stray_continuations_and_unencodable_entries_are_refused() {
        let mut buf = Vec::new();
        encode_split(&file_record(b"a", 5), 2, &mut |b| {
            buf.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        let recs = decode_records(&buf).unwrap();
        assert_eq!(recs.len(), 3);
        let mut j = RecordJoiner::default();
        assert!(j.push(recs[1].clone()).is_err(), "a continuation with nothing before it");
        let mut j = RecordJoiner::default();
        j.push(file_record(b"b", 1)).unwrap();
        assert!(j.push(recs[1].clone()).is_err(), "a continuation of another path");
        let long = vec![b'x'; MAX_PATH_LEN + 1];
        assert!(check_encodable(&long, None).is_err());
        assert!(encode_split(&file_record(&long, 1), 10, &mut |_| Ok(())).is_err());
        let mut m = file_record(b"c", 0).meta.unwrap();
        m.xattrs = (0..20).map(|i| (vec![b'u', i], vec![0u8; 1 << 20])).collect();
        assert!(check_encodable(b"c", Some(&m)).unwrap_err().contains("xattrs"));
    }

    #[test]
    fn header_keys_are_numbers_only() {
        let ds = "0123456789abcdef0123456789abcdef";
        let k = ManifestHeader::object_key(ds, 7);
        assert_eq!(k, format!("manifests/{ds}/0000000007"));
        assert_eq!(ManifestHeader::parse_object_key(&k), Some((ds, 7, 0)));
        assert_eq!(ManifestHeader::revision_key(ds, 7, 0), k);
        let r = ManifestHeader::revision_key(ds, 7, 12);
        assert_eq!(r, format!("manifests/{ds}/0000000007.r000012"));
        assert_eq!(ManifestHeader::parse_object_key(&r), Some((ds, 7, 12)));
        // Revisions sort right after their number, before the next one.
        assert!(k < r && r < ManifestHeader::object_key(ds, 8));
        for bad in [
            format!("manifests/{ds}/0000000007-abc"),
            format!("manifests/{ds}/0000000007.r000000"),
            format!("manifests/{ds}/0000000007.r12"),
            format!("manifests/{ds}/0000000007.rabcdef"),
            format!("manifests/{ds}/000000007.r000001"),
            format!("manifests/{ds}/7"),
            "manifests/xyz/0000000001".to_string(),
            format!("segments/{ds}/0000000001"),
        ] {
            assert_eq!(ManifestHeader::parse_object_key(&bad), None, "{bad}");
        }
    }
}
