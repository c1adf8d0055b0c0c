//! The master key, the keys derived from it, and the key file.
//!
//! One random 256-bit master key opens a repository. Every use gets its own
//! subkey through BLAKE3's key derivation, so that chunk ids (which the
//! backend sees) say nothing about the sealing key, and vice versa.

use anyhow::{Context, Result, bail};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::model::ChunkId;

const KEY_FILE_TAG: &str = "n2s-key-v1";

/// The 256-bit master key. Deliberately not `Debug`-printable: the key must
/// never reach a log.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<secret>)")
    }
}

impl MasterKey {
    pub fn generate() -> Result<MasterKey> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| anyhow::anyhow!("cannot get random bytes: {e}"))?;
        Ok(MasterKey(k))
    }

    pub fn from_bytes(b: [u8; 32]) -> MasterKey {
        MasterKey(b)
    }

    /// The raw key, for wrapping it in a key object (`core::keyobject`).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Read a key file. Refuses files that group or others can read: a key
    /// that leaked is a repository that leaked.
    pub fn load(path: &Path) -> Result<MasterKey> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "cannot read key file {}: give the key made by `n2s-agent init` with --key-file or N2S_KEY_FILE",
                path.display()
            )
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "key file {} has mode {:04o}, which lets others read it: run `chmod 600 {}`",
                path.display(),
                mode,
                path.display()
            );
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("key file {} is not an n2s key", path.display()))
    }

    fn parse(text: &str) -> Result<MasterKey> {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(hexkey) = line.strip_prefix(KEY_FILE_TAG) else {
                bail!("expected a line starting with `{KEY_FILE_TAG}`");
            };
            let raw = hex::decode(hexkey.trim()).map_err(|_| anyhow::anyhow!("the key is not hex"))?;
            let arr: [u8; 32] = raw.try_into().map_err(|_| anyhow::anyhow!("the key is not 32 bytes long"))?;
            return Ok(MasterKey(arr));
        }
        bail!("no key line found")
    }

    /// Write a new key file with mode 0600, refusing to replace an existing one.
    /// The file, its name and any directory made for it are fsynced: `init`
    /// writes the repository right after, and a repository whose key a power
    /// cut took away can never be opened.
    pub fn save_new(&self, path: &Path) -> Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::backend::local::create_dirs_durably(dir)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot create the key file's directory {}", dir.display()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create key file {} (it must not exist yet)", path.display()))?;
        let body = format!(
            "# n2s-agent repository key. Without it no backup can be read: keep a copy offline.\n{} {}\n",
            KEY_FILE_TAG,
            hex::encode(self.0)
        );
        if let Err(e) = f.write_all(body.as_bytes()).and_then(|()| f.sync_all()) {
            // A half-written key file would be loaded, and refused, by the next `init`.
            let _ = std::fs::remove_file(path);
            return Err(e).with_context(|| format!("cannot write key file {}", path.display()));
        }
        crate::backend::local::fsync_dir(dir).with_context(|| format!("cannot fsync directory {}", dir.display()))?;
        Ok(())
    }

    pub fn derive(&self) -> DerivedKeys {
        DerivedKeys {
            chunk_id: blake3::derive_key("n2s-agent 2026 v1 chunk id", &self.0),
            seal: blake3::derive_key("n2s-agent 2026 v1 seal", &self.0),
            name: blake3::derive_key("n2s-agent 2026 v1 name", &self.0),
            chunker_seed: {
                let k = blake3::derive_key("n2s-agent 2026 v1 chunker seed", &self.0);
                u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]])
            },
        }
    }
}

/// Subkeys, one per purpose.
#[derive(Clone)]
pub struct DerivedKeys {
    chunk_id: [u8; 32],
    pub(crate) seal: [u8; 32],
    name: [u8; 32],
    /// Seed of the chunker's gear table: keyed so that chunk boundaries (and
    /// so chunk sizes) do not fingerprint known files.
    pub chunker_seed: u64,
}

impl fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKeys(<secret>)")
    }
}

impl DerivedKeys {
    /// A chunk's id: keyed BLAKE3 of its plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.chunk_id, plaintext).as_bytes())
    }

    /// A name's opaque id, for object keys the backend sees (dataset ids).
    pub fn name_id(&self, name: &[u8]) -> String {
        hex::encode(&blake3::keyed_hash(&self.name, name).as_bytes()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_roundtrip_and_mode_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let k = MasterKey::generate().unwrap();
        k.save_new(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let k2 = MasterKey::load(&p).unwrap();
        assert_eq!(k.0, k2.0);
        assert!(k.save_new(&p).is_err(), "must not overwrite an existing key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", MasterKey::load(&p).unwrap_err());
        assert!(err.contains("chmod 600"), "{err}");
    }

    /// A key file that a power cut takes away leaves a repository nobody
    /// can open: its name and the directories made for it are fsynced.
    #[test]
    fn a_new_key_file_survives_a_power_cut() {
        use crate::backend::local::fsync_log;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/n2s/key");
        fsync_log::take();
        MasterKey::generate().unwrap().save_new(&p).unwrap();
        let synced = fsync_log::take();
        for want in [dir.path().to_path_buf(), dir.path().join("etc"), dir.path().join("etc/n2s")] {
            assert!(synced.contains(&want), "{} was not fsynced; fsynced: {synced:?}", want.display());
        }
        assert_eq!(synced.last(), Some(&dir.path().join("etc/n2s")), "the key's own directory is synced last");
    }

    #[test]
    fn derived_keys_differ_and_debug_hides_secret() {
        let k = MasterKey::generate().unwrap();
        let d = k.derive();
        assert_ne!(d.chunk_id, d.seal);
        assert_ne!(d.seal, d.name);
        assert_eq!(format!("{k:?}"), "MasterKey(<secret>)");
        assert!(!format!("{d:?}").contains(&hex::encode(d.seal)));
    }

    #[test]
    fn garbage_key_files_are_rejected() {
        assert!(MasterKey::parse("hello").is_err());
        assert!(MasterKey::parse("n2s-key-v1 abcd").is_err());
        assert!(MasterKey::parse("n2s-key-v1 zz").is_err());
    }
}
