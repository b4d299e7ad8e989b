//! RPM feeds, in process: uploads of `.rpm`s built by the `rpm` crate,
//! the repodata dnf reads (`repomd.xml` and what it names, older
//! generations), downloads, deletes, and bad input.
#![allow(clippy::unwrap_used)]
use crate::common;

use std::io::Read;

use axum::http::StatusCode;
use common::{ADMIN, Instance};
use ferry_testkit::rpm::{Spec, rpm};
use ferry_types::FeedType;
use sha2::{Digest as _, Sha256};

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

async fn put(i: &Instance, body: Vec<u8>) -> common::Reply {
    i.send("PUT", "/rpm/yum/upload", Some(ADMIN), &[], body).await
}

async fn setup() -> Instance {
    let i = Instance::new().await;
    i.feed("yum", FeedType::Rpm, false).await;
    i
}

fn package(name: &str, version: &str, requires: &[&str], marker: &str) -> Vec<u8> {
    let path = format!("/usr/share/{name}/{marker}");
    rpm(&Spec {
        name,
        version,
        release: "1",
        arch: "noarch",
        requires,
        files: &[
            (path.as_str(), marker.as_bytes()),
            ("/usr/bin/zzzzzz", b"#!/bin/true\n"),
        ],
        build_time: 1_700_000_000,
        ..Default::default()
    })
}

/// `repomd.xml`'s `(type, href, checksum, size, open-checksum)` entries.
fn repomd_entries(repomd: &str) -> Vec<(String, String, String, u64, String)> {
    let mut out = Vec::new();
    for data in repomd.split("<data type=\"").skip(1) {
        let kind = data.split('"').next().unwrap().to_owned();
        let between = |a: &str, b: &str| data.split(a).nth(1).unwrap().split(b).next().unwrap().to_owned();
        out.push((
            kind,
            between("<location href=\"", "\""),
            between("<checksum type=\"sha256\">", "<"),
            between("<size>", "<").parse().unwrap(),
            between("<open-checksum type=\"sha256\">", "<"),
        ));
    }
    out
}

fn gunzip(b: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_string(&mut s)
        .unwrap();
    s
}

/// The uncompressed repodata file of `kind` the current `repomd.xml` names.
async fn repodata(i: &Instance, kind: &str) -> String {
    let repomd = i.get("/rpm/yum/repodata/repomd.xml").await.text();
    let (_, href, ..) = repomd_entries(&repomd).into_iter().find(|e| e.0 == kind).unwrap();
    let r = i.get(&format!("/rpm/yum/{href}")).await;
    assert_eq!(r.status, StatusCode::OK, "{href}");
    gunzip(&r.body)
}

