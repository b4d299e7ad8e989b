//! Asset feeds: files in folders, one item per file.
//!
//! Item layout: key = the validated path; metadata
//! `{"content_type": "...", "size": N}`; one blob, the file.

use std::collections::BTreeMap;

use ferry_formats::assets::{asset_dir_prefix, asset_key};
use ferry_store::{ByteStream, FeedRecord, Precondition};
use ferry_types::{Digest, ItemKey};
use serde::Serialize;

use crate::{CoreError, Ferry, LocalWrite};

/// A stored asset, as needed to serve it.
#[derive(Debug, Clone, Serialize)]
pub struct Asset {
    pub path: String,
    pub digest: Digest,
    pub size: u64,
    pub content_type: String,
    /// When the file was written at its origin (ms since the Unix epoch);
    /// shown in JSON as RFC 3339 with milliseconds, as in folder listings.
    #[serde(serialize_with = "millis_as_rfc3339")]
    pub modified: i64,
    pub downloads: u64,
}

fn millis_as_rfc3339<S: serde::Serializer>(millis: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::rfc3339(*millis))
}

/// One entry of a folder listing.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downloads: Option<u64>,
}

/// Stores `body` under `path`, replacing what was there. The body is staged
/// and verified first; the item appears only once the blob is committed.
pub async fn put(
    ferry: &Ferry,
    feed: &FeedRecord,
    path: &str,
    body: ByteStream,
    content_type: &str,
    expected: Option<Digest>,
) -> Result<Asset, CoreError> {
    let key = asset_key(path)?;
    // Checked before the body moves (a refusal costs no transfer), and
    // again by the write itself (`PathFree`, in the store's transaction
    // under the feed's write lock): two uploads racing to make `a/b` a
    // file and a folder, on one node or on two, cannot both get in.
    file_and_folder_apart(ferry, feed, key.as_str()).await?;
    let staged = ferry.stage(body, expected).await?;
    let size = staged.size();
    let digest = ferry.commit_blob(staged).await?;
    let meta = serde_json::json!({ "content_type": content_type, "size": size });
    ferry
        .write(
            feed,
            vec![LocalWrite::upsert(
                key.clone(),
                meta,
                vec![digest],
                Precondition::PathFree,
            )],
        )
        .await?;
    // The time the write was stamped with, as every listing (here and on
    // replicas) shows it; a concurrent write of the same path may have
    // replaced it already, and then this one's time is about now.
    let modified = match ferry.item(feed, &key).await? {
        Some(item) if item.blobs.first() == Some(&digest) => item.modified(),
        _ => ferry_store::now_millis(),
    };
    Ok(Asset {
        path: key.as_str().to_string(),
        digest,
        size,
        content_type: content_type.to_string(),
        modified,
        downloads: 0,
    })
}

/// A path is a file or a folder, never both (as on a file system, and as a
/// recursive download or a copy to disk needs): `Conflict` when a folder
/// above `key` is a file, or when `key` is a folder holding files. Checked
/// before the body is read, so a refused upload moves no bytes.
async fn file_and_folder_apart(ferry: &Ferry, feed: &FeedRecord, key: &str) -> Result<(), CoreError> {
    for (i, _) in key.match_indices('/') {
        let above = &key[..i];
        let above_key = asset_key(above)?;
        if ferry.item(feed, &above_key).await?.is_some() {
            return Err(CoreError::Conflict(format!(
                "{above} is a file, so {key} cannot be stored under it: delete {above} first, or choose another path"
            )));
        }
    }
    if ferry.has_items(feed, &format!("{key}/")).await? {
        return Err(CoreError::Conflict(format!(
            "{key} is a folder holding files, so a file cannot be stored there: choose another path, or delete the folder's files first"
        )));
    }
    Ok(())
}

pub async fn get(ferry: &Ferry, feed: &FeedRecord, path: &str) -> Result<Asset, CoreError> {
    let key = asset_key(path)?;
    let item = ferry
        .item(feed, &key)
        .await?
        .ok_or_else(|| CoreError::not_found(format!("{path} not found")))?;
    let digest = *item
        .blobs
        .first()
        .ok_or_else(|| CoreError::Internal(format!("asset {path} has no blob")))?;
    Ok(Asset {
        path: key.as_str().to_string(),
        digest,
        size: item.meta["size"].as_u64().unwrap_or_default(),
        content_type: item.meta["content_type"]
            .as_str()
            .unwrap_or("application/octet-stream")
            .to_string(),
        modified: item.modified(),
        downloads: item.downloads,
    })
}

pub async fn delete(ferry: &Ferry, feed: &FeedRecord, path: &str) -> Result<(), CoreError> {
    let key = asset_key(path)?;
    ferry
        .write(feed, vec![LocalWrite::delete(key, Precondition::Present)])
        .await?;
    Ok(())
}

