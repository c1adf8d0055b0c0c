//! Shared helpers for the integration tests: a private repository and state
//! directory per test, a way to run the real binary, and a tree comparer.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod ipfs;
pub mod loopbtrfs;
pub mod rclone;
pub mod s3;
pub mod sftp;

/// One #[test] per backend for each test body (a `fn(&Env)`): a local
/// directory, S3 on moto and on SeaweedFS, SFTP on a test sshd, rclone (a
/// local remote and an sftp one) and an IPFS node. A test binary that says
/// `#[macro_use] mod common;` uses it.
#[allow(unused_macros)]
macro_rules! on_every_backend {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            use super::common::s3::Kind;
            use super::common::{Env, Target};
            #[test]
            fn local() {
                if let Some(env) = Env::on(Target::Local) {
                    super::$body(&env)
                }
            }
            #[test]
            fn s3_moto() {
                if let Some(env) = Env::on(Target::S3(Kind::Moto)) {
                    super::$body(&env)
                }
            }
            #[test]
            fn s3_seaweedfs() {
                if let Some(env) = Env::on(Target::S3(Kind::SeaweedFs)) {
                    super::$body(&env)
                }
            }
            #[test]
            fn sftp() {
                if let Some(env) = Env::on(Target::Sftp) {
                    super::$body(&env)
                }
            }
            #[test]
            fn rclone_local() {
                if let Some(env) = Env::on(Target::Rclone(super::common::rclone::Kind::Local)) {
                    super::$body(&env)
                }
            }
            #[test]
            fn rclone_sftp() {
                if let Some(env) = Env::on(Target::Rclone(super::common::rclone::Kind::Sftp)) {
                    super::$body(&env)
                }
            }
            #[test]
            fn ipfs() {
                if let Some(env) = Env::on(Target::Ipfs) {
                    super::$body(&env)
                }
            }
        }
    )*};
}

use n2s_agent::fsx::Dir;
use n2s_agent::model::{FileType, display_path, join_path};
use std::os::unix::fs::{PermissionsExt, symlink};

pub const BIN: &str = env!("CARGO_BIN_EXE_n2s-agent");

/// The binary the tests drive: this build's, or the one `N2S_TEST_BIN`
/// names (to show that a test fails against an older build).
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("N2S_TEST_BIN").unwrap_or_else(|| BIN.into())
}

pub struct Env {
    pub dir: tempfile::TempDir,
    /// The local repository's directory (local repositories only).
    pub repo: PathBuf,
    pub key: PathBuf,
    pub state: PathBuf,
    /// The repository URL when it is not `repo` (s3://...).
    pub url: Option<String>,
    /// Environment the agent needs for that repository (S3 credentials...).
    pub extra: Vec<(String, String)>,
}

