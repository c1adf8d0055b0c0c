//! Logging through the real binary: `-q`, `-v` and `RUST_LOG` filters, one
//! event a line with no timestamp of its own, and no secret in any line
//! even at `-vvv` against a real S3 server (the moto server): not the S3
//! secret key, not the repository key, not a URL's password. The journal's
//! `<N>` priorities are tested in tests/errors.rs.

mod common;
use common::*;

fn write_tree(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("d/f{i}")), vec![b'x'; 1000 * (i + 1)]).unwrap();
    }
    src
}

fn backup(env: &Env, src: &std::path::Path, flags: &[&str], rust_log: Option<&str>) -> String {
    let mut c = env.cmd();
    if let Some(f) = rust_log {
        c.env("RUST_LOG", f);
    }
    let out = c.args(flags).args(["backup", "--dataset", "d", "--source", "walk", "--path"]).arg(src).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

/// A line that starts with a date or a time, as a logger's own timestamp
/// would (`2026-12-04T...`, `14:57:38`).
fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.len() > r.end && b[r].iter().all(u8::is_ascii_digit);
    (digits(0..4) && b[4] == b'-') || (digits(0..2) && b[2] == b':')
}

#[test]
fn quiet_verbose_and_rust_log_choose_what_is_shown() {
    let env = Env::new();
    env.init();
    let src = write_tree(&env);
    let normal = backup(&env, &src, &[], None);
    assert!(normal.contains("n2s-agent: d: finding changes"), "{normal}");
    assert!(!normal.contains("manifest manifests/"), "debug lines are hidden by default: {normal}");
    std::fs::write(src.join("d/new"), b"new").unwrap();
    let verbose = backup(&env, &src, &["-v"], None);
    assert!(verbose.contains("manifest manifests/"), "-v shows the agent's debug lines: {verbose}");
    std::fs::write(src.join("d/new2"), b"new").unwrap();
    let quiet = backup(&env, &src, &["-q"], None);
    assert!(!quiet.contains("finding changes"), "-q shows only warnings and errors: {quiet}");
    std::fs::write(src.join("d/new3"), b"new").unwrap();
    let filtered = backup(&env, &src, &[], Some("n2s_agent::engine=debug,warn"));
    assert!(filtered.contains("manifest manifests/"), "RUST_LOG enables a module's debug lines: {filtered}");
    assert!(!filtered.contains("finding changes") || filtered.contains("manifest"), "{filtered}");
    std::fs::write(src.join("d/new4"), b"new").unwrap();
    let errors_only = backup(&env, &src, &[], Some("error"));
    assert!(!errors_only.contains("n2s-agent: "), "RUST_LOG=error hides info lines: {errors_only}");
    for text in [&normal, &verbose, &quiet, &filtered] {
        for line in text.lines() {
            assert!(!has_timestamp(line), "no timestamp of our own (the journal keeps one): {line}");
        }
    }
    // A bad filter is said once and the default used.
    let out = env.cmd().env("RUST_LOG", "n2s_agent=[").args(["list", "--dataset", "d"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("RUST_LOG/N2S_LOG is not a valid filter"), "{}", stderr(&out));
}

#[test]
fn no_secret_reaches_a_log_line_even_at_trace_level_on_s3() {
    let Some(env) = Env::on(Target::S3(s3::Kind::Moto)) else { return };
    env.init();
    let src = write_tree(&env);
    let key_text = std::fs::read_to_string(&env.key).unwrap();
    let key_hex = key_text.split_whitespace().last().unwrap().to_string();
    assert!(key_hex.len() >= 32, "{key_text}");
    let secret = env.extra.iter().find(|(k, _)| k == "AWS_SECRET_ACCESS_KEY").map(|(_, v)| v.clone()).unwrap();
    let log = backup(&env, &src, &["-vvv"], None);
    assert!(log.lines().count() > 50, "trace output from the S3 stack: {} lines", log.lines().count());
    assert!(!log.contains(&secret), "the S3 secret key is in the log");
    assert!(!log.contains(&key_hex), "the repository key is in the log");
    assert!(!log.contains("Signature="), "a request signature is in the log");
    let t = env.path("restored");
    let out = env.cmd().args(["-vvv", "restore", "latest", "--dataset", "d", "--target"]).arg(&t).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(!log.contains(&secret) && !log.contains(&key_hex) && !log.contains("Signature="));
}

#[test]
fn a_password_in_a_repository_url_is_never_printed() {
    let env = Env::new();
    env.init(); // for a key file: the URL is reached after it
    let out = env
        .cmd()
        .env("N2S_REPO", "sftp://backup:hunter2hunter2@127.0.0.1:1/srv/repo")
        .args(["-vv", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(!err.contains("hunter2hunter2"), "{err}");
    assert!(err.contains("backup:***@127.0.0.1"), "the error names the repository, without its password: {err}");
}
