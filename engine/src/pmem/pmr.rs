//! A slice of an NVMe controller's Persistent Memory Region as one shard's persistent memory: the
//! driver's [`nvme_driver::PmrSlice`] (stores into BAR memory through VFIO, and the write barrier the
//! controller advertises in PMRCAP.PMRWBM) behind the engine's trait.

use super::{PersistentMemory, PmemError};

/// One shard's slice of the PMR.
#[derive(Debug)]
pub struct PmrPmem(pub nvme_driver::PmrSlice);

impl PersistentMemory for PmrPmem {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        self.0.write(off, data)
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        self.0.read(off, out)
    }
    fn barrier(&mut self) -> Result<(), PmemError> {
        self.0.barrier().map_err(|e| {
            if e.is_gone() {
                PmemError::Gone
            } else {
                PmemError::Device(e.to_string())
            }
        })
    }
    fn kind(&self) -> &'static str {
        "pmr"
    }
}
