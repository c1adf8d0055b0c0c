//! `watch`: back up each new snapshot of the configured datasets as soon as
//! it appears, for as long as the process runs (a `Type=simple` service,
//! systemd/n2s-agent-watch.service).
//!
//! - btrfs: the snapshot directory is watched with inotify (`notify`); a
//!   poll every `--poll` seconds catches what inotify cannot see (snapper
//!   makes `N/` first and `N/snapshot` inside it a moment later).
//! - zfs: `.zfs/snapshot` is invisible to inotify, so the dataset's snapshot
//!   list is polled.
//! - A burst of events is debounced: the backup starts once the directory
//!   has been quiet for `--debounce` seconds.
//! - Backups run one at a time, in this thread, through the same code as
//!   `backup --dataset NAME`: never two of one dataset at once (and the
//!   per-dataset lock keeps a timer's run apart too).
//! - A failed backup (the backend down, say) is logged, counted in the
//!   metrics, and retried with exponential backoff up to `--max-backoff`.
//! - SIGTERM or SIGINT while waiting stops the loop at once (exit 0); during
//!   a backup it stops that backup as it stops any, which is safe at every
//!   point: the next run resumes it.

use anyhow::{Context, Result};
use clap::{Args, FromArgMatches};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::backup::BackupArgs;
use super::config::{DatasetConfig, FileConfig, SourceKind};
use super::{GlobalArgs, UsageError, signals};
use crate::state::StatePaths;

#[derive(clap::Args)]
pub struct WatchArgs {
    /// Watch only these datasets of the config file (repeatable; default:
    /// every btrfs and zfs dataset).
    #[arg(long, value_parser = super::dataset_name)]
    pub dataset: Vec<String>,
    /// Seconds of quiet after a new snapshot before its backup starts.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub debounce: f64,
    /// Seconds between polls of the snapshot lists (zfs always; btrfs as a
    /// safety net under inotify).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub poll: f64,
    /// Longest wait between retries of a failing backup.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub max_backoff: f64,
}

fn secs(what: &str, v: f64, min: f64) -> Result<Duration> {
    if !v.is_finite() || v < min || v > 86_400.0 {
        return Err(UsageError(format!("--{what} {v}: give {min} to 86400 seconds")).into());
    }
    Ok(Duration::from_secs_f64(v))
}

/// One watched dataset.
struct Watched {
    config: DatasetConfig,
    /// What the last poll saw (snapshot names); a change makes it due.
    seen: Vec<String>,
    /// When its backup should start (debounced), if one is wanted.
    due: Option<Instant>,
    /// When the first event of the pending burst came (bursts are capped).
    burst_start: Option<Instant>,
    failures: u32,
    /// Kept alive for its inotify watch.
    _watcher: Option<notify::RecommendedWatcher>,
}

