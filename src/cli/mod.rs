//! The command line: one file per verb. This module parses arguments,
//! resolves settings, and turns errors into one line on stderr with exit
//! status 1 (2 for bad usage).

mod abandon;
mod backup;
mod catalog;
mod completions;
pub mod config;
mod config_check;
mod forget;
mod init;
mod key;
mod list;
mod logging;
mod ls;
pub mod metrics;
pub mod output;
mod passphrase;
mod progress;
mod prune;
mod repair;
mod restore;
mod search;
mod signals;
mod status;
mod verify;
mod watch;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::repo::Repository;
use crate::state::StatePaths;

/// A mistake in how the command was called: exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

/// A run that did its job but not all of it: a backup stored its snapshot
/// without some paths that could not be read. Exit 3, as restic's, so a
/// monitor can tell "back up, with holes" from "no backup at all".
#[derive(Debug)]
pub struct PartialSuccess(pub String);

impl std::fmt::Display for PartialSuccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PartialSuccess {}

/// A dataset name as flags and the config file give it: not empty, no
/// spaces around it, no control characters (it is shown in logs and
/// metrics, and named in the repository's manifests).
pub fn dataset_name(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() {
        return Err("the dataset name is empty: give a name such as \"home\"".into());
    }
    if s.trim() != s || s.chars().any(char::is_control) {
        return Err(format!("dataset name {s:?}: no leading or trailing spaces or control characters"));
    }
    Ok(s.to_string())
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

#[derive(Parser)]
#[command(
    name = "n2s-agent",
    version,
    about = "Back up ZFS/btrfs snapshots or directories to an encrypted, deduplicated repository"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Config file (default /etc/n2s/agent.toml when it exists).
    #[arg(long, global = true, env = "N2S_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Repository URL: file:///ABS/PATH (or an absolute path), s3://BUCKET/PREFIX,
    /// sftp://USER@HOST:PORT/PATH, rclone:REMOTE:PATH or ipfs://HOST:PORT/PATH.
    #[arg(long, global = true, env = "N2S_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// Key file (mode 0600). Never pass the key itself on the command line.
    #[arg(long, global = true, env = "N2S_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// A file whose first line is the passphrase of one of the repository's
    /// keys (`key add`), used when there is no key file.
    #[arg(long, global = true, env = "N2S_PASSWORD_FILE", value_name = "PATH")]
    pub password_file: Option<PathBuf>,
    /// A command (`sh -c`) that prints that passphrase.
    #[arg(long, global = true, env = "N2S_PASSWORD_COMMAND", value_name = "COMMAND")]
    pub password_command: Option<String>,
    /// Where catalogs and caches live (default /var/lib/n2s).
    #[arg(long, global = true, env = "N2S_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// More log output (-vv for debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Progress of long verbs: `auto` draws it when stderr is a terminal,
    /// `json` writes one JSON object a second to stderr, `none` nothing.
    #[arg(long, global = true, env = "N2S_PROGRESS", value_enum, default_value_t, value_name = "MODE")]
    pub progress: progress::ProgressMode,
    /// After a backup, write per-dataset figures here in node_exporter's
    /// textfile format (atomically; also `metrics_file` in the config file).
    #[arg(long, global = true, env = "N2S_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// S3 endpoint URL, for servers other than AWS (also AWS_ENDPOINT_URL).
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (also AWS_REGION; default us-east-1).
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Path-style S3 addressing (endpoint/bucket/key), which most servers
    /// other than AWS need.
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// SSH private key for sftp:// repositories (else ssh's defaults).
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_SFTP_IDENTITY_FILE", value_name = "PATH")]
    pub sftp_identity_file: Option<PathBuf>,
    /// known_hosts file for sftp:// repositories; host keys are always checked.
    #[arg(
        long,
        global = true,
        help_heading = "Backend access",
        env = "N2S_SFTP_KNOWN_HOSTS_FILE",
        value_name = "PATH"
    )]
    pub sftp_known_hosts_file: Option<PathBuf>,
    /// ssh_config file for sftp:// repositories (else ~/.ssh/config).
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_SSH_CONFIG", value_name = "PATH")]
    pub ssh_config: Option<PathBuf>,
    /// The rclone binary for rclone: repositories (default: rclone on PATH).
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_RCLONE_BINARY", value_name = "PATH")]
    pub rclone_binary: Option<PathBuf>,
    /// The rclone.conf with the remotes (default: rclone's own, or RCLONE_CONFIG).
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_RCLONE_CONFIG", value_name = "PATH")]
    pub rclone_config: Option<PathBuf>,
    /// Upload at most this many KiB/s, all threads together (0: no limit).
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_LIMIT_UPLOAD", value_name = "KIB_PER_S")]
    pub limit_upload: Option<u64>,
    /// Download at most this many KiB/s, all threads together (0: no limit).
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_LIMIT_DOWNLOAD", value_name = "KIB_PER_S")]
    pub limit_download: Option<u64>,
    /// Backend requests in flight at once: uploaders of a backup, workers of
    /// a restore (default 8 for a remote backend, 2 uploaders for a local one).
    #[arg(long, global = true, help_heading = "Backend access", env = "N2S_CONNECTIONS", value_name = "N")]
    pub connections: Option<usize>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create the repository, and a new key file if none exists.
    Init(init::InitArgs),
    /// Back up every new snapshot of the dataset(s), oldest first.
    Backup(backup::BackupArgs),
    /// Take changesets out of a dataset's history, by retention policy or by name.
    Forget(forget::ForgetArgs),
    /// Delete what no kept changeset references (mark now, delete after --grace).
    Prune(prune::PruneArgs),
    /// End a changeset that can never finish (status failed).
    Abandon(abandon::AbandonArgs),
    /// Restore a snapshot, or some paths of it, into a directory.
    Restore(restore::RestoreArgs),
    /// Snapshots backed up, with status, counts, bytes and confirm times.
    List(list::ListArgs),
    /// The tree as of a snapshot.
    Ls(ls::LsArgs),
    /// Which snapshots hold paths that match, and their versions.
    Search(search::SearchArgs),
    /// Per dataset: last snapshot seen and backed up, unfinished work.
    Status(status::StatusArgs),
    /// Check the repository.
    Verify(verify::VerifyArgs),
    /// Rewrite a lost config object, mark lost packs, rebuild missing or
    /// damaged catalogs, and name what became unrestorable.
    Repair(repair::RepairArgs),
    /// Run until stopped, backing up each new snapshot of the configured
    /// btrfs and zfs datasets as soon as it appears (inotify, polls).
    Watch(watch::WatchArgs),
    /// Passphrase-protected copies of the repository key: add, list,
    /// remove, passwd.
    Key {
        #[command(subcommand)]
        command: key::KeyCommand,
    },
    /// Local catalog maintenance.
    Catalog {
        #[command(subcommand)]
        command: catalog::CatalogCommand,
    },
    /// The config file: `config check` validates it and what it names.
    Config {
        #[command(subcommand)]
        command: config_check::ConfigCommand,
    },
    /// Print a completion script: `n2s-agent completions bash > /etc/bash_completion.d/n2s-agent`.
    Completions(completions::CompletionsArgs),
    /// Write the man pages (for packaging).
    #[command(hide = true)]
    Manpage(completions::ManpageArgs),
}

