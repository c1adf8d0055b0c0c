//! `forget` and `prune` beyond the happy path (which tests/backends.rs runs
//! on every backend): forget killed at each step, policies from the config
//! file, the usage errors, and on every backend prune killed twenty times
//! and prune racing another agent's backups for twenty rounds.

#[macro_use]
mod common;
use common::*;

on_every_backend!(
    prune_killed_at_random_points_twenty_times_leaves_a_readable_repository_that_the_rerun_finishes,
    prune_while_another_agent_backs_up_the_same_data_loses_nothing_in_twenty_rounds,
);

use std::path::{Path, PathBuf};

/// `n` snapshots s0.. of a changing tree, with a copy of each.
fn series(env: &Env, n: usize, seed: u64) -> (PathBuf, Vec<PathBuf>) {
    let src = env.path("src");
    let mut rng = Rng(seed);
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..12 {
        std::fs::write(src.join(format!("d/f{i}")), rng.bytes(20_000 + i * 500)).unwrap();
    }
    let mut copies = Vec::new();
    for step in 0..n {
        if step > 0 {
            for _ in 0..3 {
                mutate_tree(&src, &mut rng, step);
            }
        }
        env.backup("ds", &src, &format!("s{step}"));
        let c = env.path(&format!("copy{step}"));
        copy_tree(&src, &c);
        copies.push(c);
    }
    (src, copies)
}

/// Restore with a state directory of its own: what the repository alone says.
fn restore_from_repository_alone(env: &Env, snapshot: &str, tag: &str) -> PathBuf {
    let state = env.path(&format!("state-{tag}"));
    let t = env.path(&format!("r-{tag}"));
    let out = env
        .cmd()
        .env("N2S_STATE_DIR", &state)
        .args(["restore", snapshot, "--dataset", "ds", "--target"])
        .arg(&t)
        .output()
        .unwrap();
    assert!(out.status.success(), "restore {snapshot} from the repository alone: {}", stderr(&out));
    t
}

