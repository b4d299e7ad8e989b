//! Client commands: thin calls to the management API of a running instance.

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{Conn, FeedCmd, KeyCmd};

async fn call(conn: &Conn, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let url = format!("{}{path}", conn.url.trim_end_matches('/'));
    let mut req = reqwest::Client::new().request(method, &url);
    if let Some(key) = &conn.api_key {
        req = req.bearer_auth(key);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach {}", conn.url))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(json!(text)) };
    if !status.is_success() {
        let reason = value.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or(text);
        if status == StatusCode::UNAUTHORIZED && conn.api_key.is_none() {
            bail!("{reason} (pass --api-key or set FERRY_API_KEY)");
        }
        bail!("{} {}", status.as_u16(), reason.trim());
    }
    Ok(value)
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn feed(cmd: FeedCmd) -> anyhow::Result<()> {
    match cmd {
        FeedCmd::Create { name, feed_type, private, conn } => {
            let body = json!({ "name": name, "type": feed_type, "private": private });
            call(&conn, Method::POST, "/api/v1/feeds", Some(body)).await?;
            println!("created {feed_type} feed {name}");
        }
        FeedCmd::List { json, conn } => {
            let feeds = call(&conn, Method::GET, "/api/v1/feeds", None).await?;
            if json {
                return print_json(&feeds);
            }
            for f in feeds.as_array().into_iter().flatten() {
                let vis = if f["private"].as_bool() == Some(true) { "private" } else { "public" };
                println!("{}\t{}\t{vis}", f["name"].as_str().unwrap_or("?"), f["type"].as_str().unwrap_or("?"));
            }
        }
        FeedCmd::Delete { name, conn } => {
            call(&conn, Method::DELETE, &format!("/api/v1/feeds/{name}"), None).await?;
            println!("deleted feed {name}");
        }
    }
    Ok(())
}

pub async fn key(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create { name, permission, feeds, conn } => {
            let feeds = if feeds.is_empty() { Value::Null } else { json!(feeds) };
            let body = json!({ "name": name, "permission": permission, "feeds": feeds });
            let created = call(&conn, Method::POST, "/api/v1/keys", Some(body)).await?;
            println!("{}", created["key"].as_str().unwrap_or_default());
        }
        KeyCmd::List { json, conn } => {
            let keys = call(&conn, Method::GET, "/api/v1/keys", None).await?;
            if json {
                return print_json(&keys);
            }
            for k in keys.as_array().into_iter().flatten() {
                let feeds = match k["feeds"].as_array() {
                    Some(fs) => fs.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                    None => "*".into(),
                };
                println!("{}\t{}\t{feeds}", k["name"].as_str().unwrap_or("?"), k["permission"].as_str().unwrap_or("?"));
            }
        }
        KeyCmd::Delete { name, conn } => {
            call(&conn, Method::DELETE, &format!("/api/v1/keys/{name}"), None).await?;
            println!("revoked key {name}");
        }
    }
    Ok(())
}

pub async fn gc(conn: Conn) -> anyhow::Result<()> {
    let report = call(&conn, Method::POST, "/api/v1/gc", None).await?;
    println!("deleted {} unreferenced blobs", report["blobs_deleted"]);
    Ok(())
}
