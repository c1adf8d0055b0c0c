//! The btrfs source through the real binary, on a real btrfs made on a loop
//! device: every snapshot restores identical to itself, a deleted parent
//! snapshot falls back to a walk, a writable snapshot is refused loudly, and
//! a snapshot made during a backup is picked up by the next one.
//!
//! Needs root, loop devices and btrfs-progs. With CI=true missing any of
//! them fails the test; elsewhere the test says it skipped.

mod common;
use common::loopbtrfs::LoopBtrfs;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

fn run_ok(c: &mut Command) {
    let out = c.output().expect("run");
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn btrfs_backup_cmd(env: &Env, fs: &LoopBtrfs) -> Command {
    let mut c = env.cmd();
    c.args(["backup", "--dataset", "vol", "--source", "btrfs", "--path"])
        .arg(fs.vol())
        .arg("--snapshot-dir")
        .arg(fs.snaps());
    c
}

fn btrfs_backup(env: &Env, fs: &LoopBtrfs) -> std::process::Output {
    btrfs_backup_cmd(env, fs).output().unwrap()
}

/// The snapshot label of every changeset in a `list --json` document.
fn snapshot_names(list: &serde_json::Value) -> Vec<serde_json::Value> {
    list["changesets"].as_array().unwrap().iter().map(|c| c["snapshot"].clone()).collect()
}

fn restore_and_compare(env: &Env, snapshot: &Path, name: &str) {
    let t = env.path(&format!("restored-{name}"));
    env.restore("vol", name, &t);
    assert_same_tree(snapshot, &t);
}

#[test]
fn ten_randomized_snapshots_back_up_and_restore_exactly() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    let seed = seed_from_env_or_time();
    eprintln!("seed {seed} (rerun with N2S_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    let vol = fs.vol();
    std::fs::create_dir_all(vol.join("base/sub")).unwrap();
    for i in 0..20 {
        let n = rng.below(100_000) as usize;
        std::fs::write(vol.join(format!("base/sub/f{i}")), rng.bytes(n)).unwrap();
    }
    std::fs::hard_link(vol.join("base/sub/f1"), vol.join("base/hard")).unwrap();
    let env = Env::new();
    env.init();
    let mut snaps = Vec::new();
    for step in 0..10 {
        if step > 0 {
            for _ in 0..1 + rng.below(4) {
                mutate_tree(&vol, &mut rng, step);
            }
        }
        let name = format!("s{step:02}");
        snaps.push((name.clone(), fs.snapshot(&name)));
        // Back up every few snapshots, so one run handles several, oldest first.
        if step % 3 == 2 || step == 9 {
            let out = btrfs_backup(&env, &fs);
            assert!(out.status.success(), "seed {seed}: {}", stderr(&out));
        }
    }
    let list = env.list_json("vol");
    let cs = list["changesets"].as_array().unwrap();
    assert_eq!(cs.len(), 10, "seed {seed}");
    assert_eq!(cs[0]["method"], "walk (first snapshot)");
    for c in &cs[1..] {
        assert_eq!(c["method"], "send", "seed {seed}: {c}");
    }
    assert!(cs.windows(2).all(|w| {
        w[0]["identity"]["created_gen"].as_str().unwrap().parse::<u64>().unwrap()
            < w[1]["identity"]["created_gen"].as_str().unwrap().parse::<u64>().unwrap()
    }));
    for (name, path) in &snaps {
        restore_and_compare(&env, path, name);
    }
}

#[test]
fn a_deleted_parent_falls_back_to_a_walk_and_a_writable_snapshot_is_refused() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    let vol = fs.vol();
    std::fs::write(vol.join("a"), b"one").unwrap();
    let env = Env::new();
    env.init();
    fs.snapshot("s1");
    assert!(btrfs_backup(&env, &fs).status.success());
    std::fs::write(vol.join("b"), b"two").unwrap();
    let s2 = fs.snapshot("s2");
    assert!(btrfs_backup(&env, &fs).status.success());
    // A pruner removes the diff base.
    run_ok(Command::new("btrfs").args(["subvolume", "delete"]).arg(&s2));
    std::fs::remove_file(vol.join("a")).unwrap();
    let s3 = fs.snapshot("s3");
    // And someone made a writable snapshot in the same directory.
    run_ok(Command::new("btrfs").args(["subvolume", "snapshot"]).arg(&vol).arg(fs.snaps().join("rw")));
    let out = btrfs_backup(&env, &fs);
    assert_eq!(out.status.code(), Some(1), "a writable snapshot must fail the run loudly");
    let err = stderr(&out);
    assert!(err.contains("not read-only") && err.contains("rw"), "{err}");
    let list = env.list_json("vol");
    let last = &list["changesets"][2];
    assert_eq!(last["snapshot"], "s3");
    let method = last["method"].as_str().unwrap();
    assert!(method.starts_with("walk (fallback") && method.contains("s2"), "{method}");
    assert_eq!(last["removed"], 1);
    restore_and_compare(&env, &s3, "s3");
}

