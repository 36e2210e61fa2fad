//! Memory-mapped controller registers (BAR0) and memory BARs (the PMR). Every register access is a volatile
//! 32-bit load or store: each store to a doorbell is a trap into the device model under emulation and a posted
//! PCIe write on hardware, so the queue code counts them. Memory BARs are copied to and from with volatile
//! 64-bit words ([`Bar::write_bytes`], [`Bar::read_bytes`]).

use std::ptr::NonNull;

/// A mapped register window.
#[derive(Debug)]
pub struct Bar {
    base: NonNull<u8>,
    len: usize,
    /// True when `base` came from mmap and must be unmapped on drop.
    mapped: bool,
    /// Ordinary memory standing in for registers (loopback), kept alive as long as the window.
    _backing: Option<crate::dma::DmaBuf>,
}

// SAFETY: MMIO registers may be accessed from any thread; the driver arranges that each doorbell has one writer.
unsafe impl Send for Bar {}
// SAFETY: as above; all accesses are volatile loads/stores of aligned 32-bit words.
unsafe impl Sync for Bar {}

impl Bar {
    /// Takes ownership of an mmap'ed BAR.
    ///
    /// # Safety
    /// `ptr` must be a live mapping of `len` bytes, created by mmap and not unmapped elsewhere.
    pub(crate) unsafe fn from_mmap(ptr: *mut u8, len: usize) -> Option<Self> {
        Some(Self {
            base: NonNull::new(ptr)?,
            len,
            mapped: true,
            _backing: None,
        })
    }

