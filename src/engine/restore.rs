//! Restore a snapshot (or some paths of it) into a target directory.
//!
//! Every write goes through directory handles opened beneath the target
//! with O_NOFOLLOW (fsx), and every path was checked safe when its manifest
//! was decoded, so a hostile repository cannot make restore write outside
//! the target. A file whose data is missing or corrupt is reported and
//! removed; the rest of the restore goes on.

use anyhow::{Context, Result, bail};
use crossbeam_channel::bounded;
use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::catalog::index::ChunkIndex;
use crate::catalog::{Catalog, ChangesetRow, FileRow};
use crate::fsx::Dir;
use crate::model::{FileType, Metadata, display_path, is_safe_rel_path, split_path};
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

#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub other: u64,
    pub bytes: u64,
    pub failed: Vec<String>,
    pub warnings: Vec<String>,
}

struct FileJob {
    path: Vec<u8>,
    meta: Metadata,
    chunks: Vec<crate::model::ChunkId>,
    hash: Option<[u8; 32]>,
}

pub fn restore(
    repo: &Repository,
    catalog: &Catalog,
    index_path: &std::path::Path,
    cs: &ChangesetRow,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    for p in &opts.paths {
        if !is_safe_rel_path(p) {
            bail!("--path {} is not a relative path inside the snapshot", display_path(p));
        }
    }
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
    let chown = rustix::process::geteuid().is_root();
    let index_synced = Mutex::new(false);
    let report = Mutex::new(RestoreReport::default());
    let mut dirs: Vec<(Vec<u8>, Metadata)> = Vec::new();
    let mut links: Vec<(Vec<u8>, Vec<u8>)> = Vec::new(); // (path, first path of its group)
    let mut groups: HashMap<u64, Vec<u8>> = HashMap::new();

    // Which subtrees: the given paths, each with its ancestors created first.
    let selections: Vec<Vec<u8>> = if opts.paths.is_empty() { vec![Vec::new()] } else { opts.paths.clone() };
    let mut entries_seen = 0u64;
    let (job_tx, job_rx) = bounded::<FileJob>(opts.workers * 4);

    std::thread::scope(|s| -> Result<()> {
        for _ in 0..opts.workers.max(1) {
            let job_rx = job_rx.clone();
            let (root, index_synced, report) = (&root, &index_synced, &report);
            s.spawn(move || {
                // Each worker has its own index connection and directory
                // handle: no lock is shared on the per-file path.
                let mut w = match ChunkIndex::open(index_path) {
                    Ok(index) => Worker { index, dir: None },
                    Err(e) => {
                        report.lock().unwrap_or_else(|e| e.into_inner()).failed.push(format!("{e:#}"));
                        return;
                    }
                };
                for job in job_rx {
                    let res = restore_file(repo, root, &mut w, index_path, index_synced, &job, opts.overwrite, chown);
                    let mut rep = report.lock().unwrap_or_else(|e| e.into_inner());
                    match res {
                        Ok((bytes, warnings)) => {
                            rep.files += 1;
                            rep.bytes += bytes;
                            rep.warnings
                                .extend(warnings.into_iter().map(|w| format!("{}: {w}", display_path(&job.path))));
                        }
                        Err(e) => rep.failed.push(format!("{}: {e:#}", display_path(&job.path))),
                    }
                }
            });
        }
        drop(job_rx);

        let mut parent_cache: Option<(Vec<u8>, Dir)> = None;
        for sel in &selections {
            // Ancestors of a selected path, so it has somewhere to go.
            let mut anc = Vec::new();
            for (i, b) in sel.iter().enumerate() {
                if *b == b'/' {
                    anc.push(sel[..i].to_vec());
                }
            }
            for a in anc {
                if let Some(row) = catalog.entry_at(cs.id, &a)?
                    && let Some(m) = row.meta.filter(|m| m.ftype == FileType::Dir)
                {
                    root.open_beneath(split_path(&a).0)?.create_dir(split_path(&a).1)?;
                    dirs.push((a, m));
                }
            }
            let mut found = false;
            catalog.for_each_in_tree(cs.id, Some(sel), |row: FileRow| {
                found = true;
                entries_seen += 1;
                let Some(meta) = row.meta else { return Ok(()) };
                if row.path.is_empty() {
                    dirs.push((Vec::new(), meta));
                    return Ok(());
                }
                let (parent, name) = split_path(&row.path);
                if parent_cache.as_ref().map(|(p, _)| p.as_slice()) != Some(parent) {
                    match root.open_beneath(parent) {
                        Ok(d) => parent_cache = Some((parent.to_vec(), d)),
                        Err(e) => {
                            // Its directory could not be made (or is a symlink
                            // planted by a hostile manifest): skip the entry.
                            parent_cache = None;
                            report.lock().unwrap_or_else(|e| e.into_inner()).failed.push(format!(
                                "{}: cannot open its directory in the target: {e}",
                                display_path(&row.path)
                            ));
                            return Ok(());
                        }
                    }
                }
                let (_, pdir) = parent_cache.as_ref().expect("set above");
                let mut rep = report.lock().unwrap_or_else(|e| e.into_inner());
                let made: std::io::Result<()> = match meta.ftype {
                    FileType::Dir => {
                        let r = pdir.create_dir(name);
                        if r.is_ok() {
                            rep.dirs += 1;
                            dirs.push((row.path.clone(), meta));
                        }
                        r
                    }
                    FileType::File => {
                        let g = meta.link_group();
                        if g != 0 {
                            if let Some(first) = groups.get(&g) {
                                links.push((row.path.clone(), first.clone()));
                                return Ok(());
                            }
                            groups.insert(g, row.path.clone());
                        }
                        drop(rep);
                        job_tx
                            .send(FileJob { path: row.path, meta, chunks: row.chunks, hash: row.file_hash })
                            .map_err(|_| anyhow::anyhow!("restore workers stopped"))?;
                        return Ok(());
                    }
                    FileType::Symlink => {
                        let target = meta.symlink_target.clone().unwrap_or_default();
                        pdir.create_symlink(name, &target, opts.overwrite).map(|()| {
                            rep.other += 1;
                            for w in pdir.apply_metadata(Some(name), &meta, chown) {
                                rep.warnings.push(format!("{}: {w}", display_path(&row.path)));
                            }
                        })
                    }
                    _ => pdir.create_special(name, &meta, opts.overwrite).map(|()| {
                        rep.other += 1;
                        for w in pdir.apply_metadata(Some(name), &meta, chown) {
                            rep.warnings.push(format!("{}: {w}", display_path(&row.path)));
                        }
                    }),
                };
                if let Err(e) = made {
                    rep.failed.push(format!("{}: {e}", display_path(&row.path)));
                }
                Ok(())
            })?;
            if !found {
                bail!("{} is not in snapshot {}", display_path(sel), cs.snapshot);
            }
        }
        drop(job_tx);
        Ok(())
    })?;
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());

    // Hardlinks, once every first link exists.
    for (path, first) in links {
        let (parent, name) = split_path(&path);
        let (fparent, fname) = split_path(&first);
        let r = root.open_beneath(parent).and_then(|d| {
            root.open_beneath(fparent).and_then(|fd| d.create_hardlink(name, &fd, fname, opts.overwrite))
        });
        match r {
            Ok(()) => report.links += 1,
            Err(e) => {
                report.failed.push(format!("{}: cannot link to {}: {e}", display_path(&path), display_path(&first)))
            }
        }
    }
    // Directory metadata last, deepest first, so writing children does not
    // disturb a parent's mtime.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (path, meta) in dirs {
        let warn = if path.is_empty() {
            root.apply_metadata(None, &meta, chown)
        } else {
            let (parent, name) = split_path(&path);
            match root.open_beneath(parent) {
                Ok(d) => d.apply_metadata(Some(name), &meta, chown),
                Err(e) => vec![e.to_string()],
            }
        };
        report.warnings.extend(warn.into_iter().map(|w| format!("{}: {w}", display_path(&path))));
    }
    // One flush of the whole file system at the end instead of an fsync per
    // file: as durable when restore returns, without 200,000 round trips.
    if let Err(e) = rustix::fs::syncfs(&root) {
        report.warnings.push(format!("syncfs of the target failed: {e}"));
    }
    log::debug!("restore visited {entries_seen} entries");
    Ok(report)
}

