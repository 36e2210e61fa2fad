//! The hash table of the index: key → node reference, for point operations in one probe sequence.
//! Open addressing with linear probing over a byte of control per slot (empty, deleted, or 7 bits of the
//! key's hash), so probing past other keys rarely touches their nodes: inserting a new key usually reads
//! no node at all. 5 bytes per slot; capacities need not be powers of two (the hash is mapped onto the
//! range by multiplication), so growth can keep the load between 5/8 and 7/8. Growth is incremental:
//! a bigger part is allocated and the old one's entries move into it a bounded number per insert.

// Zero is empty, so a new table's memory comes zeroed from the allocator and its pages are mapped only
// as inserts first touch them: growing costs no up-front pass over the new table.
use crate::zeroed::Zeroed;

const EMPTY: u8 = 0x00;
const DELETED: u8 = 0x01;
/// Set in every tag (the other 7 bits are hash bits), so a tag is never EMPTY or DELETED.
const TAG: u8 = 0x80;

/// Old slots moved to the new table per migration step: a step runs on one insert in
/// [`MIGRATE_EVERY`] and moves at most this many, so no insert waits for a whole rebuild. At this
/// rate the migration ends well before the new table fills (see [`Table::make_room`]).
const MIGRATE_SLOTS: usize = 2048;
/// Inserts per migration step (the others do no migration work, which keeps the typical put cheap).
const MIGRATE_EVERY: u32 = 128;

/// A slot of the table: in the current part or in the old one still being migrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    old: bool,
    i: usize,
}

/// Where a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The key is in this slot.
    Found(Slot),
    /// Absent; a new entry would go into this slot (always in the current part).
    Vacant(Slot),
}

/// One open-addressing array of slots.
#[derive(Clone)]
struct Part {
    ctrl: Zeroed<u8>,
    refs: Zeroed<u32>,
    len: usize,
    deleted: usize,
}

/// The table (references only: the caller compares keys). While it grows it has two parts: inserts go
/// to the new, larger one, and each migration step moves a bounded number of the old part's slots into
/// it; lookups look in both until the old one is empty.
#[derive(Clone)]
pub struct Table {
    cur: Part,
    old: Option<Part>,
    /// The old part's slots before this one have been moved.
    cursor: usize,
    /// Inserts since the last migration step.
    tick: u32,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            cur: Part::with_slots(16),
            old: None,
            cursor: 0,
            tick: 0,
        }
    }
}

fn tag(hash: u64) -> u8 {
    TAG | (hash & 0x7f) as u8
}

