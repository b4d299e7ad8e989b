//! The real `nuget` (Debian's nuget.exe 2.8.7 on mono, a v2 client as
//! Chocolatey 1.x is) against a server, each client with its own HOME (so
//! its own NuGet.Config and package cache), and `.nupkg` files written by
//! the test as NuGet 2.x reads them: an OPC zip with `[Content_Types].xml`,
//! `_rels/.rels` pointing at the manifest, and the `.nuspec`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Server;

pub struct Nuget {
    pub dir: tempfile::TempDir,
    pub source: String,
    /// The program and its first arguments (`nuget`, or `mono NuGet.exe`).
    exe: Vec<String>,
}

/// nuget.exe 5.8.0 from npm's `nuget-exe` (a v3 client), which
/// `scripts/test` installs into `.nuget-test`.
pub fn nuget5_exe() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.nuget-test/node_modules/nuget-exe/nuget-5.8.0.exe");
    assert!(
        p.exists(),
        "{} not found: run scripts/test, which installs it",
        p.display()
    );
    p
}

impl Nuget {
    /// A client for `server`'s nuget feed `feed`, v2 protocol (the feed root).
    pub fn new(server: &Server, feed: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Self {
            dir,
            source: format!("{}/nuget/{feed}/", server.url),
            exe: vec![super::tool("nuget").display().to_string()],
        }
    }

    /// nuget.exe 5.8 on mono, speaking v3 to `server`'s feed `feed`
    /// (its service index).
    pub fn v3(server: &Server, feed: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Self {
            dir,
            source: format!("{}/nuget/{feed}/v3/index.json", server.url),
            exe: vec![
                super::tool("mono").display().to_string(),
                nuget5_exe().display().to_string(),
            ],
        }
    }

    /// nuget.exe 2.8.7 on mono spins forever wrapping text to a console
    /// 0 columns wide (what it sees on a pipe), so it runs under `script`
    /// on a pseudo-terminal set to 200 columns; the terminal's escape
    /// sequences are stripped from what it prints.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let quoted: Vec<String> = self
            .exe
            .iter()
            .cloned()
            .chain(args.iter().map(|a| (*a).to_owned()))
            .chain(std::iter::once("-NonInteractive".to_owned()))
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let mut c = Command::new("script");
        let home = self.dir.path().join("home");
        c.args([
            "-qec",
            &format!("stty cols 200 rows 50; exec {}", quoted.join(" ")),
            "/dev/null",
        ])
        .current_dir(self.dir.path())
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("NUGET_PACKAGES", home.join("packages"));
        c
    }

    /// Runs nuget; returns (success, what it printed, escapes stripped).
    ///
    /// Mono itself sometimes aborts while the client shuts down (an
    /// assertion in its thread code, "Native Crash Reporting"), after the
    /// client has done its work and printed so. That is the client's runtime
    /// failing, not an answer from the server: a crash after the client said
    /// it pushed counts as the push it reported (the tests then check the
    /// package is there), any other crash runs the command again, at most
    /// twice more.
    ///
    /// Mono's HttpWebRequest also fails now and then with "Error writing
    /// headers" (its `SendFailure`: the request could not be sent on a
    /// fresh connection); one run of the suite in about ten met it once,
    /// and 150 `nuget delete` in a row on a loaded machine never did. The
    /// command is run again then, at most twice more, and each failure is
    /// shown. What these tests send is safe to send again: a push that did
    /// arrive is answered 409 the second time (failing the test, visibly),
    /// and an unlist again is 204.
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let out = self
                .cmd(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let text = strip_escapes(&format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
            if !out.status.success() && text.contains("Error writing headers") && attempt < 3 {
                eprintln!("mono could not send a request of nuget {args:?}; running it again:\n{text}");
                continue;
            }
            let Some(before) = mono_crash(&text) else {
                return (out.status.success(), text);
            };
            if args.first() == Some(&"push") && before.contains("Your package was pushed.") {
                return (true, before.to_owned());
            }
            if attempt == 3 {
                return (false, text);
            }
            eprintln!("mono crashed running nuget {args:?}; running it again:\n{before}");
        }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "nuget {args:?} failed:\n{text}");
        text
    }

    pub fn fail(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(!ok, "nuget {args:?} should have failed:\n{text}");
        text
    }

    /// `nuget push FILE` (nuget.exe 2.8 on mono mishandles absolute paths,
    /// so files are named relative to the client's dir).
    pub fn push(&self, file: &Path, key: &str) -> String {
        self.ok(&["push", &rel(file), "-Source", &self.source, "-ApiKey", key])
    }

    /// `nuget list TERM` (v2 `Search()`), lines `Id Version`.
    pub fn list(&self, term: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["list", term, "-Source", &self.source];
        args.extend_from_slice(extra);
        self.ok(&args)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("No packages"))
            .map(str::to_owned)
            .collect()
    }

    /// `nuget install ID` into `out` (a folder under the client's dir).
    pub fn install(&self, id: &str, extra: &[&str], out: &str) -> (PathBuf, String) {
        let dest = self.dir.path().join(out);
        let mut args = vec!["install", id, "-Source", &self.source, "-OutputDirectory", out];
        args.extend_from_slice(extra);
        let text = self.ok(&args);
        (dest, text)
    }

    /// Writes a `.nupkg` into the client's dir and returns its path.
    pub fn pack(&self, id: &str, version: &str, deps: &[(&str, &str)], files: &[(&str, &[u8])]) -> PathBuf {
        let path = self.dir.path().join(format!("{id}.{version}.nupkg"));
        std::fs::write(&path, nupkg(id, version, deps, files)).unwrap();
        path
    }
}

