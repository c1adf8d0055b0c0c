//! The agent's configuration: a TOML file, overridden by flags and the
//! environment, so a one-off run needs no file at all.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

use super::UsageError;

pub const DEFAULT_CONFIG: &str = "/etc/n2s/agent.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/n2s";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Walk,
    Btrfs,
    Zfs,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    pub source: SourceKind,
    pub path: Option<PathBuf>,
    /// The ZFS dataset POOL/FS; `dataset = "pool/fs"` is accepted too.
    #[serde(alias = "dataset")]
    pub zfs_dataset: Option<String>,
    pub snapshot_dir: Option<PathBuf>,
    /// zfs: hold the last backed-up snapshot so pruners keep the diff base
    /// (default true).
    pub holds: Option<bool>,
    /// zfs: give up on `zfs diff` after this many seconds and walk the
    /// snapshot instead (default 3600).
    pub diff_timeout_secs: Option<u64>,
    /// Retention (`forget`, `backup --prune`): the rules of
    /// engine/retention.rs; flags given to forget override them one by one.
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// A duration such as "7d" or "36h".
    pub keep_within: Option<String>,
    /// Glob patterns left out of the backup (source/exclude.rs has the
    /// rules); `backup --exclude` adds to them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Leave out the contents of directories tagged with a CACHEDIR.TAG.
    pub exclude_caches: Option<bool>,
    /// walk: stay on the file system of the path (default and only choice:
    /// another file system is another dataset).
    pub one_file_system: Option<bool>,
}

impl DatasetConfig {
    /// The compiled excludes of this section plus `extra` (flags).
    pub fn excludes(&self, extra: &[String], exclude_caches: bool) -> Result<crate::source::exclude::Excludes> {
        let patterns: Vec<String> = self.exclude.iter().chain(extra).cloned().collect();
        crate::source::exclude::Excludes::new(&patterns, exclude_caches || self.exclude_caches.unwrap_or(false))
            .map_err(|e| anyhow::anyhow!("dataset {:?}: {e:#}", self.name))
    }
    /// The retention policy this section sets (possibly none).
    pub fn policy(&self) -> Result<crate::engine::retention::Policy> {
        let keep_within = match &self.keep_within {
            Some(d) => Some(
                crate::util::parse_duration(d)
                    .map_err(|e| anyhow::anyhow!("dataset {:?}: keep_within: {e}", self.name))?,
            ),
            None => None,
        };
        Ok(crate::engine::retention::Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within,
        })
    }
}

/// `[s3]`: how to reach an s3:// repository.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    /// Storage class of packs: STANDARD (default), STANDARD_IA, GLACIER_IR,
    /// INTELLIGENT_TIERING, ONEZONE_IA. Config, manifests and indexes stay
    /// STANDARD: every run reads them.
    pub pack_storage_class: Option<String>,
    /// Objects larger than this go up in parts (default 64, at least 5).
    pub multipart_threshold_mb: Option<u64>,
}

/// `[sftp]`: how to reach an sftp:// repository (else ssh's defaults and
/// `~/.ssh/config`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    pub identity_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    pub ssh_config: Option<PathBuf>,
    /// SSH connections per run, 1 to 16 (default 4).
    pub sessions: Option<usize>,
}

