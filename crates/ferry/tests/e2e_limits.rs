//! End to end: what slow, silent or numerous clients can hold. Stalled
//! headers, idle keep-alive connections and stalled bodies are cut after
//! their timeouts; a connection flood neither exhausts descriptors nor
//! keeps `/health` from answering; uploads that keep moving and long polls
//! are never cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const CAP: usize = 32;
const OVERFLOW: usize = 32;

/// An instance with a cap of 32 connections and 2 s header, 3 s keep-alive
/// and 2 s body timeouts.
fn limited() -> Server {
    Server::start_with(&[
        ("FERRY_MAX_CONNECTIONS", "32"),
        ("FERRY_HEADER_READ_TIMEOUT_SECS", "2"),
        ("FERRY_KEEP_ALIVE_TIMEOUT_SECS", "3"),
        ("FERRY_BODY_TIMEOUT_SECS", "2"),
    ])
}

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(&s.addr).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

/// Reads until the server closes the connection (EOF or reset), for at
/// most `max`; returns what was read and when it closed (`None`: still open).
fn until_closed(c: &mut TcpStream, max: Duration) -> (Vec<u8>, Option<Instant>) {
    let deadline = Instant::now() + max;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, None);
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return (got, Some(Instant::now())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return (got, None),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (got, Some(Instant::now())), // reset
        }
    }
}

/// Reads one response head (through the blank line), lower-cased.
fn read_head(c: &mut TcpStream, max: Duration) -> Option<String> {
    c.set_read_timeout(Some(max)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).to_ascii_lowercase())
}

/// Reads one response head (through the blank line) and returns its status.
fn read_status(c: &mut TcpStream, max: Duration) -> Option<u16> {
    read_head(c, max)?.split_whitespace().nth(1)?.parse().ok()
}

