//! Replication protocol v1: the wire types both ends exchange under
//! `/api/replication/v1`. Instances of different Ferry versions interoperate
//! while they share a protocol version.

use ferry_store::{Change, ChangeOp, Entry, LiveEntry, WriteOutcome};
use ferry_types::{Digest, FeedName, FeedType, InstanceId, ItemKey, Stamp};
use serde::{Deserialize, Serialize};

use crate::config::Mode;

pub const PROTOCOL_VERSION: u32 = 1;
pub const SUPPORTED_VERSIONS: &[u32] = &[1];
pub const BASE_PATH: &str = "/api/replication/v1";

/// Most keys one `stamps` or `entries` request may name.
pub const MAX_KEYS: usize = 1000;
/// Most entries one `apply` request may carry.
pub const MAX_ENTRIES: usize = 1000;
/// Most digests one `blobs/missing` request may name.
pub const MAX_DIGESTS: usize = 10_000;
/// Most blobs one entry may reference.
pub const MAX_ENTRY_BLOBS: usize = 10_000;
/// Most feed pairs (and protocol versions) one handshake may name.
pub const MAX_HANDSHAKE_FEEDS: usize = 10_000;

/// Deserializes a list of at most `N` elements, refusing the body as soon
/// as it holds one more (before reading the rest): a request within its
/// byte limit cannot make the receiver hold millions of parsed elements
/// (each several times its bytes) before counting them. Errors name the
/// limit.
pub fn at_most<'de, D, T, const N: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const N: usize>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for Bounded<T, N> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {N} elements")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N).min(1024));
            while let Some(x) = seq.next_element()? {
                if v.len() == N {
                    return Err(serde::de::Error::custom(format!(
                        "a list longer than {N} elements: at most {N} per request"
                    )));
                }
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Bounded::<T, N>(std::marker::PhantomData))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireFeed {
    /// The feed's name on the connecting (outgoing) instance.
    pub outgoing: FeedName,
    /// The feed's name on the accepting (incoming) instance.
    pub incoming: FeedName,
    #[serde(rename = "type")]
    pub feed_type: FeedType,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeRequest {
    #[serde(deserialize_with = "at_most::<_, _, 64>")]
    pub protocol_versions: Vec<u32>,
    pub instance_id: InstanceId,
    pub ferry_version: String,
    /// The outgoing side's mode.
    pub mode: Mode,
    #[serde(deserialize_with = "at_most::<_, _, MAX_HANDSHAKE_FEEDS>")]
    pub feeds: Vec<WireFeed>,
    /// The name the outgoing instance goes by (shown in the other side's
    /// view of its peers); absent from older peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    /// Seconds between the outgoing side's scheduled executions, so the
    /// other side can tell when it is overdue; absent from older peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
}

/// Header the outgoing side names its instance id with on every request,
/// so the incoming side can tell apart instances that share a token.
pub const INSTANCE_HEADER: &str = "ferry-instance";

/// Header naming the process that makes the request (a random id, 32 hex
/// digits, new at every start), sent beside [`INSTANCE_HEADER`] by an
/// instance whose store no other node shares: two processes alternating
/// under one instance id are two instances started from one data
/// directory (a copy), which the incoming side points out. Nodes sharing
/// a store are one instance and send none.
pub const PROCESS_HEADER: &str = "ferry-process";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeResponse {
    pub protocol_version: u32,
    pub instance_id: InstanceId,
    pub ferry_version: String,
    /// The incoming side's replication name and mode.
    pub replication: String,
    pub mode: Mode,
    /// Optional parts of protocol v1 this side serves (e.g.
    /// [`crate::batch::BLOB_BATCH`]); an older peer lists none, and the
    /// outgoing side then keeps to the parts every v1 peer has.
    #[serde(default)]
    pub features: Vec<String>,
    /// A fingerprint of the incoming replication's include/exclude filter
    /// (16 hex digits; it changes when the filter does, and says nothing
    /// of the patterns). An outgoing side that sees it change compares in
    /// full: what a narrower filter hid is read again. None from an older
    /// peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Feeds of the request this side does not serve (the incoming
    /// replication no longer includes it, or it does not exist here), with
    /// why: the outgoing side replicates the others and reports these as
    /// failed, instead of stopping every feed. A handshake none of whose
    /// feeds is served is refused whole. Empty from an older peer, which
    /// refuses the whole handshake instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_feeds: Vec<RefusedFeed>,
}

/// A feed of a handshake's request that the incoming side does not serve
/// ([`HandshakeResponse::refused_feeds`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedFeed {
    /// The incoming side's feed name, as the request gave it.
    pub feed: FeedName,
    pub reason: String,
}

