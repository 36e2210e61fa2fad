//! `QueuePair`: one I/O submission queue and its completion queue, owned by one thread (`Send`, not `Sync`).
//!
//! The I/O path allocates nothing and takes no lock: command identifiers, request slots and PRP list pages are
//! preallocated; submission writes entries into the ring, and the SQ tail doorbell is written once per batch
//! (by [`QueuePair::ring`] or at the start of [`QueuePair::poll`]). The CQ head doorbell is written only as often
//! as it takes to keep the controller from seeing a full CQ: at most `sq_entries - 1` commands are ever in
//! flight, so with a CQ of `cq_entries` the head may lag by `cq_entries - sq_entries` entries. With shadow
//! doorbells (Doorbell Buffer Config), the driver writes the shadow value and touches the MMIO doorbell only
//! when the controller's EventIdx asks for it.
//!
//! A request larger than the controller's MDTS is split into several commands and completes once, when all have.

mod doorbell;
mod poll;
mod slots;
mod submit;

pub(crate) use doorbell::ShadowSlots;

use crate::dma::{DmaBuf, Iommu, PAGE_SIZE};
use crate::error::IoError;
use crate::health::DEAD;
use crate::mmio::{Bar, Doorbell};
use crate::spec::{CompletionEntry, SubmissionEntry};
use slots::{FreeCids, Slot, FREE};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sizes and limits of a queue pair.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Submission queue entries; at most `sq_entries - 1` commands are in flight.
    pub sq_entries: u16,
    /// Completion queue entries (at least `sq_entries`); a larger CQ means fewer CQ head doorbell writes.
    pub cq_entries: u16,
    /// When the queue pair has made no progress for this long with commands outstanding, they are aborted
    /// (together); if that does not help within `min(io_timeout, 1 s)`, the queue pair deletes and re-creates
    /// its queues (its requests fail with `IoError::Timeout`), and only if the controller cannot do that is it
    /// reset. A controller found dead (CSTS all ones, a failed reset) fails everything at once.
    pub io_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            sq_entries: 256,
            cq_entries: 1024,
            io_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of one queue pair (plain integers: one thread owns them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Requests accepted by submit calls.
    pub requests: u64,
    /// NVMe commands written to the SQ (a request split at MDTS counts several).
    pub commands: u64,
    pub completions: u64,
    pub sq_doorbell_writes: u64,
    pub cq_doorbell_writes: u64,
    pub sq_shadow_updates: u64,
    pub cq_shadow_updates: u64,
    /// Aborts the controller completed (sent in parallel when a queue pair stalls).
    pub aborts_sent: u64,
    /// Times this queue pair recovered on its own from a stall (its queues deleted and created again, its
    /// in-flight requests failed with `Timeout`), without a controller reset.
    pub queue_resets: u64,
    pub resets_seen: u64,
}

impl QueueStats {
    /// MMIO doorbell writes of both kinds.
    pub fn mmio_writes(&self) -> u64 {
        self.sq_doorbell_writes + self.cq_doorbell_writes
    }
}

/// A finished request: its tag, its outcome, and its buffer back.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub result: Result<(), IoError>,
    pub buf: Option<DmaBuf>,
}

