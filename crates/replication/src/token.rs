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
    }
}
