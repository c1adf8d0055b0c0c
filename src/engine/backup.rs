//! The backup flow of one dataset: finish any interrupted changeset, then
//! back up every new snapshot, oldest first. Each changeset goes
//! pending (listing) → uploading (content) → complete (manifest stored).
//!
//! A changeset whose snapshot is destroyed before its upload finishes can
//! never finish: it is abandoned (recorded as failed, its number freed) and
//! the run carries on from the last complete changeset with the next
//! snapshot, so one pruned snapshot never stops a dataset's backups.

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::prior::CatalogPrior;
use super::rebuild::{RebuildMode, rebuild_dataset_locked};
use super::upload::{UploadOptions, upload_changeset};
use crate::backend::PutOutcome;
use crate::catalog::index::ChunkIndex;
use crate::catalog::{Catalog, ChangesetRow, ChangesetStatus, FailedChangeset, FileRow, FileStatus, NewChangeset};
use crate::core::manifest::{
    self, Counts, ManifestHeader, ManifestKind, Record, RecordKind, SEGMENT_TARGET, SegmentRef, SnapshotInfo,
};
use crate::model::{ChangeKind, ChunkId, FileType, display_path};
use crate::repo::Repository;
use crate::source::exclude::{ExcludeFilter, Excludes};
use crate::source::{ChangeSource, PriorState, SnapshotRef};
use crate::state::{DatasetLock, StatePaths};
use crate::util::{BoundedList, fault, now};

#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub upload: UploadOptions,
    /// Every this many changesets, the manifest holds the whole tree.
    pub checkpoint_every: i64,
    /// Chunk ids per manifest record before a continuation record
    /// (manifest::CHUNKS_PER_RECORD; lowered only by tests).
    pub chunks_per_record: usize,
    /// Record nothing for a snapshot with no change at all (a walk run that
    /// was given no label of its own): a timer that finds nothing new
    /// stores nothing, not even a manifest header.
    pub skip_unchanged: bool,
    /// What the dataset leaves out (patterns, tagged caches).
    pub excludes: Arc<Excludes>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            upload: UploadOptions::default(),
            checkpoint_every: 16,
            chunks_per_record: manifest::CHUNKS_PER_RECORD,
            skip_unchanged: false,
            excludes: Arc::new(Excludes::default()),
        }
    }
}

/// What one changeset did, for the command's output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangesetSummary {
    pub dataset: String,
    pub snapshot: String,
    pub changeset: i64,
    pub method: String,
    pub resumed: bool,
    pub kind: String,
    pub added: u64,
    pub modified: u64,
    pub metadata: u64,
    pub removed: u64,
    pub failed: u64,
    /// Files that changed while they were read (walk source): stored as
    /// read, with a warning.
    pub changed_during_read: u64,
    /// Files read again because the packs that held them were lost.
    pub repaired: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub packs: u64,
    /// Paths that could not be read or listed: reported, never skipped
    /// silently (the first 1000; `problems_total` counts them all).
    pub problems: Vec<String>,
    pub problems_total: u64,
    /// Paths that changed while read (the first 1000).
    pub changed_paths: Vec<String>,
}

/// What a run on one dataset did.
#[derive(Debug, Default, serde::Serialize)]
pub struct DatasetRun {
    pub changesets: Vec<ChangesetSummary>,
    /// Changesets that can never finish, ended by this run.
    pub abandoned: Vec<FailedChangeset>,
    /// Changesets of the repository's history that are damaged (after a
    /// salvage rebuild): named so the operator knows.
    pub damaged: Vec<String>,
}

enum Finished {
    Done(Box<ChangesetSummary>),
    Abandoned(FailedChangeset),
}

