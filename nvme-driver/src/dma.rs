//! DMA memory: pinned buffers mapped into the device's IOMMU domain at IOVAs taken from the ranges the IOMMU
//! reports. Allocation happens at set-up (queues, buffer pools), never on the I/O path.
//!
//! 2 MiB hugepages are used for buffers of 2 MiB or more when the system has them (fewer IOTLB entries, fewer
//! pinned page structures); 4 KiB pages otherwise.

use crate::error::{Error, Result};
use crate::vfio::{Container, IovaRange};
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};

pub const PAGE_SIZE: usize = 4096;
const HUGE_PAGE: usize = 2 << 20;

/// The address space DMA buffers are mapped into.
#[derive(Debug)]
pub struct Iommu {
    kind: Kind,
    iova: Mutex<IovaAllocator>,
    /// Mappings given back by dropped buffers, reused by the next allocation of the same size: mapping and
    /// unmapping cost ioctls and IOTLB invalidations (about a millisecond each behind QEMU's vIOMMU under
    /// TCG), so code that allocates per request (the engine's reads) must not pay them every time.
    pool: Mutex<Pool>,
    /// Whether the system had hugepages when this address space was made.
    hugepages: bool,
}

/// Cached mappings by mapped length, up to [`POOL_LIMIT`] bytes in all.
#[derive(Debug, Default)]
struct Pool {
    free: std::collections::HashMap<usize, Vec<Mapping>>,
    bytes: usize,
}

#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    map_len: usize,
    iova: u64,
}

// SAFETY: a cached mapping is plain memory owned by the pool; nothing else refers to it.
unsafe impl Send for Mapping {}

const POOL_LIMIT: usize = 64 << 20;

#[derive(Debug)]
enum Kind {
    Vfio(Container),
    /// No IOMMU: the "IOVA" is the virtual address. Only for devices emulated in this process (the loopback
    /// controller of the benchmarks and tests), never for hardware.
    Identity,
}

impl Iommu {
    pub(crate) fn vfio(container: Container) -> Result<Arc<Self>> {
        let ranges = container.iova_ranges().map_err(|source| Error::Dma {
            what: "VFIO_IOMMU_GET_INFO",
            source,
        })?;
        Ok(Arc::new(Self {
            kind: Kind::Vfio(container),
            iova: Mutex::new(IovaAllocator::new(&ranges)),
            pool: Mutex::default(),
            hugepages: hugepages_available(),
        }))
    }

    /// An identity address space for controllers emulated in-process (loopback benchmarks and tests).
    pub fn identity() -> Arc<Self> {
        Arc::new(Self {
            kind: Kind::Identity,
            iova: Mutex::new(IovaAllocator::new(&[])),
            pool: Mutex::default(),
            hugepages: hugepages_available(),
        })
    }