/// Where a test's repository lives: the parametrised suites run one test
/// body on each.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    Local,
    S3(s3::Kind),
    Sftp,
    Rclone(rclone::Kind),
    Ipfs,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("n2s-it-").tempdir_in(scratch_root()).expect("tempdir");
        let repo = dir.path().join("repo");
        let key = dir.path().join("key");
        let state = dir.path().join("state");
        std::fs::write(dir.path().join("empty.toml"), "").expect("empty config");
        Env { dir, repo, key, state, url: None, extra: Vec::new() }
    }

    /// An environment whose repository is on `target` (a fresh bucket for
    /// S3), or None when that server is not installed (said loudly; CI
    /// fails instead).
    pub fn on(target: Target) -> Option<Env> {
        let mut env = Env::new();
        match target {
            Target::Local => {}
            Target::S3(kind) => {
                let server = s3::server(kind)?;
                env.url = Some(server.new_location());
                env.extra = server.env();
            }
            Target::Sftp => {
                let server = sftp::server()?;
                env.url = Some(server.new_location());
                env.extra = server.env();
            }
            Target::Rclone(kind) => {
                let server = rclone::server(kind)?;
                env.url = Some(server.new_location());
                env.extra = server.env();
            }
            Target::Ipfs => {
                let server = ipfs::server()?;
                env.url = Some(server.new_location());
                env.extra = server.env();
            }
        }
        Some(env)
    }

    /// Another repository, empty, on the same kind of backend (a prefix of
    /// its own in the same bucket for S3), with its own state and key.
    pub fn sibling(&self) -> Env {
        let mut env = Env::new();
        env.url = self.url.as_ref().map(|u| format!("{u}-sibling"));
        env.extra = self.extra.clone();
        env
    }

    pub fn is_local(&self) -> bool {
        self.url.is_none()
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The command with this test's repository, key and state directory.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("N2S_REPO", self.url.as_ref().map_or(self.repo.as_os_str(), |u| OsStr::new(u.as_str())))
            .env("N2S_KEY_FILE", &self.key)
            .env("N2S_STATE_DIR", &self.state)
            // An empty config of our own: never the machine's /etc/n2s/agent.toml.
            .env("N2S_CONFIG", self.dir.path().join("empty.toml"));
        c.envs(self.extra.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd().args(args).output().expect("run n2s-agent")
    }

    /// Run and insist on success.
    pub fn ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "n2s-agent {:?} failed with {:?}\nstdout: {}\nstderr: {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn init(&self) {
        self.ok(["init"]);
    }

    pub fn backup(&self, dataset: &str, path: &Path, label: &str) -> String {
        self.ok([
            OsStr::new("backup"),
            OsStr::new("--dataset"),
            OsStr::new(dataset),
            OsStr::new("--source"),
            OsStr::new("walk"),
            OsStr::new("--path"),
            path.as_os_str(),
            OsStr::new("--snapshot"),
            OsStr::new(label),
        ])
    }

    /// A walk backup with small packs, so little data makes many packs.
    /// Returns the raw output: callers decide what success means.
    pub fn backup_small_packs(&self, dataset: &str, path: &Path, label: &str, pack_kb: u32) -> Output {
        self.cmd()
            .env("N2S_PACK_SIZE_KB", pack_kb.to_string())
            .args(["backup", "--dataset", dataset, "--source", "walk", "--path"])
            .arg(path)
            .args(["--snapshot", label])
            .output()
            .expect("run n2s-agent")
    }

    pub fn restore(&self, dataset: &str, label: &str, target: &Path) -> String {
        self.ok([
            OsStr::new("restore"),
            OsStr::new(label),
            OsStr::new("--dataset"),
            OsStr::new(dataset),
            OsStr::new("--target"),
            target.as_os_str(),
        ])
    }

    pub fn list_json(&self, dataset: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(["list", "--json", "--dataset", dataset])).expect("list --json")
    }

    /// Sum of the sizes of all pack objects.
    pub fn pack_bytes(&self) -> u64 {
        files_under(&self.repo.join("data")).iter().map(|p| p.metadata().map(|m| m.len()).unwrap_or(0)).sum()
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A directory for a test server's data that outlives the test's own
/// TempDir (the server dies with the test binary, after it): named by this
/// binary's pid, so the next binary sweeps those of binaries that are gone.
pub fn server_dir(kind: &str) -> PathBuf {
    let root = scratch_root();
    let prefix = format!("n2s-{kind}-");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(&prefix).and_then(|r| r.split('-').next()) else { continue };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .tempdir_in(&root)
        .expect("server dir")
        .keep()
}

/// Start a test server that dies with this test binary.
pub fn spawn_kept(mut cmd: Command) {
    use std::os::unix::process::CommandExt;
    // The spawning thread must outlive the server: PDEATHSIG follows the
    // thread, not the process. This one parks forever.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: prctl is async-signal-safe and touches nothing else.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let r = cmd.stdin(std::process::Stdio::null()).spawn();
        let ok = r.is_ok();
        let _ = tx.send(r.map(|_| ()));
        if ok {
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv().expect("server thread").expect("start the test server");
}

/// Where test trees live: a real disk file system (xattrs, sparse files).
pub fn scratch_root() -> PathBuf {
    let p = PathBuf::from(std::env::var("N2S_TEST_TMP").unwrap_or_else(|_| "/var/tmp".into()));
    std::fs::create_dir_all(&p).expect("scratch root");
    p
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What we compare of one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub ftype: FileType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: Option<i64>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: Option<[u8; 32]>,
    pub rdev: u64,
    /// Other paths of the same inode (hardlinks), sorted.
    pub links: Vec<Vec<u8>>,
}

/// Describe a tree: every entry below `root` (the root's own mtime too).
pub fn describe(root: &Path) -> BTreeMap<Vec<u8>, Seen> {
    let mut out = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let root_dir = Dir::open(root).expect("open tree root");
    let m = root_dir.metadata_self().expect("stat root");
    out.insert(
        Vec::new(),
        Seen {
            ftype: m.ftype,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            size: 0,
            mtime_ns: Some(m.mtime_ns),
            target: None,
            xattrs: m.xattrs,
            content: None,
            rdev: 0,
            links: vec![],
        },
    );
    let mut stack = vec![(root_dir, Vec::new())];
    while let Some((dir, path)) = stack.pop() {
        for name in dir.entry_names().expect("list") {
            let p = join_path(&path, &name);
            let m = dir.metadata_of(&name).expect("stat");
            if m.ftype == FileType::Dir && m.ino == 2 {
                // A nested btrfs subvolume's stub in a snapshot: not part of
                // the dataset, never backed up (only a file system root has
                // inode 2 elsewhere, and it is never a child).
                continue;
            }
            let content = (m.ftype == FileType::File).then(|| {
                let mut f = dir.open_file(&name).expect("open");
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).expect("read");
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                *h.finalize().as_bytes()
            });
            if m.ftype == FileType::File && m.nlink > 1 {
                by_ino.entry(m.ino).or_default().push(p.clone());
            }
            if m.ftype == FileType::Dir {
                stack.push((dir.open_subdir(&name).expect("open subdir"), p.clone()));
            }
            out.insert(
                p,
                Seen {
                    ftype: m.ftype,
                    mode: m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    size: if m.ftype == FileType::Dir { 0 } else { m.size },
                    // Symlink mtimes are restored too; directory mtimes as well.
                    mtime_ns: Some(m.mtime_ns),
                    target: m.symlink_target,
                    xattrs: m.xattrs,
                    content,
                    rdev: m.rdev,
                    links: vec![],
                },
            );
        }
    }
    for paths in by_ino.values() {
        for p in paths {
            let mut others: Vec<Vec<u8>> = paths.iter().filter(|o| *o != p).cloned().collect();
            others.sort();
            if let Some(s) = out.get_mut(p) {
                s.links = others;
            }
        }
    }
    out
}

/// Assert two trees are identical, naming the first differences.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = describe(expected);
    let b = describe(actual);
    let mut problems = Vec::new();
    for (p, s) in &a {
        match b.get(p) {
            None => problems.push(format!("missing: /{}", display_path(p))),
            Some(t) if t != s => problems.push(format!("differs: /{}\n  want {s:?}\n  got  {t:?}", display_path(p))),
            _ => {}
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            problems.push(format!("unexpected: /{}", display_path(p)));
        }
    }
    assert!(
        problems.is_empty(),
        "{} vs {}: {} differences:\n{}",
        expected.display(),
        actual.display(),
        problems.len(),
        problems.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Copy a tree exactly (content, modes, owners, times, xattrs, links) with cp -a.
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg("--").arg(from).arg(to).status().expect("cp");
    assert!(st.success(), "cp -a {} {} failed", from.display(), to.display());
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A small deterministic pseudo-random generator (tests print their seeds).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }
}

