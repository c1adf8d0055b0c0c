//! `status`: per dataset, what was seen, what is backed up, what is unfinished.

use anyhow::Result;
use std::process::ExitCode;

use super::output::{human_bytes, time_or_dash};
use super::{Ctx, GlobalArgs};
use crate::catalog::index::ChunkIndex;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Only this dataset (default: every dataset).
    #[arg(long, value_parser = super::dataset_name)]
    pub dataset: Option<String>,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: StatusArgs) -> Result<ExitCode> {
    let ctx = Ctx::open(g)?;
    let index = ChunkIndex::open(&ctx.state.index_db())?;
    let packs = index.packs()?;
    let pack_bytes: u64 = packs.iter().map(|(_, s)| s).sum();
    let mut datasets = Vec::new();
    for ds in ctx.selected_datasets(a.dataset.as_deref())? {
        let cat = ctx.existing_catalog(&ds)?;
        let all = cat.changesets()?;
        let last_seen = all.last();
        let last_done = cat.latest_complete()?;
        let open = cat.incomplete()?;
        let pending_files = match &open {
            Some(o) => cat.count_pending(o.id)?,
            None => 0,
        };
        let holds = held_snapshots(&ctx, &ds);
        // The same figures as the metrics textfile.
        let metrics = super::metrics::figures(&ctx.state, &ds, crate::util::now())?;
        datasets.push(serde_json::json!({
            "dataset": ds,
            "holds": holds,
            "changesets": all.len(),
            "last_seen": last_seen.map(|c| c.snapshot.clone()),
            "last_backed_up": last_done.as_ref().map(|c| c.snapshot.clone()),
            "last_confirmed_at": last_done.as_ref().and_then(|c| c.completed_at),
            "metrics": metrics,
            "unfinished": open.as_ref().map(|o| serde_json::json!({
                "changeset": o.id, "snapshot": o.snapshot, "status": o.status.as_str(), "files_pending": pending_files,
            })),
        }));
    }
    let doc = serde_json::json!({
        "repository": { "location": ctx.repo.backend.location(), "id": ctx.repo.config.id,
                        "packs": packs.len(), "pack_bytes": pack_bytes, "chunks": index.chunk_count()? },
        "datasets": datasets,
    });
    if a.json {
        super::output::print_json(&doc)?;
        return super::ok();
    }
    println!(
        "repository {} (id {}): {} packs, {}",
        ctx.repo.backend.location(),
        ctx.repo.config.id,
        packs.len(),
        human_bytes(pack_bytes)
    );
    for d in doc["datasets"].as_array().into_iter().flatten() {
        println!(
            "{}: last backed up {} (confirmed {}), last seen {}, {} changesets",
            d["dataset"].as_str().unwrap_or(""),
            d["last_backed_up"].as_str().unwrap_or("never"),
            time_or_dash(d["last_confirmed_at"].as_i64()),
            d["last_seen"].as_str().unwrap_or("-"),
            d["changesets"]
        );
        if let Some(h) = d["holds"].as_array().filter(|h| !h.is_empty()) {
            let names: Vec<&str> = h.iter().filter_map(|v| v.as_str()).collect();
            println!("  held snapshots (diff base, kept from pruners): {}", names.join(", "));
        }
        if let Some(u) = d["unfinished"].as_object() {
            println!(
                "  unfinished: changeset {} (snapshot {}) is {}, {} files pending; the next backup resumes it",
                u["changeset"],
                u["snapshot"].as_str().unwrap_or(""),
                u["status"].as_str().unwrap_or(""),
                u["files_pending"]
            );
        }
    }
    super::ok()
}

/// For a ZFS dataset of the config file: its snapshots holding our tag.
#[cfg(feature = "zfs")]
fn held_snapshots(ctx: &Ctx, dataset: &str) -> Option<Vec<String>> {
    let d = ctx.settings.file.dataset(dataset)?;
    if d.source != super::config::SourceKind::Zfs {
        return None;
    }
    let zfs_dataset = d.zfs_dataset.clone().unwrap_or_else(|| d.name.clone());
    match crate::source::zfs::held_snapshots(&zfs_dataset) {
        Ok(h) => Some(h),
        Err(e) => {
            log::warn!("{dataset}: cannot list holds: {e:#}");
            None
        }
    }
}

#[cfg(not(feature = "zfs"))]
fn held_snapshots(_ctx: &Ctx, _dataset: &str) -> Option<Vec<String>> {
    None
}
