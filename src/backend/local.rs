//! A repository in a local directory (or any mounted file system).
//!
//! Writes are atomic and never replace: the bytes go to a temporary file in
//! `tmp/`, are fsynced, then hard-linked to their final name (link fails if
//! the name exists, which gives put-if-absent without a race), and the
//! directory is fsynced so the name survives a power cut. Directories are
//! created one level at a time, each fsynced in its parent, for the same reason.

use anyhow::Context;
use std::fs;
use std::io::{ErrorKind, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::*;

pub struct LocalBackend {
    root: PathBuf,
    /// Recently read objects, kept open: a restore reads many small ranges
    /// of the same packs, and objects are never rewritten in place.
    open_files: std::sync::Mutex<Vec<(String, std::sync::Arc<fs::File>)>>,
}

const OPEN_FILES: usize = 32;

impl LocalBackend {
    pub fn new(root: &Path) -> LocalBackend {
        LocalBackend { root: root.to_path_buf(), open_files: std::sync::Mutex::new(Vec::new()) }
    }

    fn open_cached(&self, key: &str, p: &Path) -> std::io::Result<std::sync::Arc<fs::File>> {
        let mut cache = self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = cache.iter().position(|(k, _)| k == key) {
            let entry = cache.remove(i);
            let f = entry.1.clone();
            cache.push(entry);
            return Ok(f);
        }
        let f = std::sync::Arc::new(fs::File::open(p)?);
        if cache.len() >= OPEN_FILES {
            cache.remove(0);
        }
        cache.push((key.to_string(), f.clone()));
        Ok(f)
    }

    fn forget_cached(&self, key: &str) {
        self.open_files.lock().unwrap_or_else(|e| e.into_inner()).retain(|(k, _)| k != key);
    }

    fn path_of(&self, key: &str) -> BResult<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn other(e: std::io::Error, what: String) -> BackendError {
        // The usual cause under the shipped unit: ProtectSystem=strict makes
        // every path read-only but those ReadWritePaths= names.
        let what = if e.raw_os_error() == Some(libc::EROFS) {
            format!(
                "{what} (read-only for n2s-agent: under systemd, add the repository's directory to ReadWritePaths= of n2s-agent.service, then systemctl daemon-reload)"
            )
        } else {
            what
        };
        BackendError::Other(anyhow::Error::new(e).context(what))
    }
}

/// Make a directory's entries durable. Every directory fsync goes through
/// here so a test can see which directories were synced.
pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    fsync_log::record(dir);
    fs::File::open(dir)?.sync_all()
}

/// Create `dir` and any missing ancestors one level at a time, fsyncing the
/// parent of each directory created: `create_dir_all` alone leaves the new
/// names in the parents' dirty pages, and after a power cut an object linked
/// into `data/ab/` would be unreachable because `data/ab` (or `data`, or the
/// root) itself was never made durable.
pub(crate) fn create_dirs_durably(dir: &Path) -> BResult<()> {
    let cannot =
        |e: std::io::Error, what: &str, p: &Path| LocalBackend::other(e, format!("cannot {what} {}", p.display()));
    let mut missing = Vec::new();
    let mut cur = dir;
    loop {
        match fs::metadata(cur) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(BackendError::Other(anyhow::anyhow!(
                    "{} is not a directory: move it out of the repository",
                    cur.display()
                )));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(cannot(e, "stat", cur)),
        }
        missing.push(cur);
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            // Another writer made it at the same moment; it may not have
            // synced it yet, so sync the parent all the same (cheap, rare).
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(cannot(e, "create directory", d)),
        }
        if let Some(p) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(p).map_err(|e| cannot(e, "fsync", p))?;
        }
    }
    Ok(())
}

/// Test hook: the directories this thread fsynced, in order.
#[cfg(test)]
pub(crate) mod fsync_log {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    pub fn record(dir: &Path) {
        SYNCED.with(|s| s.borrow_mut().push(dir.to_path_buf()));
    }

