//! Restore a snapshot (or some paths of it) into a target directory.
//!
//! **Inside the target.** Every write goes through directory handles reached
//! from the target one component at a time with O_NOFOLLOW (fsx), and every
//! path was checked safe when its manifest was decoded, so a hostile
//! repository cannot make restore write outside the target.
//!
//! **The right object.** Metadata never goes to a name: a regular file gets
//! owner, mode, xattrs and times through the descriptor it was written
//! through; a symlink, fifo, device or socket through an `O_PATH`
//! descriptor, after checking that it is the object restore made (our owner:
//! nobody else can make an object owned by us); a directory through its own
//! descriptor, after checking it still is the device and inode restore made.
//! So a local user who can write into the target cannot swap a name between
//! two steps and have their own file get a restored owner, setuid bit or
//! capability.
//!
//! **Never half a file under its name.** Every non-directory is made under a
//! temporary name in its directory (`.NAME.n2s-partial`, O_EXCL), gets its
//! content and metadata there, and is then renamed onto its name (without
//! --overwrite with RENAME_NOREPLACE, so nothing is ever replaced). A killed
//! restore leaves at most temporary names; a rerun with --overwrite replaces
//! them. A failed read leaves whatever was at the name untouched.
//!
//! **Every entry accounted for.** Each entry the restore visits ends
//! restored or named as failed; a worker never stops on a per-file error. A
//! full file system stops the restore at once, with one line saying so.
//!
//! **Bounded memory and linear time.** Directories made are remembered in a
//! TEMP table of the catalog connection (spilled to disk), hardlink groups
//! are found with an indexed catalog query, the failure and warning lists
//! keep their first `MAX_LISTED` lines, and a stack of open directories
//! along the current path means each directory is opened about once,
//! however deep the tree.

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use std::collections::{HashMap, HashSet};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::catalog::index::{ChunkIndex, ChunkLocation};
use crate::catalog::tree::PARTIAL_SUFFIX;
use crate::catalog::{Catalog, ChangesetRow, FileRow};
use crate::fsx::{Dir, Ident, apply_metadata_fd, ident_of_fd};
use crate::model::{ChunkId, FileType, Metadata, display_path, is_safe_rel_path, join_path, split_path};
use crate::repo::Repository;

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore only these paths (and what lies below them); empty = everything.
    pub paths: Vec<Vec<u8>>,
    /// Replace existing files in the target.
    pub overwrite: bool,
    pub workers: usize,
}

/// At most this many failure and warning lines are kept; the counts cover all.
pub const MAX_LISTED: usize = 1000;

#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    /// Entries of the snapshot (or of the selected paths and their
    /// ancestors) that the restore visited: each is counted below exactly
    /// once, as restored or as failed.
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub other: u64,
    pub bytes: u64,
    /// The first `MAX_LISTED` failures, "path: reason"; `failed_count` counts all.
    pub failed: Vec<String>,
    pub failed_count: u64,
    /// The first `MAX_LISTED` warnings (metadata that could not be applied).
    pub warnings: Vec<String>,
    pub warnings_count: u64,
}

impl RestoreReport {
    fn fail(&mut self, path: &[u8], why: impl std::fmt::Display) {
        self.failed_count += 1;
        if self.failed.len() < MAX_LISTED {
            self.failed.push(format!("{}: {why}", shown(path)));
        }
    }

    fn warn(&mut self, path: &[u8], what: impl std::fmt::Display) {
        self.warnings_count += 1;
        if self.warnings.len() < MAX_LISTED {
            self.warnings.push(format!("{}: {what}", shown(path)));
        }
    }

    /// Entries that ended one way or the other.
    pub fn accounted(&self) -> u64 {
        self.files + self.dirs + self.links + self.other + self.failed_count
    }
}

fn shown(path: &[u8]) -> String {
    if path.is_empty() { "/".to_string() } else { display_path(path) }
}

/// The temporary name an entry is made under before it is renamed onto
/// its name.
#[derive(Clone, Debug)]
struct Tmp {
    name: Vec<u8>,
    /// Whether something already at the name may be removed: a stale
    /// partial file of a killed restore (only with --overwrite).
    replace_stale: bool,
}

/// `.NAME.n2s-partial`, or for a name too long for that (NAME_MAX is 255
/// bytes) `.n2s-<hash of NAME>.n2s-partial`: deterministic either way, so a
/// rerun finds and replaces what a killed run left.
fn partial_name(name: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(name.len() + 1 + PARTIAL_SUFFIX.len());
    if 1 + name.len() + PARTIAL_SUFFIX.len() <= 255 {
        t.push(b'.');
        t.extend_from_slice(name);
    } else {
        t.extend_from_slice(b".n2s-");
        t.extend_from_slice(&blake3::hash(name).to_hex().as_bytes()[..32]);
    }
    t.extend_from_slice(PARTIAL_SUFFIX);
    t
}

struct FileJob {
    id: u64,
    /// The directory the file goes into, opened by the main thread.
    dir: Arc<Dir>,
    path: Vec<u8>,
    tmp: Tmp,
    meta: Metadata,
    chunks: Vec<ChunkId>,
    hash: Option<[u8; 32]>,
    /// The hardlink group this file is the first link of (0: none).
    group: u64,
}

/// What a worker gets: one file, or many small files with the reads that
/// bring all their chunks: their chunks, sorted by pack and offset, merged
/// into runs (one range read each), so 200,000 small files cost a few
/// hundred GETs, not 200,000.
struct Job {
    files: Vec<FileJob>,
    /// Small files read together (the worker places their chunks).
    batch: bool,
}

/// Small files gathered in the main thread.
#[derive(Default)]
struct Batch {
    files: Vec<FileJob>,
    bytes: u64,
}

impl Batch {
    /// Where the files' chunks are (the worker's index; a chunk it does not
    /// know is left to its file's own reads), in pack order, merged into runs.
    fn runs(files: &[FileJob], index: &ChunkIndex) -> Result<Vec<ReadRun>> {
        let mut seen = HashSet::new();
        let mut chunks = Vec::new();
        for id in files.iter().flat_map(|f| f.chunks.iter()) {
            if seen.insert(*id)
                && let Some(loc) = index.lookup(id)?
            {
                chunks.push((*id, loc));
            }
        }
        Ok(Self::merge(chunks))
    }

