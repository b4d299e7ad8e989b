use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::InvalidValue;

/// A feed's name: 1–64 characters, lowercase ASCII letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit. Safe in URLs and file names.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedName(String);

impl FeedName {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        // A name far too long is not echoed whole.
        let bad = |r: &str| {
            let shown = crate::shortened(&s, 80);
            Err(InvalidValue::new("feed name", format!("{shown:?}: {r}")))
        };
        if s.is_empty() || s.len() > 64 {
            return bad("must be 1 to 64 characters");
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return bad("must start with a lowercase letter or digit");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("may contain only lowercase letters, digits, '.', '_' and '-'");
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The kind of a feed, which fixes its native protocol and item layout.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum FeedType {
    Assets,
    Npm,
    Pypi,
    Oci,
    Cargo,
    Nuget,
    Debian,
    Rpm,
}

impl FeedType {
    pub const ALL: [FeedType; 8] = [
        FeedType::Assets,
        FeedType::Npm,
        FeedType::Pypi,
        FeedType::Oci,
        FeedType::Cargo,
        FeedType::Nuget,
        FeedType::Debian,
        FeedType::Rpm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedType::Assets => "assets",
            FeedType::Npm => "npm",
            FeedType::Pypi => "pypi",
            FeedType::Oci => "oci",
            FeedType::Cargo => "cargo",
            FeedType::Nuget => "nuget",
            FeedType::Debian => "debian",
            FeedType::Rpm => "rpm",
        }
    }
}

impl FromStr for FeedType {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FeedType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = FeedType::ALL.iter().map(|t| t.as_str()).collect();
                InvalidValue::new(
                    "feed type",
                    format!("{:?} is not one of {}", crate::shortened(s, 80), known.join(", ")),
                )
            })
    }
}

/// The key of an item, unique within its feed: 1–1024 bytes of UTF-8 without
/// control characters. Each feed type defines its own key layout.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey(String);

impl ItemKey {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if s.is_empty() || s.len() > 1024 {
            return Err(InvalidValue::new("item key", "must be 1 to 1024 bytes"));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue::new(
                "item key",
                "must not contain control characters",
            ));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype_impls!(FeedName);
string_newtype_impls!(ItemKey);

impl fmt::Display for FeedType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl Serialize for FeedType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
impl<'de> Deserialize<'de> for FeedType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_names() {
        assert!(FeedName::new("main-npm.2_x").is_ok());
        for bad in ["", "-x", "Upper", "a/b", "a b", "..", &"x".repeat(65)] {
            assert!(FeedName::new(bad).is_err(), "{bad:?} accepted");
        }
        // A 5,000-character name is not echoed back whole.
        let e = FeedName::new("y".repeat(5000)).unwrap_err().to_string();
        assert!(e.contains("must be 1 to 64") && e.len() < 200, "{e}");
    }

    #[test]
    fn feed_types() {
        assert_eq!("npm".parse::<FeedType>(), Ok(FeedType::Npm));
        let err = "maven".parse::<FeedType>().unwrap_err();
        assert!(err.to_string().contains("assets, npm, pypi, oci, cargo, nuget"));
    }

    #[test]
    fn item_keys() {
        assert!(ItemKey::new("dir/file.txt").is_ok());
        assert!(ItemKey::new("").is_err());
        assert!(ItemKey::new("a\nb").is_err());
        assert!(ItemKey::new("x".repeat(1025)).is_err());
    }
}
