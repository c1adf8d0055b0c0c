//! Figures for monitoring: per dataset, when it was last backed up, what
//! its last run did, and how old its oldest unfinished work is. They are
//! written after every backup in node_exporter's textfile format
//! (`--metrics-file`, or `metrics_file` in the config file), and `status
//! --json` carries the same figures under `metrics`.
//!
//! A run's own figures (duration, bytes, requests, errors) are kept in the
//! state directory, one small JSON file per dataset (`runs/`), so the
//! textfile always describes every dataset, not only the ones this run
//! touched; the rest comes from the catalogs.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::Ctx;
use crate::backend::RequestCounts;
use crate::catalog::Catalog;
use crate::state::StatePaths;

/// What the last run of `backup` (or `watch`) did for one dataset.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub started_at: i64,
    pub finished_at: i64,
    pub success: bool,
    /// Changesets completed by the run.
    pub changesets: u64,
    /// Paths added, modified, changed in metadata or removed.
    pub files: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub requests: RequestCounts,
    /// Errors of the run: a failed dataset counts one, plus every path that
    /// could not be read.
    pub errors: u64,
    pub last_error: Option<String>,
    /// When a run last succeeded (this one, or one before it): a run that
    /// finds nothing new succeeds too, so an idle dataset raises no alert.
    pub last_success_at: Option<i64>,
}

/// Every figure of one dataset, as exported.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DatasetFigures {
    pub dataset: String,
    /// When a backup of the dataset last succeeded (unix seconds): a run
    /// that ended without error, or the newest complete changeset.
    pub last_success_at: Option<i64>,
    /// When the newest complete changeset was confirmed.
    pub last_changeset_at: Option<i64>,
    pub changesets: u64,
    /// Seconds since the oldest unfinished changeset was started (0: none).
    pub oldest_unconfirmed_age_secs: i64,
    /// Files of the unfinished changeset still waiting for upload.
    pub unconfirmed_files: u64,
    pub last_run: Option<RunRecord>,
}

fn runs_dir(state: &StatePaths) -> PathBuf {
    state.root().join("runs")
}

fn record_path(state: &StatePaths, dataset: &str) -> PathBuf {
    // The catalog's file name is already a safe, unique stem.
    let catalog = state.catalog(dataset);
    let stem = catalog.file_stem().map(|s| s.to_os_string()).unwrap_or_default();
    runs_dir(state).join(stem).with_extension("json")
}

/// Keep what a run did for `dataset` (a failed run keeps the time of the
/// last success).
pub fn save_run(state: &StatePaths, dataset: &str, run: &RunRecord) -> Result<()> {
    let mut run = run.clone();
    run.last_success_at =
        if run.success { Some(run.finished_at) } else { load_run(state, dataset).and_then(|r| r.last_success_at) };
    let dir = runs_dir(state);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut doc = serde_json::to_value(&run)?;
    doc["dataset"] = dataset.into();
    write_atomically(&record_path(state, dataset), serde_json::to_string(&doc)?.as_bytes(), 0o600)
}

/// What the last run did for `dataset`, if one was recorded.
pub fn load_run(state: &StatePaths, dataset: &str) -> Option<RunRecord> {
    let text = std::fs::read(record_path(state, dataset)).ok()?;
    // An unreadable record (an older format, a torn disk) is left out,
    // never an error of the run that reads it.
    serde_json::from_slice(&text).ok()
}

/// The figures of one dataset: its catalog (if it has one) and its last run.
pub fn figures(state: &StatePaths, dataset: &str, now: i64) -> Result<DatasetFigures> {
    let mut f =
        DatasetFigures { dataset: dataset.to_string(), last_run: load_run(state, dataset), ..Default::default() };
    let path = state.catalog(dataset);
    if path.exists() {
        let cat = Catalog::open(&path, dataset)?;
        f.changesets = cat.changesets()?.len() as u64;
        f.last_changeset_at = cat.latest_complete()?.and_then(|c| c.completed_at);
        if let Some(open) = cat.incomplete()? {
            f.oldest_unconfirmed_age_secs = (now - open.started_at).max(0);
            f.unconfirmed_files = cat.count_pending(open.id)?;
        }
    }
    let last_run_success = f.last_run.as_ref().and_then(|r| r.last_success_at);
    f.last_success_at = f.last_changeset_at.max(last_run_success);
    Ok(f)
}

/// Every dataset this state directory knows, and those a run just named.
pub fn all_figures(ctx: &Ctx, also: &[String]) -> Result<Vec<DatasetFigures>> {
    figures_of_state(&ctx.state, also)
}

fn figures_of_state(state: &StatePaths, also: &[String]) -> Result<Vec<DatasetFigures>> {
    let mut names: Vec<String> =
        state.catalog_files()?.iter().filter_map(|p| Catalog::dataset_name_of(p).ok()).collect();
    names.extend(also.iter().cloned());
    names.sort();
    names.dedup();
    let now = crate::util::now();
    names.iter().map(|d| figures(state, d, now)).collect()
}

