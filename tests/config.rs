//! The repository `config` object: authenticated (a hostile backend cannot
//! change what writers obey), and redundant (a sealed copy, `config.sealed`,
//! keeps a repository whose `config` was lost or damaged restorable).

mod common;
use common::*;

use std::path::Path;
use std::sync::Arc;

use n2s_agent::backend::Backend;
use n2s_agent::backend::local::LocalBackend;
use n2s_agent::core::keys::MasterKey;
use n2s_agent::repo::Repository;

fn assert_one_line_error(out: &std::process::Output, needle: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let lines: Vec<_> = err.lines().filter(|l| l.starts_with("n2s-agent: error:")).collect();
    assert_eq!(lines.len(), 1, "want exactly one error line, got:\n{err}");
    assert!(lines[0].contains(needle), "error line lacks {needle:?}: {}", lines[0]);
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}

/// A repository with one snapshot `one` of dataset `d`; returns the source.
fn backed_up(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let mut rng = Rng(7);
    std::fs::write(src.join("a"), rng.bytes(300_000)).unwrap();
    std::fs::write(src.join("sub/b"), b"small").unwrap();
    env.init();
    env.backup("d", &src, "one");
    src
}

fn config_path(env: &Env) -> std::path::PathBuf {
    env.repo.join("config")
}

fn read_config(env: &Env) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(config_path(env)).unwrap()).unwrap()
}

fn write_config(env: &Env, v: &serde_json::Value) {
    std::fs::write(config_path(env), serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn open_lib(env: &Env) -> anyhow::Result<Repository> {
    let key = MasterKey::load(&env.key).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&env.repo));
    Repository::open(backend, &key)
}

/// `list` and `restore` work, each with one warning that names the problem
/// and `n2s-agent repair`.
fn assert_served_from_copy(env: &Env, src: &Path, problem: &str) {
    let out = env.run(["list", "--dataset", "d"]);
    let err = stderr(&out);
    assert!(out.status.success(), "list failed: {err}");
    let warnings: Vec<_> = err.lines().filter(|l| l.starts_with("n2s-agent: warning:")).collect();
    assert_eq!(warnings.len(), 1, "want one warning, got:\n{err}");
    for needle in [problem, "config.sealed", "n2s-agent repair"] {
        assert!(warnings[0].contains(needle), "warning lacks {needle:?}: {}", warnings[0]);
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("one"));
    let target = env.path(&format!("restored-{problem}"));
    let _ = std::fs::remove_dir_all(&target);
    let out = env.cmd().args(["restore", "one", "--dataset", "d", "--target"]).arg(&target).output().unwrap();
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert!(stderr(&out).contains("n2s-agent repair"), "{}", stderr(&out));
    assert_same_tree(src, &target);
}

#[test]
fn init_writes_the_config_and_its_sealed_copy() {
    let env = Env::new();
    env.init();
    let v = read_config(&env);
    assert_eq!(v["version"], 2, "{v}");
    assert!(v["sealed"].as_str().is_some_and(|s| s.len() > 80), "{v}");
    let copy = std::fs::read(env.repo.join("config.sealed")).unwrap();
    // Sealed: the copy shows nothing of the config in the clear.
    assert!(!String::from_utf8_lossy(&copy).contains(v["id"].as_str().unwrap()));
    let repo = open_lib(&env).unwrap();
    assert!(repo.config_problem.is_none(), "{:?}", repo.config_problem);
}

