//! Doorbells: the SQ tail and CQ head registers of a queue pair and, with Doorbell Buffer Config, their shadows
//! in host memory with the controller's EventIdx (NVMe Base spec, "Doorbell Buffer Config command" and
//! "Updating Controller Doorbell Properties using a Shadow Doorbell Buffer").
//!
//! The rule, for both the SQ tail and the CQ head: write the new value into the shadow slot; make that store
//! visible before reading the EventIdx (a full barrier: store → load order is exactly what x86 does not keep
//! without one); then write the MMIO doorbell only if the value moved past the EventIdx since the last update,
//! `(u16)(new - event_idx - 1) < (u16)(new - old)` (Linux's `nvme_dbbuf_need_event`, virtio's
//! `vring_need_event`). `old` is the value this queue pair last published, which it keeps itself.
//!
//! Every slot of a queue is set to 0 before the queue is created on the controller (see
//! [`ShadowSlots::clear`]): the controller does not reset them, and a slot left over from an earlier queue
//! with the same id makes the controller believe a stale CQ head (the stall of issue 17, docs/driver.md).

use super::QueuePair;
use crate::spec::SubmissionEntry;
use std::sync::atomic::{fence, Ordering};

/// The shadow doorbell and EventIdx slots of one queue (inside the controller's two Doorbell Buffer pages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShadowSlots {
    pub sq_db: *mut u32,
    pub sq_ei: *mut u32,
    pub cq_db: *mut u32,
    pub cq_ei: *mut u32,
}

impl ShadowSlots {
    /// Sets the queue's four slots to 0, the tail and head of a queue that is about to be created.
    ///
    /// # Safety
    /// The slots must point into live Doorbell Buffer pages, and the queue must not exist on the controller
    /// (between its deletion and its creation nothing of the controller reads or writes these slots).
    pub(crate) unsafe fn clear(&self) {
        // SAFETY: the caller guarantees the pointers; aligned u32 slots.
        unsafe {
            self.sq_db.write_volatile(0);
            self.sq_ei.write_volatile(0);
            self.cq_db.write_volatile(0);
            self.cq_ei.write_volatile(0);
        }
        // Visible before the Create I/O Queue command that follows (its doorbell write is ordered after this).
        fence(Ordering::SeqCst);
    }
}

impl QueuePair {
    /// The index of SQ slot `p` (a doorbell value).
    #[inline]
    pub(super) fn sq_index(&self, p: *mut SubmissionEntry) -> u16 {
        ((p as usize - self.sq as usize) / size_of::<SubmissionEntry>()) as u16
    }

    /// Publishes the SQ tail if commands were added since the last time (once per batch): by MMIO, or with
    /// shadow doorbells in the shadow slot and by MMIO only when the EventIdx asks for it.
    #[inline]
    pub fn ring(&mut self) {
        if self.sq_next == self.sq_rung {
            return;
        }
        // The entries must be in memory before the controller can see the new tail.
        fence(Ordering::Release);
        let tail = self.sq_index(self.sq_next);
        let mmio = match self.shadow {
            Some(s) => {
                self.stats.sq_shadow_updates += 1;
                let old = self.sq_index(self.sq_rung);
                // SAFETY: the shadow slots point into the controller's Doorbell Buffer pages, alive while the
                // owner (held by self.owner) lives.
                unsafe { shadow_update(s.sq_db, s.sq_ei, old, tail) }
            }
            None => true,
        };
        if mmio {
            self.sq_db.write(tail as u32);
            self.stats.sq_doorbell_writes += 1;
        }
        self.sq_rung = self.sq_next;
    }

    /// Tells the controller how far the CQ has been consumed. Called once per `cq_threshold` completions (at
    /// most `sq_entries - 1` commands are in flight, so the controller never sees a full CQ in between). With
    /// shadow doorbells the same EventIdx rule as for the SQ tail decides the MMIO write.
    #[inline]
    pub(super) fn ring_cq(&mut self, head: u16) {
        let mmio = match self.shadow {
            Some(s) => {
                self.stats.cq_shadow_updates += 1;
                // SAFETY: as in ring().
                unsafe { shadow_update(s.cq_db, s.cq_ei, self.cq_rung, head) }
            }
            None => true,
        };
        if mmio {
            self.cq_db.write(head as u32);
            self.stats.cq_doorbell_writes += 1;
        }
        self.cq_rung = head;
        self.cq_ring_at = Self::advance(head, self.cq_threshold, self.cq_entries);
    }
}

/// Writes `new` into a shadow doorbell whose previous value was `old`, and says whether the MMIO doorbell is
/// needed too (the EventIdx rule, as Linux's `nvme_dbbuf_update_and_check_event` applies it).
///
/// # Safety
/// `db` and `ei` must point to live, aligned u32 slots of the Doorbell Buffer pages.
#[inline]
unsafe fn shadow_update(db: *mut u32, ei: *const u32, old: u16, new: u16) -> bool {
    // SAFETY: the caller guarantees both pointers.
    unsafe {
        db.write_volatile(new as u32);
        // The controller must be able to see the new shadow value before we read its EventIdx: a controller
        // that stores its EventIdx and then reads the shadow, racing with us storing the shadow and then
        // reading the EventIdx, must not have both sides read the old value (then neither acts: a stall).
        fence(Ordering::SeqCst);
        let event = ei.read_volatile() as u16;
        need_event(event, new, old)
    }
}

/// Whether moving a doorbell from `old` to `new` passed the controller's EventIdx `event` (mod 2^16).
#[inline]
pub(super) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn event_index_rule() {
        // The controller asked to be told when the tail passes 5: moving 3 → 7 crosses it.
        assert!(need_event(5, 7, 3));
        // Event index 10 is not crossed by 3 → 7.
        assert!(!need_event(10, 7, 3));
        // Exactly reaching event+1 needs the doorbell.
        assert!(need_event(6, 7, 6));
        assert!(!need_event(7, 7, 6));
        // The controller caught up with the old value (its EventIdx is the tail it last read): always ring.
        assert!(need_event(6, 9, 6));
        // The controller read up to 8 and stopped there (8 is in old..new): it must be told.
        assert!(need_event(8, 9, 6));
        // The controller has not caught up with old yet (it is still fetching, and reads the shadow again
        // before it stops): no MMIO needed.
        assert!(!need_event(4, 9, 6));
    }

    #[test]
    fn event_index_rule_wraps() {
        // Across the u16 wrap (the values are ring indices; the comparison is mod 2^16 as in the spec).
        assert!(need_event(u16::MAX, 2, u16::MAX - 1));
        assert!(need_event(0, 2, u16::MAX));
        assert!(!need_event(1, 1, u16::MAX));
        // Not moved: never ring.
        assert!(!need_event(3, 3, 3));
        // Exhaustive against the definition on a small range: event in [old, new) cyclically.
        for old in 0u16..40 {
            for d in 0u16..40 {
                let new = old.wrapping_add(d).wrapping_add(u16::MAX - 20);
                let old = old.wrapping_add(u16::MAX - 20);
                for e in 0u16..80 {
                    let event = e.wrapping_add(u16::MAX - 30);
                    let passed = (0..d).any(|k| old.wrapping_add(k) == event);
                    assert_eq!(need_event(event, new, old), passed, "{event} {new} {old}");
                }
            }
        }
    }
}
