//! `rclone:REMOTE:path`: any remote rclone knows, through a private
//! `rclone rcd` that this backend starts, owns and stops.
//!
//! The daemon:
//! - listens on 127.0.0.1, on a port the kernel picks (`--rc-addr
//!   127.0.0.1:0`; the backend reads the port from rcd's "Serving remote
//!   control on" line), so no other process can be mistaken for it; rclone
//!   1.60 has no unix sockets for rc (it was checked: "unknown port");
//! - asks for a random user and password on every request, given to it in
//!   its environment (RCLONE_RC_USER / RCLONE_RC_PASS), never on argv, so
//!   `ps` shows nothing another local user could use;
//! - gets the remotes from a config file only (`--config`, or rclone's own
//!   default): no secret is ever on its command line;
//! - dies with the agent however the agent ends: PR_SET_PDEATHSIG=SIGKILL,
//!   set in the child before exec, fires when the thread that spawned it
//!   ends (a keeper thread that lives as long as this backend), which a
//!   `kill -9` of the agent also does; Drop kills and reaps it.
//!
//! Object semantics:
//! - an upload goes to a temporary name `tmp/<unix secs>-<24 hex>.tmp`
//!   (`operations/uploadfile`, which writes in place: a reader could see the
//!   object growing) and is then moved to its key (`operations/movefile`,
//!   a rename on the local and sftp remotes, a server-side move or
//!   copy-then-delete elsewhere, which never exposes half an object);
//! - ranged reads are HTTP `Range` GETs on the remote rcd serves
//!   (`--rc-serve`, `/[REMOTE:path]/key`), which answer 206; rclone answers a
//!   range past the end with a short 206, so lengths are checked here;
//! - `operations/stat`, `operations/list` (recursive) and
//!   `operations/deletefile` do the rest; a missing directory lists empty
//!   and deleting a missing key succeeds.
//!
//! **Put-if-absent is weaker than on the local and S3 backends.** rclone
//! offers no create-exclusive, so it is a stat of the key followed by the
//! move onto it; the move overwrites. Within one agent process the two are
//! done under a per-key lock, so threads of one agent never both "win"; two
//! agents (two processes, two hosts) racing for one key can both be told
//! `Created`, and the later move replaces the earlier object. The format
//! stays safe (docs/FORMAT.md §10): packs, segments and pack summaries are
//! named by the hash of their content, so the replacing object has the same
//! bytes; a manifest header is the one object two writers may race for with
//! different bytes, which needs two agents backing up one dataset id at the
//! same moment (a misconfiguration), and the chain check then names the fork.
//! Each changeset's random id inside the header keeps the two apart.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

/// How long rcd may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Temporary uploads older than this are from runs that died.
const TMP_MAX_AGE_SECS: u64 = 3600;
/// rcd's last lines of output, for the message when it dies.
const LOG_LINES: usize = 20;

pub struct RcloneBackend {
    /// The remote and path as rclone names them: `REMOTE:path`.
    fs: String,
    /// The remote's name, for messages.
    remote: String,
    /// Which config file the remotes come from, for messages.
    config_desc: String,
    /// `http://127.0.0.1:PORT`.
    base: String,
    /// `/%5BREMOTE:path%5D/`: where rcd serves the repository's objects.
    served: String,
    auth: String,
    http: ureq::Agent,
    /// Keys a thread of this process is putting: put-if-absent's stat and
    /// move happen under this, so two threads cannot both create a key.
    putting: Mutex<HashSet<String>>,
    put_done: Condvar,
    daemon: Daemon,
}

/// The rcd process, stopped on drop.
struct Daemon {
    child: Mutex<Child>,
    /// Dropping it ends the keeper thread (and so fires PDEATHSIG, too).
    release: Option<mpsc::Sender<()>>,
    keeper: Option<std::thread::JoinHandle<()>>,
    log: Arc<Mutex<VecDeque<String>>>,
    binary: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        drop(self.release.take());
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
    }
}

impl Daemon {
    /// The daemon's exit status, when it has died.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait().ok().flatten()
    }

    fn last_lines(&self) -> String {
        last_lines(&self.log)
    }
}

fn last_lines(log: &Mutex<VecDeque<String>>) -> String {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let lines: Vec<&str> = log.iter().rev().take(3).map(String::as_str).collect();
    if lines.is_empty() {
        "it said nothing".to_string()
    } else {
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }
}

