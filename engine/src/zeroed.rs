//! Large zeroed arrays whose allocation costs no pass over their memory: anonymous mappings, whose pages
//! the kernel maps (zeroed) as they are first touched. The index's table parts use them, so growing the
//! table allocates its new part in constant time. (`vec![0; n]` would call `calloc`, which clears memory
//! it takes from the heap with a pass over it: glibc serves even large requests from the heap once large
//! blocks have been freed, and such a clear took milliseconds at a million keys.) The segment cache's
//! copies are the opposite case, memory written whole at once: [`Zeroed::populate`] faults a spare's
//! pages in ahead of the copy, a piece per system call, and [`Zeroed::populated`] maps a short copy's
//! pages in one call instead of a page fault each. The only unsafe code of the index and the cache
//! lives here.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Element types for which all-zero bytes are a valid value.
pub trait Zeroable: Copy + 'static {}
impl Zeroable for u8 {}
impl Zeroable for u32 {}

/// Arrays below this many bytes are ordinary vectors.
const MAP_FROM: usize = 1 << 20;

/// The page size [`Zeroed::populate`] aligns to: the smallest on the platforms we run on. With larger
/// pages `madvise` refuses an unaligned range and `populate` falls back to a store per 4 KiB.
pub const PAGE: usize = 4096;

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

    /// Faults in the pages of elements `from .. from + len` (clamped to the array) in one system call
    /// where the kernel offers `MADV_POPULATE_WRITE` (Linux 5.14), else by a store to each page: memory
    /// made ready a piece at a time ahead of a copy that must not wait for page faults.
    pub fn populate(&mut self, from: usize, len: usize) {
        let Zeroed::Mapped { ptr, len: n } = self else {
            // Heap memory: nothing to prepare that a copy would not do as cheaply.
            return;
        };
        let size = std::mem::size_of::<T>();
        let start = from.min(*n) * size;
        let end = from.saturating_add(len).min(*n) * size;
        let first = start / PAGE * PAGE;
        if end <= first {
            return;
        }
        // SAFETY: `first .. end` lies inside the mapping (page-aligned from its page-aligned start);
        // MADV_POPULATE_WRITE only faults in pages of our own private mapping, changing no contents.
        let r = unsafe {
            libc::madvise(
                ptr.as_ptr().cast::<u8>().add(first).cast(),
                end - first,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if r != 0 {
            // An older kernel: a store per page faults it in (the value is irrelevant, the page reads
            // as zeroes either way).
            let bytes: &mut [T] = self;
            let mut at = first / size;
            while at < end / size {
                bytes[at] = zero();
                at += PAGE / size;
            }
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

    /// Resident pages of the mapping behind `a` (mincore), to see what `populate` faulted in.
    fn resident_pages(a: &Zeroed<u8>) -> usize {
        let Zeroed::Mapped { ptr, len } = a else {
            return 0;
        };
        let pages = len.div_ceil(4096);
        let mut v = vec![0u8; pages];
        // SAFETY: mincore reads the residency of our own mapping into `v`, one byte per page.
        let r = unsafe { libc::mincore(ptr.as_ptr().cast(), *len, v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn populate_faults_in_the_range_asked_and_changes_nothing() {
        let mut a: Zeroed<u8> = Zeroed::new(2 << 20);
        assert_eq!(resident_pages(&a), 0);
        a.populate(4096, 64 << 10);
        // At least the range asked (transparent huge pages, where always on, may bring more).
        let after = resident_pages(&a);
        assert!(after >= 16, "{after} pages resident");
        // Past the end: clamped, and the last page is in.
        a.populate((2 << 20) - 4096, 1 << 20);
        assert!(resident_pages(&a) > after || after == 512);
        assert!(a.iter().all(|&x| x == 0));
        a[4096] = 9;
        assert_eq!(a[4096], 9);
        let mut small: Zeroed<u8> = Zeroed::new(100);
        small.populate(0, 100);
        assert!(small.iter().all(|&x| x == 0));
    }
}
