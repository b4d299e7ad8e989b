//! Sessions that every node of an instance shares: the web UI's signed-in
//! sessions, kept in the metadata database so that a load balancer may
//! send each request to any node.
//!
//! The store never sees a session id, only its SHA-256 (`id_hash`), and
//! never a flash in clear: the UI seals it with a key derived from the id,
//! which only the browser holds. Caps are counted here, in one
//! transaction, so they hold across nodes.

use async_trait::async_trait;

use crate::StoreError;

/// A web UI session to create.
#[derive(Clone, Debug)]
pub struct NewUiSession {
    /// SHA-256 of the session id (the cookie's value).
    pub id_hash: [u8; 32],
    /// SHA-256 of the API key that signed in.
    pub key_hash: [u8; 32],
    /// Sign-in time, ms since the epoch.
    pub created_at: i64,
    /// When the session ends, ms since the epoch.
    pub expires_at: i64,
}

/// The caps a new UI session is created under.
#[derive(Clone, Copy, Debug)]
pub struct UiSessionLimits {
    /// Live sessions per key: signing in past it ends that key's oldest
    /// ones (remembered as capped until they would have expired).
    pub per_key: usize,
    /// Live sessions in all: past it, signing in is refused.
    pub total: usize,
    /// Sessions ended by the per-key cap that are remembered at most
    /// (past it, the remembered ones are forgotten).
    pub capped: usize,
}

/// What creating a UI session did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UiSessionCreated {
    /// The session exists.
    Created,
    /// The instance holds [`UiSessionLimits::total`] live sessions already.
    Full,
}

/// A live UI session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UiSessionRecord {
    /// SHA-256 of the API key that signed in.
    pub key_hash: [u8; 32],
    /// Sign-in time, ms since the epoch.
    pub created_at: i64,
    /// When it ends, ms since the epoch.
    pub expires_at: i64,
}

/// What a session id (by its hash) stands for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UiSessionState {
    /// A live session.
    Live(UiSessionRecord),
    /// Ended by its key's per-key cap, and not yet past its expiry.
    Capped,
    /// Never created, signed out, revoked with its key, or expired.
    Unknown,
}

/// The UI sessions of an instance, shared by its nodes. Every metadata
/// backend implements it (see [`crate::conformance`]).
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Creates a session: drops expired ones, ends the key's oldest live
    /// sessions at `limits.per_key` (marking them capped), then creates
    /// it unless `limits.total` live sessions exist. One transaction,
    /// serialized against other sign-ins on every node.
    async fn create_ui_session(
        &self,
        session: NewUiSession,
        limits: UiSessionLimits,
    ) -> Result<UiSessionCreated, StoreError>;

    /// The session `id_hash` at time `now` (ms).
    async fn ui_session(&self, id_hash: &[u8; 32], now: i64) -> Result<UiSessionState, StoreError>;

    /// Ends a session (sign-out), with its flash. Ending an unknown one
    /// does nothing.
    async fn end_ui_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError>;

    /// Keeps a sealed flash for a live session's next page (replacing one
    /// it held). Nothing happens for a session that is not live.
    async fn put_ui_flash(&self, id_hash: &[u8; 32], sealed: Vec<u8>) -> Result<(), StoreError>;

    /// The session's sealed flash, removed as it is read: of two readers,
    /// one gets it.
    async fn take_ui_flash(&self, id_hash: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError>;

    /// How many live sessions exist at `now` (ms).
    async fn ui_session_count(&self, now: i64) -> Result<usize, StoreError>;
}
