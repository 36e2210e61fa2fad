//! The hash table of the index: key → node reference, for point operations in one probe sequence.
//! Open addressing with linear probing over a byte of control per slot (empty, deleted, or 7 bits of the
//! key's hash), so probing past other keys rarely touches their nodes: inserting a new key usually reads
//! no node at all. 5 bytes per slot; capacities need not be powers of two (the hash is mapped onto the
//! range by multiplication), so growth can keep the load between 5/8 and 7/8.

const EMPTY: u8 = 0x80;
const DELETED: u8 = 0xfe;

/// Where a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The key is in slot `.0`.
    Found(usize),
    /// Absent; a new entry would go into slot `.0`.
    Vacant(usize),
}

/// The table (references only: the caller compares keys).
#[derive(Clone)]
pub struct Table {
    ctrl: Vec<u8>,
    refs: Vec<u32>,
    len: usize,
    deleted: usize,
}

impl Default for Table {
    fn default() -> Self {
        Table::with_slots(16)
    }
}

fn tag(hash: u64) -> u8 {
    (hash & 0x7f) as u8
}

impl Table {
    fn with_slots(n: usize) -> Self {
        Table {
            ctrl: vec![EMPTY; n],
            // Not zero: a zeroed allocation maps its pages lazily, and each first write would fault.
            refs: vec![u32::MAX; n],
            len: 0,
            deleted: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.ctrl.len() as u128) >> 64) as usize
    }

    /// Looks for the entry whose reference satisfies `is_key` among those with the hash's tag.
    pub fn probe(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Probe {
        let t = tag(hash);
        let n = self.ctrl.len();
        let mut i = self.home(hash);
        let mut vacant = None;
        loop {
            let c = self.ctrl[i];
            if c == t && is_key(self.refs[i]) {
                return Probe::Found(i);
            }
            if c == EMPTY {
                return Probe::Vacant(vacant.unwrap_or(i));
            }
            if c == DELETED && vacant.is_none() {
                vacant = Some(i);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// The reference in slot `i`.
    pub fn get(&self, i: usize) -> u32 {
        self.refs[i]
    }

    /// True when one more entry needs [`Table::grow`] first.
    pub fn full(&self) -> bool {
        (self.len + self.deleted + 1) * 8 > self.ctrl.len() * 7
    }

    /// Fills the vacant slot `i` (from a probe made since the last change of the table).
    pub fn fill(&mut self, i: usize, hash: u64, r: u32) {
        debug_assert!(self.ctrl[i] == EMPTY || self.ctrl[i] == DELETED);
        if self.ctrl[i] == DELETED {
            self.deleted -= 1;
        }
        self.ctrl[i] = tag(hash);
        self.refs[i] = r;
        self.len += 1;
    }

    /// Empties slot `i`.
    pub fn clear(&mut self, i: usize) {
        debug_assert!(self.ctrl[i] & 0x80 == 0);
        // A slot followed by an empty one ends no probe sequence that continues past it.
        let next = if i + 1 == self.ctrl.len() { 0 } else { i + 1 };
        if self.ctrl[next] == EMPTY {
            self.ctrl[i] = EMPTY;
        } else {
            self.ctrl[i] = DELETED;
            self.deleted += 1;
        }
        self.len -= 1;
    }

    /// Rebuilds the table for at least one more entry (8/5 of the entries: load 5/8 afterwards) from
    /// `entries`, every (reference, hash) it holds: the caller walks its nodes in storage order, which
    /// reads them sequentially rather than in the table's random order.
    pub fn grow(&mut self, entries: impl Iterator<Item = (u32, u64)>) {
        let want = ((self.len + 1) * 8 / 5).max(16);
        let mut t = Table::with_slots(want);
        for (r, h) in entries {
            match t.probe(h, |_| false) {
                Probe::Vacant(j) => t.fill(j, h, r),
                Probe::Found(_) => unreachable!("probe with a false predicate finds nothing"),
            }
        }
        debug_assert_eq!(t.len, self.len);
        *self = t;
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.ctrl.capacity() + self.refs.capacity() * 4
    }
}

/// The index's key hash: folded 64×64→128-bit multiplications over 8-byte words, seeded per index so
/// that clients cannot pick colliding keys.
pub fn hash(seed: u64, k: &[u8]) -> u64 {
    const K1: u64 = 0xa076_1d64_78bd_642f;
    const K2: u64 = 0xe703_7ed1_a0b4_28db;
    fn mix(a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    }
    let mut h = seed ^ (k.len() as u64).wrapping_mul(K2);
    let mut words = k.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = mix(h ^ u64::from_le_bytes(b), K1);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = mix(h ^ u64::from_le_bytes(b), K1);
    }
    mix(h ^ K2, K1 ^ seed)
}
