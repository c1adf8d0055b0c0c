//! The end-to-end suite, one test body per feature, run on every backend:
//! a local directory; S3 on two independent real servers (moto and
//! SeaweedFS); SFTP on a real sshd; rclone on a local and an sftp remote;
//! an IPFS node: all started on 127.0.0.1 by the tests. A backend that
//! passes these does everything the CLI promises.

#[macro_use]
mod common;
use common::*;

use std::path::Path;

on_every_backend!(
    a_series_of_snapshots_backs_up_and_restores_and_every_read_verb_answers,
    with_only_the_repository_and_the_key_everything_comes_back,
    listing_crosses_the_thousand_key_page,
    a_fifth_of_requests_failing_costs_nothing,
    every_request_failing_is_a_clean_error_and_stores_nothing_complete,
    forget_keeps_what_the_policy_says_and_every_kept_changeset_restores,
    forget_and_prune_give_the_space_back_and_what_is_kept_restores,
    prune_repacks_mostly_unused_packs_and_every_agent_still_restores,
    many_small_files_restore_with_a_few_requests,
    two_hosts_one_repository_ten_rounds_at_once,
);

fn json(env: &Env, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&env.ok(args)).unwrap_or_else(|e| panic!("{args:?} did not print JSON: {e}"))
}

fn a_series_of_snapshots_backs_up_and_restores_and_every_read_verb_answers(env: &Env) {
    env.init();
    let src = env.path("src");
    let mut rng = Rng(seed_from_env_or_time());
    eprintln!("seed {} (replay with N2S_SEED)", rng.0);
    std::fs::create_dir_all(src.join("dir-a/sub")).unwrap();
    for i in 0..30 {
        let n = rng.below(200_000) as usize;
        std::fs::write(src.join(format!("dir-a/f{i}")), rng.bytes(n)).unwrap();
    }
    std::fs::write(src.join("dir-a/sub/needle.txt"), b"needle").unwrap();
    let mut copies = Vec::new();
    for step in 0..4 {
        if step > 0 {
            for _ in 0..5 {
                mutate_tree(&src, &mut rng, step);
            }
        }
        env.backup("ds", &src, &format!("s{step}"));
        let copy = env.path(&format!("copy{step}"));
        copy_tree(&src, &copy);
        copies.push(copy);
    }
    for (step, copy) in copies.iter().enumerate() {
        let t = env.path(&format!("restored{step}"));
        env.restore("ds", &format!("s{step}"), &t);
        assert_same_tree(copy, &t);
    }
    let list = env.list_json("ds");
    assert_eq!(list["changesets"].as_array().unwrap().len(), 4);
    let ls = json(env, &["ls", "s0", "--dataset", "ds", "--json"]);
    assert!(ls.to_string().contains("needle.txt"), "{ls}");
    let hits = json(env, &["search", "needle", "--json"]);
    assert!(!hits["matches"].as_array().unwrap().is_empty(), "{hits}");
    let status = json(env, &["status", "--json"]);
    assert_eq!(status["datasets"][0]["last_backed_up"], "s3", "{status}");
    for level in ["quick", "standard", "full"] {
        let v = json(env, &["verify", "--level", level, "--json"]);
        assert_eq!(v["ok"], true, "verify {level}: {v}");
    }
    // One file alone.
    let t = env.path("one");
    env.ok(["restore", "s0", "--dataset", "ds", "--path", "dir-a/sub/needle.txt", "--target"]
        .map(std::ffi::OsStr::new)
        .into_iter()
        .chain([t.as_os_str()]));
    assert_eq!(std::fs::read(t.join("dir-a/sub/needle.txt")).unwrap(), b"needle");
}

