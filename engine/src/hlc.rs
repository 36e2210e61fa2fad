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
        let wall = wall_ns();
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

/// Wall-clock nanoseconds, from the kernel's tick-granular copy of the clock where there is one: read
/// without the TSC, it costs a few nanoseconds instead of ~25 on every write; the logical part of the
/// clock orders the writes within a tick (a few milliseconds), so timestamps may trail real time by that.
fn wall_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
            return (ts.tv_sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec as u64);
        }
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
