//! The btrfs send stream parser on hostile input: never panics. Inputs are
//! tried as they are, and re-framed with a valid header and CRC so the
//! attribute and command decoding is reached too. Both the op-at-a-time
//! reader and the path gathering the diff uses (which reads it that way)
//! are driven, and must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use n2s_agent::source::btrfs::diff::{add_paths, candidate_paths};
use n2s_agent::source::btrfs::stream::{attr, btrfs_crc32c, cmd, encode_command, encode_header, read_ops};
use n2s_agent::source::spill::PathSorter;

#[path = "../common/mod.rs"]
mod common;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut s = encode_header(1);
    s.extend(encode_command(cmd::RENAME, &[(attr::PATH, b"o257-5-0"), (attr::PATH_TO, b"dir/name")]));
    s.extend(encode_command(cmd::UTIMES, &[(attr::PATH, b"dir/name"), (attr::MTIME, &[0u8; 12])]));
    s.extend(encode_command(cmd::END, &[]));
    vec![("rename-utimes-end", s)]
}

fn paths(s: PathSorter) -> Vec<Vec<u8>> {
    let mut it = s.finish().expect("an in-memory sort cannot fail");
    let mut v = Vec::new();
    while let Some(p) = it.next_path().expect("an in-memory sort cannot fail") {
        v.push(p);
    }
    v
}

fn check(data: &[u8]) {
    let ops = read_ops(data);
    let streamed = candidate_paths(data, PathSorter::new());
    if let (Ok(ops), Ok(streamed)) = (ops, streamed) {
        let mut all = PathSorter::new();
        for op in &ops {
            add_paths(op, &mut all).expect("paths of a parsed stream hold no NUL");
        }
        assert_eq!(paths(streamed), paths(all));
    }
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    check(data);
    if let Some((&v, rest)) = data.split_first() {
        let mut framed = encode_header(u32::from(v % 3) + 1);
        let mut c = Vec::new();
        let cmd_no = u16::from(rest.first().copied().unwrap_or(0) % 30);
        c.extend_from_slice(&(rest.len() as u32).to_le_bytes());
        c.extend_from_slice(&cmd_no.to_le_bytes());
        c.extend_from_slice(&[0; 4]);
        c.extend_from_slice(rest);
        let crc = btrfs_crc32c(&c);
        c[6..10].copy_from_slice(&crc.to_le_bytes());
        framed.extend(c);
        framed.extend(encode_command(cmd::END, &[]));
        check(&framed);
    }
});