    fn merge(mut chunks: Vec<(ChunkId, ChunkLocation)>) -> Vec<ReadRun> {
        chunks.sort_by(|a, b| a.1.pack.cmp(&b.1.pack).then(a.1.offset.cmp(&b.1.offset)));
        let mut runs = Vec::new();
        let mut run = ReadRun::default();
        for (id, loc) in chunks {
            if !run.admits(&loc) {
                runs.push(std::mem::take(&mut run));
            }
            run.push(id, loc);
        }
        if !run.chunks.is_empty() {
            runs.push(run);
        }
        runs
    }
}

/// A file this small (and of at most this many chunks) goes in a batch.
const BATCH_FILE_MAX: u64 = 1 << 20;
const BATCH_FILE_CHUNKS: usize = 4;
/// A batch holds at most this many files, and this many bytes of chunks
/// (held in memory by its worker until its files are written).
const BATCH_FILES: usize = 1024;
const BATCH_BYTES: u64 = 8 << 20;

/// What a worker did with a job; `None`: skipped, the restore is stopping.
struct Outcome {
    id: u64,
    path: Vec<u8>,
    group: u64,
    result: Option<Result<Written>>,
}

struct Written {
    bytes: u64,
    warnings: Vec<String>,
    ident: Ident,
}

/// Open directories along the current path, so that walking the tree in
/// path order opens each directory about once instead of walking down from
/// the target for every entry (which made deep trees quadratic). Holds one
/// descriptor per level, as the backup walk does.
struct DirStack {
    root: Arc<Dir>,
    levels: Vec<(Vec<u8>, Arc<Dir>)>,
    /// Directories opened, for the debug log.
    opens: u64,
}

impl DirStack {
    fn new(root: Arc<Dir>) -> DirStack {
        DirStack { root, levels: Vec::new(), opens: 0 }
    }

    fn top(&self) -> Arc<Dir> {
        self.levels.last().map_or_else(|| self.root.clone(), |(_, d)| d.clone())
    }

    /// The directory at `path` below the target: the levels shared with the
    /// current path are reused, the rest opened one component at a time
    /// (O_NOFOLLOW|O_DIRECTORY: a symlink anywhere on the way is refused).
    fn get(&mut self, path: &[u8]) -> io::Result<Arc<Dir>> {
        let comps: Vec<&[u8]> = if path.is_empty() { Vec::new() } else { path.split(|&b| b == b'/').collect() };
        let keep = self.levels.iter().zip(&comps).take_while(|((n, _), c)| n.as_slice() == **c).count();
        self.levels.truncate(keep);
        for c in &comps[keep..] {
            let d = self.top().open_subdir(c)?;
            self.opens += 1;
            self.levels.push((c.to_vec(), Arc::new(d)));
        }
        Ok(self.top())
    }

    /// Enter `name`, just made in the directory the last `get` returned.
    fn push(&mut self, name: &[u8], dir: Arc<Dir>) {
        self.levels.push((name.to_vec(), dir));
    }
}

/// Hardlink roles, decided the same way in both hardlink passes: rows come
/// grouped by inode number, then path; the first selected path of a group
/// is written, the others with the same content are linked to it, and one
/// with other content (an inode number reused between snapshots) is a file
/// of its own.
#[derive(Default)]
struct Groups {
    ino: Option<u64>,
    leader: Vec<u8>,
    hash: Option<[u8; 32]>,
    size: u64,
}

enum Role {
    Leader,
    Link(Vec<u8>),
    Own,
}

impl Groups {
    fn role(&mut self, row: &FileRow, meta: &Metadata) -> Role {
        if self.ino != Some(meta.ino) {
            *self = Groups { ino: Some(meta.ino), leader: row.path.clone(), hash: row.file_hash, size: meta.size };
            return Role::Leader;
        }
        if row.file_hash.is_some() && row.file_hash == self.hash && meta.size == self.size {
            Role::Link(self.leader.clone())
        } else {
            Role::Own
        }
    }
}

/// Ends a catalog walk early once the restore is stopping.
#[derive(Debug)]
struct Stopped;
impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("restore stopped")
    }
}
impl std::error::Error for Stopped {}

/// Out of space (or quota): no later file can do better.
fn is_no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let code = c
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .or_else(|| c.downcast_ref::<rustix::io::Errno>().map(|e| e.raw_os_error()));
        matches!(code, Some(libc::ENOSPC | libc::EDQUOT))
    })
}

/// The error for a rename onto the final name that failed.
fn placement_error(e: io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::EEXIST) => anyhow!("something else already is at its name in the target"),
        Some(libc::EISDIR | libc::ENOTEMPTY) => {
            anyhow!("a directory is at its name in the target, and restore never replaces a directory: move it away")
        }
        _ => anyhow::Error::new(e).context("cannot move it into place"),
    }
}

/// Check that `name` in `dir` is the object restore just put there.
fn check_in_place(dir: &Dir, name: &[u8], ours: &Ident) -> Result<()> {
    let now = dir.ident_of(name).context("cannot check it in its place")?;
    if !now.same_object(ours) {
        bail!("was replaced in the target right after restore put it there");
    }
    Ok(())
}

/// The main thread's state: the catalog walk, directories, symlinks and
/// special files, hardlinks, and the report.
struct Run<'a> {
    catalog: &'a Catalog,
    cs: &'a ChangesetRow,
    opts: &'a RestoreOptions,
    root: Arc<Dir>,
    stack: DirStack,
    rep: RestoreReport,
    selections: Vec<Vec<u8>>,
    chown: bool,
    /// The owner the target gives objects we make: our euid, unless the
    /// file system maps it (NFS root_squash makes root's objects nobody's).
    made_uid: u32,
    /// The tree has names that look like temporary names.
    reserved: bool,
    stop: &'a AtomicBool,
    /// The one-line error of a full file system, once one was met.
    full: Option<String>,
    /// Jobs handed to workers whose outcome has not come back: if one never
    /// does, it is named at the end.
    inflight: HashMap<u64, Vec<u8>>,
    next_id: u64,
    batch: Batch,
}

