//! An external sort of paths, so that the set of paths a snapshot diff
//! names costs bounded memory however many it names.
//!
//! Paths are gathered in memory up to a budget; past it, they are sorted,
//! deduplicated and written to an anonymous temporary file (a *run*), and
//! iteration merges the runs, dropping duplicates. Temporary files are
//! created private (0600) and have no name from the start (`O_TMPFILE`, or
//! unlinked right after creation), so nothing is left behind on an error,
//! a panic or a kill.
//!
//! The order is *tree order*: paths compare bytewise with `/` below every
//! other byte, so a directory's descendants come right after it (`a`,
//! `a/b`, `a/c`, `a-b`), never after a sibling such as `a-b`. Names cannot
//! hold NUL, so a path is stored with `/` mapped to 0 and plain byte order
//! is tree order.

use anyhow::{Context, Result, bail};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::model::RelPath;

/// Memory for paths held before a run is spilled: about 400,000 typical
/// paths (the bytes of each path plus 8). A diff with more spills.
pub const DEFAULT_BUDGET: usize = 16 << 20;

/// At most this many runs exist at once: past it they are merged into one,
/// so open files and merge buffers stay bounded too.
const MAX_RUNS: usize = 32;
/// Read buffer of each run while merging.
const RUN_BUFFER: usize = 32 << 10;

static SCRATCH_DIR: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Where temporary runs go from now on (the CLI sets
/// `<state-dir>/<repo-id>/tmp`); created 0700 at the first spill if missing.
/// The default is `std::env::temp_dir()`.
pub fn set_scratch_dir(p: &Path) {
    let mut g = SCRATCH_DIR.write().unwrap_or_else(|e| e.into_inner());
    *g = Some(p.to_path_buf());
}

/// The directory temporary runs are created in.
pub fn scratch_dir() -> PathBuf {
    let g = SCRATCH_DIR.read().unwrap_or_else(|e| e.into_inner());
    g.clone().unwrap_or_else(std::env::temp_dir)
}

/// Compare two paths in tree order (see the module comment).
pub fn tree_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.iter().map(key).cmp(b.iter().map(key))
}

fn to_key(path: &[u8]) -> impl Iterator<Item = u8> + '_ {
    path.iter().map(|&c| if c == b'/' { 0 } else { c })
}

fn from_key(key: &[u8]) -> RelPath {
    key.iter().map(|&c| if c == 0 { b'/' } else { c }).collect()
}

/// Gathers paths; `finish` gives them back sorted in tree order, once each.
pub struct PathSorter {
    budget: usize,
    /// The keys of the paths gathered since the last spill, back to back.
    keys: Vec<u8>,
    /// (start, end) of each key in `keys`.
    spans: Vec<(u32, u32)>,
    runs: Vec<File>,
    dir: PathBuf,
}

impl std::fmt::Debug for PathSorter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PathSorter({} paths in memory, {} runs)", self.spans.len(), self.runs.len())
    }
}

impl Default for PathSorter {
    fn default() -> Self {
        PathSorter::new()
    }
}

impl PathSorter {
    /// A sorter with the default budget, spilling to `scratch_dir()`.
    pub fn new() -> PathSorter {
        PathSorter::with_budget(DEFAULT_BUDGET)
    }

    pub fn with_budget(budget: usize) -> PathSorter {
        // Offsets into `keys` are u32: a budget stays far below 4 GiB.
        let budget = budget.clamp(1, 1 << 30);
        PathSorter { budget, keys: Vec::new(), spans: Vec::new(), runs: Vec::new(), dir: scratch_dir() }
    }

