//! What only the SFTP backend has: ssh's authentication and host-key
//! checks, put-if-absent by hardlink under a race, a connection that drops
//! in the middle of a backup, and the ssh processes a killed agent leaves.
//! Against the real sshd of tests/common/sftp.rs. (The end-to-end suite of
//! tests/backends.rs and tests/retention.rs runs on SFTP too.)

#[macro_use]
mod common;
use common::*;

use n2s_agent::backend::{Backend, BackendOptions, PutOutcome, SftpSettings};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn settings(server: &sftp::Server) -> SftpSettings {
    SftpSettings {
        identity_file: Some(server.identity_file()),
        known_hosts_file: Some(server.known_hosts_file()),
        ssh_config: Some(server.ssh_config()),
        sessions: None,
    }
}

fn open(url: &str, settings: SftpSettings) -> anyhow::Result<Box<dyn Backend>> {
    let opts = BackendOptions { sftp: settings, ..Default::default() };
    n2s_agent::backend::open_url_with(url, &opts)
}

#[test]
fn objects_keep_the_backend_contract() {
    let Some(server) = sftp::server() else { return };
    let url = server.new_location();
    let b = open(&url, settings(server)).unwrap();
    assert_eq!(b.put_if_absent("data/ab/x1", b"hello").unwrap(), PutOutcome::Created);
    assert_eq!(b.put_if_absent("data/ab/x1", b"other").unwrap(), PutOutcome::AlreadyExists);
    assert_eq!(b.get("data/ab/x1", None).unwrap(), b"hello");
    assert_eq!(b.get("data/ab/x1", Some(1..4)).unwrap(), b"ell");
    assert!(b.get("data/ab/x1", Some(3..10)).is_err(), "a range past the end is an error");
    assert!(matches!(b.get("data/ab/nope", None), Err(n2s_agent::backend::BackendError::NotFound(_))));
    assert_eq!(b.stat("data/ab/x1").unwrap(), Some(5));
    assert_eq!(b.stat("data/ab/nope").unwrap(), None);
    b.put_if_absent("data/cd/x2", b"").unwrap();
    assert_eq!(b.get("data/cd/x2", None).unwrap(), b"");
    b.put_if_absent("manifests/m1", b"m").unwrap();
    // A body of many pieces, read back whole and in a range across pieces.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    b.put_if_absent("data/ef/big", &big).unwrap();
    assert_eq!(b.get("data/ef/big", None).unwrap(), big);
    assert_eq!(b.get("data/ef/big", Some(261_000..1_300_123)).unwrap(), &big[261_000..1_300_123]);
    let mut keys: Vec<String> = b.list("data/").unwrap().into_iter().map(|o| o.key).collect();
    keys.sort();
    assert_eq!(keys, vec!["data/ab/x1", "data/cd/x2", "data/ef/big"]);
    let keys: Vec<String> = b.list("data/a").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, vec!["data/ab/x1"], "a prefix that ends inside a name");
    assert_eq!(b.list("nothing/").unwrap(), vec![]);
    // Nothing of tmp/ is an object, and no temporary file stays behind.
    assert!(b.list("").unwrap().iter().all(|o| !o.key.starts_with("tmp")));
    // (Temporary names are removed in the background: give it a moment.)
    let tmp = server.local_path(&url).join("tmp");
    let t0 = Instant::now();
    while std::fs::read_dir(&tmp).unwrap().count() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "temporary uploads left in {}", tmp.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    b.delete("data/ab/x1").unwrap();
    b.delete("data/ab/x1").unwrap();
    assert_eq!(b.stat("data/ab/x1").unwrap(), None);
    b.delete_many(&["data/cd/x2".into(), "data/ef/big".into(), "data/zz/never".into()]).unwrap();
    assert!(b.list("data/").unwrap().is_empty());
    assert!(b.put_if_absent("../evil", b"x").is_err());
    assert!(b.get("a/../../etc/passwd", None).is_err());
}

#[test]
fn of_many_writers_racing_for_one_key_exactly_one_creates_it() {
    let Some(server) = sftp::server() else { return };
    let url = server.new_location();
    // Writers on four connections (four sftp-server processes) and on one.
    let b = open(&url, settings(server)).unwrap();
    let one = open(&url, SftpSettings { sessions: Some(1), ..settings(server) }).unwrap();
    for round in 0..5 {
        let key = format!("manifests/ds/race{round}");
        let outcomes: Vec<PutOutcome> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    let b = if i % 2 == 0 { &b } else { &one };
                    let key = &key;
                    s.spawn(move || b.put_if_absent(key, &[i; 3000]).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let created = outcomes.iter().filter(|o| **o == PutOutcome::Created).count();
        assert_eq!(created, 1, "round {round}: {outcomes:?}");
        // The winner's body, whole: never a mix.
        let body = b.get(&key, None).unwrap();
        assert_eq!(body.len(), 3000);
        assert!(body.iter().all(|&x| x == body[0]));
    }
}

#[test]
fn an_unknown_host_key_or_a_wrong_key_is_a_clear_error() {
    let Some(server) = sftp::server() else { return };
    let env = Env::on(Target::Sftp).unwrap();
    // An empty known_hosts: strict checking refuses the server.
    let empty = env.path("known_hosts_empty");
    std::fs::write(&empty, "").unwrap();
    let out = env.cmd().env("N2S_SFTP_KNOWN_HOSTS_FILE", &empty).arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("known_hosts"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // A key the server does not know.
    let other = env.path("other_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    let out = env.cmd().env("N2S_SFTP_IDENTITY_FILE", &other).arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("identity_file"), "{err}");
    // A key file that is not there.
    let out = env.cmd().env("N2S_SFTP_IDENTITY_FILE", env.path("nope")).arg("init").output().unwrap();
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    // Nothing listens on that port.
    let port = free_port();
    let url = format!("sftp://{}@127.0.0.1:{port}/tmp/x", server.user);
    let out = env.cmd().env("N2S_REPO", &url).env("N2S_RETRY_ATTEMPTS", "1").arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("port"), "{}", stderr(&out));
    // And the secret key never shows in anything the agent printed.
    let key = std::fs::read_to_string(server.identity_file()).unwrap();
    let secret_line = key.lines().nth(1).unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret_line));
}

