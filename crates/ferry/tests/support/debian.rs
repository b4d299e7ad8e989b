//! apt-get against a Debian feed without touching the machine's own apt
//! state: every directory apt reads or writes is under a temporary
//! directory (its own state, cache, sources, trusted keys and
//! preferences), and the feed is trusted through `signed-by=` only.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Server, curl, run_ok};

/// Builds `NAME_VERSION_ARCH.deb` in `dir` with `dpkg-deb --build`: one
/// file, `/usr/share/NAME/VERSION`, holding `payload`.
pub fn build_deb(
    dir: &Path,
    name: &str,
    version: &str,
    arch: &str,
    depends: Option<&str>,
    payload: &str,
) -> PathBuf {
    let root = dir.join(format!("build-{name}-{version}-{arch}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join(format!("usr/share/{name}"))).unwrap();
    std::fs::write(root.join(format!("usr/share/{name}/{version}")), payload).unwrap();
    let depends = depends.map(|d| format!("Depends: {d}\n")).unwrap_or_default();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Ferry Tests <tests@example.com>\n\
             {depends}Description: test package {name}\n built by the e2e tests\n"
        ),
    )
    .unwrap();
    let out = dir.join(format!("{name}_{version}_{arch}.deb"));
    run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&out),
    );
    out
}

/// Uploads a `.deb` to `dist`/`component` of `feed`; returns the HTTP status.
pub fn upload(
    server: &Server,
    key: &str,
    feed: &str,
    dist: &str,
    component: &str,
    deb: &Path,
) -> (u16, String) {
    let (st, body) = curl(&[
        "-u",
        &format!("ci:{key}"),
        "-T",
        deb.to_str().unwrap(),
        &format!("{}/debian/{feed}/upload/{dist}/{component}", server.url),
    ]);
    (st, String::from_utf8_lossy(&body).into_owned())
}

/// An apt configuration of its own.
pub struct Apt {
    pub dir: tempfile::TempDir,
}

impl Apt {
    /// apt for amd64 with one source: `deb [signed-by=KEYRING] URL DIST COMPONENT`.
    pub fn new(source_url: &str, dist: &str, component: &str, keyring: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "trusted.gpg.d",
            "preferences.d",
            "apt.conf.d",
            "log",
            "download",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("status"), "").unwrap();
        let key = d.join("feed-key.gpg");
        std::fs::copy(keyring, &key).unwrap();
        std::fs::write(
            d.join("sources.list"),
            format!(
                "deb [signed-by={}] {source_url} {dist} {component}\n",
                key.display()
            ),
        )
        .unwrap();
        let p = |s: &str| d.join(s).display().to_string();
        let conf = format!(
            "Dir::State \"{}\";\nDir::State::status \"{}\";\nDir::Cache \"{}\";\n\
             Dir::Etc::SourceList \"{}\";\nDir::Etc::SourceParts \"{}\";\n\
             Dir::Etc::Trusted \"{}\";\nDir::Etc::TrustedParts \"{}\";\n\
             Dir::Etc::Preferences \"{}\";\nDir::Etc::PreferencesParts \"{}\";\n\
             Dir::Etc::Parts \"{}\";\nDir::Log \"{}\";\n\
             Debug::NoLocking \"true\";\nAPT::Sandbox::User \"root\";\n\
             APT::Architecture \"amd64\";\nAPT::Architectures {{ \"amd64\"; }};\n\
             Acquire::Languages \"none\";\nAcquire::Retries \"0\";\nAcquire::http::Proxy \"DIRECT\";\n",
            p("state"),
            p("status"),
            p("cache"),
            p("sources.list"),
            p("sources.list.d"),
            p("trusted.gpg"),
            p("trusted.gpg.d"),
            p("preferences"),
            p("preferences.d"),
            p("apt.conf.d"),
            p("log"),
        );
        std::fs::write(d.join("apt.conf"), conf).unwrap();
        Apt { dir }
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("APT_CONFIG", self.dir.path().join("apt.conf"))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .current_dir(self.dir.path().join("download"));
        c
    }

    /// `apt-get ARGS` (whatever its outcome).
    pub fn get(&self, args: &[&str]) -> Output {
        self.cmd("apt-get").args(args).output().unwrap()
    }

    /// `apt-get update`, which must succeed without warnings: apt exits 0
    /// even when a source failed, so its output is checked too.
    pub fn update_ok(&self) -> String {
        let out = self.get(&["update", "-q"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "apt-get update failed:\n{text}");
        assert!(
            !text.contains("W:") && !text.contains("E:") && !text.contains("Err:"),
            "apt-get update complained:\n{text}"
        );
        text
    }

    /// `apt-get update`, expected to fail; returns what apt said.
    pub fn update_refused(&self) -> String {
        let out = self.get(&["update", "-q", "-o", "APT::Update::Error-Mode=any"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() || text.contains("E:") || text.contains("W:"),
            "apt-get update unexpectedly accepted the repository:\n{text}"
        );
        text
    }

    /// `apt-get download NAME` into a fresh folder; the file it fetched.
    pub fn download(&self, name: &str) -> PathBuf {
        let dl = self.dir.path().join("download");
        for e in std::fs::read_dir(&dl).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        run_ok(self.cmd("apt-get").args(["download", "-q", name]));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dl)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.remove(0)
    }

    /// `apt-get install --download-only NAME`, resolving its dependencies
    /// against the (empty) status file; the `.deb`s apt fetched, by file name.
    pub fn fetch_with_dependencies(&self, name: &str) -> Vec<PathBuf> {
        run_ok(
            self.cmd("apt-get")
                .args(["install", "-y", "-q", "--download-only", name]),
        );
        let archives = self.dir.path().join("cache/archives");
        let mut debs: Vec<PathBuf> = std::fs::read_dir(archives)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        debs.sort();
        debs
    }

    /// The candidate version apt would install.
    pub fn candidate(&self, name: &str) -> String {
        let out = run_ok(self.cmd("apt-cache").args(["policy", name]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: ").map(str::to_string))
            .unwrap_or_default()
    }
}

/// Fetches `url` (which must answer 200) into `path`.
pub fn fetch(url: &str, path: &Path) {
    let (st, body) = curl(&[url]);
    assert_eq!(st, 200, "{url}");
    std::fs::write(path, body).unwrap();
}

/// Verifies an `InRelease` file with `sqv` against `keyring` (armored or
/// binary): sqv takes detached signatures, so the clearsigned text and its
/// signature are split as RFC 9580 §7 defines (the line ending just before
/// the signature is not part of the signed text; the one ending the
/// Release text before it is).
pub fn sqv_inrelease(inrelease: &str, keyring: &Path, dir: &Path) -> Output {
    let (_, rest) = inrelease.split_once("\n\n").expect("armor headers");
    let (text, sig) = rest
        .split_once("\n-----BEGIN PGP SIGNATURE-----")
        .expect("signature block");
    let unescaped: Vec<&str> = text.lines().map(|l| l.strip_prefix("- ").unwrap_or(l)).collect();
    let text_path = dir.join("inrelease.txt");
    let sig_path = dir.join("inrelease.sig");
    let mut signed = unescaped.join("\n");
    if text.ends_with('\n') {
        signed.push('\n');
    }
    std::fs::write(&text_path, signed).unwrap();
    std::fs::write(&sig_path, format!("-----BEGIN PGP SIGNATURE-----{sig}")).unwrap();
    Command::new("sqv")
        .arg("--keyring")
        .arg(keyring)
        .arg(&sig_path)
        .arg(&text_path)
        .output()
        .unwrap()
}
