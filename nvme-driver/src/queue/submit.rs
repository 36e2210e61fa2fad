//! Submission: checking a request, writing its SQ entries (one command, or several when it is larger than
//! MDTS), building PRP1/PRP2 and PRP lists. Nothing here writes a doorbell (see `doorbell.rs`).

use super::QueuePair;
use crate::dma::{DmaBuf, PAGE_SIZE};
use crate::error::{SubmitError, SubmitErrorKind};
use crate::namespace::Namespace;
use crate::spec::{nvm, DsmRange, SubmissionEntry};
use std::ops::Range;
use std::ptr::addr_of_mut;

impl QueuePair {
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
        if self.dead {
            return Err(SubmitErrorKind::ControllerDead);
        }
        if self.free_cids.len() < ncmds {
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
}
