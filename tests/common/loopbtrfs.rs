//! A real btrfs on a loop device for the tests that need one (tests/btrfs.rs,
//! tests/snapshot_tools.rs), unmounted (and so detached: `mount -o loop`
//! sets autoclear) when dropped, even after a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopBtrfs {
    _dir: tempfile::TempDir,
    pub mnt: PathBuf,
}

fn run_ok(c: &mut Command) {
    let out = c.output().expect("run");
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl LoopBtrfs {
    /// A 1 GiB btrfs, or None (a loud skip; a failure under CI) when this
    /// machine cannot make one or lacks one of `tools`.
    pub fn make(tools: &[&str]) -> Option<LoopBtrfs> {
        let missing = |why: &str| {
            assert!(std::env::var("CI").is_err(), "CI must provide btrfs on loop devices and {tools:?}: {why}");
            eprintln!("!!!!!!!! SKIPPED LOUDLY: btrfs test: {why} !!!!!!!!");
            None
        };
        if !super::is_root() {
            return missing("not root");
        }
        for t in tools.iter().chain(&["/usr/bin/btrfs", "/usr/sbin/mkfs.btrfs"]) {
            if !Path::new(t).exists() && !Path::new(&t.replace("/usr/sbin/", "/sbin/")).exists() {
                return missing(&format!("{t} is not installed: run scripts/setup"));
            }
        }
        let dir = tempfile::Builder::new().prefix("n2s-btrfs-").tempdir_in(super::scratch_root()).unwrap();
        let img = dir.path().join("img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(1 << 30).unwrap();
        run_ok(Command::new("mkfs.btrfs").arg("-q").arg(&img));
        let mounted = Command::new("mount").arg("-o").arg("loop").arg(&img).arg(&mnt).output().unwrap();
        if !mounted.status.success() {
            return missing(&format!("cannot mount a loop device: {}", String::from_utf8_lossy(&mounted.stderr)));
        }
        Some(LoopBtrfs { _dir: dir, mnt })
    }

    /// One made with a subvolume `vol` and a snapshot directory `snaps`.
    pub fn with_vol() -> Option<LoopBtrfs> {
        let fs = Self::make(&[])?;
        fs.subvolume("vol");
        std::fs::create_dir(fs.snaps()).unwrap();
        Some(fs)
    }

    pub fn subvolume(&self, name: &str) -> PathBuf {
        let p = self.mnt.join(name);
        run_ok(Command::new("btrfs").args(["subvolume", "create"]).arg(&p));
        p
    }

    pub fn vol(&self) -> PathBuf {
        self.mnt.join("vol")
    }

    pub fn snaps(&self) -> PathBuf {
        self.mnt.join("snaps")
    }

    /// A read-only snapshot of `vol` in `snaps`.
    pub fn snapshot(&self, name: &str) -> PathBuf {
        let to = self.snaps().join(name);
        run_ok(Command::new("btrfs").args(["subvolume", "snapshot", "-r"]).arg(self.vol()).arg(&to));
        to
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let quiet =
            |c: &mut Command| c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status();
        if !quiet(Command::new("umount").arg(&self.mnt)).is_ok_and(|s| s.success()) {
            let _ = quiet(Command::new("umount").arg("-l").arg(&self.mnt));
        }
    }
}
