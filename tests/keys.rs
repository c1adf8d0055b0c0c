//! Passphrase-protected keys (issue 11, point 4): `key add|list|remove|passwd`,
//! and a bare machine that opens a repository from its URL and a passphrase
//! alone (a file, a command or a terminal), on every backend.

#[macro_use]
mod common;
use common::*;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A file holding `pass` (mode 0600).
fn password_file(env: &Env, name: &str, pass: &str) -> PathBuf {
    let p = env.path(name);
    std::fs::write(&p, format!("{pass}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The agent on a machine that has neither the key file nor the state
/// directory: only the repository URL (and its access settings).
fn bare(env: &Env, state: &Path) -> Command {
    let mut c = env.cmd();
    c.env_remove("N2S_KEY_FILE").env("N2S_STATE_DIR", state);
    c
}

fn add_key(env: &Env, pass_file: &Path, label: &str) -> String {
    let out = env.ok([
        "key".as_ref(),
        "add".as_ref(),
        "--label".as_ref(),
        label.as_ref(),
        "--new-password-file".as_ref(),
        pass_file.as_os_str(),
        "--json".as_ref(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["added"].as_str().unwrap().to_string()
}

fn key_list(c: &mut Command) -> serde_json::Value {
    let out = c.args(["key", "list", "--json"]).output().unwrap();
    assert!(out.status.success(), "key list: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn tree(env: &Env) -> PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(src.join("big"), Rng(11).bytes(300_000)).unwrap();
    src
}

/// Back up with the key file, add a passphrase key, then on a "bare
/// machine" restore from the URL and the passphrase alone, from a file and
/// from a command.
fn a_bare_machine_restores_with_a_passphrase_alone(env: &Env) {
    env.init();
    let src = tree(env);
    env.backup("host/data", &src, "s1");
    let pw = password_file(env, "pw", "correct horse battery staple");
    let id = add_key(env, &pw, "disaster recovery");
    assert_eq!(id.len(), 24, "{id}");
    if env.is_local() {
        let obj = std::fs::read_to_string(env.repo.join("keys").join(&id)).unwrap();
        assert!(obj.contains("\"argon2id\"") && obj.contains("\"memory_kib\": 65536"), "{obj}");
        assert!(!obj.contains("disaster"), "the label reached the backend: {obj}");
    }

    let target = env.path("restored");
    let out = bare(env, &env.path("bare-state"))
        .env("N2S_PASSWORD_FILE", &pw)
        .args(["restore", "s1", "--dataset", "host/data", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "restore with a passphrase file: {}", stderr(&out));
    assert_same_tree(&src, &target);

    let target2 = env.path("restored2");
    let out = bare(env, &env.path("bare-state2"))
        .env("N2S_PASSWORD_COMMAND", format!("cat '{}'", pw.display()))
        .args(["restore", "s1", "--dataset", "host/data", "--target"])
        .arg(&target2)
        .output()
        .unwrap();
    assert!(out.status.success(), "restore with a passphrase command: {}", stderr(&out));
    assert_same_tree(&src, &target2);

    let listed = key_list(bare(env, &env.path("bare-state")).env("N2S_PASSWORD_FILE", &pw));
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{listed}");
    assert_eq!((keys[0]["id"].as_str(), keys[0]["current"].as_bool()), (Some(id.as_str()), Some(true)));
    assert_eq!(keys[0]["label"], "disaster recovery");
}

on_every_backend!(a_bare_machine_restores_with_a_passphrase_alone);

#[test]
fn add_list_passwd_and_remove() {
    let env = Env::new();
    env.init();
    let pa = password_file(&env, "pa", "alpha passphrase");
    let pb = password_file(&env, "pb", "bravo passphrase");
    let pc = password_file(&env, "pc", "charlie passphrase");
    let a = add_key(&env, &pa, "alice");
    let b = add_key(&env, &pb, "bob");
    // Both share the repository's salt and cost.
    let objs: Vec<serde_json::Value> = [&a, &b]
        .iter()
        .map(|id| serde_json::from_slice(&std::fs::read(env.repo.join("keys").join(id)).unwrap()).unwrap())
        .collect();
    assert_eq!(objs[0]["kdf"], objs[1]["kdf"]);
    let human = env.ok(["key", "list"]);
    assert!(human.contains(&a) && human.contains("alice") && human.contains("m=64MiB t=3 p=1"), "{human}");

    // passwd of bob's key, named by a prefix: the old passphrase stops
    // working, the new one works, the label stays.
    let out =
        env.ok(["key".as_ref(), "passwd".as_ref(), b[..8].as_ref(), "--new-password-file".as_ref(), pc.as_os_str()]);
    assert!(out.contains("changed the passphrase"), "{out}");
    let bare_state = env.path("bare");
    let out = bare(&env, &bare_state).env("N2S_PASSWORD_FILE", &pb).args(["key", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "bob's old passphrase still opens: {}", stderr(&out));
    let listed = key_list(bare(&env, &bare_state).env("N2S_PASSWORD_FILE", &pc));
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{listed}");
    let current: Vec<_> = keys.iter().filter(|k| k["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["label"], "bob");
    assert_ne!(current[0]["id"], b.as_str(), "passwd writes a new object");

    // The key a run opened with cannot be removed by that run; another can.
    let out = bare(&env, &bare_state).env("N2S_PASSWORD_FILE", &pa).args(["key", "remove", &a]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("refusing to remove key"), "{}", stderr(&out));
    let out = bare(&env, &bare_state).env("N2S_PASSWORD_FILE", &pc).args(["key", "remove", &a]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = bare(&env, &bare_state).env("N2S_PASSWORD_FILE", &pa).args(["list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a removed key still opens: {}", stderr(&out));
    // An unknown id, and an empty one.
    for id in ["ffffffff", ""] {
        let out = env.run(["key", "remove", id]);
        assert_eq!(out.status.code(), Some(1), "{id:?}");
        assert!(stderr(&out).contains("no key"), "{}", stderr(&out));
    }
    // The key file still opens the repository after all of it.
    env.ok(["key", "list"]);
}

#[test]
fn a_wrong_passphrase_is_one_clear_line_and_costs_one_argon2id_run() {
    let env = Env::new();
    env.init();
    for (i, name) in ["p1", "p2", "p3"].iter().enumerate() {
        add_key(&env, &password_file(&env, name, &format!("passphrase number {i}")), name);
    }
    let wrong = password_file(&env, "wrong", "not one of them");
    let out = bare(&env, &env.path("bare")).env("N2S_PASSWORD_FILE", &wrong).args(["-vv", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains("the passphrase opens none of the 3 key(s)") && last.contains("--key-file"), "{err}");
    assert_eq!(err.matches("derived a key-encryption key with Argon2id").count(), 1, "{err}");
    assert!(!err.contains("not one of them"), "the passphrase reached the log: {err}");

    // A right one: also one run, whichever of the three it is.
    let right = password_file(&env, "right", "passphrase number 2");
    let out = bare(&env, &env.path("bare")).env("N2S_PASSWORD_FILE", &right).args(["-vvv", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("derived a key-encryption key with Argon2id").count(), 1, "{err}");
    assert!(!err.contains("passphrase number"), "the passphrase reached the log: {err}");
}

#[test]
fn passphrase_sources_refuse_what_a_sysadmin_would_not_want() {
    let env = Env::new();
    env.init();
    let pw = password_file(&env, "pw", "s3cret pass");
    add_key(&env, &pw, "");
    let bare_state = env.path("bare");
    let run = |c: &mut Command| -> Output { c.args(["list"]).output().unwrap() };

    // A password file others can read.
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(bare(&env, &bare_state).env("N2S_PASSWORD_FILE", &pw));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();

    // An empty one, a missing one, a failing command.
    let empty = password_file(&env, "empty", "");
    let out = run(bare(&env, &bare_state).env("N2S_PASSWORD_FILE", &empty));
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
    let out = run(bare(&env, &bare_state).env("N2S_PASSWORD_FILE", env.path("nope")));
    assert!(stderr(&out).contains("cannot read password file"), "{}", stderr(&out));
    let out = run(bare(&env, &bare_state).env("N2S_PASSWORD_COMMAND", "echo s3cret pass; exit 3"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("password command") && !stderr(&out).contains("s3cret"), "{}", stderr(&out));

    // Nothing at all, and no terminal: a usage error naming the ways.
    let out = bare(&env, &bare_state).args(["list"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("N2S_PASSWORD_FILE") && stderr(&out).contains("--key-file"), "{}", stderr(&out));

    // No passphrase flag exists: argv never carries one.
    let out = env.run(["--password", "x", "list"]);
    assert_eq!(out.status.code(), Some(2));

    // A repository without key objects says so before asking anything.
    let other = Env::new();
    other.init();
    let out = run(bare(&other, &other.path("bare")).env("N2S_PASSWORD_FILE", &pw));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has no passphrase keys"), "{}", stderr(&out));

    // A new passphrase needs a file or a terminal.
    let out = env.cmd().args(["key", "add"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--new-password-file"), "{}", stderr(&out));
}

/// Shell-quote one word.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Typed on a terminal: the prompt is shown, the passphrase is not echoed,
/// and `key add` asks twice.
#[test]
fn the_passphrase_can_be_typed_on_a_terminal() {
    let env = Env::new();
    env.init();
    let under_pty = |args: &str, typed: &str, with_key_file: bool| -> Output {
        let mut c = Command::new("script");
        c.args(["-qfec", &format!("{} {args}", q(bin().to_str().unwrap())), "/dev/null"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TERM", "dumb")
            .env("N2S_REPO", &env.repo)
            .env("N2S_STATE_DIR", env.path("pty-state"))
            .env("N2S_CONFIG", env.path("empty.toml"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if with_key_file {
            c.env("N2S_KEY_FILE", &env.key);
        }
        let mut child = c.spawn().expect("run script(1) from util-linux");
        let mut stdin = child.stdin.take().unwrap();
        // Typed slowly, as a person would: each line once the prompt is up.
        for line in typed.lines() {
            std::thread::sleep(std::time::Duration::from_millis(700));
            stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let out = under_pty("key add --label typed", "typed secret 1\ntyped secret 1", true);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{shown}\n{}", stderr(&out));
    assert!(shown.contains("new passphrase:") && shown.contains("the same again:"), "{shown}");
    assert!(!shown.contains("typed secret"), "the passphrase was echoed: {shown}");

    let out = under_pty("key list", "typed secret 1", false);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{shown}\n{}", stderr(&out));
    assert!(shown.contains("passphrase for") && shown.contains("typed"), "{shown}");
    assert!(!shown.contains("typed secret"), "the passphrase was echoed: {shown}");

    let out = under_pty("key add", "one thing\nanother thing", true);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success() && shown.contains("the two passphrases differ"), "{shown}");
}

/// `config check` on a host that has a passphrase but no key file.
#[test]
fn config_check_opens_with_a_passphrase() {
    let env = Env::new();
    env.init();
    let pw = password_file(&env, "pw", "check me");
    let id = add_key(&env, &pw, "");
    let cfg = env.path("agent.toml");
    std::fs::write(&cfg, format!("repo = \"{}\"\npassword_file = \"{}\"\n", env.repo.display(), pw.display())).unwrap();
    let out = Command::new(bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("N2S_CONFIG", &cfg)
        .env("N2S_STATE_DIR", env.path("st"))
        .args(["config", "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains(&format!("the passphrase opens its key {id}")), "{text}");
}
