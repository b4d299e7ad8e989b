//! Peers sharing blobs: spokes at one site take their metadata from the hub
//! and their blobs from a site cache (a blob source), so the hub sends one
//! copy of each blob to the site however many spokes there are; a site
//! cache that dies mid-run leaves the spokes to fetch the rest from the hub,
//! each blob verified by its digest whoever sent it.
#![allow(clippy::unwrap_used)]
mod support;

use std::path::PathBuf;

use support::proxy::{Proxy, random_file};
use support::{Server, wait_until};

/// A spoke pulling `files` from the hub (through `hub_url`) with `token`,
/// taking blobs from the site cache first.
fn spoke(hub_url: &str, token: &str, cache: &Server, cache_token: &str, extra: &[&str]) -> Server {
    let s = Server::start();
    s.create_feed("files", "assets");
    pull_from(&s, hub_url, token, &cache.url, cache_token, extra);
    s
}

/// Creates `s`'s replication `from-hub` as [`spoke`] does.
fn pull_from(s: &Server, hub_url: &str, token: &str, cache_url: &str, cache_token: &str, extra: &[&str]) {
    let mut args = vec![
        "replication",
        "create",
        "from-hub",
        "--outgoing",
        hub_url,
        "--token",
        token,
        "--mode",
        "pull",
        "--feed",
        "files",
        "--interval",
        "3600",
        "--blob-source",
        cache_url,
        "--blob-source-token",
        cache_token,
    ];
    args.extend(extra);
    s.cli_ok(&args);
}

/// A hub with feed `files` holding three random files of `size` bytes
/// (`f/0.bin` …), and a token of its incoming push replication `edge`.
fn hub_with_three_files(dir: &std::path::Path, size: usize) -> (Server, String, Vec<(String, PathBuf)>) {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let hub_token = hub.incoming("edge", &["files"], "push");
    let files: Vec<(String, PathBuf)> = (0..3)
        .map(|i| (format!("f/{i}.bin"), random_file(dir, &format!("f{i}"), size)))
        .collect();
    hub.put_asset_files("files", &files);
    (hub, hub_token, files)
}

/// A site cache holding everything of `hub`'s feed `files`, pulled once
/// with `token`.
fn synced_cache(hub: &Server, token: &str) -> Server {
    let cache = Server::start();
    cache.create_feed("files", "assets");
    cache.outgoing(
        "from-hub",
        &["files"],
        hub,
        token,
        "pull",
        &["--interval", "3600"],
    );
    cache.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    cache
}

