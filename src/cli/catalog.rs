//! `catalog rebuild`: rebuild local catalogs from the repository and key alone.

use anyhow::Result;
use std::process::ExitCode;

use super::{Ctx, GlobalArgs};
use crate::engine::rebuild::RebuildMode;

#[derive(clap::Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the local catalogs (and chunk index) from the repository.
    Rebuild {
        #[arg(long)]
        dataset: Option<String>,
        /// When a changeset's manifest is missing or damaged: rebuild every
        /// changeset up to it, mark the damaged ones (refused by name), and
        /// keep what a later full checkpoint makes whole. Without it the
        /// rebuild refuses, naming the damage.
        #[arg(long)]
        salvage: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(g: &GlobalArgs, c: CatalogCommand) -> Result<ExitCode> {
    let CatalogCommand::Rebuild { dataset, salvage, json } = c;
    let ctx = Ctx::open(g)?;
    let mode = if salvage { RebuildMode::Salvage } else { RebuildMode::Strict };
    let display = super::progress::Display::start(g.progress, g.quiet, "catalog rebuild");
    let r = crate::engine::rebuild::rebuild(&ctx.repo, &ctx.state, dataset.as_deref(), mode);
    drop(display);
    let r = r?;
    if json {
        let mut v = serde_json::to_value(&r)?;
        // Every request the rebuild made, manifests and segments included.
        v["requests"] = serde_json::to_value(ctx.repo.backend.requests())?;
        super::output::print_json(&v)?;
    } else {
        println!("indexed {} packs", r.packs_indexed);
        for d in &r.datasets {
            println!("rebuilt catalog of {}: {} changesets, {} entries", d.dataset, d.changesets, d.entries);
            for dmg in &d.damaged {
                println!("  damaged, not restorable: {dmg}");
            }
        }
    }
    let damaged: usize = r.datasets.iter().map(|d| d.damaged.len()).sum();
    if damaged > 0 {
        anyhow::bail!(
            "{damaged} changesets are damaged and cannot be restored (listed above); every other changeset can"
        );
    }
    super::ok()
}
