//! A repository: a backend plus the key, and the object layout on it.
//!
//! Layout (docs/FORMAT.md): `config` (plain JSON), `data/XX/<pack id>`,
//! `segments/<hash>`, `manifests/<dataset id>/<seq>-<changeset id>`.
//! Only `config` is readable without the key; no object key carries a file
//! or dataset name.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::backend::{Backend, BackendError, PutOutcome};
use crate::catalog::index::{ChunkIndex, ChunkLocation};
use crate::core::chunker::ChunkerParams;
use crate::core::keys::{DerivedKeys, MasterKey};
use crate::core::manifest::{self, ManifestHeader, Record};
use crate::core::pack::{self, PackEntry, PackId, TRAILER_LEN};
use crate::core::seal::Sealer;
use crate::model::ChunkId;

pub const CONFIG_KEY: &str = "config";
pub const REPO_FORMAT: &str = "n2s-repository";
pub const REPO_VERSION: u32 = 1;
const KEY_CHECK_AAD: &[u8] = b"n2s key check";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
}

pub struct Repository {
    pub backend: Arc<dyn Backend>,
    pub config: RepoConfig,
    pub keys: DerivedKeys,
    pub sealer: Sealer,
}

fn backend_err(e: BackendError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl Repository {
    /// Create a new repository. Refuses if one exists already.
    pub fn init(backend: Arc<dyn Backend>, key: &MasterKey) -> Result<Repository> {
        if backend.stat(CONFIG_KEY).map_err(backend_err)?.is_some() {
            bail!("a repository already exists at {}: refusing to overwrite it", backend.location());
        }
        let keys = key.derive();
        let sealer = Sealer::new(&keys.seal);
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let id = hex::encode(id);
        let config = RepoConfig {
            format: REPO_FORMAT.into(),
            version: REPO_VERSION,
            key_check: hex::encode(sealer.seal(KEY_CHECK_AAD, id.as_bytes())),
            id,
            created_at: crate::util::now(),
            chunker: ChunkerParams::default(),
            cipher: "xchacha20-poly1305".into(),
            chunk_id: "blake3-keyed".into(),
            compression: "zstd".into(),
        };
        let body = serde_json::to_vec_pretty(&config)?;
        match backend.put_if_absent(CONFIG_KEY, &body).map_err(backend_err)? {
            PutOutcome::Created => {}
            PutOutcome::AlreadyExists => {
                bail!("a repository was created at {} at the same time: refusing to overwrite it", backend.location())
            }
        }
        Ok(Repository { backend, config, keys, sealer })
    }

    /// Open an existing repository and prove the key opens it.
    pub fn open(backend: Arc<dyn Backend>, key: &MasterKey) -> Result<Repository> {
        let body = match backend.get(CONFIG_KEY, None) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => {
                bail!("no repository at {}: run `n2s-agent init` first, or check --repo", backend.location())
            }
            Err(e) => {
                return Err(backend_err(e))
                    .context(format!("cannot read the repository config at {}", backend.location()));
            }
        };
        let config: RepoConfig = serde_json::from_slice(&body)
            .with_context(|| format!("{} holds no n2s repository config (is --repo right?)", backend.location()))?;
        ensure!(
            config.format == REPO_FORMAT,
            "{} is not an n2s repository (format {:?})",
            backend.location(),
            config.format
        );
        ensure!(
            config.version == REPO_VERSION,
            "repository at {} has format version {}, this n2s-agent reads version {REPO_VERSION}: upgrade n2s-agent",
            backend.location(),
            config.version
        );
        config.chunker.validate().map_err(|e| anyhow::anyhow!("repository config at {}: {e}", backend.location()))?;
        let keys = key.derive();
        let sealer = Sealer::new(&keys.seal);
        let check = hex::decode(&config.key_check).unwrap_or_default();
        match sealer.open(KEY_CHECK_AAD, &check) {
            Ok(plain) if plain == config.id.as_bytes() => {}
            _ => bail!(
                "the key does not open the repository at {} (wrong key file, or wrong repository): use the key that `init` made for it",
                backend.location()
            ),
        }
        Ok(Repository { backend, config, keys, sealer })
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

    /// Read one chunk from its pack and prove it is the chunk asked for.
    pub fn read_chunk(&self, id: &ChunkId, loc: &ChunkLocation) -> Result<Vec<u8>> {
        let key = loc.pack.object_key();
        let sealed = self
            .backend
            .get(&key, Some(loc.offset..loc.offset + loc.sealed_len as u64))
            .map_err(backend_err)
            .with_context(|| format!("cannot read chunk {} from pack {key}", &id.to_hex()[..16]))?;
        let plain = pack::open_chunk(&self.sealer, id, &sealed, loc.raw_len)
            .with_context(|| format!("chunk {} in pack {key} is corrupt", &id.to_hex()[..16]))?;
        ensure!(
            self.keys.chunk_id(&plain) == *id,
            "chunk {} in pack {key} does not hash to its id",
            &id.to_hex()[..16]
        );
        Ok(plain)
    }

    /// Read a pack's own index from its tail (two small range reads).
    pub fn read_pack_index(&self, pack: &PackId, size: u64) -> Result<Vec<PackEntry>> {
        let key = pack.object_key();
        ensure!(size >= (pack::PACK_MAGIC.len() + TRAILER_LEN) as u64, "pack {key} is too short ({size} bytes)");
        let trailer = self.backend.get(&key, Some(size - TRAILER_LEN as u64..size)).map_err(backend_err)?;
        let len = pack::index_len_from_trailer(&trailer).with_context(|| format!("pack {key}"))? as u64;
        ensure!(len + (TRAILER_LEN + pack::PACK_MAGIC.len()) as u64 <= size, "pack {key}: index longer than the pack");
        let start = size - TRAILER_LEN as u64 - len;
        let sealed = self.backend.get(&key, Some(start..start + len)).map_err(backend_err)?;
        pack::open_index(&self.sealer, &sealed, start).with_context(|| format!("pack {key} has a bad index"))
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
        let expected = ManifestHeader::object_key(&self.dataset_id(&h.dataset), h.seq);
        ensure!(expected == key, "manifest {key} is misplaced: its content says it is {expected}");
        Ok(h)
    }

    pub fn read_segment(&self, key: &str) -> Result<Vec<Record>> {
        let sealed = self.backend.get(key, None).map_err(backend_err)?;
        // Segments are named by their hash: a swapped segment is caught here.
        ensure!(
            manifest::segment_key(&sealed) == key,
            "manifest segment {key} is corrupt: its content does not hash to its name"
        );
        manifest::open_segment(&self.sealer, &sealed)
            .with_context(|| format!("manifest segment {key} cannot be opened"))
    }

    /// Add to the local index every pack on the backend it does not know:
    /// after a crash between an upload and its index commit, or after the
    /// state directory was lost. Returns how many packs were added.
    pub fn sync_index(&self, index: &mut ChunkIndex) -> Result<usize> {
        let mut added = 0;
        for (id, size) in self.list_packs()? {
            if index.has_pack(&id)? {
                continue;
            }
            match self.read_pack_index(&id, size) {
                Ok(entries) => {
                    index.add_pack(&id, size, &entries, crate::util::now())?;
                    added += 1;
                }
                Err(e) => log::warn!("skipping unreadable pack {}: {e:#}", id.object_key()),
            }
        }
        Ok(added)
    }
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
}
