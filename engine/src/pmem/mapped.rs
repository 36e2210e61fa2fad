//! Persistent memory through a mapping of a file or device: an NVDIMM in device-DAX mode
//! (`/dev/daxX.Y`), a file on a DAX file system mapped with `MAP_SYNC`, or any other file (or block
//! device) mapped shared, whose barrier is `msync`.
//!
//! [`MappedPmem::open`] maps the whole file or device once and hands out a region of it;
//! [`MappedPmem::split`] cuts a region into disjoint per-shard regions that share the one mapping
//! (an `Arc`, unmapped when the last region is dropped).
//!
//! Barriers flush only what was stored since the previous barrier of the same region: each region
//! keeps the byte ranges it stored to (a few ranges, merged; past [`MAX_RANGES`] they collapse into
//! one covering range, which flushes more than needed but never less).
//!
//! | kind | mapping | barrier |
//! | --- | --- | --- |
//! | `devdax` | `MAP_SHARED` of the whole character device (its length a multiple of sysfs `align`) | write-back of each stored cache line (`clwb`, else `clflushopt`, else `clflush`, as CPUID says), then `sfence` |
//! | `fsdax (MAP_SYNC)` | `MAP_SHARED_VALIDATE \| MAP_SYNC` (the kernel refuses it unless the file is on DAX) | the same as devdax: with `MAP_SYNC` the file system's metadata is durable at fault time |
//! | `file (msync)` | `MAP_SHARED` | `msync(MS_SYNC)` of the pages stored to |
//!
//! The mapping is shared with the file: another process that writes the same bytes races with this
//! one (as it would on the device); a file truncated under the mapping makes an access fault
//! (SIGBUS). The program owning the regions is assumed to be the only writer.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use super::{PersistentMemory, PmemError};

/// Dirty ranges a region tracks separately before they collapse into one.
pub const MAX_RANGES: usize = 16;

/// What a mapping is, and so how its barrier works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// A device-DAX character device: the mapping is the persistent memory itself.
    DevDax,
    /// A file on a DAX file system, mapped with `MAP_SYNC`.
    FsDax,
    /// An ordinary file or block device (page cache): the barrier is `msync`.
    File,
}

impl MapKind {
    /// The name [`PersistentMemory::kind`] reports.
    pub fn name(self) -> &'static str {
        match self {
            MapKind::DevDax => "devdax",
            MapKind::FsDax => "fsdax (MAP_SYNC)",
            MapKind::File => "file (msync)",
        }
    }
}

/// The instruction that writes a cache line back toward persistent memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushInsn {
    /// Writes back without evicting (CPUID.7.0:EBX bit 24).
    Clwb,
    /// Writes back and evicts, weakly ordered (CPUID.7.0:EBX bit 23).
    Clflushopt,
    /// Writes back and evicts, ordered with other stores (CPUID.1:EDX bit 19).
    Clflush,
}

impl FlushInsn {
    /// The best one this CPU has, and its cache-line size; None off x86_64 or without any.
    pub fn detect() -> Option<(FlushInsn, usize)> {
        cpu::detect()
    }
}

fn map_err(path: &Path, reason: impl std::fmt::Display) -> PmemError {
    PmemError::Map(format!("{}: {reason}", path.display()))
}

/// One mapping of a whole file or device, shared by the regions cut from it.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    kind: MapKind,
    /// The cache-line write-back of the DAX kinds (None for `File`).
    flush: Option<(FlushInsn, usize)>,
    /// sysfs `align` of a devdax device; the page size otherwise.
    align: usize,
    path: PathBuf,
    _file: File,
}

// SAFETY: the mapping is plain memory shared with a file; the pointer is valid for `len` bytes until
// drop, and the regions that access it through the `Arc` are disjoint (each `MappedPmem` only
// touches `[base, base + len)`, and `split` hands out non-overlapping ranges), so sharing the
// `Mapping` between threads creates no data race of its own.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`: `Mapping` itself is never written after construction.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned and nothing references the mapping any
        // more (the last `Arc` is going away). A failure leaves a leaked mapping, nothing worse.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

