//! Client commands: thin calls to the management API of a running instance.

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{BundleCmd, ConfigCmd, Conn, FeedCmd, FeedKeyCmd, InstanceCmd, KeyCmd, ReplCmd, RpmCmd};

/// The HTTP client of this process: http:// and https:// URLs, trusting the
/// system's CAs and those in `--tls-ca-file` (`FERRY_TLS_CA_FILE`). Built
/// once, on the blocking pool (it reads the CA store).
async fn http_client(conn: &Conn) -> anyhow::Result<reqwest::Client> {
    static CLIENT: tokio::sync::OnceCell<reqwest::Client> = tokio::sync::OnceCell::const_new();
    let ca_file = conn.tls_ca_file.clone();
    let client = CLIENT
        .get_or_try_init(|| async move {
            let tls = tokio::task::spawn_blocking(move || crate::tls::client_config(ca_file.as_deref()))
                .await
                .context("loading TLS roots")??;
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .build()
                .context("building the HTTP client")
        })
        .await?;
    Ok(client.clone())
}

/// A request to the instance, with the key when one is configured.
async fn request(conn: &Conn, method: Method, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
    let url = format!("{}{path}", conn.url.trim_end_matches('/'));
    let req = http_client(conn).await?.request(method, url);
    Ok(match &conn.api_key {
        Some(key) => req.bearer_auth(key),
        None => req,
    })
}

async fn call(conn: &Conn, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let mut req = request(conn, method, path).await?;
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {}", conn.url))?;
    let text = checked(conn, resp).await?.text().await.unwrap_or_default();
    Ok(if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(json!(text))
    })
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn feed(cmd: FeedCmd) -> anyhow::Result<()> {
    match cmd {
        FeedCmd::Create {
            name,
            feed_type,
            private,
            conn,
        } => {
            let body = json!({ "name": name, "type": feed_type, "private": private });
            call(&conn, Method::POST, "/api/v1/feeds", Some(body)).await?;
            say!("created {feed_type} feed {name}");
        }
        FeedCmd::List { json, conn } => {
            let feeds = call(&conn, Method::GET, "/api/v1/feeds", None).await?;
            if json {
                return print_json(&feeds);
            }
            for f in feeds.as_array().into_iter().flatten() {
                let vis = if f["private"].as_bool() == Some(true) {
                    "private"
                } else {
                    "public"
                };
                say!(
                    "{}\t{}\t{vis}",
                    f["name"].as_str().unwrap_or("?"),
                    f["type"].as_str().unwrap_or("?")
                );
            }
        }
        FeedCmd::Delete { name, conn } => {
            call(&conn, Method::DELETE, &format!("/api/v1/feeds/{name}"), None).await?;
            say!("deleted feed {name}");
        }
        FeedCmd::Key(FeedKeyCmd::Import { feed, file, conn }) => {
            let secret = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the key from standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let body = json!({ "secret_key": secret });
            let v = call(
                &conn,
                Method::PUT,
                &format!("/api/v1/feeds/{feed}/signing-key"),
                Some(body),
            )
            .await?;
            say!(
                "feed {feed} now signs with key {}",
                v["fingerprint"].as_str().unwrap_or("?")
            );
        }
        FeedCmd::Key(FeedKeyCmd::Export { feed, conn }) => {
            let v = call(
                &conn,
                Method::GET,
                &format!("/api/v1/feeds/{feed}/signing-key"),
                None,
            )
            .await?;
            say!("{}", v["public_key"].as_str().unwrap_or_default().trim_end());
        }
    }
    Ok(())
}

pub async fn rpm(cmd: RpmCmd) -> anyhow::Result<()> {
    match cmd {
        RpmCmd::Delete {
            feed,
            name,
            evr,
            arch,
            conn,
        } => {
            let path = format!("/rpm/{feed}/package/{name}/{evr}/{arch}");
            call(&conn, Method::DELETE, &path, None).await?;
            say!("deleted {name}-{evr}.{arch} from feed {feed}");
        }
    }
    Ok(())
}

