//! A directory on an SSH server as a repository
//! (`sftp://[user@]host[:port]/path`), through the system `ssh` (the
//! `openssh` crate, one multiplexed master connection) and
//! `openssh-sftp-client`, which pipelines many SFTP requests on one
//! channel: a 16 MiB pack goes up and comes down as ~64 requests in flight,
//! not one round trip after another.
//!
//! Like the S3 backend, this one owns a small tokio runtime; every
//! `Backend` call blocks its caller's thread on it, so nothing above this
//! file knows about async.
//!
//! - **Authentication** is ssh's own: keys (`identity_file` or ssh's
//!   defaults and agent), `~/.ssh/config` or the `ssh_config` given, and the
//!   server's host key checked strictly against known_hosts (never
//!   accept-new). ssh runs with BatchMode, so it never asks for a password:
//!   no secret is ever on a command line.
//! - **Put-if-absent**: the body goes to `tmp/<random>.tmp`, is fsynced
//!   (`fsync@openssh.com`), then hard-linked onto its key
//!   (`hardlink@openssh.com`), which fails when the name exists; the
//!   temporary name is removed after. OpenSSH reports every failure as a
//!   generic SSH_FX_FAILURE, so a failed link is followed by a stat of the
//!   key to tell "already there" from a real error. Without the hardlink
//!   extension, the fallback is stat-then-link by plain SSH_FXP_RENAME
//!   (which OpenSSH also refuses onto an existing name); it is said once in
//!   the log. posix-rename is never used for this: it overwrites.
//! - The same layout as a local repository (`src/backend/local.rs`): a key is
//!   a path below the root, `tmp/` holds uploads in progress and is never
//!   listed, and files of `tmp/` older than an hour are what
//!   `cleanup_interrupted` removes.
//! - The master ssh process forks away from the agent, so it cannot die
//!   with it: it is started with `ControlPersist` of a few seconds, so a
//!   killed agent leaves it idle for at most that long. Its control socket
//!   lives in a private 0700 directory under the system temp directory.

use std::collections::HashSet;
use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use openssh::{KnownHosts, SessionBuilder};
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use tokio::io::AsyncSeekExt;

use super::{BResult, Backend, BackendError, ObjectInfo, PutOutcome, SftpSettings};

/// How long the master connection outlives its last user: bounds what a
/// killed agent leaves running.
const CONTROL_PERSIST_SECS: usize = 5;

/// SSH connections per run (`[sftp] sessions`): measured on loopback, one
/// connection left restic ahead on a 1 GiB backup; four spread the
/// server's and the client's work over the cores.
const DEFAULT_SESSIONS: usize = 4;
const MAX_SESSIONS: usize = 16;

/// Bytes per read or write request: OpenSSH's limit (limits@openssh.com
/// says 261120 for both). A larger piece is still right, only split again
/// by the client, one request after another.
const PIECE: usize = 255 * 1024;

/// An `sftp://` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The repository's directory: absolute, or relative to the login
    /// directory (`sftp://host/~/backups` → `backups`).
    pub path: String,
}

/// `sftp://[user@]host[:port]/path`; `/~/path` is relative to the login
/// directory.
pub fn parse_url(url: &str) -> anyhow::Result<SftpUrl> {
    let form = "use sftp://[USER@]HOST[:PORT]/ABS/PATH (or /~/PATH below the login directory)";
    let rest = url.strip_prefix("sftp://").ok_or_else(|| anyhow::anyhow!("{url:?} is not an sftp:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => anyhow::bail!("repository URL {url:?} names no directory: {form}"),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
        Some(_) => anyhow::bail!("repository URL {url:?}: the user before '@' is empty: {form}"),
        None => (None, authority),
    };
    // [v6::addr]:port, host:port, host
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) =
            v6.split_once(']').ok_or_else(|| anyhow::anyhow!("repository URL {url:?}: unclosed '[' in the host"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() || host.starts_with('-') {
        anyhow::bail!("repository URL {url:?} names no host: {form}");
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| anyhow::anyhow!("repository URL {url:?}: port {p:?} is not a port number: {form}"))?,
        ),
    };
    let path = match path.strip_prefix("/~") {
        Some("") => String::new(),
        Some(rel) if rel.starts_with('/') => rel.trim_matches('/').to_string(),
        _ => {
            let p = path.trim_end_matches('/');
            if p.is_empty() { "/".to_string() } else { p.to_string() }
        }
    };
    if path.split('/').any(|c| c == "..") {
        anyhow::bail!("repository URL {url:?}: the path may not contain '..': {form}");
    }
    Ok(SftpUrl { user, host, port, path })
}