fn read_sysfs_u64(p: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `mmap(NULL, len, READ|WRITE, flags, fd, 0)`, or the OS error.
fn mmap(file: &File, len: usize, flags: libc::c_int) -> std::io::Result<NonNull<u8>> {
    // SAFETY: a fresh mapping at an address the kernel picks, of a file descriptor we own; no
    // existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned NULL"))
}

impl Mapping {
    fn open(path: &Path) -> Result<Mapping, PmemError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| map_err(path, format!("cannot open: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| map_err(path, format!("cannot stat: {e}")))?;
        let ft = meta.file_type();
        if ft.is_char_device() {
            return Self::devdax(path, file, meta.rdev());
        }
        let len = if ft.is_block_device() {
            use std::io::Seek;
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0))
                .map_err(|e| map_err(path, format!("cannot size the block device: {e}")))?
        } else if ft.is_file() {
            meta.len()
        } else {
            return Err(map_err(
                path,
                "neither a file, a block device nor a devdax device",
            ));
        };
        let len = usize::try_from(len).map_err(|_| map_err(path, "too large to map"))?;
        if len == 0 {
            return Err(map_err(path, "is empty"));
        }
        // MAP_SYNC is refused (EOPNOTSUPP) unless the file is on a DAX file system: that refusal is
        // how the kind is detected, as libpmem does it.
        let sync = libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC;
        let (ptr, kind) = match mmap(&file, len, sync) {
            Ok(p) => (p, MapKind::FsDax),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                let p = mmap(&file, len, libc::MAP_SHARED)
                    .map_err(|e| map_err(path, format!("mmap MAP_SHARED of {len} bytes: {e}")))?;
                (p, MapKind::File)
            }
            Err(e) => return Err(map_err(path, format!("mmap MAP_SYNC of {len} bytes: {e}"))),
        };
        let mut m = Mapping {
            ptr,
            len,
            kind,
            flush: None,
            align: page_size(),
            path: path.to_path_buf(),
            _file: file,
        };
        if kind == MapKind::FsDax {
            m.flush = Some(FlushInsn::detect().ok_or_else(|| {
                map_err(path, "no cache-line write-back instruction on this CPU")
            })?);
        }
        Ok(m)
    }

    fn devdax(path: &Path, file: File, rdev: u64) -> Result<Mapping, PmemError> {
        let (maj, min) = (libc::major(rdev), libc::minor(rdev));
        let sys = PathBuf::from(format!("/sys/dev/char/{maj}:{min}"));
        let size = read_sysfs_u64(&sys.join("size")).ok_or_else(|| {
            map_err(
                path,
                format!("not a device-dax device (no {}/size)", sys.display()),
            )
        })?;
        let align = read_sysfs_u64(&sys.join("align")).unwrap_or(page_size() as u64);
        let len = usize::try_from(size).map_err(|_| map_err(path, "too large to map"))?;
        let align = usize::try_from(align).map_err(|_| map_err(path, "alignment too large"))?;
        if len == 0 || align == 0 || len % align != 0 {
            return Err(map_err(
                path,
                format!("devdax size {len} is not a non-zero multiple of its align {align}"),
            ));
        }
        let flush = FlushInsn::detect()
            .ok_or_else(|| map_err(path, "no cache-line write-back instruction on this CPU"))?;
        let ptr = mmap(&file, len, libc::MAP_SHARED)
            .map_err(|e| map_err(path, format!("mmap MAP_SHARED of {len} bytes: {e}")))?;
        let m = Mapping {
            ptr,
            len,
            kind: MapKind::DevDax,
            flush: Some(flush),
            align,
            path: path.to_path_buf(),
            _file: file,
        };
        if (m.ptr.as_ptr() as usize) % align != 0 {
            return Err(map_err(path, format!("mapping not aligned to {align}")));
        }
        Ok(m)
    }
}

/// Byte ranges (absolute in the mapping) stored to since the last barrier.
#[derive(Debug)]
struct Dirty {
    ranges: Vec<(usize, usize)>,
}

