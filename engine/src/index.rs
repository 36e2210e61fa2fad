//! The in-memory index of one shard: key → where the newest record is, its length, timestamp and version.
//! Ordered (a B-tree) so range scans can stream keys in order; point lookups are O(log n).

use std::collections::BTreeMap;
use std::ops::Bound;

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
    map: BTreeMap<Box<[u8]>, Entry>,
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
        self.map.insert(key.into(), e);
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
            .map(|(k, v)| (&**k, v))
    }
    /// All entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> + '_ {
        self.map.iter().map(|(k, v)| (&**k, v))
    }
    /// All entries, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&[u8], &mut Entry)> + '_ {
        self.map.iter_mut().map(|(k, v)| (&**k, v))
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
    }
}
