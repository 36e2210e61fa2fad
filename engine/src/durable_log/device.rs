//! Which persistent memory holds the durable log, and how it is cut into one region per shard.

use std::path::PathBuf;

use crate::bdev::DeviceFactory;
use crate::error::Error;
use crate::pmem::{MemPmemImage, PersistentMemory};

/// Where durable writes are acknowledged from.
#[derive(Debug, Clone, Default)]
pub enum DurableLogDevice {
    /// Nowhere but the block device: a durable write waits for its persistence cycle (a segment write
    /// and, when the device has a volatile cache, a Flush).
    #[default]
    None,
    /// The NVMe controller's Persistent Memory Region (the nvme backend; the controller must have one).
    Pmr,
    /// A persistent-memory mapping: an NVDIMM's devdax device, a file on a DAX filesystem (mapped
    /// with `MAP_SYNC`) or, for tests, any file (its barrier is `msync`).
    Pmem(PathBuf),
    /// Persistent memory simulated in memory (tests; it survives only as long as the image).
    Memory(MemPmemImage),
}

impl DurableLogDevice {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            DurableLogDevice::None => "none",
            DurableLogDevice::Pmr => "pmr",
            DurableLogDevice::Pmem(_) => "pmem",
            DurableLogDevice::Memory(_) => "memory",
        }
    }
}

/// Bytes of each of `count` regions cut from a device of `total` bytes: `bytes`, or (0) an equal share
/// rounded down to 4 KiB; refused when they do not fit.
pub(crate) fn region_bytes(total: usize, count: usize, bytes: usize) -> Result<usize, Error> {
    let each = if bytes == 0 {
        total / count.max(1) / 4096 * 4096
    } else {
        bytes
    };
    if each == 0 || each.checked_mul(count).is_none_or(|t| t > total) {
        return Err(Error::DurableLog(format!(
            "{count} regions of {each} bytes do not fit in a device of {total} bytes"
        )));
    }
    Ok(each)
}

/// Cuts `dev` into `count` regions of `bytes` each (0: equal shares of the whole device, rounded down
/// to 4 KiB); None per shard when there is no durable log.
pub(crate) fn regions<F: DeviceFactory>(
    dev: &DurableLogDevice,
    bytes: usize,
    count: usize,
    factory: &F,
) -> Result<Vec<Option<Box<dyn PersistentMemory>>>, Error> {
    let boxed: Vec<Box<dyn PersistentMemory>> = match dev {
        DurableLogDevice::None => return Ok((0..count).map(|_| None).collect()),
        DurableLogDevice::Memory(img) => {
            let each = region_bytes(img.len(), count, bytes)?;
            (0..count)
                .map(|i| Box::new(img.region(i * each, each)) as Box<dyn PersistentMemory>)
                .collect()
        }
        DurableLogDevice::Pmr => factory.persistent_memory(count, bytes)?.ok_or_else(|| {
            Error::DurableLog("the device has no Persistent Memory Region".into())
        })?,
        DurableLogDevice::Pmem(path) => crate::pmem::open_mapped(path, count, bytes)?,
    };
    Ok(boxed.into_iter().map(Some).collect())
}
