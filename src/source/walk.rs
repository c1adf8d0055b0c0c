//! The walk source: for any file system. It walks a directory and compares
//! every entry with the last backed-up state (size, mtime, ctime, mode,
//! owner, xattrs, symlink target, link count), directory by directory, so
//! memory follows the widest directory, not the tree.
//!
//! Inode numbers are recorded to group hardlinks, and an inode change marks
//! a file as replaced, but they are never an identity across runs.
//!
//! The walk stays on the file system of its root (like `rsync -x`): a
//! directory on another device is a mount point (a nested btrfs subvolume
//! of a live subvolume is one too). Its entry is recorded, as the mounted
//! root looks, but nothing below it: hardlink groups (inode numbers) are
//! only meaningful within one file system, and another file system is
//! another dataset.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::exclude::{CACHEDIR_TAG, Excludes, is_tagged_cache};
use super::*;
use crate::fsx::Dir;
use crate::model::{ChangeKind, FileType, Metadata, display_path, join_path, split_path};
use std::sync::Arc;

pub struct WalkSource {
    path: PathBuf,
    /// Label of this run (the "snapshot name").
    label: String,
    skip: Option<fn(&Metadata) -> bool>,
    /// What the dataset leaves out: never descended into.
    excludes: Option<Arc<Excludes>>,
}

impl WalkSource {
    pub fn new(path: &Path, label: String) -> WalkSource {
        WalkSource { path: path.to_path_buf(), label, skip: None, excludes: None }
    }

    /// Leave out what `excludes` names (the engine drops it from every
    /// source's changes too; this only saves the walk below it).
    pub fn with_excludes(mut self, excludes: Arc<Excludes>) -> WalkSource {
        self.excludes = (!excludes.is_empty()).then_some(excludes);
        self
    }

    /// Treat entries for which `skip` holds as absent.
    pub fn with_skip(mut self, skip: fn(&Metadata) -> bool) -> WalkSource {
        self.skip = Some(skip);
        self
    }
}

/// How an entry changed, if it did.
pub fn classify(prior: &Metadata, now: &Metadata) -> Option<ChangeKind> {
    if prior.ftype != now.ftype {
        return Some(ChangeKind::Modified);
    }
    let content_changed = match now.ftype {
        // ctime too: content rewritten with the mtime set back (touch -m,
        // some sync tools) changes nothing else. Re-reading costs no upload
        // (unchanged chunks dedup), missing a change would lose data.
        FileType::File => {
            prior.size != now.size
                || prior.mtime_ns != now.mtime_ns
                || prior.ctime_ns != now.ctime_ns
                || prior.ino != now.ino
        }
        FileType::Symlink => prior.symlink_target != now.symlink_target,
        FileType::CharDev | FileType::BlockDev => prior.rdev != now.rdev,
        _ => false,
    };
    if content_changed {
        return Some(ChangeKind::Modified);
    }
    let meta_changed = prior.mode != now.mode
        || prior.uid != now.uid
        || prior.gid != now.gid
        || prior.mtime_ns != now.mtime_ns
        || prior.ctime_ns != now.ctime_ns
        || prior.nlink != now.nlink
        || prior.xattrs != now.xattrs;
    meta_changed.then_some(ChangeKind::Metadata)
}

/// Compares directories below a starting point with the prior tree. Used
/// for whole walks, and by snapshot-diff sources for the subtrees a diff
/// names only by their root (a moved or replaced directory).
pub struct Walker<'a> {
    pub prior: &'a dyn PriorState,
    pub emit: &'a mut dyn FnMut(Change) -> Result<()>,
    /// What could not be looked at: the first `BoundedList::CAP`, and a
    /// count of the rest (`note_unreadable`).
    pub unreadable: Vec<Unreadable>,
    pub unreadable_more: u64,
    /// Entries that are not part of the dataset (a nested btrfs
    /// subvolume's stub): treated as absent.
    pub skip: Option<fn(&Metadata) -> bool>,
    /// The device of the tree's root. A directory on another device is a
    /// mount point: recorded by its parent, never descended into.
    pub root_dev: u64,
    /// Paths a pattern excludes, and tagged caches: treated as absent.
    pub excludes: Option<Arc<Excludes>>,
}

