//! `backup`: back up every new snapshot of the dataset(s), oldest first.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::config::{DatasetConfig, SourceKind};
use super::output::human_bytes;
use super::{Ctx, GlobalArgs, UsageError};
use crate::catalog::Catalog;
use crate::engine::backup::{BackupOptions, ChangesetSummary, backup_dataset};
use crate::source::ChangeSource;
use crate::source::btrfs::BtrfsSource;
use crate::source::exclude::Excludes;
use crate::source::stream::{StreamFrom, StreamInput, StreamSource, parse_tag, spool};
use crate::source::walk::WalkSource;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The dataset to back up (default: every dataset of the config file).
    #[arg(long, value_parser = super::dataset_name)]
    pub dataset: Option<String>,
    /// Where the dataset's changes come from.
    #[arg(long, value_enum)]
    pub source: Option<SourceKind>,
    /// The mounted dataset or subvolume, or the directory for `walk`.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// For zfs: the ZFS dataset POOL/FS (default: the dataset name).
    #[arg(long)]
    pub zfs_dataset: Option<String>,
    /// For btrfs: where the read-only snapshots live.
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
    /// For walk: the label of this run (default: a UTC timestamp). With
    /// --take-snapshot: the name of the snapshot to make.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// For btrfs: make a read-only snapshot in the snapshot directory first
    /// (for hosts without snapper or btrbk), then back up.
    #[arg(long)]
    pub take_snapshot: bool,
    /// Afterwards, forget by each dataset's keep_* settings (the config
    /// file) and prune (default grace).
    #[arg(long)]
    pub prune: bool,
    /// Back up stdin as one file of a new changeset of --dataset (a stream
    /// such as `pg_dump` output); its name is the --stdin-name without `=`.
    #[arg(long, help_heading = "Streams")]
    pub stdin: bool,
    /// The file name of the stdin stream (default `stdin`), or NAME=PATH
    /// for a named pipe or file read to its end (repeatable).
    #[arg(long, value_name = "NAME[=PATH]", help_heading = "Streams")]
    pub stdin_name: Vec<String>,
    /// NAME=CMD: run `sh -c CMD` and store its stdout as NAME; a non-zero
    /// exit stores nothing (repeatable).
    #[arg(long, value_name = "NAME=CMD", help_heading = "Streams")]
    pub from_command: Vec<String>,
    /// key=value stored with the changeset of the streams (repeatable;
    /// `list --tag key=value` finds it).
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Streams")]
    pub tag: Vec<String>,
    /// Leave out paths this glob names (repeatable; added to the
    /// dataset's `exclude`): `*.tmp` matches a name at any depth,
    /// `/var/cache` or `home/*/Downloads` a path from the dataset's root.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Leave out the contents of directories that hold a CACHEDIR.TAG.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The streams this run backs up (`--stdin`, `--stdin-name`, `--from-command`).
fn stream_inputs(a: &BackupArgs) -> Result<Vec<StreamInput>> {
    let mut inputs = Vec::new();
    let mut stdin_name = None;
    for s in &a.stdin_name {
        match s.split_once('=') {
            Some((name, path)) => {
                inputs.push(StreamInput { name: name.to_string(), from: StreamFrom::Path(PathBuf::from(path)) })
            }
            None if !a.stdin => {
                return Err(UsageError(format!(
                    "--stdin-name {s} names the stdin stream: add --stdin, or give {s}=PATH for a named pipe"
                ))
                .into());
            }
            None if stdin_name.is_some() => {
                return Err(UsageError("only one --stdin-name without =PATH: stdin is one stream".into()).into());
            }
            None => stdin_name = Some(s.clone()),
        }
    }
    if a.stdin {
        inputs.insert(0, StreamInput { name: stdin_name.unwrap_or_else(|| "stdin".into()), from: StreamFrom::Stdin });
    }
    for c in &a.from_command {
        let (name, cmd) =
            c.split_once('=').ok_or_else(|| UsageError(format!("--from-command {c:?} is not NAME=CMD")))?;
        inputs.push(StreamInput { name: name.to_string(), from: StreamFrom::Command(cmd.to_string()) });
    }
    if inputs.is_empty() && !a.tag.is_empty() {
        return Err(
            UsageError("--tag goes with streams (--stdin, --stdin-name NAME=PATH, --from-command)".into()).into()
        );
    }
    if !inputs.is_empty() && (a.dataset.is_none() || a.source.is_some() || a.path.is_some() || a.take_snapshot) {
        return Err(UsageError(
            "streams need --dataset NAME, and no --source, --path or --take-snapshot: the streams are the dataset's content".into(),
        )
        .into());
    }
    Ok(inputs)
}

