//! `repair`: rewrite a lost config object, re-learn the packs, mark lost
//! packs, rebuild missing or damaged catalogs, and name what became
//! unrestorable.

use anyhow::Result;
use std::process::ExitCode;

use super::{Ctx, GlobalArgs};

#[derive(clap::Args)]
pub struct RepairArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: RepairArgs) -> Result<ExitCode> {
    let ctx = Ctx::open(g)?;
    let r = crate::engine::repair::repair(&ctx.repo, &ctx.state)?;
    if a.json {
        super::output::print_json(&serde_json::to_value(&r)?)?;
    } else {
        if let Some(p) = &r.config_rewritten {
            println!("rewrote the repository config objects ({p})");
        }
        println!(
            "indexed {} packs; {} packs newly marked lost; rebuilt {} catalogs",
            r.packs_indexed,
            r.packs_marked_lost,
            r.catalogs_rebuilt.len()
        );
        for d in &r.damaged_changesets {
            println!("damaged, not restorable: {d}");
        }
        for u in r.unrestorable.items() {
            println!("unrestorable (its content is in no pack): {u}");
        }
    }
    let bad = r.unrestorable.total() + r.damaged_changesets.len() as u64;
    if bad > 0 {
        anyhow::bail!(
            "{bad} file versions or changesets cannot be restored (listed above); the next backup stores again the content of unchanged files"
        );
    }
    super::ok()
}
