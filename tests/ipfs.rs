//! What only the IPFS backend has, through the real binary on a js-ipfs
//! node: a node that is down is one clear line; every object a backup
//! stores is pinned under its CID; prune unpins what it deletes and runs the
//! node's GC, and what is kept still restores.
#![cfg(feature = "ipfs")]

mod common;

use common::*;
use n2s_agent::backend::Backend;
use n2s_agent::backend::ipfs::IpfsBackend;
use std::sync::RwLock;

/// js-ipfs deadlocks when `repo/gc` runs while MFS writes are in flight: a
/// test that lets the agent run the GC holds this alone.
static GC: RwLock<()> = RwLock::new(());

fn pinned(port: u16, cid: &str) -> bool {
    let (code, body) = ipfs::rpc(port, "pin/ls", &format!("arg={cid}&type=recursive")).expect("pin/ls");
    code == 200 && body.contains("recursive")
}

fn some_files(env: &Env, n: usize) -> std::path::PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(5);
    for i in 0..n {
        std::fs::write(src.join(format!("f{i}")), rng.bytes(120_000)).unwrap();
    }
    src
}

#[test]
fn a_node_that_is_down_is_one_line_naming_the_url_and_the_fix() {
    let env = Env::new();
    let port = free_port();
    let url = format!("ipfs://127.0.0.1:{port}/n2s");
    let out = env.cmd().env("N2S_REPO", &url).env("N2S_RETRY_BASE_MS", "1").arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.trim().lines().last().unwrap_or("");
    assert!(last.starts_with("n2s-agent: error: "), "{err}");
    assert!(last.contains(&format!("127.0.0.1:{port}")) && last.contains("start the node"), "{err}");
}

#[test]
fn every_object_a_backup_stores_is_pinned_under_its_cid() {
    let Some(node) = ipfs::server() else { return };
    let _shared = GC.read().unwrap_or_else(|e| e.into_inner());
    let env = Env::on(Target::Ipfs).unwrap();
    env.init();
    let src = some_files(&env, 6);
    env.backup("d", &src, "s1");
    let b = IpfsBackend::open(env.url.as_deref().unwrap()).unwrap();
    let objects = b.list_cids("").unwrap();
    assert!(objects.iter().any(|o| o.key.starts_with("data/")), "{objects:?}");
    assert!(objects.iter().any(|o| o.key.starts_with("manifests/")), "{objects:?}");
    for o in &objects {
        assert!(o.cid.starts_with("baf"), "{o:?}");
        assert_eq!(b.cid(&o.key).unwrap(), o.cid);
        assert!(pinned(node.port, &o.cid), "{} ({}) is not pinned", o.key, o.cid);
    }
    // No temporary is left, and none is listed.
    assert!(b.list("tmp").unwrap().is_empty());
    let (_, tmp) = ipfs::rpc(node.port, "files/ls", &format!("arg={}/tmp&long=true", mfs_root(&env))).unwrap();
    assert!(!tmp.contains("\"Type\":0"), "temporaries left: {tmp}");
}

/// The repository's MFS directory, from its URL.
fn mfs_root(env: &Env) -> String {
    let url = env.url.as_deref().unwrap();
    let rest = url.strip_prefix("ipfs://").unwrap();
    format!("/{}", rest.split_once('/').unwrap().1)
}

