//! RPM feeds with the real dnf against the real binary, on a hub and on a
//! spoke that pulled from it: `makecache` with `repo_gpgcheck=1` and the
//! feed's key, downloads that give back the published bytes, an install
//! into a scratch root resolving a dependency between two packages built
//! by `rpmbuild`, the newest of two versions picked, deletions reaching
//! the spoke's `primary.xml`, and dnf refusing a tampered `repomd.xml` and
//! a wrong key. dnf never touches the machine's own state (see
//! `support::rpm::Dnf`).
#![allow(clippy::unwrap_used)]
mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use support::rpm::{Dnf, build_rpm, upload};
use support::{Server, curl, run_ok, sha256_file};

fn feed_url(s: &Server, feed: &str) -> String {
    format!("{}/rpm/{feed}/", s.url)
}

fn fetch(url: &str, to: &Path) {
    let (st, body) = curl(&[url]);
    assert_eq!(st, 200, "{url}");
    std::fs::write(to, body).unwrap();
}

/// The instance's key, fetched into `dir`.
fn key_file(s: &Server, dir: &Path) -> std::path::PathBuf {
    let key = dir.join(format!("key-{}.asc", s.addr.replace([':', '.'], "-")));
    fetch(&format!("{}key.asc", feed_url(s, "yum")), &key);
    key
}