/// Write one file from its chunks; on any failure remove what was written.
struct Worker {
    index: ChunkIndex,
    /// The directory of the last file written: files come in path order.
    dir: Option<(Vec<u8>, Dir)>,
}

#[allow(clippy::too_many_arguments)]
fn restore_file(
    repo: &Repository,
    root: &Dir,
    w: &mut Worker,
    index_path: &std::path::Path,
    index_synced: &Mutex<bool>,
    job: &FileJob,
    overwrite: bool,
    chown: bool,
) -> Result<(u64, Vec<String>)> {
    let (parent, name) = split_path(&job.path);
    if w.dir.as_ref().map(|(p, _)| p.as_slice()) != Some(parent) {
        w.dir = None;
        let d = root.open_beneath(parent).context("cannot open its directory in the target")?;
        w.dir = Some((parent.to_vec(), d));
    }
    let (_, dir) = w.dir.as_ref().expect("set above");
    let mut file = dir.create_file(name, overwrite).context("cannot create it")?;
    let written = (|| -> Result<u64> {
        let mut hasher = blake3::Hasher::new();
        let mut pos = 0u64;
        for id in &job.chunks {
            let loc = lookup(repo, &w.index, index_path, index_synced, id)?;
            let data = repo.read_chunk(id, &loc)?;
            hasher.update(&data);
            write_sparse(&mut file, &data)?;
            pos += data.len() as u64;
        }
        file.set_len(pos)?;
        if let Some(h) = job.hash
            && *hasher.finalize().as_bytes() != h
        {
            bail!("restored content does not match the hash recorded at backup");
        }
        Ok(pos)
    })();
    drop(file);
    match written {
        Ok(n) => Ok((n, dir.apply_metadata(Some(name), &job.meta, chown))),
        Err(e) => {
            let _ = dir.remove_file(name);
            Err(e)
        }
    }
}

/// Write `data` at the current position, seeking over all-zero 4 KiB
/// blocks instead of writing them, so sparse files stay sparse.
fn write_sparse(file: &mut std::fs::File, data: &[u8]) -> std::io::Result<()> {
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
    index_path: &std::path::Path,
    index_synced: &Mutex<bool>,
    id: &crate::model::ChunkId,
) -> Result<crate::catalog::index::ChunkLocation> {
    if let Some(loc) = index.lookup(id)? {
        return Ok(loc);
    }
    {
        let mut synced = index_synced.lock().unwrap_or_else(|e| e.into_inner());
        if !*synced {
            let mut writer = ChunkIndex::open(index_path)?;
            repo.sync_index(&mut writer)?;
            *synced = true;
        }
    }
    index.lookup(id)?.with_context(|| format!("chunk {} is in no pack of the repository", &id.to_hex()[..16]))
}

/// Convenience for callers holding an Arc.
pub fn restore_arc(
    repo: &Arc<Repository>,
    catalog: &Catalog,
    index_path: &std::path::Path,
    cs: &ChangesetRow,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    restore(repo, catalog, index_path, cs, opts)
}
