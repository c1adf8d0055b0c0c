//! `cli::config::FileConfig::parse` on arbitrary UTF-8 text: never panics,
//! and (as its doc promises) every error is a single line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use n2s_agent::cli::config::FileConfig;

#[path = "../common/mod.rs"]
mod common;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let example = include_str!("../../agent-config/agent.toml.example");
    vec![
        ("example", example.as_bytes().to_vec()),
        (
            "all-keys",
            br#"repo = "file:///srv/n2s-repo"
key_file = "/etc/n2s/key"
state_dir = "/var/lib/n2s"
pack_size_mb = 16
checkpoint_every = 16

[[dataset]]
name = "home"
source = "walk"
path = "/home"

[[dataset]]
name = "tank/data"
source = "zfs"
zfs_dataset = "tank/data"

[[dataset]]
name = "srv"
source = "btrfs"
path = "/srv"
snapshot_dir = "/srv/.snapshots"
"#
            .to_vec(),
        ),
        ("dup-dataset", b"[[dataset]]\nname = \"a\"\nsource = \"walk\"\n[[dataset]]\nname = \"a\"\nsource = \"zfs\"\n".to_vec()),
        ("bad-line", b"repo = \"x\"\n\nbogus = 1\n".to_vec()),
        ("empty", Vec::new()),
    ]
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = FileConfig::parse(text, "fuzz") {
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "config error is not one line: {msg:?}");
    }
});