pub fn restore(
    repo: &Repository,
    catalog: &Catalog,
    index_path: &Path,
    cs: &ChangesetRow,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    for p in &opts.paths {
        if !is_safe_rel_path(p) {
            bail!("--path {} is not a relative path inside the snapshot", display_path(p));
        }
        if !catalog.in_tree(cs.id, p)? {
            bail!("{} is not in snapshot {}", display_path(p), cs.snapshot);
        }
    }
    let workers = opts.workers.max(1);
    // Every worker's index connection first: a failure here stops the
    // restore before anything is written, instead of in the middle.
    let mut indexes = (0..workers)
        .map(|_| ChunkIndex::open(index_path))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("cannot open the chunk index {} for restore", index_path.display()))?;
    std::fs::create_dir_all(&opts.target)
        .with_context(|| format!("cannot create restore target {}", opts.target.display()))?;
    let root = Dir::open(&opts.target).with_context(|| format!("cannot open {}", opts.target.display()))?;
    if !opts.overwrite && !root.entry_names()?.is_empty() {
        bail!(
            "restore target {} is not empty: choose an empty directory, or pass --overwrite to replace files in it",
            opts.target.display()
        );
    }
    crate::fsx::raise_fd_limit();
    let progress = crate::progress::progress();
    progress.begin(format!("restore {}", cs.snapshot), 0, 0);
    if progress.is_watched() {
        // One pass over the catalog for the totals, only for a display.
        let (mut files, mut bytes) = (0u64, 0u64);
        let prefixes: Vec<Option<&[u8]>> =
            if opts.paths.is_empty() { vec![None] } else { opts.paths.iter().map(|p| Some(p.as_slice())).collect() };
        for prefix in prefixes {
            catalog.for_each_in_tree(cs.id, prefix, |row| {
                if let Some(m) = row.meta.as_ref().filter(|m| m.ftype == crate::model::FileType::File) {
                    files += 1;
                    bytes += m.size;
                }
                Ok(())
            })?;
        }
        progress.set_totals(files, bytes);
    }
    let euid = rustix::process::geteuid();
    let made_uid = owner_of_new_objects(&root).unwrap_or(euid.as_raw());
    let reserved = catalog.restore_scratch_begin(cs.id)?;
    let root = Arc::new(root);
    let stop = AtomicBool::new(false);
    let mut run = Run {
        catalog,
        cs,
        opts,
        root: root.clone(),
        stack: DirStack::new(root),
        rep: RestoreReport::default(),
        selections: selections(&opts.paths),
        chown: euid.is_root(),
        made_uid,
        reserved,
        stop: &stop,
        full: None,
        inflight: HashMap::new(),
        next_id: 0,
        batch: Batch::default(),
    };
    let index_synced = Mutex::new(false);
    let (job_tx, job_rx) = bounded::<Job>(workers * 4);
    // Unbounded, but it never holds more than the jobs in flight: the main
    // thread takes outcomes after every entry.
    let (out_tx, out_rx) = unbounded::<Outcome>();

    std::thread::scope(|s| -> Result<()> {
        // Moved in, so that any early return closes the queue and lets the
        // workers finish instead of waiting for jobs forever.
        let job_tx = job_tx;
        for _ in 0..workers {
            let index = indexes.pop().expect("one index per worker");
            let (job_rx, out_tx) = (job_rx.clone(), out_tx.clone());
            let (stop, index_synced) = (&stop, &index_synced);
            s.spawn(move || {
                for Job { files, batch } in job_rx {
                    // The batch's reads; a file whose chunks they lack (a
                    // read failed) reads them itself, with every fallback.
                    let mut pre: HashMap<ChunkId, Vec<u8>> = HashMap::new();
                    let runs = match batch {
                        true => Batch::runs(&files, &index).unwrap_or_else(|e| {
                            log::debug!("cannot place a batch's chunks ({e:#}); reading per file");
                            Vec::new()
                        }),
                        false => Vec::new(),
                    };
                    for run in runs.iter().filter(|_| !stop.load(Ordering::Relaxed)) {
                        match repo.read_chunks(&run.chunks) {
                            Ok(datas) => pre.extend(run.chunks.iter().map(|(id, _)| *id).zip(datas)),
                            Err(e) => {
                                log::debug!(
                                    "a shared read of {} chunks failed ({e:#}); reading per file",
                                    run.chunks.len()
                                )
                            }
                        }
                    }
                    for job in files {
                        progress.set_current(&job.path);
                        let result = (!stop.load(Ordering::Relaxed)).then(|| {
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                restore_file(
                                    repo,
                                    &index,
                                    index_path,
                                    index_synced,
                                    &job,
                                    &pre,
                                    opts.overwrite,
                                    euid.is_root(),
                                )
                            }))
                            .unwrap_or_else(|_| Err(anyhow!("its restore worker failed (a bug): run restore again")))
                        });
                        if let Some(Ok(_)) = &result {
                            progress.add_files(1);
                            progress.add_bytes(job.meta.size);
                        }
                        if let Some(Err(e)) = &result
                            && is_no_space(e)
                        {
                            stop.store(true, Ordering::Relaxed);
                        }
                        // The receiver lives until every worker is done.
                        let _ = out_tx.send(Outcome { id: job.id, path: job.path, group: job.group, result });
                    }
                }
            });
        }
        drop((job_rx, out_tx));
        run.main_pass(&job_tx, &out_rx)?;
        // What waits in the batch goes now, even when stopping: the workers
        // then report each file skipped.
        run.flush_batch(&job_tx);
        if !run.stopping() {
            run.write_first_links(&job_tx, &out_rx)?;
            run.flush_batch(&job_tx);
        }
        drop(job_tx);
        for o in out_rx.iter() {
            run.take(o)?;
        }
        Ok(())
    })?;

    if !run.stopping() {
        run.make_other_links()?;
    }
    if let Some(full) = run.full.take() {
        let _ = catalog.restore_scratch_end();
        bail!(full);
    }
    run.dir_pass()?;
    let mut rep = std::mem::take(&mut run.rep);
    // One flush of the whole file system at the end instead of an fsync per
    // file: as durable when restore returns, without 200,000 round trips.
    if let Err(e) = rustix::fs::syncfs(&*run.root) {
        rep.warn(b"", format!("syncfs of the target failed: {e}"));
    }
    // Every entry visited must have ended one way or the other; name any
    // that did not.
    if rep.accounted() != rep.entries {
        for path in run.inflight.values() {
            rep.fail(path, "its restore worker never reported back (a bug): run restore again with --overwrite");
        }
        let lost = rep.entries.saturating_sub(rep.accounted());
        if lost > 0 {
            rep.failed_count += lost;
            rep.failed.push(format!(
                "{lost} entries were neither restored nor named (a bug): run restore again with --overwrite"
            ));
        }
    }
    log::debug!("restore visited {} entries; {} directory opens for the walk", rep.entries, run.stack.opens);
    catalog.restore_scratch_end()?;
    Ok(rep)
}

