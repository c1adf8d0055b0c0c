//! Excludes through the real binary on a walk dataset: glob patterns from
//! the config file and from `--exclude`, `--exclude-caches`, an exclude
//! added later (the path leaves the newer snapshots only), and bad
//! settings refused with a line that names them. The btrfs source's
//! excludes are tested in tests/btrfs.rs.

mod common;
use common::*;

use std::path::Path;

const TAG: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n";

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Every file below `root`, relative, sorted.
fn rel_files(root: &Path) -> Vec<String> {
    files_under(root).iter().map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned()).collect()
}

fn config(env: &Env, text: &str) -> std::path::PathBuf {
    let p = env.path("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn patterns_flags_and_cache_tags_leave_out_what_they_name_and_nothing_else() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for rel in [
        "keep.txt",
        "a.tmp",
        "sub/b.tmp",
        "sub/b.tmp.keep",
        "var/cache/apt/x.deb",
        "srv/var/cache/y",
        "web/node_modules/lib/z.js",
        "web/app.js",
        "home/.cache/blob",
        "home/.cache/deep/blob",
        "fake/blob",
    ] {
        write(&src, rel, rel.as_bytes());
    }
    write(&src, "home/.cache/CACHEDIR.TAG", TAG);
    write(&src, "fake/CACHEDIR.TAG", b"no signature here");
    let cfg = config(
        &env,
        &format!(
            "[[dataset]]\nname = \"d\"\nsource = \"walk\"\npath = {:?}\nexclude = [\"*.tmp\", \"/var/cache\"]\nexclude_caches = true\n",
            src.to_str().unwrap()
        ),
    );
    let out = env
        .cmd()
        .env("N2S_CONFIG", &cfg)
        .args(["backup", "--dataset", "d", "--snapshot", "one", "--exclude", "node_modules"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let t = env.path("restored");
    env.restore("d", "one", &t);
    assert_eq!(
        rel_files(&t),
        [
            "fake/CACHEDIR.TAG",
            "fake/blob",
            "home/.cache/CACHEDIR.TAG",
            "keep.txt",
            "srv/var/cache/y",
            "sub/b.tmp.keep",
            "web/app.js",
        ]
    );
    // The cache directory itself is kept, so a restore shows where
    // something was left out; the excluded directories are not.
    assert!(t.join("home/.cache").is_dir());
    assert!(!t.join("var/cache").exists() && t.join("var").is_dir());
    assert!(!t.join("web/node_modules").exists());
    // The file list of the repository knows nothing of them either.
    let ls = env.ok(["ls", "one", "--dataset", "d"]);
    assert!(ls.contains("web/app.js"), "{ls}");
    assert!(!ls.contains("node_modules") && !ls.contains("x.deb") && !ls.contains("a.tmp"), "{ls}");
}

#[test]
fn an_exclude_added_later_leaves_newer_snapshots_and_older_ones_keep_it() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src, "keep/a", b"a");
    write(&src, "logs/1.log", b"1");
    write(&src, "logs/old/2.log", b"2");
    env.backup("d", &src, "before");
    // An unchanged tree: the walk finds the excluded paths unchanged, and
    // they must still leave the new snapshot.
    let out = env
        .cmd()
        .args(["backup", "--dataset", "d", "--source", "walk", "--path"])
        .arg(&src)
        .args(["--snapshot", "after", "--exclude", "/logs"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let before = env.path("r-before");
    let after = env.path("r-after");
    env.restore("d", "before", &before);
    env.restore("d", "after", &after);
    assert_eq!(rel_files(&before), ["keep/a", "logs/1.log", "logs/old/2.log"]);
    assert_eq!(rel_files(&after), ["keep/a"]);
    assert!(!after.join("logs").exists());
    // Without the exclude again, the paths come back.
    env.backup("d", &src, "again");
    let again = env.path("r-again");
    env.restore("d", "again", &again);
    assert_same_tree(&src, &again);
}

#[test]
fn bad_exclude_settings_are_refused_with_a_line_that_names_them() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src, "f", b"f");
    let cases = [
        ("exclude = [\"a[\"]\n", "\"a[\""),
        ("exclude = [\"/\"]\n", "whole dataset"),
        ("one_file_system = false\n", "one_file_system = false"),
    ];
    for (setting, needle) in cases {
        let cfg = config(
            &env,
            &format!("[[dataset]]\nname = \"d\"\nsource = \"walk\"\npath = {:?}\n{setting}", src.to_str().unwrap()),
        );
        let out = env.cmd().env("N2S_CONFIG", &cfg).args(["backup", "--dataset", "d"]).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{setting}: accepted");
        assert!(err.contains(needle) && err.contains("dataset \"d\""), "{setting}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{setting}: {err}");
    }
    let out = env
        .cmd()
        .args(["backup", "--dataset", "d", "--source", "walk", "--path"])
        .arg(&src)
        .args(["--exclude", "x{"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("\"x{\""), "{}", stderr(&out));
    // one_file_system = true is the default, and accepted.
    let cfg = config(
        &env,
        &format!(
            "[[dataset]]\nname = \"d\"\nsource = \"walk\"\npath = {:?}\none_file_system = true\n",
            src.to_str().unwrap()
        ),
    );
    let out = env.cmd().env("N2S_CONFIG", &cfg).args(["backup", "--dataset", "d"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