#[test]
fn a_deleted_config_is_served_from_its_copy_and_repair_rewrites_it() {
    let env = Env::new();
    let src = backed_up(&env);
    let original = std::fs::read(config_path(&env)).unwrap();
    std::fs::remove_file(config_path(&env)).unwrap();
    assert_served_from_copy(&env, &src, "missing");

    let repo = open_lib(&env).unwrap();
    assert!(repo.config_problem.as_deref().unwrap_or_default().contains("missing"));
    repo.restore_config_object().unwrap();
    assert_eq!(std::fs::read(config_path(&env)).unwrap(), original, "repair rewrites the same config");
    let out = env.run(["list", "--dataset", "d"]);
    assert!(out.status.success() && !stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn a_garbage_config_is_served_from_its_copy_and_repair_rewrites_it() {
    let env = Env::new();
    let src = backed_up(&env);
    let original = std::fs::read(config_path(&env)).unwrap();
    for garbage in [&b"\x00\x17\xffnot json at all"[..], b"", &original[..original.len() / 2]] {
        std::fs::write(config_path(&env), garbage).unwrap();
        assert_served_from_copy(&env, &src, "damaged");
    }
    open_lib(&env).unwrap().restore_config_object().unwrap();
    assert_eq!(std::fs::read(config_path(&env)).unwrap(), original);
    assert!(open_lib(&env).unwrap().config_problem.is_none());
}

#[test]
fn a_lost_copy_is_named_and_repair_writes_it_again() {
    let env = Env::new();
    let src = backed_up(&env);
    std::fs::remove_file(env.repo.join("config.sealed")).unwrap();
    let out = env.run(["list", "--dataset", "d"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("config.sealed") && stderr(&out).contains("n2s-agent repair"), "{}", stderr(&out));
    open_lib(&env).unwrap().restore_config_object().unwrap();
    assert!(env.repo.join("config.sealed").exists());
    // The new copy serves a lost config.
    std::fs::remove_file(config_path(&env)).unwrap();
    assert_served_from_copy(&env, &src, "missing");
}

/// The chunker sizes are what a hostile backend would change (chunk
/// boundaries fingerprint files): refused even though the copy is intact,
/// and nothing is written.
#[test]
fn tampered_chunker_sizes_are_refused_even_with_the_copy_intact() {
    let env = Env::new();
    let src = backed_up(&env);
    let mut v = read_config(&env);
    v["chunker"]["min_size"] = 65536.into();
    v["chunker"]["avg_size"] = 131072.into();
    write_config(&env, &v);
    let before = files_under(&env.repo);
    std::fs::write(src.join("new"), Rng(3).bytes(200_000)).unwrap();
    let out = env
        .cmd()
        .args(["backup", "--dataset", "d", "--source", "walk", "--path"])
        .arg(&src)
        .args(["--snapshot", "two"])
        .output()
        .unwrap();
    let line = assert_one_line_error(&out, "was altered");
    for needle in ["chunker", "n2s-agent repair", "config.sealed"] {
        assert!(line.contains(needle), "error line lacks {needle:?}: {line}");
    }
    assert_eq!(files_under(&env.repo), before, "the repository changed");
    assert_one_line_error(&env.run(["list", "--dataset", "d"]), "was altered");
    let e = format!("{:#}", open_lib(&env).err().unwrap());
    assert!(e.contains("was altered"), "{e}");
}

#[test]
fn a_config_with_a_field_removed_is_refused() {
    for field in ["chunker", "compression", "sealed", "created_at"] {
        let env = Env::new();
        backed_up(&env);
        let mut v = read_config(&env);
        v.as_object_mut().unwrap().remove(field);
        write_config(&env, &v);
        let line = assert_one_line_error(&env.run(["list", "--dataset", "d"]), "was altered");
        assert!(line.contains(field), "error line does not name {field}: {line}");
    }
}

#[test]
fn a_config_with_a_field_added_is_refused() {
    let env = Env::new();
    backed_up(&env);
    let mut v = read_config(&env);
    v["pack_size"] = 12345.into();
    write_config(&env, &v);
    let line = assert_one_line_error(&env.run(["list", "--dataset", "d"]), "was altered");
    assert!(line.contains("pack_size"), "{line}");
}

/// The sealed part taken from another repository: under the same key it
/// opens, but it is another repository's; under another key it does not open.
#[test]
fn a_sealed_part_from_another_repository_is_refused() {
    let env = Env::new();
    backed_up(&env);
    let same_key = env.path("repo2");
    env.cmd().env("N2S_REPO", &same_key).arg("init").output().unwrap();
    let other_key_env = Env::new();
    other_key_env.init();
    for other in [same_key.join("config"), other_key_env.repo.join("config")] {
        let theirs: serde_json::Value = serde_json::from_slice(&std::fs::read(&other).unwrap()).unwrap();
        let mut v = read_config(&env);
        assert_ne!(v["sealed"], theirs["sealed"]);
        v["sealed"] = theirs["sealed"].clone();
        write_config(&env, &v);
        let line = assert_one_line_error(&env.run(["list", "--dataset", "d"]), "was altered");
        assert!(line.contains("sealed"), "{line}");
    }
}

#[test]
fn a_wrong_key_hears_does_not_open_first() {
    let env = Env::new();
    backed_up(&env);
    let other_key = env.path("other.key");
    MasterKey::generate().unwrap().save_new(&other_key).unwrap();
    let wrong =
        |env: &Env| env.cmd().env("N2S_KEY_FILE", &other_key).args(["list", "--dataset", "d"]).output().unwrap();
    // Tampered config, lost config, garbage config: the wrong key is named first.
    let mut v = read_config(&env);
    v["chunker"]["min_size"] = 65536.into();
    write_config(&env, &v);
    assert_one_line_error(&wrong(&env), "does not open the repository");
    std::fs::remove_file(config_path(&env)).unwrap();
    assert_one_line_error(&wrong(&env), "does not open the repository");
    std::fs::write(config_path(&env), b"garbage").unwrap();
    assert_one_line_error(&wrong(&env), "does not open the repository");
}

/// With the right key, a key check that fails while the sealed copy opens
/// means the config was altered, not that the key is wrong.
#[test]
fn an_altered_key_check_with_the_right_key_is_named_as_altered() {
    let env = Env::new();
    backed_up(&env);
    let other = Env::new();
    other.init();
    let theirs =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(other.repo.join("config")).unwrap()).unwrap();
    let mut v = read_config(&env);
    v["key_check"] = theirs["key_check"].clone();
    write_config(&env, &v);
    let line = assert_one_line_error(&env.run(["list", "--dataset", "d"]), "was altered");
    assert!(line.contains("key check"), "{line}");
}

#[test]
fn with_config_and_copy_lost_and_data_present_the_message_names_recovery_not_init() {
    let env = Env::new();
    backed_up(&env);
    std::fs::remove_file(config_path(&env)).unwrap();
    for copy in [None, Some(&b"damaged copy"[..])] {
        match copy {
            None => std::fs::remove_file(env.repo.join("config.sealed")).unwrap(),
            Some(b) => std::fs::write(env.repo.join("config.sealed"), b).unwrap(),
        }
        let line = assert_one_line_error(&env.run(["list", "--dataset", "d"]), "config.sealed");
        for needle in ["lost or damaged", "intact", "copy of the repository", "`config`"] {
            assert!(line.contains(needle), "error line lacks {needle:?}: {line}");
        }
        assert!(!line.contains("init"), "must not suggest init over existing data: {line}");
    }
    // A garbage config and no copy: the same.
    std::fs::write(config_path(&env), b"{ truncated").unwrap();
    std::fs::remove_file(env.repo.join("config.sealed")).unwrap();
    let line = assert_one_line_error(&env.run(["list", "--dataset", "d"]), "lost or damaged");
    assert!(!line.contains("init"), "{line}");
    // And `init` refuses to make a new repository over the old data.
    std::fs::remove_file(config_path(&env)).unwrap();
    let before = files_under(&env.repo);
    let line = assert_one_line_error(&env.run(["init"]), "already holds");
    assert!(line.contains("copy of the repository"), "{line}");
    assert_eq!(files_under(&env.repo), before);
}

#[test]
fn init_over_a_lost_config_with_its_copy_says_repair() {
    let env = Env::new();
    backed_up(&env);
    std::fs::remove_file(config_path(&env)).unwrap();
    let line = assert_one_line_error(&env.run(["init"]), "n2s-agent repair");
    assert!(line.contains("config.sealed"), "{line}");
    assert!(!config_path(&env).exists());
}

/// A config made by n2s-agent 0.1 (version 1: no sealed part, no copy).
#[test]
fn a_version_1_config_is_refused_as_pre_release() {
    let env = Env::new();
    backed_up(&env);
    let mut v = read_config(&env);
    v["version"] = 1.into();
    v.as_object_mut().unwrap().remove("sealed");
    write_config(&env, &v);
    std::fs::remove_file(env.repo.join("config.sealed")).unwrap();
    assert_one_line_error(&env.run(["list", "--dataset", "d"]), "pre-release n2s-agent 0.1");
    // Turning a version-2 config into "version 1" while its copy is there is
    // an alteration, not an old repository.
    let env = Env::new();
    backed_up(&env);
    let mut v = read_config(&env);
    v["version"] = 1.into();
    write_config(&env, &v);
    assert_one_line_error(&env.run(["list", "--dataset", "d"]), "was altered");
}
