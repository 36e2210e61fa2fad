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

use crate::dma::DmaBuf;
use crate::dma::{Iommu, PAGE_SIZE};
use crate::health::{csts_health, Csts, DeathCause, Health};
use crate::mmio::Bar;
use crate::namespace::Namespace;
use crate::queue::{QueueConfig, QueueOwner, QueuePair, QueueParts, ShadowSlots};
use crate::spec::{nvm, reg, CompletionEntry, DsmRange, SubmissionEntry};
use std::sync::atomic::{fence, Ordering};
use std::sync::atomic::{AtomicBool, AtomicU64};
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

/// How the loopback controller fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopbackFault {
    /// Stops executing commands and answering admin requests; registers still read normally.
    StopAnswering,
    /// Every register reads all ones (a removed device or a dead link); nothing is executed.
    AllOnes,
    /// CSTS.CFS is set and nothing is executed; a reset does not clear it.
    Fatal,
}

/// The owner of supervised loopback queue pairs: the controller side of aborts, queue re-creation, resets and
/// health checks.
#[derive(Debug)]
pub struct LoopbackOwner {
    bar: Arc<Bar>,
    health: Health,
    answering: AtomicBool,
    created: AtomicU64,
    /// Abort commands this owner was asked for (whether or not it answered them).
    pub aborts_asked: AtomicU64,
}

impl QueueOwner for LoopbackOwner {
    fn generation(&self) -> &AtomicU64 {
        self.health.generation()
    }
    fn shadow_slots(&self, _qid: u16) -> Option<ShadowSlots> {
        None
    }
    fn create_queues(&self, qid: u16, _sq: u64, _sqe: u16, _cq: u64, _cqe: u16) -> bool {
        let ok = self.answering.load(Ordering::Acquire);
        if ok {
            // A new queue's doorbells are 0, as on a controller.
            self.bar.write32(reg::DOORBELLS + 8 * qid as usize, 0);
            self.bar.write32(reg::DOORBELLS + 8 * qid as usize + 4, 0);
            self.created.fetch_add(1, Ordering::AcqRel);
        }
        ok
    }
    fn delete_queues(&self, _qid: u16, _quick: bool) -> bool {
        self.answering.load(Ordering::Acquire)
    }
    fn abort_many(&self, _qid: u16, cids: &[u16]) -> usize {
        self.aborts_asked
            .fetch_add(cids.len() as u64, Ordering::AcqRel);
        if self.answering.load(Ordering::Acquire) {
            cids.len()
        } else {
            0
        }
    }
    fn reset(&self, seen: u64) -> bool {
        if self.health.generation().load(Ordering::Acquire) != seen {
            return true;
        }
        if self.answering.load(Ordering::Acquire) {
            self.health.bump();
            true
        } else {
            self.health.mark_dead(DeathCause::ResetFailed);
            false
        }
    }
    fn release_qid(&self, _qid: u16) {}
    fn check_health(&self) -> bool {
        if self.health.dead().is_some() {
            return false;
        }
        match csts_health(self.bar.read32(reg::CSTS)) {
            Csts::Ok => true,
            Csts::Gone => {
                self.health.mark_dead(DeathCause::AllOnes);
                false
            }
            Csts::Fatal => {
                // A reset does not clear this loopback's fatal status.
                self.health.mark_dead(DeathCause::Fatal);
                false
            }
        }
    }
    fn quarantine(&self, buf: DmaBuf) {
        self.health.quarantine(buf);
    }
}

impl LoopbackOwner {
    /// Why the controller was declared dead, if it was.
    pub fn dead(&self) -> Option<DeathCause> {
        self.health.dead()
    }
    /// Buffers quarantined so far.
    pub fn quarantined(&self) -> usize {
        self.health.quarantined()
    }
    /// Resets seen so far.
    pub fn resets(&self) -> u64 {
        self.health.resets()
    }
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
mod tests {
    use super::*;
    use crate::dma::DmaBuf;
    use crate::error::{IoError, SubmitErrorKind};
    use crate::queue::Completion;

