//! An IPFS node for the tests: js-ipfs 0.66.1 (npm `ipfs`, installed by
//! scripts/setup into /opt/n2s-ipfs; N2S_TEST_IPFS names another prefix),
//! which serves kubo's `/api/v0` RPC. It runs offline on 127.0.0.1 with a
//! repository in a temporary directory: no bootstrap peers, no swarm
//! addresses, no MDNS, no preload, so it never dials out. One node per test
//! binary, started on first use; it dies with the binary (PDEATHSIG of a
//! thread that lives as long as the process). Each test gets an MFS
//! directory of its own.

use super::{free_port, spawn_kept};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Server {
    pub port: u16,
    /// The node's HTTP gateway (`/ipfs/<cid>`), on 127.0.0.1 too.
    pub gateway_port: u16,
    /// The node's directory (its repository, config and log).
    pub dir: PathBuf,
}

/// js-ipfs 0.66 calls Promise.withResolvers, which Node 20 lacks.
const POLYFILL: &str = "if (!Promise.withResolvers) { Promise.withResolvers = function () { let resolve, reject; const promise = new Promise((a, b) => { resolve = a; reject = b; }); return { promise, resolve, reject }; }; }\n";

pub fn jsipfs() -> PathBuf {
    PathBuf::from(std::env::var("N2S_TEST_IPFS").unwrap_or_else(|_| "/opt/n2s-ipfs".into()))
        .join("node_modules/.bin/jsipfs")
}

/// One RPC call without a body; the status code and the body.
pub fn rpc(port: u16, cmd: &str, query: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST /api/v0/{cmd}?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// The command that starts a node with its API on 127.0.0.1:`port` and its
/// repository in `dir` (initialised on first start).
pub fn node_command(dir: &Path, port: u16, gateway_port: u16) -> Command {
    let polyfill = dir.join("polyfill.js");
    std::fs::write(&polyfill, POLYFILL).expect("polyfill");
    let config = format!(
        r#"{{"Addresses":{{"API":"/ip4/127.0.0.1/tcp/{port}","Gateway":"/ip4/127.0.0.1/tcp/{gateway_port}","RPC":"","Swarm":[],"Announce":[],"Delegates":[]}},"Bootstrap":[],"Discovery":{{"MDNS":{{"Enabled":false}},"webRTCStar":{{"Enabled":false}}}}}}"#
    );
    std::fs::write(dir.join("config.json"), config).expect("node config");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("node.log")).expect("node log");
    let mut cmd = Command::new(jsipfs());
    cmd.env("IPFS_PATH", dir.join("repo"))
        .env("NODE_OPTIONS", format!("--require={}", polyfill.display()))
        .args(["daemon", "--offline", "--enable-preload=false", "--init-profile", "test", "--init-config"])
        .arg(dir.join("config.json"))
        .stdout(log.try_clone().expect("node log"))
        .stderr(log);
    cmd
}

/// Wait until the node at `port` answers `version`.
pub fn wait_ready(port: u16, dir: &Path) {
    let t0 = Instant::now();
    loop {
        if let Ok((200, _)) = rpc(port, "version", "") {
            return;
        }
        // Three builders share two cores here: a cold node can take a while.
        if t0.elapsed() > Duration::from_secs(120) {
            panic!("js-ipfs did not answer on 127.0.0.1:{port} within 120 s (log: {})", dir.join("node.log").display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start() -> Option<Server> {
    let bin = jsipfs();
    if !bin.exists() {
        assert!(std::env::var("CI").is_err(), "CI must provide {} (scripts/setup installs it)", bin.display());
        eprintln!("!!!!!!!! SKIPPED LOUDLY: {} is not installed: run scripts/setup !!!!!!!!", bin.display());
        return None;
    }
    let dir = super::server_dir("ipfs");
    let (port, gateway_port) = (free_port(), free_port());
    spawn_kept(node_command(&dir, port, gateway_port));
    wait_ready(port, &dir);
    Some(Server { port, gateway_port, dir })
}

/// This test binary's node (started on first use), or None (said loudly)
/// when js-ipfs is not installed outside CI.
pub fn server() -> Option<&'static Server> {
    static NODE: OnceLock<Option<Server>> = OnceLock::new();
    NODE.get_or_init(start).as_ref()
}

impl Server {
    /// A repository of its own: a fresh MFS directory on the node.
    pub fn new_location(&self) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        format!("ipfs://127.0.0.1:{}/n2s-test-{}/t{n}", self.port, std::process::id())
    }

    /// No node-wide GC from the agents: every test of this binary shares
    /// the node, and js-ipfs deadlocks when `repo/gc` runs while another
    /// test writes to MFS. tests/ipfs.rs runs the GC on its own.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("N2S_IPFS_GC".to_string(), "off".to_string())]
    }
}
