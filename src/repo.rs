//! A repository: a backend plus the key, and the object layout on it.
//!
//! Layout (docs/FORMAT.md): `config` (plain JSON, with a sealed copy of its
//! parameters), `config.sealed` (the whole config, sealed), `data/XX/<pack id>`,
//! `segments/<hash>`, `index/<hash>` (pack summaries, core/packsummary.rs),
//! `manifests/<dataset id>/<seq>`.
//! Only `config` is readable without the key; no object key carries a file
//! or dataset name.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::{Backend, BackendError, PutOutcome};
use crate::catalog::index::{ChunkIndex, ChunkLocation};
use crate::core::chunker::ChunkerParams;
use crate::core::keyobject::{KEYS_PREFIX, KeyObject};
use crate::core::keys::{DerivedKeys, MasterKey};
use crate::core::manifest::{self, ManifestHeader, Record};
use crate::core::pack::{self, PackEntry, PackId, TRAILER_LEN};
use crate::core::packsummary::{self, SummarizedPack, SummaryBuilder};
use crate::core::seal::Sealer;
use crate::model::ChunkId;

pub const CONFIG_KEY: &str = "config";
/// The redundant copy of `config`: its exact bytes, sealed.
pub const CONFIG_COPY_KEY: &str = "config.sealed";
pub const REPO_FORMAT: &str = "n2s-repository";
pub const REPO_VERSION: u32 = 2;
const KEY_CHECK_AAD: &[u8] = b"n2s key check";
/// AAD of the config's own sealed part (its parameters).
const CONFIG_AAD: &[u8] = b"n2s config";
/// AAD of `config.sealed` (the whole config object).
const CONFIG_COPY_AAD: &[u8] = b"n2s config copy";
/// The plaintext fields that are not parameters, so not in the sealed part.
const UNSEALED_FIELDS: [&str; 2] = ["key_check", "sealed"];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub format: String,
    pub version: u32,
    /// Random id of this repository (hex), also the state directory's name for it.
    pub id: String,
    pub created_at: i64,
    pub chunker: ChunkerParams,
    pub cipher: String,
    pub chunk_id: String,
    pub compression: String,
    /// The repository id sealed under the key: proves a key opens this
    /// repository before anything is written.
    pub key_check: String,
    /// Every other field above, as a JSON object, sealed under the key. The
    /// plaintext fields are only a readable mirror of it: a reader refuses a
    /// config whose plaintext differs, so a backend cannot change what
    /// writers obey (the chunker sizes would let it fingerprint files by
    /// their chunk boundaries).
    pub sealed: String,
}

impl RepoConfig {
    /// The parameters the sealed part covers: every field but `key_check`
    /// and `sealed`. Built from the serialized struct so that a field added
    /// later is sealed without anyone having to remember it.
    fn params(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let serde_json::Value::Object(mut m) = serde_json::to_value(self)? else {
            bail!("the repository config does not serialize to a JSON object");
        };
        for f in UNSEALED_FIELDS {
            m.remove(f);
        }
        Ok(m)
    }

    /// The bytes of the `config` object.
    fn to_object(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec_pretty(self)?)
    }
}

pub struct Repository {
    pub backend: Arc<dyn Backend>,
    pub config: RepoConfig,
    pub keys: DerivedKeys,
    pub sealer: Sealer,
    /// What `open` found wrong with the config objects and worked around
    /// (a lost or damaged `config` served from its copy, or a lost copy):
    /// `restore_config_object` fixes it. `None` when both are sound.
    pub config_problem: Option<String>,
}

fn backend_err(e: BackendError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The `config` object as found on the backend.
enum PlainConfig {
    Missing,
    /// Not a JSON object: corruption, not an edit (an edit keeps it JSON).
    Damaged(String),
    Parsed(serde_json::Map<String, serde_json::Value>),
}

/// `config.sealed` as found on the backend.
enum CopyState {
    Missing,
    /// Present, but does not open under this key or holds no valid config.
    Bad(String),
    Valid(RepoConfig),
}

/// Why a config object that parses is refused.
enum Refusal {
    NotN2s(String),
    Newer(u64),
    PreRelease,
    WrongKey,
    Altered(String),
    Invalid(String),
}

impl Refusal {
    /// What the plaintext says, for the "altered" message when the sealed
    /// copy shows the repository is really a version-2 one this key opens.
    fn as_alteration(&self) -> String {
        match self {
            Refusal::NotN2s(f) => format!("field `format` is {f}"),
            Refusal::Newer(v) => format!("field `version` is {v}"),
            Refusal::PreRelease => "field `version` is 1".into(),
            Refusal::WrongKey => "its key check does not open to its id".into(),
            Refusal::Altered(d) | Refusal::Invalid(d) => d.clone(),
        }
    }

    fn into_error(self, loc: &str, copy_valid: bool) -> anyhow::Error {
        match self {
            Refusal::NotN2s(f) => anyhow::anyhow!("{loc} is not an n2s repository (format {f}): check --repo"),
            Refusal::Newer(v) => anyhow::anyhow!(
                "repository at {loc} has format version {v}, this n2s-agent reads version {REPO_VERSION}: upgrade n2s-agent"
            ),
            Refusal::PreRelease => anyhow::anyhow!(
                "repository at {loc} has format version 1, made by pre-release n2s-agent 0.1, which this n2s-agent does not read: make a new repository at another location and back up again"
            ),
            Refusal::WrongKey => wrong_key(loc),
            Refusal::Altered(d) => altered(loc, &d, copy_valid),
            Refusal::Invalid(d) => {
                anyhow::anyhow!("repository config at {loc} is invalid ({d}): it was not written by n2s-agent")
            }
        }
    }
}

fn wrong_key(loc: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the key does not open the repository at {loc} (wrong key file, or wrong repository): use the key that `init` made for it"
    )
}

