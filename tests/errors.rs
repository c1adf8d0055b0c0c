//! Bad input: one line on stderr naming the problem and the fix, exit 1
//! (2 for bad usage), never a panic, and nothing written or lost.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;

fn assert_one_line_error(out: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<_> = err.lines().filter(|l| l.starts_with("n2s-agent: error:")).collect();
    assert_eq!(lines.len(), 1, "want exactly one error line, got:\n{err}");
    assert!(lines[0].contains(needle), "error line lacks {needle:?}: {}", lines[0]);
    assert!(!err.contains("panicked"), "{err}");
}

fn small_tree(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"data").unwrap();
    src
}

#[test]
fn a_wrong_key_is_refused_before_anything_is_written() {
    let env = Env::new();
    let src = small_tree(&env);
    env.init();
    env.backup("d", &src, "one");
    let before = files_under(&env.repo);
    let other_key = env.path("other.key");
    n2s_agent::core::keys::MasterKey::generate().unwrap().save_new(&other_key).unwrap();
    let out = env
        .cmd()
        .env("N2S_KEY_FILE", &other_key)
        .args(["backup", "--dataset", "d", "--source", "walk", "--path"])
        .arg(&src)
        .output()
        .unwrap();
    assert_one_line_error(&out, 1, "does not open the repository");
    assert_eq!(files_under(&env.repo), before, "the repository changed");
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let env = Env::new();
    env.init();
    assert_eq!(std::fs::metadata(&env.key).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&env.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_one_line_error(&env.run(["list"]), 1, "chmod 600");
}

#[test]
fn init_refuses_to_overwrite_a_repository() {
    let env = Env::new();
    env.init();
    let config = std::fs::read(env.repo.join("config")).unwrap();
    assert_one_line_error(&env.run(["init"]), 1, "already exists");
    assert_eq!(std::fs::read(env.repo.join("config")).unwrap(), config);
}

#[test]
fn a_missing_repository_says_to_init() {
    let env = Env::new();
    n2s_agent::core::keys::MasterKey::generate().unwrap().save_new(&env.key).unwrap();
    assert_one_line_error(&env.run(["list"]), 1, "n2s-agent init");
}

#[test]
fn bad_usage_exits_2() {
    let env = Env::new();
    let out = std::process::Command::new(BIN)
        .env_clear()
        .args(["list"])
        .env("N2S_CONFIG", env.path("none.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a named config that is missing is an error: {}", stderr(&out));
    std::fs::write(env.path("empty.toml"), "").unwrap();
    let out = std::process::Command::new(BIN)
        .env_clear()
        .args(["list"])
        .env("N2S_CONFIG", env.path("empty.toml"))
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "--repo");
    assert_eq!(env.run(["frobnicate"]).status.code(), Some(2));
    assert_eq!(env.run(["backup", "--no-such-flag"]).status.code(), Some(2));
    env.init();
    assert_one_line_error(&env.run(["backup"]), 2, "--dataset");
    assert_one_line_error(&env.run(["backup", "--dataset", "x"]), 2, "--source");
    assert_one_line_error(&env.run(["backup", "--dataset", "x", "--source", "walk"]), 2, "--path");
}

#[test]
fn a_malformed_config_names_the_line() {
    let env = Env::new();
    let cfg = env.path("agent.toml");
    std::fs::write(
        &cfg,
        "repo = \"/x\"\nkey_file = \"/k\"\n\n[[dataset]]\nname = \"a\"\nsource = \"walk\"\npaht = \"/srv\"\n",
    )
    .unwrap();
    let out = env.cmd().env("N2S_CONFIG", &cfg).arg("list").output().unwrap();
    assert_one_line_error(&out, 1, "line 7");
    assert!(stderr(&out).contains("paht"));
}

#[test]
fn a_missing_snapshot_or_dataset_is_named() {
    let env = Env::new();
    let src = small_tree(&env);
    env.init();
    env.backup("d", &src, "one");
    let t = env.path("t");
    let out = env.run([
        "restore".as_ref(),
        "nope".as_ref(),
        "--dataset".as_ref(),
        "d".as_ref(),
        "--target".as_ref(),
        t.as_os_str(),
    ]);
    assert_one_line_error(&out, 1, "no backed-up snapshot \"nope\"");
    assert_one_line_error(&env.run(["ls", "one", "--dataset", "other"]), 1, "dataset \"other\" has no backup");
    let out = env.run(["backup", "--dataset", "d", "--source", "walk", "--path", "/nonexistent/dir"]);
    assert_one_line_error(&out, 1, "not a directory");
    // The same label twice is refused, not silently merged.
    let out = env.run([
        "backup".as_ref(),
        "--dataset".as_ref(),
        "d".as_ref(),
        "--source".as_ref(),
        "walk".as_ref(),
        "--path".as_ref(),
        src.as_os_str(),
        "--snapshot".as_ref(),
        "one".as_ref(),
    ]);
    assert_one_line_error(&out, 1, "already backed up");
}

#[test]
fn unsupported_backends_say_so() {
    let env = Env::new();
    let out = env.cmd().env("N2S_REPO", "ftp://user@host/path").arg("init").output().unwrap();
    assert_one_line_error(&out, 1, "no \"ftp\" backend");
    let out = env.cmd().env("N2S_REPO", "s3://Not_A_Bucket/x").arg("init").output().unwrap();
    assert_one_line_error(&out, 1, "not a valid bucket name");
    let out = env.cmd().env("N2S_REPO", "relative/path").arg("init").output().unwrap();
    assert_one_line_error(&out, 1, "absolute");
}

#[test]
fn the_key_never_reaches_output_or_logs() {
    let env = Env::new();
    let src = small_tree(&env);
    env.init();
    let key_text = std::fs::read_to_string(&env.key).unwrap();
    let key_hex =
        key_text.lines().find(|l| l.starts_with("n2s-key-v1")).unwrap().split_whitespace().nth(1).unwrap().to_string();
    let mut all = String::new();
    for args in [
        vec!["-vv", "backup", "--dataset", "d", "--source", "walk", "--path", src.to_str().unwrap()],
        vec!["-vv", "list"],
        vec!["status", "--json"],
        vec!["verify", "--json"],
    ] {
        let out = env.run(&args);
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        all.push_str(&stderr(&out));
    }
    assert!(!all.contains(&key_hex), "the key appeared in output");
    // Nor in the repository, nor the catalogs.
    for f in files_under(&env.repo).into_iter().chain(files_under(&env.state)) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(key_hex.len()).any(|w| w == key_hex.as_bytes()), "key hex in {}", f.display());
        let raw = hex::decode(&key_hex).unwrap();
        assert!(!bytes.windows(32).any(|w| w == raw.as_slice()), "raw key in {}", f.display());
    }
}

