//! Debian feeds with the real apt-get against the real binary, on a hub
//! and on a spoke that pulled from it: signed updates, downloads that give
//! back the published bytes, dependencies (an amd64 package on an `all`
//! one) installed by `dpkg --root` into a scratch root, the newest of two
//! versions picked, deletions reaching the spoke, apt refusing tampered
//! indexes and a wrong key, `sqv` accepting the signatures, and two
//! instances sharing one imported key. apt never touches the machine's own
//! state (see `support::debian::Apt`).
#![allow(clippy::unwrap_used)]
mod support;

use std::path::Path;
use std::process::Command;

use support::debian::{Apt, build_deb, fetch, sqv_inrelease, upload};
use support::{Server, curl, run_ok};

fn feed_url(s: &Server, feed: &str) -> String {
    format!("{}/debian/{feed}", s.url)
}

/// Checks one instance as apt sees it: update with signatures checked,
/// the newest version picked, download gives the published bytes, the
/// dependency on the `all` package resolved and both unpacked.
fn apt_checks(s: &Server, dir: &Path, demo2: &Path, lib: &Path) {
    let key = dir.join(format!("key-{}.gpg", s.addr.replace([':', '.'], "-")));
    fetch(&format!("{}/key.gpg", feed_url(s, "apt")), &key);
    let apt = Apt::new(&feed_url(s, "apt"), "bookworm", "main", &key);
    let said = apt.update_ok();
    // Every index apt asks for over HTTP is there: it asks by the
    // strongest hash Release lists (by-hash/SHA512), and an `Ign:` line is
    // a request it was refused and fell back from.
    assert!(
        !said.contains("Ign:"),
        "apt-get update was refused a file:\n{said}"
    );
    assert_eq!(apt.candidate("demo"), "2.0", "apt picks the newest version");
    let got = apt.download("demo");
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(demo2).unwrap());
    let debs = apt.fetch_with_dependencies("demo");
    let names: Vec<String> = debs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["demo_2.0_amd64.deb", "libdemo_1.0_all.deb"], "{names:?}");
    assert_eq!(std::fs::read(&debs[1]).unwrap(), std::fs::read(lib).unwrap());
    // Installed (the `all` package on amd64 too) by dpkg into a scratch
    // root with a database of its own: the machine's is never touched.
    let root = tempfile::tempdir().unwrap();
    let machine_status = std::fs::read("/var/lib/dpkg/status").ok();
    let r = root.path();
    for sub in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/log",
    ] {
        std::fs::create_dir_all(r.join(sub)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(r.join("var/lib/dpkg/available"), "").unwrap();
    run_ok(
        Command::new("dpkg")
            .arg(format!("--root={}", r.display()))
            .arg(format!("--log={}", r.join("var/log/dpkg.log").display()))
            .args(["--force-not-root", "--force-script-chrootless", "-i"])
            .args(&debs),
    );
    let status = std::fs::read_to_string(r.join("var/lib/dpkg/status")).unwrap();
    for (name, version, arch) in [("demo", "2.0", "amd64"), ("libdemo", "1.0", "all")] {
        let entry = status
            .split("\n\n")
            .find(|p| p.starts_with(&format!("Package: {name}\n")))
            .unwrap_or_else(|| panic!("{name} not in the scratch status: {status}"));
        assert!(entry.contains("Status: install ok installed"), "{entry}");
        assert!(entry.contains(&format!("Version: {version}\n")), "{entry}");
        assert!(entry.contains(&format!("Architecture: {arch}\n")), "{entry}");
    }
    assert_eq!(
        std::fs::read("/var/lib/dpkg/status").ok(),
        machine_status,
        "the machine's dpkg database is untouched"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("usr/share/demo/2.0")).unwrap(),
        "demo two"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("usr/share/libdemo/1.0")).unwrap(),
        "library"
    );

    // sqv (Sequoia's policy, as Debian 13's apt) accepts both signatures.
    let (_, inrelease) = curl(&[&format!("{}/dists/bookworm/InRelease", feed_url(s, "apt"))]);
    let out = sqv_inrelease(&String::from_utf8(inrelease).unwrap(), &key, dir);
    assert!(
        out.status.success(),
        "sqv InRelease: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (release, gpg) = (dir.join("Release"), dir.join("Release.gpg"));
    fetch(
        &format!("{}/dists/bookworm/Release", feed_url(s, "apt")),
        &release,
    );
    fetch(
        &format!("{}/dists/bookworm/Release.gpg", feed_url(s, "apt")),
        &gpg,
    );
    let out = run_ok(
        Command::new("sqv")
            .arg("--keyring")
            .arg(&key)
            .arg(&gpg)
            .arg(&release),
    );
    assert!(!out.stdout.is_empty());
}

