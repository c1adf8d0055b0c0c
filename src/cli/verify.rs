//! `verify`: check the repository (quick, standard or full).

use anyhow::Result;
use std::process::ExitCode;

use super::{Ctx, GlobalArgs};
use crate::engine::verify::{Level, verify};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// quick: objects present and indexes consistent; standard: also read
    /// every pack and check its hash; full: also decrypt and re-hash every chunk.
    #[arg(long, value_enum, default_value = "standard")]
    pub level: Level,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: VerifyArgs) -> Result<ExitCode> {
    let ctx = Ctx::open(g)?;
    let display = super::progress::Display::start(g.progress, g.quiet, "verify");
    let r = verify(&ctx.repo, &ctx.state, a.level);
    drop(display);
    let r = r?;
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["requests"] = serde_json::to_value(ctx.repo.backend.requests())?;
        super::output::print_json(&v)?;
    } else {
        println!(
            "verify {:?}: {} packs ({} read), {} chunks checked, {} manifests, {} segments, {} referenced chunks: {}",
            a.level,
            r.packs,
            r.packs_read,
            r.chunks_checked,
            r.manifests,
            r.segments,
            r.referenced_chunks,
            if r.ok { "no problems" } else { "PROBLEMS FOUND" }
        );
    }
    if !r.ok {
        for p in &r.problems {
            log::error!("problem: {p}");
        }
        anyhow::bail!("verify found {} problems (listed above)", r.problems.len());
    }
    super::ok()
}