/// Who owns a file we make in the target: made and removed at once under
/// a random name.
fn owner_of_new_objects(root: &Dir) -> Result<u32> {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| anyhow!("no randomness: {e}"))?;
    let mut name = b".n2s-probe-".to_vec();
    name.extend_from_slice(hex::encode(r).as_bytes());
    name.extend_from_slice(PARTIAL_SUFFIX);
    let f = root.create_file(&name, false)?;
    let id = ident_of_fd(f.as_fd());
    drop(f);
    let _ = root.remove_file(&name);
    Ok(id?.uid)
}

/// The selections to walk: the root alone when everything is restored, else
/// the given paths without duplicates and without any that lies below
/// another (it would be restored twice).
fn selections(paths: &[Vec<u8>]) -> Vec<Vec<u8>> {
    if paths.is_empty() || paths.iter().any(|p| p.is_empty()) {
        return vec![Vec::new()];
    }
    let mut sorted = paths.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out: Vec<Vec<u8>> = Vec::new();
    for p in sorted {
        if !out.iter().any(|s| is_at_or_below(&p, s)) {
            out.push(p);
        }
    }
    out
}

fn is_at_or_below(path: &[u8], sel: &[u8]) -> bool {
    sel.is_empty() || path == sel || (path.len() > sel.len() && path.starts_with(sel) && path[sel.len()] == b'/')
}

