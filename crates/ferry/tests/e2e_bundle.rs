//! Air gaps: a feed's changes exported to a bundle file and imported on an
//! instance with no network path to the source — incrementally, twice
//! without harm, and refusing corrupt or truncated bundles whole.
#![allow(clippy::unwrap_used)]
mod support;

use support::Server;

fn export(s: &Server, feed: &str, since: i64, out: &std::path::Path) -> i64 {
    let text = s.cli_ok(&[
        "bundle",
        "export",
        feed,
        "--since",
        &since.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let until = text.rsplit("--since ").next().unwrap().trim();
    until.parse().unwrap_or_else(|_| panic!("{text}"))
}

#[test]
fn bundles_carry_changes_across_an_air_gap() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    hub.put_asset("files", "big.bin", &big);
    hub.put_asset("files", "a.txt", b"a");
    hub.put_asset("files", "gone.txt", b"soon deleted");

    let site = Server::start();
    site.create_feed("mirror", "assets");
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.bundle");
    let until = export(&hub, "files", 0, &first);
    assert_eq!(until, 3);
    let out = site.cli_ok(&["bundle", "import", "mirror", first.to_str().unwrap()]);
    assert!(out.contains("3 applied"), "{out}");
    assert!(site.serves("mirror", "big.bin", &big));
    assert!(site.serves("mirror", "gone.txt", b"soon deleted"));

    // Importing the same bundle again changes nothing.
    let out = site.cli_ok(&["bundle", "import", "mirror", first.to_str().unwrap()]);
    assert!(
        out.contains("0 applied") && out.contains("3 already there"),
        "{out}"
    );

    // The next bundle carries only what changed, deletions included.
    hub.delete_asset("files", "gone.txt");
    hub.put_asset("files", "b.txt", b"b");
    let second = dir.path().join("second.bundle");
    let until2 = export(&hub, "files", until, &second);
    assert!(until2 > until);
    let size = std::fs::metadata(&second).unwrap().len();
    assert!(
        size < 100_000,
        "an incremental bundle re-sent old blobs ({size} bytes)"
    );
    let out = site.cli_ok(&["bundle", "import", "mirror", second.to_str().unwrap()]);
    assert!(out.contains("2 applied"), "{out}");
    assert!(site.lacks("mirror", "gone.txt"));
    assert!(site.serves("mirror", "b.txt", b"b"));
    // A `--since` past the last change is refused with the reason (such
    // a bundle would promise changes that do not exist), and no file is
    // left behind.
    let ahead = dir.path().join("ahead.bundle");
    let err = hub.cli_fails(&[
        "bundle",
        "export",
        "files",
        "--since",
        &(until2 + 1000).to_string(),
        "--out",
        ahead.to_str().unwrap(),
    ]);
    assert!(err.contains("past the last change"), "{err}");
    assert!(!ahead.exists(), "a refused export left {ahead:?}");
    // A negative one gets the server's reason, not a CLI parse error.
    let err = hub.cli_fails(&[
        "bundle",
        "export",
        "files",
        "--since",
        "-100",
        "--out",
        ahead.to_str().unwrap(),
    ]);
    assert!(err.contains("since") && err.contains("400"), "{err}");
    assert!(!ahead.exists(), "a refused export left {ahead:?}");
    // An older bundle imported late cannot bring the deleted item back.
    site.cli_ok(&["bundle", "import", "mirror", first.to_str().unwrap()]);
    assert!(
        site.lacks("mirror", "gone.txt"),
        "a stale bundle resurrected a deleted item"
    );

    // A corrupt blob is refused and nothing of that bundle is applied.
    let third = dir.path().join("third.bundle");
    hub.put_asset("files", "c.txt", b"cccccccccccccccccccccccc");
    export(&hub, "files", until2, &third);
    let mut bytes = std::fs::read(&third).unwrap();
    let pos = bytes.windows(8).position(|w| w == b"cccccccc").unwrap();
    bytes[pos] = b'X';
    let corrupt = dir.path().join("corrupt.bundle");
    std::fs::write(&corrupt, &bytes).unwrap();
    let err = site.cli_fails(&["bundle", "import", "mirror", corrupt.to_str().unwrap()]);
    assert!(err.contains("400") && err.contains("digest"), "{err}");
    assert!(site.lacks("mirror", "c.txt"));
    // Refused with megabytes still to send: the CLI shows the server's
    // reason, not the reset of a connection closed under it.
    bytes.extend(std::iter::repeat_n(0u8, 16 << 20));
    std::fs::write(&corrupt, &bytes).unwrap();
    let err = site.cli_fails(&["bundle", "import", "mirror", corrupt.to_str().unwrap()]);
    assert!(
        err.contains("400")
            && err.contains("digest mismatch")
            && err.contains("does not match its name")
            && err.contains("nothing of the bundle was applied")
            && !err.contains("cannot reach"),
        "{err}"
    );
    assert!(site.lacks("mirror", "c.txt"));
    // So is a truncated one.
    let truncated = dir.path().join("truncated.bundle");
    std::fs::write(&truncated, &std::fs::read(&third).unwrap()[..1200]).unwrap();
    let err = site.cli_fails(&["bundle", "import", "mirror", truncated.to_str().unwrap()]);
    assert!(err.contains("400") && err.contains("truncated"), "{err}");
    assert!(site.lacks("mirror", "c.txt"));
    // A file that is no bundle at all is named as such: short, empty,
    // another tar, or a tar header with a wrong checksum.
    let mut other_tar = std::fs::read(&third).unwrap();
    other_tar[..17].copy_from_slice(b"some-other-file.x");
    let mut bad_sum = std::fs::read(&third).unwrap();
    bad_sum[300] ^= 0x55;
    for (name, bytes) in [
        (
            "garbage",
            b"this is not a bundle
"
            .to_vec(),
        ),
        ("empty", Vec::new()),
        ("other-tar", other_tar),
        ("bad-checksum", bad_sum),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let err = site.cli_fails(&["bundle", "import", "mirror", file.to_str().unwrap()]);
        assert!(
            err.contains("400") && err.contains("is not a Ferry bundle"),
            "{name}: {err}"
        );
    }
    assert!(site.lacks("mirror", "c.txt"));
    // A directory given as the bundle is named as such.
    let err = site.cli_fails(&["bundle", "import", "mirror", dir.path().to_str().unwrap()]);
    assert!(
        err.contains("is not a file") && !err.contains("cannot reach"),
        "{err}"
    );
    // And one of another feed type.
    site.create_feed("pkgs", "npm");
    let err = site.cli_fails(&["bundle", "import", "pkgs", third.to_str().unwrap()]);
    assert!(
        err.contains("holds a feed of type assets; feed pkgs is of type npm"),
        "{err}"
    );
    // Cut or edited at an entry's boundary: without its end-of-archive
    // blocks, with its header twice, without its blob (the header's count
    // says one). Each refused whole: nothing applied, and the blob it
    // carried neither stored nor left in staging.
    let intact = std::fs::read(&third).unwrap();
    let c_blob = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(b"cccccccccccccccccccccccc")
    );
    let header_len = tar_entry_len(&intact);
    let entries_len = tar_entry_len(&intact[header_len..]);
    let blob_len = tar_entry_len(&intact[header_len + entries_len..]);
    let no_end = intact[..intact.len() - 1024].to_vec();
    let twice = [&intact[..header_len], &intact[..]].concat();
    let no_blob = [
        &intact[..header_len + entries_len],
        &intact[header_len + entries_len + blob_len..],
    ]
    .concat();
    // A later member's header edited (its checksum left as it was), cut
    // inside the first member's padding, or entries.jsonl said longer
    // than it is (its checksum made right): each named for what it is.
    let mut damaged_member = intact.clone();
    damaged_member[header_len + 140] ^= 0x01;
    let cut_in_padding = intact[..header_len - 10].to_vec();
    // Cut inside entries.jsonl; its member typed a directory (checksum
    // made right); c.txt's entry pointed at b.txt's blob, which the site
    // has (the carried blob then needed by nothing).
    let cut_in_entries = intact[..header_len + 520].to_vec();
    let mut typed_dir = intact.clone();
    typed_dir[header_len + 156] = b'5';
    fix_checksum(&mut typed_dir[header_len..header_len + 512]);
    let b_blob = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(b"b"));
    let mut repointed = intact.clone();
    let at = header_len
        + 512
        + repointed[header_len + 512..]
            .windows(c_blob.len())
            .position(|w| w == c_blob.as_bytes())
            .unwrap();
    repointed[at..at + c_blob.len()].copy_from_slice(b_blob.as_bytes());
    let mut entries_longer = intact.clone();
    {
        let h = &mut entries_longer[header_len..header_len + 512];
        let size = tar_entry_len(h) - 512 + 2048;
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        fix_checksum(h);
    }
    for (name, bytes, says) in [
        ("no-end", no_end, "end-of-archive"),
        ("header-twice", twice, "ferry-bundle.json twice"),
        ("no-blob", no_blob, "carries 0 blobs, its header says 1"),
        (
            "damaged-member-header",
            damaged_member,
            "the tar header of \"entries.jsonl\" is damaged",
        ),
        ("cut-in-padding", cut_in_padding, "the bundle is truncated"),
        (
            "entries-longer",
            entries_longer,
            "as its tar header says) is not an entry",
        ),
        ("cut-in-entries", cut_in_entries, "the bundle is truncated"),
        (
            "typed-dir",
            typed_dir,
            "member \"entries.jsonl\" is not a regular file",
        ),
        ("repointed", repointed, "which none of its entries needs"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let err = site.cli_fails(&["bundle", "import", "mirror", file.to_str().unwrap()]);
        assert!(err.contains("400") && err.contains(says), "{name}: {err}");
        assert!(site.lacks("mirror", "c.txt"), "{name}");
        assert!(
            !site.blob_path(&c_blob).exists(),
            "{name}: the refused bundle's blob was stored"
        );
        let staged = staged_files(&site.staging_dir());
        assert!(staged.is_empty(), "{name}: left in staging: {staged:?}");
    }
    // The intact bundle goes in.
    site.cli_ok(&["bundle", "import", "mirror", third.to_str().unwrap()]);
    assert!(site.serves("mirror", "c.txt", b"cccccccccccccccccccccccc"));
}

