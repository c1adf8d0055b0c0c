//! The btrfs source: each read-only snapshot of a subvolume is backed up as
//! the diff from the previous one, taken from the binary `btrfs send
//! --no-data -p PREV NEW` stream (never the `btrfs receive --dump` text,
//! whose format changes between btrfs-progs releases).
//!
//! - A snapshot's identity is its subvolume UUID plus its generation, never
//!   its name. Snapshots are ordered by the generation they were made in
//!   ("Gen at creation"): the current generation of a read-only snapshot
//!   moves when something snapshots it. Only snapshots whose
//!   Parent UUID is the dataset's subvolume count, so a flat directory of
//!   several subvolumes' snapshots (btrbk) works.
//! - Snapshot directories: snapper's `<dir>/<N>/snapshot` and flat
//!   directories of snapshots (`NAME.YYYYMMDDTHHMM`) both work.
//! - When the previous snapshot is gone, or send fails, the new snapshot is
//!   walked and compared with the catalog instead, and the changeset says so.
//!
//! Content is always read from the read-only snapshot.

pub mod diff;
pub mod stream;

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::child::StderrTail;
use super::spill::PathSorter;
use super::walk::{snapshot_reader, walk_snapshot};
use super::{ChangeReport, ChangeSource, PriorState, SnapshotReader, SnapshotRef};
use crate::fsx::Dir;
use crate::model::Change;

/// What `btrfs subvolume show` says about a subvolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubvolInfo {
    pub uuid: String,
    pub parent_uuid: Option<String>,
    pub generation: u64,
    /// The generation the snapshot was made in ("Gen at creation"). Unlike
    /// `generation`, it never changes: snapshotting a snapshot bumps the
    /// latter, so order and "newer than" use this one.
    pub created_gen: u64,
    pub readonly: bool,
}

/// Parse `btrfs subvolume show` output. Only its `Key: value` lines are
/// used, which have been stable across btrfs-progs releases.
pub fn parse_subvol_show(text: &str) -> Result<SubvolInfo> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.trim().split_once(':') {
            fields.entry(k.trim().to_string()).or_insert_with(|| v.trim().to_string());
        }
    }
    let get = |k: &str| fields.get(k).cloned().with_context(|| format!("`btrfs subvolume show` printed no {k}"));
    let uuid = get("UUID")?;
    let parent = get("Parent UUID")?;
    let generation = get("Generation")?.parse().context("`btrfs subvolume show` printed a bad Generation")?;
    let created_gen =
        get("Gen at creation")?.parse().context("`btrfs subvolume show` printed a bad Gen at creation")?;
    let flags = get("Flags")?;
    Ok(SubvolInfo {
        uuid,
        parent_uuid: (parent != "-").then_some(parent),
        generation,
        created_gen,
        readonly: flags.split(|c: char| c == ',' || c.is_whitespace()).any(|f| f == "readonly"),
    })
}

fn subvol_show(path: &Path) -> Result<SubvolInfo> {
    let out = Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `btrfs` (install btrfs-progs)")?;
    if !out.status.success() {
        bail!(
            "{} is not a btrfs subvolume: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ")
        );
    }
    parse_subvol_show(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading subvolume {}", path.display()))
}

/// A subvolume root has inode 256 on btrfs: a cheap test before asking `btrfs`.
fn looks_like_subvolume(p: &Path) -> bool {
    rustix::fs::lstat(p).is_ok_and(|st| st.st_ino == 256 && (st.st_mode & libc::S_IFMT) == libc::S_IFDIR)
}

/// Inside a snapshot, a nested subvolume is an empty directory with inode
/// 2 (BTRFS_EMPTY_SUBVOL_DIR_OBJECTID). Nested subvolumes (snapper's
/// `.snapshots` among them) are datasets of their own: never backed up here.
pub fn is_nested_subvolume_stub(m: &crate::model::Metadata) -> bool {
    m.ftype == crate::model::FileType::Dir && m.ino == 2
}

#[derive(Clone, Debug)]
struct Snap {
    r: SnapshotRef,
    info: SubvolInfo,
}

pub struct BtrfsSource {
    subvol: PathBuf,
    snapshot_dir: PathBuf,
    /// The snapshot the next diff starts from (the last one backed up).
    base: Option<Snap>,
    /// Why the base could not be used, for the changeset's method.
    base_missing: Option<String>,
    problems: Vec<String>,
}