impl Run<'_> {
    fn stopping(&self) -> bool {
        self.full.is_some() || self.stop.load(Ordering::Relaxed)
    }

    fn in_selection(&self, path: &[u8]) -> bool {
        self.selections.iter().any(|s| is_at_or_below(path, s))
    }

    /// A failure of one entry; a full file system also stops the restore.
    fn fail(&mut self, path: &[u8], e: anyhow::Error) {
        if is_no_space(&e) {
            self.stop.store(true, Ordering::Relaxed);
            if self.full.is_none() {
                let t = self.opts.target.display();
                self.full = Some(format!(
                    "the file system of {t} is full (restoring {}: {e:#}): free space on {t} and run restore again with --overwrite",
                    shown(path)
                ));
            }
        }
        self.rep.fail(path, format!("{e:#}"));
    }

    fn temp_name(&self, parent: &[u8], name: &[u8]) -> Result<Tmp> {
        let t = partial_name(name);
        if self.reserved && self.catalog.restore_is_reserved(&join_path(parent, &t))? {
            // The snapshot itself has an entry of that name: use a random
            // name instead, which is never taken for a stale one.
            let mut r = [0u8; 8];
            getrandom::fill(&mut r).map_err(|e| anyhow!("no randomness: {e}"))?;
            let mut t = b".n2s-".to_vec();
            t.extend_from_slice(hex::encode(r).as_bytes());
            t.extend_from_slice(PARTIAL_SUFFIX);
            return Ok(Tmp { name: t, replace_stale: false });
        }
        Ok(Tmp { name: t, replace_stale: self.opts.overwrite })
    }

    /// Take a worker's outcome into the report.
    fn take(&mut self, o: Outcome) -> Result<()> {
        self.inflight.remove(&o.id);
        match o.result {
            None => self.rep.fail(&o.path, "skipped: the restore stopped first"),
            Some(Ok(w)) => {
                self.rep.files += 1;
                self.rep.bytes += w.bytes;
                for msg in w.warnings {
                    self.rep.warn(&o.path, msg);
                }
                if o.group != 0 {
                    self.catalog.restore_record_leader(o.group, w.ident.dev, w.ident.ino)?;
                }
            }
            Some(Err(e)) => self.fail(&o.path, e),
        }
        Ok(())
    }

    fn take_ready(&mut self, out_rx: &Receiver<Outcome>) -> Result<()> {
        while let Ok(o) = out_rx.try_recv() {
            self.take(o)?;
        }
        Ok(())
    }

    /// Send the batch of small files to the workers.
    fn flush_batch(&mut self, job_tx: &Sender<Job>) {
        let b = std::mem::take(&mut self.batch);
        if !b.files.is_empty() {
            self.send(job_tx, Job { files: b.files, batch: true });
        }
    }

    fn send(&mut self, job_tx: &Sender<Job>, job: Job) {
        if let Err(e) = job_tx.send(job) {
            for f in e.into_inner().files {
                self.inflight.remove(&f.id);
                self.fail(&f.path, anyhow!("the restore workers stopped (a bug): run restore again with --overwrite"));
            }
        }
    }

    /// Whether a file is small enough to be read with others.
    fn batchable(job: &FileJob) -> bool {
        job.group == 0 && job.meta.size <= BATCH_FILE_MAX && job.chunks.len() <= BATCH_FILE_CHUNKS
    }

    /// Hand a regular file to the workers: a small one joins the batch
    /// (files backed up together were packed together, and a walk in path
    /// order meets them together again, so the batch's reads are few and
    /// dense); anything else goes alone.
    fn dispatch(&mut self, job_tx: &Sender<Job>, row: FileRow, meta: Metadata, group: u64) -> Result<()> {
        let (parent, name) = split_path(&row.path);
        let dir = match self.stack.get(parent) {
            Ok(d) => d,
            Err(e) => {
                self.fail(&row.path, anyhow::Error::new(e).context("cannot open its directory in the target"));
                return Ok(());
            }
        };
        let tmp = self.temp_name(parent, name)?;
        let id = self.next_id;
        self.next_id += 1;
        self.inflight.insert(id, row.path.clone());
        let job = FileJob { id, dir, path: row.path, tmp, meta, chunks: row.chunks, hash: row.file_hash, group };
        if !Self::batchable(&job) {
            self.send(job_tx, Job { files: vec![job], batch: false });
            return Ok(());
        }
        if self.batch.files.len() >= BATCH_FILES || self.batch.bytes + job.meta.size > BATCH_BYTES {
            self.flush_batch(job_tx);
        }
        self.batch.bytes += job.meta.size;
        self.batch.files.push(job);
        // A batch is read by one worker, its runs one after another: while
        // workers would sit idle (the queue is short), it goes at once, so
        // a few files are read in parallel and many are read in batches.
        if job_tx.len() < self.opts.workers.max(1) {
            self.flush_batch(job_tx);
        }
        Ok(())
    }

    /// Walk every selection in path order: parents before children.
    fn main_pass(&mut self, job_tx: &Sender<Job>, out_rx: &Receiver<Outcome>) -> Result<()> {
        let mut ancestors_done = HashSet::new();
        for sel in self.selections.clone() {
            self.ancestors(&sel, &mut ancestors_done)?;
            let catalog = self.catalog;
            let r = catalog.for_each_in_tree(self.cs.id, Some(&sel), |row: FileRow| {
                if self.stopping() {
                    return Err(Stopped.into());
                }
                self.entry(row, job_tx)?;
                self.take_ready(out_rx)
            });
            match r {
                Err(e) if e.is::<Stopped>() => return Ok(()),
                other => other?,
            }
        }
        Ok(())
    }

    /// The directories above a selected path, so it has somewhere to go.
    /// Each is an entry of the restore too (its metadata is restored).
    fn ancestors(&mut self, sel: &[u8], done: &mut HashSet<Vec<u8>>) -> Result<()> {
        for (i, _) in sel.iter().enumerate().filter(|(_, b)| **b == b'/') {
            let a = &sel[..i];
            if !done.insert(a.to_vec()) {
                continue;
            }
            // Not a directory in the snapshot (only a hostile manifest does
            // that): the entries below fail, each named.
            let Some(meta) = self.catalog.entry_at(self.cs.id, a)?.and_then(|r| r.meta) else { continue };
            if meta.ftype != FileType::Dir {
                continue;
            }
            self.rep.entries += 1;
            self.make_dir(a)?;
        }
        Ok(())
    }

    /// One entry of the main walk.
    fn entry(&mut self, row: FileRow, job_tx: &Sender<Job>) -> Result<()> {
        self.rep.entries += 1;
        let Some(meta) = row.meta.clone() else {
            self.rep.fail(&row.path, "its catalog row has no file type: run `n2s-agent catalog rebuild`");
            return Ok(());
        };
        if row.path.is_empty() {
            if meta.ftype != FileType::Dir {
                self.rep.fail(b"", "the snapshot's root is not a directory");
                return Ok(());
            }
            let id = self.root.ident().context("cannot stat the restore target")?;
            return self.catalog.restore_record_dir(b"", id.dev, id.ino);
        }
        match meta.ftype {
            FileType::Dir => self.make_dir(&row.path),
            // Hardlinked files are written and linked by the hardlink passes.
            FileType::File if meta.link_group() != 0 => Ok(()),
            FileType::File => self.dispatch(job_tx, row, meta, 0),
            _ => {
                let (parent, name) = split_path(&row.path);
                match self.make_node(parent, name, &meta) {
                    Ok(warnings) => {
                        self.rep.other += 1;
                        for w in warnings {
                            self.rep.warn(&row.path, w);
                        }
                    }
                    Err(e) => self.fail(&row.path, e),
                }
                Ok(())
            }
        }
    }

    /// Make (or accept) the directory `path`, remember who it is, and enter it.
    fn make_dir(&mut self, path: &[u8]) -> Result<()> {
        let (parent, name) = split_path(path);
        let made = (|| -> Result<(Dir, Ident)> {
            let pdir = self.stack.get(parent).context("cannot open its directory in the target")?;
            let (dir, created) = pdir.make_dir(name).context("cannot create it")?;
            let id = dir.ident()?;
            // Nobody but us can make a directory owned by us: if another
            // owner's is at the name, it was swapped in.
            if created && id.uid != self.made_uid {
                bail!("was replaced by a directory of another owner right after restore made it");
            }
            Ok((dir, id))
        })();
        match made {
            Ok((dir, id)) => {
                self.catalog.restore_record_dir(path, id.dev, id.ino)?;
                self.stack.push(name, Arc::new(dir));
            }
            Err(e) => self.fail(path, e),
        }
        Ok(())
    }

    /// Make a symlink, fifo, device or socket under a temporary name, apply
    /// its metadata through an O_PATH descriptor of the object made, and
    /// rename it onto its name.
    fn make_node(&mut self, parent: &[u8], name: &[u8], meta: &Metadata) -> Result<Vec<String>> {
        let pdir = self.stack.get(parent).context("cannot open its directory in the target")?;
        let tmp = self.temp_name(parent, name)?;
        match meta.ftype {
            FileType::Symlink => {
                let target = meta.symlink_target.clone().unwrap_or_default();
                pdir.create_symlink(&tmp.name, &target, tmp.replace_stale)
            }
            _ => pdir.create_special(&tmp.name, meta, tmp.replace_stale),
        }
        .context("cannot create it")?;
        let node = pdir.open_node(&tmp.name).context("cannot open what restore made")?;
        let id = node.ident();
        // Only we can make an object owned by us: anything else at the
        // temporary name was swapped in, and gets nothing from us.
        if id.ftype != Some(meta.ftype) || id.uid != self.made_uid || id.nlink != 1 {
            bail!("was replaced by another object right after restore made it; nothing was applied to that object");
        }
        let warnings = node.apply_metadata(meta, self.chown);
        if let Err(e) = pdir.rename_into_place(&tmp.name, name, self.opts.overwrite) {
            let _ = pdir.remove_if(&tmp.name, &id);
            return Err(placement_error(e));
        }
        check_in_place(&pdir, name, &id)?;
        Ok(warnings)
    }

    /// Hardlinked files, after the main walk, in two passes that decide
    /// roles the same way (`Groups`): first the first link of each group
    /// (and files of their own) go to the workers, then, once the workers
    /// are done, the other links are made.
    fn hardlink_pass(&mut self, mut on: impl FnMut(&mut Self, Role, FileRow, Metadata) -> Result<()>) -> Result<()> {
        let mut groups = Groups::default();
        let catalog = self.catalog;
        let r = catalog.for_each_hardlinked(self.cs.id, |row| {
            if self.stopping() {
                return Err(Stopped.into());
            }
            if !self.in_selection(&row.path) {
                return Ok(());
            }
            let Some(meta) = row.meta.clone() else { return Ok(()) };
            let role = groups.role(&row, &meta);
            on(self, role, row, meta)
        });
        match r {
            Err(e) if e.is::<Stopped>() => Ok(()),
            other => other,
        }
    }

    fn write_first_links(&mut self, job_tx: &Sender<Job>, out_rx: &Receiver<Outcome>) -> Result<()> {
        self.hardlink_pass(|run, role, row, meta| {
            match role {
                Role::Leader => {
                    let group = meta.ino;
                    run.dispatch(job_tx, row, meta, group)?
                }
                Role::Own => run.dispatch(job_tx, row, meta, 0)?,
                Role::Link(_) => {}
            }
            run.take_ready(out_rx)
        })
    }

    fn make_other_links(&mut self) -> Result<()> {
        self.hardlink_pass(|run, role, row, meta| {
            if let Role::Link(leader) = role {
                match run.link(&row.path, &meta, &leader) {
                    Ok(()) => run.rep.links += 1,
                    Err(e) => run.fail(&row.path, e),
                }
            }
            Ok(())
        })
    }

    /// Link `path` to the inode written for `leader`, the first link of its
    /// group: through an O_PATH descriptor of that inode, checked to be the
    /// one the worker wrote, under a temporary name, then renamed into place.
    fn link(&mut self, path: &[u8], meta: &Metadata, leader: &[u8]) -> Result<()> {
        let Some((dev, ino)) = self.catalog.restore_leader(meta.ino)? else {
            bail!("not linked: {} (its first link) was not restored", shown(leader));
        };
        let (lparent, lname) = split_path(leader);
        let node = self
            .stack
            .get(lparent)
            .and_then(|d| d.open_node(lname))
            .with_context(|| format!("cannot open {} (its first link)", shown(leader)))?;
        let id = node.ident();
        if id.dev != dev || id.ino != ino {
            bail!("not linked: {} (its first link) was replaced in the target during the restore", shown(leader));
        }
        let (parent, name) = split_path(path);
        let pdir = self.stack.get(parent).context("cannot open its directory in the target")?;
        // Already this very inode: nothing to do (renaming one link of an
        // inode onto another does nothing and would leave the temporary).
        if pdir.ident_of(name).is_ok_and(|now| now.same_object(&id)) {
            return Ok(());
        }
        let tmp = self.temp_name(parent, name)?;
        pdir.link_node(&node, &tmp.name, tmp.replace_stale).context("cannot create the link")?;
        if let Err(e) = pdir.rename_into_place(&tmp.name, name, self.opts.overwrite) {
            let _ = pdir.remove_if(&tmp.name, &id);
            return Err(placement_error(e));
        }
        check_in_place(&pdir, name, &id)
    }

    /// Directory metadata last, children before parents, so writing into a
    /// directory does not disturb its mtime and a read-only parent does not
    /// block its children. Each directory must still be the one restore
    /// made (same device and inode), else its metadata is refused.
    fn dir_pass(&mut self) -> Result<()> {
        let catalog = self.catalog;
        catalog.for_each_restored_dir(self.cs.id, |row, dev, ino| {
            let Some(meta) = row.meta.as_ref() else { return Ok(()) };
            let dir = if row.path.is_empty() { Ok(self.root.clone()) } else { self.stack.get(&row.path) };
            let applied = dir.context("cannot open it to set its metadata").and_then(|d| {
                let now = d.ident()?;
                if now.dev != dev || now.ino != ino {
                    bail!("was replaced in the target during the restore; its metadata was not applied");
                }
                Ok(apply_metadata_fd(d.as_fd(), meta, self.chown))
            });
            match applied {
                Ok(warnings) => {
                    self.rep.dirs += 1;
                    for w in warnings {
                        self.rep.warn(&row.path, w);
                    }
                }
                Err(e) => self.fail(&row.path, e),
            }
            Ok(())
        })
    }
}

