//! `abandon`: end a changeset that can never finish. Its snapshot is
//! recorded as failed (`list` shows it), its number is freed, and the next
//! backup starts from the last complete changeset. Packs it uploaded stay;
//! later backups reuse them.

use anyhow::Result;
use std::process::ExitCode;

use super::{Ctx, GlobalArgs};

#[derive(clap::Args)]
pub struct AbandonArgs {
    /// The snapshot of the unfinished changeset (as in `list`), or `#N`.
    pub snapshot: String,
    /// The dataset whose changeset to end.
    #[arg(long, value_parser = super::dataset_name)]
    pub dataset: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: AbandonArgs) -> Result<ExitCode> {
    let ctx = Ctx::open(g)?;
    let f = crate::engine::backup::abandon_by_name(&ctx.state, &a.dataset, &a.snapshot)?;
    if a.json {
        super::output::print_json(&serde_json::to_value(&f)?)?;
    } else {
        println!(
            "{}: changeset {} (snapshot {}) abandoned; the next backup starts from the last complete changeset",
            a.dataset, f.number, f.snapshot
        );
    }
    super::ok()
}
