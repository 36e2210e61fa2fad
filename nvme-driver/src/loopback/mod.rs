//! A loopback NVMe controller in ordinary memory: it consumes submission queue entries and posts completions
//! with the right phase tag, reading the doorbells the driver writes into a register window in RAM. The driver
//! sees it through the same `Bar` and `QueuePair` code it uses for a real BAR, so the driver's own cost per I/O
//! can be measured alone (nvkv-bench loopback) and queue logic can be tested on the host.
//!
//! With `data` on, it keeps the namespace's blocks in RAM and moves data through the PRPs the driver built, so
//! PRP lists, MDTS splitting and ring wrap-around are checked byte for byte. It honours the CQ head doorbell:
//! it never overwrites an entry the driver has not released, so a driver that under-reports its CQ head stalls
//! here as it would on hardware.
//!
//! It can be told to fail as hardware does ([`Loopback::fail`]): stop answering, read all ones, report a fatal
//! status. Queue pairs made with [`Loopback::supervised_queue_pair`] have an owner that answers the queue
//! pair's admin requests (aborts, recovery, reset, health) as a controller in that state would, so the dead-
//! controller paths of the queue pair are tested on the host.
//!
//! Test support only (feature `loopback`): never on the product's I/O path.

mod owner;

pub use owner::{LoopbackFault, LoopbackOwner};

use crate::dma::{Iommu, PAGE_SIZE};
use crate::health::Health;
use crate::mmio::Bar;
use crate::namespace::Namespace;
use crate::queue::{QueueConfig, QueuePair, QueueParts};
use crate::spec::{nvm, reg, CompletionEntry, DsmRange, SubmissionEntry};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Status Field values (SC << 1) the loopback returns.
const SC_INVALID_OPCODE: u16 = 0x01 << 1;
const SC_LBA_OUT_OF_RANGE: u16 = 0x80 << 1;

struct Queue {
    qid: u16,
    sq: *const SubmissionEntry,
    sq_entries: u16,
    sq_head: u16,
    cq: *mut CompletionEntry,
    cq_entries: u16,
    cq_tail: u16,
    phase: u16,
}

/// The loopback controller. It is `Send` but is meant to be stepped by the thread that owns its queue pairs
/// (inline) or by one dedicated thread.
pub struct Loopback {
    bar: Arc<Bar>,
    iommu: Arc<Iommu>,
    queues: Vec<Queue>,
    ns: Namespace,
    data: Option<Vec<u8>>,
    max_transfer: usize,
    /// Commands executed.
    pub commands: u64,
    owner: Arc<LoopbackOwner>,
    /// The owner's count of queue creations last seen by `step` (a change means the queues were re-created:
    /// start them from 0).
    created_seen: u64,
}

// SAFETY: the raw pointers point into the rings of queue pairs made from this loopback; stepping after such a
// queue pair was dropped would read freed memory, which is why `step` is only called by code that owns both.
unsafe impl Send for Loopback {}

impl std::fmt::Debug for Loopback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loopback")
            .field("queues", &self.queues.len())
            .field("commands", &self.commands)
            .finish()
    }
}

impl Loopback {
    /// A controller with one namespace of `blocks` blocks of `lba_size` bytes; `data` keeps the blocks in RAM.
    /// `max_transfer` plays the role of MDTS.
    pub fn new(blocks: u64, lba_size: u32, data: bool, max_transfer: usize) -> crate::Result<Self> {
        let iommu = Iommu::identity();
        let bar = Arc::new(
            Bar::from_memory(iommu.alloc(2 * PAGE_SIZE)?)
                .ok_or_else(|| crate::Error::InvalidArgument("null register window".into()))?,
        );
        let lba_shift = lba_size.trailing_zeros();
        let ns = Namespace {
            nsid: 1,
            blocks,
            capacity: blocks,
            lba_size,
            lba_shift,
            metadata_size: 0,
            write_zeroes: true,
            deallocate: true,
            volatile_write_cache: false,
            atomic_write_blocks: 1,
        };
        let data = data.then(|| vec![0u8; (blocks << lba_shift) as usize]);
        bar.write32(reg::CSTS, crate::spec::csts::RDY);
        let owner = Arc::new(LoopbackOwner {
            bar: bar.clone(),
            health: Health::default(),
            answering: AtomicBool::new(true),
            created: AtomicU64::new(0),
            aborts_asked: AtomicU64::new(0),
        });
        Ok(Self {
            owner,
            created_seen: 0,
            bar,
            iommu,
            queues: Vec::new(),
            ns,
            data,
            max_transfer,
            commands: 0,
        })
    }