#[test]
fn apt_installs_signed_packages_from_the_hub_and_a_spoke() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Server::start();
    let spoke = Server::start();
    hub.create_feed("apt", "debian");
    spoke.create_feed("apt", "debian");
    let key = hub.key("ci", "write");
    let lib = build_deb(tmp.path(), "libdemo", "1.0", "all", None, "library");
    let demo1 = build_deb(
        tmp.path(),
        "demo",
        "1.0",
        "amd64",
        Some("libdemo (>= 1.0)"),
        "demo one",
    );
    let demo2 = build_deb(
        tmp.path(),
        "demo",
        "2.0",
        "amd64",
        Some("libdemo (>= 1.0)"),
        "demo two",
    );
    for deb in [&lib, &demo1, &demo2] {
        let (st, body) = upload(&hub, &key, "apt", "bookworm", "main", deb);
        assert_eq!(st, 201, "{body}");
    }
    apt_checks(&hub, tmp.path(), &demo2, &lib);

    // Packages.xz (which apt prefers) is one xz stream of many blocks and
    // Packages.gz many gzip members, one per bucket of packages: apt reads
    // them whole, and sees packages of every bucket.
    let names: Vec<String> = (0..12).map(|i| format!("tool{i}")).collect();
    for name in &names {
        let deb = build_deb(tmp.path(), name, "1.0", "amd64", None, name);
        let (st, body) = upload(&hub, &key, "apt", "bookworm", "main", &deb);
        assert_eq!(st, 201, "{body}");
    }
    let hub_key_file = tmp.path().join("hub-buckets.gpg");
    fetch(&format!("{}/key.gpg", feed_url(&hub, "apt")), &hub_key_file);
    let apt = Apt::new(&feed_url(&hub, "apt"), "bookworm", "main", &hub_key_file);
    apt.update_ok();
    for name in &names {
        assert_eq!(apt.candidate(name), "1.0", "apt sees {name}");
    }
    // The same through Packages.gz alone (a copy without the others).
    let copy = tempfile::tempdir().unwrap();
    let repo = local_copy(&hub, copy.path());
    for a in ["amd64", "all"] {
        let dir = repo.join(format!("dists/bookworm/main/binary-{a}"));
        std::fs::remove_file(dir.join("Packages")).unwrap();
        std::fs::remove_file(dir.join("Packages.xz")).unwrap();
    }
    let apt_gz = Apt::new(
        &format!("file:{}", repo.display()),
        "bookworm",
        "main",
        &hub_key_file,
    );
    apt_gz.update_ok();
    for name in &names {
        assert_eq!(
            apt_gz.candidate(name),
            "1.0",
            "apt sees {name} through Packages.gz"
        );
    }

    // The spoke pulls the feed and signs its own indexes with its own key.
    let token = hub.incoming("edges", &["apt"], "push");
    spoke.outgoing(
        "from-hub",
        &["apt"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    // Both ends hold the same packages, contents compared (each signs its
    // own indexes: they are not items).
    let said = spoke.cli_ok(&["replication", "verify", "from-hub"]);
    assert!(said.contains("apt = apt: same"), "{said}");
    assert!(!said.contains("versions compared, not contents"), "{said}");
    let (_, hub_key) = curl(&[&format!("{}/key.gpg", feed_url(&hub, "apt"))]);
    let (_, spoke_key) = curl(&[&format!("{}/key.gpg", feed_url(&spoke, "apt"))]);
    assert_ne!(
        hub_key, spoke_key,
        "each instance has its own key unless one is imported"
    );
    apt_checks(&spoke, tmp.path(), &demo2, &lib);

    // A deletion on the hub reaches the spoke's Packages.
    let (st, _) = curl(&[
        "-X",
        "DELETE",
        "-u",
        &format!("ci:{key}"),
        &format!("{}/package/bookworm/main/demo/2.0/amd64", feed_url(&hub, "apt")),
    ]);
    assert_eq!(st, 204);
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    let (_, packages) = curl(&[&format!(
        "{}/dists/bookworm/main/binary-amd64/Packages",
        feed_url(&spoke, "apt")
    )]);
    let packages = String::from_utf8(packages).unwrap();
    assert!(
        packages.contains("Version: 1.0\n") && !packages.contains("Version: 2.0\n"),
        "{packages}"
    );
    let spoke_key_file = tmp.path().join("spoke.gpg");
    std::fs::write(&spoke_key_file, &spoke_key).unwrap();
    let apt = Apt::new(&feed_url(&spoke, "apt"), "bookworm", "main", &spoke_key_file);
    apt.update_ok();
    assert_eq!(apt.candidate("demo"), "1.0");
}

/// Copies the hub's repository for bookworm/main into a `file:` repository
/// that a test may then tamper with.
fn local_copy(s: &Server, dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("repo");
    let base = feed_url(s, "apt");
    let dists = repo.join("dists/bookworm");
    std::fs::create_dir_all(dists.join("main/binary-amd64")).unwrap();
    std::fs::create_dir_all(dists.join("main/binary-all")).unwrap();
    for f in ["InRelease", "Release", "Release.gpg"] {
        fetch(&format!("{base}/dists/bookworm/{f}"), &dists.join(f));
    }
    for a in ["amd64", "all"] {
        for f in ["Packages", "Packages.gz", "Packages.xz"] {
            let rel = format!("main/binary-{a}/{f}");
            fetch(&format!("{base}/dists/bookworm/{rel}"), &dists.join(&rel));
        }
    }
    repo
}

#[test]
fn apt_refuses_tampered_indexes_and_a_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Server::start();
    let other = Server::start();
    hub.create_feed("apt", "debian");
    other.create_feed("apt", "debian");
    let key = hub.key("ci", "write");
    let demo = build_deb(tmp.path(), "demo", "1.0", "amd64", None, "demo");
    assert_eq!(upload(&hub, &key, "apt", "bookworm", "main", &demo).0, 201);
    let right = tmp.path().join("right.gpg");
    let wrong = tmp.path().join("wrong.gpg");
    fetch(&format!("{}/key.gpg", feed_url(&hub, "apt")), &right);
    fetch(&format!("{}/key.gpg", feed_url(&other, "apt")), &wrong);

    // The right key works; another feed's key is refused.
    Apt::new(&feed_url(&hub, "apt"), "bookworm", "main", &right).update_ok();
    let said = Apt::new(&feed_url(&hub, "apt"), "bookworm", "main", &wrong).update_refused();
    assert!(
        said.contains("NO_PUBKEY") || said.contains("not signed"),
        "{said}"
    );

    // An untouched copy is accepted, so what follows is the tampering.
    let repo = local_copy(&hub, tmp.path());
    let url = format!("file:{}", repo.display());
    Apt::new(&url, "bookworm", "main", &right).update_ok();

    // A changed InRelease: the signature no longer matches.
    let inrelease = repo.join("dists/bookworm/InRelease");
    let original = std::fs::read_to_string(&inrelease).unwrap();
    std::fs::write(&inrelease, original.replace("Suite: bookworm", "Suite: bookwarm")).unwrap();
    let said = Apt::new(&url, "bookworm", "main", &right).update_refused();
    assert!(
        said.contains("BADSIG") || said.contains("not valid") || said.contains("signature"),
        "{said}"
    );
    let out = sqv_inrelease(&std::fs::read_to_string(&inrelease).unwrap(), &right, tmp.path());
    assert!(!out.status.success(), "sqv accepted a tampered InRelease");
    std::fs::write(&inrelease, &original).unwrap();

    // A Packages that does not match the hash InRelease gives for it.
    for a in ["amd64", "all"] {
        let dir = repo.join(format!("dists/bookworm/main/binary-{a}"));
        let p = std::fs::read_to_string(dir.join("Packages")).unwrap();
        let tampered = p.replace("Description: test package", "Description: evil package");
        std::fs::write(dir.join("Packages"), &tampered).unwrap();
        let _ = std::fs::remove_file(dir.join("Packages.gz"));
        let _ = std::fs::remove_file(dir.join("Packages.xz"));
    }
    let apt = Apt::new(&url, "bookworm", "main", &right);
    let said = apt.update_refused();
    assert!(
        said.contains("Hash Sum mismatch") || said.contains("hash"),
        "{said}"
    );
}