/// What went wrong with one rc request.
enum Failure {
    /// rcd answered with an error: its HTTP status and its `error` text.
    Rc { status: u16, error: String },
    /// No answer (connection refused or cut, timeout).
    Transport(String),
}

fn random_hex(n: usize) -> BResult<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(hex::encode(b))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Percent-encode all but unreserved characters and `/`.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `rclone:REMOTE:path` → (`REMOTE:path`, `REMOTE`).
pub fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let usage = "use rclone:REMOTE:path (REMOTE as named in rclone.conf)";
    let rest = url.strip_prefix("rclone:").ok_or_else(|| anyhow::anyhow!("{url:?} is not an rclone: URL: {usage}"))?;
    // An on-the-fly remote (`:sftp,host=h:path`) starts with a colon.
    let name_end = if let Some(r) = rest.strip_prefix(':') { r.find(':').map(|i| i + 1) } else { rest.find(':') };
    let Some(name_end) = name_end else { anyhow::bail!("repository URL {url:?} names no remote: {usage}") };
    let remote = &rest[..name_end];
    if remote.is_empty() || remote == ":" {
        anyhow::bail!("repository URL {url:?} names no remote: {usage}");
    }
    if rest.contains(']') || rest.contains(['\n', '\r', '\0']) {
        anyhow::bail!("repository URL {url:?}: the remote or path may not contain ']' or control characters");
    }
    let path = &rest[name_end + 1..];
    // "remote:dir/" and "remote:dir" are one place; "remote:/" is the root.
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    Ok((format!("{remote}:{path}"), remote.to_string()))
}

/// Where the remotes come from, for messages.
fn describe_config(settings: &RcloneSettings) -> String {
    if let Some(c) = &settings.config {
        return c.display().to_string();
    }
    if let Some(c) = std::env::var_os("RCLONE_CONFIG") {
        return PathBuf::from(c).display().to_string();
    }
    "rclone's default rclone.conf (`rclone config file` shows it)".to_string()
}

/// The host:port of rcd's "Serving remote control on http://HOST:PORT/".
fn served_addr(line: &str) -> Option<String> {
    let at = line.find("Serving remote control on http://")?;
    let rest = &line[at + "Serving remote control on http://".len()..];
    let addr = rest.split(['/', ' ']).next()?;
    addr.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map(|_| addr.to_string())
}

