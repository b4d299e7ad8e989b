//! Stored blobs that go bad on disk: a whole-blob read verifies the bytes
//! as they stream, so a corrupt blob is never delivered as a complete
//! download; damage is taken out of service at once, remembered across
//! restarts, forgotten once nothing needs the blob, reported the same way
//! by every `fsck`, and refused by bundle exports naming what needs it.
#![allow(clippy::unwrap_used)]
mod support;

use std::path::Path;
use std::process::Command;

use support::{ADMIN, Server, curl, wait_until};

/// Flips one byte of a stored blob (same length, other bytes): in the
/// blob folder, or in the bucket's object (the second pass).
fn rot(s: &Server, digest: &str, at: usize) {
    let mut bytes = std::fs::read(s.blob_path(digest)).unwrap();
    bytes[at] ^= 0xff;
    s.damage_blob(digest, &bytes);
}

/// `curl` downloading `url` to `out` with `extra` arguments: (curl's exit
/// code, HTTP status, bytes received).
fn download(url: &str, out: &Path, extra: &[&str]) -> (i32, u16, usize) {
    let _ = std::fs::remove_file(out);
    let o = Command::new("curl")
        .args(["-s", "-o", out.to_str().unwrap(), "-w", "%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0);
    let got = std::fs::metadata(out).map_or(0, |m| m.len() as usize);
    (o.status.code().unwrap_or(-1), status, got)
}

fn health(s: &Server) -> String {
    let (st, body) = curl(&[&format!("{}/health", s.url)]);
    assert_eq!(st, 200);
    String::from_utf8_lossy(&body).into_owned()
}

fn metrics(s: &Server) -> String {
    let auth = format!("Authorization: Bearer {ADMIN}");
    let (st, body) = curl(&["-H", &auth, &format!("{}/metrics", s.url)]);
    assert_eq!(st, 200);
    String::from_utf8_lossy(&body).into_owned()
}

fn gauge(s: &Server) -> Option<u64> {
    metrics(s)
        .lines()
        .find_map(|l| l.strip_prefix("ferry_blobs_damaged "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
}

fn big(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[test]
fn a_blob_rotten_on_disk_is_never_served_as_a_complete_download() {
    let s = Server::start();
    s.create_feed("files", "assets");
    let large = big(3 << 20, 1);
    s.put_asset("files", "large.bin", &large);
    s.put_asset("files", "small.txt", b"a small file, one chunk");
    let d = s.asset_digests("files", "");
    let (large_d, small_d) = (d["large.bin"].clone(), d["small.txt"].clone());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got");

    // Intact: served whole.
    assert_eq!(
        download(&s.asset_url("files", "large.bin"), &out, &[]),
        (0, 200, large.len())
    );
    assert_eq!(std::fs::read(&out).unwrap(), large);

    // Rotten, same length: the download breaks (curl sees a partial
    // transfer, exit 18), it never completes with the wrong bytes.
    rot(&s, &large_d, 2_500_000);
    let (code, status, got) = download(&s.asset_url("files", "large.bin"), &out, &[]);
    assert_eq!((code, status), (18, 200), "the rotten blob was delivered whole");
    assert!(got < large.len(), "received {got} bytes");

    // From then on it is out of service: 500 naming the digest, health
    // and metrics say so, and the bytes are kept aside in blobs/corrupt/.
    let (st, body) = s.get_asset("files", "large.bin");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 500, "{body}");
    assert!(body.contains(&large_d) && body.contains("corrupt"), "{body}");
    let h = health(&s);
    assert!(
        h.contains("degraded") && h.contains(&format!("corrupt {large_d}")),
        "{h}"
    );
    assert_eq!(gauge(&s), Some(1));
    assert!(!s.blob_path(&large_d).exists());
    assert_eq!(s.quarantined_copies(), 1);

    // A blob of one chunk, and a range that covers the whole blob, are
    // verified as well.
    rot(&s, &small_d, 3);
    let (code, _, got) = download(&s.asset_url("files", "small.txt"), &out, &["-r", "0-"]);
    assert_ne!(code, 0, "the rotten blob was delivered whole");
    assert_eq!(got, 0, "a byte of the rotten blob went out");
    let (st, body) = s.get_asset("files", "small.txt");
    assert_eq!(st, 500, "{}", String::from_utf8_lossy(&body));
    assert_eq!(gauge(&s), Some(2));

    // A verified copy uploaded again repairs it.
    s.put_asset("files", "again.bin", &large);
    assert!(s.serves("files", "large.bin", &large));
    assert_eq!(gauge(&s), Some(1));
}

#[test]
fn a_peer_pulling_a_rotten_blob_gets_a_broken_transfer_and_the_hub_records_it() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let content = big(2 << 20, 7);
    hub.put_asset("files", "a.bin", &content);
    hub.put_asset("files", "b.txt", b"fine");
    let digest = hub.asset_digests("files", "")["a.bin"].clone();
    rot(&hub, &digest, 10);

    let spoke = Server::pulling_spoke(&hub, "files", &token);
    let out = spoke.cli(&["replication", "run", "from-hub", "--wait"]);
    assert!(!out.status.success(), "a stuck item must not look like success");
    assert!(spoke.serves("files", "b.txt", b"fine"));
    assert!(spoke.lacks("files", "a.bin"));
    // The hub found out while serving it, not at the next fsck.
    let h = health(&hub);
    assert!(h.contains(&format!("corrupt {digest}")), "{h}");
    assert_eq!(gauge(&hub), Some(1));
}

#[test]
fn the_damage_gauge_is_exported_from_the_start() {
    let s = Server::start();
    assert_eq!(gauge(&s), Some(0), "{}", metrics(&s));
    assert_eq!(health(&s).trim(), "ok");
}

#[test]
fn known_damage_survives_a_restart_until_it_is_repaired() {
    let mut s = Server::start();
    s.create_feed("files", "assets");
    let content = big(1 << 20, 3);
    s.put_asset("files", "rotten.bin", &content);
    s.put_asset("files", "lost.txt", b"this one disappears");
    let d = s.asset_digests("files", "");
    let (rotten, lost) = (d["rotten.bin"].clone(), d["lost.txt"].clone());
    rot(&s, &rotten, 100);
    s.remove_blob(&lost);
    // Found by reads.
    assert_eq!(s.get_asset("files", "lost.txt").0, 500);
    let _ = s.get_asset("files", "rotten.bin");
    assert_eq!(s.get_asset("files", "rotten.bin").0, 500);
    assert_eq!(gauge(&s), Some(2));

    s.restart();
    let h = health(&s);
    assert!(h.contains("degraded"), "{h}");
    assert!(h.contains(&format!("corrupt {rotten}")), "{h}");
    assert!(h.contains(&format!("missing {lost}")), "{h}");
    assert_eq!(gauge(&s), Some(2));
    let (st, body) = s.get_asset("files", "rotten.bin");
    let body = String::from_utf8_lossy(&body);
    assert!(
        st == 500 && body.contains(&rotten) && body.contains("corrupt"),
        "{body}"
    );

    // Repaired by uploading the right bytes again: gone, and it stays gone.
    s.put_asset("files", "rotten-again.bin", &content);
    s.put_asset("files", "lost-again.txt", b"this one disappears");
    assert_eq!(health(&s).trim(), "ok");
    s.restart();
    assert_eq!(health(&s).trim(), "ok");
    assert_eq!(gauge(&s), Some(0));
    assert!(s.serves("files", "rotten.bin", &content));
}

#[test]
fn a_second_fsck_reports_the_quarantined_blob_as_corrupt_not_missing() {
    let mut s = Server::start();
    s.create_feed("files", "assets");
    let content = big(500_000, 5);
    s.put_asset("files", "x.bin", &content);
    let digest = s.asset_digests("files", "")["x.bin"].clone();
    rot(&s, &digest, 0);
    let first = s.cli_fails(&["fsck"]);
    assert!(first.contains(&format!("corrupt {digest}")), "{first}");
    let second = s.cli_fails(&["fsck"]);
    assert!(second.contains(&format!("corrupt {digest}")), "{second}");
    assert!(!second.contains("missing"), "{second}");
    s.restart();
    let third = s.cli_fails(&["fsck"]);
    assert!(third.contains(&format!("corrupt {digest}")), "{third}");
    assert!(!third.contains("missing"), "{third}");
}

/// A blob file missing that no item references (an item deleted before the
/// collector ran; a bulk import cut by kill -9 after leasing its blobs and
/// before writing them) is not damage: `fsck` passes and lists nothing.
#[test]
fn fsck_reports_no_damage_of_blobs_nothing_references() {
    let s = Server::start();
    s.create_feed("files", "assets");
    s.put_asset("files", "gone.txt", b"deleted before its blob");
    s.put_asset("files", "keep.txt", b"fine");
    let d = s.asset_digests("files", "");
    s.delete_asset("files", "gone.txt");
    s.remove_blob(&d["gone.txt"]);
    let out = s.cli(&["fsck"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(&d["gone.txt"]), "{text}");
    assert_eq!(health(&s).trim(), "ok");
    // The same file missing while an item needs it is damage.
    s.remove_blob(&d["keep.txt"]);
    let out = s.cli_fails(&["fsck"]);
    assert!(out.contains(&format!("missing {}", d["keep.txt"])), "{out}");
}

#[test]
fn damage_nothing_needs_any_more_is_forgotten_promptly() {
    let mut s = Server::start();
    s.create_feed("files", "assets");
    s.put_asset("files", "rotten.bin", &big(300_000, 9));
    s.put_asset("files", "lost.txt", b"gone");
    s.put_asset("files", "keep.txt", b"fine");
    let d = s.asset_digests("files", "");
    rot(&s, &d["rotten.bin"], 5);
    s.remove_blob(&d["lost.txt"]);
    let out = s.cli_fails(&["fsck"]);
    assert!(out.contains("corrupt") && out.contains("missing"), "{out}");
    assert!(health(&s).contains("degraded"));

    s.delete_asset("files", "rotten.bin");
    s.delete_asset("files", "lost.txt");
    assert!(wait_until(5, || health(&s).trim() == "ok"), "{}", health(&s));
    assert_eq!(gauge(&s), Some(0));
    s.restart();
    assert_eq!(health(&s).trim(), "ok");
    assert_eq!(gauge(&s), Some(0));
    assert!(s.serves("files", "keep.txt", b"fine"));
}

#[test]
fn a_bundle_export_refuses_damaged_blobs_naming_them_and_the_items() {
    let s = Server::start();
    s.create_feed("files", "assets");
    let content = big(3 << 20, 11);
    s.put_asset("files", "rotten.bin", &content);
    s.put_asset("files", "fine.txt", b"fine");
    let d = s.asset_digests("files", "");
    let rotten = d["rotten.bin"].clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("files.bundle");
    let export = |out: &Path| {
        s.cli(&[
            "bundle",
            "export",
            "files",
            "--since",
            "0",
            "--out",
            out.to_str().unwrap(),
        ])
    };

    // Rot found while exporting: the export fails, no bundle is written.
    rot(&s, &rotten, 3_000_000);
    let o = export(&out);
    assert!(!o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(!out.exists(), "a bundle was written although a blob is corrupt");
    let partial: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert!(
        partial.is_empty(),
        "left behind: {:?}",
        partial.iter().map(|e| e.path()).collect::<Vec<_>>()
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("/health") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(health(&s).contains(&format!("corrupt {rotten}")));
    // Known damage: refused before anything is sent, naming blob and item.
    let o = export(&out);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(err.contains(&rotten) && err.contains("rotten.bin"), "{err}");
    assert!(!out.exists());

    // A missing blob, likewise.
    s.delete_asset("files", "rotten.bin");
    s.put_asset("files", "lost.txt", b"lost");
    let lost = s.asset_digests("files", "")["lost.txt"].clone();
    s.remove_blob(&lost);
    let o = export(&out);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(
        err.contains(&lost) && err.contains("lost.txt") && err.contains("missing"),
        "{err}"
    );
    assert!(!out.exists());

    // Once repaired, the bundle exports and imports whole.
    s.put_asset("files", "lost-again.txt", b"lost");
    let o = export(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let site = Server::start();
    site.create_feed("mirror", "assets");
    site.cli_ok(&["bundle", "import", "mirror", out.to_str().unwrap()]);
    assert!(site.serves("mirror", "lost.txt", b"lost"));
    assert!(site.serves("mirror", "fine.txt", b"fine"));
}

/// A part of a blob — a range, a resumed download — is never a way around
/// the check: a file not known to be right is hashed whole before a part
/// of it is served, and a rotten one answers an error naming it, never a
/// 206 with wrong bytes.
#[test]
fn a_range_of_a_rotten_blob_is_refused_not_served() {
    let s = Server::start();
    s.create_feed("files", "assets");
    let large = big(2 << 20, 7);
    s.put_asset("files", "large.bin", &large);
    let digest = s.asset_digests("files", "")["large.bin"].clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("part");
    let url = s.asset_url("files", "large.bin");

    // Intact: ranges are served (and the first one checked the file).
    let (code, status, got) = download(&url, &out, &["-r", "100-199"]);
    assert_eq!((code, status, got), (0, 206, 100));
    assert_eq!(std::fs::read(&out).unwrap(), &large[100..200]);

    // The file goes bad where the range reads.
    std::thread::sleep(std::time::Duration::from_millis(20));
    rot(&s, &digest, 150);
    let (_, status, got) = download(&url, &out, &["-r", "100-199"]);
    assert_ne!(status, 206, "a rotten part was served ({got} bytes)");
    assert!(status >= 500, "{status}");
    assert!(health(&s).contains(&digest), "{}", health(&s));
    // A resumed download is refused the same way.
    let (_, status, _) = download(&url, &out, &["-C", "1000"]);
    assert!(status >= 500, "{status}");
}