fn with_only_the_repository_and_the_key_everything_comes_back(env: &Env) {
    std::fs::write(env.path("empty.toml"), "checkpoint_every = 2\n").unwrap();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(7);
    let mut copies = Vec::new();
    for step in 0..3 {
        std::fs::write(src.join(format!("f{step}")), rng.bytes(80_000)).unwrap();
        env.backup("dr", &src, &format!("s{step}"));
        let c = env.path(&format!("c{step}"));
        copy_tree(&src, &c);
        copies.push(c);
    }
    std::fs::remove_dir_all(&env.state).unwrap();
    env.ok(["catalog", "rebuild"]);
    for (i, c) in copies.iter().enumerate() {
        let t = env.path(&format!("r{i}"));
        env.restore("dr", &format!("s{i}"), &t);
        assert_same_tree(c, &t);
    }
    // A bare machine restores, and backs up on from where the history ends.
    std::fs::remove_dir_all(&env.state).unwrap();
    let t = env.path("bare");
    env.restore("dr", "s1", &t);
    assert_same_tree(&copies[1], &t);
    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.backup("dr", &src, "s3");
    assert!(out.contains("changeset 4") && out.contains("read 0 B"), "{out}");
}

fn listing_crosses_the_thousand_key_page(env: &Env) {
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(3);
    // Each file larger than a 4 KiB pack: one pack per file, 1100 packs.
    for i in 0..1100 {
        std::fs::write(src.join(format!("f{i:04}")), rng.bytes(5000)).unwrap();
    }
    let out = env.backup_small_packs("many", &src, "s", 4);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(env, &["verify", "--level", "quick", "--json"]);
    assert!(v["packs"].as_u64().unwrap() >= 1100, "every pack listed: {v}");
    assert_eq!(v["ok"], true, "{v}");
    // A rebuild finds them all too.
    std::fs::remove_dir_all(&env.state).unwrap();
    let r = json(env, &["catalog", "rebuild", "--json"]);
    assert!(r["packs_indexed"].as_u64().unwrap() >= 1100, "{r}");
    let t = env.path("t");
    env.restore("many", "s", &t);
    assert_same_tree(&src, &t);
}

fn some_files(src: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(src).unwrap();
    let mut rng = Rng(seed);
    for i in 0..n {
        std::fs::write(src.join(format!("f{i:03}")), rng.bytes(30_000 + i * 100)).unwrap();
    }
}