impl Part {
    fn with_slots(n: usize) -> Self {
        Part {
            // EMPTY is zero.
            ctrl: Zeroed::new(n),
            refs: Zeroed::new(n),
            len: 0,
            deleted: 0,
        }
    }

    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.ctrl.len() as u128) >> 64) as usize
    }

    /// The slot holding the entry whose reference satisfies `is_key`, else the slot a new entry goes to.
    fn probe(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Result<usize, usize> {
        let t = tag(hash);
        let n = self.ctrl.len();
        let mut i = self.home(hash);
        let mut vacant = None;
        loop {
            let c = self.ctrl[i];
            if c == t && is_key(self.refs[i]) {
                return Ok(i);
            }
            if c == EMPTY {
                return Err(vacant.unwrap_or(i));
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

    /// True when one more entry would pass a load of 7/8 (deleted slots count: they lengthen probes).
    fn full(&self) -> bool {
        (self.len + self.deleted + 1) * 8 > self.ctrl.len() * 7
    }

    fn fill(&mut self, i: usize, hash: u64, r: u32) {
        debug_assert!(self.ctrl[i] == EMPTY || self.ctrl[i] == DELETED);
        if self.ctrl[i] == DELETED {
            self.deleted -= 1;
        }
        self.ctrl[i] = tag(hash);
        self.refs[i] = r;
        self.len += 1;
    }

    fn clear(&mut self, i: usize) {
        debug_assert!(self.ctrl[i] & TAG != 0);
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

    fn heap_bytes(&self) -> usize {
        self.ctrl.heap_bytes() + self.refs.heap_bytes()
    }
}

impl Table {
    fn part(&self, s: Slot) -> &Part {
        match (&self.old, s.old) {
            (Some(o), true) => o,
            _ => &self.cur,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.cur.len + self.old.as_ref().map_or(0, |o| o.len)
    }

    /// Looks for the entry whose reference satisfies `is_key` among those with the hash's tag.
    pub fn probe(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Probe {
        match self.cur.probe(hash, &mut is_key) {
            Ok(i) => Probe::Found(Slot { old: false, i }),
            Err(v) => {
                let vacant = Probe::Vacant(Slot { old: false, i: v });
                match &self.old {
                    Some(o) => match o.probe(hash, is_key) {
                        Ok(i) => Probe::Found(Slot { old: true, i }),
                        Err(_) => vacant,
                    },
                    None => vacant,
                }
            }
        }
    }

    /// The reference in slot `s`.
    pub fn get(&self, s: Slot) -> u32 {
        self.part(s).refs[s.i]
    }

    /// Fills the vacant slot `s` (from a probe made since the last change of the table).
    pub fn fill(&mut self, s: Slot, hash: u64, r: u32) {
        debug_assert!(!s.old, "new entries go to the current part");
        self.cur.fill(s.i, hash, r);
    }

    /// Empties slot `s`.
    pub fn clear(&mut self, s: Slot) {
        match (&mut self.old, s.old) {
            (Some(o), true) => o.clear(s.i),
            _ => self.cur.clear(s.i),
        }
    }

    /// Before an insert: starts growing when the current part is full (a new part for 8/5 of the
    /// entries, load 5/8, allocated zeroed and so not touched up front), and moves part of the old
    /// part's slots on one insert in [`MIGRATE_EVERY`]. `rehash` gives a reference's hash (the caller
    /// reads its node). Returns whether slots moved: probes made before are then stale.
    ///
    /// Why the old part is empty before the new one fills: the old part held at most 7/8 of its
    /// slots, about n entries in 8n/7 slots; the new one has 8n/5 slots and fills at 7/8 of them,
    /// 7n/5 entries, so it takes 2n/5 inserts beyond the n it inherits. One step per 128 inserts of
    /// 2048 slots moves the 8n/7 old slots within 8n/7 * 128/2048 = n/14 inserts.
    pub fn make_room(
        &mut self,
        prefetch: impl Fn(u32),
        mut rehash: impl FnMut(u32) -> u64,
    ) -> bool {
        let mut moved = false;
        if self.old.is_none() && self.cur.full() {
            let want = ((self.cur.len + 1) * 8 / 5).max(16);
            let old = std::mem::replace(&mut self.cur, Part::with_slots(want));
            self.old = Some(old);
            self.cursor = 0;
            self.tick = MIGRATE_EVERY; // the first step now: the old part may be nearly all there is
            moved = true;
        }
        if self.old.is_some() {
            self.tick += 1;
            if self.tick >= MIGRATE_EVERY || self.cur.full() {
                self.tick = 0;
                // A current part that filled first (not expected, see above) takes the rest at once.
                let slots = if self.cur.full() {
                    usize::MAX
                } else {
                    MIGRATE_SLOTS
                };
                self.migrate(slots, &prefetch, &mut rehash);
                moved = true;
            }
        }
        // Still full: the whole old part moved and the entries still pass 7/8 (not expected either);
        // grow again rather than probe a table with no empty slot.
        if self.cur.full() {
            assert!(self.old.is_none(), "the old part was emptied above");
            return self.make_room(prefetch, rehash) || moved;
        }
        moved
    }

    /// Moves up to `slots` of the old part's slots into the current part.
    fn migrate(
        &mut self,
        slots: usize,
        prefetch: &impl Fn(u32),
        rehash: &mut impl FnMut(u32) -> u64,
    ) {
        // Nodes are read (for their hash) this many slots ahead of their move, so the reads overlap.
        const AHEAD: usize = 16;
        let Some(old) = self.old.as_mut() else { return };
        let end = self.cursor.saturating_add(slots).min(old.ctrl.len());
        for i in self.cursor..end.min(self.cursor + AHEAD) {
            if old.ctrl[i] & TAG != 0 {
                prefetch(old.refs[i]);
            }
        }
        for i in self.cursor..end {
            if let Some(j) = Some(i + AHEAD).filter(|&j| j < end && old.ctrl[j] & TAG != 0) {
                prefetch(old.refs[j]);
            }
            if old.ctrl[i] & TAG != 0 {
                let r = old.refs[i];
                let h = rehash(r);
                match self.cur.probe(h, |_| false) {
                    Err(v) => self.cur.fill(v, h, r),
                    Ok(_) => unreachable!("a probe with a false predicate finds nothing"),
                }
                // A tombstone, not empty: probe sequences of entries not moved yet may pass here.
                old.ctrl[i] = DELETED;
                old.len -= 1;
            }
        }
        self.cursor = end;
        if end == old.ctrl.len() {
            assert_eq!(old.len, 0, "every entry of the old part was moved");
            self.old = None;
        }
    }

    /// Whether the table is growing (two parts).
    #[cfg(test)]
    fn migrating(&self) -> bool {
        self.old.is_some()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.cur.heap_bytes() + self.old.as_ref().map_or(0, Part::heap_bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn h(r: u32) -> u64 {
        hash(7, &r.to_le_bytes())
    }

    fn insert(t: &mut Table, r: u32) -> usize {
        let p = t.probe(h(r), |x| x == r);
        let Probe::Vacant(mut s) = p else {
            panic!("{r} present before its insert")
        };
        let mut rehashed = 0;
        if t.make_room(
            |_| {},
            |x| {
                rehashed += 1;
                h(x)
            },
        ) {
            s = match t.probe(h(r), |_| false) {
                Probe::Vacant(s) | Probe::Found(s) => s,
            };
        }
        t.fill(s, h(r), r);
        rehashed
    }

    /// Through many growths with removals in between: every present entry is found (in whichever
    /// part), removed ones are not, and no insert moves more than one step's worth of entries.
    #[test]
    fn grows_a_bounded_step_at_a_time_and_loses_nothing() {
        let mut t = Table::default();
        let mut live = HashSet::new();
        let (mut growths, mut was) = (0, false);
        let mut most = 0;
        let mut removed = None;
        for r in 0..300_000u32 {
            most = most.max(insert(&mut t, r));
            live.insert(r);
            if r % 3 == 0 {
                let victim = r / 2;
                if live.remove(&victim) {
                    removed = Some(victim);
                    match t.probe(h(victim), |x| x == victim) {
                        Probe::Found(s) => t.clear(s),
                        Probe::Vacant(_) => panic!("{victim} lost"),
                    }
                }
            }
            if t.migrating() && !was {
                growths += 1;
            }
            was = t.migrating();
            if r % 9973 == 0 || (t.migrating() && r % 101 == 0) {
                for &x in live.iter().take(2000) {
                    assert!(
                        matches!(t.probe(h(x), |y| y == x), Probe::Found(s) if t.get(s) == x),
                        "{x} not found"
                    );
                }
                if let Some(gone) = removed {
                    assert!(
                        matches!(t.probe(h(gone), |y| y == gone), Probe::Vacant(_)),
                        "{gone} found after its removal"
                    );
                }
            }
            assert_eq!(t.len(), live.len());
        }
        for &x in &live {
            assert!(
                matches!(t.probe(h(x), |y| y == x), Probe::Found(_)),
                "{x} not found"
            );
        }
        assert!(growths >= 10, "{growths} growths");
        assert!(most <= MIGRATE_SLOTS, "an insert moved {most} entries");
    }
}
