//! A parser for the btrfs send stream (protocol versions 1 to 3), the
//! binary form of `btrfs send`, never the `btrfs receive --dump` text,
//! whose format changed between btrfs-progs releases.
//!
//! Layout: a header `"btrfs-stream\0" | version u32le`, then commands, each
//! `len u32le | cmd u16le | crc u32le | attributes (len bytes)`, where crc
//! is CRC-32C (seed 0, no final inversion, as btrfs computes it) over the
//! command header with a zero crc field plus the attributes. An attribute
//! is `type u16le | len u16le | value`; from version 2 the DATA attribute
//! has no length and runs to the end of its command.
//!
//! The stream is outside input: every length is checked, memory per
//! command is bounded, and no input can make the parser panic. It is read
//! one command at a time (`StreamReader::next_op`), so a stream of any
//! length costs the memory of its largest command.

use anyhow::{Result, bail, ensure};
use std::io::Read;

pub const MAGIC: &[u8; 13] = b"btrfs-stream\0";
/// Commands larger than this are refused (v1 commands are at most 64 KiB;
/// with --no-data no command carries file data).
pub const MAX_COMMAND_LEN: u32 = 16 << 20;

/// Command numbers (`BTRFS_SEND_C_*`).
pub mod cmd {
    pub const SUBVOL: u16 = 1;
    pub const SNAPSHOT: u16 = 2;
    pub const MKFILE: u16 = 3;
    pub const MKDIR: u16 = 4;
    pub const MKNOD: u16 = 5;
    pub const MKFIFO: u16 = 6;
    pub const MKSOCK: u16 = 7;
    pub const SYMLINK: u16 = 8;
    pub const RENAME: u16 = 9;
    pub const LINK: u16 = 10;
    pub const UNLINK: u16 = 11;
    pub const RMDIR: u16 = 12;
    pub const SET_XATTR: u16 = 13;
    pub const REMOVE_XATTR: u16 = 14;
    pub const WRITE: u16 = 15;
    pub const CLONE: u16 = 16;
    pub const TRUNCATE: u16 = 17;
    pub const CHMOD: u16 = 18;
    pub const CHOWN: u16 = 19;
    pub const UTIMES: u16 = 20;
    pub const END: u16 = 21;
    pub const UPDATE_EXTENT: u16 = 22;
    // Version 2.
    pub const FALLOCATE: u16 = 23;
    pub const FILEATTR: u16 = 24;
    pub const ENCODED_WRITE: u16 = 25;
    // Version 3.
    pub const ENABLE_VERITY: u16 = 26;
}

/// Attribute numbers (`BTRFS_SEND_A_*`).
pub mod attr {
    pub const UUID: u16 = 1;
    pub const CTRANSID: u16 = 2;
    pub const INO: u16 = 3;
    pub const SIZE: u16 = 4;
    pub const MODE: u16 = 5;
    pub const UID: u16 = 6;
    pub const GID: u16 = 7;
    pub const RDEV: u16 = 8;
    pub const CTIME: u16 = 9;
    pub const MTIME: u16 = 10;
    pub const ATIME: u16 = 11;
    pub const OTIME: u16 = 12;
    pub const XATTR_NAME: u16 = 13;
    pub const XATTR_DATA: u16 = 14;
    pub const PATH: u16 = 15;
    pub const PATH_TO: u16 = 16;
    pub const PATH_LINK: u16 = 17;
    pub const FILE_OFFSET: u16 = 18;
    pub const DATA: u16 = 19;
    pub const CLONE_UUID: u16 = 20;
    pub const CLONE_CTRANSID: u16 = 21;
    pub const CLONE_PATH: u16 = 22;
    pub const CLONE_OFFSET: u16 = 23;
    pub const CLONE_LEN: u16 = 24;
}

/// CRC-32C as btrfs computes it: seed 0 and no final inversion.
pub fn btrfs_crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    let mut crc = 0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// One raw command: its number and attributes, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub cmd: u16,
    pub attrs: Vec<(u16, Vec<u8>)>,
}

