//! The block-device layer the engine writes to: one instance per shard, asynchronous submit + poll.
//!
//! The shape follows SPDK's bdev and, one to one, the nvme-driver's queue pair: buffers are owned values
//! passed into a submit call and handed back in the completion, so no borrow crosses the device; a full
//! queue refuses a request with [`SubmitError::Busy`] and gives the buffer back.
//!
//! LBAs are absolute on the device; a shard adds the base of its slice itself.

use std::ops::DerefMut;

pub mod aligned;
pub mod fault;
pub mod file;
pub mod memory;
pub mod nvme;
pub mod recording;

pub use aligned::AlignedBuf;
pub use fault::{
    FaultBdev, FaultConfig, FaultCounters, FaultDisk, FaultFactory, SimHang, SplitMix64,
};
pub use file::{FileBdev, FileDisk};
pub use memory::{MemBdev, MemDisk};
pub use nvme::{NvmeBdev, NvmeFactory};
pub use recording::{Recorder, RecordingBdev, RecordingFactory, WriteEvent};

/// Why a device refused to take a request. The request was not queued.
#[derive(Debug)]
pub enum SubmitError<B> {
    /// The submission queue is full: poll and try again. The buffer (if any) is handed back.
    Busy(Option<B>),
    /// The request can never succeed (out of range, misaligned buffer, ...). The buffer is handed back.
    Invalid(Option<B>, &'static str),
    /// The device is dead or was removed: nothing will be taken again. The buffer is handed back.
    Gone(Option<B>),
}

impl<B> SubmitError<B> {
    /// Takes the buffer back out of the error.
    pub fn into_buf(self) -> Option<B> {
        match self {
            SubmitError::Busy(b) | SubmitError::Invalid(b, _) | SubmitError::Gone(b) => b,
        }
    }
}

/// Why a submitted request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The OS or the device reported an error (errno or NVMe status, as a number).
    #[error("device error {0}")]
    Device(i32),
    /// Fewer bytes were transferred than asked.
    #[error("short transfer: {0} bytes")]
    Short(usize),
    /// The device is dead or was removed (its controller failed, stopped answering or was
    /// hot-removed): this request and every later one fail.
    #[error("device dead or removed")]
    Gone,
}

/// One finished request.
#[derive(Debug)]
pub struct Completion<B> {
    /// The tag given at submission.
    pub tag: u64,
    /// The outcome.
    pub result: Result<(), IoError>,
    /// The buffer given at submission (None for flush, write-zeroes and deallocate).
    pub buf: Option<B>,
}

/// An asynchronous block device owned by one shard thread (hence `Send`, not `Sync`).
///
/// `nblocks` blocks are transferred between the device and `buf[buf_offset..buf_offset + nblocks * block_size]`.
/// Buffers must come from [`BlockDevice::alloc_buf`] (they are aligned as the device needs).
pub trait BlockDevice: Send {
    /// The owned I/O buffer type (DMA memory for NVMe, page-aligned heap memory otherwise).
    type Buf: DerefMut<Target = [u8]> + Send;

    /// Logical block size in bytes.
    fn block_size(&self) -> u32;
    /// Number of logical blocks.
    fn num_blocks(&self) -> u64;
    /// True when completed writes may still sit in a volatile cache until a Flush completes.
    fn has_volatile_cache(&self) -> bool;
    /// Allocates a zeroed buffer of at least `len` bytes (rounded up to whole blocks).
    fn alloc_buf(&mut self, len: usize) -> Result<Self::Buf, IoError>;

