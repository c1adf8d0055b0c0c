//! What a dataset leaves out of its backups: glob patterns (`exclude = [...]`
//! and `--exclude`) and, with `exclude_caches`, the contents of directories
//! tagged by a `CACHEDIR.TAG` (<https://bford.info/cachedir/>).
//!
//! Patterns follow gitignore's two shapes, which sysadmins know from rsync
//! and restic:
//! - a pattern without `/` (`*.tmp`, `node_modules`) matches a name at any
//!   depth;
//! - a pattern with a `/` (`/var/cache`, `home/*/Downloads`, `**/target`)
//!   matches a path from the dataset's root; a leading `/` is optional.
//!
//! `*` never crosses a `/`; `**` does. An excluded directory is left out
//! with everything below it. The rules are the same for every source: a
//! walk does not descend into what is excluded, and a snapshot diff's
//! changes below it are dropped.

use anyhow::{Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::fsx::Dir;

/// The first bytes of a valid cache directory tag, from the specification.
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";
pub const CACHEDIR_TAG: &[u8] = b"CACHEDIR.TAG";

/// The compiled exclude rules of one dataset.
#[derive(Clone, Debug, Default)]
pub struct Excludes {
    /// Patterns without a `/`: matched against each path component.
    names: GlobSet,
    /// Patterns with a `/`: matched against a path from the root.
    anchored: GlobSet,
    patterns: Vec<String>,
    pub exclude_caches: bool,
}

impl Excludes {
    /// Compile `patterns`; a bad one is named in the error.
    pub fn new(patterns: &[String], exclude_caches: bool) -> Result<Excludes> {
        let mut names = GlobSetBuilder::new();
        let mut anchored = GlobSetBuilder::new();
        for p in patterns {
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() || trimmed == "/" {
                anyhow::bail!(
                    "exclude pattern {p:?} would exclude the whole dataset: remove it, or name what to leave out"
                );
            }
            if trimmed.contains('\0') {
                anyhow::bail!("exclude pattern {p:?} contains a NUL byte");
            }
            let (set, pat) = match trimmed.strip_prefix('/') {
                Some(rest) => (&mut anchored, rest),
                None if trimmed.contains('/') => (&mut anchored, trimmed),
                None => (&mut names, trimmed),
            };
            let glob = GlobBuilder::new(pat)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .with_context(|| format!("exclude pattern {p:?} is not a valid glob"))?;
            set.add(glob);
        }
        Ok(Excludes {
            names: names.build().context("cannot compile the exclude patterns")?,
            anchored: anchored.build().context("cannot compile the exclude patterns")?,
            patterns: patterns.to_vec(),
            exclude_caches,
        })
    }

    /// Whether there is anything to exclude at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && !self.exclude_caches
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether a pattern names `path` itself (its ancestors are not looked
    /// at: a walk never reaches below an excluded directory).
    pub fn matches(&self, path: &[u8]) -> bool {
        if path.is_empty() {
            return false;
        }
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        self.names.is_match(Path::new(OsStr::from_bytes(name)))
            || self.anchored.is_match(Path::new(OsStr::from_bytes(path)))
    }

    /// The shortest prefix of `path` (itself included) that a pattern names.
    pub fn excluded_prefix<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        if self.patterns.is_empty() {
            return None;
        }
        prefixes(path).find(|p| self.matches(p))
    }
}

/// `a`, `a/b`, `a/b/c` for `a/b/c`.
fn prefixes(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let ends = path.iter().enumerate().filter(|&(_, &b)| b == b'/').map(|(i, _)| i).chain([path.len()]);
    ends.filter(|&e| e > 0).map(move |e| &path[..e])
}

/// Whether `dir` holds a valid `CACHEDIR.TAG` (a regular file that starts
/// with the signature; a symlink named so is not one).
pub fn is_tagged_cache(dir: &Dir) -> bool {
    use std::io::Read;
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    dir.open_file(CACHEDIR_TAG).and_then(|mut f| f.read_exact(&mut head)).is_ok_and(|()| head == CACHEDIR_SIGNATURE)
}

/// Decides, for the changes of one snapshot, which paths are excluded:
/// by pattern, or (with `exclude_caches`) because a directory above them
/// is a tagged cache. A cache directory itself and its tag are kept, so a
/// restore shows that something was left out there, and why.
pub struct ExcludeFilter<'a> {
    rules: &'a Excludes,
    /// The snapshot's root, opened once (no symlink below it is followed).
    root: Option<Dir>,
    cache_dirs: HashMap<Vec<u8>, bool>,
}

