//! The web UI in process: sign-in and sign-out, the session cookie's
//! flags, CSRF refusals, what a read-only key is offered and refused,
//! escaping of hostile names, and the session cap; the replication
//! wizard and edit form (blob sources, refusals in plain words, typed
//! tokens never sent back), plans in the CLI's binary units.
#![allow(clippy::unwrap_used)]

use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance, Reply};
use ferry_store::Permission;
use ferry_types::FeedType;

const HOST: &str = "ferry.test";
const ORIGIN: &str = "http://ferry.test";

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                k,
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The session cookie's `name=value` from a sign-in reply.
fn session_cookie(r: &Reply) -> String {
    let set = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie: {}", r.text()));
    set.split(';').next().unwrap().to_string()
}

async fn sign_in(i: &Instance, key: &str) -> Reply {
    i.send(
        "POST",
        "/login",
        None,
        &[
            ("host", HOST),
            ("origin", ORIGIN),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        form(&[("key", key)]),
    )
    .await
}

async fn session(i: &Instance, key: &str) -> String {
    let r = sign_in(i, key).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    session_cookie(&r)
}

async fn page(i: &Instance, cookie: &str, path: &str) -> Reply {
    i.send(
        "GET",
        path,
        None,
        &[("host", HOST), ("cookie", cookie)],
        Body::empty(),
    )
    .await
}

/// The CSRF token a page carries in its forms.
fn csrf_of(page: &Reply) -> String {
    let text = page.text();
    let at = text
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &text[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

async fn post(
    i: &Instance,
    cookie: &str,
    path: &str,
    origin: Option<&str>,
    fields: &[(&str, &str)],
) -> Reply {
    let mut headers = vec![
        ("host", HOST),
        ("cookie", cookie),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    if let Some(o) = origin {
        headers.push(("origin", o));
    }
    i.send("POST", path, None, &headers, form(fields)).await
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_the_session() {
    let i = Instance::new().await;
    let r = sign_in(&i, ADMIN).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), Some("/"));
    let set = r.header("set-cookie").unwrap();
    assert!(set.starts_with("ferry_session_"), "{set}");
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag: {set}");
    let cookie = session_cookie(&r);

    let home = page(&i, &cookie, "/").await;
    assert_eq!(home.status, StatusCode::OK);
    let csp = home.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(home.text().contains("No replications yet"), "{}", home.text());
    assert!(home.text().contains("Configure New Replication"));

    let csrf = csrf_of(&home);
    let out = post(&i, &cookie, "/logout", Some(ORIGIN), &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    // The old cookie no longer signs anyone in.
    let after = page(&i, &cookie, "/").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.header("location"), Some("/login"));
}

#[tokio::test]
async fn cookie_is_secure_behind_tls_and_a_wrong_key_is_refused() {
    let i = Instance::new().await;
    let r = i
        .send(
            "POST",
            "/login",
            None,
            &[
                ("host", HOST),
                ("origin", "https://ferry.test"),
                ("x-forwarded-proto", "https"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form(&[("key", ADMIN)]),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert!(r.header("set-cookie").unwrap().contains("; Secure"));

    let bad = sign_in(&i, "not-a-key").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.header("set-cookie").is_none());
    assert!(bad.text().contains("That API key is not known here"));
    // No session: pages send the browser to sign in.
    let r = i
        .send("GET", "/feeds", None, &[("host", HOST)], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), Some("/login"));
}

#[tokio::test]
async fn posts_from_another_origin_or_without_the_token_are_refused() {
    let i = Instance::new().await;
    let cookie = session(&i, ADMIN).await;
    let csrf = csrf_of(&page(&i, &cookie, "/feeds").await);
    let fields = |name: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("name", name.to_string()),
            ("type", "assets".into()),
        ]
    };
    let as_refs =
        |v: &Vec<(&'static str, String)>| v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();

    // A foreign Origin, even with the right token.
    let f = as_refs(&fields("evil1"));
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = post(&i, &cookie, "/feeds", Some("http://attacker.example"), &f).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.text().contains("not sent from a page of this Ferry instance"));
    // No Origin and no Referer.
    let r = post(&i, &cookie, "/feeds", None, &f).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The right Origin without the token, and with another session's token.
    let r = post(
        &i,
        &cookie,
        "/feeds",
        Some(ORIGIN),
        &[("name", "evil2"), ("type", "assets")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("security token"));
    let other = session(&i, ADMIN).await;
    let other_csrf = csrf_of(&page(&i, &other, "/feeds").await);
    let r = post(
        &i,
        &cookie,
        "/feeds",
        Some(ORIGIN),
        &[("csrf", &other_csrf), ("name", "evil3"), ("type", "assets")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Sign-in from another origin is refused too.
    let r = i
        .send(
            "POST",
            "/login",
            None,
            &[
                ("host", HOST),
                ("origin", "http://attacker.example"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form(&[("key", ADMIN)]),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        i.ferry.feeds().await.unwrap().is_empty(),
        "no refused form created a feed"
    );

    // The same form from this instance's page works.
    let r = post(
        &i,
        &cookie,
        "/feeds",
        Some(ORIGIN),
        &[("csrf", &csrf), ("name", "good"), ("type", "assets")],
    )
    .await;
    // POST/redirect/GET: to the new feed's page, which says it was created.
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.header("location"), Some("/feeds/good?created=1"));
    let shown = page(&i, &cookie, "/feeds/good?created=1").await.text();
    assert!(
        shown.contains("Feed <strong>good</strong> (assets) created"),
        "{shown}"
    );
    assert!(shown.contains("/assets/good/PATH"), "client hint: {shown}");
    // A Referer of this instance stands in for a missing Origin.
    let r = i
        .send(
            "POST",
            "/feeds",
            None,
            &[
                ("host", HOST),
                ("cookie", &cookie),
                ("referer", "http://ferry.test/feeds"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form(&[("csrf", &csrf), ("name", "good2"), ("type", "npm")]),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(i.ferry.feeds().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_read_only_key_is_offered_no_write_action_and_refused_when_it_forces_one() {
    let i = Instance::new().await;
    i.feed("docs", FeedType::Assets, false).await;
    let read = i.key("reader", Permission::Read, Some(&["docs"])).await;
    let r = sign_in(&i, &read).await;
    assert_eq!(r.header("location"), Some("/feeds"));
    let cookie = session_cookie(&r);

    let feeds = page(&i, &cookie, "/feeds").await;
    assert_eq!(feeds.status, StatusCode::OK);
    let text = feeds.text();
    assert!(text.contains("docs"));
    for offered in [
        "Create a feed",
        "Delete…",
        "/replications/new",
        "href=\"/keys\"",
        "Run now",
    ] {
        assert!(!text.contains(offered), "a read key is offered {offered:?}");
    }
    let browse = page(&i, &cookie, "/feeds/docs").await;
    assert_eq!(browse.status, StatusCode::OK);
    assert!(!browse.text().contains("Delete"));

    // Forced: every write is refused by the management API's rule.
    let csrf = csrf_of(&feeds);
    let r = post(
        &i,
        &cookie,
        "/feeds",
        Some(ORIGIN),
        &[("csrf", &csrf), ("name", "x"), ("type", "assets")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = post(
        &i,
        &cookie,
        "/feeds/docs/delete",
        Some(ORIGIN),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(
        &i,
        &cookie,
        "/keys",
        Some(ORIGIN),
        &[("csrf", &csrf), ("name", "k"), ("permission", "admin")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(
        &i,
        &cookie,
        "/diagnostics/level",
        Some(ORIGIN),
        &[("csrf", &csrf), ("level", "debug")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for path in ["/keys", "/diagnostics", "/replications/new", "/executions"] {
        assert_eq!(
            page(&i, &cookie, path).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert_eq!(i.ferry.feeds().await.unwrap().len(), 1);
    assert_eq!(i.ferry.keys().await.unwrap().len(), 2);

    // A private feed it may not read is as missing as on the feed protocols.
    i.feed("secret", FeedType::Assets, true).await;
    assert!(!page(&i, &cookie, "/feeds").await.text().contains("secret"));
    assert_eq!(
        page(&i, &cookie, "/feeds/secret").await.status,
        StatusCode::NOT_FOUND
    );

    // A deleted key signs its sessions out.
    i.ferry.delete_key("reader").await.unwrap();
    assert_eq!(page(&i, &cookie, "/feeds").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn hostile_names_are_escaped_everywhere() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let hostile = "<script>alert(1)</script>";
    i.key(hostile, Permission::Admin, None).await;
    let r = i
        .send(
            "PUT",
            "/assets/files/a%3Cscript%3Ealert(2)%3C%2Fscript%3E.txt",
            Some(ADMIN),
            &[],
            "hello",
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text());
    let cookie = session(&i, ADMIN).await;
    for path in [
        "/keys",
        "/feeds",
        "/feeds/files",
        "/feeds/files/item?key=a%3Cscript%3Ealert(2)%3C%2Fscript%3E.txt",
        "/feeds/files?prefix=%3Cscript%3E",
    ] {
        let r = page(&i, &cookie, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let text = r.text();
        assert!(
            !text.contains("<script>"),
            "{path} carries an unescaped <script>: {text}"
        );
    }
    assert!(
        page(&i, &cookie, "/keys")
            .await
            .text()
            .contains("&lt;script&gt;alert(1)")
    );
    // Signed in with the hostile key: its name in the header is escaped too.
    let secret = i.key("x\"><script>", Permission::Admin, None).await;
    let c2 = session(&i, &secret).await;
    assert!(!page(&i, &c2, "/").await.text().contains("<script>"));
}

#[tokio::test]
async fn sessions_are_capped_and_the_oldest_ends_first() {
    // Per key: its own oldest session ends.
    let i = Instance::new().await;
    let first = session(&i, ADMIN).await;
    let mut last = String::new();
    for _ in 0..ferry_server::ui::MAX_SESSIONS_PER_KEY {
        last = session(&i, ADMIN).await;
    }
    assert_eq!(page(&i, &last, "/").await.status, StatusCode::OK);
    let r = page(&i, &first, "/").await;
    assert_eq!(
        r.status,
        StatusCode::SEE_OTHER,
        "the key's oldest session was ended at its cap"
    );
    // The login page it leads to says why.
    let to = r.header("location").unwrap().to_string();
    let login = page(&i, &first, &to).await.text();
    assert!(
        login.contains("Signed out: this key signed in elsewhere more than 20 times"),
        "{to}: {login}"
    );
    // A session that was never there (or signed out) gets no such words.
    let r = page(&i, "ferry_session=nope", "/").await;
    let to = r.header("location").unwrap().to_string();
    assert!(!page(&i, "", &to).await.text().contains("Signed out:"));
    // Another key signing in over and over never ends the admin's session.
    let reader = i.key("reader", Permission::Read, None).await;
    for _ in 0..(ferry_server::ui::MAX_SESSIONS_PER_KEY * 3) {
        sign_in(&i, &reader).await;
    }
    assert_eq!(page(&i, &last, "/").await.status, StatusCode::OK);
    // At the instance's cap, signing in is refused; nobody is signed out.
    let per_key = ferry_server::ui::MAX_SESSIONS_PER_KEY;
    let keys_needed = ferry_server::ui::MAX_SESSIONS / per_key;
    for k in 0..keys_needed {
        let key = i.key(&format!("k{k}"), Permission::Read, None).await;
        for _ in 0..per_key {
            sign_in(&i, &key).await;
        }
    }
    let late = i.key("late", Permission::Read, None).await;
    let r = sign_in(&i, &late).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(page(&i, &last, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn assets_are_served_with_cache_headers_and_pages_need_no_inline_script() {
    let i = Instance::new().await;
    let css = i.get("/ui/assets/ferry.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    assert!(css.header("cache-control").unwrap().contains("max-age"));
    let js = i.get("/ui/assets/ferry.js").await;
    assert!(js.header("content-type").unwrap().starts_with("text/javascript"));
    assert_eq!(i.get("/ui/assets/nope.js").await.status, StatusCode::NOT_FOUND);
    let login = i.get("/login").await;
    assert_eq!(login.status, StatusCode::OK);
    let text = login.text();
    assert!(!text.contains("<script>") && text.contains("<script src=\"/ui/assets/ferry.js\""));
    // The API is unchanged: still JSON, still its own auth.
    let r = i.send("GET", "/api/v1/feeds", None, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_replication_is_edited_through_the_same_update_as_the_api() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.incoming("edge", &["files"], "push").await;
    let cookie = session(&i, ADMIN).await;
    let form_page = page(&i, &cookie, "/replications/edge/edit").await;
    assert_eq!(form_page.status, StatusCode::OK, "{}", form_page.text());
    let csrf = csrf_of(&form_page);
    let r = post(
        &i,
        &cookie,
        "/replications/edge/edit",
        Some(ORIGIN),
        &[
            ("csrf", &csrf),
            ("include", "docs/**\nbin/*"),
            ("exclude", ""),
            ("bandwidth", "5000"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let api = i
        .send(
            "GET",
            "/api/v1/replications/edge",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    let cfg = &api.json()["config"];
    assert_eq!(cfg["include"], serde_json::json!(["docs/**", "bin/*"]));
    assert_eq!(cfg["bandwidth_limit"], 5000);
    // A bad number is said in plain words, and nothing changes.
    let r = post(
        &i,
        &cookie,
        "/replications/edge/edit",
        Some(ORIGIN),
        &[("csrf", &csrf), ("include", ""), ("bandwidth", "lots")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("The bandwidth cap must be a whole number"));
    let api = i
        .send(
            "GET",
            "/api/v1/replications/edge",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(api.json()["config"]["bandwidth_limit"], 5000);

    // The detail page offers a new token; it is shown once with the values for the other side.
    let detail = page(&i, &cookie, "/replications/edge").await;
    assert!(detail.text().contains("New sync token"));
    let r = post(
        &i,
        &cookie,
        "/replications/edge/tokens",
        Some(ORIGIN),
        &[("csrf", &csrf)],
    )
    .await;
    // POST/redirect/GET: the token page shows it once; a reload does not.
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.header("location"), Some("/replications/edge/token"));
    let shown = page(&i, &cookie, "/replications/edge/token").await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.text().contains("fst_") && shown.text().contains("shown once"));
    let again = page(&i, &cookie, "/replications/edge/token").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert!(!again.text().contains("fst_") && again.text().contains("was shown once"));
    // A new key: the same, on the keys page.
    let r = post(
        &i,
        &cookie,
        "/keys",
        Some(ORIGIN),
        &[("csrf", &csrf), ("name", "ci"), ("permission", "write")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.header("location"), Some("/keys"));
    let keys = page(&i, &cookie, "/keys").await.text();
    assert!(
        keys.contains("Key <strong>ci</strong> created") && keys.contains("id=\"new-key\""),
        "{keys}"
    );
    assert!(!page(&i, &cookie, "/keys").await.text().contains("id=\"new-key\""));
    // The overview's polling endpoint.
    let j = page(&i, &cookie, "/ui/api/overview").await;
    assert_eq!(j.json()["replications"][0]["state"], "incoming");
}

/// An incoming replication's page lists the instances that connect with
/// its tokens (the hub's view of its spokes), names escaped.
#[tokio::test]
async fn an_incoming_replication_shows_the_instances_that_connect() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "push").await;
    let cookie = session(&i, ADMIN).await;
    let r = page(&i, &cookie, "/replications/edge").await;
    assert!(r.text().contains("No instance has connected yet"), "{}", r.text());
    // The landing page's row says who connects, not "never run".
    let landing = page(&i, &cookie, "/").await.text();
    assert!(landing.contains("no instance has connected yet"), "{landing}");
    assert!(!landing.contains("never run"), "{landing}");
    let hs = serde_json::json!({
        "protocol_versions": [1],
        "instance_id": "cccccccccccccccccccccccccccccccc",
        "ferry_version": "1.2.3",
        "mode": {"name":"pull","flows":{"pull_missing":true,"push_missing":false,"delete_local":true,"delete_remote":false}},
        "feeds": [{ "outgoing": "files", "incoming": "files", "type": "assets" }],
        "instance_name": "site-<script>alert(1)</script>",
        "interval_secs": 60,
    })
    .to_string();
    let r = i
        .send(
            "POST",
            "/api/replication/v1/handshake",
            Some(&token),
            &[
                ("content-type", "application/json"),
                ("ferry-instance", "cccccccccccccccccccccccccccccccc"),
            ],
            hs,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let html = page(&i, &cookie, "/replications/edge").await.text();
    assert!(html.contains("Connected instances"), "{html}");
    assert!(html.contains("cccccccccccccccccccccccccccccccc"), "{html}");
    assert!(
        html.contains("site-&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>alert(1)"), "{html}");
    assert!(html.contains("1.2.3"), "{html}");
    let landing = page(&i, &cookie, "/").await.text();
    assert!(landing.contains("1 instance</a>"), "{landing}");
    let polled = page(&i, &cookie, "/ui/api/overview").await.text();
    assert!(polled.contains("1 instance"), "{polled}");
}

// ------------------------------------------------------------ peers for the wizard and executions

/// A stand-in for another instance: it answers the replication handshake
/// and never answers anything else (so an execution stays running).
async fn slow_peer() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    if !text.starts_with("POST /api/replication/v1/handshake") {
                        // Hold the connection: the execution waits here.
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        return;
                    }
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body = serde_json::json!({
                        "protocol_version": 1,
                        "instance_id": "dddddddddddddddddddddddddddddddd",
                        "ferry_version": "9.9.9",
                        "replication": "edge",
                        "mode": {"name":"push","flows":{"pull_missing":false,"push_missing":true,"delete_local":false,"delete_remote":true}},
                    })
                    .to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    sock.write_all(resp.as_bytes()).await.ok();
                    buf.clear();
                }
            });
        }
    });
    url
}

/// An HTTP server that is not Ferry: every request gets a 404 web page.
async fn web_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            [("content-type", "text/html")],
            "<html><body><h1>404 Not Found</h1><hr>nginx</body></html>",
        )
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    url
}

async fn api(i: &Instance, method: &str, path: &str, body: Option<serde_json::Value>) -> Reply {
    match body {
        Some(b) => {
            i.send(
                method,
                path,
                Some(ADMIN),
                &[("content-type", "application/json")],
                b.to_string(),
            )
            .await
        }
        None => i.send(method, path, Some(ADMIN), &[], Body::empty()).await,
    }
}

/// Waits until replication `name` runs an execution other than `not`; its id.
async fn running_execution(i: &Instance, name: &str, not: Option<i64>) -> i64 {
    for _ in 0..200 {
        let o = api(i, "GET", &format!("/api/v1/replications/{name}"), None)
            .await
            .json();
        if let Some(id) = o["running"]["execution"].as_i64()
            && Some(id) != not
        {
            return id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no execution of {name} started");
}

async fn execution_record(i: &Instance, name: &str, id: i64) -> serde_json::Value {
    let list = api(i, "GET", &format!("/api/v1/replications/{name}/executions"), None)
        .await
        .json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no execution {id}: {list}"))
}

/// Waits until execution `id` has ended; its record.
async fn ended(i: &Instance, name: &str, id: i64) -> serde_json::Value {
    for _ in 0..200 {
        let e = execution_record(i, name, id).await;
        if !e["outcome"].is_null() {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("execution {id} did not end");
}

/// The opening tag of the overview's Stop form for replication edge.
fn stop_form_tag(html: &str) -> &str {
    let at = html
        .find("action=\"/replications/edge/stop\"")
        .expect("a Stop form");
    &html[at..at + html[at..].find('>').unwrap()]
}

/// "Stop" is offered only while an execution runs, stops it through the
/// API's `stop_execution` (outcome stopped, a log line naming the key),
/// and the outcome filter finds it; "Run now" is recorded as `manual`.
#[tokio::test]
async fn a_running_execution_is_stopped_from_the_ui_and_run_now_is_recorded_as_manual() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let peer = slow_peer().await;
    let r = api(
        &i,
        "POST",
        "/api/v1/replications",
        Some(serde_json::json!({
            "name": "edge", "feeds": ["files"], "mode": "pull",
            "outgoing": peer, "token": "fst_0000000000000000_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "interval": 3600,
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let cookie = session(&i, ADMIN).await;
    // The first (scheduled) execution hangs on the peer.
    let first = running_execution(&i, "edge", None).await;
    let home = page(&i, &cookie, "/").await.text();
    assert!(!stop_form_tag(&home).contains("hidden"), "{home}");
    let detail = page(&i, &cookie, "/replications/edge").await;
    assert!(detail.text().contains(">Stop<"), "{}", detail.text());
    let csrf = csrf_of(&detail);
    let r = post(
        &i,
        &cookie,
        "/replications/edge/stop",
        Some(ORIGIN),
        &[("csrf", &csrf), ("back", "detail")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.header("location"), Some("/replications/edge"));
    let e = ended(&i, "edge", first).await;
    assert_eq!(e["outcome"], "stopped");
    let shown = page(&i, &cookie, &format!("/replications/edge/executions/{first}"))
        .await
        .text();
    assert!(shown.contains("badge stopped"), "{shown}");
    assert!(shown.contains("stopped by key"), "{shown}");
    let filtered = page(&i, &cookie, "/executions?outcome=stopped").await.text();
    assert!(filtered.contains(&format!("#{first}")), "{filtered}");
    assert!(
        filtered.contains("<option value=\"stopped\" selected"),
        "{filtered}"
    );
    // Nothing runs now: no Stop offered, and forcing one says so.
    let home = page(&i, &cookie, "/").await.text();
    assert!(stop_form_tag(&home).contains("hidden"), "{home}");
    let r = post(
        &i,
        &cookie,
        "/replications/edge/stop",
        Some(ORIGIN),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("no running execution"), "{}", r.text());

    // Run now: recorded as manual (not as a watcher's "change").
    let r = post(
        &i,
        &cookie,
        "/replications/edge/run",
        Some(ORIGIN),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let second = running_execution(&i, "edge", Some(first)).await;
    assert_eq!(execution_record(&i, "edge", second).await["trigger"], "manual");
    let table = page(&i, &cookie, "/replications/edge").await.text();
    assert!(table.contains("<td>manual</td>"), "{table}");
    // The API's "run" is the same.
    let r = api(&i, "POST", "/api/v1/replications/edge/stop", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    ended(&i, "edge", second).await;
    let r = api(&i, "POST", "/api/v1/replications/edge/run", None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let third = running_execution(&i, "edge", Some(second)).await;
    assert_eq!(execution_record(&i, "edge", third).await["trigger"], "manual");
    api(&i, "POST", "/api/v1/replications/edge/stop", None).await;
}

/// The wizard's outgoing step, posted with `url` and `token`: the reply.
async fn wizard_post(
    i: &Instance,
    cookie: &str,
    url: &str,
    token: &str,
    mode: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let csrf = csrf_of(&page(i, cookie, "/replications/new").await);
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("feed", "files"),
        ("direction", "outgoing"),
        ("url", url),
        ("token", token),
        ("mode", mode),
        ("interval", "60"),
        ("name", "to-hub"),
    ];
    // An extra field replaces the default one of that name.
    fields.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    fields.extend_from_slice(extra);
    post(i, cookie, "/replications/new", Some(ORIGIN), &fields).await
}

async fn nothing_created(spoke: &Instance) {
    let r = api(spoke, "GET", "/api/v1/replications/to-hub", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
}

/// The wizard checks the other end on the spot and says each problem in
/// plain words, keeping what was entered; nothing is created.
#[tokio::test]
async fn the_wizard_says_what_is_wrong_with_the_other_end_in_plain_words() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "push").await;
    let hub_url = hub.serve().await;
    let spoke = Instance::new().await;
    spoke.feed("files", FeedType::Assets, false).await;
    let cookie = session(&spoke, ADMIN).await;

    // Unreachable: said so, the values stay, and "create anyway" is offered.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = wizard_post(&spoke, &cookie, &closed, &token, "pull", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let t = r.text();
    assert!(
        t.contains(&format!("Nothing answers at {closed}: connection refused.")),
        "{t}"
    );
    for library in [
        "error sending request",
        "tcp connect error",
        "os error",
        "client error",
    ] {
        assert!(!t.contains(library), "library text {library:?} shown: {t}");
    }
    assert!(
        t.contains(&format!("value=\"{closed}\"")) && t.contains("value=\"to-hub\""),
        "{t}"
    );
    assert!(t.contains("name=\"anyway\""), "{t}");
    nothing_created(&spoke).await;

    // Not a Ferry instance.
    let web = web_server().await;
    let r = wizard_post(&spoke, &cookie, &web, &token, "pull", &[]).await;
    assert!(r.text().contains("is not a Ferry instance"), "{}", r.text());
    assert!(r.text().contains("HTTP 404"), "{}", r.text());
    // It answered: "create it anyway" is not offered, and forcing it is refused.
    assert!(!r.text().contains("name=\"anyway\""), "{}", r.text());
    nothing_created(&spoke).await;
    let r = wizard_post(&spoke, &cookie, &web, &token, "pull", &[("anyway", "1")]).await;
    assert!(r.text().contains("is not a Ferry instance"), "{}", r.text());
    nothing_created(&spoke).await;

    // An interval of 0 names the form's field, not the CLI's flag.
    let r = wizard_post(
        &spoke,
        &cookie,
        &closed,
        &token,
        "pull",
        &[("anyway", "1"), ("interval", "0")],
    )
    .await;
    let t = r.text();
    assert!(
        t.contains("Interval (seconds between runs) must be at least 1 second"),
        "{t}"
    );
    assert!(!t.contains("--interval"), "{t}");
    nothing_created(&spoke).await;

    // Wrong token.
    let r = wizard_post(
        &spoke,
        &cookie,
        &hub_url,
        "fst_00000000000000ee_eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
        "pull",
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(r.text().contains("did not accept the sync token"), "{}", r.text());
    nothing_created(&spoke).await;

    // Mode mismatch: both modes and the fix.
    let r = wizard_post(&spoke, &cookie, &hub_url, &token, "push", &[]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let t = r.text();
    assert!(t.contains("replication mode mismatch"), "{t}");
    assert!(t.contains("set the outgoing side to pull"), "{t}");
    nothing_created(&spoke).await;

    // Revoked token.
    let tokens = api(&hub, "GET", "/api/v1/replications/edge/tokens", None)
        .await
        .json();
    let id = tokens[0]["id"].as_str().unwrap().to_string();
    let r = api(
        &hub,
        "DELETE",
        &format!("/api/v1/replications/edge/tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = wizard_post(&spoke, &cookie, &hub_url, &token, "pull", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(r.text().contains("The sync token was revoked"), "{}", r.text());
    nothing_created(&spoke).await;

    // Feed type mismatch.
    let token = api(&hub, "POST", "/api/v1/replications/edge/tokens", None)
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let other = Instance::new().await;
    other.feed("files", FeedType::Npm, false).await;
    let other_cookie = session(&other, ADMIN).await;
    let r = wizard_post(&other, &other_cookie, &hub_url, &token, "pull", &[]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("feed type mismatch"), "{}", r.text());

    // The same instance.
    let own_token = spoke.incoming("self", &["files"], "push").await;
    let spoke_url = spoke.serve().await;
    let r = wizard_post(&spoke, &cookie, &spoke_url, &own_token, "pull", &[]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("same instance"), "{}", r.text());
    nothing_created(&spoke).await;

    // All well: created, and its page shown.
    let r = wizard_post(&spoke, &cookie, &hub_url, &token, "pull", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.header("location"), Some("/replications/to-hub"));
    // Unreachable, with "create anyway" ticked: created (it keeps trying).
    let r = api(&spoke, "DELETE", "/api/v1/replications/to-hub", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // ... but not with what cannot be a sync token (half of one pasted, or
    // another secret): it would fail every execution once the other end
    // is up. Nothing of it is echoed.
    let half = &token[..40];
    for typo in [half, "hunter2-secret"] {
        let r = wizard_post(&spoke, &cookie, &closed, typo, "pull", &[("anyway", "1")]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert!(r.text().contains("has not the shape of one"), "{}", r.text());
        assert!(!r.text().contains(typo), "{}", r.text());
        nothing_created(&spoke).await;
    }
    let r = wizard_post(&spoke, &cookie, &closed, &token, "pull", &[("anyway", "1")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());

    // Editing to an unreachable URL is refused the same way, nothing changed.
    let edit = page(&spoke, &cookie, "/replications/to-hub/edit").await;
    let csrf = csrf_of(&edit);
    let r = post(
        &spoke,
        &cookie,
        "/replications/to-hub/edit",
        Some(ORIGIN),
        &[("csrf", &csrf), ("url", &web), ("interval", "60")],
    )
    .await;
    assert!(r.text().contains("is not a Ferry instance"), "{}", r.text());
    let o = api(&spoke, "GET", "/api/v1/replications/to-hub", None)
        .await
        .json();
    assert_eq!(o["config"]["url"], closed.as_str(), "{o}");

    // A failing check on the edit page keeps every typed value but the
    // token, which is asked for again.
    let other_closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = post(
        &spoke,
        &cookie,
        "/replications/to-hub/edit",
        Some(ORIGIN),
        &[
            ("csrf", &csrf),
            ("url", &other_closed),
            (
                "token",
                "fst_7777777777777777_7777777777777777777777777777777777777777777777777777777777777777",
            ),
            ("interval", "45"),
            ("bandwidth", "123456"),
            ("include", "keep/**"),
            ("exclude", "skip/**"),
            ("carry_downloads", "1"),
        ],
    )
    .await;
    let t = r.text();
    assert!(t.contains(&format!("Nothing answers at {other_closed}")), "{t}");
    for typed in [
        format!("value=\"{other_closed}\""),
        "type them again".into(),
        "value=\"45\"".into(),
        "value=\"123456\"".into(),
        ">keep/**</textarea>".into(),
        ">skip/**</textarea>".into(),
    ] {
        assert!(t.contains(&typed), "{typed} lost: {t}");
    }
    assert!(
        !t.contains("fst_7777777777777777_7777777777777777777777777777777777777777777777777777777777777777"),
        "the typed token is in the page: {t}"
    );
    let o = api(&spoke, "GET", "/api/v1/replications/to-hub", None)
        .await
        .json();
    assert_eq!(o["config"]["url"], closed.as_str(), "{o}");
}

/// Browsers keep one cookie jar per host, whatever the port: two
/// instances on one host must not sign each other out.
#[tokio::test]
async fn two_instances_on_one_host_keep_their_own_sessions_in_one_cookie_jar() {
    let a = Instance::new().await;
    let b = Instance::new().await;
    let mut jar: Vec<(String, String)> = Vec::new();
    for i in [&a, &b] {
        let c = session(i, ADMIN).await;
        let (name, value) = c.split_once('=').unwrap();
        jar.retain(|(n, _)| n != name);
        jar.push((name.to_string(), value.to_string()));
    }
    assert_eq!(jar.len(), 2, "each instance names its cookie: {jar:?}");
    let header = jar
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    for i in [&a, &b] {
        let r = page(i, &header, "/").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "still signed in: {:?}",
            r.header("location")
        );
        assert!(r.text().contains("Sign out"));
    }
}

/// Behind a proxy at /registry/: every link, form, asset, redirect and the
/// cookie's Path carry the prefix.
#[tokio::test]
async fn under_a_base_url_path_every_link_form_redirect_and_cookie_carry_the_prefix() {
    let cfg = ferry_core::Config {
        base_url: Some("http://ferry.test/registry/".into()),
        ..ferry_core::Config::default()
    };
    let i = Instance::with_config(cfg).await;
    i.feed("files", FeedType::Assets, false).await;
    i.send("PUT", "/assets/files/a/b.txt", Some(ADMIN), &[], "hello")
        .await;
    i.incoming("edge", &["files"], "push").await;
    let r = sign_in(&i, ADMIN).await;
    assert_eq!(r.header("location"), Some("/registry/"));
    let set = r.header("set-cookie").unwrap();
    assert!(set.contains("Path=/registry/;"), "{set}");
    let cookie = session_cookie(&r);
    let unprefixed = |html: &str| -> Vec<String> {
        let mut bad = Vec::new();
        for attr in ["href", "action", "src", "data-poll"] {
            let needle = format!(" {attr}=\"/");
            let mut rest = html;
            while let Some(at) = rest.find(&needle) {
                let tail = &rest[at + needle.len() - 1..];
                if !tail.starts_with("/registry/") {
                    bad.push(tail.chars().take(40).collect());
                }
                rest = &rest[at + needle.len()..];
            }
        }
        bad
    };
    for path in [
        "/",
        "/feeds",
        "/feeds/files",
        "/feeds/files/item?key=a/b.txt",
        "/replications/new",
        "/replications/edge",
        "/executions",
        "/diagnostics",
        "/keys",
    ] {
        let r = page(&i, &cookie, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let html = r.text();
        assert!(
            html.contains("href=\"/registry/ui/assets/ferry.css\""),
            "{path}: {html}"
        );
        assert!(html.contains("action=\"/registry/logout\""), "{path}");
        assert_eq!(unprefixed(&html), Vec::<String>::new(), "{path}");
    }
    assert!(
        page(&i, &cookie, "/")
            .await
            .text()
            .contains("data-poll=\"/registry/ui/api/overview\"")
    );
    assert!(
        page(&i, &cookie, "/feeds/files/item?key=a/b.txt")
            .await
            .text()
            .contains("href=\"/registry/assets/files/a/b.txt\"")
    );
    // Redirects after a form, and to sign-in.
    let csrf = csrf_of(&page(&i, &cookie, "/feeds").await);
    let r = post(
        &i,
        &cookie,
        "/feeds",
        Some(ORIGIN),
        &[("csrf", &csrf), ("name", "more"), ("type", "npm")],
    )
    .await;
    assert_eq!(r.header("location"), Some("/registry/feeds/more?created=1"));
    let r = i
        .send("GET", "/feeds", None, &[("host", HOST)], Body::empty())
        .await;
    assert_eq!(r.header("location"), Some("/registry/login"));
    let r = post(&i, &cookie, "/logout", Some(ORIGIN), &[("csrf", &csrf)]).await;
    assert!(r.header("set-cookie").unwrap().contains("Path=/registry/;"));
}

/// An item is deleted from its page with a confirmation that names it,
/// through the feed type's own delete; a read-only key is not offered it
/// and is refused when it forces it.
#[tokio::test]
async fn an_items_download_link_works_for_every_feed_and_path_spelling() {
    let i = Instance::new().await;
    let cookie = session(&i, ADMIN).await;
    for (feed, path) in [
        ("f-assets", "b/s.bin"),
        ("my-files-2", "dir-1/x_y.tar.gz"),
        ("files", "v1.0/~tilde_name.txt"),
    ] {
        i.feed(feed, FeedType::Assets, false).await;
        let r = i
            .send(
                "PUT",
                &format!("/assets/{feed}/{path}"),
                Some(ADMIN),
                &[],
                "payload",
            )
            .await;
        assert!(r.status.is_success(), "{feed}/{path}: {}", r.text());
        let shown = page(&i, &cookie, &format!("/feeds/{feed}/item?key={path}"))
            .await
            .text();
        let href = shown
            .split(" download>")
            .next()
            .and_then(|s| s.rsplit("href=\"").next())
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .to_string();
        assert!(href.starts_with(&format!("/assets/{feed}/")), "{href}");
        let got = i.send("GET", &href, None, &[], String::new()).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "{feed}/{path}: {href}: {}",
            got.text()
        );
        assert_eq!(got.text(), "payload");
        // Every item's blobs download from its page too, whatever the feed type.
        let blob = shown
            .split("/item/blob?")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .replace("&amp;", "&");
        let blob_url = format!("/feeds/{feed}/item/blob?{blob}");
        let got = page(&i, &cookie, &blob_url).await;
        assert_eq!(got.status, StatusCode::OK, "{blob_url}: {}", got.text());
        assert_eq!(got.text(), "payload");
    }
    // Only the item's own blobs, and only for a key that may read the feed.
    let other = format!("sha256:{}", "0".repeat(64));
    let r = page(
        &i,
        &cookie,
        &format!("/feeds/files/item/blob?key=v1.0/~tilde_name.txt&digest={other}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    i.feed("secret", FeedType::Assets, true).await;
    let r = i
        .send("PUT", "/assets/secret/s.txt", Some(ADMIN), &[], "hidden")
        .await;
    assert!(r.status.is_success());
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"hidden"))
    );
    let scoped = i.key("scoped", Permission::Read, Some(&["files"])).await;
    let sc = session(&i, &scoped).await;
    let url = format!("/feeds/secret/item/blob?key=s.txt&digest={digest}");
    let r = page(&i, &sc, &url).await;
    assert!(r.status.is_client_error(), "{}", r.status);
    assert!(!r.text().contains("hidden"));
    assert_eq!(page(&i, &cookie, &url).await.text(), "hidden");
}

#[tokio::test]
async fn an_item_is_deleted_from_its_page_after_a_confirmation_naming_it() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let r = i
        .send("PUT", "/assets/files/dir/app.tar", Some(ADMIN), &[], "bytes")
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let reader = i.key("reader", Permission::Read, None).await;
    let rc = session(&i, &reader).await;
    let shown = page(&i, &rc, "/feeds/files/item?key=dir/app.tar").await.text();
    assert!(!shown.contains("/item/delete"), "{shown}");
    let csrf = csrf_of(&page(&i, &rc, "/feeds").await);
    let r = post(
        &i,
        &rc,
        "/feeds/files/item/delete",
        Some(ORIGIN),
        &[("csrf", &csrf), ("key", "dir/app.tar")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(i.get("/assets/files/dir/app.tar").await.status, StatusCode::OK);

    let writer = i.key("writer", Permission::Write, Some(&["files"])).await;
    let wc = session(&i, &writer).await;
    let shown = page(&i, &wc, "/feeds/files/item?key=dir/app.tar").await.text();
    assert!(
        shown.contains("href=\"/feeds/files/item/delete?key=dir%2Fapp.tar\""),
        "{shown}"
    );
    let confirm = page(&i, &wc, "/feeds/files/item/delete?key=dir%2Fapp.tar").await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text());
    assert!(
        confirm.text().contains("Delete the file dir/app.tar"),
        "{}",
        confirm.text()
    );
    let csrf = csrf_of(&confirm);
    let r = post(
        &i,
        &wc,
        "/feeds/files/item/delete",
        Some(ORIGIN),
        &[("csrf", &csrf), ("key", "dir/app.tar")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.header("location"), Some("/feeds/files?deleted=dir%2Fapp.tar"));
    assert_eq!(
        i.get("/assets/files/dir/app.tar").await.status,
        StatusCode::NOT_FOUND
    );
    let shown = page(&i, &wc, "/feeds/files?deleted=dir%2Fapp.tar").await.text();
    assert!(shown.contains("Deleted <code>dir/app.tar</code>"), "{shown}");
    // Gone: a second delete says so.
    let r = post(
        &i,
        &wc,
        "/feeds/files/item/delete",
        Some(ORIGIN),
        &[("csrf", &csrf), ("key", "dir/app.tar")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // Its confirm page (an old tab, a back button) offers no Delete.
    let confirm = page(&i, &wc, "/feeds/files/item/delete?key=dir%2Fapp.tar").await;
    assert_eq!(confirm.status, StatusCode::NOT_FOUND);
    let t = confirm.text();
    assert!(t.contains("dir/app.tar is already gone"), "{t}");
    assert!(!t.contains("/item/delete\""), "Delete still offered: {t}");
}

/// The small things a first look stumbles on: times, the apt line,
/// notices after a delete, a refused key keeping its name, plurals, and
/// words that do not break in the middle at phone width.
#[tokio::test]
async fn first_look_details() {
    let i = Instance::new().await;
    let cookie = session(&i, ADMIN).await;
    let csrf = csrf_of(&page(&i, &cookie, "/feeds").await);
    // The debian feed's hint: the real sources line and the key download.
    let r = post(
        &i,
        &cookie,
        "/feeds",
        Some(ORIGIN),
        &[("csrf", &csrf), ("name", "apt"), ("type", "debian")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let shown = page(&i, &cookie, r.header("location").unwrap()).await.text();
    assert!(
        shown.contains(
            "deb [signed-by=/etc/apt/keyrings/ferry-apt.gpg] http://ferry.test/debian/apt bookworm main"
        ),
        "{shown}"
    );
    assert!(shown.contains("http://ferry.test/debian/apt/key.gpg"), "{shown}");
    assert!(!shown.contains("See the README"), "{shown}");
    // The rpm feed's hint: the one-line dnf setup.
    let r = post(
        &i,
        &cookie,
        "/feeds",
        Some(ORIGIN),
        &[("csrf", &csrf), ("name", "yum"), ("type", "rpm")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let shown = page(&i, &cookie, r.header("location").unwrap()).await.text();
    assert!(
        shown.contains("dnf config-manager --add-repo http://ferry.test/rpm/yum/config.repo"),
        "{shown}"
    );

    // One item in one folder.
    i.feed("files", FeedType::Assets, false).await;
    let r = i
        .send("PUT", "/assets/files/dir/app.tar", Some(ADMIN), &[], "bytes")
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let shown = page(&i, &cookie, "/feeds/files").await.text();
    assert!(shown.contains("1 item in 1 folder<"), "{shown}");

    // Deleting a feed says so.
    let confirm = page(&i, &cookie, "/feeds/apt/delete").await;
    let r = post(
        &i,
        &cookie,
        "/feeds/apt/delete",
        Some(ORIGIN),
        &[("csrf", &csrf_of(&confirm))],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let shown = page(&i, &cookie, r.header("location").unwrap()).await.text();
    assert!(shown.contains("Feed <strong>apt</strong> deleted"), "{shown}");

    // A refused key keeps what was typed.
    i.key("taken", Permission::Read, None).await;
    let r = post(
        &i,
        &cookie,
        "/keys",
        Some(ORIGIN),
        &[
            ("csrf", &csrf),
            ("name", "taken"),
            ("permission", "write"),
            ("feed", "files"),
        ],
    )
    .await;
    assert!(r.status.is_client_error(), "{}", r.text());
    let t = r.text();
    assert!(
        t.contains("id=\"key-name\"") && t.contains("value=\"taken\""),
        "{t}"
    );
    assert!(t.contains("value=\"write\" selected"), "{t}");
    assert!(t.contains("value=\"files\" checked"), "{t}");

    // Next run, like the other times; deleting a replication says so.
    let r = api(
        &i,
        "POST",
        "/api/v1/replications",
        Some(serde_json::json!({
            "name": "later", "feeds": ["files"], "mode": "pull", "outgoing": "http://127.0.0.1:9",
            "token": "fst_1111111111111111_dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd", "interval": 3600,
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let mut next = serde_json::Value::Null;
    for _ in 0..100 {
        next = api(&i, "GET", "/api/v1/replications/later", None).await.json()["status"]["next_run"].clone();
        if next.is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let raw = next.as_str().expect("a next run").to_string();
    let shown = page(&i, &cookie, "/").await.text();
    assert!(!shown.contains(&raw), "raw {raw}: {shown}");
    let plain = format!("{} {} UTC", &raw[..10], &raw[11..19]);
    assert!(shown.contains(&plain), "{plain}: {shown}");
    let confirm = page(&i, &cookie, "/replications/later/delete").await;
    let r = post(
        &i,
        &cookie,
        "/replications/later/delete",
        Some(ORIGIN),
        &[("csrf", &csrf_of(&confirm))],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let shown = page(&i, &cookie, r.header("location").unwrap()).await.text();
    assert!(
        shown.contains("Replication <strong>later</strong> deleted"),
        "{shown}"
    );

    // Badges and short words do not break in the middle.
    let css = i.get("/ui/assets/ferry.css").await.text();
    assert!(!css.contains("td { overflow-wrap: anywhere"), "{css}");
    assert!(
        css.contains(".badge { display: inline-block; white-space: nowrap"),
        "{css}"
    );
}

/// The plan page lists the items a run would copy and delete and, for
/// each that would not move, why.
#[tokio::test]
async fn the_plan_lists_each_item_and_why_it_would_not_move() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    for (k, v) in [
        ("same.txt", "s"),
        ("same2.txt", "s2"),
        ("old.txt", "o"),
        ("skip/x.txt", "x"),
        ("gone.txt", "g"),
    ] {
        let r = hub
            .send("PUT", &format!("/assets/files/{k}"), Some(ADMIN), &[], v)
            .await;
        assert!(r.status.is_success(), "{}", r.text());
    }
    let token = hub.incoming("edge", &["files"], "push").await;
    let url = hub.serve().await;
    let spoke = Instance::new().await;
    spoke.feed("files", FeedType::Assets, false).await;
    let r = api(
        &spoke,
        "POST",
        "/api/v1/replications",
        Some(serde_json::json!({
            "name": "from-hub", "feeds": ["files"], "mode": "pull", "outgoing": url, "token": token,
            "interval": 3600, "exclude": ["skip/**"],
            // Any deletion waits for a confirmation.
            "delete_guard": {"max_share": 0.0, "max_items": 0},
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let first = running_or_done(&spoke, "from-hub").await;
    assert_eq!(ended(&spoke, "from-hub", first).await["outcome"], "succeeded");
    assert_eq!(spoke.get("/assets/files/same.txt").await.status, StatusCode::OK);
    // Deleted on the hub, and that deletion carried to the spoke (confirmed):
    // a tombstone on both sides.
    hub.send(
        "DELETE",
        "/assets/files/gone.txt",
        Some(ADMIN),
        &[],
        Body::empty(),
    )
    .await;
    let r = api(
        &spoke,
        "POST",
        "/api/v1/replications/from-hub/run",
        Some(serde_json::json!({ "confirm_deletes": true })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        spoke.get("/assets/files/gone.txt").await.status,
        StatusCode::NOT_FOUND
    );
    // On the hub: one deleted, one new (200 KB).
    let big = "b".repeat(200_000);
    hub.send("DELETE", "/assets/files/old.txt", Some(ADMIN), &[], Body::empty())
        .await;
    hub.send("PUT", "/assets/files/new.txt", Some(ADMIN), &[], big)
        .await;
    // A new filter compares from the start again; the guard holds every
    // execution before it moves its cursor.
    let r = api(
        &spoke,
        "PATCH",
        "/api/v1/replications/from-hub",
        Some(serde_json::json!({ "exclude": ["skip/**", "tmp/**"] })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let cookie = session(&spoke, ADMIN).await;
    let r = page(&spoke, &cookie, "/replications/from-hub/plan").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let html = r.text();
    let row = |key: &str| -> String {
        let at = html
            .find(&format!("<code class=\"break\">{key}</code>"))
            .unwrap_or_else(|| panic!("{key} listed: {html}"));
        html[at..at + html[at..].find("</tr>").unwrap()].to_string()
    };
    assert!(row("new.txt").contains(">copy<"), "{}", row("new.txt"));
    // Its size, and the total to move, in the CLI's binary units.
    assert!(row("new.txt").contains(">195.3 KiB<"), "{}", row("new.txt"));
    assert!(
        html.contains("Bytes to move: <strong>195.3 KiB</strong>"),
        "{html}"
    );
    // Items the same on both sides are listed as such, even with no change
    // since the last execution; a tombstone on both sides is not "the same".
    assert!(
        row("same2.txt").contains("already the same"),
        "{}",
        row("same2.txt")
    );
    assert!(
        row("gone.txt").contains("deleted on both sides") && !row("gone.txt").contains("already the same"),
        "{}",
        row("gone.txt")
    );
    assert!(
        row("old.txt").contains(">delete<") && row("old.txt").contains("held by the delete guard"),
        "{}",
        row("old.txt")
    );
    assert!(
        row("same.txt").contains("already the same"),
        "{}",
        row("same.txt")
    );
    assert!(
        row("skip/x.txt").contains("filtered out"),
        "{}",
        row("skip/x.txt")
    );
    assert!(
        html.contains("Would move (2)") && html.contains("Would not move (4)"),
        "{html}"
    );
    // Nothing moved.
    assert_eq!(
        spoke.get("/assets/files/new.txt").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(spoke.get("/assets/files/old.txt").await.status, StatusCode::OK);
    // The API's plan carries the same list.
    let j = api(&spoke, "POST", "/api/v1/replications/from-hub/plan", None)
        .await
        .json();
    assert_eq!(j["feeds"][0]["plan"]["total"], 6, "{j}");

    // With no change since the last execution, the plan still lists what
    // is the same on both sides (not "Nothing").
    let r = api(
        &spoke,
        "POST",
        "/api/v1/replications/from-hub/run",
        Some(serde_json::json!({ "confirm_deletes": true })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let html = page(&spoke, &cookie, "/replications/from-hub/plan").await.text();
    assert!(html.contains("Would move (0)"), "{html}");
    assert!(html.contains("Would not move (4)"), "{html}");
    assert!(html.contains("already the same"), "{html}");
}

/// The id of replication `name`'s first execution, running or ended.
async fn running_or_done(i: &Instance, name: &str) -> i64 {
    for _ in 0..200 {
        let list = api(i, "GET", &format!("/api/v1/replications/{name}/executions"), None)
            .await
            .json();
        if let Some(id) = list
            .as_array()
            .and_then(|l| l.last())
            .and_then(|e| e["id"].as_i64())
        {
            return id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no execution of {name}");
}

/// On an instance with only an outgoing replication: the diagnostic
/// center says whose log it shows and points to the executions, and an
/// execution's log filtered at "info" still shows its error lines.
#[tokio::test]
async fn diagnostics_says_what_it_shows_and_a_level_filter_is_a_minimum() {
    let spoke = Instance::new().await;
    spoke.feed("files", FeedType::Assets, false).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = api(
        &spoke,
        "POST",
        "/api/v1/replications",
        Some(serde_json::json!({
            "name": "to-nowhere", "feeds": ["files"], "mode": "pull", "outgoing": closed,
            "token": "fst_1111111111111111_dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd", "interval": 3600,
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    api(
        &spoke,
        "POST",
        "/api/v1/replications/to-nowhere/run",
        Some(serde_json::json!({ "wait": true })),
    )
    .await;
    let id = running_or_done(&spoke, "to-nowhere").await;
    let rec = ended(&spoke, "to-nowhere", id).await;
    assert_eq!(rec["outcome"], "failed", "{rec}");

    let cookie = session(&spoke, ADMIN).await;
    let html = page(&spoke, &cookie, "/diagnostics").await.text();
    assert!(html.contains("what other instances asked of this one"), "{html}");
    assert!(html.contains("href=\"/executions\""), "{html}");
    assert!(!html.contains("what its executions did"), "{html}");

    let path = format!("/replications/to-nowhere/executions/{id}");
    let all = page(&spoke, &cookie, &path).await.text();
    assert!(all.contains("class=\"lvl-error\""), "{all}");
    let info = page(&spoke, &cookie, &format!("{path}?level=info")).await.text();
    assert!(info.contains("class=\"lvl-error\""), "info hides errors: {info}");
    let error = page(&spoke, &cookie, &format!("{path}?level=error")).await.text();
    assert!(error.contains("class=\"lvl-error\""), "{error}");
    assert!(!error.contains("class=\"lvl-info\""), "{error}");
}

/// A push-only replication's plan (the other side sends no entries then)
/// also lists what is already the same, and what it would copy with its
/// size.
#[tokio::test]
async fn a_push_plan_lists_what_is_the_same_and_what_it_would_copy() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "pull").await;
    let url = hub.serve().await;
    let spoke = Instance::new().await;
    spoke.feed("files", FeedType::Assets, false).await;
    let r = spoke
        .send("PUT", "/assets/files/a.txt", Some(ADMIN), &[], "aaaa")
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let r = api(
        &spoke,
        "POST",
        "/api/v1/replications",
        Some(serde_json::json!({
            "name": "to-hub", "feeds": ["files"], "mode": "push", "outgoing": url, "token": token,
            "interval": 3600,
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let first = running_or_done(&spoke, "to-hub").await;
    assert_eq!(ended(&spoke, "to-hub", first).await["outcome"], "succeeded");
    assert_eq!(hub.get("/assets/files/a.txt").await.status, StatusCode::OK);
    let r = spoke
        .send("PUT", "/assets/files/b.txt", Some(ADMIN), &[], "b".repeat(2500))
        .await;
    assert!(r.status.is_success(), "{}", r.text());

    let cookie = session(&spoke, ADMIN).await;
    let r = page(&spoke, &cookie, "/replications/to-hub/plan").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let html = r.text();
    assert!(
        html.contains("Would move (1)") && html.contains("Would not move (1)"),
        "{html}"
    );
    assert!(html.contains("Bytes to move: <strong>2.4 KiB</strong>"), "{html}");
    let at = html
        .find("<code class=\"break\">a.txt</code>")
        .expect("a.txt listed");
    let row = &html[at..at + html[at..].find("</tr>").unwrap()];
    assert!(row.contains("already the same on both sides"), "{row}");
}

/// An outgoing replication's blob sources: listed by URL on its page,
/// added, replaced and cleared on the edit page (an empty token keeps the
/// stored one, as for the outgoing token), a bad one refused with the
/// reason; no stored token ever in a page, everything typed escaped.
#[tokio::test]
async fn blob_sources_are_edited_listed_by_url_and_their_tokens_never_shown() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let hub_token = hub.incoming("edge", &["files"], "push").await;
    let hub_url = hub.serve().await;
    let spoke = Instance::new().await;
    spoke.feed("files", FeedType::Assets, false).await;
    let r = api(
        &spoke,
        "POST",
        "/api/v1/replications",
        Some(serde_json::json!({
            "name": "from-hub", "feeds": ["files"], "outgoing": hub_url,
            "token": hub_token, "mode": "pull",
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let secret_a = "a1".repeat(32);
    let secret_b = "b2".repeat(32);
    let token_a = format!("fst_00000000000000aa_{secret_a}");
    let token_b = format!("fst_00000000000000bb_{secret_b}");
    let hub_secret = hub_token.rsplit('_').next().unwrap().to_owned();
    let cfg_sources = || async {
        api(&spoke, "GET", "/api/v1/replications/from-hub", None)
            .await
            .json()["config"]["blob_sources"]
            .clone()
    };
    let cookie = session(&spoke, ADMIN).await;
    let no_secret = |t: &str, when: &str| {
        for s in [&secret_a, &secret_b, &hub_secret] {
            assert!(
                !t.contains(s.as_str()),
                "{when}: a stored token's secret is in the page"
            );
        }
    };

    // None yet: the page says so; the edit form offers empty rows.
    let detail = page(&spoke, &cookie, "/replications/from-hub").await.text();
    assert!(
        detail.contains("Blob sources") && detail.contains("none (every blob comes from the other instance)"),
        "{detail}"
    );
    let edit = page(&spoke, &cookie, "/replications/from-hub/edit").await;
    let csrf = csrf_of(&edit);
    assert_eq!(edit.text().matches("name=\"source_url\"").count(), 2);
    no_secret(&edit.text(), "edit form");

    let save = |rows: Vec<(&'static str, String)>| {
        let csrf = csrf.clone();
        let hub_url = hub_url.clone();
        let cookie = cookie.clone();
        let spoke = &spoke;
        async move {
            let mut fields: Vec<(&str, &str)> = vec![
                ("csrf", &csrf),
                ("url", &hub_url),
                ("interval", "60"),
                ("blob_sources_form", "1"),
            ];
            fields.extend(rows.iter().map(|(k, v)| (*k, v.as_str())));
            post(
                spoke,
                &cookie,
                "/replications/from-hub/edit",
                Some(ORIGIN),
                &fields,
            )
            .await
        }
    };

    // Add one: listed by URL, its token redacted in the API, not in any page.
    let r = save(vec![
        ("source_url", "http://cache.site:8765".into()),
        ("source_token", token_a.clone()),
        ("source_url", String::new()),
        ("source_token", String::new()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(
        cfg_sources().await,
        serde_json::json!([{ "url": "http://cache.site:8765", "token": "fst_00000000000000aa_…" }])
    );
    let detail = page(&spoke, &cookie, "/replications/from-hub").await.text();
    assert!(detail.contains("<code>http://cache.site:8765</code>"), "{detail}");
    no_secret(&detail, "detail");
    let edit = page(&spoke, &cookie, "/replications/from-hub/edit").await.text();
    assert!(edit.contains("value=\"http://cache.site:8765\""), "{edit}");
    assert!(edit.contains("empty: keep the current one"));
    no_secret(&edit, "edit form");

    // Its token left empty keeps the stored one; a second source is added.
    let r = save(vec![
        ("source_url", "http://cache.site:8765/".into()),
        ("source_token", String::new()),
        ("source_url", "https://neighbour.site".into()),
        ("source_token", token_b.clone()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let s = cfg_sources().await;
    assert_eq!(s[0]["token"], "fst_00000000000000aa_…", "{s}");
    assert_eq!(s[1]["url"], "https://neighbour.site");
    assert_eq!(s[1]["token"], "fst_00000000000000bb_…");
    // Replaced: a new token for the first, in the other order.
    let r = save(vec![
        ("source_url", "https://neighbour.site".into()),
        ("source_token", String::new()),
        ("source_url", "http://cache.site:8765".into()),
        ("source_token", token_b.clone()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let s = cfg_sources().await;
    assert_eq!(s[0]["url"], "https://neighbour.site");
    assert_eq!(s[1]["token"], "fst_00000000000000bb_…", "{s}");

    // A post without the rows (an older page, a script) leaves them alone.
    let r = post(
        &spoke,
        &cookie,
        "/replications/from-hub/edit",
        Some(ORIGIN),
        &[("csrf", &csrf), ("url", &hub_url), ("interval", "90")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(cfg_sources().await, s);

    // Refused with the reason, nothing changed, what was typed kept and escaped.
    let before = cfg_sources().await;
    for (rows, reason) in [
        (
            vec![
                ("source_url", "ftp://cache.site".to_owned()),
                ("source_token", token_a.clone()),
            ],
            "must be an http:// or https:// URL with a host",
        ),
        (
            vec![
                ("source_url", "http://new.site".to_owned()),
                ("source_token", String::new()),
            ],
            "blob source http://new.site needs a sync token",
        ),
        (
            vec![("source_url", String::new()), ("source_token", token_a.clone())],
            "has a sync token but no URL",
        ),
        (
            vec![("source_url", hub_url.clone()), ("source_token", token_a.clone())],
            "own peer; name other instances",
        ),
        (
            vec![
                (
                    "source_url",
                    "http://x.site/\"><script>alert(1)</script>".to_owned(),
                ),
                ("source_token", String::new()),
            ],
            "needs a sync token",
        ),
    ] {
        let r = save(rows.iter().map(|(k, v)| (*k, v.clone())).collect()).await;
        let t = r.text();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{t}");
        assert!(t.contains(reason), "{reason}: {t}");
        assert!(!t.contains("<script>alert(1)</script>"), "not escaped: {t}");
        // Not even the token just typed comes back.
        assert!(!t.contains(&token_a), "the typed token is in the page: {t}");
        no_secret(&t, "refusal");
        assert_eq!(cfg_sources().await, before);
    }

    // Cleared: every URL emptied.
    let r = save(vec![
        ("source_url", String::new()),
        ("source_token", String::new()),
        ("source_url", String::new()),
        ("source_token", String::new()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let cleared = cfg_sources().await;
    assert!(cleared.is_null() || cleared == serde_json::json!([]), "{cleared}");
    let detail = page(&spoke, &cookie, "/replications/from-hub").await.text();
    assert!(detail.contains("none (every blob comes from the other instance)"));
}

/// The wizard offers blob sources: a source is checked as on the edit
/// page, a refused one is said on the form and creates nothing, an
/// accepted one is listed on the new replication's page.
#[tokio::test]
async fn the_wizard_takes_blob_sources_and_a_refused_one_creates_nothing() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "push").await;
    let hub_url = hub.serve().await;
    // A site cache: another instance with an incoming replication that sends.
    let cache = Instance::new().await;
    cache.feed("files", FeedType::Assets, false).await;
    let cache_token = cache.incoming("site", &["files"], "push").await;
    let cache_url = cache.serve().await;
    let spoke = Instance::new().await;
    spoke.feed("files", FeedType::Assets, false).await;
    let cookie = session(&spoke, ADMIN).await;

    // The fresh wizard offers two empty source rows.
    let fresh = page(&spoke, &cookie, "/replications/new").await.text();
    assert_eq!(fresh.matches("name=\"source_url\"").count(), 2, "{fresh}");
    assert_eq!(fresh.matches("name=\"source_token\"").count(), 2, "{fresh}");

    let wrong = format!("fst_00000000000000d4_{}", "d4".repeat(32));
    for (rows, status, reason) in [
        // Refused by the source itself, at create.
        (
            vec![
                ("source_url", cache_url.as_str()),
                ("source_token", wrong.as_str()),
            ],
            StatusCode::BAD_REQUEST,
            format!("blob source {cache_url} cannot serve replication to-hub: it does not accept the token"),
        ),
        // Refused by the same checks as on the edit page.
        (
            vec![
                ("source_url", "ftp://cache.site"),
                ("source_token", cache_token.as_str()),
            ],
            StatusCode::BAD_REQUEST,
            "blob source &quot;ftp://cache.site&quot; must be an http:// or https:// URL with a host".into(),
        ),
        (
            vec![("source_url", "http://new.site"), ("source_token", "")],
            StatusCode::BAD_REQUEST,
            "blob source http://new.site needs a sync token".into(),
        ),
        (
            vec![("source_url", ""), ("source_token", cache_token.as_str())],
            StatusCode::BAD_REQUEST,
            "Blob source 1 has a sync token but no URL".into(),
        ),
        (
            vec![
                ("source_url", hub_url.as_str()),
                ("source_token", cache_token.as_str()),
            ],
            StatusCode::BAD_REQUEST,
            "own peer; name other instances".into(),
        ),
    ] {
        let r = wizard_post(&spoke, &cookie, &hub_url, &token, "pull", &rows).await;
        let t = r.text();
        assert_eq!(r.status, status, "{reason}: {t}");
        assert!(t.contains("class=\"error\""), "{t}");
        assert!(t.contains(&reason), "{reason}: {t}");
        nothing_created(&spoke).await;
    }

    // Accepted: created, and listed by URL on its page.
    let r = wizard_post(
        &spoke,
        &cookie,
        &hub_url,
        &token,
        "pull",
        &[("source_url", &cache_url), ("source_token", &cache_token)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let cfg = api(&spoke, "GET", "/api/v1/replications/to-hub", None)
        .await
        .json();
    assert_eq!(
        cfg["config"]["blob_sources"][0]["url"],
        cache_url.as_str(),
        "{cfg}"
    );
    let detail = page(&spoke, &cookie, "/replications/to-hub").await.text();
    assert!(detail.contains(&format!("<code>{cache_url}</code>")), "{detail}");
}

/// A refused form comes back with what was typed, but never a secret: the
/// token fields are empty and the error says to type them again.
#[tokio::test]
async fn a_refused_form_never_sends_a_typed_secret_back() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "push").await;
    let hub_url = hub.serve().await;
    let spoke = Instance::new().await;
    spoke.feed("files", FeedType::Assets, false).await;
    let cookie = session(&spoke, ADMIN).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let typed_source = format!("fst_00000000000000e5_{}", "e5".repeat(32));
    let secrets = |t: &str| -> Vec<String> {
        [token.as_str(), typed_source.as_str()]
            .into_iter()
            .flat_map(|s| [s.to_owned(), s.rsplit('_').next().unwrap().to_owned()])
            .filter(|s| t.contains(s.as_str()))
            .collect()
    };

    // The wizard: the other end cannot be reached; the URL, the source's
    // URL and the name come back, the tokens do not.
    let r = wizard_post(
        &spoke,
        &cookie,
        &closed,
        &token,
        "pull",
        &[
            ("source_url", "http://cache.site:8765"),
            ("source_token", &typed_source),
        ],
    )
    .await;
    let t = r.text();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{t}");
    assert!(t.contains("Nothing answers at"), "{t}");
    assert_eq!(
        secrets(&t),
        Vec::<String>::new(),
        "a typed token is in the page: {t}"
    );
    assert!(t.contains("type them again"), "{t}");
    assert!(
        t.contains(&format!("value=\"{closed}\""))
            && t.contains("value=\"http://cache.site:8765\"")
            && t.contains("value=\"to-hub\""),
        "{t}"
    );
    // The wizard refused by a check of its own, with a token typed.
    let r = wizard_post(&spoke, &cookie, &hub_url, &token, "pull", &[("interval", "0")]).await;
    let t = r.text();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{t}");
    assert!(
        t.contains("must be at least 1 second") && t.contains("type them again"),
        "{t}"
    );
    assert_eq!(
        secrets(&t),
        Vec::<String>::new(),
        "a typed token is in the page: {t}"
    );
    nothing_created(&spoke).await;
    // Nothing typed: nothing to type again.
    let r = wizard_post(&spoke, &cookie, "", "", "pull", &[]).await;
    let t = r.text();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{t}");
    assert!(!t.contains("type them again"), "{t}");

    // The edit form: a new token the other end refuses, and a source.
    let r = wizard_post(&spoke, &cookie, &hub_url, &token, "pull", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let csrf = csrf_of(&page(&spoke, &cookie, "/replications/to-hub/edit").await);
    let wrong = format!("fst_00000000000000f6_{}", "f6".repeat(32));
    let r = post(
        &spoke,
        &cookie,
        "/replications/to-hub/edit",
        Some(ORIGIN),
        &[
            ("csrf", &csrf),
            ("url", &hub_url),
            ("token", &wrong),
            ("interval", "60"),
            ("blob_sources_form", "1"),
            ("source_url", "http://cache.site:8765"),
            ("source_token", &typed_source),
        ],
    )
    .await;
    let t = r.text();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{t}");
    for s in [&wrong, &"f6".repeat(32), &typed_source, &"e5".repeat(32)] {
        assert!(!t.contains(s.as_str()), "a typed token is in the page: {t}");
    }
    assert!(t.contains("type them again"), "{t}");
    assert!(t.contains("value=\"http://cache.site:8765\""), "{t}");
    // A new source's row does not say its empty token keeps one.
    assert!(!t.contains("placeholder=\"empty: keep the current one\""), "{t}");

    // Sign-in: a wrong key is not put back either.
    let typed_key = "ferry_k_not-known-here-0123456789";
    let r = sign_in(&spoke, typed_key).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!r.text().contains(typed_key), "{}", r.text());
}

/// A large feed is browsed a page at a time, in key order, from the first
/// page to the last by its "Next page" links, every item once; the feed
/// list counts its items and the bytes of its distinct blobs (two items
/// with one content count once); a page start that is no key is a 400.
#[tokio::test]
async fn a_large_feed_is_browsed_a_page_at_a_time() {
    let i = Instance::new().await;
    let cookie = session(&i, ADMIN).await;
    i.feed("big", FeedType::Assets, false).await;
    let puts = (0..450).map(|n| {
        let i = &i;
        async move {
            // Two files share each content: 225 distinct blobs.
            let body = format!("content {:04}", n / 2);
            let r = i
                .send(
                    "PUT",
                    &format!("/assets/big/d{}/f{n:03}.txt", n % 3),
                    Some(ADMIN),
                    &[],
                    body,
                )
                .await;
            assert!(r.status.is_success(), "{}", r.text());
        }
    });
    futures::future::join_all(puts).await;
    let list = page(&i, &cookie, "/feeds").await.text();
    let row = list.split("href=\"/feeds/big\"").nth(1).unwrap_or_default();
    let row = row.split("</tr>").next().unwrap_or_default();
    // 225 blobs of 12 bytes: 2700 bytes.
    assert!(row.contains(">450<") && row.contains("2.6 KiB"), "{row}");

    let mut seen = Vec::new();
    let mut url = "/feeds/big".to_string();
    let mut pages = 0;
    loop {
        let r = page(&i, &cookie, &url).await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text());
        let t = r.text();
        pages += 1;
        assert!(t.contains("450 items in the feed"), "{t}");
        let keys: Vec<String> = t
            .split("/item?key=")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(|s| s.replace("%2F", "/"))
            .collect();
        assert!(keys.len() <= 200, "{}", keys.len());
        seen.extend(keys);
        match t.split("id=\"next-page\" rel=\"next\" href=\"").nth(1) {
            Some(rest) => url = rest.split('"').next().unwrap().replace("&amp;", "&"),
            None => break,
        }
        assert!(pages < 10, "the pages never end");
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "key order, each once");
    assert_eq!(seen.len(), 450);

    // A prefix pages the same way (150 under d1/, one page).
    let t = page(&i, &cookie, "/feeds/big?prefix=d1%2F").await.text();
    assert!(t.contains("150 items in 1 folder<"), "{t}");
    assert!(!t.contains("next-page"), "{t}");
    // Past the end: said so, with the way back.
    let t = page(&i, &cookie, "/feeds/big?after=zzz").await.text();
    assert!(t.contains("No more items") && t.contains("First page"), "{t}");
    let r = page(&i, &cookie, "/feeds/big?after=a%01b").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("not an item key"), "{}", r.text());
    let long = "x".repeat(1025);
    for prefix in ["a%0Db", "%1B[31m", long.as_str()] {
        let r = page(&i, &cookie, &format!("/feeds/big?prefix={prefix}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert!(r.text().contains("key prefix"), "{}", r.text());
    }
}
