//! Sync tokens: `fst_<id>_<secret>`. The id finds the token; only the
//! sha256 of the secret is stored, and it is compared in constant time.

use sha2::{Digest as _, Sha256};

pub fn generate() -> (String, String, [u8; 32]) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let full = format!("fst_{id}_{secret}");
    (full, id, hash(&secret))
}

pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("fst_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some((id, secret))
}

/// Why `token` (which [`split`] refused) is not a sync token, for a
/// person who pasted it: what the shape is, and how long what they gave
/// is, never the text itself (it may be another secret).
pub fn malformed(token: &str) -> String {
    let hint = if !token.starts_with("fst_") {
        "it does not start with fst_".to_owned()
    } else {
        format!("it is {} characters long, not 85", token.chars().count())
    };
    format!(
        "--token is not a sync token: one is fst_, a 16-character id, _ and a 64-character secret, as the other \
         instance's incoming replication shows it once (`ferry replication token NAME` there); {hint}"
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
        assert!(!malformed("s3cret-value").contains("s3cret"));
    }
}
