//! The admin queue: one command at a time (or a batch of Aborts) under the controller's mutex, and the
//! bring-up steps of the spec (disable, program the admin queue, enable, Number of Queues, Doorbell Buffer
//! Config).

use crate::dma::{DmaBuf, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::health::{csts_health, Csts, DeathCause};
use crate::mmio::{Bar, Doorbell};
use crate::queue::ShadowSlots;
use crate::spec::{admin, cc, csts, feature, reg, Cap, CompletionEntry, SubmissionEntry};
use crate::status::NvmeStatus;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

pub(super) struct AdminQueue {
    pub(super) sq: DmaBuf,
    pub(super) cq: DmaBuf,
    pub(super) entries: u16,
    pub(super) tail: u16,
    pub(super) head: u16,
    pub(super) phase: u16,
    pub(super) next_cid: u16,
    pub(super) sq_db: Doorbell,
    pub(super) cq_db: Doorbell,
    /// The admin queue's shadow slots once Doorbell Buffer Config is done: the tail and head are written there
    /// too (always with the MMIO write as well), so a controller that reads the admin queue's doorbells from
    /// the shadow page sees the same values as one that does not.
    pub(super) shadow: Option<ShadowSlots>,
    /// One page for Identify data and other admin payloads.
    pub(super) data: DmaBuf,
}

// SAFETY: the shadow slots point into the Doorbell Buffer pages owned by the same Shared; the admin queue is
// used under its mutex only.
unsafe impl Send for AdminQueue {}

pub(super) fn wait_ready(addr: &str, bar: &Bar, cap: Cap, ready: bool) -> Result<()> {
    let ms = cap.timeout_ms();
    let deadline = Instant::now() + Duration::from_millis(ms);
    loop {
        let s = bar.read32(reg::CSTS);
        match csts_health(s) {
            Csts::Gone => {
                return Err(Error::ControllerDead {
                    addr: addr.into(),
                    cause: DeathCause::AllOnes,
                })
            }
            Csts::Fatal if ready => return Err(Error::ControllerFatal { addr: addr.into() }),
            _ => {}
        }
        if (s & csts::RDY != 0) == ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let what = if ready {
                "become ready (CSTS.RDY=1)"
            } else {
                "disable (CSTS.RDY=0)"
            };
            return Err(Error::Timeout {
                addr: addr.into(),
                what,
                ms,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Disables the controller, programs the admin queues, enables it (NVMe Base spec 3.5.1).
pub(super) fn enable(addr: &str, bar: &Bar, cap: Cap, aq: &mut AdminQueue) -> Result<()> {
    let c = bar.read32(reg::CC);
    if c & cc::EN != 0 {
        bar.write32(reg::CC, c & !cc::EN);
    }
    wait_ready(addr, bar, cap, false)?;
    aq.shadow = None;
    aq.sq.fill(0);
    aq.cq.fill(0);
    aq.tail = 0;
    aq.head = 0;
    aq.phase = 1;
    let n = aq.entries as u32 - 1;
    bar.write32(reg::AQA, n << 16 | n);
    bar.write64(reg::ASQ, aq.sq.iova());
    bar.write64(reg::ACQ, aq.cq.iova());
    bar.write32(reg::INTMS, u32::MAX);
    let mps = (PAGE_SIZE.trailing_zeros() - 12) << cc::MPS_SHIFT;
    bar.write32(
        reg::CC,
        cc::EN | cc::CSS_NVM | mps | cc::AMS_RR | cc::IOSQES_64 | cc::IOCQES_16,
    );
    wait_ready(addr, bar, cap, true)
}

pub(super) fn set_queue_count(
    addr: &str,
    bar: &Bar,
    aq: &mut AdminQueue,
    want: u16,
    t: Duration,
) -> Result<u16> {
    let want = want.clamp(1, 0xfffe) as u32 - 1;
    let mut e = SubmissionEntry::new(admin::SET_FEATURES, 0, 0);
    e.cdw10 = feature::NUMBER_OF_QUEUES;
    e.cdw11 = want | want << 16;
    let dw0 = aq.exec(addr, bar, "Set Features (Number of Queues)", e, t)?;
    let nsqa = (dw0 & 0xffff) as u16;
    let ncqa = (dw0 >> 16) as u16;
    Ok(nsqa.min(ncqa).saturating_add(1))
}

pub(super) fn config_dbbuf(
    addr: &str,
    bar: &Bar,
    aq: &mut AdminQueue,
    pages: &(DmaBuf, DmaBuf),
    t: Duration,
) -> Result<()> {
    let mut e = SubmissionEntry::new(admin::DOORBELL_BUFFER_CONFIG, 0, 0);
    e.prp1 = pages.0.iova();
    e.prp2 = pages.1.iova();
    aq.exec(addr, bar, "Doorbell Buffer Config", e, t)
        .map(|_| ())
}

/// The shadow doorbell and EventIdx slots of queue `qid` in the Doorbell Buffer pages: slot `2 * qid` (SQ tail)
/// and `2 * qid + 1` (CQ head), each `4 << CAP.DSTRD` bytes apart, as the doorbell registers are.
pub(super) fn shadow_slots_of(pages: &(DmaBuf, DmaBuf), cap: Cap, qid: u16) -> Option<ShadowSlots> {
    let (db, ei) = pages;
    let stride = cap.doorbell_stride();
    let sq = 2 * qid as usize * stride;
    let cq = (2 * qid as usize + 1) * stride;
    if cq + 4 > PAGE_SIZE {
        return None;
    }
    // SAFETY: offsets checked to lie inside the two PAGE_SIZE pages, which live as long as Shared.
    unsafe {
        Some(ShadowSlots {
            sq_db: db.as_ptr().add(sq) as *mut u32,
            sq_ei: ei.as_ptr().add(sq) as *mut u32,
            cq_db: db.as_ptr().add(cq) as *mut u32,
            cq_ei: ei.as_ptr().add(cq) as *mut u32,
        })
    }
}

impl AdminQueue {
    /// Runs one admin command to completion and returns DW0 of its completion. Data-in commands use the
    /// queue's data page as PRP1 unless the entry already has one.
    pub(super) fn exec(
        &mut self,
        addr: &str,
        bar: &Bar,
        command: &'static str,
        mut e: SubmissionEntry,
        t: Duration,
    ) -> Result<u32> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        e.cdw0 = (e.cdw0 & 0xffff) | (cid as u32) << 16;
        if e.prp1 == 0
            && matches!(
                e.opcode(),
                admin::IDENTIFY | admin::GET_LOG_PAGE | admin::GET_FEATURES
            )
        {
            self.data.fill(0);
            e.prp1 = self.data.iova();
        }
        // SAFETY: tail < entries: the slot is inside the admin SQ; one command is outstanding at a time.
        unsafe {
            (self.sq.as_mut_ptr() as *mut SubmissionEntry)
                .add(self.tail as usize)
                .write(e)
        };
        self.tail = (self.tail + 1) % self.entries;
        fence(Ordering::Release);
        if let Some(s) = self.shadow {
            // SAFETY: the slots point into the live Doorbell Buffer pages (see the field).
            unsafe { s.sq_db.write_volatile(self.tail as u32) };
            fence(Ordering::SeqCst);
        }
        self.sq_db.write(self.tail as u32);
        let deadline = Instant::now() + t;
        loop {
            // SAFETY: head < entries: inside the admin CQ ring written by the controller.
            let p = unsafe { (self.cq.as_ptr() as *const CompletionEntry).add(self.head as usize) };
            // SAFETY: aligned field of a live entry, written by DMA.
            let status = unsafe { core::ptr::addr_of!((*p).status).read_volatile() };
            if status & 1 == self.phase {
                fence(Ordering::Acquire);
                // SAFETY: as above; the phase tag says the entry is complete.
                let c = unsafe { p.read_volatile() };
                self.head = (self.head + 1) % self.entries;
                if self.head == 0 {
                    self.phase ^= 1;
                }
                if let Some(s) = self.shadow {
                    // SAFETY: as for the SQ tail above.
                    unsafe { s.cq_db.write_volatile(self.head as u32) };
                    fence(Ordering::SeqCst);
                }
                self.cq_db.write(self.head as u32);
                if c.cid != cid {
                    continue; // a late completion of an earlier command that timed out
                }
                return match NvmeStatus::from_completion(c.status) {
                    None => Ok(c.dw0),
                    Some(status) => Err(Error::Command {
                        addr: addr.into(),
                        command,
                        status,
                    }),
                };
            }
            match csts_health(bar.read32(reg::CSTS)) {
                Csts::Gone => {
                    return Err(Error::ControllerDead {
                        addr: addr.into(),
                        cause: DeathCause::AllOnes,
                    })
                }
                Csts::Fatal => return Err(Error::ControllerFatal { addr: addr.into() }),
                Csts::Ok => {}
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    addr: addr.into(),
                    what: command,
                    ms: t.as_millis() as u64,
                });
            }
            std::hint::spin_loop();
        }
    }

    /// Sends `entries` (commands without data, such as Abort) together, then waits until all have completed or
    /// `t` has passed; returns how many completed successfully by then. One wait for all: a batch of aborts
    /// costs one timeout, not one each.
    pub(super) fn exec_batch(
        &mut self,
        addr: &str,
        bar: &Bar,
        entries: &[SubmissionEntry],
        t: Duration,
    ) -> Result<usize> {
        assert!(
            entries.len() < self.entries as usize,
            "admin batch larger than the admin SQ"
        );
        let first = self.next_cid;
        for e in entries {
            let mut e = *e;
            e.cdw0 = (e.cdw0 & 0xffff) | (self.next_cid as u32) << 16;
            self.next_cid = self.next_cid.wrapping_add(1);
            // SAFETY: tail < entries: the slot is inside the admin SQ; no other command is outstanding (the
            // admin lock is held and exec waits for its own), and the batch is smaller than the queue.
            unsafe {
                (self.sq.as_mut_ptr() as *mut SubmissionEntry)
                    .add(self.tail as usize)
                    .write(e)
            };
            self.tail = (self.tail + 1) % self.entries;
        }
        fence(Ordering::Release);
        if let Some(s) = self.shadow {
            // SAFETY: the slots point into the live Doorbell Buffer pages (see the field).
            unsafe { s.sq_db.write_volatile(self.tail as u32) };
            fence(Ordering::SeqCst);
        }
        self.sq_db.write(self.tail as u32);
        let deadline = Instant::now() + t;
        let (mut done, mut ok) = (0usize, 0usize);
        while done < entries.len() {
            // SAFETY: head < entries: inside the admin CQ ring written by the controller.
            let p = unsafe { (self.cq.as_ptr() as *const CompletionEntry).add(self.head as usize) };
            // SAFETY: aligned field of a live entry, written by DMA.
            let status = unsafe { core::ptr::addr_of!((*p).status).read_volatile() };
            if status & 1 == self.phase {
                fence(Ordering::Acquire);
                // SAFETY: as above; the phase tag says the entry is complete.
                let c = unsafe { p.read_volatile() };
                self.head = (self.head + 1) % self.entries;
                if self.head == 0 {
                    self.phase ^= 1;
                }
                if let Some(s) = self.shadow {
                    // SAFETY: as for the SQ tail above.
                    unsafe { s.cq_db.write_volatile(self.head as u32) };
                    fence(Ordering::SeqCst);
                }
                self.cq_db.write(self.head as u32);
                if c.cid.wrapping_sub(first) < entries.len() as u16 {
                    done += 1;
                    ok += NvmeStatus::from_completion(c.status).is_none() as usize;
                }
                continue;
            }
            match csts_health(bar.read32(reg::CSTS)) {
                Csts::Gone => {
                    return Err(Error::ControllerDead {
                        addr: addr.into(),
                        cause: DeathCause::AllOnes,
                    })
                }
                Csts::Fatal => return Err(Error::ControllerFatal { addr: addr.into() }),
                Csts::Ok => {}
            }
            if Instant::now() > deadline {
                break;
            }
            std::hint::spin_loop();
        }
        Ok(ok)
    }
}