#[test]
fn catalogs_and_state_are_private_and_the_backend_sees_no_names() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("secret-project-dir")).unwrap();
    std::fs::write(src.join("secret-project-dir/payroll-2026.xlsx"), b"x".repeat(1000)).unwrap();
    env.init();
    env.backup("tank/home", &src, "one");
    for f in files_under(&env.state) {
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", f.display());
    }
    for f in files_under(&env.repo) {
        let name = f.to_string_lossy();
        assert!(!name.contains("secret") && !name.contains("payroll") && !name.contains("home"), "{name}");
        let bytes = std::fs::read(&f).unwrap();
        for needle in [&b"payroll"[..], b"secret-project", b"tank/home"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} reveals {:?}",
                name,
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[test]
fn a_full_repository_disk_fails_cleanly_and_the_next_run_resumes() {
    if !is_root() {
        assert!(std::env::var("CI").is_err(), "CI must run the tests as root: tmpfs mounts need it");
        eprintln!("SKIPPED LOUDLY: not root, cannot mount a small tmpfs for the disk-full test");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(3);
    for i in 0..8 {
        std::fs::write(src.join(format!("f{i}")), rng.bytes(1 << 20)).unwrap();
    }
    std::fs::create_dir_all(&env.repo).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "n2s-test"])
        .arg(&env.repo)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs failed");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(env.repo.clone());
    env.init();
    let out = env.backup_small_packs("d", &src, "s", 512);
    assert_one_line_error(&out, 1, "full");
    let st = std::process::Command::new("mount").args(["-o", "remount,size=64m"]).arg(&env.repo).status().unwrap();
    assert!(st.success());
    let out = env.backup_small_packs("d", &src, "s", 512);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed"));
    let t = env.path("t");
    env.restore("d", "#1", &t);
    assert_same_tree(&src, &t);
}

