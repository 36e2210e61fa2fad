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

use crate::dma::{DmaBuf, Iommu, PAGE_SIZE};
use crate::error::{IoError, SubmitError, SubmitErrorKind};
use crate::mmio::{Bar, Doorbell};
use crate::namespace::Namespace;
use crate::spec::{nvm, CompletionEntry, DsmRange, SubmissionEntry};
use crate::status::NvmeStatus;
use std::ops::Range;
use std::ptr::addr_of_mut;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sizes and limits of a queue pair.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Submission queue entries; at most `sq_entries - 1` commands are in flight.
    pub sq_entries: u16,
    /// Completion queue entries (at least `sq_entries`); a larger CQ means fewer CQ head doorbell writes.
    pub cq_entries: u16,
    /// A command that makes no progress for this long is aborted; after another period the controller is reset.
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
    pub aborts_sent: u64,
    /// MMIO doorbell writes made because the controller seemed to have missed a shadow doorbell update.
    pub shadow_kicks: u64,
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

/// The shadow doorbell and EventIdx slots of one queue (inside the controller's two Doorbell Buffer pages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShadowSlots {
    pub sq_db: *mut u32,
    pub sq_ei: *const u32,
    pub cq_db: *mut u32,
    pub cq_ei: *const u32,
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
    fn delete_queues(&self, qid: u16);
    fn abort(&self, qid: u16, cid: u16) -> bool;
    fn reset(&self) -> bool;
    fn release_qid(&self, qid: u16);
}

const FREE: u16 = u16::MAX;
/// Empty polls between two looks at the clock while commands are outstanding.
const STALL_CHECK_EVERY: u32 = 1 << 12;
/// Empty polls (with commands outstanding) before checking that the controller saw the shadow SQ tail.
const SHADOW_KICK_EVERY: u32 = 1 << 10;

/// One command id's entry. `req` maps the cid to its request; a request's own fields live in the slot of its
/// first command id (whose `req` is its own index while that command is in flight).
#[derive(Debug)]
struct Slot {
    /// The request (slot index) this cid's command belongs to; FREE when the cid is not in flight.
    req: u16,
    /// Commands of the request not finished yet (in the request's own slot).
    pending: u16,
    error: Option<IoError>,
    tag: u64,
    buf: Option<DmaBuf>,
}

/// The free command ids, a stack in a fixed array: `ids[..n]`.
///
/// Invariant (what the unchecked accesses rely on): `n <= ids.len()`, and every id on the stack is below
/// `ids.len()` (the number of slots). An id is pushed only when it leaves flight, which happens once per pop
/// (its slot's `req` goes from a request to FREE in exactly one place per path, see `poll` and `recover`), so
/// the stack never holds more ids than there are.
#[derive(Debug)]
struct FreeCids {
    ids: Box<[u16]>,
    n: usize,
}

impl FreeCids {
    fn new(count: usize) -> Self {
        Self {
            ids: (0..count as u16).rev().collect(),
            n: count,
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.n
    }

    #[inline(always)]
    fn last(&self) -> Option<u16> {
        // SAFETY: n <= ids.len() (the invariant), so n - 1 is in bounds when n > 0.
        (self.n > 0).then(|| unsafe { *self.ids.get_unchecked(self.n - 1) })
    }

    #[inline(always)]
    fn pop(&mut self) -> Option<u16> {
        if self.n == 0 {
            return None;
        }
        self.n -= 1;
        // SAFETY: n < ids.len() after the decrement (n <= ids.len() before it).
        Some(unsafe { *self.ids.get_unchecked(self.n) })
    }

    #[inline(always)]
    fn push(&mut self, cid: u16) {
        debug_assert!(self.n < self.ids.len() && (cid as usize) < self.ids.len());
        // SAFETY: a cid is pushed only when it leaves flight, once per earlier pop (the invariant), so fewer
        // than ids.len() ids are on the stack here: n < ids.len().
        unsafe { *self.ids.get_unchecked_mut(self.n) = cid };
        self.n += 1;
    }
}

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
    prp_lists: DmaBuf,
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
    timed_out: bool,
    dead: bool,
    io_timeout: Duration,
    owner: Option<Arc<dyn QueueOwner>>,
    // Kept last: dropped after the queue is deleted on the device.
    sq_mem: DmaBuf,
    cq_mem: DmaBuf,
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
            .field("stats", &self.stats)
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
            prp_lists,
            max_transfer,
            fast_limit: max_transfer,
            split_commands: 0,
            unanswered: 0,
            stats: QueueStats::default(),
            generation,
            empty_polls: 0,
            stall_since: None,
            stall_stage: 0,
            timed_out: false,
            dead: false,
            io_timeout,
            owner: p.owner,
            sq_mem,
            cq_mem,
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