/// The per-connection sshd processes of our test server (its children).
fn session_pids(server: &sftp::Server) -> Vec<i32> {
    let Ok(pid) = std::fs::read_to_string(server.dir.join("sshd.pid")) else { return vec![] };
    let master: i32 = pid.trim().parse().unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The field after the parenthesised name is the state, then ppid.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let ppid: i32 = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == master {
            out.push(pid);
        }
    }
    out
}

fn tree(env: &Env, files: usize, size: usize) -> PathBuf {
    let src = env.path("src");
    let mut rng = Rng(seed_from_env_or_time());
    for i in 0..files {
        let d = src.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), rng.bytes(size)).unwrap();
    }
    src
}

#[test]
fn a_connection_cut_in_the_middle_of_a_backup_is_made_again() {
    // A server of its own: cutting the shared one would cut the other tests.
    let Some(server) = sftp::private_server() else { return };
    let mut env = Env::new();
    env.url = Some(server.new_location());
    env.extra = server.env();
    env.init();
    let src = tree(&env, 60, 1 << 20);
    // Small packs: many uploads for the cuts to land in.
    let config = env.path("small-packs.toml");
    std::fs::write(&config, "pack_size_mb = 2\n").unwrap();
    let mut child = env
        .cmd()
        .env("N2S_CONFIG", &config)
        .env("N2S_RETRY_BASE_MS", "50")
        // Each cut breaks all four connections; requests take them in turn,
        // so a retry may meet another broken one before a fresh one.
        .env("N2S_RETRY_ATTEMPTS", "12")
        .args(["backup", "--dataset", "ds", "--source", "walk", "--snapshot", "s1", "--path"])
        .arg(&src)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Cut every live session of the server a few times while it runs.
    let mut cuts = 0;
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(400));
        let pids = session_pids(&server);
        if !pids.is_empty() && cuts < 3 {
            for p in pids {
                // SAFETY: kill(2) on a child of the sshd this test binary started.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            cuts += 1;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "backup after {cuts} cuts: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cuts > 0, "the backup ended before a connection could be cut: make the tree bigger");
    let t = env.path("restored");
    env.restore("ds", "s1", &t);
    assert_same_tree(&src, &t);
    let v = env.run(["verify", "--level", "full"]);
    assert!(v.status.success(), "{}", stderr(&v));
}

/// ssh processes that use a control directory under `tmpdir`.
fn ssh_processes_under(tmpdir: &Path) -> Vec<i32> {
    let needle = tmpdir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("ssh ") && cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_killed_agent_leaves_no_ssh_running() {
    if sftp::server().is_none() {
        return;
    }
    let env = Env::on(Target::Sftp).unwrap();
    let tmpdir = env.path("tmpdir");
    std::fs::create_dir_all(&tmpdir).unwrap();
    env.cmd().env("TMPDIR", &tmpdir).arg("init").output().unwrap();
    let src = tree(&env, 40, 1 << 20);
    let mut child = env
        .cmd()
        .env("TMPDIR", &tmpdir)
        .args(["backup", "--dataset", "ds", "--source", "walk", "--snapshot", "s1", "--path"])
        .arg(&src)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while ssh_processes_under(&tmpdir).is_empty() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!ssh_processes_under(&tmpdir).is_empty(), "the agent started no ssh");
    child.kill().unwrap();
    child.wait().unwrap();
    // The master forked away from the agent: it lingers for ControlPersist
    // (5 s) once its last client is gone, then ends.
    let t0 = Instant::now();
    while !ssh_processes_under(&tmpdir).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "ssh still running 30 s after the agent was killed: {:?}",
            ssh_processes_under(&tmpdir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A run after it finishes the job (and cleans the stale control dir).
    let out = env
        .cmd()
        .env("TMPDIR", &tmpdir)
        .args(["backup", "--dataset", "ds", "--source", "walk", "--snapshot", "s1", "--path"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let t = env.path("restored");
    env.restore("ds", "s1", &t);
    assert_same_tree(&src, &t);
}
