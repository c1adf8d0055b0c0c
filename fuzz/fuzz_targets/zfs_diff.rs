//! The `zfs diff -FHt` parser on hostile output: never panics, and every
//! path it accepts is absolute; unescaping inverts escaping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use n2s_agent::source::zfs::diff::{candidate_paths, escape, parse_output, unescape};

#[path = "../common/mod.rs"]
mod common;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![(
        "kinds",
        b"1795329184.123456789\tM\t/\t/tp/fs/dir\n1795329184.000000001\t+\tF\t/tp/fs/new\\0040file\n\
1795329184.500000000\tR\tF\t/tp/fs/a\t/tp/fs/b/\\0377x\n1795329184.500000000\tM\tF\t/tp/fs/hard\t(+1)\n"
            .to_vec(),
    )]
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    if let Ok(lines) = parse_output(data) {
        for l in &lines {
            assert_eq!(l.path.first(), Some(&b'/'));
        }
        let _ = candidate_paths(&lines, b"/tp/fs");
    }
    assert_eq!(unescape(&escape(data)).ok().as_deref(), Some(data));
});