    /// Reads `range` of `buf` worth of blocks starting at `slba`.
    #[inline]
    pub fn read(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buf: DmaBuf,
        range: Range<usize>,
        tag: u64,
    ) -> Result<(), SubmitError> {
        self.submit_data(nvm::READ, ns, slba, buf, range, tag)
    }

    /// Writes `range` of `buf` to the blocks starting at `slba`.
    #[inline]
    pub fn write(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buf: DmaBuf,
        range: Range<usize>,
        tag: u64,
    ) -> Result<(), SubmitError> {
        self.submit_data(nvm::WRITE, ns, slba, buf, range, tag)
    }

    /// Flush: everything completed before is durable when this completes.
    pub fn flush(&mut self, ns: &Namespace, tag: u64) -> Result<(), SubmitError> {
        self.submit(nvm::FLUSH, (ns.nsid, ns.lba_shift), 0, 1, 1, None, tag)
            .map(drop)
            .map_err(SubmitError::without_buffer)
    }

    /// Write Zeroes over `nblocks` blocks from `slba`.
    pub fn write_zeroes(
        &mut self,
        ns: &Namespace,
        slba: u64,
        nblocks: u64,
        tag: u64,
    ) -> Result<(), SubmitError> {
        if !ns.write_zeroes {
            return Err(SubmitError {
                kind: SubmitErrorKind::Unsupported("Write Zeroes"),
                buf: None,
            });
        }
        self.submit(
            nvm::WRITE_ZEROES,
            (ns.nsid, ns.lba_shift),
            slba,
            nblocks,
            1 << 16,
            None,
            tag,
        )
        .map(drop)
        .map_err(SubmitError::without_buffer)
    }

    /// Dataset Management, Deallocate attribute, over `nblocks` blocks from `slba`.
    pub fn deallocate(
        &mut self,
        ns: &Namespace,
        slba: u64,
        nblocks: u64,
        tag: u64,
    ) -> Result<(), SubmitError> {
        if !ns.deallocate {
            return Err(SubmitError {
                kind: SubmitErrorKind::Unsupported("Dataset Management"),
                buf: None,
            });
        }
        self.submit(
            nvm::DATASET_MANAGEMENT,
            (ns.nsid, ns.lba_shift),
            slba,
            nblocks,
            u32::MAX as u64,
            None,
            tag,
        )
        .map(drop)
        .map_err(SubmitError::without_buffer)
    }

    /// Like [`QueuePair::read`], but the buffer stays with the caller: nothing is moved in or out of the
    /// queue pair, and the completion carries no buffer (the path SPDK-style callers with their own buffer
    /// pools take; it saves the buffer hand-over on every I/O).
    ///
    /// # Safety
    /// The device writes into `buf[range]` until the request completes: the caller must keep `buf` alive and
    /// must not read or write that range until the request's [`Completion`] has been delivered by
    /// [`QueuePair::poll`] or [`QueuePair::drain`], or the queue pair has been dropped.
    #[inline]
    pub unsafe fn read_borrowed(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buf: &DmaBuf,
        range: Range<usize>,
        tag: u64,
    ) -> Result<(), SubmitErrorKind> {
        let (iova, nblocks, general) = Self::check_data(ns, buf, &range, self.fast_limit)?;
        self.submit_transfer(nvm::READ, ns, slba, nblocks, general, iova, tag)
            .map(drop)
    }

