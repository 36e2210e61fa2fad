//! Completion: the poll loop (phase tag, CQ wrap, the CQ head doorbell's threshold), stall detection with
//! Abort and reset, and recovery after a controller reset.

use super::{Completion, QueueOwner, QueuePair, FREE, STALL_CHECK_EVERY};
use crate::error::IoError;
use crate::health::DEAD;
use crate::spec::CompletionEntry;
use crate::status::NvmeStatus;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// How long a stalled queue pair waits after its aborts before it recovers itself (or `io_timeout`, if
/// shorter).
const ESCALATION: Duration = Duration::from_secs(1);

impl QueuePair {
    /// The next CQ head at which the poll loop must wrap the ring or write the CQ head doorbell.
    #[inline]
    pub(super) fn next_cq_event(head: u16, ring_at: u16, entries: u16) -> u16 {
        if ring_at > head {
            ring_at
        } else {
            entries
        }
    }

    /// The CQ head as an index (`cq_entries` when `cq_next` has just reached the ring's end).
    #[inline]
    pub(super) fn cq_head(&self) -> u16 {
        ((self.cq_next as usize - self.cq as usize) / size_of::<CompletionEntry>()) as u16
    }

    /// The CQ head reached `cq_event`: wrap the ring (flipping the phase) and/or write the CQ head doorbell.
    #[cold]
    #[inline(never)]
    pub(super) fn cq_event_reached(&mut self) {
        let mut head = self.cq_head();
        if head == self.cq_entries {
            head = 0;
            self.cq_next = self.cq;
            self.phase ^= 1;
        }
        if head == self.cq_ring_at {
            self.ring_cq(head);
        }
        let event = Self::next_cq_event(head, self.cq_ring_at, self.cq_entries);
        self.cq_event = self.cq.wrapping_add(event.into());
    }

    /// `pos + n` on a ring of `entries` slots (n < entries).
    #[inline]
    pub(super) fn advance(pos: u16, n: u16, entries: u16) -> u16 {
        let p = u32::from(pos) + u32::from(n);
        if p >= u32::from(entries) {
            (p - u32::from(entries)) as u16
        } else {
            p as u16
        }
    }

