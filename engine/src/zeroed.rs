//! Large zeroed arrays whose allocation costs no pass over their memory: anonymous mappings, whose pages
//! the kernel maps (zeroed) as they are first touched. The index's table parts use them, so growing the
//! table allocates its new part in constant time. (`vec![0; n]` would call `calloc`, which clears memory
//! it takes from the heap with a pass over it: glibc serves even large requests from the heap once large
//! blocks have been freed, and such a clear took milliseconds at a million keys.) The segment cache's
//! copies are the opposite case, memory written whole at once: [`Zeroed::populated`] maps their pages in
//! one system call instead of a page fault each. The only unsafe code of the index and the cache lives
//! here.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Element types for which all-zero bytes are a valid value.
pub trait Zeroable: Copy + 'static {}
impl Zeroable for u8 {}
impl Zeroable for u32 {}

/// Arrays below this many bytes are ordinary vectors.
const MAP_FROM: usize = 1 << 20;

/// A fixed-length array of zeroes.
pub enum Zeroed<T: Zeroable> {
    Small(Vec<T>),
    Mapped { ptr: NonNull<T>, len: usize },
}

// SAFETY: the mapping is owned by this value alone (like a Vec's buffer), and T is plain data.
unsafe impl<T: Zeroable + Send> Send for Zeroed<T> {}
// SAFETY: shared access only reads; writes need `&mut`.
unsafe impl<T: Zeroable + Sync> Sync for Zeroed<T> {}

impl<T: Zeroable> Zeroed<T> {
    /// `len` zeroes, their pages mapped as they are first touched.
    pub fn new(len: usize) -> Self {
        Self::mapped(len, 0)
    }

    /// `len` zeroes, every page mapped up front, for memory about to be written whole: a megabyte
    /// copied into a fresh mapping took 350-550 µs here, a page fault every 4 KiB; mapped in advance,
    /// about 110 µs plus a 40 µs copy.
    pub fn populated(len: usize) -> Self {
        Self::mapped(len, libc::MAP_POPULATE)
    }

    fn mapped(len: usize, flags: libc::c_int) -> Self {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        if bytes < MAP_FROM {
            return Zeroed::Small(vec![zero(); len]);
        }
        // SAFETY: an anonymous private mapping of `bytes` bytes at an address the kernel picks; no
        // existing memory is touched. The result is checked against MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        match NonNull::new(p.cast::<T>()).filter(|_| p != libc::MAP_FAILED) {
            Some(ptr) => Zeroed::Mapped { ptr, len },
            // No address space left for a mapping: the heap's way, with its pass over the memory.
            None => Zeroed::Small(vec![zero(); len]),
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Zeroed::Small(v) => v.capacity() * std::mem::size_of::<T>(),
            Zeroed::Mapped { len, .. } => len * std::mem::size_of::<T>(),
        }
    }
}

fn zero<T: Zeroable>() -> T {
    // SAFETY: Zeroable is implemented only for types whose all-zero bit pattern is a valid value.
    unsafe { std::mem::zeroed() }
}

impl<T: Zeroable> Deref for Zeroed<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Zeroed::Small(v) => v,
            // SAFETY: the mapping holds `len` elements, zero-initialised by the kernel, readable and
            // writable for as long as `self` lives; `&self` excludes writers.
            Zeroed::Mapped { ptr, len } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
        }
    }
}

impl<T: Zeroable> DerefMut for Zeroed<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Zeroed::Small(v) => v,
            // SAFETY: as in `deref`; `&mut self` makes this the only access.
            Zeroed::Mapped { ptr, len } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }
}

impl<T: Zeroable> std::fmt::Debug for Zeroed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The length only: the contents are megabytes of data.
        f.debug_struct("Zeroed").field("len", &self.len()).finish()
    }
}

impl<T: Zeroable> Clone for Zeroed<T> {
    fn clone(&self) -> Self {
        let mut c = Zeroed::new(self.len());
        c.copy_from_slice(self);
        c
    }
}

impl<T: Zeroable> Drop for Zeroed<T> {
    fn drop(&mut self) {
        if let Zeroed::Mapped { ptr, len } = self {
            // SAFETY: unmaps exactly the mapping made in `new`, which nothing references any more.
            // A failure (not expected for a mapping we own) leaves it mapped: a leak, not a fault.
            let _ = unsafe { libc::munmap(ptr.as_ptr().cast(), *len * std::mem::size_of::<T>()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_mapped_arrays_start_zeroed_and_keep_writes() {
        for (len, populated) in [0usize, 10, 1 << 20, 3 << 20]
            .into_iter()
            .flat_map(|l| [(l, false), (l, true)])
        {
            let mut a: Zeroed<u32> = if populated {
                Zeroed::populated(len)
            } else {
                Zeroed::new(len)
            };
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&x| x == 0));
            if len > 0 {
                a[len - 1] = 7;
                a[0] = 5;
                let b = a.clone();
                assert_eq!((b[0], b[len - 1]), (5, 7));
                assert!(a.heap_bytes() >= len * 4);
            }
        }
        assert!(matches!(Zeroed::<u8>::new(2 << 20), Zeroed::Mapped { .. }));
        assert!(matches!(
            Zeroed::<u8>::populated(2 << 20),
            Zeroed::Mapped { .. }
        ));
    }
}