    /// Like [`QueuePair::write`], but the buffer stays with the caller (see [`QueuePair::read_borrowed`]).
    /// (The two bodies are not folded into one helper: that measured 9 more instructions per I/O on the
    /// loopback benchmark.)
    ///
    /// # Safety
    /// The device reads `buf[range]` until the request completes: the caller must keep `buf` alive and must not
    /// write that range until the request's [`Completion`] has been delivered or the queue pair dropped.
    #[inline]
    pub unsafe fn write_borrowed(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buf: &DmaBuf,
        range: Range<usize>,
        tag: u64,
    ) -> Result<(), SubmitErrorKind> {
        let (iova, nblocks, general) = Self::check_data(ns, buf, &range, self.fast_limit)?;
        self.submit_transfer(nvm::WRITE, ns, slba, nblocks, general, iova, tag)
            .map(drop)
    }

    /// Checks a data transfer's range against its buffer and the namespace; returns the bus address of its
    /// first byte, its length in blocks and whether it must take the general path (split into several
    /// commands, or refused on a dead queue pair): when it is longer than `fast_limit`.
    #[inline]
    fn check_data(
        ns: &Namespace,
        buf: &DmaBuf,
        range: &Range<usize>,
        fast_limit: usize,
    ) -> Result<(u64, u64, bool), SubmitErrorKind> {
        if range.start >= range.end {
            return Err(SubmitErrorKind::ZeroLength);
        }
        if range.end > buf.len() {
            return Err(SubmitErrorKind::OutsideBuffer {
                start: range.start,
                end: range.end,
                len: buf.len(),
            });
        }
        if range.start & 3 != 0 {
            return Err(SubmitErrorKind::Misaligned {
                offset: range.start,
            });
        }
        if range.len() & (ns.lba_size as usize - 1) != 0 {
            return Err(SubmitErrorKind::NotBlockMultiple {
                len: range.len(),
                lba_size: ns.lba_size,
            });
        }
        // fast_limit is at most max_transfer, at most 2 MiB, so a transfer within it is one command at any
        // block size.
        Ok((
            buf.iova() + range.start as u64,
            (range.len() >> ns.lba_shift) as u64,
            range.len() > fast_limit,
        ))
    }

    #[inline]
    fn submit_data(
        &mut self,
        opcode: u8,
        ns: &Namespace,
        slba: u64,
        buf: DmaBuf,
        range: Range<usize>,
        tag: u64,
    ) -> Result<(), SubmitError> {
        let submitted = Self::check_data(ns, &buf, &range, self.fast_limit).and_then(
            |(iova, nblocks, general)| {
                self.submit_transfer(opcode, ns, slba, nblocks, general, iova, tag)
            },
        );
        match submitted {
            Ok(r) => {
                // SAFETY: r came from the free stack, so r < slots.len() (FreeCids' invariant).
                let req = unsafe { self.slots.get_unchecked_mut(r as usize) };
                debug_assert!(req.buf.is_none());
                req.buf = Some(buf);
                Ok(())
            }
            Err(kind) => Err(SubmitError {
                kind,
                buf: Some(buf),
            }),
        }
    }

