//! `ls`: the tree as of a snapshot.

use anyhow::Result;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use super::output::{mode_string, path_json};
use super::{Ctx, GlobalArgs, UsageError, find_changeset};
use crate::model::display_path;

#[derive(clap::Args)]
pub struct LsArgs {
    /// Snapshot name, `latest`, or `#N`.
    pub snapshot: String,
    /// Only this path and what lies below it.
    pub path: Option<PathBuf>,
    /// The dataset the snapshot belongs to (needed when two datasets have one snapshot name).
    #[arg(long, value_parser = super::dataset_name)]
    pub dataset: Option<String>,
    /// Print the entries as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: LsArgs) -> Result<ExitCode> {
    let ctx = Ctx::open(g)?;
    let dataset = a.dataset.clone().ok_or_else(|| UsageError("ls needs --dataset NAME".into()))?;
    let cat = ctx.existing_catalog(&dataset)?;
    let cs = find_changeset(&cat, &a.snapshot)?;
    let prefix = a.path.as_ref().map(|p| {
        let b = p.as_os_str().as_bytes();
        let b = b.strip_prefix(b"/").unwrap_or(b);
        b.strip_suffix(b"/").unwrap_or(b).to_vec()
    });
    let mut entries = Vec::new();
    cat.for_each_in_tree(cs.id, prefix.as_deref(), |r| {
        let Some(m) = r.meta else { return Ok(()) };
        if a.json {
            entries.push(serde_json::json!({
                "path": path_json(&r.path),
                "type": m.ftype.name(),
                "mode": format!("{:04o}", m.mode),
                "uid": m.uid, "gid": m.gid, "size": m.size,
                "mtime_ns": m.mtime_ns,
                "symlink_target": m.symlink_target.as_deref().map(path_json),
                "hash": r.file_hash.map(hex::encode),
                "changeset": r.changeset,
            }));
        } else {
            let mut line = format!(
                "{} {:>6} {:>6} {:>12} {} /{}",
                mode_string(&m),
                m.uid,
                m.gid,
                m.size,
                crate::util::utc_timestamp(m.mtime_ns.div_euclid(1_000_000_000)),
                display_path(&r.path)
            );
            if let Some(t) = &m.symlink_target {
                line.push_str(&format!(" -> {}", display_path(t)));
            }
            println!("{line}");
        }
        Ok(())
    })?;
    if a.json {
        super::output::print_json(&serde_json::json!({
            "dataset": dataset, "snapshot": cs.snapshot, "changeset": cs.id, "entries": entries
        }))?;
    }
    super::ok()
}