fn dataset_specs(ctx: &Ctx, a: &BackupArgs) -> Result<Vec<DatasetConfig>> {
    let file = &ctx.settings.file;
    match &a.dataset {
        None => {
            if a.source.is_some() || a.path.is_some() {
                return Err(UsageError("--source and --path need --dataset NAME".into()).into());
            }
            if file.dataset.is_empty() {
                return Err(UsageError(
                    "no dataset to back up: pass --dataset NAME --source walk --path DIR, or add [[dataset]] tables to the config file".into(),
                )
                .into());
            }
            Ok(file.dataset.clone())
        }
        Some(name) => {
            let base = file.dataset(name).cloned();
            let source = a.source.or(base.as_ref().map(|b| b.source)).ok_or_else(|| {
                UsageError(format!("dataset {name:?} is not in the config file: give its --source and --path"))
            })?;
            // Flags over the dataset's section; its other settings stay.
            let base = base.unwrap_or_default();
            Ok(vec![DatasetConfig {
                name: name.clone(),
                source,
                path: a.path.clone().or(base.path.clone()),
                zfs_dataset: a.zfs_dataset.clone().or(base.zfs_dataset.clone()),
                snapshot_dir: a.snapshot_dir.clone().or(base.snapshot_dir.clone()),
                ..base
            }])
        }
    }
}

/// A label for a walk run that no earlier run of the dataset used.
fn walk_label(ctx: &Ctx, dataset: &str, given: Option<&str>) -> Result<String> {
    if let Some(l) = given {
        return Ok(l.to_string());
    }
    let base = crate::util::utc_timestamp(crate::util::now());
    let path = ctx.state.catalog(dataset);
    if !path.exists() {
        return Ok(base);
    }
    let cat = Catalog::open(&path, dataset)?;
    let mut label = base.clone();
    let mut n = 2;
    while cat.changeset_by_snapshot(&label)?.is_some() {
        label = format!("{base}-{n}");
        n += 1;
    }
    Ok(label)
}

fn make_source(
    ctx: &Ctx,
    d: &DatasetConfig,
    label: Option<&str>,
    excludes: &Arc<Excludes>,
) -> Result<Box<dyn ChangeSource>> {
    let label = match d.source {
        SourceKind::Walk => walk_label(ctx, &d.name, label)?,
        _ => String::new(),
    };
    source_for(d, label, excludes)
}

/// The source of a dataset's section; `label` names a walk's run. It
/// reads nothing of the state directory (`config check` uses it too).
pub(super) fn source_for(d: &DatasetConfig, label: String, excludes: &Arc<Excludes>) -> Result<Box<dyn ChangeSource>> {
    match d.source {
        SourceKind::Walk => {
            let path = d.path.clone().ok_or_else(|| {
                UsageError(format!(
                    "dataset {:?}: a walk source needs --path DIR (or `path` in its config table)",
                    d.name
                ))
            })?;
            if !path.is_absolute() {
                return Err(
                    UsageError(format!("dataset {:?}: --path {} must be absolute", d.name, path.display())).into()
                );
            }
            if !path.is_dir() {
                anyhow::bail!("dataset {:?}: {} is not a directory: check --path", d.name, path.display());
            }
            Ok(Box::new(WalkSource::new(&path, label).with_excludes(excludes.clone())))
        }
        SourceKind::Btrfs => {
            let path = d.path.clone().ok_or_else(|| {
                UsageError(format!(
                    "dataset {:?}: a btrfs source needs --path SUBVOLUME (or `path` in its config table)",
                    d.name
                ))
            })?;
            Ok(Box::new(BtrfsSource::new(&path, d.snapshot_dir.as_deref())))
        }
        SourceKind::Zfs => zfs_source(d),
    }
}