    /// A read or write of `nblocks` (≥ 1) at bus address `iova`: one command when it fits in one transfer
    /// (the common case, kept short), else split; `general` (from check_data) sends it to the general path,
    /// which also refuses a dead queue pair.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn submit_transfer(
        &mut self,
        opcode: u8,
        ns: &Namespace,
        slba: u64,
        nblocks: u64,
        general: bool,
        iova: u64,
        tag: u64,
    ) -> Result<u16, SubmitErrorKind> {
        if general {
            let chunk = ((self.max_transfer >> ns.lba_shift) as u64).clamp(1, 1 << 16);
            return self.submit(
                opcode,
                (ns.nsid, ns.lba_shift),
                slba,
                nblocks,
                chunk,
                Some(iova),
                tag,
            );
        }
        debug_assert!(!self.dead);
        // (No stall-clock restart here: the clock stops whenever a poll reaps, so it is already stopped when
        // the queue pair has been idle.)
        let Some(cid) = self.free_cids.pop() else {
            return Err(SubmitErrorKind::Busy);
        };
        // SAFETY: cid came from the free stack, so cid < slots.len() (FreeCids' invariant).
        let req = unsafe { self.slots.get_unchecked_mut(cid as usize) };
        req.req = cid;
        req.tag = tag;
        req.pending = 1;
        req.error = None;
        let (prp1, prp2) = self.build_prp(cid, iova, (nblocks << ns.lba_shift) as usize);
        // Only the dwords a read or write uses are written: the others (CDW2, CDW3, MPTR, CDW13-15) are zero in
        // every slot, as the ring was allocated zeroed and no command this queue pair builds sets them.
        let e = self.sq_next;
        // SAFETY: as in submit(); the field pointers are inside that slot.
        unsafe {
            debug_assert!({
                let old = e.read();
                old.cdw2 | old.cdw3 | old.cdw13 | old.cdw14 | old.cdw15 == 0 && old.mptr == 0
            });
            addr_of_mut!((*e).cdw0).write(opcode as u32 | (cid as u32) << 16);
            addr_of_mut!((*e).nsid).write(ns.nsid);
            addr_of_mut!((*e).prp1).write(prp1);
            addr_of_mut!((*e).prp2).write(prp2);
            addr_of_mut!((*e).cdw10).write(slba as u32);
            addr_of_mut!((*e).cdw11).write((slba >> 32) as u32);
            addr_of_mut!((*e).cdw12).write((nblocks - 1) as u32);
        }
        self.advance_sq(e);
        self.stats.requests += 1;
        Ok(cid)
    }

    /// Splits a request into commands of at most `chunk` blocks and writes them into the SQ (no doorbell).
    /// Returns the request's slot (where the caller may park its buffer).
    /// Takes the two namespace fields it needs (`nsid`, `lba_shift`) rather than the namespace: a reference (or
    /// a by-value struct, which is passed by reference) makes the caller's namespace escape, and the caller's
    /// inlined fast path then reloads and re-derives its fields after every call it cannot see through.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn submit(
        &mut self,
        opcode: u8,
        (nsid, lba_shift): (u32, u32),
        slba: u64,
        nblocks: u64,
        chunk: u64,
        iova: Option<u64>,
        tag: u64,
    ) -> Result<u16, SubmitErrorKind> {
        if nblocks == 0 {
            return Err(SubmitErrorKind::ZeroLength);
        }
        let ncmds = if nblocks <= chunk {
            1
        } else {
            nblocks.div_ceil(chunk) as usize
        };
        if ncmds > self.slots.len() {
            return Err(SubmitErrorKind::TooLarge {
                needed: ncmds,
                max: self.slots.len(),
            });
        }
        if self.dead || self.free_cids.len() < ncmds {
            return Err(SubmitErrorKind::Busy);
        }
        // The request lives in the slot of its first command id, which is not reused before the whole request
        // has finished (the other ids of a split request are freed as their commands complete).
        let Some(r) = self.free_cids.last() else {
            return Err(SubmitErrorKind::Busy);
        };
        let req = &mut self.slots[r as usize];
        req.tag = tag;
        req.pending = ncmds as u16;
        req.error = None;
        let mut done = 0u64;
        while done < nblocks {
            let n = chunk.min(nblocks - done);
            let Some(cid) = self.free_cids.pop() else {
                break;
            };
            self.slots[cid as usize].req = r;
            let mut e = SubmissionEntry::new(opcode, cid, nsid);
            match opcode {
                nvm::FLUSH => {}
                nvm::DATASET_MANAGEMENT => {
                    let (ptr, list_iova) = self.prp_page(cid);
                    let range = DsmRange {
                        context_attributes: 0,
                        nlb: n as u32,
                        slba: slba + done,
                    };
                    // SAFETY: the cid's page is PAGE_SIZE bytes of DMA memory owned by this queue pair, unused by
                    // the device until this command is submitted.
                    unsafe { ptr.cast::<DsmRange>().write(range) };
                    e.prp1 = list_iova;
                    e.cdw11 = 1 << 2; // AD: deallocate; cdw10 = 0: one range
                }
                _ => {
                    let s = slba + done;
                    e.cdw10 = s as u32;
                    e.cdw11 = (s >> 32) as u32;
                    e.cdw12 = (n - 1) as u32;
                    if let Some(iova) = iova {
                        let start = iova + (done << lba_shift);
                        let (p1, p2) = self.build_prp(cid, start, (n << lba_shift) as usize);
                        e.prp1 = p1;
                        e.prp2 = p2;
                    }
                }
            }
            // SAFETY: sq_next is in sq .. sq_end, so the slot is inside the SQ ring; the controller does not read
            // slots between its head and our tail, and at most sq_entries-1 commands are outstanding.
            unsafe { self.sq_next.write(e) };
            self.advance_sq(self.sq_next);
            done += n;
            self.split_commands += 1;
        }
        self.split_commands -= 1;
        self.stats.requests += 1;
        Ok(r)
    }

    /// The PRP list page reserved for `cid`: (CPU pointer, bus address).
    #[inline]
    fn prp_page(&mut self, cid: u16) -> (*mut u8, u64) {
        let off = cid as usize * PAGE_SIZE;
        // SAFETY: cid < max_outstanding and prp_lists holds max_outstanding pages.
        (
            unsafe { self.prp_lists.as_mut_ptr().add(off) },
            self.prp_lists.iova() + off as u64,
        )
    }

    /// PRP1/PRP2 for `len` bytes at bus address `start` (dword aligned, IOVA-contiguous): PRP2 is the second
    /// page when two pages cover the transfer, else a PRP list in the cid's page.
    #[inline]
    fn build_prp(&mut self, cid: u16, start: u64, len: usize) -> (u64, u64) {
        let offset = start as usize & (PAGE_SIZE - 1);
        if offset + len <= PAGE_SIZE {
            return (start, 0);
        }
        let second = (start & !(PAGE_SIZE as u64 - 1)) + PAGE_SIZE as u64;
        let rest = len - (PAGE_SIZE - offset);
        if rest <= PAGE_SIZE {
            return (start, second);
        }
        let pages = rest.div_ceil(PAGE_SIZE);
        let (ptr, list_iova) = self.prp_page(cid);
        let list = ptr.cast::<u64>();
        for i in 0..pages {
            // SAFETY: pages <= max_transfer / PAGE_SIZE <= PAGE_SIZE / 8 entries, which fit in the cid's page.
            unsafe { list.add(i).write(second + (i * PAGE_SIZE) as u64) };
        }
        (start, list_iova)
    }

    /// Moves the SQ tail past slot `e` (the current tail), wrapping at the ring's end.
    #[inline(always)]
    fn advance_sq(&mut self, e: *mut SubmissionEntry) {
        let next = e.wrapping_add(1);
        self.sq_next = if next == self.sq_end { self.sq } else { next };
    }

    /// The index of SQ slot `p` (a doorbell value).
    #[inline]
    fn sq_index(&self, p: *mut SubmissionEntry) -> u16 {
        ((p as usize - self.sq as usize) / size_of::<SubmissionEntry>()) as u16
    }

    /// Writes the SQ tail doorbell if commands were added since the last write (once per batch).
    #[inline]
    pub fn ring(&mut self) {
        if self.sq_next == self.sq_rung {
            return;
        }
        // The entries must be in memory before the controller can see the new tail.
        fence(Ordering::Release);
        let tail = self.sq_index(self.sq_next);
        match self.shadow {
            Some(s) => {
                self.stats.sq_shadow_updates += 1;
                // SAFETY: the shadow slots point into the controller's Doorbell Buffer pages, alive while the
                // owner (held by self.owner) lives.
                if unsafe { shadow_update(s.sq_db, s.sq_ei, tail) } {
                    self.sq_db.write(tail as u32);
                    self.stats.sq_doorbell_writes += 1;
                }
            }
            None => {
                self.sq_db.write(tail as u32);
                self.stats.sq_doorbell_writes += 1;
            }
        }
        self.sq_rung = self.sq_next;
    }

    /// The next CQ head at which the poll loop must wrap the ring or write the CQ head doorbell.
    #[inline]
    fn next_cq_event(head: u16, ring_at: u16, entries: u16) -> u16 {
        if ring_at > head {
            ring_at
        } else {
            entries
        }
    }

    /// The CQ head as an index (`cq_entries` when `cq_next` has just reached the ring's end).
    #[inline]
    fn cq_head(&self) -> u16 {
        ((self.cq_next as usize - self.cq as usize) / size_of::<CompletionEntry>()) as u16
    }

    /// The CQ head reached `cq_event`: wrap the ring (flipping the phase) and/or write the CQ head doorbell.
    #[cold]
    #[inline(never)]
    fn cq_event_reached(&mut self) {
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

    /// Tells the controller how far the CQ has been consumed. Called once per `cq_threshold` completions.
    /// With shadow doorbells the shadow value is written too, but the MMIO write is always made: QEMU 7.2 does
    /// not pick up a shadow CQ head on its own (measured: the CQ filled up and I/O stalled), and at one write
    /// per `cq_entries - sq_entries` completions the MMIO cost is small either way.
    #[inline]
    fn ring_cq(&mut self, head: u16) {
        if let Some(s) = self.shadow {
            self.stats.cq_shadow_updates += 1;
            // SAFETY: as in ring(); the EventIdx answer is not needed since the MMIO write follows.
            unsafe { shadow_update(s.cq_db, s.cq_ei, head) };
        }
        self.cq_db.write(head as u32);
        self.stats.cq_doorbell_writes += 1;
        self.cq_ring_at = Self::advance(head, self.cq_threshold, self.cq_entries);
    }

    /// `pos + n` on a ring of `entries` slots (n < entries).
    #[inline]
    fn advance(pos: u16, n: u16, entries: u16) -> u16 {
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
            self.stall_stage = 0;
        } else if self.free_cids.len() != self.slots.len() {
            self.empty_polls = self.empty_polls.wrapping_add(1);
            if self.empty_polls % SHADOW_KICK_EVERY == 0 && self.shadow.is_some() {
                self.shadow_kick();
            }
            if self.empty_polls % STALL_CHECK_EVERY == 0 {
                self.check_stall();
            }
        }
        finished
    }

    /// With shadow doorbells, a controller can miss a tail update that came without an MMIO write (QEMU 7.2
    /// does under load: its EventIdx stays behind the tail and it stops fetching). After a run of empty polls,
    /// if the EventIdx is not at our tail, write the MMIO doorbell once.
    #[cold]
    fn shadow_kick(&mut self) {
        let Some(s) = self.shadow else { return };
        // SAFETY: as in ring().
        let event = unsafe { s.sq_ei.read_volatile() } as u16;
        let rung = self.sq_index(self.sq_rung);
        if event != rung {
            self.sq_db.write(rung as u32);
            self.stats.sq_doorbell_writes += 1;
            self.stats.shadow_kicks += 1;
        }
    }

    /// Called every few thousand empty polls with commands outstanding: after `io_timeout` without progress,
    /// abort the outstanding commands; after another `io_timeout`, reset the controller.
    #[cold]
    fn check_stall(&mut self) {
        let now = Instant::now();
        let Some(since) = self.stall_since else {
            self.stall_since = Some(now);
            return;
        };
        if now.duration_since(since) < self.io_timeout {
            return;
        }
        let Some(owner) = self.owner.clone() else {
            return;
        };
        self.stall_since = Some(now);
        if self.stall_stage == 0 {
            self.stall_stage = 1;
            for cid in 0..self.slots.len() as u16 {
                if self.slots[cid as usize].req != FREE && owner.abort(self.qid, cid) {
                    self.stats.aborts_sent += 1;
                }
            }
        } else {
            self.timed_out = true;
            owner.reset();
        }
    }

    /// After a controller reset: fail every outstanding request, empty the rings, and re-create the queues on
    /// the controller.
    #[cold]
    fn recover(&mut self, generation: u64, f: &mut impl FnMut(Completion)) -> usize {
        self.generation = generation;
        self.stats.resets_seen += 1;
        let err = if self.timed_out {
            IoError::Timeout
        } else {
            IoError::ControllerReset
        };
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
                let c = Completion {
                    tag: req.tag,
                    result: req.error.map_or(Ok(()), Err),
                    buf: req.buf.take(),
                };
                self.free_cids.push(r);
                finished += 1;
                f(c);
            }
        }
        self.cq_mem.fill(0);
        self.sq_next = self.sq;
        self.sq_rung = self.sq;
        self.cq_next = self.cq;
        self.phase = 1;
        self.cq_ring_at = Self::advance(0, self.cq_threshold, self.cq_entries);
        let event = Self::next_cq_event(0, self.cq_ring_at, self.cq_entries);
        self.cq_event = self.cq.wrapping_add(event.into());
        self.timed_out = false;
        self.stall_since = None;
        self.stall_stage = 0;
        if let Some(o) = self.owner.clone() {
            self.shadow = if self.use_shadow {
                o.shadow_slots(self.qid)
            } else {
                None
            };
            let ok = o.create_queues(
                self.qid,
                self.sq_iova(),
                self.sq_entries,
                self.cq_iova(),
                self.cq_entries,
            );
            self.dead = !ok;
            self.fast_limit = if ok { self.max_transfer } else { 0 };
        }
        finished
    }

    /// Submits nothing new; polls until every outstanding request has finished, calling `f` for each.
    pub fn drain(&mut self, mut f: impl FnMut(Completion)) {
        while self.outstanding() > 0 && !self.dead {
            self.poll(usize::MAX, &mut f);
            std::hint::spin_loop();
        }
    }
}

/// Writes a shadow doorbell and says whether the MMIO doorbell is needed too (the EventIdx rule of the NVMe
/// spec's Doorbell Buffer Config, as the Linux driver implements it).
///
/// # Safety
/// `db` and `ei` must point to live, aligned u32 slots of the Doorbell Buffer pages.
#[inline]
unsafe fn shadow_update(db: *mut u32, ei: *const u32, new: u16) -> bool {
    // SAFETY: the caller guarantees both pointers.
    unsafe {
        let old = db.read_volatile() as u16;
        db.write_volatile(new as u32);
        // The controller must be able to see the new shadow value before we read its EventIdx.
        fence(Ordering::SeqCst);
        let event = ei.read_volatile() as u16;
        need_event(event, new, old)
    }
}

#[inline]
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        if let Some(o) = self.owner.take() {
            if o.generation().load(Ordering::Acquire) == self.generation && !self.dead {
                o.delete_queues(self.qid);
            }
            o.release_qid(self.qid);
        }
    }
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
    }
}
