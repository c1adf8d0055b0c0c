//! Disaster recovery at scale (issue 8, point 7): pack summaries let a
//! machine with only the key and the repository rebuild its chunk index
//! from O(summaries) objects, not two range reads per pack; a lost, corrupt
//! or stale summary costs only a slower rebuild, never a wrong one.

mod common;
use common::*;

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use n2s_agent::backend::{BResult, Backend, ObjectInfo, PutOutcome};
use n2s_agent::catalog::index::ChunkIndex;
use n2s_agent::core::keys::MasterKey;
use n2s_agent::core::pack::{KIND_DATA, PackEntry, PackId};
use n2s_agent::core::packsummary::{self, SummaryBuilder};
use n2s_agent::engine::rebuild::{RebuildMode, RebuildReport, rebuild};
use n2s_agent::model::ChunkId;
use n2s_agent::repo::Repository;
use n2s_agent::state::StatePaths;

/// Packs of 16 KiB: each file of 20 KB below is one chunk and one pack.
const PACK_KB: u32 = 16;

/// Every call a rebuild makes to the backend, by operation and key.
struct Counting {
    inner: Arc<dyn Backend>,
    calls: Mutex<Vec<(&'static str, String)>>,
}

impl Counting {
    fn count(&self, op: &str, prefix: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|(o, k)| *o == op && k.starts_with(prefix)).count()
    }
    fn log(&self, op: &'static str, key: &str) {
        self.calls.lock().unwrap().push((op, key.to_string()));
    }
}

impl Backend for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        self.log("put", key);
        self.inner.put_if_absent(key, data)
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        self.log("get", key);
        self.inner.get(key, range)
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        self.log("list", prefix);
        self.inner.list(prefix)
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        self.log("stat", key);
        self.inner.stat(key)
    }
    fn delete(&self, key: &str) -> BResult<()> {
        self.log("delete", key);
        self.inner.delete(key)
    }
}

fn open_counted(env: &Env) -> (Repository, Arc<Counting>) {
    let key = MasterKey::load(&env.key).unwrap();
    let local: Arc<dyn Backend> = Arc::new(n2s_agent::backend::local::LocalBackend::new(&env.repo));
    let counting = Arc::new(Counting { inner: local, calls: Mutex::new(Vec::new()) });
    let repo = Repository::open(counting.clone(), &key).unwrap();
    counting.calls.lock().unwrap().clear();
    (repo, counting)
}

/// `catalog rebuild` in this process, on a backend that counts its calls.
fn rebuild_counted(env: &Env) -> (RebuildReport, Arc<Counting>) {
    let (repo, counting) = open_counted(env);
    let state = StatePaths::new(&env.state, &repo.config.id).unwrap();
    let report = rebuild(&repo, &state, None, RebuildMode::Strict).unwrap();
    (report, counting)
}

fn index_of(env: &Env) -> ChunkIndex {
    let (repo, _) = open_counted(env);
    let state = StatePaths::new(&env.state, &repo.config.id).unwrap();
    ChunkIndex::open(&state.index_db()).unwrap()
}

/// Object keys under a prefix of the local repository.
fn keys_under(env: &Env, prefix: &str) -> Vec<String> {
    let root = env.repo.join(prefix);
    let mut keys: Vec<String> =
        files_under(&root).iter().map(|p| p.strip_prefix(&env.repo).unwrap().to_string_lossy().into_owned()).collect();
    keys.sort();
    keys
}

fn pack_id_of(path: &Path) -> PackId {
    PackId::from_hex(&path.file_name().unwrap().to_string_lossy()).unwrap()
}

