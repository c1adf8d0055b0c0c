//! Failures of the machine the agent runs on: a fatal error in the middle
//! of a huge file, files that change while they are read, the format's
//! size limits, a full or damaged state directory, lost local state.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

fn walk_backup(env: &Env, src: &Path, label: &str) -> Command {
    let mut c = env.cmd();
    c.args(["backup", "--dataset", "d", "--source", "walk", "--path"]).arg(src).args(["--snapshot", label]);
    c
}

#[test]
fn a_fatal_error_stops_the_read_of_a_huge_file_at_once() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // 256 MiB that neither compresses nor dedups.
    let size: u64 = 256 << 20;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(src.join("image")).unwrap();
        let mut rng = Rng(11);
        for _ in 0..(size >> 20) {
            f.write_all(&rng.bytes(1 << 20)).unwrap();
        }
    }
    // The first pack upload fails for good.
    let out = walk_backup(&env, &src, "s")
        .env("N2S_PACK_SIZE_KB", "1024")
        .env("N2S_FAULT_BACKEND", "put:fatal:nth:1@data/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    // The reader stops within a chunk or so of the failure; it used to read
    // (and seal, and hash) all 256 MiB before it noticed.
    let line = e.lines().find(|l| l.contains("stopped reading image after")).unwrap_or_else(|| panic!("{e}"));
    let read: u64 = line.split("after ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    assert!(read < size / 4, "read {read} of {size} bytes after the first fatal error: {line}");
    assert!(e.lines().last().unwrap().contains("injected fault"), "{e}");
    // Nothing is lost: the next run completes.
    let out = walk_backup(&env, &src, "s").env("N2S_PACK_SIZE_KB", "1024").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_file_that_changes_while_it_is_read_is_read_again_then_stored_with_a_warning() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("steady"), b"steady").unwrap();
    let log = src.join("growing.log");
    std::fs::write(&log, Rng(1).bytes(8 << 20)).unwrap();
    // A writer appends for the whole backup: both reads see it change.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[b'x'; 512]).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let out = walk_backup(&env, &src, "live").arg("--json").output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(out.status.success(), "a warning, not a failure, by default: {}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("growing.log changed while it was read; reading it again"), "{e}");
    assert!(e.contains("growing.log changed while it was read; stored as read"), "{e}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["changesets"][0]["changed_during_read"], 1, "{j}");

    // Configured to fail on it, the run exits 1 (and still stores the rest).
    std::fs::write(env.path("empty.toml"), "fail_on_changed_files = true\n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[b'y'; 512]).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let out = walk_backup(&env, &src, "live2").output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).lines().last().unwrap().contains("changed while they were read"), "{}", stderr(&out));
    // A quiet file is stored as it is, with no warning.
    let t = env.path("t");
    env.restore("d", "live2", &t);
    assert_eq!(std::fs::read(t.join("steady")).unwrap(), b"steady");
}

#[test]
fn long_chunk_lists_and_files_past_the_limit_stay_readable() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // A sparse file: 64 MiB of zeros, no blocks on disk.
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    std::fs::write(src.join("small"), b"small").unwrap();
    // Three chunk ids per record: the sparse file's list is split over
    // several records, as an 8 TiB file's would be at the real limit.
    let out = walk_backup(&env, &src, "s1").env("N2S_CHUNKS_PER_RECORD", "3").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Read back from the manifests alone.
    std::fs::remove_dir_all(&env.state).unwrap();
    env.ok(["catalog", "rebuild"]);
    let t = env.path("t1");
    env.restore("d", "s1", &t);
    assert_same_tree(&src, &t);

    // A file with more chunks than the limit is refused by name, and the
    // manifest stays readable (the old writer stored whatever it had).
    std::fs::write(src.join("small"), b"changed").unwrap();
    std::fs::OpenOptions::new().write(true).open(src.join("sparse")).unwrap().set_len((64 << 20) + 4096).unwrap();
    let out = walk_backup(&env, &src, "s2").env("N2S_MAX_FILE_CHUNKS", "8").output().unwrap();
    // Exit 3: the snapshot is stored, without that one file.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("sparse: too large"), "{}", stderr(&out));
    std::fs::remove_dir_all(&env.state).unwrap();
    env.ok(["catalog", "rebuild"]);
    let t = env.path("t2");
    env.restore("d", "s2", &t);
    assert_eq!(std::fs::read(t.join("small")).unwrap(), b"changed");
    assert!(!t.join("sparse").exists(), "a file that could not be stored is absent, not stale");
}

fn mount_tmpfs(at: &Path, opts: &str) -> Option<Unmount> {
    if !is_root() {
        assert!(std::env::var("CI").is_err(), "CI must run the tests as root: tmpfs mounts need it");
        eprintln!("!!!!!!!! SKIPPED LOUDLY: not root, cannot mount a tmpfs !!!!!!!!");
        return None;
    }
    std::fs::create_dir_all(at).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", opts, "n2s-test"]).arg(at).status().unwrap();
    assert!(st.success(), "mount tmpfs failed");
    Some(Unmount(at.to_path_buf()))
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_directory_is_named_as_such() {
    let env = Env::new();
    let Some(_m) = mount_tmpfs(&env.state, "size=2m") else { return };
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..2000 {
        std::fs::write(src.join(format!("file-with-a-long-name-{i:05}")), format!("{i}")).unwrap();
    }
    // Fill what is left of it.
    let _ = std::fs::write(env.state.join("filler"), vec![0u8; 4 << 20]);
    let out = walk_backup(&env, &src, "s").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    let last = e.trim().lines().last().unwrap();
    assert!(
        last.contains("state directory") && last.contains("full") && last.contains(&env.state.display().to_string()),
        "{e}"
    );
    let out = env.run(["status"]);
    let e = stderr(&out);
    assert!(!e.contains("is it an n2s catalog"), "{e}");
    std::fs::remove_file(env.state.join("filler")).unwrap();
    let out = walk_backup(&env, &src, "s").output().unwrap();
    assert!(out.status.success(), "after freeing space it goes on: {}", stderr(&out));
}

#[test]
fn verify_checks_local_catalogs_it_cannot_open() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    env.backup("d", &src, "s");
    env.ok(["verify", "--level", "quick"]);
    let cat = files_under(&env.state)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "sqlite") && p.to_string_lossy().contains("datasets"))
        .unwrap();
    let good = std::fs::read(&cat).unwrap();
    for (what, bytes) in
        [("empty", Vec::new()), ("garbage", vec![0x5a; 8192]), ("truncated", good[..good.len().min(4096) / 2].to_vec())]
    {
        std::fs::write(&cat, &bytes).unwrap();
        for ext in ["sqlite-wal", "sqlite-shm"] {
            let _ = std::fs::remove_file(cat.with_extension(ext));
        }
        let out = env.run(["verify", "--level", "quick"]);
        assert_eq!(out.status.code(), Some(1), "{what} catalog: {}", stderr(&out));
        let e = stderr(&out);
        assert!(e.contains(&cat.display().to_string()) && e.contains("catalog rebuild"), "{what}: {e}");
    }
}