/// The device a directory is on (`st_dev`).
pub fn device_of(dir: &Dir) -> std::io::Result<u64> {
    Ok(rustix::fs::fstat(dir)?.st_dev)
}

impl<'a> Walker<'a> {
    /// A walker for the tree whose root is `root`.
    pub fn new(
        prior: &'a dyn PriorState,
        emit: &'a mut dyn FnMut(Change) -> Result<()>,
        skip: Option<fn(&Metadata) -> bool>,
        root: &Dir,
    ) -> Result<Walker<'a>> {
        let root_dev = device_of(root).context("cannot stat the root of the walk")?;
        Ok(Walker { prior, emit, unreadable: Vec::new(), unreadable_more: 0, skip, root_dev, excludes: None })
    }

    /// Report a path that could not be looked at; a million of them are
    /// counted, not kept.
    pub fn note_unreadable(&mut self, path: RelPath, error: String) {
        if self.unreadable.len() < crate::util::BoundedList::CAP {
            self.unreadable.push(Unreadable { path, error });
        } else {
            log::warn!("{}: {error}", display_path(&path));
            self.unreadable_more += 1;
        }
    }

    /// Emit the removal of every prior entry strictly below `path`.
    fn removed_below(&mut self, path: &[u8]) -> Result<()> {
        let emit = &mut *self.emit;
        self.prior.for_each_below(path, &mut |e| emit(Change { path: e.path, kind: ChangeKind::Removed, meta: None }))
    }

    /// Emit the removal of a prior entry and, for a directory, of everything below it.
    pub fn removed_tree(&mut self, p: PriorEntry) -> Result<()> {
        let is_dir = p.meta.ftype == FileType::Dir;
        let path = p.path.clone();
        (self.emit)(Change { path: p.path, kind: ChangeKind::Removed, meta: None })?;
        if is_dir {
            self.removed_below(&path)?;
        }
        Ok(())
    }

    /// Compare everything below `dir` (at `path`) with the prior tree. The
    /// directory itself is the caller's to compare.
    pub fn walk_below(&mut self, dir: Dir, path: RelPath) -> Result<()> {
        // Subdirectories wait on the stack by name and are opened only when
        // their turn comes, so the walk holds one descriptor per level, not
        // one per pending sibling (20,000 sibling directories ran out of
        // descriptors).
        enum Next {
            Open(Dir, RelPath),
            Child(std::rc::Rc<Dir>, Vec<u8>, RelPath),
        }
        let mut stack: Vec<Next> = vec![Next::Open(dir, path)];
        while let Some(next) = stack.pop() {
            let (dir, path) = match next {
                Next::Open(d, p) => (d, p),
                Next::Child(parent, name, child) => match parent.open_subdir(&name) {
                    Ok(d) => (d, child),
                    Err(e) => {
                        self.note_unreadable(child, format!("cannot open: {e}"));
                        continue;
                    }
                },
            };
            match device_of(&dir) {
                Ok(dev) if dev != self.root_dev => {
                    // Another file system is mounted here. What was below
                    // this path before (the mount hides it, or an older
                    // run walked into the mount) is no longer in the tree.
                    log::info!(
                        "{}: a mount point (another file system): recorded, not descended into",
                        display_path(&path)
                    );
                    self.removed_below(&path)?;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.note_unreadable(path.clone(), format!("cannot stat: {e}"));
                    continue;
                }
            }
            let names = match dir.entry_names() {
                Ok(n) => n,
                Err(e) => {
                    // Keep the prior state of what lies below: we cannot see it.
                    self.note_unreadable(path.clone(), format!("cannot list: {e}"));
                    continue;
                }
            };
            // A tagged cache keeps its own entry and its tag, nothing else.
            let cache_dir = self.excludes.as_ref().is_some_and(|e| e.exclude_caches) && is_tagged_cache(&dir);
            let prior_kids = self.prior.children(&path)?;
            let mut prior_by_name: BTreeMap<Vec<u8>, PriorEntry> =
                prior_kids.into_iter().map(|e| (split_path(&e.path).1.to_vec(), e)).collect();
            let mut subdirs = Vec::new();
            for name in names {
                let child = join_path(&path, &name);
                let prior = prior_by_name.remove(&name);
                if (cache_dir && name != CACHEDIR_TAG) || self.excludes.as_ref().is_some_and(|e| e.matches(&child)) {
                    if let Some(p) = prior {
                        self.removed_tree(p)?;
                    }
                    continue;
                }
                let meta = match dir.metadata_of(&name) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Vanished between listing and stat: it is gone.
                        if let Some(p) = prior {
                            self.removed_tree(p)?;
                        }
                        continue;
                    }
                    Err(e) => {
                        self.note_unreadable(child, format!("cannot stat: {e}"));
                        continue;
                    }
                };
                if self.skip.is_some_and(|f| f(&meta)) {
                    if let Some(p) = prior {
                        self.removed_tree(p)?;
                    }
                    continue;
                }
                let kind = match &prior {
                    None => Some(ChangeKind::Added),
                    Some(p) => classify(&p.meta, &meta),
                };
                if let Some(p) = prior
                    && p.meta.ftype == FileType::Dir
                    && meta.ftype != FileType::Dir
                {
                    // A directory replaced by something else: its subtree is gone.
                    self.removed_below(&p.path)?;
                }
                let is_dir = meta.ftype == FileType::Dir;
                if let Some(kind) = kind {
                    (self.emit)(Change { path: child.clone(), kind, meta: Some(meta) })?;
                }
                if is_dir {
                    subdirs.push((name, child));
                }
            }
            for (_, p) in prior_by_name {
                self.removed_tree(p)?;
            }
            // Reverse so the stack pops directories in name order.
            let dir = std::rc::Rc::new(dir);
            for (name, child) in subdirs.into_iter().rev() {
                stack.push(Next::Child(dir.clone(), name, child));
            }
        }
        Ok(())
    }
}