/// Where a subvolume's snapshots are when no snapshot directory is given:
/// snapper's layout.
pub fn default_snapshot_dir(subvol: &Path) -> PathBuf {
    subvol.join(".snapshots")
}

impl BtrfsSource {
    pub fn new(subvol: &Path, snapshot_dir: Option<&Path>) -> BtrfsSource {
        BtrfsSource {
            subvol: subvol.to_path_buf(),
            snapshot_dir: snapshot_dir.map_or_else(|| default_snapshot_dir(subvol), Path::to_path_buf),
            base: None,
            base_missing: None,
            problems: Vec::new(),
        }
    }

    /// Every snapshot of this subvolume in the snapshot directory, oldest first.
    fn list(&mut self) -> Result<Vec<Snap>> {
        let me = subvol_show(&self.subvol)?;
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.snapshot_dir).with_context(|| {
            format!("cannot list snapshot directory {}: check --snapshot-dir", self.snapshot_dir.display())
        })?;
        let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let entry = self.snapshot_dir.join(&name);
            // snapper keeps <N>/snapshot; flat layouts keep the snapshot itself.
            let path = if looks_like_subvolume(&entry.join("snapshot")) { entry.join("snapshot") } else { entry };
            if !looks_like_subvolume(&path) {
                continue;
            }
            let info = subvol_show(&path)?;
            if info.parent_uuid.as_deref() != Some(me.uuid.as_str()) {
                continue; // a snapshot of another subvolume
            }
            let mut identity = BTreeMap::new();
            identity.insert("uuid".to_string(), info.uuid.clone());
            identity.insert("generation".to_string(), info.generation.to_string());
            identity.insert("created_gen".to_string(), info.created_gen.to_string());
            let r = SnapshotRef { name: name.to_string_lossy().into_owned(), identity, root: path };
            out.push(Snap { r, info });
        }
        out.sort_by(|a, b| a.info.created_gen.cmp(&b.info.created_gen).then(a.r.name.cmp(&b.r.name)));
        Ok(out)
    }

    /// The changes from the base snapshot to `snap` per the send stream.
    fn send_diff(
        &self,
        base: &Snap,
        snap: &SnapshotRef,
        prior: &dyn PriorState,
        emit: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<(Vec<super::Unreadable>, u64)> {
        let mut send = Command::new("btrfs");
        send.args(["send", "--no-data", "-q", "-p"]).arg(&base.r.root).arg(&snap.root);
        let candidates = send_stream_paths(send, PathSorter::new())?;
        let root = Dir::open(&snap.root).with_context(|| format!("cannot open snapshot {}", snap.root.display()))?;
        super::named::changes_for_paths(prior, &root, candidates, Some(is_nested_subvolume_stub), emit)
    }
}

/// Bytes tolerated (and dropped) after a send stream's END command.
const MAX_AFTER_END: u64 = 1 << 20;

/// Run `send` (a `btrfs send` command) and gather the paths its stream
/// names into `out`, parsing the stream as it arrives: memory is one
/// command plus the sorter's budget, however long the stream. Its stderr
/// is read alongside, so it cannot block on a full pipe.
fn send_stream_paths(mut send: Command, out: PathSorter) -> Result<PathSorter> {
    let mut child = send
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `btrfs send` (install btrfs-progs)")?;
    let stderr = StderrTail::spawn(child.stderr.take());
    let stdout = child.stdout.take().context("`btrfs send` has no stdout")?;
    let mut stdout = std::io::BufReader::with_capacity(256 << 10, stdout);
    let parsed = diff::candidate_paths(&mut stdout, out).and_then(|paths| {
        // Read on to the end of the output: btrfs-progs copies the stream
        // with splice(2), whose last call (the one that sees the end) dies
        // of SIGPIPE if the pipe's reader has already closed it. Nothing
        // should follow END; whatever does is bounded and dropped.
        let after = std::io::copy(&mut std::io::Read::take(&mut stdout, MAX_AFTER_END + 1), &mut std::io::sink())
            .context("cannot read the end of the `btrfs send` output")?;
        if after > MAX_AFTER_END {
            bail!("`btrfs send` wrote more than {MAX_AFTER_END} bytes after the stream's END command");
        }
        Ok(paths)
    });
    if parsed.is_err() {
        // It may be blocked writing the rest of a stream we no longer read.
        let _ = child.kill();
    }
    let status = child.wait().context("cannot wait for `btrfs send`")?;
    let err = stderr.text();
    match parsed {
        // Its own words first: a stream cut short is a symptom.
        _ if !status.success() && status.signal().is_none() => bail!("btrfs send failed: {err}"),
        Err(e) if err.is_empty() => Err(e.context("reading the `btrfs send` stream")),
        Err(e) => Err(e.context(format!("reading the `btrfs send` stream (btrfs said: {err})"))),
        Ok(_) if !status.success() && err.is_empty() => bail!("btrfs send was killed ({status})"),
        Ok(_) if !status.success() => bail!("btrfs send was killed ({status}): {err}"),
        Ok(paths) => Ok(paths),
    }
}