#[test]
fn a_forget_killed_at_any_step_is_finished_by_the_next_run_and_every_reader_sees_a_whole_history() {
    for (point, finisher) in [("forget-after-catalog", "backup"), ("forget-after-full", "forget")] {
        let env = Env::new();
        std::fs::write(env.path("empty.toml"), "checkpoint_every = 100\n").unwrap();
        env.init();
        let (src, copies) = series(&env, 6, 21);
        let out =
            env.cmd().env("N2S_FAULT", point).args(["forget", "--dataset", "ds", "--keep-last", "2"]).output().unwrap();
        assert_eq!(out.status.code(), None, "{point}: forget was to be killed: {}", stderr(&out));
        // Right now, a reader with nothing but the repository restores every
        // changeset the repository still has, the kept ones among them.
        for (step, tag) in [(1, "a"), (5, "b")] {
            let t = restore_from_repository_alone(&env, &format!("s{step}"), &format!("{point}-{tag}"));
            assert_same_tree(&copies[step], &t);
        }
        // This machine already sees them forgotten.
        let list = env.list_json("ds");
        let pending = list["changesets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "forgotten" && c["method"].as_str().unwrap().contains("is told"))
            .count();
        assert_eq!(pending, 4, "{point}: {list}");
        match finisher {
            "backup" => {
                mutate_tree(&src, &mut Rng(5), 7);
                let out = env.backup("ds", &src, "s6");
                assert!(out.contains("changeset 7"), "{out}");
            }
            _ => {
                // Nothing more to forget, but the interrupted one is finished.
                let r: serde_json::Value =
                    serde_json::from_str(&env.ok(["forget", "--dataset", "ds", "--keep-last", "2", "--json"])).unwrap();
                assert_eq!(r["datasets"][0]["recorded"], serde_json::json!([1, 2, 3, 4]), "{r}");
                assert_eq!(r["datasets"][0]["forget"], serde_json::json!([]), "{r}");
            }
        }
        let list = env.list_json("ds");
        let forgotten: Vec<&serde_json::Value> =
            list["changesets"].as_array().unwrap().iter().filter(|c| c["status"] == "forgotten").collect();
        assert_eq!(forgotten.len(), 4, "{list}");
        assert!(forgotten.iter().all(|c| c["method"] == "forgotten"), "{list}");
        let v: serde_json::Value = serde_json::from_str(&env.ok(["verify", "--level", "full", "--json"])).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        // The repository now says the same as the catalog.
        for step in [4, 5] {
            let t = restore_from_repository_alone(&env, &format!("s{step}"), &format!("{point}-after-{step}"));
            assert_same_tree(&copies[step], &t);
        }
        let out = env
            .cmd()
            .env("N2S_STATE_DIR", env.path(&format!("state-{point}-gone")))
            .args(["restore", "s2", "--dataset", "ds", "--target"])
            .arg(env.path("nowhere"))
            .output()
            .unwrap();
        assert!(stderr(&out).contains("was forgotten"), "{point}: {}", stderr(&out));
    }
}

#[test]
fn the_config_file_sets_a_policy_per_dataset_and_flags_override_it() {
    let env = Env::new();
    env.init();
    let (src, _) = series(&env, 5, 3);
    let config = format!(
        "checkpoint_every = 100\n[[dataset]]\nname = \"ds\"\nsource = \"walk\"\npath = \"{}\"\nkeep_last = 3\nkeep_within = \"1h\"\n",
        src.display()
    );
    std::fs::write(env.path("empty.toml"), config).unwrap();
    let r: serde_json::Value = serde_json::from_str(&env.ok(["forget", "--dry-run", "--json"])).unwrap();
    let d = &r["datasets"][0];
    // All five were made within the hour: keep-within keeps them all.
    assert_eq!(d["forget"].as_array().unwrap().len(), 0, "{r}");
    assert!(d["keep"][4]["reasons"].to_string().contains("keep-within 1h"), "{r}");
    let r: serde_json::Value =
        serde_json::from_str(&env.ok(["forget", "--dry-run", "--json", "--keep-within", "0"])).unwrap();
    let kept: Vec<&str> =
        r["datasets"][0]["keep"].as_array().unwrap().iter().map(|e| e["snapshot"].as_str().unwrap()).collect();
    assert_eq!(kept, ["s4", "s3", "s2"], "{r}");

    // A bad duration in the file is one line naming the dataset and the setting.
    std::fs::write(env.path("empty.toml"), "[[dataset]]\nname = \"ds\"\nsource = \"walk\"\nkeep_within = \"a week\"\n")
        .unwrap();
    let out = env.run(["forget", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("keep_within") && e.contains("\"ds\"") && e.lines().count() == 1, "{e}");
}

#[test]
fn forget_refuses_what_it_cannot_mean() {
    let env = Env::new();
    env.init();
    series(&env, 3, 4);
    for (args, want) in [
        (vec!["forget", "--dataset", "ds"], "no retention rule"),
        (vec!["forget", "s0", "--dataset", "ds", "--keep-last", "1"], "not both"),
        (vec!["forget", "s0"], "needs --dataset"),
        (vec!["forget", "--dataset", "ds", "--keep-within", "soon"], "not a duration"),
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    for (args, want) in [
        (vec!["forget", "nosuch", "--dataset", "ds"], "no backed-up snapshot"),
        (vec!["forget", "s2", "--dataset", "ds"], "diff base"),
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    env.ok(["forget", "s0", "--dataset", "ds"]);
    let out = env.run(["forget", "s0", "--dataset", "ds"]);
    assert!(stderr(&out).contains("already forgotten"), "{}", stderr(&out));
    assert_eq!(env.list_json("ds")["changesets"].as_array().unwrap().len(), 3);
}

/// Every changeset `list` calls complete restores to its copy.
fn all_complete_restore(env: &Env, dataset: &str, copies: &std::collections::HashMap<String, PathBuf>, tag: &str) {
    let list = env.list_json(dataset);
    for c in list["changesets"].as_array().unwrap() {
        if c["status"] != "complete" {
            continue;
        }
        let snap = c["snapshot"].as_str().unwrap();
        let t = env.path(&format!("check-{tag}-{dataset}-{snap}"));
        env.restore(dataset, snap, &t);
        assert_same_tree(&copies[snap], &t);
        std::fs::remove_dir_all(&t).unwrap();
    }
}

fn prune_killed_at_random_points_twenty_times_leaves_a_readable_repository_that_the_rerun_finishes(env: &Env) {
    use std::os::unix::process::ExitStatusExt;
    std::fs::write(env.path("empty.toml"), "checkpoint_every = 4\n").unwrap();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(seed_from_env_or_time());
    eprintln!("seed {} (replay with N2S_SEED)", rng.0);
    let mut copies = std::collections::HashMap::new();
    let points = ["prune-before-delete", "prune-after-delete", "prune-after-repack"];
    let mut killed = 0;
    // Three warm-up rounds, so that every trial has a changeset to forget.
    for trial in 0..23 {
        // New data, and an old changeset to forget: new garbage each trial.
        for _ in 0..3 {
            let i = rng.below(8);
            // Two or three files to a 32 KiB pack: forgetting leaves packs
            // partly used, and prune repacks them.
            let n = 10_000 + rng.below(10_000) as usize;
            std::fs::write(src.join(format!("f{i}")), rng.bytes(n)).unwrap();
        }
        let label = format!("t{trial}");
        let out = env.backup_small_packs("ds", &src, &label, 32);
        assert!(out.status.success(), "{}", stderr(&out));
        let c = env.path(&format!("copy-{label}"));
        copy_tree(&src, &c);
        copies.insert(label, c);
        if trial < 3 {
            continue;
        }
        env.ok(["forget", "--dataset", "ds", "--keep-last", "3"]);
        // This run marks (and repacks); the next one sweeps. One of them is
        // killed at a named point, or the sweep at a random moment.
        let point = points[trial % 3];
        let first = if trial % 4 != 3 && point == "prune-after-repack" {
            env.cmd().env("N2S_FAULT", point).args(["prune", "--grace", "0"]).output().unwrap()
        } else {
            env.cmd().args(["prune", "--grace", "0"]).output().unwrap()
        };
        if first.status.signal() == Some(9) {
            killed += 1;
            let v: serde_json::Value = serde_json::from_str(&env.ok(["verify", "--level", "quick", "--json"])).unwrap();
            assert_eq!(v["ok"], true, "trial {trial}, after a kill in the marking run: {v}");
            all_complete_restore(env, "ds", &copies, &format!("{trial}-first"));
        } else {
            assert!(first.status.success(), "trial {trial}: {}", stderr(&first));
        }
        let mut cmd = env.cmd();
        cmd.args(["prune", "--grace", "0"]);
        let out = if trial % 4 == 3 {
            let mut child =
                cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(rng.below(12)));
            let _ = child.kill();
            child.wait_with_output().unwrap()
        } else if point != "prune-after-repack" {
            cmd.env("N2S_FAULT", point).output().unwrap()
        } else {
            cmd.output().unwrap()
        };
        if out.status.signal() == Some(9) {
            killed += 1;
        } else {
            assert!(out.status.success(), "trial {trial}: {}", stderr(&out));
        }
        // Readable right after the kill, by this machine and by one with
        // nothing but the repository.
        let v: serde_json::Value = serde_json::from_str(&env.ok(["verify", "--level", "quick", "--json"])).unwrap();
        assert_eq!(v["ok"], true, "trial {trial}: {v}");
        all_complete_restore(env, "ds", &copies, &format!("{trial}"));
        // The rerun finishes.
        env.ok(["prune", "--grace", "0"]);
    }
    eprintln!("{killed} of 20 prunes killed");
    assert!(killed >= 15, "only {killed} of 20 prunes were killed");
    // Two clean runs more: everything forgotten is gone, the rest is whole.
    env.ok(["prune", "--grace", "0"]);
    env.ok(["prune", "--grace", "0"]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(["verify", "--level", "full", "--json"])).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    std::fs::remove_dir_all(&env.state).unwrap();
    all_complete_restore(env, "ds", &copies, "bare");
    if env.is_local() {
        let leftover = files_under(&env.repo.join("prune")).len();
        assert!(leftover <= 25, "{leftover} plan objects left");
    }
}

fn prune_while_another_agent_backs_up_the_same_data_loses_nothing_in_twenty_rounds(a: &Env) {
    // Host A backs up, forgets and prunes (a short grace); host B, with a
    // state directory of its own, backs up trees made of the same blobs at
    // the same time, so it keeps deduplicating against packs that A's
    // prunes mark and delete.
    std::fs::write(a.path("empty.toml"), "checkpoint_every = 5\n").unwrap();
    a.init();
    let b_state = a.path("state-b");
    let pool: Vec<Vec<u8>> = {
        let mut rng = Rng(seed_from_env_or_time());
        eprintln!("seed {} (replay with N2S_SEED)", rng.0);
        (0..60)
            .map(|_| {
                // Two or so to a 16 KiB pack: packs get partly used, and repacked.
                let n = 5_000 + rng.below(6_000) as usize;
                rng.bytes(n)
            })
            .collect()
    };
    let tree = |dir: &Path, rng: &mut Rng| {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        for i in 0..8 {
            std::fs::write(dir.join(format!("f{i}")), &pool[rng.below(pool.len() as u64) as usize]).unwrap();
        }
    };
    let rounds = 20;
    let b = std::thread::scope(|s| {
        let b = s.spawn(|| {
            let mut rng = Rng(99);
            let mut copies = std::collections::HashMap::new();
            let src = a.path("src-b");
            for round in 0..rounds {
                tree(&src, &mut rng);
                let label = format!("b{round}");
                let out = a
                    .cmd()
                    .env("N2S_STATE_DIR", &b_state)
                    .env("N2S_PACK_SIZE_KB", "16")
                    .args(["backup", "--dataset", "b", "--source", "walk", "--path"])
                    .arg(&src)
                    .args(["--snapshot", &label])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "B round {round}: {}", stderr(&out));
                // Restorable at once, while A prunes.
                let t = a.path(&format!("rb-now-{label}"));
                let out = a
                    .cmd()
                    .env("N2S_STATE_DIR", &b_state)
                    .args(["restore", &label, "--dataset", "b", "--target"])
                    .arg(&t)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "B round {round} restore: {}", stderr(&out));
                assert_same_tree(&src, &t);
                let out = a
                    .cmd()
                    .env("N2S_STATE_DIR", &b_state)
                    .args(["forget", "--dataset", "b", "--keep-last", "3"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "B round {round} forget: {}", stderr(&out));
                let c = a.path(&format!("copy-{label}"));
                copy_tree(&src, &c);
                copies.insert(label, c);
            }
            copies
        });
        let mut rng = Rng(7);
        let src = a.path("src-a");
        let (mut deleted, mut repacked) = (0, 0);
        for round in 0..rounds {
            tree(&src, &mut rng);
            let out = a.backup_small_packs("a", &src, &format!("a{round}"), 16);
            assert!(out.status.success(), "A round {round}: {}", stderr(&out));
            a.ok(["forget", "--dataset", "a", "--keep-last", "1"]);
            let p: serde_json::Value = serde_json::from_str(&a.ok(["prune", "--grace", "1s", "--json"])).unwrap();
            deleted += p["deleted"]["packs"].as_u64().unwrap();
            repacked += p["repacked_packs"].as_u64().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        // The campaign is only worth something if prune really deleted.
        assert!(deleted > 0, "no prune of the campaign deleted a pack");
        eprintln!("the campaign's prunes deleted {deleted} packs and repacked {repacked}");
        b.join().unwrap()
    });
    // Let the last plans age, sweep them, and check everything B stored.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let p: serde_json::Value = serde_json::from_str(&a.ok(["prune", "--grace", "1s", "--json"])).unwrap();
    eprintln!("last prune: {p}");
    let v: serde_json::Value = serde_json::from_str(&a.ok(["verify", "--level", "full", "--json"])).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let on_b = |args: &[&str]| {
        let out = a.cmd().env("N2S_STATE_DIR", &b_state).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // B's index still lists packs A's prunes deleted: verify on B knows
    // them from the plans and forgets them, no false alarm.
    let vb: serde_json::Value = serde_json::from_str(&on_b(&["verify", "--level", "quick", "--json"])).unwrap();
    assert_eq!(vb["ok"], true, "{vb}");
    assert!(vb["pruned_packs_forgotten"].as_u64().unwrap() > 0, "{vb}");
    let list: serde_json::Value = serde_json::from_str(&on_b(&["list", "--json", "--dataset", "b"])).unwrap();
    let complete: Vec<String> = list["changesets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "complete")
        .map(|c| c["snapshot"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(complete.len(), 3, "{list}");
    // From B's state and from nothing but the repository.
    for (i, snap) in complete.iter().enumerate() {
        let t = a.path(&format!("rb-{snap}"));
        on_b(&["restore", snap, "--dataset", "b", "--target", t.to_str().unwrap()]);
        assert_same_tree(&b[snap], &t);
        if i % 4 == 0 {
            let t2 = a.path(&format!("rb-bare-{snap}"));
            let out = a
                .cmd()
                .env("N2S_STATE_DIR", a.path(&format!("state-bare-{snap}")))
                .args(["restore", snap, "--dataset", "b", "--target"])
                .arg(&t2)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            assert_same_tree(&b[snap], &t2);
        }
    }
}

#[test]
fn backup_with_prune_applies_the_datasets_policy_after_the_run() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        env.path("empty.toml"),
        format!("[[dataset]]\nname = \"ds\"\nsource = \"walk\"\npath = \"{}\"\nkeep_last = 2\n", src.display()),
    )
    .unwrap();
    env.init();
    let mut rng = Rng(8);
    let mut last = serde_json::Value::Null;
    for step in 0..4 {
        std::fs::write(src.join(format!("f{step}")), rng.bytes(30_000)).unwrap();
        let out = env.ok(["backup", "--prune", "--json", "--snapshot", &format!("s{step}")]);
        last = serde_json::from_str(&out).unwrap();
    }
    assert_eq!(last["forget"][0]["forget"][0]["snapshot"], "s1", "{last}");
    assert!(last["prune"]["marked"].is_object(), "{last}");
    let list = env.list_json("ds");
    let complete: Vec<&str> = list["changesets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "complete")
        .map(|c| c["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(complete, ["s2", "s3"], "{list}");
    let t = env.path("r");
    env.restore("ds", "s3", &t);
    assert_same_tree(&src, &t);
}

#[test]
fn what_an_abandoned_changeset_uploaded_goes_with_the_next_prunes() {
    let env = Env::new();
    env.init();
    let (src, copies) = series(&env, 2, 31);
    // A big new file, killed after some of its packs are stored.
    let mut rng = Rng(32);
    std::fs::write(src.join("big"), rng.bytes(12_000_000)).unwrap();
    let out = env
        .cmd()
        .env("N2S_FAULT", "pack-uploaded:2")
        .env("N2S_PACK_SIZE_KB", "256")
        .args(["backup", "--dataset", "ds", "--source", "walk", "--path"])
        .arg(&src)
        .args(["--snapshot", "doomed"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "the backup was to be killed: {}", stderr(&out));
    let size = |env: &Env| -> u64 {
        let v: serde_json::Value = serde_json::from_str(&env.ok(["verify", "--level", "quick", "--json"])).unwrap();
        v["pack_bytes"].as_u64().unwrap()
    };
    let with_partial = size(&env);
    env.ok(["abandon", "doomed", "--dataset", "ds"]);
    env.ok(["prune", "--grace", "0"]);
    env.ok(["prune", "--grace", "0"]);
    let after = size(&env);
    assert!(after + 500_000 < with_partial, "the partial upload's packs stay: {after} of {with_partial}");
    for (step, c) in copies.iter().enumerate() {
        let t = env.path(&format!("r{step}"));
        env.restore("ds", &format!("s{step}"), &t);
        assert_same_tree(c, &t);
    }
}