pub fn backup_dataset(
    repo: &Arc<Repository>,
    state: &StatePaths,
    dataset: &str,
    source: &mut dyn ChangeSource,
    opts: &BackupOptions,
) -> Result<DatasetRun> {
    // The lock comes first: a rebuild of the catalog and the run that
    // follows it are one step for any other agent of this state directory.
    let lock = DatasetLock::acquire(&state.lock(dataset), dataset)?;
    let mut run = DatasetRun::default();
    let catalog_path = state.catalog(dataset);
    if !catalog_path.exists() {
        // The state directory was lost but the repository may have this
        // dataset's history: continue it rather than start a second one.
        if let Some(r) = rebuild_dataset_locked(repo, state, dataset, RebuildMode::Salvage, &lock)? {
            log::info!("{dataset}: no local catalog; rebuilt it from the repository ({} changesets)", r.changesets);
            run.damaged = r.damaged;
        }
    }
    let mut catalog = Catalog::open(&catalog_path, dataset)?;
    // A forget that was interrupted after the catalog's part ends here:
    // the repository must not go on holding a history the catalog left.
    let finished = super::forget::finish(repo, &mut catalog)?;
    if !finished.recorded.is_empty() {
        log::info!("{dataset}: finished an interrupted forget of changesets {:?}", finished.recorded);
    }

    if let Some(open) = catalog.incomplete()? {
        match open.status {
            ChangesetStatus::Uploading => {
                let identity: BTreeMap<String, String> = serde_json::from_str(&open.identity)
                    .with_context(|| format!("changeset {} of {dataset} has a bad identity", open.id))?;
                match source.find_snapshot(&open.snapshot, &identity)? {
                    None => {
                        let why = format!("its snapshot {} was destroyed before its upload finished", open.snapshot);
                        run.abandoned.push(abandon(&mut catalog, &open, &why)?);
                    }
                    Some(snap) => {
                        log::info!(
                            "{dataset}: resuming interrupted changeset {} (snapshot {})",
                            open.id,
                            open.snapshot
                        );
                        source.hold(&snap)?;
                        // A crash may have stored packs the index never heard of.
                        let mut index = ChunkIndex::open(&state.index_db())?;
                        let found = repo.sync_index(&mut index)?;
                        if found > 0 {
                            log::info!("{dataset}: indexed {found} packs stored before the interruption");
                        }
                        drop(index);
                        let problems = BoundedList::default();
                        match finish_changeset(repo, state, &mut catalog, source, &snap, &open, problems, opts, true)? {
                            Finished::Done(s) => {
                                source.committed(&snap)?;
                                run.changesets.push(*s);
                            }
                            Finished::Abandoned(f) => run.abandoned.push(f),
                        }
                    }
                }
            }
            _ => {
                log::info!("{dataset}: listing of changeset {} was interrupted; listing again", open.id);
                catalog.discard_changeset(open.id)?;
            }
        }
    }

    let last = catalog.latest_complete()?;
    let last_identity: Option<BTreeMap<String, String>> =
        last.as_ref().map(|c| serde_json::from_str(&c.identity).unwrap_or_default());
    let snapshots = source.new_snapshots(last.as_ref().map(|c| c.snapshot.as_str()).zip(last_identity.as_ref()))?;
    for snap in snapshots {
        // The same run started again after a crash: resuming finished it.
        if run.changesets.iter().any(|d| d.snapshot == snap.name) {
            continue;
        }
        let identity = serde_json::to_string(&snap.identity)?;
        let mut label = snap.name.clone();
        if let Some(existing) = catalog.changeset_by_snapshot(&snap.name)? {
            if source.kind() == "walk" {
                bail!(
                    "snapshot {:?} of dataset {dataset} is already backed up: give this run another --snapshot label",
                    snap.name
                );
            }
            if existing.identity == identity && existing.status == ChangesetStatus::Complete {
                continue; // the very same snapshot: done already
            }
            // The name was used again for another snapshot (after a ZFS
            // rollback, say), or the first one's manifest is damaged: keep
            // both, under distinct labels.
            let mut n = 2;
            while catalog.changeset_by_snapshot(&format!("{}~{n}", snap.name))?.is_some() {
                n += 1;
            }
            label = format!("{}~{n}", snap.name);
            log::warn!(
                "{dataset}: snapshot {} is not the one backed up under that name before; recording it as {label}",
                snap.name
            );
        }
        // Pin the snapshot before anything of it is recorded.
        source.hold(&snap)?;
        let prior_at = catalog.latest_complete()?.map(|c| c.id);
        let row = catalog.create_changeset(&NewChangeset {
            snapshot: &label,
            source: source.kind(),
            identity: &identity,
            method: source.kind(),
            started_at: now(),
        })?;
        log::info!("{dataset}: finding changes for snapshot {} (changeset {})", snap.name, row.id);
        let listed = list_changes(state, &mut catalog, source, &snap, row.id, prior_at, &opts.excludes)?;
        if opts.skip_unchanged && prior_at.is_some() && listed.problems.is_empty() && !catalog.has_rows(row.id)? {
            log::info!("{dataset}: nothing changed since the last backup: nothing stored");
            catalog.discard_changeset(row.id)?;
            continue;
        }
        catalog.set_listed(row.id, now(), &listed.method)?;
        fault::hit("listed");
        let row = catalog.changeset(row.id)?.context("changeset vanished")?;
        match finish_changeset(repo, state, &mut catalog, source, &snap, &row, listed.problems, opts, false)? {
            Finished::Done(mut s) => {
                s.repaired = listed.repaired;
                source.committed(&snap)?;
                run.changesets.push(*s);
            }
            Finished::Abandoned(f) => run.abandoned.push(f),
        }
    }
    Ok(run)
}