impl Command {
    pub fn get(&self, t: u16) -> Option<&[u8]> {
        self.attrs.iter().find(|(k, _)| *k == t).map(|(_, v)| v.as_slice())
    }

    fn need(&self, t: u16) -> Result<&[u8]> {
        match self.get(t) {
            Some(v) => Ok(v),
            None => bail!("send stream command {} lacks attribute {t}", self.cmd),
        }
    }

    pub fn path(&self, t: u16) -> Result<Vec<u8>> {
        let p = self.need(t)?;
        ensure!(!p.contains(&0), "send stream path holds a NUL byte");
        // Paths are relative to the subvolume root; normalise away a
        // trailing slash so the root is the empty path.
        Ok(p.strip_suffix(b"/").unwrap_or(p).to_vec())
    }

    pub fn u64(&self, t: u16) -> Result<u64> {
        let v = self.need(t)?;
        ensure!(v.len() == 8, "send stream attribute {t} should be 8 bytes, is {}", v.len());
        Ok(u64::from_le_bytes(v.try_into().expect("8 bytes")))
    }

    /// A timespec attribute: seconds u64 + nanoseconds u32, as nanoseconds.
    pub fn time_ns(&self, t: u16) -> Result<i64> {
        let v = self.need(t)?;
        ensure!(v.len() == 12, "send stream time attribute {t} should be 12 bytes, is {}", v.len());
        let secs = i64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
        let nsec = u32::from_le_bytes(v[8..].try_into().expect("4 bytes")) as i64;
        Ok(secs.saturating_mul(1_000_000_000).saturating_add(nsec))
    }
}