    /// Queues a read of `nblocks` blocks at `lba` into `buf[buf_offset..]`.
    fn submit_read(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: Self::Buf,
        buf_offset: usize,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>>;
    /// Queues a write of `nblocks` blocks at `lba` from `buf[buf_offset..]`.
    fn submit_write(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: Self::Buf,
        buf_offset: usize,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>>;
    /// Queues a Flush: when it completes, every write completed before it was submitted is durable.
    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError<Self::Buf>>;
    /// Queues Write Zeroes of `nblocks` at `lba`.
    fn submit_write_zeroes(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>>;
    /// Queues a Deallocate (trim) hint of `nblocks` at `lba`; the blocks read back unspecified afterwards.
    fn submit_deallocate(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>>;

    /// Reaps up to `max` completions, calling `f` for each; returns how many were reaped.
    fn poll(&mut self, max: usize, f: impl FnMut(Completion<Self::Buf>)) -> usize;
}

/// Creates the device instance of each shard (e.g. one NVMe queue pair per shard on one namespace).
pub trait DeviceFactory: Send + Sync {
    /// The per-shard device type.
    type Dev: BlockDevice + 'static;
    /// Opens the instance that shard `shard` will own; called on the shard's own thread.
    fn open(&self, shard: usize) -> Result<Self::Dev, IoError>;

    /// The device's own persistent memory (an NVMe controller's PMR) cut into `count` regions of
    /// `bytes` each (0: equal shares), for the durable log. None: the device has none.
    fn persistent_memory(
        &self,
        count: usize,
        bytes: usize,
    ) -> Result<Option<Vec<Box<dyn crate::pmem::PersistentMemory>>>, crate::Error> {
        let _ = (count, bytes);
        Ok(None)
    }
}

/// Why [`zero_all`] stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZeroError {
    /// The device refused the request (busy past the wait, invalid, or gone).
    #[error("write zeroes at block {lba} refused")]
    Refused { lba: u64 },
    /// The request failed.
    #[error("write zeroes at block {lba}: {source}")]
    Failed { lba: u64, source: IoError },
    /// No answer within the bound.
    #[error("write zeroes at block {lba} not answered within {after:?}")]
    Timeout {
        lba: u64,
        after: std::time::Duration,
    },
}

/// Writes zeroes over every block of `dev`, in pieces of 2^16 blocks, each waited for (at most
/// `each`), so that the engine formats it as a blank device: `nvkv format --force`, and tests that reuse a
/// device. Returns the number of blocks.
pub fn zero_all<D: BlockDevice>(dev: &mut D, each: std::time::Duration) -> Result<u64, ZeroError> {
    let total = dev.num_blocks();
    let mut lba = 0u64;
    while lba < total {
        let n = (total - lba).min(1 << 16) as u32;
        dev.submit_write_zeroes(lba, n, lba)
            .map_err(|_| ZeroError::Refused { lba })?;
        let mut done = None;
        let since = std::time::Instant::now();
        while done.is_none() {
            dev.poll(1, |c| done = Some(c.result));
            if done.is_none() && since.elapsed() > each {
                return Err(ZeroError::Timeout { lba, after: each });
            }
        }
        if let Some(Err(source)) = done {
            return Err(ZeroError::Failed { lba, source });
        }
        lba += u64::from(n);
    }
    Ok(total)
}

/// Checks a request against the device geometry and the buffer; shared by the backends.
pub(crate) fn check_range(
    num_blocks: u64,
    block_size: u32,
    lba: u64,
    nblocks: u32,
    buf_len: Option<(usize, usize)>,
) -> Result<(), &'static str> {
    let end = lba.checked_add(u64::from(nblocks)).ok_or("lba overflow")?;
    if end > num_blocks {
        return Err("beyond the end of the device");
    }
    if let Some((len, off)) = buf_len {
        let bytes = nblocks as usize * block_size as usize;
        if off.checked_add(bytes).is_none_or(|e| e > len) {
            return Err("buffer too small");
        }
    }
    Ok(())
}

/// Hands up to `max` completions already finished (kept in submission order) to `f`; returns how many.
pub(crate) fn drain_completed<B>(
    done: &mut std::collections::VecDeque<Completion<B>>,
    max: usize,
    mut f: impl FnMut(Completion<B>),
) -> usize {
    let mut n = 0;
    while n < max {
        let Some(c) = done.pop_front() else {
            break;
        };
        f(c);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_all_clears_every_block_in_pieces() {
        // More blocks than one piece of 2^16, so the loop runs more than once.
        let blocks = (1u64 << 16) + 5;
        let disk = MemDisk::new(512, blocks);
        disk.write_at(0, &[0xaa; 512]);
        let last = (blocks - 1) as usize * 512;
        disk.write_at(last, &[0x55; 512]);
        let mut dev = disk.bdev();
        assert_eq!(
            zero_all(&mut dev, std::time::Duration::from_secs(10)),
            Ok(blocks)
        );
        assert!(disk.image().iter().all(|&b| b == 0), "a byte survived");
    }
}
