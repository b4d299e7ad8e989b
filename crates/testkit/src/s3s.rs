//! A real S3-compatible server for tests: `s3s-fs` (the S3 API over a
//! folder, from the s3s project), installed by `scripts/test` into
//! `.tools/s3s-fs` and found through `FERRY_TEST_S3S`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key every test server accepts.
pub const ACCESS_KEY: &str = "ferry-test-access";
/// Its secret.
pub const SECRET_KEY: &str = "ferry-test-secret";

/// One `s3s-fs` process on a free loopback port, serving a temporary root
/// folder (one subfolder per bucket). Stopped by its PID when dropped.
pub struct S3Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

/// The `s3s-fs` binary named by `FERRY_TEST_S3S`. Panics, saying to run
/// `scripts/test`, when it is not there: a test needing it must fail, not
/// pass silently.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("FERRY_TEST_S3S").map(PathBuf::from);
    match path {
        Some(p) if p.is_file() => p,
        _ => panic!(
            "s3s-fs not found: FERRY_TEST_S3S must name the s3s-fs binary; run scripts/test, \
             which installs it into .tools/s3s-fs and exports FERRY_TEST_S3S"
        ),
    }
}

/// Base64, URL-safe alphabet, no padding.
fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    /// Starts a server with an empty root and the bucket `bucket`.
    pub fn start(bucket: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s3");
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let port = free_port();
        let mut s = S3Server {
            child: None,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            root,
            _dir: dir,
        };
        s.spawn();
        s
    }

    /// The folder the server keeps its buckets in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the (empty) bucket `bucket`; an existing one stays.
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.join(bucket)).unwrap();
    }

    /// The file that holds object `key` of `bucket`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// Replaces object `key`'s bytes behind the server's back, as a disk
    /// going bad would — and as S3 would answer after an overwrite, with a
    /// new ETag (the MD5 of the new bytes): s3s-fs keeps an object's ETag
    /// in a side file, which is removed, so the server computes it again.
    pub fn damage_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        std::fs::write(self.object_path(bucket, key), bytes).unwrap();
        let _ = std::fs::remove_file(self.internal_info_path(bucket, key));
    }

    /// Removes object `key` behind the server's back (its file and side
    /// file), as a lost object.
    pub fn remove_object(&self, bucket: &str, key: &str) {
        std::fs::remove_file(self.object_path(bucket, key)).unwrap();
        let _ = std::fs::remove_file(self.internal_info_path(bucket, key));
    }

    /// s3s-fs's side file of an object (ETag and checksums):
    /// `ROOT/.bucket-B64(bucket).object-B64(key).internal.json`, base64
    /// URL-safe without padding.
    fn internal_info_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            base64url(bucket.as_bytes()),
            base64url(key.as_bytes())
        ))
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let child = loop {
            let mut child = Command::new(binary())
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&self.root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start s3s-fs");
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false; // exited (the port may still be held)
                }
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    break true;
                }
                if Instant::now() > deadline {
                    panic!("s3s-fs did not listen on port {}", self.port);
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                break child;
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        self.child = Some(child);
    }

    /// Kills the server (its PID); the root folder stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and root.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64url_matches_the_standard() {
        assert_eq!(super::base64url(b""), "");
        assert_eq!(super::base64url(b"f"), "Zg");
        assert_eq!(super::base64url(b"fo"), "Zm8");
        assert_eq!(super::base64url(b"foo"), "Zm9v");
        assert_eq!(super::base64url(b"foob"), "Zm9vYg");
        assert_eq!(super::base64url(&[0xfb, 0xff]), "-_8");
    }
}