#[tokio::test]
async fn rpm_upload_publishes_signed_repodata() {
    let i = setup().await;
    let lib = package("libdemo", "1.0", &[], "lib-marker");
    let app = package("demo", "2.0", &["libdemo"], "app-marker");
    let r = put(&i, lib.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let j = r.json();
    assert_eq!(
        (&j["name"], &j["epoch"], &j["version"], &j["release"], &j["arch"]),
        (
            &"libdemo".into(),
            &0.into(),
            &"1.0".into(),
            &"1".into(),
            &"noarch".into()
        )
    );
    assert_eq!(j["location"], "packages/libdemo/0/libdemo-1.0-1.noarch.rpm");
    assert_eq!(put(&i, app.clone()).await.status, StatusCode::CREATED);
    let tool = rpm(&Spec {
        name: "tool",
        version: "3.0",
        release: "2.el9",
        arch: "x86_64",
        epoch: 4,
        dirs: &["/var/lib/tool"],
        ghosts: &["/var/log/tool.log"],
        recommends: &["demo"],
        suggests: &["libdemo"],
        files: &[("/etc/tool.conf", b"x=1\n")],
        build_time: 1_700_000_000,
        ..Default::default()
    });
    let r = put(&i, tool).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        (&r.json()["epoch"], &r.json()["release"]),
        (&4.into(), &"2.el9".into())
    );

    // repomd.xml names three gzip files by hash, with their real sizes and checksums.
    let repomd = i.get("/rpm/yum/repodata/repomd.xml").await;
    assert_eq!(repomd.status, StatusCode::OK);
    let entries = repomd_entries(&repomd.text());
    let kinds: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(kinds, ["primary", "filelists", "other"]);
    for (kind, href, sum, size, open) in &entries {
        assert_eq!(href, &format!("repodata/{sum}-{kind}.xml.gz"));
        let body = i.get(&format!("/rpm/yum/{href}")).await;
        assert_eq!(body.status, StatusCode::OK);
        assert_eq!(
            (sha256_hex(&body.body), body.body.len() as u64),
            (sum.clone(), *size)
        );
        assert_eq!(&sha256_hex(gunzip(&body.body).as_bytes()), open);
    }
    let asc = i.get("/rpm/yum/repodata/repomd.xml.asc").await.text();
    assert!(asc.starts_with("-----BEGIN PGP SIGNATURE-----"), "{asc}");
    let key = i.get("/rpm/yum/key.asc").await.text();
    assert!(key.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"), "{key}");

    let primary = repodata(&i, "primary").await;
    assert!(primary.contains("packages=\"3\""), "{primary}");
    assert!(
        primary.contains("<version epoch=\"4\" ver=\"3.0\" rel=\"2.el9\"/>"),
        "{primary}"
    );
    assert!(
        primary.contains("<rpm:recommends>\n      <rpm:entry name=\"demo\"/>"),
        "{primary}"
    );
    assert!(
        primary.contains("<rpm:suggests>\n      <rpm:entry name=\"libdemo\"/>"),
        "{primary}"
    );
    assert!(primary.contains("<file>/etc/tool.conf</file>"), "{primary}");
    assert!(primary.contains("<name>demo</name>") && primary.contains("<name>libdemo</name>"));
    assert!(primary.contains("<rpm:entry name=\"libdemo\"/>"), "{primary}");
    assert!(primary.contains(&format!("pkgid=\"YES\">{}</checksum>", sha256_hex(&app))));
    assert!(primary.contains("<file>/usr/bin/zzzzzz</file>"), "{primary}");
    assert!(primary.contains("<location href=\"packages/demo/0/demo-2.0-1.noarch.rpm\"/>"));
    let filelists = repodata(&i, "filelists").await;
    assert!(
        filelists.contains("<file>/usr/share/demo/app-marker</file>"),
        "{filelists}"
    );
    let other = repodata(&i, "other").await;
    assert!(other.contains("- first build</changelog>"), "{other}");

    // Downloads return the uploaded bytes.
    let got = i.get("/rpm/yum/packages/demo/0/demo-2.0-1.noarch.rpm").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, app);
    assert_eq!(
        i.get("/rpm/yum/packages/demo/0/demo-9-1.noarch.rpm").await.status,
        StatusCode::NOT_FOUND
    );

    // config.repo points dnf at the feed with repo_gpgcheck.
    let repo = i
        .send(
            "GET",
            "/rpm/yum/config.repo",
            None,
            &[("host", "rpm.example:8765")],
            axum::body::Body::empty(),
        )
        .await
        .text();
    assert!(
        repo.contains("baseurl=http://rpm.example:8765/rpm/yum/\n"),
        "{repo}"
    );
    assert!(
        repo.contains("repo_gpgcheck=1\n")
            && repo.contains("gpgkey=http://rpm.example:8765/rpm/yum/key.asc\n")
    );
}