pub struct SftpBackend {
    rt: tokio::runtime::Runtime,
    url: SftpUrl,
    builder: SessionBuilder,
    location: String,
    /// The SSH connections, each with its own SFTP channel and so its own
    /// sftp-server process on the host: one server process handles its
    /// requests one at a time (an fsync of a 16 MiB pack holds up
    /// everything behind it), and one ssh client encrypts on one core.
    /// Opened as parallel work needs them (`connection`). `None`: not connected yet, or broke (the
    /// next request connects again, so the retry decorator heals a dropped
    /// link).
    conns: Vec<Mutex<Option<Arc<Sftp>>>>,
    /// Requests in flight on each connection.
    busy: Vec<std::sync::atomic::AtomicUsize>,
    /// Directories known to exist (made or seen), so a put does not ask.
    dirs: Mutex<HashSet<String>>,
    said_no_hardlink: AtomicBool,
    connected_once: AtomicBool,
    _control_dir: PathBuf,
}

impl SftpBackend {
    pub fn open(url: &str, settings: &SftpSettings) -> anyhow::Result<SftpBackend> {
        let parsed = parse_url(url)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("n2s-sftp")
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the SFTP client's runtime: {e}"))?;
        let control_dir = control_dir()?;
        let mut b = SessionBuilder::default();
        b.known_hosts_check(KnownHosts::Strict)
            .control_directory(&control_dir)
            .control_persist(openssh::ControlPersist::IdleFor(
                std::num::NonZeroUsize::new(CONTROL_PERSIST_SECS).unwrap_or(std::num::NonZeroUsize::MIN),
            ))
            .connect_timeout(Duration::from_secs(30))
            .server_alive_interval(Duration::from_secs(15));
        if let Some(u) = &parsed.user {
            b.user(u.clone());
        }
        if let Some(p) = parsed.port {
            b.port(p);
        }
        for (what, p, flag) in [
            ("identity file", &settings.identity_file, "[sftp] identity_file / N2S_SFTP_IDENTITY_FILE"),
            ("known_hosts file", &settings.known_hosts_file, "[sftp] known_hosts_file / N2S_SFTP_KNOWN_HOSTS_FILE"),
            ("ssh_config file", &settings.ssh_config, "[sftp] ssh_config / N2S_SSH_CONFIG"),
        ] {
            if let Some(p) = p
                && !p.is_file()
            {
                anyhow::bail!("{what} {} does not exist: check {flag}", p.display());
            }
        }
        if let Some(k) = &settings.identity_file {
            b.keyfile(k);
        }
        if let Some(k) = &settings.known_hosts_file {
            b.user_known_hosts_file(k);
        }
        if let Some(c) = &settings.ssh_config {
            b.config_file(c);
        }
        let location = format!(
            "sftp://{}{}{}/{}",
            parsed.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default(),
            if parsed.host.contains(':') { format!("[{}]", parsed.host) } else { parsed.host.clone() },
            parsed.port.map(|p| format!(":{p}")).unwrap_or_default(),
            if parsed.path.starts_with('/') { parsed.path[1..].to_string() } else { format!("~/{}", parsed.path) },
        );
        let backend = SftpBackend {
            rt,
            url: parsed,
            builder: b,
            location,
            conns: (0..settings.sessions.unwrap_or(DEFAULT_SESSIONS).clamp(1, MAX_SESSIONS))
                .map(|_| Mutex::new(None))
                .collect(),
            busy: (0..settings.sessions.unwrap_or(DEFAULT_SESSIONS).clamp(1, MAX_SESSIONS))
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
            dirs: Mutex::new(HashSet::new()),
            said_no_hardlink: AtomicBool::new(false),
            connected_once: AtomicBool::new(false),
            _control_dir: control_dir,
        };
        // Connect now: a wrong host, key or host key is one clear error at
        // once, not a retried failure of the first request.
        backend.connect_slot(0).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(backend)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.handle().block_on(f)
    }

