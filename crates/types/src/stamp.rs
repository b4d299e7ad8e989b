use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::InvalidValue;

/// The stable random identity of one Ferry instance (16 bytes, shown as 32 hex).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId([u8; 16]);

impl InstanceId {
    pub fn random() -> Self {
        Self(rand::random())
    }
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(b)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}
impl FromStr for InstanceId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b)
            .map_err(|_| InvalidValue::new("instance id", "expected 32 hex characters"))?;
        Ok(Self(b))
    }
}
impl Serialize for InstanceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A hybrid logical clock reading: milliseconds since the Unix epoch in the
/// high 48 bits, a logical counter in the low 16. Totally ordered as a u64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    pub const COUNTER_BITS: u32 = 16;
    /// The largest millisecond value a reading can hold (48 bits).
    pub const MAX_MILLIS: u64 = u64::MAX >> Self::COUNTER_BITS;

    /// A reading from its parts; `millis` past [`Hlc::MAX_MILLIS`] is
    /// clamped there, never wrapped.
    pub fn from_parts(millis: u64, counter: u16) -> Self {
        Self((millis.min(Self::MAX_MILLIS) << Self::COUNTER_BITS) | u64::from(counter))
    }
    pub fn millis(self) -> u64 {
        self.0 >> Self::COUNTER_BITS
    }
    pub fn counter(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// The next reading after `self`, given the wall clock `now_millis` and
    /// an optional reading observed from elsewhere. Greater than both
    /// `self` and `observed`, except at the very top of the range, where it
    /// saturates instead of wrapping to the past (callers keep observed
    /// readings near the wall clock, so the top is never reached).
    pub fn tick(self, now_millis: u64, observed: Option<Hlc>) -> Hlc {
        let base = observed.map_or(self, |o| self.max(o));
        if now_millis > base.millis() {
            Hlc::from_parts(now_millis, 0)
        } else {
            Hlc(base.0.saturating_add(1))
        }
    }
}

/// The version of an item: when and where it was written. Every instance
/// orders two stamps the same way: by clock, then by origin.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Stamp {
    pub time: Hlc,
    pub origin: InstanceId,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.time.0, self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn tick_is_monotonic(start in 0u64..u64::MAX >> 17, now in 0u64..1u64 << 47, obs in proptest::option::of(0u64..u64::MAX >> 17)) {
            let prev = Hlc(start);
            let next = prev.tick(now, obs.map(Hlc));
            prop_assert!(next > prev);
            if let Some(o) = obs { prop_assert!(next > Hlc(o)); }
        }
    }

    #[test]
    fn tick_saturates_instead_of_wrapping() {
        let top = Hlc(u64::MAX - 1);
        assert_eq!(top.tick(0, None), Hlc(u64::MAX));
        assert_eq!(Hlc(u64::MAX).tick(5, None), Hlc(u64::MAX));
        assert_eq!(Hlc(5).tick(0, Some(Hlc(u64::MAX))), Hlc(u64::MAX));
        assert_eq!(Hlc::from_parts(u64::MAX, 3).millis(), Hlc::MAX_MILLIS);
    }

    #[test]
    fn stamps_order_by_time_then_origin() {
        let a = InstanceId::from_bytes([1; 16]);
        let b = InstanceId::from_bytes([2; 16]);
        let s1 = Stamp {
            time: Hlc(5),
            origin: b,
        };
        let s2 = Stamp {
            time: Hlc(6),
            origin: a,
        };
        let s3 = Stamp {
            time: Hlc(6),
            origin: b,
        };
        assert!(s1 < s2 && s2 < s3);
        let id = InstanceId::random();
        assert_eq!(id.to_string().parse::<InstanceId>(), Ok(id));
    }
}