/// `GET /health` on a new connection: status and how long it took.
fn health(s: &Server) -> (Option<u16>, Duration) {
    let start = Instant::now();
    let Ok(mut c) = TcpStream::connect_timeout(&s.addr.parse().unwrap(), Duration::from_secs(2)) else {
        return (None, start.elapsed());
    };
    if c.write_all(b"GET /health HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return (None, start.elapsed());
    }
    let status = read_status(&mut c, Duration::from_secs(3));
    (status, start.elapsed())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn a_flood_of_stalled_connections_neither_exhausts_descriptors_nor_blocks_health() {
    let s = limited();
    // The reproduction of the fault: at 128 descriptors, 300 connections
    // that never finish their request line used to leave `accept` failing
    // (EMFILE) and `/health` unanswered until they went away, which was never.
    run_ok(Command::new("prlimit").args(["--pid", &s.pid().to_string(), "--nofile=128:128"]));
    let baseline = open_fds(s.pid());
    let opened = Instant::now();
    let addr = s.addr.parse().unwrap();
    let mut flood: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connection {i} of the flood: {e}"));
            c.write_all(b"GET /health HT").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let during = open_fds(s.pid());
    assert!(
        during <= baseline + CAP + OVERFLOW + 4,
        "{during} descriptors open during the flood ({baseline} before, cap {CAP})"
    );
    for _ in 0..3 {
        let (status, took) = health(&s);
        assert_eq!(status, Some(200), "/health during the flood");
        assert!(
            took < Duration::from_secs(1),
            "/health took {took:?} during the flood"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Each stalled connection is closed: past the cap at once, the rest
    // after the 2 s header timeout.
    let mut still_open = 0;
    for c in &mut flood {
        let left = (opened + Duration::from_secs(5)).saturating_duration_since(Instant::now());
        if until_closed(c, left).1.is_none() {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "stalled connections still open 5 s after they stalled"
    );
    assert!(
        wait_until(3, || open_fds(s.pid()) <= baseline + 2),
        "descriptors not released: {} open, {baseline} before",
        open_fds(s.pid())
    );
    assert_eq!(health(&s).0, Some(200));
}

#[test]
fn header_and_keep_alive_timeouts_close_connections() {
    let s = limited();
    let addr = s.addr.clone();
    let timed = |f: fn(TcpStream) -> Duration| {
        let c = TcpStream::connect(&addr).unwrap();
        std::thread::spawn(move || f(c))
    };
    // Half a request line, then nothing: closed after the header timeout.
    let half_line = timed(|mut c| {
        c.write_all(b"GET /hea").unwrap();
        let start = Instant::now();
        let (_, closed) = until_closed(&mut c, Duration::from_secs(8));
        closed.expect("a stalled request line was never cut") - start
    });
    // Nothing at all.
    let silent = timed(|mut c| {
        let start = Instant::now();
        let (_, closed) = until_closed(&mut c, Duration::from_secs(8));
        closed.expect("a silent connection was never cut") - start
    });
    // One request, then idle: closed after the keep-alive timeout (3 s),
    // not the header timeout (2 s).
    let idle = timed(|mut c| {
        c.write_all(b"GET /health HTTP/1.1\r\nHost: ferry\r\n\r\n")
            .unwrap();
        assert_eq!(read_status(&mut c, Duration::from_secs(3)), Some(200));
        let start = Instant::now();
        let (_, closed) = until_closed(&mut c, Duration::from_secs(8));
        closed.expect("an idle kept-alive connection was never cut") - start
    });
    // One request, then a second one's headers start and stall: the header
    // timeout runs from their first byte.
    let second = timed(|mut c| {
        c.write_all(b"GET /health HTTP/1.1\r\nHost: ferry\r\n\r\n")
            .unwrap();
        assert_eq!(read_status(&mut c, Duration::from_secs(3)), Some(200));
        std::thread::sleep(Duration::from_millis(2500));
        c.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
        let start = Instant::now();
        let (_, closed) = until_closed(&mut c, Duration::from_secs(8));
        closed.expect("stalled second headers were never cut") - start
    });
    let within = |what: &str, took: Duration, lo: f64, hi: f64| {
        let secs = took.as_secs_f64();
        assert!(
            (lo..=hi).contains(&secs),
            "{what}: closed after {secs:.2} s, expected {lo}..{hi} s"
        );
    };
    within("half a request line", half_line.join().unwrap(), 1.5, 4.0);
    within("a silent connection", silent.join().unwrap(), 1.5, 4.0);
    within("an idle kept-alive connection", idle.join().unwrap(), 2.6, 5.0);
    within("stalled second headers", second.join().unwrap(), 1.5, 3.0);
}

#[test]
fn uploads_that_keep_moving_pass_and_stalled_bodies_are_cut() {
    let s = limited();
    s.create_feed("files", "assets");
    let auth = format!("Authorization: Bearer {ADMIN}");

    // 6 chunks a second apart: 6 s in all, three times the body timeout,
    // but never idle for longer than 1 s.
    let slow = {
        let mut c = connect(&s);
        let auth = auth.clone();
        std::thread::spawn(move || {
            let chunk = [b'x'; 1000];
            let head = format!(
                "PUT /assets/files/slow.bin HTTP/1.1\r\nHost: ferry\r\n{auth}\r\nContent-Length: 6000\r\n\r\n"
            );
            c.write_all(head.as_bytes()).unwrap();
            let start = Instant::now();
            for _ in 0..6 {
                std::thread::sleep(Duration::from_millis(1000));
                c.write_all(&chunk).unwrap();
            }
            (read_status(&mut c, Duration::from_secs(5)), start.elapsed())
        })
    };

    // A body that stops after 100 of 1000 bytes: 408 after about 2 s.
    let mut c = connect(&s);
    let head = format!(
        "PUT /assets/files/stalled.bin HTTP/1.1\r\nHost: ferry\r\n{auth}\r\nContent-Length: 1000\r\n\r\n"
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&[b'y'; 100]).unwrap();
    let start = Instant::now();
    let head = read_head(&mut c, Duration::from_secs(8)).unwrap_or_default();
    let took = start.elapsed();
    let status: Option<u16> = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    assert_eq!(status, Some(408), "a stalled body is answered 408");
    // Made by the listener, not the router: the same security headers.
    assert!(
        head.contains("x-content-type-options: nosniff")
            && head.contains("content-security-policy: default-src 'none'; sandbox"),
        "the 408 lacks the security headers:\n{head}"
    );
    assert!(
        (1.5..=4.0).contains(&took.as_secs_f64()),
        "408 after {took:?}, expected about 2 s"
    );
    assert!(
        until_closed(&mut c, Duration::from_secs(2)).1.is_some(),
        "the connection closes after the 408"
    );
    assert!(
        s.lacks("files", "stalled.bin"),
        "nothing of the stalled upload is stored"
    );
    // Counted as the 408 the client got, not as the 400 the handler made
    // of the broken body.
    let text = metrics_text(&s);
    let series = |status: u16| {
        format!(
            "ferry_http_requests_total{{method=\"PUT\",route=\"/assets/{{feed}}/{{*path}}\",status=\"{status}\"}}"
        )
    };
    assert!(text.contains(&series(408)), "no 408 counted: {text}");
    assert!(
        !text.contains(&series(400)),
        "the stalled upload counted as 400: {text}"
    );

    let (status, took) = slow.join().unwrap();
    assert_eq!(status, Some(201), "a slow upload that keeps moving succeeds");
    assert!(took >= Duration::from_secs(6), "{took:?}");
    assert!(s.serves("files", "slow.bin", &[b'x'; 6000]));

    // A client that stops reading a download: the server gives up on it
    // after the body timeout instead of holding the connection for ever.
    let big = vec![b'z'; 32 << 20];
    s.put_asset("files", "big.bin", &big);
    let mut c = connect(&s);
    c.write_all(b"GET /assets/files/big.bin HTTP/1.1\r\nHost: ferry\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let (got, closed) = until_closed(&mut c, Duration::from_secs(5));
    assert!(closed.is_some(), "the stalled download's connection stays open");
    assert!(
        got.len() < big.len(),
        "the whole download was sent although the client stopped reading"
    );
}

#[test]
fn long_polls_outlive_every_timeout_and_health_answers_while_every_connection_is_busy() {
    let s = Server::start_with(&[
        ("FERRY_MAX_CONNECTIONS", "2"),
        ("FERRY_HEADER_READ_TIMEOUT_SECS", "2"),
        ("FERRY_KEEP_ALIVE_TIMEOUT_SECS", "3"),
        ("FERRY_BODY_TIMEOUT_SECS", "2"),
    ]);
    s.create_feed("files", "assets");
    let token = s.incoming("edges", &["files"], "push");
    // Two long polls fill the cap of 2. wait=6: longer than the header
    // (2 s), body (2 s) and keep-alive (3 s) timeouts. The feed is empty, so
    // each answers when its wait ends.
    let req = format!(
        "GET /api/replication/v1/feeds/files/changes?since=0&wait=6 HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let start = Instant::now();
    let mut polls: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = connect(&s);
            c.write_all(req.as_bytes()).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // Every connection is busy with a request: /health still answers, and
    // anything else is refused at once with a 503 to retry.
    let (status, took) = health(&s);
    assert_eq!(status, Some(200), "/health while every connection is busy");
    assert!(took < Duration::from_secs(1), "/health took {took:?}");
    let mut c = connect(&s);
    c.write_all(b"GET /api/v1/feeds HTTP/1.1\r\nHost: ferry\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_status(&mut c, Duration::from_secs(2)),
        Some(503),
        "past the cap, requests other than health checks are refused"
    );

    for c in &mut polls {
        assert_eq!(
            read_status(c, Duration::from_secs(12)),
            Some(200),
            "the long poll answers normally"
        );
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(5500),
        "the long polls ended early: {took:?}"
    );
    assert_eq!(health(&s).0, Some(200));
}

/// A request head past the limits (too many header fields, or too many
/// bytes of headers) is answered 431 with a plain-text reason and the
/// security headers every answer carries — not hyper's bare 431.
#[test]
fn oversized_request_heads_are_refused_with_a_reason_and_the_security_headers() {
    let s = Server::start();
    let many: String = (0..150).map(|i| format!("X-Many-{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(300 * 1024));
    for (extra, says) in [
        (many, "151 header fields, at most 100"),
        (big, "KiB of request line and headers"),
    ] {
        let mut c = connect(&s);
        c.write_all(format!("GET /health HTTP/1.1\r\nHost: ferry\r\n{extra}\r\n").as_bytes())
            .unwrap();
        let (got, _) = until_closed(&mut c, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 431"), "{text}");
        assert!(text.contains("\r\ndate: "), "no Date: {text}");
        assert!(text.contains("x-content-type-options: nosniff"), "{text}");
        assert!(
            text.contains("content-security-policy: default-src 'none'; sandbox"),
            "{text}"
        );
        assert!(text.contains("content-type: text/plain"), "{text}");
        assert!(text.contains(&says.to_ascii_lowercase()), "{text}");
    }
    // Within the limits: served.
    let mut c = connect(&s);
    let fine: String = (0..90).map(|i| format!("X-Some-{i}: v\r\n")).collect();
    c.write_all(format!("GET /health HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n{fine}\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_status(&mut c, Duration::from_secs(5)), Some(200));
    // Both refusals are counted: the one hyper could not parse (past its
    // field limit), the one past our byte limit before routing.
    let text = metrics_text(&s);
    for series in [
        "ferry_http_requests_total{method=\"OTHER\",route=\"unparsed\",status=\"431\"} 1",
        "ferry_http_requests_total{method=\"GET\",route=\"unrouted\",status=\"431\"} 1",
    ] {
        assert!(text.contains(series), "no {series:?} in {text}");
    }
}

/// The instance's `/metrics` text.
fn metrics_text(s: &Server) -> String {
    let mut c = connect(s);
    c.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (got, _) = until_closed(&mut c, Duration::from_secs(10));
    String::from_utf8_lossy(&got).into_owned()
}

/// What a refusal written on the connection must carry: the status, a
/// plain-text reason, the security headers; then the connection closes.
fn assert_refusal(got: &[u8], status: u16, says: &str, what: &str) {
    let text = String::from_utf8_lossy(got).to_ascii_lowercase();
    assert!(
        text.starts_with(&format!("http/1.1 {status} ")),
        "{what}: {text:?}"
    );
    assert!(
        text.contains("content-type: text/plain; charset=utf-8"),
        "{what}: {text:?}"
    );
    assert!(
        text.contains("x-content-type-options: nosniff"),
        "{what}: {text:?}"
    );
    assert!(text.contains("\r\ndate: "), "{what}: no Date: {text:?}");
    assert!(
        text.contains("content-security-policy: default-src 'none'; sandbox"),
        "{what}: {text:?}"
    );
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(
        body.contains(&says.to_ascii_lowercase()),
        "{what}: {body:?} lacks {says:?}"
    );
}

/// An HTTP/1.1 request without a Host field is a 400 with the reason
/// (RFC 9112 §3.2); HTTP/1.0 has no such rule and is served.
#[test]
fn an_http_1_1_request_without_host_is_refused() {
    let s = Server::start();
    let mut c = connect(&s);
    c.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    let (got, closed) = until_closed(&mut c, Duration::from_secs(10));
    assert!(closed.is_some(), "the connection stays open");
    assert_refusal(&got, 400, "no host header field", "no Host");
    let mut c = connect(&s);
    c.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let (got, _) = until_closed(&mut c, Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.0 200"),
        "{got:?}"
    );
}

/// A client that opens with HTTP/2's connection preface (prior knowledge,
/// h2c) reads only HTTP/2 frames: it gets the server's SETTINGS and a
/// GOAWAY with `HTTP_1_1_REQUIRED` (RFC 9113 §7, code 0xd) and a reason,
/// then the connection closes (it got nothing and waited for the close).
/// curl's `--http2-prior-knowledge` reports that code.
#[test]
fn an_http2_preface_is_told_in_http2_to_use_http_1_1() {
    let s = Server::start();
    let mut c = connect(&s);
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let (got, closed) = until_closed(&mut c, Duration::from_secs(10));
    assert!(closed.is_some(), "the connection stays open");
    // SETTINGS: empty, on stream 0.
    assert_eq!(got.get(..9), Some(&[0, 0, 0, 4, 0, 0, 0, 0, 0][..]), "{got:?}");
    // GOAWAY: its length, type 7, stream 0; last stream 0, error 0xd.
    let goaway = &got[9..];
    assert!(goaway.len() >= 17, "{got:?}");
    let len = usize::from(goaway[1]) << 8 | usize::from(goaway[2]);
    assert_eq!(&goaway[3..9], &[7, 0, 0, 0, 0, 0], "{got:?}");
    assert_eq!(goaway.len(), 9 + len, "{got:?}");
    assert_eq!(&goaway[9..17], &[0, 0, 0, 0, 0, 0, 0, 0xd], "{got:?}");
    let reason = String::from_utf8_lossy(&goaway[17..]);
    assert!(reason.contains("HTTP/1.1"), "{reason:?}");
    // The server goes on serving HTTP/1.1.
    let mut c = connect(&s);
    c.write_all(b"GET /health HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, _) = until_closed(&mut c, Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{got:?}"
    );
}

/// Requests hyper cannot parse never reach the router; hyper's own bare
/// answer (a status, nothing else) is replaced by the same status with a
/// plain-text reason and the security headers — on a new connection, after
/// a request on a kept-alive one, and pipelined behind one.
#[test]
fn requests_that_cannot_be_parsed_get_a_reason_and_the_security_headers() {
    let s = Server::start();
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: ferry\r\n\r\n", "a".repeat(70 * 1024));
    let huge_head = format!(
        "GET /health HTTP/1.1\r\nHost: ferry\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2 << 20)
    );
    let fields: String = (0..500).map(|i| format!("X-F{i}: v\r\n")).collect();
    let many_fields = format!("GET /health HTTP/1.1\r\nHost: ferry\r\n{fields}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "header line without a colon",
            b"GET /health HTTP/1.1\r\nHost: ferry\r\nNo colon here\r\n\r\n".to_vec(),
            400,
            "bad request: invalid http header parsed",
        ),
        (
            "header name with a control byte",
            b"GET /health HTTP/1.1\r\nHost: ferry\r\nX-B\x01d: v\r\n\r\n".to_vec(),
            400,
            "invalid http header parsed",
        ),
        (
            "method that is not a token",
            b"G(T /health HTTP/1.1\r\nHost: ferry\r\n\r\n".to_vec(),
            400,
            "invalid http method parsed",
        ),
        (
            "garbage request line",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n".to_vec(),
            400,
            "bad request:",
        ),
        (
            "request target with a control byte",
            b"GET /he\x7falth HTTP/1.1\r\nHost: ferry\r\n\r\n".to_vec(),
            400,
            "bad request:",
        ),
        (
            "unknown HTTP version",
            b"GET /health HTTP/7.3\r\nHost: ferry\r\n\r\n".to_vec(),
            400,
            "invalid http version parsed",
        ),
        (
            "unparseable Content-Length",
            b"POST /api/v1/feeds HTTP/1.1\r\nHost: ferry\r\nContent-Length: 12abc\r\n\r\n".to_vec(),
            400,
            "invalid content-length parsed",
        ),
        (
            "two different Content-Lengths",
            b"POST /api/v1/feeds HTTP/1.1\r\nHost: ferry\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            400,
            "invalid content-length parsed",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST /api/v1/feeds HTTP/1.1\r\nHost: ferry\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                .to_vec(),
            400,
            "transfer-encoding",
        ),
        (
            "request target past 64 KiB",
            long_uri.into_bytes(),
            414,
            "uri too long",
        ),
        (
            "head past hyper's own size limit",
            huge_head.into_bytes(),
            431,
            "at most 256 kib and 100 header fields are accepted",
        ),
        (
            "head past hyper's own field limit",
            many_fields.into_bytes(),
            431,
            "501 header fields, at most 100 are accepted",
        ),
    ];
    for (what, request, status, says) in &cases {
        let mut c = connect(&s);
        // The client may still be writing when the server answers and
        // closes (an oversized head): the answer is read all the same.
        let _ = c.write_all(request);
        let (got, closed) = until_closed(&mut c, Duration::from_secs(10));
        assert!(closed.is_some(), "{what}: the connection stays open");
        assert_refusal(&got, *status, says, what);
    }

    // After a request on a kept-alive connection.
    let mut c = connect(&s);
    c.write_all(b"GET /health HTTP/1.1\r\nHost: ferry\r\n\r\n")
        .unwrap();
    let head = read_head(&mut c, Duration::from_secs(5)).unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    c.read_exact(&mut body).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: ferry\r\nBroken\r\n\r\n")
        .unwrap();
    let (got, closed) = until_closed(&mut c, Duration::from_secs(5));
    assert!(closed.is_some());
    assert_refusal(
        &got,
        400,
        "invalid http header parsed",
        "after a kept-alive request",
    );

    // Pipelined behind a good request: its answer, then the refusal.
    let mut c = connect(&s);
    c.write_all(
        b"GET /health HTTP/1.1\r\nHost: ferry\r\n\r\nGET /health HTTP/1.1\r\nHost: ferry\r\nBroken\r\n\r\n",
    )
    .unwrap();
    let (got, closed) = until_closed(&mut c, Duration::from_secs(5));
    assert!(closed.is_some());
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let second = text
        .find("http/1.1 400")
        .unwrap_or_else(|| panic!("no refusal: {text}"));
    assert_refusal(&got[second..], 400, "invalid http header parsed", "pipelined");

    // And the server goes on serving.
    let (status, _) = health(&s);
    assert_eq!(status, Some(200));

    // Each refusal is counted, as every routed request is: 9 + 2 400s
    // (the cases, after a kept-alive request, pipelined), one 414, two 431s.
    let text = metrics_text(&s);
    for (status, n) in [(400, 11), (414, 1), (431, 2)] {
        let series = format!(
            "ferry_http_requests_total{{method=\"OTHER\",route=\"unparsed\",status=\"{status}\"}} {n}"
        );
        assert!(text.contains(&series), "no {series:?} in {text}");
    }
}

/// A body in a transfer coding other than `chunked` (gzip, deflate, …) is
/// 501 with the reason (RFC 9112 §6.1), never stored as the content;
/// `chunked` alone is served as always.
#[test]
fn a_transfer_coding_other_than_chunked_is_501_and_stores_nothing() {
    let s = Server::start();
    s.create_feed("files", "assets");
    for coding in ["gzip, chunked", "deflate,chunked", "x-custom, chunked"] {
        let mut c = connect(&s);
        let head = format!(
            "PUT /assets/files/coded.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
             Transfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        c.write_all(head.as_bytes()).unwrap();
        let (got, _) = until_closed(&mut c, Duration::from_secs(10));
        assert_refusal(&got, 501, "is not supported", coding);
        assert!(s.lacks("files", "coded.txt"), "{coding}: stored");
    }
    // Chunked twice is forbidden (RFC 9112 §6.1): parsers would disagree
    // on the body.
    for twice in ["chunked, chunked", "chunked,chunked"] {
        let mut c = connect(&s);
        let head = format!(
            "PUT /assets/files/twice.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
             Transfer-Encoding: {twice}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        c.write_all(head.as_bytes()).unwrap();
        let (got, _) = until_closed(&mut c, Duration::from_secs(10));
        assert_refusal(&got, 400, "chunked more than once", twice);
        assert!(s.lacks("files", "twice.txt"), "{twice}: stored");
    }
    let mut c = connect(&s);
    let head = format!(
        "PUT /assets/files/plain.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    c.write_all(head.as_bytes()).unwrap();
    let (got, _) = until_closed(&mut c, Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 201"),
        "{got:?}"
    );
    assert!(s.serves("files", "plain.txt", b"hello"));
}

/// What the server loop answers before routing reads like every other
/// refusal on that path: JSON under the management API and npm, plain
/// text on plain-text feeds.
#[test]
fn refusals_before_routing_use_the_paths_error_shape() {
    let s = Server::start();
    for (target, json) in [
        ("/api/v1/feeds", true),
        ("/npm/pkgs/left-pad", true),
        ("/assets/files/a.txt", false),
    ] {
        let mut c = connect(&s);
        let head =
            format!("PUT {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
        c.write_all(head.as_bytes()).unwrap();
        let (got, _) = until_closed(&mut c, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&got).to_string();
        assert!(text.starts_with("HTTP/1.1 501 "), "{target}: {text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if json {
            assert!(
                text.to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{target}: {text}"
            );
            let v: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"));
            assert!(
                v["error"].as_str().unwrap().contains("is not supported"),
                "{target}: {body}"
            );
        } else {
            assert!(
                text.to_ascii_lowercase().contains("content-type: text/plain"),
                "{target}: {text}"
            );
            assert!(body.contains("is not supported"), "{target}: {body}");
        }
    }
}

/// A request refused before its body is read (wrong key, unknown feed, a
/// head past its limits, no Host) is answered, and the rest of its body
/// is read and dropped: a client that sends its whole body before reading
/// the answer (the `ferry` CLI, reqwest, hyper) can send it all and then
/// reads the reason, instead of a reset ("broken pipe") that hides it.
#[test]
fn a_request_refused_before_its_body_is_read_still_gets_its_reason_across() {
    let s = Server::start();
    s.create_feed("files", "assets");
    let body = vec![b'x'; 24 << 20];
    let many: String = (0..120).map(|i| format!("X-Many-{i}: v\r\n")).collect();
    let len = body.len();
    for (head, status, says) in [
        (
            format!(
                "PUT /assets/files/a.bin HTTP/1.1\r\nHost: f\r\nAuthorization: Bearer wrong\r\nContent-Length: {len}\r\n\r\n"
            ),
            401,
            "invalid api key",
        ),
        (
            format!(
                "PUT /assets/nosuch/a.bin HTTP/1.1\r\nHost: f\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: {len}\r\n\r\n"
            ),
            404,
            "feed nosuch not found",
        ),
        (
            format!(
                "PUT /assets/files/a.bin HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: {len}\r\n\r\n"
            ),
            400,
            "no host header field",
        ),
        (
            format!("PUT /assets/files/a.bin HTTP/1.1\r\nHost: f\r\n{many}Content-Length: {len}\r\n\r\n"),
            431,
            "122 header fields, at most 100",
        ),
    ] {
        let mut c = connect(&s);
        c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        let sent = c.write_all(&body);
        assert!(
            sent.is_ok(),
            "{status}: the body could not be sent in full ({sent:?}): the server closed under it"
        );
        // (Routed refusals keep the connection open: read by length.)
        let head = read_head(&mut c, Duration::from_secs(10)).unwrap_or_default();
        assert!(head.starts_with(&format!("http/1.1 {status} ")), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{status}: no length: {head}"));
        let mut text = vec![0u8; length];
        c.read_exact(&mut text).unwrap();
        let text = String::from_utf8_lossy(&text).to_ascii_lowercase();
        assert!(text.contains(says), "{status}: {text}");
        if !head.contains("connection: close") {
            // The body was read to its end: the connection serves the next
            // request.
            c.write_all(b"GET /health HTTP/1.1\r\nHost: f\r\n\r\n").unwrap();
            assert_eq!(
                read_status(&mut c, Duration::from_secs(10)),
                Some(200),
                "{status}"
            );
        }
    }
    assert!(s.lacks("files", "a.bin"));
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Uploads that trickle and downloads that are not read hold no thread of
/// the server's blocking pool, and each slow download little memory: with
/// the pool cut to 8 threads, 24 of each leave every other request served
/// at once (a writer held its thread for a whole upload, a reader its
/// thread for a whole download, so about 520 slow transfers stalled every
/// file and database access of a default server; and a slow reader held
/// up to 6 MiB of read-ahead).
#[test]
fn slow_uploads_and_downloads_hold_no_blocking_thread_and_little_memory() {
    let s = Server::start_with(&[("FERRY_BLOCKING_THREADS", "8"), ("FERRY_BODY_TIMEOUT_SECS", "60")]);
    s.create_feed("files", "assets");
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    s.put_asset("files", "big.bin", &big);
    s.put_asset("files", "small.txt", b"small");
    let auth = format!("Authorization: Bearer {ADMIN}");
    let before = rss_kib(s.pid());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut held = Vec::new();
    for i in 0..24 {
        // An upload of 1 MB that sends 100 bytes every half second.
        let mut up = connect(&s);
        let head = format!(
            "PUT /assets/files/up{i}.bin HTTP/1.1\r\nHost: ferry\r\n{auth}\r\nContent-Length: 1000000\r\n\r\n"
        );
        up.write_all(head.as_bytes()).unwrap();
        let stop_up = stop.clone();
        held.push(std::thread::spawn(move || {
            while !stop_up.load(std::sync::atomic::Ordering::SeqCst) {
                if up.write_all(&[b'u'; 100]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }));
        // A download of the 16 MiB file whose client reads nothing.
        let mut down = connect(&s);
        down.write_all(b"GET /assets/files/big.bin HTTP/1.1\r\nHost: ferry\r\n\r\n")
            .unwrap();
        let stop_down = stop.clone();
        held.push(std::thread::spawn(move || {
            while !stop_down.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(down);
        }));
    }
    std::thread::sleep(Duration::from_secs(3));

    // Every other request is served at once: reads, a write, the API.
    let timed = |args: &[&str]| {
        let start = Instant::now();
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout).to_string(), start.elapsed())
    };
    for (what, args) in [
        (
            "a small download",
            vec![format!("{}/assets/files/small.txt", s.url)],
        ),
        (
            "a small upload",
            vec![
                "-T".into(),
                "/dev/null".into(),
                "-H".into(),
                auth.clone(),
                format!("{}/assets/files/new.txt", s.url),
            ],
        ),
        (
            "the feed list",
            vec!["-H".into(), auth.clone(), format!("{}/api/v1/feeds", s.url)],
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, took) = timed(&args);
        assert!(
            status.starts_with('2') && took < Duration::from_secs(5),
            "{what} beside 24 slow uploads and 24 slow downloads: HTTP {status} after {took:?}"
        );
    }
    let grown_mib = rss_kib(s.pid()).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "24 slow downloads and uploads grew the server by {grown_mib} MiB"
    );

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for h in held {
        h.join().unwrap();
    }
    // Nothing of the unfinished uploads is served.
    for i in 0..24 {
        assert!(s.lacks("files", &format!("up{i}.bin")));
    }
    assert!(s.serves("files", "big.bin", &big));
}
