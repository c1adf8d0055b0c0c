//! Backends: keys to bytes. A backend knows nothing of files or chunks.
//!
//! The trait is deliberately small so S3, SFTP, rclone and IPFS can sit
//! behind it, and so retries, rate limits and fault injection can be
//! decorators around it.

use std::fmt;
use std::ops::Range;

pub mod counting;
pub mod fault;
#[cfg(feature = "ipfs")]
pub mod ipfs;
pub mod local;
pub mod memory;
pub mod ratelimit;
#[cfg(feature = "rclone")]
pub mod rclone;
pub mod retry;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "sftp")]
pub mod sftp;
pub mod timeout;

pub use counting::{RequestCounter, RequestCounts};

#[derive(Debug)]
pub enum BackendError {
    /// The key does not exist.
    NotFound(String),
    /// A failure that may pass (timeouts, throttling, dropped connections):
    /// worth a retry with backoff.
    Transient(anyhow::Error),
    /// A failure a retry will not fix (no space, no permission, bad key).
    Other(anyhow::Error),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::NotFound(k) => write!(f, "object {k} not found"),
            BackendError::Transient(e) | BackendError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for BackendError {}

impl From<anyhow::Error> for BackendError {
    fn from(e: anyhow::Error) -> Self {
        BackendError::Other(e)
    }
}

pub type BResult<T> = Result<T, BackendError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// An object already had that key; it was left untouched.
    AlreadyExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

pub trait Backend: Send + Sync {
    /// Where this backend points, for messages (never holds secrets).
    fn location(&self) -> String;
    /// Store `data` under `key` unless an object is there already. The
    /// object appears whole or not at all.
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome>;
    /// `put_if_absent` of a body the caller gives away (a pack: 16 MiB). A
    /// decorator that hands the call to another thread, or a backend whose
    /// client must own the body, takes it as it is instead of copying it.
    /// Decorators must forward it.
    fn put_shared(&self, key: &str, data: std::sync::Arc<Vec<u8>>) -> BResult<PutOutcome> {
        self.put_if_absent(key, &data)
    }
    /// Read an object, or the byte range of it.
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>>;
    /// Every object whose key starts with `prefix`, in no particular order.
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>>;
    /// The size of an object, or `None` when it does not exist.
    fn stat(&self, key: &str) -> BResult<Option<u64>>;
    fn delete(&self, key: &str) -> BResult<()>;
    /// Delete many objects (S3 batches them, 1000 a request). Decorators
    /// must forward it.
    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        keys.iter().try_for_each(|k| self.delete(k))
    }
    /// Remove what interrupted runs left that bills or takes space but is no
    /// object (S3: multipart uploads started over an hour ago). Returns how
    /// many were removed. Decorators must forward it.
    fn cleanup_interrupted(&self) -> BResult<u64> {
        Ok(0)
    }
    /// The backend's own name for the bytes of an object, where it has
    /// one (IPFS: the CID, base32 CIDv1), so they can be fetched by it
    /// elsewhere (any IPFS gateway); `None` for backends without one, at no
    /// request. Decorators must forward it.
    fn content_address(&self, key: &str) -> BResult<Option<String>> {
        let _ = key;
        Ok(None)
    }
    /// The requests made so far, when something counts them: a backend
    /// that knows its real requests (HTTP requests, multipart parts, list
    /// pages) answers its own; decorators forward the inner answer, and
    /// `open` puts a `CountingBackend` over a backend that answers `None`.
    fn requests(&self) -> Option<RequestCounts> {
        None
    }
    /// Whether each request crosses a network (tens to hundreds of ms), so
    /// runs keep more requests in flight (`connections`).
    fn is_remote(&self) -> bool {
        false
    }
}

/// How to reach an S3 repository: `[s3]` in the config file and the
/// `--s3-*` flags. (Plain data, so the CLI builds without the S3 feature.)
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    /// The endpoint URL (for anything but AWS itself); AWS_ENDPOINT_URL
    /// also works.
    pub endpoint: Option<String>,
    /// The region; AWS_REGION also works; else us-east-1.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most servers
    /// other than AWS need.
    pub path_style: bool,
    /// The storage class of packs (`data/`): STANDARD_IA, GLACIER_IR,
    /// INTELLIGENT_TIERING... Everything else (config, manifests, indexes),
    /// read on every run, stays STANDARD.
    pub pack_storage_class: Option<String>,
    /// Objects larger than this many bytes go up in parts (at least 5 MiB).
    pub multipart_threshold: Option<u64>,
    /// Access key id and secret, for programs that use the library. The
    /// agent itself never sets them: it takes credentials from the standard
    /// AWS chain (environment, profile, web identity, instance metadata).
    pub credentials: Option<(String, String)>,
}

