//! Rebuild local state from the repository and the key alone: the chunk
//! index from the packs' own indexes, each dataset's catalog from its
//! manifests. The new catalog is built beside the old one and renamed over
//! it only when complete, so a failed rebuild loses nothing.

use anyhow::{Context, Result};
use std::collections::BTreeMap;

use crate::catalog::index::ChunkIndex;
use crate::catalog::{Catalog, ChangesetRow, ChangesetStatus, FileRow, FileStatus};
use crate::core::manifest::{ManifestHeader, ManifestKind, RecordKind};
use crate::model::ChangeKind;
use crate::repo::Repository;
use crate::state::{DatasetLock, StatePaths};

#[derive(Debug, serde::Serialize)]
pub struct RebuiltDataset {
    pub dataset: String,
    pub changesets: u64,
    pub entries: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct RebuildReport {
    pub packs_indexed: usize,
    pub datasets: Vec<RebuiltDataset>,
}

pub fn rebuild(repo: &Repository, state: &StatePaths, only: Option<&str>) -> Result<RebuildReport> {
    let mut index = ChunkIndex::open(&state.index_db())?;
    let packs_indexed = repo.sync_index(&mut index)?;

    // Manifest headers grouped by dataset id, in seq order (keys sort by seq).
    let mut by_dataset: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let dataset_filter = only.map(|d| repo.dataset_id(d));
    for key in repo.list_manifests(dataset_filter.as_deref())? {
        if let Some(rest) = key.strip_prefix("manifests/")
            && let Some((ds, _)) = rest.split_once('/')
        {
            by_dataset.entry(ds.to_string()).or_default().push(key.clone());
        }
    }
    if let Some(d) = only
        && by_dataset.is_empty()
    {
        anyhow::bail!("the repository holds no backup of dataset {d:?}: check the name with `n2s-agent list`");
    }
    let mut datasets = Vec::new();
    for keys in by_dataset.values() {
        let headers: Vec<(String, ManifestHeader)> =
            keys.iter().map(|k| Ok((k.clone(), repo.read_manifest(k)?))).collect::<Result<_>>()?;
        let Some((_, first)) = headers.first() else { continue };
        // One linear history: numbers 1, 2, 3... with no repeats. Two agents
        // writing one dataset name from separate state would break this.
        for (i, (key, h)) in headers.iter().enumerate() {
            if let Some((prev_key, prev)) = i.checked_sub(1).map(|j| &headers[j])
                && h.seq == prev.seq
            {
                {
                    anyhow::bail!(
                        "dataset {}: changesets {prev_key} and {key} share number {}: two agents wrote this dataset name; restore each with its own catalog, or remove one history",
                        h.dataset,
                        h.seq
                    );
                }
            }
            if h.dataset != first.dataset {
                anyhow::bail!("manifest {key} names dataset {:?} inside the history of {:?}", h.dataset, first.dataset);
            }
        }
        let name = first.dataset.clone();
        let _lock = DatasetLock::acquire(&state.lock(&name), &name)?;
        let final_path = state.catalog(&name);
        let tmp_path = final_path.with_extension("rebuild");
        for ext in ["rebuild", "rebuild-wal", "rebuild-shm"] {
            let _ = std::fs::remove_file(final_path.with_extension(ext));
        }
        let mut entries = 0u64;
        {
            let mut cat = Catalog::open(&tmp_path, &name)?;
            let mut prev: Option<i64> = None;
            for (key, h) in &headers {
                let id = h.seq as i64;
                cat.insert_rebuilt_changeset(&ChangesetRow {
                    id,
                    uid: h.changeset.clone(),
                    parent: prev,
                    snapshot: h.snapshot.name.clone(),
                    source: h.snapshot.source.clone(),
                    identity: serde_json::to_string(&h.snapshot.identity)?,
                    method: h.method.clone(),
                    kind: Some(match h.kind {
                        ManifestKind::Full => "full".into(),
                        ManifestKind::Delta => "delta".into(),
                    }),
                    status: ChangesetStatus::Complete,
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
                    manifest_key: Some(key.clone()),
                })?;
                for seg in &h.segments {
                    let records = repo.read_segment(&seg.key)?;
                    let mut rows = Vec::with_capacity(records.len());
                    for r in records {
                        let kind = match r.kind {
                            RecordKind::Changed(k) => k,
                            // Unchanged entries are already rows of older
                            // changesets, unless the chain starts here.
                            RecordKind::Present if prev.is_some() => continue,
                            RecordKind::Present => ChangeKind::Added,
                        };
                        rows.push(FileRow {
                            changeset: id,
                            path: r.path,
                            kind,
                            status: FileStatus::Stored,
                            meta: r.meta,
                            chunks: r.chunks,
                            file_hash: r.file_hash,
                            error: None,
                            uploaded_at: Some(h.completed_at),
                            confirmed_at: Some(h.completed_at),
                        });
                    }
                    entries += rows.len() as u64;
                    cat.insert_files(&rows)?;
                }
                prev = Some(id);
            }
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
        datasets.push(RebuiltDataset { dataset: name, changesets: headers.len() as u64, entries });
    }
    Ok(RebuildReport { packs_indexed, datasets })
}