    fn run_until_done(lb: &mut Loopback, qp: &mut QueuePair, want: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            qp.ring();
            lb.step();
            qp.poll(usize::MAX, |c| out.push(c));
            if out.len() >= want {
                return out;
            }
        }
        panic!("only {} of {want} requests completed", out.len());
    }

    #[test]
    fn prp_lists_and_mdts_splits_move_the_right_bytes() {
        let mut lb = Loopback::new(4096, 512, true, 32 << 10).expect("loopback");
        let ns = lb.namespace();
        let mut qp = lb
            .queue_pair(QueueConfig {
                sq_entries: 64,
                cq_entries: 128,
                ..Default::default()
            })
            .expect("qp");
        let mut seed = 1u32;
        for (i, &len) in [512usize, 4096, 8192, 12288, 32 << 10, 100 << 10, 513 * 512]
            .iter()
            .enumerate()
        {
            for off in [0usize, 4, 512, 4092] {
                let mut w = lb.dma().alloc(len + 8192).expect("alloc");
                for b in w[off..off + len].iter_mut() {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    *b = (seed >> 16) as u8;
                }
                let slba = (i as u64 * 300) % (4096 - 300);
                qp.write(&ns, slba, w, off..off + len, 1).expect("write");
                let w = run_until_done(&mut lb, &mut qp, 1)
                    .pop()
                    .expect("c")
                    .buf
                    .expect("buf");
                let r = lb.dma().alloc(len + 8192).expect("alloc");
                qp.read(&ns, slba, r, 4..4 + len, 2).expect("read");
                let c = run_until_done(&mut lb, &mut qp, 1).pop().expect("c");
                assert!(c.result.is_ok());
                let r = c.buf.expect("buf");
                assert!(r[4..4 + len] == w[off..off + len], "len {len} offset {off}");
            }
        }
        assert!(
            qp.stats().commands > qp.stats().requests,
            "large requests were split"
        );
    }

    #[test]
    fn rings_wrap_many_times_and_cq_head_is_reported_often_enough() {
        for (sq, cq) in [(2u16, 2u16), (33, 33), (33, 132), (1024, 2048)] {
            let mut lb = Loopback::new(1 << 16, 4096, false, 128 << 10).expect("loopback");
            let ns = lb.namespace();
            let mut qp = lb
                .queue_pair(QueueConfig {
                    sq_entries: sq,
                    cq_entries: cq,
                    ..Default::default()
                })
                .expect("qp");
            let mut free: Vec<DmaBuf> = (0..qp.max_outstanding())
                .map(|_| lb.dma().alloc(4096).expect("alloc"))
                .collect();
            let total = 20 * cq as u64 + 100;
            let (mut submitted, mut completed) = (0u64, 0u64);
            let mut spins = 0;
            while completed < total {
                while submitted < total {
                    let Some(b) = free.pop() else { break };
                    match qp.read(&ns, submitted % 1000, b, 0..4096, submitted) {
                        Ok(()) => submitted += 1,
                        Err(e) => {
                            assert_eq!(e.kind, SubmitErrorKind::Busy);
                            free.push(e.buf.expect("buffer back"));
                            break;
                        }
                    }
                }
                qp.ring();
                lb.step();
                qp.poll(usize::MAX, |c| {
                    assert!(c.result.is_ok());
                    completed += 1;
                    free.push(c.buf.expect("buf"));
                });
                spins += 1;
                assert!(
                    spins < 10_000_000,
                    "stalled at {completed}/{total} with sq {sq} cq {cq}"
                );
            }
            let s = qp.stats();
            // CQ head writes: about one per (cq - sq) completions (one per completion when cq == sq).
            let expect = total / (cq - sq).max(1) as u64;
            assert!(s.cq_doorbell_writes <= expect + 1, "sq {sq} cq {cq}: {s:?}");
        }
    }

