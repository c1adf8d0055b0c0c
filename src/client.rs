//! The client API: what a program other than the CLI uses to store and
//! read back data through the seal-and-upload core.
//!
//! A [`Client`] is one open repository (any backend URL the agent knows)
//! with its local state directory (catalogs and the chunk index, which can
//! always be rebuilt from the repository and the key). It offers:
//!
//! - [`Client::push`]: a changeset made from any list of [`Entry`] values
//!   (path, metadata, content from any reader), committed when it returns;
//! - [`Client::pull`]: a snapshot, or some of its paths, restored into a
//!   directory; [`Client::pull_file`]: one file streamed to a writer;
//! - [`Client::changesets`] and [`Client::search`].
//!
//! ```no_run
//! use n2s_agent::client::{Client, Entry};
//!
//! # fn main() -> anyhow::Result<()> {
//! let state = std::path::Path::new("/var/lib/my-app/n2s");
//! let client = Client::init("/srv/n2s-repo", "/etc/my-app/n2s.key".as_ref(), state)?;
//! let report = b"quarterly figures\n".to_vec();
//! client.push(
//!     "reports",
//!     "2026-q4",
//!     vec![
//!         Entry::dir("q4", 0o755),
//!         Entry::file("q4/report.txt", 0o644, std::io::Cursor::new(report)),
//!     ],
//! )?;
//! let mut back = Vec::new();
//! client.pull_file("reports", "2026-q4", "q4/report.txt", &mut back)?;
//! assert_eq!(back, b"quarterly figures\n");
//! # Ok(())
//! # }
//! ```
//!
//! A push first writes its entries into a private directory of the state
//! directory and backs that up (the core reads content from files, for
//! read-ahead and to notice a file that changes while it is read): it needs
//! free space there for one push's content. Nothing of the client's own
//! file system is read.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::{Catalog, ChangesetRow, ChangesetStatus};
use crate::core::keys::MasterKey;
use crate::engine::backup::{BackupOptions, backup_dataset};
use crate::engine::restore::{RestoreOptions, RestoreReport};
use crate::model::is_safe_rel_path;
use crate::repo::Repository;
use crate::state::StatePaths;

/// What an [`Entry`] holds.
pub enum Content {
    /// A regular file, read to its end by the push.
    File(Box<dyn Read + Send>),
    Dir,
    /// A symbolic link to this target (stored as given, never followed).
    Symlink(PathBuf),
}

/// One entry of a pushed changeset.
pub struct Entry {
    /// Relative, `/`-separated, without `.` or `..` components.
    pub path: PathBuf,
    /// Permission bits (the file type comes from `content`).
    pub mode: u32,
    /// Modification time, seconds since the epoch (default: the push's time).
    pub mtime: Option<i64>,
    pub content: Content,
}

impl Entry {
    pub fn file(path: impl Into<PathBuf>, mode: u32, content: impl Read + Send + 'static) -> Entry {
        Entry { path: path.into(), mode, mtime: None, content: Content::File(Box::new(content)) }
    }

    pub fn dir(path: impl Into<PathBuf>, mode: u32) -> Entry {
        Entry { path: path.into(), mode, mtime: None, content: Content::Dir }
    }

    pub fn symlink(path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Entry {
        Entry { path: path.into(), mode: 0o777, mtime: None, content: Content::Symlink(target.into()) }
    }

    /// The same entry with this modification time.
    pub fn with_mtime(mut self, secs: i64) -> Entry {
        self.mtime = Some(secs);
        self
    }
}

/// What a push stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pushed {
    /// The changeset's number in its dataset.
    pub changeset: i64,
    pub files: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
}

/// One changeset of a dataset, as [`Client::changesets`] lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangesetInfo {
    pub number: i64,
    pub snapshot: String,
    /// "complete", "unfinished", "failed" or "damaged".
    pub status: String,
    pub started_at: i64,
    pub completed_at: Option<i64>,
}

/// One path that [`Client::search`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    pub path: String,
    pub snapshot: String,
    pub changeset: i64,
    /// "added", "modified", "metadata" or "removed".
    pub change: String,
    pub size: Option<u64>,
}

/// An open repository and its local state.
pub struct Client {
    repo: Arc<Repository>,
    state: StatePaths,
}

impl Client {
    /// Open the repository at `url` (a path, `file://`, `s3://`, `sftp://`,
    /// `rclone:` or `ipfs://`) with the key file at `key_file`.
    pub fn open(url: &str, key_file: &Path, state_dir: &Path) -> Result<Client> {
        Self::open_with_key(url, &MasterKey::load(key_file)?, state_dir)
    }

    /// Open it with a key the caller holds (from a key object, say).
    pub fn open_with_key(url: &str, key: &MasterKey, state_dir: &Path) -> Result<Client> {
        let backend = crate::backend::open(url)?;
        let repo = Arc::new(Repository::open(backend, key)?);
        let state = open_state(&repo, state_dir)?;
        Ok(Client { repo, state })
    }

