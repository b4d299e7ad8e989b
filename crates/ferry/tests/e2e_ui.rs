//! The web UI in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `scripts/test`
//! installs) against two real `ferry` instances. A hub and a spoke are set
//! up entirely through the UI, a file is published on the hub with curl,
//! "Run now" on the spoke copies it, and the execution and the spoke's
//! feed browser show it. The wizard's handshake problems (wrong token,
//! mode mismatch, unreachable, a blob source that refuses its token) are
//! shown as readable errors, with the typed tokens not sent back; a
//! replication is created with a blob source; sizes and rates read in the
//! CLI's binary units; the plan of
//! a slow (capped) execution lists its items and why one would not move,
//! and Stop on the overview ends it; a read-only key is
//! offered no write action; a form posted from another origin is refused.
//! Every page is saved as a screenshot at 1280 and 390 px under `docs/ui/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use support::{ADMIN, Server};

/// chromedriver, started on a free loopback port and stopped by PID.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver; scripts/test installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let ready = support::wait_until(20, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(ready, "chromedriver did not start");
        Driver {
            child,
            url,
            _profile: tempfile::tempdir().unwrap(),
        }
    }

    async fn browser(&self) -> Client {
        let profile = self._profile.path().display().to_string();
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    format!("--user-data-dir={profile}"), "--window-size=1280,900",
                ]
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn shots_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/ui");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Saves the current page at 1280 px and at 390 px wide.
async fn shot(c: &Client, name: &str) {
    for (w, h) in [(390, 844), (1280, 900)] {
        c.set_window_size(w, h).await.unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(shots_dir().join(format!("{name}-{w}.png")), png).unwrap();
    }
}

async fn css(c: &Client, sel: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(sel))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!("no {sel}: {e}\n{}", c.source().await.unwrap_or_default()),
    }
}

