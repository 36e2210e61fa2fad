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
//! Test support only (feature `loopback`): never on the product's I/O path.

use crate::dma::{Iommu, PAGE_SIZE};
use crate::mmio::Bar;
use crate::namespace::Namespace;
use crate::queue::{QueueConfig, QueuePair, QueueParts};
use crate::spec::{nvm, reg, CompletionEntry, DsmRange, SubmissionEntry};
use std::sync::atomic::{fence, Ordering};
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
        Ok(Self {
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
    use crate::error::SubmitErrorKind;
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
}
