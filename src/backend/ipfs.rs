//! `ipfs://host:port/path`: a directory of an IPFS node's MFS (its mutable
//! file system) as a repository, through the node's HTTP RPC API (kubo's
//! `/api/v0`, every call a POST).
//!
//! Object semantics:
//! - the object with key K is the MFS file `<root>/K`, where `<root>` is the
//!   URL's path (default `/n2s`); each object is therefore a UnixFS file
//!   with a CID of its own inside the node (`cid()`, base32 CIDv1);
//! - put-if-absent: `files/write` of the whole body to
//!   `<root>/tmp/<unix secs>-<hex>` (create, parents, truncate), then
//!   `files/cp` of that to the final path, which refuses a name that exists
//!   (the MFS directory checks and links under its lock), so exactly one of
//!   many writers creates the key and the object appears whole or not at
//!   all; then `files/rm` of the temporary;
//! - pins: after the copy, the CID now at the key (ours, or the object that
//!   was there first) is pinned (`pin/add`), so a retry of a put whose pin
//!   failed repairs it. MFS content is already safe from the node's GC; the
//!   pins keep objects alive if someone removes or replaces the MFS tree, and
//!   a node that announces only pinned content (kubo's `Reprovider.Strategy
//!   = "pinned"`) announces them, so other nodes and gateways can fetch them;
//! - delete: mark that a GC is due (`<root>/tmp/gc-pending`), unpin the
//!   object's CID (`pin/rm`), then `files/rm` it: a crash in between leaves
//!   an unpinned object that MFS still holds, never a pin that holds what no
//!   key names. Deleting a missing key succeeds. Two keys with identical
//!   bytes share a CID, and deleting one unpins it while the other still
//!   holds it in MFS (safe from GC, not pinned): sealed objects never share
//!   bytes, so only empty or test objects can;
//! - `cleanup_interrupted` (every backup and prune run call it) removes the
//!   temporaries older than an hour (a killed writer's) and then, only when
//!   a delete marked it due or a temporary was removed, runs `repo/gc`:
//!   a backup that deleted nothing never triggers a node-wide GC;
//! - ranged reads are `files/read` with `offset` and `count`; the node
//!   answers a range past the end with what it has, so lengths are checked
//!   here. Listing walks `files/ls` down the directories the prefix can
//!   reach (`tmp/` is no part of the repository);
//! - retries are not done here: `RetryBackend` retries what this file marks
//!   `Transient` (the node unreachable, 429/502/503/504, a body cut short).

use std::io::Read;
use std::ops::Range;
use std::time::Duration;

use super::*;

/// A temporary older than this is a killed writer's (a live write takes
/// seconds). Tests shorten it with N2S_IPFS_STALE_TMP_SECS; nothing else may.
const STALE_TMP_SECS: u64 = 3600;

/// The marker a delete leaves for `cleanup_interrupted`: a GC is due.
const GC_MARKER: &str = "gc-pending";

pub struct IpfsBackend {
    agent: ureq::Agent,
    /// `http://host:port`, for messages and requests.
    base: String,
    /// The repository's MFS directory: `/n2s` (no trailing slash).
    root: String,
    location: String,
    /// Whether cleanup may run the node-wide `repo/gc` (N2S_IPFS_GC=off:
    /// never; the marker stays for a run that may, or for the node's own
    /// GC schedule).
    gc_enabled: bool,
}

/// Why an RPC call failed: the node's own error message (a command error,
/// which the caller interprets: "does not exist", "already has entry"), or
/// a failure already classified.
enum Fail {
    Api(String),
    Backend(BackendError),
}

impl From<BackendError> for Fail {
    fn from(e: BackendError) -> Self {
        Fail::Backend(e)
    }
}

/// The node's messages for a path that is not there: kubo says "file does
/// not exist" (os.ErrNotExist), js-ipfs "<path> does not exist" or "file
/// does not exist".
fn is_missing(msg: &str) -> bool {
    msg.contains("does not exist") || msg.contains("no link named") || msg.contains("not found")
}

/// `ipfs://host[:port][/path]` → ("host:port", "/path"); the port defaults
/// to kubo's API port 5001 and the path to `/n2s`.
pub fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("ipfs://").ok_or_else(|| anyhow::anyhow!("{url:?} is not an ipfs:// URL"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow::anyhow!("repository URL {url:?}: an IPv6 host needs its closing ']'"))?;
        (format!("[{h}]"), after.strip_prefix(':').unwrap_or(""))
    } else {
        let (h, p) = authority.split_once(':').unwrap_or((authority, ""));
        (h.to_string(), p)
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        && (host.starts_with('[') || !host.contains(':'));
    if !host_ok {
        anyhow::bail!(
            "repository URL {url:?}: {host:?} is not a host name or address; use ipfs://HOST:PORT/PATH (e.g. ipfs://127.0.0.1:5001/n2s)"
        );
    }
    let port: u16 = if port.is_empty() {
        5001
    } else {
        port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            anyhow::anyhow!("repository URL {url:?}: {port:?} is not a port number; use ipfs://HOST:PORT/PATH")
        })?
    };
    let path = path.trim_matches('/');
    let path = if path.is_empty() { "n2s" } else { path };
    check_key(path).map_err(|_| {
        anyhow::anyhow!(
            "repository URL {url:?}: the MFS path {path:?} may hold only [A-Za-z0-9._-] and '/' (no '.' or '..' parts)"
        )
    })?;
    Ok((format!("{host}:{port}"), format!("/{path}")))
}

