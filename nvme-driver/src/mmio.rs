//! Memory-mapped controller registers (BAR0). Every access is a volatile 32-bit load or store: each store to a
//! doorbell is a trap into the device model under emulation and a posted PCIe write on hardware, so the
//! queue code counts them.

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