fn print_summary(s: &ChangesetSummary) {
    println!(
        "{}: snapshot {} stored as changeset {} ({}{}): {} added, {} modified, {} metadata, {} removed, {} failed{}{}; read {}, uploaded {} in {} packs",
        s.dataset,
        s.snapshot,
        s.changeset,
        s.method,
        if s.resumed { ", resumed" } else { "" },
        s.added,
        s.modified,
        s.metadata,
        s.removed,
        s.failed,
        if s.changed_during_read > 0 {
            format!(", {} changed while read", s.changed_during_read)
        } else {
            String::new()
        },
        if s.repaired > 0 { format!(", {} read again (lost packs)", s.repaired) } else { String::new() },
        human_bytes(s.bytes_read),
        human_bytes(s.bytes_uploaded),
        s.packs
    );
}

/// The requests a run made, for its last line: what a remote repository
/// bills, and where a slow run spent its time.
pub(super) fn requests_line(r: &crate::backend::RequestCounts) -> String {
    format!(
        "backend requests: {} PUT, {} GET, {} LIST, {} HEAD, {} DELETE; {} up, {} down",
        r.put,
        r.get,
        r.list,
        r.head,
        r.delete,
        human_bytes(r.bytes_up),
        human_bytes(r.bytes_down)
    )
}