    /// Create a repository at `url`, and the key file if it does not exist
    /// yet (mode 0600: keep a copy of it somewhere safe).
    pub fn init(url: &str, key_file: &Path, state_dir: &Path) -> Result<Client> {
        let (repo, _) = init_repository(crate::backend::open(url)?, key_file)?;
        let repo = Arc::new(repo);
        let state = open_state(&repo, state_dir)?;
        Ok(Client { repo, state })
    }

    /// The repository this client writes to and reads from.
    pub fn repository(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// Store `entries` as changeset `snapshot` of `dataset`, against the
    /// dataset's previous changeset: what did not change is not stored
    /// again, and content any changeset already holds is deduplicated.
    /// Entries not given are recorded as removed. Parents are made as
    /// directories (0755) when not given.
    pub fn push(&self, dataset: &str, snapshot: &str, entries: impl IntoIterator<Item = Entry>) -> Result<Pushed> {
        crate::cli::dataset_name(dataset).map_err(|e| anyhow::anyhow!("{e}"))?;
        if snapshot.is_empty() || snapshot.contains('\n') {
            bail!("snapshot name {snapshot:?} must be one non-empty line");
        }
        let spool = Spool::new(self.state.root())?;
        let now = crate::util::now();
        // Times are set once every entry exists: writing a file changes
        // its directory's mtime.
        let mut times = Vec::new();
        for e in entries {
            let rel = e.path.to_string_lossy().trim_end_matches('/').to_string();
            // (The empty path is the root, which is the spool itself.)
            if rel.is_empty() || !is_safe_rel_path(rel.as_bytes()) {
                bail!("entry path {:?} is not a relative path inside the snapshot", e.path);
            }
            let at = spool.dir.join(&rel);
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot make {}", parent.display()))?;
            }
            match e.content {
                Content::File(mut r) => {
                    let mut f = std::fs::File::create(&at).with_context(|| format!("cannot spool {rel}"))?;
                    // No fsync: the spool lives for this call only.
                    std::io::copy(&mut r, &mut f).with_context(|| format!("cannot read the content of {rel}"))?;
                    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(e.mode & 0o7777))?;
                }
                Content::Dir => {
                    std::fs::create_dir_all(&at).with_context(|| format!("cannot make {}", at.display()))?;
                    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(e.mode & 0o7777))?;
                }
                Content::Symlink(target) => {
                    std::os::unix::fs::symlink(&target, &at).with_context(|| format!("cannot spool the link {rel}"))?;
                }
            }
            times.push((at, e.mtime.unwrap_or(now)));
        }
        for (at, t) in times.iter().rev() {
            let ts = rustix::fs::Timespec { tv_sec: *t, tv_nsec: 0 };
            let stamps = rustix::fs::Timestamps { last_access: ts, last_modification: ts };
            rustix::fs::utimensat(rustix::fs::CWD, at, &stamps, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .with_context(|| format!("cannot set the time of {}", at.display()))?;
        }
        let mut source = crate::source::walk::WalkSource::new(&spool.dir, snapshot.to_string());
        let opts = BackupOptions::default();
        let run = backup_dataset(&self.repo, &self.state, dataset, &mut source, &opts)?;
        let Some(s) = run.changesets.last() else {
            bail!("dataset {dataset}: the push stored no changeset");
        };
        if s.failed > 0 || s.problems_total > 0 {
            bail!("dataset {dataset}: {} entries of the push could not be stored", s.failed + s.problems_total);
        }
        Ok(Pushed {
            changeset: s.changeset,
            files: s.added + s.modified + s.metadata + s.removed,
            bytes_read: s.bytes_read,
            bytes_uploaded: s.bytes_uploaded,
        })
    }

    /// The changesets of `dataset`, oldest first.
    pub fn changesets(&self, dataset: &str) -> Result<Vec<ChangesetInfo>> {
        let cat = self.catalog(dataset)?;
        Ok(cat
            .changesets()?
            .into_iter()
            .map(|c| ChangesetInfo {
                number: c.id,
                snapshot: c.snapshot,
                status: c.status.as_str().to_string(),
                started_at: c.started_at,
                completed_at: c.completed_at,
            })
            .collect())
    }

    /// Paths of `dataset`'s history that match `pattern` (a glob, or a
    /// substring), at most `limit`.
    pub fn search(&self, dataset: &str, pattern: &str, limit: usize) -> Result<Vec<Found>> {
        let cat = self.catalog(dataset)?;
        Ok(cat
            .search(pattern, limit)?
            .into_iter()
            .map(|(row, cs)| Found {
                path: crate::model::display_path(&row.path).to_string(),
                snapshot: cs.snapshot,
                changeset: cs.id,
                change: row.kind.name().to_string(),
                size: row.meta.as_ref().map(|m| m.size),
            })
            .collect())
    }

    /// Restore `snapshot` (a name, `latest` or `#N`) of `dataset` into
    /// `target` (created if missing; it must be empty). `paths` selects
    /// parts of it; empty: everything.
    pub fn pull(&self, dataset: &str, snapshot: &str, target: &Path, paths: &[&str]) -> Result<RestoreReport> {
        let cat = self.catalog(dataset)?;
        let cs = find_changeset(&cat, snapshot)?;
        let opts = RestoreOptions {
            target: target.to_path_buf(),
            paths: paths.iter().map(|p| p.trim_start_matches('/').as_bytes().to_vec()).collect(),
            overwrite: false,
            workers: 4,
        };
        let report = crate::engine::restore::restore(&self.repo, &cat, &self.state.index_db(), &cs, &opts)?;
        if report.failed_count > 0 {
            bail!("{} entries of {snapshot} could not be restored: {}", report.failed_count, report.failed.join("; "));
        }
        Ok(report)
    }

    /// Write the regular file `path` of `snapshot` to `out`, checked
    /// against its hash; the bytes written.
    pub fn pull_file(&self, dataset: &str, snapshot: &str, path: &str, out: &mut dyn Write) -> Result<u64> {
        let cat = self.catalog(dataset)?;
        let cs = find_changeset(&cat, snapshot)?;
        crate::engine::restore::stream_file(
            &self.repo,
            &cat,
            &self.state.index_db(),
            &cs,
            path.trim_start_matches('/').as_bytes(),
            out,
        )
    }

    /// The dataset's catalog, rebuilt from the repository when this state
    /// directory has none.
    fn catalog(&self, dataset: &str) -> Result<Catalog> {
        let path = self.state.catalog(dataset);
        if !path.exists() {
            crate::engine::rebuild::rebuild(
                &self.repo,
                &self.state,
                Some(dataset),
                crate::engine::rebuild::RebuildMode::Salvage,
            )?;
        }
        if !path.exists() {
            bail!("dataset {dataset:?} has no changeset in {}", self.repo.backend.location());
        }
        Catalog::open(&path, dataset)
    }
}

