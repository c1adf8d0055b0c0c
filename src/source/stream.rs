//! Streams as a dataset: `backup --stdin` (a `pg_dump` piped in), named
//! pipes or files (`--stdin-name NAME=PATH`) and producer commands
//! (`--from-command NAME=CMD`) become the files of one changeset.
//!
//! Each stream is first spooled whole into a private directory of the
//! state directory, and only then backed up (as a walk of that directory),
//! so that a producer that fails (a non-zero exit) leaves no changeset at
//! all, and the content goes through the same chunking as every file:
//! consecutive dumps deduplicate. The cost is disk space for one run's
//! streams in the state directory. Tags (`--tag key=value`) are part of
//! the snapshot's identity, which the manifest carries, as `tag:KEY`.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::walk::WalkSource;
use super::*;

/// Where one stream's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamFrom {
    Stdin,
    /// A named pipe or a file, read to its end.
    Path(PathBuf),
    /// `sh -c CMD`, its stdout; it must exit 0.
    Command(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInput {
    /// The file name the stream gets in the snapshot.
    pub name: String,
    pub from: StreamFrom,
}

/// The identity key a tag is stored under.
pub const TAG_PREFIX: &str = "tag:";

/// A stream's name: one plain file name, since it is a path in the snapshot.
pub fn check_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("stream name {name:?} must be a plain file name (no '/'), such as dump.sql");
    }
    Ok(())
}

/// `key=value`, with a key of letters, digits, `_`, `-` and `.`.
pub fn parse_tag(s: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').with_context(|| format!("tag {s:?} is not key=value"))?;
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        bail!("tag {s:?}: the key must be letters, digits, '_', '-' or '.'");
    }
    if v.contains('\0') || v.contains('\n') {
        bail!("tag {s:?}: the value must be one line");
    }
    Ok((k.to_string(), v.to_string()))
}

/// The spooled streams of one run, removed when dropped.
pub struct Spool {
    dir: PathBuf,
    pub bytes: u64,
}

impl Spool {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Read every input to its end into a new private directory below
/// `parent`; a failed producer or read ends it with an error naming it.
pub fn spool(inputs: &[StreamInput], parent: &Path) -> Result<Spool> {
    use std::os::unix::fs::DirBuilderExt;
    let mut seen = std::collections::HashSet::new();
    for i in inputs {
        check_stream_name(&i.name)?;
        if !seen.insert(&i.name) {
            bail!("stream name {:?} is given twice: give each stream a name of its own", i.name);
        }
    }
    if inputs.iter().filter(|i| i.from == StreamFrom::Stdin).count() > 1 {
        bail!("only one stream can come from stdin: name the others NAME=PATH (a named pipe) or --from-command");
    }
    let dir = parent.join(format!("stream-spool-{}-{:08x}", std::process::id(), rand_u32()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create the stream spool {}: check the state directory", dir.display()))?;
    let mut spool = Spool { dir, bytes: 0 };
    for input in inputs {
        let target = spool.dir.join(&input.name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        let copied = match &input.from {
            StreamFrom::Stdin => std::io::copy(&mut std::io::stdin().lock(), &mut file)
                .with_context(|| format!("stream {}: cannot read stdin", input.name))?,
            StreamFrom::Path(p) => {
                let mut src = std::fs::File::open(p)
                    .with_context(|| format!("stream {}: cannot open {}", input.name, p.display()))?;
                std::io::copy(&mut src, &mut file)
                    .with_context(|| format!("stream {}: cannot read {}", input.name, p.display()))?
            }
            StreamFrom::Command(cmd) => run_producer(&input.name, cmd, &mut file)?,
        };
        file.sync_all()
            .with_context(|| format!("cannot write {}: is the state directory's disk full?", target.display()))?;
        spool.bytes += copied;
        log::info!("stream {}: {copied} bytes read", input.name);
    }
    Ok(spool)
}

/// Run `sh -c cmd` with its stdout into `out`; anything but exit 0 fails.
fn run_producer(name: &str, cmd: &str, out: &mut std::fs::File) -> Result<u64> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("stream {name}: cannot start its command"))?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let copied = {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let got = match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e).with_context(|| format!("stream {name}: cannot read its command's output"));
                }
            };
            std::io::Write::write_all(out, &buf[..got]).with_context(|| format!("stream {name}: cannot spool"))?;
            n += got as u64;
        }
        n
    };
    let status = child.wait().with_context(|| format!("stream {name}: cannot wait for its command"))?;
    if !status.success() {
        bail!(
            "stream {name}: its command failed ({status}): nothing was backed up; fix the command and run backup again"
        );
    }
    Ok(copied)
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

/// The spooled streams as a source: a walk of the spool whose snapshot
/// identity also carries the run's tags.
pub struct StreamSource {
    walk: WalkSource,
    tags: BTreeMap<String, String>,
}

impl StreamSource {
    pub fn new(spool: &Path, label: String, tags: BTreeMap<String, String>) -> StreamSource {
        StreamSource { walk: WalkSource::new(spool, label), tags }
    }

    fn tagged(&self, mut s: SnapshotRef) -> SnapshotRef {
        for (k, v) in &self.tags {
            s.identity.insert(format!("{TAG_PREFIX}{k}"), v.clone());
        }
        s
    }
}

impl ChangeSource for StreamSource {
    fn kind(&self) -> &'static str {
        "stdin"
    }

    fn new_snapshots(&mut self, last: Option<(&str, &BTreeMap<String, String>)>) -> Result<Vec<SnapshotRef>> {
        Ok(self.walk.new_snapshots(last)?.into_iter().map(|s| self.tagged(s)).collect())
    }

    fn find_snapshot(&mut self, _name: &str, _identity: &BTreeMap<String, String>) -> Result<Option<SnapshotRef>> {
        // The streams of an interrupted run were spooled by that run and
        // are gone: its changeset can never finish.
        Ok(None)
    }

    fn changes(
        &mut self,
        prior: &dyn PriorState,
        snap: &SnapshotRef,
        emit: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<ChangeReport> {
        let mut report = self.walk.changes(prior, snap, emit)?;
        report.method = "stdin".into();
        Ok(report)
    }

    fn reader(&self, snap: &SnapshotRef) -> Result<Box<dyn SnapshotReader>> {
        self.walk.reader(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_tags_are_checked() {
        assert!(check_stream_name("dump.sql").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(check_stream_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_tag("db=prod").unwrap(), ("db".to_string(), "prod".to_string()));
        assert_eq!(parse_tag("k=a=b").unwrap().1, "a=b");
        for bad in ["novalue", "=x", "sp ace=x", "k=a\nb"] {
            assert!(parse_tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_failed_producer_fails_the_spool_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let ok = StreamInput { name: "a".into(), from: StreamFrom::Command("printf hello".into()) };
        let s = spool(std::slice::from_ref(&ok), d.path()).unwrap();
        assert_eq!(std::fs::read(s.dir().join("a")).unwrap(), b"hello");
        assert_eq!(s.bytes, 5);
        drop(s);
        let bad = StreamInput { name: "b".into(), from: StreamFrom::Command("echo partial; exit 3".into()) };
        let err = spool(&[ok, bad], d.path()).err().unwrap();
        assert!(format!("{err:#}").contains("stream b: its command failed"), "{err:#}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "the spool is removed");
    }

    proptest! {
        // Tags and names come from the command line.
        #[test]
        fn tag_parsing_never_panics_and_round_trips(s in "\\PC{0,30}") {
            if let Ok((k, v)) = parse_tag(&s) {
                prop_assert_eq!(format!("{k}={v}"), s);
            }
        }
    }
}
