//! The client API (`n2s_agent::client`, issue 13 point 1): push entries made
//! in memory, list, search, pull a snapshot and stream one file, on a real
//! local repository; a second client with only the repository and the key
//! (a new state directory) reads the same; bad entries are refused.

mod common;
use common::*;

use n2s_agent::client::{Client, Entry};
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

#[test]
fn push_list_search_and_pull_through_the_api() {
    let env = Env::new();
    let url = env.repo.to_str().unwrap().to_string();
    let client = Client::init(&url, &env.key, &env.state).unwrap();
    let body = Rng(5).bytes(700_000);
    let pushed = client
        .push(
            "api",
            "first",
            vec![
                Entry::dir("etc", 0o700).with_mtime(1_600_000_000),
                Entry::file("etc/conf", 0o600, Cursor::new(b"a=1\n".to_vec())).with_mtime(1_600_000_123),
                Entry::file("data/blob", 0o644, Cursor::new(body.clone())),
                Entry::symlink("link", "data/blob"),
            ],
        )
        .unwrap();
    assert_eq!(pushed.changeset, 1);
    assert!(pushed.bytes_uploaded >= 700_000, "{pushed:?}");
    let second =
        client.push("api", "second", vec![Entry::file("data/blob", 0o644, Cursor::new(body.clone()))]).unwrap();
    assert_eq!(second.changeset, 2);
    assert!(second.bytes_uploaded < 100_000, "the same content was stored again: {second:?}");

    let cs = client.changesets("api").unwrap();
    let names: Vec<_> = cs.iter().map(|c| (c.number, c.snapshot.as_str(), c.status.as_str())).collect();
    assert_eq!(names, [(1, "first", "complete"), (2, "second", "complete")]);
    let found = client.search("api", "conf", 10).unwrap();
    assert!(found.iter().any(|f| f.path == "etc/conf" && f.change == "added"), "{found:?}");
    assert!(found.iter().any(|f| f.path == "etc/conf" && f.change == "removed"), "{found:?}");

    // The first snapshot, whole: content, modes, times, the link.
    let t = env.path("first");
    client.pull("api", "first", &t, &[]).unwrap();
    assert_eq!(std::fs::read(t.join("etc/conf")).unwrap(), b"a=1\n");
    assert_eq!(std::fs::read(t.join("data/blob")).unwrap(), body);
    let m = std::fs::metadata(t.join("etc/conf")).unwrap();
    assert_eq!((m.permissions().mode() & 0o777, m.mtime()), (0o600, 1_600_000_123));
    let d = std::fs::metadata(t.join("etc")).unwrap();
    assert_eq!((d.permissions().mode() & 0o777, d.mtime()), (0o700, 1_600_000_000));
    assert_eq!(std::fs::read_link(t.join("link")).unwrap(), std::path::Path::new("data/blob"));
    // The second: what was not pushed again is gone.
    let t2 = env.path("second");
    client.pull("api", "latest", &t2, &[]).unwrap();
    assert!(t2.join("data/blob").is_file() && !t2.join("etc").exists() && !t2.join("link").exists());

    // Another client, with only the repository and the key.
    let other = Client::open(&url, &env.key, &env.path("other-state")).unwrap();
    let mut out = Vec::new();
    assert_eq!(other.pull_file("api", "#1", "etc/conf", &mut out).unwrap(), 4);
    assert_eq!(out, b"a=1\n");
    assert_eq!(other.changesets("api").unwrap().len(), 2);
}

#[test]
fn the_api_refuses_what_it_cannot_store_or_find() {
    let env = Env::new();
    let url = env.repo.to_str().unwrap().to_string();
    let client = Client::init(&url, &env.key, &env.state).unwrap();
    for bad in ["../escape", "/abs/path", "a/../b", ""] {
        let e = client.push("api", "x", vec![Entry::file(bad, 0o644, Cursor::new(Vec::new()))]).unwrap_err();
        assert!(format!("{e:#}").contains("is not a relative path"), "{bad:?}: {e:#}");
    }
    let e = client.push("", "x", Vec::new()).unwrap_err();
    assert!(format!("{e:#}").contains("dataset name is empty"), "{e:#}");
    client.push("api", "one", vec![Entry::file("f", 0o644, Cursor::new(b"x".to_vec()))]).unwrap();
    let e = client.pull_file("api", "nope", "f", &mut Vec::new()).unwrap_err();
    assert!(format!("{e:#}").contains("no backed-up snapshot \"nope\""), "{e:#}");
    let e = client.changesets("never").unwrap_err();
    assert!(format!("{e:#}").contains("holds no backup of dataset \"never\""), "{e:#}");
    // A repository exists already: init refuses to overwrite it.
    assert!(Client::init(&url, &env.key, &env.state).is_err());
    // A wrong key is refused.
    let other = Env::new();
    std::fs::write(&other.key, format!("n2s-key-v1 {}\n", "11".repeat(32))).unwrap();
    std::fs::set_permissions(&other.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(Client::open(&url, &other.key, &other.state).is_err());
}
