//! Versioned migrations. A catalog records its version in `user_version`;
//! each step runs in one transaction, so a crash mid-migration leaves the
//! old version intact.

use anyhow::{Context, Result, bail};
use rusqlite::Connection;
use std::path::Path;

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
    // 3: row checksums; a 'damaged' status (the repository holds the number,
    // its manifest cannot be read); attempts that ended without a manifest.
    // SQLite cannot alter a CHECK constraint, so changesets is rebuilt
    // (migrate() turns foreign keys off around the steps for this).
    r#"
    CREATE TABLE changesets_v3 (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        parent INTEGER,
        snapshot TEXT NOT NULL,
        source TEXT NOT NULL,
        identity TEXT NOT NULL,
        method TEXT NOT NULL,
        kind TEXT,
        status TEXT NOT NULL CHECK (status IN ('pending','uploading','complete','failed','damaged')),
        started_at INTEGER NOT NULL,
        listed_at INTEGER,
        completed_at INTEGER,
        n_added INTEGER NOT NULL DEFAULT 0,
        n_modified INTEGER NOT NULL DEFAULT 0,
        n_metadata INTEGER NOT NULL DEFAULT 0,
        n_removed INTEGER NOT NULL DEFAULT 0,
        n_failed INTEGER NOT NULL DEFAULT 0,
        bytes_changed INTEGER NOT NULL DEFAULT 0,
        bytes_uploaded INTEGER NOT NULL DEFAULT 0,
        manifest_key TEXT,
        sum BLOB                          -- rows.rs: checksum of the row
    );
    INSERT INTO changesets_v3 SELECT *, NULL FROM changesets;
    DROP TABLE changesets;
    ALTER TABLE changesets_v3 RENAME TO changesets;
    CREATE UNIQUE INDEX changesets_by_snapshot ON changesets(snapshot);
    ALTER TABLE files ADD COLUMN sum BLOB;
    CREATE TABLE failed_changesets (
        uid TEXT PRIMARY KEY,
        number INTEGER NOT NULL,          -- the number it would have had
        snapshot TEXT NOT NULL,
        source TEXT NOT NULL,
        identity TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        failed_at INTEGER NOT NULL,
        reason TEXT NOT NULL,
        files INTEGER NOT NULL,
        bytes_uploaded INTEGER NOT NULL
    );
    "#,
    // 4: changesets `forget` removed. The number stays taken (the
    // repository keeps a forgotten revision of its header); `done` is set
    // once the repository says so too, so a forget interrupted between the
    // two is finished by the next one.
    r#"
    CREATE TABLE forgotten_changesets (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        snapshot TEXT NOT NULL,
        source TEXT NOT NULL,
        identity TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        completed_at INTEGER,
        forgotten_at INTEGER NOT NULL,
        done INTEGER NOT NULL DEFAULT 0
    );
    "#,
];

