//! `list`: the changesets backed up, with status, counts, bytes and times.

use anyhow::Result;
use std::process::ExitCode;

use super::output::{human_bytes, time_or_dash};
use super::{Ctx, GlobalArgs};

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only this dataset (default: every dataset in the catalogs).
    #[arg(long, value_parser = super::dataset_name)]
    pub dataset: Option<String>,
    /// Only changesets with this tag (`backup --tag`; repeatable: all must match).
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Vec<String>,
    /// Print the changesets as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: ListArgs) -> Result<ExitCode> {
    let ctx = Ctx::open(g)?;
    let mut rows = Vec::new();
    for ds in ctx.selected_datasets(a.dataset.as_deref())? {
        let cat = ctx.existing_catalog(&ds)?;
        for c in cat.changesets()? {
            rows.push(serde_json::json!({
                "dataset": ds,
                "changeset": c.id,
                "snapshot": c.snapshot,
                "identity": serde_json::from_str::<serde_json::Value>(&c.identity).unwrap_or_default(),
                "source": c.source,
                "method": c.method,
                "kind": c.kind,
                "status": c.status.as_str(),
                "added": c.n_added,
                "modified": c.n_modified,
                "metadata": c.n_metadata,
                "removed": c.n_removed,
                "failed": c.n_failed,
                "bytes_changed": c.bytes_changed,
                "bytes_uploaded": c.bytes_uploaded,
                "started_at": c.started_at,
                "confirmed_at": c.completed_at,
                "manifest": c.manifest_key,
            }));
        }
        // Attempts that ended without a manifest: shown, never restorable.
        for f in cat.failed_changesets()? {
            rows.push(serde_json::json!({
                "dataset": ds,
                "changeset": serde_json::Value::Null,
                "attempted_number": f.number,
                "snapshot": f.snapshot,
                "identity": serde_json::from_str::<serde_json::Value>(&f.identity).unwrap_or_default(),
                "source": f.source,
                "method": format!("abandoned: {}", f.reason),
                "kind": serde_json::Value::Null,
                "status": "failed",
                "added": 0, "modified": 0, "metadata": 0, "removed": 0, "failed": f.files,
                "bytes_changed": 0,
                "bytes_uploaded": f.bytes_uploaded,
                "started_at": f.started_at,
                "confirmed_at": serde_json::Value::Null,
                "failed_at": f.failed_at,
                "manifest": serde_json::Value::Null,
            }));
        }
        // Forgotten by `forget`: their number stays taken.
        for f in cat.forgotten_changesets()? {
            rows.push(serde_json::json!({
                "dataset": ds,
                "changeset": f.number,
                "snapshot": f.snapshot,
                "identity": serde_json::from_str::<serde_json::Value>(&f.identity).unwrap_or_default(),
                "source": f.source,
                "method": if f.done { "forgotten" } else { "forgotten (the repository is told on the next forget or backup)" },
                "kind": serde_json::Value::Null,
                "status": "forgotten",
                "added": 0, "modified": 0, "metadata": 0, "removed": 0, "failed": 0,
                "bytes_changed": 0,
                "bytes_uploaded": 0,
                "started_at": f.started_at,
                "confirmed_at": f.completed_at,
                "forgotten_at": f.forgotten_at,
                "manifest": serde_json::Value::Null,
            }));
        }
    }
    if !a.tag.is_empty() {
        let wanted = a
            .tag
            .iter()
            .map(|t| crate::source::stream::parse_tag(t).map_err(|e| super::UsageError(format!("--tag: {e:#}"))))
            .collect::<Result<Vec<_>, _>>()?;
        rows.retain(|r| {
            wanted.iter().all(|(k, v)| {
                r["identity"][format!("{}{k}", crate::source::stream::TAG_PREFIX)].as_str() == Some(v.as_str())
            })
        });
    }
    if a.json {
        return super::output::print_json(&serde_json::json!({ "changesets": rows })).map(|()| ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no backups yet");
        return super::ok();
    }
    println!(
        "{:<16} {:>4} {:<24} {:<10} {:<6} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10}  {:<20}  method",
        "DATASET",
        "ID",
        "SNAPSHOT",
        "STATUS",
        "KIND",
        "ADDED",
        "MODIFIED",
        "META",
        "REMOVED",
        "FAILED",
        "CHANGED",
        "UPLOADED",
        "CONFIRMED"
    );
    for r in &rows {
        println!(
            "{:<16} {:>4} {:<24} {:<10} {:<6} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10}  {:<20}  {}",
            r["dataset"].as_str().unwrap_or(""),
            r["changeset"].as_i64().map_or("-".to_string(), |n| n.to_string()),
            r["snapshot"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or("-"),
            r["added"].as_u64().unwrap_or(0),
            r["modified"].as_u64().unwrap_or(0),
            r["metadata"].as_u64().unwrap_or(0),
            r["removed"].as_u64().unwrap_or(0),
            r["failed"].as_u64().unwrap_or(0),
            human_bytes(r["bytes_changed"].as_u64().unwrap_or(0)),
            human_bytes(r["bytes_uploaded"].as_u64().unwrap_or(0)),
            time_or_dash(r["confirmed_at"].as_i64()),
            r["method"].as_str().unwrap_or(""),
        );
    }
    super::ok()
}