/// Write one file under its temporary name from its chunks, apply its
/// metadata through its descriptor, and rename it onto its name. On any
/// failure the temporary file goes, and whatever was at the name stays.
#[allow(clippy::too_many_arguments)]
fn restore_file(
    repo: &Repository,
    index: &ChunkIndex,
    index_path: &Path,
    index_synced: &Mutex<bool>,
    job: &FileJob,
    pre: &HashMap<ChunkId, Vec<u8>>,
    overwrite: bool,
    chown: bool,
) -> Result<Written> {
    let dir = &job.dir;
    let (_, name) = split_path(&job.path);
    let mut file = dir.create_file(&job.tmp.name, job.tmp.replace_stale).context("cannot create it")?;
    let ident = ident_of_fd(file.as_fd())?;
    let written = (|| -> Result<u64> {
        let mut hasher = blake3::Hasher::new();
        let mut pos = 0u64;
        let mut run = ReadRun::default();
        // Writes the pending run, then `then` (a chunk a shared read brought).
        let mut write_run = |run: &mut ReadRun, then: Option<&[u8]>| -> Result<()> {
            let datas = match repo.read_chunks(&run.chunks) {
                Ok(d) => d,
                // The pack may be gone: a prune elsewhere repacked its
                // chunks and deleted it. Learn what the repository holds
                // now, and read each chunk from its home there.
                Err(e) => {
                    resync(repo, index_path, index_synced)?;
                    let mut out = Vec::with_capacity(run.chunks.len());
                    for (id, _) in &run.chunks {
                        let loc = index.lookup(id)?.ok_or_else(|| anyhow::anyhow!("{e:#}"))?;
                        out.push(
                            repo.read_chunk(id, &loc).with_context(|| format!("{e:#}; and again after a resync"))?,
                        );
                    }
                    out
                }
            };
            for data in datas.iter().map(Vec::as_slice).chain(then) {
                hasher.update(data);
                write_sparse(&mut file, data)?;
                pos += data.len() as u64;
            }
            *run = ReadRun::default();
            Ok(())
        };
        for id in &job.chunks {
            if let Some(data) = pre.get(id) {
                write_run(&mut run, Some(data))?;
                continue;
            }
            let loc = lookup(repo, index, index_path, index_synced, id)?;
            if !run.admits(&loc) {
                write_run(&mut run, None)?;
            }
            run.push(*id, loc);
        }
        write_run(&mut run, None)?;
        file.set_len(pos)?;
        if let Some(h) = job.hash
            && *hasher.finalize().as_bytes() != h
        {
            bail!("restored content does not match the hash recorded at backup");
        }
        Ok(pos)
    })();
    let bytes = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = dir.remove_if(&job.tmp.name, &ident);
            return Err(e);
        }
    };
    crate::util::fault::hit("restore-file-written");
    let warnings = apply_metadata_fd(file.as_fd(), &job.meta, chown);
    drop(file);
    if let Err(e) = dir.rename_into_place(&job.tmp.name, name, overwrite) {
        let _ = dir.remove_if(&job.tmp.name, &ident);
        return Err(placement_error(e));
    }
    check_in_place(dir, name, &ident)?;
    Ok(Written { bytes, warnings, ident })
}