impl Dirty {
    fn new() -> Self {
        Dirty {
            ranges: Vec::with_capacity(MAX_RANGES),
        }
    }

    /// Adds `[s, e)`, merging with a range it touches; never allocates past the first
    /// `MAX_RANGES` (then everything collapses into one covering range).
    fn add(&mut self, s: usize, e: usize) {
        if s >= e {
            return;
        }
        for r in self.ranges.iter_mut().rev() {
            if s <= r.1 && e >= r.0 {
                *r = (r.0.min(s), r.1.max(e));
                return;
            }
        }
        if self.ranges.len() == MAX_RANGES {
            let lo = self.ranges.iter().map(|r| r.0).fold(s, usize::min);
            let hi = self.ranges.iter().map(|r| r.1).fold(e, usize::max);
            self.ranges.clear();
            self.ranges.push((lo, hi));
            return;
        }
        self.ranges.push((s, e));
    }

    /// The ranges widened to multiples of `unit` and merged, sorted (the order `msync` walks).
    fn widened(&self, unit: usize, limit: usize) -> Vec<(usize, usize)> {
        let mut v: Vec<(usize, usize)> = self
            .ranges
            .iter()
            .map(|&(s, e)| {
                (
                    s - s % unit,
                    e.div_ceil(unit).saturating_mul(unit).min(limit),
                )
            })
            .collect();
        v.sort_unstable();
        let mut out: Vec<(usize, usize)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out
    }
}

/// One region of a mapped persistent memory: see the module documentation.
#[derive(Debug)]
pub struct MappedPmem {
    map: Arc<Mapping>,
    base: usize,
    len: usize,
    dirty: Dirty,
}

impl MappedPmem {
    /// Maps the whole of `path` and returns the region `[offset, offset + len)` of it. Fails with
    /// [`PmemError::Map`] (naming the path and why) when it cannot be opened or mapped, or the
    /// region does not fit in it (a file too small).
    pub fn open(path: impl AsRef<Path>, offset: usize, len: usize) -> Result<Self, PmemError> {
        let path = path.as_ref();
        let map = Mapping::open(path)?;
        if offset.checked_add(len).is_none_or(|end| end > map.len) {
            return Err(map_err(
                path,
                format!(
                    "region [{offset}, +{len}) does not fit in its {} bytes",
                    map.len
                ),
            ));
        }
        Ok(MappedPmem {
            map: Arc::new(map),
            base: offset,
            len,
            dirty: Dirty::new(),
        })
    }

    /// Maps the whole of `path` as one region.
    pub fn open_whole(path: impl AsRef<Path>) -> Result<Self, PmemError> {
        let path = path.as_ref();
        let map = Mapping::open(path)?;
        let len = map.len;
        Ok(MappedPmem {
            map: Arc::new(map),
            base: 0,
            len,
            dirty: Dirty::new(),
        })
    }

    /// Cuts this region into `count` disjoint regions of `bytes_each` bytes, from its start,
    /// sharing its mapping (one per shard). Earlier stores to this region are made persistent first
    /// (a barrier), so no region inherits stores it does not know of.
    pub fn split(mut self, count: usize, bytes_each: usize) -> Result<Vec<MappedPmem>, PmemError> {
        let need = count.checked_mul(bytes_each);
        if need.is_none_or(|n| n > self.len) {
            return Err(map_err(
                &self.map.path,
                format!(
                    "{count} regions of {bytes_each} bytes do not fit in a region of {} bytes",
                    self.len
                ),
            ));
        }
        self.barrier()?;
        Ok((0..count)
            .map(|i| MappedPmem {
                map: self.map.clone(),
                base: self.base + i * bytes_each,
                len: bytes_each,
                dirty: Dirty::new(),
            })
            .collect())
    }

    /// What the mapping is.
    pub fn map_kind(&self) -> MapKind {
        self.map.kind
    }

    /// The file or device mapped.
    pub fn path(&self) -> &Path {
        &self.map.path
    }

    /// Where this region starts in the file or device.
    pub fn offset(&self) -> usize {
        self.base
    }

