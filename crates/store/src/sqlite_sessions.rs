//! [`SessionStore`] on SQLite: the single writer serializes sign-ins.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use crate::sessions::*;
use crate::sqlite::bad_row;
use crate::{SqliteStore, StoreError};

fn hash32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| bad_row("session key hash"))
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_ui_session(
        &self,
        s: NewUiSession,
        limits: UiSessionLimits,
    ) -> Result<UiSessionCreated, StoreError> {
        self.write_tx(move |tx| {
            let now = s.created_at;
            tx.execute("DELETE FROM ui_sessions WHERE expires_at <= ?1", [now])?;
            let own: Vec<(Vec<u8>, i64)> = {
                let mut st = tx.prepare(
                    "SELECT id_hash, created_at FROM ui_sessions WHERE key_hash = ?1 AND capped = 0 \
                     ORDER BY created_at, id_hash",
                )?;
                st.query_map([&s.key_hash[..]], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?
            };
            let created_at = after_own(&own, s.created_at);
            let own: Vec<Vec<u8>> = own.into_iter().map(|(id, _)| id).collect();
            if own.len() >= limits.per_key {
                let ending = own.len() + 1 - limits.per_key;
                let remembered: i64 =
                    tx.query_row("SELECT COUNT(*) FROM ui_sessions WHERE capped = 1", [], |r| {
                        r.get(0)
                    })?;
                if remembered as usize + ending > limits.capped {
                    tx.execute("DELETE FROM ui_sessions WHERE capped = 1", [])?;
                }
                for id in &own[..ending] {
                    tx.execute(
                        "UPDATE ui_sessions SET capped = 1, flash = NULL WHERE id_hash = ?1",
                        [id],
                    )?;
                }
            }
            let live: i64 = tx.query_row("SELECT COUNT(*) FROM ui_sessions WHERE capped = 0", [], |r| {
                r.get(0)
            })?;
            if live as usize >= limits.total {
                return Ok(UiSessionCreated::Full);
            }
            tx.execute(
                "INSERT INTO ui_sessions (id_hash, key_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![&s.id_hash[..], &s.key_hash[..], created_at, s.expires_at],
            )?;
            Ok(UiSessionCreated::Created)
        })
        .await
    }

    async fn ui_session(&self, id_hash: &[u8; 32], now: i64) -> Result<UiSessionState, StoreError> {
        let id = *id_hash;
        self.read(move |c| {
            let row: Option<(Vec<u8>, i64, i64, bool)> = c
                .query_row(
                    "SELECT key_hash, created_at, expires_at, capped FROM ui_sessions WHERE id_hash = ?1",
                    [&id[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            Ok(match row {
                Some((_, _, expires_at, _)) if expires_at <= now => UiSessionState::Unknown,
                Some((_, _, _, true)) => UiSessionState::Capped,
                Some((key_hash, created_at, expires_at, false)) => UiSessionState::Live(UiSessionRecord {
                    key_hash: hash32(key_hash)?,
                    created_at,
                    expires_at,
                }),
                None => UiSessionState::Unknown,
            })
        })
        .await
    }

    async fn end_ui_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError> {
        let id = *id_hash;
        self.write_tx(move |tx| {
            tx.execute("DELETE FROM ui_sessions WHERE id_hash = ?1", [&id[..]])?;
            Ok(())
        })
        .await
    }

    async fn put_ui_flash(&self, id_hash: &[u8; 32], sealed: Vec<u8>) -> Result<(), StoreError> {
        let id = *id_hash;
        self.write_tx(move |tx| {
            tx.execute(
                "UPDATE ui_sessions SET flash = ?2 WHERE id_hash = ?1 AND capped = 0",
                params![&id[..], sealed],
            )?;
            Ok(())
        })
        .await
    }

    async fn take_ui_flash(&self, id_hash: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        let id = *id_hash;
        self.write_tx(move |tx| {
            let flash: Option<Option<Vec<u8>>> = tx
                .query_row(
                    "SELECT flash FROM ui_sessions WHERE id_hash = ?1",
                    [&id[..]],
                    |r| r.get(0),
                )
                .optional()?;
            let flash = flash.flatten();
            if flash.is_some() {
                tx.execute(
                    "UPDATE ui_sessions SET flash = NULL WHERE id_hash = ?1",
                    [&id[..]],
                )?;
            }
            Ok(flash)
        })
        .await
    }

    async fn ui_session_count(&self, now: i64) -> Result<usize, StoreError> {
        self.read(move |c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM ui_sessions WHERE capped = 0 AND expires_at > ?1",
                [now],
                |r| r.get(0),
            )?;
            Ok(n as usize)
        })
        .await
    }
}

/// Rows of sessions expired at `now` (no request for `idle` ms, none
/// holding them).
const UPLOAD_EXPIRED: &str = "touched_at + ?2 <= ?1 AND held_until <= ?1";
/// Rows of sessions whose API key no longer exists (none holding them).
const UPLOAD_REVOKED: &str = "key_id IS NOT NULL AND held_until <= ?1 AND NOT EXISTS \
     (SELECT 1 FROM api_keys k WHERE k.id = oci_uploads.key_id AND k.created_at = oci_uploads.key_created_at)";

fn delete_uploads_where(
    tx: &rusqlite::Transaction<'_>,
    cond: &str,
    now: i64,
    idle: i64,
) -> Result<Vec<String>, StoreError> {
    let uses_idle = cond.contains("?2");
    let mut st = tx.prepare(&format!("DELETE FROM oci_uploads WHERE {cond} RETURNING id"))?;
    let ids = if uses_idle {
        st.query_map(params![now, idle], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?
    } else {
        st.query_map(params![now], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?
    };
    Ok(ids)
}

/// (count, earliest touch of a session no request holds) of the sessions `cond` selects.
fn upload_group(
    tx: &rusqlite::Transaction<'_>,
    cond: &str,
    p: &[&dyn rusqlite::ToSql],
) -> Result<(usize, Option<i64>), StoreError> {
    let (n, first): (i64, Option<i64>) = tx.query_row(
        &format!(
            "SELECT COUNT(*), MIN(CASE WHEN held_until <= ?1 THEN touched_at END) FROM oci_uploads WHERE {cond}"
        ),
        p,
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((n as usize, first))
}

/// Finds session `id` of `repo` in `feed` and judges it at `now`: Unknown,
/// Expired (deleted here), or Claimed with its size (its hold not yet
/// judged: the caller looks at `held_until`).
fn find_upload(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    feed: crate::FeedId,
    repo: &str,
    now: i64,
    idle: i64,
) -> Result<(UploadClaim, i64), StoreError> {
    let row: Option<(i64, String, i64, i64, i64)> = tx
        .query_row(
            "SELECT feed_id, repo, size, touched_at, held_until FROM oci_uploads WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((f, r, size, touched, held)) = row else {
        return Ok((UploadClaim::Unknown, 0));
    };
    if f != feed || r != repo {
        return Ok((UploadClaim::Unknown, 0));
    }
    if touched.saturating_add(idle) <= now && held <= now {
        tx.execute("DELETE FROM oci_uploads WHERE id = ?1", [id])?;
        return Ok((UploadClaim::Expired, 0));
    }
    Ok((UploadClaim::Claimed { size: size as u64 }, held))
}

#[async_trait]
impl UploadSessionStore for SqliteStore {
    async fn open_upload(
        &self,
        s: NewUploadSession,
        limits: UploadLimits,
    ) -> Result<UploadOpened, StoreError> {
        self.write_tx(move |tx| {
            let now = s.now;
            let expired = delete_uploads_where(tx, UPLOAD_EXPIRED, now, limits.idle_ms)?;
            let mut groups = Vec::new();
            if let Some((kid, kcreated)) = s.key {
                groups.push((
                    UploadCap::Key,
                    upload_group(tx, "key_id = ?2 AND key_created_at = ?3", &[&now, &kid, &kcreated])?,
                    limits.per_key,
                ));
            }
            groups.push((UploadCap::Feed, upload_group(tx, "feed_id = ?2", &[&now, &s.feed])?, limits.per_feed));
            groups.push((UploadCap::Instance, upload_group(tx, "?1 = ?1", &[&now])?, limits.total));
            for (cap, (n, first), max) in groups {
                if n >= max {
                    return Ok(UploadOpened::Refused {
                        cap,
                        next_expiry: first.map(|t| t.saturating_add(limits.idle_ms)),
                        expired,
                    });
                }
            }
            tx.execute(
                "INSERT INTO oci_uploads (id, feed_id, repo, key_id, key_created_at, size, created_at, touched_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6)",
                params![s.id, s.feed, s.repo, s.key.map(|k| k.0), s.key.map(|k| k.1), now],
            )?;
            Ok(UploadOpened::Opened { expired })
        })
        .await
    }

    async fn claim_upload(
        &self,
        id: &str,
        feed: crate::FeedId,
        repo: &str,
        now: i64,
        idle_ms: i64,
        lease_until: i64,
    ) -> Result<UploadClaim, StoreError> {
        let (id, repo) = (id.to_owned(), repo.to_owned());
        self.write_tx(move |tx| {
            let (found, held) = find_upload(tx, &id, feed, &repo, now, idle_ms)?;
            if !matches!(found, UploadClaim::Claimed { .. }) {
                return Ok(found);
            }
            if held > now {
                return Ok(UploadClaim::Busy);
            }
            tx.execute(
                "UPDATE oci_uploads SET touched_at = ?2, held_until = ?3 WHERE id = ?1",
                params![id, now, lease_until],
            )?;
            Ok(found)
        })
        .await
    }

    async fn renew_upload(&self, id: &str, now: i64, lease_until: i64) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write_tx(move |tx| {
            tx.execute(
                "UPDATE oci_uploads SET touched_at = ?2, held_until = ?3 WHERE id = ?1",
                params![id, now, lease_until],
            )?;
            Ok(())
        })
        .await
    }

    async fn release_upload(&self, id: &str, now: i64, size: Option<u64>) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write_tx(move |tx| {
            tx.execute(
                "UPDATE oci_uploads SET touched_at = ?2, held_until = 0, size = COALESCE(?3, size) WHERE id = ?1",
                params![id, now, size.map(|s| s as i64)],
            )?;
            Ok(())
        })
        .await
    }

    async fn upload_length(
        &self,
        id: &str,
        feed: crate::FeedId,
        repo: &str,
        now: i64,
        idle_ms: i64,
    ) -> Result<UploadClaim, StoreError> {
        let (id, repo) = (id.to_owned(), repo.to_owned());
        self.write_tx(move |tx| {
            let (found, _) = find_upload(tx, &id, feed, &repo, now, idle_ms)?;
            if matches!(found, UploadClaim::Claimed { .. }) {
                tx.execute(
                    "UPDATE oci_uploads SET touched_at = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
            }
            Ok(found)
        })
        .await
    }

    async fn end_upload(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write_tx(move |tx| Ok(tx.execute("DELETE FROM oci_uploads WHERE id = ?1", [id])? > 0))
            .await
    }

    async fn sweep_uploads(&self, now: i64, idle_ms: i64, revoked: bool) -> Result<Vec<String>, StoreError> {
        self.write_tx(move |tx| {
            let mut ids = delete_uploads_where(tx, UPLOAD_EXPIRED, now, idle_ms)?;
            if revoked {
                ids.extend(delete_uploads_where(tx, UPLOAD_REVOKED, now, idle_ms)?);
            }
            Ok(ids)
        })
        .await
    }

    async fn upload_count(&self) -> Result<usize, StoreError> {
        self.read(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM oci_uploads", [], |r| r.get(0))?;
            Ok(n as usize)
        })
        .await
    }

    async fn uploads_known(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |c| {
            let mut st = c.prepare("SELECT 1 FROM oci_uploads WHERE id = ?1")?;
            let mut known = Vec::new();
            for id in ids {
                if st.exists([&id])? {
                    known.push(id);
                }
            }
            Ok(known)
        })
        .await
    }
}
