//! End to end: `ferry serve` over HTTPS (rustls), a spoke that trusts the
//! hub's private CA through `FERRY_TLS_CA_FILE` replicating from it, one
//! that does not failing on the certificate, and the certificate reloaded
//! on SIGHUP without dropping the listener. Certificates come from the
//! openssl command-line tool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA (`ca.pem`, `ca.key`) in `dir`.
fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Ferry test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A server certificate for 127.0.0.1 and localhost signed by the CA in
/// `dir`, with serial `serial` (hex): `NAME.pem` and `NAME.key`.
fn make_cert(dir: &Path, name: &str, serial: &str) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &format!("0x{serial}"),
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            &pem,
        ],
    );
}

/// Puts certificate `name` in place as the served `server.pem`/`server.key`
/// (each by an atomic rename).
fn install_cert(dir: &Path, name: &str) {
    for ext in ["pem", "key"] {
        let tmp = dir.join(format!("server.{ext}.new"));
        std::fs::copy(dir.join(format!("{name}.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(format!("server.{ext}"))).unwrap();
    }
}

/// The serial number (hex, upper case) of the certificate `addr` presents
/// to a new connection.
fn served_serial(addr: &str) -> String {
    let hello = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin.take().unwrap().write_all(&hello.stdout).unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_uppercase()
}

/// `ferry ARGS` against `url` with the admin key and `ca` trusted.
fn cli_with_ca(url: &str, ca: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("FERRY_URL", url)
        .env("FERRY_API_KEY", ADMIN)
        .env("FERRY_TLS_CA_FILE", ca)
        .output()
        .unwrap()
}

fn cli_with_ca_ok(url: &str, ca: &Path, args: &[&str]) -> String {
    let out = cli_with_ca(url, ca, args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates the incoming push replication `edges` of feed `files` on the
/// HTTPS instance at `url` (trusted through `ca`); returns a sync token.
fn incoming_edges(url: &str, ca: &Path) -> String {
    cli_with_ca_ok(
        url,
        ca,
        &[
            "replication",
            "create",
            "edges",
            "--incoming",
            "--mode",
            "push",
            "--feed",
            "files",
        ],
    );
    cli_with_ca_ok(url, ca, &["replication", "token", "edges"])
        .trim()
        .to_string()
}

/// An instance whose log goes to a file, to read what it says.
struct Logged {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Logged {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ferry.log");
        let mut child = Command::new(bin())
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .env("FERRY_ADMIN_KEY", ADMIN)
            .env("FERRY_LOG", "warn")
            .env_remove("FERRY_TLS_CA_FILE")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ferry did not report listening");
        Logged {
            child,
            url,
            log,
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .env("FERRY_URL", &self.url)
            .env("FERRY_API_KEY", ADMIN)
            .env_remove("FERRY_TLS_CA_FILE")
            .output()
            .unwrap()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_hub_replicates_to_spokes_that_trust_its_ca_and_reloads_its_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_ca(dir);
    make_cert(dir, "first", "1001");
    make_cert(dir, "second", "2002");
    install_cert(dir, "first");
    let ca = dir.join("ca.pem");
    let ca_s = ca.to_str().unwrap();

    let hub = Server::start_with(&[
        ("FERRY_TLS_CERT", dir.join("server.pem").to_str().unwrap()),
        ("FERRY_TLS_KEY", dir.join("server.key").to_str().unwrap()),
    ]);
    assert!(hub.url.starts_with("https://127.0.0.1:"), "{}", hub.url);
    let addr = hub.url.trim_start_matches("https://").to_string();
    let health = format!("{}/health", hub.url);

    // curl trusts the hub only with the CA.
    assert_eq!(curl(&["--cacert", ca_s, &health]).0, 200);
    let untrusted = Command::new("curl")
        .args(["-s", "-o", "/dev/null", &health])
        .status()
        .unwrap();
    assert!(
        !untrusted.success(),
        "curl without the CA must refuse the certificate"
    );

    // So does the CLI, saying why when it lacks the CA.
    cli_with_ca_ok(&hub.url, &ca, &["feed", "create", "files", "--type", "assets"]);
    let out = hub.cli(&["feed", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate"),
        "ferry without the CA: {err}"
    );

    let auth = format!("Authorization: Bearer {ADMIN}");
    let (st, _) = curl_stdin(
        &[
            "--cacert",
            ca_s,
            "-T",
            "-",
            "-H",
            &auth,
            &format!("{}/assets/files/a.txt", hub.url),
        ],
        b"over tls",
    );
    assert_eq!(st, 201);
    let token = incoming_edges(&hub.url, &ca);

    // A spoke (plain HTTP itself) that trusts the CA replicates over HTTPS.
    let spoke = Server::start_with(&[("FERRY_TLS_CA_FILE", ca_s)]);
    spoke.create_feed("files", "assets");
    spoke.outgoing("from-hub", &["files"], &hub, &token, "pull", &[]);
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(spoke.serves("files", "a.txt", b"over tls"));

    // One that does not trust it fails, its log naming the certificate.
    let stranger = Logged::start();
    assert!(
        stranger
            .cli(&["feed", "create", "files", "--type", "assets"])
            .status
            .success()
    );
    let out = stranger.cli(&[
        "replication",
        "create",
        "from-hub",
        "--feed",
        "files",
        "--outgoing",
        &hub.url,
        "--token",
        &token,
        "--mode",
        "pull",
    ]);
    assert!(
        out.status.success(),
        "an unreachable other end is retried, not refused"
    );
    let out = stranger.cli(&["replication", "run", "from-hub", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "replicating without the CA must fail");
    assert!(err.contains("cannot reach the other instance"), "{err}");
    let log = std::fs::read_to_string(&stranger.log).unwrap();
    assert!(
        log.contains("certificate is not trusted") && log.contains("FERRY_TLS_CA_FILE"),
        "the spoke's log should name the untrusted certificate and the fix: {log}"
    );

    // SIGHUP: new connections get the new certificate, on the same listener.
    assert_eq!(served_serial(&addr), "1001");
    install_cert(dir, "second");
    run_ok(Command::new("kill").args(["-HUP", &hub.pid().to_string()]));
    assert!(
        wait_until(10, || served_serial(&addr) == "2002"),
        "still serving serial {} after SIGHUP",
        served_serial(&addr)
    );
    assert_eq!(curl(&["--cacert", ca_s, &health]).0, 200);
    let (st, _) = curl_stdin(
        &[
            "--cacert",
            ca_s,
            "-T",
            "-",
            "-H",
            &auth,
            &format!("{}/assets/files/b.txt", hub.url),
        ],
        b"after reload",
    );
    assert_eq!(st, 201);
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(spoke.serves("files", "b.txt", b"after reload"));

    // A broken certificate file on reload keeps the last good one in service.
    std::fs::write(dir.join("server.pem"), "not a certificate").unwrap();
    run_ok(Command::new("kill").args(["-HUP", &hub.pid().to_string()]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served_serial(&addr), "2002");
    assert_eq!(curl(&["--cacert", ca_s, &health]).0, 200);

    // So do a FIFO as the key and a device as the certificate: refused at
    // once (a FIFO held the reload, and every later one, for good; a
    // device was read without end), and the next good files still load.
    install_cert(dir, "second");
    std::fs::remove_file(dir.join("server.key")).unwrap();
    run_ok(Command::new("mkfifo").arg(dir.join("server.key")));
    run_ok(Command::new("kill").args(["-HUP", &hub.pid().to_string()]));
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(dir.join("server.pem")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("server.pem")).unwrap();
    run_ok(Command::new("kill").args(["-HUP", &hub.pid().to_string()]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served_serial(&addr), "2002");
    assert_eq!(curl(&["--cacert", ca_s, &health]).0, 200);
    for ext in ["pem", "key"] {
        std::fs::remove_file(dir.join(format!("server.{ext}"))).unwrap();
    }
    install_cert(dir, "first");
    run_ok(Command::new("kill").args(["-HUP", &hub.pid().to_string()]));
    assert!(
        wait_until(10, || served_serial(&addr) == "1001"),
        "a good certificate after a FIFO and a device was not loaded on SIGHUP"
    );
}

/// The wrong scheme, either way: plain HTTP to the TLS port is answered in
/// plain HTTP, naming the https:// URL (it was closed without a word:
/// "empty reply from server"); a replication or blob source named with
/// the wrong scheme is refused when it is named, nothing stored (an
/// https:// URL at a plain-HTTP port was stored as merely unreachable, and
/// failed at every run).
#[test]
fn the_wrong_scheme_is_answered_in_words_and_refused_when_named() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_ca(dir);
    make_cert(dir, "first", "1001");
    install_cert(dir, "first");
    let ca = dir.join("ca.pem");
    let hub = Server::start_with(&[
        ("FERRY_TLS_CERT", dir.join("server.pem").to_str().unwrap()),
        ("FERRY_TLS_KEY", dir.join("server.key").to_str().unwrap()),
    ]);
    let addr = hub.url.trim_start_matches("https://").to_string();
    let plain_url = format!("http://{addr}");

    // curl over plain HTTP: a 400 that says what to ask instead; a body
    // sent with it does not reset the answer away.
    let (st, body) = curl(&[&format!("{plain_url}/health")]);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 400, "{body}");
    assert!(
        body.contains("this port serves HTTPS") && body.contains(&format!("https://{addr}/health")),
        "{body}"
    );
    let big = dir.join("big.bin");
    std::fs::write(&big, [7u8; 300_000]).unwrap();
    let (st, body) = curl(&[
        "-T",
        big.to_str().unwrap(),
        &format!("{plain_url}/assets/files/x.bin"),
    ]);
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    // The TLS port still serves TLS.
    assert_eq!(
        curl(&["--cacert", ca.to_str().unwrap(), &format!("{}/health", hub.url)]).0,
        200
    );

    cli_with_ca_ok(&hub.url, &ca, &["feed", "create", "files", "--type", "assets"]);
    let token = incoming_edges(&hub.url, &ca);

    // http:// to the TLS hub, and https:// to a plain-HTTP instance (the
    // peer, or a blob source): refused when named, nothing stored.
    let spoke = Server::start_with(&[("FERRY_TLS_CA_FILE", ca.to_str().unwrap())]);
    spoke.create_feed("files", "assets");
    let plain = Server::start();
    plain.create_feed("files", "assets");
    let plain_token = plain.incoming("site", &["files"], "push");
    let wrong_tls = plain.url.replace("http://", "https://");
    for (url, token, sources, says) in [
        (
            plain_url.as_str(),
            token.as_str(),
            vec![],
            "this port serves HTTPS",
        ),
        (
            wrong_tls.as_str(),
            plain_token.as_str(),
            vec![],
            "answers plain HTTP, not HTTPS",
        ),
        (
            hub.url.as_str(),
            token.as_str(),
            vec![
                "--blob-source",
                wrong_tls.as_str(),
                "--blob-source-token",
                plain_token.as_str(),
            ],
            "answers plain HTTP, not HTTPS",
        ),
    ] {
        let mut args = vec![
            "replication",
            "create",
            "from-hub",
            "--feed",
            "files",
            "--outgoing",
            url,
            "--token",
            token,
            "--mode",
            "pull",
        ];
        args.extend(sources);
        let out = spoke.cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: a wrong scheme was stored");
        assert!(err.contains(says), "{url}: {err}");
        let list = spoke.cli_ok(&["replication", "list"]);
        assert!(!list.contains("from-hub"), "{url}: {list}");
    }
}