    /// A register window in ordinary memory, which the window owns (for controllers emulated in-process,
    /// like the loopback benchmark's).
    pub fn from_memory(mut backing: crate::dma::DmaBuf) -> Option<Self> {
        let len = backing.len();
        Some(Self {
            base: NonNull::new(backing.as_mut_ptr())?,
            len,
            mapped: false,
            _backing: Some(backing),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn reg(&self, off: usize) -> *mut u32 {
        assert!(
            off % 4 == 0 && off + 4 <= self.len,
            "register offset {off:#x} outside BAR of {:#x}",
            self.len
        );
        // SAFETY: the offset was checked against the window's length just above.
        unsafe { self.base.as_ptr().add(off).cast::<u32>() }
    }

    #[inline]
    pub fn read32(&self, off: usize) -> u32 {
        // SAFETY: reg() returns an aligned pointer inside the mapped window.
        unsafe { self.reg(off).read_volatile() }
    }

    #[inline]
    pub fn write32(&self, off: usize, v: u32) {
        // SAFETY: reg() returns an aligned pointer inside the mapped window.
        unsafe { self.reg(off).write_volatile(v) }
    }

    /// 64-bit registers (CAP, ASQ, ACQ) as two 32-bit accesses, low word first, which every controller accepts.
    pub fn read64(&self, off: usize) -> u64 {
        self.read32(off) as u64 | (self.read32(off + 4) as u64) << 32
    }

    pub fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }

    /// The window's range `off..off + len`, checked: panics like a slice index when it is outside.
    #[inline]
    fn span(&self, off: usize, len: usize) -> *mut u8 {
        match off.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => panic!(
                "range {off:#x}+{len:#x} outside the mapped window of {:#x} bytes",
                self.len
            ),
        }
        // SAFETY: off + len <= self.len was checked just above, so the pointer stays inside the mapping.
        unsafe { self.base.as_ptr().add(off) }
    }

    /// Copies `src` into the window at `off` with volatile stores (memory BARs such as a PMR): single bytes up
    /// to the first 8-byte aligned address, then aligned 64-bit words, then single bytes. Panics when the
    /// range is outside the window.
    pub fn write_bytes(&self, off: usize, src: &[u8]) {
        let p = self.span(off, src.len());
        let head = p.align_offset(8).min(src.len());
        let (bytes, rest) = src.split_at(head);
        for (i, &b) in bytes.iter().enumerate() {
            // SAFETY: i < head <= src.len(), inside the span checked by span().
            unsafe { p.add(i).write_volatile(b) };
        }
        let words = rest.chunks_exact(8);
        let tail = words.remainder();
        let mut at = head;
        for w in words {
            let mut v = [0u8; 8];
            v.copy_from_slice(w);
            // SAFETY: at..at + 8 is inside the checked span and p + at is 8-byte aligned (p + head is).
            unsafe {
                p.add(at)
                    .cast::<u64>()
                    .write_volatile(u64::from_ne_bytes(v))
            };
            at += 8;
        }
        for (i, &b) in tail.iter().enumerate() {
            // SAFETY: at + i < src.len(), inside the checked span.
            unsafe { p.add(at + i).write_volatile(b) };
        }
    }

    /// Copies `dst.len()` bytes of the window at `off` into `dst` with volatile loads, shaped as
    /// [`Bar::write_bytes`]'s stores. Panics when the range is outside the window.
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        let p = self.span(off, dst.len()).cast_const();
        let head = p.align_offset(8).min(dst.len());
        let (bytes, rest) = dst.split_at_mut(head);
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: i < head <= dst.len(), inside the span checked by span().
            *b = unsafe { p.add(i).read_volatile() };
        }
        let mut at = head;
        let mut words = rest.chunks_exact_mut(8);
        for w in &mut words {
            // SAFETY: at..at + 8 is inside the checked span and p + at is 8-byte aligned (p + head is).
            let v = unsafe { p.add(at).cast::<u64>().read_volatile() };
            w.copy_from_slice(&v.to_ne_bytes());
            at += 8;
        }
        for (i, b) in words.into_remainder().iter_mut().enumerate() {
            // SAFETY: at + i < dst.len(), inside the checked span.
            *b = unsafe { p.add(at + i).read_volatile() };
        }
    }

    /// Replaces a BAR mapping by ordinary memory that reads all ones, at the same address, so that the device's
    /// file can be closed (the kernel waits for that to finish a hot-removal) while queue pairs may still
    /// hold doorbell pointers into the window: their writes then land in that memory, and every register
    /// read says "gone". Returns false when the window is not a device mapping or the kernel refused.
    pub(crate) fn retire(&self) -> bool {
        if !self.mapped {
            return false;
        }
        // SAFETY: base/len is this Bar's own mapping; MAP_FIXED replaces it in one step with private anonymous
        // memory of the same size, so no access through the window ever faults; nothing else is mapped there.
        let p = unsafe {
            libc::mmap(
                self.base.as_ptr().cast(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: the new mapping is len bytes of writable memory at base.
        unsafe { core::ptr::write_bytes(self.base.as_ptr(), 0xff, self.len) };
        true
    }

    /// A doorbell register's address, for the queue pair that owns it (checked once here, not per write).
    pub(crate) fn doorbell(&self, off: usize) -> Doorbell {
        Doorbell(self.reg(off))
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: base/len is the mapping handed to from_mmap; nothing uses it after drop.
            unsafe {
                libc::munmap(self.base.as_ptr().cast(), self.len);
            }
        }
    }
}

/// One doorbell register. Valid while the `Bar` it came from lives (the queue pair holds that `Bar` through the
/// controller's shared state).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Doorbell(*mut u32);

// SAFETY: a doorbell is written by the one thread that owns its queue pair.
unsafe impl Send for Doorbell {}

impl Doorbell {
    #[inline(always)]
    pub(crate) fn write(&self, v: u32) {
        // SAFETY: the pointer was bounds-checked by Bar::doorbell and the Bar outlives the queue pair.
        unsafe { self.0.write_volatile(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::Bar;
    use crate::dma::Iommu;

    fn window(len: usize) -> Bar {
        Bar::from_memory(Iommu::identity().alloc(len).expect("memory")).expect("non-null")
    }

    #[test]
    fn byte_copies_round_trip_at_every_alignment_and_length() {
        let w = window(4096);
        let data: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for off in 0..17 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 64, 129, 200] {
                w.write_bytes(0, &[0xee; 256]);
                w.write_bytes(off, &data[..len]);
                let mut back = vec![0u8; len];
                w.read_bytes(off, &mut back);
                assert_eq!(back, data[..len], "off {off} len {len}");
                // Nothing outside the range was touched.
                let mut around = [0u8; 256];
                w.read_bytes(0, &mut around);
                assert!(
                    around[..off].iter().all(|&b| b == 0xee),
                    "before, off {off} len {len}"
                );
                assert!(
                    around[off + len..].iter().all(|&b| b == 0xee),
                    "after, off {off} len {len}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside the mapped window")]
    fn a_write_past_the_end_panics() {
        window(4096).write_bytes(4090, &[0; 7]);
    }

    #[test]
    #[should_panic(expected = "outside the mapped window")]
    fn an_overflowing_range_panics() {
        window(4096).read_bytes(usize::MAX, &mut [0; 2]);
    }
}
