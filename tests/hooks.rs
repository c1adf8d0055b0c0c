//! The snapshot-tool hooks in scripts/hooks, run the way sanoid and
//! zfs-auto-snapshot run them, against a stand-in n2s-agent that records
//! how it was called.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

fn hook(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/hooks").join(name)
}

/// A fake n2s-agent that appends its arguments to `calls`.
fn fake_agent(env: &Env) -> (PathBuf, PathBuf) {
    let calls = env.path("calls");
    let fake = env.path("fake-n2s-agent");
    std::fs::write(&fake, format!("#!/bin/sh\necho \"$*\" >> '{}'\n", calls.display())).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    (fake, calls)
}

fn calls(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn sanoid_post_snapshot_backs_up_every_target() {
    let env = Env::new();
    let (fake, log) = fake_agent(&env);
    let out = Command::new(hook("sanoid-post-snapshot"))
        .env("N2S_AGENT", &fake)
        .env("N2S_HOOK_WAIT", "1")
        .env("SANOID_SCRIPT", "post")
        .env("SANOID_PRE_FAILURE", "0")
        .env("SANOID_TARGETS", "tank/home,tank/srv")
        .env("SANOID_SNAPNAMES", "autosnap_2026-11-22_06:00:00_hourly")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(calls(&log), vec!["backup --dataset tank/home", "backup --dataset tank/srv"]);

    // A failed pre-snapshot script: nothing is started.
    std::fs::remove_file(&log).unwrap();
    let out = Command::new(hook("sanoid-post-snapshot"))
        .env("N2S_AGENT", &fake)
        .env("N2S_HOOK_WAIT", "1")
        .env("SANOID_PRE_FAILURE", "1")
        .env("SANOID_TARGETS", "tank/home")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(calls(&log).is_empty());

    // Run by hand without sanoid's environment: a clear usage error.
    let out = Command::new(hook("sanoid-post-snapshot"))
        .env("N2S_AGENT", &fake)
        .env_remove("SANOID_TARGETS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("SANOID_TARGETS"));
}

#[test]
fn zfs_auto_snapshot_post_backs_up_its_dataset_without_waiting() {
    let env = Env::new();
    let (fake, log) = fake_agent(&env);
    // Detached (no N2S_HOOK_WAIT, and no systemd here): the hook returns at
    // once and the backup still happens.
    let out = Command::new(hook("zfs-auto-snapshot-post"))
        .arg("tank/data")
        .arg("zfs-auto-snap_hourly-2026-11-22-0600")
        .env("N2S_AGENT", &fake)
        .env("N2S_HOOK_LOG", env.path("hook.log"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while calls(&log).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(calls(&log), vec!["backup --dataset tank/data"]);
    let out = Command::new(hook("zfs-auto-snapshot-post")).env("N2S_AGENT", &fake).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// scripts/install into a DESTDIR: a stripped binary that runs, the units,
/// the hooks, a 0600 config and 0700 directories; a second install keeps
/// the edited config; --uninstall removes what install put there but keeps
/// the config and the state (the key lives there).
#[test]
fn install_and_uninstall_into_a_destdir() {
    let env = Env::new();
    let root = env.path("root");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install");
    let run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .env("DESTDIR", &root)
            .env("N2S_AGENT_BIN", bin())
            .output()
            .unwrap();
        assert!(out.status.success(), "install {args:?}: {}", stderr(&out));
    };
    run(&[]);
    let installed = root.join("usr/local/bin/n2s-agent");
    let v = Command::new(&installed).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("n2s-agent "), "{v:?}");
    let sections = Command::new("readelf").arg("-S").arg(&installed).output();
    if let Ok(s) = sections {
        assert!(!String::from_utf8_lossy(&s.stdout).contains(".debug_info"), "the installed binary is not stripped");
    }
    for f in [
        "etc/systemd/system/n2s-agent.service",
        "etc/systemd/system/n2s-agent.timer",
        "usr/local/lib/n2s-agent/sanoid-post-snapshot",
        "usr/local/share/man/man1/n2s-agent.1.gz",
        "usr/local/share/man/man1/n2s-agent-backup.1.gz",
        "usr/local/share/bash-completion/completions/n2s-agent",
        "usr/local/share/zsh/vendor-completions/_n2s-agent",
        "usr/local/share/fish/vendor_completions.d/n2s-agent.fish",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }
    let page = Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/local/share/man/man1/n2s-agent-backup.1.gz"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&page.stdout).contains(".TH n2s-agent-backup"), "not a man page: {page:?}");
    let bash = std::fs::read_to_string(root.join("usr/local/share/bash-completion/completions/n2s-agent")).unwrap();
    assert!(bash.contains("complete") && bash.contains("restore"), "{bash}");
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/n2s-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/n2s-agent"), "{unit}");
    let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode("etc/n2s/agent.toml"), mode("etc/n2s"), mode("var/lib/n2s")), (0o600, 0o700, 0o700));
    std::fs::write(root.join("etc/n2s/agent.toml"), "repo = \"/srv/mine\"\n").unwrap();
    run(&[]);
    assert_eq!(std::fs::read_to_string(root.join("etc/n2s/agent.toml")).unwrap(), "repo = \"/srv/mine\"\n");
    run(&["--uninstall"]);
    assert!(!installed.exists() && !root.join("etc/systemd/system/n2s-agent.service").exists());
    assert!(!root.join("etc/systemd/system/n2s-agent@.service").exists());
    assert!(!root.join("usr/local/lib/n2s-agent").exists());
    assert!(!root.join("usr/local/share/man/man1/n2s-agent.1.gz").exists(), "man pages are removed");
    assert!(!root.join("usr/local/share/bash-completion/completions/n2s-agent").exists(), "completions are removed");
    assert!(root.join("etc/n2s/agent.toml").exists() && root.join("var/lib/n2s").is_dir(), "config and state are kept");
}

/// The hooks' template unit runs with the timer's hardening: its [Service]
/// section is the service's, line for line, but for ExecStart, which names
/// the instance's dataset.
#[test]
fn the_hooks_unit_is_hardened_like_the_service() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let service_lines = |name: &str| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let section = text.split("\n[Service]\n").nth(1).unwrap_or_else(|| panic!("{name} has no [Service]"));
        section
            .lines()
            .take_while(|l| !l.starts_with('['))
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("ExecStart="))
            .map(str::to_string)
            .collect()
    };
    let (service, template) = (service_lines("n2s-agent.service"), service_lines("n2s-agent@.service"));
    assert!(service.iter().any(|l| l.starts_with("ProtectSystem=")), "{service:?}");
    assert_eq!(service, template, "n2s-agent@.service's [Service] differs from n2s-agent.service's");
    let t = std::fs::read_to_string(dir.join("n2s-agent@.service")).unwrap();
    assert!(t.contains("ExecStart=/usr/local/bin/n2s-agent backup --dataset %I"), "{t}");
}
