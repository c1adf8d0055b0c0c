//! The repository-wide chunk → pack index: a cache in the state directory,
//! rebuildable from the packs' own sealed indexes at any time.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};

use super::schema::{self, Explain};
use crate::core::pack::{PackEntry, PackId};
use crate::core::packsummary::SummarizedPack;
use crate::model::ChunkId;

/// `packs.summary` of a pack whose entries alone exceed a summary's size
/// limit: no summary will ever cover it, so none is tried again.
const NO_SUMMARY: &str = "-";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    pub offset: u64,
    pub sealed_len: u32,
    pub raw_len: u32,
}

pub struct ChunkIndex {
    conn: Connection,
    path: PathBuf,
}

/// A chunk is "live" when it has at least one home in a pack not found
/// lost. Reads prefer a home no prune plan dooms.
const LIVE: &str = "SELECT c.pack, c.offset, c.sealed_len, c.raw_len FROM chunks c JOIN packs p ON p.id = c.pack \
     WHERE c.id = ?1 AND p.lost_at IS NULL \
     ORDER BY EXISTS (SELECT 1 FROM doomed_packs d WHERE d.id = c.pack), p.confirmed_at LIMIT 1";
/// Dedup may reuse a chunk only from a pack that is neither lost nor
/// doomed: a doomed pack may be deleted once its plan's grace is over.
const DEDUP: &str = "SELECT 1 FROM chunks c JOIN packs p ON p.id = c.pack \
     WHERE c.id = ?1 AND p.lost_at IS NULL AND NOT EXISTS (SELECT 1 FROM doomed_packs d WHERE d.id = c.pack) LIMIT 1";

