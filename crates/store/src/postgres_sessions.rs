//! [`SessionStore`] on PostgreSQL: sign-ins of every node take one
//! transaction-scoped advisory lock, so the caps are counted one sign-in
//! at a time; a flash is taken under its row's lock.

use async_trait::async_trait;

use crate::postgres::{bad_row, store_tx};
use crate::sessions::*;
use crate::{PgStore, StoreError};

/// The advisory lock key that serializes UI sign-ins across nodes (any
/// constant other than the migrations' one).
const UI_SESSIONS_LOCK: i64 = 0x4665_7272_7955_4953; // "FerryUIS"

fn hash32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| bad_row("session key hash"))
}

#[async_trait]
impl SessionStore for PgStore {
    async fn create_ui_session(
        &self,
        s: NewUiSession,
        limits: UiSessionLimits,
    ) -> Result<UiSessionCreated, StoreError> {
        store_tx!(self, |c| async {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(UI_SESSIONS_LOCK)
                .execute(&mut *c)
                .await?;
            let now = s.created_at;
            sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *c)
                .await?;
            let own: Vec<(Vec<u8>, i64)> = sqlx::query_as(
                "SELECT id_hash, created_at FROM ui_sessions WHERE key_hash = $1 AND NOT capped \
                 ORDER BY created_at, id_hash",
            )
            .bind(&s.key_hash[..])
            .fetch_all(&mut *c)
            .await?;
            let created_at = crate::sessions::after_own(&own, s.created_at);
            let own: Vec<Vec<u8>> = own.into_iter().map(|(id, _)| id).collect();
            if own.len() >= limits.per_key {
                let ending = own.len() + 1 - limits.per_key;
                let remembered: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ui_sessions WHERE capped")
                    .fetch_one(&mut *c)
                    .await?;
                if remembered as usize + ending > limits.capped {
                    sqlx::query("DELETE FROM ui_sessions WHERE capped")
                        .execute(&mut *c)
                        .await?;
                }
                sqlx::query("UPDATE ui_sessions SET capped = true, flash = NULL WHERE id_hash = ANY($1)")
                    .bind(&own[..ending])
                    .execute(&mut *c)
                    .await?;
            }
            let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ui_sessions WHERE NOT capped")
                .fetch_one(&mut *c)
                .await?;
            if live as usize >= limits.total {
                return Ok(UiSessionCreated::Full);
            }
            sqlx::query(
                "INSERT INTO ui_sessions (id_hash, key_hash, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&s.id_hash[..])
            .bind(&s.key_hash[..])
            .bind(created_at)
            .bind(s.expires_at)
            .execute(&mut *c)
            .await?;
            Ok(UiSessionCreated::Created)
        })
    }

    async fn ui_session(&self, id_hash: &[u8; 32], now: i64) -> Result<UiSessionState, StoreError> {
        let row: Option<(Vec<u8>, i64, i64, bool)> = sqlx::query_as(
            "SELECT key_hash, created_at, expires_at, capped FROM ui_sessions WHERE id_hash = $1",
        )
        .bind(&id_hash[..])
        .fetch_optional(self.pool())
        .await?;
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
    }

    async fn end_ui_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
            .bind(&id_hash[..])
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn put_ui_flash(&self, id_hash: &[u8; 32], sealed: Vec<u8>) -> Result<(), StoreError> {
        sqlx::query("UPDATE ui_sessions SET flash = $2 WHERE id_hash = $1 AND NOT capped")
            .bind(&id_hash[..])
            .bind(sealed)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn take_ui_flash(&self, id_hash: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        store_tx!(self, |c| async {
            let flash: Option<Option<Vec<u8>>> =
                sqlx::query_scalar("SELECT flash FROM ui_sessions WHERE id_hash = $1 FOR UPDATE")
                    .bind(&id_hash[..])
                    .fetch_optional(&mut *c)
                    .await?;
            let flash = flash.flatten();
            if flash.is_some() {
                sqlx::query("UPDATE ui_sessions SET flash = NULL WHERE id_hash = $1")
                    .bind(&id_hash[..])
                    .execute(&mut *c)
                    .await?;
            }
            Ok(flash)
        })
    }

    async fn ui_session_count(&self, now: i64) -> Result<usize, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM ui_sessions WHERE NOT capped AND expires_at > $1")
                .bind(now)
                .fetch_one(self.pool())
                .await?;
        Ok(n as usize)
    }
}

/// The advisory lock key that serializes the opening of OCI upload
/// sessions across nodes (so the caps are counted one opening at a time).
const UPLOADS_LOCK: i64 = 0x4665_7272_794F_4349; // "FerryOCI"

/// Rows of sessions expired at `$1` (no request for `$2` ms, none holding them).
const UPLOAD_EXPIRED: &str = "touched_at + $2 <= $1 AND held_until <= $1";
/// Rows of sessions whose API key no longer exists (none holding them).
const UPLOAD_REVOKED: &str = "key_id IS NOT NULL AND held_until <= $1 AND NOT EXISTS \
     (SELECT 1 FROM api_keys k WHERE k.id = oci_uploads.key_id AND k.created_at = oci_uploads.key_created_at)";

async fn delete_uploads_where(
    c: &mut sqlx::PgConnection,
    cond: &str,
    now: i64,
    idle: i64,
) -> Result<Vec<String>, StoreError> {
    let sql = format!("DELETE FROM oci_uploads WHERE {cond} RETURNING id");
    let q = sqlx::query_scalar(&sql).bind(now);
    let q = if cond.contains("$2") { q.bind(idle) } else { q };
    Ok(q.fetch_all(&mut *c).await?)
}

