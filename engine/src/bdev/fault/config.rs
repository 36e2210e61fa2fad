//! The fault generator, the fault probabilities and the counters of what was injected.

/// A small deterministic generator (splitmix64): no dependency, identical on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// True with probability `ppm` per million.
    pub fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }
}

/// Fault probabilities (per million requests, or per poll for resets) and switches.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// A write fails with EIO.
    pub write_error_ppm: u32,
    /// A read fails with EIO.
    pub read_error_ppm: u32,
    /// A flush fails with EIO.
    pub flush_error_ppm: u32,
    /// A failed write or read also marks its LBA range bad: every later request touching it fails.
    pub bad_range_ppm: u32,
    /// A submission is refused with `Busy`.
    pub busy_ppm: u32,
    /// Per poll with requests in flight: a controller reset fails all of them.
    pub reset_ppm: u32,
    /// A read succeeds but one bit of what it returns is flipped (a transfer error no checksum of the
    /// device caught): the engine must detect it, never serve it.
    pub corrupt_read_ppm: u32,
    /// A ready completion is held back for 1 to 3 more polls.
    pub delay_ppm: u32,
    /// Deliver the ready completions of one poll in random order.
    pub reorder: bool,
    /// At a crash, a landed block may be torn inside: only a prefix of 64-byte pieces is new.
    pub torn_sector_ppm: u32,
    /// Polls without [`super::FaultDisk::note_progress`] after which the device declares a hang (0: never).
    pub hang_polls: u64,
}

/// Faults injected and requests seen, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounters {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub read_errors: u64,
    /// Reads returned with a flipped bit.
    pub corrupt_reads: u64,
    pub write_errors: u64,
    pub flush_errors: u64,
    /// LBA ranges marked bad.
    pub bad_ranges: u64,
    /// Requests failed because they touched a bad range.
    pub bad_range_errors: u64,
    pub busy: u64,
    pub resets: u64,
    /// Requests failed by resets.
    pub reset_failed: u64,
    /// Completions delivered out of submission order.
    pub reordered: u64,
    /// Completions held back a poll.
    pub delayed: u64,
    pub crashes: u64,
    /// At crashes: not-yet-durable blocks dropped / landed, writes torn, blocks torn inside.
    pub blocks_dropped: u64,
    pub blocks_landed: u64,
    pub torn_writes: u64,
    pub torn_sectors: u64,
}

impl FaultCounters {
    /// Adds `o` into `self` (for run totals).
    pub fn add(&mut self, o: &FaultCounters) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            reads,
            writes,
            flushes,
            read_errors,
            corrupt_reads,
            write_errors,
            flush_errors,
            bad_ranges,
            bad_range_errors,
            busy,
            resets,
            reset_failed,
            reordered,
            delayed,
            crashes,
            blocks_dropped,
            blocks_landed,
            torn_writes,
            torn_sectors
        );
    }
}