impl ChunkIndex {
    pub fn open(path: &Path) -> Result<ChunkIndex> {
        let mut conn = schema::open_db(path)?;
        schema::migrate(&mut conn, schema::INDEX_MIGRATIONS, "chunk index", path)?;
        Ok(ChunkIndex { conn, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Is the chunk stored in a pack that is not known to be lost? Dedup
    /// asks this: a chunk whose every home is lost is uploaded again.
    pub fn contains(&self, id: &ChunkId) -> Result<bool> {
        let mut st = self.conn.prepare_cached(DEDUP).db(&self.path)?;
        st.exists(params![&id.0[..]]).db(&self.path)
    }

    /// A live home of the chunk (the oldest confirmed one).
    pub fn lookup(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        let mut st = self.conn.prepare_cached(LIVE).db(&self.path)?;
        let row = st
            .query_row(params![&id.0[..]], |r| {
                let pack: Vec<u8> = r.get(0)?;
                Ok((pack, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
            })
            .optional()
            .db(&self.path)?;
        let Some((pack, off, sl, rl)) = row else { return Ok(None) };
        let pack: [u8; 32] = pack.try_into().map_err(|_| {
            anyhow::anyhow!(
                "chunk index {} is damaged (a pack id of the wrong length): move it aside and run `n2s-agent catalog rebuild`",
                self.path.display()
            )
        })?;
        Ok(Some(ChunkLocation { pack: PackId(pack), offset: off as u64, sealed_len: sl as u32, raw_len: rl as u32 }))
    }

    pub fn has_pack(&self, id: &PackId) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM packs WHERE id = ?1").db(&self.path)?;
        st.exists(params![&id.0[..]]).db(&self.path)
    }

    /// Record a pack confirmed stored, with every chunk it holds, in one
    /// transaction. A chunk may have several homes; each is recorded. A
    /// pack found again after it was marked lost is live again.
    pub fn add_pack(&mut self, id: &PackId, size: u64, entries: &[PackEntry], now: i64) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        insert_pack(&tx, &self.path, id, size, entries, now)?;
        tx.commit().db(&self.path)
    }

    /// Record the backend's own name for a pack's bytes (an IPFS CID).
    pub fn set_content_address(&mut self, id: &PackId, address: &str) -> Result<()> {
        let mut st = self.conn.prepare_cached("UPDATE packs SET content_address = ?2 WHERE id = ?1").db(&self.path)?;
        st.execute(params![&id.0[..], address]).db(&self.path)?;
        Ok(())
    }

    /// Every pack with a recorded content address: (pack, address).
    pub fn content_addresses(&self) -> Result<Vec<(PackId, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, content_address FROM packs WHERE content_address IS NOT NULL")
            .db(&self.path)?;
        let rows = st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))).db(&self.path)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, addr) = row.db(&self.path)?;
            if let Ok(arr) = id.try_into() {
                out.push((PackId(arr), addr));
            }
        }
        Ok(out)
    }

    /// Has this index read (or written) the summary with this key?
    pub fn knows_summary(&self, key: &str) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM summaries WHERE key = ?1").db(&self.path)?;
        st.exists(params![key]).db(&self.path)
    }

    /// Every summary this index has read or written.
    pub fn summary_keys(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare("SELECT key FROM summaries ORDER BY key").db(&self.path)?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).db(&self.path)?;
        rows.map(|r| r.db(&self.path)).collect()
    }

    /// Record a summary, in one transaction: the packs it brought that the
    /// index did not know (`new`, with their chunks), and `covered`, every
    /// pack of it that exists (new or not), which no backup needs to
    /// summarize again. A pack already covered by another summary keeps it.
    pub fn add_summary(&mut self, key: &str, new: &[&SummarizedPack], covered: &[PackId], now: i64) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        for p in new {
            insert_pack(&tx, &self.path, &p.id, p.size, &p.entries, now)?;
        }
        tx.execute(
            "INSERT INTO summaries (key, packs, seen_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO UPDATE SET packs = excluded.packs, seen_at = excluded.seen_at",
            params![key, covered.len() as i64, now],
        )
        .db(&self.path)?;
        {
            let mut st =
                tx.prepare_cached("UPDATE packs SET summary = ?2 WHERE id = ?1 AND summary IS NULL").db(&self.path)?;
            for id in covered {
                st.execute(params![&id.0[..], key]).db(&self.path)?;
            }
        }
        tx.commit().db(&self.path)
    }

    /// Forget a summary (it is gone from the repository, or does not open,
    /// or disagrees with a pack): the packs it covered are uncovered again,
    /// so the next backup summarizes them anew.
    pub fn forget_summary(&mut self, key: &str) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        tx.execute("DELETE FROM summaries WHERE key = ?1", params![key]).db(&self.path)?;
        tx.execute("UPDATE packs SET summary = NULL WHERE summary = ?1", params![key]).db(&self.path)?;
        tx.commit().db(&self.path)
    }

    /// Packs no summary covers yet (and not lost), in ascending id order,
    /// the order a summary holds them in.
    pub fn unsummarized_packs(&self) -> Result<Vec<(PackId, u64)>> {
        self.packs_where("summary IS NULL AND lost_at IS NULL ORDER BY id")
    }

    /// A pack too large for any summary: never tried again.
    pub fn mark_unsummarizable(&mut self, id: &PackId) -> Result<()> {
        self.conn
            .execute("UPDATE packs SET summary = ?2 WHERE id = ?1", params![&id.0[..], NO_SUMMARY])
            .db(&self.path)?;
        Ok(())
    }

    /// The entries the index holds for a pack, in pack order.
    pub fn pack_entries(&self, id: &PackId) -> Result<Vec<PackEntry>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, kind, offset, sealed_len, raw_len FROM chunks WHERE pack = ?1 ORDER BY offset")
            .db(&self.path)?;
        let rows = st
            .query_map(params![&id.0[..]], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .db(&self.path)?;
        let mut out = Vec::new();
        for row in rows {
            let (cid, kind, offset, sealed_len, raw_len) = row.db(&self.path)?;
            let id = ChunkId::from_slice(&cid).ok_or_else(|| {
                anyhow::anyhow!(
                    "chunk index {} is damaged (a chunk id of the wrong length): move it aside and run `n2s-agent catalog rebuild`",
                    self.path.display()
                )
            })?;
            out.push(PackEntry {
                id,
                kind: kind as u8,
                offset: offset as u64,
                sealed_len: sealed_len as u32,
                raw_len: raw_len as u32,
            });
        }
        Ok(out)
    }

    /// Every pack the index knows that is not marked lost, with its size.
    pub fn packs(&self) -> Result<Vec<(PackId, u64)>> {
        self.packs_where("lost_at IS NULL")
    }

    /// Packs marked lost (missing from the repository, or corrupt).
    pub fn lost_packs(&self) -> Result<Vec<(PackId, u64)>> {
        self.packs_where("lost_at IS NOT NULL")
    }

    fn packs_where(&self, cond: &str) -> Result<Vec<(PackId, u64)>> {
        let mut st = self.conn.prepare(&format!("SELECT id, size FROM packs WHERE {cond}")).db(&self.path)?;
        let rows = st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))).db(&self.path)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, size) = row.db(&self.path)?;
            if let Ok(arr) = id.try_into() {
                out.push((PackId(arr), size as u64));
            }
        }
        Ok(out)
    }

    /// Mark a pack lost: its chunks are no longer used for dedup or reads,
    /// so the next backup uploads them again. Its rows stay, so a pack that
    /// turns up again (add_pack) is live again with nothing to relearn.
    pub fn mark_lost(&mut self, id: &PackId, now: i64) -> Result<bool> {
        let n = self
            .conn
            .execute("UPDATE packs SET lost_at = ?2 WHERE id = ?1 AND lost_at IS NULL", params![&id.0[..], now])
            .db(&self.path)?;
        Ok(n > 0)
    }

    /// A pack marked lost that was found whole again (verify read it).
    pub fn mark_found(&mut self, id: &PackId) -> Result<bool> {
        let n = self
            .conn
            .execute("UPDATE packs SET lost_at = NULL WHERE id = ?1 AND lost_at IS NOT NULL", params![&id.0[..]])
            .db(&self.path)?;
        Ok(n > 0)
    }

    /// Chunks every home of which is lost: visited one by one.
    pub fn for_each_orphaned_chunk(&self, mut f: impl FnMut(ChunkId) -> Result<()>) -> Result<()> {
        let mut st = self
            .conn
            .prepare(
                "SELECT c.id FROM chunks c JOIN packs p ON p.id = c.pack GROUP BY c.id \
                 HAVING sum(p.lost_at IS NULL) = 0",
            )
            .db(&self.path)?;
        let mut rows = st.query([]).db(&self.path)?;
        while let Some(r) = rows.next().db(&self.path)? {
            let b: Vec<u8> = r.get(0).db(&self.path)?;
            if let Some(id) = ChunkId::from_slice(&b) {
                f(id)?;
            }
        }
        Ok(())
    }

    pub fn chunk_count(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT count(DISTINCT id) FROM chunks", [], |r| r.get::<_, i64>(0)).db(&self.path)?
            as u64)
    }

    /// Forget a pack and the homes it gave its chunks; homes in other
    /// packs stay. A doomed pack stays doomed: if it turns up again (a
    /// prune killed before its deletes), it is still never deduplicated
    /// against.
    pub fn forget_pack(&mut self, id: &PackId) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        tx.execute("DELETE FROM chunks WHERE pack = ?1", params![&id.0[..]]).db(&self.path)?;
        tx.execute("DELETE FROM packs WHERE id = ?1", params![&id.0[..]]).db(&self.path)?;
        tx.commit().db(&self.path)
    }

    /// Whether a prune plan of this name has been learned.
    pub fn knows_plan(&self, name: &str) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM plans WHERE name = ?1").db(&self.path)?;
        st.exists(params![name]).db(&self.path)
    }

    /// Learn a prune plan: its packs are doomed from now on. One transaction.
    pub fn learn_plan(&mut self, name: &str, packs: &[PackId], now: i64) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        {
            let mut st =
                tx.prepare_cached("INSERT OR IGNORE INTO doomed_packs (id, since) VALUES (?1, ?2)").db(&self.path)?;
            for p in packs {
                st.execute(params![&p.0[..], now]).db(&self.path)?;
            }
        }
        tx.execute("INSERT OR IGNORE INTO plans (name, seen_at) VALUES (?1, ?2)", params![name, now]).db(&self.path)?;
        tx.commit().db(&self.path)
    }

    /// The packs other than `pack` that hold the chunk and are neither
    /// lost nor doomed: homes that let `pack` go without it.
    pub fn other_homes(&self, id: &ChunkId, pack: &PackId) -> Result<Vec<PackId>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT c.pack FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.id = ?1 AND c.pack != ?2 \
                 AND p.lost_at IS NULL AND NOT EXISTS (SELECT 1 FROM doomed_packs d WHERE d.id = c.pack)",
            )
            .db(&self.path)?;
        let rows = st.query_map(params![&id.0[..], &pack.0[..]], |r| r.get::<_, Vec<u8>>(0)).db(&self.path)?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(a) = <[u8; 32]>::try_from(r.db(&self.path)?) {
                out.push(PackId(a));
            }
        }
        Ok(out)
    }

    /// Whether any pack is doomed (most runs: none, and nothing to check).
    pub fn any_doomed(&self) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM doomed_packs LIMIT 1").db(&self.path)?;
        st.exists([]).db(&self.path)
    }

    pub fn is_doomed(&self, id: &PackId) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM doomed_packs WHERE id = ?1").db(&self.path)?;
        st.exists(params![&id.0[..]]).db(&self.path)
    }

    /// When this index last learned the prune plans (None: never).
    pub fn plans_learned_at(&self) -> Result<Option<i64>> {
        self.conn
            .query_row("SELECT value FROM index_meta WHERE key = 'plans_learned_at'", [], |r| r.get(0))
            .optional()
            .db(&self.path)
    }

    pub fn set_plans_learned_at(&mut self, now: i64) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO index_meta (key, value) VALUES ('plans_learned_at', ?1)", params![now])
            .db(&self.path)?;
        Ok(())
    }

    /// When the index first knew each pack it knows (not lost), with its size.
    pub fn packs_with_age(&self) -> Result<Vec<(PackId, u64, i64)>> {
        let mut st =
            self.conn.prepare("SELECT id, size, confirmed_at FROM packs WHERE lost_at IS NULL").db(&self.path)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
            .db(&self.path)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, size, at) = row.db(&self.path)?;
            if let Ok(arr) = id.try_into() {
                out.push((PackId(arr), size as u64, at));
            }
        }
        Ok(out)
    }

    /// Record the segments on the backend and return when this index first
    /// saw each (a segment of a manifest still being written is young).
    pub fn segments_seen(&mut self, keys: &[&str], now: i64) -> Result<std::collections::HashMap<String, i64>> {
        let tx = self.conn.transaction().db(&self.path)?;
        let mut out = std::collections::HashMap::with_capacity(keys.len());
        {
            let mut ins = tx
                .prepare_cached("INSERT OR IGNORE INTO seen_segments (key, first_seen) VALUES (?1, ?2)")
                .db(&self.path)?;
            let mut get = tx.prepare_cached("SELECT first_seen FROM seen_segments WHERE key = ?1").db(&self.path)?;
            for k in keys {
                ins.execute(params![k, now]).db(&self.path)?;
                let at: i64 = get.query_row(params![k], |r| r.get(0)).db(&self.path)?;
                out.insert(k.to_string(), at);
            }
        }
        tx.commit().db(&self.path)?;
        Ok(out)
    }

    /// Forget segments that are gone from the backend.
    pub fn forget_segments(&mut self, keys: &[String]) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        {
            let mut st = tx.prepare_cached("DELETE FROM seen_segments WHERE key = ?1").db(&self.path)?;
            for k in keys {
                st.execute(params![k]).db(&self.path)?;
            }
        }
        tx.commit().db(&self.path)
    }

    /// SQLite's own structural check of the index file.
    pub fn check(&self) -> Result<Vec<String>> {
        schema::quick_check(&self.conn, &self.path)
    }
}