impl RefusedFeed {
    /// The first refusal's reason and how many more there are: what a
    /// handshake refused whole for them says. None when `refused` is empty.
    pub fn summary(refused: &[RefusedFeed]) -> Option<String> {
        let first = refused.first()?;
        Some(match refused.len() {
            1 => first.reason.clone(),
            n => format!("{} (and {} more of its feeds are refused)", first.reason, n - 1),
        })
    }
}

/// An item or a tombstone in its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEntry {
    pub key: ItemKey,
    pub stamp: Stamp,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub meta: serde_json::Value,
    #[serde(default, deserialize_with = "at_most::<_, _, MAX_ENTRY_BLOBS>")]
    pub blobs: Vec<Digest>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub downloads: u64,
}

impl From<Entry> for WireEntry {
    fn from(e: Entry) -> Self {
        match e.live {
            Some(l) => WireEntry {
                key: e.key,
                stamp: e.stamp,
                deleted: false,
                meta: l.meta,
                blobs: l.blobs,
                created_at: l.created_at,
                downloads: l.downloads,
            },
            None => WireEntry {
                key: e.key,
                stamp: e.stamp,
                deleted: true,
                meta: serde_json::Value::Null,
                blobs: Vec::new(),
                created_at: 0,
                downloads: 0,
            },
        }
    }
}

impl WireEntry {
    pub fn to_change(&self) -> Change {
        let op = if self.deleted {
            ChangeOp::Delete
        } else {
            ChangeOp::Upsert {
                meta: self.meta.clone(),
                blobs: self.blobs.clone(),
                created_at: Some(self.created_at),
            }
        };
        Change {
            key: self.key.clone(),
            stamp: self.stamp,
            op,
        }
    }

    pub fn to_entry(&self) -> Entry {
        Entry {
            key: self.key.clone(),
            stamp: self.stamp,
            live: (!self.deleted).then(|| LiveEntry {
                meta: self.meta.clone(),
                blobs: self.blobs.clone(),
                created_at: self.created_at,
                downloads: self.downloads,
            }),
        }
    }
}