/// End a changeset that can never finish, loudly.
fn abandon(catalog: &mut Catalog, row: &ChangesetRow, why: &str) -> Result<FailedChangeset> {
    let f = catalog.abandon_changeset(row.id, why, now())?;
    log::error!(
        "{}: changeset {} (snapshot {}) is abandoned: {why}; the next snapshot is backed up from changeset {}",
        catalog.dataset(),
        row.id,
        row.snapshot,
        catalog.latest_complete()?.map_or("none (a full walk)".to_string(), |c| format!("{} ({})", c.id, c.snapshot))
    );
    Ok(f)
}

/// End the open changeset of `snapshot` by hand (`n2s-agent abandon`).
pub fn abandon_by_name(state: &StatePaths, dataset: &str, snapshot: &str) -> Result<FailedChangeset> {
    let _lock = DatasetLock::acquire(&state.lock(dataset), dataset)?;
    let path = state.catalog(dataset);
    if !path.exists() {
        bail!("dataset {dataset:?} has no local catalog, so it has no unfinished changeset to abandon");
    }
    let mut catalog = Catalog::open(&path, dataset)?;
    let Some(open) = catalog.incomplete()? else {
        bail!("dataset {dataset} has no unfinished changeset: nothing to abandon");
    };
    if open.snapshot != snapshot && format!("#{}", open.id) != snapshot {
        bail!(
            "the unfinished changeset of dataset {dataset} is {} (snapshot {}), not {snapshot:?}: name that one",
            open.id,
            open.snapshot
        );
    }
    abandon(&mut catalog, &open, "abandoned by the operator (`n2s-agent abandon`)")
}

struct Listed {
    method: String,
    problems: BoundedList,
    repaired: u64,
}

