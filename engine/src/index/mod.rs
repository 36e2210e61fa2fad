//! The in-memory index of one shard: key → where the newest record is, its length, timestamp and version.
//!
//! Point operations go through a hash table (`table`) of 4-byte references to nodes in an arena
//! (`arena`) holding the packed entry next to the key, so a lookup reads one control byte line and one
//! node, and a new key touches only warm memory. Key order for scans is kept apart (`ordered`): sorted
//! runs of references, built off the put path. [`Index::find`] returns a handle that
//! [`Index::set_found`] and [`Index::remove_found`] use, so a write looks its key up once.

mod arena;
mod ordered;
mod prefetch;
mod table;

use std::hash::BuildHasher;

use arena::Arena;
use ordered::Ordered;
use table::{Probe, Table};

/// Where a key's newest record is, and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Byte offset of the record in the shard slice. A record still in the active write buffer has the
    /// offset it will be written at: the buffer is the image of the segment at the log head, so sealing
    /// it changes no entry (see `Shard::buffered_off`).
    pub loc: u64,
    /// Value length (at most 2^21 - 1: the engine's limit is 1 MiB).
    pub val_len: u32,
    /// Write timestamp.
    pub ts: u64,
    /// Version (shard-wide counter at the time of the write; never reused).
    pub version: u64,
}

/// The index holds as many node bytes as 32-bit references reach (16 GiB: about 350 million 16-byte keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("index full")]
pub struct IndexFull;

/// A key's place in the index, from [`Index::find`]; valid until the index changes otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    hash: u64,
    probe: Probe,
    /// The table's change count at the probe (a vacant slot is only reused while it matches).
    changes: u64,
}

impl Found {
    /// True when the key is present.
    pub fn is_present(&self) -> bool {
        matches!(self.probe, Probe::Found(_))
    }
}