impl<'a> ExcludeFilter<'a> {
    pub fn new(rules: &'a Excludes, snapshot_root: &Path) -> ExcludeFilter<'a> {
        // A root that cannot be opened has no tags to find; the source
        // reports the real error.
        let root = if rules.exclude_caches { Dir::open(snapshot_root).ok() } else { None };
        ExcludeFilter { rules, root, cache_dirs: HashMap::new() }
    }

    /// The excluded subtree `path` lies in (its root), if any.
    pub fn excluded_root(&mut self, path: &[u8]) -> Option<Vec<u8>> {
        if let Some(p) = self.rules.excluded_prefix(path) {
            return Some(p.to_vec());
        }
        if !self.rules.exclude_caches {
            return None;
        }
        // Below a cache directory: everything but the tag itself.
        for dir in prefixes(path).filter(|p| p.len() < path.len()) {
            let root = &self.root;
            let tagged = *self.cache_dirs.entry(dir.to_vec()).or_insert_with(|| {
                root.as_ref().and_then(|r| r.open_beneath(dir).ok()).is_some_and(|d| is_tagged_cache(&d))
            });
            if tagged {
                let rest = &path[dir.len() + 1..];
                if rest == CACHEDIR_TAG {
                    return None;
                }
                let first = rest.split(|&b| b == b'/').next().unwrap_or(rest);
                return Some(path[..dir.len() + 1 + first.len()].to_vec());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ex(p: &[&str]) -> Excludes {
        Excludes::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), false).unwrap()
    }

    #[test]
    fn patterns_without_a_slash_match_a_name_at_any_depth() {
        let e = ex(&["*.tmp", "node_modules"]);
        assert!(e.matches(b"a.tmp"));
        assert!(e.matches(b"x/y/a.tmp"));
        assert!(e.matches(b"src/node_modules"));
        assert!(!e.matches(b"a.tmp.keep"));
        assert!(!e.matches(b"node_modules_old"));
        assert_eq!(e.excluded_prefix(b"web/node_modules/lib/x.js"), Some(&b"web/node_modules"[..]));
        assert_eq!(e.excluded_prefix(b"web/lib/x.js"), None);
    }

    #[test]
    fn patterns_with_a_slash_match_from_the_root() {
        let e = ex(&["/var/cache", "home/*/Downloads", "**/target/"]);
        assert!(e.matches(b"var/cache"));
        assert!(!e.matches(b"srv/var/cache"));
        assert!(e.matches(b"home/ann/Downloads"));
        assert!(!e.matches(b"home/ann/x/Downloads"), "* does not cross a /");
        assert!(e.matches(b"target"));
        assert!(e.matches(b"a/b/target"));
        assert_eq!(e.excluded_prefix(b"var/cache/apt/pkg.deb"), Some(&b"var/cache"[..]));
    }

    #[test]
    fn the_root_is_never_excluded_and_bad_patterns_are_named() {
        let e = ex(&["*"]);
        assert!(!e.matches(b""));
        for bad in ["/", "", "a[", "//"] {
            let err = Excludes::new(&[bad.to_string()], false).unwrap_err();
            assert!(format!("{err:#}").contains(&format!("{bad:?}")), "{err:#}");
        }
    }

    #[test]
    fn a_tagged_cache_directory_keeps_itself_and_its_tag_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("home/.cache/sub")).unwrap();
        std::fs::write(d.path().join("home/.cache/CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55\n# x")
            .unwrap();
        std::fs::create_dir_all(d.path().join("fake")).unwrap();
        std::fs::write(d.path().join("fake/CACHEDIR.TAG"), b"not a signature").unwrap();
        let rules = Excludes::new(&[], true).unwrap();
        let mut f = ExcludeFilter::new(&rules, d.path());
        assert_eq!(f.excluded_root(b"home/.cache"), None);
        assert_eq!(f.excluded_root(b"home/.cache/CACHEDIR.TAG"), None);
        assert_eq!(f.excluded_root(b"home/.cache/sub/f"), Some(b"home/.cache/sub".to_vec()));
        assert_eq!(f.excluded_root(b"home/.cache/f"), Some(b"home/.cache/f".to_vec()));
        assert_eq!(f.excluded_root(b"fake/f"), None, "a tag without the signature is not a tag");
        let off = Excludes::new(&[], false).unwrap();
        assert_eq!(ExcludeFilter::new(&off, d.path()).excluded_root(b"home/.cache/f"), None);
    }

    proptest! {
        // Patterns come from a config file and the command line.
        #[test]
        fn any_pattern_compiles_or_is_refused_and_never_panics(p in "\\PC{0,40}", path in "[a-z/.*]{0,30}") {
            if let Ok(e) = Excludes::new(&[p], false) {
                let _ = e.excluded_prefix(path.as_bytes());
                prop_assert!(!e.matches(b""));
            }
        }

        #[test]
        fn an_excluded_prefix_is_a_component_prefix(path in "[ab]{1,3}(/[ab]{1,3}){0,4}") {
            let e = ex(&["a", "/b/b"]);
            if let Some(p) = e.excluded_prefix(path.as_bytes()) {
                prop_assert!(path.as_bytes().starts_with(p));
                prop_assert!(p.len() == path.len() || path.as_bytes()[p.len()] == b'/');
                prop_assert!(e.matches(p));
            }
        }
    }
}
