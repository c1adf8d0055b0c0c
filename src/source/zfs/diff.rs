//! A parser for `zfs diff -FHt FROM TO` output.
//!
//! Each line: `ctime<TAB>type<TAB>filetype<TAB>path[<TAB>second]`, where
//! - ctime is `seconds.nanoseconds`, right-aligned in 10 columns;
//! - type is `-` removed, `+` added, `M` modified, `R` renamed;
//! - filetype is `F` file, `/` directory, `@` symlink, `|` fifo, `=`
//!   socket, `B`/`C` block/char device, `>` door, `P` event port;
//! - path is the dataset's mountpoint followed by the path inside it;
//! - second is the new path of a rename, or `(+N)`/`(-N)` when only an
//!   inode's link count changed (zfs prints that as an M).
//!
//! Names are escaped byte by byte: every byte that is not printable ASCII
//! (space, control characters, DEL, everything from 0x80), and the
//! backslash itself, is written as a backslash and four octal digits
//! (`\0040` is a space, `\0377` is 0xff). Output is outside input: a line
//! that does not parse is an error naming the line, never a panic.
//!
//! The output is parsed line by line as it arrives (`read_lines`), and the
//! paths go to a `PathSorter`: a diff of any size costs bounded memory.

use anyhow::{Context, Result, bail, ensure};
use std::io::{BufRead, Read};

use crate::source::spill::PathSorter;

/// A line longer than this is refused: a path is at most 4095 bytes, or
/// 20 KiB escaped, and a line holds at most two.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffKind {
    Removed,
    Added,
    Modified,
    Renamed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffLine {
    /// The inode's change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    pub kind: DiffKind,
    /// The `-F` file type character.
    pub ftype: u8,
    /// Decoded absolute path (mountpoint included).
    pub path: Vec<u8>,
    /// For renames: the new path, decoded.
    pub new_path: Option<Vec<u8>>,
    /// For link-count changes: the change (`+1`, `-1`, ...).
    pub link_delta: Option<i64>,
}

/// Undo zfs diff's `\NNNN` escapes.
pub fn unescape(s: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' {
            let digits = s.get(i + 1..i + 5).context("zfs diff escape is cut short")?;
            ensure!(digits.iter().all(|d| (b'0'..=b'7').contains(d)), "zfs diff escape is not four octal digits");
            let v = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            ensure!(v <= 0xff, "zfs diff escape \\{} is not a byte", String::from_utf8_lossy(digits));
            out.push(v as u8);
            i += 5;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn parse_ctime(s: &[u8]) -> Result<i64> {
    let t = std::str::from_utf8(s).context("zfs diff timestamp is not text")?.trim();
    let (secs, nanos) = t.split_once('.').context("zfs diff timestamp has no fraction")?;
    let secs: i64 = secs.parse().context("zfs diff timestamp seconds")?;
    ensure!(nanos.len() == 9, "zfs diff timestamp fraction is not 9 digits");
    let nanos: i64 = nanos.parse().context("zfs diff timestamp nanoseconds")?;
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Parse one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<DiffLine> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
    ensure!(fields.len() == 4 || fields.len() == 5, "expected 4 or 5 tab-separated fields, found {}", fields.len());
    let ctime_ns = parse_ctime(fields[0])?;
    let kind = match fields[1] {
        b"-" => DiffKind::Removed,
        b"+" => DiffKind::Added,
        b"M" => DiffKind::Modified,
        b"R" => DiffKind::Renamed,
        other => bail!("unknown change type {:?}", String::from_utf8_lossy(other)),
    };
    let ftype = match fields[2] {
        [c] if b"F/@|=BC>P".contains(c) => *c,
        other => bail!("unknown file type {:?}", String::from_utf8_lossy(other)),
    };
    let path = unescape(fields[3])?;
    ensure!(path.first() == Some(&b'/'), "zfs diff path is not absolute");
    let (mut new_path, mut link_delta) = (None, None);
    match (kind, fields.get(4)) {
        (DiffKind::Renamed, Some(second)) => {
            let p = unescape(second)?;
            ensure!(p.first() == Some(&b'/'), "zfs diff rename target is not absolute");
            new_path = Some(p);
        }
        (DiffKind::Renamed, None) => bail!("a rename without its new path"),
        (DiffKind::Modified, Some(second)) => {
            let d = std::str::from_utf8(second).ok().and_then(|s| s.strip_prefix('(')?.strip_suffix(')'));
            let d = d.and_then(|d| d.parse::<i64>().ok()).context("a link-count change that is not (+N) or (-N)")?;
            link_delta = Some(d);
        }
        (_, Some(_)) => bail!("an unexpected fifth field"),
        (_, None) => {}
    }
    Ok(DiffLine { ctime_ns, kind, ftype, path, new_path, link_delta })
}

/// Parse output line by line as it arrives, handing each line to `f`;
/// errors name the line.
pub fn read_lines(mut r: impl BufRead, mut f: impl FnMut(DiffLine) -> Result<()>) -> Result<()> {
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        let got = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read zfs diff output line {n}"))?;
        if got == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        ensure!(line.len() <= MAX_LINE, "zfs diff output line {n} is longer than {MAX_LINE} bytes");
        if line.is_empty() {
            continue;
        }
        let l = parse_line(&line).with_context(|| format!("zfs diff output line {n}"))?;
        f(l)?;
    }
    Ok(())
}