/// The feeds a scoped key may use, comma-separated; "(none)" for a key
/// whose feeds were all deleted.
fn key_feeds(feeds: &[Value]) -> String {
    if feeds.is_empty() {
        return "(none)".into();
    }
    feeds
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn key(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create {
            name,
            permission,
            feeds,
            conn,
        } => {
            let feeds = if feeds.is_empty() {
                Value::Null
            } else {
                json!(feeds)
            };
            let body = json!({ "name": name, "permission": permission, "feeds": feeds });
            let created = call(&conn, Method::POST, "/api/v1/keys", Some(body)).await?;
            // The secret alone on stdout (scripts capture it); what it may
            // do on stderr.
            say!("{}", created["key"].as_str().unwrap_or_default());
            esay!(
                "created API key {} with {} permission on {}",
                created["name"].as_str().unwrap_or("?"),
                created["permission"].as_str().unwrap_or("?"),
                match created["feeds"].as_array() {
                    Some(fs) => format!("feed(s) {}", key_feeds(fs)),
                    None => "every feed".into(),
                }
            );
        }
        KeyCmd::List { json, conn } => {
            let keys = call(&conn, Method::GET, "/api/v1/keys", None).await?;
            if json {
                return print_json(&keys);
            }
            for k in keys.as_array().into_iter().flatten() {
                let feeds = match k["feeds"].as_array() {
                    Some(fs) => key_feeds(fs),
                    None => "*".into(),
                };
                say!(
                    "{}\t{}\t{feeds}",
                    k["name"].as_str().unwrap_or("?"),
                    k["permission"].as_str().unwrap_or("?")
                );
            }
        }
        KeyCmd::Delete { name, conn } => {
            call(&conn, Method::DELETE, &format!("/api/v1/keys/{name}"), None).await?;
            say!("revoked key {name}");
        }
    }
    Ok(())
}

pub async fn instance(cmd: InstanceCmd) -> anyhow::Result<()> {
    let (path, method, json, conn) = match cmd {
        InstanceCmd::Show { json, conn } => ("/api/v1/instance", Method::GET, json, conn),
        InstanceCmd::NewId { json, conn } => ("/api/v1/instance/new-id", Method::POST, json, conn),
    };
    let r = call(&conn, method, path, None).await?;
    if json {
        return print_json(&r);
    }
    say!(
        "instance id {} (Ferry {})",
        r["instance_id"].as_str().unwrap_or("?"),
        r["version"].as_str().unwrap_or("?")
    );
    if let Some(next) = r["next_instance_id"].as_str() {
        say!("next start takes instance id {next}: restart the instance (every node of it) to use it");
    }
    Ok(())
}

pub async fn gc(conn: Conn) -> anyhow::Result<()> {
    let report = call(&conn, Method::POST, "/api/v1/gc", None).await?;
    say!("deleted {} unreferenced blobs", report["blobs_deleted"]);
    if report["partials_removed"].as_u64().is_some_and(|n| n > 0) {
        say!(
            "removed {} interrupted transfers left idle for a week",
            report["partials_removed"]
        );
    }
    Ok(())
}

pub async fn fsck(conn: Conn, repair: bool, sample: f64, json: bool) -> anyhow::Result<()> {
    let r = call(
        &conn,
        Method::POST,
        "/api/v1/fsck",
        Some(json!({ "repair": repair, "sample": sample })),
    )
    .await?;
    if json {
        print_json(&r)?;
    } else {
        say!(
            "checked {} blobs ({} bytes), {} not sampled",
            r["checked"],
            r["bytes"],
            r["skipped"]
        );
        for d in r["missing"].as_array().into_iter().flatten() {
            say!("missing {}", d.as_str().unwrap_or("?"));
        }
        for d in r["corrupt"].as_array().into_iter().flatten() {
            say!("corrupt {} (taken out of service)", d.as_str().unwrap_or("?"));
        }
        for rep in r["repairs"].as_array().into_iter().flatten() {
            let d = rep["digest"].as_str().unwrap_or("?");
            match rep["repaired_from"].as_str() {
                Some(from) => say!("repaired {d} from replication {from}"),
                None => say!("could not repair {d}: {}", rep["errors"]),
            }
        }
    }
    let damaged = r["damaged"].as_array().map_or(0, Vec::len);
    if damaged > 0 {
        anyhow::bail!("{damaged} stored blobs are damaged");
    }
    Ok(())
}