    pub fn namespace(&self) -> Namespace {
        self.ns
    }

    /// The address space for I/O buffers (identity: the IOVA is the address).
    pub fn dma(&self) -> &Arc<Iommu> {
        &self.iommu
    }

    /// The owner of supervised queue pairs (health, resets, quarantine).
    pub fn owner(&self) -> &Arc<LoopbackOwner> {
        &self.owner
    }

    /// Makes the controller fail as `fault` says, from now on.
    pub fn fail(&mut self, fault: LoopbackFault) {
        self.owner.answering.store(false, Ordering::Release);
        match fault {
            LoopbackFault::StopAnswering => {}
            LoopbackFault::AllOnes => {
                for off in (0..self.bar.len()).step_by(4) {
                    self.bar.write32(off, u32::MAX);
                }
            }
            LoopbackFault::Fatal => {
                let c = self.bar.read32(reg::CSTS);
                self.bar.write32(reg::CSTS, c | crate::spec::csts::CFS);
            }
        }
    }

    /// Like [`Loopback::queue_pair`], with an owner that answers for the controller (see the module
    /// documentation): the queue pair notices stalls, recovers, and fails its commands when the controller dies.
    pub fn supervised_queue_pair(&mut self, config: QueueConfig) -> crate::Result<QueuePair> {
        let mut qp = self.queue_pair(config)?;
        qp.attach(self.owner.clone(), false);
        Ok(qp)
    }

    /// Creates queue pair `qid` (1, 2, ...). Keep it alive while this loopback is stepped.
    pub fn queue_pair(&mut self, config: QueueConfig) -> crate::Result<QueuePair> {
        let qid = self.queues.len() as u16 + 1;
        if (2 * qid as usize + 2) * 4 + reg::DOORBELLS > self.bar.len() {
            return Err(crate::Error::InvalidArgument(
                "too many loopback queues".into(),
            ));
        }
        let qp = QueuePair::allocate(QueueParts {
            qid,
            config,
            bar: self.bar.clone(),
            doorbell_stride: 4,
            iommu: self.iommu.clone(),
            max_transfer: self.max_transfer,
            owner: None,
            use_shadow: false,
        })?;
        self.queues.push(Queue {
            qid,
            sq: qp.sq_iova() as *const SubmissionEntry,
            sq_entries: qp.sq_entries(),
            sq_head: 0,
            cq: qp.cq_iova() as *mut CompletionEntry,
            cq_entries: qp.cq_entries(),
            cq_tail: 0,
            phase: 1,
        });
        Ok(qp)
    }

    fn doorbell(&self, n: usize) -> u32 {
        self.bar.read32(reg::DOORBELLS + n * 4)
    }

