//! The upload pipeline of one changeset: read, chunk, hash, seal, pack,
//! upload, confirm. Stages run on their own threads so reading, sealing and
//! writing overlap, and sealing uses every core:
//!
//! ```text
//! reader ──chunks──▶ sealers (N) ──sealed, any order──▶ packer (reorders)
//!                                                         │ packs
//!                                                         ▼
//!                      committer (this thread) ◀──confirmed── uploaders (M)
//! ```
//!
//! Invariants:
//! - A file is marked stored only when every pack holding one of its chunks
//!   is confirmed, and the chunk index is committed before the file rows.
//! - The packer sees chunks in reader order, so "every pack up to P is
//!   confirmed" is enough to know a file's chunks are durable.
//! - Memory is bounded by channel capacities and the pack size, never by
//!   the number or size of files.

use anyhow::{Result, bail};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

/// Files opened ahead of the one being chunked, and how much of each the
/// kernel is asked to start reading.
const OPEN_AHEAD: usize = 8;
const READ_AHEAD_BYTES: u64 = 32 << 20;
/// Chunks read but not yet placed in a pack, at most (each ≤ 4 MiB).
const MAX_IN_FLIGHT: usize = 32;
/// Files waiting for the open pack before it is closed early (many small
/// duplicates would otherwise keep it open and the waiting list growing).
const MAX_WAITING_ON_OPEN_PACK: usize = 4096;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::catalog::index::ChunkIndex;
use crate::catalog::{Catalog, StoredFile};
use crate::core::chunker::Chunker;
use crate::core::pack::{self, FinishedPack, KIND_DATA, PackBuilder};
use crate::model::{ChunkId, display_path};
use crate::repo::Repository;
use crate::source::SnapshotReader;
use crate::util::{BoundedList, fault, now};

/// The note kept in the row of a file that changed while it was read.
pub const CHANGED_DURING_READ: &str = "changed while it was read";

#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// A pack is closed once its blobs pass this many bytes.
    pub pack_target: usize,
    pub sealers: usize,
    /// Uploader threads: packs being stored at once (the `connections`
    /// setting). On a remote backend each put waits on the network, so
    /// more of them in flight hide the latency.
    pub uploaders: usize,
    /// A file with more chunks than this is refused (manifest::MAX_FILE_CHUNKS;
    /// lowered only by tests).
    pub max_file_chunks: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        UploadOptions {
            pack_target: 16 << 20,
            sealers: cores,
            uploaders: 2,
            max_file_chunks: crate::core::manifest::MAX_FILE_CHUNKS,
        }
    }
}

#[derive(Debug, Default)]
pub struct UploadReport {
    pub files_stored: u64,
    /// "path: why" of files that could not be read (bounded; all are rows).
    pub failed: BoundedList,
    /// Paths of files that changed while they were read, twice: stored as
    /// read the second time, marked in their row.
    pub changed: BoundedList,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub packs: u64,
}

/// How reading one file ended.
enum ReadEnd {
    /// Read whole: its length.
    Read(u64),
    /// Read whole, but it changed while it was read (twice in a row).
    Changed(u64),
    /// It changed while read: this attempt's chunks are dropped and the
    /// file is read again right away.
    Discard,
    Failed(String),
}

/// What a file looked like, to tell whether it changed while it was read
/// (a walked directory is live; a snapshot never changes).
fn file_state(f: &std::fs::File) -> Option<(u64, i64, i64, i64, i64)> {
    let st = rustix::fs::fstat(f).ok()?;
    #[allow(clippy::unnecessary_cast)]
    Some((st.st_size as u64, st.st_mtime as i64, st.st_mtime_nsec as i64, st.st_ctime as i64, st.st_ctime_nsec as i64))
}

enum Work {
    Chunk { seq: u64, token: u64, data: Vec<u8> },
    End { seq: u64, token: u64, path: Vec<u8>, outcome: ReadEnd },
}