pub fn run(g: &GlobalArgs, a: WatchArgs) -> Result<ExitCode> {
    let debounce = secs("debounce", a.debounce, 0.0)?;
    let poll = secs("poll", a.poll, 0.2)?;
    let max_backoff = secs("max-backoff", a.max_backoff, 0.1)?;
    let file = FileConfig::load(g.config.as_deref())?;
    let configs = select(&file, &a.dataset)?;
    signals::watch_mode();

    let (tx, rx) = mpsc::channel::<usize>();
    let mut watched = Vec::new();
    for (i, d) in configs.into_iter().enumerate() {
        let watcher = match d.source {
            SourceKind::Btrfs => inotify_on(&snapshot_dir(&d), i, tx.clone()),
            _ => None,
        };
        let how = if watcher.is_some() { "inotify and a poll" } else { "a poll" };
        log::info!(
            "watch: {} ({:?}): new snapshots found by {how} every {:.0} s",
            d.name,
            d.source,
            poll.as_secs_f64()
        );
        let seen = snapshot_names(&d).unwrap_or_default();
        // Due at once: snapshots made while the agent was not running.
        watched.push(Watched {
            config: d,
            seen,
            due: Some(Instant::now()),
            burst_start: None,
            failures: 0,
            _watcher: watcher,
        });
    }
    let mut next_poll = Instant::now() + poll;
    // The state directory of this repository, once a run has opened it:
    // where a failure that never reached the repository is recorded.
    let mut state: Option<(StatePaths, Option<PathBuf>)> = None;
    // A tick short enough that a stop request is seen at once.
    let tick = Duration::from_millis(200);
    loop {
        if signals::stop_requested() {
            log::info!("watch: stopped by a signal, between backups");
            return super::ok();
        }
        let now = Instant::now();
        let wake = watched.iter().filter_map(|w| w.due).chain([next_poll]).min().unwrap_or(next_poll);
        // A timeout is the tick; the sender lives as long as this loop.
        if let Ok(i) = rx.recv_timeout(wake.saturating_duration_since(now).min(tick)) {
            mark_due(&mut watched[i], debounce);
            while let Ok(i) = rx.try_recv() {
                mark_due(&mut watched[i], debounce);
            }
        }
        if Instant::now() >= next_poll {
            for w in watched.iter_mut() {
                match snapshot_names(&w.config) {
                    Ok(names) if names != w.seen => {
                        log::debug!("watch: {}: the snapshot list changed", w.config.name);
                        mark_due(w, debounce);
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("watch: {}: cannot list its snapshots: {e:#}", w.config.name),
                }
            }
            next_poll = Instant::now() + poll;
        }
        for w in watched.iter_mut() {
            if w.due.is_none_or(|t| t > Instant::now()) || signals::stop_requested() {
                continue;
            }
            w.due = None;
            w.burst_start = None;
            // Listed before the run: a snapshot made during it changes the
            // list again, and the next poll takes it.
            let names = snapshot_names(&w.config).unwrap_or_default();
            let recorded_before = state.as_ref().and_then(|(st, _)| super::metrics::load_run(st, &w.config.name));
            signals::set_busy(true);
            let outcome = backup_one(g, &w.config.name, &mut state);
            signals::set_busy(false);
            match outcome {
                Ok(()) => {
                    w.failures = 0;
                    w.seen = names;
                }
                Err(e) => {
                    w.failures += 1;
                    let wait = backoff(w.failures, max_backoff);
                    log::warn!(
                        "watch: {}: backup failed (attempt {}): {e:#}; retrying in {:.1} s",
                        w.config.name,
                        w.failures,
                        wait.as_secs_f64()
                    );
                    w.due = Some(Instant::now() + wait);
                    if let Some((st, metrics)) = &state {
                        // A run that got as far as the repository recorded
                        // its failure itself: count only the others.
                        if super::metrics::load_run(st, &w.config.name) == recorded_before {
                            record_failure(st, &w.config.name, &e);
                        }
                        super::metrics::write_for(metrics.as_deref(), st, std::slice::from_ref(&w.config.name));
                    }
                }
            }
        }
    }
}

/// The datasets `watch` covers: those named, or every snapshot dataset.
fn select(file: &FileConfig, named: &[String]) -> Result<Vec<DatasetConfig>> {
    let mut out = Vec::new();
    if named.is_empty() {
        for d in &file.dataset {
            if d.source == SourceKind::Walk {
                log::info!("watch: {}: a walk has no snapshots to wait for; the timer backs it up", d.name);
            } else {
                out.push(d.clone());
            }
        }
    } else {
        for n in named {
            let d = file.dataset(n).ok_or_else(|| {
                UsageError(format!("dataset {n:?} is not in the config file: watch needs its [[dataset]] table"))
            })?;
            if d.source == SourceKind::Walk {
                return Err(UsageError(format!(
                    "dataset {n:?} is a walk of a live directory: it has no snapshots to watch; back it up from the timer"
                ))
                .into());
            }
            out.push(d.clone());
        }
    }
    if out.is_empty() {
        return Err(UsageError(
            "no btrfs or zfs dataset to watch: add [[dataset]] tables with source = \"btrfs\" or \"zfs\" to the config file"
                .into(),
        )
        .into());
    }
    Ok(out)
}

fn mark_due(w: &mut Watched, debounce: Duration) {
    let now = Instant::now();
    let start = *w.burst_start.get_or_insert(now);
    // A directory that never goes quiet still gets a backup every ten
    // debounce periods.
    let quiet_at = now + debounce;
    let cap = start + debounce * 10;
    let at = quiet_at.min(cap.max(now));
    // A dataset waiting out a backoff keeps waiting: events must not turn
    // retries against a dead backend into a hammering.
    w.due = Some(match w.due {
        Some(t) if w.failures > 0 => t.max(at),
        _ => at,
    });
}

fn backoff(failures: u32, max: Duration) -> Duration {
    let d = Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    d.min(max)
}

fn snapshot_dir(d: &DatasetConfig) -> PathBuf {
    d.snapshot_dir
        .clone()
        .unwrap_or_else(|| crate::source::btrfs::default_snapshot_dir(d.path.as_deref().unwrap_or(Path::new(""))))
}

fn inotify_on(dir: &Path, index: usize, tx: mpsc::Sender<usize>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let made = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(index);
        }
    });
    let mut w = match made {
        Ok(w) => w,
        Err(e) => {
            log::warn!("watch: cannot use inotify ({e}); polling {} instead", dir.display());
            return None;
        }
    };
    match w.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(w),
        Err(e) => {
            log::warn!("watch: cannot watch {} ({e}); polling it instead", dir.display());
            None
        }
    }
}

