//! The S3 backend's object semantics, on both real servers (moto and
//! SeaweedFS, started on 127.0.0.1 by the tests): put-if-absent, ranges,
//! paginated lists, batched deletes, multipart uploads and their cleanup,
//! and the errors a sysadmin meets (no such bucket, no endpoint), plus a
//! backup killed in the middle of a multipart upload.
//!
//! Where the servers differ from AWS: both answer `If-None-Match: *` with
//! 412 (checked here on both); AWS also answers 409 for a concurrent
//! conditional write, which neither server does (mapped to a retry).
#![cfg(feature = "s3")]

mod common;
use common::s3::{Kind, Server};
use common::*;

use n2s_agent::backend::s3::S3Backend;
use n2s_agent::backend::{Backend, BackendError, PutOutcome, S3Settings};

fn backend(server: &Server, threshold_mb: u64) -> S3Backend {
    let settings = S3Settings {
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        multipart_threshold: Some(threshold_mb << 20),
        credentials: Some(("n2s-test".into(), "n2s-test-secret".into())),
        ..Default::default()
    };
    S3Backend::open(&server.new_location(), &settings, std::time::Duration::from_secs(60)).expect("open S3 backend")
}

fn each_server(f: impl Fn(&Server)) {
    for kind in [Kind::Moto, Kind::SeaweedFs] {
        if let Some(s) = common::s3::server(kind) {
            eprintln!("--- {}", kind.name());
            f(s);
        }
    }
}

#[test]
fn object_semantics_on_both_servers() {
    each_server(|server| {
        let b = backend(server, 64);
        assert_eq!(b.put_if_absent("data/ab/x1", b"hello").unwrap(), PutOutcome::Created);
        // If-None-Match: * : the second writer learns the object is there,
        // and the first copy is kept.
        assert_eq!(
            b.put_if_absent("data/ab/x1", b"other").unwrap(),
            PutOutcome::AlreadyExists,
            "{}",
            server.kind.name()
        );
        assert_eq!(b.get("data/ab/x1", None).unwrap(), b"hello");
        assert_eq!(b.get("data/ab/x1", Some(1..4)).unwrap(), b"ell");
        assert_eq!(b.get("data/ab/x1", Some(2..2)).unwrap(), b"");
        assert!(b.get("data/ab/x1", Some(3..10)).is_err(), "a range past the end is an error, not a short read");
        assert!(matches!(b.get("data/ab/nope", None), Err(BackendError::NotFound(_))));
        assert_eq!(b.stat("data/ab/x1").unwrap(), Some(5));
        assert_eq!(b.stat("data/ab/nope").unwrap(), None);
        b.delete("data/ab/x1").unwrap();
        b.delete("data/ab/x1").unwrap(); // deleting nothing is fine
        assert_eq!(b.stat("data/ab/x1").unwrap(), None);
        assert!(b.put_if_absent("../evil", b"x").is_err());

        // Past the 1000-key page, and back with batched deletes.
        let keys: Vec<String> = (0..1500).map(|i| format!("segments/k{i:05}")).collect();
        std::thread::scope(|s| {
            for part in keys.chunks(250) {
                let b = &b;
                s.spawn(move || {
                    for k in part {
                        b.put_if_absent(k, k.as_bytes()).unwrap();
                    }
                });
            }
        });
        let mut listed: Vec<String> = b.list("segments/").unwrap().into_iter().map(|o| o.key).collect();
        listed.sort();
        assert_eq!(listed, keys);
        assert!(b.requests().unwrap().list >= 2, "two pages at least");
        b.delete_many(&keys).unwrap();
        assert!(b.list("segments/").unwrap().is_empty());
    });
}

