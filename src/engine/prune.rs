//! `prune`: give back the space that no kept changeset uses, safely while
//! other agents keep backing up into the repository, with no lock.
//!
//! Two phases, in different runs (docs/FORMAT.md §9):
//! - **mark**: what no live manifest references (packs, segments, header
//!   revisions a newer one supersedes) goes into a sealed plan,
//!   `prune/plan-…`. Nothing is deleted. Every agent learns the plans
//!   before it dedups and again right before it commits a changeset, and
//!   stores again whatever it was about to reference in a marked pack.
//! - **sweep**: a later run takes each plan older than the grace period,
//!   renames it `prune/swept-…` (written first), computes the references
//!   afresh, deletes what is still unreferenced, and keeps what a new
//!   manifest references again.
//!
//! Prune reads manifests and the local index only (pack summaries keep the
//! index current); it never downloads a pack.

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashSet};

use super::chain;
use crate::backend::{BackendError, RequestCounts};
use crate::catalog::index::ChunkIndex;
use crate::core::manifest::ManifestKind;
use crate::core::pack::{self, PackBuilder, PackId};
use crate::core::pruneplan::{self, PLAN_PREFIX, PlanState, PrunePlan};
use crate::model::ChunkId;
use crate::repo::Repository;
use crate::state::StatePaths;
use crate::util::now;

/// A host that has not learned the plans for this long may have missed
/// swept records that are gone by now: it checks its index against the
/// packs on the backend instead (one LIST of `data/`).
const RECONCILE_AFTER: i64 = 20 * 86_400;
/// Swept records are kept this long, so that every agent learns them.
const KEEP_SWEPT: i64 = 30 * 86_400;

#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub dry_run: bool,
    /// Seconds a plan waits before its sweep; also the least age of a pack
    /// before it is marked (a backup still uploading has unreferenced packs).
    pub grace: i64,
    /// Percent of the staying packs' bytes that may stay unused; beyond it,
    /// the most unused packs are repacked.
    pub max_unused_pct: u64,
    /// Bytes of needed chunks a run may copy into new packs.
    pub max_repack: u64,
    /// Target size of the packs a repack writes.
    pub pack_target: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { dry_run: false, grace: 3600, max_unused_pct: 10, max_repack: u64::MAX, pack_target: 16 << 20 }
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Objects {
    pub packs: u64,
    pub segments: u64,
    pub revisions: u64,
    pub bytes: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    /// Manifests read for the references, and the chunks they reference.
    pub live_changesets: u64,
    pub referenced_chunks: u64,
    /// Plans older than the grace period that this run swept.
    pub plans_swept: u64,
    /// Deleted by the sweep (freed space).
    pub deleted: Objects,
    /// Marked by an earlier run but referenced again: kept.
    pub kept_again: Objects,
    /// Marked by this run, deleted by a later one.
    pub marked: Objects,
    /// Plans still within their grace period.
    pub plans_waiting: u64,
    /// Packs partly used: their unused bytes stay until a repack.
    pub partly_used_packs: u64,
    pub partly_unused_bytes: u64,
    /// Of those, the packs to repack to bring what nothing needs within
    /// --max-unused of the repository (a dry run: would repack).
    pub worth_repacking: u64,
    /// Packs whose needed chunks this run copied into new packs (they are
    /// marked, and go with this run's plan), and the bytes copied.
    pub repacked_packs: u64,
    pub repacked_bytes: u64,
    pub new_packs: u64,
    /// Leftovers of interrupted uploads removed (local tmp/, S3 multipart).
    pub interrupted_uploads_removed: u64,
    pub requests: Option<RequestCounts>,
}

/// What the live manifests reference right now.
struct References {
    chunks: Vec<[u8; 32]>,
    segments: HashSet<String>,
    /// Header keys that a newer revision of the same number supersedes.
    superseded: HashSet<String>,
    live_changesets: u64,
}

impl References {
    fn has_chunk(&self, c: &ChunkId) -> bool {
        self.chunks.binary_search(&c.0).is_ok()
    }
}

