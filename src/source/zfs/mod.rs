//! The ZFS source (in progress): `zfs diff -FHt` between consecutive
//! snapshots, read from `<mountpoint>/.zfs/snapshot/<name>/`.

pub mod diff;

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::child::StderrTail;
use super::spill::PathSorter;
use super::walk::{snapshot_reader, walk_snapshot};
use super::{ChangeReport, ChangeSource, PriorState, SnapshotReader, SnapshotRef};
use crate::fsx::Dir;
use crate::model::Change;

/// The hold tag placed on the last backed-up snapshot, so pruners such as
/// sanoid cannot destroy the next diff's base.
pub const HOLD_TAG: &str = "n2s-agent";

/// One line of `zfs list -Hp -o name,guid,createtxg -t snapshot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZfsSnapshot {
    /// The part after `@`.
    pub name: String,
    pub guid: String,
    pub createtxg: u64,
}

pub fn parse_snapshot_list(dataset: &str, text: &str) -> Result<Vec<ZfsSnapshot>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let [full, guid, txg, ..] = f[..] else {
            bail!("`zfs list` line {} has {} fields, 3 expected", i + 1, f.len());
        };
        let Some((ds, name)) = full.split_once('@') else {
            bail!("`zfs list` line {}: {full} is not a snapshot", i + 1)
        };
        if ds != dataset {
            continue; // a child dataset's snapshot
        }
        let createtxg = txg.parse().with_context(|| format!("`zfs list` line {}: bad createtxg {txg:?}", i + 1))?;
        out.push(ZfsSnapshot { name: name.to_string(), guid: guid.to_string(), createtxg });
    }
    out.sort_by_key(|s| s.createtxg);
    Ok(out)
}

