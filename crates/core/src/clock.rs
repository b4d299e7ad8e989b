//! The instance's hybrid logical clock, which stamps every local write.

use std::sync::Mutex;

use ferry_types::{Hlc, InstanceId, Stamp};

pub struct Clock {
    instance: InstanceId,
    last: Mutex<Hlc>,
}

/// The highest reading a stamp from elsewhere may carry now: the wall
/// clock plus `skew`, with the counter at its top.
pub(crate) fn ceiling(skew: std::time::Duration) -> Hlc {
    let millis = wall_millis().saturating_add(skew.as_millis() as u64);
    Hlc::from_parts(millis.min(Hlc::MAX_MILLIS), u16::MAX)
}

pub(crate) fn wall_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Clock {
    /// A clock that will never issue a reading at or below `floor` (the
    /// highest stamp already stored), even if the wall clock went back.
    pub fn new(instance: InstanceId, floor: Hlc) -> Self {
        Self {
            instance,
            last: Mutex::new(floor),
        }
    }

    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// A fresh stamp for a local write. The clock follows only the wall
    /// clock and its own readings, never stamps received from elsewhere
    /// (an instance whose clock runs ahead must not drag this one, or its
    /// peers with a tighter skew would refuse what this one writes); a
    /// local write still orders after what is stored under its key (see
    /// `StampOrder::LocalWrite`).
    pub fn stamp(&self) -> Stamp {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = last.tick(wall_millis(), None);
        Stamp {
            time: *last,
            origin: self.instance,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_and_never_go_below_the_floor() {
        let far = Hlc::from_parts(wall_millis() + 60_000, 7);
        let c = Clock::new(InstanceId::random(), far);
        let a = c.stamp();
        let b = c.stamp();
        assert!(a.time > far);
        assert!(b > a);
    }
}