pub fn seed_from_env_or_time() -> u64 {
    std::env::var("N2S_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
    })
}

pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// Apply one random mutation of a kind chosen by `rng`.
pub fn mutate_tree(root: &Path, rng: &mut Rng, step: usize) {
    let files: Vec<_> = files_under(root).into_iter().filter(|p| p.symlink_metadata().unwrap().is_file()).collect();
    let pick = |rng: &mut Rng| files[rng.below(files.len() as u64) as usize].clone();
    match rng.below(12) {
        9 => {
            // Rename a whole directory: its subtree moves implicitly.
            if let Some(d) = std::fs::read_dir(root)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dir-")))
            {
                std::fs::rename(d, root.join(format!("dir-renamed-{step}-{}", rng.next() % 100_000))).unwrap();
            }
        }
        10 if !files.is_empty() && is_root() => {
            let p = pick(rng);
            std::os::unix::fs::chown(p, Some(1000 + rng.below(5) as u32), Some(2000)).unwrap();
        }
        11 if !files.is_empty() => {
            // mtime only: content and size unchanged.
            let p = pick(rng);
            let t = rustix::fs::Timespec { tv_sec: 1_000_000_000 + rng.below(1000) as i64, tv_nsec: 0 };
            let ts = rustix::fs::Timestamps { last_access: t, last_modification: t };
            rustix::fs::utimensat(rustix::fs::CWD, &p, &ts, rustix::fs::AtFlags::empty()).unwrap();
        }
        0 => {
            let n = rng.below(300_000) as usize;
            std::fs::write(root.join(format!("new-{step}-{}", rng.next() % 1000)), rng.bytes(n)).unwrap()
        }
        1 if !files.is_empty() => {
            let p = pick(rng);
            let mut data = std::fs::read(&p).unwrap();
            let at = rng.below(data.len() as u64 + 1) as usize;
            data.splice(at..at, rng.bytes(10));
            std::fs::write(&p, data).unwrap();
        }
        2 if files.len() > 3 => std::fs::remove_file(pick(rng)).unwrap(),
        3 if !files.is_empty() => {
            let p = pick(rng);
            std::fs::rename(&p, root.join(format!("renamed-{step}"))).unwrap();
        }
        4 if !files.is_empty() => {
            std::fs::set_permissions(pick(rng), std::fs::Permissions::from_mode(0o600 | (rng.below(8) as u32) << 3))
                .unwrap()
        }
        5 => {
            let d = root.join(format!("dir-{step}-{}/inner", rng.next() % 100_000));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), rng.bytes(5000)).unwrap();
            symlink("f", d.join("l")).unwrap();
        }
        6 => {
            // Remove a whole directory tree.
            if let Some(d) = std::fs::read_dir(root)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dir-")))
            {
                std::fs::remove_dir_all(d).unwrap();
            }
        }
        7 if !files.is_empty() => {
            let p = pick(rng);
            let _ = std::fs::hard_link(&p, root.join(format!("link-{step}")));
        }
        8 if !files.is_empty() => {
            // Truncate.
            let p = pick(rng);
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(rng.below(100)).unwrap();
        }
        _ => {
            let _ = rustix::fs::lsetxattr(
                root.join("base"),
                "user.step",
                format!("{step}").as_bytes(),
                rustix::fs::XattrFlags::empty(),
            )
            .is_ok();
        }
    }
}

