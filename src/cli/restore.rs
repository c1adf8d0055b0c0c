//! `restore`: bring back a snapshot, or some paths of it, into a directory.

use anyhow::Result;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use super::output::human_bytes;
use super::{Ctx, GlobalArgs, UsageError, find_changeset};
use crate::engine::restore::{RestoreOptions, restore};

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// Snapshot name (as in `list`), `latest`, or `#N` for changeset N.
    pub snapshot: String,
    /// With --stdout: the file of the snapshot to write to stdout.
    #[arg(requires = "stdout", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The dataset the snapshot belongs to (needed when two datasets have one snapshot name).
    #[arg(long, value_parser = super::dataset_name)]
    pub dataset: Option<String>,
    /// Directory to restore into (created if missing; must be empty unless --overwrite).
    #[arg(long, required_unless_present = "stdout")]
    pub target: Option<PathBuf>,
    /// Write one regular file of the snapshot (FILE) to stdout instead
    /// (`restore --stdout latest dump.sql | psql`).
    #[arg(long, conflicts_with_all = ["target", "paths", "overwrite", "json"], requires = "file")]
    pub stdout: bool,
    /// Restore only this path of the snapshot (repeatable).
    #[arg(long = "path", value_name = "P")]
    pub paths: Vec<PathBuf>,
    /// Replace files that already exist in the target.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Fetch packs by their CID from this IPFS HTTP gateway
    /// (http://HOST:PORT), the rest from the ipfs:// repository itself.
    #[arg(long, env = "N2S_IPFS_GATEWAY", value_name = "URL")]
    pub ipfs_gateway: Option<String>,
}

pub fn run(g: &GlobalArgs, a: RestoreArgs) -> Result<ExitCode> {
    let mut ctx = Ctx::open(g)?;
    let dataset = match a.dataset.clone() {
        Some(d) => d,
        None => {
            let known = ctx.known_datasets()?;
            match known.as_slice() {
                [one] => one.clone(),
                _ => return Err(UsageError("restore needs --dataset NAME".into()).into()),
            }
        }
    };
    if !ctx.state.catalog(&dataset).exists() {
        // Disaster recovery: only the repository and the key are left.
        log::info!("no local catalog for {dataset}: rebuilding it from the repository");
        crate::engine::rebuild::rebuild(
            &ctx.repo,
            &ctx.state,
            Some(&dataset),
            crate::engine::rebuild::RebuildMode::Salvage,
        )?;
    }
    let cat = ctx.existing_catalog(&dataset)?;
    let cs = find_changeset(&cat, &a.snapshot)?;
    if let Some(file) = &a.file {
        let b = file.as_os_str().as_bytes();
        let rel = b.strip_prefix(b"/").unwrap_or(b);
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        return match crate::engine::restore::stream_file(&ctx.repo, &cat, &ctx.state.index_db(), &cs, rel, &mut out) {
            Ok(n) => {
                log::info!("{}: {} of {} written to stdout", cs.snapshot, human_bytes(n), file.display());
                super::ok()
            }
            // The reader went away (`| head`): end quietly, as cat does.
            Err(e)
                if e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                }) =>
            {
                Ok(ExitCode::from(141))
            }
            Err(e) => Err(e.context("restore --stdout is incomplete")),
        };
    }
    let target = a.target.clone().ok_or_else(|| UsageError("restore needs --target DIR, or --stdout FILE".into()))?;
    if let Some(gw) = &a.ipfs_gateway {
        through_gateway(&mut ctx, gw)?;
    }
    let paths = a
        .paths
        .iter()
        .map(|p| {
            let b = p.as_os_str().as_bytes();
            let b = b.strip_prefix(b"/").unwrap_or(b);
            b.strip_suffix(b"/").unwrap_or(b).to_vec()
        })
        .collect();
    // Workers fetch in parallel: on a remote backend (or when asked) as
    // many as `connections`, else one per core (local reads are cheap and
    // the work is opening and writing).
    let workers = if ctx.repo.backend.is_remote() || ctx.settings.connections.is_some() {
        ctx.settings.connections_for(&*ctx.repo.backend)
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get()).max(2)
    };
    let opts = RestoreOptions { target: target.clone(), paths, overwrite: a.overwrite, workers };
    let display = super::progress::Display::start(g.progress, g.quiet, "restore");
    let report = restore(&ctx.repo, &cat, &ctx.state.index_db(), &cs, &opts);
    drop(display);
    let report = report?;
    for w in report.warnings.iter().take(20) {
        log::warn!("{w}");
    }
    if report.warnings_count > 20 {
        log::warn!("... and {} more warnings (all of them in --json output, up to 1000)", report.warnings_count - 20);
    }
    if a.json {
        super::output::print_json(&serde_json::json!({
            "dataset": dataset, "snapshot": cs.snapshot, "changeset": cs.id,
            "target": target, "report": report, "requests": ctx.repo.backend.requests(),
        }))?;
    } else {
        println!(
            "restored {dataset} snapshot {} into {}: {} files ({}), {} directories, {} hardlinks, {} other",
            cs.snapshot,
            target.display(),
            report.files,
            human_bytes(report.bytes),
            report.dirs,
            report.links,
            report.other
        );
    }
    if report.failed_count > 0 {
        for f in &report.failed {
            log::error!("not restored: {f}");
        }
        let unlisted = report.failed_count - report.failed.len() as u64;
        if unlisted > 0 {
            log::error!("... and {unlisted} more paths not restored (not listed)");
        }
        anyhow::bail!(
            "{} paths could not be restored (listed above); everything else was; run `n2s-agent verify --level full` to check the repository",
            report.failed_count
        );
    }
    super::ok()
}

/// `--ipfs-gateway`: packs are read by CID from the gateway. The CIDs are
/// the index's (recorded at upload); a pack without one (a rebuilt index)
/// asks the repository for it once, and keeps it.
fn through_gateway(ctx: &mut Ctx, gateway: &str) -> Result<()> {
    #[cfg(feature = "ipfs")]
    {
        let mut index = crate::catalog::index::ChunkIndex::open(&ctx.state.index_db())?;
        let mut cids: std::collections::HashMap<String, String> =
            index.content_addresses()?.into_iter().map(|(p, c)| (p.object_key(), c)).collect();
        for (pack, _) in index.packs()? {
            let key = pack.object_key();
            if cids.contains_key(&key) {
                continue;
            }
            match ctx.repo.backend.content_address(&key) {
                Ok(Some(cid)) => {
                    index.set_content_address(&pack, &cid)?;
                    cids.insert(key, cid);
                }
                Ok(None) => anyhow::bail!(
                    "--ipfs-gateway: {} has no CIDs (it is not an ipfs:// repository): drop --ipfs-gateway",
                    ctx.repo.backend.location()
                ),
                Err(e) => log::warn!("pack {key}: no CID ({e}): it is read from the repository"),
            }
        }
        let repo = std::sync::Arc::get_mut(&mut ctx.repo)
            .ok_or_else(|| anyhow::anyhow!("internal error: the repository is shared before the restore"))?;
        repo.backend =
            std::sync::Arc::new(crate::backend::ipfs::GatewayReads::new(repo.backend.clone(), gateway, cids)?);
        log::info!("packs come from the IPFS gateway {gateway}, by CID");
        Ok(())
    }
    #[cfg(not(feature = "ipfs"))]
    {
        let _ = (ctx, gateway);
        Err(UsageError("--ipfs-gateway: this n2s-agent was built without the `ipfs` feature".into()).into())
    }
}