/// `n2s-agent ... | head`: a reader that goes away ends the agent quietly
/// (exit 141, as SIGPIPE would), with no panic message; and since SIGPIPE
/// itself stays ignored, a backend's pipe that breaks (ssh dying with its
/// link, tests/sftp.rs) is an error to retry, not the end of the process.
#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let env = Env::new();
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two new descriptors, which OwnedFd then owns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end); // every write to the pipe fails with EPIPE from now on
    let out = env.cmd().arg("init").stdout(std::process::Stdio::from(write_end)).output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{:?}: {err}", out.status);
}

/// SIGTERM or SIGINT in the middle of a backup: one line says what was
/// kept and how to go on, the process still ends by the signal (as systemd
/// and shells expect), and the same command run again finishes the job.
#[test]
fn an_interrupted_run_says_how_to_go_on() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let mut rng = Rng(9);
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        // New content each round, so each backup has seconds of work.
        for i in 0..64 {
            std::fs::create_dir_all(src.join(format!("d{}", i % 4))).unwrap();
            std::fs::write(src.join(format!("d{}/f{i}", i % 4)), rng.bytes(2 << 20)).unwrap();
        }
        let child = env
            .cmd()
            .env("N2S_LIMIT_UPLOAD", "20000") // 20 MB/s: the run lasts seconds
            .args(["backup", "--dataset", "ds", "--source", "walk", "--snapshot", name, "--path"])
            .arg(&src)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.signal(), Some(sig), "{name}: {:?}: {err}", out.status);
        let last = err.trim().lines().last().unwrap_or("");
        assert!(last.contains("interrupted (backup)") && last.contains("run the same backup again"), "{name}: {err}");
        env.backup("ds", &src, name);
    }
    let t = env.path("restored");
    env.restore("ds", "SIGINT", &t);
    assert_same_tree(&src, &t);
}

/// Under systemd (JOURNAL_STREAM names stderr), every line carries its
/// syslog priority as sd-daemon's `<N>` prefix, so `journalctl -p warning`
/// filters; anywhere else (a terminal, a pipe, a redirected stderr) no
/// prefix.
#[test]
fn lines_carry_their_priority_for_the_journal() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let run = |journal: Option<&str>| -> String {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two new descriptors, which OwnedFd then owns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let w = std::fs::File::from(w);
        let m = w.metadata().unwrap();
        let stream = journal.map(str::to_string).unwrap_or_else(|| format!("{}:{}", m.dev(), m.ino()));
        let mut child = env
            .cmd()
            .env("JOURNAL_STREAM", stream)
            .args(["ls", "s1", "--dataset", "nothing-here"])
            .stderr(std::process::Stdio::from(w))
            .spawn()
            .unwrap();
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        child.wait().unwrap();
        out
    };
    env.init();
    let err = run(None);
    assert!(err.lines().any(|l| l.starts_with("<3>n2s-agent: error: ")), "{err}");
    assert!(err.lines().all(|l| l.starts_with('<')), "every line has a priority: {err}");
    let err = run(Some("1:2"));
    assert!(err.lines().any(|l| l.starts_with("n2s-agent: error: ")) && !err.contains("<3>"), "{err}");
}

/// A repository on a read-only file system (what the shipped unit's
/// ProtectSystem=strict makes of any path not in ReadWritePaths=): the
/// error names ReadWritePaths=.
#[test]
fn a_read_only_repository_names_read_write_paths() {
    let env = Env::new();
    let ro = env.path("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1m", "n2s-test-ro"]).arg(&ro).output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(std::env::var("CI").is_err(), "CI must allow mounting a tmpfs (root): {mounted:?}");
        eprintln!("!!!!!!!! SKIPPED LOUDLY: cannot mount a read-only tmpfs here: {mounted:?} !!!!!!!!");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(ro.clone());
    let out = env.cmd().env("N2S_REPO", ro.join("repo")).arg("init").output().unwrap();
    assert_one_line_error(&out, 1, "ReadWritePaths=");
}
