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
            let own: Vec<Vec<u8>> = {
                let mut st = tx.prepare(
                    "SELECT id_hash FROM ui_sessions WHERE key_hash = ?1 AND capped = 0 \
                     ORDER BY created_at, id_hash",
                )?;
                st.query_map([&s.key_hash[..]], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
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
                params![&s.id_hash[..], &s.key_hash[..], s.created_at, s.expires_at],
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
