//! Rebuild local state from the repository and the key alone: the chunk
//! index from the packs' own indexes, each dataset's catalog from its
//! manifests. The new catalog is built beside the old one and renamed over
//! it only when complete, so a failed rebuild loses nothing.
//!
//! A history is replayed only over an intact chain (engine/chain.rs). What
//! to do at a hole is the caller's choice:
//! - `Strict` (`catalog rebuild`): refuse, naming the hole, and say how to
//!   salvage;
//! - `Salvage` (`catalog rebuild --salvage`, and the rebuilds that restore,
//!   backup and the read verbs make by themselves on a machine that lost its
//!   state): every changeset up to the hole is rebuilt; the damaged ones and
//!   the deltas that depend on them are recorded as `damaged` (refused by
//!   name, never restored wrong); a later full checkpoint starts an intact
//!   history again, and what follows it is restorable.

use anyhow::{Context, Result, bail};

use super::chain::{self, Chain};
use crate::catalog::forget::ForgottenChangeset;
use crate::catalog::index::ChunkIndex;
use crate::catalog::{Catalog, ChangesetRow, ChangesetStatus, FileRow, FileStatus};
use crate::core::manifest::{ManifestHeader, ManifestKind, RecordJoiner, RecordKind};
use crate::model::ChangeKind;
use crate::repo::{Repository, SyncReport};
use crate::state::{DatasetLock, StatePaths};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebuildMode {
    Strict,
    Salvage,
}

