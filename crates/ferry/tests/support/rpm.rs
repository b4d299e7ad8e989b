//! RPM clients for the end-to-end tests: packages built by `rpmbuild`
//! from a spec the test writes, and `dnf` confined to scratch directories
//! (its own config, repos dir, cache and install root: the machine's
//! package state is never read or written).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Server, curl, run_fail, run_ok, tool};

/// Builds `NAME-VERSION-1.noarch.rpm` with `rpmbuild` in `dir`: one file
/// `/usr/share/NAME/VERSION` holding `content`, and `requires` if given.
/// `AutoReq: no`, so that it installs into an empty root.
pub fn build_rpm(dir: &Path, name: &str, version: &str, requires: Option<&str>, content: &str) -> PathBuf {
    let top = dir.join(format!("rpmbuild-{name}-{version}"));
    std::fs::create_dir_all(top.join("SPECS")).unwrap();
    let requires = requires.map(|r| format!("Requires: {r}\n")).unwrap_or_default();
    let spec = format!(
        "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: test package {name}\nLicense: MIT\n\
         BuildArch: noarch\nAutoReq: no\n{requires}\n%description\n{name} is a test package.\n\n\
         %install\nmkdir -p %{{buildroot}}/usr/share/{name}\nprintf '%s' '{content}' > %{{buildroot}}/usr/share/{name}/{version}\n\n\
         %files\n/usr/share/{name}/{version}\n\n\
         %changelog\n* Mon Nov 30 2026 Ferry Test <test@ferry.invalid> - {version}-1\n- built by the test\n"
    );
    let spec_path = top.join(format!("SPECS/{name}.spec"));
    std::fs::write(&spec_path, spec).unwrap();
    run_ok(
        Command::new(tool("rpmbuild"))
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg("--define")
            .arg(format!("_dbpath {}", top.join("rpmdb").display()))
            .arg("-bb")
            .arg(&spec_path),
    );
    top.join(format!("RPMS/noarch/{name}-{version}-1.noarch.rpm"))
}

/// `curl -T FILE` to `/rpm/FEED/upload` with `key`; (status, body).
pub fn upload(s: &Server, key: &str, feed: &str, file: &Path) -> (u16, String) {
    let (st, body) = curl(&[
        "-u",
        &format!("ci:{key}"),
        "-T",
        &file.display().to_string(),
        &format!("{}/rpm/{feed}/upload", s.url),
    ]);
    (st, String::from_utf8_lossy(&body).into_owned())
}

/// dnf against one repository, in scratch directories of its own.
pub struct Dnf {
    dir: tempfile::TempDir,
}

impl Dnf {
    /// A dnf whose only repository is `baseurl` with `repo_gpgcheck=1`
    /// and the armored key at `key`.
    pub fn new(baseurl: &str, key: &Path) -> Self {
        let dnf = Self::empty();
        std::fs::write(
            dnf.dir.path().join("repos/ferry.repo"),
            format!(
                "[ferry]\nname=ferry\nbaseurl={baseurl}\nenabled=1\ngpgcheck=0\nrepo_gpgcheck=1\n\
                 gpgkey=file://{}\nmetadata_expire=0\n",
                key.display()
            ),
        )
        .unwrap();
        dnf
    }

    /// A dnf whose repository is what `dnf config-manager --add-repo URL`
    /// made of the `.repo` file at `url` (its key fetched from the feed).
    pub fn add_repo(url: &str) -> Self {
        let dnf = Self::empty();
        let mut c = dnf.cmd(&["config-manager", "--add-repo", url]);
        c.arg("--enableplugin=config-manager");
        run_ok(&mut c);
        dnf
    }

    fn empty() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["repos", "cache", "root", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("dnf.conf"),
            format!(
                "[main]\nreposdir={}\ncachedir={}\ninstall_weak_deps=False\nkeepcache=False\n",
                d.join("repos").display(),
                d.join("cache").display()
            ),
        )
        .unwrap();
        Self { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(tool("dnf"));
        c.arg("-y")
            .arg(format!("--config={}", d.join("dnf.conf").display()))
            .arg(format!("--installroot={}", d.join("root").display()))
            .arg("--releasever=12")
            .arg(format!("--setopt=reposdir={}", d.join("repos").display()))
            .arg(format!("--setopt=cachedir={}", d.join("cache").display()))
            .arg(format!("--setopt=logdir={}", d.join("log").display()))
            .arg("--setopt=install_weak_deps=False")
            // Debian's dnf plugins write outside the install root
            // (`local` keeps every package in /var/lib/dnf/plugins/local,
            // `generate_completion_cache` writes /var/cache/dnf): only
            // `download` is wanted.
            .arg("--disableplugin=*")
            .arg("--enableplugin=download")
            .args(args);
        c
    }

    /// `makecache --refresh`, which must succeed (signature checked).
    pub fn makecache_ok(&self) -> Output {
        run_ok(&mut self.cmd(&["makecache", "--refresh"]))
    }

    /// `makecache --refresh`, which must fail; its output.
    pub fn makecache_refused(&self) -> String {
        let out = run_fail(&mut self.cmd(&["makecache", "--refresh"]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The NEVRAs dnf sees as available, sorted.
    pub fn available(&self) -> Vec<String> {
        let out = run_ok(&mut self.cmd(&[
            "repoquery",
            "--available",
            "--refresh",
            "--qf",
            "%{name}-%{evr}.%{arch}",
        ]));
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Last metadata"))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    /// `dnf download NAME` into a fresh directory; the file's path.
    pub fn download(&self, name: &str) -> PathBuf {
        let dest = self.dir.path().join(format!("dl-{name}"));
        std::fs::create_dir_all(&dest).unwrap();
        run_ok(&mut self.cmd(&["download", "--destdir", &dest.display().to_string(), name]));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.pop().unwrap()
    }

    /// `dnf install NAME...` into the scratch root.
    pub fn install(&self, names: &[&str]) -> Output {
        let mut args = vec!["install"];
        args.extend_from_slice(names);
        run_ok(&mut self.cmd(&args))
    }
}
