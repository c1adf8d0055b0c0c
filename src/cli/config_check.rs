//! `config check`: validate the config file and tell, per dataset, whether
//! its source, its snapshots and the repository can be reached, without
//! writing anything: no state directory, no catalog, no lock, no object.

use anyhow::Result;
use std::process::ExitCode;
use std::sync::Arc;

use super::GlobalArgs;
use super::config::{FileConfig, Settings};
use crate::core::keys::MasterKey;
use crate::repo::Repository;

#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate the config file, and check each dataset's source and
    /// snapshots, the key file and the repository, read-only.
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Check {
    /// What was checked ("config file", "key file", "repository", "dataset home").
    what: String,
    ok: bool,
    /// What was found, or what is wrong and how to fix it.
    detail: String,
}

pub fn run(g: &GlobalArgs, c: ConfigCommand) -> Result<ExitCode> {
    let ConfigCommand::Check(a) = c;
    let checks = checks(g);
    let ok = checks.iter().all(|c| c.ok);
    if a.json {
        super::output::print_json(&serde_json::json!({ "ok": ok, "checks": checks }))?;
    } else {
        for c in &checks {
            println!("{} {}: {}", if c.ok { "ok  " } else { "FAIL" }, c.what, c.detail);
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn checks(g: &GlobalArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let mut add = |what: &str, r: Result<String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        out.push(Check { what: what.to_string(), ok, detail });
    };
    let origin = g.config.clone().unwrap_or_else(|| super::config::DEFAULT_CONFIG.into());
    // The file alone first: its own errors name their line.
    let file = FileConfig::load(g.config.as_deref());
    let datasets = file.as_ref().map(|f| f.dataset.len()).unwrap_or(0);
    let file_ok = file.is_ok();
    add(
        &format!("config file {}", origin.display()),
        file.map(|_| match origin.exists() {
            true => format!("valid, {datasets} datasets"),
            false => "absent: flags and the environment only".to_string(),
        }),
    );
    if !file_ok {
        return out;
    }
    let settings = match Settings::resolve(g) {
        Ok(s) => s,
        Err(e) => {
            add("settings", Err(e));
            return out;
        }
    };
    // The key file is checked on its own; a passphrase can only be checked
    // against the repository's key objects, so with the repository.
    let key_file = settings.key_file_in_use();
    let key = key_file.map(MasterKey::load);
    if let (Some(p), Some(key)) = (key_file, &key) {
        add(
            &format!("key file {}", p.display()),
            key.as_ref().map(|_| "mode 0600, an n2s key".to_string()).map_err(|e| anyhow::anyhow!("{e:#}")),
        );
    }
    let repo_check = (|| -> Result<String> {
        let backend = crate::backend::open_with(&settings.repo, &settings.backend_options())?;
        let (master, how) = match &key {
            Some(k) => (
                k.as_ref().map_err(|_| anyhow::anyhow!("not opened: the key file is not usable (above)"))?.clone(),
                "the key opens it".to_string(),
            ),
            None => {
                let opened = super::passphrase::open_key(&settings, &*backend)?;
                let id = match &opened.via {
                    super::passphrase::KeyVia::Passphrase(id) => id.clone(),
                    super::passphrase::KeyVia::KeyFile(p) => p.display().to_string(),
                };
                (opened.master, format!("the passphrase opens its key {id}"))
            }
        };
        let repo = Repository::open(backend, &master)?;
        Ok(format!("reachable, initialized, {how} (id {})", repo.config.id))
    })();
    add(&format!("repository {}", settings.repo), repo_check);
    add(
        &format!("state directory {}", settings.state_dir.display()),
        Ok(match settings.state_dir.is_dir() {
            true => "exists".to_string(),
            false => "absent: the first backup creates it (mode 0700)".to_string(),
        }),
    );
    for d in &settings.file.dataset {
        add(&format!("dataset {}", d.name), dataset_check(d));
    }
    out
}

/// The dataset's source exists and is of its kind, and its snapshots are
/// found by the discovery a backup uses.
fn dataset_check(d: &super::config::DatasetConfig) -> Result<String> {
    let excludes = Arc::new(d.excludes(&[], false)?);
    let mut source = super::backup::source_for(d, "config-check".into(), &excludes)?;
    let snaps = source.new_snapshots(None)?;
    let problems = source.problems();
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    let where_ = d
        .path
        .as_ref()
        .map_or_else(|| d.zfs_dataset.clone().unwrap_or_else(|| d.name.clone()), |p| p.display().to_string());
    Ok(match source.kind() {
        "walk" => {
            if let Some(p) = &d.path {
                std::fs::read_dir(p).map_err(|e| anyhow::anyhow!("cannot list {}: {e}", p.display()))?;
            }
            format!("walk of {where_}: a directory, readable")
        }
        kind => match snaps.last() {
            Some(last) => format!("{kind} source {where_}: {} snapshots, the newest {}", snaps.len(), last.name),
            None => {
                format!("{kind} source {where_}: no snapshot yet: make one (snapper, btrbk, sanoid) before a backup")
            }
        },
    })
}