    #[test]
    fn borrowed_buffers_round_trip_and_counters_add_up() {
        let mut lb = Loopback::new(1 << 12, 4096, true, 8 << 10).expect("loopback");
        let ns = lb.namespace();
        let mut qp = lb
            .queue_pair(QueueConfig {
                sq_entries: 9,
                cq_entries: 20,
                ..Default::default()
            })
            .expect("qp");
        let depth = qp.max_outstanding();
        // Each slot writes its pattern (16 KiB: split in two at the 8 KiB transfer limit), then reads it back.
        let mut bufs: Vec<DmaBuf> = (0..depth)
            .map(|_| lb.dma().alloc(16 << 10).expect("alloc"))
            .collect();
        let total = 40 * depth as u64;
        let mut next_lba = 0u64;
        let mut lba_of = vec![0u64; depth];
        let mut free: Vec<usize> = (0..depth).collect();
        let (mut submitted, mut verified) = (0u64, 0u64);
        let mut reading = vec![false; depth];
        let mut spins = 0u32;
        while verified < total {
            while submitted < total {
                let Some(&i) = free.last() else { break };
                bufs[i].fill((submitted % 251) as u8);
                lba_of[i] = next_lba % 4000;
                next_lba += 4;
                // SAFETY: slot i is not touched until its completion (tag i) comes back.
                let r =
                    unsafe { qp.write_borrowed(&ns, lba_of[i], &bufs[i], 0..16 << 10, i as u64) };
                match r {
                    Ok(()) => {
                        free.pop();
                        submitted += 1;
                    }
                    Err(k) => {
                        assert_eq!(k, SubmitErrorKind::Busy);
                        break;
                    }
                }
            }
            qp.ring();
            lb.step();
            let mut done = Vec::new();
            qp.poll(usize::MAX, |c| {
                assert!(c.result.is_ok() && c.buf.is_none());
                done.push(c.tag as usize);
            });
            for i in done {
                if reading[i] {
                    let want = bufs[i][0];
                    let bad: Vec<usize> =
                        (0..bufs[i].len()).filter(|&j| bufs[i][j] != want).collect();
                    assert!(
                        bad.is_empty(),
                        "slot {i} lba {} want {want}: {} bad from {:?} to {:?}",
                        lba_of[i],
                        bad.len(),
                        bad.first(),
                        bad.last()
                    );
                    reading[i] = false;
                    verified += 1;
                    free.push(i);
                } else {
                    let want = bufs[i][0];
                    bufs[i].fill(!want);
                    bufs[i][0] = want; // the read must restore every other byte
                                       // SAFETY: as above.
                    unsafe { qp.read_borrowed(&ns, lba_of[i], &bufs[i], 0..16 << 10, i as u64) }
                        .expect("room: the write's slot is free");
                    reading[i] = true;
                }
            }
            spins += 1;
            assert!(spins < 1_000_000, "stalled at {verified}/{total}");
        }
        let s = qp.stats();
        assert_eq!(s.requests, 2 * total);
        assert_eq!(s.commands, 4 * total, "16 KiB requests split in two");
        assert_eq!(s.completions, s.commands);
        // Range checks still apply on the borrowed path.
        // SAFETY: rejected before anything is submitted.
        let e = unsafe { qp.read_borrowed(&ns, 0, &bufs[0], 0..(16 << 10) + 512, 1) };
        assert!(matches!(e, Err(SubmitErrorKind::OutsideBuffer { .. })));
    }

