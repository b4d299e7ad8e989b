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
            let own: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT id_hash FROM ui_sessions WHERE key_hash = $1 AND NOT capped \
                 ORDER BY created_at, id_hash",
            )
            .bind(&s.key_hash[..])
            .fetch_all(&mut *c)
            .await?;
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
            .bind(s.created_at)
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
