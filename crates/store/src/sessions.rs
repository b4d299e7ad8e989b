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

/// When a key's new session counts as created: `now`, or just after the
/// newest of its live sessions `own` (id hash, created ms; in creation
/// order) when that is not earlier, so that the oldest session a cap ends
/// is the first signed in, also within one millisecond.
pub(crate) fn after_own(own: &[(Vec<u8>, i64)], now: i64) -> i64 {
    own.iter().map(|(_, t)| t.saturating_add(1)).fold(now, i64::max)
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

/// An OCI upload session to open.
#[derive(Clone, Debug)]
pub struct NewUploadSession {
    /// The session id (32 hex characters, the blob store's).
    pub id: String,
    /// The feed it uploads to.
    pub feed: crate::FeedId,
    /// The repository it uploads to.
    pub repo: String,
    /// The API key that opened it (id and creation time, so a key made
    /// later under a reused id is another key), if any.
    pub key: Option<(i64, i64)>,
    /// Opening time, ms since the epoch.
    pub now: i64,
}

/// The caps and idle expiry under which upload sessions are opened.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    /// A session with no request for this long (ms) expires.
    pub idle_ms: i64,
    /// Open sessions per API key.
    pub per_key: usize,
    /// Open sessions per feed.
    pub per_feed: usize,
    /// Open sessions in all.
    pub total: usize,
}

/// Which cap refused a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadCap {
    /// The API key's.
    Key,
    /// The feed's.
    Feed,
    /// The instance's.
    Instance,
}

/// What opening an upload session did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadOpened {
    /// Opened. `expired`: sessions found expired and forgotten first
    /// (their files are the caller's to discard).
    Opened { expired: Vec<String> },
    /// Refused at `cap`; `next_expiry`: when the first of that cap's
    /// sessions expires (ms), None when all of them are in use.
    Refused {
        cap: UploadCap,
        next_expiry: Option<i64>,
        expired: Vec<String>,
    },
}

/// What claiming an upload session for a request found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadClaim {
    /// Claimed until the lease given; the session holds `size` bytes.
    Claimed { size: u64 },
    /// Another request (on any node) holds it.
    Busy,
    /// No such session in that feed and repository.
    Unknown,
    /// It had expired: it is forgotten now, its file is the caller's to
    /// discard.
    Expired,
}

/// The OCI upload sessions of an instance, shared by its nodes: which
/// feed, repository and key each belongs to, how many bytes it holds, when
/// it was last used, and until when a request holds it. Counted here, the
/// caps and idle expiry hold across nodes.
#[async_trait]
pub trait UploadSessionStore: Send + Sync + 'static {
    /// Forgets expired sessions, then opens `session` unless a cap of
    /// `limits` would be passed. Serialized against other openings on
    /// every node.
    async fn open_upload(
        &self,
        session: NewUploadSession,
        limits: UploadLimits,
    ) -> Result<UploadOpened, StoreError>;

    /// Claims session `id` of `repo` in `feed` for one request until
    /// `lease_until` (ms), touching it; an expired one is forgotten.
    async fn claim_upload(
        &self,
        id: &str,
        feed: crate::FeedId,
        repo: &str,
        now: i64,
        idle_ms: i64,
        lease_until: i64,
    ) -> Result<UploadClaim, StoreError>;

    /// Extends the claim of a request still using session `id`.
    async fn renew_upload(&self, id: &str, now: i64, lease_until: i64) -> Result<(), StoreError>;

    /// Ends a request's claim on session `id`, touching it and, when
    /// given, recording its new length.
    async fn release_upload(&self, id: &str, now: i64, size: Option<u64>) -> Result<(), StoreError>;

    /// The length of session `id` of `repo` in `feed`, unless it is
    /// unknown or expired (an expired one is forgotten: [`UploadClaim`]).
    async fn upload_length(
        &self,
        id: &str,
        feed: crate::FeedId,
        repo: &str,
        now: i64,
        idle_ms: i64,
    ) -> Result<UploadClaim, StoreError>;

    /// Forgets session `id`; whether it existed.
    async fn end_upload(&self, id: &str) -> Result<bool, StoreError>;

    /// Forgets the sessions expired at `now` and, with `revoked`, those
    /// of API keys that no longer exist; both only when no request holds
    /// them. Returns their ids.
    async fn sweep_uploads(&self, now: i64, idle_ms: i64, revoked: bool) -> Result<Vec<String>, StoreError>;

    /// How many upload sessions are open.
    async fn upload_count(&self) -> Result<usize, StoreError>;

    /// Which of `ids` are open upload sessions.
    async fn uploads_known(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
}
