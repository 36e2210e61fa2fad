//! The controller side of supervised loopback queue pairs: aborts, queue re-creation, resets, health, and the
//! faults the loopback can be told to have.

use crate::dma::DmaBuf;
use crate::health::{csts_health, Csts, DeathCause, Health};
use crate::mmio::Bar;
use crate::queue::{QueueOwner, ShadowSlots};
use crate::spec::reg;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

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
    pub(super) bar: Arc<Bar>,
    pub(super) health: Health,
    pub(super) answering: AtomicBool,
    pub(super) created: AtomicU64,
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
