//! A namespace as the I/O path sees it: size, block size, and the optional commands it takes.

use crate::spec::{IdentifyController, IdentifyNamespace, ONCS_DSM, ONCS_WRITE_ZEROES};

/// An active namespace of a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    pub nsid: u32,
    /// Size in logical blocks (NSZE).
    pub blocks: u64,
    /// Capacity in logical blocks (NCAP).
    pub capacity: u64,
    /// Logical block size in bytes.
    pub lba_size: u32,
    pub lba_shift: u32,
    /// Metadata bytes per block (0 for the formats this driver uses).
    pub metadata_size: u16,
    pub write_zeroes: bool,
    /// Dataset Management with the Deallocate attribute.
    pub deallocate: bool,
    /// The controller has a volatile write cache: data is durable only after Flush.
    pub volatile_write_cache: bool,
    /// Atomic write unit (power fail), in logical blocks.
    pub atomic_write_blocks: u32,
}

impl Namespace {
    pub(crate) fn from_identify(
        nsid: u32,
        ns: &IdentifyNamespace,
        ctrl: &IdentifyController,
    ) -> Self {
        let f = ns.lba_format();
        let lba_shift = f.lbads as u32;
        // NSFEAT bit 1: the namespace's own atomicity fields are valid.
        let awupf = if ns.nsfeat & 2 != 0 {
            ns.nawupf
        } else {
            ctrl.awupf
        };
        Self {
            nsid,
            blocks: ns.nsze,
            capacity: ns.ncap,
            lba_size: 1 << lba_shift,
            lba_shift,
            metadata_size: f.ms,
            write_zeroes: ctrl.oncs & ONCS_WRITE_ZEROES != 0,
            deallocate: ctrl.oncs & ONCS_DSM != 0,
            volatile_write_cache: ctrl.vwc & 1 != 0,
            atomic_write_blocks: awupf as u32 + 1,
        }
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks << self.lba_shift
    }
}