fn altered(loc: &str, detail: &str, copy_valid: bool) -> anyhow::Error {
    let fix = if copy_valid {
        "check who can write there, then delete the `config` object and run `n2s-agent repair` to rewrite it from its sealed copy config.sealed, or restore `config` from a copy of the repository"
    } else {
        "check who can write there, then restore the `config` object from a copy of the repository"
    };
    anyhow::anyhow!(
        "the repository config at {loc} was altered ({detail}): n2s-agent does not use a config it cannot authenticate (someone with write access to the repository changed it, or it is corrupt); {fix}"
    )
}

fn lost(loc: &str, config: &str, copy: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the repository config at {loc} and its sealed copy are lost or damaged (`config` {config}, `config.sealed` {copy}): the packs and manifests are intact but cannot be opened without the repository config; restore the `config` object (or config.sealed) from a copy of the repository"
    )
}

fn parse_object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Check a config object that parses, in this order: format, version
/// (newer), key check, version (1), sealed part, plaintext against the
/// sealed part, field types and chunker sizes. The key check comes before
/// anything that needs the key, so a wrong key is named as such.
fn check_config(obj: &serde_json::Map<String, serde_json::Value>, sealer: &Sealer) -> Result<RepoConfig, Refusal> {
    let field = |k: &str| obj.get(k);
    match field("format") {
        Some(serde_json::Value::String(f)) if f == REPO_FORMAT => {}
        Some(f) => return Err(Refusal::NotN2s(f.to_string())),
        None => return Err(Refusal::NotN2s("missing".into())),
    }
    let version = match field("version").and_then(|v| v.as_u64()) {
        Some(v) if v > REPO_VERSION as u64 => return Err(Refusal::Newer(v)),
        Some(v) => v,
        None => return Err(Refusal::Altered("field `version` is missing or not a number".into())),
    };
    // Version 1 had the same key check, so a wrong key is still named first.
    let id = field("id").and_then(|v| v.as_str()).unwrap_or_default();
    let check = field("key_check").and_then(|v| v.as_str()).and_then(|h| hex::decode(h).ok()).unwrap_or_default();
    match sealer.open(KEY_CHECK_AAD, &check) {
        Ok(plain) if !id.is_empty() && plain == id.as_bytes() => {}
        _ => return Err(Refusal::WrongKey),
    }
    if version == 1 {
        return Err(Refusal::PreRelease);
    }
    if version != REPO_VERSION as u64 {
        return Err(Refusal::Altered(format!("field `version` is {version}, which n2s-agent never wrote")));
    }
    let Some(sealed_hex) = field("sealed").and_then(|v| v.as_str()) else {
        return Err(Refusal::Altered("field `sealed` is missing".into()));
    };
    let sealed_params = hex::decode(sealed_hex)
        .ok()
        .and_then(|b| sealer.open(CONFIG_AAD, &b).ok())
        .and_then(|plain| parse_object(&plain).ok())
        .ok_or_else(|| {
            Refusal::Altered(
                "its sealed part does not open with this key: it was replaced, perhaps by another repository's".into(),
            )
        })?;
    let mut plain_params = obj.clone();
    for f in UNSEALED_FIELDS {
        plain_params.remove(f);
    }
    if plain_params != sealed_params {
        let mut diffs = Vec::new();
        for (k, v) in &sealed_params {
            match plain_params.get(k) {
                None => diffs.push(format!("field `{k}` is missing")),
                Some(p) if p != v => diffs.push(format!("field `{k}` differs from its sealed part")),
                Some(_) => {}
            }
        }
        for k in plain_params.keys().filter(|k| !sealed_params.contains_key(*k)) {
            diffs.push(format!("field `{k}` is not in its sealed part"));
        }
        return Err(Refusal::Altered(diffs.join(", ")));
    }
    let config: RepoConfig =
        serde_json::from_value(serde_json::Value::Object(obj.clone())).map_err(|e| Refusal::Invalid(e.to_string()))?;
    config.chunker.validate().map_err(Refusal::Invalid)?;
    Ok(config)
}

fn read_copy(backend: &dyn Backend, sealer: &Sealer) -> Result<CopyState> {
    let sealed = match backend.get(CONFIG_COPY_KEY, None) {
        Ok(b) => b,
        Err(BackendError::NotFound(_)) => return Ok(CopyState::Missing),
        Err(e) => {
            return Err(backend_err(e))
                .with_context(|| format!("cannot read {CONFIG_COPY_KEY} in {}", backend.location()));
        }
    };
    let Ok(plain) = sealer.open(CONFIG_COPY_AAD, &sealed) else {
        return Ok(CopyState::Bad("does not open with this key".into()));
    };
    Ok(match parse_object(&plain).map_err(|e| e.to_string()) {
        Err(e) => CopyState::Bad(format!("holds no config: {e}")),
        Ok(obj) => match check_config(&obj, sealer) {
            Ok(c) => CopyState::Valid(c),
            Err(r) => CopyState::Bad(format!("holds a config that is refused: {}", r.as_alteration())),
        },
    })
}