fn zfs(args: &[&str]) -> Result<String> {
    let out = Command::new("zfs")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `zfs` (install zfsutils-linux)")?;
    if !out.status.success() {
        bail!("zfs {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim().replace('\n', " "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct ZfsSource {
    dataset: String,
    holds: bool,
    diff_timeout: Duration,
    mountpoint: Option<PathBuf>,
    base: Option<ZfsSnapshot>,
    base_problem: Option<String>,
    problems: Vec<String>,
}

impl ZfsSource {
    pub fn new(dataset: &str, holds: bool, diff_timeout: Duration) -> ZfsSource {
        ZfsSource {
            dataset: dataset.to_string(),
            holds,
            diff_timeout,
            mountpoint: None,
            base: None,
            base_problem: None,
            problems: Vec::new(),
        }
    }

    fn mountpoint(&mut self) -> Result<PathBuf> {
        if let Some(m) = &self.mountpoint {
            return Ok(m.clone());
        }
        let mounted = zfs(&["get", "-Hp", "-o", "value", "mounted", &self.dataset])?;
        if mounted.trim() != "yes" {
            bail!(
                "ZFS dataset {} is not mounted: its snapshots are read through <mountpoint>/.zfs/snapshot",
                self.dataset
            );
        }
        let mp = zfs(&["get", "-Hp", "-o", "value", "mountpoint", &self.dataset])?.trim().to_string();
        if !mp.starts_with('/') {
            bail!("ZFS dataset {} has mountpoint {mp:?}: n2s-agent needs a mounted file system", self.dataset);
        }
        let p = PathBuf::from(mp);
        self.mountpoint = Some(p.clone());
        Ok(p)
    }

    fn list(&self) -> Result<Vec<ZfsSnapshot>> {
        let text = zfs(&[
            "list",
            "-Hp",
            "-d",
            "1",
            "-t",
            "snapshot",
            "-o",
            "name,guid,createtxg",
            "-s",
            "createtxg",
            &self.dataset,
        ])?;
        parse_snapshot_list(&self.dataset, &text)
    }

    fn snapshot_ref(&mut self, s: &ZfsSnapshot) -> Result<SnapshotRef> {
        let root = self.mountpoint()?.join(".zfs/snapshot").join(&s.name);
        let mut identity = BTreeMap::new();
        identity.insert("guid".to_string(), s.guid.clone());
        identity.insert("createtxg".to_string(), s.createtxg.to_string());
        Ok(SnapshotRef { name: s.name.clone(), identity, root })
    }

    /// The paths `zfs diff -FHt` names between two snapshots, under the
    /// time limit: it can take hours in huge busy directories (openzfs #10391).
    fn run_diff(&self, from: &str, to: &str, mountpoint: &[u8]) -> Result<PathSorter> {
        let mut cmd = Command::new("zfs");
        cmd.args(["diff", "-FHt"]).arg(format!("{}@{from}", self.dataset)).arg(format!("{}@{to}", self.dataset));
        diff_paths(cmd, self.diff_timeout, mountpoint)
    }
}

/// Run a `zfs diff` command and gather the paths it names, parsing its
/// output line by line as it arrives (a thread reads it, so the time limit
/// holds even while no line comes). Past `timeout` the command is killed
/// and this fails; so does a line that does not parse, at once. Its stderr
/// is read alongside, so it cannot block on a full pipe.
fn diff_paths(mut cmd: Command, timeout: Duration, mountpoint: &[u8]) -> Result<PathSorter> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `zfs diff` (install zfsutils-linux)")?;
    let stderr = StderrTail::spawn(child.stderr.take());
    let stdout = child.stdout.take().context("`zfs diff` has no stdout")?;
    let mp = mountpoint.to_vec();
    let sorter = PathSorter::new();
    let mut reader = Some(std::thread::spawn(move || diff::candidate_paths(stdout, &mp, sorter)));
    let mut parsed: Option<Result<PathSorter>> = None;
    let start = Instant::now();
    let join = |h: std::thread::JoinHandle<Result<PathSorter>>| {
        h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the zfs diff reader thread panicked")))
    };
    loop {
        if reader.as_ref().is_some_and(|h| h.is_finished()) {
            let r = reader.take().map(join).expect("checked just above");
            if let Err(e) = r {
                // Bad output: stop the diff now rather than at its end.
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.text();
                return Err(if err.is_empty() { e } else { e.context(format!("zfs said: {err}")) });
            }
            parsed = Some(r);
        }
        if let Some(status) = child.try_wait().context("cannot wait for `zfs diff`")? {
            // Its stdout is closed now, so the reader ends soon.
            let r = parsed.take().or_else(|| reader.take().map(join)).unwrap_or_else(|| {
                Err(anyhow::anyhow!("the zfs diff reader's result was lost (a bug: please report it)"))
            });
            if !status.success() {
                bail!("zfs diff failed: {}", stderr.text());
            }
            return r;
        }
        if start.elapsed() > timeout {
            // The reader ends when the pipe closes: not waited for, in case
            // something else still holds it open.
            let _ = child.kill();
            let _ = child.wait();
            bail!("zfs diff took longer than {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl ChangeSource for ZfsSource {
    fn kind(&self) -> &'static str {
        "zfs"
    }

    fn new_snapshots(&mut self, last: Option<(&str, &BTreeMap<String, String>)>) -> Result<Vec<SnapshotRef>> {
        let all = self.list()?;
        self.base = None;
        self.base_problem = None;
        let mut after_txg = 0;
        if let Some((label, id)) = last {
            let guid = id.get("guid").cloned().unwrap_or_default();
            after_txg = id.get("createtxg").and_then(|t| t.parse().ok()).unwrap_or(0);
            // The catalog label may carry a "~N" suffix (a reused name).
            let name = label.rsplit_once('~').map_or(label, |(n, _)| n);
            let by_guid = all.iter().find(|s| s.guid == guid);
            match (by_guid, all.iter().find(|s| s.name == name)) {
                (Some(s), _) => self.base = Some(s.clone()),
                (None, Some(s)) => {
                    // Same name, another snapshot: a rollback (or destroy and
                    // re-create). Never diff against the wrong base.
                    let why = format!(
                        "snapshot {name} now has guid {}, but guid {guid} was backed up (rolled back or re-created?)",
                        s.guid
                    );
                    log::error!("{}: {why}", self.dataset);
                    self.problems.push(format!("{}: {why}", self.dataset));
                    self.base_problem = Some(why);
                }
                (None, None) => self.base_problem = Some(format!("the previous snapshot {name} is gone")),
            }
        }
        let newer: Vec<ZfsSnapshot> = all.into_iter().filter(|s| s.createtxg > after_txg).collect();
        newer.iter().map(|s| self.snapshot_ref(s)).collect()
    }

    fn find_snapshot(&mut self, _name: &str, identity: &BTreeMap<String, String>) -> Result<Option<SnapshotRef>> {
        let want = identity.get("guid");
        match self.list()?.into_iter().find(|s| Some(&s.guid) == want) {
            Some(s) => self.snapshot_ref(&s).map(Some),
            None => Ok(None),
        }
    }

    fn changes(
        &mut self,
        prior: &dyn PriorState,
        snap: &SnapshotRef,
        emit: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<ChangeReport> {
        let this = ZfsSnapshot {
            name: snap.name.clone(),
            guid: snap.identity.get("guid").cloned().unwrap_or_default(),
            createtxg: snap.identity.get("createtxg").and_then(|t| t.parse().ok()).unwrap_or(0),
        };
        let mountpoint = self.mountpoint()?;
        let fallback = match (self.base.clone(), self.base_problem.clone()) {
            (Some(base), _) => {
                let diffed = self.run_diff(&base.name, &snap.name, mountpoint.as_os_str().as_encoded_bytes());
                match diffed {
                    Ok(cands) => {
                        let root = Dir::open(&snap.root)
                            .with_context(|| format!("cannot open snapshot {}", snap.root.display()))?;
                        let (unreadable, unreadable_more) =
                            super::named::changes_for_paths(prior, &root, cands, None, emit)?;
                        self.base = Some(this);
                        return Ok(ChangeReport { method: "zfs diff".into(), unreadable, unreadable_more });
                    }
                    Err(e) => {
                        log::warn!("{}@{}: {e:#}; walking the snapshot instead", self.dataset, snap.name);
                        Some(format!("{e:#}"))
                    }
                }
            }
            (None, Some(why)) => Some(why),
            (None, None) => None,
        };
        let report = walk_snapshot(prior, snap, None, fallback, emit)?;
        self.base = Some(this);
        self.base_problem = None;
        Ok(report)
    }

    fn reader(&self, snap: &SnapshotRef) -> Result<Box<dyn SnapshotReader>> {
        snapshot_reader(snap)
    }

    fn hold(&mut self, snap: &SnapshotRef) -> Result<()> {
        if !self.holds {
            return Ok(());
        }
        // The snapshot being backed up is held from before its changes are
        // listed until it is no longer the base: a pruner that runs during
        // a long upload (or a long outage) cannot destroy it under us.
        let full = format!("{}@{}", self.dataset, snap.name);
        let holds = zfs(&["holds", "-H", &full])?;
        if !holds.lines().any(|l| l.split('\t').nth(1) == Some(HOLD_TAG)) {
            zfs(&["hold", HOLD_TAG, &full])?;
        }
        Ok(())
    }

    fn committed(&mut self, snap: &SnapshotRef) -> Result<()> {
        if !self.holds {
            return Ok(());
        }
        // Hold the new base first (normally already held since its listing),
        // then release older ones: there is never a moment without a held base.
        self.hold(snap)?;
        for s in self.list()? {
            if s.name == snap.name {
                continue;
            }
            let other = format!("{}@{}", self.dataset, s.name);
            let h = zfs(&["holds", "-H", &other])?;
            if h.lines().any(|l| l.split('\t').nth(1) == Some(HOLD_TAG)) {
                zfs(&["release", HOLD_TAG, &other])?;
            }
        }
        Ok(())
    }

    fn problems(&self) -> Vec<String> {
        self.problems.clone()
    }
}

/// Snapshots of `dataset` that carry the agent's hold (for `status`).
pub fn held_snapshots(dataset: &str) -> Result<Vec<String>> {
    let text =
        zfs(&["list", "-Hp", "-d", "1", "-t", "snapshot", "-o", "name,guid,createtxg", "-s", "createtxg", dataset])?;
    let mut out = Vec::new();
    for s in parse_snapshot_list(dataset, &text)? {
        let full = format!("{dataset}@{}", s.name);
        if zfs(&["holds", "-H", &full])?.lines().any(|l| l.split('\t').nth(1) == Some(HOLD_TAG)) {
            out.push(full);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_path(name: &str) -> String {
        format!("{}/tests/fixtures/zfs/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    use crate::source::testutil::{sh, sorted};

    #[test]
    fn a_diff_is_parsed_as_it_arrives_while_stderr_is_drained() {
        let fx = fixture_path("zfs-diff-1.txt");
        let want =
            sorted(diff::candidate_paths(&std::fs::read(&fx).unwrap()[..], b"/tp/fs", PathSorter::new()).unwrap());
        // 300 KB on stderr: more than a pipe holds, so it must be read while
        // the command runs, or the command never ends.
        let cmd = sh(&format!("cat '{fx}'; head -c 300000 /dev/zero | tr '\\0' e >&2"));
        let start = Instant::now();
        let got = diff_paths(cmd, Duration::from_secs(20), b"/tp/fs").unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
        assert_eq!(sorted(got), want);
    }

    #[test]
    fn a_diff_over_the_time_limit_is_killed() {
        let fx = fixture_path("zfs-diff-1.txt");
        let start = Instant::now();
        let e = diff_paths(sh(&format!("cat '{fx}'; exec sleep 60")), Duration::from_secs(1), b"/tp/fs").unwrap_err();
        assert!(format!("{e:#}").contains("longer than 1s"), "{e:#}");
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    }

    #[test]
    fn bad_output_stops_the_diff_at_once_and_failures_say_why() {
        let start = Instant::now();
        let e = diff_paths(sh("echo garbage; exec sleep 60"), Duration::from_secs(120), b"/tp/fs").unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
        let e = diff_paths(sh("echo 'cannot diff: no such snapshot' >&2; exit 1"), Duration::from_secs(20), b"/tp/fs")
            .unwrap_err();
        assert_eq!(format!("{e:#}"), "zfs diff failed: cannot diff: no such snapshot");
    }

    #[test]
    fn snapshot_lists_parse_and_sort_by_txg() {
        let text = "tp/fs@b\t222\t20\ntp/fs@a\t111\t10\ntp/fs/child@c\t333\t30\n";
        let l = parse_snapshot_list("tp/fs", text).unwrap();
        assert_eq!(l.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(l[1], ZfsSnapshot { name: "b".into(), guid: "222".into(), createtxg: 20 });
        assert!(parse_snapshot_list("tp/fs", "tp/fs@a\t1\n").is_err());
        // Recorded on real ZFS in the vm-tests guest (extra columns ignored).
        let rec = std::fs::read_to_string(format!("{}/tests/fixtures/zfs/zfs-list-1.txt", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
        let l = parse_snapshot_list("tp/fs", &rec).unwrap();
        assert_eq!(
            l.iter().map(|s| (s.name.as_str(), s.createtxg)).collect::<Vec<_>>(),
            vec![("a", 10), ("b", 12), ("c", 13)]
        );
        assert_eq!(l[0].guid, "12501678330079141723");
        assert!(parse_snapshot_list("tp/fs", "tp/fs@a\t1\tx\n").is_err());
        assert!(parse_snapshot_list("tp/fs", "tp/fs\t1\t2\n").is_err());
    }
}