/// How to reach an sftp:// repository: `[sftp]` in the config file and
/// `N2S_SFTP_*`. Unset fields fall back to ssh's own defaults and
/// `~/.ssh/config`.
#[derive(Clone, Debug, Default)]
pub struct SftpSettings {
    /// The private key to log in with (ssh's `-i`).
    pub identity_file: Option<std::path::PathBuf>,
    /// The known_hosts file to check the server's host key against (ssh's
    /// `UserKnownHostsFile`). Host-key checking is always strict.
    pub known_hosts_file: Option<std::path::PathBuf>,
    /// An ssh_config file to use instead of `~/.ssh/config` (ssh's `-F`).
    pub ssh_config: Option<std::path::PathBuf>,
    /// SSH connections a run opens (default 4), requests taking them in turn.
    pub sessions: Option<usize>,
}

/// How to run rclone for an rclone: repository: `[rclone]` and `N2S_RCLONE_*`.
#[derive(Clone, Debug, Default)]
pub struct RcloneSettings {
    /// The rclone binary (default: `rclone` on PATH).
    pub binary: Option<std::path::PathBuf>,
    /// The rclone.conf that defines the remotes (default: rclone's own,
    /// or RCLONE_CONFIG).
    pub config: Option<std::path::PathBuf>,
}

/// Keys are `/`-separated names of `[A-Za-z0-9._-]`, never `.` or `..`:
/// checked by every backend so a key cannot escape a directory root.
pub fn check_key(key: &str) -> BResult<()> {
    let ok = !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok { Ok(()) } else { Err(BackendError::Other(anyhow::anyhow!("invalid object key {key:?}"))) }
}

/// How the decorators of `open_with` are set.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Each request's deadline (`request_timeout_secs`).
    pub request_timeout: std::time::Duration,
    /// Bytes per second of put bodies, of all threads together; `None`: no limit.
    pub limit_upload: Option<u64>,
    /// Bytes per second of get bodies; `None`: no limit.
    pub limit_download: Option<u64>,
    /// How to reach an s3:// repository.
    pub s3: S3Settings,
    /// How to reach an sftp:// repository.
    pub sftp: SftpSettings,
    /// How to run rclone for an rclone: repository.
    pub rclone: RcloneSettings,
}

/// Generous: a 16 MiB pack over a 2 Mbit/s uplink takes about 70 s.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            limit_upload: None,
            limit_download: None,
            s3: S3Settings::default(),
            sftp: SftpSettings::default(),
            rclone: RcloneSettings::default(),
        }
    }
}

/// `open_with` and the default options.
pub fn open(url: &str) -> anyhow::Result<std::sync::Arc<dyn Backend>> {
    open_with(url, &BackendOptions::default())
}

/// Open the backend a repository URL names, inside the decorators every
/// run uses. From the caller down:
///
/// ```text
/// retry ─▶ rate limit ─▶ timeout ─▶ [fault injection] ─▶ counting ─▶ backend
/// ```
///
/// - retry is outermost, so every failed attempt below it (a timeout, an
///   injected fault, a short ranged read) is retried the same way;
/// - the rate limit charges each attempt (a retried upload is sent again),
///   and waits for its tokens before the request's deadline starts;
/// - the timeout runs each attempt on its worker pool, faults included, so
///   an injected hang or slow call meets the deadline as a real one would;
/// - counting sits on the backend itself and counts every request that
///   reaches it, each retry included; a backend that counts its own
///   requests gets none.
pub fn open_with(url: &str, opts: &BackendOptions) -> anyhow::Result<std::sync::Arc<dyn Backend>> {
    use std::sync::Arc;
    let bare: Arc<dyn Backend> = Arc::from(open_url_with(url, opts)?);
    let mut b: Arc<dyn Backend> =
        if bare.requests().is_some() { bare } else { Arc::new(counting::CountingBackend::new(bare)) };
    if let Ok(spec) = std::env::var("N2S_FAULT_BACKEND") {
        let rules = fault::FaultRule::parse_list(&spec)?;
        let seed = match std::env::var("N2S_FAULT_SEED") {
            Ok(v) => v.parse().map_err(|_| anyhow::anyhow!("N2S_FAULT_SEED={v:?} is not a number"))?,
            Err(_) => {
                let mut r = [0u8; 8];
                getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let seed = u64::from_le_bytes(r);
                if rules.iter().any(fault::FaultRule::is_random) {
                    log::warn!("fault injection: N2S_FAULT_SEED={seed} (set it to repeat this run)");
                }
                seed
            }
        };
        b = Arc::new(fault::FaultBackend::with_seed(b, rules, seed));
    }
    b = Arc::new(timeout::TimeoutBackend::new(b, opts.request_timeout));
    if opts.limit_upload.is_some() || opts.limit_download.is_some() {
        b = Arc::new(ratelimit::RateLimitBackend::new(b, opts.limit_upload, opts.limit_download));
    }
    let mut policy = retry::RetryPolicy::default();
    // For tests: retries without the production pauses, and more of them
    // for campaigns of random faults.
    if let Some(ms) = std::env::var("N2S_RETRY_BASE_MS").ok().and_then(|v| v.parse().ok()) {
        policy.base_delay = std::time::Duration::from_millis(ms);
        policy.max_delay = policy.base_delay * 8;
    }
    if let Some(n) = std::env::var("N2S_RETRY_ATTEMPTS").ok().and_then(|v| v.parse::<u32>().ok()) {
        policy.attempts = n.max(1);
    }
    Ok(Arc::new(retry::RetryBackend::new(b, policy)))
}

