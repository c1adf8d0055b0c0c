//! Stream ingest through the real binary: `backup --stdin` stores a dump as
//! a changeset of one file and consecutive dumps deduplicate; named pipes
//! and producer commands go into one changeset; tags are kept in the
//! manifest (they survive a catalog rebuild) and `list --tag` filters by
//! them; a failed producer leaves no changeset and no spool behind.

mod common;
use common::*;

use std::io::Write;
use std::process::{Command, Stdio};

fn dump(seed: u64, change: bool) -> Vec<u8> {
    // A text dump: rows that stay, with one region rewritten between runs.
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for i in 0..400_000u32 {
        let v = rng.below(1_000_000);
        let v = if change && (200_000..200_200).contains(&i) { 999_999 } else { v };
        writeln!(out, "INSERT INTO t VALUES ({i}, {v}, 'row {i} of the table');").unwrap();
    }
    out
}

fn backup_stdin(env: &Env, data: &[u8], args: &[&str]) -> std::process::Output {
    let mut child = env
        .cmd()
        .args(["backup", "--json", "--stdin", "--dataset", "db"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap()
}

fn list(env: &Env, extra: &[&str]) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok([&["list", "--json", "--dataset", "db"], extra].concat())).unwrap();
    v["changesets"].as_array().unwrap().clone()
}

#[test]
fn consecutive_dumps_dedup_keep_their_tags_and_stream_back_out() {
    let env = Env::new();
    env.init();
    let first = dump(1, false);
    let second = dump(1, true);
    let out = backup_stdin(&env, &first, &["--stdin-name", "dump.sql", "--tag", "db=prod", "--tag", "kind=full"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r1: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = backup_stdin(&env, &second, &["--stdin-name", "dump.sql", "--tag", "db=prod"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let up1 = r1["changesets"][0]["bytes_uploaded"].as_u64().unwrap();
    let up2 = r2["changesets"][0]["bytes_uploaded"].as_u64().unwrap();
    assert!(up1 > 100_000, "{up1}");
    assert!(up2 * 4 < up1, "the second dump shares most chunks with the first: {up2} vs {up1}");
    let all = list(&env, &[]);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["source"], "stdin");
    assert_eq!(all[0]["identity"]["tag:db"], "prod");
    assert_eq!(all[0]["identity"]["tag:kind"], "full");
    assert_eq!(list(&env, &["--tag", "db=prod"]).len(), 2);
    assert_eq!(list(&env, &["--tag", "db=prod", "--tag", "kind=full"]).len(), 1);
    assert_eq!(list(&env, &["--tag", "db=test"]).len(), 0);
    let out = env.cmd().args(["restore", "--stdout", "latest", "dump.sql", "--dataset", "db"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == second, "the latest dump streams back out");
    let name = all[0]["snapshot"].as_str().unwrap().to_string();
    let out = env.cmd().args(["restore", "--stdout", &name, "dump.sql", "--dataset", "db"]).output().unwrap();
    assert!(out.stdout == first, "and the first one");
    // The tags are in the manifests: a machine that lost its state finds them.
    std::fs::remove_dir_all(&env.state).unwrap();
    assert_eq!(list(&env, &["--tag", "kind=full"]).len(), 1);
}

#[test]
fn pipes_and_commands_go_into_one_changeset() {
    let env = Env::new();
    env.init();
    let fifo = env.path("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, b"from the pipe\n").unwrap())
    };
    let out = backup_stdin(
        &env,
        b"from stdin\n",
        &[
            "--stdin-name",
            "a.txt",
            "--stdin-name",
            &format!("b.txt={}", fifo.display()),
            "--from-command",
            "c.txt=printf 'from a command\\n'",
        ],
    );
    writer.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let all = list(&env, &[]);
    assert_eq!(all.len(), 1, "one changeset");
    let t = env.path("restored");
    env.restore("db", "latest", &t);
    assert_eq!(std::fs::read(t.join("a.txt")).unwrap(), b"from stdin\n");
    assert_eq!(std::fs::read(t.join("b.txt")).unwrap(), b"from the pipe\n");
    assert_eq!(std::fs::read(t.join("c.txt")).unwrap(), b"from a command\n");
}

#[test]
fn a_failed_producer_leaves_no_changeset_and_bad_usage_is_refused() {
    let env = Env::new();
    env.init();
    let out = env
        .cmd()
        .args(["backup", "--dataset", "db", "--from-command", "ok.txt=echo fine"])
        .args(["--from-command", "bad.txt=echo partial; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("stream bad.txt: its command failed"), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_str(&env.ok(["list", "--json"])).unwrap();
    assert_eq!(listed["changesets"].as_array().map_or(0, |a| a.len()), 0, "{listed}");
    let leftovers: Vec<_> =
        files_under(&env.state).into_iter().filter(|p| p.to_string_lossy().contains("spool")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for (args, needle) in [
        (vec!["backup", "--stdin"], "streams need --dataset"),
        (vec!["backup", "--dataset", "db", "--stdin-name", "x"], "add --stdin"),
        (vec!["backup", "--dataset", "db", "--from-command", "nocmd"], "is not NAME=CMD"),
        (vec!["backup", "--dataset", "db", "--stdin", "--stdin-name", "a/b"], "plain file name"),
        (vec!["backup", "--dataset", "db", "--stdin", "--tag", "novalue"], "--tag"),
        (vec!["list", "--tag", "=x"], "--tag"),
    ] {
        let out = env.cmd().args(&args).stdin(Stdio::null()).output().unwrap();
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}
