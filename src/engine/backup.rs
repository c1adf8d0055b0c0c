//! The backup flow of one dataset: finish any interrupted changeset, then
//! back up every new snapshot, oldest first. Each changeset goes
//! pending (listing) → uploading (content) → complete (manifest stored).

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::prior::CatalogPrior;
use super::upload::{UploadOptions, upload_changeset};
use crate::catalog::index::ChunkIndex;
use crate::catalog::{Catalog, ChangesetRow, ChangesetStatus, FileRow, FileStatus, NewChangeset};
use crate::core::manifest::{
    self, Counts, ManifestHeader, ManifestKind, Record, RecordKind, SEGMENT_TARGET, SegmentRef, SnapshotInfo,
};
use crate::model::{ChangeKind, FileType, display_path};
use crate::repo::Repository;
use crate::source::{ChangeSource, SnapshotRef};
use crate::state::{DatasetLock, StatePaths};
use crate::util::{fault, now};

#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub upload: UploadOptions,
    /// Every this many changesets, the manifest holds the whole tree.
    pub checkpoint_every: i64,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions { upload: UploadOptions::default(), checkpoint_every: 16 }
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
    pub added: u64,
    pub modified: u64,
    pub metadata: u64,
    pub removed: u64,
    pub failed: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub packs: u64,
    /// Paths that could not be read or listed: reported, never skipped silently.
    pub problems: Vec<String>,
}