#[test]
fn a_snapshot_made_during_a_backup_is_taken_by_the_next_run() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    let vol = fs.vol();
    let mut rng = Rng(17);
    for i in 0..40 {
        std::fs::write(vol.join(format!("f{i}")), rng.bytes(500_000)).unwrap();
    }
    fs.snapshot("s1");
    let env = Env::new();
    env.init();
    let child = env
        .cmd()
        .args(["backup", "--dataset", "vol", "--source", "btrfs", "--path"])
        .arg(fs.vol())
        .arg("--snapshot-dir")
        .arg(fs.snaps())
        .spawn()
        .unwrap();
    std::fs::write(vol.join("late"), b"late").unwrap();
    let s2 = fs.snapshot("s2");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(btrfs_backup(&env, &fs).status.success());
    let list = env.list_json("vol");
    let names = snapshot_names(&list);
    assert_eq!(names, vec!["s1", "s2"]);
    restore_and_compare(&env, &s2, "s2");
}

#[test]
fn snapshotting_a_backed_up_snapshot_does_not_confuse_the_next_run() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    std::fs::write(fs.vol().join("a"), b"one").unwrap();
    let env = Env::new();
    env.init();
    let s1 = fs.snapshot("s1");
    assert!(btrfs_backup(&env, &fs).status.success());
    // Another tool snapshots s1 (btrbk and snapper can): s1's generation moves.
    run_ok(Command::new("btrfs").args(["subvolume", "snapshot", "-r"]).arg(&s1).arg(fs.mnt.join("copy-of-s1")));
    std::fs::write(fs.vol().join("b"), b"two").unwrap();
    let s2 = fs.snapshot("s2");
    let out = btrfs_backup(&env, &fs);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = env.list_json("vol");
    let names = snapshot_names(&list);
    assert_eq!(names, vec!["s1", "s2"]);
    assert_eq!(list["changesets"][1]["method"], "send");
    restore_and_compare(&env, &s2, "s2");
}