/// The files and sub-folders directly inside folder `dir` ("" for the root).
/// NotFound if the folder holds nothing (folders exist through their files).
///
/// Reads the folder's own files and one key of each sub-folder, not what
/// the sub-folders hold: after the first key under `dir/sub/`, the next
/// page starts past every key that can follow `dir/sub/` (`dir/sub/` and
/// U+10FFFF, the greatest character: keys compare as UTF-8 bytes). So
/// listing the root of a feed of a million files in a few folders costs
/// a few pages, not a million items in memory.
pub async fn list(ferry: &Ferry, feed: &FeedRecord, dir: &str) -> Result<Vec<Entry>, CoreError> {
    // Pages grow while they hold files and shrink to a few keys after a
    // jump (the next key is often another sub-folder's first): a folder
    // of thousands of sub-folders costs a query of a few rows per
    // sub-folder, not a full page each.
    const PAGE: usize = 500;
    const AFTER_JUMP: usize = 4;
    let prefix = asset_dir_prefix(dir)?;
    let mut folders: BTreeMap<String, ()> = BTreeMap::new();
    let mut files = Vec::new();
    let mut after: Option<ItemKey> = None;
    let mut any = false;
    let mut size = PAGE;
    'pages: loop {
        let page = ferry.items_page(feed, &prefix, after.as_ref(), size).await?;
        let full = page.len() == size;
        size = (size * 4).min(PAGE);
        any |= !page.is_empty();
        for item in page {
            let rest = &item.key.as_str()[prefix.len()..];
            match rest.split_once('/') {
                Some((folder, _)) => {
                    let new = folders.insert(folder.to_string(), ()).is_none();
                    let past = ItemKey::new(format!("{prefix}{folder}/\u{10FFFF}"))
                        .ok()
                        .filter(|past| new && *past > item.key);
                    if let Some(past) = past {
                        after = Some(past);
                        size = AFTER_JUMP;
                        continue 'pages;
                    }
                }
                None => files.push(Entry {
                    name: rest.to_string(),
                    kind: "file",
                    size: item.meta["size"].as_u64(),
                    digest: item.blobs.first().copied(),
                    modified: Some(crate::rfc3339(item.modified())),
                    downloads: Some(item.downloads),
                }),
            }
            after = Some(item.key);
        }
        if !full {
            break;
        }
    }
    if !any && !prefix.is_empty() {
        return Err(CoreError::not_found(format!("folder {dir} not found")));
    }
    let mut out: Vec<Entry> = folders
        .into_keys()
        .map(|name| Entry {
            name,
            kind: "folder",
            size: None,
            digest: None,
            modified: None,
            downloads: None,
        })
        .collect();
    out.extend(files);
    Ok(out)
}

/// Of `changes` received from elsewhere and to be applied together, the
/// upserts that would make a path a file and a folder at once (a file
/// under a live file, or a file where live files sit under it): their
/// positions and why. Judged on the state the batch leaves, not on its
/// order — a bundle exported `--since` an earlier point lists each key
/// where it first changed, with its current state, so the delete that
/// frees a path may come after the file that needs it: every delete of
/// the batch counts as done, and the upserts are taken in order, each
/// against what is stored and the upserts accepted before it. (The write
/// applies the batch's deletes first too: [`crate::Ferry`]'s
/// `write_received`.) A refused change frees or takes nothing.
pub(crate) async fn path_conflicts(
    ferry: &Ferry,
    feed: &FeedRecord,
    changes: &[&ferry_store::Change],
) -> Result<Vec<(usize, String)>, CoreError> {
    use std::collections::{HashMap, HashSet};
    let upserts: Vec<usize> = (0..changes.len())
        .filter(|i| matches!(changes[*i].op, ferry_store::ChangeOp::Upsert { .. }))
        .collect();
    if upserts.is_empty() {
        return Ok(Vec::new());
    }
    // Every folder above every written path, looked up at once.
    let mut above: Vec<ItemKey> = upserts
        .iter()
        .flat_map(|i| {
            let key = changes[*i].key.as_str();
            key.match_indices('/')
                .filter_map(|(at, _)| ItemKey::new(&key[..at]).ok())
                .collect::<Vec<_>>()
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    above.sort();
    let stored_live: HashSet<ItemKey> = ferry
        .items_by_keys(feed, &above)
        .await?
        .into_iter()
        .flatten()
        .map(|i| i.key)
        .collect();
    // The batch's effect so far: key → live. Every delete first.
    let mut overlay: HashMap<&str, bool> = changes
        .iter()
        .filter(|c| matches!(c.op, ferry_store::ChangeOp::Delete))
        .map(|c| (c.key.as_str(), false))
        .collect();
    let mut refused = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        let key = change.key.as_str();
        if !matches!(change.op, ferry_store::ChangeOp::Upsert { .. }) {
            continue;
        }
        let live = |k: &ItemKey, overlay: &HashMap<&str, bool>| {
            overlay
                .get(k.as_str())
                .copied()
                .unwrap_or_else(|| stored_live.contains(k))
        };
        let file_above = key
            .match_indices('/')
            .filter_map(|(at, _)| ItemKey::new(&key[..at]).ok())
            .find(|k| live(k, &overlay));
        if let Some(file) = file_above {
            refused.push((
                i,
                format!("{key}: {file} is a file here, so {key} cannot be stored under it (a path is a file or a folder)"),
            ));
            continue;
        }
        let under = format!("{key}/");
        let mut below = overlay.iter().any(|(k, live)| *live && k.starts_with(&under));
        if !below {
            // Stored files under it, less the ones the batch deleted.
            let gone = overlay
                .iter()
                .filter(|(k, live)| !**live && k.starts_with(&under))
                .count();
            below = ferry
                .items_page(feed, &under, None, gone + 1)
                .await?
                .iter()
                .any(|item| overlay.get(item.key.as_str()) != Some(&false));
        }
        if below {
            refused.push((
                i,
                format!("{key}: {key} is a folder holding files here, so a file cannot be stored there (a path is a file or a folder)"),
            ));
            continue;
        }
        overlay.insert(key, true);
    }
    Ok(refused)
}
