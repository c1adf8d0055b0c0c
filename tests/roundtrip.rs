//! Backup and restore of real trees through the real binary: every file
//! type, odd names, deep paths, and a series of randomized snapshots each
//! restored and compared with what it was.

mod common;
use common::*;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).is_ok()
}

/// A tree with one of everything the walk must handle.
fn build_zoo(root: &Path) {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("plain.txt"), b"hello\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    let mut r = Rng(7);
    std::fs::write(root.join("dir/random.bin"), r.bytes(3 << 20)).unwrap();
    std::fs::write(root.join("dir/text.txt"), "compressible line of text\n".repeat(100_000)).unwrap();
    // Sparse: a hole, then data, then a trailing hole.
    let f = std::fs::File::create(root.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"middle", 20 << 20).unwrap();
    drop(f);
    std::fs::hard_link(root.join("plain.txt"), root.join("dir/hardlink")).unwrap();
    std::fs::hard_link(root.join("plain.txt"), root.join("dir/sub/hardlink2")).unwrap();
    symlink("../plain.txt", root.join("dir/rel-link")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    if is_root() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("null-dev"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        std::os::unix::fs::chown(root.join("dir/text.txt"), Some(1234), Some(4321)).unwrap();
        std::os::unix::fs::lchown(root.join("dangling"), Some(99), Some(98)).unwrap();
    }
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(root.join("dir/sub"), std::fs::Permissions::from_mode(0o1770)).unwrap();
    assert!(
        set_xattr(&root.join("plain.txt"), "user.note", b"a \x00 binary value"),
        "user xattrs unsupported on the scratch file system"
    );
    set_xattr(&root.join("dir"), "user.dirnote", b"on a directory");
    // Every byte but '/' and NUL in names, plus newline and invalid UTF-8.
    let odd = root.join("odd");
    std::fs::create_dir(&odd).unwrap();
    for b in 1u8..=255 {
        if b == b'/' || b == b'.' {
            continue;
        }
        std::fs::write(odd.join(os(&[b'n', b])), [b]).unwrap();
    }
    std::fs::write(odd.join(os(b"line\nbreak")), b"nl").unwrap();
    std::fs::write(odd.join(os(b"\xff\xfe latin1 \xe9")), b"bytes").unwrap();
    // Deeper than PATH_MAX: 30 levels of 200-byte names.
    let mut deep = n2s_agent::fsx::Dir::open(root).unwrap();
    for i in 0..30 {
        let name = format!("{i:03}{}", "d".repeat(197));
        deep.create_dir(name.as_bytes()).unwrap();
        deep = deep.open_subdir(name.as_bytes()).unwrap();
    }
    use std::io::Write;
    deep.create_file(b"bottom.txt", false).unwrap().write_all(b"deep content").unwrap();
    // Times with nanoseconds, some before 1970.
    let ts = |secs: i64, nsec: i64| rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: secs, tv_nsec: nsec as _ },
        last_modification: rustix::fs::Timespec { tv_sec: secs, tv_nsec: nsec as _ },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        root.join("plain.txt"),
        &ts(1_600_000_000, 123_456_789),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    rustix::fs::utimensat(rustix::fs::CWD, root.join("empty"), &ts(-86_400 * 365, 5), rustix::fs::AtFlags::empty())
        .unwrap();
    rustix::fs::utimensat(
        rustix::fs::CWD,
        root.join("dangling"),
        &ts(1_000_000_000, 0),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

#[test]
fn every_file_type_survives_backup_and_restore() {
    let env = Env::new();
    let src = env.path("src");
    build_zoo(&src);
    env.init();
    let out = env.backup("zoo", &src, "one");
    assert!(out.contains("changeset 1"), "{out}");
    let target = env.path("restored");
    env.restore("zoo", "one", &target);
    assert_same_tree(&src, &target);
    // The sparse file stayed sparse.
    let blocks = rustix::fs::stat(target.join("sparse")).unwrap().st_blocks;
    assert!(blocks < 1024, "sparse file restored with {blocks} blocks");
    // Hardlinks are links, not copies.
    let a = rustix::fs::stat(target.join("plain.txt")).unwrap();
    let b = rustix::fs::stat(target.join("dir/sub/hardlink2")).unwrap();
    assert_eq!(a.st_ino, b.st_ino);
    // A second run with no change records no change and reads nothing.
    let out = env.backup("zoo", &src, "two");
    assert!(out.contains("0 added, 0 modified, 0 metadata, 0 removed, 0 failed; read 0 B"), "{out}");
}

#[test]
fn restore_refuses_a_non_empty_target_and_restores_single_paths() {
    let env = Env::new();
    let src = env.path("src");
    build_zoo(&src);
    env.init();
    env.backup("zoo", &src, "one");
    let target = env.path("t");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("precious"), b"do not touch").unwrap();
    let out = env.run([
        "restore".as_ref(),
        "one".as_ref(),
        "--dataset".as_ref(),
        "zoo".as_ref(),
        "--target".as_ref(),
        target.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(std::fs::read(target.join("precious")).unwrap(), b"do not touch");

    let single = env.path("single");
    env.ok([
        "restore".as_ref(),
        "one".as_ref(),
        "--dataset".as_ref(),
        "zoo".as_ref(),
        "--target".as_ref(),
        single.as_os_str(),
        "--path".as_ref(),
        "dir/sub".as_ref(),
    ]);
    let got: Vec<_> = files_under(&single);
    assert_eq!(got, vec![single.join("dir/sub/hardlink2")]);
    assert_eq!(std::fs::read(single.join("dir/sub/hardlink2")).unwrap(), b"hello\n");
}

#[test]
fn ten_randomized_snapshots_each_restore_exactly() {
    let seed = seed_from_env_or_time();
    eprintln!("seed {seed} (rerun with N2S_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("base")).unwrap();
    for i in 0..20 {
        let n = rng.below(200_000) as usize;
        std::fs::write(src.join(format!("base/f{i}")), rng.bytes(n)).unwrap();
    }
    env.init();
    let mut expected = Vec::new();
    for step in 0..10 {
        for _ in 0..1 + rng.below(4) {
            mutate_tree(&src, &mut rng, step);
        }
        let label = format!("s{step}");
        env.backup("rand", &src, &label);
        let copy = env.path(&format!("expect-{step}"));
        copy_tree(&src, &copy);
        expected.push((label, copy));
    }
    let list = env.list_json("rand");
    assert_eq!(list["changesets"].as_array().unwrap().len(), 10, "seed {seed}");
    for (label, copy) in &expected {
        let target = env.path(&format!("got-{label}"));
        env.restore("rand", label, &target);
        assert_same_tree(copy, &target);
    }
    env.ok(["verify", "--level", "full"]);
}

#[test]
fn an_incremental_run_reads_only_what_changed() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(11);
    for i in 0..300 {
        std::fs::write(src.join(format!("f{i:03}")), rng.bytes(10_000)).unwrap();
    }
    env.init();
    env.backup("inc", &src, "a");
    std::fs::write(src.join("f007"), rng.bytes(10_000)).unwrap();
    let out = env.backup("inc", &src, "b");
    assert!(out.contains("0 added, 1 modified"), "{out}");
    let list = env.list_json("inc");
    let b = &list["changesets"][1];
    assert_eq!(b["bytes_changed"], 10_000);
    assert!(b["bytes_uploaded"].as_u64().unwrap() < 20_000, "{b}");
}
