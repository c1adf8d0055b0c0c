//! Forgetting changesets in the local catalog. A tree is "the newest row of
//! each path at or before changeset n", so a forgotten changeset's rows
//! that later trees still see move to the next changeset; the rest go. Its
//! number stays taken, in `forgotten_changesets`.

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params, params_from_iter};

use super::rows::{RawFile, cs_from_row, file_from_row};
use super::schema::Explain;
use super::{CS_COLS, Catalog, ChangesetRow, ChangesetStatus, FILE_COLS, FILE_INSERT};

/// A changeset `forget` removed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ForgottenChangeset {
    pub number: i64,
    pub uid: String,
    pub snapshot: String,
    pub source: String,
    #[serde(skip)]
    pub identity: String,
    pub started_at: i64,
    pub completed_at: Option<i64>,
    pub forgotten_at: i64,
    /// Whether the repository records it as forgotten too.
    pub done: bool,
}

impl ForgottenChangeset {
    pub fn of(row: &ChangesetRow, now: i64) -> ForgottenChangeset {
        ForgottenChangeset {
            number: row.id,
            uid: row.uid.clone(),
            snapshot: row.snapshot.clone(),
            source: row.source.clone(),
            identity: row.identity.clone(),
            started_at: row.started_at,
            completed_at: row.completed_at,
            forgotten_at: now,
            done: false,
        }
    }
}

/// One row of `forgotten_changesets`, inside the caller's transaction or not.
fn insert_forgotten_row(conn: &rusqlite::Connection, f: &ForgottenChangeset) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO forgotten_changesets (id, uid, snapshot, source, identity, started_at, completed_at, \
         forgotten_at, done) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            f.number,
            f.uid,
            f.snapshot,
            f.source,
            f.identity,
            f.started_at,
            f.completed_at,
            f.forgotten_at,
            f.done
        ],
    )
}

impl Catalog {
    /// The first changeset after `id` (forgotten ones have no row here).
    pub fn next_changeset(&self, id: i64) -> Result<Option<ChangesetRow>> {
        let mut st = self.explain(
            self.conn.prepare_cached(&format!("SELECT {CS_COLS} FROM changesets WHERE id > ?1 ORDER BY id LIMIT 1")),
        )?;
        self.explain(st.query_row(params![id], cs_from_row).optional())
    }

