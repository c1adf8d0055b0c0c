//! The rclone backend through the real binary: its `rclone rcd` never
//! outlives the agent (a normal run, a failed one, a `kill -9` in the middle
//! of a backup), wrong settings are one line naming the setting, and each
//! rclone version drives each kind of remote (the parametrised suites run
//! Local on 1.60 and Sftp on 1.75; this file crosses them over).

mod common;

use common::rclone::{DEBIAN_RCLONE, Kind, wheel_rclone};
use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A marker no other process has: the agent's rcd inherits it in its
/// environment, so the test finds it whoever its parent is by then.
fn marker() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("N2S_TEST_RCD_MARKER=p{}-{n}-{}", std::process::id(), seed_from_env_or_time())
}

/// Live (not zombie) processes whose environment holds `marker`, with
/// their command lines.
fn marked(marker: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            continue;
        }
        // "pid (comm) S ...": the state follows the last ')'.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("?");
        if state == "Z" || state == "X" {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        out.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    out
}

fn rcds(marker: &str) -> Vec<(u32, String)> {
    marked(marker).into_iter().filter(|(_, c)| c.contains("rcd")).collect()
}

/// Wait up to `secs` for no rcd with `marker` to be alive.
fn assert_no_rcd_within(marker: &str, secs: u64, what: &str) {
    let t0 = Instant::now();
    loop {
        let left = rcds(marker);
        if left.is_empty() {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "{what}: rclone rcd still running after {secs} s: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tree(env: &Env, files: usize, size: usize) -> PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(9);
    for i in 0..files {
        std::fs::write(src.join(format!("f{i:03}")), rng.bytes(size)).unwrap();
    }
    src
}

fn rclone_env(kind: Kind) -> Option<Env> {
    Env::on(Target::Rclone(kind))
}

#[test]
fn a_finished_run_leaves_no_rcd_behind() {
    let Some(env) = rclone_env(Kind::Local) else { return };
    let src = tree(&env, 3, 1000);
    let m = marker();
    let (k, v) = m.split_once('=').unwrap();
    let out = env.cmd().env(k, v).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_rcd_within(&m, 2, "after init");
    let out = env
        .cmd()
        .env(k, v)
        .args(["backup", "--dataset", "d", "--source", "walk", "--path"])
        .arg(&src)
        .args(["--snapshot", "s1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_rcd_within(&m, 2, "after a backup");
}

/// kill -9 of the agent in the middle of a backup (held after its first
/// pack is stored): its rcd goes within seconds, as PDEATHSIG promises.
#[test]
fn killing_the_agent_mid_backup_kills_its_rcd() {
    for kind in [Kind::Local, Kind::Sftp] {
        let Some(env) = rclone_env(kind) else { continue };
        env.init();
        let src = tree(&env, 40, 50_000);
        let m = marker();
        let (k, v) = m.split_once('=').unwrap();
        let mut c = env.cmd();
        c.env(k, v).env("N2S_PACK_SIZE_KB", "64");
        c.args(["backup", "--dataset", "d", "--source", "walk", "--path"]).arg(&src).args(["--snapshot", "s1"]);
        let paused = run_paused(c, "pack-uploaded", &env.path("pause"));
        // The held agent is the other process with the marker; it is
        // killed even when an assertion below fails (else it waits 10 min).
        let agents: Vec<u32> =
            marked(&m).into_iter().filter(|(_, c)| c.contains("n2s-agent")).map(|(p, _)| p).collect();
        assert_eq!(agents.len(), 1, "{kind:?}: want one paused agent: {agents:?}");
        let guard = KillOnDrop(agents[0]);
        let running = rcds(&m);
        assert_eq!(running.len(), 1, "{kind:?}: want one rcd of the paused agent: {running:?}");
        assert_eq!(ppid(running[0].0), agents[0], "the rcd is the agent's child");
        // Neither the password nor any secret is on its command line.
        assert!(!running[0].1.contains("--rc-pass") && !running[0].1.contains("--rc-user"), "{}", running[0].1);
        drop(guard);
        let out = paused.release();
        assert!(!out.status.success());
        assert_no_rcd_within(&m, 5, &format!("{kind:?}: after kill -9 of the agent"));
        // The rerun finishes the backup and restores it.
        env.backup("d", &src, "s1");
        let target = env.path("restored");
        env.restore("d", "s1", &target);
        assert_same_tree(&src, &target);
    }
}

/// SIGKILL to a process when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// The parent of a process (0 when it is gone).
fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0)
}

fn assert_one_line_error(out: &std::process::Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let lines: Vec<_> = err.lines().filter(|l| l.starts_with("n2s-agent: error:")).collect();
    assert_eq!(lines.len(), 1, "want exactly one error line, got:\n{err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {}", lines[0]);
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn wrong_rclone_settings_are_one_line_naming_the_setting() {
    let Some(env) = rclone_env(Kind::Local) else { return };
    let server = common::rclone::server(Kind::Local).unwrap();
    let conf = server.config.display().to_string();
    let m = marker();
    let (k, v) = m.split_once('=').unwrap();
    let run = |repo: &str, extra: &[(&str, &str)]| {
        let mut c = env.cmd();
        c.env(k, v).env("N2S_REPO", repo).envs(extra.iter().copied()).arg("init");
        c.output().unwrap()
    };
    let out = run("rclone:no-such-remote:/x", &[]);
    assert_one_line_error(&out, &["\"no-such-remote\" is not in", &conf, "N2S_RCLONE_CONFIG"]);
    let out = run("rclone:n2s-local:/x", &[("N2S_RCLONE_BINARY", "/nonexistent/rclone")]);
    assert_one_line_error(&out, &["/nonexistent/rclone", "not found", "N2S_RCLONE_BINARY"]);
    let absent = env.path("absent.conf").display().to_string();
    let out = run("rclone:n2s-local:/x", &[("N2S_RCLONE_CONFIG", &absent)]);
    assert_one_line_error(&out, &[&absent, "does not exist", "N2S_RCLONE_CONFIG"]);
    let out = run("rclone:nocolon", &[]);
    assert_one_line_error(&out, &["rclone:REMOTE:path"]);
    assert_no_rcd_within(&m, 2, "after the failed runs");
}

/// The suites run Local on 1.60 and Sftp on 1.75; here each kind runs on
/// the other binary: a backup, a second one and a restore.
#[test]
fn each_rclone_version_drives_each_kind_of_remote() {
    for (kind, bin) in [(Kind::Local, wheel_rclone()), (Kind::Sftp, PathBuf::from(DEBIAN_RCLONE))] {
        let Some(mut env) = rclone_env(kind) else { continue };
        if !bin.exists() {
            assert!(std::env::var("CI").is_err(), "CI must provide {}", bin.display());
            eprintln!("!!!!!!!! SKIPPED LOUDLY: {} is not installed: run scripts/setup !!!!!!!!", bin.display());
            continue;
        }
        for (k, v) in env.extra.iter_mut() {
            if k == "N2S_RCLONE_BINARY" {
                *v = bin.display().to_string();
            }
        }
        env.init();
        let src = tree(&env, 5, 200_000);
        env.backup("d", &src, "s1");
        std::fs::write(src.join("new"), b"more").unwrap();
        env.backup("d", &src, "s2");
        let target = env.path("restored");
        env.restore("d", "s2", &target);
        assert_same_tree(&src, &target);
        env.ok(["verify", "--level", "full"]);
    }
}