impl ChangeSource for BtrfsSource {
    fn kind(&self) -> &'static str {
        "btrfs"
    }

    fn new_snapshots(&mut self, last: Option<(&str, &BTreeMap<String, String>)>) -> Result<Vec<SnapshotRef>> {
        let all = self.list()?;
        let last_gen: Option<u64> = last
            .and_then(|(_, id)| id.get("created_gen").or_else(|| id.get("generation")))
            .and_then(|g| g.parse().ok());
        let last_uuid = last.and_then(|(_, id)| id.get("uuid").cloned());
        self.base = None;
        self.base_missing = None;
        if let Some((name, _)) = last {
            match all.iter().find(|s| Some(&s.info.uuid) == last_uuid.as_ref()) {
                Some(s) => self.base = Some(s.clone()),
                None => {
                    let why = format!("the previous snapshot {name} is gone");
                    log::warn!("{}: {why}; the next snapshot is walked instead of diffed", self.subvol.display());
                    self.base_missing = Some(why);
                }
            }
        }
        let mut out = Vec::new();
        for s in all {
            if last_gen.is_some_and(|g| s.info.created_gen <= g) {
                continue;
            }
            if !s.info.readonly {
                let msg = format!(
                    "snapshot {} is not read-only, so it is not backed up: btrfs send needs read-only snapshots (btrfs subvolume snapshot -r)",
                    s.r.root.display()
                );
                log::error!("{msg}");
                self.problems.push(msg);
                continue;
            }
            out.push(s.r);
        }
        Ok(out)
    }

    fn find_snapshot(&mut self, _name: &str, identity: &BTreeMap<String, String>) -> Result<Option<SnapshotRef>> {
        let want = identity.get("uuid");
        Ok(self.list()?.into_iter().find(|s| Some(&s.info.uuid) == want).map(|s| s.r))
    }

    fn changes(
        &mut self,
        prior: &dyn PriorState,
        snap: &SnapshotRef,
        emit: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<ChangeReport> {
        let this = Snap { r: snap.clone(), info: subvol_show(&snap.root)? };
        let fallback = match (&self.base, &self.base_missing) {
            (Some(base), _) if !base.info.readonly => {
                Some(format!("the previous snapshot {} is not read-only", base.r.name))
            }
            (Some(base), _) => match self.send_diff(base, snap, prior, emit) {
                Ok((unreadable, unreadable_more)) => {
                    self.base = Some(this);
                    return Ok(ChangeReport { method: "send".into(), unreadable, unreadable_more });
                }
                Err(e) => {
                    log::warn!("{}: {e:#}; walking the snapshot instead", snap.name);
                    Some(format!("{e:#}"))
                }
            },
            (None, Some(why)) => Some(why.clone()),
            (None, None) => None,
        };
        // A first backup, or a fallback: walk the snapshot against the catalog.
        // (If a send failed part-way, the rows it emitted are replaced by the
        // walk's for the same paths.)
        let report = walk_snapshot(prior, snap, Some(is_nested_subvolume_stub), fallback, emit)?;
        self.base = Some(this);
        self.base_missing = None;
        Ok(report)
    }

    fn reader(&self, snap: &SnapshotRef) -> Result<Box<dyn SnapshotReader>> {
        snapshot_reader(snap)
    }

    fn problems(&self) -> Vec<String> {
        self.problems.clone()
    }

    fn take_snapshot(&mut self, name: &str) -> Result<SnapshotRef> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("cannot name a snapshot {name:?}: use a plain name without '/'");
        }
        std::fs::create_dir_all(&self.snapshot_dir)
            .with_context(|| format!("cannot create snapshot directory {}", self.snapshot_dir.display()))?;
        let to = self.snapshot_dir.join(name);
        if to.exists() {
            bail!("{} already exists: choose another --snapshot name", to.display());
        }
        let out = Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(&self.subvol)
            .arg(&to)
            .stdin(Stdio::null())
            .output()
            .context("cannot run `btrfs` (install btrfs-progs)")?;
        if !out.status.success() {
            bail!(
                "cannot snapshot {} to {}: {}",
                self.subvol.display(),
                to.display(),
                String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ")
            );
        }
        log::info!("made read-only snapshot {}", to.display());
        let info = subvol_show(&to)?;
        let mut identity = BTreeMap::new();
        identity.insert("uuid".to_string(), info.uuid);
        identity.insert("generation".to_string(), info.generation.to_string());
        Ok(SnapshotRef { name: name.to_string(), identity, root: to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::source::testutil::{sh, sorted};

    #[test]
    fn a_send_stream_is_parsed_as_it_arrives_while_stderr_is_drained() {
        let fx = format!("{}/tests/fixtures/btrfs/incremental-v1.stream", env!("CARGO_MANIFEST_DIR"));
        let want = sorted(diff::candidate_paths(&std::fs::read(&fx).unwrap()[..], PathSorter::new()).unwrap());
        assert!(want.len() > 5);
        let got =
            send_stream_paths(sh(&format!("cat '{fx}'; head -c 300000 /dev/zero | tr '\\0' e >&2")), PathSorter::new());
        assert_eq!(sorted(got.unwrap()), want);
        let e = send_stream_paths(sh("echo 'ERROR: parent not found' >&2; exit 1"), PathSorter::new()).unwrap_err();
        assert_eq!(format!("{e:#}"), "btrfs send failed: ERROR: parent not found");
    }

    #[test]
    fn the_output_is_read_to_its_end_after_the_stream_ends() {
        // btrfs-progs makes one more splice(2) after the stream's END, which
        // gets SIGPIPE if the reader has gone (seen in scripts/bench); here
        // the child writes after a pause, the same way.
        let fx = format!("{}/tests/fixtures/btrfs/incremental-v1.stream", env!("CARGO_MANIFEST_DIR"));
        let got = send_stream_paths(sh(&format!("cat '{fx}'; sleep 0.3; echo trailing")), PathSorter::new());
        assert!(got.is_ok(), "{:#}", got.unwrap_err());
        let e = send_stream_paths(sh(&format!("cat '{fx}'; exec yes")), PathSorter::new()).unwrap_err();
        assert!(format!("{e:#}").contains("after the stream's END"), "{e:#}");
    }

    #[test]
    fn an_endless_bad_stream_is_refused_without_reading_it_all() {
        // A valid header, then `yes`: its first "command" claims more than
        // the limit. The child is killed; nothing waits for its end.
        let e = send_stream_paths(sh("printf 'btrfs-stream\\000\\001\\000\\000\\000'; exec yes"), PathSorter::new())
            .unwrap_err();
        assert!(format!("{e:#}").contains("more than the limit"), "{e:#}");
    }

    #[test]
    fn subvolume_show_output_parses() {
        let text = "vol/s1\n\tName: \t\t\ts1\n\tUUID: \t\t\t92bf79ab-cc5d-e240-be11-e269cebc1523\n\tParent UUID: \t\t05bdb8a8-8e18-4841-89ea-ba68cd70333a\n\tReceived UUID: \t\t-\n\tCreation time: \t\t2026-11-22 06:29:48 +0000\n\tSubvolume ID: \t\t257\n\tGeneration: \t\t7\n\tGen at creation: \t7\n\tFlags: \t\t\treadonly\n";
        let i = parse_subvol_show(text).unwrap();
        assert_eq!(i.uuid, "92bf79ab-cc5d-e240-be11-e269cebc1523");
        assert_eq!(i.parent_uuid.as_deref(), Some("05bdb8a8-8e18-4841-89ea-ba68cd70333a"));
        assert_eq!(i.generation, 7);
        assert!(i.readonly);
        let w = parse_subvol_show(&text.replace("readonly", "-").replace("05bdb8a8-8e18-4841-89ea-ba68cd70333a", "-"))
            .unwrap();
        assert!(!w.readonly);
        assert_eq!(w.parent_uuid, None);
        assert!(parse_subvol_show("garbage").is_err());
    }
}