/// Three changesets that add 150, 60 and 50 files of 20 KB (one pack each):
/// 260 packs. Returns each snapshot's label and a copy of its tree.
fn three_changesets(env: &Env) -> Vec<(String, PathBuf)> {
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let mut rng = Rng(seed_from_env_or_time());
    eprintln!("seed {} (rerun with N2S_TEST_SEED)", rng.0);
    let mut out = Vec::new();
    let mut n = 0;
    for (step, files) in [150, 60, 50].into_iter().enumerate() {
        for _ in 0..files {
            std::fs::write(src.join(format!("d/f{n:04}")), rng.bytes(20_000)).unwrap();
            n += 1;
        }
        if step > 0 {
            std::fs::remove_file(src.join(format!("d/f{:04}", step * 7))).unwrap();
        }
        let label = format!("s{step}");
        let o = env.backup_small_packs("dr", &src, &label, PACK_KB);
        assert!(o.status.success(), "backup {label}: {}", stderr(&o));
        let copy = env.path(&format!("expect-{label}"));
        copy_tree(&src, &copy);
        out.push((label, copy));
    }
    out
}

fn restore_all_and_compare(env: &Env, snaps: &[(String, PathBuf)], tag: &str) {
    for (label, copy) in snaps {
        let t = env.path(&format!("got-{tag}-{label}"));
        env.restore("dr", label, &t);
        assert_same_tree(copy, &t);
    }
}

/// Which summary names which packs.
fn summary_packs(env: &Env) -> BTreeMap<String, Vec<PackId>> {
    let (repo, _) = open_counted(env);
    repo.list_summaries()
        .unwrap()
        .into_iter()
        .map(|k| {
            let packs = repo.read_summary(&k).unwrap().into_iter().map(|p| p.id).collect();
            (k, packs)
        })
        .collect()
}

#[test]
fn a_rebuild_reads_the_summaries_not_every_pack() {
    let env = Env::new();
    let snaps = three_changesets(&env);
    let packs = files_under(&env.repo.join("data"));
    assert!(packs.len() >= 200, "want 200+ packs, got {}", packs.len());
    // One summary per changeset, written after its packs, naming each pack once.
    let summaries = summary_packs(&env);
    assert_eq!(summaries.len(), 3, "one summary per changeset: {:?}", summaries.keys());
    let named: Vec<PackId> = summaries.values().flatten().copied().collect();
    let on_disk: HashSet<PackId> = packs.iter().map(|p| pack_id_of(p)).collect();
    assert_eq!(named.len(), on_disk.len(), "each pack in exactly one summary");
    assert_eq!(named.iter().copied().collect::<HashSet<_>>(), on_disk);
    let before = env.list_json("dr");

    // The state directory is lost: a rebuild reads 3 summaries, no pack.
    std::fs::remove_dir_all(&env.state).unwrap();
    let (r, calls) = rebuild_counted(&env);
    assert_eq!(calls.count("get", "data/"), 0, "no pack read: {:?}", r.index);
    assert_eq!(calls.count("get", "index/"), 3, "{:?}", r.index);
    assert_eq!(calls.count("list", "data/"), 1);
    assert_eq!(calls.count("list", "index/"), 1);
    assert_eq!(r.packs_indexed, packs.len());
    assert_eq!((r.index.packs_from_summaries, r.index.pack_indexes_read), (packs.len(), 0));
    assert_eq!((r.index.requests.gets, r.index.requests.lists), (3, 2), "the rebuild counts what it asked");
    // Everything else it read is the manifests: O(changesets), not O(packs).
    let manifest_objects = keys_under(&env, "manifests").len() + keys_under(&env, "segments").len();
    assert_eq!(calls.count("get", ""), 3 + manifest_objects);
    assert_eq!(r.datasets[0].changesets, 3);
    let after = env.list_json("dr");
    assert_eq!(before["changesets"].as_array().unwrap().len(), after["changesets"].as_array().unwrap().len());
    restore_all_and_compare(&env, &snaps, "inproc");

    // The same through the binary, which reports its requests.
    std::fs::remove_dir_all(&env.state).unwrap();
    let r: serde_json::Value = serde_json::from_str(&env.ok(["catalog", "rebuild", "--json"])).unwrap();
    assert_eq!(r["packs_indexed"], packs.len(), "{r}");
    assert_eq!(r["index"]["pack_indexes_read"], 0, "{r}");
    assert_eq!(r["index"]["requests"]["gets"], 3, "{r}");
    restore_all_and_compare(&env, &snaps, "bin");
    // A backup with nothing new writes no summary; verify finds them sound.
    let o = env.backup_small_packs("dr", &env.path("src"), "again", PACK_KB);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary_packs(&env).len(), 3, "no new pack, no new summary");
    let v: serde_json::Value = serde_json::from_str(&env.ok(["verify", "--level", "full", "--json"])).unwrap();
    assert_eq!((v["summaries"].as_u64(), v["packs_in_no_summary"].as_u64()), (Some(3), Some(0)), "{v}");
}

