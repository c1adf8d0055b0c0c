//! The `zfs diff -FHt` parser on hostile output: never panics, and every
//! path it accepts is absolute; unescaping inverts escaping. The streaming
//! reader is fed through a 3-byte buffer (lines cut at every point) and
//! must gather the same paths as the whole-output parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use n2s_agent::source::spill::PathSorter;
use n2s_agent::source::zfs::diff::{add_paths, escape, parse_output, read_lines, unescape};

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

fn paths(s: PathSorter) -> Vec<Vec<u8>> {
    let mut it = s.finish().expect("an in-memory sort cannot fail");
    let mut v = Vec::new();
    while let Some(p) = it.next_path().expect("an in-memory sort cannot fail") {
        v.push(p);
    }
    v
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    if let Ok(lines) = parse_output(data) {
        let mut whole = PathSorter::new();
        let mut whole_ok = true;
        for l in &lines {
            assert_eq!(l.path.first(), Some(&b'/'));
            whole_ok &= add_paths(l, b"/tp/fs", &mut whole).is_ok();
        }
        let mut streamed = PathSorter::new();
        let r = read_lines(std::io::BufReader::with_capacity(3, data), |l| add_paths(&l, b"/tp/fs", &mut streamed));
        assert_eq!(r.is_ok(), whole_ok);
        if whole_ok {
            assert_eq!(paths(streamed), paths(whole));
        }
    }
    assert_eq!(unescape(&escape(data)).ok().as_deref(), Some(data));
});