/// A page of a feed's change log, as the current state of the keys it touched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesPage {
    pub entries: Vec<WireEntry>,
    /// Set when this side lists the asking instance without what its
    /// handshake tells (it was forgotten here and came back): it should
    /// handshake again, so it is listed by name. Older peers ignore it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handshake_again: bool,
    /// Set when this side sees two running processes take turns under the
    /// asking instance's id (copies of one data directory): what it says
    /// of it, for the asking side to show. Older peers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_shared: Option<String>,
    /// The cursor to ask from next.
    pub next: i64,
    /// The newest seq of the feed's log.
    pub last_seq: i64,
    /// The cursor is older than the tombstone horizon: compare in full.
    #[serde(default)]
    pub reset: bool,
    /// Stamp time of the oldest change after the requested cursor, if any.
    #[serde(default)]
    pub oldest_pending: Option<u64>,
    /// With `reset`: the change log is not the one the cursor was taken
    /// from (the cursor's anchor does not match, or the log is shorter
    /// than the cursor: a restored backup, a re-created instance or feed).
    #[serde(default)]
    pub diverged: bool,
    /// The [`anchor`] of the change at `next`, to send back with it.
    #[serde(default)]
    pub next_anchor: Option<i64>,
    /// The [`anchor`] of the change at `last_seq`.
    #[serde(default)]
    pub last_anchor: Option<i64>,
    /// With [`PageExtras::count_deletes`]: how many keys changed after the
    /// requested cursor are deleted now (at most what the rest of the log
    /// would delete), so the delete guard need not read it twice. `None`
    /// from a peer that does not count.
    #[serde(default)]
    pub deletes_ahead: Option<u64>,
    /// With [`PageExtras::count_bytes`]: bytes of the distinct blobs that
    /// live items changed after the requested cursor reference (what the
    /// reader may have to move, at most; progress by bytes). `None` from a
    /// peer that does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_ahead: Option<u64>,
    /// With [`PageExtras::bytes_after`] = SEQ: bytes of the distinct blobs
    /// that live items changed after SEQ reference, when the log grew past
    /// SEQ (0 when it did not, without a lookup): what a reader that
    /// counted the backlog up to SEQ adds for changes written since. `None`
    /// from a peer that does not count (an older one, or a filtered
    /// replication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_late: Option<u64>,
    /// With [`PageExtras::inline_max`]: small blobs the entries need,
    /// carried in the page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline: Vec<InlineBlob>,
    /// With [`PageExtras::blob_sizes`]: the size in bytes of each blob the
    /// page's live entries reference that this side holds, keyed by digest.
    /// A receiver fetching from blob sources refuses a source's frame of
    /// another length before its bytes land. Empty from a peer that does
    /// not tell (an older one).
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub sizes: std::collections::HashMap<Digest, u64>,
    /// The instance that answered (a receiver that reuses an earlier
    /// handshake checks it is still talking to the same one).
    #[serde(default)]
    pub instance_id: Option<InstanceId>,
}

/// A blob carried in a page: its bytes, base64 (RFC 4648, standard
/// alphabet), verified by the receiver against the digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InlineBlob {
    pub digest: Digest,
    pub data: String,
}

/// Most bytes of blobs one page carries inline.
pub const INLINE_BUDGET: u64 = 1 << 20;

/// The query of a `changes` request (`since`, `anchor`, `limit`, `wait`
/// in seconds, and what older peers ignore: `count_deletes`,
/// `count_bytes`, `bytes_after`, `inline_max`, `blob_sizes`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    pub since: i64,
    pub anchor: Option<i64>,
    #[serde(default = "default_page")]
    pub limit: usize,
    #[serde(default)]
    pub wait: u64,
    #[serde(default)]
    pub count_deletes: bool,
    #[serde(default)]
    pub count_bytes: bool,
    pub bytes_after: Option<i64>,
    #[serde(default)]
    pub inline_max: u64,
    #[serde(default)]
    pub blob_sizes: bool,
}

fn default_page() -> usize {
    500
}

/// What a `changes` request asks for beyond the page (query parameters
/// `count_deletes`, `count_bytes`, `bytes_after`, `inline_max` and
/// `blob_sizes`; older peers ignore them).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PageExtras {
    /// Count [`ChangesPage::deletes_ahead`].
    #[serde(default)]
    pub count_deletes: bool,
    /// Count [`ChangesPage::bytes_ahead`] (asked on the first page of an
    /// execution).
    #[serde(default)]
    pub count_bytes: bool,
    /// Count [`ChangesPage::bytes_late`] after this seq (asked on the pages
    /// after the first by a reader that counted the backlog up to it).
    #[serde(default)]
    pub bytes_after: Option<i64>,
    /// Carry blobs up to this many bytes inline ([`ChangesPage::inline`],
    /// at most [`INLINE_BUDGET`] per page); 0: none.
    #[serde(default)]
    pub inline_max: u64,
    /// Tell [`ChangesPage::sizes`] (asked by a receiver with blob sources).
    #[serde(default)]
    pub blob_sizes: bool,
}

