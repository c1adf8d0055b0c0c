//! Sources: where changes are discovered. A source knows file systems and
//! snapshots; it yields changesets and a way to open files in a snapshot.
//! It knows nothing of backends, packs or SQLite: the last backed-up state
//! reaches it through the small `PriorState` trait.

pub mod btrfs;
mod child;
pub mod exclude;
pub mod named;
pub mod spill;
pub mod stream;
pub mod walk;
#[cfg(feature = "zfs")]
pub mod zfs;

use anyhow::Result;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;

use crate::model::{Change, Metadata, RelPath};

/// One snapshot a source can back up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRef {
    pub name: String,
    /// What identifies it beyond its name (guid+createtxg, uuid+generation, label).
    pub identity: BTreeMap<String, String>,
    /// Where its content is read from (a read-only snapshot, or the walked directory).
    pub root: PathBuf,
}

/// An entry of the last backed-up tree.
#[derive(Clone, Debug)]
pub struct PriorEntry {
    pub path: RelPath,
    pub meta: Metadata,
}

/// Read-only view of the last backed-up tree of a dataset.
pub trait PriorState {
    fn entry(&self, path: &[u8]) -> Result<Option<PriorEntry>>;
    /// Children of a directory, sorted by name.
    fn children(&self, dir: &[u8]) -> Result<Vec<PriorEntry>>;
    /// Every entry strictly below `dir`, visited in path order.
    fn for_each_below(&self, dir: &[u8], f: &mut dyn FnMut(PriorEntry) -> Result<()>) -> Result<()>;
    /// Every path of the regular file with inode `ino` that had more than
    /// one link: a diff may name only one path of a hardlinked inode.
    fn hardlinks_of(&self, ino: u64) -> Result<Vec<PriorEntry>>;
}

/// A path the source could not look at: it is reported, never skipped silently.
#[derive(Clone, Debug)]
pub struct Unreadable {
    pub path: RelPath,
    pub error: String,
}

/// Opens files of one snapshot for reading.
pub trait SnapshotReader: Send {
    fn open(&mut self, path: &[u8]) -> std::io::Result<File>;
}

/// How the changes of a snapshot were found, for the catalog and `list`.
pub struct ChangeReport {
    pub method: String,
    /// The first paths that could not be looked at (at most
    /// `util::BoundedList::CAP`), and how many more there were.
    pub unreadable: Vec<Unreadable>,
    pub unreadable_more: u64,
}

pub trait ChangeSource {
    /// "walk", "btrfs" or "zfs".
    fn kind(&self) -> &'static str;
    /// Snapshots not yet backed up, oldest first. `last` is the name and
    /// identity of the newest backed-up snapshot.
    fn new_snapshots(&mut self, last: Option<(&str, &BTreeMap<String, String>)>) -> Result<Vec<SnapshotRef>>;
    /// Find a snapshot again by name and identity (to resume an interrupted
    /// changeset): `None` when it no longer exists (a pruner destroyed it).
    fn find_snapshot(&mut self, name: &str, identity: &BTreeMap<String, String>) -> Result<Option<SnapshotRef>>;
    /// Emit every change from the prior state to `snap`.
    fn changes(
        &mut self,
        prior: &dyn PriorState,
        snap: &SnapshotRef,
        emit: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<ChangeReport>;
    fn reader(&self, snap: &SnapshotRef) -> Result<Box<dyn SnapshotReader>>;
    /// Make a new read-only snapshot named `name` now (`backup --take-snapshot`).
    fn take_snapshot(&mut self, name: &str) -> Result<SnapshotRef> {
        anyhow::bail!("the {} source cannot take snapshots (asked for {name:?})", self.kind())
    }
    /// Keep `snap` from being destroyed while its changeset is open: called
    /// before its changes are listed, and again before a resumed upload
    /// (zfs places a hold; other sources cannot pin a snapshot).
    fn hold(&mut self, _snap: &SnapshotRef) -> Result<()> {
        Ok(())
    }
    /// Called once a snapshot's changeset is committed: it is the new diff
    /// base (zfs keeps its hold and releases the older ones here).
    fn committed(&mut self, _snap: &SnapshotRef) -> Result<()> {
        Ok(())
    }
    /// What the source passed over and why (a writable snapshot, say): the
    /// run reports these and fails, so nothing is skipped silently.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A prior state held in memory, for testing sources alone, and small
    //! helpers the sources' tests share.
    use super::*;
    use crate::model::{ChangeKind, FileType, split_path};
    use std::collections::{BTreeMap, HashMap};

    /// A shell command standing in for `btrfs send` or `zfs diff`.
    pub fn sh(script: &str) -> std::process::Command {
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    /// Every path a sorter holds, in its order.
    pub fn sorted(s: super::spill::PathSorter) -> Vec<Vec<u8>> {
        let mut it = s.finish().unwrap();
        let mut v = Vec::new();
        while let Some(p) = it.next_path().unwrap() {
            v.push(p);
        }
        v
    }

    #[derive(Default)]
    pub struct MemPrior(pub BTreeMap<Vec<u8>, Metadata>);

    impl PriorState for MemPrior {
        fn entry(&self, path: &[u8]) -> Result<Option<PriorEntry>> {
            Ok(self.0.get(path).map(|m| PriorEntry { path: path.to_vec(), meta: m.clone() }))
        }
        fn children(&self, dir: &[u8]) -> Result<Vec<PriorEntry>> {
            Ok(self
                .0
                .iter()
                .filter(|(p, _)| !p.is_empty() && split_path(p).0 == dir)
                .map(|(p, m)| PriorEntry { path: p.clone(), meta: m.clone() })
                .collect())
        }
        fn for_each_below(&self, dir: &[u8], f: &mut dyn FnMut(PriorEntry) -> Result<()>) -> Result<()> {
            let mut pre = dir.to_vec();
            pre.push(b'/');
            for (p, m) in &self.0 {
                if dir.is_empty() && !p.is_empty() || p.starts_with(&pre) {
                    f(PriorEntry { path: p.clone(), meta: m.clone() })?;
                }
            }
            Ok(())
        }
        fn hardlinks_of(&self, ino: u64) -> Result<Vec<PriorEntry>> {
            Ok(self
                .0
                .iter()
                .filter(|(_, m)| m.ftype == FileType::File && m.nlink > 1 && m.ino == ino)
                .map(|(p, m)| PriorEntry { path: p.clone(), meta: m.clone() })
                .collect())
        }
    }

    pub type Seen = HashMap<Vec<u8>, (ChangeKind, Option<Metadata>)>;

    /// Every change a full walk of `root` finds against `prior`; a path
    /// emitted twice fails the test.
    pub fn full_walk(root: &std::path::Path, prior: &MemPrior) -> Seen {
        let mut src = super::walk::WalkSource::new(root, "t".into());
        let snap = src.new_snapshots(None).unwrap().remove(0);
        let mut out = HashMap::new();
        src.changes(prior, &snap, &mut |c| {
            assert!(out.insert(c.path.clone(), (c.kind, c.meta)).is_none(), "path emitted twice");
            Ok(())
        })
        .unwrap();
        out
    }

    /// Apply a source's changes to the prior state, as a backup would.
    pub fn apply(prior: &mut MemPrior, changes: &HashMap<Vec<u8>, (ChangeKind, Option<Metadata>)>) {
        for (p, (k, m)) in changes {
            if *k == ChangeKind::Removed {
                prior.0.remove(p);
            } else if let Some(m) = m {
                prior.0.insert(p.clone(), m.clone());
            }
        }
    }
}
