//! The snapper plugin and the btrbk wrapper in scripts/hooks, driven by the
//! real snapper and btrbk from Debian on a real btrfs made on a loop device,
//! with the real n2s-agent: each snapshot the tool makes is backed up by the
//! hook and restores identical to itself. And the capabilities that
//! systemd/n2s-agent.service leaves the agent are enough for btrfs and walk
//! backups (under setpriv, as systemd is not PID 1 on test machines).
//!
//! Needs root, loop devices, btrfs-progs, snapper, btrbk and setpriv (scripts/setup
//! installs them). With CI=true a missing one fails the test; elsewhere the
//! test says loudly that it skipped.
//!
//! snapper reads its configs only from /etc/snapper/configs (its --root does
//! not move them) and runs plugins only from /usr/lib/snapper/plugins, so
//! the snapper test makes a config and a plugin link there, both named
//! uniquely for this run, and removes them when it ends (even on failure).

mod common;
use common::loopbtrfs::LoopBtrfs;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGIN_DIR: &str = "/usr/lib/snapper/plugins";

fn hook(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/hooks").join(name)
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{c:?}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A name no other run (of this test binary or another) uses at the same time.
fn unique(env: &Env, what: &str) -> String {
    let tail = env.dir.path().file_name().unwrap().to_string_lossy().replace("n2s-it-", "");
    format!("n2s-test-{what}-{}-{tail}", std::process::id())
}

/// An agent config naming this test's repository, key and state, with one
/// btrfs dataset: the hooks' backups read it through N2S_CONFIG.
fn agent_config(env: &Env, dataset: &str, subvol: &Path, snapshot_dir: Option<&Path>) -> PathBuf {
    let mut text = format!(
        "repo = {:?}\nkey_file = {:?}\nstate_dir = {:?}\n\n[[dataset]]\nname = {dataset:?}\nsource = \"btrfs\"\npath = {:?}\n",
        env.repo.display().to_string(),
        env.key.display().to_string(),
        env.state.display().to_string(),
        subvol.display().to_string()
    );
    if let Some(d) = snapshot_dir {
        text.push_str(&format!("snapshot_dir = {:?}\n", d.display().to_string()));
    }
    let p = env.path("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The environment a hook sees: the test's agent and config, and a backup
/// in the foreground (the hooks detach it otherwise).
fn hook_env<'a>(c: &'a mut Command, config: &Path) -> &'a mut Command {
    c.env("N2S_AGENT", bin())
        .env("N2S_CONFIG", config)
        .env("N2S_HOOK_WAIT", "1")
        .env_remove("N2S_REPO")
        .env_remove("N2S_KEY_FILE")
        .env_remove("N2S_STATE_DIR")
}

/// The dataset's changesets; none when it has no catalog yet (no backup ran).
fn changesets(env: &Env, dataset: &str) -> Vec<serde_json::Value> {
    let out = env.run(["list", "--json", "--dataset", dataset]);
    if !out.status.success() {
        eprintln!("list --dataset {dataset}: {}", stderr(&out));
        return Vec::new();
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json");
    list["changesets"].as_array().cloned().unwrap_or_default()
}

fn restore_and_compare(env: &Env, dataset: &str, label: &str, snapshot: &Path) {
    let t = env.path(&format!("restored-{dataset}-{label}"));
    env.restore(dataset, label, &t);
    assert_same_tree(snapshot, &t);
}

fn fill(vol: &Path, rng: &mut Rng) {
    std::fs::create_dir_all(vol.join("etc/sub")).unwrap();
    for i in 0..12 {
        let n = rng.below(200_000) as usize;
        std::fs::write(vol.join(format!("etc/sub/f{i}")), rng.bytes(n)).unwrap();
    }
    std::os::unix::fs::symlink("sub/f1", vol.join("etc/link")).unwrap();
}

// ---- snapper ------------------------------------------------------------------

/// create-config and delete-config rewrite SNAPPER_CONFIGS in
/// /etc/default/snapper (read, change, write): one at a time in this binary.
static SNAPPER_CONFIGS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A snapper config made with `snapper create-config`, deleted on drop
/// with `snapper delete-config` (which deletes its snapshots too), or by
/// hand if that fails.
struct SnapperConfig {
    name: String,
}

fn snapper(name: &str) -> Command {
    // No snapperd here (no D-Bus system bus on a test machine): snapper
    // does the work itself, plugins included.
    let mut c = Command::new("snapper");
    c.args(["--no-dbus", "-c", name]);
    c
}

impl SnapperConfig {
    fn create(name: &str, subvol: &Path) -> SnapperConfig {
        let _g = SNAPPER_CONFIGS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        run_ok(snapper(name).arg("create-config").arg(subvol));
        SnapperConfig { name: name.to_string() }
    }
    fn file(&self) -> PathBuf {
        Path::new("/etc/snapper/configs").join(&self.name)
    }
}

impl Drop for SnapperConfig {
    fn drop(&mut self) {
        let _g = SNAPPER_CONFIGS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let ok = snapper(&self.name).arg("delete-config").output().is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("snapper delete-config {} failed: removing its config file by hand", self.name);
            let _ = std::fs::remove_file(self.file());
        }
    }
}

/// A link in snapper's plugin directory to scripts/hooks/snapper-plugin,
/// as scripts/install makes (under a name of this run's), removed on drop.
struct PluginLink(PathBuf);

impl PluginLink {
    fn install(name: &str) -> PluginLink {
        std::fs::create_dir_all(PLUGIN_DIR).unwrap();
        // snapper runs only plugins whose names start with a digit.
        let link = Path::new(PLUGIN_DIR).join(format!("50-{name}"));
        std::os::unix::fs::symlink(hook("snapper-plugin"), &link).unwrap();
        PluginLink(link)
    }
}

impl Drop for PluginLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `snapper create` on a config with N2S_DATASET: the plugin backs up
/// snapper's snapshot (`.snapshots/N/snapshot`) as changeset N, the second
/// one by `btrfs send` from the first, and both restore exactly.
#[test]
fn a_snapper_snapshot_is_backed_up_by_the_plugin() {
    let Some(fs) = LoopBtrfs::make(&["/usr/bin/snapper"]) else { return };
    let env = Env::new();
    env.init();
    let vol = fs.subvolume("vol");
    let mut rng = Rng(seed_from_env_or_time());
    fill(&vol, &mut rng);
    let name = unique(&env, "snapper");
    let config = SnapperConfig::create(&name, &vol);
    // The opt-in the plugin looks for, naming the n2s dataset, set the way
    // README tells (snapper keeps a key it does not know).
    run_ok(snapper(&name).args(["set-config", "N2S_DATASET=snapper-ds"]));
    assert!(std::fs::read_to_string(config.file()).unwrap().contains("N2S_DATASET=\"snapper-ds\""));
    let _plugin = PluginLink::install(&name);
    // The dataset's snapshot_dir is left to its default, snapper's layout.
    let agent_toml = agent_config(&env, "snapper-ds", &vol, None);

    let create = |desc: &str| {
        let out = hook_env(&mut snapper(&name), &agent_toml)
            .args(["create", "--print-number", "--description", desc])
            .output()
            .unwrap();
        assert!(out.status.success(), "snapper create: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let first = create("n2s test one");
    assert_eq!(first, "1", "snapper numbers a new config's first snapshot 1");
    let snap1 = vol.join(".snapshots/1/snapshot");
    assert!(snap1.is_dir(), "snapper's layout changed: no {}", snap1.display());
    let cs = changesets(&env, "snapper-ds");
    assert_eq!(cs.len(), 1, "the plugin did not back up snapper's snapshot 1: {cs:?} (see /var/log/snapper.log)");
    assert_eq!(cs[0]["snapshot"], "1");
    restore_and_compare(&env, "snapper-ds", "1", &snap1);

    // A change, a second snapshot: backed up as a diff from the first.
    std::fs::write(vol.join("etc/new"), rng.bytes(70_000)).unwrap();
    std::fs::remove_file(vol.join("etc/sub/f3")).unwrap();
    assert_eq!(create("n2s test two"), "2");
    let cs = changesets(&env, "snapper-ds");
    assert_eq!(cs.len(), 2, "{cs:?}");
    assert_eq!((&cs[1]["snapshot"], &cs[1]["method"]), (&"2".into(), &"send".into()), "{cs:?}");
    restore_and_compare(&env, "snapper-ds", "2", &vol.join(".snapshots/2/snapshot"));

    // A config that did not opt in: its snapshots are not backed up.
    let other_vol = fs.subvolume("other");
    let other = SnapperConfig::create(&unique(&env, "snapper-other"), &other_vol);
    let out = hook_env(&mut snapper(&other.name), &agent_toml).arg("create").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(changesets(&env, "snapper-ds").len(), 2);
}

// ---- btrbk ------------------------------------------------------------------

/// `n2s-btrbk -c CONF run` makes btrbk's snapshots (`NAME.YYYYMMDDTHHMM`
/// in a flat snapshot_dir shared by two subvolumes) and backs up the mapped
/// subvolume's, a diff by `btrfs send` the second time; a subvolume mapped
/// to "-" is left alone, and output-format options are refused.
#[test]
fn btrbk_snapshots_are_backed_up_by_the_wrapper() {
    let Some(fs) = LoopBtrfs::make(&["/usr/bin/btrbk"]) else { return };
    let env = Env::new();
    env.init();
    let vol = fs.subvolume("vol");
    let skipped = fs.subvolume("skipped");
    let snaps = fs.mnt.join("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let mut rng = Rng(seed_from_env_or_time());
    fill(&vol, &mut rng);
    std::fs::write(skipped.join("x"), b"not backed up").unwrap();
    let conf = env.path("btrbk.conf");
    std::fs::write(
        &conf,
        format!(
            "timestamp_format long\nsnapshot_preserve_min all\nlockfile {}\n\nvolume {}\n  snapshot_dir snaps\n  subvolume vol\n  subvolume skipped\n",
            env.path("btrbk.lock").display(),
            fs.mnt.display()
        ),
    )
    .unwrap();
    let map = env.path("btrbk-datasets");
    std::fs::write(&map, format!("# SUBVOLUME DATASET\n{} btrbk-ds\n{} -\n", vol.display(), skipped.display()))
        .unwrap();
    let agent_toml = agent_config(&env, "btrbk-ds", &vol, Some(&snaps));
    let wrapper = |args: &[&str]| {
        hook_env(&mut Command::new(hook("n2s-btrbk")), &agent_toml)
            .env("N2S_BTRBK_DATASETS", &map)
            .args(args)
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap()
    };
    let snapshots_of = |prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    };

    let out = wrapper(&["run"]);
    assert!(out.status.success(), "n2s-btrbk run: {}\n{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    let made = snapshots_of("vol.");
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(snapshots_of("skipped.").len(), 1, "btrbk snapshots the unmapped subvolume too");
    let cs = changesets(&env, "btrbk-ds");
    assert_eq!(cs.len(), 1, "the wrapper did not back up btrbk's snapshot: {cs:?}");
    assert_eq!(cs[0]["snapshot"], made[0].as_str());
    restore_and_compare(&env, "btrbk-ds", &made[0], &snaps.join(&made[0]));

    std::fs::write(vol.join("etc/new"), rng.bytes(50_000)).unwrap();
    std::fs::remove_file(vol.join("etc/sub/f2")).unwrap();
    let out = wrapper(&["-q"]); // `run` is the default; -q keeps the wrapper quiet
    assert!(out.status.success(), "n2s-btrbk -q: {}", stderr(&out));
    // (The agent's own summary still prints: it ran in the foreground.)
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("format=\"transaction\""), "-q printed btrbk's summary: {said}");
    let made = snapshots_of("vol.");
    assert_eq!(made.len(), 2, "{made:?}");
    let cs = changesets(&env, "btrbk-ds");
    assert_eq!(cs.len(), 2, "{cs:?}");
    let second = cs[1]["snapshot"].as_str().unwrap().to_string();
    assert!(made.contains(&second) && second != cs[0]["snapshot"], "{cs:?} vs {made:?}");
    assert_eq!(cs[1]["method"], "send", "{cs:?}");
    restore_and_compare(&env, "btrbk-ds", &second, &snaps.join(&second));

    // A dry run makes no snapshot, so nothing is backed up.
    let out = wrapper(&["run", "-n"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(changesets(&env, "btrbk-ds").len(), 2);

    let out = wrapper(&["run", "-t"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("-t"), "{}", stderr(&out));
}

// ---- the unit's capabilities ------------------------------------------------

/// CapabilityBoundingSet= of systemd/n2s-agent.service as setpriv's
/// --bounding-set (`-all,+dac_read_search,...`).
fn unit_bounding_set() -> String {
    let unit =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/n2s-agent.service")).unwrap();
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("n2s-agent.service has a CapabilityBoundingSet=");
    let mut set = String::from("-all");
    for c in caps.split_whitespace() {
        set.push_str(&format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()));
    }
    set
}

/// The capabilities n2s-agent.service leaves (its CapabilityBoundingSet=,
/// with NoNewPrivileges=) suffice for a backup: `btrfs subvolume show`, a
/// `btrfs send` diff, SQLite, and a walk that reads a file of another owner
/// with mode 000. systemd is not PID 1 here, so setpriv bounds the agent the
/// way the unit would; with no capabilities at all the same backup fails,
/// which shows that setpriv does bound it.
#[test]
fn the_units_capabilities_suffice_for_btrfs_and_walk_backups() {
    let Some(fs) = LoopBtrfs::make(&["/usr/bin/setpriv"]) else { return };
    let env = Env::new();
    env.init();
    let vol = fs.subvolume("vol");
    let snaps = fs.mnt.join("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let mut rng = Rng(seed_from_env_or_time());
    fill(&vol, &mut rng);
    let secret = vol.join("etc/secret");
    std::fs::write(&secret, b"only its owner, and a backup, may read this").unwrap();
    std::os::unix::fs::chown(&secret, Some(4321), Some(4321)).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let bounded = |set: &str| {
        let arg = format!("--bounding-set={set}");
        env.cmd_via(&["setpriv", &arg, "--inh-caps=-all", "--no-new-privs", "--"])
    };
    let snapshot = |name: &str| {
        let to = snaps.join(name);
        run_ok(Command::new("btrfs").args(["subvolume", "snapshot", "-r"]).arg(&vol).arg(&to));
        to
    };
    let btrfs_backup = |set: &str| {
        bounded(set)
            .args(["backup", "--dataset", "vol", "--source", "btrfs", "--path"])
            .arg(&vol)
            .arg("--snapshot-dir")
            .arg(&snaps)
            .output()
            .unwrap()
    };
    let set = unit_bounding_set();
    assert!(set.contains("+sys_admin") && !set.contains("+setuid"), "{set}");

    let s1 = snapshot("s1");
    let out = btrfs_backup("-all");
    assert!(!out.status.success(), "a backup without any capability worked: setpriv bounded nothing");
    let out = btrfs_backup(&set);
    assert!(out.status.success(), "btrfs backup under {set}: {}", stderr(&out));
    std::fs::write(vol.join("etc/later"), rng.bytes(30_000)).unwrap();
    let s2 = snapshot("s2");
    let out = btrfs_backup(&set);
    assert!(out.status.success(), "btrfs backup under {set}: {}", stderr(&out));
    let cs = changesets(&env, "vol");
    let methods: Vec<_> = cs.iter().map(|c| c["method"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(methods, ["walk (first snapshot)", "send"], "{cs:?}");
    restore_and_compare(&env, "vol", "s1", &s1);
    restore_and_compare(&env, "vol", "s2", &s2);

    let out = bounded(&set)
        .args(["backup", "--dataset", "live", "--source", "walk", "--path"])
        .arg(&vol)
        .args(["--snapshot", "w1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "walk backup under {set}: {}", stderr(&out));
    let t = env.path("restored-live");
    env.restore("live", "w1", &t);
    let restored = t.join("etc/secret");
    assert_eq!(std::fs::read(&restored).unwrap(), b"only its owner, and a backup, may read this");
}
