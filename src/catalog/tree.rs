//! Catalog queries for restore, and its scratch tables.
//!
//! A restore of millions of entries must not hold per-entry state in memory.
//! What it needs to remember (the directories it made, the first link of
//! each hardlink group it wrote) goes into TEMP tables of the catalog
//! connection: they are private to the connection, vanish with it, never
//! touch the catalog file, and spill to a temporary file once they outgrow
//! SQLite's page cache (`temp_store = FILE`; the bundled SQLite keeps temp
//! data in memory by default).

use anyhow::{Context, Result};
use rusqlite::{OptionalExtension, params};

use super::{Catalog, FILE_COLS, FILE_COLS_LEN, FileRow, LATEST, file_from_row, subtree_bounds};

/// The suffix of restore's temporary names (`.NAME.n2s-partial`).
pub const PARTIAL_SUFFIX: &[u8] = b".n2s-partial";

impl Catalog {
    /// Whether `path` is in the tree at `n`: the entry itself, or (for a
    /// directory whose own row is missing) anything below it.
    pub fn in_tree(&self, n: i64, path: &[u8]) -> Result<bool> {
        if path.is_empty() || self.entry_at(n, path)?.is_some() {
            return Ok(true);
        }
        let (lo, hi) = subtree_bounds(path);
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT 1 FROM files f WHERE f.path >= ?2 AND f.path < ?3 AND {LATEST} LIMIT 1"
        ))?;
        Ok(st.exists(params![n, lo, hi])?)
    }

    /// Set up the scratch tables of one restore of the tree at `n`, dropping
    /// those of an earlier restore on this connection. Returns whether the
    /// tree itself has names that look like restore's temporary names (then
    /// `restore_is_reserved` must be asked before using one).
    pub fn restore_scratch_begin(&self, n: i64) -> Result<bool> {
        // Changing temp_store drops existing temp tables, so it goes first.
        self.conn
            .execute_batch(
                "PRAGMA temp_store = FILE;
                 DROP TABLE IF EXISTS temp.n2s_restore_dirs;
                 DROP TABLE IF EXISTS temp.n2s_restore_leaders;
                 DROP TABLE IF EXISTS temp.n2s_restore_reserved;
                 CREATE TEMP TABLE n2s_restore_dirs (
                     path BLOB PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE TEMP TABLE n2s_restore_leaders (
                     grp INTEGER PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL
                 );
                 CREATE TEMP TABLE n2s_restore_reserved (path BLOB PRIMARY KEY) WITHOUT ROWID;",
            )
            .context("cannot create restore's scratch tables (temporary SQLite files)")?;
        // Paths ending in the suffix: one scan of the file rows, and
        // normally no match at all.
        let n_reserved = self.conn.execute(
            &format!(
                "INSERT OR IGNORE INTO temp.n2s_restore_reserved \
                 SELECT f.path FROM files f WHERE length(f.path) >= ?2 AND substr(f.path, -?2) = ?3 AND {LATEST}"
            ),
            params![n, PARTIAL_SUFFIX.len() as i64, PARTIAL_SUFFIX],
        )?;
        Ok(n_reserved > 0)
    }

    /// Whether `path` is an entry of the tree being restored that looks
    /// like one of restore's temporary names.
    pub fn restore_is_reserved(&self, path: &[u8]) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM temp.n2s_restore_reserved WHERE path = ?1")?;
        Ok(st.exists(params![path])?)
    }

    /// Remember a directory restore made (or found) at `path`, and who it is.
    pub fn restore_record_dir(&self, path: &[u8], dev: u64, ino: u64) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO temp.n2s_restore_dirs (path, dev, ino) VALUES (?1, ?2, ?3)")?;
        st.execute(params![path, dev as i64, ino as i64])?;
        Ok(())
    }

    /// The directories recorded by `restore_record_dir`, with their rows at
    /// `n`, in descending path order: every child before its parent. CROSS
    /// JOIN makes SQLite walk the (small) temp table and look each path up,
    /// instead of scanning every file row, as it would without statistics.
    pub fn for_each_restored_dir(&self, n: i64, mut f: impl FnMut(FileRow, u64, u64) -> Result<()>) -> Result<()> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {FILE_COLS}, d.dev, d.ino FROM temp.n2s_restore_dirs d \
             CROSS JOIN files f ON f.path = d.path WHERE {LATEST} ORDER BY d.path DESC"
        ))?;
        let mut rows = st.query(params![n])?;
        while let Some(r) = rows.next()? {
            let (dev, ino): (i64, i64) = (r.get(FILE_COLS_LEN)?, r.get(FILE_COLS_LEN + 1)?);
            f(file_from_row(r)?, dev as u64, ino as u64)?;
        }
        Ok(())
    }

    /// Remember that the first link of hardlink group `grp` was written as
    /// the inode `dev`/`ino` of the target.
    pub fn restore_record_leader(&self, grp: u64, dev: u64, ino: u64) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO temp.n2s_restore_leaders (grp, dev, ino) VALUES (?1, ?2, ?3)")?;
        st.execute(params![grp as i64, dev as i64, ino as i64])?;
        Ok(())
    }

    /// Where the first link of group `grp` was written, if it was.
    pub fn restore_leader(&self, grp: u64) -> Result<Option<(u64, u64)>> {
        let mut st = self.conn.prepare_cached("SELECT dev, ino FROM temp.n2s_restore_leaders WHERE grp = ?1")?;
        Ok(st
            .query_row(params![grp as i64], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))
            .optional()?)
    }

    /// Every hardlinked regular file (link count above 1) of the tree at
    /// `n`, grouped: by inode number, then path. Found through the
    /// `files_by_ino` index; the sort spills to disk like the temp tables.
    pub fn for_each_hardlinked(&self, n: i64, mut f: impl FnMut(FileRow) -> Result<()>) -> Result<()> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {FILE_COLS} FROM files f WHERE f.nlink > 1 AND f.ftype = 1 AND {LATEST} ORDER BY f.ino, f.path"
        ))?;
        let mut rows = st.query(params![n])?;
        while let Some(r) = rows.next()? {
            f(file_from_row(r)?)?;
        }
        Ok(())
    }

    /// Drop the scratch tables (they would also go with the connection).
    pub fn restore_scratch_end(&self) -> Result<()> {
        self.conn.execute_batch(
            "DROP TABLE IF EXISTS temp.n2s_restore_dirs;
             DROP TABLE IF EXISTS temp.n2s_restore_leaders;
             DROP TABLE IF EXISTS temp.n2s_restore_reserved;",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{FileStatus, NewChangeset};
    use crate::model::{ChangeKind, FileType, Metadata};

    fn row(path: &str, ftype: FileType, ino: u64, nlink: u64) -> FileRow {
        FileRow {
            changeset: 1,
            path: path.as_bytes().to_vec(),
            kind: ChangeKind::Added,
            status: FileStatus::Stored,
            meta: Some(Metadata {
                ftype,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 0,
                mtime_ns: 0,
                ctime_ns: 0,
                ino,
                nlink,
                rdev: 0,
                symlink_target: None,
                xattrs: vec![],
            }),
            chunks: vec![],
            file_hash: None,
            error: None,
            uploaded_at: None,
            confirmed_at: None,
        }
    }

    #[test]
    fn scratch_tables_dirs_descending_links_grouped_and_reserved_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&dir.path().join("c.sqlite"), "ds").unwrap();
        let new = NewChangeset { snapshot: "s", source: "walk", identity: "{}", method: "walk", started_at: 1 };
        c.create_changeset(&new).unwrap();
        c.insert_files(&[
            row("", FileType::Dir, 1, 3),
            row("a", FileType::Dir, 2, 3),
            row("a/b", FileType::Dir, 3, 2),
            row("a/b/x", FileType::File, 10, 2),
            row("a/y", FileType::File, 10, 2),
            row("a/z", FileType::File, 11, 1),
            row("c", FileType::File, 9, 3),
            row(".c.n2s-partial", FileType::File, 9, 3),
        ])
        .unwrap();
        c.set_complete(1, "full", "m", 2, 0).unwrap();

        assert!(c.in_tree(1, b"a/b").unwrap() && c.in_tree(1, b"").unwrap());
        assert!(!c.in_tree(1, b"a/q").unwrap());
        assert!(c.restore_scratch_begin(1).unwrap(), "one reserved-looking name");
        assert!(c.restore_is_reserved(b".c.n2s-partial").unwrap());
        assert!(!c.restore_is_reserved(b"c").unwrap());
        for (p, ino) in [("a", 2), ("", 1), ("a/b", 3)] {
            c.restore_record_dir(p.as_bytes(), 7, ino).unwrap();
        }
        let mut seen = Vec::new();
        c.for_each_restored_dir(1, |r, dev, ino| {
            assert_eq!((dev, r.meta.unwrap().ftype), (7, FileType::Dir));
            seen.push((String::from_utf8(r.path).unwrap(), ino));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![("a/b".into(), 3), ("a".into(), 2), ("".into(), 1)], "children before parents");

        let mut links = Vec::new();
        c.for_each_hardlinked(1, |r| {
            links.push(String::from_utf8(r.path).unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(links, vec![".c.n2s-partial", "c", "a/b/x", "a/y"], "by inode, then path; files only");

        assert_eq!(c.restore_leader(10).unwrap(), None);
        c.restore_record_leader(10, 7, 99).unwrap();
        assert_eq!(c.restore_leader(10).unwrap(), Some((7, 99)));
        // A second restore on the same connection starts clean.
        c.restore_scratch_begin(1).unwrap();
        assert_eq!(c.restore_leader(10).unwrap(), None);
        c.restore_scratch_end().unwrap();
    }
}
