//! `forget`: take changesets out of a dataset's history, by retention
//! policy or by name. Nothing is deleted here; giving the space back (old
//! header revisions, segments, packs no kept changeset uses) is prune's.
//!
//! The order below keeps every reader's view of the repository whole at
//! every moment, and lets the next forget finish what a crashed one began
//! (docs/FORMAT.md §7.9):
//! 1. the local catalog forgets each changeset, one transaction each: the
//!    rows later trees still need move to the next changeset;
//! 2. the first kept changeset after each forgotten run gets a full
//!    revision of its header, written from the catalog, unless it is full
//!    already: nothing kept may replay a delta on top of a forgotten one;
//! 3. each forgotten changeset gets a forgotten revision of its header;
//! 4. the catalog records that the repository knows.

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};

use super::backup::write_segments;
use super::chain;
use super::retention::{self, Candidate, Policy, Protected, Zone};
use crate::backend::PutOutcome;
use crate::catalog::forget::ForgottenChangeset;
use crate::catalog::{Catalog, ChangesetRow, ChangesetStatus};
use crate::core::manifest::{self, ManifestHeader, ManifestKind};
use crate::repo::Repository;
use crate::util::{fault, now, utc_timestamp};

/// What to forget.
pub enum Selection<'a> {
    Policy(&'a Policy),
    /// Snapshot names (or `#N`), exactly these.
    Named(&'a [String]),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub changeset: i64,
    pub snapshot: String,
    /// When it was backed up (UTC), the time the rules look at.
    pub time: String,
    /// Which rules keep it; empty for one that goes.
    pub reasons: Vec<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ForgetReport {
    pub dataset: String,
    pub dry_run: bool,
    /// Newest first.
    pub keep: Vec<Entry>,
    pub forget: Vec<Entry>,
    /// Kept changesets whose header was rewritten as a full manifest.
    pub made_full: Vec<i64>,
    /// Forgotten changesets the repository now records as such (this run's
    /// and any an interrupted run left).
    pub recorded: Vec<i64>,
}

/// Decide, and unless `dry_run`, forget. The caller holds the dataset lock.
pub fn forget(
    repo: &Repository,
    catalog: &mut Catalog,
    selection: Selection,
    zone: &dyn Zone,
    dry_run: bool,
) -> Result<ForgetReport> {
    let ds = catalog.dataset().to_string();
    let all: Vec<ChangesetRow> =
        catalog.changesets()?.into_iter().filter(|c| c.status == ChangesetStatus::Complete).collect();
    let by_id: BTreeMap<i64, &ChangesetRow> = all.iter().map(|c| (c.id, c)).collect();
    let base = catalog.latest_complete()?.map(|c| c.id);
    let protected: Vec<Protected> =
        base.iter().map(|id| Protected { id: *id, why: "the diff base of the next backup" }).collect();
    let decisions = match selection {
        Selection::Policy(p) => {
            if p.is_empty() {
                bail!(
                    "no retention rule for dataset {ds}: give at least one --keep-* option, or keep_* settings in its [[dataset]] section"
                );
            }
            let candidates: Vec<Candidate> = all.iter().map(|c| Candidate { id: c.id, time: c.started_at }).collect();
            retention::decide(p, &candidates, &protected, zone)
        }
        Selection::Named(names) => {
            let mut named = BTreeSet::new();
            for n in names {
                let c = find(catalog, n)?;
                if Some(c.id) == base {
                    bail!(
                        "snapshot {} (changeset {}) is the diff base of dataset {ds}, which is never forgotten: the next backup diffs against it",
                        c.snapshot,
                        c.id
                    );
                }
                named.insert(c.id);
            }
            let mut order: Vec<&ChangesetRow> = all.iter().collect();
            order.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
            order
                .iter()
                .map(|c| retention::Decision {
                    id: c.id,
                    keep: !named.contains(&c.id),
                    reasons: if named.contains(&c.id) { vec![] } else { vec!["not named".to_string()] },
                })
                .collect()
        }
    };
    let mut report = ForgetReport { dataset: ds.clone(), dry_run, ..Default::default() };
    for d in decisions {
        let Some(c) = by_id.get(&d.id) else { continue };
        let e = Entry {
            changeset: c.id,
            snapshot: c.snapshot.clone(),
            time: utc_timestamp(c.started_at),
            reasons: d.reasons,
        };
        if d.keep { report.keep.push(e) } else { report.forget.push(e) }
    }
    if dry_run {
        return Ok(report);
    }
    let ids: Vec<i64> = report.forget.iter().map(|e| e.changeset).collect();
    catalog.forget_changesets(&ids, now())?;
    fault::hit("forget-after-catalog");
    let done = finish(repo, catalog)?;
    report.made_full = done.made_full;
    report.recorded = done.recorded;
    Ok(report)
}

#[derive(Debug, Default)]
pub struct Finished {
    pub made_full: Vec<i64>,
    pub recorded: Vec<i64>,
}

/// Steps 2-4 for every changeset the catalog has forgotten and the
/// repository does not know of yet. Also run by `backup`, so that an
/// interrupted forget never stays half done.
pub fn finish(repo: &Repository, catalog: &mut Catalog) -> Result<Finished> {
    let pending: Vec<ForgottenChangeset> = catalog.forgotten_changesets()?.into_iter().filter(|f| !f.done).collect();
    let mut out = Finished::default();
    if pending.is_empty() {
        return Ok(out);
    }
    let ds = catalog.dataset().to_string();
    let ds_id = repo.dataset_id(&ds);
    // One LIST for the whole run; kept up to date as revisions are added.
    let mut newest: BTreeMap<u64, (u32, String)> = chain::header_revisions(repo, Some(&ds_id))?
        .remove(&ds_id)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(seq, mut revs)| revs.pop().map(|r| (seq, r)))
        .collect();
    let mut full_now: BTreeSet<i64> = BTreeSet::new();
    for f in &pending {
        let next = catalog.next_changeset(f.number)?.with_context(|| {
            format!("dataset {ds}: forgotten changeset {} has no later changeset in the catalog", f.number)
        })?;
        if !full_now.contains(&next.id) {
            let (rev, key) = newest.get(&(next.id as u64)).cloned().with_context(|| {
                format!("dataset {ds}: changeset {} is not in the repository; run `n2s-agent repair`", next.id)
            })?;
            let h = repo.read_manifest(&key)?;
            if h.kind == ManifestKind::Delta {
                let segments = write_segments(repo, catalog, next.id, true, manifest::CHUNKS_PER_RECORD)?;
                let new = ManifestHeader { kind: ManifestKind::Full, segments, revision: rev + 1, ..h };
                let key = put_revision(repo, &ds_id, &new)?;
                newest.insert(next.id as u64, (rev + 1, key));
                out.made_full.push(next.id);
                fault::hit("forget-after-full");
            }
            let key = &newest[&(next.id as u64)].1;
            if next.kind.as_deref() != Some("full") || next.manifest_key.as_deref() != Some(key) {
                catalog.set_manifest(next.id, "full", key)?;
            }
            full_now.insert(next.id);
        }
        match newest.get(&(f.number as u64)).cloned() {
            Some((rev, key)) => {
                let h = repo.read_manifest(&key)?;
                if h.kind != ManifestKind::Forgotten {
                    let new =
                        ManifestHeader { kind: ManifestKind::Forgotten, segments: Vec::new(), revision: rev + 1, ..h };
                    let key = put_revision(repo, &ds_id, &new)?;
                    newest.insert(f.number as u64, (rev + 1, key));
                }
            }
            None => log::warn!(
                "dataset {ds}: forgotten changeset {} ({}) has no manifest in the repository; nothing to record there",
                f.number,
                f.snapshot
            ),
        }
        catalog.set_forgotten_done(f.number)?;
        out.recorded.push(f.number);
    }
    Ok(out)
}

/// A complete changeset by snapshot name or `#N`.
fn find(catalog: &Catalog, name: &str) -> Result<ChangesetRow> {
    let ds = catalog.dataset();
    let found = match name.strip_prefix('#').and_then(|n| n.parse().ok()) {
        Some(n) => catalog.changeset(n)?,
        None => catalog.changeset_by_snapshot(name)?,
    };
    match found {
        Some(c) if c.status == ChangesetStatus::Complete => Ok(c),
        Some(c) => bail!(
            "snapshot {name} of dataset {ds} is {}: only a complete changeset can be forgotten (`abandon` ends an unfinished one)",
            c.status.as_str()
        ),
        None => {
            if catalog.forgotten_changesets()?.iter().any(|f| f.snapshot == name || format!("#{}", f.number) == name) {
                bail!("snapshot {name} of dataset {ds} is already forgotten");
            }
            bail!("dataset {ds} has no backed-up snapshot {name:?}: see `n2s-agent list --dataset {ds}`")
        }
    }
}

/// Store a new revision of a header, put-if-absent: a revision that is
/// already there must be this very rewrite (a crashed run of ours).
fn put_revision(repo: &Repository, ds_id: &str, h: &ManifestHeader) -> Result<String> {
    let key = ManifestHeader::revision_key(ds_id, h.seq, h.revision);
    match repo.put(&key, &h.seal(&repo.sealer)?)? {
        PutOutcome::Created => Ok(key),
        PutOutcome::AlreadyExists => {
            let there = repo.read_manifest(&key)?;
            if there.changeset != h.changeset || there.kind != h.kind {
                bail!(
                    "revision {} of changeset {} of dataset {} was written by another agent at the same time; run forget again",
                    h.revision,
                    h.seq,
                    h.dataset
                );
            }
            Ok(key)
        }
    }
}