impl ChangeSource for WalkSource {
    fn kind(&self) -> &'static str {
        "walk"
    }

    fn new_snapshots(&mut self, _last: Option<(&str, &BTreeMap<String, String>)>) -> Result<Vec<SnapshotRef>> {
        // A walk has one "snapshot" per run: the directory as it is now.
        Ok(vec![self.snapshot_ref(&self.label)])
    }

    fn find_snapshot(&mut self, name: &str, _identity: &BTreeMap<String, String>) -> Result<Option<SnapshotRef>> {
        // The walked directory is live, not a snapshot: it cannot vanish
        // the way a pruned snapshot does.
        Ok(Some(self.snapshot_ref(name)))
    }

    fn changes(
        &mut self,
        prior: &dyn PriorState,
        snap: &SnapshotRef,
        emit: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<ChangeReport> {
        crate::fsx::raise_fd_limit();
        let root =
            Dir::open(&snap.root).with_context(|| format!("cannot open {}: check --path", snap.root.display()))?;
        let root_meta = root.metadata_self().with_context(|| format!("cannot stat {}", snap.root.display()))?;
        let kind = match prior.entry(b"")? {
            None => Some(ChangeKind::Added),
            Some(p) => classify(&p.meta, &root_meta),
        };
        if let Some(kind) = kind {
            emit(Change { path: Vec::new(), kind, meta: Some(root_meta) })?;
        }
        let mut w = Walker::new(prior, emit, self.skip, &root)
            .with_context(|| format!("cannot stat {}", snap.root.display()))?;
        w.excludes = self.excludes.clone();
        w.walk_below(root, Vec::new())?;
        Ok(ChangeReport { method: "walk".into(), unreadable: w.unreadable, unreadable_more: w.unreadable_more })
    }

    fn reader(&self, snap: &SnapshotRef) -> Result<Box<dyn SnapshotReader>> {
        snapshot_reader(snap)
    }
}