impl RcloneBackend {
    pub fn open(url: &str, settings: &RcloneSettings) -> anyhow::Result<RcloneBackend> {
        let (fs, remote) = parse_url(url)?;
        let binary = settings.binary.clone().unwrap_or_else(|| PathBuf::from("rclone"));
        let bin_desc = binary.display().to_string();
        if let Some(c) = &settings.config
            && !c.is_file()
        {
            anyhow::bail!(
                "the rclone config {} does not exist: check [rclone] config / N2S_RCLONE_CONFIG / --rclone-config",
                c.display()
            );
        }
        let user = format!("n2s-{}", random_hex(8)?);
        let pass = random_hex(24)?;
        let mut cmd = Command::new(&binary);
        cmd.arg("rcd").args(["--rc-addr", "127.0.0.1:0", "--rc-serve", "--log-level", "NOTICE"]);
        // An encrypted config without RCLONE_CONFIG_PASS must fail, not
        // wait for a password on a terminal nobody watches.
        cmd.arg("--ask-password=false");
        // rclone's sftp remote keeps 64 reads of 32 KiB in flight per open
        // file, which run far past each ranged GET: a 200k-file restore read
        // 3.9x what it received at the server. 4 in flight read 1.3x and
        // were faster for small and large restores alike (docs/benchmarks.md).
        // RCLONE_SFTP_CONCURRENCY, when set, still decides.
        if std::env::var_os("RCLONE_SFTP_CONCURRENCY").is_none() {
            cmd.args(["--sftp-concurrency", "4"]);
        }
        if let Some(c) = &settings.config {
            cmd.arg("--config").arg(c);
        }
        // The caller's environment configures remotes (RCLONE_CONFIG_*,
        // RCLONE_SFTP_*...), but none of it may change how rcd listens,
        // authenticates or logs: the port is read from its log.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("RCLONE_RC_")
                || k.starts_with("RCLONE_LOG")
                || ["RCLONE_USE_JSON_LOG", "RCLONE_VERBOSE", "RCLONE_QUIET", "RCLONE_SYSLOG", "RCLONE_STATS_LOG_LEVEL"]
                    .contains(&k.as_ref())
            {
                cmd.env_remove(k.as_ref());
            }
        }
        // The AWS SDK inside rclone's s3 remotes reads AWS_CA_BUNDLE too:
        // a bundle meant for the agent's own S3 endpoint would replace the
        // trusted roots of every s3 remote rclone reaches (BRIEF §7: unset).
        cmd.env_remove("AWS_CA_BUNDLE");
        cmd.env("RCLONE_RC_USER", &user).env("RCLONE_RC_PASS", &pass);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid), allocating nothing.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The agent died before prctl: nobody would ever kill us.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        // PDEATHSIG fires when the spawning *thread* ends, so rcd is spawned
        // from a thread that lives exactly as long as this backend.
        let (spawned_tx, spawned_rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let keeper = std::thread::Builder::new()
            .name("n2s-rclone-rcd".into())
            .spawn(move || {
                let r = cmd.spawn();
                let ok = r.is_ok();
                let _ = spawned_tx.send(r);
                if ok {
                    // Returns once the backend drops `release`.
                    let _ = released.recv();
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start a thread for rclone: {e}"))?;
        let spawned = spawned_rx.recv().map_err(|_| anyhow::anyhow!("the rclone keeper thread died"));
        let mut child = match spawned.and_then(|r| r.map_err(anyhow::Error::from)) {
            Ok(c) => c,
            Err(e) => {
                let _ = keeper.join();
                let not_found =
                    e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
                if not_found {
                    anyhow::bail!(
                        "cannot run rclone {bin_desc:?}: not found: install rclone, or set [rclone] binary / N2S_RCLONE_BINARY / --rclone-binary to its path"
                    );
                }
                anyhow::bail!(
                    "cannot run rclone {bin_desc:?}: {e:#}: check [rclone] binary / N2S_RCLONE_BINARY / --rclone-binary"
                );
            }
        };
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            // Drains rcd's output for as long as it lives (a full pipe would
            // stall it), keeping the last lines for error messages.
            let _ = std::thread::Builder::new().name("n2s-rclone-log".into()).spawn(move || {
                let mut addr_tx = Some(addr_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = served_addr(&line)
                        && let Some(tx) = addr_tx.take()
                    {
                        let _ = tx.send(addr);
                    }
                    log::debug!("rclone rcd: {line}");
                    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                    if l.len() >= LOG_LINES {
                        l.pop_front();
                    }
                    l.push_back(line);
                }
            });
        }
        let daemon = Daemon {
            child: Mutex::new(child),
            release: Some(release),
            keeper: Some(keeper),
            log: log.clone(),
            binary: bin_desc.clone(),
        };
        let addr = match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a,
            Err(mpsc::RecvTimeoutError::Timeout) => anyhow::bail!(
                "rclone {bin_desc:?} (rcd) did not start listening within {} s ({}): check [rclone] binary / N2S_RCLONE_BINARY",
                START_TIMEOUT.as_secs(),
                daemon.last_lines()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // It exited: give the log thread a moment to keep its last words.
                let status = daemon.child.lock().unwrap_or_else(|e| e.into_inner()).wait();
                anyhow::bail!(
                    "rclone {bin_desc:?} (rcd) exited at start ({}; {}): check [rclone] binary / N2S_RCLONE_BINARY and [rclone] config / N2S_RCLONE_CONFIG",
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    daemon.last_lines()
                )
            }
        };
        let http = ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            // The request deadline is TimeoutBackend's; this only bounds
            // how long an abandoned request can hold its thread.
            .timeout_global(Some(Duration::from_secs(900)))
            .max_idle_connections(64)
            .max_idle_connections_per_host(64)
            .build()
            .new_agent();
        let served = format!("/%5B{}%5D/", pct(&fs));
        let mut b = RcloneBackend {
            remote,
            config_desc: describe_config(settings),
            base: format!("http://{addr}"),
            served,
            auth: format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())),
            http,
            putting: Mutex::new(HashSet::new()),
            put_done: Condvar::new(),
            daemon,
            fs,
        };
        b.check_remote()?;
        Ok(b)
    }

    /// Check at open that rcd answers and that the remote exists, so that a
    /// wrong remote is one line naming the setting, not a retried failure
    /// on every request.
    fn check_remote(&mut self) -> anyhow::Result<()> {
        match self.rc("core/version", serde_json::json!({})) {
            Ok(v) => log::debug!("rclone {} ({}) serves {}", v["version"], self.daemon.binary, self.fs),
            Err(f) => anyhow::bail!("rclone rcd does not answer: {}", self.describe(&f)),
        }
        // rclone 1.60 has no config/paths; newer ones say which file is used.
        if let Ok(v) = self.rc("config/paths", serde_json::json!({}))
            && let Some(p) = v["config"].as_str()
        {
            self.config_desc = p.to_string();
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.rc("operations/fsinfo", serde_json::json!({ "fs": self.fs })) {
                Ok(_) => return Ok(()),
                Err(f) => match self.map(&f, "opening", "") {
                    BackendError::Transient(e) if attempt < 3 => {
                        log::warn!("opening rclone remote {}: {e:#}; retrying", self.fs);
                        std::thread::sleep(Duration::from_secs(attempt));
                    }
                    BackendError::Transient(e) | BackendError::Other(e) => {
                        anyhow::bail!(
                            "{e:#}{}",
                            if e.to_string().contains(&self.config_desc) {
                                String::new()
                            } else {
                                format!(": check the remote {:?} in {}", self.remote, self.config_desc)
                            }
                        )
                    }
                    BackendError::NotFound(_) => anyhow::bail!(
                        "rclone cannot open {:?} ({}): check the remote {:?} in {}",
                        self.fs,
                        self.describe(&f),
                        self.remote,
                        self.config_desc
                    ),
                },
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn transport(&self, e: impl std::fmt::Display) -> Failure {
        Failure::Transport(e.to_string())
    }

    /// One rc call: POST a JSON body, get a JSON answer.
    fn rc(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value, Failure> {
        let body = params.to_string();
        let resp = self
            .http
            .post(self.url(method))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .map_err(|e| self.transport(e))?;
        Self::answer(resp)
    }

    fn answer(mut resp: ureq::http::Response<ureq::Body>) -> Result<serde_json::Value, Failure> {
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| Failure::Transport(format!("reading rclone's answer: {e}")))?;
        let json: Option<serde_json::Value> = serde_json::from_slice(&text).ok();
        if status == 200 {
            return json.ok_or_else(|| Failure::Transport("rclone answered something that is not JSON".to_string()));
        }
        let error = json
            .as_ref()
            .and_then(|j| j["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().chars().take(300).collect());
        Err(Failure::Rc { status, error })
    }

    fn describe(&self, f: &Failure) -> String {
        match f {
            Failure::Rc { status, error } => format!("{error} (HTTP {status})"),
            Failure::Transport(e) => e.clone(),
        }
    }

    /// One line for a failed request, naming the setting to fix where
    /// there is one; Transient for what a retry may cure.
    fn map(&self, f: &Failure, what: &str, key: &str) -> BackendError {
        let on = if key.is_empty() {
            format!("rclone {what} {}", self.fs)
        } else {
            format!("rclone {what} {key} on {}", self.fs)
        };
        match f {
            Failure::Transport(e) => {
                if let Some(status) = self.daemon.exited() {
                    return BackendError::Other(anyhow::anyhow!(
                        "{on}: the agent's rclone rcd ({}) has exited ({status}; {}): rerun; if it recurs, check the rclone binary ([rclone] binary / N2S_RCLONE_BINARY)",
                        self.daemon.binary,
                        self.daemon.last_lines()
                    ));
                }
                BackendError::Transient(anyhow::anyhow!("{on}: {e}"))
            }
            Failure::Rc { status, error } => {
                let lower = error.to_ascii_lowercase();
                if lower.contains("didn't find section in config file") {
                    return BackendError::Other(anyhow::anyhow!(
                        "rclone remote {:?} is not in {}: check [rclone] config / N2S_RCLONE_CONFIG, or the remote in the repository URL",
                        self.remote,
                        self.config_desc
                    ));
                }
                if lower.contains("didn't find backend called") || lower.contains("failed to create file system") {
                    return BackendError::Other(anyhow::anyhow!(
                        "rclone cannot use remote {:?} of {}: {error}: check its section there ([rclone] config / N2S_RCLONE_CONFIG)",
                        self.remote,
                        self.config_desc
                    ));
                }
                if *status == 404 || lower.contains("object not found") || lower.contains("directory not found") {
                    return BackendError::NotFound(key.to_string());
                }
                if *status == 401 || *status == 403 {
                    return BackendError::Other(anyhow::anyhow!(
                        "{on}: the agent's rclone rcd refused its own password (HTTP {status}): is another rclone answering on its port?"
                    ));
                }
                let permanent = [
                    "permission denied",
                    "no space left",
                    "read-only file system",
                    "is a directory",
                    "not a directory",
                    "quota",
                    "couldn't find method",
                ];
                if *status == 400 || permanent.iter().any(|p| lower.contains(p)) {
                    return BackendError::Other(anyhow::anyhow!("{on}: {error} (HTTP {status})"));
                }
                BackendError::Transient(anyhow::anyhow!("{on}: {error} (HTTP {status})"))
            }
        }
    }

    fn rc_key(&self, method: &str, what: &str, key: &str) -> BResult<serde_json::Value> {
        self.rc(method, serde_json::json!({ "fs": self.fs, "remote": key })).map_err(|f| self.map(&f, what, key))
    }

    /// Upload `data` to `name` (in place: `name` must be a temporary one).
    fn upload(&self, name: &str, data: &[u8]) -> BResult<()> {
        let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
        let boundary = format!("n2s-{}", random_hex(16)?);
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file0\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let mut body = Vec::with_capacity(head.len() + data.len() + tail.len());
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(tail.as_bytes());
        let url = format!("{}?fs={}&remote={}", self.url("operations/uploadfile"), pct(&self.fs), pct(dir));
        let resp = self
            .http
            .post(url)
            .header("Authorization", &self.auth)
            .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
            .send(&body[..])
            .map_err(|e| self.map(&self.transport(e), "uploading", name))?;
        Self::answer(resp).map(|_| ()).map_err(|f| self.map(&f, "uploading", name))
    }

    fn remove_tmp(&self, tmp: &str) {
        if let Err(e) = self.delete(tmp) {
            log::debug!("cannot remove the temporary upload {tmp} on {}: {e}", self.fs);
        }
    }

    /// Hold `key` for this thread until the guard drops.
    fn lock_key(&self, key: &str) -> KeyGuard<'_> {
        let mut set = self.putting.lock().unwrap_or_else(|e| e.into_inner());
        while set.contains(key) {
            set = self.put_done.wait(set).unwrap_or_else(|e| e.into_inner());
        }
        set.insert(key.to_string());
        KeyGuard { b: self, key: key.to_string() }
    }

    fn move_into_place(&self, tmp: &str, key: &str) -> BResult<PutOutcome> {
        let _guard = self.lock_key(key);
        if self.stat(key)?.is_some() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let params = serde_json::json!({
            "srcFs": self.fs, "srcRemote": tmp, "dstFs": self.fs, "dstRemote": key,
        });
        match self.rc("operations/movefile", params) {
            Ok(_) => Ok(PutOutcome::Created),
            Err(f) => match self.map(&f, "moving an upload to", key) {
                // Our own temporary name vanished (another agent's cleanup
                // of an upload it took for abandoned): upload again.
                BackendError::NotFound(_) => Err(BackendError::Transient(anyhow::anyhow!(
                    "rclone: the temporary upload {tmp} for {key} vanished"
                ))),
                e => Err(e),
            },
        }
    }
}

struct KeyGuard<'a> {
    b: &'a RcloneBackend,
    key: String,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.b.putting.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
        self.b.put_done.notify_all();
    }
}

impl Backend for RcloneBackend {
    fn location(&self) -> String {
        format!("rclone:{}", self.fs)
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        check_key(key)?;
        // Most puts of an existing key (a pack another host stored) end
        // here, without sending the body.
        if self.stat(key)?.is_some() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let tmp = format!("tmp/{}-{}.tmp", now_secs(), random_hex(12)?);
        if let Err(e) = self.upload(&tmp, data) {
            self.remove_tmp(&tmp);
            return Err(e);
        }
        let r = self.move_into_place(&tmp, key);
        if !matches!(r, Ok(PutOutcome::Created)) {
            self.remove_tmp(&tmp);
        }
        r
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        check_key(key)?;
        if let Some(r) = &range {
            if r.start > r.end {
                return Err(BackendError::Other(anyhow::anyhow!("range {}..{} of {key} is reversed", r.start, r.end)));
            }
            if r.start == r.end {
                // HTTP has no empty range: check the object and its length.
                return match self.stat(key)? {
                    None => Err(BackendError::NotFound(key.to_string())),
                    Some(len) if r.end > len => Err(BackendError::Other(anyhow::anyhow!(
                        "range {}..{} is outside object {key} of {len} bytes",
                        r.start,
                        r.end
                    ))),
                    Some(_) => Ok(Vec::new()),
                };
            }
        }
        let mut req = self.http.get(format!("{}{}{key}", self.base, self.served)).header("Authorization", &self.auth);
        if let Some(r) = &range {
            req = req.header("Range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        let mut resp = req.call().map_err(|e| self.map(&self.transport(e), "reading", key))?;
        let status = resp.status().as_u16();
        if status != 200 && status != 206 {
            return Err(match Self::answer(resp) {
                Err(f) => self.map(&f, "reading", key),
                Ok(_) => BackendError::Transient(anyhow::anyhow!("rclone reading {key}: HTTP {status}")),
            });
        }
        // "bytes 3-4/5": the object's length, for a range past its end.
        let total = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, t)| t.trim().parse::<u64>().ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(|e| self.map(&self.transport(e), "reading", key))?;
        let Some(r) = range else { return Ok(body) };
        let want = (r.end - r.start) as usize;
        if status == 200 {
            // A server that ignored the Range header sent it all.
            if body.len() as u64 >= r.end {
                return Ok(body[r.start as usize..r.end as usize].to_vec());
            }
            return Err(BackendError::Other(anyhow::anyhow!(
                "range {}..{} is outside object {key} of {} bytes",
                r.start,
                r.end,
                body.len()
            )));
        }
        if body.len() != want {
            if let Some(total) = total.filter(|t| r.end > *t) {
                return Err(BackendError::Other(anyhow::anyhow!(
                    "range {}..{} is outside object {key} of {total} bytes",
                    r.start,
                    r.end
                )));
            }
            return Err(BackendError::Transient(anyhow::anyhow!(
                "rclone reading {key}: {} bytes of the {want} asked for",
                body.len()
            )));
        }
        Ok(body)
    }

    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        // List only the directory the prefix is in, recursively.
        let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        if !dir.is_empty() {
            check_key(dir)?;
        }
        let params = serde_json::json!({
            "fs": self.fs,
            "remote": dir,
            "opt": { "recurse": true, "filesOnly": true, "noModTime": true, "noMimeType": true },
        });
        let v = match self.rc("operations/list", params) {
            Ok(v) => v,
            Err(f) => {
                return match self.map(&f, "listing", prefix) {
                    BackendError::NotFound(_) => Ok(Vec::new()),
                    e => Err(e),
                };
            }
        };
        let items = v["list"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let (Some(path), Some(size)) = (item["Path"].as_str(), item["Size"].as_i64()) else { continue };
            // Half-written uploads are not objects.
            if path.starts_with(prefix) && !path.starts_with("tmp/") && item["IsDir"] != true {
                out.push(ObjectInfo { key: path.to_string(), size: size.max(0) as u64 });
            }
        }
        Ok(out)
    }

    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        check_key(key)?;
        match self.rc_key("operations/stat", "checking", key) {
            Ok(v) => {
                let item = &v["item"];
                if item.is_null() || item["IsDir"] == true {
                    return Ok(None);
                }
                Ok(Some(item["Size"].as_i64().unwrap_or(0).max(0) as u64))
            }
            Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, key: &str) -> BResult<()> {
        check_key(key)?;
        match self.rc_key("operations/deletefile", "deleting", key) {
            Ok(_) | Err(BackendError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Several deletes in flight: over an sftp remote each is a round trip.
    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        const WORKERS: usize = 8;
        if keys.len() <= 1 {
            return keys.iter().try_for_each(|k| self.delete(k));
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first_err: Mutex<Option<BackendError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..WORKERS.min(keys.len()) {
                s.spawn(|| {
                    loop {
                        if first_err.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                            return;
                        }
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(k) = keys.get(i) else { return };
                        if let Err(e) = self.delete(k) {
                            first_err.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        match first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Temporary uploads of runs that died, by the time in their names (not
    /// the remote's modification times, which some remotes do not keep):
    /// older than an hour, far past any live upload.
    fn cleanup_interrupted(&self) -> BResult<u64> {
        let params = serde_json::json!({
            "fs": self.fs, "remote": "tmp",
            "opt": { "filesOnly": true, "noModTime": true, "noMimeType": true },
        });
        let v = match self.rc("operations/list", params) {
            Ok(v) => v,
            Err(f) => {
                return match self.map(&f, "listing", "tmp/") {
                    BackendError::NotFound(_) => Ok(0),
                    e => Err(e),
                };
            }
        };
        let cutoff = now_secs().saturating_sub(TMP_MAX_AGE_SECS);
        let mut n = 0;
        for item in v["list"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(name) = item["Name"].as_str() else { continue };
            let born =
                name.strip_suffix(".tmp").and_then(|s| s.split_once('-')).and_then(|(t, _)| t.parse::<u64>().ok());
            if born.is_some_and(|t| t < cutoff) {
                self.delete(&format!("tmp/{name}"))?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod parser_props {
    //! URLs and rcd's log lines are outside input: parsing never panics,
    //! and a parsed remote is never empty.
    use super::*;
    proptest::proptest! {
        #[test]
        fn url_and_log_parsing_never_panic(s in ".{0,80}") {
            if let Ok((fs, remote)) = parse_url(&format!("rclone:{s}")) {
                proptest::prop_assert!(!remote.is_empty() && fs.starts_with(&remote));
            }
            let _ = served_addr(&s);
            let _ = served_addr(&format!("NOTICE: Serving remote control on http://{s}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rclone binaries the tests run: Debian's and the PyPI wheel's.
    pub(crate) fn binaries() -> Vec<PathBuf> {
        let found: Vec<PathBuf> = ["/usr/bin/rclone", "/opt/n2s-test-venv/bin/rclone"]
            .into_iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        if found.is_empty() {
            assert!(std::env::var("CI").is_err(), "CI must provide rclone (scripts/setup installs it)");
            eprintln!("!!!!!!!! SKIPPED LOUDLY: no rclone binary installed: run scripts/setup !!!!!!!!");
        }
        found
    }

    struct Fixture {
        dir: tempfile::TempDir,
        settings: RcloneSettings,
    }

    fn fixture(binary: &std::path::Path) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("rclone.conf");
        std::fs::write(&conf, "[n2s-local]\ntype = local\n").unwrap();
        Fixture { settings: RcloneSettings { binary: Some(binary.to_path_buf()), config: Some(conf) }, dir }
    }

    impl Fixture {
        fn open(&self, sub: &str) -> RcloneBackend {
            let url = format!("rclone:n2s-local:{}", self.dir.path().join(sub).display());
            RcloneBackend::open(&url, &self.settings).unwrap()
        }
    }

    #[test]
    fn url_parsing() {
        assert_eq!(parse_url("rclone:r:/a/b/").unwrap(), ("r:/a/b".into(), "r".into()));
        assert_eq!(parse_url("rclone:r:").unwrap(), ("r:".into(), "r".into()));
        assert_eq!(parse_url("rclone:r:/").unwrap(), ("r:/".into(), "r".into()));
        assert_eq!(parse_url("rclone::local:/x").unwrap(), (":local:/x".into(), ":local".into()));
        assert!(parse_url("rclone:nocolon").is_err());
        assert!(parse_url("rclone::/x").is_err());
        assert!(parse_url("rclone:r:/a]b").is_err());
        assert_eq!(
            served_addr("2026/12/04 NOTICE: Serving remote control on http://127.0.0.1:40737/").unwrap(),
            "127.0.0.1:40737"
        );
        assert_eq!(base64(b"n2s-ab:pw"), "bjJzLWFiOnB3");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn conformance_with_each_rclone() {
        for bin in binaries() {
            let f = fixture(&bin);
            let b = f.open("repo");
            conformance::check(&b);
            assert!(b.is_remote());
            assert_eq!(b.location(), format!("rclone:n2s-local:{}", f.dir.path().join("repo").display()));
            // Every temporary upload was moved or removed.
            let tmp = f.dir.path().join("repo/tmp");
            let left: Vec<_> =
                std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            assert!(left.is_empty(), "{}: left {left:?}", bin.display());
            // Big objects (a pack) and ranges deep inside them.
            let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i * 7 + i / 4093) as u8).collect();
            assert_eq!(b.put_if_absent("data/ff/big", &big).unwrap(), PutOutcome::Created);
            assert_eq!(b.get("data/ff/big", None).unwrap(), big);
            assert_eq!(b.get("data/ff/big", Some(12_345_678..12_400_000)).unwrap(), &big[12_345_678..12_400_000]);
            assert_eq!(b.get("data/ff/big", Some(7..7)).unwrap(), b"");
            b.delete_many(&["data/ff/big".into(), "data/cd/x2".into(), "data/zz/none".into()]).unwrap();
            assert!(b.list("data/").unwrap().is_empty());
            // Delete of a missing key is fine; a missing root lists empty.
            b.delete("data/ab/never").unwrap();
            assert!(f.open("nothing-here").list("").unwrap().is_empty());
        }
    }

    #[test]
    fn parallel_puts_of_one_key_create_it_once() {
        for bin in binaries() {
            let f = fixture(&bin);
            let b = f.open("repo");
            let outcomes: Vec<PutOutcome> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|i| {
                        let b = &b;
                        s.spawn(move || b.put_if_absent("manifests/d/0000000001", format!("writer {i}").as_bytes()))
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
            });
            let created = outcomes.iter().filter(|o| **o == PutOutcome::Created).count();
            assert_eq!(created, 1, "{}: {outcomes:?}", bin.display());
            let stored = b.get("manifests/d/0000000001", None).unwrap();
            assert!(stored.starts_with(b"writer "), "{stored:?}");
            // Many keys at once, from many threads, all land.
            std::thread::scope(|s| {
                for t in 0..8 {
                    let b = &b;
                    s.spawn(move || {
                        for i in 0..10 {
                            let k = format!("data/{t:02}/k{i}");
                            assert_eq!(b.put_if_absent(&k, k.as_bytes()).unwrap(), PutOutcome::Created);
                        }
                    });
                }
            });
            assert_eq!(b.list("data/").unwrap().len(), 80);
        }
    }

    #[test]
    fn interrupted_uploads_older_than_an_hour_are_removed() {
        let Some(bin) = binaries().into_iter().next() else { return };
        let f = fixture(&bin);
        let b = f.open("repo");
        let tmp = f.dir.path().join("repo/tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let old = format!("{}-{}.tmp", now_secs() - 7200, "a".repeat(24));
        let fresh = format!("{}-{}.tmp", now_secs() - 60, "b".repeat(24));
        std::fs::write(tmp.join(&old), b"x").unwrap();
        std::fs::write(tmp.join(&fresh), b"y").unwrap();
        std::fs::write(tmp.join("someone-elses"), b"z").unwrap();
        assert!(b.list("").unwrap().is_empty(), "tmp/ is no object");
        assert_eq!(b.cleanup_interrupted().unwrap(), 1);
        assert!(!tmp.join(&old).exists());
        assert!(tmp.join(&fresh).exists() && tmp.join("someone-elses").exists());
        assert_eq!(f.open("empty").cleanup_interrupted().unwrap(), 0);
    }

    #[test]
    fn the_daemon_stops_with_the_backend() {
        for bin in binaries() {
            let f = fixture(&bin);
            let b = f.open("repo");
            let pid = b.daemon.child.lock().unwrap().id();
            assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
            // The password is in its environment, not on its command line.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            assert!(!String::from_utf8_lossy(&cmdline).contains("rc-pass"), "{cmdline:?}");
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            assert!(String::from_utf8_lossy(&environ).contains("RCLONE_RC_PASS="));
            drop(b);
            // Killed and reaped: the pid is gone, not a zombie.
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "rcd {pid} is still there");
        }
    }

    #[test]
    fn wrong_settings_are_one_line_naming_the_setting() {
        for bin in binaries() {
            let f = fixture(&bin);
            let conf = f.settings.config.clone().unwrap();
            let e = RcloneBackend::open("rclone:nope:/x", &f.settings).err().unwrap().to_string();
            assert!(e.contains("\"nope\" is not in") && e.contains(&conf.display().to_string()), "{e}");
            assert!(e.contains("N2S_RCLONE_CONFIG") && !e.contains('\n'), "{e}");
            let missing =
                RcloneSettings { binary: Some("/nonexistent/rclone".into()), config: f.settings.config.clone() };
            let e = RcloneBackend::open("rclone:n2s-local:/x", &missing).err().unwrap().to_string();
            assert!(e.contains("not found") && e.contains("N2S_RCLONE_BINARY"), "{e}");
            let noconf = RcloneSettings { binary: Some(bin.clone()), config: Some(f.dir.path().join("absent.conf")) };
            let e = RcloneBackend::open("rclone:n2s-local:/x", &noconf).err().unwrap().to_string();
            assert!(e.contains("does not exist") && e.contains("N2S_RCLONE_CONFIG"), "{e}");
            let bad_type = f.dir.path().join("bad.conf");
            std::fs::write(&bad_type, "[weird]\ntype = nosuchbackend\n").unwrap();
            let s = RcloneSettings { binary: Some(bin.clone()), config: Some(bad_type) };
            let e = RcloneBackend::open("rclone:weird:/x", &s).err().unwrap().to_string();
            assert!(e.contains("weird") && e.contains("N2S_RCLONE_CONFIG") && !e.contains('\n'), "{e}");
        }
    }
}
