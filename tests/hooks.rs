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

/// The snapper plugin finds the config of the subvolume snapper names and
/// backs up the dataset its N2S_DATASET line names; other configs, other
/// actions, snapper 0.11's `:pre` and non-btrfs configs start nothing.
#[test]
fn snapper_plugin_backs_up_the_dataset_its_config_names() {
    let env = Env::new();
    let (fake, log) = fake_agent(&env);
    let configs = env.path("configs");
    std::fs::create_dir(&configs).unwrap();
    std::fs::write(
        configs.join("srv"),
        "# subvolume to snapshot\nSUBVOLUME=\"/srv/\"\nFSTYPE=\"btrfs\"\n  N2S_DATASET=\"srv \\\"data\\\"\"\n",
    )
    .unwrap();
    std::fs::write(configs.join("home"), "SUBVOLUME=\"/home\"\nFSTYPE=\"btrfs\"\n#N2S_DATASET=\"home\"\n").unwrap();
    let plugin = |args: &[&str]| {
        Command::new(hook("snapper-plugin"))
            .args(args)
            .env("N2S_AGENT", &fake)
            .env("N2S_HOOK_WAIT", "1")
            .env("N2S_SNAPPER_CONFIGS", &configs)
            .output()
            .unwrap()
    };
    for args in [
        &["create-snapshot", "/srv", "btrfs", "7"][..],
        &["create-snapshot:post", "/srv", "btrfs", "8"],
        &["create-snapshot:pre", "/srv", "btrfs", "9"],
        &["delete-snapshot", "/srv", "btrfs", "7"],
        &["create-config", "/srv", "btrfs"],
        &["create-snapshot", "/home", "btrfs", "3"],
        &["create-snapshot", "/elsewhere", "btrfs", "1"],
    ] {
        let out = plugin(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(calls(&log), vec!["backup --dataset srv \"data\"", "backup --dataset srv \"data\""]);
    std::fs::remove_file(&log).unwrap();
    let out = plugin(&["create-snapshot", "/srv", "ext4", "10"]);
    assert!(out.status.success() && stderr(&out).contains("btrfs"), "{}", stderr(&out));
    assert!(calls(&log).is_empty());
    let out = plugin(&["create-snapshot", "/srv"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(plugin(&[]).status.code(), Some(2));
}

/// n2s-btrbk reads btrbk's raw transaction lines (a stand-in btrbk prints
/// them here; tests/snapshot_tools.rs runs the real one): a successful
/// local snapshot starts its dataset's backup (mapped, or by snapshot_name),
/// dry runs, deletes, remote sources and "-" mappings start nothing, and
/// btrbk's failure is the exit status after the backups.
#[test]
fn n2s_btrbk_backs_up_each_snapshot_btrbk_made() {
    let env = Env::new();
    let (fake, log) = fake_agent(&env);
    let lines = [
        r#"format="transaction" time='1' localtime='x' type='startup' status='v0.32.5' duration='' target_url='' source_url='' parent_url='' message='btrbk command line client, version 0.32.5'"#,
        r#"format="transaction" time='1' localtime='x' type='snapshot' status='success' duration='0' target_url='/mnt/pool/snaps/home.20261204T1833' source_url='/mnt/pool/home' parent_url='' message=''"#,
        r#"format="transaction" time='1' localtime='x' type='snapshot' status='success' duration='0' target_url='/mnt/pool/snaps/it'\''s.20261204T183301+0100_2' source_url='/mnt/pool/it'\''s' parent_url='' message=''"#,
        r#"format="transaction" time='1' localtime='x' type='snapshot' status='success' duration='0' target_url='/mnt/pool/snaps/root.20261204' source_url='/mnt/pool/@' parent_url='' message=''"#,
        r#"format="transaction" time='1' localtime='x' type='snapshot' status='success' duration='0' target_url='/mnt/pool/snaps/tmp.20261204' source_url='/mnt/pool/tmp' parent_url='' message=''"#,
        r#"format="transaction" time='1' localtime='x' type='snapshot' status='dryrun_success' duration='' target_url='/mnt/pool/snaps/dry.20261204' source_url='/mnt/pool/dry' parent_url='' message=''"#,
        r#"format="transaction" time='1' localtime='x' type='snapshot' status='failed' duration='' target_url='/mnt/pool/snaps/bad.20261204' source_url='/mnt/pool/bad' parent_url='' message=''"#,
        r#"format="transaction" time='1' localtime='x' type='snapshot' status='success' duration='0' target_url='ssh://far/snaps/far.20261204' source_url='ssh://far/pool/far' parent_url='' message=''"#,
        r#"format="transaction" time='1' localtime='x' type='delete_snapshot' status='success' duration='0' target_url='/mnt/pool/snaps/old.20261104' source_url='' parent_url='' message=''"#,
        r#"format="transaction" time='1' localtime='x' type='finished' status='success' duration='0' target_url='' source_url='' parent_url='' message=''"#,
    ];
    let output = env.path("btrbk-output");
    std::fs::write(&output, lines.join("\n") + "\n").unwrap();
    let btrbk_args = env.path("btrbk-args");
    let fake_btrbk = env.path("fake-btrbk");
    std::fs::write(
        &fake_btrbk,
        format!(
            "#!/bin/sh\necho \"$*\" > '{}'\ncat '{}'\nexit ${{FAKE_BTRBK_EXIT:-0}}\n",
            btrbk_args.display(),
            output.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake_btrbk, std::fs::Permissions::from_mode(0o755)).unwrap();
    let map = env.path("btrbk-datasets");
    std::fs::write(&map, "# SUBVOLUME DATASET\n/mnt/pool/@ root-fs\n/mnt/pool/tmp/ -\n").unwrap();
    let run = |args: &[&str], exit: &str| {
        Command::new(hook("n2s-btrbk"))
            .args(args)
            .env("N2S_AGENT", &fake)
            .env("N2S_HOOK_WAIT", "1")
            .env("N2S_BTRBK", &fake_btrbk)
            .env("N2S_BTRBK_DATASETS", &map)
            .env("FAKE_BTRBK_EXIT", exit)
            .output()
            .unwrap()
    };
    let out = run(&["-c", "/etc/btrbk/x.conf", "home"], "0");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&btrbk_args).unwrap().trim(), "--format=raw run -c /etc/btrbk/x.conf home");
    assert!(String::from_utf8_lossy(&out.stdout).contains("type='startup'"), "btrbk's output is shown");
    assert_eq!(calls(&log), vec!["backup --dataset home", "backup --dataset it's", "backup --dataset root-fs"]);
    assert!(stderr(&out).contains("ssh://far/pool/far"), "{}", stderr(&out));

    // btrbk failed part-way (exit 10): what it made is still backed up, and
    // its status is the wrapper's; -q is not passed on but silences the output.
    std::fs::remove_file(&log).unwrap();
    let out = run(&["snapshot", "-q"], "10");
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&btrbk_args).unwrap().trim(), "--format=raw snapshot");
    assert_eq!(calls(&log).len(), 3);

    for bad in ["-t", "--format=long", "-L"] {
        let out = run(&["run", bad], "0");
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
    }
}

/// Every hook (and the scripts that install them) parses, and passes
/// shellcheck where it is installed (scripts/setup installs it; CI must
/// have it).
#[test]
fn the_shell_scripts_pass_bash_n_and_shellcheck() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut scripts: Vec<PathBuf> =
        std::fs::read_dir(root.join("scripts/hooks")).unwrap().map(|e| e.unwrap().path()).collect();
    scripts.sort();
    assert!(scripts.len() >= 5, "{scripts:?}");
    scripts.push(root.join("scripts/install"));
    scripts.push(root.join("scripts/setup"));
    for s in &scripts {
        let out = Command::new("bash").arg("-n").arg(s).output().unwrap();
        assert!(out.status.success(), "bash -n {}: {}", s.display(), stderr(&out));
    }
    if !have_tool("/usr/bin/shellcheck") {
        return;
    }
    let out = Command::new("shellcheck").args(&scripts).output().unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", String::from_utf8_lossy(&out.stdout));
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
        "etc/systemd/system/n2s-agent-watch.service",
        "usr/local/lib/n2s-agent/sanoid-post-snapshot",
        "usr/local/lib/n2s-agent/zfs-auto-snapshot-post",
        "usr/local/lib/n2s-agent/snapper-plugin",
        "usr/local/lib/n2s-agent/n2s-btrbk",
        "usr/local/lib/n2s-agent/n2s-hook-lib",
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
    let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o777;
    for f in ["snapper-plugin", "n2s-btrbk"] {
        assert_eq!(mode(&format!("usr/local/lib/n2s-agent/{f}")), 0o755, "{f} is not executable");
    }
    // snapper's fixed plugin directory links to the installed plugin, by the
    // path it has once installed (not under DESTDIR).
    let plugin = root.join("usr/lib/snapper/plugins/50-n2s-agent");
    assert_eq!(std::fs::read_link(&plugin).unwrap(), PathBuf::from("/usr/local/lib/n2s-agent/snapper-plugin"));
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/n2s-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/n2s-agent"), "{unit}");
    assert_eq!((mode("etc/n2s/agent.toml"), mode("etc/n2s"), mode("var/lib/n2s")), (0o600, 0o700, 0o700));
    std::fs::write(root.join("etc/n2s/agent.toml"), "repo = \"/srv/mine\"\n").unwrap();
    run(&[]);
    assert_eq!(std::fs::read_to_string(root.join("etc/n2s/agent.toml")).unwrap(), "repo = \"/srv/mine\"\n");
    run(&["--uninstall"]);
    assert!(!installed.exists() && !root.join("etc/systemd/system/n2s-agent.service").exists());
    assert!(!root.join("etc/systemd/system/n2s-agent@.service").exists());
    assert!(!root.join("usr/local/lib/n2s-agent").exists());
    assert!(std::fs::symlink_metadata(&plugin).is_err(), "the snapper plugin link is removed");
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
    // The watch unit: a long-running service, with the same hardening.
    let lifecycle = ["Type=", "TimeoutStartSec=", "TimeoutStopSec=", "Restart=", "RestartSec="];
    let without = |lines: Vec<String>| -> Vec<String> {
        lines.into_iter().filter(|l| !lifecycle.iter().any(|p| l.starts_with(p))).collect()
    };
    let watch = service_lines("n2s-agent-watch.service");
    assert!(watch.contains(&"Type=simple".to_string()), "{watch:?}");
    assert_eq!(
        without(service),
        without(watch),
        "n2s-agent-watch.service's [Service] differs from n2s-agent.service's"
    );
    let w = std::fs::read_to_string(dir.join("n2s-agent-watch.service")).unwrap();
    assert!(w.contains("ExecStart=/usr/local/bin/n2s-agent watch\n"), "{w}");
}