// ---- CIDs: every CID this backend hands out is CIDv1 in base32 ----

const B58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

fn base58_decode(s: &str) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    for c in s.bytes() {
        let mut carry = B58.iter().position(|&d| d == c)? as u32;
        for byte in out.iter_mut().rev() {
            carry += (*byte as u32) * 58;
            *byte = carry as u8;
            carry >>= 8;
        }
        while carry > 0 {
            out.insert(0, carry as u8);
            carry >>= 8;
        }
    }
    let zeros = s.bytes().take_while(|&c| c == b'1').count();
    let mut v = vec![0u8; zeros];
    v.extend(out);
    Some(v)
}

fn base32_lower(bytes: &[u8]) -> String {
    const ALPHA: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHA[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHA[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A CID as the node printed it, as base32 CIDv1 (`bafy...`): kubo honours
/// `cid-base=base32` but keeps CIDv0 (`Qm...`) as it is, and js-ipfs
/// ignores the parameter (base58btc `z...`), so the conversion is done here.
pub fn cid_to_base32(cid: &str) -> anyhow::Result<String> {
    let bad = || anyhow::anyhow!("the IPFS node gave {cid:?}, which is not a CID this agent can read");
    if cid.starts_with('b')
        && cid.len() > 1
        && cid[1..].bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    {
        return Ok(cid.to_string());
    }
    let bytes = if let Some(z) = cid.strip_prefix('z') {
        base58_decode(z).ok_or_else(bad)?
    } else if cid.len() == 46 && cid.starts_with("Qm") {
        // CIDv0: a bare sha2-256 multihash of a dag-pb node.
        let mh = base58_decode(cid).ok_or_else(bad)?;
        if mh.len() != 34 || mh[0] != 0x12 || mh[1] != 0x20 {
            return Err(bad());
        }
        let mut v = vec![0x01, 0x70];
        v.extend(mh);
        v
    } else {
        return Err(bad());
    };
    if bytes.first() != Some(&0x01) {
        return Err(bad());
    }
    Ok(format!("b{}", base32_lower(&bytes)))
}

// ---- the node's JSON answers (kubo and js-ipfs spell them alike) ----

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(rename = "Message")]
    message: String,
}

#[derive(serde::Deserialize)]
struct StatOut {
    #[serde(rename = "Hash")]
    hash: String,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Type")]
    kind: String,
}

#[derive(serde::Deserialize)]
struct LsEntry {
    #[serde(rename = "Name")]
    name: String,
    /// 0: a file, 1: a directory.
    #[serde(rename = "Type", default)]
    kind: u8,
    #[serde(rename = "Size", default)]
    size: u64,
    #[serde(rename = "Hash", default)]
    hash: String,
}

#[derive(serde::Deserialize)]
struct LsOut {
    /// kubo gives `null` for an empty directory.
    #[serde(rename = "Entries", default)]
    entries: Option<Vec<LsEntry>>,
}

/// An object as a listing sees it, with its CID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectCid {
    pub key: String,
    pub size: u64,
    /// base32 CIDv1.
    pub cid: String,
}

impl IpfsBackend {
    pub fn open(url: &str) -> anyhow::Result<IpfsBackend> {
        let (authority, root) = parse_url(url)?;
        let config = ureq::Agent::config_builder()
            // Status codes are read here: the node's error message is in the body.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            // js-ipfs closes idle keep-alive connections after 5 s; a pooled
            // connection must never outlive that, or a POST meets a reset.
            .max_idle_age(Duration::from_secs(3))
            .max_idle_connections_per_host(32)
            .build();
        Ok(IpfsBackend {
            agent: ureq::Agent::new_with_config(config),
            base: format!("http://{authority}"),
            location: format!("ipfs://{authority}{root}"),
            root,
            gc_enabled: !matches!(
                std::env::var("N2S_IPFS_GC").as_deref().map(str::to_ascii_lowercase).as_deref(),
                Ok("off" | "0" | "false" | "no")
            ),
        })
    }

    fn path_of(&self, key: &str) -> BResult<String> {
        check_key(key)?;
        Ok(format!("{}/{key}", self.root))
    }

    fn tmp_dir(&self) -> String {
        format!("{}/tmp", self.root)
    }