/// Parse a whole output; errors name the line.
pub fn parse_output(out: &[u8]) -> Result<Vec<DiffLine>> {
    let mut lines = Vec::new();
    read_lines(out, |l| {
        lines.push(l);
        Ok(())
    })?;
    Ok(lines)
}

/// A path of the diff relative to the dataset, given its (decoded)
/// mountpoint; `None` when it lies outside it.
pub fn relative_to(path: &[u8], mountpoint: &[u8]) -> Option<Vec<u8>> {
    let mp = mountpoint.strip_suffix(b"/").unwrap_or(mountpoint);
    let rest = path.strip_prefix(mp)?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let rest = rest.strip_prefix(b"/")?;
    Some(rest.strip_suffix(b"/").unwrap_or(rest).to_vec())
}

/// Add the dataset-relative paths one line names (both ends of a rename)
/// to `out`.
pub fn add_paths(l: &DiffLine, mountpoint: &[u8], out: &mut PathSorter) -> Result<()> {
    for p in std::iter::once(&l.path).chain(l.new_path.iter()) {
        let rel = relative_to(p, mountpoint)
            .with_context(|| format!("zfs diff named {} outside the mountpoint", String::from_utf8_lossy(p)))?;
        out.push(&rel)?;
    }
    Ok(())
}

/// Every dataset-relative path a diff output names, read line by line into `out`.
pub fn candidate_paths(r: impl Read, mountpoint: &[u8], mut out: PathSorter) -> Result<PathSorter> {
    read_lines(std::io::BufReader::with_capacity(64 << 10, r), |l| add_paths(&l, mountpoint, &mut out))?;
    Ok(out)
}