/// The dataset's snapshot names, cheaply: a directory listing for btrfs
/// (with snapper's `N/snapshot` seen as N), `zfs list` for zfs.
fn snapshot_names(d: &DatasetConfig) -> Result<Vec<String>> {
    match d.source {
        SourceKind::Btrfs => {
            let dir = snapshot_dir(d);
            let mut names = Vec::new();
            for e in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
                let e = e?;
                let mut n = e.file_name().to_string_lossy().into_owned();
                if e.path().join("snapshot").exists() {
                    n.push_str("/snapshot");
                }
                names.push(n);
            }
            names.sort();
            Ok(names)
        }
        SourceKind::Zfs => {
            let fs = d.zfs_dataset.clone().unwrap_or_else(|| d.name.clone());
            let out = std::process::Command::new("zfs")
                .args(["list", "-H", "-o", "name,guid", "-t", "snapshot", "-d", "1", &fs])
                .output()
                .context("cannot run zfs list")?;
            anyhow::ensure!(
                out.status.success(),
                "zfs list of {fs} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
        }
        SourceKind::Walk => Ok(Vec::new()),
    }
}

/// One `backup --dataset NAME`, in this process, with the run's global
/// settings.
fn backup_one(g: &GlobalArgs, dataset: &str, state: &mut Option<(StatePaths, Option<PathBuf>)>) -> Result<()> {
    let cmd = BackupArgs::augment_args(clap::Command::new("backup").no_binary_name(true));
    let m = cmd.try_get_matches_from(["--dataset", dataset]).context("cannot build the backup's arguments")?;
    let args = BackupArgs::from_arg_matches(&m).context("cannot build the backup's arguments")?;
    if state.is_none() {
        // Learn where this repository's state lives, for failures that
        // never reach the repository (the run itself records the others).
        if let Ok(ctx) = super::Ctx::open(g) {
            *state = Some((ctx.state.clone(), ctx.settings.metrics_file.clone()));
        }
    }
    match super::backup::run(g, args) {
        Ok(_) => Ok(()),
        // Stored without some unreadable paths: retrying would not help.
        Err(e) if e.downcast_ref::<super::PartialSuccess>().is_some() => {
            log::warn!("watch: {dataset}: {e:#}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Count a failure that the backup could not record itself (its backend
/// unreachable before it started).
fn record_failure(state: &StatePaths, dataset: &str, e: &anyhow::Error) {
    let now = crate::util::now();
    let run = super::metrics::RunRecord {
        started_at: now,
        finished_at: now,
        errors: 1,
        last_error: Some(format!("{e:#}")),
        ..Default::default()
    };
    if let Err(err) = super::metrics::save_run(state, dataset, &run) {
        log::warn!("watch: {dataset}: cannot keep the figures of this run: {err:#}");
    }
}