/// Read every live header and its segments. Anything that cannot be read
/// stops the prune: with references unknown, nothing may go.
fn references(repo: &Repository, cache: &SegmentCache) -> Result<References> {
    let mut refs =
        References { chunks: Vec::new(), segments: HashSet::new(), superseded: HashSet::new(), live_changesets: 0 };
    let all = chain::header_revisions(repo, None)?;
    let progress = crate::progress::progress();
    progress.begin("prune: reading manifests", all.values().map(|s| s.len() as u64).sum(), 0);
    for (_ds, seqs) in all {
        for (_seq, mut revs) in seqs {
            progress.add_files(1);
            let Some((_, newest)) = revs.pop() else { continue };
            refs.superseded.extend(revs.into_iter().map(|(_, k)| k));
            let h = repo
                .read_manifest(&newest)
                .with_context(|| format!("prune stopped: manifest {newest} cannot be read; run `n2s-agent verify`"))?;
            if h.kind == ManifestKind::Forgotten {
                continue;
            }
            refs.live_changesets += 1;
            for seg in &h.segments {
                refs.segments.insert(seg.key.clone());
                let records = cache.read(repo, &seg.key).with_context(|| {
                    format!("prune stopped: manifest {newest} names segment {} that cannot be read", seg.key)
                })?;
                // Continuation records carry chunk ids too.
                for r in records {
                    refs.chunks.extend(r.chunks.iter().map(|c| c.0));
                }
            }
        }
    }
    refs.chunks.sort_unstable();
    refs.chunks.dedup();
    cache.keep_only(&refs.segments);
    Ok(refs)
}

/// Live manifest segments kept in the state directory, as sealed as on
/// the backend: every prune needs every live segment, and they never
/// change (named by their hash), so each is downloaded once. A rebuildable
/// cache: what it holds is checked against its name on every read, a bad
/// file is fetched again, and segments no live header names are dropped.
pub struct SegmentCache {
    dir: std::path::PathBuf,
}

impl SegmentCache {
    pub fn new(state: &StatePaths) -> SegmentCache {
        SegmentCache { dir: state.root().join("cache").join("segments") }
    }

    fn path(&self, key: &str) -> std::path::PathBuf {
        // Keys are `segments/<hex>`: the hex alone names the file.
        self.dir.join(key.rsplit('/').next().unwrap_or(key))
    }

    fn read(&self, repo: &Repository, key: &str) -> Result<Vec<crate::core::manifest::Record>> {
        let p = self.path(key);
        if let Ok(sealed) = std::fs::read(&p) {
            match repo.open_segment(key, &sealed) {
                Ok(r) => return Ok(r),
                Err(e) => log::warn!("cached segment {} is bad ({e:#}): fetching it again", p.display()),
            }
        }
        let sealed = repo.backend.get(key, None).map_err(backend_err)?;
        let records = repo.open_segment(key, &sealed)?;
        self.store(&p, &sealed);
        Ok(records)
    }

