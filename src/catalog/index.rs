//! The repository-wide chunk → pack index: a cache in the state directory,
//! rebuildable from the packs' own sealed indexes at any time.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

use super::schema;
use crate::core::pack::{PackEntry, PackId};
use crate::model::ChunkId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    pub offset: u64,
    pub sealed_len: u32,
    pub raw_len: u32,
}

pub struct ChunkIndex {
    conn: Connection,
}

impl ChunkIndex {
    pub fn open(path: &Path) -> Result<ChunkIndex> {
        let mut conn = schema::open_db(path)?;
        schema::migrate(&mut conn, schema::INDEX_MIGRATIONS, "chunk index")?;
        Ok(ChunkIndex { conn })
    }

    pub fn contains(&self, id: &ChunkId) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
        Ok(st.exists(params![&id.0[..]])?)
    }

    pub fn lookup(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        let mut st = self.conn.prepare_cached("SELECT pack, offset, sealed_len, raw_len FROM chunks WHERE id = ?1")?;
        Ok(st
            .query_row(params![&id.0[..]], |r| {
                let pack: Vec<u8> = r.get(0)?;
                Ok((pack, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
            })
            .optional()?
            .and_then(|(pack, off, sl, rl)| {
                Some(ChunkLocation {
                    pack: PackId(pack.try_into().ok()?),
                    offset: off as u64,
                    sealed_len: sl as u32,
                    raw_len: rl as u32,
                })
            }))
    }

    pub fn has_pack(&self, id: &PackId) -> Result<bool> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM packs WHERE id = ?1")?;
        Ok(st.exists(params![&id.0[..]])?)
    }

    /// Record a pack confirmed stored, with every chunk it holds, in one
    /// transaction. A chunk already indexed in another pack keeps its first home.
    pub fn add_pack(&mut self, id: &PackId, size: u64, entries: &[PackEntry], now: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO packs (id, size, confirmed_at) VALUES (?1, ?2, ?3)",
            params![&id.0[..], size as i64, now],
        )?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO chunks (id, pack, offset, sealed_len, raw_len) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in entries {
                st.execute(params![&e.id.0[..], &id.0[..], e.offset as i64, e.sealed_len as i64, e.raw_len as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every pack the index knows, with its size.
    pub fn packs(&self) -> Result<Vec<(PackId, u64)>> {
        let mut st = self.conn.prepare("SELECT id, size FROM packs")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, size) = row?;
            if let Ok(arr) = id.try_into() {
                out.push((PackId(arr), size as u64));
            }
        }
        Ok(out)
    }

    pub fn chunk_count(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT count(*) FROM chunks", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Forget a pack and its chunks (it was found missing or corrupt).
    pub fn forget_pack(&mut self, id: &PackId) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM chunks WHERE pack = ?1", params![&id.0[..]])?;
        tx.execute("DELETE FROM packs WHERE id = ?1", params![&id.0[..]])?;
        tx.commit()?;
        Ok(())
    }
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
        ix.add_pack(&PackId([3u8; 32]), 4096, std::slice::from_ref(&e), 2).unwrap();
        assert_eq!(ix.lookup(&e.id).unwrap().unwrap().pack, pack);
        ix.forget_pack(&pack).unwrap();
        assert!(!ix.contains(&e.id).unwrap());
        assert_eq!(ix.packs().unwrap().len(), 1);
    }
}