#[test]
fn two_instances_with_one_imported_key_serve_one_client() {
    let tmp = tempfile::tempdir().unwrap();
    // An operator's fleet key, made with gpg (Ed25519, SHA-256 bindings).
    let gnupg = tmp.path().join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let gpg = |args: &[&str]| {
        let mut c = Command::new("gpg");
        c.arg("--batch").arg("--homedir").arg(&gnupg).args(args);
        c
    };
    run_ok(&mut gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        "Fleet Repo <fleet@example.com>",
        "ed25519",
        "sign",
        "never",
    ]));
    let out = run_ok(&mut gpg(&[
        "--armor",
        "--export-secret-keys",
        "fleet@example.com",
    ]));
    let secret = tmp.path().join("fleet.asc");
    std::fs::write(&secret, &out.stdout).unwrap();

    let a = Server::start();
    let b = Server::start();
    let demo = build_deb(tmp.path(), "demo", "1.0", "amd64", None, "demo");
    for s in [&a, &b] {
        s.create_feed("apt", "debian");
        let said = s.cli_ok(&["feed", "key", "import", "apt", secret.to_str().unwrap()]);
        assert!(said.contains("now signs with key"), "{said}");
        let key = s.key("ci", "write");
        assert_eq!(upload(s, &key, "apt", "bookworm", "main", &demo).0, 201);
    }
    // The exported public key is the same on both; the client trusts only it.
    let exported = a.cli_ok(&["feed", "key", "export", "apt"]);
    assert_eq!(exported, b.cli_ok(&["feed", "key", "export", "apt"]));
    assert!(exported.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    assert!(!exported.contains("PRIVATE"));
    let asc = tmp.path().join("fleet-public.asc");
    std::fs::write(&asc, &exported).unwrap();
    let keyring = tmp.path().join("fleet.gpg");
    run_ok(
        Command::new("gpg")
            .arg("--batch")
            .arg("--yes")
            .arg("-o")
            .arg(&keyring)
            .arg("--dearmor")
            .arg(&asc),
    );
    for s in [&a, &b] {
        let apt = Apt::new(&feed_url(s, "apt"), "bookworm", "main", &keyring);
        apt.update_ok();
        assert_eq!(
            std::fs::read(apt.download("demo")).unwrap(),
            std::fs::read(&demo).unwrap()
        );
    }
    // A passphrase-protected or public-only key is refused by the CLI.
    let err = a.cli(&["feed", "key", "import", "apt", asc.to_str().unwrap()]);
    assert!(!err.status.success());
}

