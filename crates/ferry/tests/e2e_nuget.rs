//! The real `nuget` client (Debian's nuget.exe 2.8.7 on mono, which speaks
//! the v2 OData protocol as Chocolatey 1.x does) against the real binary:
//! push with an API key, list/search, install of a package with a
//! dependency, a Chocolatey-style package (`tools/chocolateyInstall.ps1`)
//! pushed and installed through the v2 feed, duplicate and keyless pushes
//! refused; then a spoke that pulled the feed serves the same, and an
//! unlist on the hub hides the package from search on the spoke. The
//! `.nupkg`s are written by the test. The second test drives nuget.exe 5.8
//! (npm's `nuget-exe`, on mono) over v3 the same way. dotnet and
//! Chocolatey 2.x do not run here: their request shapes are in
//! `nuget_api.rs`.
#![allow(clippy::unwrap_used)]
mod support;

use support::nuget::{Nuget, rel};
use support::{Server, curl, wait_until};

const INSTALL_PS1: &[u8] = b"$ErrorActionPreference = 'Stop'\nWrite-Host 'Ferry.Tool installed'\n";

/// Ids (lowercase) that v3 search on `s` finds for `q`.
fn search_ids(s: &Server, feed: &str, q: &str) -> Vec<String> {
    let (status, body) = curl(&[&format!("{}/nuget/{feed}/v3/search?q={q}&prerelease=true", s.url)]);
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_ascii_lowercase())
        .collect()
}

