//! Versioned migrations. A catalog records its version in `user_version`;
//! each step runs in one transaction, so a crash mid-migration leaves the
//! old version intact.

use anyhow::{Context, Result, bail};
use rusqlite::Connection;

pub const DATASET_MIGRATIONS: &[&str] = &[
    // 1: n2s's two tables, with what fast queries need.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE changesets (
        id INTEGER PRIMARY KEY,            -- sequence number within the dataset, from 1
        uid TEXT NOT NULL UNIQUE,          -- random id, also in the manifest's object key
        parent INTEGER REFERENCES changesets(id),
        snapshot TEXT NOT NULL,            -- snapshot name (walk: the run's label)
        source TEXT NOT NULL,              -- walk | btrfs | zfs
        identity TEXT NOT NULL,            -- JSON: guid+createtxg, uuid+generation, or label
        method TEXT NOT NULL,              -- how the changes were found
        kind TEXT,                         -- delta | full, set when the manifest is written
        status TEXT NOT NULL CHECK (status IN ('pending','uploading','complete','failed')),
        started_at INTEGER NOT NULL,
        listed_at INTEGER,
        completed_at INTEGER,              -- when the manifest was confirmed stored
        n_added INTEGER NOT NULL DEFAULT 0,
        n_modified INTEGER NOT NULL DEFAULT 0,
        n_metadata INTEGER NOT NULL DEFAULT 0,
        n_removed INTEGER NOT NULL DEFAULT 0,
        n_failed INTEGER NOT NULL DEFAULT 0,
        bytes_changed INTEGER NOT NULL DEFAULT 0,
        bytes_uploaded INTEGER NOT NULL DEFAULT 0,
        manifest_key TEXT
    );
    CREATE UNIQUE INDEX changesets_by_snapshot ON changesets(snapshot);
    CREATE TABLE files (
        changeset INTEGER NOT NULL REFERENCES changesets(id),
        path BLOB NOT NULL,
        dir BLOB NOT NULL,
        kind INTEGER NOT NULL,             -- 1 added, 2 modified, 3 metadata, 4 removed
        status INTEGER NOT NULL,           -- 0 pending, 1 stored, 2 failed
        ftype INTEGER, mode INTEGER, uid INTEGER, gid INTEGER, size INTEGER,
        mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, nlink INTEGER, rdev INTEGER,
        symlink BLOB, xattrs BLOB,
        chunks BLOB,                       -- concatenated 32-byte chunk ids
        file_hash BLOB,
        error TEXT,
        uploaded_at INTEGER,               -- content handed to the packer
        confirmed_at INTEGER,              -- every pack it needs confirmed stored
        PRIMARY KEY (changeset, path)
    ) WITHOUT ROWID;
    CREATE INDEX files_by_path ON files(path, changeset);
    CREATE INDEX files_by_dir ON files(dir, path, changeset);
    CREATE INDEX files_pending ON files(changeset, path) WHERE status = 0;
    "#,
    // 2: find every path of a hardlinked inode (snapshot diffs name one).
    r#"
    CREATE INDEX files_by_ino ON files(ino) WHERE nlink > 1;
    "#,
];

pub const INDEX_MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE packs (
        id BLOB PRIMARY KEY,
        size INTEGER NOT NULL,
        confirmed_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE chunks (
        id BLOB PRIMARY KEY,
        pack BLOB NOT NULL,
        offset INTEGER NOT NULL,
        sealed_len INTEGER NOT NULL,
        raw_len INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX chunks_by_pack ON chunks(pack);
    "#];

pub fn migrate(conn: &mut Connection, steps: &[&str], what: &str) -> Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > steps.len() {
        bail!(
            "{what} has schema version {version}, newer than this n2s-agent knows ({}): upgrade n2s-agent",
            steps.len()
        );
    }
    for (i, sql) in steps.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql).with_context(|| format!("migrating {what} to version {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Open a SQLite file for the agent: created 0600 (it names every file of
/// the dataset), WAL so readers never block the writer, and a busy timeout
/// so a second reader waits instead of failing.
pub fn open_db(path: &std::path::Path) -> Result<Connection> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create state directory {}", dir.display()))?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let conn = Connection::open(path).with_context(|| format!("cannot open catalog {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .with_context(|| format!("cannot use {}: is it an n2s catalog?", path.display()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}
