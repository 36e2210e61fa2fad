//! The free-space manager of one shard's slice: free extents kept in two ordered trees, one by offset
//! (to find neighbours when freeing) and one by (length, offset) (to find the best fit when allocating).
//! Units are blocks. Debug builds check every invariant after every change.

use std::collections::{BTreeMap, BTreeSet};

/// Why a free was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    /// The extent is outside the managed range or empty.
    #[error("extent {0}+{1} outside the managed range")]
    OutOfRange(u64, u64),
    /// Part of the extent is already free (a double free).
    #[error("extent {0}+{1} overlaps free space")]
    DoubleFree(u64, u64),
}

/// Free extents of the range `[start, end)`.
#[derive(Debug, Clone)]
pub struct FreeSpace {
    by_off: BTreeMap<u64, u64>,
    by_len: BTreeSet<(u64, u64)>,
    start: u64,
    end: u64,
    free: u64,
}

impl FreeSpace {
    /// Everything in `[start, end)` is free.
    pub fn new(start: u64, end: u64) -> Self {
        let mut s = FreeSpace {
            by_off: BTreeMap::new(),
            by_len: BTreeSet::new(),
            start,
            end,
            free: 0,
        };
        if end > start {
            s.insert(start, end - start);
        }
        s.check();
        s
    }

    /// Everything in `[start, end)` is free except `used` (extents may touch, and come in any order).
    /// Fails when two used extents overlap or one leaves the range.
    pub fn with_used(start: u64, end: u64, used: &mut [(u64, u64)]) -> Result<Self, SpaceError> {
        used.sort_unstable();
        let mut s = FreeSpace {
            by_off: BTreeMap::new(),
            by_len: BTreeSet::new(),
            start,
            end,
            free: 0,
        };
        let mut cur = start;
        for &(off, len) in used.iter() {
            if len == 0 || off < start || off.checked_add(len).is_none_or(|e| e > end) {
                return Err(SpaceError::OutOfRange(off, len));
            }
            if off < cur {
                return Err(SpaceError::DoubleFree(off, len));
            }
            if off > cur {
                s.insert(cur, off - cur);
            }
            cur = off + len;
        }
        if end > cur {
            s.insert(cur, end - cur);
        }
        s.check();
        Ok(s)
    }

    fn insert(&mut self, off: u64, len: u64) {
        self.by_off.insert(off, len);
        self.by_len.insert((len, off));
        self.free += len;
    }

    fn remove(&mut self, off: u64, len: u64) {
        self.by_off.remove(&off);
        self.by_len.remove(&(len, off));
        self.free -= len;
    }

