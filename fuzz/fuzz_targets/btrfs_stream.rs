//! The btrfs send stream parser on hostile input: never panics. Inputs are
//! tried as they are, and re-framed with a valid header and CRC so the
//! attribute and command decoding is reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use n2s_agent::source::btrfs::stream::{btrfs_crc32c, encode_command, encode_header, read_ops, attr, cmd};

#[path = "../common/mod.rs"]
mod common;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut s = encode_header(1);
    s.extend(encode_command(cmd::RENAME, &[(attr::PATH, b"o257-5-0"), (attr::PATH_TO, b"dir/name")]));
    s.extend(encode_command(cmd::UTIMES, &[(attr::PATH, b"dir/name"), (attr::MTIME, &[0u8; 12])]));
    s.extend(encode_command(cmd::END, &[]));
    vec![("rename-utimes-end", s)]
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let _ = read_ops(data);
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
        let _ = read_ops(&framed[..]);
    }
});
