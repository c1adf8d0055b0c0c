//! The local state: one SQLite catalog per dataset, plus the repository-wide
//! chunk index. The catalog never talks to a backend; everything in it can
//! be rebuilt from the repository and the key (`catalog rebuild`).
//!
//! The `files` table holds, per changeset, only the entries that changed in
//! it. The tree as of changeset N is, for every path, its newest row with
//! changeset <= N, unless that row is a removal or a failed read.
//! Invariant: at most one changeset is not `complete`, and it is the newest,
//! so "<= N" never sees a half-done changeset when N is complete.

pub mod index;
pub mod schema;
pub mod tree;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;

use crate::model::{ChangeKind, ChunkId, FileType, Metadata, split_path};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangesetStatus {
    /// The changes are being listed; a crash here means list again.
    Pending,
    /// Listed; content is being uploaded. A crash here resumes.
    Uploading,
    /// Manifest confirmed stored.
    Complete,
    Failed,
}

impl ChangesetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangesetStatus::Pending => "pending",
            ChangesetStatus::Uploading => "uploading",
            ChangesetStatus::Complete => "complete",
            ChangesetStatus::Failed => "failed",
        }
    }
    fn parse(s: &str) -> ChangesetStatus {
        match s {
            "pending" => ChangesetStatus::Pending,
            "uploading" => ChangesetStatus::Uploading,
            "complete" => ChangesetStatus::Complete,
            _ => ChangesetStatus::Failed,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChangesetRow {
    pub id: i64,
    pub uid: String,
    pub parent: Option<i64>,
    pub snapshot: String,
    pub source: String,
    pub identity: String,
    pub method: String,
    pub kind: Option<String>,
    pub status: ChangesetStatus,
    pub started_at: i64,
    pub listed_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub n_added: u64,
    pub n_modified: u64,
    pub n_metadata: u64,
    pub n_removed: u64,
    pub n_failed: u64,
    pub bytes_changed: u64,
    pub bytes_uploaded: u64,
    pub manifest_key: Option<String>,
}

const CS_COLS: &str = "id, uid, parent, snapshot, source, identity, method, kind, status, started_at, listed_at, \
     completed_at, n_added, n_modified, n_metadata, n_removed, n_failed, bytes_changed, bytes_uploaded, manifest_key";

fn cs_from_row(r: &Row) -> rusqlite::Result<ChangesetRow> {
    Ok(ChangesetRow {
        id: r.get(0)?,
        uid: r.get(1)?,
        parent: r.get(2)?,
        snapshot: r.get(3)?,
        source: r.get(4)?,
        identity: r.get(5)?,
        method: r.get(6)?,
        kind: r.get(7)?,
        status: ChangesetStatus::parse(&r.get::<_, String>(8)?),
        started_at: r.get(9)?,
        listed_at: r.get(10)?,
        completed_at: r.get(11)?,
        n_added: r.get::<_, i64>(12)? as u64,
        n_modified: r.get::<_, i64>(13)? as u64,
        n_metadata: r.get::<_, i64>(14)? as u64,
        n_removed: r.get::<_, i64>(15)? as u64,
        n_failed: r.get::<_, i64>(16)? as u64,
        bytes_changed: r.get::<_, i64>(17)? as u64,
        bytes_uploaded: r.get::<_, i64>(18)? as u64,
        manifest_key: r.get(19)?,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FileStatus {
    Pending = 0,
    Stored = 1,
    Failed = 2,
}

impl FileStatus {
    fn from_i64(v: i64) -> FileStatus {
        match v {
            0 => FileStatus::Pending,
            1 => FileStatus::Stored,
            _ => FileStatus::Failed,
        }
    }
}

/// One row of `files`: an entry as it changed in one changeset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRow {
    pub changeset: i64,
    pub path: Vec<u8>,
    pub kind: ChangeKind,
    pub status: FileStatus,
    pub meta: Option<Metadata>,
    pub chunks: Vec<ChunkId>,
    pub file_hash: Option<[u8; 32]>,
    pub error: Option<String>,
    pub uploaded_at: Option<i64>,
    pub confirmed_at: Option<i64>,
}

const FILE_COLS: &str = "f.changeset, f.path, f.kind, f.status, f.ftype, f.mode, f.uid, f.gid, f.size, f.mtime_ns, \
     f.ctime_ns, f.ino, f.nlink, f.rdev, f.symlink, f.xattrs, f.chunks, f.file_hash, f.error, f.uploaded_at, f.confirmed_at";

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
    Some(out)
}

pub fn chunks_to_blob(chunks: &[ChunkId]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.0).collect()
}

pub fn chunks_from_blob(b: &[u8]) -> Vec<ChunkId> {
    b.chunks_exact(32).filter_map(ChunkId::from_slice).collect()
}

fn file_from_row(r: &Row) -> rusqlite::Result<FileRow> {
    let kind = ChangeKind::from_u8(r.get::<_, i64>(2)? as u8).unwrap_or(ChangeKind::Modified);
    let ftype: Option<i64> = r.get(4)?;
    let meta = match ftype.and_then(|t| FileType::from_u8(t as u8)) {
        Some(ftype) if kind != ChangeKind::Removed => Some(Metadata {
            ftype,
            mode: r.get::<_, i64>(5)? as u32,
            uid: r.get::<_, i64>(6)? as u32,
            gid: r.get::<_, i64>(7)? as u32,
            size: r.get::<_, i64>(8)? as u64,
            mtime_ns: r.get(9)?,
            ctime_ns: r.get(10)?,
            ino: r.get::<_, i64>(11)? as u64,
            nlink: r.get::<_, i64>(12)? as u64,
            rdev: r.get::<_, i64>(13)? as u64,
            symlink_target: r.get(14)?,
            xattrs: r.get::<_, Option<Vec<u8>>>(15)?.and_then(|b| decode_xattrs(&b)).unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(FileRow {
        changeset: r.get(0)?,
        path: r.get(1)?,
        kind,
        status: FileStatus::from_i64(r.get(3)?),
        meta,
        chunks: r.get::<_, Option<Vec<u8>>>(16)?.map(|b| chunks_from_blob(&b)).unwrap_or_default(),
        file_hash: r.get::<_, Option<Vec<u8>>>(17)?.and_then(|b| b.try_into().ok()),
        error: r.get(18)?,
        uploaded_at: r.get(19)?,
        confirmed_at: r.get(20)?,
    })
}

/// Upper bound of the byte range of paths strictly below `prefix/`.
fn subtree_bounds(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut lo = prefix.to_vec();
    lo.push(b'/');
    let mut hi = prefix.to_vec();
    hi.push(b'/' + 1);
    (lo, hi)
}

/// The newest row per path as of changeset `n`, present and readable.
const LATEST: &str = "f.changeset <= ?1 AND f.changeset = \
     (SELECT max(g.changeset) FROM files g WHERE g.path = f.path AND g.changeset <= ?1) \
     AND f.kind != 4 AND f.status = 1";

pub struct Catalog {
    conn: Connection,
    dataset: String,
}

pub struct NewChangeset<'a> {
    pub snapshot: &'a str,
    pub source: &'a str,
    pub identity: &'a str,
    pub method: &'a str,
    pub started_at: i64,
}

impl Catalog {
    /// Open (creating if needed) the catalog of `dataset`. Refuses a file
    /// that belongs to another dataset.
    pub fn open(path: &Path, dataset: &str) -> Result<Catalog> {
        let mut conn = schema::open_db(path)?;
        schema::migrate(&mut conn, schema::DATASET_MIGRATIONS, "catalog")?;
        let existing: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key = 'dataset'", [], |r| r.get(0)).optional()?;
        match existing {
            Some(d) if d != dataset => {
                bail!("catalog {} belongs to dataset {d:?}, not {dataset:?}: check --state-dir", path.display())
            }
            Some(_) => {}
            None => {
                conn.execute("INSERT INTO meta (key, value) VALUES ('dataset', ?1)", params![dataset])?;
            }
        }
        Ok(Catalog { conn, dataset: dataset.to_string() })
    }

    /// The dataset a catalog file belongs to, without creating anything.
    pub fn dataset_name_of(path: &Path) -> Result<String> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        Ok(conn.query_row("SELECT value FROM meta WHERE key = 'dataset'", [], |r| r.get(0))?)
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    // ---- changesets ----

    pub fn changesets(&self) -> Result<Vec<ChangesetRow>> {
        let mut st = self.conn.prepare(&format!("SELECT {CS_COLS} FROM changesets ORDER BY id"))?;
        let rows = st.query_map([], cs_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn changeset(&self, id: i64) -> Result<Option<ChangesetRow>> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {CS_COLS} FROM changesets WHERE id = ?1"), params![id], cs_from_row)
            .optional()?)
    }

    pub fn changeset_by_snapshot(&self, snapshot: &str) -> Result<Option<ChangesetRow>> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {CS_COLS} FROM changesets WHERE snapshot = ?1"), params![snapshot], cs_from_row)
            .optional()?)
    }

    pub fn latest_complete(&self) -> Result<Option<ChangesetRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {CS_COLS} FROM changesets WHERE status = 'complete' ORDER BY id DESC LIMIT 1"),
                [],
                cs_from_row,
            )
            .optional()?)
    }

    /// The one changeset that is not complete, if any.
    pub fn incomplete(&self) -> Result<Option<ChangesetRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {CS_COLS} FROM changesets WHERE status != 'complete' ORDER BY id DESC LIMIT 1"),
                [],
                cs_from_row,
            )
            .optional()?)
    }

    pub fn create_changeset(&mut self, new: &NewChangeset) -> Result<ChangesetRow> {
        if let Some(open) = self.incomplete()? {
            bail!("changeset {} of {} is not complete yet; it must finish first", open.id, self.dataset);
        }
        let parent = self.latest_complete()?.map(|c| c.id);
        let id = parent.map_or(1, |p| p + 1);
        let mut rnd = [0u8; 16];
        getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        self.conn
            .execute(
                "INSERT INTO changesets (id, uid, parent, snapshot, source, identity, method, status, started_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
                params![
                    id,
                    hex::encode(rnd),
                    parent,
                    new.snapshot,
                    new.source,
                    new.identity,
                    new.method,
                    new.started_at
                ],
            )
            .with_context(|| format!("cannot record changeset for snapshot {}", new.snapshot))?;
        self.changeset(id)?.context("changeset vanished after insert")
    }

    /// Insert a changeset as read back from a manifest (catalog rebuild).
    pub fn insert_rebuilt_changeset(&mut self, row: &ChangesetRow) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO changesets ({CS_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
            ),
            params![
                row.id,
                row.uid,
                row.parent,
                row.snapshot,
                row.source,
                row.identity,
                row.method,
                row.kind,
                row.status.as_str(),
                row.started_at,
                row.listed_at,
                row.completed_at,
                row.n_added as i64,
                row.n_modified as i64,
                row.n_metadata as i64,
                row.n_removed as i64,
                row.n_failed as i64,
                row.bytes_changed as i64,
                row.bytes_uploaded as i64,
                row.manifest_key
            ],
        )?;
        Ok(())
    }

    /// Drop a changeset whose listing never finished, with its rows.
    pub fn discard_changeset(&mut self, id: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM files WHERE changeset = ?1", params![id])?;
        tx.execute("DELETE FROM changesets WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_listed(&mut self, id: i64, now: i64, method: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE changesets SET status = 'uploading', listed_at = ?2, method = ?3 WHERE id = ?1",
            params![id, now, method],
        )?;
        Ok(())
    }

    /// Counts per change kind and bytes of changed content, from the rows.
    pub fn tally(&self, id: i64) -> Result<(u64, u64, u64, u64, u64, u64)> {
        let mut st = self.conn.prepare(
            "SELECT kind, status, count(*), coalesce(sum(CASE WHEN kind IN (1,2) THEN size ELSE 0 END), 0) \
             FROM files WHERE changeset = ?1 GROUP BY kind, status",
        )?;
        let mut rows = st.query(params![id])?;
        let (mut a, mut m, mut md, mut rm, mut failed, mut bytes) = (0, 0, 0, 0, 0, 0);
        while let Some(r) = rows.next()? {
            let (kind, status, n, b): (i64, i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            if status == FileStatus::Failed as i64 {
                failed += n as u64;
                continue;
            }
            bytes += b as u64;
            match ChangeKind::from_u8(kind as u8) {
                Some(ChangeKind::Added) => a += n as u64,
                Some(ChangeKind::Modified) => m += n as u64,
                Some(ChangeKind::Metadata) => md += n as u64,
                Some(ChangeKind::Removed) => rm += n as u64,
                None => {}
            }
        }
        Ok((a, m, md, rm, failed, bytes))
    }

    pub fn set_complete(
        &mut self,
        id: i64,
        kind: &str,
        manifest_key: &str,
        completed_at: i64,
        bytes_uploaded: u64,
    ) -> Result<()> {
        let (a, m, md, rm, failed, bytes) = self.tally(id)?;
        self.conn.execute(
            "UPDATE changesets SET status = 'complete', kind = ?2, manifest_key = ?3, completed_at = ?4, \
             n_added = ?5, n_modified = ?6, n_metadata = ?7, n_removed = ?8, n_failed = ?9, bytes_changed = ?10, \
             bytes_uploaded = bytes_uploaded + ?11 WHERE id = ?1",
            params![
                id,
                kind,
                manifest_key,
                completed_at,
                a as i64,
                m as i64,
                md as i64,
                rm as i64,
                failed as i64,
                bytes as i64,
                bytes_uploaded as i64
            ],
        )?;
        Ok(())
    }

    /// Add to the bytes uploaded for a changeset (kept across resumes).
    pub fn add_uploaded(&mut self, id: i64, bytes: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE changesets SET bytes_uploaded = bytes_uploaded + ?2 WHERE id = ?1",
            params![id, bytes as i64],
        )?;
        Ok(())
    }

    // ---- files ----

    /// Insert rows in one transaction (the caller batches).
    pub fn insert_files(&mut self, rows: &[FileRow]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO files (changeset, path, dir, kind, status, ftype, mode, uid, gid, size, mtime_ns, \
                 ctime_ns, ino, nlink, rdev, symlink, xattrs, chunks, file_hash, error, uploaded_at, confirmed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
            )?;
            for r in rows {
                let (dir, _) = split_path(&r.path);
                let m = r.meta.as_ref();
                st.execute(params![
                    r.changeset,
                    &r.path,
                    if r.path.is_empty() { &b"\0"[..] } else { dir },
                    r.kind as u8 as i64,
                    r.status as u8 as i64,
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
                    m.and_then(|m| m.symlink_target.clone()),
                    m.map(|m| encode_xattrs(&m.xattrs)),
                    (!r.chunks.is_empty()).then(|| chunks_to_blob(&r.chunks)),
                    r.file_hash.map(|h| h.to_vec()),
                    r.error,
                    r.uploaded_at,
                    r.confirmed_at,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Files of changeset `cs` still waiting for content, after `after` in
    /// path order (paged so memory stays bounded).
    pub fn pending_files(&self, cs: i64, after: Option<&[u8]>, limit: usize) -> Result<Vec<FileRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLS} FROM files f WHERE f.changeset = ?1 AND f.status = 0 AND f.path > ?2 \
             ORDER BY f.path LIMIT ?3"
        ))?;
        let after = after.map(<[u8]>::to_vec);
        // Every path sorts after the empty blob except the root itself, which
        // is never pending (it is a directory).
        let rows = st.query_map(params![cs, after.unwrap_or_default(), limit as i64], file_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn count_pending(&self, cs: i64) -> Result<u64> {
        Ok(self.conn.query_row("SELECT count(*) FROM files WHERE changeset = ?1 AND status = 0", params![cs], |r| {
            r.get::<_, i64>(0)
        })? as u64)
    }

    /// Record files whose content is confirmed stored, in one transaction.
    pub fn mark_stored(&mut self, cs: i64, done: &[StoredFile], now: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE files SET status = 1, chunks = ?3, file_hash = ?4, size = ?5, uploaded_at = ?6, \
                 confirmed_at = ?7, error = NULL WHERE changeset = ?1 AND path = ?2",
            )?;
            for d in done {
                st.execute(params![
                    cs,
                    &d.path,
                    (!d.chunks.is_empty()).then(|| chunks_to_blob(&d.chunks)),
                    &d.file_hash[..],
                    d.size as i64,
                    d.uploaded_at,
                    now
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn mark_failed(&mut self, cs: i64, path: &[u8], error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE files SET status = 2, error = ?3 WHERE changeset = ?1 AND path = ?2",
            params![cs, path, error],
        )?;
        Ok(())
    }

    /// Rows of one changeset in path order, streamed.
    pub fn for_each_in_changeset(&self, cs: i64, mut f: impl FnMut(FileRow) -> Result<()>) -> Result<()> {
        let mut st =
            self.conn.prepare(&format!("SELECT {FILE_COLS} FROM files f WHERE f.changeset = ?1 ORDER BY f.path"))?;
        let mut rows = st.query(params![cs])?;
        while let Some(r) = rows.next()? {
            f(file_from_row(r)?)?;
        }
        Ok(())
    }

    /// The entry at `path` as of changeset `n`.
    pub fn entry_at(&self, n: i64, path: &[u8]) -> Result<Option<FileRow>> {
        let mut st =
            self.conn.prepare_cached(&format!("SELECT {FILE_COLS} FROM files f WHERE f.path = ?2 AND {LATEST}"))?;
        Ok(st.query_row(params![n, path], file_from_row).optional()?)
    }

    /// The children of directory `dir` as of changeset `n`, by name.
    pub fn children_at(&self, n: i64, dir: &[u8]) -> Result<Vec<FileRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLS} FROM files f WHERE f.dir = ?2 AND {LATEST} ORDER BY f.path"
        ))?;
        let rows = st.query_map(params![n, dir], file_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every path of hardlinked inode `ino` as of changeset `n`.
    pub fn hardlinks_at(&self, n: i64, ino: u64) -> Result<Vec<FileRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLS} FROM files f WHERE f.ino = ?2 AND f.nlink > 1 AND {LATEST} ORDER BY f.path"
        ))?;
        let rows = st.query_map(params![n, ino as i64], file_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The tree as of changeset `n` in path order (parents before children),
    /// restricted to `prefix` and everything below it when given.
    pub fn for_each_in_tree(
        &self,
        n: i64,
        prefix: Option<&[u8]>,
        mut f: impl FnMut(FileRow) -> Result<()>,
    ) -> Result<()> {
        match prefix {
            None | Some(b"") => {
                let mut st =
                    self.conn.prepare(&format!("SELECT {FILE_COLS} FROM files f WHERE {LATEST} ORDER BY f.path"))?;
                let mut rows = st.query(params![n])?;
                while let Some(r) = rows.next()? {
                    f(file_from_row(r)?)?;
                }
            }
            Some(p) => {
                if let Some(row) = self.entry_at(n, p)? {
                    f(row)?;
                }
                let (lo, hi) = subtree_bounds(p);
                let mut st = self.conn.prepare(&format!(
                    "SELECT {FILE_COLS} FROM files f WHERE f.path >= ?2 AND f.path < ?3 AND {LATEST} ORDER BY f.path"
                ))?;
                let mut rows = st.query(params![n, lo, hi])?;
                while let Some(r) = rows.next()? {
                    f(file_from_row(r)?)?;
                }
            }
        }
        Ok(())
    }

    /// Every version of paths matching `pattern` (a glob when it holds `*?[`,
    /// else a substring), newest changeset first within a path.
    pub fn search(&self, pattern: &str, limit: usize) -> Result<Vec<(FileRow, ChangesetRow)>> {
        let glob = if pattern.contains(['*', '?', '[']) { pattern.to_string() } else { format!("*{pattern}*") };
        let mut st = self.conn.prepare(&format!(
            "SELECT {FILE_COLS}, c.id FROM files f JOIN changesets c ON c.id = f.changeset \
             WHERE c.status = 'complete' AND CAST(f.path AS TEXT) GLOB ?1 ORDER BY f.path, f.changeset DESC LIMIT ?2"
        ))?;
        let mut rows = st.query(params![glob, limit as i64])?;
        let mut out = Vec::new();
        let mut cache: std::collections::HashMap<i64, ChangesetRow> = Default::default();
        while let Some(r) = rows.next()? {
            let row = file_from_row(r)?;
            let cs_id: i64 = r.get(21)?;
            if !cache.contains_key(&cs_id)
                && let Some(cs) = self.changeset(cs_id)?
            {
                cache.insert(cs_id, cs);
            }
            if let Some(cs) = cache.get(&cs_id) {
                out.push((row, cs.clone()));
            }
        }
        Ok(out)
    }

    /// Every distinct chunk referenced by stored rows of complete changesets.
    pub fn for_each_referenced_chunk(&self, mut f: impl FnMut(ChunkId) -> Result<()>) -> Result<()> {
        let mut st = self.conn.prepare(
            "SELECT f.chunks FROM files f JOIN changesets c ON c.id = f.changeset \
             WHERE c.status = 'complete' AND f.status = 1 AND f.chunks IS NOT NULL",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let b: Vec<u8> = r.get(0)?;
            for c in chunks_from_blob(&b) {
                f(c)?;
            }
        }
        Ok(())
    }

    pub fn count_files(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT count(*) FROM files", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

/// A file whose content is now confirmed stored.
#[derive(Clone, Debug)]
pub struct StoredFile {
    pub path: Vec<u8>,
    pub chunks: Vec<ChunkId>,
    pub file_hash: [u8; 32],
    pub size: u64,
    pub uploaded_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn meta(ftype: FileType, size: u64, mtime: i64) -> Metadata {
        Metadata {
            ftype,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime_ns: mtime,
            ctime_ns: mtime,
            ino: 1,
            nlink: 1,
            rdev: 0,
            symlink_target: None,
            xattrs: vec![(b"user.a".to_vec(), b"1".to_vec())],
        }
    }

    fn row(cs: i64, path: &str, kind: ChangeKind, m: Option<Metadata>) -> FileRow {
        FileRow {
            changeset: cs,
            path: path.as_bytes().to_vec(),
            kind,
            status: FileStatus::Stored,
            meta: m,
            chunks: vec![],
            file_hash: None,
            error: None,
            uploaded_at: None,
            confirmed_at: None,
        }
    }

    fn new_cs<'a>(snap: &'a str) -> NewChangeset<'a> {
        NewChangeset { snapshot: snap, source: "walk", identity: "{}", method: "walk", started_at: 1 }
    }

    #[test]
    fn tree_at_each_changeset() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&dir.path().join("c.sqlite"), "ds").unwrap();
        let cs1 = c.create_changeset(&new_cs("s1")).unwrap();
        assert!(c.create_changeset(&new_cs("s1b")).is_err(), "only one open changeset");
        c.insert_files(&[
            row(1, "", ChangeKind::Added, Some(meta(FileType::Dir, 0, 1))),
            row(1, "a", ChangeKind::Added, Some(meta(FileType::Dir, 0, 1))),
            row(1, "a/x", ChangeKind::Added, Some(meta(FileType::File, 10, 1))),
            row(1, "a/y", ChangeKind::Added, Some(meta(FileType::File, 20, 1))),
            row(1, "a-b", ChangeKind::Added, Some(meta(FileType::File, 5, 1))),
        ])
        .unwrap();
        c.set_listed(cs1.id, 2, "walk").unwrap();
        c.set_complete(cs1.id, "full", "m1", 3, 100).unwrap();
        let cs2 = c.create_changeset(&new_cs("s2")).unwrap();
        assert_eq!(cs2.parent, Some(1));
        c.insert_files(&[
            row(2, "a/x", ChangeKind::Removed, None),
            row(2, "a/y", ChangeKind::Modified, Some(meta(FileType::File, 21, 2))),
            row(2, "a/z", ChangeKind::Added, Some(meta(FileType::File, 1, 2))),
        ])
        .unwrap();
        c.set_complete(cs2.id, "delta", "m2", 4, 0).unwrap();

        let tree = |n: i64, prefix: Option<&[u8]>| {
            let mut v = Vec::new();
            c.for_each_in_tree(n, prefix, |r| {
                v.push(String::from_utf8(r.path).unwrap());
                Ok(())
            })
            .unwrap();
            v
        };
        assert_eq!(tree(1, None), vec!["", "a", "a-b", "a/x", "a/y"]);
        assert_eq!(tree(2, None), vec!["", "a", "a-b", "a/y", "a/z"]);
        assert_eq!(tree(2, Some(b"a")), vec!["a", "a/y", "a/z"]);
        let kids: Vec<_> = c.children_at(2, b"a").unwrap().into_iter().map(|r| r.path).collect();
        assert_eq!(kids, vec![b"a/y".to_vec(), b"a/z".to_vec()]);
        let roots: Vec<_> = c.children_at(1, b"").unwrap().into_iter().map(|r| r.path).collect();
        assert_eq!(roots, vec![b"a".to_vec(), b"a-b".to_vec()]);
        assert_eq!(c.entry_at(1, b"a/y").unwrap().unwrap().meta.unwrap().size, 20);
        assert_eq!(c.entry_at(2, b"a/y").unwrap().unwrap().meta.unwrap().size, 21);
        assert!(c.entry_at(2, b"a/x").unwrap().is_none());
        let cs2 = c.changeset(2).unwrap().unwrap();
        assert_eq!((cs2.n_added, cs2.n_modified, cs2.n_removed), (1, 1, 1));
        let hits = c.search("a/y", 10).unwrap();
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].1.snapshot, "s2");
        assert_eq!(c.search("*x", 10).unwrap().len(), 2, "added and removed versions");
        // The row's xattrs survive the round trip.
        assert_eq!(c.entry_at(1, b"a").unwrap().unwrap().meta.unwrap().xattrs, meta(FileType::Dir, 0, 1).xattrs);
    }

    #[test]
    fn a_catalog_belongs_to_one_dataset_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        Catalog::open(&p, "one").unwrap();
        assert!(Catalog::open(&p, "two").is_err());
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn pending_and_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&dir.path().join("c.sqlite"), "ds").unwrap();
        c.create_changeset(&new_cs("s1")).unwrap();
        let mut r = row(1, "f1", ChangeKind::Added, Some(meta(FileType::File, 3, 1)));
        r.status = FileStatus::Pending;
        let mut r2 = r.clone();
        r2.path = b"f2".to_vec();
        c.insert_files(&[r, r2]).unwrap();
        assert_eq!(c.count_pending(1).unwrap(), 2);
        let p = c.pending_files(1, None, 1).unwrap();
        assert_eq!(p[0].path, b"f1");
        let p = c.pending_files(1, Some(b"f1"), 10).unwrap();
        assert_eq!(p.len(), 1);
        c.mark_stored(
            1,
            &[StoredFile {
                path: b"f1".to_vec(),
                chunks: vec![ChunkId([1; 32])],
                file_hash: [2; 32],
                size: 3,
                uploaded_at: 5,
            }],
            6,
        )
        .unwrap();
        c.mark_failed(1, b"f2", "Permission denied").unwrap();
        assert_eq!(c.count_pending(1).unwrap(), 0);
        c.set_complete(1, "full", "m", 7, 0).unwrap();
        let f1 = c.entry_at(1, b"f1").unwrap().unwrap();
        assert_eq!(f1.chunks, vec![ChunkId([1; 32])]);
        assert_eq!(f1.confirmed_at, Some(6));
        assert!(c.entry_at(1, b"f2").unwrap().is_none(), "a failed read is absent from the tree");
        assert_eq!(c.changeset(1).unwrap().unwrap().n_failed, 1);
    }
}