pub const INDEX_MIGRATIONS: &[&str] = &[
    r#"
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
    "#,
    // 2: every pack that holds a chunk (a lost pack must not take a chunk's
    // other homes with it), and packs found lost.
    r#"
    CREATE TABLE chunks_v2 (
        id BLOB NOT NULL,
        pack BLOB NOT NULL,
        offset INTEGER NOT NULL,
        sealed_len INTEGER NOT NULL,
        raw_len INTEGER NOT NULL,
        PRIMARY KEY (id, pack)
    ) WITHOUT ROWID;
    INSERT INTO chunks_v2 SELECT id, pack, offset, sealed_len, raw_len FROM chunks;
    DROP TABLE chunks;
    ALTER TABLE chunks_v2 RENAME TO chunks;
    CREATE INDEX chunks_by_pack ON chunks(pack);
    ALTER TABLE packs ADD COLUMN lost_at INTEGER;  -- set when verify (or a read) found it missing or corrupt
    "#,
    // 3: pack summaries (index/<hash>, FORMAT §6.4): which ones this index
    // has read or written, which summary covers each pack (NULL: none yet,
    // so the next backup writes one; '-': too large for any), and each
    // blob's kind, so a summary written from this index says what the
    // pack's own index says.
    r#"
    CREATE TABLE summaries (
        key TEXT PRIMARY KEY,
        packs INTEGER NOT NULL,           -- packs of it that exist on the backend
        seen_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE packs ADD COLUMN summary TEXT;
    CREATE INDEX packs_unsummarized ON packs(id) WHERE summary IS NULL;
    CREATE INDEX packs_by_summary ON packs(summary) WHERE summary IS NOT NULL;
    ALTER TABLE chunks ADD COLUMN kind INTEGER NOT NULL DEFAULT 1;
    "#,
    // 4: prune plans this index has learned (by name, whatever their
    // state), and the packs they doom: never used for dedup again, read
    // only while no other home exists (FORMAT §9).
    r#"
    CREATE TABLE plans (
        name TEXT PRIMARY KEY,
        seen_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE doomed_packs (
        id BLOB PRIMARY KEY,
        since INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE index_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE seen_segments (
        key TEXT PRIMARY KEY,
        first_seen INTEGER NOT NULL        -- prune marks none younger than its grace
    ) WITHOUT ROWID;
    "#,
    // 5: the backend's own name for a pack's bytes, where it has one (an
    // IPFS CID), so a restore can fetch the pack from any IPFS gateway.
    r#"
    ALTER TABLE packs ADD COLUMN content_address TEXT;
    "#,
];

pub fn migrate(conn: &mut Connection, steps: &[&str], what: &str, path: &Path) -> Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).db(path)? as usize;
    if version > steps.len() {
        bail!(
            "{what} {} has schema version {version}, newer than this n2s-agent knows ({}): upgrade n2s-agent",
            path.display(),
            steps.len()
        );
    }
    if version == steps.len() {
        return Ok(());
    }
    // Steps that rebuild a table drop it first; foreign keys would refuse.
    // The pragma is a no-op inside a transaction, so it is set around them.
    conn.pragma_update(None, "foreign_keys", "OFF").db(path)?;
    for (i, sql) in steps.iter().enumerate().skip(version) {
        let tx = conn.transaction().db(path)?;
        tx.execute_batch(sql).db(path).with_context(|| format!("migrating {what} to version {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64).db(path)?;
        tx.commit().db(path)?;
    }
    conn.pragma_update(None, "foreign_keys", "ON").db(path)?;
    Ok(())
}

/// What an SQLite error means for the agent's state files, in one line
/// that names the file and the way out.
pub fn explain(e: rusqlite::Error, file: &Path) -> anyhow::Error {
    use rusqlite::ErrorCode as C;
    let dir = file.parent().unwrap_or(file).display();
    let f = file.display();
    let code = match &e {
        rusqlite::Error::SqliteFailure(fe, _) => Some(fe.code),
        _ => None,
    };
    match code {
        Some(C::DiskFull) => anyhow::anyhow!(
            "the state directory {dir} is full (writing {f}): free space on its file system, or move --state-dir elsewhere"
        ),
        Some(C::DatabaseCorrupt | C::NotADatabase) => anyhow::anyhow!(
            "{f} is damaged ({e}): move it aside and run `n2s-agent catalog rebuild` to make it again from the repository"
        ),
        Some(C::ReadOnly | C::CannotOpen | C::PermissionDenied) => anyhow::anyhow!(
            "cannot write {f} ({e}): the state directory {dir} must be writable by n2s-agent; check its permissions and mount, or --state-dir"
        ),
        Some(C::DatabaseBusy | C::DatabaseLocked) => {
            anyhow::anyhow!("{f} stayed locked by another process for 60 s ({e}): is another n2s-agent stuck?")
        }
        _ => match &e {
            rusqlite::Error::FromSqlConversionFailure(..) => anyhow::anyhow!(
                "{f}: {e}; move it aside and run `n2s-agent catalog rebuild` to make it again from the repository"
            ),
            _ => anyhow::Error::new(e).context(format!("state file {f}")),
        },
    }
}

/// `.db(path)`: turn an SQLite result into one that says what it means.
pub trait Explain<T> {
    fn db(self, file: &Path) -> Result<T>;
}

impl<T> Explain<T> for rusqlite::Result<T> {
    fn db(self, file: &Path) -> Result<T> {
        self.map_err(|e| explain(e, file))
    }
}

/// SQLite's own check of a file's structure. Returns its complaints.
pub fn quick_check(conn: &Connection, path: &Path) -> Result<Vec<String>> {
    let mut st = conn.prepare("PRAGMA quick_check").db(path)?;
    let rows = st.query_map([], |r| r.get::<_, String>(0)).db(path)?;
    let mut out = Vec::new();
    for r in rows {
        let line = r.db(path)?;
        if line != "ok" {
            out.push(format!("{}: {line}", path.display()));
        }
    }
    Ok(out)
}

/// Open a SQLite file for the agent: created 0600 (it names every file of
/// the dataset), WAL so readers never block the writer, and a busy timeout
/// so a second reader waits instead of failing.
pub fn open_db(path: &Path) -> Result<Connection> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_explain(e, dir, "create the state directory"))?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_explain(e, path, "create"))?;
    }
    let conn = Connection::open(path).db(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(60)).db(path)?;
    conn.pragma_update(None, "journal_mode", "WAL").db(path)?;
    conn.pragma_update(None, "synchronous", "NORMAL").db(path)?;
    conn.pragma_update(None, "foreign_keys", "ON").db(path)?;
    // A file that is not SQLite only shows it on the first real read.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).db(path)?;
    Ok(conn)
}

/// An I/O error on a state file or directory, in the same words as `explain`.
pub fn io_explain(e: std::io::Error, what: &Path, action: &str) -> anyhow::Error {
    let p = what.display();
    match e.raw_os_error() {
        Some(libc::ENOSPC) => {
            anyhow::anyhow!(
                "cannot {action} {p}: its file system is full; free space there, or move --state-dir elsewhere"
            )
        }
        Some(libc::EROFS | libc::EACCES | libc::EPERM) => anyhow::anyhow!(
            "cannot {action} {p} ({e}): the state directory must be writable by n2s-agent; check its permissions and mount, or --state-dir"
        ),
        _ => anyhow::Error::new(e).context(format!("cannot {action} {p}")),
    }
}