/// What the queue pair needs from its controller: admin commands to re-create itself after a reset, to abort
/// commands, to reset; and the reset generation to notice that one happened.
pub(crate) trait QueueOwner: Send + Sync {
    fn generation(&self) -> &AtomicU64;
    fn shadow_slots(&self, qid: u16) -> Option<ShadowSlots>;
    fn create_queues(
        &self,
        qid: u16,
        sq_iova: u64,
        sq_entries: u16,
        cq_iova: u64,
        cq_entries: u16,
    ) -> bool;
    /// Deletes the queue pair's SQ and CQ; true when both deletions completed (then the controller is done with
    /// their commands and buffers). `quick` bounds the wait by a second (a stalled queue pair's recovery).
    fn delete_queues(&self, qid: u16, quick: bool) -> bool;
    /// Sends Abort for every command in `cids` (in parallel, as far as the controller's Abort Command Limit
    /// allows; one bounded wait for all); returns how many aborts the controller completed.
    fn abort_many(&self, qid: u16, cids: &[u16]) -> usize;
    /// Resets the controller unless a reset happened since generation `seen`; false when it failed (then the
    /// controller is dead).
    fn reset(&self, seen: u64) -> bool;
    fn release_qid(&self, qid: u16);
    /// Reads CSTS: all ones declares the controller dead, CFS makes it reset (dead if that fails). False when
    /// the controller is dead.
    fn check_health(&self) -> bool;
    /// Keeps a buffer the device might still write out of the DMA pool while the controller lives.
    fn quarantine(&self, buf: DmaBuf);
}

/// Empty polls between two looks at the clock while commands are outstanding.
const STALL_CHECK_EVERY: u32 = 1 << 12;

/// An I/O queue pair. See the module documentation.
pub struct QueuePair {
    qid: u16,
    sq: *mut SubmissionEntry,
    cq: *const CompletionEntry,
    sq_entries: u16,
    cq_entries: u16,
    /// The SQ slot the next command goes into (the tail), in `sq .. sq_end`: a pointer rather than an index, so
    /// a submission writes its entry without scaling an index. See `sq_index()`.
    sq_next: *mut SubmissionEntry,
    /// One past the SQ ring's last slot.
    sq_end: *mut SubmissionEntry,
    /// The tail last written to the doorbell (as a slot pointer).
    sq_rung: *mut SubmissionEntry,
    /// The CQ entry at the head (the next one to look at), in `cq .. cq + cq_entries` whenever an entry is read:
    /// a pointer rather than an index, so the poll loop reads it without scaling an index. See `cq_head()`.
    cq_next: *const CompletionEntry,
    phase: u16,
    /// The CQ head last published (doorbell or shadow): the `old` of the EventIdx rule.
    cq_rung: u16,
    /// The CQ head at which the head doorbell is written next (`cq_threshold` entries after the last write).
    cq_ring_at: u16,
    cq_threshold: u16,
    /// The CQ position (entry pointer, after `cq_next` and at most the ring's end) at which the poll loop leaves
    /// its fast path: the ring's end (wrap, phase flip) or `cq_ring_at`, whichever comes first. One comparison
    /// per completion for both.
    cq_event: *const CompletionEntry,
    sq_db: Doorbell,
    cq_db: Doorbell,
    shadow: Option<ShadowSlots>,
    use_shadow: bool,
    /// Indexed by command id (`sq_entries - 1` of them, fixed at allocation); see [`Slot`].
    slots: Box<[Slot]>,
    free_cids: FreeCids,
    prp_lists: ManuallyDrop<DmaBuf>,
    max_transfer: usize,
    /// Requests of up to this many bytes take the single-command fast path: `max_transfer`, or 0 while the
    /// queue pair is dead, so that the fast path needs no check of `dead` of its own (the general path, which
    /// every request then takes, refuses it as Busy).
    fast_limit: usize,
    /// Counters; `commands` and `completions` are derived in [`QueuePair::stats`] (fewer stores per I/O).
    stats: QueueStats,
    /// Commands beyond the first of split requests.
    split_commands: u64,
    /// Commands failed by a controller reset, without a completion from the device.
    unanswered: u64,
    generation: u64,
    empty_polls: u32,
    stall_since: Option<Instant>,
    stall_stage: u8,
    /// When the stall handling last moved a stage (see `progress_after_aborts`).
    stall_stage_at: Option<Instant>,
    timed_out: bool,
    dead: bool,
    io_timeout: Duration,
    owner: Option<Arc<dyn QueueOwner>>,
    /// The rings; dropped by hand in `Drop`, after the queues were deleted on the device, or quarantined when
    /// they could not be (the device might still write them).
    sq_mem: ManuallyDrop<DmaBuf>,
    cq_mem: ManuallyDrop<DmaBuf>,
    _bar: Arc<Bar>,
}