    /// Forget complete changesets here. Each run of them with no kept
    /// changeset between goes in one transaction and one pass over its
    /// rows: the newest row of each path that later trees still see moves
    /// to the next changeset, which must be complete too (so the newest
    /// changeset, and the base of an unfinished one, cannot go); the rest
    /// go. Forgetting 40 changesets of a 200,000-file tree moves each path
    /// at most once. The repository is told afterwards (engine/forget.rs),
    /// and `set_forgotten_done` records that.
    pub fn forget_changesets(&mut self, ids: &[i64], now: i64) -> Result<Vec<ForgottenChangeset>> {
        let ds = self.dataset.clone();
        let wanted: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
        let all = self.changesets()?;
        for id in &wanted {
            let Some(row) = all.iter().find(|c| c.id == *id) else { bail!("dataset {ds} has no changeset {id}") };
            if row.status != ChangesetStatus::Complete {
                bail!(
                    "changeset {id} ({}) of dataset {ds} is {}: only a complete changeset can be forgotten{}",
                    row.snapshot,
                    row.status.as_str(),
                    if row.status == ChangesetStatus::Damaged {
                        "; `n2s-agent repair` deals with damaged ones"
                    } else {
                        ""
                    }
                );
            }
        }
        // Runs of consecutive changesets to forget, each with the changeset
        // that follows it.
        let mut runs: Vec<(Vec<&ChangesetRow>, Option<&ChangesetRow>)> = Vec::new();
        let mut cur: Vec<&ChangesetRow> = Vec::new();
        for c in &all {
            if wanted.contains(&c.id) {
                cur.push(c);
            } else if !cur.is_empty() {
                runs.push((std::mem::take(&mut cur), Some(c)));
            }
        }
        if !cur.is_empty() {
            runs.push((cur, None));
        }
        // Every run is checked before any is forgotten.
        let mut checked = Vec::with_capacity(runs.len());
        for (run, next) in runs {
            let last = run[run.len() - 1];
            let next = match next {
                Some(n) if n.status == ChangesetStatus::Complete => n.id,
                Some(n) => bail!(
                    "changeset {} ({}) of dataset {ds} is followed by changeset {} ({}), which is {}: it cannot take over \
                     what later trees need ({})",
                    last.id,
                    last.snapshot,
                    n.id,
                    n.snapshot,
                    n.status.as_str(),
                    if n.status == ChangesetStatus::Damaged {
                        "`n2s-agent repair` deals with damaged ones"
                    } else {
                        "finish it with backup, or abandon it, first"
                    }
                ),
                None => bail!(
                    "changeset {} ({}) is the newest of dataset {ds}, which is never forgotten: the next backup diffs against it",
                    last.id,
                    last.snapshot
                ),
            };
            checked.push((run, next));
        }
        let mut out = Vec::new();
        for (run, next) in checked {
            let first = run[0];
            let last = run[run.len() - 1];
            let path = self.path.clone();
            let tx = self.conn.transaction().db(&path)?;
            {
                // Newest first within a path: the first row of each path is
                // what the next changeset's tree sees, unless it has its own.
                let mut rows = tx
                    .prepare(&format!(
                        "SELECT {FILE_COLS} FROM files f WHERE f.changeset BETWEEN ?1 AND ?2 AND NOT EXISTS \
                         (SELECT 1 FROM files g WHERE g.changeset = ?3 AND g.path = f.path) \
                         ORDER BY f.path, f.changeset DESC"
                    ))
                    .db(&path)?;
                let mut put = tx.prepare_cached(FILE_INSERT).db(&path)?;
                let mut q = rows.query(params![first.id, last.id, next]).db(&path)?;
                let mut last_path: Option<Vec<u8>> = None;
                while let Some(r) = q.next().db(&path)? {
                    // Decoding checks the row's checksum; the moved row gets a new one.
                    let mut file = file_from_row(r).db(&path)?;
                    if last_path.as_deref() == Some(&file.path[..]) {
                        continue;
                    }
                    last_path = Some(file.path.clone());
                    file.changeset = next;
                    put.execute(params_from_iter(RawFile::of(&file).values())).db(&path)?;
                }
            }
            // Every changeset between first and last is in the run (or was
            // forgotten before, and has no rows).
            tx.execute("DELETE FROM files WHERE changeset BETWEEN ?1 AND ?2", params![first.id, last.id]).db(&path)?;
            for c in &run {
                let f = ForgottenChangeset::of(c, now);
                tx.execute("DELETE FROM changesets WHERE id = ?1", params![c.id]).db(&path)?;
                insert_forgotten_row(&tx, &f).db(&path)?;
                out.push(f);
            }
            tx.commit().db(&path)?;
        }
        Ok(out)
    }

    /// A changeset the repository already records as forgotten (rebuild).
    pub fn insert_forgotten(&mut self, f: &ForgottenChangeset) -> Result<()> {
        self.explain(insert_forgotten_row(&self.conn, f))?;
        Ok(())
    }

    pub fn set_forgotten_done(&mut self, id: i64) -> Result<()> {
        self.explain(self.conn.execute("UPDATE forgotten_changesets SET done = 1 WHERE id = ?1", params![id]))?;
        Ok(())
    }

    /// Every forgotten changeset, by number.
    pub fn forgotten_changesets(&self) -> Result<Vec<ForgottenChangeset>> {
        let mut st = self.explain(self.conn.prepare(
            "SELECT id, uid, snapshot, source, identity, started_at, completed_at, forgotten_at, done \
             FROM forgotten_changesets ORDER BY id",
        ))?;
        let rows = self.explain(st.query_map([], |r| {
            Ok(ForgottenChangeset {
                number: r.get(0)?,
                uid: r.get(1)?,
                snapshot: r.get(2)?,
                source: r.get(3)?,
                identity: r.get(4)?,
                started_at: r.get(5)?,
                completed_at: r.get(6)?,
                forgotten_at: r.get(7)?,
                done: r.get(8)?,
            })
        }))?;
        self.explain(rows.collect::<rusqlite::Result<_>>())
    }