/// A file's chunks that sit in one pack less than this apart are fetched
/// with one range read, the bytes between read and dropped: a request to a
/// remote backend costs 20-200 ms, and 1 MiB at 100 Mbit/s about 80.
const MERGE_GAP: u64 = 1 << 20;
/// At most this many bytes per merged read, sealed and again decompressed:
/// what one worker holds at once.
const MERGE_MAX: u64 = 16 << 20;

/// Consecutive chunks of a file to fetch with one range read.
#[derive(Clone, Default)]
struct ReadRun {
    chunks: Vec<(ChunkId, ChunkLocation)>,
    /// The span of the pack they cover, padding included.
    start: u64,
    end: u64,
    raw: u64,
}

impl ReadRun {
    /// Whether the next chunk of the file joins this read: same pack, near
    /// the span (either side: a file may reuse a chunk stored earlier), and
    /// the read stays within `MERGE_MAX`.
    fn admits(&self, loc: &ChunkLocation) -> bool {
        let Some((_, first)) = self.chunks.first() else { return true };
        let end = loc.offset + crate::core::pack::padded_len(loc.sealed_len);
        first.pack == loc.pack
            && loc.offset <= self.end + MERGE_GAP
            && end + MERGE_GAP >= self.start
            && end.max(self.end) - loc.offset.min(self.start) <= MERGE_MAX
            && self.raw + loc.raw_len as u64 <= MERGE_MAX
    }

    fn push(&mut self, id: ChunkId, loc: ChunkLocation) {
        let end = loc.offset + crate::core::pack::padded_len(loc.sealed_len);
        if self.chunks.is_empty() {
            (self.start, self.end) = (loc.offset, end);
        } else {
            (self.start, self.end) = (self.start.min(loc.offset), self.end.max(end));
        }
        self.raw += loc.raw_len as u64;
        self.chunks.push((id, loc));
    }
}

/// Write `data` at the current position, seeking over all-zero 4 KiB
/// blocks instead of writing them, so sparse files stay sparse.
fn write_sparse(file: &mut std::fs::File, data: &[u8]) -> io::Result<()> {
    const BLOCK: usize = 4096;
    let mut start = 0;
    while start < data.len() {
        let end = (start + BLOCK).min(data.len());
        let zero = data[start..end].iter().all(|&b| b == 0);
        // Extend the run while blocks keep the same kind.
        let mut run_end = end;
        while run_end < data.len() {
            let next = (run_end + BLOCK).min(data.len());
            if data[run_end..next].iter().all(|&b| b == 0) != zero {
                break;
            }
            run_end = next;
        }
        if zero {
            file.seek(SeekFrom::Current((run_end - start) as i64))?;
        } else {
            file.write_all(&data[start..run_end])?;
        }
        start = run_end;
    }
    Ok(())
}

/// Where a chunk lives; on a miss, learn the packs on the backend once
/// (the local index is a cache and may be behind).
fn lookup(
    repo: &Repository,
    index: &ChunkIndex,
    index_path: &Path,
    index_synced: &Mutex<bool>,
    id: &ChunkId,
) -> Result<ChunkLocation> {
    if let Some(loc) = index.lookup(id)? {
        return Ok(loc);
    }
    resync(repo, index_path, index_synced)?;
    index.lookup(id)?.with_context(|| format!("chunk {} is in no pack of the repository", &id.to_hex()[..16]))
}

/// Once per restore, after a miss: learn the packs on the backend (the
/// local index is a cache and may be behind) and the prune plans (a pack
/// they name may be gone; reads then prefer another home).
/// Write the content of the regular file `path` of changeset `cs` to
/// `out`, chunk by chunk (memory: one chunk), and check it against the
/// file's hash at the end. What was written before a failure is not
/// taken back: the caller's error says the output is incomplete.
pub fn stream_file(
    repo: &Repository,
    catalog: &Catalog,
    index_path: &Path,
    cs: &ChangesetRow,
    path: &[u8],
    out: &mut dyn std::io::Write,
) -> Result<u64> {
    if !is_safe_rel_path(path) {
        bail!("{} is not a relative path inside the snapshot", display_path(path));
    }
    let row = catalog
        .entry_at(cs.id, path)?
        .with_context(|| format!("{} is not in snapshot {}", display_path(path), cs.snapshot))?;
    match row.meta.as_ref().map(|m| m.ftype) {
        Some(crate::model::FileType::File) => {}
        other => bail!(
            "{} is not a regular file in snapshot {} ({}): --stdout streams one file; restore it with --target DIR",
            display_path(path),
            cs.snapshot,
            other.map_or("no metadata".to_string(), |t| format!("{t:?}").to_lowercase())
        ),
    }
    let index = ChunkIndex::open(index_path)?;
    let synced = Mutex::new(false);
    let mut hasher = blake3::Hasher::new();
    let mut written = 0u64;
    for id in &row.chunks {
        let loc = match index.lookup(id)? {
            Some(l) => l,
            None => {
                resync(repo, index_path, &synced)?;
                index.lookup(id)?.with_context(|| {
                    format!("{}: chunk {} is in no pack of the repository", display_path(path), &id.to_hex()[..16])
                })?
            }
        };
        let data = repo.read_chunk(id, &loc).with_context(|| display_path(path))?;
        hasher.update(&data);
        out.write_all(&data).context("cannot write to stdout")?;
        written += data.len() as u64;
    }
    out.flush().context("cannot write to stdout")?;
    if let Some(expected) = row.file_hash
        && *hasher.finalize().as_bytes() != expected
    {
        bail!("{}: the content read does not match the file's hash: the output is not the file", display_path(path));
    }
    Ok(written)
}