    /// A new, empty sorter with the same budget and directory.
    pub fn sibling(&self) -> PathSorter {
        PathSorter { budget: self.budget, keys: Vec::new(), spans: Vec::new(), runs: Vec::new(), dir: self.dir.clone() }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Runs written so far.
    pub fn spilled_runs(&self) -> usize {
        self.runs.len()
    }

    fn mem(&self) -> usize {
        self.keys.len() + self.spans.len() * std::mem::size_of::<(u32, u32)>()
    }

    pub fn push(&mut self, path: &[u8]) -> Result<()> {
        if path.contains(&0) {
            bail!("path {:?} holds a NUL byte", String::from_utf8_lossy(path));
        }
        let start = self.keys.len();
        self.keys.extend(to_key(path));
        // mem() < budget <= 1 GiB before this push, and a path is far smaller.
        let end = u32::try_from(self.keys.len()).context("path too long to sort")?;
        self.spans.push((start as u32, end));
        if self.mem() >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Sort and deduplicate the gathered spans in place.
    fn sort_spans(&mut self) {
        let keys = &self.keys;
        let key = |s: &(u32, u32)| &keys[s.0 as usize..s.1 as usize];
        self.spans.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        self.spans.dedup_by(|a, b| key(a) == key(b));
    }

    fn spill(&mut self) -> Result<()> {
        if self.spans.is_empty() {
            return Ok(());
        }
        self.sort_spans();
        let file = anonymous_file(&self.dir)?;
        let mut w = BufWriter::with_capacity(RUN_BUFFER, &file);
        for &(s, e) in &self.spans {
            write_key(&mut w, &self.keys[s as usize..e as usize]).map_err(|e| write_error(&self.dir, e))?;
        }
        w.flush().map_err(|e| write_error(&self.dir, e))?;
        drop(w);
        self.runs.push(file);
        self.keys.clear();
        self.spans.clear();
        // Give the memory back: the next run may never come.
        self.keys.shrink_to(0);
        self.spans.shrink_to(0);
        if self.runs.len() >= MAX_RUNS {
            let runs = std::mem::take(&mut self.runs);
            let merged = anonymous_file(&self.dir)?;
            let mut w = BufWriter::with_capacity(RUN_BUFFER, &merged);
            let mut m = Merge::new(runs)?;
            while let Some(k) = m.next_key()? {
                write_key(&mut w, &k).map_err(|e| write_error(&self.dir, e))?;
            }
            w.flush().map_err(|e| write_error(&self.dir, e))?;
            drop(w);
            self.runs.push(merged);
        }
        Ok(())
    }

    /// Every path pushed, in tree order, each once.
    pub fn finish(mut self) -> Result<SortedPaths> {
        if self.runs.is_empty() {
            self.sort_spans();
            return Ok(SortedPaths { inner: Inner::Memory { keys: self.keys, spans: self.spans, next: 0 } });
        }
        // Spill the rest too, so no memory is held while merging.
        self.spill()?;
        Ok(SortedPaths { inner: Inner::Runs(Merge::new(self.runs)?) })
    }
}

/// The sorted paths of a `PathSorter`.
pub struct SortedPaths {
    inner: Inner,
}

enum Inner {
    Memory { keys: Vec<u8>, spans: Vec<(u32, u32)>, next: usize },
    Runs(Merge),
}

impl SortedPaths {
    /// The next path in tree order, or `None` at the end.
    pub fn next_path(&mut self) -> Result<Option<RelPath>> {
        match &mut self.inner {
            Inner::Memory { keys, spans, next } => Ok(spans.get(*next).map(|&(s, e)| {
                *next += 1;
                from_key(&keys[s as usize..e as usize])
            })),
            Inner::Runs(m) => Ok(m.next_key()?.map(|k| from_key(&k))),
        }
    }

    /// Start again from the first path.
    pub fn rewind(&mut self) -> Result<()> {
        match &mut self.inner {
            Inner::Memory { next, .. } => *next = 0,
            Inner::Runs(m) => m.rewind()?,
        }
        Ok(())
    }
}

/// A k-way merge of sorted runs that drops duplicates.
struct Merge {
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<(Vec<u8>, usize)>>,
    last: Option<Vec<u8>>,
}

impl Merge {
    fn new(runs: Vec<File>) -> Result<Merge> {
        let readers = runs.into_iter().map(|f| BufReader::with_capacity(RUN_BUFFER, f)).collect();
        let mut m = Merge { readers, heap: BinaryHeap::new(), last: None };
        m.rewind()?;
        Ok(m)
    }

    fn rewind(&mut self) -> Result<()> {
        self.heap.clear();
        self.last = None;
        for i in 0..self.readers.len() {
            self.readers[i].rewind().context("cannot rewind a temporary file of sorted paths")?;
            self.refill(i)?;
        }
        Ok(())
    }

    fn refill(&mut self, i: usize) -> Result<()> {
        if let Some(k) = read_key(&mut self.readers[i])? {
            self.heap.push(Reverse((k, i)));
        }
        Ok(())
    }

    fn next_key(&mut self) -> Result<Option<Vec<u8>>> {
        while let Some(Reverse((k, i))) = self.heap.pop() {
            self.refill(i)?;
            if self.last.as_ref() != Some(&k) {
                self.last = Some(k.clone());
                return Ok(Some(k));
            }
        }
        Ok(None)
    }
}

fn write_key(w: &mut impl Write, key: &[u8]) -> std::io::Result<()> {
    w.write_all(&(key.len() as u32).to_le_bytes())?;
    w.write_all(key)
}

/// The next key of a run, `None` at its end. A run is our own file, but it
/// is read as carefully as any input: a short one is an error.
fn read_key(r: &mut impl Read) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(anyhow::Error::new(e).context("cannot read a temporary file of sorted paths")),
    }
    r.read_exact(&mut len[1..]).context("a temporary file of sorted paths is cut short")?;
    let n = u32::from_le_bytes(len) as usize;
    let mut k = Vec::new();
    r.take(n as u64).read_to_end(&mut k).context("cannot read a temporary file of sorted paths")?;
    if k.len() != n {
        bail!("a temporary file of sorted paths is cut short");
    }
    Ok(Some(k))
}

fn write_error(dir: &Path, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot write sorted paths to a temporary file in {}: {e} (free space there, or set another scratch directory)",
        dir.display()
    )
}