/// Escape like zfs diff does (for tests and fuzz seeds).
pub fn escape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in s {
        if b > b' ' && b != b'\\' && b < 0x7f {
            out.push(b);
        } else {
            out.extend_from_slice(format!("\\{b:04o}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The parser as it was before it streamed (whole output in memory, a
    /// BTreeSet of paths), kept to check the streaming one against it.
    mod old {
        use super::super::*;

        pub fn parse_output(out: &[u8]) -> Result<Vec<DiffLine>> {
            out.split(|&b| b == b'\n')
                .enumerate()
                .filter(|(_, l)| !l.is_empty())
                .map(|(i, l)| parse_line(l).with_context(|| format!("zfs diff output line {}", i + 1)))
                .collect()
        }

        pub fn candidate_paths(lines: &[DiffLine], mountpoint: &[u8]) -> Result<std::collections::BTreeSet<Vec<u8>>> {
            let mut out = std::collections::BTreeSet::new();
            for l in lines {
                for p in std::iter::once(&l.path).chain(l.new_path.iter()) {
                    let rel = relative_to(p, mountpoint).with_context(|| {
                        format!("zfs diff named {} outside the mountpoint", String::from_utf8_lossy(p))
                    })?;
                    out.insert(rel);
                }
            }
            Ok(out)
        }
    }

    /// The paths the streaming parser gathers, read through a buffer of
    /// `buf` bytes into a sorter of `budget` bytes, in byte order.
    fn streamed(out: &[u8], mp: &[u8], buf: usize, budget: usize) -> Result<Vec<Vec<u8>>> {
        let mut sorter = PathSorter::with_budget(budget);
        read_lines(std::io::BufReader::with_capacity(buf, out), |l| add_paths(&l, mp, &mut sorter))?;
        let mut sorted = sorter.finish()?;
        let mut v = Vec::new();
        while let Some(p) = sorted.next_path()? {
            v.push(p);
        }
        v.sort();
        Ok(v)
    }

    fn old_paths(out: &[u8], mp: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(old::candidate_paths(&old::parse_output(out)?, mp)?.into_iter().collect())
    }

    #[test]
    fn the_streaming_parser_names_what_the_old_one_did_on_every_fixture() {
        let dir = format!("{}/tests/fixtures/zfs", env!("CARGO_MANIFEST_DIR"));
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if !name.starts_with("zfs-diff-") {
                continue;
            }
            let out = fixture(&name);
            let want = old_paths(&out, b"/tp/fs").unwrap();
            assert!(!want.is_empty(), "{name}");
            for (buf, budget) in [(64 << 10, 16 << 20), (1, 16 << 20), (7, 30), (100, 1)] {
                assert_eq!(
                    streamed(&out, b"/tp/fs", buf, budget).unwrap(),
                    want,
                    "{name}, buffer {buf}, budget {budget}"
                );
            }
            // The same lines, too.
            assert_eq!(parse_output(&out).unwrap(), old::parse_output(&out).unwrap(), "{name}");
            seen += 1;
        }
        assert!(seen >= 2, "no zfs diff fixtures in {dir}");
    }

    #[test]
    fn overlong_lines_are_refused_without_holding_them() {
        let mut out = b"1.000000000\t+\tF\t/tp/fs/".to_vec();
        out.resize(MAX_LINE + 10, b'a');
        out.push(b'\n');
        let e = format!("{:#}", streamed(&out, b"/tp/fs", 4096, 1 << 20).unwrap_err());
        assert!(e.contains("line 1 is longer"), "{e}");
        // The last line may lack its newline.
        let ok = b"1.000000000\t+\tF\t/tp/fs/a\n1.000000000\t-\tF\t/tp/fs/b";
        assert_eq!(streamed(ok, b"/tp/fs", 3, 1 << 20).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn lines_of_every_kind() {
        let out = b"1795329184.123456789\tM\t/\t/tp/fs/dir\n\
1795329184.000000001\t+\tF\t/tp/fs/dir/new\\0040file\n\
 123456789.000000000\t-\t@\t/tp/fs/old\\0011link\n\
1795329184.500000000\tR\tF\t/tp/fs/a\t/tp/fs/b/\\0377\\0012x\n\
1795329184.500000000\tM\tF\t/tp/fs/hard\t(+1)\n";
        let l = parse_output(out).unwrap();
        assert_eq!(l.len(), 5);
        assert_eq!(l[0].kind, DiffKind::Modified);
        assert_eq!(l[0].ftype, b'/');
        assert_eq!(l[1].path, b"/tp/fs/dir/new file");
        assert_eq!(l[2].ctime_ns, 123_456_789_000_000_000);
        assert_eq!(l[2].path, b"/tp/fs/old\tlink");
        assert_eq!(l[3].new_path.as_deref(), Some(&b"/tp/fs/b/\xff\nx"[..]));
        assert_eq!(l[4].link_delta, Some(1));
        let c = streamed(out, b"/tp/fs", 8192, 1 << 20).unwrap();
        let want: Vec<&[u8]> = vec![b"a", b"b/\xff\nx", b"dir", b"dir/new file", b"hard", b"old\tlink"];
        assert_eq!(c.iter().map(Vec::as_slice).collect::<Vec<_>>(), want);
    }

    #[test]
    fn mountpoints_and_the_root() {
        assert_eq!(relative_to(b"/tp/fs", b"/tp/fs"), Some(vec![]));
        assert_eq!(relative_to(b"/tp/fs/x", b"/tp/fs/"), Some(b"x".to_vec()));
        assert_eq!(relative_to(b"/tp/fsx/y", b"/tp/fs"), None);
        // A dataset mounted at / prints paths with no prefix.
        assert_eq!(relative_to(b"/etc/x", b""), Some(b"etc/x".to_vec()));
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            &b"1.000000000\tX\tF\t/a"[..],
            b"1.000000000\t+\tQ\t/a",
            b"1.000000000\t+\tF\trelative",
            b"1.000000000\tR\tF\t/a",
            b"x.000000000\t+\tF\t/a",
            b"1.0\t+\tF\t/a",
            b"1.000000000\t+\tF\t/a\\09",
            b"1.000000000\t+\tF\t/a\\0400",
            b"1.000000000\t+\tF\t/a\textra",
            b"1.000000000\tM\tF\t/a\t(x)",
            b"",
        ] {
            assert!(parse_line(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let e = format!("{:#}", parse_output(b"1.000000000\t+\tF\t/a\nbroken\n").unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/zfs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn recorded_real_zfs_diffs_parse() {
        // tests/fixtures/zfs/README.md says what made them.
        let l = parse_output(&fixture("zfs-diff-1.txt")).unwrap();
        let c = streamed(&fixture("zfs-diff-1.txt"), b"/tp/fs", 8192, 1 << 20).unwrap();
        for p in [
            &b""[..],
            b"olddir",
            b"newdir",
            b"old-name.txt",
            b"new-name.txt",
            b"gone.txt",
            b"added.txt",
            b"tab\there.txt",
            b"space name.txt",
            b"new\nline.txt",
            b"bad\xffbyte.txt",
            b"hl-src.txt",
            b"dir/deep-moved.txt",
        ] {
            assert!(c.iter().any(|x| x == p), "{:?} missing", String::from_utf8_lossy(p));
        }
        assert!(l.iter().any(|d| d.link_delta == Some(1)));
        let l2 = parse_output(&fixture("zfs-diff-2.txt")).unwrap();
        // zfs names only the surviving link when one name of a hardlinked
        // file goes: the other must come from the catalog (source::named).
        let hl = l2.iter().find(|d| d.path.ends_with(b"hl-dst.txt")).unwrap();
        assert_eq!((hl.kind, hl.link_delta), (DiffKind::Modified, Some(-1)));
        assert!(!l2.iter().any(|d| d.path.ends_with(b"hl-src.txt")));
        assert!(l2.iter().any(|d| d.ftype == b'|'));
    }

    proptest! {
        #[test]
        fn escape_roundtrips(name in proptest::collection::vec(any::<u8>(), 0..60)) {
            let e = escape(&name);
            prop_assert!(!e.contains(&b'\t') && !e.contains(&b'\n') && !e.contains(&b' '));
            prop_assert_eq!(unescape(&e).unwrap(), name);
        }

        #[test]
        fn the_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_output(&data);
            let _ = unescape(&data);
        }

        #[test]
        fn streaming_agrees_with_the_old_parser(lines in proptest::collection::vec(
            (0u8..4, proptest::collection::vec(any::<u8>(), 1..20), proptest::collection::vec(any::<u8>(), 1..20)), 0..30),
            buf in 1usize..64, budget in 1usize..200,
        ) {
            let mut out = Vec::new();
            for (kind, a, b) in &lines {
                let (a, b) = (escape(a), escape(b));
                let line = match kind {
                    0 => [&b"1.000000000\t+\tF\t/tp/fs/"[..], &a].concat(),
                    1 => [&b"1.000000000\tR\tF\t/tp/fs/"[..], &a, b"\t/tp/fs/", &b].concat(),
                    2 => [&b"1.000000000\tM\t/\t/tp/fs/"[..], &a, b"\t(+1)"].concat(),
                    _ => [&b"1.000000000\t-\t@\t/tp/fs/"[..], &a].concat(),
                };
                out.extend_from_slice(&line);
                out.push(b'\n');
            }
            // A NUL byte (\0000) cannot be in a name: both refuse it.
            match (streamed(&out, b"/tp/fs", buf, budget), old_paths(&out, b"/tp/fs")) {
                (Ok(s), Ok(o)) => prop_assert_eq!(s, o),
                (Err(_), _) => prop_assert!(lines.iter().any(|(k, a, b)| a.contains(&0) || *k == 1 && b.contains(&0))),
                (Ok(_), Err(e)) => prop_assert!(false, "old parser refused: {e:#}"),
            }
        }
    }
}
