//! The web UI in process: sign-in and sign-out, the session cookie's
//! flags, CSRF refusals, what a read-only key is offered and refused,
//! escaping of hostile names, and the session cap.
#![allow(clippy::unwrap_used)]

mod common;

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
    assert!(set.starts_with("ferry_session="), "{set}");
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
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert!(
        r.text().contains("/assets/good/PATH"),
        "client hint: {}",
        r.text()
    );
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
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
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
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("fst_") && r.text().contains("shown once"));
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
}
