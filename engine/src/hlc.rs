//! A hybrid logical clock: wall-clock nanoseconds when they move forward, a logical tick otherwise,
//! so timestamps of one shard strictly increase and stay close to real time. Caller-supplied
//! timestamps are observed so later local ones come after them.

use std::time::{SystemTime, UNIX_EPOCH};

/// The clock of one shard (single-threaded: the shard owns it).
#[derive(Debug, Default, Clone)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that will never go below `floor` (e.g. the newest timestamp found by recovery).
    pub fn new(floor: u64) -> Self {
        Hlc { last: floor }
    }

    /// A fresh timestamp, greater than every one issued or observed before.
    pub fn now(&mut self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.last = wall.max(self.last.saturating_add(1));
        self.last
    }

    /// Takes a timestamp from elsewhere into account.
    pub fn observe(&mut self, ts: u64) {
        self.last = self.last.max(ts);
    }

    /// The newest timestamp issued or observed.
    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_past_observed() {
        let mut c = Hlc::new(0);
        let a = c.now();
        c.observe(u64::MAX - 10);
        let b = c.now();
        assert!(b > a && b == u64::MAX - 9);
    }
}