/// Open the bare backend a repository URL names.
pub fn open_url(url: &str) -> anyhow::Result<Box<dyn Backend>> {
    open_url_with(url, &BackendOptions::default())
}

/// The bare backend, with the settings of its kind.
pub fn open_url_with(url: &str, opts: &BackendOptions) -> anyhow::Result<Box<dyn Backend>> {
    if url.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return Ok(Box::new(s3::S3Backend::open(url, &opts.s3, opts.request_timeout)?));
        #[cfg(not(feature = "s3"))]
        anyhow::bail!(
            "repository URL {url:?}: this n2s-agent was built without S3 support: rebuild it with the `s3` cargo feature (on by default)"
        );
    }
    if url.starts_with("sftp://") {
        #[cfg(feature = "sftp")]
        return Ok(Box::new(sftp::SftpBackend::open(url, &opts.sftp)?));
        #[cfg(not(feature = "sftp"))]
        anyhow::bail!(
            "repository URL {url:?}: this n2s-agent was built without SFTP support: rebuild it with the `sftp` cargo feature (on by default)"
        );
    }
    if url.starts_with("rclone:") {
        #[cfg(feature = "rclone")]
        return Ok(Box::new(rclone::RcloneBackend::open(url, &opts.rclone)?));
        #[cfg(not(feature = "rclone"))]
        anyhow::bail!(
            "repository URL {url:?}: this n2s-agent was built without rclone support: rebuild it with the `rclone` cargo feature (on by default)"
        );
    }
    if url.starts_with("ipfs://") {
        #[cfg(feature = "ipfs")]
        return Ok(Box::new(ipfs::IpfsBackend::open(url)?));
        #[cfg(not(feature = "ipfs"))]
        anyhow::bail!(
            "repository URL {url:?}: this n2s-agent was built without IPFS support: rebuild it with the `ipfs` cargo feature (on by default)"
        );
    }
    let _ = opts;
    let path = if let Some(rest) = url.strip_prefix("file://") {
        rest
    } else if url.starts_with('/') {
        url
    } else if let Some((scheme, _)) = url.split_once(':') {
        anyhow::bail!(
            "repository URL {url:?}: n2s-agent has no {scheme:?} backend; use file:///ABS/PATH, s3://, sftp://, rclone: or ipfs://"
        );
    } else {
        anyhow::bail!("repository URL {url:?} is not understood: use file:///ABS/PATH or a bare absolute path");
    };
    if !path.starts_with('/') {
        anyhow::bail!("repository URL {url:?}: a local repository needs an absolute path (file:///srv/repo)");
    }
    Ok(Box::new(local::LocalBackend::new(std::path::Path::new(path))))
}

#[cfg(test)]
pub(crate) mod conformance {
    //! The behaviour every backend must have; each backend's tests call this.
    use super::*;

    pub fn check(b: &dyn Backend) {
        assert_eq!(b.put_if_absent("data/ab/x1", b"hello").unwrap(), PutOutcome::Created);
        assert_eq!(b.put_if_absent("data/ab/x1", b"other").unwrap(), PutOutcome::AlreadyExists);
        assert_eq!(b.get("data/ab/x1", None).unwrap(), b"hello");
        assert_eq!(b.get("data/ab/x1", Some(1..4)).unwrap(), b"ell");
        assert!(b.get("data/ab/x1", Some(3..10)).is_err(), "a range past the end is an error");
        assert!(matches!(b.get("data/ab/nope", None), Err(BackendError::NotFound(_))));
        assert_eq!(b.stat("data/ab/x1").unwrap(), Some(5));
        assert_eq!(b.stat("data/ab/nope").unwrap(), None);
        b.put_if_absent("data/cd/x2", b"").unwrap();
        b.put_if_absent("manifests/m1", b"m").unwrap();
        let mut keys: Vec<String> = b.list("data/").unwrap().into_iter().map(|o| o.key).collect();
        keys.sort();
        assert_eq!(keys, vec!["data/ab/x1", "data/cd/x2"]);
        assert_eq!(b.list("nothing/").unwrap(), vec![]);
        b.delete("data/ab/x1").unwrap();
        assert_eq!(b.stat("data/ab/x1").unwrap(), None);
        assert!(b.put_if_absent("../evil", b"x").is_err());
        assert!(b.put_if_absent("/abs", b"x").is_err());
        assert!(b.get("a/../../etc/passwd", None).is_err());
    }
}