/// Ask the source for the changes and record them as rows of changeset `cs`.
fn list_changes(
    state: &StatePaths,
    catalog: &mut Catalog,
    source: &mut dyn ChangeSource,
    snap: &SnapshotRef,
    cs: i64,
    prior_at: Option<i64>,
    excludes: &Excludes,
) -> Result<Listed> {
    // Chunks whose every pack is lost: nothing may reference them again.
    let mut orphans: HashSet<ChunkId> = HashSet::new();
    {
        let index = ChunkIndex::open(&state.index_db())?;
        index.for_each_orphaned_chunk(|c| {
            orphans.insert(c);
            Ok(())
        })?;
    }
    // The source reads the prior tree through a second connection while
    // this one writes the new rows.
    let reader = Catalog::open(catalog.path(), catalog.dataset())?;
    let prior = CatalogPrior { catalog: &reader, at: prior_at };
    let mut problems = BoundedList::default();
    let mut batch: Vec<FileRow> = Vec::with_capacity(4096);
    let progress = crate::progress::progress();
    progress.begin(format!("{}: finding changes in {}", catalog.dataset(), snap.name), 0, 0);
    let mut emit = |c: crate::model::Change| -> Result<()> {
        progress.add_files(1);
        progress.set_current(&c.path);
        let mut row = FileRow {
            changeset: cs,
            path: c.path,
            kind: c.kind,
            status: FileStatus::Stored,
            meta: c.meta,
            chunks: Vec::new(),
            file_hash: None,
            error: None,
            uploaded_at: None,
            confirmed_at: None,
        };
        if let Err(why) = manifest::check_encodable(&row.path, row.meta.as_ref()) {
            // Never write a manifest the reader would refuse: the entry is
            // left out of this snapshot, and said so.
            problems.push(format!("{}: not backed up: {why}", display_path(&row.path)));
            row.status = FileStatus::Failed;
            row.error = Some(why);
        } else if row.meta.as_ref().is_some_and(|m| m.ftype == FileType::File) {
            row.status = FileStatus::Pending;
            if row.kind == ChangeKind::Metadata {
                // Same content as before: reuse its chunks, read nothing,
                // unless a chunk of it was in a lost pack.
                if let Some(p) = prior_at.map(|n| reader.entry_at(n, &row.path)).transpose()?.flatten()
                    && p.meta.as_ref().is_some_and(|m| m.ftype == FileType::File)
                    && p.file_hash.is_some()
                    && !p.chunks.iter().any(|c| orphans.contains(c))
                {
                    row.chunks = p.chunks;
                    row.file_hash = p.file_hash;
                    row.status = FileStatus::Stored;
                    row.uploaded_at = p.uploaded_at;
                    row.confirmed_at = p.confirmed_at;
                }
            }
        }
        batch.push(row);
        if batch.len() >= 4096 {
            catalog.insert_files(&batch)?;
            batch.clear();
            fault::hit("listing-batch");
        }
        Ok(())
    };
    let report = if excludes.is_empty() {
        source.changes(&prior, snap, &mut emit)?
    } else {
        let mut filter = ExcludeFilter::new(excludes, &snap.root);
        // Excluded subtrees already taken out of the tree by this run.
        let mut cut: HashSet<Vec<u8>> = HashSet::new();
        let mut left_out = 0u64;
        let mut filtered = |c: crate::model::Change| -> Result<()> {
            let Some(root) = filter.excluded_root(&c.path) else { return emit(c) };
            if c.kind == ChangeKind::Removed {
                // The source takes out what was there before: let it,
                // unless this run took the whole subtree out already.
                return if cut.contains(&root) { Ok(()) } else { emit(c) };
            }
            left_out += 1;
            if cut.insert(root.clone()) && prior.entry(&root)?.is_some() {
                // Backed up before the exclude was added: gone from this
                // snapshot on, like a removed file (older ones keep it).
                emit(crate::model::Change { path: root.clone(), kind: ChangeKind::Removed, meta: None })?;
                prior.for_each_below(&root, &mut |e| {
                    emit(crate::model::Change { path: e.path, kind: ChangeKind::Removed, meta: None })
                })?;
            }
            Ok(())
        };
        let report = source.changes(&prior, snap, &mut filtered)?;
        if left_out > 0 {
            log::info!("{}: left out {left_out} changed paths that the excludes name", catalog.dataset());
        }
        report
    };
    catalog.insert_files(&batch)?;
    for u in &report.unreadable {
        problems.push(format!("{}: {}", display_path(&u.path), u.error));
    }
    problems.add_uncounted(report.unreadable_more);
    let repaired = match prior_at {
        Some(n) if !orphans.is_empty() => read_again_what_lost_packs_held(catalog, &reader, cs, n, &orphans)?,
        _ => 0,
    };
    for p in problems.items() {
        log::warn!("{}: {p}", catalog.dataset());
    }
    Ok(Listed { method: report.method, problems, repaired })
}