/// A private (0600) temporary file in `dir` that has no name, so it goes
/// away when closed, whatever happens to the process.
fn anonymous_file(dir: &Path) -> Result<File> {
    use rustix::fs::{Mode, OFlags};
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| {
            format!("cannot create the scratch directory {} for sorting paths: check its parent", dir.display())
        })?;
    }
    match rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => Ok(File::from(fd)),
        // The file system (or kernel) has no O_TMPFILE.
        Err(e) if [rustix::io::Errno::OPNOTSUPP, rustix::io::Errno::ISDIR, rustix::io::Errno::INVAL].contains(&e) => {
            named_then_unlinked(dir)
        }
        Err(e) => {
            bail!("cannot create a temporary file in {} for sorting paths: {e}: check it is writable", dir.display())
        }
    }
}

/// The fallback: create a file with a random name exclusively, then unlink
/// it at once.
fn named_then_unlinked(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("cannot get random bytes for a temporary file name: {e}"))?;
    let path = dir.join(format!(".n2s-paths-{}", hex::encode(rnd)));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path).with_context(
        || format!("cannot create a temporary file in {} for sorting paths: check it is writable", dir.display()),
    )?;
    std::fs::remove_file(&path).with_context(|| format!("cannot remove the temporary file {}", path.display()))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::MetadataExt;

    fn sorted(mut s: SortedPaths) -> Vec<RelPath> {
        let mut out = Vec::new();
        while let Some(p) = s.next_path().unwrap() {
            out.push(p);
        }
        out
    }

    /// What the sorter must give: the distinct paths in tree order.
    fn reference(paths: &[RelPath]) -> Vec<RelPath> {
        let mut v = paths.to_vec();
        v.sort_by(|a, b| tree_cmp(a, b));
        v.dedup();
        v
    }

    #[test]
    fn tree_order_puts_descendants_right_after_their_directory() {
        let mut s = PathSorter::new();
        for p in ["a-b", "a/c", "a", "", "a/b/z", "a/b", "a.txt", "a/b", "b"] {
            s.push(p.as_bytes()).unwrap();
        }
        let got: Vec<String> = sorted(s.finish().unwrap()).iter().map(|p| String::from_utf8_lossy(p).into()).collect();
        assert_eq!(got, vec!["", "a", "a/b", "a/b/z", "a/c", "a-b", "a.txt", "b"]);
        // Plain byte order would put "a-b" (0x2d) and "a.txt" before "a/b" (0x2f).
        assert_eq!(tree_cmp(b"a/b", b"a-b"), Ordering::Less);
    }

    #[test]
    fn nul_bytes_are_refused() {
        assert!(PathSorter::new().push(b"a\0b").is_err());
    }

    #[test]
    fn spilled_runs_merge_sorted_and_deduplicated_and_rewind() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = PathSorter::with_budget(256);
        s.dir = dir.path().to_path_buf();
        let mut all = Vec::new();
        for i in 0..2000u32 {
            // Every path twice, in different runs.
            let p = format!("d{}/f{}", i % 37, (i * 7919) % 1000).into_bytes();
            s.push(&p).unwrap();
            all.push(p);
        }
        // 2000 pushes of ~10 bytes at 256 bytes a run: more than MAX_RUNS
        // runs were written and merged along the way.
        assert!(s.spilled_runs() >= 1 && s.spilled_runs() < MAX_RUNS, "{}", s.spilled_runs());
        let mut out = s.finish().unwrap();
        let mut first = Vec::new();
        while let Some(p) = out.next_path().unwrap() {
            first.push(p);
        }
        assert_eq!(first, reference(&all));
        out.rewind().unwrap();
        assert_eq!(sorted(out), first);
        // The runs have no name: nothing was ever visible in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn temporary_files_are_private_and_nameless() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("state/tmp");
        for f in [anonymous_file(&scratch).unwrap(), named_then_unlinked(&scratch).unwrap()] {
            let m = f.metadata().unwrap();
            assert_eq!(m.mode() & 0o777, 0o600);
            assert_eq!(m.nlink(), 0, "a temporary file has a name");
        }
        assert_eq!(std::fs::metadata(&scratch).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    }

    #[test]
    fn an_unwritable_scratch_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let mut s = PathSorter::with_budget(16);
        s.dir = file.join("tmp");
        let e = format!("{:#}", s.push(b"some/long/enough/path").unwrap_err());
        assert!(e.contains("not-a-dir"), "{e}");
    }

    proptest! {
        #[test]
        fn any_paths_any_budget_give_the_distinct_paths_in_tree_order(
            paths in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b'/'), Just(b'-'), Just(b'a'), Just(b'b'), 1u8..=255], 0..12), 0..300),
            budget in 1usize..2000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut s = PathSorter::with_budget(budget);
            s.dir = dir.path().to_path_buf();
            for p in &paths {
                s.push(p).unwrap();
            }
            prop_assert_eq!(sorted(s.finish().unwrap()), reference(&paths));
        }
    }
}