#[test]
fn an_imported_key_that_signs_with_a_subkey_is_trusted_by_apt_and_sqv() {
    let tmp = tempfile::tempdir().unwrap();
    // As gpg makes keys by default: a primary key that only certifies,
    // and a subkey that signs.
    let gnupg = tmp.path().join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let gpg = |args: &[&str]| {
        let mut c = Command::new("gpg");
        c.arg("--batch").arg("--homedir").arg(&gnupg).args(args);
        c
    };
    run_ok(&mut gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        "Sub Signer <sub@example.com>",
        "ed25519",
        "cert",
        "never",
    ]));
    let listing =
        String::from_utf8(run_ok(&mut gpg(&["--with-colons", "--list-keys", "sub@example.com"])).stdout)
            .unwrap();
    let primary = listing
        .lines()
        .find_map(|l| l.strip_prefix("fpr:::::::::"))
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    run_ok(&mut gpg(&[
        "--passphrase",
        "",
        "--quick-add-key",
        &primary,
        "ed25519",
        "sign",
        "never",
    ]));
    let listing =
        String::from_utf8(run_ok(&mut gpg(&["--with-colons", "--list-keys", "sub@example.com"])).stdout)
            .unwrap();
    let fprs: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("fpr:::::::::"))
        .map(|f| f.trim_end_matches(':'))
        .collect();
    assert_eq!(fprs.len(), 2, "{listing}");
    let subkey = fprs[1].to_string();
    let secret = tmp.path().join("sub.asc");
    let out = run_ok(&mut gpg(&["--armor", "--export-secret-keys", "sub@example.com"]));
    std::fs::write(&secret, &out.stdout).unwrap();

    let s = Server::start();
    s.create_feed("apt", "debian");
    let said = s.cli_ok(&["feed", "key", "import", "apt", secret.to_str().unwrap()]);
    assert!(said.contains("now signs with key"), "{said}");
    let key = s.key("ci", "write");
    let demo = build_deb(tmp.path(), "demo", "1.0", "amd64", None, "demo");
    assert_eq!(upload(&s, &key, "apt", "bookworm", "main", &demo).0, 201);

    let keyring = tmp.path().join("sub.gpg");
    fetch(&format!("{}/key.gpg", feed_url(&s, "apt")), &keyring);
    let apt = Apt::new(&feed_url(&s, "apt"), "bookworm", "main", &keyring);
    apt.update_ok();
    assert_eq!(apt.candidate("demo"), "1.0");
    // sqv names the key that made the signature: the subkey.
    let (_, inrelease) = curl(&[&format!("{}/dists/bookworm/InRelease", feed_url(&s, "apt"))]);
    let out = sqv_inrelease(&String::from_utf8(inrelease).unwrap(), &keyring, tmp.path());
    assert!(
        out.status.success(),
        "sqv InRelease: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The signature was made by the subkey (its issuer is the subkey's id).
    let packets = run_ok(&mut gpg(&[
        "--list-packets",
        tmp.path().join("inrelease.sig").to_str().unwrap(),
    ]));
    let packets = String::from_utf8_lossy(&packets.stdout).to_uppercase();
    let subkey_id = &subkey[subkey.len() - 16..];
    assert!(
        packets.contains(&format!("KEYID {subkey_id}")),
        "not signed by the subkey {subkey}: {packets}"
    );
    let (release, gpg_sig) = (tmp.path().join("Release"), tmp.path().join("Release.gpg"));
    fetch(
        &format!("{}/dists/bookworm/Release", feed_url(&s, "apt")),
        &release,
    );
    fetch(
        &format!("{}/dists/bookworm/Release.gpg", feed_url(&s, "apt")),
        &gpg_sig,
    );
    let out = run_ok(
        Command::new("sqv")
            .arg("--keyring")
            .arg(&keyring)
            .arg(&gpg_sig)
            .arg(&release),
    );
    assert!(!out.stdout.is_empty());
}