    /// Executes every submitted command of every queue (as far as CQ space allows); returns how many.
    #[inline(never)]
    pub fn step(&mut self) -> usize {
        if !self.owner.answering.load(Ordering::Acquire) {
            return 0;
        }
        let created = self.owner.created.load(Ordering::Acquire);
        if created != self.created_seen {
            // The queues were created again (after a recovery or a reset): they start empty.
            self.created_seen = created;
            for q in &mut self.queues {
                q.sq_head = 0;
                q.cq_tail = 0;
                q.phase = 1;
            }
        }
        let mut done = 0;
        for qi in 0..self.queues.len() {
            let (qid, tail, cq_head) = {
                let q = &self.queues[qi];
                (
                    q.qid as usize,
                    self.doorbell(2 * q.qid as usize) as u16,
                    self.doorbell(2 * q.qid as usize + 1) as u16,
                )
            };
            let _ = qid;
            fence(Ordering::Acquire);
            loop {
                let q = &self.queues[qi];
                if q.sq_head == tail || (q.cq_tail + 1) % q.cq_entries == cq_head {
                    break;
                }
                // SAFETY: sq_head < sq_entries: inside the driver's SQ ring, whose entries up to the doorbell's
                // tail were written before the doorbell (the Acquire fence pairs with the driver's Release).
                let e = unsafe { q.sq.add(q.sq_head as usize).read_volatile() };
                let status = self.execute(&e);
                let q = &mut self.queues[qi];
                q.sq_head = (q.sq_head + 1) % q.sq_entries;
                let c = CompletionEntry {
                    dw0: 0,
                    dw1: 0,
                    sq_head: q.sq_head,
                    sq_id: q.qid,
                    cid: e.cid(),
                    status: 0,
                };
                // SAFETY: cq_tail < cq_entries: inside the driver's CQ ring; the slot was released by the driver
                // (the CQ-full check above). The entry is written before its phase tag becomes visible.
                unsafe {
                    let slot = q.cq.add(q.cq_tail as usize);
                    slot.write_volatile(c);
                    fence(Ordering::Release);
                    core::ptr::addr_of_mut!((*slot).status).write_volatile(status | q.phase);
                }
                q.cq_tail += 1;
                if q.cq_tail == q.cq_entries {
                    q.cq_tail = 0;
                    q.phase ^= 1;
                }
                done += 1;
            }
        }
        self.commands += done as u64;
        done
    }

    fn execute(&mut self, e: &SubmissionEntry) -> u16 {
        let slba = e.cdw10 as u64 | (e.cdw11 as u64) << 32;
        let nlb = (e.cdw12 & 0xffff) as u64 + 1;
        match e.opcode() {
            nvm::FLUSH => 0,
            nvm::READ | nvm::WRITE | nvm::WRITE_ZEROES => {
                if slba + nlb > self.ns.blocks {
                    return SC_LBA_OUT_OF_RANGE;
                }
                let shift = self.ns.lba_shift;
                let Some(data) = self.data.as_mut() else {
                    return 0;
                };
                let start = (slba << shift) as usize;
                let len = (nlb << shift) as usize;
                match e.opcode() {
                    nvm::WRITE_ZEROES => data[start..start + len].fill(0),
                    op => {
                        let mut off = start;
                        for (addr, n) in prp_segments(e.prp1, e.prp2, len) {
                            // SAFETY: identity-mapped DMA memory of the driver under test: the PRPs describe
                            // `len` bytes of buffers it owns for the duration of the command.
                            let buf =
                                unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, n) };
                            if op == nvm::WRITE {
                                data[off..off + n].copy_from_slice(buf);
                            } else {
                                buf.copy_from_slice(&data[off..off + n]);
                            }
                            off += n;
                        }
                    }
                }
                0
            }
            nvm::DATASET_MANAGEMENT => {
                // SAFETY: PRP1 points to the driver's DSM range (16 bytes of identity-mapped DMA memory).
                let r = unsafe { (e.prp1 as *const DsmRange).read_unaligned() };
                if r.slba + r.nlb as u64 > self.ns.blocks {
                    return SC_LBA_OUT_OF_RANGE;
                }
                if let Some(d) = self.data.as_mut() {
                    let s = (r.slba << self.ns.lba_shift) as usize;
                    d[s..s + ((r.nlb as usize) << self.ns.lba_shift)].fill(0);
                }
                0
            }
            _ => SC_INVALID_OPCODE,
        }
    }
}

/// The (address, length) segments a PRP1/PRP2 pair describes for `len` bytes (PRP2 a page or a list).
fn prp_segments(prp1: u64, prp2: u64, len: usize) -> Vec<(u64, usize)> {
    let mut v = Vec::new();
    let first = (PAGE_SIZE - (prp1 as usize & (PAGE_SIZE - 1))).min(len);
    v.push((prp1, first));
    let mut rest = len - first;
    if rest == 0 {
        return v;
    }
    if rest <= PAGE_SIZE {
        v.push((prp2, rest));
        return v;
    }
    let list = prp2 as *const u64;
    let mut i = 0;
    while rest > 0 {
        // SAFETY: the driver's PRP list page (identity-mapped) holds one entry per remaining page.
        let page = unsafe { list.add(i).read() };
        let n = rest.min(PAGE_SIZE);
        v.push((page, n));
        rest -= n;
        i += 1;
    }
    v
}

#[cfg(test)]
mod tests;
