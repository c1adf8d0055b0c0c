//! `repair`: put the repository and the local state back in working order
//! after damage, and say plainly what could not be saved.
//!
//! - the `config` object (or its sealed copy) is written again when one of
//!   them is lost or damaged;
//! - the chunk index learns every pack on the backend and marks lost every
//!   pack it knows that is gone, so no backup references them again (the
//!   next backup reads again the unchanged files whose content was there);
//! - each local catalog is checked, and rebuilt from the repository
//!   (salvaging around damaged manifests) when it is missing or damaged;
//! - every stored file version whose content has no live pack left is
//!   named: those versions cannot be restored until a backup stores the
//!   same content again.

use anyhow::Result;
use std::collections::HashSet;

use super::rebuild::{RebuildMode, rebuild_ids};
use crate::catalog::Catalog;
use crate::catalog::index::ChunkIndex;
use crate::core::pack::PackId;
use crate::model::display_path;
use crate::repo::Repository;
use crate::state::StatePaths;
use crate::util::{BoundedList, now};

#[derive(Debug, Default, serde::Serialize)]
pub struct RepairReport {
    pub config_rewritten: Option<String>,
    pub packs_indexed: usize,
    pub packs_marked_lost: u64,
    pub catalogs_rebuilt: Vec<String>,
    pub damaged_changesets: Vec<String>,
    /// "dataset: path (changeset N)" of file versions that cannot be restored.
    pub unrestorable: BoundedList,
}

pub fn repair(repo: &Repository, state: &StatePaths) -> Result<RepairReport> {
    let mut r = RepairReport::default();
    if let Some(problem) = &repo.config_problem {
        repo.restore_config_object()?;
        r.config_rewritten = Some(problem.clone());
    }
    let mut index = ChunkIndex::open(&state.index_db())?;
    r.packs_indexed = repo.sync_index(&mut index)?;
    let on_backend: HashSet<PackId> = repo.list_packs()?.into_iter().map(|(id, _)| id).collect();
    for (id, _) in index.packs()? {
        if !on_backend.contains(&id) && index.mark_lost(&id, now())? {
            r.packs_marked_lost += 1;
        }
    }

    // Catalogs that are missing or damaged are made again from the repository.
    let mut rebuild: Vec<String> = Vec::new();
    let mut local = HashSet::new();
    for path in state.catalog_files()? {
        let ok = Catalog::dataset_name_of(&path)
            .and_then(|name| Catalog::open(&path, &name).map(|c| (name, c)))
            .and_then(|(name, c)| Ok((name, c.check()?)));
        match ok {
            Ok((name, problems)) if problems.is_empty() => {
                local.insert(repo.dataset_id(&name));
            }
            Ok((name, _)) => {
                log::warn!("the local catalog of {name} is damaged: rebuilding it from the repository");
                rebuild.push(repo.dataset_id(&name));
            }
            Err(e) => {
                log::warn!("local catalog {} cannot be read ({e:#}): moving it aside", path.display());
                let aside = path.with_extension(format!("damaged-{}", now()));
                std::fs::rename(&path, &aside)?;
            }
        }
    }
    for id in super::chain::header_keys(repo, None)?.into_keys() {
        if !local.contains(&id) && !rebuild.contains(&id) {
            rebuild.push(id);
        }
    }
    if !rebuild.is_empty() {
        let rep = rebuild_ids(repo, state, &rebuild, RebuildMode::Salvage)?;
        for d in rep.datasets {
            r.damaged_changesets.extend(d.damaged.iter().map(|x| format!("{}: {x}", d.dataset)));
            r.catalogs_rebuilt.push(d.dataset);
        }
    }

    // What no live pack holds any more.
    let mut orphans = HashSet::new();
    index.for_each_orphaned_chunk(|c| {
        orphans.insert(c);
        Ok(())
    })?;
    for path in state.catalog_files()? {
        let name = Catalog::dataset_name_of(&path)?;
        let cat = Catalog::open(&path, &name)?;
        cat.for_each_stored_row(|row| {
            if row.chunks.iter().any(|c| orphans.contains(c) || index.lookup(c).ok().flatten().is_none()) {
                r.unrestorable.push(format!("{name}: {} (changeset {})", display_path(&row.path), row.changeset));
            }
            Ok(())
        })?;
    }
    Ok(r)
}
