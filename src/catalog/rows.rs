//! Rows as SQLite holds them, with a checksum each.
//!
//! A bit flipped in a catalog (a bad disk, a bad RAM stick, a stray write)
//! would otherwise restore the wrong tree without a word: SQLite checks its
//! page structure, not the bytes of a path or a chunk list. So every row of
//! `files` and `changesets` carries a 16-byte BLAKE3 of its meaningful
//! columns, written with the row and checked on every read; a mismatch is
//! an error that names the row. Columns that are only informational
//! (times, error text, counts) are not covered.
//!
//! Decoding is strict too: an unknown status, kind or type is an error
//! that names the row, never a silent default.

use rusqlite::Row;
use rusqlite::types::Value;

use super::{ChangesetRow, ChangesetStatus, FileRow, FileStatus};
use crate::model::{ChangeKind, ChunkId, FileType, Metadata, display_path, split_path};

const FILE_SUM_CONTEXT: &str = "n2s-agent 2026 catalog files row v1";
const CS_SUM_CONTEXT: &str = "n2s-agent 2026 catalog changesets row v1";

/// Feeds typed values into a hash so that no two different rows encode alike.
struct SumWriter(blake3::Hasher);

impl SumWriter {
    fn new(context: &str) -> SumWriter {
        SumWriter(blake3::Hasher::new_derive_key(context))
    }
    fn int(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            None => self.0.update(&[0]),
            Some(v) => self.0.update(&[1]).update(&v.to_le_bytes()),
        };
        self
    }
    fn bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.0.update(&[0]),
            Some(b) => self.0.update(&[1]).update(&(b.len() as u64).to_le_bytes()).update(b),
        };
        self
    }
    fn finish(&self) -> Vec<u8> {
        self.0.finalize().as_bytes()[..16].to_vec()
    }
}

/// The columns of one `files` row, exactly as bound and as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFile {
    pub changeset: i64,
    pub path: Vec<u8>,
    pub dir: Vec<u8>,
    pub kind: i64,
    pub status: i64,
    /// ftype, mode, uid, gid, size, mtime_ns, ctime_ns, ino, nlink, rdev.
    pub ints: [Option<i64>; 10],
    pub symlink: Option<Vec<u8>>,
    pub xattrs: Option<Vec<u8>>,
    pub chunks: Option<Vec<u8>>,
    pub file_hash: Option<Vec<u8>>,
    pub error: Option<String>,
    pub uploaded_at: Option<i64>,
    pub confirmed_at: Option<i64>,
}

/// The `dir` column of a path: its parent, or a NUL byte for the root so
/// that the root is nobody's child.
pub fn dir_of(path: &[u8]) -> Vec<u8> {
    if path.is_empty() { b"\0".to_vec() } else { split_path(path).0.to_vec() }
}

impl RawFile {
    pub fn of(r: &FileRow) -> RawFile {
        let m = r.meta.as_ref();
        RawFile {
            changeset: r.changeset,
            path: r.path.clone(),
            dir: dir_of(&r.path),
            kind: r.kind as u8 as i64,
            status: r.status as u8 as i64,
            ints: [
                m.map(|m| m.ftype as u8 as i64),
                m.map(|m| m.mode as i64),
                m.map(|m| m.uid as i64),
                m.map(|m| m.gid as i64),
                m.map(|m| m.size as i64),
                m.map(|m| m.mtime_ns),
                m.map(|m| m.ctime_ns),
                m.map(|m| m.ino as i64),
                m.map(|m| m.nlink as i64),
                m.map(|m| m.rdev as i64),
            ],
            symlink: m.and_then(|m| m.symlink_target.clone()),
            xattrs: m.map(|m| encode_xattrs(&m.xattrs)),
            chunks: (!r.chunks.is_empty()).then(|| chunks_to_blob(&r.chunks)),
            file_hash: r.file_hash.map(|h| h.to_vec()),
            error: r.error.clone(),
            uploaded_at: r.uploaded_at,
            confirmed_at: r.confirmed_at,
        }
    }

