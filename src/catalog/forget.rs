//! Forgetting changesets in the local catalog. A tree is "the newest row of
//! each path at or before changeset n", so a forgotten changeset's rows
//! that later trees still see move to the next changeset; the rest go. Its
//! number stays taken, in `forgotten_changesets`.

use anyhow::{Context, Result, bail};
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

impl Catalog {
    /// The first changeset after `id` (forgotten ones have no row here).
    pub fn next_changeset(&self, id: i64) -> Result<Option<ChangesetRow>> {
        let mut st = self.explain(
            self.conn.prepare_cached(&format!("SELECT {CS_COLS} FROM changesets WHERE id > ?1 ORDER BY id LIMIT 1")),
        )?;
        self.explain(st.query_row(params![id], cs_from_row).optional())
    }

    /// Forget complete changeset `id` here: the rows that later trees still
    /// see move to the next changeset, which must be complete too (so the
    /// newest changeset, and the base of an unfinished one, cannot go). All
    /// in one transaction. The repository is told afterwards
    /// (engine/forget.rs), and `set_forgotten_done` records that.
    pub fn forget_changeset(&mut self, id: i64, now: i64) -> Result<ForgottenChangeset> {
        let ds = self.dataset.clone();
        let row = self.changeset(id)?.with_context(|| format!("dataset {ds} has no changeset {id}"))?;
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
        let next = self.next_changeset(id)?;
        match &next {
            Some(n) if n.status == ChangesetStatus::Complete => {}
            Some(n) => bail!(
                "changeset {id} ({}) of dataset {ds} is the base of unfinished changeset {} ({}): finish or abandon that one first",
                row.snapshot,
                n.id,
                n.snapshot
            ),
            None => bail!(
                "changeset {id} ({}) is the newest of dataset {ds}, which is never forgotten: the next backup diffs against it",
                row.snapshot
            ),
        }
        let next = next.map_or(0, |n| n.id);
        let f = ForgottenChangeset::of(&row, now);
        let path = self.path.clone();
        let tx = self.conn.transaction().db(&path)?;
        {
            let mut rows = tx
                .prepare(&format!(
                    "SELECT {FILE_COLS} FROM files f WHERE f.changeset = ?1 AND NOT EXISTS \
                     (SELECT 1 FROM files g WHERE g.changeset = ?2 AND g.path = f.path)"
                ))
                .db(&path)?;
            let mut put = tx.prepare_cached(FILE_INSERT).db(&path)?;
            let mut q = rows.query(params![id, next]).db(&path)?;
            while let Some(r) = q.next().db(&path)? {
                // Decoding checks the row's checksum; the moved row gets a new one.
                let mut file = file_from_row(r).db(&path)?;
                file.changeset = next;
                put.execute(params_from_iter(RawFile::of(&file).values())).db(&path)?;
            }
        }
        tx.execute("DELETE FROM files WHERE changeset = ?1", params![id]).db(&path)?;
        tx.execute("DELETE FROM changesets WHERE id = ?1", params![id]).db(&path)?;
        tx.execute(
            "INSERT INTO forgotten_changesets (id, uid, snapshot, source, identity, started_at, completed_at, \
             forgotten_at, done) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)",
            params![f.number, f.uid, f.snapshot, f.source, f.identity, f.started_at, f.completed_at, f.forgotten_at],
        )
        .db(&path)?;
        tx.commit().db(&path)?;
        Ok(f)
    }

    /// A changeset the repository already records as forgotten (rebuild).
    pub fn insert_forgotten(&mut self, f: &ForgottenChangeset) -> Result<()> {
        self.explain(self.conn.execute(
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
        ))?;
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
        assert!(cat.forget_changeset(d, 5).unwrap_err().to_string().contains("newest"));
        let f = cat.forget_changeset(b, 5).unwrap();
        assert_eq!((f.number, f.snapshot.as_str(), f.done), (b, "b", false));
        cat.forget_changeset(a, 6).unwrap();
        let after: Vec<_> = [c, d].iter().map(|n| tree(&cat, *n)).collect();
        assert_eq!(before, after);
        assert!(cat.changeset(a).unwrap().is_none() && cat.changeset(b).unwrap().is_none());
        assert!(cat.check().unwrap().is_empty(), "every moved row has a valid checksum");
        let forgotten: Vec<i64> = cat.forgotten_changesets().unwrap().iter().map(|f| f.number).collect();
        assert_eq!(forgotten, vec![a, b]);
        // The numbering goes on after the newest.
        let e = complete(&mut cat, "e", &[]);
        assert_eq!(e, d + 1);
        assert!(cat.forget_changeset(b, 7).is_err(), "already forgotten");
    }
}
