//! Check the repository.
//!
//! - quick: every pack the index knows is on the backend with its size;
//!   every manifest opens and its segments exist; every chunk the local
//!   catalogs reference is indexed in a pack that exists.
//! - standard: also download every pack, check its name is the BLAKE3 of
//!   its bytes, and open its index; open every manifest segment.
//! - full: also open, decompress and re-hash every chunk.

use anyhow::Result;
use std::collections::{HashMap, HashSet};

use crate::catalog::Catalog;
use crate::catalog::index::ChunkIndex;
use crate::core::pack::{self, PackId};
use crate::repo::Repository;
use crate::state::StatePaths;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Quick,
    Standard,
    Full,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub level: Option<Level>,
    pub ok: bool,
    pub packs: u64,
    pub packs_read: u64,
    pub chunks_checked: u64,
    pub manifests: u64,
    pub segments: u64,
    pub referenced_chunks: u64,
    pub problems: Vec<String>,
}

pub fn verify(repo: &Repository, state: &StatePaths, level: Level) -> Result<VerifyReport> {
    let mut r = VerifyReport { level: Some(level), ..Default::default() };
    let mut index = ChunkIndex::open(&state.index_db())?;
    repo.sync_index(&mut index)?;
    let on_backend: HashMap<PackId, u64> = repo.list_packs()?.into_iter().collect();
    r.packs = on_backend.len() as u64;
    for (id, size) in index.packs()? {
        match on_backend.get(&id) {
            None => r.problems.push(format!("pack {} is indexed but missing from the repository", id.object_key())),
            Some(s) if *s != size => {
                r.problems.push(format!("pack {} has {s} bytes, {size} expected", id.object_key()))
            }
            _ => {}
        }
    }
    let segments: HashSet<String> =
        repo.backend.list("segments/").map_err(|e| anyhow::anyhow!("{e}"))?.into_iter().map(|o| o.key).collect();
    for key in repo.list_manifests(None)? {
        r.manifests += 1;
        match repo.read_manifest(&key) {
            Err(e) => r.problems.push(format!("{e:#}")),
            Ok(h) => {
                for seg in &h.segments {
                    r.segments += 1;
                    if !segments.contains(&seg.key) {
                        r.problems.push(format!("manifest {key}: segment {} is missing", seg.key));
                    } else if level >= Level::Standard
                        && let Err(e) = repo.read_segment(&seg.key)
                    {
                        r.problems.push(format!("{e:#}"));
                    }
                }
            }
        }
    }
    // Every chunk the catalogs reference must be findable.
    for path in state.catalog_files()? {
        let Ok(name) = Catalog::dataset_name_of(&path) else { continue };
        let cat = Catalog::open(&path, &name)?;
        let mut seen = HashSet::new();
        cat.for_each_referenced_chunk(|c| {
            if seen.insert(c) {
                match index.lookup(&c)? {
                    None => r.problems.push(format!("dataset {name}: chunk {} is in no pack", &c.to_hex()[..16])),
                    Some(loc) if !on_backend.contains_key(&loc.pack) => r.problems.push(format!(
                        "dataset {name}: chunk {} lives in missing pack {}",
                        &c.to_hex()[..16],
                        loc.pack.object_key()
                    )),
                    Some(_) => {}
                }
            }
            Ok(())
        })?;
        r.referenced_chunks += seen.len() as u64;
    }
    if level >= Level::Standard {
        let mut ids: Vec<(&PackId, &u64)> = on_backend.iter().collect();
        ids.sort();
        for (id, _) in ids {
            let key = id.object_key();
            let bytes = match repo.backend.get(&key, None) {
                Ok(b) => b,
                Err(e) => {
                    r.problems.push(format!("pack {key}: {e}"));
                    continue;
                }
            };
            r.packs_read += 1;
            if PackId::of(&bytes) != *id {
                r.problems.push(format!("pack {key} is corrupt: its content does not hash to its name"));
            }
            let entries = match pack::parse_pack(&repo.sealer, &bytes) {
                Ok(e) => e,
                Err(e) => {
                    r.problems.push(format!("pack {key}: {e:#}"));
                    continue;
                }
            };
            if level == Level::Full {
                for e in entries {
                    r.chunks_checked += 1;
                    let blob = &bytes[e.offset as usize..(e.offset + e.sealed_len as u64) as usize];
                    match pack::open_chunk(&repo.sealer, &e.id, blob, e.raw_len) {
                        Ok(plain) if repo.keys.chunk_id(&plain) == e.id => {}
                        Ok(_) => r
                            .problems
                            .push(format!("pack {key}: chunk {} does not hash to its id", &e.id.to_hex()[..16])),
                        Err(err) => r.problems.push(format!("pack {key}: chunk {}: {err:#}", &e.id.to_hex()[..16])),
                    }
                }
            }
        }
    }
    r.ok = r.problems.is_empty();
    Ok(r)
}