/// A cursor's anchor: a fingerprint of the stamp of the change at the
/// cursor's position. A receiver sends it back with the cursor
/// (`since=N&anchor=A`); a log whose change at N has another stamp is not
/// the log the cursor was taken from. Never 0 (0 means "no anchor").
pub fn anchor(stamp: &Stamp) -> i64 {
    let mut h = ferry_types::Sha256Hasher::new();
    h.update(&stamp.time.0.to_be_bytes());
    h.update(stamp.origin.to_string().as_bytes());
    let d = h.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_bytes()[..8]);
    match i64::from_be_bytes(b) {
        0 => 1,
        a => a,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntriesPage {
    pub entries: Vec<WireEntry>,
    /// Ask again with `after=` this key; `None` at the end.
    pub next_after: Option<ItemKey>,
    /// Asked with `blob_sizes=true` (or [`KeyList::blob_sizes`]): the sizes
    /// of the entries' blobs, as [`ChangesPage::sizes`]. Empty from a peer
    /// that does not tell.
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub sizes: std::collections::HashMap<Digest, u64>,
}

/// Digests: the body of `blobs/missing`, and its answer (the ones this
/// side lacks).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DigestList {
    #[serde(deserialize_with = "at_most::<_, _, MAX_DIGESTS>")]
    pub digests: Vec<Digest>,
    /// In an answer: those of `digests` this side holds the first bytes
    /// of (an upload that broke off), with how many; a sender may send
    /// them from there (`blobs/upload` frames from that offset). Empty in
    /// requests and from older peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial: Vec<crate::batch::BlobWant>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    #[serde(deserialize_with = "at_most::<_, _, MAX_KEYS>")]
    pub keys: Vec<ItemKey>,
    /// Tell the found entries' blob sizes ([`EntriesPage::sizes`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blob_sizes: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StampList {
    /// Per requested key: its stored stamp and whether it is a tombstone.
    pub stamps: Vec<Option<(Stamp, bool)>>,
    /// Indices (into the request's keys) of the keys outside this side's
    /// include/exclude filter for the replication: their stamp is `null`
    /// and this side refuses them, so a pusher sends neither their blobs
    /// nor their entries. Empty from peers older than this field (they
    /// refuse such an entry only once it is applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outside: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    #[serde(deserialize_with = "at_most::<_, _, MAX_ENTRIES>")]
    pub entries: Vec<WireEntry>,
}

/// What the receiving side did with one pushed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireOutcome {
    Applied,
    AlreadyApplied,
    /// The receiver holds a later version.
    Superseded {
        current: Stamp,
    },
    /// The receiver refused this entry (its stamp is too far ahead of the
    /// receiver's clock, or its item fails the feed type's checks); the
    /// other entries of the request were still applied. The sender keeps it
    /// as a stuck item and retries it.
    Refused {
        reason: String,
    },
}

impl From<ferry_core::Applied> for WireOutcome {
    fn from(a: ferry_core::Applied) -> Self {
        match a {
            ferry_core::Applied::Written(o) => o.into(),
            ferry_core::Applied::Refused(reason) => WireOutcome::Refused { reason },
        }
    }
}

impl From<WriteOutcome> for WireOutcome {
    fn from(o: WriteOutcome) -> Self {
        match o {
            WriteOutcome::Applied { .. } => WireOutcome::Applied,
            WriteOutcome::AlreadyApplied => WireOutcome::AlreadyApplied,
            WriteOutcome::Superseded { current } => WireOutcome::Superseded { current },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub outcomes: Vec<WireOutcome>,
}

/// A digest over a feed's live items (filtered), for `verify`: the same
/// items at the same versions give the same digests on every instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedDigest {
    /// SHA-256 (hex) of the live items' `KEY\tSTAMP\n` lines in key order:
    /// which versions each side holds.
    pub digest: String,
    /// How many live items the digests cover.
    pub items: u64,
    /// SHA-256 (hex) of `KEY\tSTAMP\tBLOB,BLOB…\n` in key order (each
    /// item's blob digests as it lists them): also what each version
    /// holds. Two instances that wrote one key under one stamp with other
    /// contents (started from one data directory) differ here only.
    /// Absent from older peers, which compare versions only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}