fn counts_line(c: &Value) -> String {
    format!(
        "+{} ~{} -{} ({} skipped, {} conflicts, {} blobs, {} bytes)",
        c["added"], c["updated"], c["deleted"], c["skipped"], c["conflicts"], c["blobs"], c["bytes"]
    )
}

fn print_report(report: &Value) -> anyhow::Result<()> {
    for f in report["feeds"].as_array().into_iter().flatten() {
        let (l, r) = (
            f["local"].as_str().unwrap_or("?"),
            f["remote"].as_str().unwrap_or("?"),
        );
        // Only the directions the mode runs (a report recorded before
        // reports said so shows both).
        if f["pulls"].as_bool().unwrap_or(true) {
            say!("  {l} <- {r}: pulled {}", counts_line(&f["pulled"]));
        }
        if f["pushes"].as_bool().unwrap_or(true) {
            say!("  {l} -> {r}: pushed {}", counts_line(&f["pushed"]));
        }
    }
    if let Some(m) = report["moved"].as_object() {
        say!(
            "  not finished: {} changes gone through, {} bytes moved (the next execution goes on from there)",
            m.get("changes").unwrap_or(&Value::Null),
            m.get("bytes").unwrap_or(&Value::Null)
        );
    }
    for line in report["log"].as_array().into_iter().flatten() {
        say!(
            "  [{}] {}",
            line["level"].as_str().unwrap_or(""),
            line["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn replication(cmd: ReplCmd) -> anyhow::Result<()> {
    match cmd {
        ReplCmd::Create {
            name,
            feeds,
            incoming: _,
            outgoing,
            token,
            mode,
            pull_missing,
            push_missing,
            delete_local,
            delete_remote,
            include,
            exclude,
            interval,
            carry_downloads,
            bandwidth_limit,
            inline_max_bytes,
            sources,
            conn,
        } => {
            let blob_sources = sources.to_json()?.unwrap_or_else(|| json!([]));
            let body = json!({
                "name": name, "feeds": feeds, "outgoing": outgoing, "token": token, "mode": mode,
                "pull_missing": pull_missing, "push_missing": push_missing,
                "delete_local": delete_local, "delete_remote": delete_remote,
                "include": include, "exclude": exclude, "interval": interval,
                "carry_downloads": carry_downloads, "bandwidth_limit": bandwidth_limit,
                "inline_max_bytes": inline_max_bytes, "blob_sources": blob_sources,
            });
            let created = call(&conn, Method::POST, "/api/v1/replications", Some(body)).await?;
            let dir = if outgoing.is_some() {
                "outgoing"
            } else {
                "incoming"
            };
            say!("created {dir} {mode} replication {name}");
            if let Some(w) = created["warning"].as_str() {
                esay!("warning: {w}");
            }
        }
        ReplCmd::Update {
            name,
            outgoing,
            token,
            include,
            exclude,
            no_filters,
            interval,
            carry_downloads,
            bandwidth_limit,
            inline_max_bytes,
            sources,
            no_blob_sources,
            conn,
        } => {
            let mut body = serde_json::Map::new();
            let mut set = |k: &str, v: Value| {
                if !v.is_null() {
                    body.insert(k.to_string(), v);
                }
            };
            set("outgoing", json!(outgoing));
            set("token", json!(token));
            if no_filters {
                set("include", json!([]));
                set("exclude", json!([]));
            }
            if !include.is_empty() {
                set("include", json!(include));
            }
            if !exclude.is_empty() {
                set("exclude", json!(exclude));
            }
            set("interval", json!(interval));
            set("carry_downloads", json!(carry_downloads));
            set("bandwidth_limit", json!(bandwidth_limit));
            set("inline_max_bytes", json!(inline_max_bytes));
            if no_blob_sources {
                set("blob_sources", json!([]));
            }
            if let Some(list) = sources.to_json()? {
                set("blob_sources", list);
            }
            if body.is_empty() {
                anyhow::bail!("nothing to change: give at least one option (see --help)");
            }
            let updated = call(
                &conn,
                Method::PATCH,
                &format!("/api/v1/replications/{name}"),
                Some(Value::Object(body)),
            )
            .await?;
            say!("updated replication {name}");
            if let Some(w) = updated["warning"].as_str() {
                esay!("warning: {w}");
            }
        }
        ReplCmd::Token { name, conn } => {
            let r = call(
                &conn,
                Method::POST,
                &format!("/api/v1/replications/{name}/tokens"),
                None,
            )
            .await?;
            say!("{}", r["token"].as_str().unwrap_or_default());
            if let Some(w) = r["warning"].as_str() {
                esay!("warning: {w}");
            }
        }
        ReplCmd::Revoke { name, token_id, conn } => {
            call(
                &conn,
                Method::DELETE,
                &format!("/api/v1/replications/{name}/tokens/{token_id}"),
                None,
            )
            .await?;
            say!("revoked token {token_id} of {name}");
        }
        ReplCmd::Run {
            name,
            wait,
            confirm_deletes,
            full,
            conn,
        } => {
            let body = json!({ "wait": wait, "confirm_deletes": confirm_deletes, "full": full });
            let r = call(
                &conn,
                Method::POST,
                &format!("/api/v1/replications/{name}/run"),
                Some(body),
            )
            .await?;
            if !(wait || confirm_deletes || full) {
                say!("started an execution of {name}");
                return Ok(());
            }
            if let Some(w) = r["waited_for"].as_object() {
                say!(
                    "execution {} of {name} was running already; it ended: {}",
                    w.get("id").unwrap_or(&Value::Null),
                    w.get("outcome").and_then(|o| o.as_str()).unwrap_or("unknown")
                );
                print_report(&r["waited_for"]["report"])?;
            }
            let outcome = r["outcome"].as_str().unwrap_or("unknown");
            say!("execution {} of {name}: {outcome}", r["id"]);
            print_report(&r["report"])?;
            match outcome {
                "succeeded" => {}
                "stopped" => bail!("execution was stopped before it ended"),
                "needs-confirmation" => {
                    bail!("execution stopped before deleting; rerun with --confirm-deletes to proceed")
                }
                _ => bail!(
                    "execution failed: {}",
                    r["error"].as_str().unwrap_or("see the log above")
                ),
            }
        }
        ReplCmd::Stop { name, conn } => {
            let r = call(
                &conn,
                Method::POST,
                &format!("/api/v1/replications/{name}/stop"),
                None,
            )
            .await?;
            say!("stopped execution {} of {name}", r["stopped"]);
        }
        ReplCmd::List { json, conn } => {
            let list = call(&conn, Method::GET, "/api/v1/replications", None).await?;
            if json {
                return print_json(&list);
            }
            for r in list.as_array().into_iter().flatten() {
                let c = &r["config"];
                let dir = c["direction"].as_str().unwrap_or("?");
                let lag: Vec<String> = r["status"]["lag"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(f, l)| {
                        format!(
                            "{f}:{} changes/{:.1}s",
                            l["changes"],
                            l["seconds"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect();
                say!(
                    "{}\t{dir}\t{}\t{}\tlast={}\tnext={}\tlag={}",
                    r["name"].as_str().unwrap_or("?"),
                    c["mode"]["name"].as_str().unwrap_or("?"),
                    r["status"]["state"].as_str().unwrap_or("?"),
                    r["status"]["last_outcome"].as_str().unwrap_or("-"),
                    r["status"]["next_run"].as_str().unwrap_or("-"),
                    if lag.is_empty() { "-".into() } else { lag.join(",") }
                );
                if r["running"].is_object() {
                    say!("  {}", running_text(&r["running"]));
                }
                if let Some(m) = r["status"]["id_shared"].as_str() {
                    say!("  WARNING from the other instance: {m}");
                }
                if let Some(u) = r["status"]["unreachable"].as_object() {
                    say!(
                        "  other instance unreachable since {}: {}{}",
                        u.get("since").and_then(|v| v.as_str()).unwrap_or("?"),
                        u.get("error").and_then(|v| v.as_str()).unwrap_or("?"),
                        if lag.is_empty() {
                            String::new()
                        } else {
                            format!(" (lag as last measured{})", lag_measured(&r["status"]["lag"]))
                        }
                    );
                } else if r["status"]["last_outcome"].as_str() == Some("failed") && !lag.is_empty() {
                    say!("  lag as last measured{}", lag_measured(&r["status"]["lag"]));
                }
                if let Some(e) = r["status"]["last_error"].as_str() {
                    say!("  last error: {e}");
                }
            }
        }
        ReplCmd::Executions { name, json, conn } => {
            let list = call(
                &conn,
                Method::GET,
                &format!("/api/v1/replications/{name}/executions"),
                None,
            )
            .await?;
            if json {
                return print_json(&list);
            }
            for e in list.as_array().into_iter().flatten() {
                say!(
                    "#{}\t{}\t{}\t{}",
                    e["id"],
                    e["trigger"].as_str().unwrap_or("?"),
                    ferry_core::rfc3339(e["started_at"].as_i64().unwrap_or(0)),
                    e["outcome"].as_str().unwrap_or("running")
                );
                print_report(&e["report"])?;
            }
        }
        ReplCmd::Peers {
            name,
            json,
            forget: Some(instance),
            conn,
        } => {
            let instance: ferry_types::InstanceId = instance.parse().map_err(|_| {
                anyhow::anyhow!("--forget takes an instance id (32 hex digits, as `replication peers` lists)")
            })?;
            call(
                &conn,
                Method::DELETE,
                &format!("/api/v1/replications/{name}/peers/{instance}"),
                None,
            )
            .await?;
            if json {
                return print_json(&serde_json::json!({ "forgot": instance }));
            }
            say!("forgot peer {instance} of {name}");
        }
        ReplCmd::Peers { name, json, conn, .. } => {
            let list = call(
                &conn,
                Method::GET,
                &format!("/api/v1/replications/{name}/peers"),
                None,
            )
            .await?;
            if json {
                return print_json(&list);
            }
            let peers = list.as_array().cloned().unwrap_or_default();
            if peers.is_empty() {
                say!(
                    "no instance is listed for {name}: none has connected yet (or those that had were forgotten)"
                );
            }
            for p in &peers {
                let state = if p["stale"].as_bool() == Some(true) {
                    "STALE"
                } else if p["connected"].as_bool() == Some(true) {
                    "connected"
                } else {
                    "seen"
                };
                say!(
                    "{}\t{}\t{}\tFerry {}\tfrom {}\ttoken {}\tlast contact {:.0} s ago\tlag {:.1} s",
                    p["instance_id"].as_str().unwrap_or("?"),
                    p["name"].as_str().unwrap_or("-"),
                    state,
                    p["ferry_version"].as_str().unwrap_or("?"),
                    p["address"].as_str().unwrap_or("?"),
                    p["token"].as_str().unwrap_or("-"),
                    p["seconds_since_contact"].as_f64().unwrap_or(0.0),
                    p["lag_seconds"].as_f64().unwrap_or(0.0),
                );
                for (feed, f) in p["feeds"].as_object().into_iter().flatten() {
                    let behind = f["lag_changes"].as_i64().unwrap_or(0);
                    say!(
                        "  {feed}: cursor {}, {behind} {} behind ({:.1} s)",
                        f["cursor"],
                        if behind == 1 { "change" } else { "changes" },
                        f["lag_seconds"].as_f64().unwrap_or(0.0)
                    );
                }
                if let Some(e) = p["last_error"]["message"].as_str() {
                    say!("  last error: {e}");
                }
                if let Some(m) = p["id_shared"]["message"].as_str() {
                    say!("  WARNING: {m}");
                }
            }
        }
        ReplCmd::Plan { name, json, conn } => {
            let r = call(
                &conn,
                Method::POST,
                &format!("/api/v1/replications/{name}/plan"),
                None,
            )
            .await?;
            if json {
                return print_json(&r);
            }
            say!("plan for {name} (nothing changed):");
            print_report(&json!({ "feeds": r["feeds"] }))?;
            if r["needs_confirmation"].as_bool() == Some(true) {
                say!("  an execution would stop before deleting (over the deletion limit)");
            }
        }
        ReplCmd::Verify {
            name,
            repair,
            confirm_deletes,
            json,
            conn,
        } => {
            let r = call(
                &conn,
                Method::POST,
                &format!("/api/v1/replications/{name}/verify"),
                Some(json!({ "repair": repair, "confirm_deletes": confirm_deletes })),
            )
            .await?;
            if json {
                print_json(&r)?;
            } else {
                for f in r["feeds"].as_array().into_iter().flatten() {
                    say!(
                        "{} = {}: {} ({} items here, {} there)",
                        f["local"].as_str().unwrap_or("?"),
                        f["remote"].as_str().unwrap_or("?"),
                        if f["same"].as_bool() == Some(true) {
                            "same"
                        } else {
                            "DIFFERENT"
                        },
                        f["local_items"],
                        f["remote_items"]
                    );
                    let n = f["same_version_other_content_count"].as_u64().unwrap_or(0);
                    if n > 0 {
                        let named: Vec<&str> = f["same_version_other_content"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect();
                        let more = (n as usize)
                            .checked_sub(named.len())
                            .filter(|m| *m > 0)
                            .map(|m| format!(" and {m} more"))
                            .unwrap_or_default();
                        say!(
                            "  {n} items are at the same version on both ends with other contents ({}{more}): two instances under one instance id wrote them (see `ferry instance new-id`); write each again where its content should win, and the new version replaces both",
                            named.join(", ")
                        );
                    }
                    let hidden = f["outside_their_filter"].as_u64().unwrap_or(0);
                    if hidden > 0 {
                        say!(
                            "  {hidden} items here are outside the other instance's filter: not compared (the replication carries them neither way)"
                        );
                    }
                    if n == 0 && f["contents_differ"].as_bool() == Some(true) {
                        say!(
                            "  the versions agree and their contents do not: two instances under one instance id wrote some of them (see `ferry instance new-id`); the other instance does not let this one read its entries to name them: verify from its end"
                        );
                    }
                    if f["contents_compared"].as_bool() == Some(false) {
                        say!("  (versions compared, not contents: the other instance does not offer it)");
                    }
                }
            }
            if r["same"].as_bool() != Some(true) {
                // Why the repair stopped short, in its own words.
                let warnings: Vec<&str> = r["repair"]["report"]["log"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|l| l["level"] == "warn")
                    .filter_map(|l| l["message"].as_str())
                    .filter(|m| m.contains("--confirm-deletes"))
                    .collect();
                for w in &warnings {
                    say!("{w}");
                }
                bail!("feeds of {name} differ");
            }
        }
        ReplCmd::Delete { name, conn } => {
            call(
                &conn,
                Method::DELETE,
                &format!("/api/v1/replications/{name}"),
                None,
            )
            .await?;
            say!("deleted replication {name}");
        }
        ReplCmd::Log { level, json, conn } => {
            if let Some(level) = level {
                call(
                    &conn,
                    Method::PUT,
                    "/api/v1/logs/replication/level",
                    Some(json!({ "level": level })),
                )
                .await?;
                say!("replication log level set to {level}");
                return Ok(());
            }
            let r = call(&conn, Method::GET, "/api/v1/logs/replication", None).await?;
            if json {
                return print_json(&r);
            }
            for l in r["lines"].as_array().into_iter().flatten() {
                say!(
                    "{} {} {}",
                    l["time"].as_str().unwrap_or(""),
                    l["level"].as_str().unwrap_or(""),
                    l["message"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

async fn checked(conn: &Conn, resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let reason = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(text);
    if status == StatusCode::UNAUTHORIZED && conn.api_key.is_none() {
        bail!("{reason} (pass --api-key or set FERRY_API_KEY)");
    }
    bail!("{} {}", status.as_u16(), reason.trim())
}

pub async fn config(cmd: ConfigCmd) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Apply { file, conn } => {
            let cfg = crate::config::Config::load(Some(&file))?;
            let decls = cfg.declarations()?.context("the file declares nothing")?;
            let body = serde_json::to_value(&decls)?;
            let r = call(&conn, Method::PUT, "/api/v1/config", Some(body))
                .await
                .with_context(|| format!("{} was not applied", file.display()))?;
            for (kind, list) in [("feed", &r["feeds"]), ("replication", &r["replications"])] {
                for pair in list.as_array().into_iter().flatten() {
                    say!(
                        "{kind} {}: {}",
                        pair[0].as_str().unwrap_or("?"),
                        pair[1].as_str().unwrap_or("?")
                    );
                }
            }
            if let Some(n) = r["tokens_added"].as_u64().filter(|n| *n > 0) {
                say!("{n} accepted token(s) added");
            }
            for t in r["tokens_revoked"].as_array().into_iter().flatten() {
                say!(
                    "replication {}: the token is revoked here and stays revoked; remove it from accept_tokens",
                    t.as_str().unwrap_or("?")
                );
            }
            for name in r["pruned"].as_array().into_iter().flatten() {
                say!("replication {}: deleted (prune)", name.as_str().unwrap_or("?"));
            }
            for t in r["tokens_pruned"].as_array().into_iter().flatten() {
                say!(
                    "replication {}: accepted token revoked (prune: not in accept_tokens)",
                    t.as_str().unwrap_or("?")
                );
            }
            for w in r["warnings"].as_array().into_iter().flatten() {
                esay!("warning: {}", w.as_str().unwrap_or("?"));
            }
        }
        ConfigCmd::Export { conn } => {
            let r = call(&conn, Method::GET, "/api/v1/config", None).await?;
            let decls: ferry_server::declare::Declarations = serde_json::from_value(r)?;
            let text = toml::to_string_pretty(&decls).context("rendering TOML")?;
            say!("# ferry config export: feeds and replications (outgoing tokens from the environment)");
            say!("{}", text.trim_end());
        }
        ConfigCmd::Token => {
            let (token, id, hash) = ferry_replication::token::generate();
            say!("token (for the outgoing side's token_file or token_env):");
            say!("{token}");
            say!("");
            say!("for the incoming replication's declaration on the other instance:");
            say!(
                "accept_tokens = [{{ id = \"{id}\", sha256 = \"{}\" }}]",
                hex::encode(hash)
            );
        }
    }
    Ok(())
}

pub async fn bundle(cmd: BundleCmd) -> anyhow::Result<()> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    match cmd {
        BundleCmd::Export {
            feed,
            since,
            out,
            conn,
        } => {
            let req = request(
                &conn,
                Method::GET,
                &format!("/api/v1/feeds/{feed}/bundle?since={since}"),
            )
            .await?;
            let resp = checked(
                &conn,
                req.send()
                    .await
                    .with_context(|| format!("cannot reach {}", conn.url))?,
            )
            .await?;
            let until = resp
                .headers()
                .get("x-ferry-bundle-until")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let entries = resp
                .headers()
                .get("x-ferry-bundle-entries")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            // OUT.partial until complete; never left behind.
            let mut tmp_name = out.as_os_str().to_owned();
            tmp_name.push(".partial");
            let tmp = std::path::PathBuf::from(tmp_name);
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut body = resp.bytes_stream();
            let mut received: u64 = 0;
            let written: anyhow::Result<()> = async {
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| {
                        anyhow::anyhow!(
                            "the transfer broke after {received} bytes ({e}); nothing was written to {}. \
                             If the instance found a damaged blob while sending it, its /health names the blob \
                             and the next export names the items that need it; otherwise run the export again",
                            out.display()
                        )
                    })?;
                    received += chunk.len() as u64;
                    file.write_all(&chunk).await?;
                }
                file.sync_all().await?;
                Ok(())
            }
            .await;
            if let Err(e) = written {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            tokio::fs::rename(&tmp, &out).await?;
            say!(
                "wrote {entries} entries of {feed} (changes {since}..{until}) to {}; next time use --since {until}",
                out.display()
            );
        }
        BundleCmd::Import {
            feed,
            file,
            confirm_deletes,
            conn,
        } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            // A directory opens, then fails mid-request as if the server
            // could not be reached: said plainly instead.
            if !f
                .metadata()
                .await
                .with_context(|| format!("reading {}", file.display()))?
                .is_file()
            {
                anyhow::bail!("{} is not a file: give the path of a bundle file", file.display());
            }
            let confirm = if confirm_deletes {
                "?confirm_deletes=true"
            } else {
                ""
            };
            let req = request(
                &conn,
                Method::POST,
                &format!("/api/v1/feeds/{feed}/bundle{confirm}"),
            )
            .await?
            .body(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f)));
            let resp = checked(
                &conn,
                req.send()
                    .await
                    .with_context(|| format!("cannot reach {}", conn.url))?,
            )
            .await?;
            let r: Value = resp.json().await?;
            say!(
                "imported {} entries into {feed}: {} applied ({} deleting an item), {} already there, {} superseded; {} blobs",
                r["entries"],
                r["applied"],
                r["deleted"],
                r["already"],
                r["superseded"],
                r["blobs_received"]
            );
        }
    }
    Ok(())
}

/// A running execution's progress on one line: "running: 12/40 items,
/// 3.1 MiB moved, 7.0 MiB to go, 1.0 MiB/s, about 7 s left (by bytes)".
fn running_text(run: &Value) -> String {
    // The web UI shows these with the same rule.
    let size = |v: &Value| v.as_f64().map(ferry_types::binary_size);
    // Items count once gone through (a pulled page's once it is
    // applied, after its blobs moved): the bytes show the way there.
    let mut parts = vec![format!(
        "{}/{} items done",
        run["items_done"].as_u64().unwrap_or(0),
        run["items_total"].as_u64().unwrap_or(0)
    )];
    if let Some(b) = size(&run["bytes_done"]) {
        parts.push(format!("{b} moved"));
    }
    if let Some(b) = size(&run["bytes_remaining"]) {
        parts.push(format!("{b} to go"));
    }
    if let Some(b) = size(&run["bytes_per_second"]) {
        parts.push(format!("{b}/s"));
    }
    if let Some(eta) = run["eta_seconds"].as_f64() {
        let basis = run["eta_basis"].as_str().unwrap_or("items");
        parts.push(format!("about {eta:.0} s left (by {basis})"));
    }
    format!("running: {}", parts.join(", "))
}

/// ", at TIME" for the oldest measurement among a replication's lags
/// (`status.lag` of the overview); empty when none says.
fn lag_measured(lag: &Value) -> String {
    lag.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, l)| l["measured_at"].as_str())
        .min()
        .map(|t| format!(", at {t}"))
        .unwrap_or_default()
}
