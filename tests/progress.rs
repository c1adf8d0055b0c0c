//! Progress through the real binary: under a pseudo-terminal (util-linux
//! `script`) `backup` and `restore` draw a live display with files, bytes,
//! throughput and an ETA; with stderr not a terminal nothing of it shows;
//! `--progress=json` writes one JSON event a second and a final one whose
//! counts match the run, for backup, restore, verify, catalog rebuild and
//! prune.
//!
//! The runs are slowed with `--limit-upload` / `--limit-download` so that
//! they last long enough for a display to be drawn: a bound on what is
//! shown, not a timing assertion.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

const FILES: usize = 12;
const FILE_BYTES: usize = 1 << 20;

fn tree(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(7);
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i:02}")), rng.bytes(FILE_BYTES)).unwrap();
    }
    src
}

/// Shell-quote one word.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Run the agent with `args` under a pseudo-terminal; what the terminal
/// showed.
fn under_pty(env: &Env, args: &[&str]) -> String {
    let mut line = q(bin().to_str().unwrap());
    for a in args {
        line.push(' ');
        line.push_str(&q(a));
    }
    let out = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("N2S_REPO", &env.repo)
        .env("N2S_KEY_FILE", &env.key)
        .env("N2S_STATE_DIR", &env.state)
        .env("N2S_CONFIG", env.path("empty.toml"))
        .output()
        .expect("run script(1) from util-linux");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} under a pty: {:?}\n{text}\n{}", out.status, stderr(&out));
    text
}

#[test]
fn a_terminal_sees_the_live_display_and_a_pipe_sees_none() {
    let env = Env::new();
    env.init();
    let src = tree(&env);
    let src_s = src.to_str().unwrap();
    // 12 MiB at 4 MiB/s: about three seconds.
    let shown = under_pty(
        &env,
        &[
            "--limit-upload",
            "4096",
            "backup",
            "--dataset",
            "d",
            "--source",
            "walk",
            "--path",
            src_s,
            "--snapshot",
            "one",
        ],
    );
    assert!(shown.contains(&format!("/{FILES} files")), "files done against the total: {shown}");
    assert!(shown.contains("MiB/12.0 MiB"), "bytes against the total: {shown}");
    assert!(shown.contains("MiB/s"), "throughput: {shown}");
    assert!(shown.contains("ETA "), "an ETA: {shown}");
    assert!(shown.contains("d: reading changeset 1"), "the phase: {shown}");
    assert!(shown.contains("f0") || shown.contains("f1"), "the current file: {shown}");
    assert!(shown.contains("snapshot one stored as changeset 1"), "the summary still prints: {shown}");
    let target = env.path("restored");
    let shown = under_pty(
        &env,
        &["--limit-download", "4096", "restore", "one", "--dataset", "d", "--target", target.to_str().unwrap()],
    );
    assert!(shown.contains("restore one"), "{shown}");
    assert!(shown.contains(&format!("/{FILES} files")), "{shown}");
    assert_same_tree(&src, &target);
    // The same runs with stderr a pipe: not a trace of the display.
    std::fs::write(src.join("f00"), b"changed").unwrap();
    let out = env
        .cmd()
        .args(["--limit-upload", "4096", "backup", "--dataset", "d", "--source", "walk", "--path", src_s])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!all.contains('\x1b') && !all.contains("ETA") && !all.contains(" files,"), "{all}");
    // --progress=none under a terminal: nothing either.
    std::fs::write(src.join("f01"), b"changed").unwrap();
    let shown = under_pty(
        &env,
        &["--progress=none", "--limit-upload", "4096", "backup", "--dataset", "d", "--source", "walk", "--path", src_s],
    );
    assert!(!shown.contains("ETA") && !shown.contains(" files,"), "{shown}");
}

fn json_events(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn run_json(env: &Env, args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = env.cmd().arg("--progress=json").args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    (json_events(&stderr(&out)), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn json_progress_is_one_event_a_second_and_ends_with_the_totals() {
    let env = Env::new();
    env.init();
    let src = tree(&env);
    let (events, stdout) = run_json(
        &env,
        &["--limit-upload", "4096", "backup", "--json", "--dataset", "d", "--source", "walk", "--path"]
            .iter()
            .copied()
            .chain([src.to_str().unwrap(), "--snapshot", "one"])
            .collect::<Vec<_>>(),
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("stdout stays the --json document");
    assert_eq!(report["changesets"][0]["snapshot"], "one");
    let progress: Vec<_> = events.iter().filter(|e| e["event"] == "progress").collect();
    assert!(progress.len() >= 2, "a three-second run makes two events or more: {events:?}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "done", "{events:?}");
    assert_eq!(last["verb"], "backup");
    assert_eq!(last["files_total"], FILES as u64);
    assert_eq!(last["files_done"], FILES as u64);
    assert_eq!(last["bytes_total"], (FILES * FILE_BYTES) as u64);
    assert_eq!(last["bytes_done"], last["bytes_total"]);
    assert!(last["bytes_stored"].as_u64().unwrap() >= (FILES * FILE_BYTES) as u64, "{last}");
    // About one a second: elapsed times step by a second or so.
    let times: Vec<f64> = events.iter().map(|e| e["elapsed_seconds"].as_f64().unwrap()).collect();
    for w in times.windows(2).take(progress.len().saturating_sub(1)) {
        assert!(w[1] - w[0] > 0.8 && w[1] - w[0] < 3.0, "{times:?}");
    }
    let done: Vec<u64> = progress.iter().map(|e| e["bytes_done"].as_u64().unwrap()).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "bytes done never go back within a phase: {done:?}");
    // The other long verbs: each ends with its own final event.
    let target = env.path("restored");
    let (events, _) = run_json(&env, &["restore", "one", "--dataset", "d", "--target", target.to_str().unwrap()]);
    let last = events.last().unwrap();
    assert_eq!((last["event"].as_str(), last["verb"].as_str()), (Some("done"), Some("restore")));
    assert_eq!(last["files_done"], FILES as u64);
    assert_eq!(last["bytes_done"], (FILES * FILE_BYTES) as u64);
    let (events, _) = run_json(&env, &["verify", "--level", "full"]);
    let last = events.last().unwrap();
    assert_eq!(last["verb"], "verify");
    assert!(last["files_done"].as_u64().unwrap() >= 1 && last["files_done"] == last["files_total"], "{last}");
    std::fs::remove_dir_all(&env.state).unwrap();
    let (events, _) = run_json(&env, &["catalog", "rebuild"]);
    let last = events.last().unwrap();
    assert_eq!(last["verb"], "catalog rebuild");
    assert_eq!(last["files_done"], 1, "one changeset replayed: {last}");
    let (events, _) = run_json(&env, &["prune"]);
    let last = events.last().unwrap();
    assert_eq!(last["verb"], "prune");
    assert!(last["phase"].as_str().unwrap().starts_with("prune"), "{last}");
    assert!(Path::new(&target).join("f00").exists());
}