fn resync(repo: &Repository, index_path: &Path, index_synced: &Mutex<bool>) -> Result<()> {
    let mut synced = index_synced.lock().unwrap_or_else(|e| e.into_inner());
    if !*synced {
        let mut writer = ChunkIndex::open(index_path)?;
        repo.sync_index(&mut writer)?;
        super::prune::learn_plans(repo, &mut writer)?;
        *synced = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_fit_and_are_stable() {
        assert_eq!(partial_name(b"a.txt"), b".a.txt.n2s-partial");
        let long = vec![b'x'; 250];
        let t = partial_name(&long);
        assert!(t.len() <= 255, "{}", t.len());
        assert_eq!(t, partial_name(&long), "a rerun must find the same name");
        assert!(t.starts_with(b".n2s-") && t.ends_with(PARTIAL_SUFFIX));
        let mut other = long.clone();
        other[0] = b'y';
        assert_ne!(partial_name(&other), t);
    }

    fn loc(pack: u8, offset: u64, sealed_len: u32) -> ChunkLocation {
        let pack = crate::core::pack::PackId([pack; 32]);
        ChunkLocation { pack, offset, sealed_len, raw_len: sealed_len }
    }

    /// Which neighbouring chunks share a read: same pack, gaps under
    /// MERGE_GAP either way, spans within MERGE_MAX.
    #[test]
    fn close_chunks_of_one_pack_share_a_read() {
        let groups = |locs: &[ChunkLocation]| -> Vec<usize> {
            let mut out = Vec::new();
            let mut run = ReadRun::default();
            for (i, l) in locs.iter().enumerate() {
                if !run.admits(l) {
                    out.push(run.chunks.len());
                    run = ReadRun::default();
                }
                run.push(ChunkId([i as u8; 32]), l.clone());
            }
            out.push(run.chunks.len());
            out
        };
        let k = 1u64 << 10;
        // Adjacent, then a gap just under 1 MiB, then one just over.
        let (a, b) = (loc(1, 8, 4096), loc(1, 8 + 4096, 4096));
        let c = loc(1, 8 + 8192 + MERGE_GAP - 1, 4096);
        let d = loc(1, c.offset + 4096 + MERGE_GAP + 1, 4096);
        assert_eq!(groups(&[a.clone(), b.clone(), c, d]), vec![3, 1]);
        // Another pack breaks the run; a chunk earlier in the pack (a file
        // reusing stored content) joins it.
        assert_eq!(groups(&[a.clone(), loc(2, 4104, 4096), b.clone()]), vec![1, 1, 1]);
        assert_eq!(groups(&[b, a]), vec![2]);
        // A run never spans more than MERGE_MAX.
        let big: Vec<ChunkLocation> = (0..40).map(|i| loc(1, 8 + i * 1024 * k, 1 << 20)).collect();
        let g = groups(&big);
        assert!(g.len() >= 3 && g.iter().sum::<usize>() == 40, "{g:?}");
    }

    /// N chunks that lie together in one pack cost one GET, and each is
    /// still opened and checked.
    #[test]
    fn read_chunks_reads_a_run_with_one_get() {
        use crate::backend::{Backend, counting::CountingBackend, memory::MemoryBackend};
        use crate::core::pack::{KIND_DATA, PackBuilder};
        let counted = Arc::new(CountingBackend::new(Arc::new(MemoryBackend::new())));
        let key = crate::core::keys::MasterKey::generate().unwrap();
        let repo = Repository::init(counted.clone(), &key).unwrap();
        let mut builder = PackBuilder::new(1 << 20);
        let mut want = Vec::new();
        for i in 0..12u32 {
            let data: Vec<u8> = (0..5000 + i * 100).map(|j| (j * 7 + i) as u8).collect();
            let id = repo.keys.chunk_id(&data);
            builder.add(id, KIND_DATA, data.len() as u32, &crate::core::pack::seal_chunk(&repo.sealer, &id, &data));
            want.push((id, data));
        }
        let pack = builder.finish(&repo.sealer);
        repo.put(&pack.id.object_key(), &pack.bytes).unwrap();
        let run: Vec<(ChunkId, ChunkLocation)> = pack
            .entries
            .iter()
            .map(|e| {
                (e.id, ChunkLocation { pack: pack.id, offset: e.offset, sealed_len: e.sealed_len, raw_len: e.raw_len })
            })
            .collect();
        let before = counted.requests().unwrap();
        let got = repo.read_chunks(&run).unwrap();
        assert_eq!(counted.requests().unwrap().since(&before).get, 1);
        assert_eq!(got, want.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>());
        // A chunk whose bytes are not its id's is refused, by name.
        let mut wrong = run.clone();
        wrong[3].0 = run[4].0;
        let e = format!("{:#}", repo.read_chunks(&wrong).unwrap_err());
        assert!(e.contains("corrupt"), "{e}");
    }

    #[test]
    fn selections_drop_duplicates_and_nested_paths() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(selections(&[]), v(&[""]));
        assert_eq!(selections(&v(&["b", "a/c", "a", "a-b", "b"])), v(&["a", "a-b", "b"]));
        assert_eq!(selections(&v(&["x/y", ""])), v(&[""]));
        assert!(is_at_or_below(b"a/b", b"a") && !is_at_or_below(b"a-b", b"a") && is_at_or_below(b"a", b"a"));
    }
}