#[test]
fn take_snapshot_and_the_default_snapper_layout() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    let vol = fs.vol();
    std::fs::write(vol.join("a"), b"one").unwrap();
    let env = Env::new();
    env.init();
    // snapper's layout: <subvol>/.snapshots/<N>/snapshot, found with no --snapshot-dir.
    std::fs::create_dir_all(vol.join(".snapshots/1")).unwrap();
    run_ok(
        Command::new("btrfs").args(["subvolume", "snapshot", "-r"]).arg(&vol).arg(vol.join(".snapshots/1/snapshot")),
    );
    let backup = |extra: &[&str]| {
        env.cmd()
            .args(["backup", "--dataset", "vol", "--source", "btrfs", "--path"])
            .arg(&vol)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = backup(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // --take-snapshot makes the next one itself (a flat entry in the same directory).
    std::fs::write(vol.join("b"), b"two").unwrap();
    let out = backup(&["--take-snapshot", "--snapshot", "taken"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = env.list_json("vol");
    let cs = list["changesets"].as_array().unwrap();
    assert_eq!(cs.len(), 2, "{list}");
    assert_eq!(cs[0]["snapshot"], "1");
    assert_eq!(cs[1]["snapshot"], "taken");
    assert_eq!(cs[1]["method"], "send");
    restore_and_compare(&env, &vol.join(".snapshots/taken"), "taken");
    // The nested snapper subvolume inside it is a dataset of its own: left out.
    assert!(!env.path("restored-taken/.snapshots/1/snapshot").exists());
    // The same name twice is refused with a clear message.
    let out = backup(&["--take-snapshot", "--snapshot", "taken"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[test]
fn a_base_snapshot_made_writable_falls_back_to_a_walk() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    std::fs::write(fs.vol().join("a"), b"one").unwrap();
    let env = Env::new();
    env.init();
    let s1 = fs.snapshot("s1");
    assert!(btrfs_backup(&env, &fs).status.success());
    run_ok(Command::new("btrfs").args(["property", "set", "-ts"]).arg(&s1).args(["ro", "false"]));
    std::fs::write(fs.vol().join("b"), b"two").unwrap();
    let s2 = fs.snapshot("s2");
    let out = btrfs_backup(&env, &fs);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = env.list_json("vol");
    let method = list["changesets"][1]["method"].as_str().unwrap().to_string();
    assert!(method.contains("fallback") && method.contains("not read-only"), "{method}");
    restore_and_compare(&env, &s2, "s2");
}

#[test]
fn a_snapshot_name_used_again_is_kept_apart() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    std::fs::write(fs.vol().join("a"), b"one").unwrap();
    let env = Env::new();
    env.init();
    fs.snapshot("s1");
    let s2 = fs.snapshot("s2");
    assert!(btrfs_backup(&env, &fs).status.success());
    run_ok(Command::new("btrfs").args(["subvolume", "delete"]).arg(&s2));
    std::fs::write(fs.vol().join("b"), b"two").unwrap();
    let s2_again = fs.snapshot("s2");
    let out = btrfs_backup(&env, &fs);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = env.list_json("vol");
    let names = snapshot_names(&list);
    assert_eq!(names, vec!["s1", "s2", "s2~2"]);
    restore_and_compare(&env, &s2_again, "s2~2");
    // Nothing new: a further run backs up nothing.
    let out = btrfs_backup(&env, &fs);
    assert!(out.status.success());
    assert_eq!(env.list_json("vol")["changesets"].as_array().unwrap().len(), 3);
}

#[test]
fn a_walk_of_a_live_subvolume_stays_out_of_nested_subvolumes() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    let vol = fs.vol();
    std::fs::create_dir_all(vol.join("dir")).unwrap();
    std::fs::write(vol.join("dir/own"), b"own").unwrap();
    // A nested subvolume is another file system (its own st_dev) in the
    // live subvolume: the walk records its directory and stays out.
    run_ok(Command::new("btrfs").args(["subvolume", "create"]).arg(vol.join("dir/nested")));
    std::fs::write(vol.join("dir/nested/other"), b"another subvolume").unwrap();
    let env = Env::new();
    env.init();
    let out = env
        .cmd()
        .args(["backup", "--dataset", "live", "--source", "walk", "--path"])
        .arg(&vol)
        .args(["--snapshot", "l1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("dir/nested: a mount point"), "logged once, at info: {}", stderr(&out));
    let t = env.path("restored");
    env.restore("live", "l1", &t);
    assert_eq!(std::fs::read(t.join("dir/own")).unwrap(), b"own");
    assert!(t.join("dir/nested").is_dir(), "the mount point itself is recorded");
    assert_eq!(std::fs::read_dir(t.join("dir/nested")).unwrap().count(), 0, "nothing below it");
}

/// Issue 7, point 1: a snapshot destroyed before its changeset finished
/// (snapper or btrbk pruned it during an outage) must not stop the dataset
/// for good: the changeset is abandoned (failed), and the next snapshot is
/// diffed against the last complete one.
#[test]
fn a_snapshot_destroyed_before_its_upload_finished_is_abandoned_and_backups_go_on() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    let env = Env::new();
    env.init();
    std::fs::create_dir_all(fs.vol().join("d")).unwrap();
    let mut rng = Rng(21);
    for i in 0..6 {
        std::fs::write(fs.vol().join(format!("d/f{i}")), rng.bytes(30_000)).unwrap();
    }
    fs.snapshot("s1");
    assert!(btrfs_backup(&env, &fs).status.success());

    // Killed after listing s2; then s2 is pruned, and s3 is made.
    std::fs::write(fs.vol().join("d/f0"), b"two").unwrap();
    let s2 = fs.snapshot("s2");
    let out = btrfs_backup_cmd(&env, &fs).env("N2S_FAULT", "listed:1").output().unwrap();
    assert!(!out.status.success(), "the fault point did not kill the run");
    run_ok(Command::new("btrfs").args(["subvolume", "delete"]).arg(&s2));
    std::fs::write(fs.vol().join("d/f1"), b"three").unwrap();
    let s3 = fs.snapshot("s3");
    // It used to fail here, and on every later run: "snapshot s2 is gone".
    let out = btrfs_backup(&env, &fs);
    assert_eq!(out.status.code(), Some(1), "an abandonment is reported: {}", stderr(&out));
    assert!(stderr(&out).contains("snapshot s2 (changeset 2) was abandoned"), "{}", stderr(&out));
    let list = env.list_json("vol");
    let rows = list["changesets"].as_array().unwrap();
    let s2row = rows.iter().find(|c| c["snapshot"] == "s2").expect("s2 is listed");
    assert_eq!(s2row["status"], "failed");
    let s3row = rows.iter().find(|c| c["snapshot"] == "s3").expect("s3 is listed");
    assert_eq!((s3row["changeset"].as_i64(), s3row["method"].as_str()), (Some(2), Some("send")), "{s3row}");
    restore_and_compare(&env, &s3, "s3");
    assert!(btrfs_backup(&env, &fs).status.success(), "the next run is clean");

    // Destroyed while its upload runs: every read fails, and the changeset
    // is abandoned instead of committed as "everything removed".
    std::fs::write(fs.vol().join("d/f2"), b"four").unwrap();
    let s4 = fs.snapshot("s4");
    let pause = env.path("pause");
    let held = run_paused(btrfs_backup_cmd(&env, &fs), "listed", &pause);
    run_ok(Command::new("btrfs").args(["subvolume", "delete"]).arg(&s4));
    let out = held.release();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("snapshot s4 (changeset 3) was abandoned"), "{}", stderr(&out));
    std::fs::write(fs.vol().join("d/f3"), b"five").unwrap();
    let s5 = fs.snapshot("s5");
    assert!(btrfs_backup(&env, &fs).status.success());
    restore_and_compare(&env, &s5, "s5");

    // Destroyed in the middle of its upload (after its first file): the
    // files not yet opened cannot be read, and the changeset is abandoned.
    // (In other directories: a directory already open stays readable after
    // the delete; what is reached from the snapshot's root is gone.)
    for i in 0..400 {
        let dir = fs.vol().join(format!("e{:02}", i / 10));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("g{i:03}")), rng.bytes(20_000)).unwrap();
    }
    let s6 = fs.snapshot("s6");
    let mut cmd = btrfs_backup_cmd(&env, &fs);
    cmd.env("N2S_PACK_SIZE_KB", "16");
    let held = run_paused(cmd, "file-read", &pause);
    run_ok(Command::new("btrfs").args(["subvolume", "delete"]).arg(&s6));
    let out = held.release();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("snapshot s6 (changeset 4) was abandoned") && stderr(&out).contains("could not be read"),
        "{}",
        stderr(&out)
    );
    let s7 = fs.snapshot("s7");
    assert!(btrfs_backup(&env, &fs).status.success());
    restore_and_compare(&env, &s7, "s7");
}