/// What a command means for change discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The stream's first command: a full send (`Subvol`) or one relative
    /// to a parent snapshot (`Snapshot`).
    Subvol {
        path: Vec<u8>,
        uuid: Vec<u8>,
        ctransid: u64,
    },
    Snapshot {
        path: Vec<u8>,
        uuid: Vec<u8>,
        ctransid: u64,
        parent_uuid: Vec<u8>,
        parent_ctransid: u64,
    },
    /// A new inode (file, dir, device, fifo, socket or symlink) at `path`,
    /// usually under an orphan name `o<ino>-<gen>-<n>` renamed just after.
    Create {
        path: Vec<u8>,
        ino: Option<u64>,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// `path` becomes another name of the inode at `target`.
    Link {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    Unlink {
        path: Vec<u8>,
    },
    Rmdir {
        path: Vec<u8>,
    },
    /// Content may have changed (write, clone, truncate, extent update,
    /// fallocate, encoded write).
    Content {
        path: Vec<u8>,
    },
    /// Metadata changed (xattrs, mode, owner, times, file attributes, verity).
    Meta {
        path: Vec<u8>,
    },
    End,
    /// A command this parser does not know: its path, if any, is still a
    /// change, so nothing is missed.
    Unknown {
        cmd: u16,
        path: Option<Vec<u8>>,
    },
}

impl Op {
    pub fn decode(c: &Command) -> Result<Op> {
        use cmd::*;
        Ok(match c.cmd {
            SUBVOL => Op::Subvol {
                path: c.path(attr::PATH)?,
                uuid: c.need(attr::UUID)?.to_vec(),
                ctransid: c.u64(attr::CTRANSID)?,
            },
            SNAPSHOT => Op::Snapshot {
                path: c.path(attr::PATH)?,
                uuid: c.need(attr::UUID)?.to_vec(),
                ctransid: c.u64(attr::CTRANSID)?,
                parent_uuid: c.need(attr::CLONE_UUID)?.to_vec(),
                parent_ctransid: c.u64(attr::CLONE_CTRANSID)?,
            },
            MKFILE | MKDIR | MKNOD | MKFIFO | MKSOCK | SYMLINK => {
                Op::Create { path: c.path(attr::PATH)?, ino: c.u64(attr::INO).ok() }
            }
            RENAME => Op::Rename { from: c.path(attr::PATH)?, to: c.path(attr::PATH_TO)? },
            LINK => Op::Link { path: c.path(attr::PATH)?, target: c.path(attr::PATH_LINK)? },
            UNLINK => Op::Unlink { path: c.path(attr::PATH)? },
            RMDIR => Op::Rmdir { path: c.path(attr::PATH)? },
            WRITE | CLONE | TRUNCATE | UPDATE_EXTENT | FALLOCATE | ENCODED_WRITE => {
                Op::Content { path: c.path(attr::PATH)? }
            }
            SET_XATTR | REMOVE_XATTR | CHMOD | CHOWN | UTIMES | FILEATTR | ENABLE_VERITY => {
                Op::Meta { path: c.path(attr::PATH)? }
            }
            END => Op::End,
            other => Op::Unknown { cmd: other, path: c.path(attr::PATH).ok() },
        })
    }
}

/// Reads commands from a send stream, one at a time.
pub struct StreamReader<R: Read> {
    reader: R,
    version: u32,
    ended: bool,
    /// The current command's bytes, reused from one command to the next.
    buf: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    /// Read and check the stream header.
    pub fn new(mut reader: R) -> Result<Self> {
        let mut header = [0u8; 17];
        read_exact_or(&mut reader, &mut header, "the send stream header")?;
        ensure!(&header[..13] == MAGIC, "not a btrfs send stream (bad magic)");
        let version = u32::from_le_bytes(header[13..].try_into().expect("4 bytes"));
        ensure!((1..=3).contains(&version), "btrfs send stream version {version} is not supported (1 to 3 are)");
        Ok(StreamReader { reader, version, ended: false, buf: Vec::new() })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The next command, or `None` after END.
    pub fn next_command(&mut self) -> Result<Option<Command>> {
        if self.ended {
            return Ok(None);
        }
        let mut head = [0u8; 10];
        // `btrfs send` always finishes with END (when it sends several
        // subvolumes, only the last): input that stops before it was cut short.
        match self.reader.read(&mut head[..1]) {
            Ok(0) => bail!("the send stream ends without its END command (truncated)"),
            Ok(_) => {}
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read the send stream")),
        }
        read_exact_or(&mut self.reader, &mut head[1..], "a send stream command header")?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let cmd = u16::from_le_bytes(head[4..6].try_into().expect("2 bytes"));
        let crc = u32::from_le_bytes(head[6..10].try_into().expect("4 bytes"));
        ensure!(len <= MAX_COMMAND_LEN, "send stream command {cmd} claims {len} bytes, more than the limit");
        // The CRC covers the header with a zeroed crc field.
        self.buf.clear();
        self.buf.extend_from_slice(&head[..6]);
        self.buf.extend_from_slice(&[0; 4]);
        // Grows with the bytes that arrive, not with what the length claims.
        let got = (&mut self.reader)
            .take(u64::from(len))
            .read_to_end(&mut self.buf)
            .map_err(|e| anyhow::Error::new(e).context("cannot read a send stream command"))?;
        ensure!(got == len as usize, "the send stream ends inside a send stream command (truncated)");
        let actual = btrfs_crc32c(&self.buf);
        ensure!(actual == crc, "send stream command {cmd} fails its CRC check (stream corrupt or truncated)");
        let attrs = parse_attrs(&self.buf[10..], self.version)?;
        if self.buf.capacity() > 1 << 20 {
            // A rare big command (v2 data): do not keep its buffer.
            self.buf = Vec::new();
        }
        if cmd == cmd::END {
            self.ended = true;
        }
        Ok(Some(Command { cmd, attrs }))
    }

    /// The next operation, or `None` after END.
    pub fn next_op(&mut self) -> Result<Option<Op>> {
        self.next_command()?.map(|c| Op::decode(&c)).transpose()
    }
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            anyhow::anyhow!("the send stream ends inside {what} (truncated)")
        } else {
            anyhow::Error::new(e).context(format!("cannot read {what}"))
        }
    })
}