#[derive(Debug, serde::Serialize)]
pub struct RebuiltDataset {
    pub dataset: String,
    pub changesets: u64,
    pub entries: u64,
    /// Changesets recorded as damaged (not restorable), with why.
    pub damaged: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct RebuildReport {
    pub packs_indexed: usize,
    /// How the chunk index was made: from pack summaries, from the packs'
    /// own indexes, and the backend requests that took.
    pub index: SyncReport,
    pub datasets: Vec<RebuiltDataset>,
}

/// Rebuild the index, then the catalog of `only` (by name) or of every
/// dataset the repository holds. Takes each dataset's lock.
pub fn rebuild(repo: &Repository, state: &StatePaths, only: Option<&str>, mode: RebuildMode) -> Result<RebuildReport> {
    let mut index = ChunkIndex::open(&state.index_db())?;
    let sync = repo.sync_index_report(&mut index)?;
    drop(index);
    let filter = only.map(|d| repo.dataset_id(d));
    let all = chain::header_keys(repo, filter.as_deref())?;
    if let Some(d) = only
        && all.is_empty()
    {
        bail!("the repository holds no backup of dataset {d:?}: check the name with `n2s-agent list`");
    }
    let mut datasets = Vec::new();
    for (id, keys) in &all {
        let chain = chain::analyze(repo, id, keys);
        let Some(name) = chain.name.clone() else {
            let msg = format!(
                "dataset with id {id}: none of its {} manifest headers can be read, so it cannot be rebuilt",
                keys.len()
            );
            if mode == RebuildMode::Strict {
                bail!("{msg}");
            }
            log::error!("{msg}");
            continue;
        };
        let lock = DatasetLock::acquire(&state.lock(&name), &name)?;
        datasets.push(rebuild_chain(repo, state, &chain, mode, &lock)?);
    }
    Ok(RebuildReport { packs_indexed: sync.packs_added, index: sync, datasets })
}

/// Rebuild the index, then the catalogs of the datasets with these ids.
pub fn rebuild_ids(repo: &Repository, state: &StatePaths, ids: &[String], mode: RebuildMode) -> Result<RebuildReport> {
    let mut index = ChunkIndex::open(&state.index_db())?;
    let sync = repo.sync_index_report(&mut index)?;
    drop(index);
    let mut datasets = Vec::new();
    for (id, keys) in chain::header_keys(repo, None)? {
        if !ids.contains(&id) {
            continue;
        }
        let chain = chain::analyze(repo, &id, &keys);
        let Some(name) = chain.name.clone() else {
            log::error!("dataset with id {id}: none of its manifest headers can be read, so it cannot be rebuilt");
            continue;
        };
        let lock = DatasetLock::acquire(&state.lock(&name), &name)?;
        datasets.push(rebuild_chain(repo, state, &chain, mode, &lock)?);
    }
    Ok(RebuildReport { packs_indexed: sync.packs_added, index: sync, datasets })
}

/// Rebuild one dataset's catalog; the caller holds its lock (backup takes
/// the lock first and keeps it across the rebuild and the backup).
pub fn rebuild_dataset_locked(
    repo: &Repository,
    state: &StatePaths,
    dataset: &str,
    mode: RebuildMode,
    lock: &DatasetLock,
) -> Result<Option<RebuiltDataset>> {
    let id = repo.dataset_id(dataset);
    let all = chain::header_keys(repo, Some(&id))?;
    let Some(keys) = all.get(&id) else { return Ok(None) };
    let mut index = ChunkIndex::open(&state.index_db())?;
    repo.sync_index(&mut index)?;
    drop(index);
    let chain = chain::analyze(repo, &id, keys);
    rebuild_chain(repo, state, &chain, mode, lock).map(Some)
}

fn rebuild_chain(
    repo: &Repository,
    state: &StatePaths,
    chain: &Chain,
    mode: RebuildMode,
    _lock: &DatasetLock,
) -> Result<RebuiltDataset> {
    let name = chain.name.clone().context("a dataset without a readable header")?;
    if mode == RebuildMode::Strict
        && let Some(l) = chain.links.iter().find(|l| l.problem.is_some())
    {
        bail!("{}", refusal(&name, l.seq, l.problem.as_deref().unwrap_or("")));
    }
    let final_path = state.catalog(&name);
    let tmp_path = final_path.with_extension("rebuild");
    for ext in ["rebuild", "rebuild-wal", "rebuild-shm"] {
        let _ = std::fs::remove_file(final_path.with_extension(ext));
    }
    let mut out = RebuiltDataset { dataset: name.clone(), changesets: 0, entries: 0, damaged: Vec::new() };
    {
        let mut cat = Catalog::open(&tmp_path, &name)?;
        // The newest changeset restored intact, and the first damage since.
        let mut last_good: Option<i64> = None;
        let mut broken: Option<(u64, String)> = None;
        // Forgotten changesets since the last replayed one: the next full
        // manifest starts the tree afresh, as after a hole.
        let mut forgotten_since: Option<u64> = None;
        let progress = crate::progress::progress();
        progress.begin(format!("catalog rebuild {name}"), chain.links.len() as u64, 0);
        for link in &chain.links {
            progress.add_files(1);
            let seq = link.seq as i64;
            if let (Some(h), None) = (&link.header, &link.problem)
                && h.kind == ManifestKind::Forgotten
            {
                cat.insert_forgotten(&ForgottenChangeset {
                    number: seq,
                    uid: h.changeset.clone(),
                    snapshot: h.snapshot.name.clone(),
                    source: h.snapshot.source.clone(),
                    identity: serde_json::to_string(&h.snapshot.identity).unwrap_or_else(|_| "{}".into()),
                    started_at: h.started_at,
                    completed_at: Some(h.completed_at),
                    forgotten_at: h.completed_at,
                    done: true,
                })?;
                forgotten_since.get_or_insert(link.seq);
                continue;
            }
            let why = match (&link.header, &link.problem, &broken) {
                (_, Some(p), _) => Some(p.clone()),
                (Some(h), None, Some((k, _))) if h.kind != ManifestKind::Full => {
                    Some(format!("is a delta on top of changeset {k}, which is damaged"))
                }
                _ => None,
            };
            if let Some(why) = why {
                record_damaged(&mut cat, link.seq, link.header.as_ref(), &why, &link.key)?;
                out.damaged.push(format!("changeset {seq} {why}"));
                broken.get_or_insert((link.seq, why));
                continue;
            }
            let h = link.header.as_ref().context("an intact link without a header")?;
            cat.insert_rebuilt_changeset(&row_of(h, seq, &link.key, ChangesetStatus::Complete))?;
            // After a hole, a full manifest starts the tree afresh.
            let resync = broken.is_some() || last_good.is_none() || forgotten_since.is_some();
            match replay(repo, &mut cat, h, seq, resync, last_good) {
                Ok(n) => {
                    out.entries += n;
                    last_good = Some(seq);
                    broken = None;
                    forgotten_since = None;
                }
                Err(e) => {
                    let why = format!("cannot be replayed: {e:#}");
                    if mode == RebuildMode::Strict {
                        bail!("{}", refusal(&name, link.seq, &why));
                    }
                    cat.discard_changeset(seq)?;
                    record_damaged(&mut cat, link.seq, Some(h), &why, &link.key)?;
                    out.damaged.push(format!("changeset {seq} {why}"));
                    broken.get_or_insert((link.seq, why));
                }
            }
        }
        out.changesets = chain.links.len() as u64;
    }
    // Move the old catalog aside only now that the new one is whole.
    for ext in ["sqlite-wal", "sqlite-shm"] {
        let _ = std::fs::remove_file(final_path.with_extension(ext));
    }
    std::fs::rename(&tmp_path, &final_path)
        .with_context(|| format!("cannot move rebuilt catalog to {}", final_path.display()))?;
    for ext in ["rebuild-wal", "rebuild-shm"] {
        let _ = std::fs::remove_file(final_path.with_extension(ext));
    }
    for d in &out.damaged {
        log::warn!("dataset {name}: {d}: it is not restorable");
    }
    Ok(out)
}

fn refusal(name: &str, seq: u64, why: &str) -> String {
    let good = seq.saturating_sub(1);
    let intact = if good == 0 { "no changeset before it".to_string() } else { format!("changesets 1..{good}") };
    format!(
        "dataset {name}: changeset {seq} {why}, so the history after it cannot be rebuilt as it was ({intact} are intact); \
         run `n2s-agent catalog rebuild --dataset {name} --salvage` to rebuild every changeset up to the damage, mark the \
         damaged ones (they are refused by name, never restored wrong), and keep what a later full checkpoint makes whole"
    )
}

fn row_of(h: &ManifestHeader, seq: i64, key: &str, status: ChangesetStatus) -> ChangesetRow {
    ChangesetRow {
        id: seq,
        uid: h.changeset.clone(),
        parent: (seq > 1).then_some(seq - 1),
        snapshot: h.snapshot.name.clone(),
        source: h.snapshot.source.clone(),
        identity: serde_json::to_string(&h.snapshot.identity).unwrap_or_else(|_| "{}".into()),
        method: h.method.clone(),
        kind: Some(match h.kind {
            ManifestKind::Full => "full".into(),
            ManifestKind::Delta => "delta".into(),
            ManifestKind::Forgotten => "forgotten".into(),
        }),
        status,
        started_at: h.started_at,
        listed_at: Some(h.started_at),
        completed_at: Some(h.completed_at),
        n_added: h.counts.added,
        n_modified: h.counts.modified,
        n_metadata: h.counts.metadata,
        n_removed: h.counts.removed,
        n_failed: h.counts.failed,
        bytes_changed: h.bytes_changed,
        bytes_uploaded: h.bytes_uploaded,
        manifest_key: Some(key.to_string()),
    }
}

/// A number the repository holds but that cannot be restored: it keeps
/// its place in the chain (so numbering goes on after it) with no rows.
fn record_damaged(cat: &mut Catalog, seq: u64, h: Option<&ManifestHeader>, why: &str, key: &str) -> Result<()> {
    let mut row = match h {
        Some(h) => row_of(h, seq as i64, key, ChangesetStatus::Damaged),
        None => {
            let placeholder = crate::catalog::NewChangeset {
                snapshot: &format!("#{seq} (manifest lost)"),
                source: "unknown",
                identity: "{}",
                method: "",
                started_at: 0,
            };
            let mut row = ChangesetRow::new(
                seq as i64,
                format!("missing-{seq}"),
                (seq > 1).then_some(seq as i64 - 1),
                &placeholder,
                ChangesetStatus::Damaged,
            );
            row.manifest_key = Some(key.to_string());
            row
        }
    };
    row.method = format!("damaged: {why}");
    if cat.changeset_by_snapshot(&row.snapshot)?.is_some() {
        row.snapshot = format!("{}~damaged-{seq}", row.snapshot);
    }
    cat.insert_rebuilt_changeset(&row)
}

/// Insert the rows of one manifest. With `resync`, entries unchanged since
/// the parent (kind 0 of a full manifest) become rows too, and every path
/// of the last intact tree that the full manifest does not hold is removed.
fn replay(
    repo: &Repository,
    cat: &mut Catalog,
    h: &ManifestHeader,
    seq: i64,
    resync: bool,
    last_good: Option<i64>,
) -> Result<u64> {
    let mut joiner = RecordJoiner::default();
    let mut rows: Vec<FileRow> = Vec::new();
    let mut entries = 0u64;
    let mut flush = |cat: &mut Catalog, rows: &mut Vec<FileRow>| -> Result<()> {
        entries += rows.len() as u64;
        cat.insert_files(rows)?;
        rows.clear();
        Ok(())
    };
    let to_row = |r: crate::core::manifest::Record| -> Option<FileRow> {
        let kind = match r.kind {
            RecordKind::Changed(k) => k,
            RecordKind::Present if resync => ChangeKind::Added,
            // Unchanged entries are already rows of older changesets.
            RecordKind::Present | RecordKind::Continued => return None,
        };
        Some(FileRow {
            changeset: seq,
            path: r.path,
            kind,
            status: FileStatus::Stored,
            meta: r.meta,
            chunks: r.chunks,
            file_hash: r.file_hash,
            error: None,
            uploaded_at: Some(h.completed_at),
            confirmed_at: Some(h.completed_at),
        })
    };
    for seg in &h.segments {
        let records = repo.read_segment(&seg.key)?;
        anyhow::ensure!(
            records.len() as u64 == seg.records,
            "segment {} holds {} records, its header says {}",
            seg.key,
            records.len(),
            seg.records
        );
        for r in records {
            if let Some(done) = joiner.push(r)? {
                rows.extend(to_row(done));
            }
            if rows.len() >= 4096 {
                flush(cat, &mut rows)?;
            }
        }
    }
    rows.extend(joiner.finish().and_then(to_row));
    flush(cat, &mut rows)?;
    if resync && let Some(prev) = last_good {
        entries += cat.remove_absent(prev, seq)?;
    }
    Ok(entries)
}