#[tokio::test]
async fn rpm_same_nevra_is_a_no_op_or_a_conflict_and_deletes_remove() {
    let i = setup().await;
    let one = package("demo", "1.0", &[], "one");
    assert_eq!(put(&i, one.clone()).await.status, StatusCode::CREATED);
    let first = i.get("/rpm/yum/repodata/repomd.xml").await.text();
    let old_primary = repomd_entries(&first)[0].1.clone();
    // The same bytes again: nothing changes.
    assert_eq!(put(&i, one.clone()).await.status, StatusCode::CREATED);
    // Other bytes under the same NEVRA: 409, and nothing is stored.
    let r = put(&i, package("demo", "1.0", &[], "two")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(
        r.text().contains("demo-0:1.0-1.noarch already exists"),
        "{}",
        r.text()
    );
    assert_eq!(i.get("/rpm/yum/repodata/repomd.xml").await.text(), first);
    assert_eq!(i.staging_files(), 0);

    // Another package: a new generation; the previous one's files stay served.
    assert_eq!(
        put(&i, package("other", "1.0", &[], "o")).await.status,
        StatusCode::CREATED
    );
    assert!(repodata(&i, "primary").await.contains("packages=\"2\""));
    assert_eq!(
        i.get(&format!("/rpm/yum/{old_primary}")).await.status,
        StatusCode::OK
    );

    let i = &i;
    let del = |path: &'static str| async move {
        i.send("DELETE", path, Some(ADMIN), &[], axum::body::Body::empty())
            .await
            .status
    };
    assert_eq!(
        del("/rpm/yum/package/demo/1.0-1/noarch").await,
        StatusCode::NO_CONTENT
    );
    let primary = repodata(i, "primary").await;
    assert!(
        primary.contains("packages=\"1\"") && !primary.contains("<name>demo</name>"),
        "{primary}"
    );
    assert_eq!(
        i.get("/rpm/yum/packages/demo/0/demo-1.0-1.noarch.rpm")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // With an explicit epoch too; a second delete finds nothing.
    assert_eq!(
        del("/rpm/yum/package/other/0:1.0-1/noarch").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        del("/rpm/yum/package/other/0:1.0-1/noarch").await,
        StatusCode::NOT_FOUND
    );
    assert!(repodata(i, "primary").await.contains("packages=\"0\""));
    let r = i.send("PUT", "/rpm/yum/upload", None, &[], one).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// `rpm` with every occurrence of `from` replaced by `to` (same length):
/// a header saying what no builder would write.
fn patched(rpm: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = rpm.to_vec();
    let mut n = 0;
    let mut at = 0;
    while let Some(p) = out[at..].windows(from.len()).position(|w| w == from) {
        out[at + p..at + p + from.len()].copy_from_slice(to);
        at += p + from.len();
        n += 1;
    }
    assert!(n > 0, "nothing to patch");
    out
}

#[tokio::test]
async fn rpm_bad_uploads_are_refused_and_store_nothing() {
    let i = setup().await;
    let good = package("zzzzzz", "1.0", &[], "m");
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (
            b"just some text, not a package".to_vec(),
            StatusCode::BAD_REQUEST,
            "not an RPM",
        ),
        (
            good[..good.len() / 2].to_vec(),
            StatusCode::BAD_REQUEST,
            "truncated",
        ),
        (good[..200].to_vec(), StatusCode::BAD_REQUEST, "truncated"),
        // The name is one path segment; so is every file-list entry.
        (
            patched(&good, b"zzzzzz\0", b"../../\0"),
            StatusCode::BAD_REQUEST,
            "package name",
        ),
        (
            patched(&good, b"/usr/share/", b"/usr/../../"),
            StatusCode::BAD_REQUEST,
            "not a plain absolute path",
        ),
    ];
    for (n, (body, status, reason)) in cases.into_iter().enumerate() {
        let r = put(&i, body).await;
        assert_eq!(r.status, status, "case {n}: {}", r.text());
        assert!(r.text().contains(reason), "case {n}: {}", r.text());
    }
    assert_eq!(i.staging_files(), 0);
    assert!(repodata(&i, "primary").await.contains("packages=\"0\""));
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("yum").unwrap())
        .await
        .unwrap();
    assert!(i.ferry.items(&feed, "").await.unwrap().is_empty());
    // The good one still goes in.
    assert_eq!(put(&i, good).await.status, StatusCode::CREATED);
}

