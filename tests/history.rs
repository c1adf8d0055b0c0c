//! A dataset's history in the repository: gaps, damaged manifests, broken
//! chains, two agents racing for one number, and lost packs. Nothing here
//! may ever restore the wrong tree or stop backups for good.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use n2s_agent::core::keys::MasterKey;
use n2s_agent::core::manifest::ManifestHeader;
use n2s_agent::repo::Repository;

fn open_repo(env: &Env) -> Repository {
    let key = MasterKey::load(&env.key).unwrap();
    let backend: Arc<dyn n2s_agent::backend::Backend> =
        Arc::new(n2s_agent::backend::local::LocalBackend::new(&env.repo));
    Repository::open(backend, &key).unwrap()
}

/// Five changesets, full manifests at 1 and 4 (checkpoint_every = 4).
/// Returns a copy of the tree as each snapshot saw it.
fn five_snapshots(env: &Env) -> (PathBuf, Vec<PathBuf>) {
    std::fs::write(env.path("empty.toml"), "checkpoint_every = 4\n").unwrap();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let mut rng = Rng(17);
    let mut copies = Vec::new();
    for step in 1..=5 {
        std::fs::write(src.join(format!("d/new{step}")), rng.bytes(20_000)).unwrap();
        std::fs::write(src.join("changing"), rng.bytes(3000 + step)).unwrap();
        if step > 1 {
            std::fs::remove_file(src.join(format!("d/new{}", step - 1))).unwrap();
        }
        env.backup("h", &src, &format!("s{step}"));
        let copy = env.path(&format!("copy{step}"));
        copy_tree(&src, &copy);
        copies.push(copy);
    }
    (src, copies)
}

fn header_path(env: &Env, seq: u64) -> PathBuf {
    let repo = open_repo(env);
    env.repo.join(ManifestHeader::object_key(&repo.dataset_id("h"), seq))
}

fn statuses(env: &Env) -> Vec<(i64, String)> {
    env.list_json("h")["changesets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| Some((c["changeset"].as_i64()?, c["status"].as_str()?.to_string())))
        .collect()
}

fn restore_ok(env: &Env, label: &str, expected: &Path) {
    let t = env.path(&format!("got-{label}-{}", rand_suffix()));
    env.restore("h", label, &t);
    assert_same_tree(expected, &t);
}

/// A fresh name for each restore target of a test.
fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

fn restore_refused(env: &Env, label: &str) -> String {
    let target = env.path(&format!("refused-{label}-{}", rand_suffix()));
    let out = env.cmd().args(["restore", label, "--dataset", "h", "--target"]).arg(&target).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "restore of {label} must be refused: {}", stderr(&out));
    let all = stderr(&out);
    // Warnings about the damage may come first; the error is one line.
    let e = all.trim().lines().last().unwrap_or("").to_string();
    assert!(e.starts_with("n2s-agent: error: ") && e.contains(label) && e.contains("cannot be restored"), "{all}");
    e
}

