//! The registry token flow end to end: the real `ferry` binary challenges
//! `/v2/` with `Bearer realm=".../v2/token",service="ferry"`, and the real
//! `skopeo` with `--creds user:KEY` gets tokens there and copies images in
//! and out of a private feed with them (issue 9, item 3).
#![allow(clippy::unwrap_used)]
mod support;

use std::process::Command;

use support::oci::{Image, Layout, Skopeo, layer};
use support::{ADMIN, Server, curl};

/// What skopeo says when a registry turns it away.
fn refused(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    ["unauthorized", "denied", "authentication required", "401", "403"]
        .iter()
        .any(|w| s.contains(w))
}

/// The response headers of `GET URL` (lowercase).
fn headers(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

/// Requests the token endpoint answered with `status`, from /metrics.
fn token_requests(s: &Server, status: u16) -> u64 {
    let (st, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        &format!("{}/metrics", s.url),
    ]);
    assert_eq!(st, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("ferry_http_requests_total")
                && l.contains("route=\"/v2/token\"")
                && l.contains(&format!("status=\"{status}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn skopeo_copies_in_and_out_of_a_private_feed_through_the_token_flow() {
    let s = Server::start();
    s.cli_ok(&["feed", "create", "internal", "--type", "oci", "--private"]);
    let writer = s
        .cli_ok(&[
            "key",
            "create",
            "ci",
            "--permission",
            "write",
            "--feed",
            "internal",
        ])
        .trim()
        .to_owned();
    let reader = s
        .cli_ok(&[
            "key",
            "create",
            "viewer",
            "--permission",
            "read",
            "--feed",
            "internal",
        ])
        .trim()
        .to_owned();

    // The challenge names the token endpoint on the address the client used.
    let h = headers(&format!("{}/v2/", s.url));
    let realm = format!(
        "www-authenticate: bearer realm=\"http://{}/v2/token\",service=\"ferry\"",
        s.addr
    );
    assert!(h.contains(&realm), "{h}");
    // Anonymous tokens grant nothing on a private feed; a wrong key none at all.
    let (st, body) = curl(&[&format!(
        "{}/v2/token?service=ferry&scope=repository:internal/svc:pull",
        s.url
    )]);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let (st, _) = curl(&[
        "-u",
        "me:wrong",
        &format!(
            "{}/v2/token?service=ferry&scope=repository:internal/svc:pull",
            s.url
        ),
    ]);
    assert_eq!(st, 401);

    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let img = Image::new(vec![layer(150_000), layer(30_000)], "amd64");
    src.add_image("v1", &img);
    let sk = Skopeo::new();
    let repo = format!("{}/internal/svc", s.addr);
    let reference = format!("{repo}:v1");

    let before = token_requests(&s, 200);
    // In: skopeo copy --dest-creds user:KEY, through tokens.
    sk.push_ok(&src, "v1", &reference, &writer);
    // Out: --src-creds with a read key; byte-identical.
    sk.pull_ok(&reference, &tmp.path().join("out"), "v1", Some(&reader))
        .assert_holds("v1", &img.manifest, &img.blobs());
    assert!(sk.inspect(&reference, true, Some(&reader), &[]).unwrap() == img.manifest.bytes);
    assert_eq!(sk.tags(&repo, Some(&reader)).unwrap(), ["v1"]);
    let after = token_requests(&s, 200);
    assert!(
        after >= before + 3,
        "skopeo did not use the token endpoint: {before} → {after}"
    );

    // A read key's token pulls only: its push is denied.
    let out = sk.push(&src, "v1", &format!("{repo}:v2"), Some(&reader));
    assert!(!out.status.success(), "a read key pushed");
    assert!(
        refused(&String::from_utf8_lossy(&out.stderr)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Anonymous: nothing.
    let o = sk.pull(&reference, &tmp.path().join("anon"), "v1", None);
    assert!(
        !o.status.success(),
        "an anonymous pull from a private feed succeeded"
    );
    // A wrong key: refused at the token endpoint.
    let e = sk
        .inspect(&reference, true, Some("ferry_wrong"), &[])
        .unwrap_err();
    assert!(refused(&e), "{e}");
    assert!(token_requests(&s, 401) >= 1);

    // Basic auth sent up front keeps working (curl -u).
    let (st, body) = curl(&[
        "-u",
        &format!("any:{reader}"),
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("{}/v2/internal/svc/manifests/v1", s.url),
    ]);
    assert_eq!(st, 200);
    assert_eq!(body, img.manifest.bytes);
}