enum Sealed {
    /// `sealed` is `None` when the index already holds the chunk. `plain`
    /// travels on so the packer, which sees a file's chunks in order, hashes
    /// whole files off the reader's thread (the reader was the bottleneck).
    Chunk {
        seq: u64,
        token: u64,
        id: ChunkId,
        raw_len: u32,
        sealed: Option<Vec<u8>>,
        plain: Vec<u8>,
    },
    End {
        seq: u64,
        token: u64,
        path: Vec<u8>,
        outcome: ReadEnd,
    },
}

impl Sealed {
    fn seq(&self) -> u64 {
        match self {
            Sealed::Chunk { seq, .. } | Sealed::End { seq, .. } => *seq,
        }
    }
}

struct PackJob {
    seq: u64,
    pack: FinishedPack,
    /// Bytes of the pack, kept when its body goes to the backend.
    size: u64,
    /// The backend's own name for the stored bytes (an IPFS CID).
    address: Option<String>,
}

enum ToCommitter {
    FileReady { path: Vec<u8>, chunks: Vec<ChunkId>, need_pack: u64, size: u64, hash: [u8; 32], at: i64, changed: bool },
    FileFailed { path: Vec<u8>, error: String },
    Confirmed { seq: u64, job: PackJob },
    UploadFailed { error: String },
    Fatal { error: String },
}

