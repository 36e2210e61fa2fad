//! Node storage of the index: each key's node (packed entry + key bytes) lives at a stable 32-bit
//! reference in fixed-size byte chunks, so the hash table and the ordered runs hold 4 bytes per key and a
//! point operation touches one node. Freed nodes go to per-size free lists for reuse.
//!
//! Node layout (little-endian, 4-byte aligned): `lens` u32 (key length in bits 0..11, value length in
//! bits 11..32), `loc` u64, `ts` u64, `version` u64, then the key. A removed key whose node the ordered
//! runs still reference is a *zombie* (`loc == ZOMBIE`); a node on a free list has `loc == FREE`.

use super::Entry;

/// Node header bytes.
pub const HDR: usize = 28;
/// Longest key a node holds (11 bits).
pub const MAX_KEY: usize = (1 << 11) - 1;
/// Longest value length a node holds (21 bits).
pub const MAX_VAL: u32 = (1 << 21) - 1;
/// `loc` of a removed key's node still referenced by the ordered runs.
pub const ZOMBIE: u64 = u64::MAX;
/// `loc` of a node on a free list (its `ts` field holds the next free node).
const FREE: u64 = u64::MAX - 1;

/// Chunk size: refs are `chunk << 16 | (offset / 4)`, so 2^16 chunks of 256 KiB (16 GiB of nodes).
const CHUNK_SHIFT: u32 = 16;
const CHUNK_BYTES: usize = 4 << CHUNK_SHIFT;
/// No free list entry.
const NIL: u32 = u32::MAX;

/// Bytes of the node of a key of `klen` bytes.
pub fn node_len(klen: usize) -> usize {
    (HDR + klen).next_multiple_of(4)
}

/// The node arena.
#[derive(Clone, Default)]
pub struct Arena {
    chunks: Vec<Box<[u8]>>,
    /// Bytes used at the end of the last chunk.
    tail: usize,
    /// Free-list heads by node length / 4.
    free: Vec<u32>,
    /// Bytes in live or zombie nodes.
    pub used: usize,
}

fn rd64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}
fn rd32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

impl Arena {
    fn split(r: u32) -> (usize, usize) {
        ((r >> CHUNK_SHIFT) as usize, ((r & 0xffff) as usize) * 4)
    }

    /// The bytes of node `r` from its start to the end of its chunk.
    fn at(&self, r: u32) -> &[u8] {
        let (c, o) = Self::split(r);
        &self.chunks[c][o..]
    }
    fn at_mut(&mut self, r: u32) -> &mut [u8] {
        let (c, o) = Self::split(r);
        &mut self.chunks[c][o..]
    }

    /// Asks for node `r`'s line ahead of its use (merges and the table's growth know their next nodes
    /// long before they read them).
    pub fn prefetch(&self, r: u32) {
        if let Some(b) = self.at(r).first() {
            super::prefetch::line(b);
        }
    }

    /// The key of node `r`.
    pub fn key(&self, r: u32) -> &[u8] {
        let b = self.at(r);
        let kl = (rd32(b, 0) & 0x7ff) as usize;
        &b[HDR..HDR + kl]
    }

    /// The first 8 key bytes of node `r`, big-endian, zero-padded (orders as the keys do, ties aside).
    pub fn prefix(&self, r: u32) -> u64 {
        prefix_of(self.key(r))
    }

    /// The raw `loc` of node `r` (ZOMBIE for a removed key).
    pub fn loc(&self, r: u32) -> u64 {
        rd64(self.at(r), 4)
    }

    /// The entry of node `r`.
    pub fn entry(&self, r: u32) -> Entry {
        let b = self.at(r);
        Entry {
            loc: rd64(b, 4),
            val_len: rd32(b, 0) >> 11,
            ts: rd64(b, 12),
            version: rd64(b, 20),
        }
    }

