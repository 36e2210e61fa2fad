//! The log of one shard: its live segments (by first block, with the bytes the index points at), the
//! head where the next segment goes and the blocks reserved there, the sequence number and chain value
//! the next segment carries, and the extents of cleaned segments waiting for their moved copies to be
//! durable. The persistence cycle appends to it, GC and checkpoints shrink it, recovery rebuilds it.

use std::collections::{BTreeMap, BTreeSet};

use crate::format;
use crate::index::Entry;
use crate::space::FreeSpace;

/// A segment on the device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegInfo {
    pub seq: u64,
    pub blocks: u32,
    /// Bytes of records the index points at.
    pub live: u64,
}

impl SegInfo {
    /// Bytes of the segment the index does not point at (header and padding included).
    pub(crate) fn dead(&self, bs: u64) -> u64 {
        (u64::from(self.blocks) * bs).saturating_sub(self.live)
    }

    /// Whether cleaning it gains anything when space is short: two blocks and a header dead (less
    /// gained nothing once the moved copies' own headers and padding were paid).
    pub(crate) fn worth_cleaning_pressed(&self, bs: u64) -> bool {
        self.dead(bs) >= 2 * bs + format::SEG_HDR_LEN as u64
    }
}

/// The log's state.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// Live segments by first block.
    pub segments: BTreeMap<u64, SegInfo>,
    /// Sequence number of the next segment.
    pub next_seq: u64,
    /// Where the next segment goes, and the blocks reserved there.
    pub head: (u64, u64),
    /// The header crc of the last segment sealed: the next one carries it (the chain).
    pub chain_crc: u32,
    /// Extents to free once a generation is durable (generation, first block, blocks): GC victims.
    pub pending_free: Vec<(u64, u64, u64)>,
    /// Records GC moved whose copies are not durable yet (generation, key, version, the old
    /// location): after a failed cycle the index points back at the old copies, which are.
    pub moves: Vec<(u64, Vec<u8>, u64, u64)>,
    /// Segments GC found unreadable: not tried again.
    pub gc_bad: BTreeSet<u64>,
    /// Segments and bytes written since the last checkpoint.
    pub segs_since_ckpt: u32,
    pub bytes_since_ckpt: u64,
}

impl Log {
    /// Marks the record an index entry points at (key of `key_len` bytes) dead in its segment. The
    /// record is on the device or being written (one in the active buffer is in no segment yet).
    pub(crate) fn kill(&mut self, e: &Entry, key_len: usize, bs: u64) {
        let blk = e.loc / bs;
        if let Some((_, seg)) = self.segments.range_mut(..=blk).next_back() {
            seg.live = seg
                .live
                .saturating_sub(format::record_len(key_len, e.val_len as usize) as u64);
        }
    }

    /// Frees the extents whose moved copies are durable now that generations up to `durable` are.
    pub(crate) fn free_durable(&mut self, durable: u64, space: &mut FreeSpace) {
        let mut i = 0;
        while i < self.pending_free.len() {
            let (gen, lba, blocks) = self.pending_free[i];
            if gen <= durable {
                self.pending_free.swap_remove(i);
                // Cannot fail: the extent was in use until now.
                let _ = space.free(lba, blocks);
            } else {
                i += 1;
            }
        }
    }

    /// Bytes the index points at, and bytes of segments it does not.
    pub(crate) fn live_and_dead(&self, bs: u64) -> (u64, u64) {
        self.segments
            .values()
            .fold((0, 0), |(l, d), g| (l + g.live, d + g.dead(bs)))
    }
}