/// The page's main text (read again if the page was being replaced).
async fn text(c: &Client) -> String {
    for _ in 0..50 {
        if let Ok(main) = c.find(Locator::Css("main")).await
            && let Ok(t) = main.text().await
        {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no readable page: {}", c.source().await.unwrap_or_default())
}

/// The main text once it contains `needle` (after a form was sent, the
/// next page may take a moment); the last text seen otherwise.
async fn wait_text(c: &Client, needle: &str) -> String {
    let mut t = String::new();
    for _ in 0..100 {
        t = text(c).await;
        if t.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t
}

async fn fill(c: &Client, sel: &str, value: &str) {
    let e = css(c, sel).await;
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn click(c: &Client, sel: &str) {
    css(c, sel).await.click().await.unwrap();
}

async fn sign_in(c: &Client, server: &Server, key: &str) {
    c.goto(&format!("{}/login", server.url)).await.unwrap();
    // Each instance keeps its own session cookie, also on one host: an
    // instance signed in earlier is signed in still.
    if c.find(Locator::Css("form.signout")).await.is_ok() {
        return;
    }
    fill(c, "#key", key).await;
    click(c, "form[action='/login'] button[type=submit]").await;
    css(c, "form.signout").await;
}

async fn sign_out(c: &Client) {
    click(c, "form.signout button").await;
    css(c, "#key").await;
}

async fn create_feed(c: &Client, server: &Server, name: &str) {
    c.goto(&format!("{}/feeds", server.url)).await.unwrap();
    fill(c, "#feed-name", name).await;
    css(c, "#feed-type")
        .await
        .select_by_value("assets")
        .await
        .unwrap();
    click(c, "form[action='/feeds'] button[type=submit]").await;
    let t = wait_text(c, "created").await;
    assert!(t.contains(&format!("Feed {name} (assets) created")), "{t}");
}

/// Fills the wizard: one feed, the direction, the mode, the name.
async fn wizard(
    c: &Client,
    server: &Server,
    name: &str,
    feed: &str,
    outgoing: Option<(&str, &str)>,
    mode: &str,
) {
    c.goto(&format!("{}/replications/new", server.url)).await.unwrap();
    click(c, &format!("#feed-{feed}")).await;
    match outgoing {
        Some((url, token)) => {
            click(c, "input[name=direction][value=outgoing]").await;
            fill(c, "#url", url).await;
            fill(c, "#token", token).await;
        }
        None => click(c, "input[name=direction][value=incoming]").await,
    }
    click(c, &format!("input[name=mode][value={mode}]")).await;
    fill(c, "#interval", "3600").await;
    fill(c, "#name", name).await;
}

/// The rows of a replication page's executions table, as text.
async fn execution_rows(c: &Client, page: &str) -> Vec<String> {
    c.goto(page).await.unwrap();
    css(c, "h1").await;
    let rows = c
        .find_all(Locator::Css("table.executions tbody tr"))
        .await
        .unwrap();
    let mut out = Vec::new();
    for r in rows {
        out.push(r.text().await.unwrap());
    }
    out
}

async fn submit_wizard(c: &Client) {
    click(c, "form.wizard button[type=submit]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_spoke_set_up_and_replicated_entirely_through_the_ui() {
    let started = Instant::now();
    let hub = Server::start();
    let spoke = Server::start();
    let driver = Driver::start();
    let c = driver.browser().await;

    // ---- hub: sign in, a feed, the incoming replication and its token.
    c.goto(&format!("{}/login", hub.url)).await.unwrap();
    css(&c, "#key").await;
    shot(&c, "login").await;
    sign_in(&c, &hub, ADMIN).await;
    let t = text(&c).await;
    assert!(t.contains("No replications yet"), "{t}");
    shot(&c, "overview-empty").await;

    create_feed(&c, &hub, "releases").await;
    shot(&c, "feeds-created").await;

    wizard(&c, &hub, "edge", "releases", None, "push").await;
    shot(&c, "wizard").await;
    submit_wizard(&c).await;
    let token = css(&c, "#sync-token").await.prop("value").await.unwrap().unwrap();
    assert!(token.starts_with("fst_"), "{token}");
    let t = text(&c).await;
    assert!(t.contains("This token is shown once"), "{t}");
    assert!(
        t.contains("Outgoing") && t.contains("pull"),
        "the spoke's values: {t}"
    );
    click(&c, "button[data-copy]").await;
    shot(&c, "wizard-token").await;

    // Published with its real client (curl -T) on the hub.
    hub.put_asset("releases", "tools/app-1.0.tar.gz", b"the first release\n");

    // ---- spoke: a feed, then the outgoing replication with the token.
    sign_in(&c, &spoke, ADMIN).await;
    create_feed(&c, &spoke, "releases").await;

    // A wrong token: said in plain words, nothing created.
    let wrong = format!("fst_{}_{}", "0".repeat(16), "0".repeat(64));
    wizard(
        &c,
        &spoke,
        "from-hub",
        "releases",
        Some((&hub.url, &wrong)),
        "pull",
    )
    .await;
    submit_wizard(&c).await;
    let err = css(&c, "p.error").await.text().await.unwrap();
    assert!(err.contains("did not accept the sync token"), "{err}");
    shot(&c, "wizard-error-token").await;

    // A mode mismatch: both modes and the fix named.
    wizard(
        &c,
        &spoke,
        "from-hub",
        "releases",
        Some((&hub.url, &token)),
        "mirror",
    )
    .await;
    submit_wizard(&c).await;
    let err = css(&c, "p.error").await.text().await.unwrap();
    assert!(
        err.contains("push") && err.contains("mirror"),
        "mode mismatch: {err}"
    );
    shot(&c, "wizard-error-mode").await;

    // An address where nothing answers: said so, the values kept, and
    // "create it anyway" offered.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    wizard(
        &c,
        &spoke,
        "from-hub",
        "releases",
        Some((&closed, &token)),
        "pull",
    )
    .await;
    submit_wizard(&c).await;
    let err = css(&c, "p.error").await.text().await.unwrap();
    assert!(err.contains("Nothing answers at"), "{err}");
    assert!(!err.contains("os error"), "{err}");
    assert_eq!(
        css(&c, "#url").await.prop("value").await.unwrap().unwrap(),
        closed
    );
    css(&c, "input[name=anyway]").await;
    shot(&c, "wizard-error-unreachable").await;

    // A blob source that refuses its token (a Ferry instance that knows
    // no such token): said on the form, nothing created, and the tokens
    // typed are not sent back.
    let source_secret = "d4".repeat(32);
    wizard(
        &c,
        &spoke,
        "from-hub",
        "releases",
        Some((&hub.url, &token)),
        "pull",
    )
    .await;
    fill(&c, "#source-url-0", &spoke.url).await;
    fill(
        &c,
        "#source-token-0",
        &format!("fst_00000000000000d4_{source_secret}"),
    )
    .await;
    submit_wizard(&c).await;
    let err = css(&c, "p.error").await.text().await.unwrap();
    assert!(
        err.contains(&format!("blob source {}", spoke.url)) && err.contains("does not accept the token"),
        "{err}"
    );
    assert!(err.contains("type them again"), "{err}");
    assert_eq!(
        css(&c, "#source-url-0")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some(spoke.url.as_str())
    );
    for field in ["#token", "#source-token-0"] {
        let v = css(&c, field).await.prop("value").await.unwrap();
        assert_eq!(v.as_deref(), Some(""), "{field} came back filled");
    }
    let html = c.source().await.unwrap();
    assert!(
        !html.contains(&source_secret) && !html.contains(&token[21..]),
        "a typed token is in the page"
    );
    assert!(!spoke.cli_ok(&["replication", "list"]).contains("from-hub"));
    shot(&c, "wizard-error-source").await;

    // The right one, with a blob source that is not running yet (accepted:
    // runs leave it out while it stays so): listed on its page.
    let cache = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    wizard(
        &c,
        &spoke,
        "from-hub",
        "releases",
        Some((&hub.url, &token)),
        "pull",
    )
    .await;
    fill(&c, "#source-url-0", &cache).await;
    fill(
        &c,
        "#source-token-0",
        &format!("fst_00000000000000d4_{source_secret}"),
    )
    .await;
    submit_wizard(&c).await;
    css(&c, "dl.values").await;
    let t = text(&c).await;
    assert!(
        t.contains("Replication from-hub") && t.contains("outgoing"),
        "{t}"
    );
    let listed = css(&c, "#blob-sources").await.text().await.unwrap();
    assert!(listed.contains(&cache), "{listed}");
    assert!(!c.source().await.unwrap().contains(&source_secret));

    // ---- Run now on the overview; the execution succeeds with its counts and log.
    // (The spoke's first scheduled run, and its long poll of the hub, may
    // already have run: Run now must add one more execution, which succeeds.)
    let detail = format!("{}/replications/from-hub", spoke.url);
    let settled = async {
        let mut last = execution_rows(&c, &detail).await;
        loop {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let now = execution_rows(&c, &detail).await;
            if now == last && !now.is_empty() && now.iter().all(|r| !r.contains("running")) {
                return now.len();
            }
            last = now;
        }
    };
    let before = tokio::time::timeout(Duration::from_secs(20), settled)
        .await
        .expect("executions settle");
    c.goto(&format!("{}/", spoke.url)).await.unwrap();
    css(&c, "tr[data-repl='from-hub']").await;
    click(&c, "tr[data-repl='from-hub'] form button").await;
    css(&c, "#overview").await;
    shot(&c, "overview").await;
    let mut ran = false;
    for _ in 0..50 {
        let now = execution_rows(&c, &detail).await;
        if now.len() > before && now[0].contains("succeeded") {
            ran = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ran, "Run now added an execution that succeeded");
    let newest = execution_rows(&c, &detail).await.remove(0);
    assert!(
        newest.contains("manual"),
        "Run now is recorded as manual: {newest}"
    );
    shot(&c, "replication").await;

    // The execution that copied the file.
    let rows = c
        .find_all(Locator::Css("table.executions tbody tr"))
        .await
        .unwrap();
    let mut opened = false;
    for row in rows {
        let cells = row.find_all(Locator::Css("td")).await.unwrap();
        let outcome = cells[1].text().await.unwrap();
        let copied = cells[5].text().await.unwrap();
        if outcome == "succeeded" && copied == "1" {
            cells[0]
                .find(Locator::Css("a"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            opened = true;
            break;
        }
    }
    assert!(opened, "an execution copied one item");
    let counts = css(&c, "#counts").await.text().await.unwrap();
    assert!(counts.contains("releases = releases"), "{counts}");
    // A pull shows its pulled figures only.
    assert!(
        counts.contains("pulled") && !counts.contains("pushed"),
        "{counts}"
    );
    assert_eq!(
        css(&c, "#counts td[data-count=copied]")
            .await
            .text()
            .await
            .unwrap(),
        "1"
    );
    let log = css(&c, "#log").await.text().await.unwrap();
    assert!(!log.trim().is_empty());
    shot(&c, "execution").await;

    // ---- the file in the spoke's feed browser, and its item page.
    c.goto(&format!("{}/feeds/releases", spoke.url)).await.unwrap();
    let items = css(&c, "#items").await.text().await.unwrap();
    assert!(
        items.contains("tools") && items.contains("app-1.0.tar.gz"),
        "{items}"
    );
    shot(&c, "feed-browser").await;
    click(&c, "#items a").await;
    let t = wait_text(&c, "sha256:").await;
    assert!(t.contains("tools/app-1.0.tar.gz") && t.contains("sha256:"), "{t}");
    shot(&c, "item").await;
    // Deleting it asks first, naming the item.
    click(&c, "a.button.danger").await;
    let t = wait_text(&c, "cannot be undone").await;
    assert!(t.contains("the file tools/app-1.0.tar.gz"), "{t}");
    shot(&c, "item-delete").await;
    click(&c, "main form a").await;
    wait_text(&c, "sha256:").await;

    c.goto(&format!("{}/replications/from-hub/edit", spoke.url))
        .await
        .unwrap();
    css(&c, "#url").await;
    shot(&c, "replication-edit").await;
    // Blob sources: a bad URL is refused with the reason, a good one is
    // listed by URL on the replication's page with its token in no page,
    // and emptying the URL removes it again.
    let secret = "c3".repeat(32);
    let source_token = format!("fst_00000000000000c3_{secret}");
    fill(&c, "#source-url-0", "ftp://cache.site").await;
    fill(&c, "#source-token-0", &source_token).await;
    click(&c, "form.card button[type=submit]").await;
    let t = wait_text(&c, "must be an http:// or https:// URL").await;
    assert!(
        t.contains("blob source \"ftp://cache.site\" must be an http:// or https:// URL with a host"),
        "{t}"
    );
    fill(&c, "#source-url-0", "http://cache.site:8765").await;
    fill(&c, "#source-token-0", &source_token).await;
    click(&c, "form.card button[type=submit]").await;
    let listed = css(&c, "#blob-sources").await.text().await.unwrap();
    assert!(listed.contains("http://cache.site:8765"), "{listed}");
    assert!(
        !c.source().await.unwrap().contains(&secret),
        "a stored token is in the page"
    );
    shot(&c, "replication-blob-sources").await;
    c.goto(&format!("{}/replications/from-hub/edit", spoke.url))
        .await
        .unwrap();
    let kept = css(&c, "#source-url-0").await.prop("value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("http://cache.site:8765"));
    assert!(
        !c.source().await.unwrap().contains(&secret),
        "a stored token is in the edit form"
    );
    fill(&c, "#source-url-0", "").await;
    click(&c, "form.card button[type=submit]").await;
    let listed = css(&c, "#blob-sources").await.text().await.unwrap();
    assert!(listed.contains("none"), "{listed}");
    c.goto(&format!("{}/feeds/releases/delete", spoke.url))
        .await
        .unwrap();
    let t = text(&c).await;
    assert!(
        t.contains("with its 1 item (") && t.contains("from-hub"),
        "the confirmation names what goes: {t}"
    );
    shot(&c, "feed-delete").await;
    c.goto(&format!("{}/executions", spoke.url)).await.unwrap();
    css(&c, "table.executions").await;
    shot(&c, "executions").await;
    // A filter on an outcome no execution has says so; one that is not an
    // outcome is refused, naming those there are.
    c.goto(&format!("{}/executions?outcome=needs-confirmation", spoke.url))
        .await
        .unwrap();
    let t = text(&c).await;
    assert!(t.contains("No executions with outcome needs-confirmation"), "{t}");
    c.goto(&format!("{}/executions?outcome=bogus", spoke.url))
        .await
        .unwrap();
    let t = text(&c).await;
    assert!(
        t.contains("unknown outcome \"bogus\"") && t.contains("succeeded"),
        "{t}"
    );
    // ---- a slow execution: the plan lists its items, and Stop ends it.
    // A cap of 1 KiB/s (the lowest) and an exclude pattern, set on the
    // edit page.
    c.goto(&format!("{}/replications/from-hub/edit", spoke.url))
        .await
        .unwrap();
    fill(&c, "#bandwidth", "1024").await;
    fill(&c, "#exclude", "*.tmp").await;
    click(&c, "form.card button[type=submit]").await;
    let values = css(&c, "dl.values").await.text().await.unwrap();
    assert!(
        values.contains("1.0 KiB/s"),
        "the cap, as the CLI writes sizes: {values}"
    );
    hub.put_asset("releases", "tools/app-2.0.tar.gz", &vec![b'2'; 300_000]);
    hub.put_asset("releases", "notes.tmp", b"scratch\n");
    c.goto(&format!("{}/", spoke.url)).await.unwrap();
    let stop = "tr[data-repl='from-hub'] form[data-field=stop]:not([hidden]) button";
    css(&c, stop).await;
    c.goto(&format!("{}/replications/from-hub/plan", spoke.url))
        .await
        .unwrap();
    let t = wait_text(&c, "Would not move").await;
    let moving = css(&c, "table[data-plan=move]").await.text().await.unwrap();
    assert!(
        moving.contains("tools/app-2.0.tar.gz") && moving.contains("copy"),
        "{t}"
    );
    // Its size, and the total to move, in the CLI's binary units.
    assert!(moving.contains("293.0 KiB"), "{t}");
    assert!(
        css(&c, "#plan-total")
            .await
            .text()
            .await
            .unwrap()
            .contains("293.0 KiB"),
        "{t}"
    );
    let staying = css(&c, "table[data-plan=stay]").await.text().await.unwrap();
    assert!(
        staying.contains("notes.tmp") && staying.contains("filtered out"),
        "{t}"
    );
    shot(&c, "plan").await;
    c.goto(&format!("{}/", spoke.url)).await.unwrap();
    // The running execution's progress reads as the CLI's does, in binary
    // units. With a filter (`*.tmp` excluded) the other side's count of
    // the backlog is the whole feed's, so no bytes "to go" are claimed:
    // items and bytes moved, at 1000 bytes/s.
    let progress = wait_text(&c, " KiB · ").await;
    assert!(progress.contains(" items · "), "{progress}");
    assert!(!progress.contains("to go"), "{progress}");
    assert!(
        !progress.contains(" KB") && !progress.contains(" MB"),
        "decimal units on the overview: {progress}"
    );
    let listed = spoke.cli_ok(&["replication", "list"]);
    assert!(
        listed.contains("running") && !listed.contains("to go"),
        "{listed}"
    );
    shot(&c, "overview-running").await;
    click(&c, stop).await;
    css(&c, "#overview").await;
    let mut stopped = false;
    for _ in 0..50 {
        // (No rows for a moment while the page reloads.)
        if execution_rows(&c, &detail)
            .await
            .first()
            .is_some_and(|r| r.contains("stopped"))
        {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stopped, "Stop ended the running execution");
    shot(&c, "replication-stopped").await;

    // ---- diagnostic center on the hub: the level changes at run time.
    sign_in(&c, &hub, ADMIN).await;
    c.goto(&format!("{}/diagnostics", hub.url)).await.unwrap();
    css(&c, "#min-level")
        .await
        .select_by_value("debug")
        .await
        .unwrap();
    click(&c, "form[action='/diagnostics/level'] button").await;
    let t = wait_text(&c, "now: debug").await;
    assert!(t.contains("now: debug"), "the level changed at run time: {t}");
    shot(&c, "diagnostics").await;
    c.goto(&format!("{}/replications/edge", hub.url)).await.unwrap();
    css(&c, "h1").await;
    shot(&c, "replication-incoming").await;
    c.goto(&format!("{}/", hub.url)).await.unwrap();
    css(&c, "#overview").await;
    shot(&c, "overview-hub").await;

    // ---- API keys: a read-only key, shown once; it is offered no write action.
    c.goto(&format!("{}/keys", hub.url)).await.unwrap();
    fill(&c, "#key-name", "reader").await;
    css(&c, "#key-perm").await.select_by_value("read").await.unwrap();
    click(&c, "form[action='/keys'] button[type=submit]").await;
    let reader = css(&c, "#new-key").await.prop("value").await.unwrap().unwrap();
    shot(&c, "keys").await;
    sign_out(&c).await;
    sign_in(&c, &hub, &reader).await;
    c.goto(&format!("{}/feeds", hub.url)).await.unwrap();
    let page = c.source().await.unwrap();
    assert!(page.contains("releases"));
    for offered in [
        "Create a feed",
        "Delete…",
        "Configure New Replication",
        "API keys",
        "Run now",
    ] {
        assert!(!page.contains(offered), "a read-only key is offered {offered:?}");
    }
    shot(&c, "feeds-read-only").await;

    // ---- a form posted from another origin is refused.
    let forged = format!(
        "data:text/html,<form method=post action='{}/feeds'><input name=csrf value=x>\
         <input name=name value=forged><input name=type value=assets></form>",
        hub.url
    );
    c.goto(&forged).await.unwrap();
    c.execute("document.forms[0].submit()", vec![]).await.unwrap();
    let refused = css(&c, "p.error").await.text().await.unwrap();
    assert!(
        refused.contains("not sent from a page of this Ferry instance"),
        "{refused}"
    );
    let (_, feeds) = support::curl(&[
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        &format!("{}/api/v1/feeds", hub.url),
    ]);
    assert!(!String::from_utf8_lossy(&feeds).contains("forged"));

    c.close().await.unwrap();
    drop(driver);
    eprintln!("browser test took {:?}", started.elapsed());
}
