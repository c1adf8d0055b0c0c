//! The backend decorators every run uses, through the real binary on the
//! local backend: retries over timeouts over injected faults (random
//! campaigns and persistent failures), bandwidth limits, request counts,
//! merged range reads, and requests kept in flight (`--connections`).

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `n` files of random bytes, `size` each, in `dir`.
fn random_files(dir: &Path, n: usize, size: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng(seed);
    for i in 0..n {
        std::fs::write(dir.join(format!("f{i:02}")), rng.bytes(size)).unwrap();
    }
}

fn walk_backup(env: &Env, src: &Path, label: &str, extra: &[&str]) -> Command {
    let mut c = env.cmd();
    c.args(["backup", "--dataset", "d", "--source", "walk", "--path"]).arg(src).args(["--snapshot", label]);
    c.args(extra);
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("run n2s-agent")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("no JSON on stdout ({e}): {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), stderr(out))
    })
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed with {:?}: {}", out.status, stderr(out));
}

/// Faults everywhere, at random, with quick and many retries.
fn with_faults(c: &mut Command, spec: &str, seed: u64) {
    c.env("N2S_FAULT_BACKEND", spec)
        .env("N2S_FAULT_SEED", seed.to_string())
        .env("N2S_RETRY_BASE_MS", "1")
        .env("N2S_RETRY_ATTEMPTS", "12");
}

/// A config file with a 1 s request timeout (and any other lines).
fn config_with(env: &Env, lines: &str) -> std::path::PathBuf {
    let p = env.path("agent.toml");
    std::fs::write(&p, format!("request_timeout_secs = 1\n{lines}")).unwrap();
    p
}

/// About one call in five fails, of every kind a network gives: before the
/// call, after it (a put that landed), with a short body, or hanging past
/// the request timeout. Backups, a restore and a verify all complete, the
/// restore is identical, and verify finds nothing wrong (a fault is never
/// taken for damage).
#[test]
fn a_campaign_of_transient_faults_is_absorbed() {
    let env = Env::new();
    env.init();
    let cfg = config_with(&env, "");
    let src = env.path("src");
    random_files(&src.join("a"), 30, 40_000, 3);
    random_files(&src.join("b"), 4, 700_000, 4);
    let campaign = "any:transient:rate:0.1,any:5xx:rate:0.05,any:drop:rate:0.05,get:truncate:rate:0.1,\
                    put:timeout:2500:nth:2@data/,get:slow:2500:nth:4@data/";
    let mut seed = 1000;
    let mut injected = 0;
    let mut copies = Vec::new();
    let mut rng = Rng(77);
    for (i, label) in ["s1", "s2", "s3"].into_iter().enumerate() {
        if i > 0 {
            for step in 0..6 {
                mutate_tree(&src, &mut rng, step);
            }
        }
        let mut c = walk_backup(&env, &src, label, &["--json"]);
        c.env("N2S_PACK_SIZE_KB", "64").env("N2S_CONFIG", &cfg);
        seed += 1;
        with_faults(&mut c, campaign, seed);
        let out = run(c);
        assert_ok(&out, &format!("backup {label} under faults (N2S_FAULT_SEED={seed})"));
        let err = stderr(&out);
        injected += err.matches("; retrying in").count();
        if i == 0 {
            assert!(err.contains("timed out after 1s"), "the hung put was not timed out: {err}");
        }
        let copy = env.path(&format!("copy-{label}"));
        copy_tree(&src, &copy);
        copies.push((label, copy));
    }
    for (label, copy) in &copies {
        let target = env.path(&format!("t-{label}"));
        let mut c = env.restore_cmd("d", label, &target, &[]);
        c.env("N2S_CONFIG", &cfg);
        seed += 1;
        with_faults(&mut c, campaign, seed);
        let out = run(c);
        assert_ok(&out, &format!("restore {label} under faults (N2S_FAULT_SEED={seed})"));
        injected += stderr(&out).matches("; retrying in").count();
        if *label == "s1" {
            assert!(stderr(&out).contains("timed out after 1s"), "the slow read was not timed out: {}", stderr(&out));
        }
        assert_same_tree(copy, &target);
    }
    let mut c = env.cmd();
    c.args(["verify", "--level", "full"]).env("N2S_CONFIG", &cfg);
    with_faults(&mut c, campaign, seed + 1);
    let out = run(c);
    assert_ok(&out, "verify under faults");
    injected += stderr(&out).matches("; retrying in").count();
    assert!(injected >= 25, "only {injected} failed requests were retried in the whole campaign");
}

