//! rclone for the tests: the agent starts its own `rclone rcd`; the tests
//! give it an rclone.conf with a local remote and an sftp remote (on the
//! test sshd). Not written yet.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `type = local` remote.
    Local,
    /// A `type = sftp` remote on the test sshd (tests/common/sftp.rs).
    Sftp,
}

pub struct Server {}

impl Server {
    pub fn new_location(&self) -> String {
        unimplemented!()
    }
    pub fn env(&self) -> Vec<(String, String)> {
        unimplemented!()
    }
}

pub fn server(_kind: Kind) -> Option<&'static Server> {
    eprintln!("!!!!!!!! SKIPPED LOUDLY: the rclone test setup is not written yet !!!!!!!!");
    None
}
