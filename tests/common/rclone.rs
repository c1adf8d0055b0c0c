//! rclone for the tests. The agent starts its own `rclone rcd` (the
//! backend's job); the tests give it an rclone.conf of their own, one per
//! test binary, with two remotes:
//!
//! - `[n2s-local]`, `type = local`: repositories in a scratch directory;
//! - `[n2s-sftp]`, `type = sftp` on the test sshd (tests/common/sftp.rs),
//!   with its client key and known_hosts (strict host-key checking).
//!
//! The two kinds run different rclone binaries, so both supported versions
//! run the parametrised suites: Local runs Debian's rclone 1.60
//! (/usr/bin/rclone), Sftp the PyPI wheel's 1.75
//! (/opt/n2s-test-venv/bin/rclone). When one is missing the other stands in
//! (said loudly); with neither the rclone tests are skipped loudly, and CI
//! fails instead.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `type = local` remote.
    Local,
    /// A `type = sftp` remote on the test sshd (tests/common/sftp.rs).
    Sftp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::Sftp => "sftp",
        }
    }
}

pub const DEBIAN_RCLONE: &str = "/usr/bin/rclone";

pub fn wheel_rclone() -> PathBuf {
    super::s3::venv_bin("rclone")
}

pub struct Server {
    pub kind: Kind,
    /// The rclone binary the agent runs for this kind.
    pub binary: PathBuf,
    /// The rclone.conf with both remotes.
    pub config: PathBuf,
    /// The remote's name in `config`.
    pub remote: &'static str,
    /// Where this kind's repositories are, as a path on this machine (the
    /// sshd is local too).
    pub root: PathBuf,
    next: AtomicU64,
}

/// The binary for `kind`: its own, else the other one (said loudly).
fn binary_for(kind: Kind) -> Option<PathBuf> {
    let (want, other) = match kind {
        Kind::Local => (PathBuf::from(DEBIAN_RCLONE), wheel_rclone()),
        Kind::Sftp => (wheel_rclone(), PathBuf::from(DEBIAN_RCLONE)),
    };
    if want.exists() {
        return Some(want);
    }
    assert!(std::env::var("CI").is_err(), "CI must provide {} (scripts/setup installs it)", want.display());
    if other.exists() {
        eprintln!(
            "!!!!!!!! {} is not installed: the rclone {} tests run {} instead: run scripts/setup !!!!!!!!",
            want.display(),
            kind.name(),
            other.display()
        );
        return Some(other);
    }
    eprintln!(
        "!!!!!!!! SKIPPED LOUDLY: no rclone binary ({DEBIAN_RCLONE}, {}): run scripts/setup !!!!!!!!",
        want.display()
    );
    None
}

/// This test binary's rclone.conf and scratch directory, written once.
struct Setup {
    dir: PathBuf,
    config: PathBuf,
    sftp_root: Option<PathBuf>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = super::server_dir("rclone");
        let mut conf = String::from("[n2s-local]\ntype = local\n\n");
        let sftp = super::sftp::server();
        let sftp_root = sftp.map(|s| {
            conf.push_str(&format!(
                "[n2s-sftp]\n\
                 type = sftp\n\
                 host = 127.0.0.1\n\
                 port = {}\n\
                 user = {}\n\
                 key_file = {}\n\
                 known_hosts_file = {}\n\
                 shell_type = unix\n\
                 disable_hashcheck = true\n\n",
                s.port,
                s.user,
                s.identity_file().display(),
                s.known_hosts_file().display()
            ));
            let root = s.dir.join("root").join(format!("rclone-{}", std::process::id()));
            std::fs::create_dir_all(&root).expect("sftp repositories' root");
            root
        });
        let config = dir.join("rclone.conf");
        std::fs::write(&config, conf).expect("rclone.conf");
        Setup { dir, config, sftp_root }
    })
}

fn start(kind: Kind) -> Option<Server> {
    let binary = binary_for(kind)?;
    let s = setup();
    let (remote, root) = match kind {
        Kind::Local => ("n2s-local", s.dir.join("repos")),
        // sftp::server() already said why it is missing.
        Kind::Sftp => ("n2s-sftp", s.sftp_root.clone()?),
    };
    Some(Server { kind, binary, config: s.config.clone(), remote, root, next: AtomicU64::new(0) })
}

/// The rclone setup of this kind for this test binary, or None (said
/// loudly) when rclone, or the sshd for Sftp, is not installed outside CI.
pub fn server(kind: Kind) -> Option<&'static Server> {
    static LOCAL: OnceLock<Option<Server>> = OnceLock::new();
    static SFTP: OnceLock<Option<Server>> = OnceLock::new();
    let cell = match kind {
        Kind::Local => &LOCAL,
        Kind::Sftp => &SFTP,
    };
    cell.get_or_init(|| start(kind)).as_ref()
}

impl Server {
    /// A fresh repository: `rclone:n2s-local:/var/tmp/n2s-rclone-…/repos/tN`
    /// or `rclone:n2s-sftp:/…/root/rclone-<pid>/tN` (rclone creates it).
    pub fn new_location(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        format!("rclone:{}:{}/t{n}", self.remote, self.root.display())
    }

    /// Where a location's objects are on this machine.
    pub fn local_path(&self, url: &str) -> PathBuf {
        let prefix = format!("rclone:{}:", self.remote);
        PathBuf::from(url.strip_prefix(&prefix).expect("a location of this setup"))
    }

    /// The environment an agent needs: which rclone, which rclone.conf.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("N2S_RCLONE_BINARY".to_string(), self.binary.display().to_string()),
            ("N2S_RCLONE_CONFIG".to_string(), self.config.display().to_string()),
        ]
    }
}