/// A test-only knob read from the environment (like N2S_FAULT).
fn knob(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

pub fn run(g: &GlobalArgs, a: BackupArgs) -> Result<ExitCode> {
    let inputs = stream_inputs(&a)?;
    let tags = a
        .tag
        .iter()
        .map(|t| parse_tag(t).map_err(|e| anyhow::Error::new(UsageError(format!("--tag: {e:#}")))))
        .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
    let ctx = Ctx::open(g)?;
    // Streams are read to their end before anything is recorded: a
    // producer that fails leaves no changeset.
    let spool = match inputs.is_empty() {
        true => None,
        false => Some(spool(&inputs, ctx.state.root())?),
    };
    let specs = match (&spool, &a.dataset) {
        (Some(s), Some(name)) => {
            vec![DatasetConfig {
                name: name.clone(),
                source: SourceKind::Walk,
                path: Some(s.dir().to_path_buf()),
                ..Default::default()
            }]
        }
        _ => dataset_specs(&ctx, &a)?,
    };
    let mut opts = BackupOptions::default();
    opts.upload.uploaders = ctx.settings.connections_for(&*ctx.repo.backend);
    if let Some(mb) = ctx.settings.file.pack_size_mb {
        opts.upload.pack_target = (mb.clamp(1, 512) as usize) << 20;
    }
    // For tests: small packs make many packs out of little data; small
    // record and file limits reach the format's limits with little data.
    if let Some(kb) = knob("N2S_PACK_SIZE_KB") {
        opts.upload.pack_target = kb.max(4) << 10;
    }
    if let Some(n) = knob("N2S_CHUNKS_PER_RECORD") {
        opts.chunks_per_record = n.max(1);
    }
    if let Some(n) = knob("N2S_MAX_FILE_CHUNKS") {
        opts.upload.max_file_chunks = n.max(1);
    }
    if let Some(n) = ctx.settings.file.checkpoint_every {
        opts.checkpoint_every = n.max(1);
    }

    // What an interrupted run left behind (S3: multipart uploads) would
    // bill forever: remove it, once per run.
    match ctx.repo.backend.cleanup_interrupted() {
        Ok(0) => {}
        Ok(n) => log::info!("removed {n} interrupted uploads left by an earlier run"),
        Err(e) => log::warn!("cannot clean up interrupted uploads: {e}"),
    }
    let display = super::progress::Display::start(g.progress, g.quiet, "backup");
    let mut all = Vec::new();
    let mut abandoned = Vec::new();
    let mut errors = Vec::new();
    for d in &specs {
        let started_at = crate::util::now();
        let requests_before = ctx.repo.backend.requests().unwrap_or_default();
        let result = d.excludes(&a.exclude, a.exclude_caches).map(Arc::new).and_then(|excludes| {
            let mut src = match &spool {
                Some(s) => Box::new(StreamSource::new(
                    s.dir(),
                    walk_label(&ctx, &d.name, a.snapshot.as_deref())?,
                    tags.clone(),
                )),
                None => make_source(&ctx, d, a.snapshot.as_deref(), &excludes)?,
            };
            if a.take_snapshot {
                let name = a
                    .snapshot
                    .clone()
                    .unwrap_or_else(|| crate::util::utc_timestamp(crate::util::now()).replace(':', ""));
                src.take_snapshot(&name)?;
            }
            // A walk run that names no snapshot of its own records nothing
            // when nothing changed; a label given is always recorded, and so
            // is every real snapshot (btrfs, zfs).
            let mut opts = opts.clone();
            // Every run of streams is recorded (consecutive dumps dedup).
            opts.skip_unchanged = a.snapshot.is_none() && d.source == SourceKind::Walk && spool.is_none();
            opts.excludes = excludes.clone();
            let done = backup_dataset(&ctx.repo, &ctx.state, &d.name, src.as_mut(), &opts)?;
            Ok((done, src.problems()))
        });
        let finished_at = crate::util::now();
        let mut record = super::metrics::RunRecord {
            started_at,
            finished_at,
            requests: ctx.repo.backend.requests().map(|r| r.since(&requests_before)).unwrap_or_default(),
            ..Default::default()
        };
        match &result {
            Ok((run, source_problems)) => {
                for s in &run.changesets {
                    record.changesets += 1;
                    record.files += s.added + s.modified + s.metadata + s.removed;
                    record.bytes_read += s.bytes_read;
                    record.bytes_stored += s.bytes_uploaded;
                    record.errors += s.problems_total + s.failed;
                }
                record.errors += (source_problems.len() + run.abandoned.len()) as u64;
                record.success = record.errors == 0;
            }
            Err(e) => {
                record.errors = 1;
                record.last_error = Some(format!("{e:#}"));
            }
        }
        if let Err(e) = super::metrics::save_run(&ctx.state, &d.name, &record) {
            log::warn!("{}: cannot keep the figures of this run: {e:#}", d.name);
        }
        match result {
            Ok((run, source_problems)) => {
                for p in source_problems {
                    errors.push(format!("{}: {p}", d.name));
                }
                for dmg in &run.damaged {
                    log::warn!("{}: the repository's {dmg}: it cannot be restored", d.name);
                }
                if run.changesets.is_empty() && run.abandoned.is_empty() {
                    log::info!("{}: nothing new to back up", d.name);
                }
                for f in &run.abandoned {
                    abandoned.push(format!(
                        "{}: snapshot {} (changeset {}) was abandoned: {}",
                        d.name, f.snapshot, f.number, f.reason
                    ));
                }
                all.extend(run.changesets);
            }
            Err(e) => {
                if specs.len() == 1 {
                    super::metrics::write_if_configured(&ctx, std::slice::from_ref(&d.name));
                    return Err(e);
                }
                log::error!("{}: {e:#}", d.name);
                errors.push(format!("{}: {e:#}", d.name));
            }
        }
    }
    let names: Vec<String> = specs.iter().map(|d| d.name.clone()).collect();
    super::metrics::write_if_configured(&ctx, &names);
    let (forgot, pruned) = if a.prune && errors.is_empty() { retain(&ctx, &specs)? } else { (Vec::new(), None) };
    drop(display);
    // Every request of this run: the backend is opened once per run.
    let requests = ctx.repo.backend.requests();
    if a.json {
        super::output::print_json(&serde_json::json!({
            "changesets": all, "abandoned": abandoned, "errors": errors, "requests": requests,
            "forget": forgot, "prune": pruned,
        }))?;
    } else {
        for s in &all {
            print_summary(s);
        }
        for f in &forgot {
            println!("{}: kept {}, forgot {}", f.dataset, f.keep.len(), f.forget.len());
        }
        if let Some(p) = &pruned {
            println!(
                "prune: deleted {} packs ({}), marked {} packs for a later run",
                p.deleted.packs,
                human_bytes(p.deleted.bytes),
                p.marked.packs
            );
        }
        if let Some(r) = &requests {
            println!("{}", requests_line(r));
        }
    }
    let problems: u64 = all.iter().map(|s| s.problems_total).sum();
    let changed: u64 = all.iter().map(|s| s.changed_during_read).sum();
    for s in &all {
        for p in s.problems.iter().take(20) {
            log::warn!("{}: {p}", s.dataset);
        }
        for p in s.changed_paths.iter().take(20) {
            log::warn!("{}: {p} changed while it was read; stored as read", s.dataset);
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    if !abandoned.is_empty() {
        anyhow::bail!(
            "{}; the snapshots after them were backed up from the last complete changeset",
            abandoned.join("; ")
        );
    }
    if problems > 0 {
        return Err(super::PartialSuccess(format!(
            "{problems} paths could not be read and are not in the backup (listed above); fix their permissions or errors and run backup again"
        ))
        .into());
    }
    if changed > 0 && ctx.settings.file.fail_on_changed_files.unwrap_or(false) {
        anyhow::bail!(
            "{changed} files changed while they were read (listed above) and were stored as read; back up a snapshot instead of a live directory, or set fail_on_changed_files = false"
        );
    }
    super::ok()
}

/// `--prune`: forget by each dataset's policy, then prune.
fn retain(
    ctx: &Ctx,
    specs: &[DatasetConfig],
) -> Result<(Vec<crate::engine::forget::ForgetReport>, Option<crate::engine::prune::PruneReport>)> {
    use crate::engine::forget::{Selection, forget};
    let mut reports = Vec::new();
    for d in specs {
        let policy = d.policy()?;
        if policy.is_empty() {
            log::warn!("{}: --prune, but its [[dataset]] section sets no keep_* rule: nothing is forgotten", d.name);
            continue;
        }
        let _lock = crate::state::DatasetLock::acquire(&ctx.state.lock(&d.name), &d.name)?;
        let mut cat = ctx.existing_catalog(&d.name)?;
        let zone = crate::engine::retention::LocalZone;
        reports.push(forget(&ctx.repo, &mut cat, Selection::Policy(&policy), &zone, false)?);
    }
    let opts = crate::engine::prune::PruneOptions::default();
    Ok((reports, Some(crate::engine::prune::prune(&ctx.repo, &ctx.state, &opts)?)))
}

#[cfg(feature = "zfs")]
fn zfs_source(d: &DatasetConfig) -> Result<Box<dyn ChangeSource>> {
    let zfs_dataset = match (&d.zfs_dataset, d.name.contains('/')) {
        (Some(z), _) => z.clone(),
        (None, true) => d.name.clone(),
        (None, false) => {
            return Err(UsageError(format!(
                "dataset {:?}: give its ZFS dataset with --zfs-dataset POOL/FS (or name the dataset POOL/FS)",
                d.name
            ))
            .into());
        }
    };
    let timeout = std::time::Duration::from_secs(d.diff_timeout_secs.unwrap_or(3600));
    Ok(Box::new(crate::source::zfs::ZfsSource::new(&zfs_dataset, d.holds.unwrap_or(true), timeout)))
}

#[cfg(not(feature = "zfs"))]
fn zfs_source(d: &DatasetConfig) -> Result<Box<dyn ChangeSource>> {
    anyhow::bail!(
        "dataset {:?} is a ZFS dataset, but this n2s-agent was built without ZFS support: rebuild with the `zfs` cargo feature (on by default)",
        d.name
    )
}