/// `[rclone]`: which rclone runs for an rclone: repository, with which
/// remotes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcloneConfig {
    pub binary: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub repo: Option<String>,
    pub key_file: Option<PathBuf>,
    /// A file whose first line is the passphrase of a key in the repository
    /// (for hosts without the key file; mode 0600).
    pub password_file: Option<PathBuf>,
    /// A command that prints that passphrase (`sh -c`).
    pub password_command: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// Target size of packs in MiB (default 16).
    pub pack_size_mb: Option<u64>,
    /// Every this many changesets a full manifest is written (default 16).
    pub checkpoint_every: Option<i64>,
    /// Exit 1 when a file of a walked (live) directory changed while it
    /// was read (default false: a warning; snapshots never change).
    pub fail_on_changed_files: Option<bool>,
    pub s3: Option<S3Config>,
    pub sftp: Option<SftpConfig>,
    pub rclone: Option<RcloneConfig>,
    /// Seconds before one backend request is given up and retried
    /// (default 120).
    pub request_timeout_secs: Option<u64>,
    /// Upload at most this many KiB/s, all threads together (0: no limit).
    pub limit_upload_kib: Option<u64>,
    /// Download at most this many KiB/s (0: no limit).
    pub limit_download_kib: Option<u64>,
    /// Backend requests in flight at once: uploader threads of a backup,
    /// workers of a restore (default 8 for a remote backend, 2 uploaders
    /// for a local one).
    pub connections: Option<usize>,
    /// node_exporter textfile written after every backup (`--metrics-file`).
    pub metrics_file: Option<PathBuf>,
    #[serde(default)]
    pub dataset: Vec<DatasetConfig>,
}

impl FileConfig {
    /// Load the config file: the one named (which must exist), else the
    /// default path when it exists, else an empty config.
    pub fn load(named: Option<&Path>) -> Result<FileConfig> {
        let (path, must_exist) = match named {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(FileConfig::default()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read config file {}: check --config or N2S_CONFIG", path.display())
                });
            }
        };
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse config text; `origin` names it in errors. Every error is one
    /// line that says where and what.
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1);
            let msg = e.message().replace('\n', " ");
            match line {
                Some(l) => anyhow::anyhow!("config file {origin} line {l}: {msg}"),
                None => anyhow::anyhow!("config file {origin}: {msg}"),
            }
        })?;
        // Values that would be clamped or misread are refused instead:
        // a setting that silently means something else is a surprise.
        if let Some(mb) = cfg.pack_size_mb
            && !(1..=512).contains(&mb)
        {
            anyhow::bail!("config file {origin}: pack_size_mb = {mb}: give 1 to 512 (MiB; default 16)");
        }
        if let Some(n) = cfg.checkpoint_every
            && n < 1
        {
            anyhow::bail!(
                "config file {origin}: checkpoint_every = {n}: give 1 or more (a full manifest every that many changesets; default 16)"
            );
        }
        if let Some(n) = cfg.connections
            && !(1..=MAX_CONNECTIONS).contains(&n)
        {
            anyhow::bail!("config file {origin}: connections = {n}: give 1 to {MAX_CONNECTIONS}");
        }
        if let Some(n) = cfg.sftp.as_ref().and_then(|s| s.sessions)
            && !(1..=16).contains(&n)
        {
            anyhow::bail!("config file {origin}: [sftp] sessions = {n}: give 1 to 16 (default 4)");
        }
        if let Some(0) = cfg.request_timeout_secs {
            anyhow::bail!(
                "config file {origin}: request_timeout_secs = 0: give the seconds one backend request may take (default 120)"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for d in &cfg.dataset {
            super::dataset_name(&d.name).map_err(|e| anyhow::anyhow!("config file {origin}: {e}"))?;
            if !seen.insert(&d.name) {
                anyhow::bail!("config file {origin}: dataset {:?} is defined twice", d.name);
            }
            d.policy().map_err(|e| anyhow::anyhow!("config file {origin}: {e:#}"))?;
            d.excludes(&[], false).map_err(|e| anyhow::anyhow!("config file {origin}: {e:#}"))?;
            if d.one_file_system == Some(false) {
                anyhow::bail!(
                    "config file {origin}: dataset {:?}: one_file_system = false is not supported: a file system mounted inside the tree is backed up as a dataset of its own (add a [[dataset]] for it)",
                    d.name
                );
            }
        }
        Ok(cfg)
    }

    pub fn dataset(&self, name: &str) -> Option<&DatasetConfig> {
        self.dataset.iter().find(|d| d.name == name)
    }
}