#[test]
fn a_lost_or_corrupt_summary_costs_only_a_slower_rebuild() {
    let env = Env::new();
    let snaps = three_changesets(&env);
    let summaries = summary_packs(&env);
    assert_eq!(summaries.len(), 3, "{:?}", summaries.keys());
    let mut it = summaries.iter();
    let (corrupt, corrupt_packs) = it.next().unwrap();
    let (deleted, deleted_packs) = it.next().unwrap();
    let path = |k: &str| env.repo.join(k);
    let mut bytes = std::fs::read(path(corrupt)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(path(corrupt), &bytes).unwrap();
    std::fs::remove_file(path(deleted)).unwrap();

    // Verify names both: the one that does not open, and the one this
    // state directory knew that is gone.
    let o = env.run(["verify", "--level", "quick"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(corrupt.as_str()) && err.contains("cannot be used"), "{err}");
    assert!(err.contains(deleted.as_str()) && err.contains("missing from the repository"), "{err}");

    // A rebuild still finds every pack: the packs of the two bad summaries
    // from their own indexes (two range reads each), the rest from the third.
    std::fs::remove_dir_all(&env.state).unwrap();
    let (r, calls) = rebuild_counted(&env);
    let fallback = corrupt_packs.len() + deleted_packs.len();
    assert_eq!(r.index.summaries_unusable, 1, "{:?}", r.index);
    assert_eq!(r.index.pack_indexes_read, fallback, "{:?}", r.index);
    assert_eq!(calls.count("get", "data/"), 2 * fallback);
    assert_eq!(calls.count("get", "index/"), 2, "the corrupt one is read (and refused), the deleted one is not listed");
    assert_eq!(r.packs_indexed, files_under(&env.repo.join("data")).len());
    restore_all_and_compare(&env, &snaps, "fallback");
    // A fresh verify still names the corrupt one (the deleted one left no trace).
    let o = env.run(["verify", "--level", "standard"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(corrupt.as_str()), "{}", stderr(&o));

    // The next backup summarizes the uncovered packs again: once the bad
    // object is deleted (as verify says), a rebuild reads no pack at all.
    let o = env.backup_small_packs("dr", &env.path("src"), "heal", PACK_KB);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(path(corrupt)).unwrap();
    env.ok(["verify", "--level", "standard"]);
    std::fs::remove_dir_all(&env.state).unwrap();
    let (r, calls) = rebuild_counted(&env);
    assert_eq!(calls.count("get", "data/"), 0, "{:?}", r.index);
    assert_eq!(r.packs_indexed, files_under(&env.repo.join("data")).len());
}

#[test]
fn a_summary_naming_a_pack_that_is_not_there_adds_nothing() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(77);
    for i in 0..12 {
        std::fs::write(src.join(format!("f{i}")), rng.bytes(20_000)).unwrap();
    }
    let o = env.backup_small_packs("dr", &src, "s", PACK_KB);
    assert!(o.status.success(), "{}", stderr(&o));
    let summaries = summary_packs(&env);
    assert_eq!(summaries.len(), 1, "{:?}", summaries.keys());
    let named = summaries.values().next().unwrap();
    let packs = files_under(&env.repo.join("data"));
    assert_eq!(named.len(), packs.len());

    // One pack of it is deleted (as a prune might), and a summary is
    // planted that names a pack that never existed, sealed with the real
    // key (so only the intersection with the listing can refuse it).
    let gone = pack_id_of(&packs[3]);
    std::fs::remove_file(&packs[3]).unwrap();
    let (repo, _) = open_counted(&env);
    let phantom = PackId([0xab; 32]);
    let phantom_chunk = ChunkId([0xcd; 32]);
    let entry = PackEntry { id: phantom_chunk, kind: KIND_DATA, offset: 8, sealed_len: 1000, raw_len: 900 };
    let mut b = SummaryBuilder::default();
    b.push(&phantom, 8192, &[entry]).unwrap();
    let (planted, object) = packsummary::seal(&repo.sealer, &b.finish());
    repo.backend.put_if_absent(&planted, &object).unwrap();
    drop(repo);

    std::fs::remove_dir_all(&env.state).unwrap();
    let (r, calls) = rebuild_counted(&env);
    assert_eq!(calls.count("get", "data/"), 0, "{:?}", r.index);
    assert_eq!(r.index.summaries_read, 2);
    assert_eq!(r.index.summary_packs_absent, 2, "{:?}", r.index);
    assert_eq!(r.packs_indexed, packs.len() - 1);
    let index = index_of(&env);
    assert!(!index.has_pack(&gone).unwrap(), "a deleted pack came back from its summary");
    assert!(!index.has_pack(&phantom).unwrap(), "a pack that never existed was indexed");
    assert!(!index.contains(&phantom_chunk).unwrap());
    drop(index);

    // Verify counts what the summaries name that is not there; it is no
    // problem of theirs (the deleted pack is: its chunks are in no pack).
    let o = env.run(["verify", "--level", "quick", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary_packs_absent"], 2, "{v}");
    let problems = v["problems"].as_array().unwrap();
    assert!(problems.iter().all(|p| !p.as_str().unwrap().contains("index/")), "{v}");
}

#[test]
fn where_a_summary_and_its_pack_disagree_the_pack_wins() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(78);
    for i in 0..6 {
        std::fs::write(src.join(format!("f{i}")), rng.bytes(20_000)).unwrap();
    }
    let o = env.backup_small_packs("dr", &src, "s", PACK_KB);
    assert!(o.status.success(), "{}", stderr(&o));
    let (repo, _) = open_counted(&env);
    let real = repo.list_summaries().unwrap();
    assert_eq!(real.len(), 1, "{real:?}");
    let target = repo.read_summary(&real[0]).unwrap().remove(0);
    // A summary, sealed with the key, that puts the pack's first blob 8
    // bytes further on: it decodes, but it is not what the pack says.
    let mut wrong = target.entries.clone();
    wrong[0].offset += 8;
    let mut b = SummaryBuilder::default();
    b.push(&target.id, target.size, &wrong).unwrap();
    let (planted, object) = packsummary::seal(&repo.sealer, &b.finish());
    repo.backend.put_if_absent(&planted, &object).unwrap();
    std::fs::remove_file(env.repo.join(&real[0])).unwrap();
    drop(repo);

    // A rebuild trusts the summary (it is sealed with the key)...
    std::fs::remove_dir_all(&env.state).unwrap();
    let (r, _) = rebuild_counted(&env);
    assert_eq!(r.index.packs_from_summaries, 1, "{:?}", r.index);
    let chunk = target.entries[0].id;
    assert_eq!(index_of(&env).lookup(&chunk).unwrap().unwrap().offset, wrong[0].offset);
    // ...and verify, which reads the pack, names the summary and takes the
    // pack's own index instead.
    let o = env.run(["verify", "--level", "standard"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let line = err.lines().find(|l| l.contains(planted.as_str())).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("disagrees") && line.contains(&target.id.object_key()), "{line}");
    assert_eq!(index_of(&env).lookup(&chunk).unwrap().unwrap().offset, target.entries[0].offset);
    let t = env.path("t");
    env.restore("dr", "s", &t);
    assert_same_tree(&src, &t);
}