#[test]
fn large_objects_go_up_in_parts_and_interrupted_uploads_are_aborted() {
    each_server(|server| {
        let b = backend(server, 5);
        let big: Vec<u8> = Rng(9).bytes(12 << 20);
        let puts_before = b.requests().unwrap().put;
        assert_eq!(b.put_if_absent("data/cd/big", &big).unwrap(), PutOutcome::Created);
        let puts = b.requests().unwrap().put - puts_before;
        assert!(puts >= 3, "create + parts + complete, got {puts}");
        assert_eq!(b.get("data/cd/big", None).unwrap(), big);
        assert_eq!(b.get("data/cd/big", Some(5_000_000..5_000_100)).unwrap(), &big[5_000_000..5_000_100]);
        assert_eq!(b.put_if_absent("data/cd/big", &big).unwrap(), PutOutcome::AlreadyExists);

        // An upload that a killed run left open is aborted by the cleanup.
        let sdk = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url(&server.endpoint)
                .force_path_style(true)
                .credentials_provider(aws_sdk_s3::config::Credentials::new("a", "b", None, None, "test"))
                .build(),
        );
        let loc = b.location();
        let (bucket, prefix) = loc.trim_start_matches("s3://").split_once('/').unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let key = format!("{prefix}/data/ef/left-open");
        let up = rt.block_on(sdk.create_multipart_upload().bucket(bucket).key(&key).send()).unwrap();
        let open = |rt: &tokio::runtime::Runtime| {
            rt.block_on(sdk.list_multipart_uploads().bucket(bucket).prefix(prefix).send()).unwrap().uploads().len()
        };
        assert_eq!(open(&rt), 1);
        assert_eq!(
            b.abort_stale_uploads(std::time::Duration::from_secs(3600)).unwrap(),
            0,
            "a young upload may be another agent's"
        );
        if server.kind == Kind::Moto {
            // moto reports every upload as begun in 2010: the age cannot be
            // told, so nothing is aborted there (checked, and said).
            assert_eq!(b.abort_stale_uploads(std::time::Duration::ZERO).unwrap(), 0);
            eprintln!(
                "moto: upload start times are a constant 2010 date; stale-upload cleanup is checked on SeaweedFS only"
            );
            rt.block_on(
                sdk.abort_multipart_upload().bucket(bucket).key(&key).upload_id(up.upload_id().unwrap()).send(),
            )
            .unwrap();
        } else {
            assert_eq!(b.abort_stale_uploads(std::time::Duration::ZERO).unwrap(), 1);
        }
        assert_eq!(open(&rt), 0, "upload {:?} still open", up.upload_id());
    });
}

#[test]
fn a_missing_bucket_and_an_unreachable_endpoint_are_named() {
    let Some(env) = Env::on(Target::S3(Kind::Moto)) else { return };
    env.init();
    let out = env.cmd().env("N2S_REPO", "s3://no-such-bucket-n2s/x").arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("the bucket no-such-bucket-n2s does not exist") && e.lines().count() == 1, "{e}");
    let fresh = Env::on(Target::S3(Kind::Moto)).unwrap();
    let out = fresh
        .cmd()
        .env("N2S_S3_ENDPOINT", "http://127.0.0.1:1")
        .env("N2S_RETRY_BASE_MS", "1")
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let last = stderr(&out).trim().lines().last().unwrap_or("").to_string();
    assert!(
        last.contains("cannot reach the S3 endpoint http://127.0.0.1:1") && last.contains("--s3-endpoint"),
        "{last}"
    );
    assert!(!fresh.key.exists(), "no key file for a repository that was never made");
}