    /// A connection for the next request: an idle connected one; else one
    /// not connected yet (more requests are in flight than connections:
    /// open another); else the least busy. A run of one request after
    /// another so keeps one connection, and only parallel work pays for
    /// more handshakes.
    fn connection(&self) -> BResult<(usize, Arc<Sftp>)> {
        let connected: Vec<bool> = self.conns.iter().map(|c| c.lock().is_ok_and(|g| g.is_some())).collect();
        let load = |i: usize| self.busy[i].load(Ordering::Relaxed);
        let slot = (0..self.conns.len())
            .find(|&i| connected[i] && load(i) == 0)
            .or_else(|| (0..self.conns.len()).find(|&i| !connected[i]))
            .unwrap_or_else(|| (0..self.conns.len()).min_by_key(|&i| load(i)).unwrap_or(0));
        Ok((slot, self.connect_slot(slot)?))
    }

    fn connect_slot(&self, slot: usize) -> BResult<Arc<Sftp>> {
        let mut guard = self.conns[slot].lock().map_err(|_| anyhow::anyhow!("SFTP connection lock poisoned"))?;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let dest = &self.url.host;
        let sftp = self.block_on(async {
            let session = self.builder.connect(dest).await.map_err(|e| self.connect_error(e))?;
            Sftp::from_session(session, SftpOptions::default()).await.map_err(|e| {
                let err = anyhow::anyhow!(
                    "{}: cannot start the SFTP subsystem ({e}): check that the server's sshd_config has `Subsystem sftp`",
                    self.location
                );
                // Once a run was connected, the subsystem exists: this was
                // the link dropping under the new channel, worth a retry.
                if self.connected_once.load(Ordering::Relaxed) {
                    BackendError::Transient(err)
                } else {
                    BackendError::Other(err)
                }
            })
        })?;
        let sftp = Arc::new(sftp);
        self.connected_once.store(true, Ordering::Relaxed);
        *guard = Some(sftp.clone());
        Ok(sftp)
    }

    fn connect_error(&self, e: openssh::Error) -> BackendError {
        let text = format!("{e}");
        let chain = {
            let mut s = text.clone();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s.replace('\n', " ")
        };
        let low = chain.to_lowercase();
        let hint = if low.contains("host key verification failed") || low.contains("host key") {
            "the server's host key is not in known_hosts (or changed): add it with ssh-keyscan after checking its fingerprint, or set [sftp] known_hosts_file / N2S_SFTP_KNOWN_HOSTS_FILE"
        } else if low.contains("permission denied") {
            "the server refused the login: check the user in the URL and [sftp] identity_file / N2S_SFTP_IDENTITY_FILE (its public key must be in the server's authorized_keys)"
        } else if low.contains("connection refused") {
            "nothing listens there: check the host and port in the URL"
        } else if low.contains("could not resolve") || low.contains("name or service not known") {
            "the host name does not resolve: check the host in the URL"
        } else {
            "check the URL, [sftp] settings and that `ssh` to that host works in batch mode"
        };
        // Once a run has been connected, any failure to connect again is
        // taken as passing (a server restarting, a link flapping): the
        // retry decorator tries again with backoff. The first connect's
        // failure is final, so a wrong setting fails at once.
        let transient = self.connected_once.load(Ordering::Relaxed)
            || low.contains("timed out")
            || low.contains("connection reset");
        let err = anyhow::anyhow!("cannot connect to {}: {chain}: {hint}", self.location);
        if transient { BackendError::Transient(err) } else { BackendError::Other(err) }
    }