/// `ferry_replication_source_failures_total` of `source` on `s`, summed.
fn source_failures(s: &Server, source: &str) -> f64 {
    s.metrics()
        .lines()
        .filter(|l| {
            l.starts_with("ferry_replication_source_failures_total{")
                && l.contains(&format!("source=\"{source}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every file is served by `s` with its published bytes.
fn serves_all(s: &Server, files: &[(String, PathBuf)]) -> bool {
    files
        .iter()
        .all(|(path, file)| s.serves("files", path, &std::fs::read(file).unwrap()))
}

#[test]
fn ten_spokes_behind_a_site_cache_cost_the_hub_one_copy_and_survive_its_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let hub_token = hub.incoming("edge", &["files"], "push");
    // 24 files of 256 KiB: 6 MiB, none small enough to travel inline.
    let files: Vec<(String, PathBuf)> = (0..24)
        .map(|i| {
            (
                format!("pkg/{i:02}.bin"),
                random_file(tmp.path(), &format!("f{i}"), 256 << 10),
            )
        })
        .collect();
    let copy: u64 = files.iter().map(|(_, f)| f.metadata().unwrap().len()).sum();
    hub.put_asset_files("files", &files);
    // Everything the hub sends crosses this proxy, which counts it.
    let proxy = Proxy::start(&hub, 0, 0, &tmp.path().join("stats.json"));

    // The site cache: a spoke of the hub that serves its spokes' blobs.
    let mut cache = Server::start();
    cache.create_feed("files", "assets");
    cache.outgoing_url(
        "from-hub",
        &["files"],
        &proxy.url(),
        &hub_token,
        "pull",
        &["--interval", "3600"],
    );
    cache.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(serves_all(&cache, &files));
    let cache_token = cache.incoming("site", &["files"], "push");
    let after_cache = proxy.stats()["bytes_down"].as_u64().unwrap();
    assert!(after_cache >= copy, "the cache got {after_cache} bytes of {copy}");

    // Ten spokes: metadata from the hub, blobs from the cache.
    let spokes: Vec<Server> = (0..10)
        .map(|_| spoke(&proxy.url(), &hub_token, &cache, &cache_token, &[]))
        .collect();
    for s in &spokes {
        s.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    }
    for (i, s) in spokes.iter().enumerate() {
        assert!(serves_all(s, &files), "spoke {i} lacks files");
        s.cli_ok(&["replication", "verify", "from-hub"]);
    }
    let total = proxy.stats()["bytes_down"].as_u64().unwrap();
    let for_spokes = total - after_cache;
    assert!(
        for_spokes < copy / 4,
        "the hub sent {for_spokes} bytes to ten spokes for {copy} bytes of blobs the site cache had"
    );
    assert!(
        total < copy + copy / 2,
        "the hub sent {total} bytes in all, more than one copy ({copy}) and metadata"
    );
    // The reports say where the bytes came from.
    let executions = spokes[0].executions("from-hub");
    let sum = |field: &str| -> u64 {
        executions
            .iter()
            .map(|e| e["report"]["feeds"][0]["pulled"][field].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(
        (sum("bytes"), sum("source_bytes")),
        (copy, copy),
        "{executions:#?}"
    );
    let log = serde_json::to_string(&executions).unwrap();
    assert!(
        log.contains(&format!("{copy} bytes, {copy} of them from blob sources")),
        "{log}"
    );
    // The cache counts the spokes among its peers.
    let peers = cache.cli_json(&["replication", "peers", "site", "--json"]);
    assert_eq!(peers.as_array().map(Vec::len), Some(10), "{peers:#}");

    // Twelve more files of 1 MiB; the cache has them, three new spokes
    // (slowed by a bandwidth cap) start and the cache dies under them.
    let more: Vec<(String, PathBuf)> = (0..12)
        .map(|i| {
            (
                format!("more/{i:02}.bin"),
                random_file(tmp.path(), &format!("m{i}"), 1 << 20),
            )
        })
        .collect();
    hub.put_asset_files("files", &more);
    cache.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(serves_all(&cache, &more));
    // Each starts its first execution as it is created, capped at 1 MB/s
    // so that all three are mid-transfer when the cache dies.
    // (The instances start first, so that their replications start
    // together: a slow start must not let the first one finish meanwhile.)
    // They reach the cache through a proxy that resets its connections
    // when the cache dies: else the bytes the cache had already written
    // into its sockets' buffers (the kernel grows them to megabytes on
    // loopback) would still arrive after its death, and a spoke could get
    // every blob from a cache that is gone.
    let cache_proxy = Proxy::start(&cache, 0, 0, &tmp.path().join("cache-stats.json"));
    let cut_at = proxy.stats()["bytes_down"].as_u64().unwrap();
    let late: Vec<Server> = (0..3)
        .map(|_| {
            let s = Server::start();
            s.create_feed("files", "assets");
            s
        })
        .collect();
    for s in &late {
        pull_from(
            s,
            &proxy.url(),
            &hub_token,
            &cache_proxy.url(),
            &cache_token,
            &["--include", "more/**", "--bandwidth-limit", "1000000"],
        );
    }
    cache.kill();
    cache_proxy.cut();
    for (i, s) in late.iter().enumerate() {
        assert!(
            wait_until(90, || serves_all(s, &more)),
            "late spoke {i} did not converge without the cache"
        );
        // The execution that lost the cache says so (it may still be
        // finishing when the last file is served).
        assert!(
            wait_until(30, || {
                let log = serde_json::to_string(&s.executions("from-hub")).unwrap();
                log.contains("blob source") && log.contains("failed")
            }),
            "late spoke {i}'s log does not say the cache failed: {:#?}",
            s.executions("from-hub")
        );
        s.cli_ok(&["replication", "verify", "from-hub"]);
    }
    let from_hub = proxy.stats()["bytes_down"].as_u64().unwrap() - cut_at;
    assert!(
        from_hub > (1 << 20),
        "after the cache died the hub sent only {from_hub} bytes: the spokes did not fall back to it"
    );
}

/// A blob source that accepts connections and never answers, and one that
/// answers but may not send the blobs: neither holds the execution up,
/// both are named in its log, and the spoke converges from the hub.
#[test]
fn a_hanging_or_refusing_blob_source_is_left_out_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, hub_token, files) = hub_with_three_files(tmp.path(), 200 << 10);
    // Accepts (the kernel completes the handshake) and never answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = format!("http://{}", hanging.local_addr().unwrap());
    // A cache whose replication for the spokes does not send content.
    let cache = synced_cache(&hub, &hub_token);
    let pull_only = cache.incoming("site", &["files"], "pull");
    // A source that can never serve is refused when it is named, with why.
    let refused_spoke = Server::start();
    refused_spoke.create_feed("files", "assets");
    // `create` naming one blob source: whether it succeeded, and stderr.
    let create_with_source = |url: &str, token: &str| {
        let out = refused_spoke.cli(&[
            "replication",
            "create",
            "from-hub",
            "--outgoing",
            &hub.url,
            "--token",
            &hub_token,
            "--mode",
            "pull",
            "--feed",
            "files",
            "--blob-source",
            url,
            "--blob-source-token",
            token,
        ]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // This very instance named as a source (its own URL, with a token of
    // its own incoming replication that sends content): refused as a
    // replication to the same instance.
    let own = refused_spoke.incoming("site", &["files"], "push");
    let (ok, said) = create_with_source(&refused_spoke.url, &own);
    assert!(
        !ok && said.contains("blob source") && said.contains("same instance"),
        "{said}"
    );
    let (ok, said) = create_with_source(&cache.url, &pull_only);
    assert!(
        !ok && said.contains("blob source") && said.contains("sends no content"),
        "{said}"
    );
    // So is a URL where something answers, but not a Ferry instance's base.
    let not_ferry = format!("{}/not-a-base", cache.url);
    let (ok, said) = create_with_source(&not_ferry, &pull_only);
    assert!(
        !ok && said.contains("answered HTTP 404") && said.len() < 2000,
        "{said}"
    );
    // Only its own incoming replication is there.
    let listed = refused_spoke.cli_json(&["replication", "list", "--json"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["site"], "a refused replication was kept");
    // One that could when it was named, and refuses later (its token
    // revoked there), is left out of the run and named in its log.
    let revoked = cache.incoming("site-content", &["files"], "push");

    for (source, token, says) in [
        (hanging_url.as_str(), hub_token.as_str(), "no answer within 15 s"),
        (cache.url.as_str(), revoked.as_str(), "refused the sync token"),
    ] {
        let s = Server::start();
        s.create_feed("files", "assets");
        let out = s.cli(&[
            "replication",
            "create",
            "from-hub",
            "--outgoing",
            &hub.url,
            "--token",
            &hub_token,
            "--mode",
            "pull",
            "--feed",
            "files",
            "--interval",
            "3600",
            "--blob-source",
            source,
            "--blob-source-token",
            token,
        ]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        if source == hanging_url {
            // Created, and said: it was only in the server's log.
            assert!(
                said.contains(&format!(
                    "warning: blob source {hanging_url} could not be reached yet"
                )),
                "{said}"
            );
        }
        let mut expected = files.clone();
        if token == revoked {
            // Named while it served; then revoked there, and more published.
            assert!(wait_until(60, || serves_all(&s, &files)));
            let id = token.split('_').nth(1).unwrap();
            cache.cli_ok(&["replication", "revoke", "site-content", id]);
            let more = vec![(
                "f/later.bin".to_string(),
                random_file(tmp.path(), "later", 200 << 10),
            )];
            hub.put_asset_files("files", &more);
            cache.cli_ok(&["replication", "run", "from-hub", "--wait"]);
            expected.extend(more);
        }
        s.cli_ok(&["replication", "run", "from-hub", "--wait"]);
        assert!(
            wait_until(60, || serves_all(&s, &expected)),
            "the spoke did not converge past source {source}"
        );
        let log = serde_json::to_string(&s.executions("from-hub")).unwrap();
        assert!(log.contains("blob source") && log.contains(says), "{says}: {log}");
        // Counted too, for an alert (the log was the only sign).
        assert!(source_failures(&s, source) >= 1.0, "{source}: {}", s.metrics());
    }
    drop(hanging);
}

/// How [`hostile_source`] answers `POST …/blobs/batch`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Hostile {
    /// 500, then an endless body.
    EndlessError,
    /// 409 "same instance", as this very instance named as a source says.
    SameInstance,
    /// A frame of the first blob asked for, from another byte than asked.
    WrongOffset,
    /// A frame for every blob asked for, 16 bytes of zeros each.
    Corrupt,
    /// A frame of the first blob asked for that says 1 TiB follows, then
    /// zeros for as long as they are read (it filled the disk).
    OverLong,
    /// The real answer, 4 KiB every 500 ms: never silent for long, never
    /// done (it held the execution for as long as it trickled).
    Trickle,
}

/// Bytes of the endless frame [`Hostile::OverLong`] got written.
static OVERLONG_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A blob source in front of `target` (a real one, so it is accepted when
/// named) that answers every batch request but the first (the check made
/// when it is named) as `mode` says and forwards everything else, one
/// request per connection.
fn hostile_source(target: &str, mode: Hostile) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let target = target.trim_start_matches("http://").to_string();
    let probed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let target = target.clone();
            let probed = probed.clone();
            std::thread::spawn(move || {
                let Some((head, body)) = support::read_request(&mut c) else {
                    return;
                };
                // The first batch is the check made when the source is
                // named (one blob no feed holds): it gets the real answer.
                let batch = head.contains("/blobs/batch ");
                let probe = batch && !probed.swap(true, std::sync::atomic::Ordering::SeqCst);
                if !batch || probe || mode == Hostile::Trickle {
                    let mut up = std::net::TcpStream::connect(&target).unwrap();
                    let (line, rest) = head.split_once("\r\n").unwrap();
                    let rest: String = rest
                        .split("\r\n")
                        .filter(|h| !h.to_ascii_lowercase().starts_with("connection:"))
                        .map(|h| format!("{h}\r\n"))
                        .collect();
                    let _ = write!(
                        up,
                        "{line}\r\nconnection: close\r\n{}",
                        rest.trim_end_matches("\r\n")
                    );
                    let _ = up.write_all(b"\r\n\r\n");
                    let _ = up.write_all(&body);
                    let mut answer = Vec::new();
                    let _ = up.read_to_end(&mut answer);
                    if batch && !probe {
                        for piece in answer.chunks(4096) {
                            if c.write_all(piece).is_err() {
                                return;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(500));
                        }
                        return;
                    }
                    let _ = c.write_all(&answer);
                    return;
                }
                let asked: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let digests: Vec<String> = asked["blobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["digest"].as_str().unwrap().to_string())
                    .collect();
                let ok =
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n";
                match mode {
                    Hostile::EndlessError => {
                        let _ = c.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
                        );
                        let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                        while c.write_all(chunk.as_bytes()).is_ok() {}
                    }
                    Hostile::SameInstance => {
                        let msg = r#"{"error":"the request comes from this same instance (0123): an instance does not replicate with itself"}"#;
                        let _ = write!(
                            c,
                            "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{msg}",
                            msg.len()
                        );
                    }
                    Hostile::WrongOffset => {
                        let _ = writeln!(
                            c,
                            "{ok}{{\"digest\":\"{}\",\"offset\":7,\"length\":0}}",
                            digests[0]
                        );
                    }
                    Hostile::Corrupt => {
                        let _ = c.write_all(ok.as_bytes());
                        for d in &digests {
                            let _ = writeln!(c, "{{\"digest\":\"{d}\",\"offset\":0,\"length\":16}}");
                            let _ = c.write_all(&[0u8; 16]);
                        }
                    }
                    Hostile::OverLong => {
                        let _ = c.write_all(ok.as_bytes());
                        let _ = writeln!(
                            c,
                            "{{\"digest\":\"{}\",\"offset\":0,\"length\":{}}}",
                            digests[0],
                            1u64 << 40
                        );
                        let zeros = [0u8; 64 << 10];
                        while c.write_all(&zeros).is_ok() {
                            OVERLONG_SENT.fetch_add(zeros.len() as u64, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Hostile::Trickle => unreachable!("forwarded above"),
                }
            });
        }
    });
    url
}

/// A blob source that misbehaves in the batch itself — an error answer
/// with an endless body (it was read whole: gigabytes of memory, an
/// execution held for good), a 409 "same instance" (it failed every
/// execution), a frame from another byte than asked (that blob was fetched
/// from nowhere), bytes that do not verify (said nowhere, counted nowhere),
/// a frame longer than the blob (its endless bytes filled the disk), an
/// answer that trickles (it held the execution for as long as it lasted) —
/// is left out and named, and every blob comes from the hub, verified.
#[test]
fn a_blob_source_misbehaving_in_the_batch_is_left_out_and_the_hub_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, hub_token, files) = hub_with_three_files(tmp.path(), 300 << 10);
    let cache = synced_cache(&hub, &hub_token);
    let cache_token = cache.incoming("site", &["files"], "push");
    for mode in [
        Hostile::EndlessError,
        Hostile::SameInstance,
        Hostile::WrongOffset,
        Hostile::Corrupt,
        Hostile::OverLong,
        Hostile::Trickle,
    ] {
        let source = hostile_source(&cache.url, mode);
        let s = Server::start();
        s.create_feed("files", "assets");
        // Named with a trailing slash once: logged and counted under the
        // one name all the same.
        let named = if mode == Hostile::Corrupt {
            format!("{source}/")
        } else {
            source.clone()
        };
        pull_from(&s, &hub.url, &hub_token, &named, &cache_token, &[]);
        let started = std::time::Instant::now();
        s.cli_ok(&["replication", "run", "from-hub", "--wait"]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{mode:?}: the execution took {:?}",
            started.elapsed()
        );
        assert!(
            wait_until(30, || serves_all(&s, &files)),
            "{mode:?}: the spoke did not converge from the hub"
        );
        let log = serde_json::to_string(&s.executions("from-hub")).unwrap();
        assert!(
            log.contains(&format!("blob source {source} failed")),
            "{mode:?}: {log}"
        );
        assert!(
            source_failures(&s, &source) >= 1.0,
            "{mode:?}: no failure counted"
        );
        // Why, in the operator's words.
        let why = match mode {
            Hostile::OverLong => "it sent 1099511627776 bytes from byte 0 of blob",
            Hostile::Trickle => "bytes per second over 15 s, under the 131072 a blob source must keep",
            _ => "",
        };
        assert!(log.contains(why), "{mode:?}: {log}");
        if mode == Hostile::OverLong {
            // Refused at its header: what the source wrote is what the
            // sockets' buffers took, not a disk's worth.
            let sent = OVERLONG_SENT.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                sent < 64 << 20,
                "the spoke read {sent} bytes of the endless frame"
            );
        }
    }
}
