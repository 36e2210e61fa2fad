//! The segment cache of one shard: copies of the segments this shard wrote most recently, so reads of
//! recent data (and of the segment still being written) are served from memory instead of the device.
//! A log-structured store writes its hot data last; keeping the newest segments is the cache that fits
//! (the peer it is compared with, RocksDB, reads recent data from its memtable, block cache and the page
//! cache).
//!
//! Correctness does not depend on invalidation when space is freed: a segment is inserted when it is
//! written, and the insertion drops every cached segment it overlaps. A read only ever asks for blocks of
//! a live segment (the index points at nothing else); a cached copy overlapping a live segment must have
//! been inserted before it (extents in use do not overlap), so that segment's insertion dropped it. Reads
//! still check every record against the index (key, version, length) and its checksum.

use std::collections::{BTreeMap, VecDeque};

use crate::zeroed::Zeroed;

#[derive(Debug)]
struct Cached {
    /// At least `len` bytes (a reused allocation may be longer, up to twice).
    data: Zeroed<u8>,
    len: usize,
    /// Insertion number, to tell a segment from a later one at the same block.
    id: u64,
}

/// Dropped copies kept for reuse. Full segments are all one size, and allocations that large are
/// mappings: faulting in a fresh one costs page faults (or a populating pass), unmapping one a TLB
/// shootdown, per cycle, costly on a VM.
const SPARES: usize = 4;

/// Recently written segments, by first block, up to a byte budget (oldest evicted first).
#[derive(Debug)]
pub struct SegmentCache {
    segs: BTreeMap<u64, Cached>,
    order: VecDeque<(u64, u64)>,
    bytes: usize,
    limit: usize,
    block_size: u64,
    next_id: u64,
    spares: Vec<Zeroed<u8>>,
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that went to the device.
    pub misses: u64,
}

impl SegmentCache {
    /// A cache of at most `limit` bytes (0: disabled) over blocks of `block_size` bytes.
    pub fn new(limit: usize, block_size: u64) -> Self {
        SegmentCache {
            segs: BTreeMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            limit,
            block_size: block_size.max(1),
            next_id: 0,
            spares: Vec::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps a copy of the segment image `data` written at block `lba`.
    pub fn insert(&mut self, lba: u64, data: &[u8]) {
        if data.is_empty() || data.len() > self.limit {
            return;
        }
        let end = lba + (data.len() as u64).div_ceil(self.block_size);
        self.remove_overlapping(lba, end);
        while self.bytes + data.len() > self.limit {
            if !self.evict_oldest() {
                break;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.bytes += data.len();
        // A spare at most twice as long, so short segments do not each hold a full one (the budget
        // counts segment bytes).
        let fits = |b: &Zeroed<u8>| b.len() >= data.len() && b.len() <= 2 * data.len();
        let mut buf = match self.spares.iter().position(fits) {
            Some(i) => self.spares.swap_remove(i),
            // Mapped up front: this copy is on a seal, so on the path of a put (see `Zeroed`).
            None => Zeroed::populated(data.len()),
        };
        buf[..data.len()].copy_from_slice(data);
        self.segs.insert(
            lba,
            Cached {
                data: buf,
                len: data.len(),
                id,
            },
        );
        self.order.push_back((lba, id));
    }

    /// The bytes of blocks `first .. first + nblocks` when one cached segment holds them all.
    pub fn get(&mut self, first: u64, nblocks: u64) -> Option<&[u8]> {
        let found = self
            .segs
            .range(..=first)
            .next_back()
            .and_then(|(&start, c)| {
                let from = ((first - start) * self.block_size) as usize;
                let to = from + (nblocks * self.block_size) as usize;
                c.data[..c.len].get(from..to)
            });
        match found {
            Some(b) => {
                self.hits += 1;
                Some(b)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    fn remove_overlapping(&mut self, lba: u64, end: u64) {
        let bs = self.block_size;
        let doomed: Vec<u64> = self
            .segs
            .range(..end)
            .rev()
            .take_while(|(&start, c)| start + (c.len as u64).div_ceil(bs) > lba || start >= lba)
            .filter(|(&start, c)| start + (c.len as u64).div_ceil(bs) > lba)
            .map(|(&start, _)| start)
            .collect();
        for s in doomed {
            if let Some(c) = self.segs.remove(&s) {
                self.release(c);
            }
        }
    }

    fn release(&mut self, c: Cached) {
        self.bytes -= c.len;
        if self.spares.len() < SPARES {
            self.spares.push(c.data);
        }
    }

    /// Drops the oldest segment still cached; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((lba, id)) = self.order.pop_front() {
            if self.segs.get(&lba).is_some_and(|c| c.id == id) {
                if let Some(c) = self.segs.remove(&lba) {
                    self.release(c);
                }
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(fill: u8, blocks: usize) -> Vec<u8> {
        vec![fill; blocks * 512]
    }

    #[test]
    fn serves_whole_blocks_of_one_segment() {
        let mut c = SegmentCache::new(1 << 20, 512);
        c.insert(10, &seg(1, 4));
        assert_eq!(c.get(11, 2).map(|b| b.len()), Some(1024));
        assert!(c.get(12, 3).is_none(), "past the segment's end");
        assert!(c.get(9, 1).is_none(), "before it");
        assert_eq!((c.hits, c.misses), (1, 2));
    }

    #[test]
    fn a_new_segment_drops_every_copy_it_overlaps() {
        let mut c = SegmentCache::new(1 << 20, 512);
        c.insert(0, &seg(1, 10));
        c.insert(20, &seg(2, 10));
        c.insert(40, &seg(3, 4));
        // Overlaps the tail of the first and the head of the second; not the third.
        c.insert(8, &seg(4, 14));
        assert!(c.get(0, 1).is_none());
        assert!(c.get(25, 1).is_none());
        assert_eq!(c.get(8, 14).map(|b| b[0]), Some(4));
        assert_eq!(c.get(41, 1).map(|b| b[0]), Some(3));
        assert_eq!(c.bytes(), (14 + 4) * 512);
        // Same start, replaced.
        c.insert(40, &seg(5, 2));
        assert_eq!(c.get(40, 2).map(|b| b[0]), Some(5));
        assert!(c.get(42, 1).is_none());
    }

    #[test]
    fn oldest_segments_go_first_within_the_budget() {
        let mut c = SegmentCache::new(8 * 512, 512);
        c.insert(0, &seg(1, 4));
        c.insert(100, &seg(2, 4));
        c.insert(0, &seg(3, 2)); // replaces the first; the stale order entry is skipped later
        c.insert(200, &seg(4, 4));
        assert!(c.get(100, 1).is_none(), "oldest live segment evicted");
        assert_eq!(c.get(0, 1).map(|b| b[0]), Some(3));
        assert_eq!(c.get(200, 1).map(|b| b[0]), Some(4));
        assert!(c.bytes() <= 8 * 512);
        // A reused (longer) allocation serves only the new segment's own blocks.
        c.insert(300, &seg(6, 1));
        assert_eq!(c.get(300, 1).map(|b| b[0]), Some(6));
        assert!(c.get(301, 1).is_none());
        let mut off = SegmentCache::new(0, 512);
        off.insert(0, &seg(1, 1));
        assert!(off.get(0, 1).is_none(), "a zero budget caches nothing");
    }
}