    pub fn sum(&self) -> Vec<u8> {
        let mut w = SumWriter::new(FILE_SUM_CONTEXT);
        w.int(Some(self.changeset)).bytes(Some(&self.path)).bytes(Some(&self.dir));
        w.int(Some(self.kind)).int(Some(self.status));
        for v in self.ints {
            w.int(v);
        }
        w.bytes(self.symlink.as_deref()).bytes(self.xattrs.as_deref());
        w.bytes(self.chunks.as_deref()).bytes(self.file_hash.as_deref());
        w.finish()
    }

    /// Read the columns `FILE_COLS` lists, starting at `at`.
    pub fn read(r: &Row, at: usize) -> rusqlite::Result<(RawFile, Option<Vec<u8>>)> {
        let mut ints = [None; 10];
        for (i, v) in ints.iter_mut().enumerate() {
            *v = r.get(at + 5 + i)?;
        }
        Ok((
            RawFile {
                changeset: r.get(at)?,
                path: r.get(at + 1)?,
                dir: r.get(at + 2)?,
                kind: r.get(at + 3)?,
                status: r.get(at + 4)?,
                ints,
                symlink: r.get(at + 15)?,
                xattrs: r.get(at + 16)?,
                chunks: r.get(at + 17)?,
                file_hash: r.get(at + 18)?,
                error: r.get(at + 19)?,
                uploaded_at: r.get(at + 20)?,
                confirmed_at: r.get(at + 21)?,
            },
            r.get(at + 22)?,
        ))
    }

    /// Check the checksum and decode, strictly.
    pub fn decode(self, stored_sum: Option<&[u8]>) -> Result<FileRow, String> {
        let what = || format!("changeset {}, path {}", self.changeset, display_path(&self.path));
        if stored_sum != Some(&self.sum()[..]) {
            return Err(format!("its checksum does not match ({})", what()));
        }
        if self.dir != dir_of(&self.path) {
            return Err(format!("its directory column does not match its path ({})", what()));
        }
        let kind = u8::try_from(self.kind)
            .ok()
            .and_then(ChangeKind::from_u8)
            .ok_or_else(|| format!("unknown change kind {} ({})", self.kind, what()))?;
        let status = FileStatus::from_i64(self.status)
            .ok_or_else(|| format!("unknown file status {} ({})", self.status, what()))?;
        let meta = match (kind, self.ints[0]) {
            (ChangeKind::Removed, None) => None,
            (ChangeKind::Removed, Some(_)) => return Err(format!("a removal with metadata ({})", what())),
            (_, None) => return Err(format!("an entry without metadata ({})", what())),
            (_, Some(t)) => {
                let ftype = u8::try_from(t)
                    .ok()
                    .and_then(FileType::from_u8)
                    .ok_or_else(|| format!("unknown file type {t} ({})", what()))?;
                let int = |i: usize| self.ints[i].ok_or_else(|| format!("a metadata column is empty ({})", what()));
                Some(Metadata {
                    ftype,
                    mode: int(1)? as u32,
                    uid: int(2)? as u32,
                    gid: int(3)? as u32,
                    size: int(4)? as u64,
                    mtime_ns: int(5)?,
                    ctime_ns: int(6)?,
                    ino: int(7)? as u64,
                    nlink: int(8)? as u64,
                    rdev: int(9)? as u64,
                    symlink_target: self.symlink.clone(),
                    xattrs: match &self.xattrs {
                        None => Vec::new(),
                        Some(b) => decode_xattrs(b).ok_or_else(|| format!("its xattrs do not decode ({})", what()))?,
                    },
                })
            }
        };
        let chunks = match &self.chunks {
            None => Vec::new(),
            Some(b) if b.len() % 32 == 0 => chunks_from_blob(b),
            Some(_) => return Err(format!("its chunk list is not a whole number of ids ({})", what())),
        };
        let file_hash = match &self.file_hash {
            None => None,
            Some(h) => {
                Some(h.as_slice().try_into().map_err(|_| format!("its file hash is not 32 bytes ({})", what()))?)
            }
        };
        Ok(FileRow {
            changeset: self.changeset,
            path: self.path,
            kind,
            status,
            meta,
            chunks,
            file_hash,
            error: self.error,
            uploaded_at: self.uploaded_at,
            confirmed_at: self.confirmed_at,
        })
    }