    /// Bytes in the whole mapping (the file or device).
    pub fn mapping_len(&self) -> usize {
        self.map.len
    }

    /// A devdax device's `align` (the page size for the other kinds).
    pub fn align(&self) -> usize {
        self.map.align
    }

    /// The cache-line write-back the barrier uses (None: the barrier is `msync`).
    pub fn flush_insn(&self) -> Option<FlushInsn> {
        self.map.flush.map(|(f, _)| f)
    }

    /// Byte ranges (relative to the region) stored to since the last barrier.
    pub fn dirty_ranges(&self) -> Vec<(usize, usize)> {
        self.dirty
            .ranges
            .iter()
            .map(|&(s, e)| (s - self.base, e - self.base))
            .collect()
    }

    fn msync_dirty(&mut self) -> Result<(), PmemError> {
        let page = page_size();
        let limit = self.map.len.div_ceil(page) * page;
        for (s, e) in self.dirty.widened(page, limit) {
            // SAFETY: `[s, e)` is page-aligned and inside the mapping's pages (the end is clamped to
            // the mapping's length rounded up to a page, all of which the mapping covers).
            let rc =
                unsafe { libc::msync(self.map.ptr.as_ptr().add(s).cast(), e - s, libc::MS_SYNC) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                return Err(PmemError::Device(format!(
                    "{}: msync of [{s}, {e}): {err}",
                    self.map.path.display()
                )));
            }
        }
        Ok(())
    }
}

impl PersistentMemory for MappedPmem {
    fn len(&self) -> usize {
        self.len
    }

    fn write(&mut self, off: usize, data: &[u8]) {
        assert!(
            off.checked_add(data.len()).is_some_and(|e| e <= self.len),
            "store outside the region"
        );
        let a = self.base + off;
        // SAFETY: `[a, a + data.len())` lies inside this region (checked above), which lies inside
        // the mapping (checked at open and split); no other region overlaps it, and `&mut self`
        // excludes a concurrent load of this region. `data` is ordinary memory, not the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.ptr.as_ptr().add(a), data.len());
        }
        self.dirty.add(a, a + data.len());
    }

    fn read(&self, off: usize, out: &mut [u8]) {
        assert!(
            off.checked_add(out.len()).is_some_and(|e| e <= self.len),
            "load outside the region"
        );
        let a = self.base + off;
        // SAFETY: as in `write`: inside this region of the mapping, which only this region's owner
        // stores to; `out` is ordinary memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.ptr.as_ptr().add(a),
                out.as_mut_ptr(),
                out.len(),
            );
        }
    }

    fn barrier(&mut self) -> Result<(), PmemError> {
        if self.dirty.ranges.is_empty() {
            return Ok(());
        }
        match self.map.flush {
            Some((insn, line)) => {
                for &(s, e) in &self.dirty.ranges {
                    let mut l = s - s % line;
                    while l < e {
                        // SAFETY: `l` is inside the mapping (a line of a stored range; the range is
                        // inside the mapping and a line never crosses a page).
                        unsafe { cpu::flush_line(insn, self.map.ptr.as_ptr().add(l)) };
                        l += line;
                    }
                }
                cpu::sfence();
            }
            None => self.msync_dirty()?,
        }
        self.dirty.ranges.clear();
        Ok(())
    }

    fn kind(&self) -> &'static str {
        self.map.kind.name()
    }
}

/// The x86_64 instructions of the DAX barrier (the only `asm!` of the crate).
#[cfg(target_arch = "x86_64")]
mod cpu {
    use super::FlushInsn;
    use std::arch::asm;
    use std::arch::x86_64::{__cpuid, __cpuid_count};