    /// Allocates a zeroed, pinned, device-visible buffer of at least `len` bytes (page-aligned).
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<DmaBuf> {
        if len == 0 {
            return Err(Error::InvalidArgument("zero-length DMA buffer".into()));
        }
        let want = if len >= HUGE_PAGE && self.hugepages {
            len.div_ceil(HUGE_PAGE) * HUGE_PAGE
        } else {
            len.div_ceil(PAGE_SIZE) * PAGE_SIZE
        };
        let cached = self.pool.lock().ok().and_then(|mut p| {
            let m = p.free.get_mut(&want)?.pop()?;
            p.bytes -= m.map_len;
            Some(m)
        });
        if let Some(m) = cached {
            // SAFETY: the mapping is map_len >= len bytes of memory owned by the pool until now.
            unsafe { core::ptr::write_bytes(m.ptr, 0, len) };
            return Ok(DmaBuf {
                ptr: m.ptr,
                len,
                map_len: m.map_len,
                iova: m.iova,
                iommu: ManuallyDrop::new(self.clone()),
            });
        }
        let (ptr, map_len, huge) = map_memory(len, self.hugepages)?;
        let iova = match &self.kind {
            Kind::Identity => ptr as u64,
            Kind::Vfio(c) => {
                let align = if huge { HUGE_PAGE } else { PAGE_SIZE };
                let iova = self
                    .iova
                    .lock()
                    .map_err(|_| Error::InvalidArgument("IOVA allocator poisoned".into()))?
                    .alloc(map_len as u64, align as u64);
                let Some(iova) = iova else {
                    unmap_memory(ptr, map_len);
                    return Err(Error::IovaExhausted { len: map_len });
                };
                let undo = || {
                    unmap_memory(ptr, map_len);
                    if let Ok(mut a) = self.iova.lock() {
                        a.free(iova, map_len as u64);
                    }
                };
                // VFIO counts the pinned pages against RLIMIT_MEMLOCK: check first, so the error can say
                // what is missing; cached mappings of other sizes are given back before giving up.
                if let Err(shortfall) = self.fit_memlock(map_len as u64) {
                    undo();
                    return Err(Error::Memlock { shortfall });
                }
                if let Err(source) = c.map_dma(ptr, iova, map_len) {
                    undo();
                    let errno = source.raw_os_error();
                    if let (Some(libc::ENOMEM | libc::EPERM), Some(limit)) =
                        (errno, crate::memlock::counted_limit())
                    {
                        let shortfall = crate::memlock::Shortfall {
                            limit,
                            locked: crate::memlock::locked_bytes(),
                            needed: map_len as u64,
                        };
                        crate::memlock::record(shortfall);
                        return Err(Error::Memlock { shortfall });
                    }
                    return Err(Error::Dma {
                        what: "VFIO_IOMMU_MAP_DMA",
                        source,
                    });
                }
                iova
            }
        };
        Ok(DmaBuf {
            ptr,
            len,
            map_len,
            iova,
            iommu: ManuallyDrop::new(self.clone()),
        })
    }
}

impl Iommu {
    /// Makes room for pinning `len` more bytes within RLIMIT_MEMLOCK, releasing cached mappings if that
    /// is what it takes.
    fn fit_memlock(&self, len: u64) -> Result<(), crate::memlock::Shortfall> {
        let Err(short) = crate::memlock::check(len) else {
            return Ok(());
        };
        let cached = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|p| p.into_inner()));
        if cached.bytes == 0 {
            return Err(short);
        }
        for m in cached.free.into_values().flatten() {
            release(self, m.ptr, m.map_len, m.iova);
        }
        crate::memlock::check(len)
    }
}

/// The DMA memory the driver pins, to size RLIMIT_MEMLOCK (4 KiB pages; with hugepages, buffers of 2 MiB
/// and more are rounded up to 2 MiB).
pub mod budget {
    use super::PAGE_SIZE;
    use crate::queue::QueueConfig;

    fn pages(bytes: usize) -> usize {
        bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE
    }

    /// One controller: the admin SQ and CQ (32 entries), the admin data page, and the shadow doorbell and
    /// EventIdx pages when shadow doorbells are on.
    pub fn controller(shadow_doorbells: bool) -> usize {
        pages(32 * 64)
            + pages(32 * 16)
            + PAGE_SIZE
            + if shadow_doorbells { 2 * PAGE_SIZE } else { 0 }
    }

    /// One I/O queue pair: its SQ, its CQ and a PRP list page for every command it can have in flight.
    pub fn queue_pair(config: &QueueConfig) -> usize {
        let sq = config.sq_entries.max(2) as usize;
        pages(sq * 64)
            + pages(config.cq_entries.max(config.sq_entries) as usize * 16)
            + (sq - 1) * PAGE_SIZE
    }

    /// Freed mappings a controller keeps for reuse, at most; they are given back when RLIMIT_MEMLOCK would
    /// otherwise refuse a new mapping, so they need no room in it.
    pub const CACHED_MAPPINGS_MAX: usize = super::POOL_LIMIT;
}

