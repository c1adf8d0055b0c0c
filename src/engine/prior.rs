//! The catalog's last complete tree, seen through the source's `PriorState`.

use anyhow::Result;

use crate::catalog::{Catalog, FileRow};
use crate::source::{PriorEntry, PriorState};

pub struct CatalogPrior<'a> {
    pub catalog: &'a Catalog,
    /// The last complete changeset, or `None` for a first backup.
    pub at: Option<i64>,
}

fn to_prior(r: FileRow) -> Option<PriorEntry> {
    Some(PriorEntry { path: r.path, meta: r.meta? })
}

impl PriorState for CatalogPrior<'_> {
    fn entry(&self, path: &[u8]) -> Result<Option<PriorEntry>> {
        let Some(n) = self.at else { return Ok(None) };
        Ok(self.catalog.entry_at(n, path)?.and_then(to_prior))
    }

    fn children(&self, dir: &[u8]) -> Result<Vec<PriorEntry>> {
        let Some(n) = self.at else { return Ok(Vec::new()) };
        Ok(self.catalog.children_at(n, dir)?.into_iter().filter_map(to_prior).collect())
    }

    fn for_each_below(&self, dir: &[u8], f: &mut dyn FnMut(PriorEntry) -> Result<()>) -> Result<()> {
        let Some(n) = self.at else { return Ok(()) };
        self.catalog.for_each_in_tree(n, Some(dir), |r| {
            if r.path.as_slice() == dir {
                return Ok(());
            }
            match to_prior(r) {
                Some(e) => f(e),
                None => Ok(()),
            }
        })
    }

    fn hardlinks_of(&self, ino: u64) -> Result<Vec<PriorEntry>> {
        let Some(n) = self.at else { return Ok(Vec::new()) };
        Ok(self.catalog.hardlinks_at(n, ino)?.into_iter().filter_map(to_prior).collect())
    }
}
