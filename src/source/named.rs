//! Changes from a list of named paths: snapshot diffs (btrfs send, zfs
//! diff) name paths, and each named path is compared between the new
//! snapshot and the prior tree with the walk's own rules.
//!
//! Why not trust the diff's verdicts? A directory rename names only its
//! root, a hardlinked inode is named by one path, zfs diff reports an M
//! without saying content or metadata, and orphan or temporary names come
//! and go. Comparing the final state of every named path with the prior
//! tree handles all of these with one rule; a named path that exists on
//! neither side (an orphan name) simply compares as absent on both.

use anyhow::Result;
use std::collections::BTreeSet;

use super::walk::{Walker, classify};
use super::{PriorState, Unreadable};
use crate::fsx::Dir;
use crate::model::{Change, ChangeKind, FileType, Metadata, RelPath, split_path};

/// The metadata of `path` in the snapshot, or `None` when it does not exist
/// there (including when a component is no longer a directory).
pub fn stat_at(root: &Dir, path: &[u8]) -> std::io::Result<Option<Metadata>> {
    let gone =
        |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP));
    if path.is_empty() {
        return root.metadata_self().map(Some);
    }
    let (parent, name) = split_path(path);
    let dir = match root.open_beneath(parent) {
        Ok(d) => d,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    match dir.metadata_of(name) {
        Ok(m) => Ok(Some(m)),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_below(path: &[u8], root: &[u8]) -> bool {
    root.is_empty() && !path.is_empty() || path.len() > root.len() && path.starts_with(root) && path[root.len()] == b'/'
}

/// Compare every candidate path (and every other link of a hardlinked inode
/// among them) between the snapshot at `root` and the prior tree, emitting
/// one change per path that differs. Entries for which `skip` holds are
/// treated as absent. Returns what could not be examined.
pub fn changes_for_paths(
    prior: &dyn PriorState,
    root: &Dir,
    mut candidates: BTreeSet<RelPath>,
    skip: Option<fn(&Metadata) -> bool>,
    emit: &mut dyn FnMut(Change) -> Result<()>,
) -> Result<Vec<Unreadable>> {
    // A parent's mtime changes with its entries. The stream says so with a
    // utimes, but checking the parent costs one stat, so check it anyway.
    let parents: Vec<RelPath> = candidates.iter().filter(|p| !p.is_empty()).map(|p| split_path(p).0.to_vec()).collect();
    candidates.extend(parents);
    let mut links = Vec::new();
    for p in &candidates {
        let before = prior.entry(p)?.map(|e| e.meta);
        let after = stat_at(root, p).ok().flatten();
        for m in before.iter().chain(after.iter()) {
            if m.ftype == FileType::File && m.nlink > 1 {
                links.extend(prior.hardlinks_of(m.ino)?.into_iter().map(|e| e.path));
            }
        }
    }
    candidates.extend(links);

    let mut walker = Walker::new(prior, emit, skip, root)?;
    // Subtrees already compared (or removed) as a whole.
    let mut covered: BTreeSet<RelPath> = BTreeSet::new();
    for path in candidates {
        if covered.iter().any(|c| is_below(&path, c)) {
            continue;
        }
        let new = match stat_at(root, &path) {
            Ok(m) => m.filter(|m| !skip.is_some_and(|f| f(m))),
            Err(e) => {
                walker.unreadable.push(Unreadable { path, error: format!("cannot stat: {e}") });
                continue;
            }
        };
        let old = prior.entry(&path)?;
        match (old, new) {
            (None, None) => {}
            (Some(o), None) => {
                walker.removed_tree(o)?;
                covered.insert(path);
            }
            (None, Some(n)) => {
                let is_dir = n.ftype == FileType::Dir;
                (walker.emit)(Change { path: path.clone(), kind: ChangeKind::Added, meta: Some(n) })?;
                if is_dir {
                    walk_subtree(&mut walker, root, &path)?;
                    covered.insert(path);
                }
            }
            (Some(o), Some(n)) => {
                // btrfs keeps inode numbers across snapshots of one
                // subvolume: a new number at a path is a new object.
                let replaced = o.meta.ftype != n.ftype || o.meta.ino != n.ino;
                if o.meta.ftype == FileType::Dir && n.ftype != FileType::Dir {
                    let emit = &mut *walker.emit;
                    prior.for_each_below(&path, &mut |e| {
                        emit(Change { path: e.path, kind: ChangeKind::Removed, meta: None })
                    })?;
                }
                let kind = classify(&o.meta, &n).or(replaced.then_some(ChangeKind::Modified));
                let is_dir = n.ftype == FileType::Dir;
                if let Some(kind) = kind {
                    (walker.emit)(Change { path: path.clone(), kind, meta: Some(n) })?;
                }
                if is_dir && replaced {
                    walk_subtree(&mut walker, root, &path)?;
                    covered.insert(path);
                }
            }
        }
    }
    Ok(walker.unreadable)
}

fn walk_subtree(walker: &mut Walker, root: &Dir, path: &[u8]) -> Result<()> {
    match root.open_beneath(path) {
        Ok(d) => walker.walk_below(d, path.to_vec()),
        Err(e) => {
            walker.unreadable.push(Unreadable { path: path.to_vec(), error: format!("cannot open: {e}") });
            Ok(())
        }
    }
}
