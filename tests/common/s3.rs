//! Real S3 servers for the tests, started on 127.0.0.1 by the tests
//! themselves: moto's server (`moto[server]`) and SeaweedFS (`weed server
//! -s3`), both installed by scripts/setup into /opt/n2s-test-venv. One server
//! of each kind per test binary, started on first use; each test gets a
//! bucket of its own. The servers die with the test binary (PDEATHSIG of a
//! thread that lives as long as the process).

use super::{free_port, spawn_kept};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Moto,
    SeaweedFs,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Moto => "moto",
            Kind::SeaweedFs => "seaweedfs",
        }
    }
}

pub struct Server {
    pub kind: Kind,
    pub endpoint: String,
    port: u16,
    bucket: OnceLock<String>,
}

pub fn venv_bin(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("N2S_TEST_VENV").unwrap_or_else(|_| "/opt/n2s-test-venv".into())).join("bin").join(name)
}

/// A few free ports whose gRPC companions (port + 10000, SeaweedFS) fit too.
fn free_low_port() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair below 55000");
}

/// One HTTP request without a body or signature (both servers take anonymous
/// requests); the status code.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let line = String::from_utf8_lossy(&buf);
    let code = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok(code)
}

fn start(kind: Kind) -> Option<Server> {
    let bin = match kind {
        Kind::Moto => venv_bin("moto_server"),
        Kind::SeaweedFs => venv_bin("weed"),
    };
    if !bin.exists() {
        assert!(std::env::var("CI").is_err(), "CI must provide {} (scripts/setup installs it)", bin.display());
        eprintln!("!!!!!!!! SKIPPED LOUDLY: {} is not installed: run scripts/setup !!!!!!!!", bin.display());
        return None;
    }
    let log = std::env::temp_dir().join(format!("n2s-test-{}-{}.log", kind.name(), std::process::id()));
    let out = std::fs::File::create(&log).expect("server log");
    let port;
    let mut cmd = Command::new(&bin);
    match kind {
        Kind::Moto => {
            port = free_port();
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        }
        Kind::SeaweedFs => {
            port = free_low_port();
            let dir = super::server_dir("weed");
            let (m, v, f) = (free_low_port(), free_low_port(), free_low_port());
            cmd.arg("server")
                .arg("-ip=127.0.0.1")
                .arg("-ip.bind=127.0.0.1")
                .arg("-master.telemetry=false")
                .arg(format!("-dir={}", dir.display()))
                .arg("-master.volumeSizeLimitMB=64")
                // As many volumes as the disk allows: each bucket is a
                // collection of its own, and the default cap runs out.
                .arg("-volume.max=0")
                .arg(format!("-master.port={m}"))
                .arg(format!("-volume.port={v}"))
                .arg("-filer")
                .arg(format!("-filer.port={f}"))
                .arg("-s3")
                .arg(format!("-s3.port={port}"))
                // SeaweedFS 4.x also serves Iceberg and Lance catalogs on
                // fixed ports (8181, 9101): a second server on the machine
                // (another test binary, a benchmark) would die on them.
                .arg("-s3.port.iceberg=0")
                .arg("-s3.port.lance=0");
        }
    }
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    spawn_kept(cmd);
    let t0 = Instant::now();
    loop {
        if let Ok(code) = http(port, "GET", "/")
            && code > 0
            && code < 500
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            panic!("{} did not answer on 127.0.0.1:{port} within 90 s (log: {})", kind.name(), log.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(Server { kind, endpoint: format!("http://127.0.0.1:{port}"), port, bucket: OnceLock::new() })
}

/// The server of this kind for this test binary (started on first use), or
/// None (said loudly) when it is not installed outside CI.
pub fn server(kind: Kind) -> Option<&'static Server> {
    static MOTO: OnceLock<Option<Server>> = OnceLock::new();
    static WEED: OnceLock<Option<Server>> = OnceLock::new();
    let cell = match kind {
        Kind::Moto => &MOTO,
        Kind::SeaweedFs => &WEED,
    };
    cell.get_or_init(|| start(kind)).as_ref()
}

impl Server {
    /// A repository location of its own under this server's one test
    /// bucket (SeaweedFS gives each bucket volumes of its own: one bucket
    /// for a whole test binary keeps it quick).
    pub fn new_location(&self) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let bucket = self.bucket.get_or_init(|| self.make_bucket(&format!("n2s-test-{}", std::process::id())));
        format!("s3://{bucket}/t{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
    }

    fn make_bucket(&self, name: &str) -> String {
        let t0 = Instant::now();
        loop {
            // SeaweedFS may refuse for a moment after it starts.
            match http(self.port, "PUT", &format!("/{name}")) {
                Ok(200) => return name.to_string(),
                other if t0.elapsed() > Duration::from_secs(30) => {
                    panic!("cannot create bucket {name} on {}: {other:?}", self.kind.name())
                }
                _ => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// The environment an agent needs to use this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "n2s-test"),
            ("AWS_SECRET_ACCESS_KEY", "n2s-test-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("N2S_S3_ENDPOINT", self.endpoint.as_str()),
            ("N2S_S3_PATH_STYLE", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}