#[test]
fn a_backup_killed_during_a_multipart_upload_completes_on_the_rerun() {
    for kind in [Kind::Moto, Kind::SeaweedFs] {
        let Some(env) = Env::on(Target::S3(kind)) else { continue };
        eprintln!("--- {}", kind.name());
        // 24 MiB packs, uploaded in 5 MiB parts.
        std::fs::write(env.path("empty.toml"), "pack_size_mb = 24\n[s3]\nmultipart_threshold_mb = 5\n").unwrap();
        env.init();
        let src = env.path("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("image"), Rng(31).bytes(56 << 20)).unwrap();
        // Killed once the first pack is stored: the uploaders are in the
        // middle of the next ones.
        let out = env
            .cmd()
            .env("N2S_FAULT", "pack-uploaded:1")
            .args(["backup", "--dataset", "m", "--source", "walk", "--path"])
            .arg(&src)
            .args(["--snapshot", "s"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "the fault point did not kill the run");
        let out = env
            .cmd()
            .env("N2S_S3_STALE_UPLOAD_SECS", "0")
            .args(["backup", "--json", "--dataset", "m", "--source", "walk", "--path"])
            .arg(&src)
            .args(["--snapshot", "s"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["changesets"][0]["resumed"], true, "{j}");
        let t = env.path("t");
        env.restore("m", "s", &t);
        assert_same_tree(&src, &t);
        env.ok(["verify", "--level", "full"]);
    }
}

/// Request economy: a first backup of many small files costs one PUT per
/// pack plus the manifest and summary objects, and a timer run that finds
/// nothing new costs no PUT and O(1) LIST requests.
#[test]
fn requests_follow_what_is_stored_and_nothing_new_costs_nothing() {
    for kind in [Kind::Moto, Kind::SeaweedFs] {
        let Some(env) = Env::on(Target::S3(kind)) else { continue };
        eprintln!("--- {}", kind.name());
        env.init();
        let src = env.path("src");
        let mut rng = Rng(23);
        for d in 0..20 {
            std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
            for f in 0..100 {
                let n = 1000 + rng.below(9000) as usize;
                std::fs::write(src.join(format!("d{d}/f{f}")), rng.bytes(n)).unwrap();
            }
        }
        let run = |env: &Env| {
            let out = env
                .cmd()
                .env("N2S_PACK_SIZE_KB", "2048")
                .args(["backup", "--json", "--dataset", "small", "--source", "walk", "--path"])
                .arg(&src)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        };
        let first = run(&env);
        let r = &first["requests"];
        let cs = &first["changesets"][0];
        let packs = cs["packs"].as_u64().unwrap();
        let stored = cs["bytes_uploaded"].as_u64().unwrap();
        // 2000 files, about 11 MB: 2 MiB packs, so about 6 of them, not 2000.
        assert!(packs <= stored.div_ceil(2 << 20) + 1, "{packs} packs for {stored} bytes");
        let manifest_objects = 3; // one segment, one pack summary, one header
        assert_eq!(r["put"].as_u64().unwrap(), packs + manifest_objects, "{r}");
        let second = run(&env);
        let r = &second["requests"];
        assert!(second["changesets"].as_array().unwrap().is_empty(), "nothing new recorded: {second}");
        assert_eq!(r["put"], 0, "{r}");
        assert!(r["list"].as_u64().unwrap() <= 1, "O(1) LIST requests: {r}");
    }
}

/// A proxy (tests/fixtures/s3_proxy.py) in front of moto, behaving as some
/// S3 servers and AWS do and the test servers do not; killed when dropped.
struct Proxy {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy(mode: &str, upstream: &Server) -> Proxy {
    use std::io::BufRead;
    let port = upstream.endpoint.rsplit(':').next().unwrap().to_string();
    let script = format!("{}/tests/fixtures/s3_proxy.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("python3")
        .args([script.as_str(), mode, port.as_str()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    Proxy { child, endpoint: format!("http://127.0.0.1:{}", line.trim()) }
}

#[test]
fn without_conditional_writes_the_backend_falls_back_to_head_then_put() {
    let Some(server) = common::s3::server(Kind::Moto) else { return };
    let p = proxy("noconditional", server);
    let settings = S3Settings {
        endpoint: Some(p.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        credentials: Some(("n2s-test".into(), "n2s-test-secret".into())),
        ..Default::default()
    };
    let b = S3Backend::open(&server.new_location(), &settings, std::time::Duration::from_secs(60)).unwrap();
    assert_eq!(b.put_if_absent("segments/a", b"one").unwrap(), PutOutcome::Created);
    assert_eq!(b.put_if_absent("segments/a", b"two").unwrap(), PutOutcome::AlreadyExists);
    assert_eq!(b.get("segments/a", None).unwrap(), b"one");
    let r = b.requests().unwrap();
    // One refused conditional PUT, then HEAD + PUT, then HEAD only.
    assert_eq!((r.put, r.head), (2, 2), "{r:?}");
}

#[test]
fn a_refused_access_and_another_region_name_the_setting_to_fix() {
    let Some(env) = Env::on(Target::S3(Kind::Moto)) else { return };
    env.init();
    let server = common::s3::server(Kind::Moto).unwrap();
    for (mode, want) in [("forbidden", "check the credentials"), ("region", "--s3-region")] {
        let p = proxy(mode, server);
        let out = env.cmd().env("N2S_S3_ENDPOINT", &p.endpoint).arg("list").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{mode}");
        let e = stderr(&out);
        assert!(e.contains(want) && e.trim().lines().count() == 1, "{mode}: {e}");
        if mode == "region" {
            assert!(e.contains("eu-west-1"), "the bucket's region is named: {e}");
        }
    }
}