    /// Forget a connection that broke, so the next request makes a new one.
    fn drop_connection(&self, slot: usize, broken: &Arc<Sftp>) {
        if let Ok(mut g) = self.conns[slot].lock()
            && g.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken))
        {
            *g = None;
        }
    }

    /// The remote path of a key.
    fn path_of(&self, key: &str) -> BResult<PathBuf> {
        super::check_key(key)?;
        Ok(self.remote(key))
    }

    fn remote(&self, rel: &str) -> PathBuf {
        if self.url.path.is_empty() {
            PathBuf::from(rel)
        } else if rel.is_empty() {
            PathBuf::from(&self.url.path)
        } else {
            Path::new(&self.url.path).join(rel)
        }
    }

    /// Run one request on the connection; a broken connection is dropped
    /// and the failure is transient (a retry reconnects).
    fn with_conn<T, F, Fut>(&self, what: &str, f: F) -> BResult<T>
    where
        F: FnOnce(Arc<Sftp>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        let (slot, conn) = self.connection()?;
        self.busy[slot].fetch_add(1, Ordering::Relaxed);
        let result = self.block_on(f(conn.clone()));
        self.busy[slot].fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                let mapped = self.map_err(what, e);
                if is_connection_error_kind(&mapped) {
                    self.drop_connection(slot, &conn);
                }
                Err(mapped.0)
            }
        }
    }

    fn map_err(&self, what: &str, e: SftpError) -> (BackendError, bool) {
        match &e {
            SftpError::SftpError(SftpErrorKind::NoSuchFile, _) => (BackendError::NotFound(what.to_string()), false),
            SftpError::SftpError(SftpErrorKind::PermDenied, _) => (
                BackendError::Other(anyhow::anyhow!(
                    "{}: permission denied on {what}: the SSH user must own the repository directory",
                    self.location
                )),
                false,
            ),
            SftpError::SftpError(..) => {
                (BackendError::Other(anyhow::anyhow!("{}: {what}: {}", self.location, one_line(&e))), false)
            }
            // Anything else is the channel: the connection dropped, ssh
            // died, a request was cut off. Worth a new connection and a retry.
            _ => (BackendError::Transient(anyhow::anyhow!("{}: {what}: {}", self.location, one_line(&e))), true),
        }
    }

    /// Make the directories down to `dir` (relative), each level once.
    async fn make_dirs(&self, sftp: &Sftp, dir: &str) -> Result<(), SftpError> {
        if !self.dirs.lock().is_ok_and(|d| d.contains("")) {
            self.make_root(sftp).await?;
        }
        let mut made = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            if !made.is_empty() {
                made.push('/');
            }
            made.push_str(part);
            if self.dirs.lock().is_ok_and(|d| d.contains(&made)) {
                continue;
            }
            let path = self.remote(&made);
            if let Err(e) = sftp.fs().create_dir(&path).await {
                // It may exist already (another writer made it): only a
                // directory that is still not there is an error.
                match sftp.fs().metadata(&path).await {
                    Ok(m) if m.file_type().is_some_and(|t| t.is_dir()) => {}
                    _ => return Err(e),
                }
            }
            if let Ok(mut d) = self.dirs.lock() {
                d.insert(made.clone());
            }
        }
        Ok(())
    }

    /// The repository's own directory and those above it (`init` on a
    /// directory that does not exist yet, as for a local repository).
    async fn make_root(&self, sftp: &Sftp) -> Result<(), SftpError> {
        let root = Path::new(&self.url.path);
        let mut path = PathBuf::new();
        for c in root.components() {
            path.push(c);
            if matches!(c, std::path::Component::RootDir) {
                continue;
            }
            if sftp.fs().metadata(&path).await.is_ok() {
                continue;
            }
            if let Err(e) = sftp.fs().create_dir(&path).await {
                match sftp.fs().metadata(&path).await {
                    Ok(m) if m.file_type().is_some_and(|t| t.is_dir()) => {}
                    _ => return Err(e),
                }
            }
        }
        if let Ok(mut d) = self.dirs.lock() {
            d.insert(String::new());
        }
        Ok(())
    }

    async fn put_inner(&self, sftp: Arc<Sftp>, key: &str, data: Arc<Vec<u8>>) -> Result<PutOutcome, SftpError> {
        let dest = self.remote(key);
        let mut rnd = [0u8; 12];
        getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
        let tmp_rel = format!("tmp/{}.tmp", hex::encode(rnd));
        let tmp = self.remote(&tmp_rel);
        self.make_dirs(&sftp, "tmp").await?;
        let file = sftp.options().write(true).create_new(true).open(&tmp).await?;
        let written = write_pipelined(&sftp, file, &data).await;
        if let Err(e) = written {
            let _ = sftp.fs().remove_file(&tmp).await;
            return Err(e);
        }
        let parent = key.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let outcome = self.link(&sftp, &tmp, &dest, parent).await;
        // The temporary name goes in the background (the object is whole
        // under its key already); one that stays is cleanup_interrupted's.
        let s = sftp.clone();
        tokio::spawn(async move {
            let _ = s.fs().remove_file(&tmp).await;
        });
        outcome
    }

    /// Give the written temporary file its key, unless the key exists.
    async fn link(&self, sftp: &Sftp, tmp: &Path, dest: &Path, parent: &str) -> Result<PutOutcome, SftpError> {
        let hardlink = sftp.support_hardlink();
        if !hardlink && !self.said_no_hardlink.swap(true, Ordering::Relaxed) {
            log::warn!(
                "{}: the server has no hardlink@openssh.com: put-if-absent falls back to stat-then-rename, which two writers racing for one key can both pass (the format tolerates it: docs/FORMAT.md §10)",
                self.location
            );
        }
        for attempt in 0..2 {
            if !hardlink && sftp.fs().metadata(dest).await.is_ok() {
                return Ok(PutOutcome::AlreadyExists);
            }
            let linked =
                if hardlink { sftp.fs().hard_link(tmp, dest).await } else { plain_rename(sftp, tmp, dest).await };
            match linked {
                Ok(()) => return Ok(PutOutcome::Created),
                Err(e) => {
                    // OpenSSH says SSH_FX_FAILURE for "exists" and for
                    // everything else: look.
                    if sftp.fs().metadata(dest).await.is_ok() {
                        return Ok(PutOutcome::AlreadyExists);
                    }
                    if attempt == 0 && !parent.is_empty() {
                        // Most likely the key's directory is not there yet.
                        if let Ok(mut d) = self.dirs.lock() {
                            d.retain(|k| !parent.starts_with(k.as_str()));
                        }
                        self.make_dirs(sftp, parent).await?;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(std::io::Error::other("link failed twice").into())
    }

    async fn get_inner(&self, sftp: Arc<Sftp>, path: PathBuf, range: Option<Range<u64>>) -> Result<Vec<u8>, SftpError> {
        let mut file = sftp.open(&path).await?;
        let range = match range {
            Some(r) => r,
            None => {
                let len = file.metadata().await?.len().unwrap_or(0);
                0..len
            }
        };
        let want = (range.end.saturating_sub(range.start)) as usize;
        let piece = PIECE as u64;
        let mut tasks = Vec::new();
        let mut off = range.start;
        while off < range.end {
            let n = piece.min(range.end - off);
            let mut f = file.clone();
            tasks.push(tokio::spawn(async move {
                f.seek(SeekFrom::Start(off)).await?;
                let buf = f.read_all(n as usize, bytes::BytesMut::with_capacity(n as usize)).await?;
                Ok::<_, SftpError>(buf)
            }));
            off += n;
        }
        let mut out = Vec::with_capacity(want);
        let mut failed = None;
        for t in tasks {
            match t.await {
                Ok(Ok(buf)) => out.extend_from_slice(&buf),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(e) => failed = failed.or(Some(SftpError::from(e))),
            }
        }
        // The handle is closed in the background: the caller has its bytes,
        // and a round trip less per read matters to a restore of many small
        // files over a slow link.
        tokio::spawn(async move {
            let _ = file.close().await;
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(out)
    }

    async fn list_inner(&self, sftp: Arc<Sftp>, prefix: String) -> Result<Vec<ObjectInfo>, SftpError> {
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", &prefix));
        let mut out = Vec::new();
        let mut stack = vec![dir_part.to_string()];
        while let Some(rel) = stack.pop() {
            let entries = match read_dir(&sftp, &self.remote(&rel)).await {
                Ok(e) => e,
                Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => continue,
                Err(e) => return Err(e),
            };
            for (name, meta) in entries {
                if name == "." || name == ".." {
                    continue;
                }
                let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                if key == "tmp" {
                    continue; // half-written uploads are not objects
                }
                match meta.file_type() {
                    // Only directories the prefix can reach.
                    Some(t) if t.is_dir() && (prefix.starts_with(&format!("{key}/")) || key.starts_with(&prefix)) => {
                        stack.push(key);
                    }
                    Some(t) if t.is_file() && key.starts_with(&prefix) && super::check_key(&key).is_ok() => {
                        out.push(ObjectInfo { key, size: meta.len().unwrap_or(0) });
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

impl Drop for SftpBackend {
    fn drop(&mut self) {
        // Close the channel and the master connection cleanly (ssh -O exit),
        // rather than leaving ssh to notice.
        for conn in &self.conns {
            if let Ok(mut g) = conn.lock()
                && let Some(c) = g.take()
                && let Ok(sftp) = Arc::try_unwrap(c)
            {
                let _ = self
                    .rt
                    .handle()
                    .block_on(async { tokio::time::timeout(Duration::from_secs(10), sftp.close()).await });
            }
        }
    }
}

fn is_connection_error_kind(e: &(BackendError, bool)) -> bool {
    e.1
}

fn one_line(e: &SftpError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s.replace('\n', " ")
}

/// Write the whole body with many write requests in flight (one per
/// `max_write_len` piece, each at its own offset), then fsync and close.
async fn write_pipelined(
    sftp: &Sftp,
    file: openssh_sftp_client::file::File,
    data: &Arc<Vec<u8>>,
) -> Result<(), SftpError> {
    let piece = PIECE;
    let mut tasks = Vec::new();
    let mut off = 0usize;
    while off < data.len() {
        let n = piece.min(data.len() - off);
        let mut f = file.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            f.seek(SeekFrom::Start(off as u64)).await?;
            f.write_all(&data[off..off + n]).await?;
            Ok::<_, SftpError>(())
        }));
        off += n;
    }
    let mut failed = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(e) => failed = failed.or(Some(SftpError::from(e))),
        }
    }
    let mut file = file;
    if let Some(e) = failed {
        let _ = file.close().await;
        return Err(e);
    }
    if sftp.support_fsync() {
        file.sync_all().await?;
    }
    file.close().await
}

/// The fallback without hardlink@openssh.com, after a stat found no object.
/// Fs::rename takes posix-rename when the server has it, which overwrites:
/// a racing writer's object may be replaced by an identical one (packs and
/// segments are named by their content; headers by a random id).
async fn plain_rename(sftp: &Sftp, from: &Path, to: &Path) -> Result<(), SftpError> {
    sftp.fs().rename(from, to).await
}

async fn read_dir(
    sftp: &Sftp,
    path: &Path,
) -> Result<Vec<(String, openssh_sftp_client::metadata::MetaData)>, SftpError> {
    use futures_core::Stream;
    let dir = sftp.fs().open_dir(path).await?;
    let mut stream = Box::pin(dir.read_dir());
    let mut out = Vec::new();
    while let Some(item) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        let entry = item?;
        let name = entry.filename().to_string_lossy().into_owned();
        out.push((name, entry.metadata()));
    }
    Ok(out)
}

/// A private directory for ssh's control sockets: `$TMPDIR/n2s-ssh-<uid>`,
/// 0700 (a control socket lets whoever can reach it use the connection).
fn control_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = rustix::process::getuid().as_raw();
    let dir = std::env::temp_dir().join(format!("n2s-ssh-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => anyhow::bail!("cannot create {}: {e}: set TMPDIR to a writable directory", dir.display()),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| anyhow::anyhow!("cannot stat {}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid {
        anyhow::bail!(
            "{} is not a directory of this user: remove it, or set TMPDIR elsewhere (it holds ssh control sockets)",
            dir.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", dir.display()))?;
    }
    clean_stale_control_dirs(&dir);
    Ok(dir)
}

/// Control directories of agents that were killed: no live master answers
/// on their socket. (openssh's own cleaner removes every one, live ones of
/// other agents too.)
fn clean_stale_control_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(".ssh-connection") {
            continue;
        }
        let master = e.path().join("master");
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > Duration::from_secs(60));
        if old && std::os::unix::net::UnixStream::connect(&master).is_err() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Backend for SftpBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        self.put_shared(key, Arc::new(data.to_vec()))
    }

    fn put_shared(&self, key: &str, data: Arc<Vec<u8>>) -> BResult<PutOutcome> {
        self.path_of(key)?;
        self.with_conn(key, |sftp| async move { self.put_inner(sftp, key, data).await })
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        let path = self.path_of(key)?;
        let want = range.as_ref().map(|r| r.end.saturating_sub(r.start));
        let data = self.with_conn(key, |sftp| async move { self.get_inner(sftp, path, range).await })?;
        if let Some(n) = want
            && data.len() as u64 != n
        {
            return Err(BackendError::Other(anyhow::anyhow!(
                "{}: {key}: the range asked for {n} bytes, the file gave {} (it is shorter)",
                self.location,
                data.len()
            )));
        }
        Ok(data)
    }

    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        let prefix = prefix.to_string();
        self.with_conn("list", |sftp| async move { self.list_inner(sftp, prefix).await })
    }

    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        let path = self.path_of(key)?;
        match self.with_conn(key, |sftp| async move { sftp.fs().metadata(&path).await }) {
            Ok(m) => Ok(Some(m.len().unwrap_or(0))),
            Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, key: &str) -> BResult<()> {
        let path = self.path_of(key)?;
        match self.with_conn(key, |sftp| async move { sftp.fs().remove_file(&path).await }) {
            Ok(()) | Err(BackendError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        for k in keys {
            self.path_of(k)?;
        }
        let paths: Vec<PathBuf> = keys.iter().map(|k| self.remote(k)).collect();
        // All removes in flight at once on the one channel.
        self.with_conn("delete", |sftp| async move {
            let mut tasks = Vec::new();
            for p in paths {
                let s = sftp.clone();
                tasks.push(tokio::spawn(async move { s.fs().remove_file(&p).await }));
            }
            let mut failed = None;
            for t in tasks {
                match t.await {
                    Ok(Ok(())) | Ok(Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _))) => {}
                    Ok(Err(e)) => failed = failed.or(Some(e)),
                    Err(e) => failed = failed.or(Some(SftpError::from(e))),
                }
            }
            failed.map_or(Ok(()), Err)
        })
    }

    /// Files of `tmp/` older than an hour: uploads a killed agent left.
    fn cleanup_interrupted(&self) -> BResult<u64> {
        let tmp = self.remote("tmp");
        self.with_conn("tmp/", |sftp| async move {
            let entries = match read_dir(&sftp, &tmp).await {
                Ok(e) => e,
                Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => return Ok(0),
                Err(e) => return Err(e),
            };
            let mut n = 0;
            for (name, meta) in entries {
                let old = meta.modified().is_some_and(|t| {
                    SystemTime::now().duration_since(t.as_system_time()).unwrap_or_default() > Duration::from_secs(3600)
                });
                if old && name.ends_with(".tmp") && sftp.fs().remove_file(tmp.join(&name)).await.is_ok() {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("sftp://backup@host.example:2222/srv/repo/").unwrap();
        assert_eq!(
            u,
            SftpUrl {
                user: Some("backup".into()),
                host: "host.example".into(),
                port: Some(2222),
                path: "/srv/repo".into()
            }
        );
        let u = parse_url("sftp://host/~/repo").unwrap();
        assert_eq!((u.user, u.port, u.path.as_str()), (None, None, "repo"));
        let u = parse_url("sftp://[::1]:22/r").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(22)));
        for bad in [
            "sftp://host",
            "sftp:///path",
            "sftp://@h/p",
            "sftp://h:0/p",
            "sftp://h:x/p",
            "sftp://h/a/../b",
            "sftp://-oProxyCommand=x/p",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Whatever the text, parsing never panics, and a parsed path never
        /// climbs out with `..`.
        #[test]
        fn parse_url_never_panics(s in "sftp://[a-z@:\\[\\]/~.0-9-]{0,40}") {
            if let Ok(u) = parse_url(&s) {
                proptest::prop_assert!(!u.path.split('/').any(|c| c == ".."));
                proptest::prop_assert!(!u.host.is_empty());
            }
        }
    }
}