// SAFETY: the raw pointers point into DMA buffers and a BAR owned (or kept alive) by this value; moving the
// queue pair to another thread moves that ownership. It is not Sync: one thread drives it.
unsafe impl Send for QueuePair {}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qid", &self.qid)
            .field("sq_entries", &self.sq_entries)
            .field("cq_entries", &self.cq_entries)
            .field("outstanding", &self.outstanding())
            .field("dead", &self.dead)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Where a queue pair's memory and doorbells are: built by the controller (or an in-process emulated one).
pub(crate) struct QueueParts {
    pub qid: u16,
    pub config: QueueConfig,
    pub bar: Arc<Bar>,
    pub doorbell_stride: usize,
    pub iommu: Arc<Iommu>,
    /// Largest data transfer of one command, in bytes (MDTS), capped at what one PRP list page describes.
    pub max_transfer: usize,
    pub owner: Option<Arc<dyn QueueOwner>>,
    pub use_shadow: bool,
}

impl QueuePair {
    pub(crate) fn allocate(p: QueueParts) -> crate::Result<Self> {
        let QueueConfig {
            sq_entries,
            cq_entries,
            io_timeout,
        } = p.config;
        if sq_entries < 2 || cq_entries < sq_entries {
            return Err(crate::Error::InvalidArgument(format!(
                "queue sizes: need 2 <= sq_entries <= cq_entries, got sq {sq_entries}, cq {cq_entries}"
            )));
        }
        let sq_mem = p.iommu.alloc(sq_entries as usize * 64)?;
        let cq_mem = p.iommu.alloc(cq_entries as usize * 16)?;
        let max_out = sq_entries as usize - 1;
        let prp_lists = p.iommu.alloc(max_out * PAGE_SIZE)?;
        let db = crate::spec::reg::DOORBELLS;
        let sq_db = p
            .bar
            .doorbell(db + (2 * p.qid as usize) * p.doorbell_stride);
        let cq_db = p
            .bar
            .doorbell(db + (2 * p.qid as usize + 1) * p.doorbell_stride);
        let generation = p
            .owner
            .as_ref()
            .map(|o| o.generation().load(Ordering::Acquire))
            .unwrap_or(0);
        let shadow = if p.use_shadow {
            p.owner.as_ref().and_then(|o| o.shadow_slots(p.qid))
        } else {
            None
        };
        let max_transfer = p.max_transfer.clamp(PAGE_SIZE, PAGE_SIZE * (PAGE_SIZE / 8));
        let cq_threshold = (cq_entries - sq_entries).max(1);
        let cq_ring_at = Self::advance(0, cq_threshold, cq_entries);
        let cq = cq_mem.as_ptr() as *const CompletionEntry;
        let sq = sq_mem.as_ptr() as *mut SubmissionEntry;
        Ok(Self {
            qid: p.qid,
            sq,
            cq,
            sq_entries,
            cq_entries,
            sq_next: sq,
            sq_end: sq.wrapping_add(sq_entries.into()),
            sq_rung: sq,
            cq_next: cq,
            phase: 1,
            cq_rung: 0,
            cq_ring_at,
            cq_threshold,
            cq_event: cq.wrapping_add(Self::next_cq_event(0, cq_ring_at, cq_entries).into()),
            sq_db,
            cq_db,
            shadow,
            use_shadow: p.use_shadow,
            slots: (0..max_out)
                .map(|_| Slot {
                    req: FREE,
                    pending: 0,
                    error: None,
                    tag: 0,
                    buf: None,
                })
                .collect(),
            free_cids: FreeCids::new(max_out),
            prp_lists: ManuallyDrop::new(prp_lists),
            max_transfer,
            fast_limit: max_transfer,
            split_commands: 0,
            unanswered: 0,
            stats: QueueStats::default(),
            generation,
            empty_polls: 0,
            stall_since: None,
            stall_stage: 0,
            stall_stage_at: None,
            timed_out: false,
            dead: false,
            io_timeout,
            owner: p.owner,
            sq_mem: ManuallyDrop::new(sq_mem),
            cq_mem: ManuallyDrop::new(cq_mem),
            _bar: p.bar,
        })
    }

