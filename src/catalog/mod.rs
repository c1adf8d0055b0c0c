//! The local state: one SQLite catalog per dataset, plus the repository-wide
//! chunk index. The catalog never talks to a backend; everything in it can
//! be rebuilt from the repository and the key (`catalog rebuild`).
//!
//! The `files` table holds, per changeset, only the entries that changed in
//! it. The tree as of changeset N is, for every path, its newest row with
//! changeset <= N, unless that row is a removal or a failed read.
//! Invariants:
//! - at most one changeset is pending or uploading, and it is the newest,
//!   so "<= N" never sees a half-done changeset when N is complete;
//! - a `damaged` changeset (its manifest is in the repository but cannot be
//!   read) keeps its number and has no rows; the changeset after it is
//!   written as a full manifest, so nothing later depends on it;
//! - an attempt that can never finish (its snapshot was destroyed) leaves
//!   `changesets` for `failed_changesets` with its rows deleted, so numbers
//!   stay contiguous, as they are in the repository;
//! - every row carries a checksum (rows.rs), checked on every read.

pub mod forget;
pub mod index;
pub mod rows;
pub mod schema;
pub mod tree;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use std::path::{Path, PathBuf};

use rows::{RawFile, cs_from_row, cs_from_row_unchecked, cs_sum, file_from_row};
pub use rows::{chunks_from_blob, chunks_to_blob, decode_xattrs, encode_xattrs};
use schema::Explain;

use crate::model::{ChangeKind, ChunkId, Metadata, display_path};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangesetStatus {
    /// The changes are being listed; a crash here means list again.
    Pending,
    /// Listed; content is being uploaded. A crash here resumes.
    Uploading,
    /// Manifest confirmed stored.
    Complete,
    /// Ended without a manifest (`failed_changesets` rows only).
    Failed,
    /// The repository holds this number but its manifest cannot be read (or
    /// an earlier link of its chain is missing): not restorable.
    Damaged,
}