    /// Best effort: a cache that cannot be written costs a download later.
    fn store(&self, p: &std::path::Path, sealed: &[u8]) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = p.with_extension("tmp");
        use std::os::unix::fs::DirBuilderExt;
        // 0700, as every directory of the state (what is in it is sealed).
        let made = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).is_ok();
        let ok = made
            && std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(sealed))
                .is_ok()
            && std::fs::rename(&tmp, p).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
            log::debug!("cannot cache segment {}", p.display());
        }
    }

    fn keep_only(&self, live: &HashSet<String>) {
        let names: HashSet<&str> = live.iter().filter_map(|k| k.rsplit('/').next()).collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            if !names.contains(name.to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Learn every prune plan this index has not seen (1 LIST, a GET per new
/// plan); their packs are never used for dedup again. Returns how many
/// plans were new.
pub fn learn_plans(repo: &Repository, index: &mut ChunkIndex) -> Result<u64> {
    learn_listed_plans(repo, index, &list_plans(repo)?)
}

fn list_plans(repo: &Repository) -> Result<Vec<crate::backend::ObjectInfo>> {
    repo.backend.list(PLAN_PREFIX).map_err(backend_err).context("cannot list prune plans")
}

/// `learn_plans` over a listing the caller already made.
fn learn_listed_plans(repo: &Repository, index: &mut ChunkIndex, listed: &[crate::backend::ObjectInfo]) -> Result<u64> {
    let t = now();
    let stale = index.plans_learned_at()?.is_some_and(|at| t - at > RECONCILE_AFTER);
    let mut new = 0;
    for o in listed {
        let Some((_, name, _)) = pruneplan::parse_key(&o.key) else { continue };
        if index.knows_plan(name)? {
            continue;
        }
        let plan = read_plan(repo, name)?;
        index.learn_plan(name, &plan.pack_ids()?, t)?;
        new += 1;
    }
    if stale {
        // Swept records older than KEEP_SWEPT are gone: any pack this
        // index still has that the backend has not is lost to it.
        let on_backend: HashSet<PackId> = repo.list_packs()?.into_iter().map(|(id, _)| id).collect();
        for (id, _) in index.packs()? {
            if !on_backend.contains(&id) {
                index.mark_lost(&id, t)?;
            }
        }
    }
    index.set_plans_learned_at(t)?;
    Ok(new)
}

/// A plan by name, marked or already swept (a sweep renames it).
fn read_plan(repo: &Repository, name: &str) -> Result<PrunePlan> {
    for state in [PlanState::Marked, PlanState::Swept] {
        let key = pruneplan::plan_key(state, name);
        match repo.backend.get(&key, None) {
            Ok(b) => {
                return PrunePlan::open(&repo.sealer, &b).with_context(|| format!("prune plan {key} cannot be opened"));
            }
            Err(BackendError::NotFound(_)) => continue,
            Err(e) => return Err(backend_err(e)).with_context(|| format!("cannot read prune plan {key}")),
        }
    }
    bail!("prune plan {name} vanished while it was being read; run again")
}

fn backend_err(e: BackendError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Before a changeset's header is written: learn new plans, and send back
/// to pending every stored file of it whose chunks have no home outside
/// doomed or lost packs (it is stored again, in new packs). Returns how
/// many went back.
pub fn guard(
    repo: &Repository,
    index_path: &std::path::Path,
    catalog: &mut crate::catalog::Catalog,
    cs: i64,
) -> Result<u64> {
    let mut index = ChunkIndex::open(index_path)?;
    if learn_plans(repo, &mut index)? > 0 {
        // A repack stores its new packs, and their summary, before its
        // plan: learning them keeps what moved there from being stored
        // again below.
        if let Err(e) = repo.learn_summaries(&mut index) {
            log::warn!("cannot read other agents' pack summaries ({e:#}): what a repack moved may be stored again");
        }
    }
    if !index.any_doomed()? {
        return Ok(0);
    }
    let mut requeue = Vec::new();
    catalog.for_each_in_changeset(cs, |r| {
        if r.status == crate::catalog::FileStatus::Stored {
            for c in &r.chunks {
                if !index.contains(c)? {
                    requeue.push(r.path.clone());
                    break;
                }
            }
        }
        Ok(())
    })?;
    catalog.requeue_files(cs, &requeue)?;
    Ok(requeue.len() as u64)
}

pub fn prune(repo: &Repository, state: &StatePaths, opts: &PruneOptions) -> Result<PruneReport> {
    let mut r = PruneReport { dry_run: opts.dry_run, ..Default::default() };
    let t = now();
    let mut index = ChunkIndex::open(&state.index_db())?;
    // Plans first, then the references: anything a manifest written before
    // this point references is seen below (FORMAT §9, the argument).
    let listed = list_plans(repo)?;
    repo.sync_index(&mut index)?;
    learn_listed_plans(repo, &mut index, &listed)?;
    let refs = references(repo, &SegmentCache::new(state))?;
    r.live_changesets = refs.live_changesets;
    r.referenced_chunks = refs.chunks.len() as u64;
    let pack_sizes: BTreeMap<PackId, u64> = repo.list_packs()?.into_iter().collect();
    let segment_sizes: BTreeMap<String, u64> = repo
        .backend
        .list("segments/")
        .map_err(backend_err)
        .context("cannot list manifest segments")?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    // What of a pack is still needed: referenced chunks with no other
    // home (one neither lost, doomed, nor in `leaving`).
    let needed = |index: &ChunkIndex, id: &PackId, leaving: &HashSet<PackId>| -> Result<Option<(u64, u64)>> {
        let entries = index.pack_entries(id)?;
        if entries.is_empty() {
            return Ok(None);
        }
        let (mut used, mut total) = (0u64, 0u64);
        for e in &entries {
            total += u64::from(e.sealed_len);
            if refs.has_chunk(&e.id) && !index.other_homes(&e.id, id)?.iter().any(|h| !leaving.contains(h)) {
                used += u64::from(e.sealed_len);
            }
        }
        Ok(Some((used, total)))
    };
    let none: HashSet<PackId> = HashSet::new();

    // Sweep.
    let mut pending: HashSet<String> = HashSet::new();
    let mut names: BTreeMap<String, (bool, bool, i64)> = BTreeMap::new(); // name -> (marked, swept, created)
    for o in &listed {
        if let Some((st, name, created)) = pruneplan::parse_key(&o.key) {
            let e = names.entry(name.to_string()).or_insert((false, false, created));
            match st {
                PlanState::Marked => e.0 = true,
                PlanState::Swept => e.1 = true,
            }
        }
    }
    let mut swept_now: HashSet<String> = HashSet::new();
    for (name, (marked, swept, created)) in &names {
        if !marked {
            if *swept && t - created > KEEP_SWEPT && !opts.dry_run {
                delete_quiet(repo, &[pruneplan::plan_key(PlanState::Swept, name)])?;
            }
            continue;
        }
        let plan = read_plan(repo, name)?;
        if t < created + opts.grace {
            r.plans_waiting += 1;
            pending.extend(plan.packs.iter().cloned());
            pending.extend(plan.segments.iter().cloned());
            pending.extend(plan.revisions.iter().cloned());
            continue;
        }
        r.plans_swept += 1;
        if !opts.dry_run && !swept {
            // The swept record first: an agent that reads the plan late
            // still finds it under its new name.
            let key = pruneplan::plan_key(PlanState::Swept, name);
            repo.put(&key, &plan.seal(&repo.sealer)?)?;
        }
        let mut doomed_keys = Vec::new();
        let mut deleted_packs = Vec::new();
        for id in plan.pack_ids()? {
            let key = id.object_key();
            let Some(size) = pack_sizes.get(&id) else { continue };
            match needed(&index, &id, &none)? {
                Some((0, _)) => {
                    r.deleted.packs += 1;
                    r.deleted.bytes += size;
                    doomed_keys.push(key);
                    deleted_packs.push(id);
                }
                // Referenced again, or unknown to this index: it stays.
                _ => {
                    r.kept_again.packs += 1;
                    r.kept_again.bytes += size;
                }
            }
        }
        for key in &plan.segments {
            let Some(size) = segment_sizes.get(key) else { continue };
            if refs.segments.contains(key) {
                r.kept_again.segments += 1;
                r.kept_again.bytes += size;
            } else {
                r.deleted.segments += 1;
                r.deleted.bytes += size;
                doomed_keys.push(key.clone());
            }
        }
        for key in &plan.revisions {
            if refs.superseded.contains(key) {
                r.deleted.revisions += 1;
                doomed_keys.push(key.clone());
            }
        }
        if !opts.dry_run {
            // The index forgets first: a crash before the deletes leaves
            // packs a later sync learns again and the rerun sweeps.
            for id in &deleted_packs {
                index.forget_pack(id)?;
            }
            crate::util::fault::hit("prune-before-delete");
            delete_quiet(repo, &doomed_keys)?;
            let gone: Vec<String> = doomed_keys.iter().filter(|k| k.starts_with("segments/")).cloned().collect();
            index.forget_segments(&gone)?;
            crate::util::fault::hit("prune-after-delete");
            delete_quiet(repo, &[pruneplan::plan_key(PlanState::Marked, name)])?;
        }
        swept_now.extend(doomed_keys);
    }

    // Mark.
    let mut plan = PrunePlan::new(t);
    let young = t - opts.grace;
    let mut leaving: HashSet<PackId> = HashSet::new();
    let mut repack: Vec<(PackId, u64, u64, u64)> = Vec::new(); // (pack, needed, unused, total)
    // Bytes of the packs that stay, and how many of them nothing needs.
    let (mut staying, mut unused_staying) = (0u64, 0u64);
    for (id, _size, seen_at) in index.packs_with_age()? {
        let key = id.object_key();
        let Some(on_backend) = pack_sizes.get(&id) else { continue };
        // A pack of a plan still waiting is that plan's; one a sweep kept
        // (referenced again) is doomed but may be marked again once unused.
        if pending.contains(&hex::encode(id.0)) || swept_now.contains(&key) {
            continue;
        }
        match needed(&index, &id, &leaving)? {
            Some((0, _)) if seen_at <= young => {
                plan.packs.push(hex::encode(id.0));
                leaving.insert(id);
                r.marked.packs += 1;
                r.marked.bytes += on_backend;
            }
            Some((used, total)) => {
                staying += total;
                if used < total && used > 0 {
                    r.partly_used_packs += 1;
                    let unused = total - used;
                    r.partly_unused_bytes += unused;
                    unused_staying += unused;
                    if seen_at <= young {
                        repack.push((id, used, unused, total));
                    }
                }
            }
            None => {}
        }
    }
    // restic's rule: repack the most unused packs first, until what nothing
    // needs is at most --max-unused percent of what stays, and no more than
    // --max-repack bytes are copied. A repository a little wasteful is not
    // worth downloading most of it (on S3 the reads are billed).
    repack.sort_by(|a, b| (b.2 as u128 * a.3 as u128).cmp(&(a.2 as u128 * b.3 as u128)).then(a.0.cmp(&b.0)));
    let mut chosen = Vec::new();
    for (id, used, unused, _) in repack {
        if unused_staying * 100 <= staying * opts.max_unused_pct {
            break;
        }
        if r.repacked_bytes + used > opts.max_repack {
            continue;
        }
        r.repacked_bytes += used;
        unused_staying -= unused;
        staying -= unused;
        chosen.push(id);
    }
    r.worth_repacking = chosen.len() as u64;
    if !opts.dry_run && !chosen.is_empty() {
        let (done, made) = repack_packs(repo, &mut index, &refs, &chosen, &leaving, opts.pack_target, t)?;
        r.new_packs = made;
        for id in done {
            plan.packs.push(hex::encode(id.0));
            leaving.insert(id);
            r.repacked_packs += 1;
            r.marked.packs += 1;
            r.marked.bytes += pack_sizes.get(&id).copied().unwrap_or(0);
        }
    } else if opts.dry_run {
        r.repacked_bytes = 0;
    }
    let keys: Vec<&str> = segment_sizes.keys().map(String::as_str).collect();
    let first_seen = if opts.dry_run { Default::default() } else { index.segments_seen(&keys, t)? };
    for (key, size) in &segment_sizes {
        // A segment of a manifest still being written is named by no header
        // yet: only one this agent has known for the grace period is marked.
        let old_enough = first_seen.get(key).is_some_and(|at| *at <= young) || (opts.dry_run && opts.grace == 0);
        if old_enough && !refs.segments.contains(key) && !pending.contains(key) && !swept_now.contains(key) {
            plan.segments.push(key.clone());
            r.marked.segments += 1;
            r.marked.bytes += size;
        }
    }
    let mut superseded: Vec<&String> = refs.superseded.iter().collect();
    superseded.sort();
    for key in superseded {
        if !pending.contains(key) && !swept_now.contains(key) {
            plan.revisions.push(key.clone());
            r.marked.revisions += 1;
        }
    }
    if !plan.is_empty() && !opts.dry_run {
        let name = pruneplan::new_name(t)?;
        repo.put(&pruneplan::plan_key(PlanState::Marked, &name), &plan.seal(&repo.sealer)?)?;
        index.learn_plan(&name, &plan.pack_ids()?, t)?;
    }
    if !opts.dry_run {
        match repo.backend.cleanup_interrupted() {
            Ok(n) => r.interrupted_uploads_removed = n,
            Err(e) => log::warn!("cannot remove what interrupted uploads left: {e}"),
        }
    }
    r.requests = repo.backend.requests();
    Ok(r)
}

/// Copy the needed chunks of `packs` into new packs: only the needed blobs
/// of each old pack are read (close ones in one range read; the only time
/// prune reads pack data), each is opened and checked against its id, and
/// copied as it is (no reseal). The new packs
/// are stored and indexed, and summarized, before the caller's plan marks
/// the old ones, so every agent can find the new homes. Returns the packs
/// whose needed chunks all have a new home.
fn repack_packs(
    repo: &Repository,
    index: &mut ChunkIndex,
    refs: &References,
    packs: &[PackId],
    leaving: &HashSet<PackId>,
    target: usize,
    t: i64,
) -> Result<(Vec<PackId>, u64)> {
    let mut builder = PackBuilder::new(target + (4 << 20));
    let mut in_builder: HashSet<ChunkId> = HashSet::new();
    let mut done = Vec::new();
    let mut waiting = Vec::new();
    let mut made = 0u64;
    let mut flush = |builder: &mut PackBuilder, index: &mut ChunkIndex| -> Result<()> {
        if builder.is_empty() {
            return Ok(());
        }
        made += 1;
        let full = std::mem::replace(builder, PackBuilder::new(target + (4 << 20)));
        let p = full.finish(&repo.sealer);
        repo.put(&p.id.object_key(), &p.bytes)?;
        index.add_pack(&p.id, p.bytes.len() as u64, &p.entries, t)?;
        Ok(())
    };
    let progress = crate::progress::progress();
    progress.begin("prune: repacking", packs.len() as u64, 0);
    for id in packs {
        progress.add_files(1);
        let key = id.object_key();
        // Only what is still needed is read: runs of needed blobs, close
        // ones merged into one range read; each blob is opened and checked
        // against its id before it is copied as it is.
        let mut needed = Vec::new();
        for e in index.pack_entries(id)? {
            // A home in a pack that leaves with this run's plan is no home.
            let keep = refs.has_chunk(&e.id) && index.other_homes(&e.id, id)?.iter().all(|h| leaving.contains(h));
            if keep && !in_builder.contains(&e.id) {
                needed.push(e);
            }
        }
        needed.sort_by_key(|e| e.offset);
        let mut ranges: Vec<(u64, u64, Vec<pack::PackEntry>)> = Vec::new();
        for e in needed {
            let end = e.offset + u64::from(e.sealed_len);
            match ranges.last_mut() {
                Some((s, r_end, es)) if e.offset <= *r_end + (1 << 20) && end - *s <= 16 << 20 => {
                    *r_end = (*r_end).max(end);
                    es.push(e);
                }
                _ => ranges.push((e.offset, end, vec![e])),
            }
        }
        let mut blobs = Vec::new();
        let mut whole = true;
        'ranges: for (start, end, es) in &ranges {
            let body = match repo.backend.get(&key, Some(*start..*end)) {
                Ok(b) => b,
                Err(e) => {
                    log::warn!("prune: cannot read pack {key} to repack it ({e}); it stays");
                    whole = false;
                    break;
                }
            };
            for e in es {
                let at = (e.offset - start) as usize;
                let sealed = body.get(at..at + e.sealed_len as usize);
                let good =
                    sealed.and_then(|b| pack::open_chunk(&repo.sealer, &e.id, b, e.raw_len).ok().map(|p| (b, p)));
                match good {
                    Some((b, plain)) if repo.keys.chunk_id(&plain) == e.id => blobs.push((e.clone(), b.to_vec())),
                    _ => {
                        log::warn!("prune: a chunk of pack {key} is corrupt; the pack stays (run `n2s-agent verify`)");
                        whole = false;
                        break 'ranges;
                    }
                }
            }
        }
        if !whole {
            continue;
        }
        for (e, blob) in blobs {
            in_builder.insert(e.id);
            builder.add(e.id, e.kind, e.raw_len, &blob);
            if builder.len() >= target {
                flush(&mut builder, index)?;
                done.append(&mut waiting);
            }
        }
        waiting.push(*id);
    }
    flush(&mut builder, index)?;
    done.append(&mut waiting);
    if let Err(e) = repo.write_summaries(index) {
        log::warn!("prune: cannot summarize the repacked packs ({e:#}); other agents read their own indexes");
    }
    crate::util::fault::hit("prune-after-repack");
    Ok((done, made))
}

/// Delete keys; one that is gone already (a crashed run deleted it) is fine.
fn delete_quiet(repo: &Repository, keys: &[String]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    match repo.backend.delete_many(keys) {
        Ok(()) => Ok(()),
        Err(BackendError::NotFound(_)) => {
            for k in keys {
                match repo.backend.delete(k) {
                    Ok(()) | Err(BackendError::NotFound(_)) => {}
                    Err(e) => return Err(backend_err(e)).with_context(|| format!("cannot delete {k}")),
                }
            }
            Ok(())
        }
        Err(e) => Err(backend_err(e)).context("cannot delete what the prune plan marked"),
    }
}
