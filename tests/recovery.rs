//! When things go wrong on the repository side: the local state is lost,
//! objects are corrupted, the backend is hostile, or two agents write at
//! once.

mod common;
use common::*;

use std::path::Path;
use std::sync::Arc;

use n2s_agent::core::keys::MasterKey;
use n2s_agent::core::manifest::{
    self, Counts, ManifestHeader, ManifestKind, Record, RecordKind, SegmentRef, SnapshotInfo,
};
use n2s_agent::model::{ChangeKind, FileType, Metadata};
use n2s_agent::repo::Repository;

fn open_repo(env: &Env) -> Repository {
    let key = MasterKey::load(&env.key).unwrap();
    let backend: Arc<dyn n2s_agent::backend::Backend> =
        Arc::new(n2s_agent::backend::local::LocalBackend::new(&env.repo));
    Repository::open(backend, &key).unwrap()
}

fn history(env: &Env, src: &Path, steps: usize) -> Vec<(String, std::path::PathBuf)> {
    let mut rng = Rng(99);
    let mut out = Vec::new();
    std::fs::create_dir_all(src.join("d")).unwrap();
    for step in 0..steps {
        std::fs::write(src.join(format!("d/file{step}")), rng.bytes(50_000)).unwrap();
        if step > 0 {
            std::fs::remove_file(src.join(format!("d/file{}", step - 1))).unwrap();
            std::fs::write(src.join("changing"), rng.bytes(1000 + step)).unwrap();
        }
        let label = format!("snap{step}");
        env.backup("dr", src, &label);
        let copy = env.path(&format!("expect{step}"));
        copy_tree(src, &copy);
        out.push((label, copy));
    }
    out
}