/// Where the payload starts: after the lead, the signature header (padded
/// to 8 bytes) and the main header (the RPM file format).
fn payload_start(rpm: &[u8]) -> usize {
    let be = |at: usize| u32::from_be_bytes(rpm[at..at + 4].try_into().unwrap()) as usize;
    let main = main_header_start(rpm);
    main + 16 + be(main + 8) * 16 + be(main + 12)
}

/// Where the main header starts: after the lead and the signature header
/// (padded to 8 bytes).
fn main_header_start(rpm: &[u8]) -> usize {
    let be = |at: usize| u32::from_be_bytes(rpm[at..at + 4].try_into().unwrap()) as usize;
    let sig = 96;
    let sig_len = 16 + be(sig + 8) * 16 + be(sig + 12);
    sig + sig_len + (8 - sig_len % 8) % 8
}

#[tokio::test]
async fn rpm_corrupted_packages_are_refused_by_their_digests() {
    let i = setup().await;
    let good = package("digested", "1.0", &[], "payload-marker");
    // One byte of the compressed payload flipped, the length kept.
    let mut payload = good.clone();
    let at = payload_start(&good) + (good.len() - payload_start(&good)) / 2;
    payload[at] ^= 0x40;
    // One byte of the header's description flipped.
    let header = patched(&good, b"built by ferry's tests", b"built by ferry's tesTs");
    // The main header's first index entry pointing past its data: the
    // header no longer parses, and is still named corrupted by its digest.
    let mut index = good.clone();
    let entry = main_header_start(&good) + 16;
    index[entry + 8..entry + 12].copy_from_slice(&0x00ff_fff0u32.to_be_bytes());
    for (n, (body, reason)) in [
        (payload, "payload digest RPMTAG_PAYLOADDIGEST (SHA-256) mismatch"),
        (header, "header digest RPMSIGTAG_SHA256 (SHA-256) mismatch"),
        (index, "header digest RPMSIGTAG_SHA256 (SHA-256) mismatch"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(body.len(), good.len());
        let r = put(&i, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "case {n}: {}", r.text());
        assert!(r.text().contains(reason), "case {n}: {}", r.text());
    }
    assert_eq!(i.staging_files(), 0);
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("yum").unwrap())
        .await
        .unwrap();
    assert!(i.ferry.items(&feed, "").await.unwrap().is_empty());
    assert!(repodata(&i, "primary").await.contains("packages=\"0\""));
    // The intact package goes in.
    let r = put(&i, good).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

const BOUNDARY: &str = "ferry-rpm-bulk-boundary";

/// `POST /rpm/yum/upload` with one file part per `(file name, bytes)`.
/// A `multipart/form-data` body with one `rpm` file part per (file name,
/// bytes), and its content type.
fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let mut b = Vec::new();
    for (name, bytes) in parts {
        b.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"rpm\"; filename=\"{name}\"\r\n\
                 Content-Type: application/x-rpm\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(bytes);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), b)
}

async fn bulk(i: &Instance, parts: &[(&str, &[u8])]) -> common::Reply {
    let (ct, b) = multipart(parts);
    i.send(
        "POST",
        "/rpm/yum/upload",
        Some(ADMIN),
        &[("content-type", ct.as_str())],
        b,
    )
    .await
}

#[tokio::test]
async fn rpm_bulk_upload_is_all_or_nothing_and_names_the_bad_part() {
    let i = setup().await;
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("yum").unwrap())
        .await
        .unwrap();
    let stored = package("stored", "1.0", &[], "s");
    assert_eq!(put(&i, stored.clone()).await.status, StatusCode::CREATED);
    let (a, b) = (
        package("alpha", "1.0", &[], "a"),
        package("beta", "1.0", &["alpha"], "b"),
    );
    let mut corrupt = b.clone();
    let at = payload_start(&b) + (b.len() - payload_start(&b)) / 2;
    corrupt[at] ^= 0x40;
    let (restored, alpha2) = (
        package("stored", "1.0", &[], "t"),
        package("alpha", "1.0", &[], "z"),
    );
    type Case<'a> = (Vec<(&'a str, &'a [u8])>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("a.rpm", &a), ("b.rpm", &corrupt)],
            StatusCode::BAD_REQUEST,
            "part 2 (b.rpm): payload digest RPMTAG_PAYLOADDIGEST (SHA-256) mismatch",
        ),
        (
            vec![("a.rpm", &a), ("junk.rpm", b"not a package")],
            StatusCode::BAD_REQUEST,
            "part 2 (junk.rpm): not an RPM",
        ),
        // Other bytes under a published NEVRA.
        (
            vec![("a.rpm", &a), ("s.rpm", &restored)],
            StatusCode::CONFLICT,
            "part 2 (s.rpm): stored-0:1.0-1.noarch already exists",
        ),
        // One NEVRA twice with different bytes.
        (
            vec![("a.rpm", &a), ("a2.rpm", &alpha2)],
            StatusCode::CONFLICT,
            "part 2 (a2.rpm): alpha-0:1.0-1.noarch is in this upload twice with different content (also as part 1 (a.rpm))",
        ),
        (vec![], StatusCode::BAD_REQUEST, "the upload has no parts"),
    ];
    // Nothing of a refused batch is placed in the blob store either.
    let placed = i.blob_files();
    for (n, (parts, status, reason)) in cases.into_iter().enumerate() {
        let r = bulk(&i, &parts).await;
        assert_eq!(r.status, status, "case {n}: {}", r.text());
        assert!(r.text().contains(reason), "case {n}: {}", r.text());
        assert_eq!(i.ferry.items(&feed, "").await.unwrap().len(), 1, "case {n}");
        assert_eq!(i.staging_files(), 0, "case {n}");
        assert_eq!(i.blob_files(), placed, "case {n}");
    }

    // A good batch (the stored package again is a no-op): 201 with every part, in order.
    let r = bulk(&i, &[("a.rpm", &a), ("b.rpm", &b), ("s.rpm", &stored)]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let names: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["alpha", "beta", "stored"]);
    assert_eq!(r.json()[1]["location"], "packages/beta/0/beta-1.0-1.noarch.rpm");
    let primary = repodata(&i, "primary").await;
    assert!(primary.contains("packages=\"3\""), "{primary}");
    let got = i.get("/rpm/yum/packages/beta/0/beta-1.0-1.noarch.rpm").await;
    assert_eq!(got.body, b);
    // Unauthenticated: refused.
    let r = i
        .send("POST", "/rpm/yum/upload", None, &[], axum::body::Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// Clients publishing the same package at once all succeed (the same
/// bytes are a no-op however the uploads interleave; a trial saw 409
/// "already exists with other content"); different bytes of one NEVRA at
/// once: one wins, the others get 409.
#[tokio::test]
async fn rpm_uploads_of_one_package_at_once_agree() {
    let i = setup().await;
    for round in 0..4 {
        let same = package(&format!("race{round}"), "1.0", &[], "same");
        let puts = (0..6).map(|_| put(&i, same.clone()));
        let part = [("same.rpm", same.as_slice())];
        let bulks = (0..4).map(|_| bulk(&i, &part));
        let (puts, bulks) = futures::join!(futures::future::join_all(puts), futures::future::join_all(bulks));
        for r in puts.iter().chain(&bulks) {
            assert_eq!(r.status, StatusCode::CREATED, "round {round}: {}", r.text());
        }
        let rivals: Vec<Vec<u8>> = (0..4)
            .map(|k| package(&format!("rival{round}"), "1.0", &[], &format!("marker-{k}")))
            .collect();
        let replies = futures::future::join_all(rivals.iter().map(|b| put(&i, b.clone()))).await;
        let won = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
        assert_eq!(won, 1, "round {round}");
        for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
            assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
        }
    }
    assert!(repodata(&i, "primary").await.contains("packages=\"8\""));
    assert_eq!(i.staging_files(), 0);
}

