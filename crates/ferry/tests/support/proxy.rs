//! The benchmark's latency proxy (`bench/latency_proxy.py`, a delay line
//! that counts the HTTP requests and bytes that cross it) in front of a
//! test server.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::Server;

/// The benchmark's latency proxy in front of `target`.
pub struct Proxy {
    child: Child,
    pub port: u16,
    stats: PathBuf,
}

impl Proxy {
    /// Starts the proxy adding `rtt_ms` per round trip, on `port` (0: any).
    pub fn start(target: &Server, rtt_ms: u32, port: u16, stats: &Path) -> Proxy {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/latency_proxy.py");
        let target = target.url.trim_start_matches("http://").to_string();
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--target", &target, "--rtt-ms", &rtt_ms.to_string()])
            .args(["--listen", &port.to_string(), "--stats"])
            .arg(stats)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = child.stdout.take().unwrap();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("proxy said {line:?}"));
        Proxy {
            child,
            port,
            stats: stats.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's counters as of now.
    pub fn stats(&self) -> serde_json::Value {
        Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        serde_json::from_slice(&std::fs::read(&self.stats).unwrap()).unwrap()
    }

    /// Cuts every open connection with a reset (SIGUSR2): the bytes in
    /// flight through the proxy and in its sockets' buffers are lost, as
    /// when the host behind it dies mid-transfer. New connections are
    /// still accepted and forwarded.
    pub fn cut(&self) {
        Command::new("kill")
            .args(["-USR2", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A file of `size` random bytes at `dir/name`.
pub fn random_file(dir: &Path, name: &str, size: usize) -> PathBuf {
    let path = dir.join(name);
    let mut data = vec![0u8; size];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    std::fs::write(&path, &data).unwrap();
    path
}