#[test]
fn prune_unpins_what_it_deletes_runs_the_gc_and_what_is_kept_restores() {
    let Some(node) = ipfs::server() else { return };
    let _alone = GC.write().unwrap_or_else(|e| e.into_inner());
    let mut env = Env::on(Target::Ipfs).unwrap();
    // This test runs alone on the node: the agent may run its GC.
    env.extra.retain(|(k, _)| k != "N2S_IPFS_GC");
    env.init();
    let src = some_files(&env, 4);
    let small = |env: &Env, label: &str| {
        let out = env.backup_small_packs("d", &src, label, 64);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    small(&env, "s1");
    let mut rng = Rng(9);
    for i in 0..4 {
        std::fs::write(src.join(format!("f{i}")), rng.bytes(120_000)).unwrap();
    }
    small(&env, "s2");
    let b = IpfsBackend::open(env.url.as_deref().unwrap()).unwrap();
    let before = b.list_cids("data/").unwrap();
    env.ok(["forget", "--dataset", "d", "--keep-last", "1"]);
    env.ok(["prune", "--grace", "0"]);
    env.ok(["prune", "--grace", "0"]);
    let after = b.list_cids("data/").unwrap();
    let gone: Vec<_> = before.iter().filter(|o| !after.iter().any(|a| a.key == o.key)).collect();
    assert!(!gone.is_empty(), "prune deleted no pack");
    for o in &gone {
        assert!(!pinned(node.port, &o.cid), "{} ({}) is still pinned after prune deleted it", o.key, o.cid);
    }
    for o in &after {
        assert!(pinned(node.port, &o.cid), "{} ({}) lost its pin", o.key, o.cid);
    }
    // The GC ran (its marker is gone) and took nothing that is kept.
    let (code, _) = ipfs::rpc(node.port, "files/stat", &format!("arg={}/tmp/gc-pending", mfs_root(&env))).unwrap();
    assert_ne!(code, 200, "the GC marker is still there");
    let t = env.path("t");
    env.restore("d", "s2", &t);
    assert_same_tree(&src, &t);
    let v = env.ok(["verify", "--level", "full", "--json"]);
    assert!(v.contains("\"ok\": true") || v.contains("\"ok\":true"), "{v}");
}

/// Each pack's CID is recorded in the local index as the backup uploads it,
/// and `restore --ipfs-gateway` fetches the packs by CID from an HTTP
/// gateway: with every pack read from the node itself failing, the restore
/// is still whole. A rebuilt index (no CIDs recorded) asks the node once per
/// pack and then does the same.
#[test]
fn packs_are_recorded_by_cid_and_a_restore_fetches_them_from_a_gateway() {
    let Some(node) = ipfs::server() else { return };
    let _shared = GC.read().unwrap_or_else(|e| e.into_inner());
    let env = Env::on(Target::Ipfs).unwrap();
    env.init();
    let src = some_files(&env, 8);
    let out = env.backup_small_packs("d", &src, "s1", 256);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = IpfsBackend::open(env.url.as_deref().unwrap()).unwrap();
    let packs: Vec<_> = b.list_cids("data/").unwrap();
    assert!(packs.len() > 1, "{packs:?}");
    // The index holds the same CIDs.
    let index = common::files_under(&env.state).into_iter().find(|p| p.ends_with("index.sqlite")).unwrap();
    let recorded = std::process::Command::new("sqlite3")
        .arg(&index)
        .arg("SELECT content_address FROM packs WHERE content_address IS NOT NULL")
        .output()
        .unwrap();
    let recorded = String::from_utf8_lossy(&recorded.stdout).into_owned();
    for p in &packs {
        assert!(recorded.contains(&p.cid), "{} ({}) not recorded: {recorded}", p.key, p.cid);
    }
    let gateway = format!("http://127.0.0.1:{}", node.gateway_port);
    let from_gateway = |target: &std::path::Path| {
        env.cmd()
            .env("N2S_FAULT_BACKEND", "get:fatal:after:0@data/")
            .args(["restore", "s1", "--dataset", "d", "--ipfs-gateway", &gateway, "--target"])
            .arg(target)
            .output()
            .unwrap()
    };
    // Without the gateway the same restore fails: the fault is real.
    let t0 = env.path("t0");
    let out = env
        .cmd()
        .env("N2S_FAULT_BACKEND", "get:fatal:after:0@data/")
        .args(["restore", "s1", "--dataset", "d", "--target"])
        .arg(&t0)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a restore without the gateway read the packs anyway");
    let t = env.path("t1");
    let out = from_gateway(&t);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&src, &t);
    // A rebuilt index learns the CIDs from the node, then reads the gateway.
    std::fs::remove_dir_all(&env.state).unwrap();
    env.ok(["catalog", "rebuild"]);
    let t = env.path("t2");
    let out = from_gateway(&t);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&src, &t);
}