    /// Overwrites the entry of node `r`.
    pub fn set_entry(&mut self, r: u32, e: &Entry) {
        assert!(e.val_len <= MAX_VAL, "value length beyond the index limit");
        let b = self.at_mut(r);
        let kl = rd32(b, 0) & 0x7ff;
        b[0..4].copy_from_slice(&(kl | e.val_len << 11).to_le_bytes());
        b[4..12].copy_from_slice(&e.loc.to_le_bytes());
        b[12..20].copy_from_slice(&e.ts.to_le_bytes());
        b[20..28].copy_from_slice(&e.version.to_le_bytes());
    }

    /// Marks node `r` as a removed key's (kept for the ordered runs until they drop it).
    pub fn set_zombie(&mut self, r: u32) {
        self.at_mut(r)[4..12].copy_from_slice(&ZOMBIE.to_le_bytes());
    }

    /// Stores a new node; None when the arena's reference space is exhausted.
    pub fn alloc(&mut self, key: &[u8], e: &Entry) -> Option<u32> {
        assert!(key.len() <= MAX_KEY, "key length beyond the index limit");
        let len = node_len(key.len());
        let class = len / 4;
        let r = match self.free.get(class).copied().filter(|&h| h != NIL) {
            Some(h) => {
                self.free[class] = rd32(self.at(h), 12);
                h
            }
            None => {
                if self.chunks.is_empty() || self.tail + len > CHUNK_BYTES {
                    if self.chunks.len() >= 1 << (32 - CHUNK_SHIFT) {
                        return None;
                    }
                    let mut c = vec![0u8; CHUNK_BYTES].into_boxed_slice();
                    // Touch every page now: one fault burst per chunk instead of a page fault in
                    // every ~90th insert.
                    for i in (0..CHUNK_BYTES).step_by(4096) {
                        c[i] = std::hint::black_box(0);
                    }
                    self.chunks.push(c);
                    self.tail = 0;
                }
                let r = (((self.chunks.len() - 1) as u32) << CHUNK_SHIFT) | (self.tail / 4) as u32;
                self.tail += len;
                r
            }
        };
        let b = self.at_mut(r);
        b[0..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
        b[HDR..HDR + key.len()].copy_from_slice(key);
        self.set_entry(r, e);
        self.used += len;
        Some(r)
    }

    /// Whether a node for a key of `klen` bytes can be stored.
    pub fn has_room(&self, klen: usize) -> bool {
        let len = node_len(klen);
        self.chunks.len() < 1 << (32 - CHUNK_SHIFT)
            || self.tail + len <= CHUNK_BYTES
            || self.free.get(len / 4).is_some_and(|&h| h != NIL)
    }

    /// Returns node `r` to its free list.
    pub fn free(&mut self, r: u32) {
        let len = node_len(self.key(r).len());
        let class = len / 4;
        if self.free.len() <= class {
            self.free.resize(class + 1, NIL);
        }
        let next = self.free[class];
        let b = self.at_mut(r);
        b[4..12].copy_from_slice(&FREE.to_le_bytes());
        b[12..16].copy_from_slice(&next.to_le_bytes());
        self.free[class] = r;
        self.used -= len;
    }

    /// Live nodes (neither zombie nor free), in storage order: a sequential walk, for checkpoints.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        let last = self.chunks.len();
        (0..last).flat_map(move |c| {
            let end = if c + 1 == last {
                self.tail
            } else {
                CHUNK_BYTES
            };
            let chunk = &self.chunks[c];
            let mut o = 0;
            std::iter::from_fn(move || {
                while o + HDR <= end {
                    let kl = (rd32(chunk, o) & 0x7ff) as usize;
                    if kl == 0 {
                        // The unused end of a chunk (no node has an empty key).
                        return None;
                    }
                    let at = o;
                    o += node_len(kl);
                    let loc = rd64(chunk, at + 4);
                    if loc != ZOMBIE && loc != FREE {
                        return Some(((c as u32) << CHUNK_SHIFT) | (at / 4) as u32);
                    }
                }
                None
            })
        })
    }

    /// Heap bytes held (chunks and free-list heads).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK_BYTES
            + self.chunks.capacity() * std::mem::size_of::<Box<[u8]>>()
            + self.free.capacity() * 4
    }
}

/// The first 8 bytes of `k`, big-endian, zero-padded.
pub fn prefix_of(k: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = k.len().min(8);
    w[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(w)
}
