//! A controller's life after bring-up: queue creation, reset, death (all ones, CFS, a failed reset, hot-removal
//! through VFIO's request notification) and orderly shutdown; the controller side of a queue pair's requests
//! ([`QueueOwner`]).

use super::admin_queue::{config_dbbuf, enable, set_queue_count, shadow_slots_of, AdminQueue};
use super::{lock, Shared};
use crate::dma::{DmaBuf, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::health::{csts_health, Csts, DeathCause};
use crate::queue::{QueueOwner, ShadowSlots};
use crate::spec::{admin, cc, csts, reg, SubmissionEntry};
use crate::vfio;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Registers for VFIO's device request (hot-removal) and starts a thread that waits for it; hands `device` to
/// the shared state. Without the notification (an old kernel), the controller still works: a removal is then
/// noticed by the all-ones reads only, and the kernel waits until the process closes the device.
pub(super) fn start_removal_watcher(mut shared: Arc<Shared>, device: vfio::Device) -> Arc<Shared> {
    let notifier = device.request_notifier().ok();
    // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor nothing else owns.
    let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    let stop = (stop >= 0).then(|| {
        // SAFETY: stop is a fresh descriptor (checked just above).
        unsafe { OwnedFd::from_raw_fd(stop) }
    });
    *lock(&shared.device) = Some(device);
    let (Some(req), Some(stop)) = (notifier, stop) else {
        return shared;
    };
    let Ok(stop_watch) = stop.try_clone() else {
        return shared;
    };
    if let Some(s) = Arc::get_mut(&mut shared) {
        s.watcher_stop = Some(stop);
    } else {
        return shared;
    }
    let weak: Weak<Shared> = Arc::downgrade(&shared);
    let spawned = std::thread::Builder::new()
        .name("nvme-removal".into())
        .spawn(move || {
            let mut fds = [
                libc::pollfd {
                    fd: req.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop_watch.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            loop {
                // SAFETY: fds is a valid array of two pollfd for the duration of the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                if n < 0 || fds[1].revents != 0 {
                    return;
                }
                if fds[0].revents != 0 {
                    if let Some(s) = weak.upgrade() {
                        s.removed();
                    }
                    return;
                }
            }
        });
    drop(spawned);
    shared
}

/// The longest an abort batch, or each of a stalled queue pair's own Delete commands, waits on the admin queue:
/// a controller that has not answered in a second is treated as stuck and escalated (reset, then dead). See
/// docs/driver.md for the whole bound.
const ESCALATION_WAIT: Duration = Duration::from_secs(1);

impl Shared {
    /// The kernel asked for the device back (VFIO's request notification: a hot-removal or an unbind). The
    /// controller is dead from now on; the BAR mappings (BAR0, the PMR's) are replaced by memory that reads all
    /// ones (queue pairs may still write doorbells into it, PMR slices their data) and the device is closed,
    /// so the kernel can finish the removal while the application's handles live on and fail every command
    /// (and PMR barrier) with `ControllerDead`.
    pub(super) fn removed(&self) {
        self.health.mark_dead(DeathCause::Removed);
        // Under the admin lock: no admin command is in the middle of its register accesses.
        let _aq = lock(&self.admin);
        self.bar.retire();
        // The PMR's mapping holds the device file too: retire it, or the kernel waits for the last slice.
        if let Some(pmr) = lock(&self.pmr).upgrade() {
            pmr.retire();
        }
        drop(lock(&self.device).take());
    }

    pub(super) fn refuse_if_dead(&self) -> Result<()> {
        match self.health.dead() {
            Some(cause) => Err(Error::ControllerDead {
                addr: self.addr.clone(),
                cause,
            }),
            None => Ok(()),
        }
    }

    /// Declares the controller dead when an admin error says it is.
    pub(super) fn note(&self, e: &Error) {
        if let Error::ControllerDead { cause, .. } = e {
            self.health.mark_dead(*cause);
        }
    }

    /// One admin command, unless the controller is dead.
    pub(super) fn admin_exec(
        &self,
        command: &'static str,
        e: SubmissionEntry,
        t: Duration,
    ) -> Result<u32> {
        self.refuse_if_dead()?;
        lock(&self.admin)
            .exec(&self.addr, &self.bar, command, e, t)
            .inspect_err(|err| self.note(err))
    }

    pub(super) fn create_queues_checked(
        &self,
        qid: u16,
        sq_iova: u64,
        sqe: u16,
        cq_iova: u64,
        cqe: u16,
    ) -> Result<()> {
        self.refuse_if_dead()?;
        let t = self.opts.admin_timeout;
        let mut aq = lock(&self.admin);
        if let Some(s) = self.shadow_slots(qid) {
            // SAFETY: the slots are inside the Doorbell Buffer pages Shared owns, and queue qid does not exist
            // on the controller now (never created, deleted, or gone with a reset).
            unsafe { s.clear() };
        }
        let mut e = SubmissionEntry::new(admin::CREATE_IO_CQ, 0, 0);
        e.prp1 = cq_iova;
        e.cdw10 = (cqe as u32 - 1) << 16 | qid as u32;
        e.cdw11 = 1; // physically contiguous, interrupts off: the queue is polled
        aq.exec(&self.addr, &self.bar, "Create I/O Completion Queue", e, t)
            .inspect_err(|err| self.note(err))?;
        let mut e = SubmissionEntry::new(admin::CREATE_IO_SQ, 0, 0);
        e.prp1 = sq_iova;
        e.cdw10 = (sqe as u32 - 1) << 16 | qid as u32;
        e.cdw11 = 1 | (qid as u32) << 16; // physically contiguous, CQ with the same id
        if let Err(err) = aq.exec(&self.addr, &self.bar, "Create I/O Submission Queue", e, t) {
            self.note(&err);
            let mut d = SubmissionEntry::new(admin::DELETE_IO_CQ, 0, 0);
            d.cdw10 = qid as u32;
            let _ = aq.exec(&self.addr, &self.bar, "Delete I/O Completion Queue", d, t);
            return Err(err);
        }
        Ok(())
    }

    /// Resets the controller; with `seen`, only if no reset happened since that generation (several queue pairs
    /// stalled at once reset it once). A failed reset declares the controller dead.
    pub(super) fn reset_inner(&self, seen: Option<u64>) -> Result<()> {
        self.refuse_if_dead()?;
        let t = self.opts.admin_timeout;
        let mut aq = lock(&self.admin);
        if seen.is_some_and(|g| g != self.health.generation().load(Ordering::Acquire)) {
            return Ok(());
        }
        let r = self.reset_locked(&mut aq, t);
        if let Err(e) = &r {
            let cause = match e {
                Error::ControllerDead { cause, .. } => *cause,
                Error::ControllerFatal { .. } => DeathCause::Fatal,
                _ => DeathCause::ResetFailed,
            };
            self.health.mark_dead(cause);
        }
        r
    }

    pub(super) fn reset_locked(&self, aq: &mut AdminQueue, t: Duration) -> Result<()> {
        enable(&self.addr, &self.bar, self.cap, aq)?;
        set_queue_count(&self.addr, &self.bar, aq, self.opts.io_queues, t)?;
        if let Some(pages) = &self.dbbuf {
            // SAFETY: the pages are owned by Shared; the controller is freshly enabled and has not been told
            // about them yet; the queue pairs re-read their slots only after the generation bump below.
            unsafe {
                core::ptr::write_bytes(pages.0.as_ptr() as *mut u8, 0, PAGE_SIZE);
                core::ptr::write_bytes(pages.1.as_ptr() as *mut u8, 0, PAGE_SIZE);
            }
            config_dbbuf(&self.addr, &self.bar, aq, pages, t)?;
            aq.shadow = shadow_slots_of(pages, self.cap, 0);
        }
        self.health.bump();
        Ok(())
    }
}

impl QueueOwner for Shared {
    fn generation(&self) -> &AtomicU64 {
        self.health.generation()
    }

    fn shadow_slots(&self, qid: u16) -> Option<ShadowSlots> {
        shadow_slots_of(self.dbbuf.as_ref()?, self.cap, qid)
    }

    fn create_queues(&self, qid: u16, sq_iova: u64, sqe: u16, cq_iova: u64, cqe: u16) -> bool {
        self.create_queues_checked(qid, sq_iova, sqe, cq_iova, cqe)
            .is_ok()
    }

    fn delete_queues(&self, qid: u16, quick: bool) -> bool {
        if self.health.dead().is_some() {
            return false;
        }
        let t = if quick {
            self.opts.admin_timeout.min(ESCALATION_WAIT)
        } else {
            self.opts.admin_timeout
        };
        let mut aq = lock(&self.admin);
        let mut e = SubmissionEntry::new(admin::DELETE_IO_SQ, 0, 0);
        e.cdw10 = qid as u32;
        let sq = aq.exec(&self.addr, &self.bar, "Delete I/O Submission Queue", e, t);
        let mut e = SubmissionEntry::new(admin::DELETE_IO_CQ, 0, 0);
        e.cdw10 = qid as u32;
        let cq = aq.exec(&self.addr, &self.bar, "Delete I/O Completion Queue", e, t);
        for r in [&sq, &cq] {
            if let Err(err) = r {
                self.note(err);
            }
        }
        sq.is_ok() && cq.is_ok()
    }

    fn abort_many(&self, qid: u16, cids: &[u16]) -> usize {
        if self.health.dead().is_some() {
            return 0;
        }
        // At most ACL + 1 Aborts may be outstanding (ACL is 0's based), and the batch must fit the admin SQ.
        let t = self.opts.admin_timeout.min(ESCALATION_WAIT);
        let mut aq = lock(&self.admin);
        let group = (self.info.acl as usize + 1)
            .clamp(1, 16)
            .min(aq.entries as usize - 1);
        let mut accepted = 0;
        for chunk in cids.chunks(group) {
            let entries: Vec<SubmissionEntry> = chunk
                .iter()
                .map(|&cid| {
                    let mut e = SubmissionEntry::new(admin::ABORT, 0, 0);
                    e.cdw10 = qid as u32 | (cid as u32) << 16;
                    e
                })
                .collect();
            match aq.exec_batch(&self.addr, &self.bar, &entries, t) {
                Ok(n) => {
                    accepted += n;
                    if n < chunk.len() {
                        break; // not all answered in time: stop, the caller escalates
                    }
                }
                Err(err) => {
                    self.note(&err);
                    break;
                }
            }
        }
        accepted
    }

    fn reset(&self, seen: u64) -> bool {
        self.reset_inner(Some(seen)).is_ok()
    }

    fn release_qid(&self, qid: u16) {
        if let Some(slot) = lock(&self.qids).get_mut(qid as usize) {
            *slot = false;
        }
    }

    fn check_health(&self) -> bool {
        if self.health.dead().is_some() {
            return false;
        }
        let seen = self.health.generation().load(Ordering::Acquire);
        match csts_health(self.bar.read32(reg::CSTS)) {
            Csts::Ok => true,
            Csts::Gone => {
                self.health.mark_dead(DeathCause::AllOnes);
                false
            }
            // CFS: the spec's answer is a reset (one, however many queue pairs see it); a failed one declares
            // the controller dead.
            Csts::Fatal => self.reset_inner(Some(seen)).is_ok(),
        }
    }

    fn quarantine(&self, buf: DmaBuf) {
        self.health.quarantine(buf);
    }
}

impl Drop for Shared {
    /// Orderly shutdown: CC.SHN = normal, then wait for CSTS.SHST = complete (bounded by RTD3E, at least 5 s).
    /// Nothing is waited for on a dead controller, or one whose registers read all ones.
    fn drop(&mut self) {
        if let Some(stop) = &self.watcher_stop {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd this value owns.
            unsafe { libc::write(stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
        if self.health.dead().is_some() {
            return;
        }
        let c = self.bar.read32(reg::CC);
        if c & cc::EN == 0 || c == u32::MAX {
            return;
        }
        self.bar
            .write32(reg::CC, (c & !cc::SHN_MASK) | cc::SHN_NORMAL);
        let us = (self.info.raw.rtd3e as u64).max(5_000_000);
        let deadline = Instant::now() + Duration::from_micros(us);
        loop {
            let s = self.bar.read32(reg::CSTS);
            if s == u32::MAX
                || s & csts::SHST_MASK == csts::SHST_COMPLETE
                || Instant::now() >= deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}