/// The snapshots of dataset d whose changesets are complete.
fn complete(env: &Env) -> Vec<String> {
    let list = env.list_json("d");
    let rows = list["changesets"].as_array().unwrap_or_else(|| panic!("list --json: {list}"));
    rows.iter().filter(|c| c["status"] == "complete").map(|c| c["snapshot"].as_str().unwrap().to_string()).collect()
}

/// Every request of some kind fails, for good: the run ends with one line
/// and exit status 1, and no changeset is complete whose objects are not
/// all stored. A rebuild from the repository alone finds exactly the good
/// changesets, each restores whole, and the next run without faults
/// completes.
#[test]
fn persistent_failures_end_in_one_line_and_never_in_a_changeset_with_missing_objects() {
    let env = Env::new();
    env.init();
    let cfg = config_with(&env, "");
    let src = env.path("src");
    random_files(&src, 8, 120_000, 5);
    let mut c = walk_backup(&env, &src, "good", &[]);
    c.env("N2S_PACK_SIZE_KB", "128");
    assert_ok(&run(c), "the first backup");
    let good = env.path("copy-good");
    copy_tree(&src, &good);

    let mut rng = Rng(9);
    for (i, spec) in [
        "put:5xx:rate:1@data/",
        "put:drop:rate:1@segments/",
        "put:transient:rate:1@manifests/",
        "put:timeout:1500:rate:1",
        "any:transient:rate:1",
    ]
    .into_iter()
    .enumerate()
    {
        for step in 0..4 {
            mutate_tree(&src, &mut rng, step);
        }
        // New content each time, so every attempt has packs to store.
        std::fs::write(src.join(format!("new{i}")), Rng(100 + i as u64).bytes(300_000)).unwrap();
        let mut c = walk_backup(&env, &src, &format!("bad{i}"), &[]);
        c.env("N2S_PACK_SIZE_KB", "128").env("N2S_CONFIG", &cfg);
        with_faults(&mut c, spec, 7);
        c.env("N2S_RETRY_ATTEMPTS", "3");
        let out = run(c);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{spec}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("n2s-agent: error:")).collect();
        assert_eq!(errors.len(), 1, "{spec}: want one error line: {err}");
        assert_eq!(err.lines().last(), Some(errors[0]), "{spec}: the error is the last line: {err}");
        assert!(errors[0].contains("injected fault") || errors[0].contains("timed out"), "{spec}: {}", errors[0]);
        assert_eq!(complete(&env), vec!["good"], "{spec}");
    }

    // From the repository alone.
    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.run(["catalog", "rebuild"]);
    assert_ok(&out, "rebuild");
    assert_eq!(complete(&env), vec!["good"]);
    let t = env.path("t-good");
    env.restore("d", "good", &t);
    assert_same_tree(&good, &t);
    env.ok(["verify", "--level", "full"]);

    // Nothing was lost that the next run cannot finish.
    let mut c = walk_backup(&env, &src, "after", &[]);
    c.env("N2S_PACK_SIZE_KB", "128");
    assert_ok(&run(c), "the backup after the failures");
    let t = env.path("t-after");
    env.restore("d", "after", &t);
    assert_same_tree(&src, &t);
}

