//! `catalog rebuild`: rebuild local catalogs from the repository and key alone.

use anyhow::Result;
use std::process::ExitCode;

use super::{Ctx, GlobalArgs};

#[derive(clap::Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the local catalogs (and chunk index) from the repository.
    Rebuild {
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(g: &GlobalArgs, c: CatalogCommand) -> Result<ExitCode> {
    let CatalogCommand::Rebuild { dataset, json } = c;
    let ctx = Ctx::open(g)?;
    let r = crate::engine::rebuild::rebuild(&ctx.repo, &ctx.state, dataset.as_deref())?;
    if json {
        super::output::print_json(&serde_json::to_value(&r)?)?;
    } else {
        println!("indexed {} packs", r.packs_indexed);
        for d in &r.datasets {
            println!("rebuilt catalog of {}: {} changesets, {} entries", d.dataset, d.changesets, d.entries);
        }
    }
    super::ok()
}