    #[test]
    fn device_errors_come_back_typed() {
        let mut lb = Loopback::new(100, 4096, true, 128 << 10).expect("loopback");
        let ns = lb.namespace();
        let mut qp = lb.queue_pair(QueueConfig::default()).expect("qp");
        let b = lb.dma().alloc(8192).expect("alloc");
        qp.read(&ns, 99, b, 0..8192, 5).expect("submit");
        let c = run_until_done(&mut lb, &mut qp, 1).pop().expect("c");
        let s = c
            .result
            .expect_err("past the end")
            .status()
            .expect("status");
        assert!(s.is(crate::status::sc::LBA_OUT_OF_RANGE), "{s}");
        assert_eq!(c.tag, 5);
        // Write zeroes and deallocate clear data.
        let mut w = lb.dma().alloc(4096).expect("alloc");
        w.fill(7);
        qp.write(&ns, 3, w, 0..4096, 1).expect("write");
        run_until_done(&mut lb, &mut qp, 1);
        qp.deallocate(&ns, 3, 1, 2).expect("dsm");
        assert!(run_until_done(&mut lb, &mut qp, 1)[0].result.is_ok());
        let r = lb.dma().alloc(4096).expect("alloc");
        qp.read(&ns, 3, r, 0..4096, 3).expect("read");
        let r = run_until_done(&mut lb, &mut qp, 1)
            .pop()
            .expect("c")
            .buf
            .expect("buf");
        assert!(r.iter().all(|&x| x == 0));
    }