/// The limits hold: 2 MiB that neither compresses nor dedups, at 512 KiB/s,
/// takes at least 3 s up (flag) and 3 s down (config file). Loose bounds:
/// a behaviour, not a benchmark.
#[test]
fn bandwidth_limits_limit() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    random_files(&src, 1, 2 << 20, 6);

    let start = Instant::now();
    let out = run(walk_backup(&env, &src, "s", &["--limit-upload", "512"]));
    let up = start.elapsed();
    assert_ok(&out, "the limited backup");
    assert!(up >= Duration::from_secs(3), "2 MiB at 512 KiB/s went up in {up:?}");
    assert!(up < Duration::from_secs(60), "2 MiB at 512 KiB/s took {up:?}");

    let cfg = env.path("limits.toml");
    std::fs::write(&cfg, "limit_download_kib = 512\n").unwrap();
    let t = env.path("t");
    let start = Instant::now();
    let mut c = env.restore_cmd("d", "s", &t, &[]);
    c.env("N2S_CONFIG", &cfg);
    let out = run(c);
    let down = start.elapsed();
    assert_ok(&out, "the limited restore");
    assert!(down >= Duration::from_secs(3), "2 MiB at 512 KiB/s came down in {down:?}");
    assert!(down < Duration::from_secs(60), "2 MiB at 512 KiB/s took {down:?}");
    assert_same_tree(&src, &t);

    // Without limits the same work is quick (so the limit is what took the time).
    let start = Instant::now();
    env.restore("d", "s", &env.path("t2"));
    assert!(start.elapsed() < Duration::from_secs(3), "an unlimited restore took {:?}", start.elapsed());
}

fn objects(env: &Env, dir: &str) -> (u64, u64) {
    let files = files_under(&env.repo.join(dir));
    (files.len() as u64, files.iter().map(|p| p.metadata().unwrap().len()).sum())
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// A first backup stores every pack, segment, pack summary and header it
/// made, each with one PUT, and nothing else: the counts say exactly that, and restore and
/// verify report theirs.
#[test]
fn request_counts_are_reported_and_right() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    random_files(&src, 6, 100_000, 8);
    let mut c = walk_backup(&env, &src, "s", &["--json"]);
    c.env("N2S_PACK_SIZE_KB", "64");
    let out = run(c);
    assert_ok(&out, "backup");
    let v = json(&out);
    let r = &v["requests"];
    let (packs, pack_bytes) = objects(&env, "data");
    let (segments, segment_bytes) = objects(&env, "segments");
    let (headers, header_bytes) = objects(&env, "manifests");
    let (summaries, summary_bytes) = objects(&env, "index");
    assert_eq!(n(&v["changesets"][0], "packs"), packs);
    assert!(packs >= 6, "{packs} packs");
    assert_eq!((segments, headers, summaries), (1, 1, 1));
    assert_eq!(n(r, "put"), packs + segments + headers + summaries, "{r}");
    assert_eq!(n(r, "bytes_up"), pack_bytes + segment_bytes + header_bytes + summary_bytes, "{r}");
    assert_eq!(n(r, "delete"), 0, "{r}");
    assert!(n(r, "get") >= 1 && n(r, "list") >= 1, "the config is read and the packs listed: {r}");

    // The text summary says it too.
    let out = env.backup("d", &src, "s2");
    let line = out.lines().last().unwrap();
    assert!(line.starts_with("backend requests: ") && line.contains(" PUT, ") && line.contains(" up, "), "{out}");

    let t = env.path("t");
    let out = run(env.restore_cmd("d", "s", &t, &["--json"]));
    assert_ok(&out, "restore");
    let r = json(&out)["requests"].clone();
    assert!(n(&r, "get") >= 6 && n(&r, "bytes_down") >= 600_000, "{r}");
    assert_eq!((n(&r, "put"), n(&r, "delete")), (0, 0), "{r}");

    let out = env.run(["verify", "--json"]);
    assert_ok(&out, "verify");
    let r = json(&out)["requests"].clone();
    assert!(n(&r, "get") >= packs && n(&r, "bytes_down") >= pack_bytes, "standard verify reads every pack: {r}");
}