#[test]
fn push_list_install_and_unlist_on_the_hub_and_a_spoke() {
    let hub = Server::start();
    hub.create_feed("dotnet", "nuget");
    let key = hub.key("nuget-publisher", "write");
    let client = Nuget::new(&hub, "dotnet");

    let base = client.pack(
        "Ferry.Base",
        "1.0.0",
        &[],
        &[("lib/net45/Ferry.Base.txt", b"base")],
    );
    let app = client.pack(
        "Ferry.App",
        "1.0",
        &[("Ferry.Base", "1.0.0")],
        &[("lib/net45/Ferry.App.txt", b"app")],
    );
    let tool = client.pack(
        "Ferry.Tool",
        "2.1.0",
        &[],
        &[("tools/chocolateyInstall.ps1", INSTALL_PS1)],
    );
    for p in [&base, &app, &tool] {
        let out = client.push(p, &key);
        assert!(out.contains("Your package was pushed"), "{out}");
    }
    // The same version again is a 409; a wrong key is refused (403).
    let out = client.fail(&["push", &rel(&base), "-Source", &client.source, "-ApiKey", &key]);
    assert!(out.contains("409") || out.contains("Conflict"), "{out}");
    let out = client.fail(&[
        "push",
        &rel(&base),
        "-Source",
        &client.source,
        "-ApiKey",
        "not-a-key",
    ]);
    assert!(out.contains("403") || out.contains("Forbidden"), "{out}");

    // nuget list: v2 Search() with IsLatestVersion.
    let listed = client.list("ferry", &[]);
    assert_eq!(
        listed,
        ["Ferry.App 1.0.0", "Ferry.Base 1.0.0", "Ferry.Tool 2.1.0"],
        "{listed:?}"
    );
    assert_eq!(client.list("tool", &[]), ["Ferry.Tool 2.1.0"]);

    // Install resolves the dependency through the v2 feed.
    let (dir, out) = client.install("Ferry.App", &[], "packages");
    assert!(out.contains("Successfully installed 'Ferry.App"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("Ferry.App.1.0.0/lib/net45/Ferry.App.txt")).unwrap(),
        b"app"
    );
    assert_eq!(
        std::fs::read(dir.join("Ferry.Base.1.0.0/lib/net45/Ferry.Base.txt")).unwrap(),
        b"base"
    );
    // The Chocolatey-style package, fetched by id and version as choco does.
    let (dir, _) = client.install("Ferry.Tool", &["-Version", "2.1.0"], "choco");
    assert_eq!(
        std::fs::read(dir.join("Ferry.Tool.2.1.0/tools/chocolateyInstall.ps1")).unwrap(),
        INSTALL_PS1
    );

    // A spoke pulls the feed and derives every index itself.
    let spoke = Server::start();
    spoke.create_feed("dotnet", "nuget");
    let token = hub.incoming("edges", &["dotnet"], "push");
    spoke.outgoing(
        "from-hub",
        &["dotnet"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    let out = spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(out.contains("succeeded"), "{out}");
    let edge = Nuget::new(&spoke, "dotnet");
    assert_eq!(
        edge.list("ferry", &[]),
        ["Ferry.App 1.0.0", "Ferry.Base 1.0.0", "Ferry.Tool 2.1.0"]
    );
    let (dir, _) = edge.install("Ferry.App", &[], "edge-packages");
    assert!(dir.join("Ferry.Base.1.0.0/lib/net45/Ferry.Base.txt").exists());
    let (dir, _) = edge.install("Ferry.Tool", &["-Version", "2.1.0"], "edge-choco");
    assert!(dir.join("Ferry.Tool.2.1.0/tools/chocolateyInstall.ps1").exists());

    // nuget delete unlists on the hub (DELETE with X-NuGet-ApiKey); the
    // spoke follows by itself and its search no longer shows it.
    let out = client.ok(&[
        "delete",
        "Ferry.Tool",
        "2.1.0",
        "-Source",
        &client.source,
        "-ApiKey",
        &key,
    ]);
    assert!(out.contains("Ferry.Tool 2.1.0 was deleted"), "{out}");
    assert!(
        wait_until(20, || !search_ids(&spoke, "dotnet", "ferry")
            .contains(&"ferry.tool".to_owned())),
        "the unlist did not reach the spoke"
    );
    assert_eq!(edge.list("ferry", &[]), ["Ferry.App 1.0.0", "Ferry.Base 1.0.0"]);
    // Unlisted is not deleted: an exact install still gets it.
    let (dir, _) = edge.install("Ferry.Tool", &["-Version", "2.1.0"], "edge-choco-2");
    assert!(dir.join("Ferry.Tool.2.1.0/tools/chocolateyInstall.ps1").exists());
    let out = spoke.cli_ok(&["replication", "verify", "from-hub"]);
    assert!(out.contains(": same"), "{out}");
}

#[test]
fn a_v3_client_pushes_searches_installs_and_unlists_through_a_spoke() {
    let hub = Server::start();
    hub.create_feed("net", "nuget");
    let key = hub.key("nuget-v3", "write");
    let client = Nuget::v3(&hub, "net");
    let base = client.pack("V3.Base", "1.0.0", &[], &[("lib/net45/V3.Base.txt", b"v3 base")]);
    let app = client.pack(
        "V3.App",
        "2.0.0-rc.1",
        &[("V3.Base", "1.0.0")],
        &[("lib/net45/V3.App.txt", b"v3 app")],
    );
    for p in [&base, &app] {
        let out = client.push(p, &key);
        assert!(out.contains("Your package was pushed"), "{out}");
    }
    // Search (SearchQueryService) with prereleases.
    let out = client.ok(&["search", "v3", "-Source", &client.source, "-PreRelease"]);
    assert!(
        out.contains("V3.App | 2.0.0-rc.1") && out.contains("V3.Base | 1.0.0"),
        "{out}"
    );

    // A spoke that pulled the feed installs the prerelease and its
    // dependency through registrations and the flat container.
    let spoke = Server::start();
    spoke.create_feed("net", "nuget");
    let token = hub.incoming("edges", &["net"], "push");
    spoke.outgoing(
        "from-hub",
        &["net"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    let out = spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(out.contains("succeeded"), "{out}");
    let edge = Nuget::v3(&spoke, "net");
    let (dir, out) = edge.install("V3.App", &["-PreRelease"], "pkgs");
    assert!(
        out.contains("Successfully installed 'V3.App 2.0.0-rc.1'"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(dir.join("V3.Base.1.0.0/lib/net45/V3.Base.txt")).unwrap(),
        b"v3 base"
    );

    // nuget delete over v3 (PackagePublish DELETE) unlists on the hub; the
    // spoke's search stops showing it.
    let out = client.ok(&[
        "delete",
        "V3.Base",
        "1.0.0",
        "-Source",
        &client.source,
        "-ApiKey",
        &key,
    ]);
    assert!(out.contains("V3.Base 1.0.0 was deleted"), "{out}");
    assert!(
        wait_until(20, || !search_ids(&spoke, "net", "v3")
            .contains(&"v3.base".to_owned())),
        "the unlist did not reach the spoke"
    );
    let out = edge.ok(&["search", "v3", "-Source", &edge.source, "-PreRelease"]);
    assert!(out.contains("V3.App") && !out.contains("V3.Base |"), "{out}");
}

/// A private feed with nuget.exe 2.8.7 as the README says to use it: the
/// client reads the feed before it pushes, so a push to the bare URL stops
/// at a credentials prompt, and goes through a source added with the key
/// as password. A dependency written as an interval (`[1.0,2.0)`, which
/// the push now checks) is taken and resolves through the v2 feed.
#[test]
fn a_private_feed_takes_pushes_and_installs_through_a_source_with_credentials() {
    let hub = Server::start();
    hub.cli_ok(&["feed", "create", "secret", "--type", "nuget", "--private"]);
    let key = hub.key("nuget-private", "write");
    let mut client = Nuget::new(&hub, "secret");
    let base = client.pack("Priv.Base", "1.5.0", &[], &[("lib/net45/Priv.Base.txt", b"pb")]);
    let app = client.pack(
        "Priv.App",
        "1.0.0",
        &[("Priv.Base", "[1.0,2.0)")],
        &[("lib/net45/Priv.App.txt", b"pa")],
    );
    let out = client.fail(&["push", &rel(&base), "-Source", &client.source, "-ApiKey", &key]);
    assert!(out.contains("credentials"), "{out}");
    client.ok(&[
        "sources",
        "add",
        "-Name",
        "ferry",
        "-Source",
        &client.source,
        "-Username",
        "any",
        "-Password",
        &key,
    ]);
    // From here on the client names the source, as the README says.
    client.source = "ferry".to_owned();
    for p in [&base, &app] {
        let out = client.push(p, &key);
        assert!(out.contains("Your package was pushed"), "{out}");
    }
    let listed: Vec<String> = client
        .list("priv", &[])
        .into_iter()
        .filter(|l| !l.starts_with("Using credentials"))
        .collect();
    assert_eq!(listed, ["Priv.App 1.0.0", "Priv.Base 1.5.0"]);
    let (dir, out) = client.install("Priv.App", &[], "private");
    assert!(out.contains("Successfully installed 'Priv.App"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("Priv.Base.1.5.0/lib/net45/Priv.Base.txt")).unwrap(),
        b"pb"
    );
}
