//! Persistent memory: byte-addressable regions whose stores survive power loss once a barrier completes.
//!
//! The durable log (`durable_log`) writes to one of these per shard. Implementations:
//! - [`MemPmem`]: ordinary memory with a crash model (tests, the fault simulator): what a barrier
//!   covered survives a simulated crash, later stores survive in part, at 8-byte granularity.
//! - [`MappedPmem`]: a mapping of a persistent-memory file or device (NVDIMM devdax, an fsdax
//!   file mapped with `MAP_SYNC`, or an ordinary file whose barrier is `msync`).
//! - `pmr::PmrPmem`: a slice of an NVMe controller's Persistent Memory Region (BAR 4 through VFIO), its
//!   barrier the one PMRCAP.PMRWBM advertises.
//!
//! A region is owned by one shard thread (`Send`, not `Sync`); regions handed to different shards never
//! overlap.

pub mod mapped;
pub mod memory;
pub mod pmr;

pub use mapped::{FlushInsn, MapKind, MappedPmem};
pub use memory::{MemPmem, MemPmemImage};
pub use pmr::PmrPmem;

/// Opens the persistent memory at `path` and cuts it into `count` regions of `bytes` each (0: equal
/// shares, rounded down to 4 KiB).
pub(crate) fn open_mapped(
    path: &std::path::Path,
    count: usize,
    bytes: usize,
) -> Result<Vec<Box<dyn PersistentMemory>>, crate::Error> {
    let fail = |e: PmemError| crate::Error::DurableLog(e.to_string());
    let whole = MappedPmem::open_whole(path).map_err(fail)?;
    let each = crate::durable_log::region_bytes(whole.len(), count, bytes)?;
    Ok(whole
        .split(count, each)
        .map_err(fail)?
        .into_iter()
        .map(|r| Box::new(r) as Box<dyn PersistentMemory>)
        .collect())
}

/// Why a persistent-memory operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PmemError {
    /// The device reports an error (a PMR's PMRSTS error or health status, say): earlier stores may
    /// not be persistent.
    #[error("persistent memory device error: {0}")]
    Device(String),
    /// The device is gone (controller dead or removed).
    #[error("persistent memory device gone")]
    Gone,
    /// Mapping or opening the region failed.
    #[error("cannot map persistent memory: {0}")]
    Map(String),
}

/// One shard's persistent-memory region.
pub trait PersistentMemory: Send {
    /// Size in bytes.
    fn len(&self) -> usize;
    /// Whether the region has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Stores `data` at `off` (not persistent until the next [`PersistentMemory::barrier`] returns Ok).
    /// `off + data.len()` must not exceed [`PersistentMemory::len`] (callers check; implementations
    /// panic on a violation, as a slice index would).
    fn write(&mut self, off: usize, data: &[u8]);
    /// Loads `out.len()` bytes from `off`.
    fn read(&self, off: usize, out: &mut [u8]);
    /// Makes every earlier store persistent.
    fn barrier(&mut self) -> Result<(), PmemError>;
    /// What the region is, for stats and reports ("memory", "pmr", "devdax", "fsdax (MAP_SYNC)", ...).
    fn kind(&self) -> &'static str;
}

impl<T: PersistentMemory + ?Sized> PersistentMemory for Box<T> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        (**self).write(off, data)
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        (**self).read(off, out)
    }
    fn barrier(&mut self) -> Result<(), PmemError> {
        (**self).barrier()
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
}