/// Finds session `id` of `repo` in `feed` (locking its row) and judges it
/// at `now`: Unknown, Expired (deleted here), or Claimed with its size,
/// and until when a request holds it.
async fn find_upload(
    c: &mut sqlx::PgConnection,
    id: &str,
    feed: crate::FeedId,
    repo: &str,
    now: i64,
    idle: i64,
) -> Result<(UploadClaim, i64), StoreError> {
    let row: Option<(i64, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT feed_id, repo, size, touched_at, held_until FROM oci_uploads WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *c)
    .await?;
    let Some((f, r, size, touched, held)) = row else {
        return Ok((UploadClaim::Unknown, 0));
    };
    if f != feed || r != repo {
        return Ok((UploadClaim::Unknown, 0));
    }
    if touched.saturating_add(idle) <= now && held <= now {
        sqlx::query("DELETE FROM oci_uploads WHERE id = $1")
            .bind(id)
            .execute(&mut *c)
            .await?;
        return Ok((UploadClaim::Expired, 0));
    }
    Ok((UploadClaim::Claimed { size: size as u64 }, held))
}

#[async_trait]
impl UploadSessionStore for PgStore {
    async fn open_upload(
        &self,
        s: NewUploadSession,
        limits: UploadLimits,
    ) -> Result<UploadOpened, StoreError> {
        store_tx!(self, |c| async {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(UPLOADS_LOCK)
                .execute(&mut *c)
                .await?;
            let now = s.now;
            let expired = delete_uploads_where(c, UPLOAD_EXPIRED, now, limits.idle_ms).await?;
            let group =
                "SELECT COUNT(*), MIN(CASE WHEN held_until <= $1 THEN touched_at END) FROM oci_uploads";
            let mut groups: Vec<(UploadCap, (i64, Option<i64>), usize)> = Vec::new();
            if let Some((kid, kcreated)) = s.key {
                let g = sqlx::query_as(&format!("{group} WHERE key_id = $2 AND key_created_at = $3"))
                    .bind(now)
                    .bind(kid)
                    .bind(kcreated)
                    .fetch_one(&mut *c)
                    .await?;
                groups.push((UploadCap::Key, g, limits.per_key));
            }
            let g = sqlx::query_as(&format!("{group} WHERE feed_id = $2"))
                .bind(now)
                .bind(s.feed)
                .fetch_one(&mut *c)
                .await?;
            groups.push((UploadCap::Feed, g, limits.per_feed));
            let g = sqlx::query_as(group).bind(now).fetch_one(&mut *c).await?;
            groups.push((UploadCap::Instance, g, limits.total));
            for (cap, (n, first), max) in groups {
                if n as usize >= max {
                    return Ok(UploadOpened::Refused {
                        cap,
                        next_expiry: first.map(|t| t.saturating_add(limits.idle_ms)),
                        expired,
                    });
                }
            }
            sqlx::query(
                "INSERT INTO oci_uploads (id, feed_id, repo, key_id, key_created_at, size, created_at, touched_at) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
            )
            .bind(&s.id)
            .bind(s.feed)
            .bind(&s.repo)
            .bind(s.key.map(|k| k.0))
            .bind(s.key.map(|k| k.1))
            .bind(now)
            .execute(&mut *c)
            .await?;
            Ok(UploadOpened::Opened { expired })
        })
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
        store_tx!(self, |c| async {
            let (found, held) = find_upload(c, id, feed, repo, now, idle_ms).await?;
            if !matches!(found, UploadClaim::Claimed { .. }) {
                return Ok(found);
            }
            if held > now {
                return Ok(UploadClaim::Busy);
            }
            sqlx::query("UPDATE oci_uploads SET touched_at = $2, held_until = $3 WHERE id = $1")
                .bind(id)
                .bind(now)
                .bind(lease_until)
                .execute(&mut *c)
                .await?;
            Ok(found)
        })
    }

    async fn renew_upload(&self, id: &str, now: i64, lease_until: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE oci_uploads SET touched_at = $2, held_until = $3 WHERE id = $1")
            .bind(id)
            .bind(now)
            .bind(lease_until)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn release_upload(&self, id: &str, now: i64, size: Option<u64>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE oci_uploads SET touched_at = $2, held_until = 0, size = COALESCE($3, size) WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(size.map(|s| s as i64))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn upload_length(
        &self,
        id: &str,
        feed: crate::FeedId,
        repo: &str,
        now: i64,
        idle_ms: i64,
    ) -> Result<UploadClaim, StoreError> {
        store_tx!(self, |c| async {
            let (found, _) = find_upload(c, id, feed, repo, now, idle_ms).await?;
            if matches!(found, UploadClaim::Claimed { .. }) {
                sqlx::query("UPDATE oci_uploads SET touched_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
            }
            Ok(found)
        })
    }

    async fn end_upload(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM oci_uploads WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn sweep_uploads(&self, now: i64, idle_ms: i64, revoked: bool) -> Result<Vec<String>, StoreError> {
        store_tx!(self, |c| async {
            let mut ids = delete_uploads_where(c, UPLOAD_EXPIRED, now, idle_ms).await?;
            if revoked {
                ids.extend(delete_uploads_where(c, UPLOAD_REVOKED, now, idle_ms).await?);
            }
            Ok(ids)
        })
    }

    async fn upload_count(&self) -> Result<usize, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oci_uploads")
            .fetch_one(self.pool())
            .await?;
        Ok(n as usize)
    }

    async fn uploads_known(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM oci_uploads WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(self.pool())
                .await?,
        )
    }
}