    /// Rings the SQ doorbell if needed, then reaps up to `max` finished requests, calling `f` for each.
    /// Returns how many requests finished.
    #[inline]
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(Completion)) -> usize {
        self.ring();
        if let Some(o) = &self.owner {
            let g = o.generation().load(Ordering::Acquire);
            if g != self.generation {
                return self.recover(g, &mut f);
            }
        }
        let mut finished = 0;
        // Whether any entry was consumed is told by the head's move, not counted: it can only come back to
        // where it started after a whole ring of entries, and then requests finished too (or the entries
        // were all stray, which is no progress).
        let start = self.cq_next;
        while finished < max {
            let entry = self.cq_next;
            // SAFETY: entry is inside the CQ ring (memory this queue pair owns, which the controller writes by
            // DMA): cq_next moves one entry at a time, and reaching cq_event (at most the ring's end) is dealt
            // with, wrapping to the start, before the next read. An aligned 2-byte field of that entry; volatile
            // because the device writes it.
            let status = unsafe { core::ptr::addr_of!((*entry).status).read_volatile() };
            if status & 1 != self.phase {
                break;
            }
            // Read the rest of the entry only after seeing its phase tag.
            fence(Ordering::Acquire);
            // SAFETY: as above.
            let cid = unsafe { core::ptr::addr_of!((*entry).cid).read_volatile() };
            self.cq_next = entry.wrapping_add(1);
            if self.cq_next == self.cq_event {
                self.cq_event_reached();
            }
            // The one bounds check of a cid the device gave us.
            let Some(slot) = self.slots.get_mut(cid as usize) else {
                continue;
            };
            let r = slot.req;
            if r == FREE {
                continue; // a completion for a command we no longer track (after an abort): ignore it
            }
            slot.req = FREE;
            // A single-command request lives in its cid's own slot: no second lookup.
            let req = if cid == r {
                slot
            } else {
                self.free_cids.push(cid);
                // SAFETY: r is not FREE, so it is the index of a request slot set by a submit from a cid popped
                // off the free stack: r < slots.len() (FreeCids' invariant).
                unsafe { self.slots.get_unchecked_mut(r as usize) }
            };
            if let Some(s) = NvmeStatus::from_completion(status) {
                req.error.get_or_insert(IoError::Status(s));
            }
            req.pending -= 1;
            if req.pending == 0 {
                self.free_cids.push(r);
                finished += 1;
                // Built in the call (not before the push) so it is not copied twice on the way; a borrowed-buffer
                // request has no buffer to move.
                f(Completion {
                    tag: req.tag,
                    result: req.error.map_or(Ok(()), Err),
                    buf: if req.buf.is_some() {
                        req.buf.take()
                    } else {
                        None
                    },
                });
            }
        }
        if self.cq_next != start || finished > 0 {
            self.empty_polls = 0;
            self.stall_since = None;
            if self.stall_stage != 0 {
                self.progress_after_aborts();
            }
        } else if self.free_cids.len() != self.slots.len() {
            self.empty_polls = self.empty_polls.wrapping_add(1);
            if self.empty_polls % STALL_CHECK_EVERY == 0 {
                finished += self.check_stall(&mut f);
            }
        }
        finished
    }

    /// Called every few thousand empty polls with commands outstanding. First the controller's health (one
    /// CSTS read: all ones or a fatal status that a reset does not clear declares it dead, and the next poll
    /// fails everything). Then, after `io_timeout` without progress, every outstanding command is aborted (in
    /// parallel); if that did not help within `min(io_timeout, 1 s)`, this queue pair alone is recovered:
    /// its queues are deleted and created again, failing its own in-flight requests with `Timeout`, without
    /// touching other queue pairs; only if the controller does not answer that either is it reset.
    #[cold]
    fn check_stall(&mut self, f: &mut impl FnMut(Completion)) -> usize {
        let Some(owner) = self.owner.clone() else {
            return 0;
        };
        if !owner.check_health() {
            return 0; // dead (or reset because of CSTS.CFS): the next poll sees the generation move
        }
        let now = Instant::now();
        let Some(since) = self.stall_since else {
            self.stall_since = Some(now);
            return 0;
        };
        let wait = if self.stall_stage == 0 {
            self.io_timeout
        } else {
            self.io_timeout.min(ESCALATION)
        };
        if now.duration_since(since) < wait {
            return 0;
        }
        self.stall_since = Some(now);
        self.stall_stage_at = Some(now);
        match self.stall_stage {
            0 => {
                self.stall_stage = 1;
                let cids: Vec<u16> = (0..self.slots.len() as u16)
                    .filter(|&c| self.slots[c as usize].req != FREE)
                    .collect();
                self.stats.aborts_sent += owner.abort_many(self.qid, &cids) as u64;
                0
            }
            1 => {
                self.stall_stage = 2;
                if !owner.delete_queues(self.qid, true) {
                    // Not deleted in time (or at all): the queues' state on the controller is unknown, so the
                    // controller is reset now (a failed reset declares it dead).
                    self.timed_out = true;
                    owner.reset(self.generation);
                    return 0;
                }
                self.stats.queue_resets += 1;
                // The controller deleted the queues, so it is done with their commands and buffers.
                let finished = self.fail_in_flight(IoError::Timeout, false, f);
                self.restart(&owner);
                finished
            }
            _ => {
                self.timed_out = true;
                owner.reset(self.generation);
                0
            }
        }
    }

    /// Progress after this queue pair sent aborts: the stall is over once the queue pair has drained or a whole
    /// `io_timeout` has passed since; until then a new gap of `min(io_timeout, 1 s)` escalates (the commands
    /// that were stuck may still be there, behind the ones that completed).
    #[cold]
    #[inline(never)]
    fn progress_after_aborts(&mut self) {
        let over = self.free_cids.len() == self.slots.len()
            || self
                .stall_stage_at
                .is_none_or(|t| t.elapsed() >= self.io_timeout);
        if over {
            self.stall_stage = 0;
            self.stall_stage_at = None;
        }
    }

    /// Fails every in-flight request with `err` (counted as unanswered). With `quarantine`, the device might
    /// still write their buffers: those go to the controller's quarantine and the completions carry none.
    fn fail_in_flight(
        &mut self,
        err: IoError,
        quarantine: bool,
        f: &mut impl FnMut(Completion),
    ) -> usize {
        let mut finished = 0;
        for cid in 0..self.slots.len() {
            let r = self.slots[cid].req;
            if r == FREE {
                continue;
            }
            self.slots[cid].req = FREE;
            self.unanswered += 1;
            if cid as u16 != r {
                self.free_cids.push(cid as u16);
            }
            let req = &mut self.slots[r as usize];
            req.error.get_or_insert(err);
            req.pending -= 1;
            if req.pending == 0 {
                let mut buf = req.buf.take();
                if quarantine {
                    if let (Some(b), Some(o)) = (buf.take(), &self.owner) {
                        o.quarantine(b);
                    }
                }
                let c = Completion {
                    tag: req.tag,
                    result: req.error.map_or(Ok(()), Err),
                    buf,
                };
                self.free_cids.push(r);
                finished += 1;
                f(c);
            }
        }
        debug_assert_eq!(self.free_cids.len(), self.slots.len());
        finished
    }

    /// Empties the rings and creates the queues again on the controller (after a reset or this queue pair's
    /// own recovery); a queue pair whose queues cannot be created is dead.
    fn restart(&mut self, owner: &Arc<dyn QueueOwner>) {
        self.cq_mem.fill(0);
        self.sq_next = self.sq;
        self.sq_rung = self.sq;
        self.cq_next = self.cq;
        self.phase = 1;
        self.cq_rung = 0;
        self.cq_ring_at = Self::advance(0, self.cq_threshold, self.cq_entries);
        let event = Self::next_cq_event(0, self.cq_ring_at, self.cq_entries);
        self.cq_event = self.cq.wrapping_add(event.into());
        self.timed_out = false;
        self.stall_since = None;
        self.stall_stage = 0;
        self.stall_stage_at = None;
        self.empty_polls = 0;
        self.shadow = if self.use_shadow {
            owner.shadow_slots(self.qid)
        } else {
            None
        };
        let ok = owner.create_queues(
            self.qid,
            self.sq_iova(),
            self.sq_entries,
            self.cq_iova(),
            self.cq_entries,
        );
        self.set_dead(!ok);
    }

    fn set_dead(&mut self, dead: bool) {
        self.dead = dead;
        self.fast_limit = if dead { 0 } else { self.max_transfer };
    }

    /// The controller's generation moved: after a reset, fail every outstanding request and re-create the
    /// queues; when the controller is dead, fail them with `ControllerDead`, quarantine their buffers, and
    /// accept nothing more.
    #[cold]
    fn recover(&mut self, generation: u64, f: &mut impl FnMut(Completion)) -> usize {
        let was_dead = self.generation & DEAD != 0;
        self.generation = generation;
        if generation & DEAD != 0 {
            if was_dead {
                return 0;
            }
            let finished = self.fail_in_flight(IoError::ControllerDead, true, f);
            self.set_dead(true);
            return finished;
        }
        self.stats.resets_seen += 1;
        let err = if self.timed_out {
            IoError::Timeout
        } else {
            IoError::ControllerReset
        };
        let finished = self.fail_in_flight(err, false, f);
        if let Some(o) = self.owner.clone() {
            self.restart(&o);
        }
        finished
    }

    /// Submits nothing new; polls until every outstanding request has finished, calling `f` for each.
    ///
    /// Bounded: the stall handling in `poll` ends every request (completed, timed out after abort and
    /// recovery, or failed when the controller is found dead) within about `2 × io_timeout` plus the
    /// controller's reset time; as a last resort, after `3 × io_timeout + 10 s` the remaining requests are
    /// failed with `ControllerDead`, their buffers quarantined, and the queue pair accepts nothing more.
    pub fn drain(&mut self, mut f: impl FnMut(Completion)) {
        let deadline = Instant::now() + 3 * self.io_timeout + Duration::from_secs(10);
        while self.outstanding() > 0 {
            self.poll(usize::MAX, &mut f);
            if self.outstanding() > 0 && Instant::now() > deadline {
                self.fail_in_flight(IoError::ControllerDead, true, &mut f);
                self.set_dead(true);
                break;
            }
            std::hint::spin_loop();
        }
    }
}