    pub(super) fn detect() -> Option<(FlushInsn, usize)> {
        // CPUID is present on every x86_64 CPU.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID has no side effects; leaf 0 reports the highest leaf.
        let max = unsafe { __cpuid(0) }.eax;
        #[allow(unused_unsafe)]
        // SAFETY: leaf 1 exists on every x86_64 CPU.
        let l1 = unsafe { __cpuid(1) };
        // EBX bits 15:8: CLFLUSH line size in 8-byte units.
        let line = (((l1.ebx >> 8) & 0xff) as usize * 8).max(32);
        let ebx7 = if max >= 7 {
            #[allow(unused_unsafe)]
            // SAFETY: leaf 7 exists (max >= 7); subleaf 0 holds the feature flags.
            unsafe { __cpuid_count(7, 0) }.ebx
        } else {
            0
        };
        if ebx7 & (1 << 24) != 0 {
            Some((FlushInsn::Clwb, line))
        } else if ebx7 & (1 << 23) != 0 {
            Some((FlushInsn::Clflushopt, line))
        } else if l1.edx & (1 << 19) != 0 {
            Some((FlushInsn::Clflush, line))
        } else {
            None
        }
    }

    /// Writes back the cache line holding `p`.
    ///
    /// # Safety
    /// `p` must point into mapped memory, and `insn` must be one the CPU has ([`detect`]).
    pub(super) unsafe fn flush_line(insn: FlushInsn, p: *mut u8) {
        // SAFETY: the caller guarantees the line is mapped and the instruction exists; a
        // write-back changes no value in memory.
        unsafe {
            match insn {
                FlushInsn::Clwb => asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags)),
                FlushInsn::Clflushopt => {
                    asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
                }
                FlushInsn::Clflush => {
                    asm!("clflush [{0}]", in(reg) p, options(nostack, preserves_flags))
                }
            }
        }
    }

    /// Orders the write-backs before later stores (and before the barrier returns).
    pub(super) fn sfence() {
        // SAFETY: sfence only orders stores; SSE is part of x86_64.
        unsafe { asm!("sfence", options(nostack, preserves_flags)) }
    }
}

/// Elsewhere the DAX kinds are refused at open (no write-back instruction known).
#[cfg(not(target_arch = "x86_64"))]
mod cpu {
    use super::FlushInsn;

    pub(super) fn detect() -> Option<(FlushInsn, usize)> {
        None
    }

    /// Never called: no mapping has a flush instruction here.
    ///
    /// # Safety
    /// None needed; it does nothing.
    pub(super) unsafe fn flush_line(_insn: FlushInsn, _p: *mut u8) {}