/// Files of the prior tree that the diff did not name (unchanged) but whose
/// content lived in a lost pack: they are read again from this snapshot, so
/// that it, and every later one, is whole again.
fn read_again_what_lost_packs_held(
    catalog: &mut Catalog,
    prior: &Catalog,
    cs: i64,
    prior_at: i64,
    orphans: &HashSet<ChunkId>,
) -> Result<u64> {
    let mut n = 0u64;
    let mut batch = Vec::new();
    prior.for_each_in_tree(prior_at, None, |r| {
        if r.chunks.iter().any(|c| orphans.contains(c)) && !catalog.has_row(cs, &r.path)? {
            batch.push(FileRow {
                changeset: cs,
                kind: ChangeKind::Modified,
                status: FileStatus::Pending,
                chunks: Vec::new(),
                file_hash: None,
                error: None,
                uploaded_at: None,
                confirmed_at: None,
                ..r
            });
            if batch.len() >= 4096 {
                catalog.insert_files(&batch)?;
                n += batch.len() as u64;
                batch.clear();
            }
        }
        Ok(())
    })?;
    catalog.insert_files(&batch)?;
    n += batch.len() as u64;
    if n > 0 {
        log::warn!(
            "{}: {n} unchanged files had content in lost packs; reading them again from this snapshot",
            catalog.dataset()
        );
    }
    Ok(n)
}

#[allow(clippy::too_many_arguments)]
fn finish_changeset(
    repo: &Arc<Repository>,
    state: &StatePaths,
    catalog: &mut Catalog,
    source: &mut dyn ChangeSource,
    snap: &SnapshotRef,
    row: &ChangesetRow,
    mut problems: BoundedList,
    opts: &BackupOptions,
    resumed: bool,
) -> Result<Finished> {
    let dataset = catalog.dataset().to_string();
    let pending = catalog.count_pending(row.id)?;
    if pending > 0 {
        // Other hosts may have stored what this changeset is about to
        // upload: learn their packs first (a backup with nothing to read
        // makes no request for it).
        let mut index = ChunkIndex::open(&state.index_db())?;
        if let Err(e) = repo.learn_summaries(&mut index) {
            log::warn!(
                "{dataset}: cannot read other agents' pack summaries ({e:#}): what they stored may be uploaded again"
            );
        }
        // Packs a prune has marked are never deduplicated against.
        super::prune::learn_plans(repo, &mut index).context("cannot learn the repository's prune plans")?;
    }
    let identity: BTreeMap<String, String> = serde_json::from_str(&row.identity).unwrap_or_default();
    let reader = match source.reader(snap) {
        Ok(r) => r,
        // Gone since it was listed: a pruner destroyed it.
        Err(e) if source.find_snapshot(&row.snapshot, &identity)?.is_none() => {
            let why = format!("its snapshot {} was destroyed before its upload finished ({e:#})", snap.name);
            return Ok(Finished::Abandoned(abandon(catalog, row, &why)?));
        }
        Err(e) => return Err(e),
    };
    log::info!("{dataset}: {pending} files to read for snapshot {}", snap.name);
    let catalog_path = catalog.path().to_path_buf();
    let stopped = || format!("backup of {dataset} snapshot {} stopped; run backup again to resume", snap.name);
    let mut report =
        upload_changeset(repo, &state.index_db(), &catalog_path, &dataset, catalog, row.id, reader, &opts.upload)
            .with_context(stopped)?;
    // Right before the commit: a prune may have marked packs this
    // changeset uses since it began. What lives only there is stored again,
    // so the header never names a chunk a sweep may delete (FORMAT §9).
    loop {
        let again = super::prune::guard(repo, &state.index_db(), catalog, row.id).with_context(stopped)?;
        if again == 0 {
            break;
        }
        log::warn!(
            "{dataset}: {again} files of snapshot {} used packs that a prune marked for deletion; storing them again",
            snap.name
        );
        let reader = source.reader(snap)?;
        let more =
            upload_changeset(repo, &state.index_db(), &catalog_path, &dataset, catalog, row.id, reader, &opts.upload)
                .with_context(stopped)?;
        report.bytes_read += more.bytes_read;
    }
    if catalog.count_pending(row.id)? > 0 {
        bail!("backup of {dataset} snapshot {} left files unread; run backup again to resume", snap.name);
    }
    if report.failed.total() > 0 {
        // Unreadable files are normal (permissions), a vanished snapshot is
        // not: committing would record all of its files as removed.
        if source.find_snapshot(&row.snapshot, &identity)?.is_none() {
            let why = format!(
                "its snapshot {} was destroyed while it was being backed up ({} files could not be read)",
                snap.name,
                report.failed.total()
            );
            return Ok(Finished::Abandoned(abandon(catalog, row, &why)?));
        }
    }
    for p in report.failed.items() {
        problems.push(p.clone());
    }
    problems.add_uncounted(report.failed.total().saturating_sub(report.failed.items().len() as u64));
    // Every pack of the changeset is confirmed: summarize them (and any a
    // crash left uncovered) before the manifest that needs them, so that a
    // rebuild reads one summary instead of each pack's index (FORMAT §6.4).
    // A summary is only a cache of the packs' own indexes: failing to write
    // one costs a slower rebuild, never the backup.
    match ChunkIndex::open(&state.index_db()).and_then(|mut ix| repo.write_summaries(&mut ix)) {
        Ok(w) if w.summaries > 0 => log::debug!("{dataset}: {} pack summaries of {} packs", w.summaries, w.packs),
        Ok(_) => {}
        Err(e) => log::warn!(
            "{dataset}: cannot write pack summaries ({e:#}): the next backup tries again; until then a rebuild reads these packs' own indexes"
        ),
    }
    let (key, kind) = write_manifest(repo, catalog, row, opts)?;
    log::debug!("{dataset}: manifest {key}");
    let done = catalog.changeset(row.id)?.context("changeset vanished")?;
    Ok(Finished::Done(Box::new(ChangesetSummary {
        dataset,
        snapshot: done.snapshot,
        changeset: done.id,
        method: done.method,
        resumed,
        kind: kind.to_string(),
        added: done.n_added,
        modified: done.n_modified,
        metadata: done.n_metadata,
        removed: done.n_removed,
        failed: done.n_failed,
        changed_during_read: report.changed.total(),
        repaired: 0,
        bytes_read: report.bytes_read,
        bytes_uploaded: report.bytes_uploaded,
        packs: report.packs,
        problems_total: problems.total(),
        problems: problems.into_items(),
        changed_paths: report.changed.into_items(),
    })))
}