impl Command {
    /// The verb, as typed.
    fn verb(&self) -> &'static str {
        match self {
            Command::Init(_) => "init",
            Command::Backup(_) => "backup",
            Command::Forget(_) => "forget",
            Command::Prune(_) => "prune",
            Command::Abandon(_) => "abandon",
            Command::Restore(_) => "restore",
            Command::List(_) => "list",
            Command::Ls(_) => "ls",
            Command::Search(_) => "search",
            Command::Status(_) => "status",
            Command::Verify(_) => "verify",
            Command::Repair(_) => "repair",
            Command::Watch(_) => "watch",
            Command::Key { .. } => "key",
            Command::Catalog { .. } => "catalog",
            Command::Config { .. } => "config",
            Command::Completions(_) => "completions",
            Command::Manpage(_) => "manpage",
        }
    }
}

/// What most verbs need: the open repository and its state directory.
pub struct Ctx {
    pub settings: config::Settings,
    /// The key, and how it was obtained (key file, or which key object).
    pub key: passphrase::OpenedKey,
    pub repo: Arc<Repository>,
    pub state: StatePaths,
}

impl Ctx {
    pub fn open(g: &GlobalArgs) -> Result<Ctx> {
        let settings = config::Settings::resolve(g)?;
        let backend = crate::backend::open_with(&settings.repo, &settings.backend_options())?;
        let key = passphrase::open_key(&settings, &*backend)?;
        let repo = Arc::new(Repository::open(backend, &key.master)?);
        let state = crate::client::open_state(&repo, &settings.state_dir)?;
        Ok(Ctx { settings, key, repo, state })
    }