    /// One RPC call: `POST /api/v0/<cmd>?<args>` with an optional multipart
    /// body; the response when the node answered 200.
    fn call(
        &self,
        cmd: &str,
        args: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<ureq::http::Response<ureq::Body>, Fail> {
        let url = format!("{}/api/v0/{cmd}", self.base);
        let mut req = self.agent.post(&url);
        for (k, v) in args {
            req = req.query(k, v);
        }
        let sent = match body {
            None => req.send_empty(),
            Some(data) => {
                // A multipart/form-data body of one part, the way kubo's
                // clients send a file. The boundary is random, so no body
                // can contain it by accident.
                let mut rnd = [0u8; 16];
                getrandom::fill(&mut rnd).map_err(|e| BackendError::Other(anyhow::anyhow!("no randomness: {e}")))?;
                let boundary = format!("n2s-{}", hex::encode(rnd));
                let head = format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"object\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                );
                let tail = format!("\r\n--{boundary}--\r\n");
                let mut form = Vec::with_capacity(head.len() + data.len() + tail.len());
                form.extend_from_slice(head.as_bytes());
                form.extend_from_slice(data);
                form.extend_from_slice(tail.as_bytes());
                req.content_type(format!("multipart/form-data; boundary={boundary}")).send(form)
            }
        };
        let mut resp = sent.map_err(|e| Fail::Backend(self.transport_error(cmd, &e)))?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(resp);
        }
        let text = resp.body_mut().with_config().limit(64 << 10).read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&text).map(|e| e.message).unwrap_or_else(|_| {
            let t = text.trim();
            if t.is_empty() { format!("HTTP {status}") } else { t.chars().take(200).collect() }
        });
        let api = format!("{}/api/v0", self.base);
        Err(Fail::Backend(match status {
            // A command error: the caller reads the message. (kubo answers
            // 500 for those, and 400 for bad arguments.)
            500 | 400 => return Err(Fail::Api(message)),
            404 | 405 => BackendError::Other(anyhow::anyhow!(
                "{api}/{cmd} answered {status} ({message}): no IPFS RPC API there (kubo's listens on port 5001; 8080 is its gateway, which cannot write): fix host:port in the repository URL {}",
                self.location
            )),
            401 | 403 => BackendError::Other(anyhow::anyhow!(
                "the IPFS node at {api} refused {cmd} ({status}: {message}): allow this client in the node's API settings (API.Authorizations, API.HTTPHeaders) or use a node whose API is open to it"
            )),
            429 | 502 | 503 | 504 => BackendError::Transient(anyhow::anyhow!(
                "the IPFS node at {api} answered {cmd} with {status} ({message})"
            )),
            _ => {
                BackendError::Other(anyhow::anyhow!("the IPFS node at {api} answered {cmd} with {status} ({message})"))
            }
        }))
    }

    fn transport_error(&self, cmd: &str, e: &ureq::Error) -> BackendError {
        match e {
            ureq::Error::Timeout(_) => {
                BackendError::Transient(anyhow::anyhow!("the IPFS node at {} timed out on {cmd}", self.base))
            }
            ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_) => BackendError::Transient(anyhow::anyhow!(
                "cannot reach the IPFS node's RPC API at {} ({e}): start the node (`ipfs daemon`), or fix host:port in the repository URL {}",
                self.base,
                self.location
            )),
            _ => BackendError::Other(anyhow::anyhow!("IPFS request {cmd} to {} failed: {e}", self.base)),
        }
    }

    /// A failure of `what` on `key`, as a backend error.
    fn fail(&self, what: &str, key: &str, f: Fail) -> BackendError {
        match f {
            Fail::Backend(e) => e,
            Fail::Api(m) => BackendError::Other(anyhow::anyhow!("IPFS {what} {key} at {} failed: {m}", self.location)),
        }
    }

    /// The whole body of a 200 answer (no size limit: packs are tens of MiB).
    fn body(&self, cmd: &str, mut resp: ureq::http::Response<ureq::Body>) -> BResult<Vec<u8>> {
        let mut out = Vec::new();
        resp.body_mut()
            .as_reader()
            .read_to_end(&mut out)
            .map_err(|e| BackendError::Transient(anyhow::anyhow!("the IPFS node's answer to {cmd} broke off: {e}")))?;
        Ok(out)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, cmd: &str, resp: ureq::http::Response<ureq::Body>) -> BResult<T> {
        let body = self.body(cmd, resp)?;
        serde_json::from_slice(&body).map_err(|e| {
            BackendError::Other(anyhow::anyhow!(
                "the IPFS node at {} gave {cmd} an answer this agent cannot read ({e}): is it an IPFS RPC API (kubo's /api/v0)?",
                self.base
            ))
        })
    }

    /// `files/stat` of an MFS path; None when nothing is there.
    fn stat_path(&self, path: &str, key: &str) -> BResult<Option<StatOut>> {
        match self.call("files/stat", &[("arg", path), ("cid-base", "base32")], None) {
            Ok(resp) => Ok(Some(self.json("files/stat", resp)?)),
            Err(Fail::Api(m)) if is_missing(&m) => Ok(None),
            Err(f) => Err(self.fail("stat of", key, f)),
        }
    }

    /// The CID (base32 CIDv1, `bafy...`) of the object at `key`; NotFound
    /// when there is none. A restore can fetch it by this CID from any node
    /// or gateway that has the blocks.
    pub fn cid(&self, key: &str) -> BResult<String> {
        let path = self.path_of(key)?;
        match self.stat_path(&path, key)? {
            Some(s) if s.kind == "file" => Ok(cid_to_base32(&s.hash)?),
            _ => Err(BackendError::NotFound(key.to_string())),
        }
    }

    /// Every object under `prefix` with its CID (`files/ls` answers CIDs
    /// with the names, so this costs no more than `list`).
    pub fn list_cids(&self, prefix: &str) -> BResult<Vec<ObjectCid>> {
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        if !dir_part.is_empty() {
            check_key(dir_part)?;
        }
        let start = if dir_part.is_empty() { self.root.clone() } else { format!("{}/{dir_part}", self.root) };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, key_prefix)) = stack.pop() {
            let ls: LsOut =
                match self.call("files/ls", &[("arg", &dir), ("long", "true"), ("cid-base", "base32")], None) {
                    Ok(resp) => self.json("files/ls", resp)?,
                    // A directory nobody wrote to yet: nothing in it.
                    Err(Fail::Api(m)) if is_missing(&m) => continue,
                    Err(f) => return Err(self.fail("listing", &format!("{prefix}*"), f)),
                };
            for e in ls.entries.unwrap_or_default() {
                let key = if key_prefix.is_empty() { e.name.clone() } else { format!("{key_prefix}/{}", e.name) };
                if key == "tmp" {
                    continue; // half-written uploads and the GC marker are not objects
                }
                if e.kind == 1 {
                    if prefix.starts_with(&format!("{key}/")) || key.starts_with(prefix) {
                        stack.push((format!("{dir}/{}", e.name), key));
                    }
                } else if key.starts_with(prefix) && check_key(&key).is_ok() {
                    out.push(ObjectCid { key, size: e.size, cid: cid_to_base32(&e.hash)? });
                }
            }
        }
        Ok(out)
    }

    fn rm(&self, path: &str, key: &str) -> BResult<()> {
        match self.call("files/rm", &[("arg", path), ("recursive", "true")], None) {
            Ok(_) => Ok(()),
            Err(Fail::Api(m)) if is_missing(&m) => Ok(()),
            Err(f) => Err(self.fail("removing", key, f)),
        }
    }

    fn pin(&self, cid: &str, key: &str) -> BResult<()> {
        self.call("pin/add", &[("arg", cid), ("recursive", "true")], None).map_err(|f| self.fail("pinning", key, f))?;
        Ok(())
    }

    fn unpin(&self, cid: &str, key: &str) -> BResult<()> {
        match self.call("pin/rm", &[("arg", cid), ("recursive", "true")], None) {
            Ok(_) => Ok(()),
            // Never pinned (an interrupted put) or unpinned already (an
            // interrupted delete, a key with the same bytes): nothing to do.
            Err(Fail::Api(m)) if m.contains("not pinned") => Ok(()),
            Err(f) => Err(self.fail("unpinning", key, f)),
        }
    }

    /// Say that a GC is due before anything is unpinned, so that a run that
    /// dies halfway still leaves the marker for the next cleanup.
    fn mark_gc_due(&self) -> BResult<()> {
        let marker = format!("{}/{GC_MARKER}", self.tmp_dir());
        self.call("files/mkdir", &[("arg", &marker), ("parents", "true")], None)
            .map_err(|f| self.fail("marking a GC due in", &self.tmp_dir(), f))?;
        Ok(())
    }

    /// Unpin and remove one object (its GC marked due already).
    fn delete_one(&self, key: &str) -> BResult<()> {
        let path = self.path_of(key)?;
        let Some(st) = self.stat_path(&path, key)? else { return Ok(()) };
        self.unpin(&cid_to_base32(&st.hash)?, key)?;
        self.rm(&path, key)
    }

    /// `repo/gc`: the node drops every block no pin and no MFS file holds.
    fn gc(&self) -> BResult<()> {
        let resp = self.call("repo/gc", &[], None).map_err(|f| self.fail("garbage collection of", "the node", f))?;
        // One JSON object a line, a removed block's CID or an error; read as
        // a stream, since a big GC names millions of blocks.
        let mut reader = std::io::BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut reader, &mut line)
                .map_err(|e| BackendError::Transient(anyhow::anyhow!("the IPFS node's repo/gc broke off: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(err) = v.get("Error").and_then(|e| e.as_str()).filter(|e| !e.is_empty())
            {
                return Err(BackendError::Other(anyhow::anyhow!(
                    "the IPFS node at {} failed its GC: {err}",
                    self.base
                )));
            }
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Backend for IpfsBackend {
    fn location(&self) -> String {
        self.location.clone()
    }
    fn content_address(&self, key: &str) -> BResult<Option<String>> {
        self.cid(key).map(Some)
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        let dest = self.path_of(key)?;
        let mut rnd = [0u8; 12];
        getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        // The time in the name, since MFS keeps no mtime: cleanup tells a
        // killed writer's temporary from a live one by it.
        let tmp = format!("{}/{}-{}", self.tmp_dir(), now_secs(), hex::encode(rnd));
        let args = [
            ("arg", tmp.as_str()),
            ("create", "true"),
            ("parents", "true"),
            ("truncate", "true"),
            // CIDv1 with raw leaves: base32 `bafy...` CIDs, the form
            // gateways and kubo's `add --cid-version 1` use.
            ("cid-version", "1"),
            ("raw-leaves", "true"),
        ];
        if let Err(f) = self.call("files/write", &args, Some(data)) {
            let _ = self.rm(&tmp, key);
            return Err(self.fail("writing", key, f));
        }
        let copied = self.call("files/cp", &[("arg", tmp.as_str()), ("arg", dest.as_str()), ("parents", "true")], None);
        // The temporary goes whatever happened; one left behind (a failed
        // rm, a crash) is cleanup_interrupted's.
        if let Err(e) = self.rm(&tmp, key) {
            log::warn!("cannot remove the temporary {tmp} of {key}: {e}");
        }
        let outcome = match copied {
            Ok(_) => PutOutcome::Created,
            Err(Fail::Api(m)) if m.contains("already has entry") || m.contains("already exists") => {
                PutOutcome::AlreadyExists
            }
            Err(f) => return Err(self.fail("storing", key, f)),
        };
        // Pin what is at the key now, whoever wrote it: a put retried after
        // its pin failed lands here with AlreadyExists and pins it then.
        let cid = match self.stat_path(&dest, key)? {
            Some(st) => cid_to_base32(&st.hash)?,
            // Deleted between the copy and here (a prune of another agent):
            // nothing to pin.
            None => return Ok(outcome),
        };
        self.pin(&cid, key)?;
        Ok(outcome)
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        let path = self.path_of(key)?;
        let (offset, count);
        let mut args = vec![("arg", path.as_str())];
        if let Some(r) = &range {
            if r.start > r.end {
                return Err(BackendError::Other(anyhow::anyhow!("bad range {}..{} of {key}", r.start, r.end)));
            }
            if r.start == r.end {
                return Ok(Vec::new());
            }
            (offset, count) = (r.start.to_string(), (r.end - r.start).to_string());
            args.push(("offset", &offset));
            args.push(("count", &count));
        }
        let resp = match self.call("files/read", &args, None) {
            Ok(resp) => resp,
            Err(Fail::Api(m)) if is_missing(&m) => return Err(BackendError::NotFound(key.to_string())),
            // js-ipfs refuses an offset at or past the end; kubo one past it.
            Err(Fail::Api(m)) if range.is_some() && (m.contains("Offset") || m.contains("offset")) => {
                return Err(BackendError::Other(anyhow::anyhow!("range {range:?} is outside object {key} ({m})")));
            }
            Err(f) => return Err(self.fail("reading", key, f)),
        };
        let body = self.body("files/read", resp)?;
        if let Some(r) = &range
            && body.len() as u64 != r.end - r.start
        {
            // The node answers a range past the end with what it has.
            return Err(BackendError::Other(anyhow::anyhow!(
                "range {}..{} is outside object {key} (got {} bytes)",
                r.start,
                r.end,
                body.len()
            )));
        }
        Ok(body)
    }

    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        Ok(self.list_cids(prefix)?.into_iter().map(|o| ObjectInfo { key: o.key, size: o.size }).collect())
    }

    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        let path = self.path_of(key)?;
        Ok(self.stat_path(&path, key)?.filter(|s| s.kind == "file").map(|s| s.size))
    }

    fn delete(&self, key: &str) -> BResult<()> {
        self.path_of(key)?;
        self.mark_gc_due()?;
        self.delete_one(key)
    }

    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        for k in keys {
            self.path_of(k)?;
        }
        self.mark_gc_due()?;
        keys.iter().try_for_each(|k| self.delete_one(k))
    }

    fn cleanup_interrupted(&self) -> BResult<u64> {
        let stale =
            std::env::var("N2S_IPFS_STALE_TMP_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(STALE_TMP_SECS);
        let dir = self.tmp_dir();
        let ls: LsOut = match self.call("files/ls", &[("arg", &dir), ("long", "true")], None) {
            Ok(resp) => self.json("files/ls", resp)?,
            Err(Fail::Api(m)) if is_missing(&m) => return Ok(0),
            Err(f) => return Err(self.fail("listing", "tmp/", f)),
        };
        let now = now_secs();
        let (mut removed, mut gc_due) = (0, false);
        for e in ls.entries.unwrap_or_default() {
            if e.name == GC_MARKER {
                gc_due = true;
                continue;
            }
            // Only names this backend makes ("<secs>-<hex>"); others are
            // not ours to judge.
            let Some(secs) = e.name.split_once('-').and_then(|(s, _)| s.parse::<u64>().ok()) else { continue };
            if secs.saturating_add(stale) <= now {
                self.rm(&format!("{dir}/{}", e.name), &format!("tmp/{}", e.name))?;
                removed += 1;
            }
        }
        if (gc_due || removed > 0) && self.gc_enabled {
            // The marker goes first: a delete after this point marks again,
            // and is collected by this GC or the next.
            self.rm(&format!("{dir}/{GC_MARKER}"), "tmp/gc-pending")?;
            self.gc()?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
pub(crate) mod testnode {
    //! A js-ipfs node for the unit tests, started once per test binary the
    //! way tests/common/ipfs.rs starts it for the integration tests (that
    //! module is out of reach of unit tests, hence this short copy).
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    pub struct Node {
        pub port: u16,
    }

    pub fn node() -> Option<&'static Node> {
        static NODE: OnceLock<Option<Node>> = OnceLock::new();
        NODE.get_or_init(start).as_ref()
    }

    impl Node {
        /// A fresh repository (an MFS directory of its own) on the node.
        pub fn new_url(&self) -> String {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            format!("ipfs://127.0.0.1:{}/n2s-unit-{}/t{n}", self.port, std::process::id())
        }
    }

    fn start() -> Option<Node> {
        let prefix = PathBuf::from(std::env::var("N2S_TEST_IPFS").unwrap_or_else(|_| "/opt/n2s-ipfs".into()));
        let bin = prefix.join("node_modules/.bin/jsipfs");
        if !bin.exists() {
            assert!(std::env::var("CI").is_err(), "CI must provide {} (scripts/setup installs it)", bin.display());
            eprintln!("!!!!!!!! SKIPPED LOUDLY: {} is not installed: run scripts/setup !!!!!!!!", bin.display());
            return None;
        }
        let dir = tempfile::Builder::new().prefix("n2s-ipfs-unit-").tempdir().expect("tempdir").keep();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cmd = super::testnode_command(&bin, &dir, port);
        let (tx, rx) = std::sync::mpsc::channel();
        // PDEATHSIG follows the spawning thread: it parks forever.
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd: Command = cmd;
            // SAFETY: prctl is async-signal-safe and touches nothing else.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let ok = cmd.spawn().is_ok();
            let _ = tx.send(ok);
            if ok {
                loop {
                    std::thread::park();
                }
            }
        });
        assert!(rx.recv().unwrap(), "cannot start {}", bin.display());
        let agent = ureq::Agent::new_with_defaults();
        let t0 = Instant::now();
        while agent.post(format!("http://127.0.0.1:{port}/api/v0/version")).send_empty().is_err() {
            assert!(t0.elapsed() < Duration::from_secs(120), "js-ipfs did not answer within 120 s: {}", dir.display());
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(Node { port })
    }
}

/// The command that starts the test node (js-ipfs, offline, API on
/// 127.0.0.1:`port`, repository in `dir`); tests/common/ipfs.rs does the same.
#[cfg(test)]
fn testnode_command(bin: &std::path::Path, dir: &std::path::Path, port: u16) -> std::process::Command {
    // js-ipfs 0.66 calls Promise.withResolvers, which Node 20 lacks.
    let polyfill = dir.join("polyfill.js");
    std::fs::write(
        &polyfill,
        "if (!Promise.withResolvers) { Promise.withResolvers = function () { let resolve, reject; const promise = new Promise((a, b) => { resolve = a; reject = b; }); return { promise, resolve, reject }; }; }\n",
    )
    .expect("polyfill");
    // Never dials out: no bootstrap peers, no swarm, no MDNS, no preload.
    let config = format!(
        r#"{{"Addresses":{{"API":"/ip4/127.0.0.1/tcp/{port}","Gateway":"","RPC":"","Swarm":[],"Announce":[],"Delegates":[]}},"Bootstrap":[],"Discovery":{{"MDNS":{{"Enabled":false}},"webRTCStar":{{"Enabled":false}}}}}}"#
    );
    std::fs::write(dir.join("config.json"), config).expect("node config");
    let log = std::fs::File::create(dir.join("node.log")).expect("node log");
    let mut cmd = std::process::Command::new(bin);
    cmd.env("IPFS_PATH", dir.join("repo"))
        .env("NODE_OPTIONS", format!("--require={}", polyfill.display()))
        .args(["daemon", "--offline", "--enable-preload=false", "--init-profile", "test", "--init-config"])
        .arg(dir.join("config.json"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("node log"))
        .stderr(log);
    cmd
}

#[cfg(test)]
mod parser_props {
    //! What the node says (CIDs, URLs) is outside input: parsing never
    //! panics, whatever it is.
    use super::*;
    proptest::proptest! {
        #[test]
        fn cid_and_url_parsing_never_panic(s in ".{0,80}", b58 in "Qm[1-9A-HJ-NP-Za-km-z]{0,50}", b32 in "b[a-z2-7]{0,70}") {
            let _ = cid_to_base32(&s);
            let _ = cid_to_base32(&b58);
            if let Ok(c) = cid_to_base32(&b32) {
                proptest::prop_assert!(c.starts_with('b'));
            }
            let _ = parse_url(&format!("ipfs://{s}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// js-ipfs deadlocks (and may sweep blocks still being linked) when
    /// `repo/gc` runs while MFS writes are in flight: a test that runs the
    /// GC holds this exclusively, every other one shares it.
    static GC_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

    fn backend() -> Option<(IpfsBackend, std::sync::RwLockReadGuard<'static, ()>)> {
        let node = testnode::node()?;
        let guard = GC_LOCK.read().unwrap_or_else(|e| e.into_inner());
        Some((IpfsBackend::open(&node.new_url()).expect("open"), guard))
    }

    #[test]
    fn url_parsing() {
        assert_eq!(parse_url("ipfs://127.0.0.1:5001").unwrap(), ("127.0.0.1:5001".into(), "/n2s".into()));
        assert_eq!(parse_url("ipfs://node").unwrap(), ("node:5001".into(), "/n2s".into()));
        assert_eq!(parse_url("ipfs://h:15001/backups/host1/").unwrap(), ("h:15001".into(), "/backups/host1".into()));
        assert_eq!(parse_url("ipfs://[::1]:5001/r").unwrap(), ("[::1]:5001".into(), "/r".into()));
        for bad in ["ipfs://", "ipfs://h:x", "ipfs://h:0", "ipfs://h:5001/../etc", "ipfs://h:5001/a b", "ipfs://a@b/x"]
        {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cids_become_base32_v1() {
        // One CID in the three spellings nodes print (checked with js-ipfs's
        // own cidBase=base32 answer).
        let v1 = "bafybeigdmlew4vlxdvpez4l3qmptkqyjp5qv2ijcaqjymrnqjncpnpmagq";
        assert_eq!(cid_to_base32("zdj7WiabwvKyjR2krAYvHg4uo6XxwmMQBQN4sjJXoX3pERaEo").unwrap(), v1);
        assert_eq!(cid_to_base32(v1).unwrap(), v1);
        // The empty directory, CIDv0 and its CIDv1 (well known).
        assert_eq!(
            cid_to_base32("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn").unwrap(),
            "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
        );
        assert!(cid_to_base32("hello").is_err());
        assert!(cid_to_base32("z0OIl").is_err());
    }

    #[test]
    fn conformance() {
        let Some((b, _shared)) = backend() else { return };
        conformance::check(&b);
        // No temporaries are left, and what remains is pinned.
        assert!(b.list_cids("").unwrap().iter().all(|o| !o.key.starts_with("tmp")));
        let cid = b.cid("manifests/m1").unwrap();
        let pins = b.call("pin/ls", &[("arg", &cid), ("type", "recursive")], None);
        assert!(pins.is_ok(), "manifests/m1 ({cid}) is pinned");
    }

    #[test]
    fn parallel_put_if_absent_creates_once() {
        let Some((b, _shared)) = backend() else { return };
        let b = Arc::new(b);
        let outcomes: Vec<PutOutcome> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    let b = b.clone();
                    s.spawn(move || b.put_if_absent("manifests/d/0000000001", &[i; 1000]).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcomes.iter().filter(|o| **o == PutOutcome::Created).count(), 1, "{outcomes:?}");
        let got = b.get("manifests/d/0000000001", None).unwrap();
        assert_eq!(got.len(), 1000);
        assert!(got.iter().all(|&x| x == got[0]), "one writer's bytes, whole");
        assert!(b.list_cids("").unwrap().iter().all(|o| !o.key.starts_with("tmp")));
    }

    #[test]
    fn same_bytes_same_cid() {
        let Some((b, _shared)) = backend() else { return };
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        b.put_if_absent("data/aa/one", &big).unwrap();
        b.put_if_absent("data/bb/two", &big).unwrap();
        b.put_if_absent("data/cc/other", b"other bytes").unwrap();
        let (c1, c2, c3) =
            (b.cid("data/aa/one").unwrap(), b.cid("data/bb/two").unwrap(), b.cid("data/cc/other").unwrap());
        assert!(c1.starts_with("bafy"), "{c1}");
        assert_eq!(c1, c2);
        assert_ne!(c1, c3);
        // The listing gives the same CIDs.
        let listed = b.list_cids("data/").unwrap();
        assert!(listed.iter().any(|o| o.key == "data/aa/one" && o.cid == c1 && o.size == big.len() as u64));
        // Multi-block objects read back whole and by range.
        assert_eq!(b.get("data/aa/one", None).unwrap(), big);
        assert_eq!(b.get("data/aa/one", Some(262_000..1_300_000)).unwrap(), &big[262_000..1_300_000]);
        assert!(matches!(b.cid("data/aa/none"), Err(BackendError::NotFound(_))));
    }

    #[test]
    fn delete_unpins_and_gc_runs_only_when_due() {
        let Some(node) = testnode::node() else { return };
        let _alone = GC_LOCK.write().unwrap_or_else(|e| e.into_inner());
        let b = IpfsBackend::open(&node.new_url()).expect("open");
        b.put_if_absent("data/ee/gone", b"soon deleted bytes n2s-unit").unwrap();
        let cid = b.cid("data/ee/gone").unwrap();
        assert!(b.call("pin/ls", &[("arg", &cid)], None).is_ok(), "pinned after put");
        assert_eq!(b.cleanup_interrupted().unwrap(), 0);
        b.delete("data/ee/gone").unwrap();
        b.delete("data/ee/gone").unwrap(); // idempotent
        assert!(matches!(b.call("pin/ls", &[("arg", &cid)], None), Err(Fail::Api(_))), "unpinned after delete");
        let marker = format!("{}/{GC_MARKER}", b.tmp_dir());
        assert!(b.stat_path(&marker, "marker").unwrap().is_some(), "a GC is due");
        assert_eq!(b.cleanup_interrupted().unwrap(), 0);
        assert!(b.stat_path(&marker, "marker").unwrap().is_none(), "the GC ran");
        // A temporary of a killed writer, two hours old, goes.
        let old = format!("{}/{}-dead", b.tmp_dir(), now_secs() - 7200);
        let young = format!("{}/{}-live", b.tmp_dir(), now_secs());
        for p in [&old, &young] {
            b.call("files/write", &[("arg", p), ("create", "true"), ("parents", "true")], Some(b"x")).ok().unwrap();
        }
        assert_eq!(b.cleanup_interrupted().unwrap(), 1);
        assert!(b.stat_path(&old, "old").unwrap().is_none());
        assert!(b.stat_path(&young, "young").unwrap().is_some());
    }

    #[test]
    fn a_node_that_is_down_is_one_clear_line() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let b = IpfsBackend::open(&format!("ipfs://127.0.0.1:{port}/r")).unwrap();
        let e = b.stat("config").unwrap_err();
        assert!(matches!(e, BackendError::Transient(_)), "{e}");
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("start the node"), "{msg}");
    }
}

/// Reads of the objects whose CIDs are known through an IPFS HTTP gateway
/// (`GET <gateway>/ipfs/<cid>`, with `Range`), everything else through the
/// repository's own backend. `restore --ipfs-gateway` puts it over the
/// repository with the pack CIDs of the chunk index, so the bulk of a
/// restore can come from any gateway that has the blocks (a public one, a
/// pinning service's, another node's) while the node holding the
/// repository is slow or far. What a gateway answers is checked as any
/// read is: every pack's bytes are sealed and named by their hash.
pub struct GatewayReads {
    inner: std::sync::Arc<dyn Backend>,
    agent: ureq::Agent,
    /// `http://host:port`, no trailing slash.
    gateway: String,
    /// Object key → CID.
    cids: std::collections::HashMap<String, String>,
}

impl GatewayReads {
    pub fn new(
        inner: std::sync::Arc<dyn Backend>,
        gateway: &str,
        cids: std::collections::HashMap<String, String>,
    ) -> anyhow::Result<GatewayReads> {
        let gateway = gateway.trim_end_matches('/');
        if !(gateway.starts_with("http://") || gateway.starts_with("https://")) {
            anyhow::bail!("--ipfs-gateway {gateway:?}: give the gateway's base URL, such as http://127.0.0.1:8080");
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(300)))
            .build();
        Ok(GatewayReads { inner, agent: ureq::Agent::new_with_config(config), gateway: gateway.to_string(), cids })
    }

    fn fetch(&self, cid: &str, key: &str, range: Option<&Range<u64>>) -> BResult<Vec<u8>> {
        let url = format!("{}/ipfs/{cid}", self.gateway);
        let mut req = self.agent.get(&url);
        if let Some(r) = range {
            if r.start >= r.end {
                return Ok(Vec::new());
            }
            req = req.header("Range", &format!("bytes={}-{}", r.start, r.end - 1));
        }
        let mut resp = req.call().map_err(|e| {
            BackendError::Transient(anyhow::anyhow!("IPFS gateway {}: cannot fetch {key} ({cid}): {e}", self.gateway))
        })?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(u64::MAX).read_to_vec().map_err(|e| {
            BackendError::Transient(anyhow::anyhow!("IPFS gateway {}: reading {key} ({cid}): {e}", self.gateway))
        })?;
        let body = match (status, range) {
            (206, _) | (200, None) => body,
            // A gateway that ignores Range sends the whole object.
            (200, Some(r)) => {
                let (a, b) = (r.start as usize, r.end as usize);
                if b > body.len() {
                    return Err(BackendError::Other(anyhow::anyhow!(
                        "IPFS gateway {}: {key} ({cid}) is {} bytes, shorter than the range asked for",
                        self.gateway,
                        body.len()
                    )));
                }
                body[a..b].to_vec()
            }
            (404, _) => return Err(BackendError::NotFound(key.to_string())),
            (429 | 500..=599, _) => {
                return Err(BackendError::Transient(anyhow::anyhow!(
                    "IPFS gateway {} answered {status} for {key} ({cid})",
                    self.gateway
                )));
            }
            _ => {
                return Err(BackendError::Other(anyhow::anyhow!(
                    "IPFS gateway {} answered {status} for {key} ({cid}): check --ipfs-gateway",
                    self.gateway
                )));
            }
        };
        if let Some(r) = range
            && body.len() as u64 != r.end - r.start
        {
            return Err(BackendError::Transient(anyhow::anyhow!(
                "IPFS gateway {}: {key} ({cid}): asked for {} bytes, got {}",
                self.gateway,
                r.end - r.start,
                body.len()
            )));
        }
        Ok(body)
    }
}

impl Backend for GatewayReads {
    fn location(&self) -> String {
        format!("{} (packs through {})", self.inner.location(), self.gateway)
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        self.inner.put_if_absent(key, data)
    }
    fn put_shared(&self, key: &str, data: std::sync::Arc<Vec<u8>>) -> BResult<PutOutcome> {
        self.inner.put_shared(key, data)
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        match self.cids.get(key) {
            // A gateway that cannot serve it (not found, down) leaves the
            // read to the repository's own backend.
            Some(cid) => match self.fetch(cid, key, range.as_ref()) {
                Ok(b) => Ok(b),
                Err(e) => {
                    log::warn!("{e}; reading it from {} instead", self.inner.location());
                    self.inner.get(key, range)
                }
            },
            None => self.inner.get(key, range),
        }
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        self.inner.stat(key)
    }
    fn delete(&self, key: &str) -> BResult<()> {
        self.inner.delete(key)
    }
    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        self.inner.delete_many(keys)
    }
    fn cleanup_interrupted(&self) -> BResult<u64> {
        self.inner.cleanup_interrupted()
    }
    fn content_address(&self, key: &str) -> BResult<Option<String>> {
        self.inner.content_address(key)
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
    fn is_remote(&self) -> bool {
        true
    }
}
