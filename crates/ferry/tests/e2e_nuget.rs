//! The real `nuget` client (Debian's nuget.exe 2.8.7 on mono, which speaks
//! the v2 OData protocol as Chocolatey 1.x does) against the real binary:
//! push with an API key, list/search, install of a package with a
//! dependency, a Chocolatey-style package (`tools/chocolateyInstall.ps1`)
//! pushed and installed through the v2 feed, duplicate and keyless pushes
//! refused; then a spoke that pulled the feed serves the same, and an
//! unlist on the hub hides the package from search on the spoke. The
//! `.nupkg`s are written by the test. v3 clients (dotnet, Chocolatey 2.x)
//! do not run here: their request shapes are in `nuget_api.rs`.
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