/// Create a repository at `backend`, with a new key file (0600) unless
/// `key_file` exists; whether the key file was made.
pub fn init_repository(backend: Arc<dyn crate::backend::Backend>, key_file: &Path) -> Result<(Repository, bool)> {
    // Check first, so an existing repository (even one whose config is
    // lost) never costs a stray key file.
    Repository::check_location_is_free(&*backend)?;
    let (key, created) = if key_file.exists() {
        (MasterKey::load(key_file)?, false)
    } else {
        let k = MasterKey::generate()?;
        k.save_new(key_file)?;
        (k, true)
    };
    Ok((Repository::init(backend, &key)?, created))
}

/// The repository's state directory, as every reader and writer sets it up.
pub fn open_state(repo: &Repository, state_dir: &Path) -> Result<StatePaths> {
    let state = StatePaths::new(state_dir, &repo.config.id)?;
    // Paths a snapshot diff names are sorted on disk past a memory budget.
    crate::source::spill::set_scratch_dir(&state.root().join("tmp"));
    Ok(state)
}

/// The changeset `snapshot` names (a snapshot name, `latest` or `#N`), if
/// it can be restored.
pub fn find_changeset(cat: &Catalog, snapshot: &str) -> Result<ChangesetRow> {
    let found = if snapshot == "latest" {
        cat.latest_complete()?
    } else if let Some(n) = snapshot.strip_prefix('#').and_then(|n| n.parse().ok()) {
        cat.changeset(n)?
    } else {
        cat.changeset_by_snapshot(snapshot)?
    };
    match found {
        Some(c) if c.status == ChangesetStatus::Complete => Ok(c),
        Some(c) if c.status == ChangesetStatus::Damaged => anyhow::bail!(
            "snapshot {} (changeset {}) of dataset {} cannot be restored: its manifest in the repository {}; `n2s-agent list --dataset {}` shows which changesets can",
            c.snapshot,
            c.id,
            cat.dataset(),
            c.method.strip_prefix("damaged: ").unwrap_or(&c.method),
            cat.dataset()
        ),
        Some(c) => anyhow::bail!(
            "snapshot {snapshot} of dataset {} is not completely backed up yet (status {}); run backup to finish it",
            cat.dataset(),
            c.status.as_str()
        ),
        None => {
            let forgotten = cat.forgotten_changesets()?;
            if let Some(f) = forgotten.iter().find(|f| f.snapshot == snapshot || format!("#{}", f.number) == snapshot) {
                anyhow::bail!(
                    "snapshot {} (changeset {}) of dataset {} was forgotten (`forget`) and cannot be restored; `n2s-agent list --dataset {}` shows what can",
                    f.snapshot,
                    f.number,
                    cat.dataset(),
                    cat.dataset()
                );
            }
            anyhow::bail!(
                "dataset {} has no backed-up snapshot {snapshot:?}: see `n2s-agent list --dataset {}`",
                cat.dataset(),
                cat.dataset()
            )
        }
    }
}

/// A private directory for one push's content, removed when dropped.
struct Spool {
    dir: PathBuf,
}

impl Spool {
    fn new(state_root: &Path) -> Result<Spool> {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("cannot get random bytes: {e}"))?;
        let dir = state_root.join("tmp").join(format!("push-{}", hex::encode(raw)));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Spool { dir })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
