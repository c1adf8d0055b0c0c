//! The Debian package of scripts/build-deb, built from this test build's
//! binary: what it holds (paths, modes, owners, control fields, maintainer
//! scripts), and its whole life in a clean Debian chroot made by debootstrap
//! (minbase of the host's suite): install, a first backup set up by hand,
//! an upgrade that keeps the admin's config, remove, and a purge that keeps
//! the key and the catalogs.
//!
//! The chroot is cached as a tarball in the scratch root (/var/tmp), built
//! once under a lock, and extracted per test (a second). The install test
//! mounts nothing in it: dpkg and the agent need neither /proc nor more of
//! /dev than debootstrap makes. The "day one" test adds btrbk from the
//! mirror (cached too), a loop-device btrfs, and runs the packaged btrbk
//! wrapper in a mount namespace rooted at the chroot. Without root,
//! debootstrap or a reachable Debian mirror these tests are skipped loudly,
//! and fail under CI=true.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/build-deb")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o))
}

/// Runs `cmd` and insists on success; its stdout and stderr.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed with {:?}:\n{}", out.status, text(&out));
    text(&out)
}

/// The .deb scripts/build-deb makes of this build's binary in `out`.
/// `compression` is dpkg-deb's -Z (none is the fastest).
fn build_deb(out: &Path, version: Option<&str>, compression: &str) -> PathBuf {
    let mut c = Command::new("bash");
    c.arg(script()).arg("--bin").arg(bin()).arg("--out").arg(out).args(["--compression", compression]);
    if let Some(v) = version {
        c.args(["--version", v]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "build-deb failed:\n{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default());
    assert!(deb.is_file() && deb.starts_with(out), "build-deb printed {stdout:?}, not the .deb in {}", out.display());
    deb
}

fn field(deb: &Path, name: &str) -> String {
    ok(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name)).trim().to_string()
}

#[test]
fn the_package_holds_the_agent_units_hooks_docs_and_a_private_config() {
    if !have_tool("/usr/bin/dpkg-deb") {
        return;
    }
    let env = Env::new();
    let deb = build_deb(&env.path("out"), None, "gzip");
    let arch = ok(Command::new("dpkg").arg("--print-architecture")).trim().to_string();
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("n2s-agent_{}_{arch}.deb", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(field(&deb, "Package"), "n2s-agent");
    assert_eq!(field(&deb, "Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field(&deb, "Architecture"), arch);
    assert_eq!((field(&deb, "Section"), field(&deb, "Priority")), ("admin".into(), "optional".into()));
    assert!(field(&deb, "Maintainer").contains('@'));
    let size: u64 = field(&deb, "Installed-Size").parse().unwrap();
    assert!(size > 1000, "Installed-Size {size} KiB");
    // Depends as dpkg-shlibdeps writes it: every linked library's package, versioned.
    let depends = field(&deb, "Depends");
    let deps: Vec<&str> = depends.split(", ").collect();
    assert!(deps.iter().any(|d| d.starts_with("libc6 (>= ")), "{depends}");
    assert!(deps.iter().all(|d| d.contains(" (>= ") && d.ends_with(')')), "unversioned: {depends}");
    assert_eq!(field(&deb, "Recommends"), "btrfs-progs, openssh-client");
    assert_eq!(field(&deb, "Suggests"), "zfsutils-linux, rclone, snapper, btrbk");

    // Every path with its mode and owner, as dpkg will create it.
    let listing = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let mut entries = BTreeMap::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols.len() >= 6, "{line}");
        let path = cols[5].trim_start_matches('.').trim_end_matches('/').to_string();
        entries.insert(path, (cols[0].to_string(), cols[1].to_string()));
    }
    let mode =
        |p: &str| entries.get(p).map(|e| e.0.as_str()).unwrap_or_else(|| panic!("{p} not in the package:\n{listing}"));
    assert!(entries.values().all(|(_, owner)| owner == "root/root"), "{listing}");
    assert!(!entries.keys().any(|p| p.starts_with("/usr/local") || p.starts_with("/etc/systemd")), "{listing}");
    assert_eq!(mode("/usr/bin/n2s-agent"), "-rwxr-xr-x");
    for unit in ["n2s-agent.service", "n2s-agent@.service", "n2s-agent.timer", "n2s-agent-watch.service"] {
        assert_eq!(mode(&format!("/lib/systemd/system/{unit}")), "-rw-r--r--");
    }
    for hook in ["sanoid-post-snapshot", "zfs-auto-snapshot-post"] {
        assert_eq!(mode(&format!("/usr/lib/n2s-agent/{hook}")), "-rwxr-xr-x");
    }
    mode("/usr/lib/n2s-agent/n2s-hook-lib");
    let pages =
        entries.keys().filter(|p| p.starts_with("/usr/share/man/man1/n2s-agent") && p.ends_with(".1.gz")).count();
    assert!(pages >= 10, "{pages} man pages:\n{listing}");
    mode("/usr/share/man/man1/n2s-agent.1.gz");
    mode("/usr/share/man/man1/n2s-agent-backup.1.gz");
    mode("/usr/share/bash-completion/completions/n2s-agent");
    mode("/usr/share/zsh/vendor-completions/_n2s-agent");
    mode("/usr/share/fish/vendor_completions.d/n2s-agent.fish");
    mode("/usr/share/doc/n2s-agent/copyright");
    mode("/usr/share/doc/n2s-agent/changelog.gz");
    mode("/usr/share/lintian/overrides/n2s-agent");
    assert_eq!((mode("/etc/n2s"), mode("/etc/n2s/agent.toml")), ("drwx------", "-rw-------"));
    assert_eq!(mode("/var/lib/n2s"), "drwx------");
    assert!(!entries.contains_key("/etc/n2s/key"), "a package never ships a key");

    // The maintainer scripts: the config is a conffile; nothing enables or
    // starts a unit, nothing deletes the key or the state.
    let control = env.path("control");
    ok(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
    assert_eq!(std::fs::read_to_string(control.join("conffiles")).unwrap(), "/etc/n2s/agent.toml\n");
    let sums = std::fs::read_to_string(control.join("md5sums")).unwrap();
    assert!(sums.lines().any(|l| l.ends_with("  usr/bin/n2s-agent")) && !sums.contains("etc/n2s/agent.toml"), "{sums}");
    for s in ["postinst", "prerm", "postrm"] {
        let body = std::fs::read_to_string(control.join(s)).unwrap();
        assert!(body.starts_with("#!/bin/sh\nset -e\n"), "{s}:\n{body}");
        assert_eq!(std::fs::metadata(control.join(s)).unwrap().permissions().mode() & 0o777, 0o755);
        ok(Command::new("sh").arg("-n").arg(control.join(s)));
        for line in body.lines().map(str::trim) {
            assert!(
                !(line.starts_with("systemctl enable")
                    || line.starts_with("systemctl start")
                    || line.contains("rm -r")),
                "{s} must not: {line}"
            );
        }
    }

    // The units name the binary where the package puts it.
    let tree = env.path("tree");
    ok(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&tree));
    let unit = std::fs::read_to_string(tree.join("lib/systemd/system/n2s-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/n2s-agent backup"), "{unit}");
    let hooks = std::fs::read_to_string(tree.join("lib/systemd/system/n2s-agent@.service")).unwrap();
    assert!(
        hooks.contains("ExecStart=/usr/bin/n2s-agent backup --dataset %I") && !hooks.contains("/usr/local"),
        "{hooks}"
    );
    let v = ok(Command::new(tree.join("usr/bin/n2s-agent")).arg("--version"));
    assert!(v.starts_with(&format!("n2s-agent {}", env!("CARGO_PKG_VERSION"))), "{v}");
    if let Ok(s) = Command::new("readelf").arg("-S").arg(tree.join("usr/bin/n2s-agent")).output() {
        assert!(!String::from_utf8_lossy(&s.stdout).contains(".debug_info"), "the packaged binary is not stripped");
    }
}

/// The host's Debian suite (bookworm...).
fn suite() -> String {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename =
        os.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).map(|v| v.trim_matches('"').to_string());
    codename.filter(|c| !c.is_empty()).expect("no VERSION_CODENAME in /etc/os-release: not Debian?")
}

/// The Debian mirror apt uses here: the first non-security .../debian URI
/// of its sources (N2S_DEBIAN_MIRROR overrides).
fn mirror() -> String {
    if let Ok(m) = std::env::var("N2S_DEBIAN_MIRROR") {
        return m;
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more.into_iter().filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources")));
    }
    for f in files {
        let Ok(body) = std::fs::read_to_string(&f) else { continue };
        for line in body.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let uris = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect::<Vec<_>>()
            } else if line.starts_with("deb ") {
                line.split_whitespace().filter(|w| w.contains("://")).collect()
            } else {
                continue;
            };
            if let Some(u) =
                uris.into_iter().find(|u| u.trim_end_matches('/').ends_with("/debian") && !u.contains("security"))
            {
                return u.trim_end_matches('/').to_string();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// Unmounts (lazily, deepest first) whatever is mounted at or below `root`,
/// so that removing it can never reach into a mounted file system.
fn unmount_under(root: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| Path::new(p).starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

/// A directory removed on drop, after anything mounted below it is unmounted.
struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    fn new(prefix: &str) -> Scratch {
        Scratch(Some(tempfile::Builder::new().prefix(prefix).tempdir_in(scratch_root()).unwrap()))
    }
    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_under(self.path());
        drop(self.0.take());
    }
}

/// The cached minbase tarball of the host's suite, made by debootstrap the
/// first time (under a lock: parallel tests and test binaries wait for one
/// build). None, said loudly, when it cannot be made outside CI.
fn minbase_tarball() -> Option<PathBuf> {
    let suite = suite();
    let tar = scratch_root().join(format!("n2s-debootstrap-{suite}.tar"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(scratch_root().join(format!("n2s-debootstrap-{suite}.lock")))
        .unwrap();
    // SAFETY: flock on a descriptor we own; the lock goes with the file.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0, "flock");
    if tar.is_file() {
        return Some(tar);
    }
    let mirror = mirror();
    let build = Scratch::new("n2s-debootstrap-build-");
    let t0 = std::time::Instant::now();
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &suite])
        .arg(build.path().join("root"))
        .arg(&mirror)
        .output()
        .expect("run debootstrap");
    if !out.status.success() {
        let log = text(&out);
        let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        assert!(
            std::env::var("CI").is_err(),
            "CI must be able to debootstrap {suite} from {mirror}:\n{}",
            tail.join("\n")
        );
        eprintln!(
            "!!!!!!!! SKIPPED LOUDLY: debootstrap {suite} from {mirror} failed (no network?):\n{}",
            tail.join("\n")
        );
        return None;
    }
    let tmp = tar.with_extension("tar.tmp");
    ok(Command::new("tar")
        .arg("-C")
        .arg(build.path().join("root"))
        .args(["--numeric-owner", "-cf"])
        .arg(&tmp)
        .arg("."));
    std::fs::rename(&tmp, &tar).unwrap();
    eprintln!("debootstrap --variant=minbase {suite} {mirror}: {:.0?}, cached as {}", t0.elapsed(), tar.display());
    Some(tar)
}

/// Runs a command inside the chroot, with a clean environment.
fn chroot(root: &Path, args: &[&str]) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn chroot_ok(root: &Path, args: &[&str]) -> String {
    let out = chroot(root, args);
    assert!(out.status.success(), "in the chroot, {args:?} failed with {:?}:\n{}", out.status, text(&out));
    text(&out)
}

#[test]
fn installs_upgrades_and_purges_in_a_clean_debootstrap_chroot() {
    if !is_root() {
        assert!(std::env::var("CI").is_err(), "CI must run the tests as root: chroot and debootstrap need it");
        eprintln!("!!!!!!!! SKIPPED LOUDLY: not root, cannot chroot !!!!!!!!");
        return;
    }
    if !have_tool("/usr/bin/dpkg-deb") || !have_tool("/usr/sbin/debootstrap") || !have_tool("/usr/sbin/chroot") {
        return;
    }
    let Some(tar) = minbase_tarball() else { return };
    let env = Env::new();
    let v1 = env!("CARGO_PKG_VERSION").to_string();
    let v2 = format!("{v1}+test1");
    let deb1 = build_deb(&env.path("v1"), None, "none");
    let deb2 = build_deb(&env.path("v2"), Some(&v2), "none");

    let scratch = Scratch::new("n2s-chroot-");
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let t0 = std::time::Instant::now();
    ok(Command::new("tar").arg("-C").arg(&root).args(["--numeric-owner", "-xpf"]).arg(&tar));
    eprintln!("extracted the chroot in {:.1?}", t0.elapsed());
    assert!(!root.join("usr/bin/n2s-agent").exists() && root.join("var/lib/dpkg/status").is_file());
    std::fs::copy(&deb1, root.join("tmp/n2s-agent.deb")).unwrap();

    // Install: Depends is met by minbase alone (no network in here).
    let out = chroot_ok(&root, &["dpkg", "-i", "/tmp/n2s-agent.deb"]);
    assert!(out.contains("timer is NOT enabled") && out.contains("systemctl enable --now n2s-agent.timer"), "{out}");
    let v = chroot_ok(&root, &["n2s-agent", "--version"]);
    assert!(v.starts_with(&format!("n2s-agent {v1}")), "{v}");
    assert_eq!(
        chroot_ok(&root, &["dpkg-query", "-W", "-f=${Status} ${Version}", "n2s-agent"]),
        format!("install ok installed {v1}")
    );
    let files = chroot_ok(&root, &["dpkg", "-L", "n2s-agent"]);
    for f in [
        "/usr/bin/n2s-agent",
        "/lib/systemd/system/n2s-agent.timer",
        "/lib/systemd/system/n2s-agent-watch.service",
        "/usr/lib/n2s-agent/sanoid-post-snapshot",
        "/usr/share/man/man1/n2s-agent.1.gz",
        "/usr/share/man/man1/n2s-agent-restore.1.gz",
        "/usr/share/bash-completion/completions/n2s-agent",
        "/usr/share/zsh/vendor-completions/_n2s-agent",
        "/usr/share/fish/vendor_completions.d/n2s-agent.fish",
        "/etc/n2s/agent.toml",
    ] {
        assert!(files.lines().any(|l| l == f), "dpkg -L lacks {f}:\n{files}");
    }
    let verify = chroot_ok(&root, &["dpkg", "--verify", "n2s-agent"]);
    assert_eq!(verify, "", "dpkg --verify (md5sums)");
    assert!(!root.join("etc/systemd/system/timers.target.wants/n2s-agent.timer").exists(), "the timer was enabled");
    let modes = chroot_ok(&root, &["stat", "-c", "%a %U %n", "/var/lib/n2s", "/etc/n2s", "/etc/n2s/agent.toml"]);
    assert_eq!(modes, "700 root /var/lib/n2s\n700 root /etc/n2s\n600 root /etc/n2s/agent.toml\n");

    // Set up as the postinst says: the config, init, config check, a backup.
    std::fs::create_dir_all(root.join("srv/data/sub")).unwrap();
    std::fs::write(root.join("srv/data/sub/file"), b"backed up from a packaged agent\n").unwrap();
    let config = "repo = \"file:///srv/n2s-repo\"\nkey_file = \"/etc/n2s/key\"\nstate_dir = \"/var/lib/n2s\"\n\n\
                  [[dataset]]\nname = \"data\"\nsource = \"walk\"\npath = \"/srv/data\"\n";
    std::fs::write(root.join("etc/n2s/agent.toml"), config).unwrap();
    chroot_ok(&root, &["n2s-agent", "init"]);
    let check = chroot_ok(&root, &["n2s-agent", "config", "check"]);
    assert!(check.lines().all(|l| l.starts_with("ok   ")), "{check}");
    assert!(
        check.contains("config file /etc/n2s/agent.toml") && check.contains("dataset data: walk of /srv/data"),
        "{check}"
    );
    chroot_ok(&root, &["n2s-agent", "backup"]);
    let key = std::fs::read(root.join("etc/n2s/key")).unwrap();
    assert_eq!(chroot_ok(&root, &["stat", "-c", "%a", "/etc/n2s/key"]), "600\n");
    let state_entries = || std::fs::read_dir(root.join("var/lib/n2s")).unwrap().count();
    assert!(state_entries() > 0, "the backup left no catalog in /var/lib/n2s");

    // Upgrade to a package whose own agent.toml changed: the admin's edited
    // one stays (--force-confold), the new one lands beside it.
    let raw = env.path("v2-raw");
    ok(Command::new("dpkg-deb").arg("--raw-extract").arg(&deb2).arg(&raw));
    let mut upstream = std::fs::read_to_string(raw.join("etc/n2s/agent.toml")).unwrap();
    upstream.push_str("# a setting added upstream in the new version\n");
    std::fs::write(raw.join("etc/n2s/agent.toml"), &upstream).unwrap();
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Znone", "--build"])
        .arg(&raw)
        .arg(root.join("tmp/n2s-agent.deb")));
    let out = chroot_ok(&root, &["dpkg", "-i", "--force-confold", "/tmp/n2s-agent.deb"]);
    assert!(!out.contains("timer is NOT enabled"), "an upgrade repeats the first-install message:\n{out}");
    assert_eq!(chroot_ok(&root, &["dpkg-query", "-W", "-f=${Version}", "n2s-agent"]), v2);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/n2s/agent.toml")).unwrap(),
        config,
        "the upgrade replaced the config"
    );
    assert_eq!(std::fs::read_to_string(root.join("etc/n2s/agent.toml.dpkg-dist")).unwrap(), upstream);
    let modes = chroot_ok(&root, &["stat", "-c", "%a", "/var/lib/n2s", "/etc/n2s", "/etc/n2s/agent.toml"]);
    assert_eq!(modes, "700\n700\n600\n");
    let check = chroot_ok(&root, &["n2s-agent", "config", "check"]);
    assert!(check.contains("the key opens it"), "{check}");

    // Remove: the program goes, the config stays.
    chroot_ok(&root, &["dpkg", "--remove", "n2s-agent"]);
    assert!(!root.join("usr/bin/n2s-agent").exists() && !root.join("lib/systemd/system/n2s-agent.service").exists());
    assert!(!root.join("usr/share/man/man1/n2s-agent.1.gz").exists() && !root.join("usr/lib/n2s-agent").exists());
    assert_eq!(std::fs::read_to_string(root.join("etc/n2s/agent.toml")).unwrap(), config);

    // Purge: dpkg deletes the config; the key and the catalogs stay, and
    // the purge says so.
    let out = chroot_ok(&root, &["dpkg", "--purge", "n2s-agent"]);
    assert!(out.contains("kept /etc/n2s /var/lib/n2s"), "{out}");
    assert!(!root.join("etc/n2s/agent.toml").exists() && !root.join("etc/n2s/agent.toml.dpkg-dist").exists());
    assert_eq!(std::fs::read(root.join("etc/n2s/key")).unwrap(), key, "the purge touched the key");
    assert!(state_entries() > 0, "the purge emptied /var/lib/n2s");
    assert_eq!(chroot_ok(&root, &["stat", "-c", "%a", "/etc/n2s", "/etc/n2s/key", "/var/lib/n2s"]), "700\n600\n700\n");
    let status = chroot(&root, &["dpkg-query", "-W", "-f=${Status}", "n2s-agent"]);
    assert!(!String::from_utf8_lossy(&status.stdout).contains("ok installed"), "{}", text(&status));

    // A reinstall finds the kept key: the repository opens again.
    std::fs::copy(&deb1, root.join("tmp/n2s-agent.deb")).unwrap();
    chroot_ok(&root, &["dpkg", "-i", "/tmp/n2s-agent.deb"]);
    std::fs::write(root.join("etc/n2s/agent.toml"), config).unwrap();
    let check = chroot_ok(&root, &["n2s-agent", "config", "check"]);
    assert!(check.contains("the key opens it"), "{check}");
}