    pub(super) fn sfence() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn scratch(name: &str, len: u64) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nvkv-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let p = dir.join(name);
        let f = File::create(&p).expect("create scratch file");
        f.set_len(len).expect("size scratch file");
        p
    }

    fn file_bytes(p: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(p)
            .and_then(|mut f| f.read_to_end(&mut v))
            .expect("read back");
        v
    }

    #[test]
    fn write_barrier_reopen_reads_back() {
        let p = scratch("rw", 64 << 10);
        let mut r = MappedPmem::open(&p, 4096, 16 << 10).expect("open");
        assert_eq!(r.kind(), "file (msync)");
        assert_eq!(r.map_kind(), MapKind::File);
        r.write(10, b"hello pmem");
        r.write(9000, &[0xab; 300]);
        assert_eq!(r.dirty_ranges(), vec![(10, 20), (9000, 9300)]);
        r.barrier().expect("barrier");
        assert!(
            r.dirty_ranges().is_empty(),
            "a barrier clears the dirty ranges"
        );
        drop(r);
        let bytes = file_bytes(&p);
        assert_eq!(&bytes[4096 + 10..4096 + 20], b"hello pmem");
        assert!(bytes[4096 + 9000..4096 + 9300].iter().all(|&b| b == 0xab));
        let r = MappedPmem::open(&p, 4096, 16 << 10).expect("reopen");
        let mut out = [0u8; 10];
        r.read(10, &mut out);
        assert_eq!(&out, b"hello pmem");
    }

    #[test]
    fn out_of_range_and_too_small_are_refused() {
        let p = scratch("small", 8192);
        for (off, len) in [(0, 8193), (8192, 1), (4096, 4097), (usize::MAX, 2)] {
            match MappedPmem::open(&p, off, len) {
                Err(PmemError::Map(m)) => {
                    assert!(m.contains("small") && m.contains("does not fit"), "{m}")
                }
                other => panic!("[{off}, +{len}) accepted: {other:?}"),
            }
        }
        let empty = scratch("empty", 0);
        assert!(
            matches!(MappedPmem::open(&empty, 0, 0), Err(PmemError::Map(m)) if m.contains("empty"))
        );
        let missing = p.with_file_name("missing");
        assert!(
            matches!(MappedPmem::open(&missing, 0, 1), Err(PmemError::Map(m)) if m.contains("missing"))
        );
        assert!(
            MappedPmem::open(&p, 4096, 4096).is_ok(),
            "a region that fits exactly"
        );
    }

    #[test]
    fn split_regions_are_disjoint_and_share_the_mapping() {
        let p = scratch("split", 1 << 20);
        let whole = MappedPmem::open_whole(&p).expect("open");
        assert_eq!(whole.len(), 1 << 20);
        assert!(matches!(whole.split(5, 256 << 10), Err(PmemError::Map(_))));
        let whole = MappedPmem::open_whole(&p).expect("open");
        let mut shards = whole.split(4, 256 << 10).expect("split");
        for (i, s) in shards.iter_mut().enumerate() {
            assert_eq!(s.offset(), i * (256 << 10));
            s.write(0, &[i as u8 + 1; 100]);
            s.write((256 << 10) - 8, &[0xee; 8]);
        }
        // Only shard 2's stores are flushed by its barrier: its dirty list clears, the others' stay.
        shards[2].barrier().expect("barrier");
        assert!(shards[2].dirty_ranges().is_empty());
        assert_eq!(shards[1].dirty_ranges().len(), 2);
        for s in &mut shards {
            s.barrier().expect("barrier");
        }
        drop(shards);
        let bytes = file_bytes(&p);
        for i in 0..4usize {
            let b = i * (256 << 10);
            assert!(
                bytes[b..b + 100].iter().all(|&x| x == i as u8 + 1),
                "shard {i}"
            );
            assert!(bytes[b + (256 << 10) - 8..b + (256 << 10)]
                .iter()
                .all(|&x| x == 0xee));
        }
    }

    #[test]
    fn dirty_ranges_merge_and_collapse() {
        let mut d = Dirty::new();
        d.add(0, 10);
        d.add(10, 20);
        d.add(5, 7);
        assert_eq!(d.ranges, vec![(0, 20)], "touching and covered ranges merge");
        for i in 1..MAX_RANGES {
            d.add(i * 100, i * 100 + 1);
        }
        assert_eq!(d.ranges.len(), MAX_RANGES);
        d.add(5000, 5001);
        assert_eq!(
            d.ranges,
            vec![(0, 5001)],
            "past the limit, one covering range"
        );
        let mut d = Dirty::new();
        d.add(4095, 4097);
        d.add(100, 200);
        d.add(9000, 9001);
        d.add(20000, 20001);
        assert_eq!(
            d.widened(4096, 8 * 4096),
            vec![(0, 12288), (16384, 20480)],
            "widened to pages, touching pages merged"
        );
    }

    #[test]
    #[should_panic(expected = "store outside the region")]
    fn store_past_the_end_panics() {
        let p = scratch("oob", 8192);
        let mut r = MappedPmem::open(&p, 0, 4096).expect("open");
        r.write(4090, &[0; 7]);
    }

    #[test]
    fn flush_instruction_is_detected_on_x86_64() {
        if cfg!(target_arch = "x86_64") {
            let (insn, line) = FlushInsn::detect().expect("x86_64 has at least clflush");
            assert!(line >= 32, "{insn:?} line {line}");
            // The instruction runs on ordinary memory too (and changes nothing).
            let mut buf = vec![7u8; 4 * line];
            for l in 0..4 {
                // SAFETY: inside `buf`; `insn` is what detect found.
                unsafe { cpu::flush_line(insn, buf.as_mut_ptr().add(l * line)) };
            }
            cpu::sfence();
            assert!(buf.iter().all(|&b| b == 7));
        }
    }
}
