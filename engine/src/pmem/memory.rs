//! Persistent memory in ordinary memory, with a crash model: the region the tests and the fault
//! simulator give the durable log.
//!
//! An image holds two copies: what the program sees (`current`) and what a crash leaves (`persisted`).
//! A barrier copies the stores made since the previous one into `persisted`; [`MemPmemImage::crash`]
//! keeps a random part of the stores no barrier covered, 8 bytes at a time (stores to persistent memory
//! are atomic at that size and may reach it in any order), and throws the rest away.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{PersistentMemory, PmemError};
use crate::bdev::SplitMix64;

#[derive(Debug)]
struct Image {
    current: Vec<u8>,
    persisted: Vec<u8>,
    /// Byte ranges stored to since the last barrier.
    dirty: Vec<(usize, usize)>,
    /// Barriers fail (the device reports an error) while set.
    fail_barriers: bool,
    barriers: u64,
}

/// A persistent-memory device in memory, shared by the regions cut from it and by the test that
/// crashes it.
#[derive(Debug, Clone)]
pub struct MemPmemImage {
    inner: Arc<Mutex<Image>>,
}

impl MemPmemImage {
    /// A zeroed device of `len` bytes.
    pub fn new(len: usize) -> Self {
        MemPmemImage {
            inner: Arc::new(Mutex::new(Image {
                current: vec![0; len],
                persisted: vec![0; len],
                dirty: Vec::new(),
                fail_barriers: false,
                barriers: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Image> {
        // A test thread that panicked while holding the lock leaves consistent bytes behind (every
        // operation is a copy), so the poison is not worth propagating.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.lock().current.len()
    }

    /// Whether the device has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The region `[off, off + len)` as one shard's persistent memory.
    pub fn region(&self, off: usize, len: usize) -> MemPmem {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.len()),
            "region outside the image"
        );
        MemPmem {
            image: self.clone(),
            base: off,
            len,
        }
    }

    /// Simulates a power loss: stores a barrier covered stay, each 8-byte word of the others stays
    /// with probability one half (seeded), the rest is lost. What the program sees becomes what the
    /// device kept.
    pub fn crash(&self, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let mut g = self.lock();
        let img = &mut *g;
        for &(start, end) in &img.dirty {
            let mut w = start & !7;
            while w < end {
                let e = (w + 8).min(img.current.len());
                if rng.next_u64() & 1 == 1 {
                    let (cur, per) = (&img.current[w..e], &mut img.persisted[w..e]);
                    per.copy_from_slice(cur);
                }
                w += 8;
            }
        }
        img.dirty.clear();
        img.current.clone_from(&img.persisted);
    }

    /// An independent copy of the device in its current state (crash the copy, go on with this one).
    pub fn fork(&self) -> MemPmemImage {
        let g = self.lock();
        MemPmemImage {
            inner: Arc::new(Mutex::new(Image {
                current: g.current.clone(),
                persisted: g.persisted.clone(),
                dirty: g.dirty.clone(),
                fail_barriers: g.fail_barriers,
                barriers: g.barriers,
            })),
        }
    }

    /// Makes later barriers fail (true) or succeed again (false).
    pub fn fail_barriers(&self, on: bool) {
        self.lock().fail_barriers = on;
    }

    /// Barriers that succeeded so far.
    pub fn barriers(&self) -> u64 {
        self.lock().barriers
    }

    /// A copy of what a crash now would keep at the least (the persisted bytes).
    pub fn persisted(&self) -> Vec<u8> {
        self.lock().persisted.clone()
    }

    /// Overwrites persisted and current bytes alike (a test damaging the device).
    pub fn corrupt(&self, off: usize, f: impl FnOnce(&mut [u8])) {
        let mut g = self.lock();
        let img = &mut *g;
        let end = img.current.len();
        f(&mut img.persisted[off..end]);
        let (per, cur) = (&img.persisted[off..end], &mut img.current[off..end]);
        cur.copy_from_slice(per);
    }
}

/// One region of a [`MemPmemImage`].
#[derive(Debug)]
pub struct MemPmem {
    image: MemPmemImage,
    base: usize,
    len: usize,
}

impl PersistentMemory for MemPmem {
    fn len(&self) -> usize {
        self.len
    }

    fn write(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len, "store outside the region");
        let a = self.base + off;
        let mut g = self.image.lock();
        g.current[a..a + data.len()].copy_from_slice(data);
        match g.dirty.last_mut() {
            Some(last) if last.1 == a => last.1 = a + data.len(),
            _ => g.dirty.push((a, a + data.len())),
        }
    }

    fn read(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= self.len, "load outside the region");
        let a = self.base + off;
        out.copy_from_slice(&self.image.lock().current[a..a + out.len()]);
    }

    fn barrier(&mut self) -> Result<(), PmemError> {
        let mut g = self.image.lock();
        if g.fail_barriers {
            return Err(PmemError::Device("injected barrier failure".into()));
        }
        // Only this region's stores are covered (another shard's barrier covers its own).
        let (lo, hi) = (self.base, self.base + self.len);
        let img = &mut *g;
        img.dirty.retain(|&(s, e)| {
            if s >= lo && e <= hi {
                img.persisted[s..e].copy_from_slice(&img.current[s..e]);
                false
            } else {
                true
            }
        });
        img.barriers += 1;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_keeps_and_crash_tears() {
        let img = MemPmemImage::new(4096);
        let mut r = img.region(0, 4096);
        r.write(0, &[1; 64]);
        r.barrier().expect("barrier");
        r.write(64, &[2; 4000]);
        img.crash(7);
        let mut out = vec![0; 4096];
        r.read(0, &mut out);
        assert!(
            out[..64].iter().all(|&b| b == 1),
            "barriered stores survive"
        );
        let kept = out[64..4064]
            .chunks(8)
            .filter(|c| c.iter().all(|&b| b == 2))
            .count();
        let lost = out[64..4064]
            .chunks(8)
            .filter(|c| c.iter().all(|&b| b == 0))
            .count();
        assert_eq!(kept + lost, 500, "words are kept or lost whole");
        assert!(kept > 100 && lost > 100, "about half kept: {kept}");
    }

    #[test]
    fn failed_barrier_persists_nothing() {
        let img = MemPmemImage::new(1024);
        let mut r = img.region(512, 512);
        img.fail_barriers(true);
        r.write(0, &[9; 16]);
        assert!(r.barrier().is_err());
        assert_eq!(img.persisted()[512..528], [0; 16]);
    }
}