    /// The directories fsynced since the last call, and forget them.
    pub fn take() -> Vec<PathBuf> {
        SYNCED.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        let dest = self.path_of(key)?;
        if dest.symlink_metadata().is_ok() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let parent = dest.parent().context("object key has no parent")?;
        create_dirs_durably(parent)?;
        let tmp_dir = self.root.join("tmp");
        create_dirs_durably(&tmp_dir)?;
        let mut rnd = [0u8; 12];
        getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let tmp = tmp_dir.join(format!("{}.tmp", hex::encode(rnd)));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
                " (the repository's file system is full: free space or move the repository)"
            } else {
                ""
            };
            return Err(Self::other(e, format!("cannot write {}{hint}", tmp.display())));
        }
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fsync_dir(parent).map_err(|e| Self::other(e, format!("cannot fsync {}", parent.display())))?;
                Ok(PutOutcome::Created)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(Self::other(e, format!("cannot create {}", dest.display()))),
        }
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let p = self.path_of(key)?;
        let cannot = |e: std::io::Error, what: &str| {
            if e.kind() == ErrorKind::NotFound {
                BackendError::NotFound(key.into())
            } else {
                Self::other(e, format!("cannot {what} {}", p.display()))
            }
        };
        let Some(r) = range else {
            return fs::read(&p).map_err(|e| cannot(e, "read"));
        };
        // Ranged reads (restore, pack indexes) go through kept-open handles.
        let f = self.open_cached(key, &p).map_err(|e| cannot(e, "open"))?;
        let len = f.metadata().map_err(|e| cannot(e, "stat"))?.len();
        if r.start > r.end || r.end > len {
            return Err(BackendError::Other(anyhow::anyhow!(
                "range {}..{} is outside object {key} of {len} bytes",
                r.start,
                r.end
            )));
        }
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        f.read_exact_at(&mut buf, r.start).map_err(|e| cannot(e, "read"))?;
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        // Walk only the directories the prefix can reach.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() { self.root.clone() } else { self.root.join(dir_part) };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, key_prefix)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::other(e, format!("cannot list {}", dir.display()))),
            };
            for ent in rd {
                let ent = ent.map_err(|e| Self::other(e, format!("cannot list {}", dir.display())))?;
                let Some(name) = ent.file_name().to_str().map(str::to_string) else { continue };
                let key = if key_prefix.is_empty() { name } else { format!("{key_prefix}/{name}") };
                if key == "tmp" {
                    continue; // half-written uploads are not objects
                }
                let ft = ent.file_type().map_err(|e| Self::other(e, format!("cannot stat {key}")))?;
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{key}/")) || key.starts_with(prefix) {
                        stack.push((ent.path(), key));
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    let size = ent.metadata().map_err(|e| Self::other(e, format!("cannot stat {key}")))?.len();
                    out.push(ObjectInfo { key, size });
                }
            }
        }
        Ok(out)
    }

    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        let p = self.path_of(key)?;
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::other(e, format!("cannot stat {}", p.display()))),
        }
    }

    /// Files of `tmp/` older than an hour: writes a killed process left
    /// (a live write takes seconds, so an hour is far past any).
    fn cleanup_interrupted(&self) -> BResult<u64> {
        let dir = self.root.join("tmp");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Self::other(e, format!("cannot list {}", dir.display()))),
        };
        let cutoff = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let mut n = 0;
        for e in entries.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
            if old && e.file_name().to_string_lossy().ends_with(".tmp") && fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn delete(&self, key: &str) -> BResult<()> {
        let p = self.path_of(key)?;
        self.forget_cached(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::other(e, format!("cannot delete {}", p.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        conformance::check(&LocalBackend::new(dir.path()));
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn url_parsing() {
        assert!(open_url("file:///srv/repo").is_ok());
        assert!(open_url("/srv/repo").is_ok());
        assert!(open_url("file://relative").is_err());
        assert!(open_url("relative/path").is_err());
        let e = open_url("gopher://host/x").err().unwrap().to_string();
        assert!(e.contains("no \"gopher\" backend"), "{e}");
    }

    /// Power loss: a name is reachable after a crash only if every directory
    /// created on the way to it was fsynced in its parent.
    #[test]
    fn new_directories_are_fsynced_in_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let b = LocalBackend::new(&root);
        fsync_log::take();
        let key = format!("data/ab/ab{}", "0".repeat(62));
        assert_eq!(b.put_if_absent(&key, b"pack").unwrap(), PutOutcome::Created);
        let synced = fsync_log::take();
        for want in [dir.path().to_path_buf(), root.clone(), root.join("data"), root.join("data/ab")] {
            assert!(synced.contains(&want), "{} was not fsynced; fsynced: {synced:?}", want.display());
        }
        // The final directory is synced after the link, so the name is durable.
        assert_eq!(synced.last(), Some(&root.join("data/ab")), "{synced:?}");
        // A second object in the same directory creates nothing: only its own
        // directory needs a sync.
        let key2 = format!("data/ab/ab{}", "1".repeat(62));
        b.put_if_absent(&key2, b"pack").unwrap();
        assert_eq!(fsync_log::take(), vec![root.join("data/ab")]);
    }
}
