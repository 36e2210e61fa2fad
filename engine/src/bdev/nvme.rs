//! The product backend: one nvme-driver queue pair per shard on one namespace of a controller bound to
//! vfio-pci. Buffers are the driver's DMA buffers, so the write buffer goes to the device without a copy.

use super::{BlockDevice, Completion, DeviceFactory, IoError, SubmitError};
use nvme_driver::{Controller, DmaBuf, Namespace, QueueConfig, QueuePair, SubmitErrorKind};

/// NVMe statuses travel in `IoError::Device` as `NVME_STATUS_BASE | SCT << 8 | SC`, driver timeouts and
/// resets as negative errno values, so a caller can tell them apart.
pub const NVME_STATUS_BASE: i32 = 0x1_0000;

fn io_error(e: nvme_driver::IoError) -> IoError {
    match e {
        nvme_driver::IoError::Status(s) => {
            IoError::Device(NVME_STATUS_BASE | (s.sct as i32) << 8 | s.sc as i32)
        }
        nvme_driver::IoError::Timeout => IoError::Device(-libc::ETIMEDOUT),
        nvme_driver::IoError::ControllerReset => IoError::Device(-libc::EIO),
        nvme_driver::IoError::ControllerDead => IoError::Gone,
    }
}

fn submit_error(e: nvme_driver::SubmitError) -> SubmitError<DmaBuf> {
    let why = match e.kind {
        SubmitErrorKind::Busy => return SubmitError::Busy(e.buf),
        SubmitErrorKind::ControllerDead => return SubmitError::Gone(e.buf),
        SubmitErrorKind::ZeroLength => "zero-length request",
        SubmitErrorKind::NotBlockMultiple { .. } => "length is not a multiple of the block size",
        SubmitErrorKind::Misaligned { .. } => "buffer offset not dword aligned",
        SubmitErrorKind::OutsideBuffer { .. } => "range outside the buffer",
        SubmitErrorKind::TooLarge { .. } => "request larger than the queue can hold",
        SubmitErrorKind::Unsupported(what) => what,
    };
    SubmitError::Invalid(e.buf, why)
}

/// One shard's device: a queue pair on namespace `ns`.
#[derive(Debug)]
pub struct NvmeBdev {
    ctrl: Controller,
    ns: Namespace,
    qp: QueuePair,
}

impl NvmeBdev {
    /// The queue pair's counters (doorbell writes and so on).
    pub fn stats(&self) -> nvme_driver::QueueStats {
        self.qp.stats()
    }

    fn range(&self, nblocks: u32, buf_offset: usize) -> std::ops::Range<usize> {
        buf_offset..buf_offset + ((nblocks as usize) << self.ns.lba_shift)
    }
}

impl BlockDevice for NvmeBdev {
    type Buf = DmaBuf;

    fn block_size(&self) -> u32 {
        self.ns.lba_size
    }
    fn num_blocks(&self) -> u64 {
        self.ns.blocks
    }
    fn has_volatile_cache(&self) -> bool {
        self.ns.volatile_write_cache
    }
    fn alloc_buf(&mut self, len: usize) -> Result<DmaBuf, IoError> {
        let bs = self.ns.lba_size as usize;
        self.ctrl
            .alloc(len.max(1).div_ceil(bs) * bs)
            .map_err(|_| IoError::Device(-libc::ENOMEM))
    }
    fn submit_read(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: DmaBuf,
        buf_offset: usize,
        tag: u64,
    ) -> Result<(), SubmitError<DmaBuf>> {
        let r = self.range(nblocks, buf_offset);
        self.qp
            .read(&self.ns, lba, buf, r, tag)
            .map_err(submit_error)
    }
    fn submit_write(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: DmaBuf,
        buf_offset: usize,
        tag: u64,
    ) -> Result<(), SubmitError<DmaBuf>> {
        let r = self.range(nblocks, buf_offset);
        self.qp
            .write(&self.ns, lba, buf, r, tag)
            .map_err(submit_error)
    }
    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError<DmaBuf>> {
        self.qp.flush(&self.ns, tag).map_err(submit_error)
    }
    fn submit_write_zeroes(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<DmaBuf>> {
        self.qp
            .write_zeroes(&self.ns, lba, nblocks as u64, tag)
            .map_err(submit_error)
    }
    fn submit_deallocate(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<DmaBuf>> {
        self.qp
            .deallocate(&self.ns, lba, nblocks as u64, tag)
            .map_err(submit_error)
    }
    fn poll(&mut self, max: usize, mut f: impl FnMut(Completion<DmaBuf>)) -> usize {
        self.qp.poll(max, |c| {
            f(Completion {
                tag: c.tag,
                result: c.result.map_err(io_error),
                buf: c.buf,
            })
        })
    }
}

/// Opens one queue pair per shard on namespace `nsid` of `ctrl`.
#[derive(Debug, Clone)]
pub struct NvmeFactory {
    ctrl: Controller,
    ns: Namespace,
    config: QueueConfig,
}

impl NvmeFactory {
    /// Opens the controller at `addr` (bound to vfio-pci) and picks namespace `nsid`.
    pub fn open(addr: &str, nsid: u32) -> Result<Self, nvme_driver::Error> {
        let ctrl = Controller::open(addr)?;
        Self::new(ctrl, nsid)
    }

    /// On an already opened controller.
    pub fn new(ctrl: Controller, nsid: u32) -> Result<Self, nvme_driver::Error> {
        let ns = ctrl.namespace(nsid)?;
        Ok(Self {
            ctrl,
            ns,
            config: QueueConfig::default(),
        })
    }

    /// Queue sizes of the shards' queue pairs.
    pub fn with_queue_config(mut self, config: QueueConfig) -> Self {
        self.config = config;
        self
    }

    pub fn controller(&self) -> &Controller {
        &self.ctrl
    }
    pub fn namespace(&self) -> Namespace {
        self.ns
    }
}

impl DeviceFactory for NvmeFactory {
    type Dev = NvmeBdev;

    /// The controller's Persistent Memory Region, enabled and cut into one slice per shard.
    fn persistent_memory(
        &self,
        count: usize,
        bytes: usize,
    ) -> Result<Option<Vec<Box<dyn crate::pmem::PersistentMemory>>>, crate::Error> {
        let fail = |e: nvme_driver::PmrError| crate::Error::DurableLog(e.to_string());
        let Some(mut pmr) = self.ctrl.pmr().map_err(fail)? else {
            return Ok(None);
        };
        let slices = pmr.split(count, bytes).map_err(fail)?;
        Ok(Some(
            slices
                .into_iter()
                .map(|s| {
                    Box::new(crate::pmem::PmrPmem(s)) as Box<dyn crate::pmem::PersistentMemory>
                })
                .collect(),
        ))
    }

    fn open(&self, _shard: usize) -> Result<NvmeBdev, IoError> {
        let qp = self
            .ctrl
            .queue_pair_with(self.config)
            .map_err(|e| match e {
                nvme_driver::Error::NoQueues { .. } => IoError::Device(-libc::EBUSY),
                _ => IoError::Device(-libc::EIO),
            })?;
        Ok(NvmeBdev {
            ctrl: self.ctrl.clone(),
            ns: self.ns,
            qp,
        })
    }
}