    /// Best fit: the smallest free extent of at least `len` blocks (lowest offset among equals);
    /// returns the first block. O(log n).
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        if len == 0 {
            return None;
        }
        let &(flen, off) = self.by_len.range((len, 0)..).next()?;
        self.remove(off, flen);
        if flen > len {
            self.insert(off + len, flen - len);
        }
        self.check();
        Some(off)
    }

    /// Allocates exactly `[off, off + len)` if all of it is free (used to keep the log sequential).
    /// O(log n).
    pub fn alloc_at(&mut self, off: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let Some((o, l)) = self.by_off.range(..=off).next_back().map(|(&o, &l)| (o, l)) else {
            return false;
        };
        if off.checked_add(len).is_none_or(|e| e > o + l) {
            return false;
        }
        self.remove(o, l);
        if off > o {
            self.insert(o, off - o);
        }
        if o + l > off + len {
            self.insert(off + len, o + l - off - len);
        }
        self.check();
        true
    }

    /// Gives `[off, off + len)` back, merging with free neighbours. O(log n).
    pub fn free(&mut self, off: u64, len: u64) -> Result<(), SpaceError> {
        let end = off
            .checked_add(len)
            .ok_or(SpaceError::OutOfRange(off, len))?;
        if len == 0 || off < self.start || end > self.end {
            return Err(SpaceError::OutOfRange(off, len));
        }
        let prev = self.by_off.range(..=off).next_back().map(|(&o, &l)| (o, l));
        let next = self.by_off.range(off..).next().map(|(&o, &l)| (o, l));
        if prev.is_some_and(|(o, l)| o + l > off) || next.is_some_and(|(o, _)| o < end) {
            return Err(SpaceError::DoubleFree(off, len));
        }
        let (mut new_off, mut new_len) = (off, len);
        if let Some((o, l)) = prev.filter(|(o, l)| o + l == off) {
            self.remove(o, l);
            new_off = o;
            new_len += l;
        }
        if let Some((o, l)) = next.filter(|&(o, _)| o == end) {
            self.remove(o, l);
            new_len += l;
        }
        self.insert(new_off, new_len);
        self.check();
        Ok(())
    }

    /// Free blocks.
    pub fn free_blocks(&self) -> u64 {
        self.free
    }

    /// Blocks in use.
    pub fn used_blocks(&self) -> u64 {
        (self.end - self.start) - self.free
    }

    /// Number of free extents.
    pub fn extents(&self) -> usize {
        self.by_off.len()
    }

    /// Largest free extent.
    pub fn largest(&self) -> u64 {
        self.by_len.iter().next_back().map_or(0, |&(l, _)| l)
    }

    /// Free extents in offset order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_off.iter().map(|(&o, &l)| (o, l))
    }

    fn check(&self) {
        // Every change is O(log n); the full check is O(n), so large trees are left to the tests.
        if cfg!(debug_assertions) && self.by_off.len() <= 256 {
            if let Err(e) = self.invariants() {
                panic!("free-space invariant broken: {e}");
            }
        }
    }

    /// Checks: trees agree, extents inside the range, no overlap, no two adjacent (they would be merged),
    /// and the free count matches the trees (so free + used = the range).
    pub fn invariants(&self) -> Result<(), String> {
        if self.by_off.len() != self.by_len.len() {
            return Err("trees differ in size".into());
        }
        let mut sum = 0u64;
        let mut last_end: Option<u64> = None;
        for (&o, &l) in &self.by_off {
            if l == 0 || o < self.start || o + l > self.end {
                return Err(format!("extent {o}+{l} out of range"));
            }
            if !self.by_len.contains(&(l, o)) {
                return Err(format!("extent {o}+{l} missing from the length tree"));
            }
            if let Some(e) = last_end {
                if o < e {
                    return Err(format!("extent {o}+{l} overlaps"));
                }
                if o == e {
                    return Err(format!("extent {o}+{l} not merged with its neighbour"));
                }
            }
            last_end = Some(o + l);
            sum += l;
        }
        if sum != self.free || self.free > self.end - self.start {
            return Err(format!("free count {} but trees hold {sum}", self.free));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn best_fit_and_merge() {
        let mut s = FreeSpace::new(0, 100);
        let a = s.alloc(10).expect("a");
        let b = s.alloc(20).expect("b");
        let c = s.alloc(5).expect("c");
        assert_eq!((a, b, c), (0, 10, 30));
        s.free(a, 10).expect("free a");
        // Best fit for 8: the 10-block hole at 0, not the 65-block tail.
        assert_eq!(s.alloc(8), Some(0));
        s.free(0, 8).expect("free");
        s.free(b, 20).expect("free b");
        assert_eq!(s.extents(), 2);
        s.free(c, 5).expect("free c");
        assert_eq!((s.extents(), s.free_blocks()), (1, 100));
        assert_eq!(s.free(3, 2), Err(SpaceError::DoubleFree(3, 2)));
        assert_eq!(s.free(99, 2), Err(SpaceError::OutOfRange(99, 2)));
        assert_eq!(s.alloc(101), None);
        assert!(s.alloc_at(40, 10));
        assert!(!s.alloc_at(45, 10));
        assert!(s.alloc_at(0, 40));
        assert!(s.alloc_at(50, 50));
        assert_eq!(s.free_blocks(), 0);
        assert!(s.invariants().is_ok());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64),
        AllocAt(u64, u64),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..40).prop_map(Op::Alloc),
            (0u64..300, 1u64..30).prop_map(|(o, l)| Op::AllocAt(o, l)),
            any::<usize>().prop_map(Op::Free)
        ]
    }

    proptest! {
        /// The trees against a bitmap: same free count, allocations land on free blocks, best fit holds,
        /// and freed blocks become free again.
        #[test]
        fn matches_bitmap(ops in proptest::collection::vec(op(), 1..200), used0 in proptest::collection::vec((0u64..300, 1u64..20), 0..10)) {
            const N: u64 = 300;
            // Start from a random set of non-overlapping used extents.
            let mut bitmap = vec![false; N as usize];
            let mut used: Vec<(u64, u64)> = vec![];
            for (o, l) in used0 {
                let l = l.min(N - o);
                if (o..o + l).all(|i| !bitmap[i as usize]) {
                    (o..o + l).for_each(|i| bitmap[i as usize] = true);
                    used.push((o, l));
                }
            }
            let mut s = FreeSpace::with_used(0, N, &mut used.clone()).expect("with_used");
            for o in ops {
                match o {
                    Op::Alloc(len) => {
                        // The model's best fit: smallest maximal free run >= len, lowest offset.
                        let mut runs = vec![];
                        let mut i = 0;
                        while i < N as usize {
                            if bitmap[i] { i += 1; continue; }
                            let st = i;
                            while i < N as usize && !bitmap[i] { i += 1; }
                            runs.push((st as u64, (i - st) as u64));
                        }
                        let want = runs.iter().filter(|r| r.1 >= len).min_by_key(|r| (r.1, r.0)).map(|r| r.0);
                        let got = s.alloc(len);
                        prop_assert_eq!(got, want);
                        if let Some(off) = got {
                            (off..off + len).for_each(|i| bitmap[i as usize] = true);
                            used.push((off, len));
                        }
                    }
                    Op::AllocAt(off, len) => {
                        let want = off + len <= N && (off..off + len).all(|i| !bitmap[i as usize]);
                        prop_assert_eq!(s.alloc_at(off, len), want);
                        if want {
                            (off..off + len).for_each(|i| bitmap[i as usize] = true);
                            used.push((off, len));
                        }
                    }
                    Op::Free(i) => {
                        if used.is_empty() { continue; }
                        let (off, len) = used.swap_remove(i % used.len());
                        s.free(off, len).expect("free");
                        (off..off + len).for_each(|i| bitmap[i as usize] = false);
                        // Freeing again must be refused.
                        prop_assert!(s.free(off, len).is_err());
                    }
                }
                prop_assert!(s.invariants().is_ok());
                prop_assert_eq!(s.free_blocks(), bitmap.iter().filter(|b| !**b).count() as u64);
                for (o, l) in s.iter() {
                    prop_assert!((o..o + l).all(|i| !bitmap[i as usize]));
                }
            }
        }
    }
}
