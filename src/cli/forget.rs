//! `forget`: take changesets out of a dataset's history, by retention
//! policy (flags over the dataset's config section) or by name. The newest
//! changeset and the diff base always stay. The space comes back with prune.

use anyhow::Result;
use std::process::ExitCode;

use super::{Ctx, GlobalArgs, UsageError};
use crate::engine::forget::{ForgetReport, Selection, forget};
use crate::engine::retention::{LocalZone, Policy};
use crate::state::DatasetLock;

#[derive(clap::Args)]
pub struct ForgetArgs {
    /// Snapshots to forget, as `list` names them (or #N). Without any, the
    /// retention policy decides.
    pub snapshots: Vec<String>,
    /// The dataset (default: every dataset of this machine; required with
    /// snapshot names).
    #[arg(long, value_parser = super::dataset_name)]
    pub dataset: Option<String>,
    /// Keep the N newest changesets.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest changeset of each of the N newest hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest changeset of each of the N newest days (local time) that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest changeset of each of the N newest ISO weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest changeset of each of the N newest months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest changeset of each of the N newest years that have one.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every changeset less than DUR (such as 7d, 36h, 2w) older than the newest.
    #[arg(long, value_name = "DUR", value_parser = parse_dur)]
    pub keep_within: Option<i64>,
    /// Show what would go and what would stay, and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the decisions as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_dur(s: &str) -> Result<i64, String> {
    crate::util::parse_duration(s)
}

impl ForgetArgs {
    fn flags_policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
        }
    }
}

pub fn run(g: &GlobalArgs, a: ForgetArgs) -> Result<ExitCode> {
    let flags = a.flags_policy();
    if !a.snapshots.is_empty() && !flags.is_empty() {
        return Err(
            UsageError("forget takes snapshot names or --keep-* rules, not both: run it once for each".into()).into()
        );
    }
    if !a.snapshots.is_empty() && a.dataset.is_none() {
        return Err(UsageError("forget SNAPSHOT... needs --dataset NAME: snapshot names are per dataset".into()).into());
    }
    let ctx = Ctx::open(g)?;
    let mut reports = Vec::new();
    for ds in ctx.selected_datasets(a.dataset.as_deref())? {
        let file_policy = match ctx.settings.file.dataset(&ds) {
            Some(d) => d.policy()?,
            None => Policy::default(),
        };
        let policy = file_policy.overridden_by(&flags);
        let _lock = DatasetLock::acquire(&ctx.state.lock(&ds), &ds)?;
        let mut cat = ctx.existing_catalog(&ds)?;
        let selection = if a.snapshots.is_empty() {
            if policy.is_empty() {
                return Err(UsageError(format!(
                    "no retention rule for dataset {ds}: give --keep-last, --keep-daily (or another --keep-* option), \
                     set keep_* in its [[dataset]] section of the config file, or name the snapshots to forget"
                ))
                .into());
            }
            Selection::Policy(&policy)
        } else {
            Selection::Named(&a.snapshots)
        };
        reports.push(forget(&ctx.repo, &mut cat, selection, &LocalZone, a.dry_run)?);
    }
    if a.json {
        super::output::print_json(&serde_json::json!({ "datasets": reports }))?;
    } else {
        for r in &reports {
            print_text(r);
        }
    }
    super::ok()
}

fn print_text(r: &ForgetReport) {
    let verb = if r.dry_run { "would forget" } else { "forgot" };
    println!("{}: keep {}, {verb} {}", r.dataset, r.keep.len(), r.forget.len());
    for (what, list) in [("keep", &r.keep), (if r.dry_run { "forget?" } else { "forgot" }, &r.forget)] {
        for e in list.iter() {
            println!("  {what:<8} #{:<5} {:<28} {}  {}", e.changeset, e.snapshot, e.time, e.reasons.join(", "));
        }
    }
    if !r.made_full.is_empty() {
        println!("  rewritten as full manifests (nothing kept depends on a forgotten one): {:?}", r.made_full);
    }
    if !r.dry_run && !r.forget.is_empty() {
        println!("  their data stays in the repository until a prune gives the space back");
    }
}