impl ChangesetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangesetStatus::Pending => "pending",
            ChangesetStatus::Uploading => "uploading",
            ChangesetStatus::Complete => "complete",
            ChangesetStatus::Failed => "failed",
            ChangesetStatus::Damaged => "damaged",
        }
    }
    pub fn parse(s: &str) -> Option<ChangesetStatus> {
        Some(match s {
            "pending" => ChangesetStatus::Pending,
            "uploading" => ChangesetStatus::Uploading,
            "complete" => ChangesetStatus::Complete,
            "failed" => ChangesetStatus::Failed,
            "damaged" => ChangesetStatus::Damaged,
            _ => return None,
        })
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

impl ChangesetRow {
    /// A changeset with nothing counted yet and no manifest.
    pub fn new(id: i64, uid: String, parent: Option<i64>, new: &NewChangeset, status: ChangesetStatus) -> Self {
        ChangesetRow {
            id,
            uid,
            parent,
            snapshot: new.snapshot.to_string(),
            source: new.source.to_string(),
            identity: new.identity.to_string(),
            method: new.method.to_string(),
            kind: None,
            status,
            started_at: new.started_at,
            listed_at: None,
            completed_at: None,
            n_added: 0,
            n_modified: 0,
            n_metadata: 0,
            n_removed: 0,
            n_failed: 0,
            bytes_changed: 0,
            bytes_uploaded: 0,
            manifest_key: None,
        }
    }
}

const CS_COLS: &str = "id, uid, parent, snapshot, source, identity, method, kind, status, started_at, listed_at, \
     completed_at, n_added, n_modified, n_metadata, n_removed, n_failed, bytes_changed, bytes_uploaded, manifest_key, sum";

/// An attempt that ended without a manifest (`abandon`, or its snapshot
/// vanished before its upload finished).
#[derive(Clone, Debug, serde::Serialize)]
pub struct FailedChangeset {
    pub uid: String,
    /// The number it would have had; the next changeset took it instead.
    pub number: i64,
    pub snapshot: String,
    pub source: String,
    pub identity: String,
    pub started_at: i64,
    pub failed_at: i64,
    pub reason: String,
    pub files: u64,
    pub bytes_uploaded: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FileStatus {
    Pending = 0,
    Stored = 1,
    Failed = 2,
}

impl FileStatus {
    fn from_i64(v: i64) -> Option<FileStatus> {
        Some(match v {
            0 => FileStatus::Pending,
            1 => FileStatus::Stored,
            2 => FileStatus::Failed,
            _ => return None,
        })
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

/// How many columns FILE_COLS names: a query that selects more puts them
/// from this index on.
const FILE_COLS_LEN: usize = 23;
/// The columns `rows::RawFile::read` expects, in its order.
const FILE_COLS: &str = "f.changeset, f.path, f.dir, f.kind, f.status, f.ftype, f.mode, f.uid, f.gid, f.size, \
     f.mtime_ns, f.ctime_ns, f.ino, f.nlink, f.rdev, f.symlink, f.xattrs, f.chunks, f.file_hash, f.error, \
     f.uploaded_at, f.confirmed_at, f.sum";
const FILE_INSERT: &str = "INSERT OR REPLACE INTO files (changeset, path, dir, kind, status, ftype, mode, uid, gid, \
     size, mtime_ns, ctime_ns, ino, nlink, rdev, symlink, xattrs, chunks, file_hash, error, uploaded_at, \
     confirmed_at, sum) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20, ?21, ?22, ?23)";

/// Upper bound of the byte range of paths strictly below `prefix/`.
fn subtree_bounds(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut lo = prefix.to_vec();
    lo.push(b'/');
    let mut hi = prefix.to_vec();
    hi.push(b'/' + 1);
    (lo, hi)
}

/// The newest row per path as of changeset `n`, unless it is a removal or
/// a failed read. (Rows of unknown kind or status are not filtered out
/// here: decoding them is an error that names them, never a silent gap.)
const LATEST: &str = "f.changeset <= ?1 AND f.changeset = \
     (SELECT max(g.changeset) FROM files g WHERE g.path = f.path AND g.changeset <= ?1) \
     AND f.kind != 4 AND f.status != 2";

pub struct Catalog {
    conn: Connection,
    dataset: String,
    path: PathBuf,
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
        schema::migrate(&mut conn, schema::DATASET_MIGRATIONS, "catalog", path)?;
        let existing: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key = 'dataset'", [], |r| r.get(0)).optional().db(path)?;
        match existing {
            Some(d) if d != dataset => {
                bail!("catalog {} belongs to dataset {d:?}, not {dataset:?}: check --state-dir", path.display())
            }
            Some(_) => {}
            None => {
                conn.execute("INSERT INTO meta (key, value) VALUES ('dataset', ?1)", params![dataset]).db(path)?;
            }
        }
        let mut c = Catalog { conn, dataset: dataset.to_string(), path: path.to_path_buf() };
        c.backfill_sums()?;
        Ok(c)
    }

    /// The dataset a catalog file belongs to, without creating anything.
    pub fn dataset_name_of(path: &Path) -> Result<String> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).db(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(60)).db(path)?;
        conn.query_row("SELECT value FROM meta WHERE key = 'dataset'", [], |r| r.get(0)).db(path)
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Catalogs made before rows had checksums get theirs once, here. After
    /// that, a row without one is damage.
    fn backfill_sums(&mut self) -> Result<()> {
        let done: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'row_sums'", [], |r| r.get(0))
            .optional()
            .db(&self.path)?;
        if done.is_some() {
            return Ok(());
        }
        let tx = self.conn.transaction().db(&self.path)?;
        {
            let mut st = tx.prepare(&format!("SELECT {FILE_COLS} FROM files f")).db(&self.path)?;
            let mut up = tx.prepare("UPDATE files SET sum = ?3 WHERE changeset = ?1 AND path = ?2").db(&self.path)?;
            let mut rows = st.query([]).db(&self.path)?;
            while let Some(r) = rows.next().db(&self.path)? {
                let (raw, _) = RawFile::read(r, 0).db(&self.path)?;
                up.execute(params![raw.changeset, raw.path, raw.sum()]).db(&self.path)?;
            }
            let mut st = tx.prepare(&format!("SELECT {CS_COLS} FROM changesets")).db(&self.path)?;
            let mut up = tx.prepare("UPDATE changesets SET sum = ?2 WHERE id = ?1").db(&self.path)?;
            let mut rows = st.query([]).db(&self.path)?;
            while let Some(r) = rows.next().db(&self.path)? {
                let (row, _) = cs_from_row_unchecked(r).db(&self.path)?;
                up.execute(params![row.id, cs_sum(&row)]).db(&self.path)?;
            }
            tx.execute("INSERT INTO meta (key, value) VALUES ('row_sums', 'v1')", []).db(&self.path)?;
        }
        tx.commit().db(&self.path)
    }

    /// Wrap an error of this catalog with its file and the way out.
    fn explain<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        r.db(&self.path).with_context(|| format!("catalog of dataset {}", self.dataset))
    }

    // ---- changesets ----

    pub fn changesets(&self) -> Result<Vec<ChangesetRow>> {
        let mut st = self.explain(self.conn.prepare(&format!("SELECT {CS_COLS} FROM changesets ORDER BY id")))?;
        let rows = self.explain(st.query_map([], cs_from_row))?;
        self.explain(rows.collect::<rusqlite::Result<_>>())
    }

    pub fn changeset(&self, id: i64) -> Result<Option<ChangesetRow>> {
        self.explain(
            self.conn
                .query_row(&format!("SELECT {CS_COLS} FROM changesets WHERE id = ?1"), params![id], cs_from_row)
                .optional(),
        )
    }

    pub fn changeset_by_snapshot(&self, snapshot: &str) -> Result<Option<ChangesetRow>> {
        self.explain(
            self.conn
                .query_row(
                    &format!("SELECT {CS_COLS} FROM changesets WHERE snapshot = ?1"),
                    params![snapshot],
                    cs_from_row,
                )
                .optional(),
        )
    }

    fn one_where(&self, cond: &str) -> Result<Option<ChangesetRow>> {
        self.explain(
            self.conn
                .query_row(
                    &format!("SELECT {CS_COLS} FROM changesets WHERE {cond} ORDER BY id DESC LIMIT 1"),
                    [],
                    cs_from_row,
                )
                .optional(),
        )
    }

    /// The newest restorable changeset: the base of the next diff.
    pub fn latest_complete(&self) -> Result<Option<ChangesetRow>> {
        self.one_where("status = 'complete'")
    }

    /// The newest changeset of any status.
    pub fn latest(&self) -> Result<Option<ChangesetRow>> {
        self.one_where("1")
    }

    /// The one changeset that is being listed or uploaded, if any.
    pub fn incomplete(&self) -> Result<Option<ChangesetRow>> {
        self.one_where("status IN ('pending', 'uploading')")
    }

    /// The newest full (checkpoint) changeset at or before `n`.
    pub fn full_at_or_before(&self, n: i64) -> Result<Option<ChangesetRow>> {
        self.one_where(&format!("status = 'complete' AND kind = 'full' AND id <= {n}"))
    }

    fn insert_changeset(tx: &Connection, row: &ChangesetRow, path: &Path) -> Result<()> {
        tx.execute(
            &format!(
                "INSERT INTO changesets ({CS_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
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
                row.manifest_key,
                cs_sum(row),
            ],
        )
        .db(path)
        .with_context(|| format!("cannot record changeset {} (snapshot {})", row.id, row.snapshot))?;
        Ok(())
    }

    /// Start changeset max(id) + 1, whose parent is the newest changeset of
    /// any status, as in the repository's chain.
    pub fn create_changeset(&mut self, new: &NewChangeset) -> Result<ChangesetRow> {
        if let Some(open) = self.incomplete()? {
            bail!("changeset {} of {} is not complete yet; it must finish first", open.id, self.dataset);
        }
        let parent = self.latest()?.map(|c| c.id);
        let id = parent.map_or(1, |p| p + 1);
        let mut rnd = [0u8; 16];
        getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let row = ChangesetRow::new(id, hex::encode(rnd), parent, new, ChangesetStatus::Pending);
        Self::insert_changeset(&self.conn, &row, &self.path)?;
        self.changeset(id)?.context("changeset vanished after insert")
    }

    /// Insert a changeset as read back from a manifest (catalog rebuild).
    pub fn insert_rebuilt_changeset(&mut self, row: &ChangesetRow) -> Result<()> {
        Self::insert_changeset(&self.conn, row, &self.path)
    }

    /// Drop a changeset whose listing never finished, with its rows.
    pub fn discard_changeset(&mut self, id: i64) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        tx.execute("DELETE FROM files WHERE changeset = ?1", params![id]).db(&self.path)?;
        tx.execute("DELETE FROM changesets WHERE id = ?1", params![id]).db(&self.path)?;
        tx.commit().db(&self.path)
    }

    /// End an unfinished changeset for good: it moves to
    /// `failed_changesets` (its number is free again, so the repository's
    /// numbers stay contiguous) and its rows go. Packs it uploaded stay in
    /// the repository and the index: later changesets may use them.
    pub fn abandon_changeset(&mut self, id: i64, reason: &str, now: i64) -> Result<FailedChangeset> {
        let row = self.changeset(id)?.with_context(|| format!("no changeset {id} in dataset {}", self.dataset))?;
        if !matches!(row.status, ChangesetStatus::Pending | ChangesetStatus::Uploading) {
            bail!(
                "changeset {id} ({}) of dataset {} is {}: only an unfinished changeset can be abandoned",
                row.snapshot,
                self.dataset,
                row.status.as_str()
            );
        }
        let files = self.explain(self.conn.query_row(
            "SELECT count(*) FROM files WHERE changeset = ?1",
            params![id],
            |r| r.get::<_, i64>(0),
        ))? as u64;
        let failed = FailedChangeset {
            uid: row.uid.clone(),
            number: id,
            snapshot: row.snapshot.clone(),
            source: row.source.clone(),
            identity: row.identity.clone(),
            started_at: row.started_at,
            failed_at: now,
            reason: reason.to_string(),
            files,
            bytes_uploaded: row.bytes_uploaded,
        };
        let tx = self.conn.transaction().db(&self.path)?;
        tx.execute(
            "INSERT INTO failed_changesets (uid, number, snapshot, source, identity, started_at, failed_at, reason, \
             files, bytes_uploaded) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                failed.uid,
                failed.number,
                failed.snapshot,
                failed.source,
                failed.identity,
                failed.started_at,
                failed.failed_at,
                failed.reason,
                failed.files as i64,
                failed.bytes_uploaded as i64
            ],
        )
        .db(&self.path)?;
        tx.execute("DELETE FROM files WHERE changeset = ?1", params![id]).db(&self.path)?;
        tx.execute("DELETE FROM changesets WHERE id = ?1", params![id]).db(&self.path)?;
        tx.commit().db(&self.path)?;
        Ok(failed)
    }

    /// Every attempt that ended without a manifest, oldest first.
    pub fn failed_changesets(&self) -> Result<Vec<FailedChangeset>> {
        let mut st = self.explain(self.conn.prepare(
            "SELECT uid, number, snapshot, source, identity, started_at, failed_at, reason, files, bytes_uploaded \
             FROM failed_changesets ORDER BY failed_at, number",
        ))?;
        let rows = self.explain(st.query_map([], |r| {
            Ok(FailedChangeset {
                uid: r.get(0)?,
                number: r.get(1)?,
                snapshot: r.get(2)?,
                source: r.get(3)?,
                identity: r.get(4)?,
                started_at: r.get(5)?,
                failed_at: r.get(6)?,
                reason: r.get(7)?,
                files: r.get::<_, i64>(8)? as u64,
                bytes_uploaded: r.get::<_, i64>(9)? as u64,
            })
        }))?;
        self.explain(rows.collect::<rusqlite::Result<_>>())
    }

    /// Re-derive the checksum of a changeset row after an update.
    fn refresh_cs_sum(&self, id: i64) -> Result<()> {
        let (row, _) = self.explain(self.conn.query_row(
            &format!("SELECT {CS_COLS} FROM changesets WHERE id = ?1"),
            params![id],
            cs_from_row_unchecked,
        ))?;
        self.explain(self.conn.execute("UPDATE changesets SET sum = ?2 WHERE id = ?1", params![id, cs_sum(&row)]))?;
        Ok(())
    }

    pub fn set_listed(&mut self, id: i64, now: i64, method: &str) -> Result<()> {
        self.explain(self.conn.execute(
            "UPDATE changesets SET status = 'uploading', listed_at = ?2, method = ?3 WHERE id = ?1",
            params![id, now, method],
        ))?;
        self.refresh_cs_sum(id)
    }

    /// Counts per change kind and bytes of changed content, from the rows.
    pub fn tally(&self, id: i64) -> Result<(u64, u64, u64, u64, u64, u64)> {
        let mut st = self.explain(self.conn.prepare(
            "SELECT kind, status, count(*), coalesce(sum(CASE WHEN kind IN (1,2) THEN size ELSE 0 END), 0) \
             FROM files WHERE changeset = ?1 GROUP BY kind, status",
        ))?;
        let mut rows = self.explain(st.query(params![id]))?;
        let (mut a, mut m, mut md, mut rm, mut failed, mut bytes) = (0, 0, 0, 0, 0, 0);
        while let Some(r) = self.explain(rows.next())? {
            let (kind, status, n, b): (i64, i64, i64, i64) =
                self.explain((|| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))())?;
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
                None => bail!(
                    "catalog {} holds {n} rows of changeset {id} with unknown change kind {kind}: it is damaged; run `n2s-agent catalog rebuild --dataset {}`",
                    self.path.display(),
                    self.dataset
                ),
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
        self.explain(self.conn.execute(
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
        ))?;
        self.refresh_cs_sum(id)
    }

    /// Add to the bytes uploaded for a changeset (kept across resumes).
    pub fn add_uploaded(&mut self, id: i64, bytes: u64) -> Result<()> {
        self.explain(self.conn.execute(
            "UPDATE changesets SET bytes_uploaded = bytes_uploaded + ?2 WHERE id = ?1",
            params![id, bytes as i64],
        ))?;
        Ok(())
    }

    // ---- files ----

    /// Insert rows in one transaction (the caller batches).
    pub fn insert_files(&mut self, rows: &[FileRow]) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        {
            let mut st = tx.prepare_cached(FILE_INSERT).db(&self.path)?;
            for r in rows {
                st.execute(params_from_iter(RawFile::of(r).values())).db(&self.path)?;
            }
        }
        tx.commit().db(&self.path)
    }

    /// Files of changeset `cs` still waiting for content, after `after` in
    /// path order (paged so memory stays bounded).
    pub fn pending_files(&self, cs: i64, after: Option<&[u8]>, limit: usize) -> Result<Vec<FileRow>> {
        let mut st = self.explain(self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLS} FROM files f WHERE f.changeset = ?1 AND f.status = 0 AND f.path > ?2 \
             ORDER BY f.path LIMIT ?3"
        )))?;
        let after = after.map(<[u8]>::to_vec);
        // Every path sorts after the empty blob except the root itself, which
        // is never pending (it is a directory).
        let rows = self.explain(st.query_map(params![cs, after.unwrap_or_default(), limit as i64], file_from_row))?;
        self.explain(rows.collect::<rusqlite::Result<_>>())
    }

    /// Whether changeset `cs` has any row at all.
    pub fn has_rows(&self, cs: i64) -> Result<bool> {
        let mut st = self.explain(self.conn.prepare_cached("SELECT 1 FROM files WHERE changeset = ?1 LIMIT 1"))?;
        self.explain(st.exists(params![cs]))
    }

    /// Whether changeset `cs` has a row for `path`.
    pub fn has_row(&self, cs: i64, path: &[u8]) -> Result<bool> {
        let mut st =
            self.explain(self.conn.prepare_cached("SELECT 1 FROM files WHERE changeset = ?1 AND path = ?2"))?;
        self.explain(st.exists(params![cs, path]))
    }

    /// Files of changeset `cs` still waiting for content, and their bytes.
    pub fn pending_totals(&self, cs: i64) -> Result<(u64, u64)> {
        let (n, bytes) = self.explain(self.conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM files WHERE changeset = ?1 AND status = 0",
            params![cs],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        ))?;
        Ok((n as u64, bytes as u64))
    }

    pub fn count_pending(&self, cs: i64) -> Result<u64> {
        Ok(self.explain(self.conn.query_row(
            "SELECT count(*) FROM files WHERE changeset = ?1 AND status = 0",
            params![cs],
            |r| r.get::<_, i64>(0),
        ))? as u64)
    }

    /// Rewrite rows of changeset `cs` in one transaction: each is read,
    /// changed by `update`, and written back with a fresh checksum.
    fn update_files<T>(
        &mut self,
        cs: i64,
        items: &[T],
        path_of: impl Fn(&T) -> &[u8],
        update: impl Fn(&T, &mut RawFile),
    ) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        {
            let mut get = tx
                .prepare_cached(&format!("SELECT {FILE_COLS} FROM files f WHERE f.changeset = ?1 AND f.path = ?2"))
                .db(&self.path)?;
            let mut put = tx.prepare_cached(FILE_INSERT).db(&self.path)?;
            for item in items {
                let path = path_of(item);
                let (mut raw, _) = get
                    .query_row(params![cs, path], |r| RawFile::read(r, 0))
                    .db(&self.path)
                    .with_context(|| format!("changeset {cs} has no row for {}", display_path(path)))?;
                update(item, &mut raw);
                put.execute(params_from_iter(raw.values())).db(&self.path)?;
            }
        }
        tx.commit().db(&self.path)
    }

    /// Record files whose content is confirmed stored, in one transaction.
    pub fn mark_stored(&mut self, cs: i64, done: &[StoredFile], now: i64) -> Result<()> {
        self.update_files(
            cs,
            done,
            |d| &d.path,
            |d, raw| {
                raw.status = FileStatus::Stored as i64;
                raw.chunks = (!d.chunks.is_empty()).then(|| chunks_to_blob(&d.chunks));
                raw.file_hash = Some(d.file_hash.to_vec());
                raw.ints[4] = Some(d.size as i64);
                raw.uploaded_at = Some(d.uploaded_at);
                raw.confirmed_at = Some(now);
                raw.error = d.note.clone();
            },
        )
    }

    /// Send stored files of changeset `cs` back to pending: their chunks
    /// lie in packs a prune is about to delete, so they are stored again.
    pub fn requeue_files(&mut self, cs: i64, paths: &[Vec<u8>]) -> Result<()> {
        self.update_files(
            cs,
            paths,
            |p| p,
            |_, raw| {
                raw.status = FileStatus::Pending as i64;
                raw.chunks = None;
                raw.file_hash = None;
                raw.uploaded_at = None;
                raw.confirmed_at = None;
            },
        )
    }

    pub fn mark_failed(&mut self, cs: i64, path: &[u8], error: &str) -> Result<()> {
        self.update_files(
            cs,
            &[path],
            |p| p,
            |_, raw| {
                raw.status = FileStatus::Failed as i64;
                raw.error = Some(error.to_string());
            },
        )
    }

    /// Rows of one changeset in path order, streamed.
    pub fn for_each_in_changeset(&self, cs: i64, mut f: impl FnMut(FileRow) -> Result<()>) -> Result<()> {
        let mut st = self.explain(
            self.conn.prepare(&format!("SELECT {FILE_COLS} FROM files f WHERE f.changeset = ?1 ORDER BY f.path")),
        )?;
        let mut rows = self.explain(st.query(params![cs]))?;
        while let Some(r) = self.explain(rows.next())? {
            f(self.explain(file_from_row(r))?)?;
        }
        Ok(())
    }

    /// The entry at `path` as of changeset `n`.
    pub fn entry_at(&self, n: i64, path: &[u8]) -> Result<Option<FileRow>> {
        let mut st = self.explain(
            self.conn.prepare_cached(&format!("SELECT {FILE_COLS} FROM files f WHERE f.path = ?2 AND {LATEST}")),
        )?;
        self.explain(st.query_row(params![n, path], file_from_row).optional())
    }

    /// The children of directory `dir` as of changeset `n`, by name.
    pub fn children_at(&self, n: i64, dir: &[u8]) -> Result<Vec<FileRow>> {
        let mut st = self.explain(self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLS} FROM files f WHERE f.dir = ?2 AND {LATEST} ORDER BY f.path"
        )))?;
        let rows = self.explain(st.query_map(params![n, dir], file_from_row))?;
        self.explain(rows.collect::<rusqlite::Result<_>>())
    }

    /// Every path of hardlinked inode `ino` as of changeset `n`.
    pub fn hardlinks_at(&self, n: i64, ino: u64) -> Result<Vec<FileRow>> {
        let mut st = self.explain(self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLS} FROM files f WHERE f.ino = ?2 AND f.nlink > 1 AND {LATEST} ORDER BY f.path"
        )))?;
        let rows = self.explain(st.query_map(params![n, ino as i64], file_from_row))?;
        self.explain(rows.collect::<rusqlite::Result<_>>())
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
                let mut st = self.explain(
                    self.conn.prepare(&format!("SELECT {FILE_COLS} FROM files f WHERE {LATEST} ORDER BY f.path")),
                )?;
                let mut rows = self.explain(st.query(params![n]))?;
                while let Some(r) = self.explain(rows.next())? {
                    f(self.explain(file_from_row(r))?)?;
                }
            }
            Some(p) => {
                if let Some(row) = self.entry_at(n, p)? {
                    f(row)?;
                }
                let (lo, hi) = subtree_bounds(p);
                let mut st = self.explain(self.conn.prepare(&format!(
                    "SELECT {FILE_COLS} FROM files f WHERE f.path >= ?2 AND f.path < ?3 AND {LATEST} ORDER BY f.path"
                )))?;
                let mut rows = self.explain(st.query(params![n, lo, hi]))?;
                while let Some(r) = self.explain(rows.next())? {
                    f(self.explain(file_from_row(r))?)?;
                }
            }
        }
        Ok(())
    }

    /// Every version of paths matching `pattern` (a glob when it holds `*?[`,
    /// else a substring), newest changeset first within a path.
    pub fn search(&self, pattern: &str, limit: usize) -> Result<Vec<(FileRow, ChangesetRow)>> {
        let glob = if pattern.contains(['*', '?', '[']) { pattern.to_string() } else { format!("*{pattern}*") };
        let mut st = self.explain(self.conn.prepare(&format!(
            "SELECT {FILE_COLS}, c.id FROM files f JOIN changesets c ON c.id = f.changeset \
             WHERE c.status = 'complete' AND CAST(f.path AS TEXT) GLOB ?1 ORDER BY f.path, f.changeset DESC LIMIT ?2"
        )))?;
        let mut rows = self.explain(st.query(params![glob, limit as i64]))?;
        let mut out = Vec::new();
        let mut cache: std::collections::HashMap<i64, ChangesetRow> = Default::default();
        while let Some(r) = self.explain(rows.next())? {
            let row = self.explain(file_from_row(r))?;
            let cs_id: i64 = self.explain(r.get(FILE_COLS_LEN))?;
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
        let mut st = self.explain(self.conn.prepare(&format!(
            "SELECT {FILE_COLS} FROM files f JOIN changesets c ON c.id = f.changeset \
             WHERE c.status = 'complete' AND f.status = 1 AND f.chunks IS NOT NULL"
        )))?;
        let mut rows = self.explain(st.query([]))?;
        while let Some(r) = self.explain(rows.next())? {
            for c in self.explain(file_from_row(r))?.chunks {
                f(c)?;
            }
        }
        Ok(())
    }

    /// Record, in changeset `at`, the removal of every path of the tree at
    /// `prev` that `at` has no row for: a full manifest replayed after a
    /// hole in the history states the whole tree, so what it does not hold
    /// is gone. Returns how many removals were recorded.
    pub fn remove_absent(&mut self, prev: i64, at: i64) -> Result<u64> {
        let mut after: Vec<u8> = Vec::new();
        let mut first = true;
        let mut n = 0u64;
        loop {
            let page: Vec<Vec<u8>> = {
                let mut st = self.explain(self.conn.prepare_cached(&format!(
                    "SELECT f.path FROM files f WHERE {LATEST} AND (f.path > ?2 OR ?3) AND NOT EXISTS \
                     (SELECT 1 FROM files h WHERE h.changeset = ?4 AND h.path = f.path) ORDER BY f.path LIMIT 4096"
                )))?;
                let rows = self.explain(st.query_map(params![prev, after, first, at], |r| r.get(0)))?;
                self.explain(rows.collect::<rusqlite::Result<_>>())?
            };
            let Some(last) = page.last() else { break };
            after = last.clone();
            first = false;
            n += page.len() as u64;
            let rows: Vec<FileRow> = page
                .into_iter()
                .map(|path| FileRow {
                    changeset: at,
                    path,
                    kind: ChangeKind::Removed,
                    status: FileStatus::Stored,
                    meta: None,
                    chunks: Vec::new(),
                    file_hash: None,
                    error: None,
                    uploaded_at: None,
                    confirmed_at: None,
                })
                .collect();
            self.insert_files(&rows)?;
        }
        Ok(n)
    }

    /// Every stored row that has content, of complete changesets, streamed.
    pub fn for_each_stored_row(&self, mut f: impl FnMut(FileRow) -> Result<()>) -> Result<()> {
        let mut st = self.explain(self.conn.prepare(&format!(
            "SELECT {FILE_COLS} FROM files f JOIN changesets c ON c.id = f.changeset \
             WHERE c.status = 'complete' AND f.status = 1 AND f.chunks IS NOT NULL ORDER BY f.path, f.changeset"
        )))?;
        let mut rows = self.explain(st.query([]))?;
        while let Some(r) = self.explain(rows.next())? {
            f(self.explain(file_from_row(r))?)?;
        }
        Ok(())
    }

    pub fn count_files(&self) -> Result<u64> {
        Ok(self.explain(self.conn.query_row("SELECT count(*) FROM files", [], |r| r.get::<_, i64>(0)))? as u64)
    }

    /// Check the whole file: SQLite's own structure (`PRAGMA quick_check`),
    /// then every row's checksum and encoding. Returns what is wrong.
    pub fn check(&self) -> Result<Vec<String>> {
        let mut problems = schema::quick_check(&self.conn, &self.path)?;
        let mut st = self.explain(self.conn.prepare(&format!("SELECT {FILE_COLS} FROM files f")))?;
        let mut rows = self.explain(st.query([]))?;
        while let Some(r) = self.explain(rows.next())? {
            if let Err(e) = file_from_row(r) {
                problems.push(format!("{e}"));
            }
        }
        let mut st = self.explain(self.conn.prepare(&format!("SELECT {CS_COLS} FROM changesets")))?;
        let mut rows = self.explain(st.query([]))?;
        while let Some(r) = self.explain(rows.next())? {
            if let Err(e) = cs_from_row(r) {
                problems.push(format!("{e}"));
            }
        }
        Ok(problems)
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
    /// A note kept with the row (the walk's "changed while it was read").
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FileType;

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
                note: None,
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

    fn one_row_catalog(dir: &Path) -> Catalog {
        let mut c = Catalog::open(&dir.join("c.sqlite"), "ds").unwrap();
        c.create_changeset(&new_cs("s1")).unwrap();
        c.insert_files(&[
            row(1, "", ChangeKind::Added, Some(meta(FileType::Dir, 0, 1))),
            row(1, "etc/passwd", ChangeKind::Added, Some(meta(FileType::File, 10, 1))),
        ])
        .unwrap();
        c.set_complete(1, "full", "m1", 3, 0).unwrap();
        c
    }

    #[test]
    fn a_flipped_bit_in_a_row_is_an_error_that_names_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let c = one_row_catalog(dir.path());
        assert!(c.check().unwrap().is_empty());
        // One bit of a stored path: SQLite itself notices nothing.
        c.conn()
            .execute("UPDATE files SET path = CAST('etc/pas3wd' AS BLOB) WHERE path = CAST('etc/passwd' AS BLOB)", [])
            .unwrap();
        let mut seen = Vec::new();
        let e = c
            .for_each_in_tree(1, None, |r| {
                seen.push(r.path);
                Ok(())
            })
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("etc/pas3wd") && msg.contains("checksum") && msg.contains("catalog rebuild"), "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(c.check().unwrap().len(), 1);
        // A flipped chunk list or size is caught the same way.
        c.conn()
            .execute("UPDATE files SET path = CAST('etc/passwd' AS BLOB) WHERE path = CAST('etc/pas3wd' AS BLOB)", [])
            .unwrap();
        assert!(c.check().unwrap().is_empty());
        c.conn().execute("UPDATE files SET size = 11 WHERE path = CAST('etc/passwd' AS BLOB)", []).unwrap();
        assert!(c.entry_at(1, b"etc/passwd").is_err());
    }

    #[test]
    fn unknown_kinds_and_statuses_are_errors_not_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = one_row_catalog(dir.path());
        // A kind of 9 used to read back as "modified".
        let raw = {
            let mut r = row(1, "etc/passwd", ChangeKind::Added, Some(meta(FileType::File, 10, 1)));
            r.kind = ChangeKind::Added;
            let mut raw = RawFile::of(&r);
            raw.kind = 9;
            raw
        };
        c.conn().execute(FILE_INSERT, params_from_iter(raw.values())).unwrap();
        let e = format!("{:#}", c.entry_at(1, b"etc/passwd").unwrap_err());
        assert!(e.contains("unknown change kind 9") && e.contains("etc/passwd"), "{e}");
        // A status the schema does not know used to read back as "failed".
        c.conn()
            .execute_batch("PRAGMA ignore_check_constraints = ON; UPDATE changesets SET status = 'bogus';")
            .unwrap();
        let e = format!("{:#}", c.changesets().unwrap_err());
        assert!(e.contains("unknown status \"bogus\"") && e.contains("changeset 1"), "{e}");
        // An unknown file status too.
        let mut raw = raw;
        raw.kind = 1;
        raw.status = 7;
        c.conn().execute(FILE_INSERT, params_from_iter(raw.values())).unwrap();
        assert!(format!("{:#}", c.entry_at(1, b"etc/passwd").unwrap_err()).contains("unknown file status 7"));
    }

    #[test]
    fn file_cols_len_counts_file_cols() {
        assert_eq!(FILE_COLS.split(',').count(), FILE_COLS_LEN);
    }

    #[test]
    fn a_catalog_of_the_previous_schema_gets_checksums_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.sqlite");
        {
            let mut conn = schema::open_db(&p).unwrap();
            schema::migrate(&mut conn, &schema::DATASET_MIGRATIONS[..2], "catalog", &p).unwrap();
            conn.execute_batch(
                "INSERT INTO meta VALUES ('dataset', 'ds');
                 INSERT INTO changesets (id, uid, snapshot, source, identity, method, kind, status, started_at)
                   VALUES (1, 'u1', 's1', 'walk', '{}', 'walk', 'full', 'complete', 1);
                 INSERT INTO files (changeset, path, dir, kind, status, ftype, mode, uid, gid, size, mtime_ns,
                   ctime_ns, ino, nlink, rdev) VALUES (1, CAST('a' AS BLOB), CAST('' AS BLOB), 1, 1, 1, 420, 0, 0, 0, 1, 1, 5, 1, 0);",
            )
            .unwrap();
        }
        let c = Catalog::open(&p, "ds").unwrap();
        assert_eq!(c.entry_at(1, b"a").unwrap().unwrap().meta.unwrap().ino, 5);
        assert_eq!(c.latest_complete().unwrap().unwrap().snapshot, "s1");
        assert!(c.check().unwrap().is_empty());
    }

    #[test]
    fn abandoned_changesets_free_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = one_row_catalog(dir.path());
        let cs2 = c.create_changeset(&new_cs("s2")).unwrap();
        c.insert_files(&[row(2, "x", ChangeKind::Added, Some(meta(FileType::File, 1, 2)))]).unwrap();
        c.set_listed(2, 5, "walk").unwrap();
        assert!(c.abandon_changeset(1, "no", 6).is_err(), "a complete changeset cannot be abandoned");
        let f = c.abandon_changeset(cs2.id, "snapshot s2 was destroyed", 7).unwrap();
        assert_eq!((f.number, f.files), (2, 1));
        assert!(c.incomplete().unwrap().is_none());
        let cs3 = c.create_changeset(&new_cs("s2")).unwrap();
        assert_eq!((cs3.id, cs3.parent), (2, Some(1)), "the next changeset takes the number");
        assert_eq!(c.failed_changesets().unwrap()[0].reason, "snapshot s2 was destroyed");
        assert_eq!(c.count_files().unwrap(), 2, "the abandoned rows are gone");
    }
}