/// The key → entry map of one shard.
#[derive(Clone)]
pub struct Index {
    table: Table,
    arena: Arena,
    ordered: Ordered,
    seed: u64,
    changes: u64,
    key_bytes: usize,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            table: Table::default(),
            arena: Arena::default(),
            ordered: Ordered::default(),
            seed: std::collections::hash_map::RandomState::new().hash_one(0x6e76_6b76_u64),
            changes: 0,
            key_bytes: 0,
        }
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("keys", &self.len()).finish()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks a key up, for a later [`Index::set_found`] or [`Index::remove_found`].
    pub fn find(&self, key: &[u8]) -> Found {
        let hash = table::hash(self.seed, key);
        let arena = &self.arena;
        Found {
            hash,
            probe: self.table.probe(hash, |r| arena.key(r) == key),
            changes: self.changes,
        }
    }

    /// The entry of a found key.
    pub fn found_entry(&self, f: &Found) -> Option<Entry> {
        match f.probe {
            Probe::Found(i) => Some(self.arena.entry(self.table.get(i))),
            Probe::Vacant(_) => None,
        }
    }

    /// Stores `e` for the key of `f` (which must be `key`'s, from this index); returns the previous entry.
    pub fn set_found(
        &mut self,
        f: &Found,
        key: &[u8],
        e: Entry,
    ) -> Result<Option<Entry>, IndexFull> {
        let probe = if f.changes == self.changes {
            f.probe
        } else {
            self.find(key).probe
        };
        match probe {
            Probe::Found(i) => {
                let r = self.table.get(i);
                debug_assert_eq!(self.arena.key(r), key);
                let old = self.arena.entry(r);
                self.arena.set_entry(r, &e);
                Ok(Some(old))
            }
            Probe::Vacant(mut i) => {
                let r = self.arena.alloc(key, &e).ok_or(IndexFull)?;
                // Growth moves a bounded number of entries per insert (the new node is not among
                // them: it is not in the table yet).
                let (arena, seed) = (&self.arena, self.seed);
                if self
                    .table
                    .make_room(|x| arena.prefetch(x), |x| table::hash(seed, arena.key(x)))
                {
                    // The key is absent from both parts, so this finds its vacant slot anew.
                    i = match self.table.probe(f.hash, |_| false) {
                        Probe::Vacant(i) | Probe::Found(i) => i,
                    };
                }
                self.table.fill(i, f.hash, r);
                self.changes += 1;
                self.key_bytes += key.len();
                self.ordered.add(&mut self.arena, r);
                Ok(None)
            }
        }
    }

    /// Removes the key of `f` (which must be `key`'s); returns its entry.
    pub fn remove_found(&mut self, f: &Found, key: &[u8]) -> Option<Entry> {
        let probe = if f.changes == self.changes {
            f.probe
        } else {
            self.find(key).probe
        };
        let Probe::Found(i) = probe else {
            return None;
        };
        let r = self.table.get(i);
        debug_assert_eq!(self.arena.key(r), key);
        let old = self.arena.entry(r);
        self.table.clear(i);
        self.changes += 1;
        self.key_bytes -= key.len();
        // The ordered runs still reference the node: it is freed when a merge drops it.
        self.arena.set_zombie(r);
        self.ordered.note_zombie(&mut self.arena, self.table.len());
        Some(old)
    }

    /// Re-probes `f` when the table changed since it was made.
    pub fn refresh(&self, f: &mut Found, key: &[u8]) {
        if f.changes != self.changes {
            *f = self.find(key);
        }
    }

    /// Whether a new node for `key` can be stored.
    pub fn has_room(&self, key: &[u8]) -> bool {
        self.arena.has_room(key.len())
    }

    /// Looks a key up.
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        self.found_entry(&self.find(key))
    }

    /// Changes a key's entry in place; returns what `f` returned, None when the key is absent.
    pub fn update<R>(&mut self, key: &[u8], f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let Probe::Found(i) = self.find(key).probe else {
            return None;
        };
        let r = self.table.get(i);
        let mut e = self.arena.entry(r);
        let out = f(&mut e);
        self.arena.set_entry(r, &e);
        Some(out)
    }

    /// Inserts or replaces; returns the previous entry.
    pub fn insert(&mut self, key: &[u8], e: Entry) -> Result<Option<Entry>, IndexFull> {
        let f = self.find(key);
        self.set_found(&f, key, e)
    }

    /// Removes a key; returns its entry.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let f = self.find(key);
        self.remove_found(&f, key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }
    /// Total bytes of keys.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Keys in `[start, end)` (end None = unbounded), in order. Takes `&mut` to sort recently added keys
    /// into the ordered runs first.
    pub fn range<'a>(
        &'a mut self,
        start: &[u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], Entry)> + 'a {
        if self.ordered.has_staged() {
            self.ordered.flush(&mut self.arena);
        }
        #[cfg(debug_assertions)]
        self.ordered.check(&self.arena);
        let arena = &self.arena;
        self.ordered
            .range(arena, start, end)
            .map(move |r| (arena.key(r), arena.entry(r)))
    }

    /// All entries in key order.
    pub fn iter(&mut self) -> impl Iterator<Item = (&[u8], Entry)> + '_ {
        self.range(&[], None)
    }

    /// All entries in storage order (a sequential walk of the nodes: checkpoints, recovery checks).
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&[u8], Entry)> + '_ {
        self.arena
            .live()
            .map(|r| (self.arena.key(r), self.arena.entry(r)))
    }

    /// Heap bytes the index holds (exact: the sizes of its allocations).
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes() + self.arena.heap_bytes() + self.ordered.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ent(i: u64) -> Entry {
        Entry {
            loc: i * 3,
            val_len: (i % 1000) as u32,
            ts: i,
            version: i + 1,
        }
    }

    #[test]
    fn ordered_range() {
        let mut ix = Index::new();
        let e = ent(1);
        for k in [b"b".as_ref(), b"a", b"d", b"c"] {
            assert_eq!(ix.insert(k, e), Ok(None));
        }
        let keys: Vec<_> = ix
            .range(b"b", Some(b"d"))
            .map(|(k, _)| k.to_vec())
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(ix.remove(b"a"), Some(e));
        assert_eq!((ix.len(), ix.key_bytes()), (3, 3));
        // Long keys, keys sharing 8-byte prefixes and zero bytes order as their bytes do.
        let long = vec![b'b'; 1024];
        ix.insert(&long, e).expect("room");
        ix.insert(b"bz", e).expect("room");
        ix.insert(b"b\0", e).expect("room");
        ix.insert(b"bbbbbbbbb", e).expect("room");
        let keys: Vec<_> = ix.iter().map(|(k, _)| k.to_vec()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 7);
        assert!(ix.get(&long).is_some());
    }

    /// Many keys: tables grow and merges run in steps while keys come and go and scans read runs
    /// that are being merged. Checked against a model all along; the number of runs stays small.
    #[test]
    fn background_growth_and_merges_lose_nothing() {
        let mut ix = Index::new();
        let mut m: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut most_runs = 0;
        for i in 0..200_000u64 {
            let k = format!("k{:012}", next() % 400_000).into_bytes();
            match i % 5 {
                0..=2 => {
                    assert_eq!(ix.insert(&k, ent(i)), Ok(m.insert(k, ent(i))));
                }
                3 => {
                    assert_eq!(ix.remove(&k), m.remove(&k));
                }
                _ => {
                    if i % 1000 == 4 {
                        let end = format!("k{:012}", next() % 400_000).into_bytes();
                        let got: Vec<(Vec<u8>, Entry)> = ix
                            .range(&k, Some(&end))
                            .take(50)
                            .map(|(k, e)| (k.to_vec(), e))
                            .collect();
                        let want: Vec<(Vec<u8>, Entry)> = if k <= end {
                            m.range(k.clone()..end)
                                .take(50)
                                .map(|(k, e)| (k.clone(), *e))
                                .collect()
                        } else {
                            vec![]
                        };
                        assert_eq!(got, want, "scan at op {i}");
                    }
                    assert_eq!(ix.get(&k), m.get(&k).copied());
                }
            }
            most_runs = most_runs.max(ix.ordered.runs());
        }
        assert_eq!(ix.len(), m.len());
        let all: Vec<(Vec<u8>, Entry)> = ix.iter().map(|(k, e)| (k.to_vec(), e)).collect();
        let want: Vec<(Vec<u8>, Entry)> = m.iter().map(|(k, e)| (k.clone(), *e)).collect();
        assert_eq!(all, want);
        assert!(
            most_runs < 24,
            "{most_runs} runs at once: merges fell behind"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u16, u64),
        Del(u16),
        Scan(u16, u16),
    }

    fn key_of(k: u16) -> Vec<u8> {
        // Varied lengths and shared prefixes: exercise the prefix ties and several node sizes.
        let mut v = b"user".to_vec();
        v.extend_from_slice(format!("{:05}", k % 4000).as_bytes());
        v.truncate(4 + (k as usize % 6));
        if k % 3 == 0 {
            v.extend_from_slice(&[k as u8; 9]);
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn model(ops in proptest::collection::vec(
            prop_oneof![
                6 => (any::<u16>(), any::<u64>()).prop_map(|(k, v)| Op::Put(k, v)),
                3 => any::<u16>().prop_map(Op::Del),
                1 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Op::Scan(a, b)),
            ], 1..6000)) {
            let mut ix = Index::new();
            let mut m: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        let k = key_of(k);
                        prop_assert_eq!(ix.insert(&k, ent(v >> 20)), Ok(m.insert(k, ent(v >> 20))));
                    }
                    Op::Del(k) => {
                        let k = key_of(k);
                        prop_assert_eq!(ix.remove(&k), m.remove(&k));
                    }
                    Op::Scan(a, b) => {
                        let (a, b) = (key_of(a), key_of(b));
                        let got: Vec<(Vec<u8>, Entry)> =
                            ix.range(&a, Some(&b)).map(|(k, e)| (k.to_vec(), e)).collect();
                        let want: Vec<(Vec<u8>, Entry)> = if a <= b {
                            m.range(a..b).map(|(k, e)| (k.clone(), *e)).collect()
                        } else {
                            vec![]
                        };
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(ix.len(), m.len());
            }
            let all: Vec<(Vec<u8>, Entry)> = ix.iter().map(|(k, e)| (k.to_vec(), e)).collect();
            let want: Vec<(Vec<u8>, Entry)> = m.iter().map(|(k, e)| (k.clone(), *e)).collect();
            prop_assert_eq!(all, want);
            let mut un: Vec<(Vec<u8>, Entry)> =
                ix.iter_unordered().map(|(k, e)| (k.to_vec(), e)).collect();
            un.sort_by(|a, b| a.0.cmp(&b.0));
            let want: Vec<(Vec<u8>, Entry)> = m.iter().map(|(k, e)| (k.clone(), *e)).collect();
            prop_assert_eq!(un, want);
            for (k, e) in &m {
                prop_assert_eq!(ix.get(k), Some(*e));
            }
            prop_assert_eq!(ix.key_bytes(), m.keys().map(Vec::len).sum::<usize>());
        }
    }
}
