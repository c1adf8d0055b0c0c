//! A real sshd for the tests: Debian's openssh-server (scripts/setup installs
//! it), started by the tests on 127.0.0.1 with a host key, a client key, an
//! `sshd_config` and a `known_hosts` of their own. One server per test
//! binary, started on first use, on port 2222 when that is free (else any
//! free port); each test gets a directory of its own under the server's
//! root. It dies with the test binary.
//!
//! The agent reaches it as any sysadmin's would: a key file, a known_hosts
//! file with strict checking, and an ssh_config of the test's own (so the
//! machine's ~/.ssh/config plays no part).

use super::{free_port, spawn_kept};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Server {
    pub port: u16,
    pub user: String,
    /// Keys, configs and the repositories' root.
    pub dir: PathBuf,
}

pub const SSHD: &str = "/usr/sbin/sshd";

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "n2s-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

fn user_name() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or NULL; it is
    // read at once, before any other call could reuse it.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        assert!(!pw.is_null(), "no passwd entry for this uid");
        std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}

/// The SSH banner, once sshd listens.
fn banner(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

fn start() -> Option<Server> {
    start_on(None)
}

/// An sshd of a test's own, for a test that cuts its connections (the
/// shared one serves every other test of the binary at the same time).
pub fn private_server() -> Option<Server> {
    start_on(Some(free_port()))
}

fn start_on(port: Option<u16>) -> Option<Server> {
    if !Path::new(SSHD).exists() {
        assert!(std::env::var("CI").is_err(), "CI must provide {SSHD} (scripts/setup installs openssh-server)");
        eprintln!("!!!!!!!! SKIPPED LOUDLY: {SSHD} is not installed: run scripts/setup !!!!!!!!");
        return None;
    }
    let dir = super::server_dir("sshd");
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).expect("authorized_keys");
    std::fs::create_dir_all(dir.join("root")).expect("sftp root");
    // sshd refuses to start without its privilege-separation directory.
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let port =
        port.unwrap_or_else(|| if std::net::TcpListener::bind("127.0.0.1:2222").is_ok() { 2222 } else { free_port() });
    let config = format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {d}/host_key\n\
         PidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         StrictModes no\n\
         Subsystem sftp internal-sftp\n\
         MaxSessions 64\n\
         MaxStartups 64:30:128\n\
         LogLevel ERROR\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).expect("sshd_config");
    let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).expect("host key");
    let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    std::fs::write(dir.join("known_hosts"), format!("[127.0.0.1]:{port} {} {}\n", host_pub[0], host_pub[1]))
        .expect("known_hosts");
    // The agent's ssh reads this file only (-F), never ~/.ssh/config.
    std::fs::write(dir.join("ssh_config"), "Host *\n  BatchMode yes\n  ServerAliveInterval 15\n").expect("ssh_config");
    let log = std::env::temp_dir().join(format!("n2s-test-sshd-{}-{port}.log", std::process::id()));
    let out = std::fs::File::create(&log).expect("sshd log");
    let mut cmd = Command::new(SSHD);
    cmd.arg("-D").arg("-e").arg("-f").arg(dir.join("sshd_config"));
    cmd.stdout(out.try_clone().expect("log")).stderr(out);
    spawn_kept(cmd);
    let t0 = Instant::now();
    while !banner(port) {
        if t0.elapsed() > Duration::from_secs(30) {
            panic!("sshd did not answer on 127.0.0.1:{port} within 30 s (log: {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Server { port, user: user_name(), dir })
}

/// This test binary's sshd (started on first use), or None (said loudly)
/// when openssh-server is not installed outside CI.
pub fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    SERVER.get_or_init(start).as_ref()
}

impl Server {
    /// A fresh directory on the server, as an sftp:// repository URL.
    pub fn new_location(&self) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        format!("sftp://{}@127.0.0.1:{}{}/t{n}", self.user, self.port, self.dir.join("root").display())
    }

    /// Where a location's files are on this machine (the server is local).
    pub fn local_path(&self, url: &str) -> PathBuf {
        let prefix = format!("sftp://{}@127.0.0.1:{}", self.user, self.port);
        PathBuf::from(url.strip_prefix(&prefix).expect("a location of this server"))
    }

    pub fn identity_file(&self) -> PathBuf {
        self.dir.join("client_key")
    }

    pub fn known_hosts_file(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// The environment an agent needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("N2S_SFTP_IDENTITY_FILE", self.identity_file()),
            ("N2S_SFTP_KNOWN_HOSTS_FILE", self.known_hosts_file()),
            ("N2S_SSH_CONFIG", self.ssh_config()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect()
    }
}