/// A label value, escaped as the exposition format asks.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// node_exporter's textfile format (the Prometheus text exposition format).
pub fn render(figures: &[DatasetFigures], written_at: i64) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, value: &dyn Fn(&DatasetFigures) -> Option<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for f in figures {
            if let Some(v) = value(f) {
                let _ = writeln!(out, "{name}{{dataset=\"{}\"}} {v}", label(&f.dataset));
            }
        }
    };
    let run = |f: &DatasetFigures, g: &dyn Fn(&RunRecord) -> u64| f.last_run.as_ref().map(|r| g(r).to_string());
    family(
        "n2s_backup_last_success_timestamp_seconds",
        "When a backup of the dataset last succeeded (0: never).",
        &|f| Some(f.last_success_at.unwrap_or(0).to_string()),
    );
    family(
        "n2s_backup_last_changeset_timestamp_seconds",
        "When the newest complete changeset of the dataset was confirmed (0: none).",
        &|f| Some(f.last_changeset_at.unwrap_or(0).to_string()),
    );
    family("n2s_backup_changesets", "Changesets of the dataset in the local catalog.", &|f| {
        Some(f.changesets.to_string())
    });
    family("n2s_backup_oldest_unconfirmed_age_seconds", "Age of the oldest unfinished changeset (0: none).", &|f| {
        Some(f.oldest_unconfirmed_age_secs.to_string())
    });
    family("n2s_backup_unconfirmed_files", "Files of the unfinished changeset not yet uploaded.", &|f| {
        Some(f.unconfirmed_files.to_string())
    });
    family("n2s_backup_last_run_timestamp_seconds", "When the last run of the dataset ended.", &|f| {
        f.last_run.as_ref().map(|r| r.finished_at.to_string())
    });
    family("n2s_backup_last_run_success", "1 if the last run of the dataset succeeded, else 0.", &|f| {
        run(f, &|r| u64::from(r.success))
    });
    family("n2s_backup_last_run_duration_seconds", "How long the last run of the dataset took.", &|f| {
        run(f, &|r| (r.finished_at - r.started_at).max(0) as u64)
    });
    family("n2s_backup_last_run_changesets", "Changesets the last run completed.", &|f| run(f, &|r| r.changesets));
    family("n2s_backup_last_run_files", "Paths the last run found changed.", &|f| run(f, &|r| r.files));
    family("n2s_backup_last_run_read_bytes", "Bytes the last run read from the source.", &|f| {
        run(f, &|r| r.bytes_read)
    });
    family("n2s_backup_last_run_stored_bytes", "Bytes the last run uploaded to the repository.", &|f| {
        run(f, &|r| r.bytes_stored)
    });
    family("n2s_backup_last_run_errors", "Errors of the last run (a failure, unreadable paths).", &|f| {
        run(f, &|r| r.errors)
    });
    let _ = writeln!(
        out,
        "# HELP n2s_backup_last_run_requests Backend requests the last run made, by kind.\n# TYPE n2s_backup_last_run_requests gauge"
    );
    for f in figures {
        if let Some(r) = &f.last_run {
            let q = &r.requests;
            for (kind, n) in [("put", q.put), ("get", q.get), ("list", q.list), ("head", q.head), ("delete", q.delete)]
            {
                let _ = writeln!(
                    out,
                    "n2s_backup_last_run_requests{{dataset=\"{}\",kind=\"{kind}\"}} {n}",
                    label(&f.dataset)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP n2s_metrics_written_timestamp_seconds When n2s-agent wrote this file.\n# TYPE n2s_metrics_written_timestamp_seconds gauge\nn2s_metrics_written_timestamp_seconds {written_at}"
    );
    out
}

/// Write `bytes` to `path` so a reader sees the old file or the new one,
/// never a part (node_exporter may read it at any moment).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}: check that its directory exists and is writable", path.display()))
}

/// After a run: write the textfile, when one is configured. A failure to
/// write it is reported, but never fails the backup it describes.
pub fn write_if_configured(ctx: &Ctx, also: &[String]) {
    write_for(ctx.settings.metrics_file.as_deref(), &ctx.state, also)
}

/// The same, for `watch`, which may have no open repository when a run
/// failed to reach it.
pub fn write_for(path: Option<&Path>, state: &StatePaths, also: &[String]) {
    let Some(path) = path else { return };
    let written = figures_of_state(state, also)
        .and_then(|f| write_atomically(path, render(&f, crate::util::now()).as_bytes(), 0o644));
    match written {
        Ok(()) => log::debug!("metrics written to {}", path.display()),
        Err(e) => log::warn!("metrics file: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_textfile_has_a_help_and_type_for_every_family_and_escapes_labels() {
        let run = RunRecord {
            started_at: 100,
            finished_at: 130,
            success: true,
            files: 7,
            requests: RequestCounts { put: 3, ..Default::default() },
            ..Default::default()
        };
        let f = [
            DatasetFigures {
                dataset: "tank/a\"b".into(),
                last_success_at: Some(130),
                last_run: Some(run),
                ..Default::default()
            },
            DatasetFigures { dataset: "never".into(), ..Default::default() },
        ];
        let text = render(&f, 140);
        assert!(text.contains("n2s_backup_last_success_timestamp_seconds{dataset=\"tank/a\\\"b\"} 130"), "{text}");
        assert!(text.contains("n2s_backup_last_success_timestamp_seconds{dataset=\"never\"} 0"));
        assert!(text.contains("n2s_backup_last_run_duration_seconds{dataset=\"tank/a\\\"b\"} 30"));
        assert!(text.contains("n2s_backup_last_run_requests{dataset=\"tank/a\\\"b\",kind=\"put\"} 3"));
        assert!(!text.contains("n2s_backup_last_run_files{dataset=\"never\"}"), "no run, no run figures");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{name}");
        }
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n2s.prom");
        write_atomically(&p, b"a 1\n", 0o644).unwrap();
        write_atomically(&p, b"a 2\n", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"a 2\n");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let err = write_atomically(&d.path().join("missing/n2s.prom"), b"", 0o644).unwrap_err();
        assert!(format!("{err:#}").contains("missing/n2s.prom"), "{err:#}");
    }
}
