//! The vocabulary shared by sources, the catalog, manifests and restore.
//!
//! Paths are raw bytes (Linux file names need not be UTF-8), relative to the
//! root of the dataset, `/`-separated, with no leading `/`. The root itself is
//! the empty path.

use std::fmt;

/// A path relative to the dataset root, as raw bytes. `b""` is the root.
pub type RelPath = Vec<u8>;

/// A 32-byte chunk id: keyed BLAKE3 of the chunk's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_slice(b: &[u8]) -> Option<ChunkId> {
        let arr: [u8; 32] = b.try_into().ok()?;
        Some(ChunkId(arr))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// What kind of file system object an entry is. The numbers are part of the
/// manifest format (docs/FORMAT.md) and must never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileType {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    CharDev = 5,
    BlockDev = 6,
    Socket = 7,
}

impl FileType {
    pub fn from_u8(v: u8) -> Option<FileType> {
        Some(match v {
            1 => FileType::File,
            2 => FileType::Dir,
            3 => FileType::Symlink,
            4 => FileType::Fifo,
            5 => FileType::CharDev,
            6 => FileType::BlockDev,
            7 => FileType::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this type, for mknod.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::File => libc::S_IFREG,
            FileType::Dir => libc::S_IFDIR,
            FileType::Symlink => libc::S_IFLNK,
            FileType::Fifo => libc::S_IFIFO,
            FileType::CharDev => libc::S_IFCHR,
            FileType::BlockDev => libc::S_IFBLK,
            FileType::Socket => libc::S_IFSOCK,
        }
    }

    /// The type for the `S_IFMT` bits of a stat mode.
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::File,
            libc::S_IFDIR => FileType::Dir,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFIFO => FileType::Fifo,
            libc::S_IFCHR => FileType::CharDev,
            libc::S_IFBLK => FileType::BlockDev,
            libc::S_IFSOCK => FileType::Socket,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FileType::File => "file",
            FileType::Dir => "dir",
            FileType::Symlink => "symlink",
            FileType::Fifo => "fifo",
            FileType::CharDev => "chardev",
            FileType::BlockDev => "blockdev",
            FileType::Socket => "socket",
        }
    }
}

/// Everything about one file system object except its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub ftype: FileType,
    /// Permission bits, including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size in bytes (content length for files, target length for symlinks).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the Unix epoch. Used only to
    /// detect changes; never restored (the kernel does not allow it).
    pub ctime_ns: i64,
    /// Inode number inside the snapshot. Used only to group hardlinks within
    /// one tree, never as an identity across snapshots.
    pub ino: u64,
    pub nlink: u64,
    /// Device number for char/block devices, 0 otherwise.
    pub rdev: u64,
    /// Target of a symlink.
    pub symlink_target: Option<Vec<u8>>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Metadata {
    /// Hardlink group of this entry: non-zero when it is a regular file with
    /// more than one link, and then shared by every path of the same inode
    /// inside one tree.
    pub fn link_group(&self) -> u64 {
        if self.ftype == FileType::File && self.nlink > 1 { self.ino } else { 0 }
    }
}

/// How an entry changed between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChangeKind {
    /// New path.
    Added = 1,
    /// Content may have changed: it is read and hashed again.
    Modified = 2,
    /// Only metadata changed: the previous content is kept.
    Metadata = 3,
    /// The path no longer exists.
    Removed = 4,
}

impl ChangeKind {
    pub fn from_u8(v: u8) -> Option<ChangeKind> {
        Some(match v {
            1 => ChangeKind::Added,
            2 => ChangeKind::Modified,
            3 => ChangeKind::Metadata,
            4 => ChangeKind::Removed,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Modified => "modified",
            ChangeKind::Metadata => "metadata",
            ChangeKind::Removed => "removed",
        }
    }
}

/// One entry of a changeset as a source yields it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: RelPath,
    pub kind: ChangeKind,
    /// The new metadata; `None` exactly when `kind == Removed`.
    pub meta: Option<Metadata>,
}

/// Split a relative path into (parent dir, name). The root's parent is `b""`.
pub fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// Join a directory and a name into a relative path.
pub fn join_path(dir: &[u8], name: &[u8]) -> RelPath {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !dir.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Render a byte path for humans: valid UTF-8 as is, other bytes as `\xNN`.
pub fn display_path(path: &[u8]) -> String {
    let mut out = String::new();
    for chunk in path.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Is this a path a manifest may legally name? Rejects absolute paths, `.`
/// and `..` components, empty components and NUL bytes, so that restore can
/// never be steered outside its target.
pub fn is_safe_rel_path(path: &[u8]) -> bool {
    if path.is_empty() {
        return true; // the root
    }
    if path.contains(&0) {
        return false;
    }
    path.split(|&b| b == b'/').all(|c| !c.is_empty() && c != b"." && c != b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_roundtrip() {
        assert_eq!(split_path(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_path(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join_path(b"", b"x"), b"x".to_vec());
        assert_eq!(join_path(b"a/b", b"x"), b"a/b/x".to_vec());
    }

    #[test]
    fn unsafe_paths_are_rejected() {
        for bad in [&b"/etc/passwd"[..], b"../x", b"a/../../x", b"a//b", b"a/./b", b"a/", b"a\0b", b".."] {
            assert!(!is_safe_rel_path(bad), "{:?}", display_path(bad));
        }
        for good in [&b""[..], b"a", b"a/b", b"..a", b"a..", b"\xff\xfe/x"] {
            assert!(is_safe_rel_path(good));
        }
    }

    #[test]
    fn display_escapes_non_utf8() {
        assert_eq!(display_path(b"a\xffb"), "a\\xffb");
        assert_eq!(display_path("é".as_bytes()), "é");
        assert_eq!(display_path(b"a\nb"), "a\\nb");
    }
}