fn parse_attrs(mut body: &[u8], version: u32) -> Result<Vec<(u16, Vec<u8>)>> {
    let mut attrs = Vec::new();
    while !body.is_empty() {
        ensure!(body.len() >= 2, "send stream attribute header is truncated");
        let t = u16::from_le_bytes([body[0], body[1]]);
        if version >= 2 && t == attr::DATA {
            attrs.push((t, body[2..].to_vec()));
            break;
        }
        ensure!(body.len() >= 4, "send stream attribute header is truncated");
        let len = u16::from_le_bytes([body[2], body[3]]) as usize;
        ensure!(body.len() >= 4 + len, "send stream attribute {t} runs past its command");
        attrs.push((t, body[4..4 + len].to_vec()));
        body = &body[4 + len..];
    }
    Ok(attrs)
}

/// Read a whole stream into a list of operations, for tests and fuzzing:
/// the diff reads op by op (`StreamReader::next_op`), since a stream has
/// tens of bytes per changed inode and a diff may change millions.
pub fn read_ops(reader: impl Read) -> Result<Vec<Op>> {
    let mut s = StreamReader::new(reader)?;
    let mut ops = Vec::new();
    while let Some(op) = s.next_op()? {
        ops.push(op);
    }
    Ok(ops)
}

/// Build one command's bytes (for tests and fuzz seeds).
pub fn encode_command(cmd: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        body.extend_from_slice(&t.to_le_bytes());
        body.extend_from_slice(&(v.len() as u16).to_le_bytes());
        body.extend_from_slice(v);
    }
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&cmd.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body);
    let crc = btrfs_crc32c(&out);
    out[6..10].copy_from_slice(&crc.to_le_bytes());
    out
}

