//! Sync tokens: `fst_<id>_<secret>`. The id finds the token; only the
//! sha256 of the secret is stored, and it is compared in constant time.

use sha2::{Digest as _, Sha256};

pub fn generate() -> (String, String, [u8; 32]) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let full = format!("fst_{id}_{secret}");
    (full, id, hash(&secret))
}

/// The id and the secret of a sync token (`fst_ID_SECRET`: 16 and 64
/// lowercase hex digits, as [`generate`] makes them); None for anything
/// else (a control character, a letter past `f`, a wrong length).
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("fst_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// Why `token` (which [`split`] refused) is not a sync token, for a
/// person who pasted it: what the shape is, and how long what they gave
/// is, never the text itself (it may be another secret).
pub fn malformed(token: &str) -> String {
    let chars = token.chars().count();
    let hint = if !token.starts_with("fst_") {
        "it does not start with fst_".to_owned()
    } else if chars != 85 {
        format!("it is {chars} characters long, not 85")
    } else {
        "it has characters other than 0-9 and a-f after fst_ (or its _ is not after the 16th)".to_owned()
    };
    format!(
        "the sync token has not the shape of one: fst_, a 16-digit id, _ and a 64-digit secret, in \
         lowercase hex, as the other instance's incoming replication shows it once (`ferry replication token \
         NAME` there); {hint}"
    )
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let (full, id, h) = generate();
        let (i, s) = split(&full).unwrap();
        assert_eq!(i, id);
        assert_eq!(hash(s), h);
        assert!(split("fst_short_x").is_none());
        assert!(split("ferry_abc").is_none());
        assert!(malformed("fst_short_x").contains("11 characters long"));
        // Right length, wrong characters: a control character, a letter
        // past f, uppercase.
        for bad in [
            format!("fst_{}_{}\u{1b}", "0".repeat(16), "a".repeat(63)),
            format!("fst_{}_{}", "g".repeat(16), "a".repeat(64)),
            format!("fst_{}_{}", "0".repeat(16), "A".repeat(64)),
        ] {
            assert!(split(&bad).is_none(), "{bad:?}");
            assert!(
                malformed(&bad).contains("other than 0-9 and a-f"),
                "{}",
                malformed(&bad)
            );
        }
        let accented = format!("fst_{}_{}é", "0".repeat(16), "a".repeat(63));
        assert!(split(&accented).is_none());
        assert!(
            malformed(&accented).contains("other than 0-9"),
            "{}",
            malformed(&accented)
        );
        assert!(!malformed("s3cret-value").contains("s3cret"));
    }
}