    /// Hands the queue pair to its controller once its queues exist on the device.
    pub(crate) fn attach(&mut self, owner: Arc<dyn QueueOwner>, use_shadow: bool) {
        self.generation = owner.generation().load(Ordering::Acquire);
        self.use_shadow = use_shadow;
        self.shadow = if use_shadow {
            owner.shadow_slots(self.qid)
        } else {
            None
        };
        self.owner = Some(owner);
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }
    pub fn sq_iova(&self) -> u64 {
        self.sq_mem.iova()
    }
    pub fn cq_iova(&self) -> u64 {
        self.cq_mem.iova()
    }
    pub fn sq_entries(&self) -> u16 {
        self.sq_entries
    }
    pub fn cq_entries(&self) -> u16 {
        self.cq_entries
    }
    /// Commands in flight.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free_cids.len()
    }
    /// The most commands that can be in flight at once (`sq_entries - 1`).
    pub fn max_outstanding(&self) -> usize {
        self.slots.len()
    }
    /// Largest transfer of one command in bytes; larger requests are split.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }
    pub fn stats(&self) -> QueueStats {
        let commands = self.stats.requests + self.split_commands;
        let in_flight = (self.slots.len() - self.free_cids.len()) as u64;
        QueueStats {
            commands,
            completions: commands - in_flight - self.unanswered,
            ..self.stats
        }
    }
    pub fn shadow_doorbells(&self) -> bool {
        self.shadow.is_some()
    }
    /// True once the queue pair accepts nothing more: its controller is dead, or its queues could not be
    /// re-created after a reset. Submissions then fail with [`crate::SubmitErrorKind::ControllerDead`].
    pub fn is_dead(&self) -> bool {
        self.dead
    }
}

impl Drop for QueuePair {
    /// Deletes the queues on the controller. When that cannot be done (the controller is dead, or the deletion
    /// failed), the device might still write the rings and the buffers of in-flight commands: they are
    /// quarantined instead of going back to the DMA pool.
    fn drop(&mut self) {
        let mut safe = true;
        if let Some(o) = self.owner.take() {
            let g = o.generation().load(Ordering::Acquire);
            safe = if g & DEAD != 0 {
                false
            } else if g != self.generation || self.dead {
                true // a reset deleted the queues (or they were never re-created after one)
            } else {
                o.delete_queues(self.qid, false)
            };
            if !safe {
                for slot in self.slots.iter_mut() {
                    if let Some(b) = slot.buf.take() {
                        o.quarantine(b);
                    }
                }
            }
            // SAFETY: each field is taken once, here, and not used again (the value is being dropped).
            let rings = unsafe {
                [
                    ManuallyDrop::take(&mut self.sq_mem),
                    ManuallyDrop::take(&mut self.cq_mem),
                    ManuallyDrop::take(&mut self.prp_lists),
                ]
            };
            for r in rings {
                if safe {
                    drop(r);
                } else {
                    o.quarantine(r);
                }
            }
            o.release_qid(self.qid);
            return;
        }
        debug_assert!(safe);
        // SAFETY: as above (no owner: a loopback queue pair, nothing on a device).
        unsafe {
            ManuallyDrop::drop(&mut self.sq_mem);
            ManuallyDrop::drop(&mut self.cq_mem);
            ManuallyDrop::drop(&mut self.prp_lists);
        }
    }
}
