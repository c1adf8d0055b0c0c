//! Passphrase-wrapped copies of the master key, kept in the repository as
//! `keys/<id>` (FORMAT §3.1).
//!
//! A key object holds the master key sealed (XChaCha20-Poly1305) under a
//! key-encryption key that Argon2id derives from a passphrase, with the
//! Argon2id parameters and salt in the object itself, so a later version can
//! raise the cost without breaking older objects. A bare machine that knows
//! only the repository's URL and a passphrase can so open the repository.
//!
//! All key objects of one repository share one salt and one set of
//! parameters (the first object's; `key add` reuses them): opening then
//! costs one Argon2id run however many keys the repository has, and a wrong
//! passphrase costs exactly that one run too. A shared salt is still unique
//! to the repository, which is what defeats precomputed tables.
//!
//! The object is JSON, because it must be read before any key is known. Its
//! label (who or what the key is for) is sealed under the repository's own
//! seal key: the backend learns no names, only ids and creation times.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keys::MasterKey;
use super::seal::Sealer;

pub const KEYS_PREFIX: &str = "keys/";
const FORMAT: &str = "n2s-key-object";
const VERSION: u32 = 1;
const KDF: &str = "argon2id";
/// Argon2 version 0x13, the only one Argon2id is defined for in RFC 9106.
const ARGON2_VERSION: u32 = 0x13;
const CIPHER: &str = "xchacha20-poly1305";
const LABEL_AAD: &[u8] = b"n2s key object label v1";

/// Argon2id cost of new key objects: 64 MiB, 3 passes, 1 lane (RFC 9106's
/// second recommended option). About a quarter second on a server core.
pub const DEFAULT_PARAMS: KdfParams = KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 };

/// Bounds a stored object's parameters must lie within. The lower bound
/// refuses an object whose cost an attacker lowered to make the passphrase
/// cheap to guess from it; the upper bound refuses one that would take all
/// the memory of the machine that opens it.
const MIN_MEMORY_KIB: u32 = 8 * 1024;
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    algorithm: String,
    version: u32,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    /// 16 bytes, hex.
    salt: String,
}

/// The object as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: String,
    version: u32,
    created_at: i64,
    kdf: Kdf,
    cipher: String,
    /// The master key sealed under the Argon2id output, hex.
    wrapped_key: String,
    /// The label sealed under the repository's seal key, hex.
    label: String,
}

/// A parsed key object: everything but the passphrase needed to open it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyObject {
    /// The id in `keys/<id>`.
    pub id: String,
    pub created_at: i64,
    pub params: KdfParams,
    pub salt: [u8; 16],
    wrapped_key: Vec<u8>,
    sealed_label: Vec<u8>,
}

/// The Argon2id output, the key that wraps the master key.
struct Kek(Zeroizing<[u8; 32]>);

/// How many Argon2id runs this process made (a wrong passphrase must cost
/// exactly one; `-vv` logs each).
static ARGON2_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn argon2_runs() -> u64 {
    ARGON2_RUNS.load(std::sync::atomic::Ordering::Relaxed)
}

fn derive_kek(passphrase: &[u8], salt: &[u8; 16], p: KdfParams) -> Result<Kek> {
    check_params(p)?;
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| anyhow::anyhow!("bad Argon2id parameters: {e}"))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    let started = std::time::Instant::now();
    a.hash_password_into(passphrase, salt, &mut out[..]).map_err(|e| anyhow::anyhow!("Argon2id failed: {e}"))?;
    ARGON2_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(
        "derived a key-encryption key with Argon2id (m={} KiB, t={}, p={}) in {:.2} s",
        p.memory_kib,
        p.iterations,
        p.parallelism,
        started.elapsed().as_secs_f64()
    );
    Ok(Kek(out))
}

fn check_params(p: KdfParams) -> Result<()> {
    if !(MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&p.memory_kib) {
        bail!("Argon2id memory {} KiB is outside {MIN_MEMORY_KIB}..={MAX_MEMORY_KIB} KiB", p.memory_kib);
    }
    if !(1..=MAX_ITERATIONS).contains(&p.iterations) {
        bail!("Argon2id iterations {} are outside 1..={MAX_ITERATIONS}", p.iterations);
    }
    if !(1..=MAX_PARALLELISM).contains(&p.parallelism) {
        bail!("Argon2id parallelism {} is outside 1..={MAX_PARALLELISM}", p.parallelism);
    }
    Ok(())
}