    /// The values in `FILE_COLS` order, then the sum: for INSERT.
    pub fn values(&self) -> Vec<Value> {
        let mut v: Vec<Value> = vec![
            self.changeset.into(),
            self.path.clone().into(),
            self.dir.clone().into(),
            self.kind.into(),
            self.status.into(),
        ];
        v.extend(self.ints.iter().map(|i| Value::from(*i)));
        v.push(self.symlink.clone().into());
        v.push(self.xattrs.clone().into());
        v.push(self.chunks.clone().into());
        v.push(self.file_hash.clone().into());
        v.push(self.error.clone().into());
        v.push(self.uploaded_at.into());
        v.push(self.confirmed_at.into());
        v.push(self.sum().into());
        v
    }
}

/// A rusqlite error carrying our message, for use inside row mappers.
pub fn damaged(table: &str, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Blob,
        format!("the catalog's {table} table has a damaged row: {msg}").into(),
    )
}

pub fn file_from_row(r: &Row) -> rusqlite::Result<FileRow> {
    let (raw, sum) = RawFile::read(r, 0)?;
    raw.decode(sum.as_deref()).map_err(|m| damaged("files", m))
}

/// The checksummed columns of a `changesets` row.
pub fn cs_sum(r: &ChangesetRow) -> Vec<u8> {
    let mut w = SumWriter::new(CS_SUM_CONTEXT);
    w.int(Some(r.id)).bytes(Some(r.uid.as_bytes())).int(r.parent);
    w.bytes(Some(r.snapshot.as_bytes())).bytes(Some(r.source.as_bytes())).bytes(Some(r.identity.as_bytes()));
    w.bytes(Some(r.method.as_bytes())).bytes(r.kind.as_deref().map(str::as_bytes));
    w.bytes(Some(r.status.as_str().as_bytes())).bytes(r.manifest_key.as_deref().map(str::as_bytes));
    w.finish()
}

/// Read `CS_COLS` (then the sum), check and decode.
pub fn cs_from_row(r: &Row) -> rusqlite::Result<ChangesetRow> {
    let (row, sum) = cs_from_row_unchecked(r)?;
    if sum.as_deref() != Some(&cs_sum(&row)[..]) {
        return Err(damaged(
            "changesets",
            format!("its checksum does not match (changeset {}, snapshot {:?})", row.id, row.snapshot),
        ));
    }
    Ok(row)
}

/// Decode without the checksum check: only to recompute a sum after an update.
pub fn cs_from_row_unchecked(r: &Row) -> rusqlite::Result<(ChangesetRow, Option<Vec<u8>>)> {
    let id: i64 = r.get(0)?;
    let status: String = r.get(8)?;
    let status = ChangesetStatus::parse(&status)
        .ok_or_else(|| damaged("changesets", format!("unknown status {status:?} (changeset {id})")))?;
    let count = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)? as u64) };
    Ok((
        ChangesetRow {
            id,
            uid: r.get(1)?,
            parent: r.get(2)?,
            snapshot: r.get(3)?,
            source: r.get(4)?,
            identity: r.get(5)?,
            method: r.get(6)?,
            kind: r.get(7)?,
            status,
            started_at: r.get(9)?,
            listed_at: r.get(10)?,
            completed_at: r.get(11)?,
            n_added: count(12)?,
            n_modified: count(13)?,
            n_metadata: count(14)?,
            n_removed: count(15)?,
            n_failed: count(16)?,
            bytes_changed: count(17)?,
            bytes_uploaded: count(18)?,
            manifest_key: r.get(19)?,
        },
        r.get(20)?,
    ))
}

/// Encode xattrs as `count u32 | (len u32, name, len u32, value)*`.
pub fn encode_xattrs(x: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(x.len() as u32).to_le_bytes());
    for (k, v) in x {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

pub fn decode_xattrs(b: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (a, rest) = b.split_at(n);
        *b = rest;
        Some(a)
    }
    fn u32_of(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    let mut b = b;
    let n = u32_of(&mut b)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let kl = u32_of(&mut b)?;
        let k = take(&mut b, kl)?.to_vec();
        let vl = u32_of(&mut b)?;
        let v = take(&mut b, vl)?.to_vec();
        out.push((k, v));
    }
    b.is_empty().then_some(out)
}

pub fn chunks_to_blob(chunks: &[ChunkId]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.0).collect()
}

pub fn chunks_from_blob(b: &[u8]) -> Vec<ChunkId> {
    b.chunks_exact(32).filter_map(ChunkId::from_slice).collect()
}