/// Upload the content of every pending file of changeset `cs`.
#[allow(clippy::too_many_arguments)]
pub fn upload_changeset(
    repo: &Arc<Repository>,
    index_path: &Path,
    catalog_path: &Path,
    dataset: &str,
    catalog: &mut Catalog,
    cs: i64,
    mut reader: Box<dyn SnapshotReader>,
    opts: &UploadOptions,
) -> Result<UploadReport> {
    let mut index = ChunkIndex::open(index_path)?;
    let (files_total, bytes_total) = catalog.pending_totals(cs)?;
    let progress = crate::progress::progress();
    progress.begin(format!("{dataset}: reading changeset {cs}"), files_total, bytes_total);
    let abort = AtomicBool::new(false);
    let (work_tx, work_rx) = bounded::<Work>(opts.sealers * 4);
    let (sealed_tx, sealed_rx) = bounded::<Sealed>(opts.sealers * 4);
    // As many finished packs queued as there are uploaders, so none of them
    // waits on the packer while a pack is ready. Memory stays bounded by
    // the connections: at most `uploaders` packs queued, `uploaders` being
    // stored (the timeout decorator holds a copy of each body it sends) and
    // one being built, each at most the pack target plus one chunk.
    let (pack_tx, pack_rx) = bounded::<PackJob>(opts.uploaders.max(1));
    let (commit_tx, commit_rx) = bounded::<ToCommitter>(8192);
    // Chunks between the reader and the packer, at most: bounds the packer's
    // reorder buffer whatever the sealers' relative speed.
    let (slot_tx, slot_rx) = bounded::<()>(MAX_IN_FLIGHT);
    let (confirm_tx, confirm_rx) = unbounded::<u64>();
    let mut report = UploadReport::default();

    std::thread::scope(|s| -> Result<()> {
        // Reader: pending files in path order, paged from its own connection.
        {
            let work_tx = work_tx;
            let commit_tx = commit_tx.clone();
            let abort = &abort;
            let chunker_params = repo.config.chunker;
            let seed = repo.keys.chunker_seed;
            s.spawn(move || {
                let result = (|| -> Result<()> {
                    let cat = Catalog::open(catalog_path, dataset)?;
                    let mut after: Option<Vec<u8>> = None;
                    let mut seq = 0u64;
                    let mut token = 0u64;
                    let mut buf = Vec::new();
                    loop {
                        let page = cat.pending_files(cs, after.as_deref(), 512)?;
                        let Some(last) = page.last() else { break };
                        after = Some(last.path.clone());
                        // Open a few files ahead and ask the kernel to start
                        // reading them, so disk reads overlap chunking.
                        let mut rows = page.into_iter();
                        let mut ahead: VecDeque<(crate::catalog::FileRow, std::io::Result<std::fs::File>)> =
                            VecDeque::new();
                        loop {
                            while ahead.len() < OPEN_AHEAD {
                                let Some(f) = rows.next() else { break };
                                let opened = reader.open(&f.path);
                                if let Ok(file) = &opened {
                                    let len = f.meta.as_ref().map_or(0, |m| m.size).min(READ_AHEAD_BYTES);
                                    let _ = rustix::fs::fadvise(
                                        file,
                                        0,
                                        std::num::NonZeroU64::new(len),
                                        rustix::fs::Advice::WillNeed,
                                    );
                                }
                                ahead.push_back((f, opened));
                            }
                            let Some((f, opened)) = ahead.pop_front() else { break };
                            let mut opened = opened;
                            // A file that changes while it is read is read
                            // once more; after that it is stored as read.
                            for attempt in 1..=2 {
                                if abort.load(Ordering::Relaxed) {
                                    return Ok(());
                                }
                                token += 1;
                                let outcome = match opened {
                                    Err(e) => ReadEnd::Failed(format!("cannot open: {e}")),
                                    Ok(file) => {
                                        progress.set_current(&f.path);
                                        let before = file_state(&file);
                                        let size = f.meta.as_ref().map_or(0, |m| m.size);
                                        let mut res = Ok(());
                                        let mut len = 0u64;
                                        let mut chunker =
                                            Chunker::with_buffer(file, chunker_params, seed, std::mem::take(&mut buf));
                                        for chunk in &mut chunker {
                                            // Stop within a chunk of the first fatal error
                                            // anywhere: a failed 2 TB image is not read on.
                                            if abort.load(Ordering::Relaxed) {
                                                log::info!(
                                                    "stopped reading {} after {len} of {size} bytes: the backup failed",
                                                    display_path(&f.path)
                                                );
                                                return Ok(());
                                            }
                                            match chunk {
                                                Ok(data) => {
                                                    len += data.len() as u64;
                                                    // A re-read is counted again: what was
                                                    // read, not what was stored.
                                                    progress.add_bytes(data.len() as u64);
                                                    if slot_tx.send(()).is_err()
                                                        || work_tx.send(Work::Chunk { seq, token, data }).is_err()
                                                    {
                                                        return Ok(());
                                                    }
                                                    seq += 1;
                                                }
                                                Err(e) => {
                                                    res = Err(format!("read error: {e}"));
                                                    break;
                                                }
                                            }
                                        }
                                        let (file, b) = chunker.into_parts();
                                        buf = b;
                                        match res {
                                            Err(e) => ReadEnd::Failed(e),
                                            Ok(()) if before.is_some() && file_state(&file) != before => {
                                                if attempt == 1 { ReadEnd::Discard } else { ReadEnd::Changed(len) }
                                            }
                                            Ok(()) => ReadEnd::Read(len),
                                        }
                                    }
                                };
                                let again = matches!(outcome, ReadEnd::Discard);
                                if slot_tx.send(()).is_err()
                                    || work_tx.send(Work::End { seq, token, path: f.path.clone(), outcome }).is_err()
                                {
                                    return Ok(());
                                }
                                seq += 1;
                                fault::hit("file-read");
                                if !again {
                                    progress.add_files(1);
                                    break;
                                }
                                log::info!("{} changed while it was read; reading it again", display_path(&f.path));
                                opened = reader.open(&f.path);
                            }
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    abort.store(true, Ordering::Relaxed);
                    let _ = commit_tx.send(ToCommitter::Fatal { error: format!("{e:#}") });
                }
            });
        }

        // Sealers: hash; skip what the index has; compress and seal the rest.
        for _ in 0..opts.sealers {
            let work_rx = work_rx.clone();
            let sealed_tx = sealed_tx.clone();
            let commit_tx = commit_tx.clone();
            let abort = &abort;
            s.spawn(move || {
                let result = (|| -> Result<()> {
                    let index = ChunkIndex::open(index_path)?;
                    for w in work_rx {
                        if abort.load(Ordering::Relaxed) {
                            continue; // drain: upstream stops at its next check
                        }
                        let out = match w {
                            Work::Chunk { seq, token, data } => {
                                let id = repo.keys.chunk_id(&data);
                                let sealed = if index.contains(&id)? {
                                    None
                                } else {
                                    Some(pack::seal_chunk(&repo.sealer, &id, &data))
                                };
                                Sealed::Chunk { seq, token, id, raw_len: data.len() as u32, sealed, plain: data }
                            }
                            Work::End { seq, token, path, outcome } => Sealed::End { seq, token, path, outcome },
                        };
                        if sealed_tx.send(out).is_err() {
                            break;
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    abort.store(true, Ordering::Relaxed);
                    let _ = commit_tx.send(ToCommitter::Fatal { error: format!("{e:#}") });
                }
            });
        }
        drop(work_rx);
        drop(sealed_tx);

        // Packer: puts chunks back in reader order, drops duplicates, fills packs.
        {
            let commit_tx = commit_tx.clone();
            let limits = (opts.pack_target, opts.max_file_chunks);
            let abort = &abort;
            s.spawn(move || {
                let result =
                    run_packer(repo, index_path, sealed_rx, slot_rx, pack_tx, &commit_tx, confirm_rx, limits, abort);
                if let Err(e) = result {
                    abort.store(true, Ordering::Relaxed);
                    let _ = commit_tx.send(ToCommitter::Fatal { error: format!("{e:#}") });
                }
            });
        }

        // Uploaders.
        for _ in 0..opts.uploaders.max(1) {
            let pack_rx = pack_rx.clone();
            let commit_tx = commit_tx.clone();
            let abort = &abort;
            s.spawn(move || {
                for mut job in pack_rx {
                    if abort.load(Ordering::Relaxed) {
                        continue; // a failed run stores nothing more
                    }
                    // The body goes to the backend, shared, not copied, and
                    // is freed as soon as it is stored: the committer needs
                    // only its size.
                    job.size = job.pack.bytes.len() as u64;
                    let body = std::sync::Arc::new(std::mem::take(&mut job.pack.bytes));
                    let stored = repo.put_shared(&job.pack.id.object_key(), body);
                    match stored {
                        Ok(_) => {
                            crate::progress::progress().add_stored(job.size);
                            fault::hit("pack-uploaded");
                            // A pack without its address is still stored:
                            // the address is for fetching it elsewhere.
                            job.address = match repo.backend.content_address(&job.pack.id.object_key()) {
                                Ok(a) => a,
                                Err(e) => {
                                    log::warn!(
                                        "pack {}: its content address is unknown: {e}",
                                        job.pack.id.object_key()
                                    );
                                    None
                                }
                            };
                            let seq = job.seq;
                            let _ = commit_tx.send(ToCommitter::Confirmed { seq, job });
                        }
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            let _ = commit_tx.send(ToCommitter::UploadFailed { error: format!("{e:#}") });
                        }
                    }
                }
            });
        }
        drop(pack_rx);
        drop(commit_tx);

        // Committer: this thread.
        let result = run_committer(catalog, &mut index, cs, commit_rx, &confirm_tx, &mut report, &abort);
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        drop(confirm_tx);
        result
    })?;
    Ok(report)
}

struct FileAcc {
    chunks: Vec<ChunkId>,
    need_pack: u64,
    hasher: blake3::Hasher,
    too_large: bool,
}

impl FileAcc {
    fn new() -> FileAcc {
        FileAcc { chunks: Vec::new(), need_pack: 0, hasher: blake3::Hasher::new(), too_large: false }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_packer(
    repo: &Repository,
    index_path: &Path,
    sealed_rx: Receiver<Sealed>,
    slot_rx: Receiver<()>,
    pack_tx: Sender<PackJob>,
    commit_tx: &Sender<ToCommitter>,
    confirm_rx: Receiver<u64>,
    (pack_target, max_file_chunks): (usize, usize),
    abort: &AtomicBool,
) -> Result<()> {
    let index = ChunkIndex::open(index_path)?;
    let mut reorder: BTreeMap<u64, Sealed> = BTreeMap::new();
    let mut next = 0u64;
    // Chunks placed in packs not yet confirmed, and which pack.
    let mut inflight: HashMap<ChunkId, u64> = HashMap::new();
    let mut ids_of_pack: HashMap<u64, Vec<ChunkId>> = HashMap::new();
    let mut files: HashMap<u64, FileAcc> = HashMap::new();
    let mut pack_seq = 1u64;
    let mut waiting_on_open = 0usize;
    let mut builder = PackBuilder::new(pack_target + (4 << 20));

    for item in sealed_rx {
        if abort.load(Ordering::Relaxed) {
            return Ok(()); // dropping the channels stops the stages around
        }
        reorder.insert(item.seq(), item);
        while let Some(item) = reorder.remove(&next) {
            next += 1;
            let _ = slot_rx.try_recv();
            // Confirmed packs' chunks are in the index now: forget them here.
            for p in confirm_rx.try_iter() {
                for id in ids_of_pack.remove(&p).unwrap_or_default() {
                    inflight.remove(&id);
                }
            }
            match item {
                Sealed::Chunk { token, id, raw_len, sealed, plain, .. } => {
                    let acc = files.entry(token).or_insert_with(FileAcc::new);
                    acc.hasher.update(&plain);
                    drop(plain);
                    if acc.chunks.len() >= max_file_chunks {
                        // Beyond what one file of the format can hold: the
                        // file fails at its end; nothing is kept of it.
                        acc.too_large = true;
                        continue;
                    }
                    acc.chunks.push(id);
                    match sealed {
                        None => {}
                        Some(_) if inflight.contains_key(&id) => {
                            acc.need_pack = acc.need_pack.max(inflight[&id]);
                        }
                        // The sealer may have looked before a confirmation landed.
                        Some(_) if index.contains(&id)? => {}
                        Some(blob) => {
                            builder.add(id, KIND_DATA, raw_len, &blob);
                            inflight.insert(id, pack_seq);
                            ids_of_pack.entry(pack_seq).or_default().push(id);
                            acc.need_pack = pack_seq;
                            if builder.len() >= pack_target {
                                let full = std::mem::replace(&mut builder, PackBuilder::new(pack_target + (4 << 20)));
                                if pack_tx
                                    .send(PackJob {
                                        seq: pack_seq,
                                        pack: full.finish(&repo.sealer),
                                        size: 0,
                                        address: None,
                                    })
                                    .is_err()
                                {
                                    return Ok(());
                                }
                                pack_seq += 1;
                                waiting_on_open = 0;
                            }
                        }
                    }
                }
                Sealed::End { token, path, outcome, .. } => {
                    let acc = files.remove(&token).unwrap_or_else(FileAcc::new);
                    if acc.need_pack == pack_seq {
                        waiting_on_open += 1;
                        if waiting_on_open >= MAX_WAITING_ON_OPEN_PACK && !builder.is_empty() {
                            let full = std::mem::replace(&mut builder, PackBuilder::new(pack_target + (4 << 20)));
                            if pack_tx
                                .send(PackJob {
                                    seq: pack_seq,
                                    pack: full.finish(&repo.sealer),
                                    size: 0,
                                    address: None,
                                })
                                .is_err()
                            {
                                return Ok(());
                            }
                            pack_seq += 1;
                            waiting_on_open = 0;
                        }
                    }
                    let msg = match outcome {
                        ReadEnd::Discard => continue,
                        _ if acc.too_large => ToCommitter::FileFailed {
                            path,
                            error: format!(
                                "too large: it has more than {max_file_chunks} chunks, the most one file of the n2s format can hold (7 TiB or more)"
                            ),
                        },
                        ReadEnd::Read(size) | ReadEnd::Changed(size) => ToCommitter::FileReady {
                            path,
                            hash: *acc.hasher.finalize().as_bytes(),
                            chunks: acc.chunks,
                            need_pack: acc.need_pack,
                            size,
                            at: now(),
                            changed: matches!(outcome, ReadEnd::Changed(_)),
                        },
                        ReadEnd::Failed(error) => ToCommitter::FileFailed { path, error },
                    };
                    if commit_tx.send(msg).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    if !builder.is_empty() {
        let _ = pack_tx.send(PackJob { seq: pack_seq, pack: builder.finish(&repo.sealer), size: 0, address: None });
    }
    Ok(())
}

fn run_committer(
    catalog: &mut Catalog,
    index: &mut ChunkIndex,
    cs: i64,
    commit_rx: Receiver<ToCommitter>,
    confirm_tx: &Sender<u64>,
    report: &mut UploadReport,
    abort: &AtomicBool,
) -> Result<()> {
    let mut watermark = 0u64;
    let mut confirmed: BTreeSet<u64> = BTreeSet::new();
    // Files waiting for packs, by the pack they need.
    let mut waiting: BTreeMap<u64, Vec<StoredFile>> = BTreeMap::new();
    let mut batch: Vec<StoredFile> = Vec::new();
    let mut last_flush = Instant::now();
    let mut failure: Option<String> = None;

    let flush = |catalog: &mut Catalog, batch: &mut Vec<StoredFile>, report: &mut UploadReport| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        catalog.mark_stored(cs, batch, now())?;
        report.files_stored += batch.len() as u64;
        batch.clear();
        fault::hit("files-committed");
        Ok(())
    };

    for msg in commit_rx {
        match msg {
            ToCommitter::FileReady { path, chunks, need_pack, size, hash, at, changed } => {
                report.bytes_read += size;
                let note = changed.then(|| {
                    log::warn!(
                        "{} changed while it was read, twice: stored as read the second time (it may mix old and new content)",
                        display_path(&path)
                    );
                    report.changed.push(display_path(&path));
                    CHANGED_DURING_READ.to_string()
                });
                let f = StoredFile { path, chunks, file_hash: hash, size, uploaded_at: at, note };
                if need_pack <= watermark {
                    batch.push(f);
                } else {
                    waiting.entry(need_pack).or_default().push(f);
                }
            }
            ToCommitter::FileFailed { path, error } => {
                log::warn!("cannot back up {}: {error}", display_path(&path));
                catalog.mark_failed(cs, &path, &error)?;
                report.failed.push(format!("{}: {error}", display_path(&path)));
            }
            ToCommitter::Confirmed { seq, job } => {
                index.add_pack(&job.pack.id, job.size, &job.pack.entries, now())?;
                if let Some(a) = &job.address {
                    index.set_content_address(&job.pack.id, a)?;
                }
                catalog.add_uploaded(cs, job.size)?;
                report.bytes_uploaded += job.size;
                report.packs += 1;
                confirmed.insert(seq);
                while confirmed.remove(&(watermark + 1)) {
                    watermark += 1;
                }
                let still_waiting = waiting.split_off(&(watermark + 1));
                for (_, files) in std::mem::replace(&mut waiting, still_waiting) {
                    batch.extend(files);
                }
                let _ = confirm_tx.send(seq);
                fault::hit("pack-indexed");
            }
            ToCommitter::UploadFailed { error } | ToCommitter::Fatal { error } => {
                abort.store(true, Ordering::Relaxed);
                failure.get_or_insert(error);
            }
        }
        if batch.len() >= 2000 || last_flush.elapsed() > Duration::from_secs(2) {
            flush(catalog, &mut batch, report)?;
            last_flush = Instant::now();
        }
    }
    flush(catalog, &mut batch, report)?;
    if let Some(e) = failure {
        bail!("{e}");
    }
    if !waiting.is_empty() {
        bail!(
            "internal error: {} files wait for packs that were never confirmed",
            waiting.values().map(Vec::len).sum::<usize>()
        );
    }
    Ok(())
}