/// What the wrapped key is bound to: every field a reader acts on, so that
/// an edited object fails to open rather than open differently.
fn wrap_aad(id: &str, created_at: i64, p: KdfParams, salt: &[u8; 16]) -> Vec<u8> {
    format!(
        "{FORMAT} v{VERSION}|{id}|{created_at}|{KDF}|{ARGON2_VERSION}|{}|{}|{}|{}|{CIPHER}",
        p.memory_kib,
        p.iterations,
        p.parallelism,
        hex::encode(salt)
    )
    .into_bytes()
}

impl KeyObject {
    /// Wrap `master` under `passphrase`. `salt` and `params` are the
    /// repository's (see the module doc), or new ones for its first key.
    pub fn create(
        master: &MasterKey,
        passphrase: &[u8],
        label: &str,
        salt: [u8; 16],
        params: KdfParams,
    ) -> Result<KeyObject> {
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("cannot get random bytes: {e}"))?;
        let id = hex::encode(raw);
        let created_at = crate::util::now();
        let kek = derive_kek(passphrase, &salt, params)?;
        let wrapped_key = Sealer::new(&kek.0).seal(&wrap_aad(&id, created_at, params, &salt), master.as_bytes());
        let sealed_label = Sealer::new(&master.derive().seal).seal(&label_aad(&id), label.as_bytes());
        Ok(KeyObject { id, created_at, params, salt, wrapped_key, sealed_label })
    }

    /// A new salt for a repository's first key object.
    pub fn new_salt() -> Result<[u8; 16]> {
        let mut s = [0u8; 16];
        getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("cannot get random bytes: {e}"))?;
        Ok(s)
    }

    pub fn key(&self) -> String {
        format!("{KEYS_PREFIX}{}", self.id)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            format: FORMAT.into(),
            version: VERSION,
            created_at: self.created_at,
            kdf: Kdf {
                algorithm: KDF.into(),
                version: ARGON2_VERSION,
                memory_kib: self.params.memory_kib,
                iterations: self.params.iterations,
                parallelism: self.params.parallelism,
                salt: hex::encode(self.salt),
            },
            cipher: CIPHER.into(),
            wrapped_key: hex::encode(&self.wrapped_key),
            label: hex::encode(&self.sealed_label),
        };
        let mut out = serde_json::to_vec_pretty(&stored).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parse the object stored at `keys/<id>`. Refuses anything but the
    /// exact format, and parameters outside the bounds.
    pub fn parse(id: &str, bytes: &[u8]) -> Result<KeyObject> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("key object id {id:?} is not hex");
        }
        let s: Stored = serde_json::from_slice(bytes).context("not a key object (bad JSON)")?;
        if s.format != FORMAT || s.version != VERSION {
            bail!("not a version {VERSION} key object (format {:?}, version {})", s.format, s.version);
        }
        if s.kdf.algorithm != KDF || s.kdf.version != ARGON2_VERSION || s.cipher != CIPHER {
            bail!(
                "key object uses {} version {} with {}, not {KDF} version {ARGON2_VERSION} with {CIPHER}",
                s.kdf.algorithm,
                s.kdf.version,
                s.cipher
            );
        }
        let params =
            KdfParams { memory_kib: s.kdf.memory_kib, iterations: s.kdf.iterations, parallelism: s.kdf.parallelism };
        check_params(params)?;
        let salt: [u8; 16] = hex::decode(&s.kdf.salt)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("key object salt is not 16 bytes of hex"))?;
        let wrapped_key = hex::decode(&s.wrapped_key).context("key object's wrapped key is not hex")?;
        if wrapped_key.len() != 32 + super::seal::SEAL_OVERHEAD {
            bail!("key object's wrapped key has {} bytes, not {}", wrapped_key.len(), 32 + super::seal::SEAL_OVERHEAD);
        }
        let sealed_label = hex::decode(&s.label).context("key object's label is not hex")?;
        if sealed_label.len() < super::seal::SEAL_OVERHEAD || sealed_label.len() > 4096 {
            bail!("key object's label has a bad length ({} bytes)", sealed_label.len());
        }
        Ok(KeyObject { id: id.to_string(), created_at: s.created_at, params, salt, wrapped_key, sealed_label })
    }

    fn unwrap_with(&self, kek: &Kek) -> Option<MasterKey> {
        let plain = Sealer::new(&kek.0)
            .open(&wrap_aad(&self.id, self.created_at, self.params, &self.salt), &self.wrapped_key)
            .ok()?;
        let plain = Zeroizing::new(plain);
        let arr: [u8; 32] = plain.as_slice().try_into().ok()?;
        Some(MasterKey::from_bytes(arr))
    }

    /// The label, readable by whoever holds the master key.
    pub fn label(&self, master: &MasterKey) -> Result<String> {
        let plain = Sealer::new(&master.derive().seal)
            .open(&label_aad(&self.id), &self.sealed_label)
            .map_err(|_| anyhow::anyhow!("the label of key {} does not open under this repository's key", self.id))?;
        String::from_utf8(plain).map_err(|_| anyhow::anyhow!("the label of key {} is not UTF-8", self.id))
    }
}