/// The `primary.xml` the instance's current `repomd.xml` names, unpacked.
fn primary(s: &Server) -> String {
    let (_, repomd) = curl(&[&format!("{}repodata/repomd.xml", feed_url(s, "yum"))]);
    let repomd = String::from_utf8(repomd).unwrap();
    let href = repomd
        .split("<data type=\"primary\">")
        .nth(1)
        .and_then(|d| d.split("<location href=\"").nth(1))
        .and_then(|d| d.split('"').next())
        .unwrap()
        .to_owned();
    let (st, gz) = curl(&[&format!("{}{href}", feed_url(s, "yum"))]);
    assert_eq!(st, 200);
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(gz.as_slice())
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// One instance as dnf sees it: signed metadata, the newest version,
/// the published bytes, and an install resolving the dependency.
fn dnf_checks(s: &Server, dir: &Path, app2: &Path, lib: &Path) {
    let dnf = Dnf::new(&feed_url(s, "yum"), &key_file(s, dir));
    dnf.makecache_ok();
    assert_eq!(
        dnf.available(),
        ["app-1.0-1.noarch", "app-2.0-1.noarch", "liba-1.0-1.noarch"]
    );
    let got = dnf.download("app");
    assert_eq!(
        got.file_name().unwrap(),
        "app-2.0-1.noarch.rpm",
        "dnf picks the newest"
    );
    assert_eq!(sha256_file(&got), sha256_file(app2), "the published bytes");
    assert_eq!(sha256_file(&dnf.download("liba")), sha256_file(lib));
    let out = dnf.install(&["app"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("liba"), "the dependency is pulled in: {said}");
    let root = dnf.root();
    assert_eq!(
        std::fs::read_to_string(root.join("usr/share/app/2.0")).unwrap(),
        "app two"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("usr/share/liba/1.0")).unwrap(),
        "library"
    );
    let q = run_ok(
        Command::new("rpm")
            .arg("--root")
            .arg(&root)
            .args(["-q", "app", "liba"]),
    );
    assert_eq!(
        String::from_utf8_lossy(&q.stdout),
        "app-2.0-1.noarch\nliba-1.0-1.noarch\n"
    );
}

#[test]
fn dnf_installs_signed_packages_from_the_hub_and_a_spoke() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Server::start();
    let spoke = Server::start();
    hub.create_feed("yum", "rpm");
    spoke.create_feed("yum", "rpm");
    let key = hub.key("ci", "write");
    let lib = build_rpm(tmp.path(), "liba", "1.0", None, "library");
    let app1 = build_rpm(tmp.path(), "app", "1.0", Some("liba >= 1.0"), "app one");
    let app2 = build_rpm(tmp.path(), "app", "2.0", Some("liba >= 1.0"), "app two");
    for rpm in [&lib, &app1, &app2] {
        let (st, body) = upload(&hub, &key, "yum", rpm);
        assert_eq!(st, 201, "{body}");
    }
    let (st, body) = upload(&hub, &key, "yum", &app2);
    assert_eq!(st, 201, "the same package again is a no-op: {body}");
    dnf_checks(&hub, tmp.path(), &app2, &lib);

    // The .repo file the feed serves works with dnf config-manager.
    let (st, repo) = curl(&[&format!("{}config.repo", feed_url(&hub, "yum"))]);
    assert_eq!(st, 200);
    let repo = String::from_utf8(repo).unwrap();
    assert!(
        repo.contains(&format!("baseurl={}\n", feed_url(&hub, "yum"))),
        "{repo}"
    );
    assert!(repo.contains("repo_gpgcheck=1\n"), "{repo}");
    let dnf = Dnf::add_repo(&format!("{}config.repo", feed_url(&hub, "yum")));
    dnf.makecache_ok();
    assert_eq!(
        dnf.available(),
        ["app-1.0-1.noarch", "app-2.0-1.noarch", "liba-1.0-1.noarch"]
    );

    // The spoke pulls the feed and signs its own repodata with its own key.
    let token = hub.incoming("edges", &["yum"], "push");
    spoke.outgoing(
        "from-hub",
        &["yum"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    // Both ends hold the same packages, contents compared (each signs its
    // own repomd: it is not an item).
    let said = spoke.cli_ok(&["replication", "verify", "from-hub"]);
    assert!(said.contains("yum = yum: same"), "{said}");
    assert!(!said.contains("versions compared, not contents"), "{said}");
    let (_, hub_key) = curl(&[&format!("{}key.asc", feed_url(&hub, "yum"))]);
    let (_, spoke_key) = curl(&[&format!("{}key.asc", feed_url(&spoke, "yum"))]);
    assert_ne!(hub_key, spoke_key, "each instance signs with its own key");
    dnf_checks(&spoke, tmp.path(), &app2, &lib);

    // A deletion on the hub (with the CLI) reaches the spoke's primary.xml.
    let said = hub.cli_ok(&["rpm", "delete", "yum", "app", "2.0-1", "noarch"]);
    assert!(said.contains("deleted app-2.0-1.noarch from feed yum"), "{said}");
    assert!(!primary(&hub).contains("ver=\"2.0\""));
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    let p = primary(&spoke);
    assert!(p.contains("packages=\"2\""), "{p}");
    assert!(p.contains("ver=\"1.0\"") && !p.contains("ver=\"2.0\""), "{p}");
    let dnf = Dnf::new(&feed_url(&spoke, "yum"), &key_file(&spoke, tmp.path()));
    dnf.makecache_ok();
    assert_eq!(dnf.available(), ["app-1.0-1.noarch", "liba-1.0-1.noarch"]);
}

#[test]
fn dnf_refuses_a_tampered_repomd_and_a_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Server::start();
    let other = Server::start();
    hub.create_feed("yum", "rpm");
    other.create_feed("yum", "rpm");
    let key = hub.key("ci", "write");
    let lib = build_rpm(tmp.path(), "liba", "1.0", None, "library");
    assert_eq!(upload(&hub, &key, "yum", &lib).0, 201);
    let right = key_file(&hub, tmp.path());
    let wrong = key_file(&other, tmp.path());

    // The right key works; another feed's key is refused.
    Dnf::new(&feed_url(&hub, "yum"), &right).makecache_ok();
    let said = Dnf::new(&feed_url(&hub, "yum"), &wrong).makecache_refused();
    assert!(
        said.to_lowercase().contains("signature") || said.contains("GPG"),
        "{said}"
    );

    // An untouched copy is accepted, so what follows is the tampering.
    let repo = tmp.path().join("copy");
    std::fs::create_dir_all(repo.join("repodata")).unwrap();
    let base = feed_url(&hub, "yum");
    fetch(
        &format!("{base}repodata/repomd.xml"),
        &repo.join("repodata/repomd.xml"),
    );
    fetch(
        &format!("{base}repodata/repomd.xml.asc"),
        &repo.join("repodata/repomd.xml.asc"),
    );
    let repomd = std::fs::read_to_string(repo.join("repodata/repomd.xml")).unwrap();
    for href in repomd
        .split("<location href=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
    {
        fetch(&format!("{base}{href}"), &repo.join(href));
    }
    let url = format!("file://{}/", repo.display());
    Dnf::new(&url, &right).makecache_ok();

    // A changed repomd.xml: the signature no longer matches.
    let revision = repomd
        .split("<revision>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap();
    std::fs::write(
        repo.join("repodata/repomd.xml"),
        repomd.replace(&format!("<revision>{revision}<"), "<revision>1<"),
    )
    .unwrap();
    let said = Dnf::new(&url, &right).makecache_refused();
    assert!(
        said.to_lowercase().contains("signature") || said.contains("GPG"),
        "{said}"
    );
}
