//! Check the repository.
//!
//! - quick: every pack the index knows is on the backend with its size;
//!   every manifest opens and its segments exist; every chunk the local
//!   catalogs reference is indexed in a pack that exists; every pack
//!   summary opens, gives the right size of each pack it names, and none
//!   this index knew is gone.
//! - standard: also download every pack, check its name is the BLAKE3 of
//!   its bytes, and open its index, which must say what every summary that
//!   names the pack says (the pack wins); open every manifest segment.
//! - full: also open, decompress and re-hash every chunk.
//!
//! Every level also checks each dataset's chain of manifests (no gap, each
//! parent the previous changeset) and every local catalog (SQLite's own
//! check and each row's checksum). A pack found missing or corrupt is
//! marked lost in the index, so the next backup stores its chunks again.

use anyhow::Result;
use std::collections::{HashMap, HashSet};

use crate::catalog::Catalog;
use crate::catalog::index::ChunkIndex;
use crate::core::pack::{self, PackId};
use crate::core::packsummary;
use crate::engine::chain;
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
    /// Bytes of all packs on the backend: the repository's size, near enough.
    pub pack_bytes: u64,
    pub packs_read: u64,
    pub chunks_checked: u64,
    pub manifests: u64,
    pub segments: u64,
    pub referenced_chunks: u64,
    /// Pack summaries on the backend (FORMAT §6.4).
    pub summaries: u64,
    /// Packs that no readable summary names: a rebuild reads their own
    /// indexes one by one (the next backup summarizes them).
    pub packs_in_no_summary: u64,
    /// Packs that summaries name but the repository does not hold (deleted
    /// or lost since): readers skip them.
    pub summary_packs_absent: u64,
    /// Packs marked lost and still missing from the repository.
    pub lost_packs: Vec<String>,
    /// Packs a prune deleted that the local index still had: forgotten.
    pub pruned_packs_forgotten: u64,
    pub problems: Vec<String>,
}