/// A pack and its chunks, inside the caller's transaction. A pack found
/// again after it was marked lost is live again.
fn insert_pack(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    id: &PackId,
    size: u64,
    entries: &[PackEntry],
    now: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO packs (id, size, confirmed_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (id) DO UPDATE SET lost_at = NULL",
        params![&id.0[..], size as i64, now],
    )
    .db(path)?;
    let mut st = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO chunks (id, pack, offset, sealed_len, raw_len, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .db(path)?;
    for e in entries {
        st.execute(params![&e.id.0[..], &id.0[..], e.offset as i64, e.sealed_len as i64, e.raw_len as i64, e.kind])
            .db(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pack::KIND_DATA;

    #[test]
    fn add_lookup_forget() {
        let dir = tempfile::tempdir().unwrap();
        let mut ix = ChunkIndex::open(&dir.path().join("index.sqlite")).unwrap();
        let pack = PackId([1u8; 32]);
        let e = PackEntry { id: ChunkId([2u8; 32]), kind: KIND_DATA, offset: 8, sealed_len: 100, raw_len: 60 };
        assert!(!ix.contains(&e.id).unwrap());
        ix.add_pack(&pack, 4096, std::slice::from_ref(&e), 1).unwrap();
        assert!(ix.contains(&e.id).unwrap());
        assert!(ix.has_pack(&pack).unwrap());
        let loc = ix.lookup(&e.id).unwrap().unwrap();
        assert_eq!(loc, ChunkLocation { pack, offset: 8, sealed_len: 100, raw_len: 60 });
        // A second home for the same chunk does not move it.
        let other = PackId([3u8; 32]);
        ix.add_pack(&other, 4096, std::slice::from_ref(&e), 2).unwrap();
        assert_eq!(ix.lookup(&e.id).unwrap().unwrap().pack, pack);
        // Forgetting one home keeps the other (the old index kept only the first).
        ix.forget_pack(&pack).unwrap();
        assert!(ix.contains(&e.id).unwrap());
        assert_eq!(ix.lookup(&e.id).unwrap().unwrap().pack, other);
        assert_eq!(ix.packs().unwrap().len(), 1);
        ix.forget_pack(&other).unwrap();
        assert!(!ix.contains(&e.id).unwrap());
    }

    #[test]
    fn a_lost_pack_is_not_a_home_until_it_is_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut ix = ChunkIndex::open(&dir.path().join("index.sqlite")).unwrap();
        let (p1, p2) = (PackId([1u8; 32]), PackId([2u8; 32]));
        let shared = PackEntry { id: ChunkId([7u8; 32]), kind: KIND_DATA, offset: 8, sealed_len: 100, raw_len: 60 };
        let only = PackEntry { id: ChunkId([8u8; 32]), kind: KIND_DATA, offset: 108, sealed_len: 100, raw_len: 60 };
        ix.add_pack(&p1, 4096, &[shared.clone(), only.clone()], 1).unwrap();
        ix.add_pack(&p2, 4096, std::slice::from_ref(&shared), 2).unwrap();
        assert!(ix.mark_lost(&p1, 3).unwrap());
        assert!(!ix.mark_lost(&p1, 4).unwrap(), "already marked");
        assert!(ix.contains(&shared.id).unwrap(), "it still lives in p2");
        assert_eq!(ix.lookup(&shared.id).unwrap().unwrap().pack, p2);
        assert!(!ix.contains(&only.id).unwrap(), "its only home is lost: upload it again");
        assert_eq!(ix.lookup(&only.id).unwrap(), None);
        let mut orphans = Vec::new();
        ix.for_each_orphaned_chunk(|c| {
            orphans.push(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(orphans, vec![only.id]);
        assert_eq!(ix.lost_packs().unwrap(), vec![(p1, 4096)]);
        assert_eq!(ix.packs().unwrap(), vec![(p2, 4096)]);
        // Found again (sync_index reads it back): live again.
        ix.add_pack(&p1, 4096, &[shared, only.clone()], 5).unwrap();
        assert!(ix.contains(&only.id).unwrap());
        assert!(ix.lost_packs().unwrap().is_empty());
    }

    #[test]
    fn summaries_cover_packs_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut ix = ChunkIndex::open(&dir.path().join("index.sqlite")).unwrap();
        let (p1, p2, p3) = (PackId([1u8; 32]), PackId([2u8; 32]), PackId([3u8; 32]));
        let e = PackEntry { id: ChunkId([9u8; 32]), kind: 7, offset: 8, sealed_len: 100, raw_len: 60 };
        ix.add_pack(&p2, 4096, std::slice::from_ref(&e), 1).unwrap();
        ix.add_pack(&p1, 4096, &[], 1).unwrap();
        assert_eq!(ix.pack_entries(&p2).unwrap(), vec![e.clone()], "the kind is kept");
        assert_eq!(ix.unsummarized_packs().unwrap(), vec![(p1, 4096), (p2, 4096)], "in id order");
        // A summary brings p3 and covers all three.
        let s3 = SummarizedPack { id: p3, size: 8192, entries: vec![] };
        ix.add_summary("index/a", &[&s3], &[p1, p2, p3], 2).unwrap();
        assert!(ix.knows_summary("index/a").unwrap() && ix.has_pack(&p3).unwrap());
        assert!(ix.unsummarized_packs().unwrap().is_empty());
        // A second summary of p1 does not take it from the first.
        ix.add_summary("index/b", &[], &[p1], 3).unwrap();
        ix.forget_summary("index/b").unwrap();
        assert!(ix.unsummarized_packs().unwrap().is_empty());
        ix.forget_summary("index/a").unwrap();
        assert_eq!(ix.unsummarized_packs().unwrap().len(), 3);
        assert!(ix.summary_keys().unwrap().is_empty());
        ix.mark_unsummarizable(&p1).unwrap();
        ix.mark_lost(&p2, 4).unwrap();
        assert_eq!(ix.unsummarized_packs().unwrap(), vec![(p3, 8192)], "neither too large nor lost packs");
    }
}
