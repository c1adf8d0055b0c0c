//! A dataset's history as the repository holds it: manifest headers 1..N,
//! each naming the previous one as its parent (docs/FORMAT.md §7.5). Rebuild
//! and verify both read it through here, so that a gap, an unreadable
//! header or a broken link is seen the same way by both, and never papered
//! over: a history with a hole rebuilt as if whole would restore the wrong
//! tree for every changeset after the hole.

use anyhow::Result;
use std::collections::BTreeMap;

use crate::core::manifest::{ManifestHeader, ManifestKind};
use crate::repo::Repository;

/// One number of a dataset's history.
#[derive(Debug)]
pub struct Link {
    pub seq: u64,
    pub key: String,
    /// The header, when it could be read.
    pub header: Option<ManifestHeader>,
    /// What is wrong with this link itself, if anything: missing, unreadable,
    /// or a parent that is not the previous changeset.
    pub problem: Option<String>,
}

#[derive(Debug)]
pub struct Chain {
    pub dataset_id: String,
    /// The dataset's name, from any readable header.
    pub name: Option<String>,
    /// seq 1..=N in order, one link per number, present or not.
    pub links: Vec<Link>,
}

/// Every dataset id that has manifest headers, with the key of each
/// number's highest revision (the one readers use), in order.
pub fn header_keys(repo: &Repository, dataset_id: Option<&str>) -> Result<BTreeMap<String, Vec<(u64, String)>>> {
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (ds, revisions) in header_revisions(repo, dataset_id)? {
        let newest = revisions.into_iter().map(|(seq, mut revs)| (seq, revs.pop().map(|(_, k)| k).unwrap_or_default()));
        out.insert(ds, newest.collect());
    }
    Ok(out)
}

/// Per dataset id and number, every revision key the repository holds,
/// oldest first (prune deletes all but the last).
pub type Revisions = BTreeMap<u64, Vec<(u32, String)>>;

pub fn header_revisions(repo: &Repository, dataset_id: Option<&str>) -> Result<BTreeMap<String, Revisions>> {
    let mut out: BTreeMap<String, Revisions> = BTreeMap::new();
    for key in repo.list_manifests(dataset_id)? {
        match ManifestHeader::parse_object_key(&key) {
            Some((ds, seq, rev)) => {
                out.entry(ds.to_string()).or_default().entry(seq).or_default().push((rev, key.clone()))
            }
            None => log::warn!("ignoring object {key}: not a manifest header key"),
        }
    }
    for seqs in out.values_mut() {
        for revs in seqs.values_mut() {
            revs.sort();
        }
    }
    Ok(out)
}

/// Read every header of one dataset and check the chain.
pub fn analyze(repo: &Repository, dataset_id: &str, keys: &[(u64, String)]) -> Chain {
    let max = keys.last().map_or(0, |(s, _)| *s);
    let by_seq: BTreeMap<u64, &String> = keys.iter().map(|(s, k)| (*s, k)).collect();
    let mut links = Vec::with_capacity(max as usize);
    let mut name = None;
    for seq in 1..=max {
        let link = match by_seq.get(&seq) {
            None => Link {
                seq,
                key: ManifestHeader::object_key(dataset_id, seq),
                header: None,
                problem: Some("is missing from the repository".into()),
            },
            Some(&key) => match repo.read_manifest(key) {
                Ok(h) => {
                    name.get_or_insert_with(|| h.dataset.clone());
                    Link { seq, key: key.clone(), header: Some(h), problem: None }
                }
                Err(e) => Link { seq, key: key.clone(), header: None, problem: Some(format!("cannot be read: {e:#}")) },
            },
        };
        links.push(link);
    }
    // A forgotten changeset keeps its identity in the chain, and the next
    // changeset that is not forgotten must be full: a delta has nothing to
    // replay on top of.
    for i in 1..links.len() {
        let after_forgotten = links[i - 1].header.as_ref().is_some_and(|h| h.kind == ManifestKind::Forgotten);
        if let Some(h) = &links[i].header
            && after_forgotten
            && h.kind == ManifestKind::Delta
            && links[i].problem.is_none()
        {
            links[i].problem = Some(format!("is a delta after changeset {i}, which was forgotten"));
        }
    }
    // Each parent must be the previous changeset (seq 1 has none).
    for i in 0..links.len() {
        let expected =
            if i == 0 { Some(None) } else { links[i - 1].header.as_ref().map(|p| Some(p.changeset.clone())) };
        if let (Some(h), Some(want)) = (&links[i].header, expected)
            && h.parent != want
        {
            links[i].problem = Some(match want {
                None => "claims a parent, but it is the first changeset".to_string(),
                Some(_) => format!("does not name changeset {} as its parent: it belongs to another history", i),
            });
        }
    }
    Chain { dataset_id: dataset_id.to_string(), name, links }
}

impl Chain {
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("with id {}", self.dataset_id))
    }

    /// Every problem with a link, as one line each.
    pub fn problems(&self) -> Vec<String> {
        self.links
            .iter()
            .filter_map(|l| {
                l.problem
                    .as_ref()
                    .map(|p| format!("dataset {}: changeset {} ({}) {p}", self.display_name(), l.seq, l.key))
            })
            .collect()
    }

    /// Whether a link can be replayed on top of an intact history before it.
    pub fn is_full(&self, seq: u64) -> bool {
        self.links.get(seq as usize - 1).and_then(|l| l.header.as_ref()).is_some_and(|h| h.kind == ManifestKind::Full)
    }
}