    /// Record that changeset `id`'s manifest is now `key`, of `kind`.
    pub fn set_manifest(&mut self, id: i64, kind: &str, key: &str) -> Result<()> {
        self.explain(
            self.conn
                .execute("UPDATE changesets SET kind = ?2, manifest_key = ?3 WHERE id = ?1", params![id, kind, key]),
        )?;
        self.refresh_cs_sum(id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::meta;
    use super::super::*;
    use crate::model::{ChangeKind, FileType};

    fn complete(cat: &mut Catalog, name: &str, rows: &[(&str, ChangeKind)]) -> i64 {
        let new = NewChangeset { snapshot: name, source: "walk", identity: "{}", method: "walk", started_at: 1 };
        let cs = cat.create_changeset(&new).unwrap().id;
        let files: Vec<FileRow> = rows
            .iter()
            .map(|(p, k)| FileRow {
                changeset: cs,
                path: p.as_bytes().to_vec(),
                kind: *k,
                status: FileStatus::Stored,
                meta: (*k != ChangeKind::Removed).then(|| meta(FileType::File, cs as u64, cs)),
                chunks: vec![],
                file_hash: None,
                error: None,
                uploaded_at: Some(1),
                confirmed_at: Some(1),
            })
            .collect();
        cat.insert_files(&files).unwrap();
        cat.set_listed(cs, 1, "walk").unwrap();
        cat.set_complete(cs, "delta", &format!("k{cs}"), 2, 0).unwrap();
        cs
    }

    fn tree(cat: &Catalog, n: i64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        cat.for_each_in_tree(n, None, |r| {
            out.push((String::from_utf8_lossy(&r.path).into_owned(), r.meta.map_or(0, |m| m.size)));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn later_trees_are_unchanged_and_the_newest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(&dir.path().join("c.sqlite"), "ds").unwrap();
        use ChangeKind::*;
        let a = complete(&mut cat, "a", &[("x", Added), ("y", Added), ("z", Added)]);
        let b = complete(&mut cat, "b", &[("x", Modified), ("y", Removed), ("w", Added)]);
        let c = complete(&mut cat, "c", &[("x", Modified), ("v", Added)]);
        let d = complete(&mut cat, "d", &[("z", Modified)]);
        let before: Vec<_> = [c, d].iter().map(|n| tree(&cat, *n)).collect();
        assert!(cat.forget_changesets(&[d], 5).unwrap_err().to_string().contains("newest"));
        let f = cat.forget_changesets(&[b], 5).unwrap().remove(0);
        assert_eq!((f.number, f.snapshot.as_str(), f.done), (b, "b", false));
        cat.forget_changesets(&[a], 6).unwrap();
        let after: Vec<_> = [c, d].iter().map(|n| tree(&cat, *n)).collect();
        assert_eq!(before, after);
        assert!(cat.changeset(a).unwrap().is_none() && cat.changeset(b).unwrap().is_none());
        assert!(cat.check().unwrap().is_empty(), "every moved row has a valid checksum");
        let forgotten: Vec<i64> = cat.forgotten_changesets().unwrap().iter().map(|f| f.number).collect();
        assert_eq!(forgotten, vec![a, b]);
        // The numbering goes on after the newest.
        let e = complete(&mut cat, "e", &[]);
        assert_eq!(e, d + 1);
        assert!(cat.forget_changesets(&[b], 7).is_err(), "already forgotten");
    }

    #[test]
    fn a_run_is_forgotten_in_one_pass_and_the_kept_ones_around_it_are_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(&dir.path().join("c.sqlite"), "ds").unwrap();
        use ChangeKind::*;
        let a = complete(&mut cat, "a", &[("x", Added), ("y", Added), ("z", Added)]);
        let b = complete(&mut cat, "b", &[("x", Modified), ("w", Added)]);
        let c = complete(&mut cat, "c", &[("x", Modified), ("y", Removed)]);
        let d = complete(&mut cat, "d", &[("w", Modified)]);
        let e = complete(&mut cat, "e", &[("v", Added)]);
        let f = complete(&mut cat, "f", &[("z", Modified)]);
        let before: Vec<_> = [a, e, f].iter().map(|n| tree(&cat, *n)).collect();
        // Two runs: b..d (e takes over) and nothing else; a stays.
        let gone = cat.forget_changesets(&[b, c, d], 9).unwrap();
        assert_eq!(gone.iter().map(|g| g.number).collect::<Vec<_>>(), vec![b, c, d]);
        let after: Vec<_> = [a, e, f].iter().map(|n| tree(&cat, *n)).collect();
        assert_eq!(before, after);
        assert!(cat.check().unwrap().is_empty());
        // Each path moved once: e holds x, w and the removal of y once each.
        let mut rows = Vec::new();
        cat.for_each_in_changeset(e, |r| {
            rows.push(String::from_utf8_lossy(&r.path).into_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, ["v", "w", "x", "y"]);
        // A run that would end at the newest is refused, and nothing changes.
        assert!(cat.forget_changesets(&[e, f], 10).unwrap_err().to_string().contains("newest"));
        assert!(cat.changeset(e).unwrap().is_some());
    }
}