fn label_aad(id: &str) -> Vec<u8> {
    let mut a = LABEL_AAD.to_vec();
    a.push(b'|');
    a.extend_from_slice(id.as_bytes());
    a
}

/// Which key object a passphrase opened.
pub struct Unlocked {
    pub master: MasterKey,
    pub key_id: String,
}

/// Try `passphrase` against `objects`: one Argon2id run per distinct salt
/// and parameters (one, in a repository whose keys `key add` made).
pub fn unlock(objects: &[KeyObject], passphrase: &[u8]) -> Result<Option<Unlocked>> {
    // Objects that share a salt and cost share one key-encryption key.
    type Kdf = ([u8; 16], KdfParams);
    let mut groups: Vec<(Kdf, Vec<&KeyObject>)> = Vec::new();
    for o in objects {
        match groups.iter_mut().find(|(k, _)| *k == (o.salt, o.params)) {
            Some((_, v)) => v.push(o),
            None => groups.push(((o.salt, o.params), vec![o])),
        }
    }
    for ((salt, params), members) in groups {
        let kek = derive_kek(passphrase, &salt, params)?;
        for o in members {
            if let Some(master) = o.unwrap_with(&kek) {
                return Ok(Some(Unlocked { master, key_id: o.id.clone() }));
            }
        }
    }
    Ok(None)
}