fn record_of(row: &FileRow, kind: RecordKind) -> Record {
    Record {
        kind,
        path: row.path.clone(),
        meta: row.meta.clone(),
        file_hash: row.file_hash,
        chunks: row.chunks.clone(),
    }
}

fn removal(path: &[u8]) -> Record {
    Record {
        kind: RecordKind::Changed(ChangeKind::Removed),
        path: path.to_vec(),
        meta: None,
        file_hash: None,
        chunks: Vec::new(),
    }
}

/// Buffers records into sealed segments of bounded size.
struct SegmentWriter<'a> {
    repo: &'a Repository,
    buf: Vec<u8>,
    records: u64,
    segments: Vec<SegmentRef>,
    per_record: usize,
}

impl SegmentWriter<'_> {
    fn push(&mut self, r: &Record) -> Result<()> {
        let per_record = self.per_record;
        // A long chunk list becomes several records; a segment may end
        // between them, so none outgrows what the reader accepts.
        manifest::encode_split(r, per_record, &mut |enc| {
            self.buf.extend_from_slice(enc);
            self.records += 1;
            if self.buf.len() >= SEGMENT_TARGET {
                self.flush()?;
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> Result<()> {
        if self.records == 0 {
            return Ok(());
        }
        let sealed = manifest::seal_segment(&self.repo.sealer, &self.buf);
        let key = manifest::segment_key(&sealed);
        self.repo.put(&key, &sealed)?;
        self.segments.push(SegmentRef { key, records: self.records });
        self.buf.clear();
        self.records = 0;
        Ok(())
    }
}

/// Write the records of changeset `id` as sealed segments: its changes
/// (a delta), or its whole tree with its own changes marked (full).
pub fn write_segments(
    repo: &Repository,
    catalog: &Catalog,
    id: i64,
    full: bool,
    per_record: usize,
) -> Result<Vec<SegmentRef>> {
    let mut w = SegmentWriter { repo, buf: Vec::new(), records: 0, segments: Vec::new(), per_record };
    if full {
        catalog.for_each_in_tree(id, None, |r| {
            let kind = if r.changeset == id { RecordKind::Changed(r.kind) } else { RecordKind::Present };
            w.push(&record_of(&r, kind))
        })?;
        catalog.for_each_in_changeset(id, |r| {
            if r.kind == ChangeKind::Removed || r.status == FileStatus::Failed {
                w.push(&removal(&r.path))?;
            }
            Ok(())
        })?;
    } else {
        catalog.for_each_in_changeset(id, |r| {
            // A file that could not be read is absent from this snapshot.
            if r.status == FileStatus::Failed {
                return w.push(&removal(&r.path));
            }
            w.push(&record_of(&r, RecordKind::Changed(r.kind)))
        })?;
    }
    w.flush()?;
    Ok(w.segments)
}

/// Write the manifest of a changeset whose content is all stored: the
/// segments first, the header last (the commit point), then mark it complete.
fn write_manifest(
    repo: &Repository,
    catalog: &mut Catalog,
    row: &ChangesetRow,
    opts: &BackupOptions,
) -> Result<(String, &'static str)> {
    let parent = match row.parent {
        Some(p) => Some(catalog.changeset(p)?.with_context(|| format!("changeset {p}, the parent, vanished"))?),
        None => None,
    };
    // A full manifest after a damaged changeset: nothing later may depend
    // on a manifest that cannot be read.
    let full = parent.as_ref().is_none_or(|p| p.status != ChangesetStatus::Complete)
        || row.id % opts.checkpoint_every.max(1) == 0;
    let segments = write_segments(repo, catalog, row.id, full, opts.chunks_per_record)?;
    let (added, modified, metadata, removed, failed, bytes_changed) = catalog.tally(row.id)?;
    let completed_at = now();
    let header = ManifestHeader {
        format: manifest::MANIFEST_FORMAT,
        dataset: catalog.dataset().to_string(),
        seq: row.id as u64,
        changeset: row.uid.clone(),
        parent: parent.map(|p| p.uid),
        kind: if full { ManifestKind::Full } else { ManifestKind::Delta },
        snapshot: SnapshotInfo {
            name: row.snapshot.clone(),
            source: row.source.clone(),
            identity: serde_json::from_str(&row.identity).unwrap_or_default(),
        },
        method: row.method.clone(),
        started_at: row.started_at,
        completed_at,
        counts: Counts { added, modified, metadata, removed, failed },
        bytes_changed,
        bytes_uploaded: catalog.changeset(row.id)?.map_or(0, |c| c.bytes_uploaded),
        segments,
        revision: 0,
    };
    let key = ManifestHeader::object_key(&repo.dataset_id(catalog.dataset()), row.id as u64);
    fault::hit("before-manifest");
    // The header's key is the changeset's number, written put-if-absent:
    // the backend lets exactly one writer own it, whatever the timing.
    match repo.put(&key, &header.seal(&repo.sealer)?)? {
        PutOutcome::Created => {}
        PutOutcome::AlreadyExists => {
            let existing = repo.read_manifest(&key).with_context(|| {
                format!("changeset {} of {} is already in the repository", row.id, catalog.dataset())
            })?;
            // Ours: a run that crashed right after this put stored it.
            if existing.changeset != row.uid {
                bail!(
                    "dataset {} already has a changeset {} in the repository (snapshot {}, written by another agent): \
                     two hosts back up datasets of the same name; give each host its own --dataset name \
                     (this host's snapshot {} is not stored)",
                    catalog.dataset(),
                    row.id,
                    existing.snapshot.name,
                    row.snapshot
                );
            }
        }
    }
    fault::hit("after-manifest");
    let kind = if full { "full" } else { "delta" };
    catalog.set_complete(row.id, kind, &key, completed_at, 0)?;
    Ok((key, kind))
}