/// What the client printed before mono's runtime aborted, if it did.
fn mono_crash(text: &str) -> Option<&str> {
    let at = text
        .find("* Assertion at mono-")
        .or_else(|| text.find("Native Crash Reporting"))?;
    Some(&text[..at])
}

/// The file name of `file` (which is in the client's dir).
pub fn rel(file: &Path) -> String {
    file.file_name().unwrap().to_string_lossy().into_owned()
}

/// Text without terminal escape sequences (`ESC [ … letter`, `ESC = >`) and CRs.
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.next() == Some('[') {
                    for n in chars.by_ref() {
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// A `.nupkg` as `nuget pack` lays it out (OPC parts included).
pub fn nupkg(id: &str, version: &str, deps: &[(&str, &str)], files: &[(&str, &[u8])]) -> Vec<u8> {
    let deps: String = deps
        .iter()
        .map(|(d, v)| format!("<dependency id=\"{d}\" version=\"{v}\" />"))
        .collect();
    let nuspec = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://schemas.microsoft.com/packaging/2010/07/nuspec.xsd">
  <metadata>
    <id>{id}</id>
    <version>{version}</version>
    <title>{id}</title>
    <authors>Ferry e2e</authors>
    <owners>Ferry e2e</owners>
    <requireLicenseAcceptance>false</requireLicenseAcceptance>
    <description>{id}, built by the Ferry end-to-end tests.</description>
    <tags>ferry e2e</tags>
    <dependencies>{deps}</dependencies>
  </metadata>
</package>"#
    );
    let mut exts: Vec<String> = files
        .iter()
        .filter_map(|(p, _)| p.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()))
        .collect();
    exts.sort();
    exts.dedup();
    let mut types = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
<Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\" />\
<Default Extension=\"nuspec\" ContentType=\"application/octet\" />",
    );
    for e in exts.iter().filter(|e| *e != "rels" && *e != "nuspec") {
        types.push_str(&format!(
            "<Default Extension=\"{e}\" ContentType=\"application/octet\" />"
        ));
    }
    types.push_str("</Types>");
    let rels = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">\
<Relationship Type=\"http://schemas.microsoft.com/packaging/2010/07/manifest\" Target=\"/{id}.nuspec\" Id=\"R1\" /></Relationships>"
    );
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    let mut add = |name: &str, data: &[u8]| {
        w.start_file(name, opts).unwrap();
        w.write_all(data).unwrap();
    };
    add("_rels/.rels", rels.as_bytes());
    add(&format!("{id}.nuspec"), nuspec.as_bytes());
    for (p, data) in files {
        add(p, data);
    }
    add("[Content_Types].xml", types.as_bytes());
    w.finish().unwrap().into_inner()
}
