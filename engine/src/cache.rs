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

use crate::zeroed::{Zeroed, PAGE};

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

/// Segments at least this long are copied only into memory made ready beforehand (see
/// [`SegmentCache::step`]); shorter ones into a fresh heap allocation.
const PREPARED_FROM: usize = 1 << 20;

/// Bytes of a growing spare faulted in per byte the shard writes (a spare is ready after half a
/// buffer's worth of writes), in pieces of this many pages, at most one piece per step.
const TOUCH_PER_BYTE: usize = 2;
const MAX_PAGES_PER_STEP: usize = 16;

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
    /// Length of a full segment (the write buffer): the size of the spares [`SegmentCache::step`]
    /// prepares. 0: none are prepared.
    segment_len: usize,
    /// A spare being faulted in, a few pages per step, and how many of its bytes are.
    growing: Option<(Zeroed<u8>, usize)>,
    /// Bytes of writes not yet paid for in touched pages.
    credit: usize,
    /// Whether writes prepare a spare now ([`SegmentCache::refresh`]).
    preparing: bool,
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that went to the device.
    pub misses: u64,
    /// Segments not cached because no memory was ready for them.
    pub skipped: u64,
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
            segment_len: 0,
            growing: None,
            credit: 0,
            preparing: false,
            hits: 0,
            misses: 0,
            skipped: 0,
        }
    }

    /// Prepares spares for full segments of `len` bytes when they are at least [`PREPARED_FROM`] long
    /// (see [`SegmentCache::step`]).
    pub fn with_segment_len(mut self, len: usize) -> Self {
        self.segment_len = if len >= PREPARED_FROM && len <= self.limit {
            len
        } else {
            0
        };
        self.refresh();
        self
    }

    /// A bounded step of preparing memory for the next segment, paid by a write of `bytes` bytes.
    ///
    /// A copy into fresh memory faults in every page it writes: 1 MiB took 0.2 to 2.9 ms on this VM
    /// (the host backs fresh guest memory page by page), 3 to 8.7 ms for some seals, all on the path of a
    /// put. So while the cache has room for another full segment and no spare fits one, the writes fault a
    /// spare's pages in a few at a time, about two bytes of spare per byte written (at most one piece
    /// of [`MAX_PAGES_PER_STEP`] pages per write), and a full segment sealed before its spare is ready is
    /// not cached: its reads go to the device, as with no cache at all.
    #[inline]
    pub fn step(&mut self, bytes: usize) {
        // The common case, one flag: nothing to prepare.
        if self.preparing {
            self.prepare(bytes);
        }
    }

    fn prepare(&mut self, bytes: usize) {
        let len = self.segment_len;
        let (buf, touched) = self.growing.get_or_insert_with(|| (Zeroed::new(len), 0));
        self.credit += bytes * TOUCH_PER_BYTE;
        // In pieces of MAX_PAGES_PER_STEP pages, one system call each (cheaper per page than faults).
        let piece = MAX_PAGES_PER_STEP * PAGE;
        if self.credit >= piece {
            buf.populate(*touched, piece);
            *touched += piece;
            self.credit -= piece;
        }
        if *touched >= buf.len() {
            if let Some((buf, _)) = self.growing.take() {
                self.keep_spare(buf);
            }
            self.credit = 0;
            self.refresh();
        }
    }

    /// Whether the writes should prepare a spare: full segments are prepared for, the cache has room
    /// for another one without evicting (once full, evictions give the next segment its memory), and no
    /// spare fits one. Kept in a flag, so the writes' step reads one field.
    fn refresh(&mut self) {
        let len = self.segment_len;
        self.preparing = self.growing.is_some()
            || (len > 0
                && self.bytes + len <= self.limit
                && !self.spares.iter().any(|b| b.len() >= len));
    }

    /// Keeps `buf` for reuse, preferring long buffers: a full segment's memory is what a seal needs.
    fn keep_spare(&mut self, buf: Zeroed<u8>) {
        if self.spares.len() < SPARES {
            self.spares.push(buf);
            return;
        }
        let shortest = (0..self.spares.len()).min_by_key(|&i| self.spares[i].len());
        if let Some(i) = shortest.filter(|&i| self.spares[i].len() < buf.len()) {
            self.spares[i] = buf;
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
        // Older copies of these blocks are stale whether or not this one is kept.
        self.remove_overlapping(lba, end);
        while self.bytes + data.len() > self.limit {
            if !self.evict_oldest() {
                break;
            }
        }
        let fits = |b: &Zeroed<u8>| b.len() >= data.len() && b.len() <= 2 * data.len();
        // A full segment goes only into a spare made ready beforehand (evictions above give theirs
        // back once the cache is full); without one it is not cached.
        let prepared = self.segment_len > 0 && 2 * data.len() >= self.segment_len;
        if prepared && !self.spares.iter().any(fits) {
            self.skipped += 1;
            self.refresh();
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.bytes += data.len();
        // A spare at most twice as long, so short segments do not each hold a full one (the budget
        // counts segment bytes).
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
        self.refresh();
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
        self.keep_spare(c.data);
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

    #[test]
    fn full_segments_wait_for_memory_prepared_by_the_writes() {
        let len = PREPARED_FROM;
        let mut c = SegmentCache::new(3 * len, 4096).with_segment_len(len);
        let full = vec![7u8; len];
        // Nothing prepared yet: not cached (no copy into fresh memory on the seal).
        c.insert(0, &full);
        assert!(c.get(0, 1).is_none());
        assert_eq!(c.skipped, 1);
        // Writes of a quarter of a segment are not enough; of half a segment they are.
        for _ in 0..len / 4 / 128 {
            c.step(128);
        }
        c.insert(1000, &full);
        assert!(c.get(1000, 1).is_none(), "a spare is half ready");
        for _ in 0..len / 4 / 128 {
            c.step(128);
        }
        assert_eq!(c.spares.len(), 1);
        c.insert(2000, &full);
        assert_eq!(
            c.get(2000, 256).map(|b| (b.len(), b[len - 1])),
            Some((len, 7))
        );
        assert_eq!(c.skipped, 2);
        // One step never faults more than its bound of pages in, however large the write.
        c.step(len);
        let touched = c.growing.as_ref().map(|g| g.1);
        assert_eq!(touched, Some(MAX_PAGES_PER_STEP * PAGE));
        for _ in 0..len / 2 / 128 {
            c.step(128);
        }
        c.insert(3000, &full);
        c.insert(4000, &full);
        assert!(c.get(3000, 1).is_some() && c.get(4000, 1).is_none());
        // Full: an eviction's buffer takes the next segment, with no preparation.
        for _ in 0..len / 2 / 128 {
            c.step(128);
        }
        c.insert(5000, &full);
        assert!(c.get(5000, 1).is_some());
        c.insert(6000, &full);
        assert!(
            c.get(6000, 1).is_some(),
            "an evicted segment's memory was reused"
        );
        assert!(c.get(0, 1).is_none() && c.bytes() <= 3 * len);
        // Full: no spare is prepared (the next eviction gives one).
        c.step(len);
        assert!(c.growing.is_none() && c.spares.is_empty());
    }

    #[test]
    fn a_full_segments_memory_displaces_a_short_spare() {
        let mut c = SegmentCache::new(4 << 20, 4096).with_segment_len(PREPARED_FROM);
        for _ in 0..SPARES {
            c.keep_spare(Zeroed::new(4096));
        }
        c.keep_spare(Zeroed::new(PREPARED_FROM));
        let mut lens: Vec<usize> = c.spares.iter().map(|b| b.len()).collect();
        lens.sort_unstable();
        assert_eq!(lens, [4096, 4096, 4096, PREPARED_FROM]);
        // A short one does not displace anything.
        c.keep_spare(Zeroed::new(100));
        assert_eq!(c.spares.iter().filter(|b| b.len() == 4096).count(), 3);
    }

    #[test]
    fn small_segments_are_not_prepared_for() {
        let mut c = SegmentCache::new(1 << 20, 512).with_segment_len(64 << 10);
        c.step(1 << 20);
        assert!(c.growing.is_none() && c.spares.is_empty());
        c.insert(0, &seg(1, 128));
        assert!(
            c.get(0, 1).is_some(),
            "below PREPARED_FROM a segment is copied at once"
        );
    }
}