/// A file of N chunks that lie together in one pack is fetched with one
/// GET, not N: restoring it costs as many requests as restoring a
/// one-chunk file.
#[test]
fn close_chunks_of_a_pack_are_fetched_with_one_get() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // 12 MiB of random bytes: at least 3 chunks (4 MiB at most each), in one
    // 16 MiB pack with the small file.
    std::fs::write(src.join("big"), Rng(12).bytes(12 << 20)).unwrap();
    std::fs::write(src.join("small"), b"one chunk").unwrap();
    env.backup("d", &src, "s");
    assert_eq!(objects(&env, "data").0, 1, "one pack");
    let gets = |path: &str| {
        let t = env.path(&format!("t-{path}"));
        let out = run(env.restore_cmd("d", "s", &t, &["--json", "--path", path]));
        assert_ok(&out, "restore");
        assert_eq!(hash_file(&t.join(path)), hash_file(&src.join(path)));
        n(&json(&out)["requests"], "get")
    };
    let small = gets("small");
    let big = gets("big");
    assert_eq!(big, small, "the big file took {big} GETs, the one-chunk file {small}");
}

/// With requests that each take 400 ms, packs and files in flight at once
/// (`--connections 8`) make a run much shorter than one at a time.
#[test]
fn connections_keep_requests_in_flight() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    random_files(&src, 8, 100_000, 10);
    let timed = |mut c: Command| {
        let start = Instant::now();
        c.env("N2S_FAULT_BACKEND", "put:slow:400:rate:1@data/,get:slow:400:rate:1@data/");
        let out = run(c);
        assert_ok(&out, "run with slow requests");
        start.elapsed()
    };
    let mut one = walk_backup(&env, &src, "one", &["--connections", "1"]);
    one.env("N2S_PACK_SIZE_KB", "64");
    let one = timed(one);
    assert!(one >= Duration::from_millis(8 * 400), "8 slow packs one at a time took {one:?}");
    // The same content again is all deduplicated; new content for the second run.
    let src2 = env.path("src2");
    random_files(&src2, 8, 100_000, 11);
    let mut many = env.cmd();
    many.args(["backup", "--dataset", "e", "--source", "walk", "--path"]).arg(&src2).args(["--connections", "8"]);
    many.env("N2S_PACK_SIZE_KB", "64");
    let many = timed(many);
    assert!(many * 2 < one, "8 connections took {many:?}, 1 took {one:?}");

    let one = timed(env.restore_cmd("d", "one", &env.path("t1"), &["--connections", "1"]));
    let many = timed(env.restore_cmd("d", "one", &env.path("t8"), &["--connections", "8"]));
    assert!(one >= Duration::from_millis(8 * 400), "8 slow reads one at a time took {one:?}");
    assert!(many * 2 < one, "restore with 8 connections took {many:?}, with 1 {one:?}");
    assert_same_tree(&src, &env.path("t8"));

    let out = env.run(["--connections", "0", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--connections 0"), "{}", stderr(&out));
}

/// A random fault campaign without a seed prints the one it drew, so a
/// failure can be repeated; a given seed is used as is, a bad one refused.
#[test]
fn the_fault_seed_is_printed_when_drawn_and_used_when_given() {
    let env = Env::new();
    env.init();
    let with = |seed: Option<&str>| {
        let mut c = env.cmd();
        c.args(["verify", "--level", "quick"]).env("N2S_FAULT_BACKEND", "stat:transient:rate:0.01");
        if let Some(s) = seed {
            c.env("N2S_FAULT_SEED", s);
        }
        run(c)
    };
    let out = with(None);
    assert_ok(&out, "verify with a drawn seed");
    let line = stderr(&out).lines().find(|l| l.contains("N2S_FAULT_SEED=")).map(str::to_string);
    let seed = line.as_deref().and_then(|l| l.split("N2S_FAULT_SEED=").nth(1)).and_then(|s| s.split(' ').next());
    assert!(seed.is_some_and(|s| s.parse::<u64>().is_ok()), "no seed printed: {}", stderr(&out));
    let out = with(Some("12345"));
    assert_ok(&out, "verify with a given seed");
    assert!(!stderr(&out).contains("N2S_FAULT_SEED"), "{}", stderr(&out));
    let out = with(Some("twelve"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("N2S_FAULT_SEED=\"twelve\" is not a number"), "{}", stderr(&out));
}