/// Most backend requests in flight that `connections` may ask for.
pub const MAX_CONNECTIONS: usize = 64;

/// The settings a command runs with, resolved from flags, env and file.
pub struct Settings {
    pub repo: String,
    /// `None`: a passphrase must open one of the repository's key objects.
    pub key_file: Option<PathBuf>,
    pub password: super::passphrase::PasswordSource,
    pub state_dir: PathBuf,
    /// How to reach an s3:// repository.
    pub s3: crate::backend::S3Settings,
    pub sftp: crate::backend::SftpSettings,
    pub rclone: crate::backend::RcloneSettings,
    pub file: FileConfig,
    pub request_timeout: std::time::Duration,
    /// KiB/s; `None`: no limit.
    pub limit_upload_kib: Option<u64>,
    pub limit_download_kib: Option<u64>,
    /// As given; `None`: the backend's default (`connections_for`).
    pub connections: Option<usize>,
    /// node_exporter textfile to write after a backup.
    pub metrics_file: Option<PathBuf>,
}

impl Settings {
    pub fn resolve(g: &super::GlobalArgs) -> Result<Settings> {
        let file = FileConfig::load(g.config.as_deref())?;
        let repo = g.repo.clone().or_else(|| file.repo.clone()).ok_or_else(|| {
            UsageError("no repository given: pass --repo URL, set N2S_REPO, or set `repo` in the config file".into())
        })?;
        // No key file is no error yet: a passphrase may open one of the
        // repository's key objects (cli/passphrase.rs says so if not).
        let key_file = g.key_file.clone().or_else(|| file.key_file.clone());
        let password = super::passphrase::PasswordSource {
            file: g.password_file.clone().or_else(|| file.password_file.clone()),
            command: g.password_command.clone().or_else(|| file.password_command.clone()),
        };
        let state_dir =
            g.state_dir.clone().or_else(|| file.state_dir.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        // (The file's values were checked when it was parsed.)
        let request_timeout =
            file.request_timeout_secs.map_or(crate::backend::DEFAULT_REQUEST_TIMEOUT, std::time::Duration::from_secs);
        // 0 means no limit, as for rsync and rclone.
        let limit = |flag: Option<u64>, file: Option<u64>| flag.or(file).filter(|&k| k > 0);
        let connections = match (g.connections, file.connections) {
            (Some(n), _) if !(1..=MAX_CONNECTIONS).contains(&n) => {
                return Err(UsageError(format!("--connections {n}: give 1 to {MAX_CONNECTIONS}")).into());
            }
            (flag, file) => flag.or(file),
        };
        let s3 = file.s3.clone().unwrap_or_default();
        let s3 = crate::backend::S3Settings {
            endpoint: g.s3_endpoint.clone().or(s3.endpoint),
            region: g.s3_region.clone().or(s3.region),
            path_style: g.s3_path_style || s3.path_style.unwrap_or(false),
            pack_storage_class: s3.pack_storage_class,
            multipart_threshold: s3.multipart_threshold_mb.map(|mb| mb.max(5) << 20),
            credentials: None,
        };
        let sftp = file.sftp.clone().unwrap_or_default();
        let sftp = crate::backend::SftpSettings {
            identity_file: g.sftp_identity_file.clone().or(sftp.identity_file),
            known_hosts_file: g.sftp_known_hosts_file.clone().or(sftp.known_hosts_file),
            ssh_config: g.ssh_config.clone().or(sftp.ssh_config),
            sessions: sftp.sessions,
        };
        let rclone = file.rclone.clone().unwrap_or_default();
        let rclone = crate::backend::RcloneSettings {
            binary: g.rclone_binary.clone().or(rclone.binary),
            config: g.rclone_config.clone().or(rclone.config),
        };
        Ok(Settings {
            repo,
            key_file,
            password,
            state_dir,
            s3,
            sftp,
            rclone,
            request_timeout,
            limit_upload_kib: limit(g.limit_upload, file.limit_upload_kib),
            limit_download_kib: limit(g.limit_download, file.limit_download_kib),
            connections,
            metrics_file: g.metrics_file.clone().or_else(|| file.metrics_file.clone()),
            file,
        })
    }

    /// The key file, for the verbs that need one (init writes it).
    pub fn required_key_file(&self) -> Result<&Path> {
        self.key_file.as_deref().ok_or_else(|| {
            UsageError(
                "no key file given: pass --key-file PATH, set N2S_KEY_FILE, or set `key_file` in the config file"
                    .into(),
            )
            .into()
        })
    }

    /// The key file this run opens the repository with: the configured
    /// one, unless it is missing and a passphrase was given instead.
    pub fn key_file_in_use(&self) -> Option<&Path> {
        self.key_file.as_deref().filter(|p| p.exists() || !self.password.is_given())
    }

    /// How the backend's decorators are set.
    pub fn backend_options(&self) -> crate::backend::BackendOptions {
        crate::backend::BackendOptions {
            request_timeout: self.request_timeout,
            limit_upload: self.limit_upload_kib.map(|k| k.saturating_mul(1024)),
            limit_download: self.limit_download_kib.map(|k| k.saturating_mul(1024)),
            s3: self.s3.clone(),
            sftp: self.sftp.clone(),
            rclone: self.rclone.clone(),
        }
    }

    /// Requests to keep in flight: as given, else 8 on a remote backend
    /// (each request waits 20-200 ms on the network) and 2 on a local one
    /// (the disk is the limit there, not the latency).
    pub fn connections_for(&self, backend: &dyn crate::backend::Backend) -> usize {
        self.connections.unwrap_or(if backend.is_remote() { 8 } else { 2 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_example_and_rejects_typos() {
        let ok = r#"
            repo = "file:///srv/repo"
            key_file = "/etc/n2s/key"
            [[dataset]]
            name = "home"
            source = "walk"
            path = "/home"
        "#;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, ok).unwrap();
        let c = FileConfig::load(Some(&p)).unwrap();
        assert_eq!(c.dataset("home").unwrap().source, SourceKind::Walk);

        std::fs::write(&p, "repo = \"x\"\n[[dataset]]\nname = \"a\"\nsource = \"walk\"\npth = \"/x\"\n").unwrap();
        let e = format!("{:#}", FileConfig::load(Some(&p)).unwrap_err());
        assert!(e.contains("line 5") && e.contains("pth") && !e.contains('\n'), "{e}");

        let z = FileConfig::parse("[[dataset]]\nname = \"data\"\nsource = \"zfs\"\ndataset = \"tank/data\"\n", "t")
            .unwrap();
        assert_eq!(z.dataset("data").unwrap().zfs_dataset.as_deref(), Some("tank/data"));
        std::fs::write(&p, "[[dataset]]\nname = \"a\"\nsource = \"nfs\"\n").unwrap();
        assert!(FileConfig::load(Some(&p)).is_err());
        assert!(FileConfig::load(Some(&dir.path().join("missing.toml"))).is_err());
    }

    /// A value that would be clamped or misread is refused, by name, in one line.
    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        for (text, needle) in [
            ("pack_size_mb = 0\n", "pack_size_mb = 0"),
            ("pack_size_mb = 4096\n", "pack_size_mb = 4096"),
            ("checkpoint_every = 0\n", "checkpoint_every = 0"),
            ("connections = 0\n", "connections = 0"),
            ("request_timeout_secs = 0\n", "request_timeout_secs = 0"),
            ("[[dataset]]\nname = \"\"\nsource = \"walk\"\n", "dataset name is empty"),
            ("[[dataset]]\nname = \" home\"\nsource = \"walk\"\n", "leading or trailing"),
        ] {
            let e = format!("{:#}", FileConfig::parse(text, "t.toml").unwrap_err());
            assert!(e.contains(needle) && e.contains("t.toml") && !e.contains('\n'), "{text:?}: {e}");
        }
        assert!(FileConfig::parse("pack_size_mb = 1\ncheckpoint_every = 1\nconnections = 64\n", "t").is_ok());
        assert!(super::super::dataset_name("").is_err());
        assert!(super::super::dataset_name("tank/home").is_ok());
    }

    /// The example file parses with every commented-out setting switched on.
    #[test]
    fn the_shipped_example_parses_with_everything_uncommented() {
        let text = include_str!("../../agent-config/agent.toml.example");
        let on: String = text
            .lines()
            .map(|l| {
                // `#key = value` and `#[table]` are settings; `# words` is prose.
                let t = l.strip_prefix('#').filter(|r| r.starts_with('[') || r.contains(" = ") && !r.starts_with(' '));
                t.unwrap_or(l).to_string() + "\n"
            })
            .collect();
        let c = FileConfig::parse(&on, "agent.toml.example").unwrap_or_else(|e| panic!("{e:#}\n{on}"));
        let sftp = c.sftp.unwrap();
        assert!(sftp.identity_file.is_some() && sftp.known_hosts_file.is_some() && sftp.ssh_config.is_some());
        assert!(c.rclone.unwrap().config.is_some());
        assert!(c.s3.unwrap().region.is_some());
    }

    fn settings(args: &[&str], file: &str) -> Result<Settings> {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, format!("repo = \"/srv/r\"\nkey_file = \"/k\"\n{file}")).unwrap();
        let mut argv = vec!["n2s-agent".to_string(), "--config".into(), p.display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.push("status".into());
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        Settings::resolve(&cli.global)
    }

    #[test]
    fn request_settings_come_from_flags_then_the_file() {
        let s = settings(&[], "").unwrap();
        assert_eq!(s.request_timeout, std::time::Duration::from_secs(120));
        assert_eq!((s.limit_upload_kib, s.limit_download_kib, s.connections), (None, None, None));
        let local = crate::backend::memory::MemoryBackend::new();
        assert_eq!(s.connections_for(&local), 2);

        let file = "request_timeout_secs = 30\nlimit_upload_kib = 512\nlimit_download_kib = 0\nconnections = 4\n";
        let s = settings(&[], file).unwrap();
        assert_eq!(s.request_timeout, std::time::Duration::from_secs(30));
        assert_eq!(s.limit_upload_kib, Some(512));
        assert_eq!(s.limit_download_kib, None, "0 is no limit");
        assert_eq!(s.connections_for(&local), 4);
        let o = s.backend_options();
        assert_eq!((o.limit_upload, o.limit_download), (Some(512 << 10), None));

        let s = settings(&["--limit-upload", "0", "--limit-download", "64", "--connections", "16"], file).unwrap();
        assert_eq!((s.limit_upload_kib, s.limit_download_kib, s.connections), (None, Some(64), Some(16)));

        let e = settings(&["--connections", "0"], "").err().unwrap();
        assert!(e.downcast_ref::<UsageError>().is_some() && e.to_string().contains("--connections 0"), "{e}");
        // The file's values are the file's errors (exit 1, like any other
        // mistake in it), checked as it is parsed.
        for (file, want) in
            [("connections = 65\n", "connections = 65"), ("request_timeout_secs = 0\n", "request_timeout_secs = 0")]
        {
            let e = settings(&[], file).err().unwrap();
            assert!(e.downcast_ref::<UsageError>().is_none() && e.to_string().contains(want), "{e}");
        }
    }

    proptest! {
        #[test]
        fn config_parser_never_panics(text in ".{0,200}") {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.toml");
            std::fs::write(&p, &text).unwrap();
            let _ = FileConfig::load(Some(&p));
        }
    }
}