/// The minbase tarball with btrbk (and btrfs-progs) installed from the
/// mirror by apt inside the chroot, cached beside it under the same kind of
/// lock.
fn btrbk_tarball() -> Option<PathBuf> {
    let base = minbase_tarball()?;
    let tar = scratch_root().join(format!("n2s-debootstrap-{}-btrbk.tar", suite()));
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(tar.with_extension("lock")).unwrap();
    // SAFETY: flock on a descriptor we own; the lock goes with the file.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0, "flock");
    if tar.is_file() {
        return Some(tar);
    }
    let build = Scratch::new("n2s-debootstrap-btrbk-");
    let root = build.path().join("root");
    std::fs::create_dir(&root).unwrap();
    ok(Command::new("tar").arg("-C").arg(&root).args(["--numeric-owner", "-xpf"]).arg(&base));
    if let Ok(r) = std::fs::read("/etc/resolv.conf") {
        std::fs::write(root.join("etc/resolv.conf"), r).unwrap();
    }
    let t0 = std::time::Instant::now();
    let mut out = chroot(&root, &["apt-get", "update", "-q"]);
    if out.status.success() {
        out = chroot(
            &root,
            &["apt-get", "install", "-y", "-q", "--no-install-recommends", "btrbk", "btrfs-progs", "util-linux"],
        );
    }
    if !out.status.success() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must be able to apt-get install btrbk in the chroot:\n{}",
            text(&out)
        );
        eprintln!("!!!!!!!! SKIPPED LOUDLY: apt-get install btrbk in the chroot failed:\n{}", text(&out));
        return None;
    }
    chroot_ok(&root, &["apt-get", "clean"]);
    let tmp = tar.with_extension("tar.tmp");
    ok(Command::new("tar").arg("-C").arg(&root).args(["--numeric-owner", "-cf"]).arg(&tmp).arg("."));
    std::fs::rename(&tmp, &tar).unwrap();
    eprintln!("btrbk in the chroot: {:.0?}, cached as {}", t0.elapsed(), tar.display());
    Some(tar)
}