    /// Names of the datasets with a local catalog.
    pub fn known_datasets(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for p in self.state.catalog_files()? {
            if let Ok(n) = Catalog::dataset_name_of(&p) {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Open the catalog of a dataset that has been backed up before. A
    /// dataset the repository holds but this machine has no catalog for
    /// (the state directory was lost) is rebuilt first: a read verb never
    /// answers "nothing" while the repository holds everything.
    pub fn existing_catalog(&self, dataset: &str) -> Result<Catalog> {
        let path = self.state.catalog(dataset);
        if !path.exists() {
            self.rebuild_missing(Some(dataset))?;
        }
        if !path.exists() {
            let known = self.known_datasets()?;
            // An error of the run (exit 1), not of its usage (2): the same
            // command is right once the dataset has a backup.
            anyhow::bail!(
                "dataset {dataset:?} has no backup in {} (known: {})",
                self.repo.backend.location(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            );
        }
        Catalog::open(&path, dataset)
    }

    /// The datasets a read verb covers: the one named, else every dataset
    /// this machine has a catalog of; with none at all (the state directory
    /// was lost), every dataset of the repository, rebuilt first. (Listing
    /// the repository's manifests on every run would cost requests that grow
    /// with its history; a dataset of another host is named with --dataset.)
    pub fn selected_datasets(&self, named: Option<&str>) -> Result<Vec<String>> {
        match named {
            Some(d) => Ok(vec![d.to_string()]),
            None => {
                let known = self.known_datasets()?;
                if !known.is_empty() {
                    return Ok(known);
                }
                self.rebuild_missing(None)?;
                self.known_datasets()
            }
        }
    }

    /// Rebuild the catalog of every dataset (or of `only`) that the
    /// repository holds and the state directory lacks.
    fn rebuild_missing(&self, only: Option<&str>) -> Result<()> {
        use crate::engine::rebuild::{RebuildMode, rebuild};
        let local: std::collections::HashSet<String> =
            self.known_datasets()?.iter().map(|d| self.repo.dataset_id(d)).collect();
        let filter = only.map(|d| self.repo.dataset_id(d));
        let missing: Vec<String> = crate::engine::chain::header_keys(&self.repo, filter.as_deref())?
            .into_keys()
            .filter(|id| !local.contains(id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        log::warn!(
            "the state directory {} has no catalog for {} dataset(s) that the repository holds; rebuilding them from the repository",
            self.settings.state_dir.display(),
            missing.len()
        );
        let r = match only {
            Some(d) => rebuild(&self.repo, &self.state, Some(d), RebuildMode::Salvage),
            None => crate::engine::rebuild::rebuild_ids(&self.repo, &self.state, &missing, RebuildMode::Salvage),
        };
        r.map(|_| ()).map_err(|e| {
            anyhow::anyhow!(
                "the local state in {} is missing datasets that the repository holds, and cannot be rebuilt there: {e:#}; \
                 give a writable --state-dir, or run `n2s-agent catalog rebuild` once it is writable",
                self.settings.state_dir.display()
            )
        })
    }
}

/// The CLI and the client API pick changesets the same way.
pub use crate::client::find_changeset;

pub fn main() -> ExitCode {
    // SIGPIPE stays ignored (Rust's default): a backend's pipe or socket
    // whose other end died (ssh when a link drops, a server closing a
    // kept-alive connection) must be an EPIPE error that a retry heals, not
    // the end of the process in the middle of a backup. Our own stdout is
    // the exception: like other Unix tools, end quietly when its reader
    // goes away (`n2s-agent list | head`) instead of printing a panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            // 128 + SIGPIPE, what a shell reports for a process SIGPIPE ended.
            std::process::exit(141);
        }
        default_hook(info)
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    logging::init(cli.global.quiet, cli.global.verbose);
    let g = cli.global.clone();
    signals::install(cli.command.verb());
    let result = match cli.command {
        Command::Init(a) => init::run(&g, a),
        Command::Backup(a) => backup::run(&g, a),
        Command::Forget(a) => forget::run(&g, a),
        Command::Prune(a) => prune::run(&g, a),
        Command::Abandon(a) => abandon::run(&g, a),
        Command::Restore(a) => restore::run(&g, a),
        Command::List(a) => list::run(&g, a),
        Command::Ls(a) => ls::run(&g, a),
        Command::Search(a) => search::run(&g, a),
        Command::Status(a) => status::run(&g, a),
        Command::Verify(a) => verify::run(&g, a),
        Command::Repair(a) => repair::run(&g, a),
        Command::Watch(a) => watch::run(&g, a),
        Command::Key { command } => key::run(&g, command),
        Command::Catalog { command } => catalog::run(&g, command),
        Command::Config { command } => config_check::run(&g, command),
        Command::Completions(a) => completions::completions(a),
        Command::Manpage(a) => completions::manpage(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", logging::error_line(&e));
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else if e.downcast_ref::<PartialSuccess>().is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Shorthand used by verbs that have nothing to report but success.
pub fn ok() -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