impl WalkSource {
    fn snapshot_ref(&self, name: &str) -> SnapshotRef {
        let mut identity = BTreeMap::new();
        identity.insert("label".to_string(), name.to_string());
        SnapshotRef { name: name.to_string(), identity, root: self.path.clone() }
    }
}

/// Walk a snapshot against the prior tree: a first backup (`fallback` is
/// `None`), or what a snapshot diff falls back to, saying why in the method.
pub fn walk_snapshot(
    prior: &dyn PriorState,
    snap: &SnapshotRef,
    skip: Option<fn(&Metadata) -> bool>,
    fallback: Option<String>,
    emit: &mut dyn FnMut(Change) -> Result<()>,
) -> Result<ChangeReport> {
    let mut walk = WalkSource { path: snap.root.clone(), label: snap.name.clone(), skip, excludes: None };
    let report = walk.changes(prior, snap, emit)?;
    let method = match fallback {
        None => "walk (first snapshot)".to_string(),
        Some(why) => format!("walk (fallback: {why})"),
    };
    Ok(ChangeReport { method, unreadable: report.unreadable, unreadable_more: report.unreadable_more })
}

/// A reader for the files of a snapshot (or walked) directory.
pub fn snapshot_reader(snap: &SnapshotRef) -> Result<Box<dyn SnapshotReader>> {
    let root = Dir::open(&snap.root).with_context(|| format!("cannot open {}", snap.root.display()))?;
    Ok(Box::new(DirReader { root, cached: None }))
}

/// Opens files beneath a root directory handle. Files arrive in path order,
/// so the last parent directory handle is kept.
pub struct DirReader {
    root: Dir,
    cached: Option<(RelPath, Dir)>,
}