    /// Polls (stepping the loopback) until `want` completions came back; bounded by a deadline (a failure,
    /// not a timing assertion).
    fn poll_until(lb: &mut Loopback, qp: &mut QueuePair, want: usize) -> Vec<Completion> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut out = Vec::new();
        while out.len() < want {
            lb.step();
            qp.poll(usize::MAX, |c| out.push(c));
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {want} completions: {qp:?}",
                out.len()
            );
        }
        out
    }

    fn short_timeout() -> QueueConfig {
        QueueConfig {
            sq_entries: 16,
            cq_entries: 64,
            io_timeout: std::time::Duration::from_millis(50),
        }
    }

    #[test]
    fn a_dead_controller_fails_every_command_typed_and_quarantines_its_buffers() {
        for fault in [
            LoopbackFault::AllOnes,
            LoopbackFault::Fatal,
            LoopbackFault::StopAnswering,
        ] {
            let mut lb = Loopback::new(1 << 12, 4096, true, 128 << 10).expect("loopback");
            let ns = lb.namespace();
            let mut qp = lb.supervised_queue_pair(short_timeout()).expect("qp");
            // Some I/O works first.
            for i in 0..4 {
                qp.read(&ns, i, lb.dma().alloc(4096).expect("alloc"), 0..4096, i)
                    .expect("submit");
            }
            assert!(poll_until(&mut lb, &mut qp, 4)
                .iter()
                .all(|c| c.result.is_ok()));
            // Then the controller dies with 10 requests in flight (some split in two).
            lb.fail(fault);
            for i in 0..10u64 {
                let len = if i % 3 == 0 { 256 << 10 } else { 4096 };
                qp.read(
                    &ns,
                    i * 64,
                    lb.dma().alloc(len).expect("alloc"),
                    0..len,
                    100 + i,
                )
                .expect("accepted: the queue pair has not noticed yet");
            }
            let done = poll_until(&mut lb, &mut qp, 10);
            for c in &done {
                assert_eq!(c.result, Err(IoError::ControllerDead), "{fault:?}: {c:?}");
                assert!(
                    c.buf.is_none(),
                    "{fault:?}: a dead command's buffer was handed back"
                );
            }
            let cause = lb.owner().dead().expect("declared dead");
            let want = match fault {
                LoopbackFault::AllOnes => DeathCause::AllOnes,
                LoopbackFault::Fatal => DeathCause::Fatal,
                LoopbackFault::StopAnswering => DeathCause::ResetFailed,
            };
            assert_eq!(cause, want);
            assert_eq!(lb.owner().quarantined(), 10, "{fault:?}");
            assert!(qp.is_dead());
            assert_eq!(qp.outstanding(), 0);
            // Never Busy: a dead queue pair says so, on every path.
            let b = lb.dma().alloc(4096).expect("alloc");
            let e = qp.read(&ns, 0, b, 0..4096, 1).expect_err("dead");
            assert_eq!(e.kind, SubmitErrorKind::ControllerDead);
            assert!(e.buf.is_some(), "a refused request's buffer comes back");
            // SAFETY: refused before anything is submitted.
            let e =
                unsafe { qp.read_borrowed(&ns, 0, &lb.dma().alloc(4096).expect("a"), 0..4096, 1) };
            assert_eq!(e, Err(SubmitErrorKind::ControllerDead));
            assert_eq!(
                qp.flush(&ns, 2).expect_err("dead").kind,
                SubmitErrorKind::ControllerDead
            );
            // Polls and drains return at once.
            assert_eq!(qp.poll(usize::MAX, |_| panic!("nothing is left")), 0);
            qp.drain(|_| panic!("nothing is left"));
            // Dropping it quarantines the rings (the device might still write them).
            drop(qp);
            assert_eq!(lb.owner().quarantined(), 13, "{fault:?}: rings quarantined");
        }
    }

    #[test]
    fn aborts_go_out_together_then_the_queue_pair_recovers_alone() {
        let mut lb = Loopback::new(1 << 12, 4096, true, 128 << 10).expect("loopback");
        let ns = lb.namespace();
        let mut qp = lb.supervised_queue_pair(short_timeout()).expect("qp");
        for i in 0..12u64 {
            qp.read(&ns, i, lb.dma().alloc(4096).expect("alloc"), 0..4096, i)
                .expect("submit");
        }
        // The controller answers admin commands but sits on these 12: no step, so no completion.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut done = Vec::new();
        while done.len() < 12 {
            qp.poll(usize::MAX, |c| done.push(c));
            assert!(std::time::Instant::now() < deadline, "stuck: {qp:?}");
        }
        assert_eq!(
            lb.owner().aborts_asked.load(Ordering::Acquire),
            12,
            "one abort per command, sent together"
        );
        for c in &done {
            assert_eq!(c.result, Err(IoError::Timeout));
            assert!(
                c.buf.is_some(),
                "the queues were deleted: buffers are safe to reuse"
            );
        }
        let s = qp.stats();
        assert_eq!((s.queue_resets, s.resets_seen), (1, 0), "{s:?}");
        assert_eq!(lb.owner().resets(), 0, "no controller reset");
        assert_eq!(lb.owner().quarantined(), 0);
        assert!(!qp.is_dead());
        // New I/O works on the re-created queues, data verified.
        let mut w = lb.dma().alloc(8192).expect("alloc");
        w.fill(0x3c);
        qp.write(&ns, 7, w, 0..8192, 1).expect("write");
        assert!(poll_until(&mut lb, &mut qp, 1)[0].result.is_ok());
        qp.read(&ns, 7, lb.dma().alloc(8192).expect("alloc"), 0..8192, 2)
            .expect("read");
        let c = poll_until(&mut lb, &mut qp, 1).pop().expect("c");
        assert!(c.result.is_ok());
        assert!(c.buf.expect("buf").iter().all(|&b| b == 0x3c));
    }

    #[test]
    fn drain_and_drop_are_bounded_on_a_dead_controller() {
        let mut lb = Loopback::new(1 << 12, 4096, false, 128 << 10).expect("loopback");
        let ns = lb.namespace();
        let mut qp = lb.supervised_queue_pair(short_timeout()).expect("qp");
        for i in 0..15u64 {
            qp.read(&ns, i, lb.dma().alloc(4096).expect("alloc"), 0..4096, i)
                .expect("submit");
        }
        lb.fail(LoopbackFault::StopAnswering);
        let mut results = Vec::new();
        qp.drain(|c| results.push(c.result));
        assert_eq!(results.len(), 15);
        assert!(results.iter().all(|r| *r == Err(IoError::ControllerDead)));
        // A queue pair dropped with commands in flight on a dead controller quarantines them and its rings.
        let mut qp2 = lb.supervised_queue_pair(short_timeout()).expect("qp");
        let before = lb.owner().quarantined();
        for i in 0..3u64 {
            qp2.read(&ns, i, lb.dma().alloc(4096).expect("alloc"), 0..4096, i)
                .expect("submit");
        }
        drop(qp2);
        assert_eq!(lb.owner().quarantined(), before + 3 + 3);
    }
}
