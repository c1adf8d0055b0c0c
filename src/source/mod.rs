//! Sources: where changes are discovered. A source knows file systems and
//! snapshots; it yields changesets and a way to open files in a snapshot.
//! It knows nothing of backends, packs or SQLite: the last backed-up state
//! reaches it through the small `PriorState` trait.

pub mod btrfs;
pub mod walk;

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
    pub unreadable: Vec<Unreadable>,
}

pub trait ChangeSource {
    /// "walk", "btrfs" or "zfs".
    fn kind(&self) -> &'static str;
    /// Snapshots not yet backed up, oldest first. `last` is the name and
    /// identity of the newest backed-up snapshot.
    fn new_snapshots(&mut self, last: Option<(&str, &BTreeMap<String, String>)>) -> Result<Vec<SnapshotRef>>;
    /// Find a snapshot again by name (to resume an interrupted changeset).
    fn find_snapshot(&mut self, name: &str, identity: &BTreeMap<String, String>) -> Result<SnapshotRef>;
    /// Emit every change from the prior state to `snap`.
    fn changes(
        &mut self,
        prior: &dyn PriorState,
        snap: &SnapshotRef,
        emit: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<ChangeReport>;
    fn reader(&self, snap: &SnapshotRef) -> Result<Box<dyn SnapshotReader>>;
}