impl SnapshotReader for DirReader {
    fn open(&mut self, path: &[u8]) -> std::io::Result<File> {
        let (parent, name) = split_path(path);
        if self.cached.as_ref().map(|(p, _)| p.as_slice()) != Some(parent) {
            let d = self.root.open_beneath(parent)?;
            self.cached = Some((parent.to_vec(), d));
        }
        let (_, dir) = self.cached.as_ref().expect("cached just above");
        dir.open_file(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::testutil::{MemPrior, apply, full_walk as run};

    use std::os::unix::fs::symlink;

    #[test]
    fn first_walk_adds_everything_second_sees_nothing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), b"x").unwrap();
        std::fs::write(d.path().join("g"), b"").unwrap();
        symlink("nowhere", d.path().join("dangling")).unwrap();
        let mut prior = MemPrior::default();
        let c = run(d.path(), &prior);
        let mut paths: Vec<_> = c.keys().cloned().collect();
        paths.sort();
        assert_eq!(
            paths,
            vec![b"".to_vec(), b"a".to_vec(), b"a/b".to_vec(), b"a/b/f".to_vec(), b"dangling".to_vec(), b"g".to_vec()]
        );
        assert!(c.values().all(|(k, _)| *k == ChangeKind::Added));
        apply(&mut prior, &c);
        assert!(run(d.path(), &prior).is_empty());
    }

    #[test]
    fn modifications_removals_and_type_changes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dir/sub")).unwrap();
        std::fs::write(d.path().join("dir/sub/deep"), b"1").unwrap();
        std::fs::write(d.path().join("f"), b"1").unwrap();
        std::fs::write(d.path().join("m"), b"1").unwrap();
        std::fs::write(d.path().join("x"), b"1").unwrap();
        let mut prior = MemPrior::default();
        let first = run(d.path(), &prior);
        apply(&mut prior, &first);

        std::fs::write(d.path().join("f"), b"22").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path().join("m"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_dir_all(d.path().join("dir")).unwrap();
        std::fs::write(d.path().join("dir"), b"now a file").unwrap();
        std::fs::remove_file(d.path().join("x")).unwrap();
        let c = run(d.path(), &prior);
        assert_eq!(c[&b"f".to_vec()].0, ChangeKind::Modified);
        // A chmod changes the ctime, so the file is read again (safe side).
        assert_eq!(c[&b"m".to_vec()].0, ChangeKind::Modified);
        assert_eq!(c[&b"x".to_vec()].0, ChangeKind::Removed);
        assert_eq!(c[&b"dir".to_vec()].0, ChangeKind::Modified);
        assert_eq!(c[&b"dir/sub".to_vec()].0, ChangeKind::Removed);
        assert_eq!(c[&b"dir/sub/deep".to_vec()].0, ChangeKind::Removed);
        apply(&mut prior, &c);
        assert!(run(d.path(), &prior).is_empty());
    }

    /// A tmpfs mounted on a directory; unmounted in `drop`, even when the test fails.
    struct TmpfsMount(std::path::PathBuf);

    impl TmpfsMount {
        fn mount(at: &Path) -> Option<TmpfsMount> {
            let missing = |why: &str| {
                assert!(std::env::var("CI").is_err(), "CI must allow mounting a tmpfs: {why}");
                eprintln!("SKIPPED LOUDLY: tmpfs mount-point test: {why}");
                None
            };
            if !rustix::process::geteuid().is_root() {
                return missing("not root");
            }
            let st =
                std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "n2s-test"]).arg(at).status();
            if !st.is_ok_and(|s| s.success()) {
                return missing("mount -t tmpfs failed");
            }
            Some(TmpfsMount(at.to_path_buf()))
        }
    }

    impl Drop for TmpfsMount {
        fn drop(&mut self) {
            let quiet = |c: &mut std::process::Command| {
                c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status()
            };
            if !quiet(std::process::Command::new("umount").arg(&self.0)).is_ok_and(|s| s.success()) {
                let _ = quiet(std::process::Command::new("umount").arg("-l").arg(&self.0));
            }
        }
    }

    #[test]
    fn the_walk_stays_on_one_file_system() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("sub/mnt")).unwrap();
        std::fs::write(r.join("sub/mnt/hidden"), b"on the walked file system, under the mount").unwrap();
        std::fs::write(r.join("sub/f"), b"f").unwrap();
        let mut prior = MemPrior::default();
        let first = run(r, &prior);
        apply(&mut prior, &first);
        assert!(prior.0.contains_key(b"sub/mnt/hidden".as_slice()));

        let Some(_m) = TmpfsMount::mount(&r.join("sub/mnt")) else { return };
        std::fs::create_dir(r.join("sub/mnt/other-fs")).unwrap();
        std::fs::write(r.join("sub/mnt/other-fs/file"), b"another file system").unwrap();
        let c = run(r, &prior);
        // The mount point is recorded (as the mounted root looks, like
        // rsync -x), nothing below it is, and what the mount hides is gone.
        assert!(
            c.get(b"sub/mnt".as_slice()).is_some_and(|(_, m)| m.as_ref().is_some_and(|m| m.ftype == FileType::Dir))
        );
        let mut below: Vec<_> = c.keys().filter(|p| p.starts_with(b"sub/mnt/")).map(|p| display_path(p)).collect();
        below.sort();
        assert_eq!(below, vec!["sub/mnt/hidden"]);
        assert_eq!(c[b"sub/mnt/hidden".as_slice()].0, ChangeKind::Removed);
        apply(&mut prior, &c);
        assert!(prior.0.keys().all(|p| !p.starts_with(b"sub/mnt/")));
        assert!(prior.0.contains_key(b"sub/f".as_slice()));
        // Nothing more to find: the second walk of the same tree is empty.
        assert!(run(r, &prior).is_empty());
    }

    #[test]
    fn reader_opens_files_and_refuses_fifos() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), b"content").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("a/p"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let src = WalkSource::new(d.path(), "t".into());
        let snap = src.snapshot_ref("t");
        let mut r = src.reader(&snap).unwrap();
        let mut s = String::new();
        use std::io::Read;
        r.open(b"a/f").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "content");
        assert!(r.open(b"a/p").is_err());
        assert!(r.open(b"../etc/passwd").is_err());
    }
}