/// Writes the ustar checksum of header block `h` (its bytes summed with
/// the checksum field as spaces, six octal digits, NUL, space).
fn fix_checksum(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// The length of the tar entry `b` begins with: its header block and its
/// data padded to whole blocks (the size is octal at bytes 124..136).
fn tar_entry_len(b: &[u8]) -> usize {
    let field = std::str::from_utf8(&b[124..136]).unwrap();
    let size = usize::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap();
    512 + size.div_ceil(512) * 512
}

/// The staged files under a staging folder (on a bucket it holds a
/// folder per node, and the nodes' locks under `.nodes/`, kept).
fn staged_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .flat_map(|e| {
            let path = e.path();
            if e.file_name() == ".nodes" {
                Vec::new()
            } else if path.is_dir() {
                staged_files(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// An entry refused by the checks replication makes (here its metadata,
/// edited within the same length so the tar stays whole) refuses the
/// bundle whole, wherever it sits: the entries before it are not applied
/// (they were, 500 at a time, before the refusal).
#[test]
fn one_refused_entry_past_the_first_five_hundred_refuses_the_bundle_whole() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let items: Vec<(String, String)> = (0..600)
        .map(|i| (format!("c/{i:04}"), format!("item {i}")))
        .collect();
    hub.put_assets("files", &items);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("all.bundle");
    export(&hub, "files", 0, &bundle);
    let mut bytes = std::fs::read(&bundle).unwrap();
    // The 551st entry's content type gets a control character (BEL, as
    // its JSON escape) in place of its first six characters.
    let key = bytes.windows(8).position(|w| w == b"\"c/0550\"").unwrap();
    let field = b"\"content_type\":\"";
    let at = key
        + bytes[key..]
            .windows(field.len())
            .position(|w| w == field)
            .unwrap()
        + field.len();
    bytes[at..at + 6].copy_from_slice(b"\\u0007");
    let edited = dir.path().join("edited.bundle");
    std::fs::write(&edited, &bytes).unwrap();

    let site = Server::start();
    site.create_feed("files", "assets");
    let err = site.cli_fails(&["bundle", "import", "files", edited.to_str().unwrap()]);
    assert!(
        err.contains("400") && err.contains("c/0550") && err.contains("nothing of the bundle was applied"),
        "{err}"
    );
    assert!(site.lacks("files", "c/0000"), "the first entries were applied");
    assert!(site.lacks("files", "c/0599"));
    // The bundle as exported goes in whole.
    let out = site.cli_ok(&["bundle", "import", "files", bundle.to_str().unwrap()]);
    assert!(out.contains("600 applied"), "{out}");
    assert!(site.serves("files", "c/0550", b"item 550"));
}

/// A bundle whose tombstones would delete more than the delete guard
/// allows (over 10% and over 100 of the feed's items) is refused whole,
/// as a replication's execution stops, until the import confirms it; one
/// within the guard goes through as before.
#[test]
fn a_bundle_that_mass_deletes_is_refused_until_confirmed() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let items: Vec<(String, String)> = (0..150)
        .map(|i| (format!("d/{i:03}"), format!("item {i}")))
        .collect();
    hub.put_assets("files", &items);
    let site = Server::start();
    site.create_feed("mirror", "assets");
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.bundle");
    let until = export(&hub, "files", 0, &first);
    site.cli_ok(&["bundle", "import", "mirror", first.to_str().unwrap()]);
    assert!(site.serves("mirror", "d/000", b"item 0"));

    // 120 of 150 deleted on the hub, and one new item written.
    let gone: Vec<String> = (0..120).map(|i| format!("d/{i:03}")).collect();
    hub.delete_assets("files", &gone);
    hub.put_asset("files", "d/new", b"a new item");
    let second = dir.path().join("second.bundle");
    export(&hub, "files", until, &second);
    let err = site.cli_fails(&["bundle", "import", "mirror", second.to_str().unwrap()]);
    assert!(
        err.contains("409")
            && err.contains("would delete 120 of the 150 items")
            && err.contains("--confirm-deletes"),
        "{err}"
    );
    // Nothing of it applied: neither the deletions nor the new item, and
    // its blob not left in staging.
    assert!(site.serves("mirror", "d/000", b"item 0"));
    assert!(site.serves("mirror", "d/119", b"item 119"));
    assert!(site.lacks("mirror", "d/new"));
    let staged = staged_files(&site.staging_dir());
    assert!(staged.is_empty(), "left in staging: {staged:?}");

    let out = site.cli_ok(&[
        "bundle",
        "import",
        "mirror",
        second.to_str().unwrap(),
        "--confirm-deletes",
    ]);
    assert!(out.contains("121 applied (120 deleting an item)"), "{out}");
    assert!(site.lacks("mirror", "d/000"));
    assert!(site.lacks("mirror", "d/119"));
    assert!(site.serves("mirror", "d/120", b"item 120"));
    assert!(site.serves("mirror", "d/new", b"a new item"));

    // Within the guard (100 items at most, or 10% at most): no
    // confirmation needed. 31 live here; 20 deleted is over 10% but not
    // over 100 items. (This bundle holds every change from the start:
    // the deletions applied before are already there.)
    let fewer: Vec<String> = (120..140).map(|i| format!("d/{i:03}")).collect();
    hub.delete_assets("files", &fewer);
    let third = dir.path().join("third.bundle");
    export(&hub, "files", 0, &third);
    let out = site.cli_ok(&["bundle", "import", "mirror", third.to_str().unwrap()]);
    assert!(out.contains("(20 deleting an item)"), "{out}");
    assert!(site.lacks("mirror", "d/139"));
    assert!(site.serves("mirror", "d/140", b"item 140"));
}

/// A bundle entry stamped far ahead of this instance's clock refuses the
/// bundle whole, saying what to do about a bundle (import it again once
/// the clocks agree), not what a replication would do (retry it).
#[test]
fn a_bundle_stamped_from_a_clock_far_ahead_is_refused_whole() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    hub.put_asset("files", "a.txt", b"a");
    hub.put_asset("files", "b.txt", b"b");
    let site = Server::start();
    site.create_feed("mirror", "assets");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.bundle");
    export(&hub, "files", 0, &file);
    let mut bytes = std::fs::read(&file).unwrap();
    // The last entry's stamp: its leading digit raised (same length, so
    // the tar stays whole), centuries ahead.
    let at = bytes.windows(8).rposition(|w| w == b"\"time\":1").unwrap() + 7;
    bytes[at] = b'9';
    std::fs::write(&file, &bytes).unwrap();
    let err = site.cli_fails(&["bundle", "import", "mirror", file.to_str().unwrap()]);
    assert!(
        err.contains("400")
            && err.contains("ahead of this instance's clock")
            && err.contains("import it again once the clocks agree")
            && !err.contains("retried"),
        "{err}"
    );
    assert!(site.lacks("mirror", "a.txt"));
    assert!(site.lacks("mirror", "b.txt"));
}

/// A mass deletion carried in several small bundles is stopped too: the
/// deletions of bundles imported within the hour count together.
#[test]
fn a_mass_deletion_split_across_bundles_is_stopped_too() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let items: Vec<(String, String)> = (0..200)
        .map(|i| (format!("s/{i:03}"), format!("item {i}")))
        .collect();
    hub.put_assets("files", &items);
    let site = Server::start();
    site.create_feed("mirror", "assets");
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.bundle");
    let mut until = export(&hub, "files", 0, &all);
    site.cli_ok(&["bundle", "import", "mirror", all.to_str().unwrap()]);

    let mut bundles = Vec::new();
    for (n, range) in [(1, 0..75), (2, 75..150)] {
        let gone: Vec<String> = range.map(|i| format!("s/{i:03}")).collect();
        hub.delete_assets("files", &gone);
        let file = dir.path().join(format!("part{n}.bundle"));
        until = export(&hub, "files", until, &file);
        bundles.push(file);
    }
    let out = site.cli_ok(&["bundle", "import", "mirror", bundles[0].to_str().unwrap()]);
    assert!(out.contains("(75 deleting an item)"), "{out}");
    let err = site.cli_fails(&["bundle", "import", "mirror", bundles[1].to_str().unwrap()]);
    assert!(
        err.contains("409")
            && err.contains("would delete 75 of the 125 items")
            && err.contains("75 deleted by bundles imported in the last hour already"),
        "{err}"
    );
    assert!(site.serves("mirror", "s/100", b"item 100"));
    site.cli_ok(&[
        "bundle",
        "import",
        "mirror",
        bundles[1].to_str().unwrap(),
        "--confirm-deletes",
    ]);
    assert!(site.lacks("mirror", "s/100"));
    assert!(site.serves("mirror", "s/150", b"item 150"));
}