#[test]
fn with_only_the_repository_and_the_key_every_snapshot_comes_back() {
    let env = Env::new();
    // Full manifests every 2 changesets, so the rebuild meets both kinds.
    std::fs::write(env.path("empty.toml"), "checkpoint_every = 2\n").unwrap();
    env.init();
    let src = env.path("src");
    let expected = history(&env, &src, 5);
    let before = env.list_json("dr");

    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.ok(["catalog", "rebuild", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["datasets"][0]["changesets"], 5, "{r}");
    let after = env.list_json("dr");
    for (a, b) in before["changesets"].as_array().unwrap().iter().zip(after["changesets"].as_array().unwrap()) {
        for k in ["snapshot", "changeset", "added", "modified", "removed", "status", "kind", "bytes_changed"] {
            assert_eq!(a[k], b[k], "field {k} differs after rebuild");
        }
    }
    for (label, copy) in &expected {
        let t = env.path(&format!("got-{label}"));
        env.restore("dr", label, &t);
        assert_same_tree(copy, &t);
    }
    // A backup after the rebuild continues the history without re-reading everything.
    let out = env.backup("dr", &src, "after-rebuild");
    assert!(out.contains("read 0 B"), "{out}");

    // A backup with no local state continues the history (it rebuilds the
    // catalog first) instead of starting a second, clashing one.
    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.backup("dr", &src, "after-state-loss");
    assert!(out.contains("read 0 B") && out.contains("changeset 7"), "{out}");
    env.ok(["verify", "--level", "full"]);

    // Restore with no local state at all rebuilds by itself.
    std::fs::remove_dir_all(&env.state).unwrap();
    let t = env.path("auto");
    env.restore("dr", "snap3", &t);
    assert_same_tree(&expected[3].1, &t);
}

#[test]
fn verify_finds_a_flipped_bit_in_any_pack_and_a_missing_pack() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(4);
    for i in 0..12 {
        std::fs::write(src.join(format!("f{i}")), rng.bytes(60_000)).unwrap();
    }
    let out = env.backup_small_packs("v", &src, "s", 64);
    assert!(out.status.success(), "{}", stderr(&out));
    env.ok(["verify", "--level", "full"]);
    let packs = files_under(&env.repo.join("data"));
    assert!(packs.len() >= 5, "want several packs, got {}", packs.len());
    for pack in &packs {
        let original = std::fs::read(pack).unwrap();
        let bit = rng.below(original.len() as u64 * 8);
        let mut bad = original.clone();
        bad[(bit / 8) as usize] ^= 1 << (bit % 8);
        std::fs::write(pack, &bad).unwrap();
        let out = env.run(["verify", "--level", "full"]);
        assert_eq!(out.status.code(), Some(1), "bit {bit} of {} not detected", pack.display());
        let name = pack.file_name().unwrap().to_string_lossy().to_string();
        assert!(stderr(&out).contains(&name), "{}", stderr(&out));
        std::fs::write(pack, &original).unwrap();
    }
    env.ok(["verify", "--level", "full"]);
    std::fs::remove_file(&packs[0]).unwrap();
    let out = env.run(["verify", "--level", "quick"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
}

#[test]
fn a_corrupt_pack_costs_only_the_files_in_it() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(8);
    for i in 0..10 {
        std::fs::write(src.join(format!("f{i}")), rng.bytes(70_000)).unwrap();
    }
    let out = env.backup_small_packs("c", &src, "one", 64);
    assert!(out.status.success());
    let pack = files_under(&env.repo.join("data")).remove(0);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[100] ^= 0xff; // inside the first blob
    std::fs::write(&pack, &bytes).unwrap();
    let t = env.path("t");
    let out = env.run([
        "restore".as_ref(),
        "one".as_ref(),
        "--dataset".as_ref(),
        "c".as_ref(),
        "--target".as_ref(),
        t.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let mut missing = 0;
    for i in 0..10 {
        let name = format!("f{i}");
        match std::fs::read(t.join(&name)) {
            Ok(data) => assert_eq!(data, std::fs::read(src.join(&name)).unwrap(), "{name} restored wrong"),
            Err(_) => {
                missing += 1;
                assert!(err.contains(&format!("not restored: {name}")), "{name} missing but not named: {err}");
            }
        }
    }
    assert!((1..10).contains(&missing), "{missing} files missing");
}

fn file_meta(ftype: FileType, target: Option<&[u8]>) -> Metadata {
    Metadata {
        ftype,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        ino: 1,
        nlink: 1,
        rdev: 0,
        symlink_target: target.map(<[u8]>::to_vec),
        xattrs: vec![],
    }
}

/// Store a one-changeset dataset whose only segment holds `segment` bytes.
fn plant_manifest(repo: &Repository, dataset: &str, segment: &[u8]) {
    let sealed = manifest::seal_segment(&repo.sealer, segment);
    let key = manifest::segment_key(&sealed);
    repo.put(&key, &sealed).unwrap();
    let h = ManifestHeader {
        format: manifest::MANIFEST_FORMAT,
        dataset: dataset.into(),
        seq: 1,
        changeset: "00112233445566778899aabbccddeeff".into(),
        parent: None,
        kind: ManifestKind::Full,
        snapshot: SnapshotInfo { name: "evil".into(), source: "walk".into(), identity: Default::default() },
        method: "walk".into(),
        started_at: 0,
        completed_at: 0,
        counts: Counts::default(),
        bytes_changed: 0,
        bytes_uploaded: 0,
        segments: vec![SegmentRef { key, records: 3 }],
        revision: 0,
    };
    let mkey = ManifestHeader::object_key(&repo.dataset_id(dataset), 1);
    repo.put(&mkey, &h.seal(&repo.sealer).unwrap()).unwrap();
}

#[test]
fn a_hostile_repository_cannot_make_restore_write_outside_the_target() {
    let env = Env::new();
    env.init();
    let repo = open_repo(&env);
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();

    // 1. A path that climbs out: refused when decoded, with a clear error.
    let mut seg = Vec::new();
    let path = b"../../escape";
    let mut body = vec![4u8];
    body.extend_from_slice(&(path.len() as u32).to_le_bytes());
    body.extend_from_slice(path);
    seg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    seg.extend_from_slice(&body);
    plant_manifest(&repo, "climb", &seg);
    let out = env.run(["catalog", "rebuild", "--dataset", "climb"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("unsafe path"), "{}", stderr(&out));

    // 2. An oversized length field: an error, not a panic or a huge allocation.
    let mut seg = Vec::new();
    seg.extend_from_slice(&u32::MAX.to_le_bytes());
    seg.extend_from_slice(b"short");
    plant_manifest(&repo, "oversized", &seg);
    let out = env.run(["catalog", "rebuild", "--dataset", "oversized"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!stderr(&out).contains("panicked"));

    // 3. Symlink games: a link to outside, then a file "through" it.
    let mut seg = Vec::new();
    let rec = |path: &[u8], meta: Metadata| Record {
        kind: RecordKind::Changed(ChangeKind::Added),
        path: path.to_vec(),
        meta: Some(meta),
        file_hash: None,
        chunks: vec![],
    };
    manifest::encode_record(&rec(b"", file_meta(FileType::Dir, None)), &mut seg);
    let target = outside.as_os_str().as_encoded_bytes().to_vec();
    manifest::encode_record(&rec(b"link", file_meta(FileType::Symlink, Some(&target))), &mut seg);
    manifest::encode_record(&rec(b"link/planted", file_meta(FileType::File, None)), &mut seg);
    plant_manifest(&repo, "games", &seg);
    env.ok(["catalog", "rebuild", "--dataset", "games"]);
    let t = env.path("t");
    let out = env.run([
        "restore".as_ref(),
        "evil".as_ref(),
        "--dataset".as_ref(),
        "games".as_ref(),
        "--target".as_ref(),
        t.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("link/planted"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "restore wrote through a symlink");
    assert!(t.join("link").symlink_metadata().unwrap().file_type().is_symlink());
}

#[test]
fn two_agents_on_one_repository_at_once() {
    let env = Env::new();
    env.init();
    let mut rng = Rng(21);
    let mut srcs = Vec::new();
    for name in ["hostA", "hostB"] {
        let src = env.path(name);
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..200 {
            std::fs::write(src.join(format!("f{i}")), rng.bytes(20_000)).unwrap();
        }
        // Some shared content, so both may upload the same chunks.
        std::fs::write(src.join("shared"), Rng(5).bytes(3 << 20)).unwrap();
        srcs.push((name, src));
    }
    // Two hosts: separate state directories, one repository.
    let children: Vec<_> = srcs
        .iter()
        .map(|(name, src)| {
            env.cmd()
                .env("N2S_STATE_DIR", env.path(&format!("state-{name}")))
                .env("N2S_PACK_SIZE_KB", "256")
                .args(["backup", "--dataset", name, "--source", "walk", "--path"])
                .arg(src)
                .args(["--snapshot", "s"])
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
    }
    // The same dataset twice at once on one host: one waits its turn or is told so.
    let same: Vec<_> = (0..2)
        .map(|i| {
            env.cmd()
                .args(["backup", "--dataset", "hostA", "--source", "walk", "--path"])
                .arg(&srcs[0].1)
                .args(["--snapshot", &format!("again{i}")])
                .env("N2S_STATE_DIR", env.path("state-hostA"))
                .output()
        })
        .collect();
    for o in same {
        let o = o.unwrap();
        assert!(o.status.success() || stderr(&o).contains("another n2s-agent"), "{}", stderr(&o));
    }
    for (name, src) in &srcs {
        let t = env.path(&format!("restored-{name}"));
        env.cmd()
            .env("N2S_STATE_DIR", env.path(&format!("state-{name}")))
            .args(["restore", "s", "--dataset", name, "--target"])
            .arg(&t)
            .status()
            .unwrap();
        assert_same_tree(src, &t);
    }
    let out =
        env.cmd().env("N2S_STATE_DIR", env.path("state-hostA")).args(["verify", "--level", "full"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn restoring_one_path_needs_only_the_packs_that_hold_it() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let mut rng = Rng(31);
    for i in 0..30 {
        std::fs::write(src.join(format!("sub/f{i:02}")), rng.bytes(40_000)).unwrap();
    }
    let out = env.backup_small_packs("one", &src, "s", 64);
    assert!(out.status.success(), "{}", stderr(&out));
    let all_packs = files_under(&env.repo.join("data"));
    assert!(all_packs.len() >= 10, "want many packs, got {}", all_packs.len());

    // Which packs hold sub/f17, from the local catalog and index.
    let repo = open_repo(&env);
    let state = n2s_agent::state::StatePaths::new(&env.state, &repo.config.id).unwrap();
    let cat = n2s_agent::catalog::Catalog::open(&state.catalog("one"), "one").unwrap();
    let index = n2s_agent::catalog::index::ChunkIndex::open(&state.index_db()).unwrap();
    let row = cat.entry_at(1, b"sub/f17").unwrap().unwrap();
    let needed: std::collections::HashSet<String> =
        row.chunks.iter().map(|c| index.lookup(c).unwrap().unwrap().pack.to_hex()).collect();
    assert!(!needed.is_empty() && needed.len() < all_packs.len());
    drop((cat, index));

    // Every other pack goes away; the single-path restore must not notice.
    for p in &all_packs {
        if !needed.contains(&p.file_name().unwrap().to_string_lossy().to_string()) {
            std::fs::remove_file(p).unwrap();
        }
    }
    let t = env.path("t");
    env.ok([
        "restore".as_ref(),
        "s".as_ref(),
        "--dataset".as_ref(),
        "one".as_ref(),
        "--target".as_ref(),
        t.as_os_str(),
        "--path".as_ref(),
        "sub/f17".as_ref(),
    ]);
    assert_eq!(std::fs::read(t.join("sub/f17")).unwrap(), std::fs::read(src.join("sub/f17")).unwrap());
}