/// An upload sent the wrong way is told the right one: a multipart body by
/// PUT, a bare package by POST. Neither stores anything.
#[tokio::test]
async fn rpm_uploads_sent_the_wrong_way_say_the_right_one() {
    let i = setup().await;
    let pkg = package("wrongway", "1.0", &[], "w");
    let (ct, body) = multipart(&[("w.rpm", &pkg)]);
    let r = i
        .send(
            "PUT",
            "/rpm/yum/upload",
            Some(ADMIN),
            &[("content-type", ct.as_str())],
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(
        r.text().contains("send it with POST (curl -F rpm=@FILE"),
        "{}",
        r.text()
    );
    let r = i
        .send(
            "POST",
            "/rpm/yum/upload",
            Some(ADMIN),
            &[("content-type", "application/x-www-form-urlencoded")],
            pkg.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("PUT it (curl -T FILE)"), "{}", r.text());
    assert_eq!(i.staging_files(), 0);
    let primary = repodata(&i, "primary").await;
    assert!(!primary.contains("wrongway"), "{primary}");
    // The same package PUT as its body is published.
    assert_eq!(put(&i, pkg).await.status, StatusCode::CREATED);
}

/// A private feed's `.repo` file says where dnf's credentials go; a public
/// one's does not mention them.
#[tokio::test]
async fn a_private_feeds_repo_file_says_where_the_credentials_go() {
    let i = setup().await;
    i.feed("secret", FeedType::Rpm, true).await;
    let host = [("host", "repo.example:8765")];
    let public = i
        .send(
            "GET",
            "/rpm/yum/config.repo",
            None,
            &host,
            axum::body::Body::empty(),
        )
        .await;
    assert_eq!(public.status, StatusCode::OK, "{}", public.text());
    assert!(!public.text().contains("password"), "{}", public.text());
    let private = i
        .send(
            "GET",
            "/rpm/secret/config.repo",
            Some(ADMIN),
            &host,
            axum::body::Body::empty(),
        )
        .await;
    assert_eq!(private.status, StatusCode::OK);
    let text = private.text();
    assert!(
        text.contains("baseurl=") && text.contains("#password=API_KEY"),
        "{text}"
    );
}

/// `repomd.xml` depends on the packages only: served again after a restart
/// it is the same bytes (its revision was the time of rendering, so every
/// restart looked like a change to every client), and its revision is the
/// newest package's upload time.
#[tokio::test]
async fn repomd_is_the_same_after_a_restart() {
    let i = setup().await;
    let r = put(&i, package("stable", "1.0", &[], "one")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let uploaded = i.get("/rpm/yum/repodata/repomd.xml").await.text();
    // Rendered again later in another second, after a restart.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let i = i.reopen().await;
    let again = i.get("/rpm/yum/repodata/repomd.xml").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.text(), uploaded, "repomd.xml changed across a restart");
    let revision: u64 = uploaded
        .split("<revision>")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {uploaded}"));
    let primary = repodata(&i, "primary").await;
    assert!(
        primary.contains(&format!("<time file=\"{revision}\"")),
        "revision {revision} is not the package's upload time: {primary}"
    );
}

/// A replicated rpm item whose metadata is consistent in itself but names
/// another package than its `.rpm` holds is refused: the repodata would
/// list it, and the feed sign that. The genuine item applies.
#[tokio::test]
async fn a_replicated_rpm_item_must_describe_its_package() {
    use ferry_store::{Change, ChangeOp};
    let i = setup().await;
    assert_eq!(
        put(&i, package("hello", "1.0", &[], "a")).await.status,
        StatusCode::CREATED
    );
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("yum").unwrap())
        .await
        .unwrap();
    let item = i.ferry.items(&feed, "rpm/").await.unwrap().remove(0);
    let forge = |key: &str, meta: serde_json::Value| Change {
        key: ferry_types::ItemKey::new(key).unwrap(),
        stamp: i.ferry.clock().stamp(),
        op: ChangeOp::Upsert {
            meta,
            blobs: item.blobs.clone(),
            created_at: None,
        },
    };
    let mut lie = item.meta.clone();
    lie["name"] = "evil2".into();
    let r = i
        .ferry
        .apply(&feed, vec![forge("rpm/evil2/0:1.0-1/noarch", lie)])
        .await;
    assert!(
        matches!(&r, Err(ferry_core::CoreError::Invalid(m)) if m.contains("headers say hello")),
        "{r:?}"
    );
    let listed = i.get("/rpm/yum/repodata/repomd.xml").await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(!repodata(&i, "primary").await.contains("evil2"));
    i.ferry
        .apply(&feed, vec![forge(item.key.as_str(), item.meta.clone())])
        .await
        .unwrap();
}