// ---- restore helpers (tests/restore.rs) ----

impl Env {
    /// `n2s-agent restore LABEL --dataset DS --target T` plus `extra`, not run yet.
    pub fn restore_cmd(&self, dataset: &str, label: &str, target: &Path, extra: &[&str]) -> Command {
        let mut c = self.cmd();
        c.args(["restore", label, "--dataset", dataset, "--target"]).arg(target).args(extra);
        c
    }

    /// This test's environment around another program that runs the binary
    /// (`strace ... n2s-agent ARGS`): `prefix` comes first, then BIN.
    pub fn cmd_via(&self, prefix: &[&str]) -> Command {
        let plain = self.cmd();
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(BIN).env_clear();
        for (k, v) in plain.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    }

    /// The repository through the library, on the plain local backend.
    pub fn open_repo(&self) -> n2s_agent::repo::Repository {
        let key = n2s_agent::core::keys::MasterKey::load(&self.key).expect("key");
        let backend: std::sync::Arc<dyn n2s_agent::backend::Backend> =
            std::sync::Arc::new(n2s_agent::backend::local::LocalBackend::new(&self.repo));
        n2s_agent::repo::Repository::open(backend, &key).expect("open repository")
    }
}

/// Restore's temporary files (`.NAME.n2s-partial`) anywhere below `root`.
pub fn partial_files(root: &Path) -> Vec<PathBuf> {
    files_under(root).into_iter().filter(|p| p.as_os_str().as_bytes().ends_with(b".n2s-partial")).collect()
}

/// BLAKE3 of a file's content.
pub fn hash_file(p: &Path) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(p).expect("open for hashing");
    std::io::copy(&mut f, &mut h).expect("read for hashing");
    *h.finalize().as_bytes()
}

/// Whether this test may mount things; when not, a loud skip (a failure in CI).
pub fn can_mount(what: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "CI must run the tests as root: {what} needs it");
    eprintln!("SKIPPED LOUDLY: not root, cannot {what}");
    false
}

/// A tmpfs of `size` (mount's syntax: `4m`) at `at`, unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "n2s-test"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs at {} failed", at.display());
        Tmpfs(at.to_path_buf())
    }

    pub fn resize(&self, size: &str) {
        let st = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().unwrap();
        assert!(st.success(), "remount {} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A run of the binary held at an `N2S_PAUSE` point (races made
/// deterministic): spawned, then waited for until it reaches the point.
pub struct Paused {
    child: std::process::Child,
    go: PathBuf,
}

pub fn run_paused(mut cmd: Command, point: &str, dir: &Path) -> Paused {
    std::fs::create_dir_all(dir).expect("pause dir");
    let reached = dir.join(format!("{point}.reached"));
    let child = cmd
        .env("N2S_PAUSE", point)
        .env("N2S_PAUSE_DIR", dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn n2s-agent");
    let t0 = std::time::Instant::now();
    while !reached.exists() {
        assert!(t0.elapsed().as_secs() < 120, "n2s-agent never reached {point}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Gone, so that the next run paused at the same point is seen too.
    std::fs::remove_file(&reached).expect("remove the pause marker");
    Paused { child, go: dir.join(format!("{point}.go")) }
}

impl Paused {
    /// Let it (and every other run held at the same point) go on; its output.
    pub fn release(self) -> Output {
        std::fs::write(&self.go, b"").expect("release");
        self.child.wait_with_output().expect("wait for n2s-agent")
    }
}

/// Whether the Debian tool at `path` is installed; when not, a loud skip
/// (a failure in CI, where scripts/setup installs it).
pub fn have_tool(path: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "CI must provide {path}: scripts/setup installs it");
    eprintln!("!!!!!!!! SKIPPED LOUDLY: {path} is not installed: run scripts/setup !!!!!!!!");
    false
}