#[test]
fn excludes_apply_to_the_changes_a_send_stream_names() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    let vol = fs.vol();
    std::fs::create_dir_all(vol.join("data")).unwrap();
    std::fs::write(vol.join("data/keep"), b"keep").unwrap();
    std::fs::write(vol.join("data/old.log"), b"log").unwrap();
    std::fs::create_dir_all(vol.join("build/obj")).unwrap();
    std::fs::write(vol.join("build/obj/x.o"), b"obj").unwrap();
    let s1 = fs.snapshot("s1");
    let env = Env::new();
    env.init();
    let with_excludes = |env: &Env| {
        let out = btrfs_backup_cmd(env, &fs).args(["--exclude", "*.log", "--exclude-caches"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    // The first snapshot is walked; the build tree is not excluded yet.
    with_excludes(&env);
    // The second is diffed: new and changed paths below an exclude, and a
    // directory tagged as a cache after the fact, are left out.
    std::fs::write(vol.join("data/new.log"), b"new").unwrap();
    std::fs::write(vol.join("data/old.log"), b"changed").unwrap();
    std::fs::write(vol.join("data/more"), b"more").unwrap();
    std::fs::write(vol.join("build/CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55\n").unwrap();
    std::fs::write(vol.join("build/obj/y.o"), b"obj2").unwrap();
    fs.snapshot("s2");
    with_excludes(&env);
    let list = env.list_json("vol");
    assert_eq!(list["changesets"][1]["method"], "send", "{list}");
    let t1 = env.path("r1");
    let t2 = env.path("r2");
    env.restore("vol", "s1", &t1);
    env.restore("vol", "s2", &t2);
    let rel = |root: &Path| -> Vec<String> {
        files_under(root).iter().map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned()).collect()
    };
    assert_eq!(rel(&t1), ["build/obj/x.o", "data/keep"]);
    assert_eq!(rel(&t2), ["build/CACHEDIR.TAG", "data/keep", "data/more"]);
    assert!(!t2.join("build/obj").exists(), "the cache's contents left the newer snapshot");
    assert_eq!(std::fs::read(t2.join("data/more")).unwrap(), b"more");
    drop(s1);
}

#[test]
fn config_check_counts_a_btrfs_datasets_snapshots_and_writes_nothing() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    std::fs::write(fs.vol().join("f"), b"x").unwrap();
    fs.snapshot("s1");
    fs.snapshot("s2");
    let env = Env::new();
    env.init();
    let cfg = env.path("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "repo = {:?}\nkey_file = {:?}\nstate_dir = {:?}\n[[dataset]]\nname = \"vol\"\nsource = \"btrfs\"\npath = {:?}\nsnapshot_dir = {:?}\n[[dataset]]\nname = \"plain\"\nsource = \"btrfs\"\npath = {:?}\nsnapshot_dir = {:?}\n",
            env.repo.to_str().unwrap(),
            env.key.to_str().unwrap(),
            env.path("st").to_str().unwrap(),
            fs.vol().to_str().unwrap(),
            fs.snaps().to_str().unwrap(),
            env.path("notbtrfs").to_str().unwrap(),
            env.path("notbtrfs").to_str().unwrap(),
        ),
    )
    .unwrap();
    std::fs::create_dir_all(env.path("notbtrfs")).unwrap();
    let out = Command::new(bin()).arg("--config").arg(&cfg).args(["config", "check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("ok   dataset vol: btrfs source") && text.contains("2 snapshots, the newest s2"), "{text}");
    assert!(text.contains("FAIL dataset plain:"), "a directory that is no subvolume: {text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!env.path("st").exists(), "no state directory made");
}

/// A TCP forwarder to a real server that can be cut off and restored on the
/// same port: a backend outage, as the agent sees one (connections
/// refused, open ones reset).
struct Outage {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Outage {
    fn to(target: u16) -> Outage {
        use std::sync::atomic::Ordering;
        let port = free_port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = up.clone();
        std::thread::spawn(move || {
            loop {
                // While down, no listener: connections are refused.
                while !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                };
                l.set_nonblocking(true).unwrap();
                while flag.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((client, _)) => {
                            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
                            for (mut from, mut to) in
                                [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                            {
                                let flag = flag.clone();
                                std::thread::spawn(move || {
                                    from.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
                                    let mut buf = [0u8; 65536];
                                    loop {
                                        if !flag.load(Ordering::SeqCst) {
                                            break;
                                        }
                                        match std::io::Read::read(&mut from, &mut buf) {
                                            Ok(0) => break,
                                            Ok(n) => {
                                                if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                                    break;
                                                }
                                            }
                                            Err(e)
                                                if matches!(
                                                    e.kind(),
                                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                                ) => {}
                                            Err(_) => break,
                                        }
                                    }
                                    let _ = from.shutdown(std::net::Shutdown::Both);
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                });
                            }
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                    }
                }
            }
        });
        Outage { port, up }
    }
    fn set(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `n2s-agent watch` as a child, its stdout and stderr gathered as they come.
struct Watching {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    err: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watching {
    fn start(mut c: Command) -> Watching {
        use std::io::BufRead;
        let mut child =
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("run watch");
        let gather = |r: Box<dyn std::io::Read + Send>| {
            let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let t = text.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                    t.lock().unwrap().push_str(&(line + "\n"));
                }
            });
            text
        };
        let out = gather(Box::new(child.stdout.take().unwrap()));
        let err = gather(Box::new(child.stderr.take().unwrap()));
        Watching { child, out, err }
    }
    /// Wait until stdout or stderr holds `what`.
    fn wait_for(&mut self, what: &str, secs: u64) -> std::time::Duration {
        let t0 = std::time::Instant::now();
        loop {
            if self.out.lock().unwrap().contains(what) || self.err.lock().unwrap().contains(what) {
                return t0.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "watch ended ({st}) before {what:?}\n{}\n{}",
                    self.out.lock().unwrap(),
                    self.err.lock().unwrap()
                );
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(secs),
                "no {what:?} within {secs} s\nstdout:\n{}\nstderr:\n{}",
                self.out.lock().unwrap(),
                self.err.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    /// SIGTERM, and the exit status.
    fn stop(mut self) -> (std::process::ExitStatus, std::time::Duration) {
        let t0 = std::time::Instant::now();
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let st = self.child.wait().unwrap();
        (st, t0.elapsed())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn watch_config(env: &Env, fs: &LoopBtrfs) -> PathBuf {
    let cfg = env.path("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[dataset]]\nname = \"vol\"\nsource = \"btrfs\"\npath = {:?}\nsnapshot_dir = {:?}\n",
            fs.vol().to_str().unwrap(),
            fs.snaps().to_str().unwrap()
        ),
    )
    .unwrap();
    cfg
}

/// Issue 11, point 6: snapshots made while `watch` runs are each backed up
/// within seconds (inotify, debounced), a burst is taken together, the
/// metrics file follows, and SIGTERM while idle stops it at once with 0.
#[test]
fn watch_backs_up_each_new_snapshot_within_seconds() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    let env = Env::new();
    env.init();
    std::fs::write(fs.vol().join("f"), b"zero").unwrap();
    fs.snapshot("s0");
    let metrics = env.path("n2s.prom");
    let mut c = env.cmd();
    c.env("N2S_CONFIG", watch_config(&env, &fs))
        .arg("--metrics-file")
        .arg(&metrics)
        // A long poll: what is seen within seconds is inotify's doing.
        .args(["watch", "--debounce", "0.5", "--poll", "600"]);
    let mut w = Watching::start(c);
    // A snapshot made while it was not running is taken at start.
    w.wait_for("snapshot s0 stored as changeset 1", 60);
    for (i, name) in ["s1", "s2"].iter().enumerate() {
        std::fs::write(fs.vol().join("f"), format!("version {i}")).unwrap();
        fs.snapshot(name);
        let took = w.wait_for(&format!("snapshot {name} stored as changeset {}", i + 2), 30);
        assert!(took < std::time::Duration::from_secs(15), "{name} took {took:?}");
    }
    // A burst: three snapshots at once, backed up in order by one run.
    for name in ["b1", "b2", "b3"] {
        std::fs::write(fs.vol().join(name), name).unwrap();
        fs.snapshot(name);
    }
    w.wait_for("snapshot b3 stored as changeset 6", 30);
    let out = w.out.lock().unwrap().clone();
    assert_eq!(out.matches("stored as changeset").count(), 6, "every snapshot once: {out}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("n2s_backup_changesets{dataset=\"vol\"} 6"), "{text}");
    assert!(text.contains("n2s_backup_last_run_success{dataset=\"vol\"} 1"), "{text}");
    let (st, took) = w.stop();
    assert_eq!(st.code(), Some(0), "SIGTERM while idle is a clean stop");
    assert!(took < std::time::Duration::from_secs(3), "stopping took {took:?}");
    restore_and_compare(&env, &fs.snaps().join("b3"), "b3");
    restore_and_compare(&env, &fs.snaps().join("s1"), "s1");
}

/// The backend goes away while `watch` runs: the backup fails, is counted
/// in the metrics and retried with backoff; once the backend is back, the
/// snapshot is backed up and restores.
#[test]
fn watch_survives_a_backend_outage() {
    let Some(fs) = LoopBtrfs::with_vol() else { return };
    let Some(mut env) = Env::on(Target::S3(common::s3::Kind::Moto)) else { return };
    let moto = env.extra.iter().find(|(k, _)| k == "N2S_S3_ENDPOINT").unwrap().1.clone();
    let moto_port: u16 = moto.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    let proxy = Outage::to(moto_port);
    for (k, v) in env.extra.iter_mut() {
        if k == "N2S_S3_ENDPOINT" {
            *v = format!("http://127.0.0.1:{}", proxy.port);
        }
    }
    env.init();
    std::fs::write(fs.vol().join("f"), b"before").unwrap();
    fs.snapshot("s1");
    let metrics = env.path("n2s.prom");
    let mut c = env.cmd();
    c.env("N2S_CONFIG", watch_config(&env, &fs)).env("N2S_METRICS_FILE", &metrics).args([
        "watch",
        "--debounce",
        "0.3",
        "--poll",
        "1",
        "--max-backoff",
        "2",
    ]);
    let mut w = Watching::start(c);
    w.wait_for("snapshot s1 stored as changeset 1", 60);

    proxy.set(false);
    std::fs::write(fs.vol().join("f"), b"during the outage").unwrap();
    fs.snapshot("s2");
    w.wait_for("backup failed (attempt 1)", 90);
    w.wait_for("backup failed (attempt 2)", 90);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("n2s_backup_last_run_success{dataset=\"vol\"} 0"), "{text}");
    assert!(text.contains("n2s_backup_last_run_errors{dataset=\"vol\"} 1"), "{text}");
    assert!(!w.out.lock().unwrap().contains("snapshot s2 stored"));

    proxy.set(true);
    w.wait_for("snapshot s2 stored as changeset 2", 90);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("n2s_backup_last_run_success{dataset=\"vol\"} 1"), "{text}");
    let (st, _) = w.stop();
    assert_eq!(st.code(), Some(0));
    let t = env.path("restored-s2");
    env.restore("vol", "s2", &t);
    assert_same_tree(&fs.snaps().join("s2"), &t);
}

#[test]
fn watch_refuses_what_it_cannot_watch() {
    let env = Env::new();
    env.init();
    let cfg = env.path("walk.toml");
    std::fs::write(&cfg, "[[dataset]]\nname = \"live\"\nsource = \"walk\"\npath = \"/tmp\"\n").unwrap();
    for (args, says) in [
        (vec!["watch"], "no btrfs or zfs dataset to watch"),
        (vec!["watch", "--dataset", "live"], "has no snapshots to watch"),
        (vec!["watch", "--dataset", "other"], "is not in the config file"),
        (vec!["watch", "--poll=0"], "--poll 0: give 0.2 to 86400 seconds"),
    ] {
        let out = env.cmd().env("N2S_CONFIG", &cfg).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}