/// dnf and caches revalidate `repomd.xml`: it carries an `ETag` (its
/// SHA-256) and a `Last-Modified`, answers 304 to either validator while
/// unchanged, and a publish (within the same second too) makes it new to
/// both; packages carry their item's time; hash-named parts may be kept.
#[tokio::test]
async fn rpm_indexes_and_packages_carry_validators() {
    let i = setup().await;
    let r = put(&i, package("alpha", "1.0", &[], "a")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let first = i.get("/rpm/yum/repodata/repomd.xml").await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"sha256:{}\"", sha256_hex(&first.body)));
    let modified = first.header("last-modified").unwrap().to_owned();
    assert_eq!(first.header("cache-control"), Some("no-cache"));
    for cond in [
        ("if-none-match", etag.as_str()),
        ("if-modified-since", modified.as_str()),
    ] {
        let r = i
            .send(
                "GET",
                "/rpm/yum/repodata/repomd.xml",
                None,
                &[cond],
                axum::body::Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{cond:?}");
        assert!(r.body.is_empty());
    }
    let asc = i.get("/rpm/yum/repodata/repomd.xml.asc").await;
    assert_eq!(asc.header("last-modified"), Some(modified.as_str()));

    let r = put(&i, package("beta", "1.0", &[], "b")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    for cond in [
        ("if-none-match", etag.as_str()),
        ("if-modified-since", modified.as_str()),
    ] {
        let r = i
            .send(
                "GET",
                "/rpm/yum/repodata/repomd.xml",
                None,
                &[cond],
                axum::body::Body::empty(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{cond:?}: a publish left repomd.xml 'not modified'"
        );
        assert!(r.text().contains("primary"), "{cond:?}");
        let newer = httpdate::parse_http_date(r.header("last-modified").unwrap()).unwrap();
        assert!(newer > httpdate::parse_http_date(&modified).unwrap());
    }
    let repomd = i.get("/rpm/yum/repodata/repomd.xml").await.text();
    let (_, href, ..) = repomd_entries(&repomd)
        .into_iter()
        .find(|e| e.0 == "primary")
        .unwrap();
    let part = i.get(&format!("/rpm/yum/{href}")).await;
    assert_eq!(part.header("cache-control"), Some("max-age=86400"));
    assert!(part.header("etag").is_some());

    let pkg = i.get("/rpm/yum/packages/alpha/0/alpha-1.0-1.noarch.rpm").await;
    assert_eq!(pkg.status, StatusCode::OK);
    let lm = pkg.header("last-modified").unwrap().to_owned();
    let r = i
        .send(
            "GET",
            "/rpm/yum/packages/alpha/0/alpha-1.0-1.noarch.rpm",
            None,
            &[("if-modified-since", &lm)],
            axum::body::Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}