fn a_fifth_of_requests_failing_costs_nothing(env: &Env) {
    env.init();
    let src = env.path("src");
    some_files(&src, 40, 11);
    // Every fifth request of every kind fails transiently: retries absorb it.
    let out = env
        .cmd()
        .env("N2S_FAULT_BACKEND", "any:transient:every:5")
        .env("N2S_RETRY_BASE_MS", "1")
        .env("N2S_PACK_SIZE_KB", "64")
        .args(["backup", "--dataset", "f", "--source", "walk", "--path"])
        .arg(&src)
        .args(["--snapshot", "s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let t = env.path("t");
    let out = env
        .cmd()
        .env("N2S_FAULT_BACKEND", "any:transient:every:5")
        .env("N2S_RETRY_BASE_MS", "1")
        .args(["restore", "s", "--dataset", "f", "--target"])
        .arg(&t)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&src, &t);
}

fn every_request_failing_is_a_clean_error_and_stores_nothing_complete(env: &Env) {
    env.init();
    let src = env.path("src");
    some_files(&src, 10, 12);
    let out = env
        .cmd()
        .env("N2S_FAULT_BACKEND", "put:transient:after:0")
        .env("N2S_RETRY_BASE_MS", "1")
        .args(["backup", "--dataset", "f", "--source", "walk", "--path"])
        .arg(&src)
        .args(["--snapshot", "s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let last = stderr(&out).trim().lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("n2s-agent: error: ") && last.contains("still failing"), "{}", stderr(&out));
    // Nothing claims to be complete: the repository holds no changeset.
    std::fs::remove_dir_all(&env.state).unwrap();
    let list = json(env, &["list", "--json"]);
    assert!(list["changesets"].as_array().unwrap().is_empty(), "{list}");
    // And once the backend works again, the backup completes.
    env.backup("f", &src, "s");
    let t = env.path("t");
    env.restore("f", "s", &t);
    assert_same_tree(&src, &t);
}

fn forget_keeps_what_the_policy_says_and_every_kept_changeset_restores(env: &Env) {
    // Deltas only (no checkpoint in 8 changesets): forgetting in the
    // middle of the chain must make the next kept one whole by itself.
    std::fs::write(env.path("empty.toml"), "checkpoint_every = 100\n").unwrap();
    env.init();
    let src = env.path("src");
    let mut rng = Rng(seed_from_env_or_time());
    eprintln!("seed {} (replay with N2S_SEED)", rng.0);
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..20 {
        let n = rng.below(50_000) as usize;
        std::fs::write(src.join(format!("d/f{i}")), rng.bytes(n)).unwrap();
    }
    let mut copies = Vec::new();
    for step in 0..8 {
        if step > 0 {
            for _ in 0..4 {
                mutate_tree(&src, &mut rng, step);
            }
        }
        env.backup("ds", &src, &format!("s{step}"));
        let copy = env.path(&format!("copy{step}"));
        copy_tree(&src, &copy);
        copies.push(copy);
    }
    let restores_as_it_was = |step: usize, tag: &str| {
        let t = env.path(&format!("r-{tag}-{step}"));
        env.restore("ds", &format!("s{step}"), &t);
        assert_same_tree(&copies[step], &t);
    };

    // By name, in the middle of the chain.
    let r = json(env, &["forget", "s2", "--dataset", "ds", "--json"]);
    assert_eq!(r["datasets"][0]["forget"][0]["snapshot"], "s2", "{r}");
    assert_eq!(r["datasets"][0]["made_full"], serde_json::json!([4]), "{r}");
    for step in [3, 4, 7] {
        restores_as_it_was(step, "named");
    }
    let out = env.run(["restore", "s2", "--dataset", "ds", "--target", env.path("gone").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("was forgotten"), "{}", stderr(&out));
    // The diff base (the newest here) is refused by name.
    let out = env.run(["forget", "s7", "--dataset", "ds"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("diff base"), "{}", stderr(&out));

    // A dry run says what and why, and changes nothing.
    let r = json(env, &["forget", "--dataset", "ds", "--keep-last", "3", "--dry-run", "--json"]);
    let d = &r["datasets"][0];
    let names = |list: &serde_json::Value| -> Vec<String> {
        list.as_array().unwrap().iter().map(|e| e["snapshot"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&d["keep"]), ["s7", "s6", "s5"], "{r}");
    assert_eq!(names(&d["forget"]), ["s4", "s3", "s1", "s0"], "{r}");
    assert_eq!(
        d["keep"][0]["reasons"],
        serde_json::json!(["the newest changeset", "the diff base of the next backup", "keep-last 1 of 3"])
    );
    assert_eq!(d["forget"][0]["reasons"], serde_json::json!([]));
    assert_eq!(env.list_json("ds")["changesets"].as_array().unwrap().len(), 8, "the dry run changed nothing");

    env.ok(["forget", "--dataset", "ds", "--keep-last", "3"]);
    for step in [5, 6, 7] {
        restores_as_it_was(step, "policy");
    }
    let list = env.list_json("ds");
    let status: Vec<(String, String)> = list["changesets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["snapshot"].as_str().unwrap().to_string(), c["status"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(status.iter().filter(|(_, s)| s == "forgotten").count(), 5, "{status:?}");
    for level in ["quick", "standard", "full"] {
        let v = json(env, &["verify", "--level", level, "--json"]);
        assert_eq!(v["ok"], true, "verify {level}: {v}");
    }

    // The repository alone says the same: rebuild, restore, back up on.
    std::fs::remove_dir_all(&env.state).unwrap();
    env.ok(["catalog", "rebuild"]);
    for step in [5, 6, 7] {
        restores_as_it_was(step, "rebuilt");
    }
    let out = env.run(["restore", "s1", "--dataset", "ds", "--target", env.path("gone2").to_str().unwrap()]);
    assert!(stderr(&out).contains("was forgotten"), "{}", stderr(&out));
    mutate_tree(&src, &mut rng, 9);
    let out = env.backup("ds", &src, "s8");
    assert!(out.contains("changeset 9"), "{out}");
    let t = env.path("r8");
    env.restore("ds", "s8", &t);
    assert_same_tree(&src, &t);
    restores_as_it_was(5, "after");
}

fn forget_and_prune_give_the_space_back_and_what_is_kept_restores(env: &Env) {
    let (src, mut rng) = deltas_only(env);
    for i in 0..10 {
        std::fs::write(src.join(format!("f{i}")), rng.bytes(150_000)).unwrap();
    }
    // Small packs: a pack holds one file's chunk, so what goes frees whole packs.
    let backup = backup_in_64k_packs;
    let mut copies = Vec::new();
    for step in 0..6 {
        if step > 0 {
            for _ in 0..4 {
                let i = rng.below(10);
                std::fs::write(src.join(format!("f{i}")), rng.bytes(150_000)).unwrap();
            }
        }
        backup(env, &src, &format!("s{step}"));
        let c = env.path(&format!("copy{step}"));
        copy_tree(&src, &c);
        copies.push(c);
    }
    let size = |env: &Env| json(env, &["verify", "--level", "quick", "--json"])["pack_bytes"].as_u64().unwrap();
    let before = size(env);
    env.ok(["forget", "--dataset", "ds", "--keep-last", "2"]);
    // First run: marks only, deletes nothing.
    let p = json(env, &["prune", "--grace", "0", "--json"]);
    assert_eq!(p["deleted"]["packs"], 0, "{p}");
    assert!(p["marked"]["packs"].as_u64().unwrap() > 0, "{p}");
    assert!(p["marked"]["revisions"].as_u64().unwrap() > 0, "superseded header revisions: {p}");
    assert_eq!(size(env), before, "marking deletes nothing");
    // A dry run of the sweep says what would go, and leaves it.
    let d = json(env, &["prune", "--grace", "0", "--dry-run", "--json"]);
    assert_eq!(d["deleted"]["packs"], p["marked"]["packs"], "{d}");
    assert_eq!(size(env), before);
    let s = json(env, &["prune", "--grace", "0", "--json"]);
    assert_eq!(s["deleted"]["packs"], p["marked"]["packs"], "{s}");
    assert_eq!(s["plans_swept"], 1, "{s}");
    assert!(s["requests"]["get"].as_u64().unwrap() < 100, "prune reads manifests, never packs: {s}");
    // The live segments came from the local cache, not the backend, again:
    // the sweep reads the plan and none of them.
    let cached =
        files_under(&env.state).iter().filter(|f| f.parent().is_some_and(|d| d.ends_with("cache/segments"))).count()
            as u64;
    let gets = |v: &serde_json::Value| v["requests"]["get"].as_u64().unwrap();
    assert!(cached > 0, "no segment cached under {}", env.state.display());
    let cache_dir = files_under(&env.state)
        .into_iter()
        .find_map(|f| f.parent().filter(|d| d.ends_with("cache/segments")).map(Path::to_path_buf))
        .expect("the segment cache");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", cache_dir.display());
    assert!(
        gets(&s) + cached <= gets(&p) + 1,
        "the sweep made {} GETs, the first run {} ({cached} cached)",
        gets(&s),
        gets(&p)
    );
    let after = size(env);
    assert!(after < before, "{after} !< {before}");
    for step in [4, 5] {
        let t = env.path(&format!("r{step}"));
        env.restore("ds", &format!("s{step}"), &t);
        assert_same_tree(&copies[step], &t);
    }
    for level in ["quick", "full"] {
        let v = json(env, &["verify", "--level", level, "--json"]);
        assert_eq!(v["ok"], true, "verify {level}: {v}");
    }
    // Within 10% of a repository that only ever held the kept snapshots.
    let fresh = env.sibling();
    std::fs::write(fresh.path("empty.toml"), "checkpoint_every = 100\n").unwrap();
    fresh.init();
    backup(&fresh, &copies[4], "s4");
    backup(&fresh, &copies[5], "s5");
    let want = size(&fresh);
    assert!(after * 10 <= want * 11, "pruned {after} B, a fresh backup of what is kept {want} B");
    // Nothing more to do: a third prune deletes and marks nothing.
    let again = json(env, &["prune", "--grace", "0", "--json"]);
    assert_eq!(again["deleted"]["packs"], 0, "{again}");
    assert_eq!(again["marked"]["packs"], 0, "{again}");
    // And backups go on.
    std::fs::write(src.join("new"), rng.bytes(1000)).unwrap();
    backup(env, &src, "s6");
    let t = env.path("r6");
    env.restore("ds", "s6", &t);
    assert_same_tree(&src, &t);
}

fn prune_repacks_mostly_unused_packs_and_every_agent_still_restores(env: &Env) {
    let (src, mut rng) = deltas_only(env);
    // 64 KiB packs of about three 20 KB files each.
    for i in 0..12 {
        std::fs::write(src.join(format!("f{i:02}")), rng.bytes(20_000)).unwrap();
    }
    let backup = backup_in_64k_packs;
    backup(env, &src, "s0");
    // Most of s0's files change: its packs keep a third of their bytes.
    for i in 0..12 {
        if i % 3 != 0 {
            std::fs::write(src.join(format!("f{i:02}")), rng.bytes(20_000)).unwrap();
        }
    }
    backup(env, &src, "s1");
    let kept = env.path("kept");
    copy_tree(&src, &kept);
    // Another agent has an index of its own that knows the old packs.
    let other = env.path("state-other");
    let restore_as_other = |tag: &str| {
        let t = env.path(&format!("other-{tag}"));
        let out = env
            .cmd()
            .env("N2S_STATE_DIR", &other)
            .args(["restore", "s1", "--dataset", "ds", "--target"])
            .arg(&t)
            .output()
            .unwrap();
        assert!(out.status.success(), "{tag}: {}", stderr(&out));
        assert_same_tree(&kept, &t);
    };
    restore_as_other("before");
    env.ok(["forget", "s0", "--dataset", "ds"]);
    let size = |env: &Env| json(env, &["verify", "--level", "quick", "--json"])["pack_bytes"].as_u64().unwrap();
    // --max-repack 0: nothing is copied.
    let none = json(env, &["prune", "--grace", "0", "--dry-run", "--json"]);
    assert!(none["worth_repacking"].as_u64().unwrap() > 0, "{none}");
    let p = json(env, &["prune", "--grace", "0", "--max-repack", "0", "--json"]);
    assert_eq!(p["repacked_packs"], 0, "{p}");
    let p = json(env, &["prune", "--grace", "0", "--max-unused", "10", "--json"]);
    assert!(p["repacked_packs"].as_u64().unwrap() > 0 && p["new_packs"].as_u64().unwrap() > 0, "{p}");
    assert!(p["requests"]["get"].as_u64().unwrap() < 60, "{p}");
    let t = env.path("r-marked");
    env.restore("ds", "s1", &t);
    assert_same_tree(&kept, &t);
    let s = json(env, &["prune", "--grace", "0", "--json"]);
    assert!(s["deleted"]["packs"].as_u64().unwrap() >= p["repacked_packs"].as_u64().unwrap(), "{s}");
    let t = env.path("r-swept");
    env.restore("ds", "s1", &t);
    assert_same_tree(&kept, &t);
    // The other agent's index still points at packs that are gone: its
    // restore finds the new homes.
    restore_as_other("after");
    let v = json(env, &["verify", "--level", "full", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    let fresh = env.sibling();
    std::fs::write(fresh.path("empty.toml"), "checkpoint_every = 100\n").unwrap();
    fresh.init();
    backup(&fresh, &kept, "s1");
    let (after, want) = (size(env), size(&fresh));
    assert!(after * 10 <= want * 11, "repacked {after} B, a fresh backup of what is kept {want} B");
}

fn many_small_files_restore_with_a_few_requests(env: &Env) {
    env.init();
    let src = env.path("src");
    let mut rng = Rng(seed_from_env_or_time());
    eprintln!("seed {} (replay with N2S_SEED)", rng.0);
    for d in 0..6 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for i in 0..100 {
            let n = rng.below(8000) as usize;
            std::fs::write(src.join(format!("d{d}/f{i:03}")), rng.bytes(n)).unwrap();
        }
        // Same content in many files, and empty ones, inside one batch.
        for i in 0..5 {
            std::fs::write(src.join(format!("d{d}/same{i}")), b"the same bytes").unwrap();
            std::fs::write(src.join(format!("d{d}/empty{i}")), b"").unwrap();
        }
    }
    env.backup("ds", &src, "s");
    let t = env.path("t");
    let out = env.ok(["restore", "s", "--dataset", "ds", "--json", "--target", t.to_str().unwrap()]);
    assert_same_tree(&src, &t);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    // 660 files in one 16 MiB pack: a read covers many files, not one each.
    let gets = r["requests"]["get"].as_u64().unwrap();
    assert!(gets < 40, "{gets} GETs for 660 small files: {r}");
}

/// An initialised repository whose changesets are all deltas (no
/// checkpoint for 100 of them), an empty source directory, and a seeded
/// generator.
fn deltas_only(env: &Env) -> (std::path::PathBuf, Rng) {
    std::fs::write(env.path("empty.toml"), "checkpoint_every = 100\n").unwrap();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let rng = Rng(seed_from_env_or_time());
    eprintln!("seed {} (replay with N2S_SEED)", rng.0);
    (src, rng)
}

/// A walk backup of dataset `ds` in 64 KiB packs, which must succeed.
fn backup_in_64k_packs(env: &Env, path: &Path, label: &str) {
    let out = env.backup_small_packs("ds", path, label, 64);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Two hosts (two state directories, one key) back up different datasets
/// into one repository, ten rounds at once. Both complete every round,
/// identical data is stored once, neither blocks the other, and each can
/// restore the other's dataset.
fn two_hosts_one_repository_ten_rounds_at_once(a: &Env) {
    {
        a.init();
        let mut b = Env::new();
        b.repo = a.repo.clone();
        b.url = a.url.clone();
        b.extra = a.extra.clone();
        std::fs::copy(&a.key, &b.key).unwrap();
        let common = Rng(77).bytes(3 << 20);
        let trees = [a.path("src-a"), b.path("src-b")];
        for (i, t) in trees.iter().enumerate() {
            std::fs::create_dir_all(t).unwrap();
            std::fs::write(t.join("common.bin"), &common).unwrap();
            std::fs::write(t.join("own"), Rng(i as u64).bytes(100_000)).unwrap();
        }
        let backup = |env: &Env, ds: &str, src: &std::path::Path, label: &str| {
            let mut c = env.cmd();
            c.args(["backup", "--json", "--dataset", ds, "--source", "walk", "--path"])
                .arg(src)
                .args(["--snapshot", label]);
            c
        };
        // Round 0, one after the other: B learns A's packs and does not
        // upload the 3 MiB they share again.
        let out = backup(a, "host-a", &trees[0], "r0").output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let out = backup(&b, "host-b", &trees[1], "r0").output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let up = j["changesets"][0]["bytes_uploaded"].as_u64().unwrap();
        assert!(up < 1 << 20, "host B uploaded {up} bytes: the shared file was stored twice ({j})");
        // Ten rounds at once.
        let mut rng = Rng(5);
        for round in 1..=10 {
            for t in &trees {
                std::fs::write(t.join(format!("round-{round}")), rng.bytes(50_000)).unwrap();
            }
            let label = format!("r{round}");
            let ca = backup(a, "host-a", &trees[0], &label)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let cb = backup(&b, "host-b", &trees[1], &label)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let (oa, ob) = (ca.wait_with_output().unwrap(), cb.wait_with_output().unwrap());
            assert!(oa.status.success(), "round {round}, host A: {}", stderr(&oa));
            assert!(ob.status.success(), "round {round}, host B: {}", stderr(&ob));
        }
        a.ok(["verify", "--level", "full"]);
        b.ok(["verify", "--level", "full"]);
        // Each restores both datasets (the other's catalog is rebuilt from the repository).
        for env in [a, &b] {
            for (ds, t) in [("host-a", &trees[0]), ("host-b", &trees[1])] {
                let out = env.path(&format!("restored-{ds}"));
                env.restore(ds, "r10", &out);
                assert_same_tree(t, &out);
            }
        }
    }
}
