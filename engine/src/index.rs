//! The in-memory index of one shard: key → where the newest record is, its length, timestamp and version.
//! Ordered (a B-tree) so range scans can stream keys in order; point lookups are O(log n).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Keys up to this long are stored inside the tree node, so a lookup compares keys without chasing a
/// pointer per comparison (the cache misses dominate point operations on large trees).
const INLINE: usize = 22;

/// A key as the index stores it: inline when short, on the heap otherwise.
#[derive(Clone)]
enum IKey {
    Inline(u8, [u8; INLINE]),
    Heap(Box<[u8]>),
}

impl IKey {
    fn new(k: &[u8]) -> Self {
        if k.len() <= INLINE {
            let mut b = [0u8; INLINE];
            b[..k.len()].copy_from_slice(k);
            IKey::Inline(k.len() as u8, b)
        } else {
            IKey::Heap(k.into())
        }
    }
    fn as_slice(&self) -> &[u8] {
        match self {
            IKey::Inline(n, b) => &b[..*n as usize],
            IKey::Heap(b) => b,
        }
    }
}

impl Borrow<[u8]> for IKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}
impl PartialEq for IKey {
    fn eq(&self, o: &Self) -> bool {
        self.as_slice() == o.as_slice()
    }
}
impl Eq for IKey {}
impl PartialOrd for IKey {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for IKey {
    // Must order exactly as the byte slices do, since lookups borrow as `[u8]`.
    fn cmp(&self, o: &Self) -> Ordering {
        self.as_slice().cmp(o.as_slice())
    }
}

impl std::fmt::Debug for IKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_slice())
    }
}

/// Set in [`Entry::loc`] when the record is still in the active write buffer (low bits: buffer offset).
pub const LOC_BUFFERED: u64 = 1 << 63;

/// Where a key's newest record is, and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Byte offset of the record in the shard slice, or `LOC_BUFFERED | offset in the active buffer`.
    pub loc: u64,
    /// Value length.
    pub val_len: u32,
    /// Write timestamp.
    pub ts: u64,
    /// Version (shard-wide counter at the time of the write; never reused).
    pub version: u64,
}

impl Entry {
    /// True while the record sits in the active write buffer.
    pub fn is_buffered(&self) -> bool {
        self.loc & LOC_BUFFERED != 0
    }
    /// The buffer offset (meaningful when buffered).
    pub fn buf_off(&self) -> usize {
        (self.loc & !LOC_BUFFERED) as usize
    }
}

/// The key → entry map of one shard.
#[derive(Debug, Default, Clone)]
pub struct Index {
    map: BTreeMap<IKey, Entry>,
    key_bytes: usize,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }
    /// Looks a key up.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }
    /// Mutable lookup.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        self.map.get_mut(key)
    }
    /// Inserts or replaces; returns the previous entry.
    pub fn insert(&mut self, key: &[u8], e: Entry) -> Option<Entry> {
        if let Some(old) = self.map.get_mut(key) {
            return Some(std::mem::replace(old, e));
        }
        self.key_bytes += key.len();
        self.map.insert(IKey::new(key), e);
        None
    }
    /// Removes a key; returns its entry.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let old = self.map.remove(key);
        if old.is_some() {
            self.key_bytes -= key.len();
        }
        old
    }
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Total bytes of keys.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }
    /// Keys in `[start, end)` (end None = unbounded), in order.
    pub fn range<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a Entry)> + 'a {
        let hi = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        self.map
            .range::<[u8], _>((Bound::Included(start), hi))
            .map(|(k, v)| (k.as_slice(), v))
    }
    /// All entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> + '_ {
        self.map.iter().map(|(k, v)| (k.as_slice(), v))
    }
    /// All entries, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&[u8], &mut Entry)> + '_ {
        self.map.iter_mut().map(|(k, v)| (k.as_slice(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_range() {
        let mut ix = Index::new();
        let e = Entry {
            loc: 1,
            val_len: 1,
            ts: 1,
            version: 1,
        };
        for k in [b"b".as_ref(), b"a", b"d", b"c"] {
            ix.insert(k, e);
        }
        let keys: Vec<_> = ix
            .range(b"b", Some(b"d"))
            .map(|(k, _)| k.to_vec())
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(ix.remove(b"a"), Some(e));
        assert_eq!((ix.len(), ix.key_bytes()), (3, 3));
        // Inline and heap keys order as their bytes do.
        let long = vec![b'b'; 40];
        ix.insert(&long, e);
        ix.insert(b"bz", e);
        let keys: Vec<_> = ix.iter().map(|(k, _)| k.to_vec()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(ix.get(&long).is_some());
    }
}