/// The exposure README's "systemd hardening" documents for both units
/// (`systemd-analyze security --offline=yes`, systemd 252): it may fall,
/// never rise.
const DOCUMENTED_EXPOSURE: &str = "2.5";

/// `systemd-analyze security --offline=yes` rates each unit at or below the
/// documented exposure (the number is parsed, and --threshold says the same),
/// and `systemd-analyze verify` has nothing to say about the units. Both run
/// without systemd as PID 1.
#[test]
fn the_units_stay_as_hardened_as_documented() {
    if !have_tool("/usr/bin/systemd-analyze") {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let documented_line = format!("Overall exposure level for n2s-agent.service: {DOCUMENTED_EXPOSURE}");
    assert!(readme.contains(&documented_line), "README does not document {documented_line:?}");
    let limit: f64 = DOCUMENTED_EXPOSURE.parse().unwrap();
    for unit in ["n2s-agent.service", "n2s-agent@.service", "n2s-agent-watch.service"] {
        let path = root.join("systemd").join(unit);
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--threshold={}", (limit * 10.0).round() as u32))
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let level = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no exposure level in the output for {unit}:\n{text}\n{}", stderr(&out)));
        eprintln!("{unit}: exposure {level}");
        assert!(
            level <= limit && out.status.success(),
            "{unit}: exposure {level} is above the documented {limit}; the unrestricted items:\n{}",
            text.lines().filter(|l| l.starts_with('✗')).collect::<Vec<_>>().join("\n")
        );
    }

    // verify wants the binary the units name: a copy of the units naming
    // this build's, the way scripts/install rewrites them.
    let env = Env::new();
    let dir = env.path("units");
    std::fs::create_dir(&dir).unwrap();
    let bin_path = std::path::absolute(bin()).unwrap();
    let mut units = Vec::new();
    for unit in ["n2s-agent.service", "n2s-agent@.service", "n2s-agent.timer", "n2s-agent-watch.service"] {
        let text = std::fs::read_to_string(root.join("systemd").join(unit)).unwrap();
        let text = text.replace("/usr/local/bin/n2s-agent", &bin_path.display().to_string());
        std::fs::write(dir.join(unit), text).unwrap();
        units.push(dir.join(unit));
    }
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).args(&units).output().unwrap();
    // It exits 0 even for an unknown key or a value it cannot parse, and
    // says so on stderr: any word from it is a failure.
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}