pub fn encode_header(version: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/btrfs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn a_recorded_incremental_stream_parses() {
        let ops = read_ops(&fixture("incremental-v1.stream")[..]).unwrap();
        assert!(matches!(ops[0], Op::Snapshot { ref path, .. } if path == b"s2"));
        assert_eq!(ops.last(), Some(&Op::End));
        assert!(ops.contains(&Op::Rename { from: b"a".to_vec(), to: b"a2".to_vec() }));
        assert!(ops.contains(&Op::Unlink { path: b"sym".to_vec() }));
        assert!(ops.contains(&Op::Content { path: b"g".to_vec() }));
        assert!(ops.contains(&Op::Content { path: b"a2/b/f".to_vec() }));
        assert!(ops.contains(&Op::Rename { from: b"o262-8-0".to_vec(), to: b"p".to_vec() }));
        assert!(ops.contains(&Op::Meta { path: b"new/deep/file".to_vec() }));
        assert!(ops.contains(&Op::Meta { path: Vec::new() }), "the root's utimes has the empty path");
    }

    #[test]
    fn a_recorded_full_stream_parses() {
        let ops = read_ops(&fixture("full-v1.stream")[..]).unwrap();
        assert!(matches!(ops[0], Op::Subvol { ref path, .. } if path == b"s1"));
        assert!(ops.iter().any(|o| matches!(o, Op::Link { .. })), "{ops:?}");
        assert!(ops.iter().any(|o| matches!(o, Op::Create { ino: Some(_), .. })));
    }

    #[test]
    fn corruption_and_truncation_are_errors() {
        let good = fixture("incremental-v1.stream");
        for i in [0, 5, 13, 20, 40, good.len() / 2, good.len() - 3] {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(read_ops(&bad[..]).is_err(), "flip at {i} not detected");
        }
        for cut in [3, 17, 18, 25, good.len() / 2, good.len() - 1] {
            assert!(read_ops(&good[..cut]).is_err(), "truncation at {cut} not detected");
        }
    }

    #[test]
    fn encoded_commands_roundtrip_and_v2_data_runs_to_the_end() {
        let mut s = encode_header(2);
        s.extend(encode_command(cmd::RENAME, &[(attr::PATH, b"x"), (attr::PATH_TO, b"y/z")]));
        let mut write = encode_command(cmd::WRITE, &[(attr::PATH, b"f"), (attr::FILE_OFFSET, &0u64.to_le_bytes())]);
        // Append a v2 DATA attribute (no length) and fix up length and CRC.
        let mut body = write[10..].to_vec();
        body.extend_from_slice(&attr::DATA.to_le_bytes());
        body.extend_from_slice(b"payload bytes");
        write = Vec::new();
        write.extend_from_slice(&(body.len() as u32).to_le_bytes());
        write.extend_from_slice(&cmd::WRITE.to_le_bytes());
        write.extend_from_slice(&[0; 4]);
        write.extend_from_slice(&body);
        let crc = btrfs_crc32c(&write);
        write[6..10].copy_from_slice(&crc.to_le_bytes());
        s.extend(write);
        s.extend(encode_command(cmd::END, &[]));
        let mut r = StreamReader::new(&s[..]).unwrap();
        let c1 = r.next_command().unwrap().unwrap();
        assert_eq!(Op::decode(&c1).unwrap(), Op::Rename { from: b"x".to_vec(), to: b"y/z".to_vec() });
        let c2 = r.next_command().unwrap().unwrap();
        assert_eq!(c2.get(attr::DATA), Some(&b"payload bytes"[..]));
        assert_eq!(Op::decode(&c2).unwrap(), Op::Content { path: b"f".to_vec() });
        assert!(r.next_command().unwrap().unwrap().cmd == cmd::END);
        assert!(r.next_command().unwrap().is_none());
    }

    /// A reader that hands out at most `step` bytes per call, and counts
    /// how many it has handed out.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        given: std::rc::Rc<std::cell::Cell<usize>>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.given.set(self.given.get() + n);
            Ok(n)
        }
    }

    #[test]
    fn ops_come_one_at_a_time_from_a_reader() {
        let bytes = fixture("incremental-v1.stream");
        let given = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut r = StreamReader::new(Trickle { data: &bytes, step: 3, given: given.clone() }).unwrap();
        let first = r.next_op().unwrap().unwrap();
        assert!(matches!(first, Op::Snapshot { .. }));
        // Only the header and the first command were read.
        let first_len = 17 + 10 + u32::from_le_bytes(bytes[17..21].try_into().unwrap()) as usize;
        assert_eq!(given.get(), first_len);
        let mut ops = vec![first];
        while let Some(op) = r.next_op().unwrap() {
            ops.push(op);
        }
        assert_eq!(ops, read_ops(&bytes[..]).unwrap());
        assert_eq!(given.get(), bytes.len());
        // A claimed length is not allocated before its bytes arrive.
        let mut s = encode_header(1);
        s.extend_from_slice(&MAX_COMMAND_LEN.to_le_bytes());
        s.extend_from_slice(&cmd::UTIMES.to_le_bytes());
        s.extend_from_slice(&[0; 4]);
        let mut r = StreamReader::new(&s[..]).unwrap();
        assert!(format!("{:#}", r.next_op().unwrap_err()).contains("truncated"));
        assert!(r.buf.capacity() < 1 << 20);
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(StreamReader::new(&b"btrfs-strea"[..]).is_err());
        assert!(StreamReader::new(&encode_header(9)[..]).is_err());
        let mut s = b"zfs-stream\0\0\0".to_vec();
        s.extend_from_slice(&1u32.to_le_bytes());
        assert!(StreamReader::new(&s[..]).is_err());
    }

    proptest! {
        #[test]
        fn the_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400), v in 1u32..=3) {
            let mut s = encode_header(v);
            s.extend_from_slice(&data);
            let _ = read_ops(&s[..]);
            // With valid framing and CRC, attribute parsing sees the bytes.
            let mut framed = encode_header(v);
            let mut cmdb = Vec::new();
            cmdb.extend_from_slice(&(data.len() as u32).to_le_bytes());
            cmdb.extend_from_slice(&cmd::RENAME.to_le_bytes());
            cmdb.extend_from_slice(&[0; 4]);
            cmdb.extend_from_slice(&data);
            let crc = btrfs_crc32c(&cmdb);
            cmdb[6..10].copy_from_slice(&crc.to_le_bytes());
            framed.extend(cmdb);
            let _ = read_ops(&framed[..]);
        }
    }
}