/// Does anything but the config live at this location?
/// The repository's passphrase-wrapped keys (`keys/`, FORMAT §3.1). One
/// that does not parse is skipped with a warning: a damaged key object must
/// not stop the others from opening the repository.
pub fn read_key_objects(backend: &dyn Backend) -> Result<Vec<KeyObject>> {
    let loc = backend.location();
    let listed =
        backend.list(KEYS_PREFIX).map_err(backend_err).with_context(|| format!("cannot list the keys of {loc}"))?;
    let mut out = Vec::new();
    for o in listed {
        let id = o.key.strip_prefix(KEYS_PREFIX).unwrap_or(&o.key);
        let bytes = backend.get(&o.key, None).map_err(backend_err).with_context(|| format!("cannot read {}", o.key))?;
        match KeyObject::parse(id, &bytes) {
            Ok(k) => out.push(k),
            Err(e) => log::warn!("skipping key object {} of {loc}: {e:#}", o.key),
        }
    }
    Ok(out)
}

/// Store a new key object and read it back: a key that cannot be read is
/// found now, not on the day it is the only way in.
pub fn write_key_object(backend: &dyn Backend, k: &KeyObject) -> Result<()> {
    let body = k.to_bytes();
    match backend.put_if_absent(&k.key(), &body).map_err(backend_err)? {
        PutOutcome::Created => {}
        PutOutcome::AlreadyExists => bail!("{} exists already in {}: try again", k.key(), backend.location()),
    }
    let back =
        backend.get(&k.key(), None).map_err(backend_err).with_context(|| format!("cannot read back {}", k.key()))?;
    ensure!(back == body, "{} reads back different from what was written to {}", k.key(), backend.location());
    Ok(())
}