/// Issue 11, "done means": a fresh Debian (a debootstrap chroot with btrbk
/// from the mirror) installs the .deb, `config check` passes, btrbk takes a
/// snapshot through the packaged n2s-btrbk wrapper, and that snapshot is
/// backed up, logged with journal priorities, and counted in the metrics
/// file; it then restores identical to itself.
#[test]
fn day_one_a_btrbk_snapshot_is_backed_up_logged_and_counted() {
    if !is_root() {
        assert!(std::env::var("CI").is_err(), "CI must run the tests as root: chroot and loop devices need it");
        eprintln!("!!!!!!!! SKIPPED LOUDLY: not root !!!!!!!!");
        return;
    }
    if !have_tool("/usr/bin/dpkg-deb") || !have_tool("/usr/sbin/debootstrap") || !have_tool("/usr/sbin/mkfs.btrfs") {
        return;
    }
    let Some(tar) = btrbk_tarball() else { return };
    let env = Env::new();
    let deb = build_deb(&env.path("deb"), None, "none");
    let scratch = Scratch::new("n2s-dayone-");
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).unwrap();
    ok(Command::new("tar").arg("-C").arg(&root).args(["--numeric-owner", "-xpf"]).arg(&tar));
    std::fs::copy(&deb, root.join("tmp/n2s-agent.deb")).unwrap();
    chroot_ok(&root, &["dpkg", "-i", "/tmp/n2s-agent.deb"]);

    // A real btrfs on a loop device, mounted inside the chroot (Scratch
    // unmounts it, even on failure).
    let img = scratch.path().join("pool.img");
    std::fs::File::create(&img).unwrap().set_len(512 << 20).unwrap();
    ok(Command::new("mkfs.btrfs").arg("-q").arg(&img));
    let pool = root.join("mnt/pool");
    std::fs::create_dir_all(&pool).unwrap();
    let mounted = Command::new("mount").arg("-o").arg("loop").arg(&img).arg(&pool).output().unwrap();
    if !mounted.status.success() {
        assert!(std::env::var("CI").is_err(), "CI must mount loop devices: {}", text(&mounted));
        eprintln!("!!!!!!!! SKIPPED LOUDLY: cannot mount a loop device: {}", text(&mounted));
        return;
    }
    ok(Command::new("btrfs").args(["subvolume", "create"]).arg(pool.join("home")));
    std::fs::create_dir(pool.join("snaps")).unwrap();
    std::fs::create_dir_all(pool.join("home/alice")).unwrap();
    std::fs::write(pool.join("home/alice/notes.txt"), "day one\n").unwrap();
    std::fs::write(pool.join("home/alice/blob"), Rng(7).bytes(200_000)).unwrap();

    std::fs::write(
        root.join("etc/n2s/agent.toml"),
        "repo = \"file:///srv/n2s-repo\"\nkey_file = \"/etc/n2s/key\"\nmetrics_file = \"/var/lib/n2s/n2s.prom\"\n\
         [[dataset]]\nname = \"home\"\nsource = \"btrfs\"\npath = \"/mnt/pool/home\"\nsnapshot_dir = \"/mnt/pool/snaps\"\n",
    )
    .unwrap();
    chroot_ok(&root, &["n2s-agent", "init"]);
    let check = chroot_ok(&root, &["n2s-agent", "config", "check"]);
    assert!(!check.contains("FAIL"), "{check}");
    std::fs::create_dir_all(root.join("etc/btrbk")).unwrap();
    std::fs::write(
        root.join("etc/btrbk/btrbk.conf"),
        "timestamp_format long\nsnapshot_preserve_min all\n\nvolume /mnt/pool\n  snapshot_dir snaps\n  subvolume home\n",
    )
    .unwrap();

    // The wrapper as the btrbk.service drop-in runs it, its stderr a file
    // that JOURNAL_STREAM names, as systemd sets it for a unit's stderr.
    let log = scratch.path().join("journal-stream");
    let log_file = std::fs::File::create(&log).unwrap();
    let meta = log_file.metadata().unwrap();
    let stream =
        format!("{}:{}", std::os::unix::fs::MetadataExt::dev(&meta), std::os::unix::fs::MetadataExt::ino(&meta));
    // btrbk reads /proc/self/mountinfo and refuses a chroot's view of the
    // host's mounts: the wrapper runs in a mount namespace whose root is
    // the chroot itself (pivot_root), as it would on a machine of its own.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--fork", "--", "sh", "-ec"])
        .arg(
            "R=$1; shift; mount --rbind \"$R\" \"$R\"; cd \"$R\"; mkdir -p .oldroot; pivot_root . .oldroot; \
             cd /; mount -t proc proc /proc; umount -l /.oldroot; rmdir /.oldroot; exec \"$@\"",
        )
        .arg("sh")
        .arg(&root)
        .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "N2S_HOOK_WAIT=1"])
        .arg(format!("JOURNAL_STREAM={stream}"))
        .args(["/usr/lib/n2s-agent/n2s-btrbk", "-q", "run"])
        .stdin(std::process::Stdio::null())
        .stderr(log_file)
        .output()
        .unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        out.status.success(),
        "n2s-btrbk run: {:?}\n{}\n{logged}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );

    // Backed up: the snapshot btrbk made is the dataset's changeset 1.
    let snaps: Vec<String> =
        std::fs::read_dir(pool.join("snaps")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let list = chroot_ok(&root, &["n2s-agent", "list", "--dataset", "home", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let changesets = list["changesets"].as_array().unwrap();
    assert_eq!(changesets.len(), 1, "{list}");
    assert_eq!(changesets[0]["snapshot"], snaps[0].as_str());
    assert_eq!(changesets[0]["status"], "complete");
    // Logged for the journal: every agent line carries its priority.
    let agent_lines: Vec<&str> = logged.lines().filter(|l| l.contains("home")).collect();
    assert!(!agent_lines.is_empty(), "nothing logged: {logged}");
    for l in logged.lines().filter(|l| !l.is_empty()) {
        assert!(
            l.len() > 3 && l.starts_with('<') && l.as_bytes()[1].is_ascii_digit() && &l[2..3] == ">",
            "a line without a journal priority: {l:?}\n{logged}"
        );
    }
    // Counted: the metrics file names the run.
    let prom = std::fs::read_to_string(root.join("var/lib/n2s/n2s.prom")).unwrap();
    assert!(prom.contains("n2s_backup_last_run_success{dataset=\"home\"} 1"), "{prom}");
    assert!(prom.contains("n2s_backup_changesets{dataset=\"home\"} 1"), "{prom}");
    // And it restores.
    chroot_ok(&root, &["n2s-agent", "restore", "latest", "--dataset", "home", "--target", "/tmp/restored"]);
    assert_same_tree(&pool.join("snaps").join(&snaps[0]), &root.join("tmp/restored"));
}