/// A pinned buffer the device can read and write. Dropping it unmaps it from the IOMMU before freeing it, so a
/// device can never reach memory that was given back.
pub struct DmaBuf {
    ptr: *mut u8,
    len: usize,
    map_len: usize,
    iova: u64,
    /// Dropped by hand in `Drop`, which hands it by value to the out-of-line part: a `DmaBuf` (and an
    /// `Option<DmaBuf>` in a `Completion`) can then stay in registers where it is dropped, instead of being
    /// spilled so that a drop function can take its address.
    iommu: ManuallyDrop<Arc<Iommu>>,
}

// SAFETY: the buffer is plain memory owned by this value; moving it to another thread moves ownership.
unsafe impl Send for DmaBuf {}
// SAFETY: shared references only give `&[u8]`.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// The bus address of byte 0.
    #[inline]
    pub fn iova(&self) -> u64 {
        self.iova
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

impl std::ops::Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to map_len >= len bytes, mapped and owned by this value for its lifetime.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and `&mut self` guarantees exclusive access from the CPU side.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DmaBuf {{ iova: {:#x}, len: {} }}", self.iova, self.len)
    }
}

impl Drop for DmaBuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: drop runs once and nothing uses `self.iommu` after it is taken here.
        let iommu = unsafe { ManuallyDrop::take(&mut self.iommu) };
        recycle(iommu, self.ptr, self.map_len, self.iova);
    }
}

/// Gives a dropped buffer's mapping to the pool, or releases it when the pool is full.
#[inline(never)]
fn recycle(iommu: Arc<Iommu>, ptr: *mut u8, map_len: usize, iova: u64) {
    if let Ok(mut p) = iommu.pool.lock() {
        if p.bytes + map_len <= POOL_LIMIT {
            p.bytes += map_len;
            p.free
                .entry(map_len)
                .or_default()
                .push(Mapping { ptr, map_len, iova });
            return;
        }
    }
    release(&iommu, ptr, map_len, iova);
}

/// Unmaps a mapping from the IOMMU, gives its IOVA back and frees the memory.
fn release(iommu: &Iommu, ptr: *mut u8, map_len: usize, iova: u64) {
    {
        if let Kind::Vfio(c) = &iommu.kind {
            // If unmapping failed the device could still reach the memory: leak it rather than free it.
            if c.unmap_dma(iova, map_len).is_err() {
                return;
            }
            if let Ok(mut a) = iommu.iova.lock() {
                a.free(iova, map_len as u64);
            }
        }
        unmap_memory(ptr, map_len);
    }
}

impl Drop for Iommu {
    fn drop(&mut self) {
        let pool = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|p| p.into_inner()));
        for m in pool.free.into_values().flatten() {
            release(self, m.ptr, m.map_len, m.iova);
        }
    }
}

fn hugepages_available() -> bool {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

fn map_memory(len: usize, hugepages: bool) -> Result<(*mut u8, usize, bool)> {
    if len >= HUGE_PAGE && hugepages {
        let map_len = len.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        // SAFETY: anonymous private mapping, no fd; the result is checked.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return Ok((p.cast(), map_len, true));
        }
        // Not enough free hugepages: fall back to small pages.
    }
    let map_len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    // SAFETY: anonymous private mapping, no fd; the result is checked.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::Dma {
            what: "mmap",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((p.cast(), map_len, false))
}

fn unmap_memory(ptr: *mut u8, len: usize) {
    // SAFETY: (ptr, len) is exactly a mapping made by map_memory and not used after this call.
    unsafe {
        libc::munmap(ptr.cast(), len);
    }
}

/// First-fit allocator over the IOMMU's allowed IOVA ranges, with coalescing free. Runs at set-up only.
#[derive(Debug)]
struct IovaAllocator {
    /// Free extents (start, len), sorted by start, never adjacent.
    free: Vec<(u64, u64)>,
}

