//! `search`: which snapshots hold paths that match, and their versions.

use anyhow::Result;
use std::process::ExitCode;

use super::output::path_json;
use super::{Ctx, GlobalArgs};
use crate::model::display_path;

#[derive(clap::Args)]
pub struct SearchArgs {
    /// A glob (`*.conf`, `home/*/notes`) or a plain substring.
    pub pattern: String,
    /// Only this dataset (default: every dataset).
    #[arg(long, value_parser = super::dataset_name)]
    pub dataset: Option<String>,
    /// At most this many versions per dataset.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Print the matches as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: SearchArgs) -> Result<ExitCode> {
    let ctx = Ctx::open(g)?;
    let mut hits = Vec::new();
    for ds in ctx.selected_datasets(a.dataset.as_deref())? {
        let cat = ctx.existing_catalog(&ds)?;
        for (row, cs) in cat.search(&a.pattern, a.limit)? {
            let m = row.meta.as_ref();
            if a.json {
                hits.push(serde_json::json!({
                    "dataset": ds,
                    "path": path_json(&row.path),
                    "snapshot": cs.snapshot,
                    "changeset": cs.id,
                    "change": row.kind.name(),
                    "type": m.map(|m| m.ftype.name()),
                    "size": m.map(|m| m.size),
                    "mtime_ns": m.map(|m| m.mtime_ns),
                    "hash": row.file_hash.map(hex::encode),
                    "confirmed_at": row.confirmed_at,
                }));
            } else {
                println!(
                    "{ds}\t/{}\t{}\t{}\t{}\t{}",
                    display_path(&row.path),
                    cs.snapshot,
                    row.kind.name(),
                    m.map_or("-".to_string(), |m| m.size.to_string()),
                    row.file_hash.map_or("-".to_string(), |h| hex::encode(&h[..8]))
                );
            }
        }
    }
    if a.json {
        super::output::print_json(&serde_json::json!({ "pattern": a.pattern, "matches": hits }))?;
    }
    super::ok()
}