pub fn backup_dataset(
    repo: &Arc<Repository>,
    state: &StatePaths,
    dataset: &str,
    source: &mut dyn ChangeSource,
    opts: &BackupOptions,
) -> Result<Vec<ChangesetSummary>> {
    let catalog_path = state.catalog(dataset);
    if !catalog_path.exists() && !repo.list_manifests(Some(&repo.dataset_id(dataset)))?.is_empty() {
        // The state directory was lost but the repository has this dataset's
        // history: continue it rather than start a second, clashing one.
        log::info!("{dataset}: no local catalog but the repository has backups of it; rebuilding the catalog first");
        super::rebuild::rebuild(repo, state, Some(dataset))?;
    }
    let _lock = DatasetLock::acquire(&state.lock(dataset), dataset)?;
    let mut catalog = Catalog::open(&catalog_path, dataset)?;
    let mut done = Vec::new();

    if let Some(open) = catalog.incomplete()? {
        match open.status {
            ChangesetStatus::Uploading => {
                log::info!("{dataset}: resuming interrupted changeset {} (snapshot {})", open.id, open.snapshot);
                let identity: BTreeMap<String, String> = serde_json::from_str(&open.identity).unwrap_or_default();
                let snap = source
                    .find_snapshot(&open.snapshot, &identity)
                    .with_context(|| format!("cannot resume changeset {} of {dataset}", open.id))?;
                // A crash may have stored packs the index never heard of.
                let mut index = ChunkIndex::open(&state.index_db())?;
                let found = repo.sync_index(&mut index)?;
                if found > 0 {
                    log::info!("{dataset}: indexed {found} packs stored before the interruption");
                }
                drop(index);
                let s = finish_changeset(repo, state, &mut catalog, source, &snap, &open, Vec::new(), opts, true)?;
                source.committed(&snap)?;
                done.push(s);
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
        if done.iter().any(|d: &ChangesetSummary| d.snapshot == snap.name) {
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
            if existing.identity == identity {
                continue; // the very same snapshot: done already
            }
            // The name was used again for another snapshot (after a ZFS
            // rollback, say): keep both, under distinct labels.
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
        let prior_at = catalog.latest_complete()?.map(|c| c.id);
        let row = catalog.create_changeset(&NewChangeset {
            snapshot: &label,
            source: source.kind(),
            identity: &identity,
            method: source.kind(),
            started_at: now(),
        })?;
        log::info!("{dataset}: finding changes for snapshot {} (changeset {})", snap.name, row.id);
        let (method, problems) = list_changes(&mut catalog, source, &snap, row.id, prior_at)?;
        catalog.set_listed(row.id, now(), &method)?;
        fault::hit("listed");
        let row = catalog.changeset(row.id)?.context("changeset vanished")?;
        let s = finish_changeset(repo, state, &mut catalog, source, &snap, &row, problems, opts, false)?;
        source.committed(&snap)?;
        done.push(s);
    }
    Ok(done)
}

/// Ask the source for the changes and record them as rows of changeset `cs`.
fn list_changes(
    catalog: &mut Catalog,
    source: &mut dyn ChangeSource,
    snap: &SnapshotRef,
    cs: i64,
    prior_at: Option<i64>,
) -> Result<(String, Vec<String>)> {
    // The source reads the prior tree through a second connection while
    // this one writes the new rows.
    let reader = Catalog::open(&catalog_path_of(catalog)?, catalog.dataset())?;
    let prior = CatalogPrior { catalog: &reader, at: prior_at };
    let mut batch: Vec<FileRow> = Vec::with_capacity(4096);
    let mut emit = |c: crate::model::Change| -> Result<()> {
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
        if row.meta.as_ref().is_some_and(|m| m.ftype == FileType::File) {
            row.status = FileStatus::Pending;
            if row.kind == ChangeKind::Metadata {
                // Same content as before: reuse its chunks, read nothing.
                if let Some(p) = prior_at.map(|n| reader.entry_at(n, &row.path)).transpose()?.flatten()
                    && p.meta.as_ref().is_some_and(|m| m.ftype == FileType::File)
                    && p.file_hash.is_some()
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
    let report = source.changes(&prior, snap, &mut emit)?;
    catalog.insert_files(&batch)?;
    let problems: Vec<String> =
        report.unreadable.iter().map(|u| format!("{}: {}", display_path(&u.path), u.error)).collect();
    for p in &problems {
        log::warn!("{}: {p}", catalog.dataset());
    }
    Ok((report.method, problems))
}

fn catalog_path_of(catalog: &Catalog) -> Result<std::path::PathBuf> {
    catalog.conn().path().map(std::path::PathBuf::from).context("catalog has no file path")
}

#[allow(clippy::too_many_arguments)]
fn finish_changeset(
    repo: &Arc<Repository>,
    state: &StatePaths,
    catalog: &mut Catalog,
    source: &mut dyn ChangeSource,
    snap: &SnapshotRef,
    row: &ChangesetRow,
    mut problems: Vec<String>,
    opts: &BackupOptions,
    resumed: bool,
) -> Result<ChangesetSummary> {
    let dataset = catalog.dataset().to_string();
    let pending = catalog.count_pending(row.id)?;
    let reader = source.reader(snap)?;
    log::info!("{dataset}: {pending} files to read for snapshot {}", snap.name);
    let report = upload_changeset(
        repo,
        &state.index_db(),
        &catalog_path_of(catalog)?,
        &dataset,
        catalog,
        row.id,
        reader,
        &opts.upload,
    )
    .with_context(|| format!("backup of {dataset} snapshot {} stopped; run backup again to resume", snap.name))?;
    if catalog.count_pending(row.id)? > 0 {
        bail!("backup of {dataset} snapshot {} left files unread; run backup again to resume", snap.name);
    }
    for (p, e) in &report.failed {
        problems.push(format!("{}: {e}", display_path(p)));
    }
    let key = write_manifest(repo, catalog, row, opts.checkpoint_every)?;
    log::debug!("{dataset}: manifest {key}");
    let done = catalog.changeset(row.id)?.context("changeset vanished")?;
    Ok(ChangesetSummary {
        dataset,
        snapshot: done.snapshot,
        changeset: done.id,
        method: done.method,
        resumed,
        added: done.n_added,
        modified: done.n_modified,
        metadata: done.n_metadata,
        removed: done.n_removed,
        failed: done.n_failed,
        bytes_read: report.bytes_read,
        bytes_uploaded: report.bytes_uploaded,
        packs: report.packs,
        problems,
    })
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
}

impl SegmentWriter<'_> {
    fn push(&mut self, r: &Record) -> Result<()> {
        manifest::encode_record(r, &mut self.buf);
        self.records += 1;
        if self.buf.len() >= SEGMENT_TARGET {
            self.flush()?;
        }
        Ok(())
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

/// Write the manifest of a changeset whose content is all stored: the
/// segments first, the header last (the commit point), then mark it complete.
fn write_manifest(
    repo: &Repository,
    catalog: &mut Catalog,
    row: &ChangesetRow,
    checkpoint_every: i64,
) -> Result<String> {
    let full = row.parent.is_none() || row.id % checkpoint_every.max(1) == 0;
    let mut w = SegmentWriter { repo, buf: Vec::new(), records: 0, segments: Vec::new() };
    if full {
        catalog.for_each_in_tree(row.id, None, |r| {
            let kind = if r.changeset == row.id { RecordKind::Changed(r.kind) } else { RecordKind::Present };
            w.push(&record_of(&r, kind))
        })?;
        catalog.for_each_in_changeset(row.id, |r| {
            if r.kind == ChangeKind::Removed || r.status == FileStatus::Failed {
                w.push(&removal(&r.path))?;
            }
            Ok(())
        })?;
    } else {
        catalog.for_each_in_changeset(row.id, |r| {
            // A file that could not be read is absent from this snapshot.
            if r.status == FileStatus::Failed {
                return w.push(&removal(&r.path));
            }
            w.push(&record_of(&r, RecordKind::Changed(r.kind)))
        })?;
    }
    w.flush()?;
    let (added, modified, metadata, removed, failed, bytes_changed) = catalog.tally(row.id)?;
    let parent_uid = match row.parent {
        Some(p) => catalog.changeset(p)?.map(|c| c.uid),
        None => None,
    };
    let completed_at = now();
    let header = ManifestHeader {
        format: manifest::MANIFEST_FORMAT,
        dataset: catalog.dataset().to_string(),
        seq: row.id as u64,
        changeset: row.uid.clone(),
        parent: parent_uid,
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
        segments: w.segments,
    };
    let dataset_id = repo.dataset_id(catalog.dataset());
    let key = ManifestHeader::object_key(&dataset_id, row.id as u64, &row.uid);
    // Another agent with its own state may have written this dataset's
    // changeset of the same number: two histories must never interleave.
    let same_seq = format!("manifests/{dataset_id}/{:010}-", row.id);
    if let Some(other) =
        repo.list_manifests(Some(&dataset_id))?.into_iter().find(|k| k.starts_with(&same_seq) && *k != key)
    {
        bail!(
            "dataset {} already has a changeset {} in the repository ({other}) that this host did not write: \
             two agents back up datasets of the same name; give each a distinct --dataset name, or run `catalog rebuild` here",
            catalog.dataset(),
            row.id
        );
    }
    fault::hit("before-manifest");
    // AlreadyExists means a run that crashed right after this put stored it.
    repo.put(&key, &header.seal(&repo.sealer)?)?;
    fault::hit("after-manifest");
    catalog.set_complete(row.id, if full { "full" } else { "delta" }, &key, completed_at, 0)?;
    Ok(key)
}
