//! `config check`, completions and man pages through the real binary.
//! `config check` reports each check on a line (ok or FAIL with the fix),
//! exits 1 on any failure, and writes nothing: the state directory and the
//! repository are compared before and after. The btrfs source's check is
//! in tests/btrfs.rs (it needs a loop-device btrfs).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Every path below `root` with its size and modification time.
fn listing(root: &Path) -> BTreeMap<String, (u64, i128)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            let mtime = m.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
            out.insert(e.path().display().to_string(), (m.len(), mtime));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn check(env: &Env, config: &Path, json: bool) -> (Option<i32>, String) {
    let mut c = Command::new(bin());
    c.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).arg("--config").arg(config);
    c.args(["config", "check"]);
    if json {
        c.arg("--json");
    }
    let out = c.output().unwrap();
    let _ = env;
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out)))
}

fn write_config(env: &Env, name: &str, extra: &str, datasets: &str) -> std::path::PathBuf {
    let p = env.path(name);
    std::fs::write(
        &p,
        format!(
            "repo = {:?}\nkey_file = {:?}\nstate_dir = {:?}\n{extra}\n{datasets}",
            env.repo.to_str().unwrap(),
            env.key.to_str().unwrap(),
            env.path("fresh-state").to_str().unwrap()
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_good_config_checks_out_and_nothing_is_written() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let cfg = write_config(
        &env,
        "good.toml",
        "",
        &format!("[[dataset]]\nname = \"home\"\nsource = \"walk\"\npath = {:?}\n", src.to_str().unwrap()),
    );
    let before = listing(env.dir.path());
    let (code, text) = check(&env, &cfg, false);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.lines().all(|l| l.starts_with("ok   ")), "{text}");
    assert!(text.contains("dataset home: walk of"), "{text}");
    assert!(text.contains("reachable, initialized, the key opens it"), "{text}");
    assert!(text.contains("absent: the first backup creates it"), "{text}");
    assert_eq!(listing(env.dir.path()), before, "config check wrote something");
    assert!(!env.path("fresh-state").exists());
    let (code, text) = check(&env, &cfg, true);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["checks"].as_array().unwrap().len() >= 5, "{v}");
}

#[test]
fn each_broken_part_gets_its_fail_line_and_exit_1() {
    let env = Env::new();
    env.init();
    let walk = |p: &str| format!("[[dataset]]\nname = \"d\"\nsource = \"walk\"\npath = {p:?}\n");
    // A missing source path.
    let cfg = write_config(&env, "a.toml", "", &walk("/nonexistent/n2s-src"));
    let (code, text) = check(&env, &cfg, false);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL dataset d:") && text.contains("/nonexistent/n2s-src"), "{text}");
    // A repository that is not there.
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let p = env.path("b.toml");
    std::fs::write(
        &p,
        format!(
            "repo = \"/nonexistent/n2s-repo\"\nkey_file = {:?}\n{}",
            env.key.to_str().unwrap(),
            walk(src.to_str().unwrap())
        ),
    )
    .unwrap();
    let (code, text) = check(&env, &p, false);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL repository /nonexistent/n2s-repo"), "{text}");
    assert!(!Path::new("/nonexistent/n2s-repo").exists());
    // A key file others can read.
    std::fs::set_permissions(&env.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = write_config(&env, "c.toml", "", &walk(src.to_str().unwrap()));
    let (code, text) = check(&env, &cfg, false);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL key file") && text.contains("chmod 600"), "{text}");
    std::fs::set_permissions(&env.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // An unknown field: named with its line.
    let cfg = write_config(&env, "d.toml", "colour = \"blue\"", &walk(src.to_str().unwrap()));
    let (code, text) = check(&env, &cfg, false);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL config file") && text.contains("line 4") && text.contains("colour"), "{text}");
}

#[test]
fn completions_load_in_bash_and_the_man_pages_render() {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source <({:?} completions bash) && complete -p n2s-agent", bin()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("n2s-agent"), "{}", String::from_utf8_lossy(&out.stdout));
    for shell in ["zsh", "fish"] {
        let out = Command::new(bin()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("backup") && text.contains("restore"), "{shell}: {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin()).args(["manpage", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for page in ["n2s-agent.1", "n2s-agent-backup.1", "n2s-agent-restore.1", "n2s-agent-config-check.1"] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
    if !have_tool("/usr/bin/groff") {
        return;
    }
    let out = Command::new("groff").args(["-man", "-Tutf8"]).arg(dir.path().join("n2s-agent.1")).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for verb in ["backup", "restore", "verify", "prune", "completions"] {
        assert!(text.contains(verb), "the page names {verb}: {text}");
    }
}