pub fn verify(repo: &Repository, state: &StatePaths, level: Level) -> Result<VerifyReport> {
    let mut r = VerifyReport { level: Some(level), ..Default::default() };
    let mut index = ChunkIndex::open(&state.index_db())?;
    repo.sync_index(&mut index)?;
    // A pack a prune plan named may be gone by now, as it should be.
    super::prune::learn_plans(repo, &mut index)?;
    r.problems.extend(index.check()?);
    let on_backend: HashMap<PackId, u64> = repo.list_packs()?.into_iter().collect();
    r.packs = on_backend.len() as u64;
    r.pack_bytes = on_backend.values().sum();
    let mut lost_now = 0u64;
    for (id, size) in index.packs()? {
        let why = match on_backend.get(&id) {
            None if index.is_doomed(&id)? => {
                index.forget_pack(&id)?;
                r.pruned_packs_forgotten += 1;
                continue;
            }
            None => "is indexed but missing from the repository".to_string(),
            Some(s) if *s != size => format!("has {s} bytes, {size} expected"),
            _ => continue,
        };
        r.problems.push(format!("pack {} {why}", id.object_key()));
        if index.mark_lost(&id, crate::util::now())? {
            lost_now += 1;
        }
    }
    // Pack summaries (FORMAT §6.4): each must open, and give the size of
    // each pack it names that exists; the standard level also compares
    // what they say of each pack with the pack's own index. They are only
    // a cache: one that fails is forgotten locally, so that the next
    // backup summarizes its packs again, and readers fall back to the packs.
    let summary_keys = repo.list_summaries()?;
    r.summaries = summary_keys.len() as u64;
    // For each pack, the summaries that name it and a digest of what they say.
    let mut summarized: HashMap<PackId, Vec<(usize, [u8; 32])>> = HashMap::new();
    for (i, key) in summary_keys.iter().enumerate() {
        match repo.read_summary(key) {
            Err(e) => {
                r.problems.push(format!(
                    "pack summary {key} cannot be used ({e:#}): readers use the packs' own indexes instead; delete it (it holds nothing the packs do not), and the next backup summarizes its packs again"
                ));
                index.forget_summary(key)?;
            }
            Ok(packs) => {
                for p in packs {
                    match on_backend.get(&p.id) {
                        // Deleted or lost since: readers skip it, and a pack
                        // that is missing is a problem of its own (above),
                        // not of the summary.
                        None => r.summary_packs_absent += 1,
                        // A pack's id is the hash of its bytes, so its size
                        // is fixed: this summary is wrong.
                        Some(&s) if s != p.size => r.problems.push(format!(
                            "pack summary {key} says pack {} has {} bytes, it has {s}",
                            p.id.object_key(),
                            p.size
                        )),
                        Some(_) => {}
                    }
                    summarized.entry(p.id).or_default().push((i, packsummary::entries_digest(&p.entries)));
                }
            }
        }
    }
    let listed: HashSet<&String> = summary_keys.iter().collect();
    for key in index.summary_keys()? {
        if !listed.contains(&key) {
            r.problems.push(format!(
                "pack summary {key} is missing from the repository: a rebuild reads the packs it covered one by one; the next backup summarizes them again"
            ));
            index.forget_summary(&key)?;
        }
    }
    r.packs_in_no_summary = on_backend.keys().filter(|id| !summarized.contains_key(id)).count() as u64;

    let lost: HashSet<PackId> = index.lost_packs()?.into_iter().map(|(id, _)| id).collect();
    for id in &lost {
        if !on_backend.contains_key(id) {
            r.lost_packs.push(id.object_key());
        } else if level == Level::Quick {
            r.problems.push(format!(
                "pack {} was marked lost but is in the repository: `verify --level standard` checks it and uses it again",
                id.object_key()
            ));
        }
    }

    // Each dataset's history: numbers 1..N, each naming the one before.
    let segments: HashSet<String> =
        repo.backend.list("segments/").map_err(|e| anyhow::anyhow!("{e}"))?.into_iter().map(|o| o.key).collect();
    for (ds, keys) in chain::header_keys(repo, None)? {
        let chain = chain::analyze(repo, &ds, &keys);
        r.manifests += keys.len() as u64;
        r.problems.extend(chain.problems());
        for link in &chain.links {
            let Some(h) = &link.header else { continue };
            for seg in &h.segments {
                r.segments += 1;
                if !segments.contains(&seg.key) {
                    r.problems.push(format!("manifest {}: segment {} is missing", link.key, seg.key));
                } else if level >= Level::Standard {
                    match repo.read_segment(&seg.key) {
                        Err(e) => r.problems.push(format!("manifest {}: {e:#}", link.key)),
                        Ok(recs) if recs.len() as u64 != seg.records => r.problems.push(format!(
                            "manifest {}: segment {} holds {} records, the header says {}",
                            link.key,
                            seg.key,
                            recs.len(),
                            seg.records
                        )),
                        Ok(_) => {}
                    }
                }
            }
        }
    }

    if level >= Level::Standard {
        let mut ids: Vec<(&PackId, &u64)> = on_backend.iter().collect();
        ids.sort();
        let progress = crate::progress::progress();
        progress.begin(format!("verify ({level:?}): reading packs"), ids.len() as u64, r.pack_bytes);
        for (id, size) in ids {
            let key = id.object_key();
            progress.set_current(key.as_bytes());
            progress.add_files(1);
            progress.add_bytes(*size);
            let bytes = match repo.backend.get(&key, None) {
                Ok(b) => b,
                Err(e) => {
                    r.problems.push(format!("pack {key}: {e}"));
                    continue;
                }
            };
            r.packs_read += 1;
            let mut bad = false;
            if PackId::of(&bytes) != *id {
                r.problems.push(format!("pack {key} is corrupt: its content does not hash to its name"));
                bad = true;
            }
            match pack::parse_pack(&repo.sealer, &bytes) {
                Err(e) => {
                    r.problems.push(format!("pack {key}: {e:#}"));
                    bad = true;
                }
                Ok(entries) => {
                    // The pack's own index wins over any summary that
                    // says otherwise: the local index takes the pack's.
                    let own = packsummary::entries_digest(&entries);
                    let mut disagrees = false;
                    for (i, digest) in summarized.get(id).into_iter().flatten() {
                        if *digest != own && !bad {
                            let skey = &summary_keys[*i];
                            r.problems.push(format!(
                                "pack summary {skey} disagrees with the own index of pack {key}: the pack's index is used; delete the summary, and the next backup summarizes its packs again"
                            ));
                            index.forget_summary(skey)?;
                            disagrees = true;
                        }
                    }
                    if disagrees {
                        index.forget_pack(id)?;
                        index.add_pack(id, bytes.len() as u64, &entries, crate::util::now())?;
                    }
                    if level == Level::Full {
                        for e in entries {
                            r.chunks_checked += 1;
                            let blob = &bytes[e.offset as usize..(e.offset + e.sealed_len as u64) as usize];
                            match pack::open_chunk(&repo.sealer, &e.id, blob, e.raw_len) {
                                Ok(plain) if repo.keys.chunk_id(&plain) == e.id => {}
                                Ok(_) => {
                                    bad = true;
                                    r.problems.push(format!(
                                        "pack {key}: chunk {} does not hash to its id",
                                        &e.id.to_hex()[..16]
                                    ))
                                }
                                Err(err) => {
                                    bad = true;
                                    r.problems.push(format!("pack {key}: chunk {}: {err:#}", &e.id.to_hex()[..16]))
                                }
                            }
                        }
                    }
                }
            }
            // A corrupt pack is as good as lost: its chunks are uploaded
            // again by the next backup instead of being referenced. One
            // that was lost and now checks out whole is used again.
            if bad && index.mark_lost(id, crate::util::now())? {
                lost_now += 1;
            } else if !bad && lost.contains(id) && index.mark_found(id)? {
                log::info!("pack {key} was marked lost, and is whole again: it is used again");
            }
        }
    }
    // Every local catalog must open, check out, and reference only chunks
    // that live in a pack that exists.
    for path in state.catalog_files()? {
        let cat = match Catalog::dataset_name_of(&path).and_then(|name| Catalog::open(&path, &name)) {
            Ok(c) => c,
            Err(e) => {
                r.problems.push(format!(
                    "local catalog {} cannot be read ({e:#}): move it aside and run `n2s-agent catalog rebuild`",
                    path.display()
                ));
                continue;
            }
        };
        let name = cat.dataset().to_string();
        let damaged = cat.check()?;
        if !damaged.is_empty() {
            r.problems.extend(damaged.into_iter().map(|p| format!("dataset {name}: {p}")));
            r.problems.push(format!(
                "dataset {name}: its local catalog {} is damaged: move it aside and run `n2s-agent catalog rebuild --dataset {name}`",
                path.display()
            ));
            continue;
        }
        let mut seen = HashSet::new();
        cat.for_each_referenced_chunk(|c| {
            if seen.insert(c) {
                match index.lookup(&c)? {
                    None => r.problems.push(format!(
                        "dataset {name}: chunk {} is in no pack that exists (it was in a lost pack: the next backup reads its files again if they are unchanged)",
                        &c.to_hex()[..16]
                    )),
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
    if lost_now > 0 {
        r.problems.push(format!(
            "{lost_now} packs are now marked lost: the next backup uploads again whatever unchanged file had content only in them"
        ));
    }
    r.ok = r.problems.is_empty();
    Ok(r)
}