/// The salt and parameters a new key object of this repository should use.
pub fn shared_kdf(objects: &[KeyObject]) -> Result<([u8; 16], KdfParams)> {
    match objects.iter().min_by_key(|o| (o.created_at, o.id.clone())) {
        Some(o) => Ok((o.salt, o.params)),
        None => Ok((KeyObject::new_salt()?, DEFAULT_PARAMS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The cheapest parameters the bounds allow, so tests stay fast.
    const CHEAP: KdfParams = KdfParams { memory_kib: MIN_MEMORY_KIB, iterations: 1, parallelism: 1 };

    #[test]
    fn a_key_object_roundtrips_and_opens_only_with_its_passphrase() {
        let master = MasterKey::generate().unwrap();
        let salt = KeyObject::new_salt().unwrap();
        let o = KeyObject::create(&master, b"correct horse", "laptop", salt, CHEAP).unwrap();
        let parsed = KeyObject::parse(&o.id, &o.to_bytes()).unwrap();
        assert_eq!(parsed, o);
        let u = unlock(std::slice::from_ref(&parsed), b"correct horse").unwrap().unwrap();
        assert_eq!(u.master.as_bytes(), master.as_bytes());
        assert_eq!(u.key_id, o.id);
        assert_eq!(parsed.label(&master).unwrap(), "laptop");
        assert!(unlock(&[parsed], b"wrong").unwrap().is_none());
    }

    #[test]
    fn a_wrong_passphrase_costs_one_argon2_run_for_keys_sharing_a_salt() {
        let master = MasterKey::generate().unwrap();
        let salt = KeyObject::new_salt().unwrap();
        let objects: Vec<_> =
            (0..3).map(|i| KeyObject::create(&master, format!("p{i}").as_bytes(), "", salt, CHEAP).unwrap()).collect();
        let before = argon2_runs();
        assert!(unlock(&objects, b"nope").unwrap().is_none());
        // Other tests run Argon2id in parallel: at least one, and the
        // grouping itself is checked directly.
        assert!(argon2_runs() > before);
        let (s, p) = shared_kdf(&objects).unwrap();
        assert_eq!((s, p), (salt, CHEAP));
        assert!(unlock(&objects, b"p2").unwrap().is_some());
    }

    #[test]
    fn edited_fields_make_the_object_fail_to_open() {
        let master = MasterKey::generate().unwrap();
        let o = KeyObject::create(&master, b"pw", "x", KeyObject::new_salt().unwrap(), CHEAP).unwrap();
        let text = String::from_utf8(o.to_bytes()).unwrap();
        let mut changed = text.replace(&format!("\"created_at\": {}", o.created_at), "\"created_at\": 1");
        assert_ne!(changed, text);
        let p = KeyObject::parse(&o.id, changed.as_bytes()).unwrap();
        assert!(unlock(&[p], b"pw").unwrap().is_none(), "an edited creation time went unnoticed");
        changed = text.replace("\"iterations\": 1", "\"iterations\": 2");
        let p = KeyObject::parse(&o.id, changed.as_bytes()).unwrap();
        assert!(unlock(&[p], b"pw").unwrap().is_none(), "edited parameters went unnoticed");
        // Under another id (a copy renamed by the backend): refused too.
        let mut other = KeyObject::parse(&o.id, text.as_bytes()).unwrap();
        other.id = "00".repeat(12);
        assert!(unlock(&[other], b"pw").unwrap().is_none());
    }

    #[test]
    fn weakened_or_huge_parameters_are_refused() {
        let master = MasterKey::generate().unwrap();
        let o = KeyObject::create(&master, b"pw", "", KeyObject::new_salt().unwrap(), CHEAP).unwrap();
        let text = String::from_utf8(o.to_bytes()).unwrap();
        for (from, to) in [
            (format!("\"memory_kib\": {MIN_MEMORY_KIB}"), "\"memory_kib\": 64".to_string()),
            (format!("\"memory_kib\": {MIN_MEMORY_KIB}"), "\"memory_kib\": 4294967295".to_string()),
            ("\"iterations\": 1".into(), "\"iterations\": 0".into()),
            ("\"parallelism\": 1".into(), "\"parallelism\": 255".into()),
            ("\"argon2id\"".into(), "\"argon2i\"".into()),
        ] {
            let t = text.replace(&from, &to);
            assert_ne!(t, text);
            assert!(KeyObject::parse(&o.id, t.as_bytes()).is_err(), "accepted {to}");
        }
    }

    proptest! {
        /// Key objects are read before any key is known, from a backend
        /// that may be hostile: no input makes the parser panic.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), id in "[0-9a-f]{0,70}") {
            let _ = KeyObject::parse(&id, &bytes);
        }

        #[test]
        fn parse_never_panics_on_near_valid_json(
            mem in any::<u32>(), t in any::<u32>(), p in any::<u32>(),
            salt in "[0-9a-fx]{0,40}", wrapped in "[0-9a-f]{0,200}", created in any::<i64>(),
        ) {
            let text = format!(
                r#"{{"format":"n2s-key-object","version":1,"created_at":{created},"kdf":{{"algorithm":"argon2id","version":19,"memory_kib":{mem},"iterations":{t},"parallelism":{p},"salt":"{salt}"}},"cipher":"xchacha20-poly1305","wrapped_key":"{wrapped}","label":"{wrapped}"}}"#
            );
            let _ = KeyObject::parse("abcd", text.as_bytes());
        }
    }
}
