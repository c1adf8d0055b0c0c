//! `prune`: delete what no kept changeset references, in two phases (mark
//! now, delete in a later run after --grace), safe while other agents back
//! up into the same repository, with no lock.

use anyhow::Result;
use std::process::ExitCode;

use super::output::human_bytes;
use super::{Ctx, GlobalArgs};
use crate::engine::prune::{PruneOptions, PruneReport, prune};

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Say what would be marked and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long marked objects wait before a later run deletes them (such
    /// as 1h, 30m, 2d). `0` deletes what an earlier run marked at once:
    /// only when no backup into this repository is running.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_dur)]
    pub grace: i64,
    /// How much of the repository's pack bytes may stay unused, in percent:
    /// beyond it, the most unused packs are repacked (restic's rule).
    #[arg(long, value_name = "PCT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub max_unused: u64,
    /// Bytes of still-needed chunks a run may copy out of mostly unused
    /// packs into new ones, such as 500M or 10G (default: no bound). Each
    /// repacked pack is downloaded once; 0 repacks nothing.
    #[arg(long, value_name = "SIZE")]
    pub max_repack: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_dur(s: &str) -> Result<i64, String> {
    crate::util::parse_duration(s)
}

/// `500M`, `10G`, `1T`, `4096` (bytes), `64K`: binary units.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?} is not a size: write a number with K, M, G or T, such as 10G")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size: write a number with K, M, G or T, such as 10G"))
}

pub fn run(g: &GlobalArgs, a: PruneArgs) -> Result<ExitCode> {
    let ctx = Ctx::open(g)?;
    let mut opts =
        PruneOptions { dry_run: a.dry_run, grace: a.grace, max_unused_pct: a.max_unused, ..Default::default() };
    if let Some(m) = &a.max_repack {
        opts.max_repack = parse_size(m).map_err(|e| super::UsageError(format!("--max-repack: {e}")))?;
    }
    if let Some(mb) = ctx.settings.file.pack_size_mb {
        opts.pack_target = (mb.clamp(1, 512) as usize) << 20;
    }
    if let Ok(kb) = std::env::var("N2S_PACK_SIZE_KB").map(|v| v.parse::<usize>().unwrap_or(16 << 10)) {
        opts.pack_target = kb.max(4) << 10; // tests: small packs
    }
    let display = super::progress::Display::start(g.progress, g.quiet, "prune");
    let r = prune(&ctx.repo, &ctx.state, &opts);
    drop(display);
    let r = r?;
    if a.json {
        super::output::print_json(&serde_json::to_value(&r)?)?;
    } else {
        print_text(&r);
    }
    super::ok()
}

fn print_text(r: &PruneReport) {
    let would = if r.dry_run { "would be " } else { "" };
    println!(
        "prune{}: {} live changesets reference {} chunks",
        if r.dry_run { " (dry run)" } else { "" },
        r.live_changesets,
        r.referenced_chunks
    );
    println!(
        "  {would}deleted: {} packs, {} segments, {} header revisions ({}) from {} plans past their grace",
        r.deleted.packs,
        r.deleted.segments,
        r.deleted.revisions,
        human_bytes(r.deleted.bytes),
        r.plans_swept
    );
    if r.kept_again.packs + r.kept_again.segments > 0 {
        println!(
            "  kept: {} packs and {} segments that were marked but are referenced again",
            r.kept_again.packs, r.kept_again.segments
        );
    }
    println!(
        "  {would}marked: {} packs, {} segments, {} header revisions ({}), deleted by a prune after the grace period",
        r.marked.packs,
        r.marked.segments,
        r.marked.revisions,
        human_bytes(r.marked.bytes)
    );
    if r.plans_waiting > 0 {
        println!("  {} earlier plans are still within their grace period", r.plans_waiting);
    }
    if r.partly_used_packs > 0 {
        println!(
            "  {} packs are partly used ({} unused in them; {} over --max-unused)",
            r.partly_used_packs,
            human_bytes(r.partly_unused_bytes),
            r.worth_repacking
        );
    }
    if r.repacked_packs > 0 {
        println!(
            "  repacked {} packs: {} of needed chunks copied into {} new packs; the old ones are marked",
            r.repacked_packs,
            human_bytes(r.repacked_bytes),
            r.new_packs
        );
    }
    if r.interrupted_uploads_removed > 0 {
        println!("  removed {} leftovers of interrupted uploads", r.interrupted_uploads_removed);
    }
    if let Some(q) = &r.requests {
        println!("  requests: {}", serde_json::to_string(q).unwrap_or_default());
    }
}