fn holds_data(backend: &dyn Backend) -> Result<bool> {
    for prefix in ["data/", "manifests/", "segments/"] {
        if !backend.list(prefix).map_err(backend_err)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// With no config to check the key against: does the key open one of the
/// manifest headers? `None` when there is none to try.
fn key_opens_a_manifest(backend: &dyn Backend, sealer: &Sealer) -> Option<bool> {
    let keys = backend.list("manifests/").ok()?;
    let mut tried = false;
    for o in keys.iter().take(3) {
        let Ok(b) = backend.get(&o.key, None) else { continue };
        tried = true;
        if ManifestHeader::open(sealer, &b).is_ok() {
            return Some(true);
        }
    }
    tried.then_some(false)
}

impl Repository {
    /// Refuse to create a repository where one is, even one whose `config`
    /// is lost: a new config there would orphan every pack and manifest.
    pub fn check_location_is_free(backend: &dyn Backend) -> Result<()> {
        let loc = backend.location();
        if backend.stat(CONFIG_KEY).map_err(backend_err)?.is_some() {
            bail!("a repository already exists at {loc}: refusing to overwrite it");
        }
        if backend.stat(CONFIG_COPY_KEY).map_err(backend_err)?.is_some() {
            bail!(
                "a repository already exists at {loc}, but its `config` object is missing: run `n2s-agent repair` to rewrite it from its sealed copy config.sealed (do not init over it)"
            );
        }
        if holds_data(backend)? {
            bail!(
                "{loc} already holds n2s repository data (packs or manifests) but its config and its sealed copy config.sealed are lost: refusing to create a new repository over it; restore the `config` object from a copy of the repository"
            );
        }
        Ok(())
    }

    /// Create a new repository. Refuses if one exists already.
    pub fn init(backend: Arc<dyn Backend>, key: &MasterKey) -> Result<Repository> {
        Self::check_location_is_free(&*backend)?;
        let keys = key.derive();
        let sealer = Sealer::new(&keys.seal);
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let id = hex::encode(id);
        let mut config = RepoConfig {
            format: REPO_FORMAT.into(),
            version: REPO_VERSION,
            key_check: hex::encode(sealer.seal(KEY_CHECK_AAD, id.as_bytes())),
            id,
            created_at: crate::util::now(),
            chunker: ChunkerParams::default(),
            cipher: "xchacha20-poly1305".into(),
            chunk_id: "blake3-keyed".into(),
            compression: "zstd".into(),
            sealed: String::new(),
        };
        let params = serde_json::to_vec(&config.params()?)?;
        config.sealed = hex::encode(sealer.seal(CONFIG_AAD, &params));
        let body = config.to_object()?;
        match backend.put_if_absent(CONFIG_KEY, &body).map_err(backend_err)? {
            PutOutcome::Created => {}
            PutOutcome::AlreadyExists => {
                bail!("a repository was created at {} at the same time: refusing to overwrite it", backend.location())
            }
        }
        // Right after `config`: a crash in between leaves a repository that
        // opens with a warning, and `repair` writes the copy.
        match backend.put_if_absent(CONFIG_COPY_KEY, &sealer.seal(CONFIG_COPY_AAD, &body)).map_err(backend_err)? {
            PutOutcome::Created => {}
            PutOutcome::AlreadyExists => bail!(
                "{} already holds a {CONFIG_COPY_KEY} object that this init did not write: another init ran at the same time; check the location",
                backend.location()
            ),
        }
        Ok(Repository { backend, config, keys, sealer, config_problem: None })
    }

    /// Open an existing repository and prove the key opens it.
    ///
    /// `config` wins whenever it parses: if it is altered, `open` refuses
    /// even when `config.sealed` is intact. An edit that keeps the JSON
    /// valid is an attack or a corruption the user must see, and silently
    /// using the copy would hide it. The copy is used only when `config` is
    /// missing or not JSON (lost or damaged), with a warning.
    pub fn open(backend: Arc<dyn Backend>, key: &MasterKey) -> Result<Repository> {
        let loc = backend.location();
        let keys = key.derive();
        let sealer = Sealer::new(&keys.seal);
        let plain = match backend.get(CONFIG_KEY, None) {
            Ok(b) => match parse_object(&b) {
                Ok(obj) => PlainConfig::Parsed(obj),
                Err(e) => PlainConfig::Damaged(e),
            },
            Err(BackendError::NotFound(_)) => PlainConfig::Missing,
            Err(e) => {
                return Err(backend_err(e)).context(format!("cannot read the repository config at {loc}"));
            }
        };
        let (config, config_problem) = match plain {
            PlainConfig::Parsed(obj) => match check_config(&obj, &sealer) {
                Ok(config) => {
                    let problem = match read_copy(&*backend, &sealer) {
                        Ok(CopyState::Valid(c)) if c == config => None,
                        Ok(CopyState::Valid(_)) => {
                            Some(format!("its sealed copy {CONFIG_COPY_KEY} belongs to another repository"))
                        }
                        Ok(CopyState::Missing) => Some(format!("its sealed copy {CONFIG_COPY_KEY} is missing")),
                        Ok(CopyState::Bad(e)) => Some(format!("its sealed copy {CONFIG_COPY_KEY} is damaged ({e})")),
                        Err(e) => Some(format!("{e:#}")),
                    };
                    if let Some(p) = &problem {
                        log::warn!(
                            "the repository config at {loc} is sound but {p}: run `n2s-agent repair` to write the copy again"
                        );
                    }
                    (config, problem)
                }
                Err(refusal) => {
                    // A refusal that the copy contradicts is an alteration:
                    // the copy opens under this key, so the key is right and
                    // this is a repository of this version.
                    let copy_valid = matches!(read_copy(&*backend, &sealer), Ok(CopyState::Valid(_)));
                    match refusal {
                        Refusal::Altered(_) | Refusal::Invalid(_) => return Err(refusal.into_error(&loc, copy_valid)),
                        r if copy_valid => return Err(altered(&loc, &r.as_alteration(), true)),
                        r => return Err(r.into_error(&loc, false)),
                    }
                }
            },
            PlainConfig::Missing | PlainConfig::Damaged(_) => {
                let what = match &plain {
                    PlainConfig::Damaged(e) => format!("is damaged ({e})"),
                    _ => "is missing".to_string(),
                };
                match read_copy(&*backend, &sealer)? {
                    CopyState::Valid(config) => {
                        let problem = format!("its `config` object {what}");
                        log::warn!(
                            "the repository config at {loc} {what}; using its sealed copy {CONFIG_COPY_KEY}: run `n2s-agent repair` to rewrite the config object from it"
                        );
                        (config, Some(problem))
                    }
                    CopyState::Missing if !holds_data(&*backend)? => match plain {
                        PlainConfig::Damaged(e) => {
                            bail!("{loc} holds no n2s repository config (is --repo right?): its `config` object {e}")
                        }
                        _ => bail!("no repository at {loc}: run `n2s-agent init` first, or check --repo"),
                    },
                    CopyState::Missing => return Err(lost(&loc, &what, "is missing")),
                    CopyState::Bad(e) => {
                        // Without a config the key cannot be checked; a
                        // manifest header tells a wrong key from a lost copy.
                        if key_opens_a_manifest(&*backend, &sealer) == Some(false) {
                            return Err(wrong_key(&loc));
                        }
                        if !holds_data(&*backend)? {
                            bail!(
                                "the repository config at {loc} {what} and its sealed copy {CONFIG_COPY_KEY} {e}: wrong key file, or the copy is damaged too; use the key that `init` made for it"
                            );
                        }
                        return Err(lost(&loc, &what, &e));
                    }
                }
            }
        };
        Ok(Repository { backend, config, keys, sealer, config_problem })
    }

    /// Rewrite the config objects from the config in memory (which `open`
    /// authenticated): `config` when it is missing or is not this config,
    /// and `config.sealed` when it is missing, damaged or another
    /// repository's. Nothing is touched when both are sound. For `repair`.
    pub fn restore_config_object(&self) -> Result<()> {
        let loc = self.backend.location();
        let body = self.config.to_object()?;
        let current = match self.backend.get(CONFIG_KEY, None) {
            Ok(b) => Some(b),
            Err(BackendError::NotFound(_)) => None,
            Err(e) => return Err(backend_err(e)).context(format!("cannot read the repository config at {loc}")),
        };
        let sound = current
            .as_deref()
            .and_then(|b| parse_object(b).ok())
            .is_some_and(|obj| check_config(&obj, &self.sealer).is_ok_and(|c| c == self.config));
        if !sound {
            if current.is_some() {
                self.backend
                    .delete(CONFIG_KEY)
                    .map_err(backend_err)
                    .with_context(|| format!("cannot delete the damaged config object at {loc}"))?;
            }
            self.put_config_object(CONFIG_KEY, &body)?;
            log::info!("rewrote the config object at {loc}");
        }
        match read_copy(&*self.backend, &self.sealer)? {
            CopyState::Valid(c) if c == self.config => {}
            state => {
                if !matches!(state, CopyState::Missing) {
                    self.backend
                        .delete(CONFIG_COPY_KEY)
                        .map_err(backend_err)
                        .with_context(|| format!("cannot delete the damaged {CONFIG_COPY_KEY} at {loc}"))?;
                }
                self.put_config_object(CONFIG_COPY_KEY, &self.sealer.seal(CONFIG_COPY_AAD, &body))?;
                log::info!("rewrote {CONFIG_COPY_KEY} at {loc}");
            }
        }
        Ok(())
    }

    fn put_config_object(&self, key: &str, body: &[u8]) -> Result<()> {
        match self.put(key, body)? {
            PutOutcome::Created => Ok(()),
            PutOutcome::AlreadyExists => bail!(
                "{key} at {} was written by someone else while it was being repaired: run the repair again",
                self.backend.location()
            ),
        }
    }

    pub fn dataset_id(&self, dataset: &str) -> String {
        self.keys.name_id(dataset.as_bytes())
    }

    pub fn put(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        self.backend
            .put_if_absent(key, data)
            .map_err(backend_err)
            .with_context(|| format!("cannot store {key} in {}", self.backend.location()))
    }

    /// `put`, giving the body away: decorators and the S3 client take it
    /// without copying (packs).
    pub fn put_shared(&self, key: &str, data: std::sync::Arc<Vec<u8>>) -> Result<PutOutcome> {
        self.backend
            .put_shared(key, data)
            .map_err(backend_err)
            .with_context(|| format!("cannot store {key} in {}", self.backend.location()))
    }

    /// Read one chunk from its pack and prove it is the chunk asked for.
    pub fn read_chunk(&self, id: &ChunkId, loc: &ChunkLocation) -> Result<Vec<u8>> {
        let key = loc.pack.object_key();
        let sealed = self
            .backend
            .get(&key, Some(loc.offset..loc.offset + pack::padded_len(loc.sealed_len)))
            .map_err(backend_err)
            .with_context(|| format!("cannot read chunk {} from pack {key}", &id.to_hex()[..16]))?;
        // The padding after the sealed bytes means nothing; only the sealed
        // part is opened.
        let sealed = sealed.get(..loc.sealed_len as usize).with_context(|| format!("pack {key} is truncated"))?;
        let plain = pack::open_chunk(&self.sealer, id, sealed, loc.raw_len)
            .with_context(|| format!("chunk {} in pack {key} is corrupt", &id.to_hex()[..16]))?;
        ensure!(
            self.keys.chunk_id(&plain) == *id,
            "chunk {} in pack {key} does not hash to its id",
            &id.to_hex()[..16]
        );
        Ok(plain)
    }

    /// Read chunks that lie close together in one pack with one range read
    /// spanning them all (restore merges a file's neighbouring chunks: on a
    /// remote backend each request costs more than the bytes between
    /// them), then open, decompress and re-hash each as `read_chunk` does.
    /// The span ends at the last chunk's padded end, as single reads do.
    pub fn read_chunks(&self, chunks: &[(ChunkId, ChunkLocation)]) -> Result<Vec<Vec<u8>>> {
        let first = match chunks {
            [] => return Ok(Vec::new()),
            [(id, loc)] => return Ok(vec![self.read_chunk(id, loc)?]),
            [(_, first), ..] => first,
        };
        let key = first.pack.object_key();
        ensure!(chunks.iter().all(|(_, l)| l.pack == first.pack), "internal error: one read across packs");
        let start = chunks.iter().map(|(_, l)| l.offset).min().unwrap_or(0);
        let end = chunks.iter().map(|(_, l)| l.offset + pack::padded_len(l.sealed_len)).max().unwrap_or(0);
        let body = self
            .backend
            .get(&key, Some(start..end))
            .map_err(backend_err)
            .with_context(|| format!("cannot read {} chunks from pack {key}", chunks.len()))?;
        let mut out = Vec::with_capacity(chunks.len());
        for (id, loc) in chunks {
            let at = (loc.offset - start) as usize;
            let sealed =
                body.get(at..at + loc.sealed_len as usize).with_context(|| format!("pack {key} is truncated"))?;
            let plain = pack::open_chunk(&self.sealer, id, sealed, loc.raw_len)
                .with_context(|| format!("chunk {} in pack {key} is corrupt", &id.to_hex()[..16]))?;
            ensure!(
                self.keys.chunk_id(&plain) == *id,
                "chunk {} in pack {key} does not hash to its id",
                &id.to_hex()[..16]
            );
            out.push(plain);
        }
        Ok(out)
    }

    /// Read a pack's own index from its tail (two small range reads).
    pub fn read_pack_index(&self, pack: &PackId, size: u64) -> Result<Vec<PackEntry>> {
        self.read_pack_index_counted(pack, size, &mut 0)
    }

    /// Every pack object on the backend.
    pub fn list_packs(&self) -> Result<Vec<(PackId, u64)>> {
        let objs = self.backend.list("data/").map_err(backend_err).context("cannot list packs")?;
        Ok(objs.into_iter().filter_map(|o| PackId::from_object_key(&o.key).map(|id| (id, o.size))).collect())
    }

    /// Manifest header keys, sorted (dataset id, then seq).
    pub fn list_manifests(&self, dataset_id: Option<&str>) -> Result<Vec<String>> {
        let prefix = match dataset_id {
            Some(d) => format!("manifests/{d}/"),
            None => "manifests/".to_string(),
        };
        let mut keys: Vec<String> = self
            .backend
            .list(&prefix)
            .map_err(backend_err)
            .context("cannot list manifests")?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Read a manifest header and check it is the one its key names: a
    /// header moved to another key (another dataset, another number) is refused.
    pub fn read_manifest(&self, key: &str) -> Result<ManifestHeader> {
        let sealed = self.backend.get(key, None).map_err(backend_err)?;
        let h =
            ManifestHeader::open(&self.sealer, &sealed).with_context(|| format!("manifest {key} cannot be opened"))?;
        let expected = ManifestHeader::revision_key(&self.dataset_id(&h.dataset), h.seq, h.revision);
        ensure!(expected == key, "manifest {key} is misplaced: its content says it is {expected}");
        Ok(h)
    }

    pub fn read_segment(&self, key: &str) -> Result<Vec<Record>> {
        let sealed = self.backend.get(key, None).map_err(backend_err)?;
        self.open_segment(key, &sealed)
    }

    /// A segment's records from its sealed bytes (from the backend, or a
    /// local cache of them), checked against its name.
    pub fn open_segment(&self, key: &str, sealed: &[u8]) -> Result<Vec<Record>> {
        // Segments are named by their hash: a swapped segment is caught here.
        ensure!(
            manifest::segment_key(sealed) == key,
            "manifest segment {key} is corrupt: its content does not hash to its name"
        );
        manifest::open_segment(&self.sealer, sealed).with_context(|| format!("manifest segment {key} cannot be opened"))
    }

    /// Add to the local index every pack on the backend it does not know:
    /// after a crash between an upload and its index commit, or after the
    /// state directory was lost. Returns how many packs were added.
    pub fn sync_index(&self, index: &mut ChunkIndex) -> Result<usize> {
        Ok(self.sync_index_report(index)?.packs_added)
    }

    /// `sync_index`, saying how: from the pack summaries first (one GET
    /// each, for the summaries this index has not seen), then from the own
    /// index of each pack no summary covers (two range reads each). A
    /// summary is only a cache of the packs' own indexes: it adds only packs
    /// that are on the backend with the size it gives, and one that cannot
    /// be used is skipped with a warning, its packs read one by one.
    pub fn sync_index_report(&self, index: &mut ChunkIndex) -> Result<SyncReport> {
        let mut r = SyncReport::default();
        let on_backend: HashMap<PackId, u64> = self.list_packs()?.into_iter().collect();
        r.requests.lists += 1;
        let summaries = self.list_summaries()?;
        r.requests.lists += 1;
        let now = crate::util::now();
        for key in &summaries {
            if index.knows_summary(key)? {
                continue;
            }
            r.requests.gets += 1;
            let packs = match self.read_summary(key) {
                Ok(p) => p,
                Err(e) => {
                    log::warn!(
                        "pack summary {key} cannot be used ({e:#}): the packs it covers are read from their own indexes"
                    );
                    r.summaries_unusable += 1;
                    continue;
                }
            };
            r.summaries_read += 1;
            let mut new = Vec::new();
            let mut covered = Vec::new();
            for p in &packs {
                match on_backend.get(&p.id) {
                    Some(&size) if size == p.size => {}
                    Some(&size) => {
                        // The pack wins: its own index is read below.
                        log::warn!(
                            "pack summary {key} says pack {} has {} bytes, the repository has {size}: reading the pack's own index instead",
                            p.id.object_key(),
                            p.size
                        );
                        r.summary_packs_absent += 1;
                        continue;
                    }
                    None => {
                        // Deleted since (or never stored): nothing to add.
                        r.summary_packs_absent += 1;
                        continue;
                    }
                }
                covered.push(p.id);
                if !index.has_pack(&p.id)? {
                    new.push(p);
                }
            }
            index.add_summary(key, &new, &covered, now)?;
            r.packs_from_summaries += new.len();
            r.packs_added += new.len();
        }
        let mut ids: Vec<(&PackId, &u64)> = on_backend.iter().collect();
        ids.sort();
        for (id, &size) in ids {
            if index.has_pack(id)? {
                continue;
            }
            match self.read_pack_index_counted(id, size, &mut r.requests.gets) {
                Ok(entries) => {
                    index.add_pack(id, size, &entries, now)?;
                    r.pack_indexes_read += 1;
                    r.packs_added += 1;
                }
                Err(e) => log::warn!("skipping unreadable pack {}: {e:#}", id.object_key()),
            }
        }
        if r.packs_added > 0 || r.summaries_unusable > 0 {
            log::info!(
                "indexed {} packs: {} from {} pack summaries, {} from their own indexes ({} GETs, {} LISTs)",
                r.packs_added,
                r.packs_from_summaries,
                r.summaries_read,
                r.pack_indexes_read,
                r.requests.gets,
                r.requests.lists
            );
        }
        Ok(r)
    }

    /// `read_pack_index`, counting its GETs into `gets`.
    fn read_pack_index_counted(&self, pack: &PackId, size: u64, gets: &mut u64) -> Result<Vec<PackEntry>> {
        let key = pack.object_key();
        ensure!(size >= (pack::PACK_MAGIC.len() + TRAILER_LEN) as u64, "pack {key} is too short ({size} bytes)");
        *gets += 1;
        let trailer = self.backend.get(&key, Some(size - TRAILER_LEN as u64..size)).map_err(backend_err)?;
        let len = pack::index_len_from_trailer(&trailer).with_context(|| format!("pack {key}"))? as u64;
        ensure!(len + (TRAILER_LEN + pack::PACK_MAGIC.len()) as u64 <= size, "pack {key}: index longer than the pack");
        let start = size - TRAILER_LEN as u64 - len;
        *gets += 1;
        let sealed = self.backend.get(&key, Some(start..start + len)).map_err(backend_err)?;
        pack::open_index(&self.sealer, &sealed, start).with_context(|| format!("pack {key} has a bad index"))
    }

    /// Every pack summary key on the backend, sorted. Objects under
    /// `index/` with other names are not summaries and are ignored.
    pub fn list_summaries(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .backend
            .list(packsummary::SUMMARY_PREFIX)
            .map_err(backend_err)
            .context("cannot list pack summaries")?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| packsummary::is_summary_key(k))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Learn the packs other agents stored since this index last looked:
    /// read the pack summaries it has not seen and add the packs they name,
    /// so a backup deduplicates against what other hosts uploaded. One LIST
    /// of `index/` and one GET per new summary; unlike `sync_index` it does
    /// not list `data/`: a summary is written only after its packs are
    /// confirmed, and a pack lost since is marked lost by `verify`, whose
    /// mark this keeps. Returns how many packs were added.
    pub fn learn_summaries(&self, index: &mut ChunkIndex) -> Result<usize> {
        let now = crate::util::now();
        let mut added = 0;
        for key in self.list_summaries()? {
            if index.knows_summary(&key)? {
                continue;
            }
            let packs = match self.read_summary(&key) {
                Ok(p) => p,
                Err(e) => {
                    log::warn!("pack summary {key} cannot be used ({e:#}): ignoring it");
                    continue;
                }
            };
            let mut new = Vec::new();
            for p in &packs {
                if !index.has_pack(&p.id)? {
                    new.push(p);
                }
            }
            let covered: Vec<PackId> = packs.iter().map(|p| p.id).collect();
            added += new.len();
            index.add_summary(&key, &new, &covered, now)?;
        }
        if added > 0 {
            log::info!("learned {added} packs stored by other agents (from their pack summaries)");
        }
        Ok(added)
    }

    /// Read and open one pack summary (its bytes must hash to its key).
    pub fn read_summary(&self, key: &str) -> Result<Vec<SummarizedPack>> {
        let object = self.backend.get(key, None).map_err(backend_err)?;
        packsummary::open(&self.sealer, key, &object)
    }

    /// Summarize every pack the local index knows that no summary covers
    /// yet: the packs of this changeset, and any a crash or an older
    /// agent left uncovered. The caller has every one of them confirmed
    /// stored (a summary never names a pack before it exists). Each
    /// summary holds at most `packsummary::MAX_PACKS` packs, and is recorded
    /// in the index only once stored, so a crash in between only leaves
    /// an object that the next sync reads (it names the same packs).
    pub fn write_summaries(&self, index: &mut ChunkIndex) -> Result<SummaryWrite> {
        let mut w = SummaryWrite::default();
        let mut builder = SummaryBuilder::default();
        let mut batch: Vec<PackId> = Vec::new();
        for (id, size) in index.unsummarized_packs()? {
            let entries = index.pack_entries(&id)?;
            if !packsummary::fits_alone(entries.len()) {
                log::warn!(
                    "pack {} has {} chunks, too many for a pack summary: a rebuild reads its own index",
                    id.object_key(),
                    entries.len()
                );
                index.mark_unsummarizable(&id)?;
                continue;
            }
            if !builder.has_room(entries.len()) {
                self.store_summary(index, std::mem::take(&mut builder), &mut batch, &mut w)?;
            }
            builder.push(&id, size, &entries)?;
            batch.push(id);
        }
        if !builder.is_empty() {
            self.store_summary(index, builder, &mut batch, &mut w)?;
        }
        Ok(w)
    }

    fn store_summary(
        &self,
        index: &mut ChunkIndex,
        builder: SummaryBuilder,
        batch: &mut Vec<PackId>,
        w: &mut SummaryWrite,
    ) -> Result<()> {
        let (key, object) = packsummary::seal(&self.sealer, &builder.finish());
        // Content-addressed: AlreadyExists means these very bytes are there.
        self.put(&key, &object)?;
        index.add_summary(&key, &[], batch, crate::util::now())?;
        w.summaries += 1;
        w.packs += batch.len();
        w.bytes += object.len() as u64;
        batch.clear();
        Ok(())
    }
}

/// What `sync_index_report` did, and the backend requests it made (a
/// rebuild of a repository of P packs in S summaries makes S GETs and 2
/// LISTs, not 2P range reads; on S3 a LIST is one request per 1000 keys).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SyncReport {
    pub packs_added: usize,
    /// Summaries read and used (those the index had seen are not read again).
    pub summaries_read: usize,
    /// Summaries that could not be read or opened: skipped, never trusted.
    pub summaries_unusable: usize,
    pub packs_from_summaries: usize,
    /// Packs no usable summary covered, whose own index was read.
    pub pack_indexes_read: usize,
    /// Packs a summary names that are not on the backend (or have another size).
    pub summary_packs_absent: usize,
    pub requests: Requests,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Requests {
    pub gets: u64,
    pub lists: u64,
}

/// What `write_summaries` stored.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SummaryWrite {
    pub summaries: usize,
    pub packs: usize,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    #[test]
    fn init_open_and_wrong_key() {
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let k = MasterKey::generate().unwrap();
        let r = Repository::init(b.clone(), &k).unwrap();
        assert!(Repository::init(b.clone(), &k).is_err(), "init refuses to overwrite");
        let r2 = Repository::open(b.clone(), &k).unwrap();
        assert_eq!(r.config, r2.config);
        let other = MasterKey::generate().unwrap();
        let e = format!("{:#}", Repository::open(b.clone(), &other).err().unwrap());
        assert!(e.contains("does not open"), "{e}");
        let empty: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let e = format!("{:#}", Repository::open(empty, &k).err().unwrap());
        assert!(e.contains("n2s-agent init"), "{e}");
        // The config reveals no key material.
        let cfg = String::from_utf8(b.get(CONFIG_KEY, None).unwrap()).unwrap();
        assert!(!cfg.contains(&hex::encode(k.derive().seal)));
    }

    /// The layout docs/FORMAT.md §2 gives, rebuilt by hand from the objects.
    #[test]
    fn config_objects_are_as_documented() {
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let k = MasterKey::generate().unwrap();
        let r = Repository::init(b.clone(), &k).unwrap();
        let body = b.get(CONFIG_KEY, None).unwrap();
        let mut plain: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(plain["version"], 2);
        let sealed = hex::decode(plain.remove("sealed").unwrap().as_str().unwrap()).unwrap();
        plain.remove("key_check").unwrap();
        let params: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&r.sealer.open(b"n2s config", &sealed).unwrap()).unwrap();
        assert_eq!(params, plain, "the sealed part is every other field");
        let copy = b.get(CONFIG_COPY_KEY, None).unwrap();
        assert_eq!(r.sealer.open(b"n2s config copy", &copy).unwrap(), body, "the copy is the config's bytes, sealed");
        assert!(r.config_problem.is_none());
    }

    #[test]
    fn a_tampered_config_is_refused_and_a_lost_one_served_from_its_copy() {
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let k = MasterKey::generate().unwrap();
        let r = Repository::init(b.clone(), &k).unwrap();
        let body = b.get(CONFIG_KEY, None).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["chunker"]["max_size"] = (8 << 20).into();
        b.delete(CONFIG_KEY).unwrap();
        b.put_if_absent(CONFIG_KEY, &serde_json::to_vec(&v).unwrap()).unwrap();
        let e = format!("{:#}", Repository::open(b.clone(), &k).err().unwrap());
        assert!(e.contains("was altered") && e.contains("`chunker`"), "{e}");
        // A repair from a repository opened before the tampering puts it back.
        r.restore_config_object().unwrap();
        assert_eq!(b.get(CONFIG_KEY, None).unwrap(), body);
        // Lost: served from the copy, and the problem is named for repair.
        b.delete(CONFIG_KEY).unwrap();
        let r2 = Repository::open(b.clone(), &k).unwrap();
        assert_eq!(r2.config, r.config);
        assert!(r2.config_problem.as_deref().is_some_and(|p| p.contains("missing")), "{:?}", r2.config_problem);
        r2.restore_config_object().unwrap();
        assert_eq!(b.get(CONFIG_KEY, None).unwrap(), body);
        assert!(Repository::open(b.clone(), &k).unwrap().config_problem.is_none());
    }

    /// Summaries cut at MAX_PACKS, are written once, and a fresh index is
    /// rebuilt from them alone; a pack that a summary names but the backend
    /// does not hold is not indexed.
    #[test]
    fn summaries_are_batched_written_once_and_read_back() {
        use crate::core::pack::{KIND_DATA, PackBuilder};
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let k = MasterKey::generate().unwrap();
        let r = Repository::init(b.clone(), &k).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut ix = ChunkIndex::open(&dir.path().join("a.sqlite")).unwrap();
        let n = packsummary::MAX_PACKS + 3;
        let mut ids = Vec::new();
        for i in 0..n {
            let plain = format!("chunk {i}").into_bytes();
            let id = r.keys.chunk_id(&plain);
            let mut pb = PackBuilder::new(4096);
            pb.add(id, KIND_DATA, plain.len() as u32, &pack::seal_chunk(&r.sealer, &id, &plain));
            let p = pb.finish(&r.sealer);
            r.put(&p.id.object_key(), &p.bytes).unwrap();
            ix.add_pack(&p.id, p.bytes.len() as u64, &p.entries, 1).unwrap();
            ids.push(p.id);
        }
        let w = r.write_summaries(&mut ix).unwrap();
        assert_eq!((w.summaries, w.packs), (2, n), "{w:?}");
        assert_eq!(r.write_summaries(&mut ix).unwrap().summaries, 0, "every pack is covered now");
        assert_eq!(r.sync_index_report(&mut ix).unwrap().requests.gets, 0, "its own summaries are known");
        // One pack goes away; a fresh index learns the others from 2 GETs.
        b.delete(&ids[5].object_key()).unwrap();
        let mut fresh = ChunkIndex::open(&dir.path().join("b.sqlite")).unwrap();
        let s = r.sync_index_report(&mut fresh).unwrap();
        assert_eq!((s.packs_added, s.pack_indexes_read, s.summary_packs_absent), (n - 1, 0, 1), "{s:?}");
        assert_eq!((s.requests.gets, s.requests.lists), (2, 2));
        assert!(!fresh.has_pack(&ids[5]).unwrap() && fresh.has_pack(&ids[6]).unwrap());
        assert_eq!(fresh.pack_entries(&ids[6]).unwrap(), ix.pack_entries(&ids[6]).unwrap());
        assert!(fresh.unsummarized_packs().unwrap().is_empty(), "what it read from summaries is covered");
    }

    /// A repair of sound objects touches nothing (a delete and a put would
    /// open a window with no config).
    #[test]
    fn restoring_sound_config_objects_writes_nothing() {
        struct NoWrites(MemoryBackend);
        impl Backend for NoWrites {
            fn location(&self) -> String {
                self.0.location()
            }
            fn put_if_absent(&self, key: &str, _: &[u8]) -> crate::backend::BResult<PutOutcome> {
                panic!("wrote {key}")
            }
            fn get(&self, key: &str, r: Option<std::ops::Range<u64>>) -> crate::backend::BResult<Vec<u8>> {
                self.0.get(key, r)
            }
            fn list(&self, p: &str) -> crate::backend::BResult<Vec<crate::backend::ObjectInfo>> {
                self.0.list(p)
            }
            fn stat(&self, key: &str) -> crate::backend::BResult<Option<u64>> {
                self.0.stat(key)
            }
            fn delete(&self, key: &str) -> crate::backend::BResult<()> {
                panic!("deleted {key}")
            }
        }
        let k = MasterKey::generate().unwrap();
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        Repository::init(b.clone(), &k).unwrap();
        let guarded = NoWrites(MemoryBackend::new());
        for key in [CONFIG_KEY, CONFIG_COPY_KEY] {
            guarded.0.put_if_absent(key, &b.get(key, None).unwrap()).unwrap();
        }
        Repository::open(Arc::new(guarded), &k).unwrap().restore_config_object().unwrap();
    }
}