impl IovaAllocator {
    /// IOVA 0..64 KiB is left out so that a zero or small bogus address never hits a mapping.
    const FLOOR: u64 = 0x10000;

    fn new(ranges: &[IovaRange]) -> Self {
        let mut free: Vec<(u64, u64)> = ranges
            .iter()
            .filter_map(|r| {
                let start = r.start.max(Self::FLOOR).next_multiple_of(PAGE_SIZE as u64);
                let end = r.end.saturating_add(1) & !(PAGE_SIZE as u64 - 1);
                (end > start).then_some((start, end - start))
            })
            .collect();
        free.sort();
        Self { free }
    }

    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        for i in 0..self.free.len() {
            let (start, flen) = self.free[i];
            let a = start.next_multiple_of(align);
            let pad = a - start;
            if flen < pad + len {
                continue;
            }
            let tail = flen - pad - len;
            let mut repl = Vec::with_capacity(2);
            if pad > 0 {
                repl.push((start, pad));
            }
            if tail > 0 {
                repl.push((a + len, tail));
            }
            self.free.splice(i..=i, repl);
            return Some(a);
        }
        None
    }

    fn free(&mut self, start: u64, len: u64) {
        let i = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(i, (start, len));
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_allocator_stays_in_ranges_aligns_and_coalesces() {
        let mut a = IovaAllocator::new(&[
            IovaRange {
                start: 0,
                end: 0xfedf_ffff,
            },
            IovaRange {
                start: 0xfef0_0000,
                end: (1 << 39) - 1,
            },
        ]);
        let x = a.alloc(4096, 4096).expect("alloc");
        assert_eq!(x, IovaAllocator::FLOOR);
        let y = a.alloc(HUGE_PAGE as u64, HUGE_PAGE as u64).expect("alloc");
        assert_eq!(y % HUGE_PAGE as u64, 0);
        assert!(y + HUGE_PAGE as u64 <= 0xfee0_0000);
        a.free(x, 4096);
        a.free(y, HUGE_PAGE as u64);
        assert_eq!(a.free.len(), 2, "freed extents merge back: {:?}", a.free);
        // Too big for anything.
        assert_eq!(a.alloc(1 << 40, 4096), None);
    }

    #[test]
    fn freed_buffers_are_reused_and_zeroed() {
        let io = Iommu::identity();
        let mut a = io.alloc(8192).expect("alloc");
        a.fill(9);
        let (p, iova) = (a.as_ptr(), a.iova());
        drop(a);
        let b = io.alloc(5000).expect("alloc");
        assert_eq!(
            (b.as_ptr(), b.iova()),
            (p, iova),
            "the 8 KiB mapping is reused"
        );
        assert_eq!(b.len(), 5000);
        assert!(b.iter().all(|&x| x == 0), "a reused buffer is zeroed");
        let c = io.alloc(8192).expect("alloc");
        assert_ne!(c.as_ptr(), p, "a buffer in use is not handed out twice");
    }

    #[test]
    fn budget_counts_rings_prp_lists_and_admin_pages() {
        let qp = budget::queue_pair(&crate::QueueConfig::default());
        // 256 SQ entries of 64 B, 1024 CQ entries of 16 B, 255 PRP list pages.
        assert_eq!(qp, 16384 + 16384 + 255 * 4096);
        assert_eq!(budget::controller(false), 3 * 4096);
        assert_eq!(budget::controller(true), 5 * 4096);
    }

    #[test]
    fn identity_buffers_are_zeroed_and_writable() {
        let io = Iommu::identity();
        let mut b = io.alloc(10_000).expect("alloc");
        assert_eq!(b.len(), 10_000);
        assert!(b.iter().all(|&x| x == 0));
        b[9_999] = 7;
        assert_eq!(b.iova(), b.as_ptr() as u64);
        assert_eq!(b.iova() % PAGE_SIZE as u64, 0);
    }
}