#[test]
fn a_missing_header_is_a_gap_that_rebuild_refuses_and_salvage_works_around() {
    let env = Env::new();
    let (_src, copies) = five_snapshots(&env);
    std::fs::remove_file(header_path(&env, 2)).unwrap();

    // verify sees the gap (it used to say "no problems").
    let out = env.run(["verify", "--level", "full"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("changeset 2") && stderr(&out).contains("missing"), "{}", stderr(&out));

    // A strict rebuild refuses, naming the gap and the way out.
    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.run(["catalog", "rebuild"]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("changeset 2 is missing") && e.contains("--salvage") && e.contains("1..1"), "{e}");

    // Salvage: 1 is intact, 2 and 3 are damaged, 4 (a full checkpoint) and 5 are whole.
    let out = env.run(["catalog", "rebuild", "--salvage"]);
    assert_eq!(out.status.code(), Some(1), "damage is reported: {}", stderr(&out));
    assert_eq!(
        statuses(&env),
        vec![
            (1, "complete".into()),
            (2, "damaged".into()),
            (3, "damaged".into()),
            (4, "complete".into()),
            (5, "complete".into())
        ]
    );
    restore_ok(&env, "s1", &copies[0]);
    restore_refused(&env, "s3");
    restore_ok(&env, "s4", &copies[3]);
    restore_ok(&env, "s5", &copies[4]);
}

#[test]
fn on_a_bare_machine_a_damaged_header_costs_only_what_depends_on_it() {
    let env = Env::new();
    let (src, copies) = five_snapshots(&env);
    // One byte of changeset 2's header.
    let p = header_path(&env, 2);
    let mut b = std::fs::read(&p).unwrap();
    b[30] ^= 0x40;
    std::fs::write(&p, &b).unwrap();

    // A restore on a bare machine rebuilds by itself: s1 comes back (it used
    // to be refused along with everything), s3 is refused by name (it used
    // to be built on top of s1 without a word).
    std::fs::remove_dir_all(&env.state).unwrap();
    restore_ok(&env, "s1", &copies[0]);
    restore_refused(&env, "s3");
    // Changeset 2's name is in its unreadable header: it is refused by number.
    std::fs::remove_dir_all(&env.state).unwrap();
    restore_refused(&env, "#2");
    restore_ok(&env, "s5", &copies[4]);

    // Backups go on after the damage.
    std::fs::write(src.join("after"), b"after the damage").unwrap();
    env.backup("h", &src, "s6");
    let t = env.path("got-s6");
    env.restore("h", "s6", &t);
    assert_same_tree(&src, &t);
}

#[test]
fn a_damaged_segment_or_a_broken_parent_link_is_refused_too() {
    let env = Env::new();
    let (src, copies) = five_snapshots(&env);
    let repo = open_repo(&env);
    let h2 = repo.read_manifest(&ManifestHeader::object_key(&repo.dataset_id("h"), 2)).unwrap();
    let seg = env.repo.join(&h2.segments[0].key);
    let mut b = std::fs::read(&seg).unwrap();
    let n = b.len();
    b[n / 2] ^= 1;
    std::fs::write(&seg, &b).unwrap();
    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.run(["catalog", "rebuild"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("changeset 2 cannot be replayed"), "{}", stderr(&out));
    let _ = env.run(["catalog", "rebuild", "--salvage"]);
    restore_ok(&env, "s1", &copies[0]);
    restore_refused(&env, "s3");
    restore_ok(&env, "s4", &copies[3]);

    // A header whose parent is not the previous changeset belongs to another
    // history: the chain is broken there.
    std::fs::write(&seg, {
        b[n / 2] ^= 1;
        &b
    })
    .unwrap();
    let key3 = ManifestHeader::object_key(&repo.dataset_id("h"), 3);
    let mut h3 = repo.read_manifest(&key3).unwrap();
    h3.parent = Some("00000000000000000000000000000000".into());
    repo.backend.delete(&key3).unwrap();
    repo.put(&key3, &h3.seal(&repo.sealer).unwrap()).unwrap();
    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.run(["catalog", "rebuild"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("changeset 3") && stderr(&out).contains("parent"), "{}", stderr(&out));
    let out = env.run(["verify", "--level", "quick"]);
    assert!(stderr(&out).contains("does not name changeset 2 as its parent"), "{}", stderr(&out));
    drop(src);
}

#[test]
fn after_a_damaged_last_changeset_the_next_one_is_a_full_manifest() {
    let env = Env::new();
    let (src, _copies) = five_snapshots(&env);
    let p = header_path(&env, 5);
    let mut b = std::fs::read(&p).unwrap();
    b[40] ^= 2;
    std::fs::write(&p, &b).unwrap();
    std::fs::remove_dir_all(&env.state).unwrap();
    std::fs::write(src.join("d/six"), b"6").unwrap();
    let out = env
        .cmd()
        .args(["backup", "--json", "--dataset", "h", "--source", "walk", "--path"])
        .arg(&src)
        .args(["--snapshot", "s6"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["changesets"][0]["changeset"], 6);
    assert_eq!(j["changesets"][0]["kind"], "full", "nothing may depend on the damaged changeset 5");
    // A bare machine restores it, although changeset 5 stays damaged.
    std::fs::remove_dir_all(&env.state).unwrap();
    let t = env.path("got6");
    env.restore("h", "s6", &t);
    assert_same_tree(&src, &t);
}

#[test]
fn two_agents_racing_for_one_changeset_number_cannot_both_win() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"one").unwrap();
    let pause = env.path("pause");
    // Two hosts (two state directories), one dataset name, both stopped just
    // before they store the header of changeset 1, then released together.
    let backup = |state: &str| {
        let mut c = env.cmd();
        c.env("N2S_STATE_DIR", env.path(state))
            .args(["backup", "--dataset", "shared", "--source", "walk", "--path"])
            .arg(&src)
            .args(["--snapshot", state]);
        c
    };
    let a = run_paused(backup("host-a"), "before-manifest", &pause);
    let b = run_paused(backup("host-b"), "before-manifest", &pause);
    let (oa, ob) = (a.release(), b.release());
    let wins = [&oa, &ob].iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 1, "exactly one wins:\nA: {}\nB: {}", stderr(&oa), stderr(&ob));
    let loser = if oa.status.success() { &ob } else { &oa };
    assert!(stderr(loser).contains("another agent") && stderr(loser).contains("--dataset"), "{}", stderr(loser));
    let repo = open_repo(&env);
    assert_eq!(repo.list_manifests(Some(&repo.dataset_id("shared"))).unwrap().len(), 1);
    // The repository holds one clean history.
    let fresh = env.path("fresh");
    let out = env.cmd().env("N2S_STATE_DIR", &fresh).args(["catalog", "rebuild"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_lost_pack_is_marked_by_verify_and_the_next_backup_stores_its_chunks_again() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(5);
    for i in 0..24 {
        std::fs::write(src.join(format!("f{i:02}")), rng.bytes(40_000)).unwrap();
    }
    let out = env.backup_small_packs("lp", &src, "one", 64);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = env.path("first");
    copy_tree(&src, &first);
    let packs = files_under(&env.repo.join("data"));
    assert!(packs.len() >= 4);
    std::fs::remove_file(&packs[packs.len() / 2]).unwrap();

    let out = env.run(["verify", "--level", "quick"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("marked lost"), "{}", stderr(&out));

    // The next backup of the unchanged tree (plus one new file) reads again
    // the files whose chunks only the lost pack held, instead of
    // referencing them (which made its snapshot unrestorable).
    std::fs::write(src.join("new"), b"new").unwrap();
    let out = env.backup_small_packs("lp", &src, "two", 64);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("read again (lost packs)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let t = env.path("got-two");
    env.restore("lp", "two", &t);
    assert_same_tree(&src, &t);
    // The chunks are stored again, so the older snapshot is whole again too.
    let t = env.path("got-one");
    env.restore("lp", "one", &t);
    assert_same_tree(&first, &t);
    env.ok(["verify", "--level", "full"]);
}

#[test]
fn repair_marks_lost_packs_names_what_they_took_and_rewrites_a_lost_config() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(8);
    for i in 0..12 {
        std::fs::write(src.join(format!("f{i:02}")), rng.bytes(50_000)).unwrap();
    }
    assert!(env.backup_small_packs("rp", &src, "one", 64).status.success());
    let packs = files_under(&env.repo.join("data"));
    std::fs::remove_file(&packs[0]).unwrap();
    std::fs::remove_file(env.repo.join("config")).unwrap();
    let out = env.run(["repair"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(so.contains("rewrote the repository config") && so.contains("1 packs newly marked lost"), "{so}");
    assert!(so.contains("unrestorable (its content is in no pack): rp: f"), "{so}");
    assert!(env.repo.join("config").exists());
    // The next backup stores the lost content again; then all is well.
    assert!(env.backup_small_packs("rp", &src, "two", 64).status.success());
    env.ok(["repair"]);
    env.ok(["verify", "--level", "full"]);
}