#[test]
fn read_verbs_never_answer_empty_when_the_state_is_lost() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("needle.txt"), b"x").unwrap();
    env.backup("d", &src, "s");
    // The state directory moved away: the verbs rebuild what they need.
    std::fs::rename(&env.state, env.path("state-away")).unwrap();
    let out = env.ok(["list"]);
    assert!(out.contains("d ") && out.contains(" s "), "{out}");
    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.ok(["search", "needle"]);
    assert!(out.contains("needle.txt"), "{out}");
    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.ok(["status"]);
    assert!(out.contains("last backed up s"), "{out}");

    // A state directory that cannot be written says so plainly.
    std::fs::remove_dir_all(&env.state).unwrap();
    let Some(_m) = mount_tmpfs(&env.state, "ro,size=1m") else { return };
    let out = env.run(["list"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("state") && e.contains(&env.state.display().to_string()), "{e}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("no backups yet"));
}

#[test]
fn a_flipped_bit_in_the_catalog_is_named_not_restored_around() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/passwd"), b"root:x:0:0").unwrap();
    std::fs::write(src.join("etc/group"), b"root:x:0:").unwrap();
    env.backup("d", &src, "s");
    let cat = files_under(&env.state)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "sqlite") && p.to_string_lossy().contains("datasets"))
        .unwrap();
    let st = Command::new("sqlite3")
        .arg(&cat)
        .arg("UPDATE files SET path = CAST('etc/pas3wd' AS BLOB) WHERE path = CAST('etc/passwd' AS BLOB);")
        .status()
        .unwrap();
    assert!(st.success());
    let t = env.path("t");
    let out = env.cmd().args(["restore", "s", "--dataset", "d", "--target"]).arg(&t).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "it used to exit 0 with one file missing: {}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("etc/pas3wd") && e.contains("catalog rebuild"), "{e}");
    // The way out works.
    std::fs::remove_file(&cat).unwrap();
    env.ok(["catalog", "rebuild"]);
    let t = env.path("t2");
    env.restore("d", "s", &t);
    assert_same_tree(&src, &t);
}

#[test]
fn a_walk_of_many_sibling_directories_holds_one_descriptor_per_level() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for i in 0..3000 {
        let d = src.join(format!("d{i:04}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), format!("{i}")).unwrap();
    }
    let mut c = walk_backup(&env, &src, "s");
    // A hard limit of 256 descriptors: the walk used to open every pending
    // sibling directory at once and lose those past the limit (EMFILE).
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        c.pre_exec(|| {
            let lim = rustix::process::Rlimit { current: Some(256), maximum: Some(256) };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, lim).map_err(std::io::Error::from)
        });
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out).lines().rev().take(3).collect::<Vec<_>>().join("\n"));
    let t = env.path("t");
    env.restore("d", "s", &t);
    assert_same_tree(&src, &t);
}
