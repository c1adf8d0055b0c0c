//! `forget` beyond the happy path (which tests/backends.rs runs on every
//! backend): killed at each step, policies from the config file, and the
//! usage errors.

mod common;
use common::*;

use std::path::PathBuf;

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
