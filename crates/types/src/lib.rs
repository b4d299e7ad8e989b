//! Validated newtypes shared by every Ferry crate. Pure: no I/O.
//!
//! A value of one of these types has been validated once, at the edge; code
//! that holds one never re-checks it.

mod digest;
mod names;
mod size;
mod stamp;
mod time;

pub use digest::{Digest, Sha256Hasher};
pub use names::{FeedName, FeedType, ItemKey};
pub use size::binary_size;
pub use stamp::{Hlc, InstanceId, Stamp};
pub use time::rfc3339_millis;

/// `s` cut to its first `max_chars` characters, with `…` when cut: an error
/// message names a refused value without echoing a huge one back whole.
pub fn shortened(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Why a value was refused. The message is meant for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct InvalidValue {
    pub what: &'static str,
    pub reason: String,
}

impl InvalidValue {
    pub fn new(what: &'static str, reason: impl Into<String>) -> Self {
        Self {
            what,
            reason: reason.into(),
        }
    }
}
