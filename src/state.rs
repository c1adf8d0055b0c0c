//! Where local state lives: `<state-dir>/<repository id>/` holds the chunk
//! index and one catalog per dataset. Keyed by repository id so one state
//! directory can serve several repositories without mixing them.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct StatePaths {
    root: PathBuf,
}

impl StatePaths {
    pub fn new(state_dir: &Path, repo_id: &str) -> Result<StatePaths> {
        let root = state_dir.join(repo_id);
        std::fs::create_dir_all(root.join("datasets"))
            .with_context(|| format!("cannot create state directory {}: check --state-dir", root.display()))?;
        // Catalogs name every backed-up file: keep them private.
        for d in [state_dir, root.as_path()] {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
        }
        Ok(StatePaths { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index_db(&self) -> PathBuf {
        self.root.join("index.sqlite")
    }

    fn stem(dataset: &str) -> String {
        let clean: String = dataset
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
            .take(64)
            .collect();
        format!("{clean}-{}", &blake3::hash(dataset.as_bytes()).to_hex()[..12])
    }

    pub fn catalog(&self, dataset: &str) -> PathBuf {
        self.root.join("datasets").join(format!("{}.sqlite", Self::stem(dataset)))
    }

    pub fn lock(&self, dataset: &str) -> PathBuf {
        self.root.join("datasets").join(format!("{}.lock", Self::stem(dataset)))
    }

    /// Catalog files present, by path.
    pub fn catalog_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.root.join("datasets"))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "sqlite") {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// An exclusive lock on a dataset, released when dropped or when the
/// process dies (flock), so a crashed run never blocks the next one.
pub struct DatasetLock {
    _file: std::fs::File,
}

impl DatasetLock {
    pub fn acquire(path: &Path, dataset: &str) -> Result<DatasetLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create lock file {}", path.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DatasetLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                anyhow::bail!("another n2s-agent is working on dataset {dataset:?} right now; wait for it to finish")
            }
            Err(e) => Err(std::io::Error::from(e)).with_context(|| format!("cannot lock {}", path.display())),
        }
    }
}
